//! Fuzz target `cmdb`: the input as `config/cmdb.yaml` beside the example config and runbooks.
//! The body, and what it asserts, is [`drover_tests::fuzz_targets::Targets::cmdb`].

#![no_main]

use std::sync::LazyLock;

use drover_tests::fuzz_targets::Targets;
use libfuzzer_sys::fuzz_target;

static TARGETS: LazyLock<Targets> = LazyLock::new(Targets::new);

fuzz_target!(|data: &[u8]| {
    let _ = TARGETS.cmdb(data);
});
