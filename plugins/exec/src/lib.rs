//! Local commands: `exec.run` (a change, with an optional `undo` command as its
//! compensation) and `exec.check` (passes when the command exits 0); and the external
//! plugin protocol, which makes an executable declared in the config usable as
//! `uses: ext.NAME`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use drover_model::config::ExternalPlugin;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{
    Action, ActionClass, ActionError, ActionSpec, Preview, Registry, StepContext, StepOutput, parse_params,
};
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
    /// argv run before `command` that prints the prior state (e.g. the current replica
    /// count); its stdout is journaled as the step's checkpoint before the change, and
    /// `undo` gets it in `$DROVER_CHECKPOINT`, also when the change's outcome is unknown.
    #[serde(default)]
    pub checkpoint: Option<Located<Vec<String>>>,
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
        Some(p) if p.is_empty() => Some(Issue::new(cmd.loc, format!("{what}: the program name is empty"))),
        Some(_) => None,
    }
}

fn env_names(env: &BTreeMap<String, String>, loc: drover_model::Location) -> Option<Issue> {
    env.keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        .map(|k| Issue::new(loc, format!("`{k}` is not a valid environment variable name")))
}

pub mod process;

/// `exec.run`: runs a command; a non-zero exit fails the attempt (retryable).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecRun;

/// `exec.check`: passes when the command exits 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecCheck;

impl ActionSpec for ExecRun {
    fn kind(&self) -> &str {
        "exec.run"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Change
    }
    fn compensable(&self) -> bool {
        true
    }
    fn can_compensate(&self, with: &Located<Node>) -> bool {
        with.get("undo").is_some()
    }
    fn validate(&self, with: &Located<Node>, _: &ParamCx<'_>) -> Vec<Issue> {
        match parse_params::<RunParams>(with) {
            Ok(p) => {
                let mut out: Vec<Issue> = argv(&p.command, "command").into_iter().collect();
                out.extend(p.undo.as_ref().and_then(|u| argv(u, "undo")));
                out.extend(p.checkpoint.as_ref().and_then(|c| argv(c, "checkpoint")));
                out.extend(env_names(&p.env, p.command.loc));
                out
            }
            Err(e) => e,
        }
    }
}

#[async_trait]
impl Action for ExecRun {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: RunParams = cx.params()?;
        Ok(Preview {
            summary: format!("run `{}`", p.command.join(" ")),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: RunParams = cx.params()?;
        if let Some(cmd) = &p.checkpoint
            && cx.checkpoint.is_none()
        {
            let prior = process::run(cmd, &p.env, p.cwd.as_deref(), None, &cx.cancel).await?;
            if !prior.success() {
                // Nothing changed yet: the change is not attempted without its checkpoint.
                return Err(ActionError::Retryable(format!(
                    "checkpoint: {}",
                    prior.failure_message()
                )));
            }
            cx.save_checkpoint(serde_json::Value::String(prior.stdout.text().trim_end().to_owned()))
                .await?;
        }
        let done = process::run(&p.command, &p.env, p.cwd.as_deref(), None, &cx.cancel).await?;
        if done.success() {
            Ok(StepOutput::new(format!("`{}` exited 0", p.command.join(" "))).with_data(done.to_json()))
        } else {
            Err(ActionError::Retryable(done.failure_message()))
        }
    }

    async fn compensate(&self, cx: &StepContext, _done: Option<&StepOutput>) -> Result<(), ActionError> {
        let p: RunParams = cx.params()?;
        let Some(undo) = &p.undo else { return Ok(()) };
        let mut env = p.env.clone();
        if let Some(prior) = &cx.checkpoint {
            let text = match prior {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            env.insert("DROVER_CHECKPOINT".into(), text);
        }
        let done = process::run(undo, &env, p.cwd.as_deref(), None, &cx.cancel).await?;
        if done.success() {
            Ok(())
        } else {
            Err(ActionError::Retryable(done.failure_message()))
        }
    }
}

impl ActionSpec for ExecCheck {
    fn kind(&self) -> &str {
        "exec.check"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Check
    }
    fn validate(&self, with: &Located<Node>, _: &ParamCx<'_>) -> Vec<Issue> {
        match parse_params::<CheckParams>(with) {
            Ok(p) => argv(&p.command, "command")
                .into_iter()
                .chain(env_names(&p.env, p.command.loc))
                .collect(),
            Err(e) => e,
        }
    }
}

#[async_trait]
impl Action for ExecCheck {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: CheckParams = cx.params()?;
        Ok(Preview {
            summary: format!("check that `{}` exits 0", p.command.join(" ")),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: CheckParams = cx.params()?;
        let done = process::run(&p.command, &p.env, p.cwd.as_deref(), None, &cx.cancel).await?;
        if done.success() {
            Ok(StepOutput::new(format!("`{}` exited 0", p.command.join(" "))).with_data(done.to_json()))
        } else {
            Err(ActionError::Retryable(done.failure_message()))
        }
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

pub mod external;
pub use external::External;

/// Registers `exec.run` and `exec.check`.
pub fn register(reg: &mut Registry) {
    reg.add(Arc::new(ExecRun));
    reg.add(Arc::new(ExecCheck));
}

/// Registers one `ext.NAME` action per external plugin of the config.
pub fn register_external(reg: &mut Registry, plugins: &[ExternalPlugin]) {
    for p in plugins {
        reg.add(Arc::new(External {
            kind: format!("ext.{}", p.name),
            plugin: p.clone(),
        }));
    }
}
