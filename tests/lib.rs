//! The `drover-tests` package holds drover's integration tests: one test binary,
//! `tests/it/main.rs`, with a module per area (diagnostics, planning, the repository's
//! own examples, parser fuzzing, the CLI). This library holds what the tests share with
//! the fuzzer: the bodies of the fuzz targets ([`fuzz_targets`]), run by cargo-fuzz
//! (`fuzz/`) and replayed over the committed corpus by `tests/it/fuzz.rs`.

pub mod fuzz_targets;
