//! `s3.replication`: the target store holds what the source holds under a prefix.
//!
//! Both buckets are listed (paginated). A source object is `missing` in the target,
//! `stale` (the target's copy differs and is older: replication pending), or
//! `mismatch` (it differs and is not older: not a replication delay). Copies are
//! compared by size, then by ETag when both are single-part ETags, else by the stored
//! SHA-256 checksums when both have one. The lag is the age of the oldest source object
//! whose copy is missing or stale. The check passes when nothing mismatches and the lag
//! is within `max_lag` (no `max_lag`: no missing or stale object at all).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_s3::types::ChecksumMode;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use serde_json::json;

use crate::ReplicationParams;
use crate::client::{Store, bounded};
use crate::verify::{Listed, list, now_unix, rfc3339};

const NAMED: usize = 10;

/// `s3.replication`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replication;

impl ActionSpec for Replication {
    fn kind(&self) -> &str {
        "s3.replication"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Check
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_replication)
    }
}

fn single_part(etag: &Option<String>) -> Option<&str> {
    etag.as_deref().filter(|e| !e.contains('-'))
}

/// (ETag, stored SHA-256) from a HEAD.
async fn head(store: &Store, key: &str) -> Result<(Option<String>, Option<String>), ActionError> {
    let head = store
        .client
        .head_object()
        .bucket(&store.bucket)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .map_err(|e| store.error("reading the metadata of", Some(key), e))?;
    Ok((
        head.e_tag().map(str::to_owned),
        head.checksum_sha256().map(str::to_owned),
    ))
}

/// Whether two copies hold the same bytes, as far as the servers can tell without a download.
async fn same(src: &Store, dst: &Store, s: &Listed, t: &Listed) -> Result<Result<(), String>, ActionError> {
    if s.size != t.size {
        return Ok(Err(format!("size {} in the source, {} in the target", s.size, t.size)));
    }
    if let (Some(a), Some(b)) = (single_part(&s.etag), single_part(&t.etag)) {
        return Ok(if a == b {
            Ok(())
        } else {
            Err(format!("ETag {a} in the source, {b} in the target"))
        });
    }
    // Listings without ETags (s3s-fs), or multipart ETags: ask each object.
    let ((ea, ca), (eb, cb)) = tokio::try_join!(head(src, &s.key), head(dst, &t.key))?;
    if let (Some(a), Some(b)) = (&ca, &cb) {
        return Ok(if a == b {
            Ok(())
        } else {
            Err(format!("SHA-256 {a} in the source, {b} in the target"))
        });
    }
    Ok(match (single_part(&ea), single_part(&eb)) {
        (Some(a), Some(b)) if a != b => Err(format!("ETag {a} in the source, {b} in the target")),
        _ => Ok(()),
    })
}

fn name_keys(keys: &[String]) -> String {
    let mut s = keys
        .iter()
        .take(NAMED)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > NAMED {
        s += &format!(" and {} more", keys.len() - NAMED);
    }
    s
}

#[async_trait]
impl Action for Replication {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: ReplicationParams = cx.params()?;
        Ok(Preview {
            summary: format!("compare object store `{}` with `{}`", p.source.value, p.target.value),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: ReplicationParams = cx.params()?;
        let src = Store::resolve(&cx.config, &p.source.value).await?;
        let dst = Store::resolve(&cx.config, &p.target.value).await?;
        let what = || format!("comparing object store `{}` with `{}`", p.source.value, p.target.value);
        bounded(&cx.cancel, cx.deadline, what, run(&src, &dst, &p)).await
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

async fn run(src: &Store, dst: &Store, p: &ReplicationParams) -> Result<StepOutput, ActionError> {
    let prefix = p.prefix.as_deref().unwrap_or("");
    let (source, target) = tokio::try_join!(list(src, prefix), list(dst, prefix))?;
    let target: HashMap<&str, &Listed> = target.iter().map(|o| (o.key.as_str(), o)).collect();
    let now = now_unix();
    let (mut missing, mut stale, mut mismatch) = (Vec::new(), Vec::new(), Vec::new());
    let mut oldest_pending: Option<f64> = None;
    let mut details = Vec::new();
    for s in &source {
        let pending = match target.get(s.key.as_str()) {
            None => {
                missing.push(s.key.clone());
                details.push(json!({"key": s.key, "status": "missing", "source_modified": rfc3339(s.modified)}));
                true
            }
            Some(t) => match same(src, dst, s, t).await? {
                Ok(()) => false,
                Err(why) if t.modified < s.modified => {
                    stale.push(s.key.clone());
                    details.push(json!({"key": s.key, "status": "stale", "detail": why,
                        "source_modified": rfc3339(s.modified), "target_modified": rfc3339(t.modified)}));
                    true
                }
                Err(why) => {
                    mismatch.push(s.key.clone());
                    details.push(json!({"key": s.key, "status": "mismatch", "detail": why,
                        "source_modified": rfc3339(s.modified), "target_modified": rfc3339(t.modified)}));
                    false
                }
            },
        };
        if pending {
            oldest_pending = Some(oldest_pending.map_or(s.modified, |o: f64| o.min(s.modified)));
        }
    }
    let lag_s = oldest_pending.map_or(0.0, |t| (now - t).max(0.0).floor());
    let max_lag_s = p.max_lag.map(|d| d.as_secs_f64());
    let mut problems = Vec::new();
    if !mismatch.is_empty() {
        problems.push(format!(
            "differ in the target (not older than the source): {}",
            name_keys(&mismatch)
        ));
    }
    let over = match max_lag_s {
        Some(m) => lag_s > m,
        None => oldest_pending.is_some(),
    };
    if over {
        let mut s = format!("lag {lag_s}s");
        if let Some(m) = &p.max_lag {
            s += &format!(" over max_lag {m}");
        }
        if !missing.is_empty() {
            s += &format!("; missing in the target: {}", name_keys(&missing));
        }
        if !stale.is_empty() {
            s += &format!("; stale in the target: {}", name_keys(&stale));
        }
        problems.push(s);
    }
    let scope = format!("`{}` -> `{}` under `{prefix}`", src.name, dst.name);
    if !problems.is_empty() {
        let msg = format!("replication {scope}: {}", problems.join("; "));
        return Err(if mismatch.is_empty() {
            ActionError::Retryable(msg)
        } else {
            ActionError::Permanent(msg)
        });
    }
    Ok(StepOutput::new(format!(
        "replication {scope}: {} objects, {} missing, {} stale, lag {lag_s}s",
        source.len(),
        missing.len(),
        stale.len()
    ))
    .with_data(json!({
        "source": src.name, "target": dst.name, "prefix": prefix,
        "objects": source.len(), "missing": missing, "stale": stale, "mismatch": mismatch,
        "differences": details, "lag_s": lag_s, "max_lag_s": max_lag_s,
        "measurements": {"replication_lag_s": lag_s},
    })))
}
