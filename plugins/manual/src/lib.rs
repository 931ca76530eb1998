//! Gates that wait for people or for time: `manual.approve` and `manual.wait`.

use std::sync::Arc;

use async_trait::async_trait;
use drover_model::{Dur, Issue, Located, Node, ParamCx};
use drover_plugin_api::{
    Action, ActionClass, ActionError, ActionSpec, Approval, Preview, Registry, StepContext, StepOutput, parse_params,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveParams {
    /// The question put to the operator.
    pub prompt: Located<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    pub duration: Dur,
}

/// `manual.approve`: released by `--yes`, a terminal prompt or the API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Approve;

/// `manual.wait`: waits for a fixed time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wait;

use drover_plugin_api::current_user;

impl ActionSpec for Approve {
    fn kind(&self) -> &str {
        "manual.approve"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Gate
    }
    fn validate(&self, with: &Located<Node>, _: &ParamCx<'_>) -> Vec<Issue> {
        match parse_params::<ApproveParams>(with) {
            Ok(p) if p.prompt.trim().is_empty() => {
                vec![Issue::new(p.prompt.loc, "manual.approve needs a non-empty prompt")]
            }
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }
}

#[async_trait]
impl Action for Approve {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: ApproveParams = cx.params()?;
        Ok(Preview {
            summary: format!("wait for approval: {}", p.prompt.as_str()),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: ApproveParams = cx.params()?;
        let approval = if cx.approved {
            Approval {
                by: current_user(),
                via: "--yes".into(),
                reason: None,
            }
        } else {
            tokio::select! {
                r = cx.approver.approve(&cx.run_id, &cx.step_id, &p.prompt) => r.map_err(ActionError::Permanent)?,
                () = cx.cancel.cancelled() => return Err(ActionError::Cancelled),
            }
        };
        Ok(StepOutput::new(format!(
            "approved by {} via {}{}",
            approval.by,
            approval.via,
            approval.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        ))
        .with_data(json!({
            "prompt": p.prompt.as_str(),
            "approved_by": approval.by,
            "via": approval.via,
            "reason": approval.reason,
        })))
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

impl ActionSpec for Wait {
    fn kind(&self) -> &str {
        "manual.wait"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Gate
    }
    fn validate(&self, with: &Located<Node>, _: &ParamCx<'_>) -> Vec<Issue> {
        parse_params::<WaitParams>(with).err().unwrap_or_default()
    }
}

#[async_trait]
impl Action for Wait {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: WaitParams = cx.params()?;
        Ok(Preview {
            summary: format!("wait {}", p.duration),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: WaitParams = cx.params()?;
        tokio::select! {
            () = tokio::time::sleep(p.duration.0) => Ok(StepOutput::new(format!("waited {}", p.duration))),
            () = cx.cancel.cancelled() => Err(ActionError::Cancelled),
        }
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

/// Registers `manual.approve` and `manual.wait`.
pub fn register(reg: &mut Registry) {
    reg.add(Arc::new(Approve));
    reg.add(Arc::new(Wait));
}
