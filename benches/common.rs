//! Helpers the benchmark binaries share (each includes this file as a module).
//!
//! Machine-readable results: with `--json FILE` a bench appends one JSON object per line
//! to FILE for every figure it measures (every sample, not only the median), and one for
//! every peer it could not run and why. `benches/summary.rs` reads these lines and
//! computes the summary table of `benches/run.sh`: nothing in that table is written by
//! hand. A line is
//!
//! ```text
//! {"bench":"engine","tool":"drover","case":"chain 100","steps":100,"metric":"wall","unit":"ms","value":111.8}
//! {"bench":"engine","tool":"chaos","case":"chain 100","missing":"not installed: ..."}
//! ```

// Each bench uses a part of these helpers.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The value after `--NAME` on the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    arg_str(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The text after `--NAME` on the command line.
pub fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Whether `--NAME` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The drover binary to time: `$DROVER_BIN`, else the release build.
pub fn binary() -> PathBuf {
    std::env::var_os("DROVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/drover"))
}

/// Where a bench writes its machine-readable results (`--json FILE`), if anywhere.
#[derive(Debug)]
pub struct Results {
    bench: &'static str,
    file: Option<Mutex<std::fs::File>>,
}

impl Results {
    /// Results of `bench`, appended to the file named by `--json`, if given.
    pub fn from_args(bench: &'static str) -> Results {
        let file = arg_str("--json").map(|path| {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("--json {path}: {e}"));
            Mutex::new(f)
        });
        Results { bench, file }
    }

    fn line(&self, mut v: serde_json::Value) {
        let Some(file) = &self.file else { return };
        v["bench"] = self.bench.into();
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(f, "{v}").expect("writing the --json file");
    }

    /// One measured figure of `tool` in `case` (`steps` when the case has a size).
    pub fn sample(&self, tool: &str, case: &str, steps: Option<usize>, metric: &str, unit: &str, value: f64) {
        self.line(serde_json::json!({
            "tool": tool, "case": case, "steps": steps, "metric": metric, "unit": unit, "value": value,
        }));
    }

    /// `tool` was not run in `case`, and why (a peer that is not installed).
    pub fn missing(&self, tool: &str, case: &str, why: &str) {
        self.line(serde_json::json!({"tool": tool, "case": case, "missing": why}));
    }
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

/// Starts `BIN --config CONFIG serve` in `dir` (warn-level logs, stderr dropped) and
/// waits for its `listening on URL` line: the child and the URL.
#[allow(dead_code)]
pub fn serve(bin: &Path, dir: &Path, config: &str) -> (std::process::Child, String) {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin)
        .current_dir(dir)
        .args(["--config", config, "serve"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().trim_start_matches("listening on ").to_owned();
    assert!(url.starts_with("http"), "no `listening on` line: {line:?}");
    (child, url)
}
