//! Fuzz target `evidence`: the input as an evidence bundle file (`drover evidence verify FILE`).
//! The body, and what it asserts, is [`drover_tests::fuzz_targets::Targets::evidence`].

#![no_main]

use std::sync::LazyLock;

use drover_tests::fuzz_targets::Targets;
use libfuzzer_sys::fuzz_target;

static TARGETS: LazyLock<Targets> = LazyLock::new(Targets::new);

fuzz_target!(|data: &[u8]| {
    let _ = TARGETS.evidence(data);
});
