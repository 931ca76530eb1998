//! `s3.object-lock`: the bucket has Object Lock enabled, with a default retention of at
//! least `mode` (COMPLIANCE is stronger than GOVERNANCE) and `min_retention_days`; with
//! `prefix`, every object under it is also locked until at least `min_retention_days`
//! from now.

use async_trait::async_trait;
use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockMode, ObjectLockRetentionMode};
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use serde_json::json;

use crate::client::{Store, bounded};
use crate::verify::{list, now_unix, rfc3339};
use crate::{LockMode, ObjectLockParams};

/// `s3.object-lock`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectLock;

impl ActionSpec for ObjectLock {
    fn kind(&self) -> &str {
        "s3.object-lock"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Check
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_lock)
    }
}

fn rank(m: &str) -> u8 {
    match m {
        "COMPLIANCE" => 2,
        "GOVERNANCE" => 1,
        _ => 0,
    }
}

#[async_trait]
impl Action for ObjectLock {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: ObjectLockParams = cx.params()?;
        Ok(Preview {
            summary: format!("check Object Lock on object store `{}`", p.store.value),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: ObjectLockParams = cx.params()?;
        let store = Store::resolve(&cx.config, &p.store.value).await?;
        let what = || format!("checking Object Lock on object store `{}`", p.store.value);
        bounded(&cx.cancel, cx.deadline, what, run(&store, &p)).await
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

async fn run(store: &Store, p: &ObjectLockParams) -> Result<StepOutput, ActionError> {
    let bucket = format!("bucket `{}` of object store `{}`", store.bucket, store.name);
    let conf = match store
        .client
        .get_object_lock_configuration()
        .bucket(&store.bucket)
        .send()
        .await
    {
        Ok(o) => o.object_lock_configuration,
        Err(e) => {
            let code = e
                .as_service_error()
                .and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s))
                .unwrap_or("");
            if code == "ObjectLockConfigurationNotFoundError" {
                return Err(ActionError::Permanent(format!(
                    "{bucket} has no Object Lock configuration: Object Lock is not enabled"
                )));
            }
            return Err(store.error("reading the Object Lock configuration", None, e));
        }
    };
    let enabled = conf.as_ref().and_then(|c| c.object_lock_enabled()) == Some(&ObjectLockEnabled::Enabled);
    if !enabled {
        return Err(ActionError::Permanent(format!("{bucket}: Object Lock is not enabled")));
    }
    let retention = conf.as_ref().and_then(|c| c.rule()).and_then(|r| r.default_retention());
    let mode = retention
        .and_then(|r| r.mode())
        .map(|m: &ObjectLockRetentionMode| m.as_str().to_owned());
    let days = retention.and_then(|r| r.days().map(i64::from).or(r.years().map(|y| i64::from(y) * 365)));
    let want_mode = p.mode.map(LockMode::as_str);
    let mut problems = Vec::new();
    if let Some(w) = want_mode
        && rank(mode.as_deref().unwrap_or("")) < rank(w)
    {
        problems.push(format!(
            "default retention mode is {}, not at least {w}",
            mode.as_deref().unwrap_or("none")
        ));
    }
    let min_days = p.min_retention_days.map(i64::from);
    if let Some(m) = min_days
        && p.prefix.is_none()
        && days.unwrap_or(0) < m
    {
        problems.push(format!(
            "default retention is {} days, less than {m}",
            days.unwrap_or(0)
        ));
    }
    let mut unlocked = Vec::new();
    let mut checked = 0usize;
    if let Some(prefix) = &p.prefix {
        let until_min = now_unix() + min_days.unwrap_or(0) as f64 * 86400.0;
        for o in list(store, prefix).await? {
            checked += 1;
            let head = store
                .client
                .head_object()
                .bucket(&store.bucket)
                .key(&o.key)
                .send()
                .await
                .map_err(|e| store.error("reading the retention of", Some(&o.key), e))?;
            let m = head.object_lock_mode().map(|m: &ObjectLockMode| m.as_str().to_owned());
            let until = head.object_lock_retain_until_date().map(|d| d.as_secs_f64());
            let weak = want_mode.is_some_and(|w| rank(m.as_deref().unwrap_or("")) < rank(w));
            if m.is_none() || weak || until.is_none_or(|u| u < until_min) {
                unlocked.push(format!(
                    "`{}` ({}, until {})",
                    o.key,
                    m.as_deref().unwrap_or("no lock"),
                    until.map_or("-".into(), rfc3339)
                ));
            }
        }
        if !unlocked.is_empty() {
            let n = unlocked.len();
            problems.push(format!(
                "{n} objects under `{prefix}` not retained long enough: {}",
                unlocked.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ActionError::Permanent(format!("{bucket}: {}", problems.join("; "))));
    }
    Ok(StepOutput::new(format!(
        "{bucket}: Object Lock enabled, default retention {} {} days{}",
        mode.as_deref().unwrap_or("none"),
        days.unwrap_or(0),
        if p.prefix.is_some() { format!(", {checked} objects retained") } else { String::new() }
    ))
    .with_data(json!({"store": store.name, "bucket": store.bucket, "enabled": true, "mode": mode, "days": days, "objects_checked": checked})))
}
