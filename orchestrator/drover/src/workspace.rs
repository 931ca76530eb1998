//! Loading and validating the user's files for a command, and picking a runbook.

use std::path::{Path, PathBuf};

use drover_model::graph::CiGraph;
use drover_model::{Cmdb, Config, Diagnostic, Runbook, Workspace};
use drover_plugin_api::Registry;

use crate::{Exit, Failure};

/// A workspace whose config and CMDB are free of errors.
#[derive(Debug)]
pub struct Loaded {
    pub ws: Workspace,
    pub registry: Registry,
}

impl Loaded {
    pub fn config(&self) -> &Config {
        self.ws.config.as_ref().expect("checked when loaded")
    }
    pub fn cmdb(&self) -> &Cmdb {
        self.ws.cmdb.as_ref().expect("checked when loaded")
    }

    /// The CMDB's dependency graph: the one validation built (a CMDB with a cycle does
    /// not load, so it is there), else built now.
    pub fn ci_graph(&self) -> std::borrow::Cow<'_, CiGraph> {
        match &self.ws.ci_graph {
            Some(g) => std::borrow::Cow::Borrowed(g),
            None => std::borrow::Cow::Owned(CiGraph::new(self.cmdb())),
        }
    }
}

/// Loads every file and runs every check.
pub fn load_all(config: &Path, extra_runbooks: &[PathBuf]) -> (Workspace, Registry) {
    let mut ws = Workspace::load(config, extra_runbooks);
    let registry = drover::registry::build(ws.config.as_ref());
    ws.validate(&registry);
    (ws, registry)
}

/// Prints diagnostics to stderr with snippets, and a count.
pub fn report(ws: &Workspace, diags: &[Diagnostic]) {
    eprintln!("{}", ws.render_diagnostics(diags));
    let n = diags.len();
    eprintln!("{n} error{}", if n == 1 { "" } else { "s" });
}

/// Loads the workspace and requires the config and CMDB to be free of errors.
pub fn load(config: &Path, extra_runbooks: &[PathBuf]) -> Result<Loaded, Failure> {
    let (ws, registry) = load_all(config, extra_runbooks);
    let fatal: Vec<Diagnostic> = ws
        .diagnostics
        .iter()
        .filter(|d| d.file == ws.config_path || Some(&d.file) == ws.cmdb_path.as_ref())
        .cloned()
        .collect();
    if !fatal.is_empty() || ws.config.is_none() || ws.cmdb.is_none() {
        report(&ws, &fatal);
        return Err(Failure::Reported(Exit::BadInput));
    }
    Ok(Loaded { ws, registry })
}

/// Loads the workspace for a command that goes on with a recorded run (`resume`,
/// `ack`): only the config must be free of errors. The run uses the runbook and the
/// CMDB order recorded when it started, so a CMDB edited (or broken) since cannot stop
/// or reorder a half-done failover; its errors are shown as warnings.
pub fn load_for_recorded_run(config: &Path) -> Result<Loaded, Failure> {
    let (ws, registry) = load_all(config, &[]);
    let fatal: Vec<Diagnostic> = ws
        .diagnostics
        .iter()
        .filter(|d| d.file == ws.config_path)
        .cloned()
        .collect();
    if !fatal.is_empty() || ws.config.is_none() {
        report(&ws, &fatal);
        return Err(Failure::Reported(Exit::BadInput));
    }
    let cmdb: Vec<Diagnostic> = ws
        .diagnostics
        .iter()
        .filter(|d| Some(&d.file) == ws.cmdb_path.as_ref())
        .cloned()
        .collect();
    if !cmdb.is_empty() {
        eprintln!("{}", ws.render_diagnostics(&cmdb));
        eprintln!(
            "warning: the CMDB has {} error(s); the run goes on with the CMDB order recorded at its start",
            cmdb.len()
        );
    }
    Ok(Loaded { ws, registry })
}

/// Whether the command-line argument names a file rather than a runbook name.
fn looks_like_path(arg: &str) -> bool {
    arg.ends_with(".yaml") || arg.ends_with(".yml") || arg.contains('/')
}

/// Loads the workspace and picks the runbook `arg` (a name or a path), requiring it,
/// the config and the CMDB to be free of errors.
pub fn load_runbook(config: &Path, arg: &str) -> Result<(Loaded, Runbook), Failure> {
    let extra: Vec<PathBuf> = if looks_like_path(arg) {
        vec![PathBuf::from(arg)]
    } else {
        Vec::new()
    };
    let loaded = load(config, &extra)?;
    let ws = &loaded.ws;
    let file = if looks_like_path(arg) {
        let p = drover_model::paths::normalize(Path::new(arg));
        ws.runbooks.iter().find(|r| r.path == p)
    } else {
        let mut matches = ws
            .runbooks
            .iter()
            .filter(|r| r.runbook.as_ref().is_some_and(|rb| rb.name.value == arg));
        let first = matches.next();
        if let (Some(a), Some(b)) = (first, matches.next()) {
            return Err(Failure::Usage(anyhow::anyhow!(
                "two runbooks are named `{arg}`: {} and {}",
                a.path.display(),
                b.path.display()
            )));
        }
        first
    };
    let Some(file) = file else {
        let names: Vec<&str> = ws
            .runbooks
            .iter()
            .filter_map(|r| r.runbook.as_ref().map(|rb| rb.name.as_str()))
            .collect();
        let broken: Vec<&Diagnostic> = ws.diagnostics.iter().collect();
        if !broken.is_empty() {
            report(ws, &ws.diagnostics);
        }
        let dir = ws.runbooks_dir.as_deref().unwrap_or(Path::new("?"));
        return Err(Failure::Usage(anyhow::anyhow!(
            "unknown runbook `{arg}` in {}{}; known: {}",
            dir.display(),
            drover_model::diag::did_you_mean(arg, names.iter().copied()),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let errors: Vec<Diagnostic> = ws.diagnostics.iter().filter(|d| d.file == file.path).cloned().collect();
    match (&file.runbook, errors.is_empty()) {
        (Some(rb), true) => {
            let rb = rb.clone();
            Ok((loaded, rb))
        }
        _ => {
            report(ws, &errors);
            Err(Failure::Reported(Exit::BadInput))
        }
    }
}
