//! `postgres.writable`: passes when the database accepts a write. The write leaves
//! nothing behind: a temporary table created in a transaction that is rolled back.
//! A standby or a fenced primary refuses it as read-only.

use std::time::Instant;

use async_trait::async_trait;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use serde_json::json;

use crate::DatabaseParams;
use crate::conn::Target;

/// `postgres.writable`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Writable;

impl ActionSpec for Writable {
    fn kind(&self) -> &str {
        "postgres.writable"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Check
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_database)
    }
}

#[async_trait]
impl Action for Writable {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: DatabaseParams = cx.params()?;
        Ok(Preview {
            summary: format!("check that `{}` accepts a write", p.database.value),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: DatabaseParams = cx.params()?;
        let name = p.database.value.as_str();
        let started = Instant::now();
        let db = Target::resolve(&cx.config, name)?
            .connect(&cx.cancel, cx.deadline)
            .await?;
        match db.probe_write().await {
            Ok(Ok(())) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                Ok(StepOutput::new(format!("`{name}` accepts writes ({ms:.0} ms)"))
                    .with_data(json!({"database": name, "latency_s": ms / 1000.0})))
            }
            Ok(Err(refusal)) => Err(ActionError::Retryable(format!("`{name}` refuses writes: {refusal}"))),
            Err(e) => Err(e.into_action("the write probe failed", false)),
        }
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}
