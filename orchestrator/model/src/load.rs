//! Reading the user's files: the config, the CMDB it names and every runbook in the
//! runbooks folder, with all syntax and type errors of all files collected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::cmdb::{Ci, Cmdb};
use crate::config::{Config, Database, ExternalPlugin, KubeCluster, ObjectStore, Schedule, Site};
use crate::de::{DeError, from_node};
use crate::diag::{Diagnostic, Issue, Location, sort_and_dedup};
use crate::graph::CiGraph;
use crate::node::{Located, Node, parse_yaml};
use crate::paths::{folder_of, normalize, resolve};
use crate::runbook::{Check, Runbook, Step};

/// One runbook file and what could be read from it.
#[derive(Debug, Clone)]
pub struct RunbookFile {
    pub path: PathBuf,
    /// `None` when the file has syntax or type errors (they are in the diagnostics).
    pub runbook: Option<Runbook>,
}

/// Everything read from the user's files, with every error found so far.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    pub config_path: PathBuf,
    pub config: Option<Config>,
    pub cmdb_path: Option<PathBuf>,
    pub cmdb: Option<Cmdb>,
    pub runbooks_dir: Option<PathBuf>,
    pub runbooks: Vec<RunbookFile>,
    /// File texts, for snippets in diagnostics.
    pub sources: BTreeMap<PathBuf, String>,
    pub diagnostics: Vec<Diagnostic>,
    /// The CMDB's dependency graph, once [`Workspace::validate`] found it acyclic: built
    /// once, for the checks and then for planning.
    pub ci_graph: Option<CiGraph>,
}

impl Workspace {
    /// Reads the config at `config_path`, the CMDB and the runbooks it names, and any
    /// `extra_runbooks` (files given on the command line). Never fails: problems are
    /// diagnostics.
    pub fn load(config_path: &Path, extra_runbooks: &[PathBuf]) -> Workspace {
        let mut ws = Workspace {
            config_path: normalize(config_path),
            ..Default::default()
        };
        let config_path = ws.config_path.clone();
        let base = folder_of(&config_path);
        let extras: Vec<PathBuf> = extra_runbooks.iter().map(|p| normalize(p)).collect();
        // The CMDB file and runbooks folder; also read when the config has errors of
        // its own, so that theirs are reported in the same pass.
        let mut cmdb_and_dir = (None, None);
        if let Some(node) = ws.read_yaml(&config_path, None) {
            match ws.typed::<Config>(&config_path, &node, CONFIG_LISTS) {
                Some(mut config) => {
                    resolve_config_paths(&mut config, &base);
                    cmdb_and_dir = (Some(config.cmdb.clone()), Some(config.runbooks.clone()));
                    ws.config = Some(config);
                }
                None => cmdb_and_dir = paths_of_broken_config(&node, &base),
            }
        }
        let (cmdb, dir) = cmdb_and_dir;
        if let Some(cmdb) = cmdb {
            let cmdb_path = cmdb.value;
            if let Some(node) = ws.read_yaml(&cmdb_path, Some(non_zero(cmdb.loc))) {
                ws.cmdb = ws.typed::<Cmdb>(&cmdb_path, &node, CMDB_LISTS);
            }
            ws.cmdb_path = Some(cmdb_path);
        }
        if let Some(dir) = dir {
            match list_yaml_files(&dir.value) {
                Ok(files) => {
                    for f in files {
                        // A file also named on the command line is read once, under the
                        // path given there (so the caller finds it by that path).
                        let f = extras.iter().find(|e| same_file(e, &f)).cloned().unwrap_or(f);
                        ws.load_runbook(&f);
                    }
                }
                Err(e) => ws.diagnostics.push(Diagnostic::new(
                    &config_path,
                    non_zero(dir.loc),
                    format!("cannot read the runbooks folder {}: {e}", dir.value.display()),
                )),
            }
            ws.runbooks_dir = Some(dir.value);
        }
        for extra in extras {
            if !ws.runbooks.iter().any(|r| r.path == extra) {
                ws.load_runbook(&extra);
            }
        }
        sort_and_dedup(&mut ws.diagnostics);
        ws
    }

    fn load_runbook(&mut self, path: &Path) {
        let runbook = self.read_yaml(path, None).and_then(|node| {
            self.typed::<Runbook>(path, &node, RUNBOOK_LISTS).map(|mut rb| {
                anchor_params(&mut rb);
                rb
            })
        });
        self.runbooks.push(RunbookFile {
            path: path.to_path_buf(),
            runbook,
        });
    }

    /// Reads and parses a file; an unreadable file is reported at `referenced_at` in
    /// the config (or at 1:1 of the file itself).
    fn read_yaml(&mut self, path: &Path, referenced_at: Option<Location>) -> Option<Located<Node>> {
        let text = match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                    let text = String::from_utf8_lossy(valid);
                    let line = text.matches('\n').count() + 1;
                    let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    self.diagnostics.push(Diagnostic::new(
                        path,
                        Location::new(line as u32, col as u32),
                        "file is not valid UTF-8",
                    ));
                    return None;
                }
            },
            Err(e) => {
                let (file, loc) = match referenced_at {
                    Some(loc) => (self.config_path.clone(), loc),
                    None => (path.to_path_buf(), Location::new(1, 1)),
                };
                self.diagnostics.push(Diagnostic::new(
                    file,
                    loc,
                    format!("cannot read {}: {e}", path.display()),
                ));
                return None;
            }
        };
        let parsed = parse_yaml(&text);
        self.sources.insert(path.to_path_buf(), text);
        match parsed {
            Ok(node) => Some(node),
            Err(issue) => {
                self.diagnostics.push(issue.in_file(path));
                None
            }
        }
    }

    /// Reads a typed document, reporting the errors of every broken list element and of
    /// the rest of the document, not only the first one.
    fn typed<T: DeserializeOwned>(&mut self, path: &Path, node: &Located<Node>, lists: &[ListCheck]) -> Option<T> {
        match from_node::<T>(node) {
            Ok(v) => Some(v),
            Err(first) => {
                let issues = recover_errors::<T>(node, lists, first);
                self.diagnostics.extend(issues.into_iter().map(|i| i.in_file(path)));
                None
            }
        }
    }

    /// The source text of a file, if it was read.
    pub fn source(&self, path: &Path) -> Option<&str> {
        self.sources.get(path).map(String::as_str)
    }

    /// Renders every diagnostic, one per line, each followed by its snippet.
    pub fn render_diagnostics(&self, diags: &[Diagnostic]) -> String {
        diags
            .iter()
            .map(|d| d.render(self.source(&d.file)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

type ListCheck = (&'static str, fn(&Located<Node>) -> Result<(), DeError>);

fn check_as<T: DeserializeOwned>(n: &Located<Node>) -> Result<(), DeError> {
    from_node::<T>(n).map(drop)
}

const CONFIG_LISTS: &[ListCheck] = &[
    ("sites", check_as::<Site>),
    ("kubernetes", check_as::<KubeCluster>),
    ("object_stores", check_as::<ObjectStore>),
    ("databases", check_as::<Database>),
    ("schedules", check_as::<Schedule>),
    ("plugins", check_as::<ExternalPlugin>),
];
const CMDB_LISTS: &[ListCheck] = &[("items", check_as::<Ci>)];
const RUNBOOK_LISTS: &[ListCheck] = &[
    ("preflight", check_as::<Check>),
    ("steps", check_as::<Step>),
    ("verify", check_as::<Check>),
    ("rollback", check_as::<Step>),
];

fn recover_errors<T: DeserializeOwned>(node: &Located<Node>, lists: &[ListCheck], first: DeError) -> Vec<Issue> {
    let mut issues = Vec::new();
    if matches!(node.value, Node::Map(_)) {
        let keys: Vec<&str> = lists.iter().map(|(k, _)| *k).collect();
        if let Err(e) = from_node::<T>(&node.without_keys(&keys)) {
            issues.push(e.into_issue(node.loc));
        }
        for (key, check) in lists {
            let Some(list) = node.get(key) else { continue };
            match &list.value {
                Node::Seq(items) => {
                    for item in items {
                        if let Err(e) = check(item) {
                            issues.push(e.into_issue(item.loc));
                        }
                    }
                }
                Node::Null => {}
                other => issues.push(Issue::new(
                    list.loc,
                    format!("`{key}` must be a list, found {}", other.describe()),
                )),
            }
        }
    }
    if issues.is_empty() {
        issues.push(first.into_issue(node.loc));
    }
    issues
}

/// The `cmdb` and `runbooks` paths of a config that could not be read as a whole:
/// the values written (when they are paths), else the defaults (when left out).
fn paths_of_broken_config(node: &Located<Node>, base: &Path) -> (Option<Located<PathBuf>>, Option<Located<PathBuf>>) {
    if !matches!(node.value, Node::Map(_)) {
        return (None, None);
    }
    let path = |key: &str, default: &str| {
        let written = match node.get(key) {
            None => Some(Located::new(Location::default(), PathBuf::from(default))),
            Some(n) => from_node::<Located<PathBuf>>(n).ok(),
        };
        written.map(|p| p.map(|p| resolve(base, &p)))
    };
    (path("cmdb", "cmdb.yaml"), path("runbooks", "../runbooks"))
}

/// Whether two paths name the same file (however they are spelt).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// A default-valued location (a field left out) points at the start of the file.
fn non_zero(loc: Location) -> Location {
    if loc.line == 0 { Location::new(1, 1) } else { loc }
}

/// An absent `with:` is located at its step's `uses:` so that "missing parameter"
/// errors point somewhere useful.
fn anchor_params(rb: &mut Runbook) {
    for s in rb.steps.iter_mut().chain(rb.rollback.iter_mut()) {
        if s.with.loc.line == 0 {
            s.with.loc = s.uses.loc;
        }
    }
    for c in rb.preflight.iter_mut().chain(rb.verify.iter_mut()) {
        if c.with.loc.line == 0 {
            c.with.loc = c.uses.loc;
        }
    }
}

fn resolve_config_paths(c: &mut Config, base: &Path) {
    c.cmdb.value = resolve(base, &c.cmdb.value);
    c.runbooks.value = resolve(base, &c.runbooks.value);
    for k in &mut c.kubernetes {
        if let Some(p) = &mut k.kubeconfig {
            *p = resolve(base, p);
        }
    }
    for s in &mut c.object_stores {
        for secret in [&mut s.access_key_id, &mut s.secret_access_key].into_iter().flatten() {
            secret.rebase(base);
        }
    }
    for d in &mut c.databases {
        d.url.rebase(base);
    }
    c.evidence.signing_key.rebase(base);
    if let Some(p) = &mut c.state.password {
        p.rebase(base);
    }
    if let Some(tls) = c.api.as_mut().and_then(|a| a.tls.as_mut()) {
        tls.cert = resolve(base, &tls.cert);
        tls.key = resolve(base, &tls.key);
        if let Some(ca) = &mut tls.client_ca {
            *ca = resolve(base, ca);
        }
    }
    if let Some(path) = c.state.url.value.strip_prefix("sqlite://") {
        let resolved = resolve(base, Path::new(path));
        c.state.url.value = format!("sqlite://{}", resolved.display());
    }
    for p in &mut c.plugins {
        if let Some(program) = p.command.value.first_mut()
            && program.contains('/')
        {
            *program = resolve(base, Path::new(program.as_str())).display().to_string();
        }
    }
}

/// The `.yaml` / `.yml` files under `dir`, recursively, in a stable order.
fn list_yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(normalize(&path));
            }
        }
    }
    out.sort();
    Ok(out)
}
