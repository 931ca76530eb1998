//! The `drover-tests` package holds drover's integration tests: one test binary,
//! `tests/it/main.rs`, with a module per area (diagnostics, planning, the repository's
//! own examples, parser fuzzing, the CLI). This library is empty on purpose.
