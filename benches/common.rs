//! Helpers the benchmark binaries share (each includes this file as a module).

use std::path::{Path, PathBuf};

/// The value after `--NAME` on the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The drover binary to time: `$DROVER_BIN`, else the release build.
pub fn binary() -> PathBuf {
    std::env::var_os("DROVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/drover"))
}

/// SHA-256 hex of `s`, by `sha256sum` (keeps the benches free of a hashing crate).
#[allow(dead_code)]
pub fn sha256_hex(s: &str) -> String {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}
