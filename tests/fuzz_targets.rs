//! The bodies of drover's fuzz targets, shared by cargo-fuzz (`fuzz/fuzz_targets/*.rs`,
//! nightly, coverage-guided) and by the stable replay of the committed corpus
//! (`tests/it/fuzz.rs`), so that CI runs the very checks the fuzzer ran.
//!
//! Each target feeds its input through the path drover itself takes:
//! - [`Targets::config`], [`Targets::cmdb`], [`Targets::runbook`]: the input is written
//!   as that file of a workspace made of the repository's own examples (`config/`,
//!   `runbooks/`), then `Workspace::load` and `validate` with the binary's registry
//!   (every built-in plugin checks its parameters), as `drover validate` does;
//! - [`Targets::evidence`]: the input is an evidence bundle, checked by
//!   `verify_bundle_pinned` as `drover evidence verify FILE` does.
//!
//! What each asserts, by panicking (libFuzzer counts a panic as a crash): nothing panics,
//! and every rejection is located inside the input: a diagnostic names one of the
//! workspace's files at a line and column that exist in it; a bundle's problem names a
//! record the bundle has, and a JSON error's line and column are inside the text it is
//! about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_engine::evidence::{Bundle, Verification, verify_bundle_pinned};
use drover_model::node::{Node, parse_yaml};
use drover_model::paths::{folder_of, normalize, resolve};
use drover_model::{Diagnostic, Workspace};

/// The repository's example config, CMDB and runbooks: the workspace every input is
/// placed in.
const EXAMPLES: [(&str, &str); 7] = [
    ("config/drover.yaml", include_str!("../config/drover.yaml")),
    ("config/cmdb.yaml", include_str!("../config/cmdb.yaml")),
    (
        "runbooks/backup-verification.yaml",
        include_str!("../runbooks/backup-verification.yaml"),
    ),
    (
        "runbooks/local-drill.yaml",
        include_str!("../runbooks/local-drill.yaml"),
    ),
    (
        "runbooks/payments-drill.yaml",
        include_str!("../runbooks/payments-drill.yaml"),
    ),
    (
        "runbooks/payments-failover.yaml",
        include_str!("../runbooks/payments-failover.yaml"),
    ),
    (
        "runbooks/replication-check.yaml",
        include_str!("../runbooks/replication-check.yaml"),
    ),
];

/// Where the fuzzed runbook is written, beside the examples.
const FUZZED_RUNBOOK: &str = "runbooks/fuzzed.yaml";

/// What one input gave: the diagnostics of a workspace, or a bundle's verification.
#[derive(Debug)]
pub enum Outcome {
    Loaded(Vec<Diagnostic>),
    /// The config names a CMDB or runbooks folder outside the workspace folder: not
    /// loaded, so that a fuzzed path cannot make the harness read the whole disk (or
    /// `/dev/zero`). Where drover reads its files from is the operator's choice.
    Skipped,
    Verified(Box<Verification>),
}

/// A workspace folder holding the repository's examples, into which each input is
/// written. One per process; before each input, the file the previous input replaced is
/// put back to its example. The folder is in memory (`/dev/shm`) where there is one: on a
/// disk, rewriting a file flushes it on close (ext4 does, for a truncated file); writing
/// all seven files there for every input made the `runbook` target 1.7 times slower.
#[derive(Debug)]
pub struct Targets {
    /// Kept for its `Drop`, which removes the folder.
    _dir: tempfile::TempDir,
    /// The folder's canonical path, as the loader will name its files.
    root: PathBuf,
    /// The file (relative) the previous input was written as, if any.
    dirty: std::sync::Mutex<Option<&'static str>>,
}

impl Default for Targets {
    fn default() -> Self {
        Self::new()
    }
}

impl Targets {
    pub fn new() -> Targets {
        let mut builder = tempfile::Builder::new();
        builder.prefix("drover-fuzz-");
        let shm = Path::new("/dev/shm");
        let dir = match shm.is_dir() {
            true => builder.tempdir_in(shm).or_else(|_| builder.tempdir()),
            false => builder.tempdir(),
        }
        .expect("create the fuzz workspace");
        let root = normalize(&std::fs::canonicalize(dir.path()).expect("canonical temp path"));
        let t = Targets {
            _dir: dir,
            root,
            dirty: std::sync::Mutex::new(None),
        };
        for (rel, text) in EXAMPLES {
            t.write(rel, text.as_bytes());
        }
        t
    }

    /// The workspace folder (removed when `self` is dropped).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a file in a folder")).expect("create folder");
        std::fs::write(&path, bytes).expect("write a workspace file");
    }

    /// The input as `config/drover.yaml`, with the example CMDB and runbooks.
    pub fn config(&self, data: &[u8]) -> Outcome {
        let config = self.root.join("config/drover.yaml");
        if names_paths_outside(data, &folder_of(&config), &self.root) {
            return Outcome::Skipped;
        }
        self.load_with("config/drover.yaml", data)
    }

    /// The input as `config/cmdb.yaml`, with the example config and runbooks.
    pub fn cmdb(&self, data: &[u8]) -> Outcome {
        self.load_with("config/cmdb.yaml", data)
    }

    /// The input as one more runbook beside the examples (its name, service, CIs and
    /// actions are checked against them, the config and the CMDB).
    pub fn runbook(&self, data: &[u8]) -> Outcome {
        self.load_with(FUZZED_RUNBOOK, data)
    }

    /// The input as an evidence bundle file, verified unpinned; an intact bundle is
    /// verified again pinned to its own key (must still pass) and to another key (must
    /// fail, at a seal).
    pub fn evidence(&self, data: &[u8]) -> Outcome {
        let v = verify_bundle_pinned(data, &[]);
        check_bundle_problem(data, &v);
        if v.intact() {
            let own = v.fingerprint.clone().expect("an intact bundle is sealed");
            let pinned = verify_bundle_pinned(data, std::slice::from_ref(&own));
            assert!(pinned.intact(), "pinned to its own key {own}: {:?}", pinned.problem);
            let other = format!("SHA256:{}", "0".repeat(64));
            let refused = verify_bundle_pinned(data, &[other]);
            let p = refused
                .problem
                .as_ref()
                .expect("a bundle sealed by an unpinned key fails");
            assert!(
                refused.seals.iter().any(|s| s.record == p.record),
                "the refusal names a seal: {p:?}"
            );
        }
        Outcome::Verified(Box::new(v))
    }

    /// Writes `data` as `rel` (every other file as in the examples), loads and validates
    /// like `drover validate`, and checks that every diagnostic is located.
    fn load_with(&self, rel: &'static str, data: &[u8]) -> Outcome {
        let mut files: BTreeMap<PathBuf, &[u8]> = EXAMPLES
            .iter()
            .map(|(r, t)| (self.root.join(r), t.as_bytes()))
            .collect();
        files.insert(self.root.join(rel), data);
        // Held until the workspace is loaded: one input at a time in the folder.
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        match dirty.take() {
            Some(FUZZED_RUNBOOK) if rel != FUZZED_RUNBOOK => {
                std::fs::remove_file(self.root.join(FUZZED_RUNBOOK)).expect("remove the fuzzed runbook")
            }
            Some(prev) if prev != rel => {
                let example = EXAMPLES.iter().find(|(r, _)| *r == prev).expect("an example").1;
                self.write(prev, example.as_bytes());
            }
            _ => {}
        }
        self.write(rel, data);
        *dirty = Some(rel);
        let mut ws = Workspace::load(&self.root.join("config/drover.yaml"), &[]);
        let registry = drover::registry::build(ws.config.as_ref());
        ws.validate(&registry);
        for d in &ws.diagnostics {
            check_located(d, &files);
        }
        // Rendering with snippets (what the user sees) must not panic either.
        let _ = ws.render_diagnostics(&ws.diagnostics);
        Outcome::Loaded(ws.diagnostics)
    }
}

/// Whether the config's `cmdb` or `runbooks` (as written) resolves outside `root`.
fn names_paths_outside(data: &[u8], base: &Path, root: &Path) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(node) = parse_yaml(text) else {
        return false;
    };
    ["cmdb", "runbooks"]
        .iter()
        .any(|key| match node.get(key).map(|n| &n.value) {
            Some(Node::Str(p)) => !resolve(base, Path::new(p)).starts_with(root),
            _ => false,
        })
}

/// A diagnostic names a file of the workspace, at a line of it and a column of that
/// line (or just past its end).
fn check_located(d: &Diagnostic, files: &BTreeMap<PathBuf, &[u8]>) {
    assert!(d.loc.line >= 1 && d.loc.col >= 1, "unlocated: {d}");
    let Some(bytes) = files.get(&d.file) else {
        panic!("not a file of the workspace: {d}");
    };
    // A lone `\r` ends a line for the YAML parser but not for the rest of drover (nor
    // for an editor on Unix): positions in such a file are not checked.
    if bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
    {
        return;
    }
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        d.loc.line as usize <= lines.len(),
        "past the end ({} lines): {d}",
        lines.len()
    );
    let line = lines[d.loc.line as usize - 1];
    assert!(
        d.loc.col as usize <= line.chars().count() + 1,
        "past the end of {line:?}: {d}"
    );
}

/// A bundle's problem names a record it has (or the end: a missing seal), and a JSON
/// error's `line L column C` is inside the text it is about: the file, or the record.
fn check_bundle_problem(data: &[u8], v: &Verification) {
    let Some(p) = &v.problem else { return };
    assert!(
        p.record <= v.records as u64,
        "record {} of {}: {p:?}",
        p.record,
        v.records
    );
    if let Some(at) = p
        .message
        .strip_prefix("not a bundle: invalid UTF-8 at byte ")
        .and_then(|n| n.parse::<usize>().ok())
    {
        assert!(at < data.len(), "{p:?}");
    }
    let record_error = format!("record {} is not a valid journal record: ", p.record);
    let text = if p.message.starts_with("not a valid evidence bundle: ") {
        String::from_utf8_lossy(data).into_owned()
    } else if p.message.starts_with(&record_error) {
        // The location is in that record's text.
        let bundle: Bundle = serde_json::from_slice(data).expect("the records were read, so the bundle parses");
        bundle.records[p.record as usize].clone()
    } else {
        return;
    };
    let (line, col) = json_location(&p.message).unwrap_or_else(|| panic!("a JSON error without its location: {p:?}"));
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        line >= 1 && line <= lines.len(),
        "line {line} of {}: {p:?}",
        lines.len()
    );
    // serde_json counts columns in bytes, and says column 0 at the end of the input.
    assert!(col <= lines[line - 1].len() + 1, "column {col}: {p:?}");
}

/// `line L column C` at the end of a serde_json message.
fn json_location(message: &str) -> Option<(usize, usize)> {
    let at = message.rfind(" at line ")?;
    let (line, col) = message[at + " at line ".len()..].split_once(" column ")?;
    Some((line.parse().ok()?, col.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_serde_json_locations() {
        assert_eq!(
            json_location("x: EOF while parsing a value at line 3 column 0"),
            Some((3, 0))
        );
        assert_eq!(json_location("no location"), None);
    }
}
