//! Local commands: `exec.run` (a change, with an optional `undo` command as its
//! compensation) and `exec.check` (passes when the command exits 0); and the external
//! plugin protocol, which makes an executable declared in the config usable as
//! `uses: ext.NAME`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use drover_model::config::{ExternalKind, ExternalPlugin};
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{ActionClass, ActionSpec, Registry, TypedSpec};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// argv; no shell.
    pub command: Located<Vec<String>>,
    /// Added to drover's own environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// argv run as the compensation.
    #[serde(default)]
    pub undo: Option<Located<Vec<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    pub command: Located<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

fn argv(cmd: &Located<Vec<String>>, what: &str) -> Option<Issue> {
    match cmd.first() {
        None => Some(Issue::new(
            cmd.loc,
            format!("{what} must name a program: [program, arg, ...]"),
        )),
        Some(p) if p.is_empty() => Some(Issue::new(
            cmd.loc,
            format!("{what}: the program name is empty"),
        )),
        Some(_) => None,
    }
}

fn env_names(env: &BTreeMap<String, String>, loc: drover_model::Location) -> Option<Issue> {
    env.keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        .map(|k| {
            Issue::new(
                loc,
                format!("`{k}` is not a valid environment variable name"),
            )
        })
}

/// An executable declared in the config under `plugins:`, used as `uses: ext.NAME`.
/// It gets one JSON request on stdin and answers one JSON result on stdout
/// (`docs/PLUGINS.md`). Its parameters are its own business: any mapping is accepted
/// at load time.
#[derive(Debug, Clone)]
pub struct External {
    pub kind: String,
    pub plugin: ExternalPlugin,
}

impl ActionSpec for External {
    fn kind(&self) -> &str {
        &self.kind
    }
    fn class(&self) -> ActionClass {
        match self.plugin.kind {
            ExternalKind::Check => ActionClass::Check,
            ExternalKind::Change => ActionClass::Change,
        }
    }
    fn compensable(&self) -> bool {
        self.plugin.compensable
    }
    fn validate(&self, _with: &Located<Node>, _cx: &ParamCx<'_>) -> Vec<Issue> {
        Vec::new()
    }
}

/// Registers `exec.run` and `exec.check`.
pub fn register(reg: &mut Registry) {
    reg.add_spec(Arc::new(TypedSpec::<RunParams> {
        kind: "exec.run",
        class: ActionClass::Change,
        compensable: true,
        check: |p, _| {
            let mut out: Vec<Issue> = argv(&p.command, "command").into_iter().collect();
            out.extend(p.undo.as_ref().and_then(|u| argv(u, "undo")));
            out.extend(env_names(&p.env, p.command.loc));
            out
        },
    }));
    reg.add_spec(Arc::new(TypedSpec::<CheckParams> {
        kind: "exec.check",
        class: ActionClass::Check,
        compensable: false,
        check: |p, _| {
            argv(&p.command, "command")
                .into_iter()
                .chain(env_names(&p.env, p.command.loc))
                .collect()
        },
    }));
}

/// Registers one `ext.NAME` action per external plugin of the config.
pub fn register_external(reg: &mut Registry, plugins: &[ExternalPlugin]) {
    for p in plugins {
        reg.add_spec(Arc::new(External {
            kind: format!("ext.{}", p.name),
            plugin: p.clone(),
        }));
    }
}
