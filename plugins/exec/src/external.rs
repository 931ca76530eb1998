//! The external plugin protocol: an executable declared under `plugins:` in the config
//! is used as `uses: ext.NAME`. For each call it is started afresh, gets one JSON
//! request on stdin and answers one JSON object on stdout (see `docs/PLUGINS.md`).
//!
//! Request: `{"protocol": 1, "op": "execute" | "compensate", "action", "run_id",
//! "step", "attempt", "mode", "params", "timeout_ms", "output"}` (`output`: what the
//! execution returned, for `compensate`).
//! Answer: `{"status": "ok" | "retryable" | "permanent" | "outcome_unknown",
//! "summary": "...", "message": "...", "data": {...}}`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use drover_model::config::{ExternalKind, ExternalPlugin};
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use serde::Deserialize;
use serde_json::json;

use crate::process;

/// Version of the request format.
pub const PROTOCOL: u32 = 1;

/// An external plugin's action.
#[derive(Debug, Clone)]
pub struct External {
    pub kind: String,
    pub plugin: ExternalPlugin,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Ok,
    Retryable,
    Permanent,
    OutcomeUnknown,
}

#[derive(Debug, Deserialize)]
struct Answer {
    status: Status,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

impl External {
    async fn call(&self, cx: &StepContext, op: &str, output: Option<&StepOutput>) -> Result<StepOutput, ActionError> {
        let request = json!({
            "protocol": PROTOCOL,
            "op": op,
            "action": self.kind,
            "run_id": cx.run_id,
            "step": cx.step_id,
            "attempt": cx.attempt,
            "mode": cx.mode.as_str(),
            "params": cx.params.to_json(),
            "timeout_ms": u64::try_from(cx.remaining().as_millis()).unwrap_or(u64::MAX),
            "output": output,
        });
        let body = serde_json::to_vec(&request).map_err(|e| ActionError::Permanent(e.to_string()))?;
        let env = BTreeMap::from([("DROVER_PLUGIN_PROTOCOL".to_owned(), PROTOCOL.to_string())]);
        let done = process::run(&self.plugin.command, &env, None, Some(body), &cx.cancel).await?;
        let text = String::from_utf8_lossy(&done.stdout.bytes);
        let answer: Answer = match text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
        {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                return Err(self.bad_answer(&done, &format!("its answer is not valid JSON ({e})"), op));
            }
            None => return Err(self.bad_answer(&done, "it printed no answer", op)),
        };
        let message = answer
            .message
            .or(answer.summary.clone())
            .unwrap_or_else(|| format!("{} said {:?}", self.kind, answer.status));
        match answer.status {
            Status::Ok => Ok(
                StepOutput::new(answer.summary.unwrap_or_else(|| "ok".into())).with_data(json!({
                    "answer": answer.data,
                    "stderr": done.stderr.text(),
                })),
            ),
            Status::Retryable => Err(ActionError::Retryable(message)),
            Status::Permanent => Err(ActionError::Permanent(message)),
            Status::OutcomeUnknown => Err(ActionError::OutcomeUnknown(message)),
        }
    }

    fn bad_answer(&self, done: &process::Finished, why: &str, op: &str) -> ActionError {
        let msg = format!("plugin `{}` {} and {why}", self.plugin.name, done.describe_status());
        let msg = match done.stderr.last_line() {
            Some(l) => format!("{msg}: {l}"),
            None => msg,
        };
        // A change that answered nothing may have happened.
        if op == "execute" && self.class() == ActionClass::Change {
            ActionError::OutcomeUnknown(msg)
        } else {
            ActionError::Permanent(msg)
        }
    }
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
    /// Parameters are the plugin's own business: any mapping is accepted at load time.
    fn validate(&self, _with: &Located<Node>, _cx: &ParamCx<'_>) -> Vec<Issue> {
        Vec::new()
    }
}

#[async_trait]
impl Action for External {
    async fn plan(&self, _cx: &StepContext) -> Result<Preview, ActionError> {
        Ok(Preview {
            summary: format!("call the external plugin `{}`", self.plugin.name),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        self.call(cx, "execute", None).await
    }

    async fn compensate(&self, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError> {
        if !self.plugin.compensable {
            return Ok(());
        }
        self.call(cx, "compensate", done).await.map(drop)
    }
}
