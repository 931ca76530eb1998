//! Fuzz target `runbook`: the input as one more runbook beside the examples.
//! The body, and what it asserts, is [`drover_tests::fuzz_targets::Targets::runbook`].

#![no_main]

use std::sync::LazyLock;

use drover_tests::fuzz_targets::Targets;
use libfuzzer_sys::fuzz_target;

static TARGETS: LazyLock<Targets> = LazyLock::new(Targets::new);

fuzz_target!(|data: &[u8]| {
    let _ = TARGETS.runbook(data);
});
