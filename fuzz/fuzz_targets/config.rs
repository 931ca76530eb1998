//! Fuzz target `config`: the input as `config/drover.yaml` beside the example CMDB and runbooks.
//! The body, and what it asserts, is [`drover_tests::fuzz_targets::Targets::config`].

#![no_main]

use std::sync::LazyLock;

use drover_tests::fuzz_targets::Targets;
use libfuzzer_sys::fuzz_target;

static TARGETS: LazyLock<Targets> = LazyLock::new(Targets::new);

fuzz_target!(|data: &[u8]| {
    let _ = TARGETS.config(data);
});
