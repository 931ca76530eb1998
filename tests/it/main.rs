//! drover's integration tests, in one binary (uv's `crates/uv/tests/it/main.rs` layout):
//! one module per area. The CLI tests run the real `drover` binary (see
//! [`support::drover_bin`]); the others use the library crates in-process.
//!
//! Run with `cargo nextest run --workspace` (or `-p drover-tests`). Snapshots live in
//! `tests/it/snapshots`; after an intended change of output, re-record them with
//! `INSTA_UPDATE=always` and review the diff.

/// Snapshots `$text` with the fixture's temporary folder replaced by `[TMP]`.
macro_rules! assert_tmp_snapshot {
    ($fx:expr, $text:expr) => {
        insta::with_settings!({filters => $fx.filters()}, {
            insta::assert_snapshot!($text);
        })
    };
}

mod support;

mod campaign;
mod cli;
mod continuity;
mod crashes;
mod daemon;
mod demo;
mod diagnostics;
mod engine;
mod examples;
mod faults;
mod fuzz;
mod guide;
mod ha;
mod help;
mod inprocess;
mod kubernetes;
mod planning;
mod postgres;
mod records;
mod s3;
mod safety;
mod security;
mod splitbrain;
mod store;
