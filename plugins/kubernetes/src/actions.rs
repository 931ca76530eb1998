//! The five actions: `kubernetes.scale`, `kubernetes.patch`, `kubernetes.annotate`
//! (changes, compensated from their checkpoints), `kubernetes.wait` and
//! `kubernetes.check` (read-only).
//!
//! Checkpoints: before it changes anything, `scale` journals `{"replicas": N}` (the
//! count it found), and `patch` / `annotate` journal `{"restore": PATCH}`, the merge
//! patch that puts back the previous values of exactly the fields they touch (`null`
//! for a field that was absent). The first checkpoint of a step wins, so a re-run
//! after a crash, which may find its own change already made, restores what was there
//! before the first attempt. Compensation applies the checkpoint; it is a no-op when
//! there is none (the step died before it changed anything).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput, parse_params};
use serde_json::{Value, json};

use crate::client::Clients;
use crate::workload::{Target, WaitEnd, inverse_merge_patch};
use crate::{AnnotateParams, CheckParams, PatchParams, ScaleParams, WaitFor, WorkloadParams, checks};

/// How long before the attempt's deadline a wait gives up, so that it can say why.
const MARGIN: Duration = Duration::from_millis(250);

async fn target<'a>(
    clients: &Clients,
    cx: &'a StepContext,
    cluster: &'a str,
    namespace: &'a str,
    kind: crate::WorkloadKind,
    name: &'a str,
) -> Result<Target<'a>, ActionError> {
    Ok(Target {
        client: clients.get(&cx.config, cluster).await?,
        cx,
        cluster,
        namespace,
        kind,
        name,
    })
}

fn wait_until(cx: &StepContext) -> Instant {
    cx.deadline.checked_sub(MARGIN).unwrap_or(cx.deadline)
}

macro_rules! spec {
    ($ty:ty, $kind:literal, $class:expr, $comp:expr, $params:ty) => {
        impl ActionSpec for $ty {
            fn kind(&self) -> &str {
                $kind
            }
            fn class(&self) -> ActionClass {
                $class
            }
            fn compensable(&self) -> bool {
                $comp
            }
            fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
                match parse_params::<$params>(with) {
                    Ok(p) => checks::check(&p, cx),
                    Err(e) => e,
                }
            }
        }
    };
}

/// `kubernetes.scale`.
#[derive(Debug, Default, Clone)]
pub struct Scale(pub(crate) Arc<Clients>);
/// `kubernetes.patch`.
#[derive(Debug, Default, Clone)]
pub struct PatchAction(pub(crate) Arc<Clients>);
/// `kubernetes.annotate`.
#[derive(Debug, Default, Clone)]
pub struct Annotate(pub(crate) Arc<Clients>);
/// `kubernetes.wait`.
#[derive(Debug, Default, Clone)]
pub struct Wait(pub(crate) Arc<Clients>);
/// `kubernetes.check`.
#[derive(Debug, Default, Clone)]
pub struct Check(pub(crate) Arc<Clients>);

spec!(Scale, "kubernetes.scale", ActionClass::Change, true, ScaleParams);
spec!(PatchAction, "kubernetes.patch", ActionClass::Change, true, PatchParams);
spec!(
    Annotate,
    "kubernetes.annotate",
    ActionClass::Change,
    true,
    AnnotateParams
);
spec!(Wait, "kubernetes.wait", ActionClass::Check, false, WorkloadParams);
spec!(Check, "kubernetes.check", ActionClass::Check, false, CheckParams);

#[async_trait]
impl Action for Scale {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: ScaleParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "scale {} {}/{} on `{}` to {} replicas{}",
                p.kind.name(),
                p.namespace.value,
                p.name.value,
                p.cluster.value,
                p.replicas,
                if p.wait.is_some() { " and wait until ready" } else { "" }
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: ScaleParams = cx.params()?;
        let t = target(&self.0, cx, &p.cluster, &p.namespace, p.kind, &p.name).await?;
        let desired = i32::try_from(p.replicas).map_err(|_| ActionError::Permanent("replicas is too large".into()))?;
        let found = t.scale().await?;
        let checkpoint = cx.save_checkpoint(json!({"replicas": found})).await?;
        let previous = checkpoint["replicas"].as_i64().unwrap_or(i64::from(found));
        if found != desired {
            t.set_scale(desired).await?;
        }
        let mut data = json!({"cluster": p.cluster.value, "namespace": p.namespace.value, "kind": p.kind.name(),
            "name": p.name.value, "previous": previous, "replicas": desired});
        let what = format!("{} on `{}`", t.describe(), p.cluster.value);
        let mut summary = if found == desired {
            format!("{what} already had {desired} replicas")
        } else {
            format!("scaled {what} from {found} to {desired} replicas")
        };
        if p.wait == Some(WaitFor::Ready) {
            match t.wait_ready(wait_until(cx)).await {
                Ok((r, stats)) => {
                    summary += &format!(", ready after {:.1}s", stats.waited_s);
                    data["rollout"] = json!(r);
                    data["wait"] = json!(stats);
                }
                // The scale is done: what is unknown is whether it worked, so the
                // step may have acted and is undone if the run halts.
                Err((WaitEnd::NotReady(r), stats)) => {
                    return Err(ActionError::OutcomeUnknown(format!(
                        "scaled {what} to {desired} replicas, but it was not ready within the step's timeout ({:.1}s): {}",
                        stats.waited_s,
                        r.waiting_for()
                    )));
                }
                Err((WaitEnd::Failed(ActionError::Cancelled), _)) => {
                    return Err(ActionError::OutcomeUnknown(format!(
                        "scaled {what} to {desired} replicas; cancelled while waiting until it was ready"
                    )));
                }
                Err((WaitEnd::Failed(e), _)) => {
                    return Err(ActionError::OutcomeUnknown(format!(
                        "scaled {what} to {desired} replicas, then waiting until it was ready failed: {e}"
                    )));
                }
            }
        }
        Ok(StepOutput::new(summary).with_data(data))
    }

    async fn compensate(&self, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError> {
        let p: ScaleParams = cx.params()?;
        let previous = cx
            .checkpoint
            .as_ref()
            .and_then(|c| c["replicas"].as_i64())
            .or_else(|| done.and_then(|d| d.data["previous"].as_i64()));
        let Some(previous) = previous else {
            return Ok(()); // it died before it read, hence before it changed anything
        };
        let t = target(&self.0, cx, &p.cluster, &p.namespace, p.kind, &p.name).await?;
        let previous = i32::try_from(previous).unwrap_or(0);
        if t.scale().await? != previous {
            t.set_scale(previous).await?;
        }
        Ok(())
    }
}

/// Reads the object, journals the inverse of `patch`, applies `patch`.
async fn patch_with_checkpoint(t: &Target<'_>, cx: &StepContext, patch: &Value) -> Result<Value, ActionError> {
    let (current, _) = t.get().await?;
    let inverse = inverse_merge_patch(&current, patch);
    let checkpoint = cx.save_checkpoint(json!({"restore": inverse})).await?;
    t.merge_patch(patch).await?;
    Ok(checkpoint["restore"].clone())
}

async fn restore(t: &Target<'_>, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError> {
    let restore = cx
        .checkpoint
        .as_ref()
        .map(|c| c["restore"].clone())
        .or_else(|| done.map(|d| d.data["restore"].clone()))
        .filter(|r| r.is_object());
    match restore {
        Some(r) => t.merge_patch(&r).await,
        None => Ok(()),
    }
}

#[async_trait]
impl Action for PatchAction {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: PatchParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "merge-patch {} {}/{} on `{}`",
                p.kind.name(),
                p.namespace.value,
                p.name.value,
                p.cluster.value
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: PatchParams = cx.params()?;
        let patch = crate::node_json(&p.patch);
        let t = target(&self.0, cx, &p.cluster, &p.namespace, p.kind, &p.name).await?;
        let restore = patch_with_checkpoint(&t, cx, &patch).await?;
        Ok(
            StepOutput::new(format!("patched {} on `{}`", t.describe(), p.cluster.value))
                .with_data(json!({"cluster": p.cluster.value, "patch": patch, "restore": restore})),
        )
    }

    async fn compensate(&self, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError> {
        let p: PatchParams = cx.params()?;
        let t = target(&self.0, cx, &p.cluster, &p.namespace, p.kind, &p.name).await?;
        restore(&t, cx, done).await
    }
}

#[async_trait]
impl Action for Annotate {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: AnnotateParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "annotate {} {}/{} on `{}` ({})",
                p.kind.name(),
                p.namespace.value,
                p.name.value,
                p.cluster.value,
                p.annotations.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: AnnotateParams = cx.params()?;
        let patch = json!({"metadata": {"annotations": p.annotations}});
        let t = target(&self.0, cx, &p.cluster, &p.namespace, p.kind, &p.name).await?;
        let restore = patch_with_checkpoint(&t, cx, &patch).await?;
        Ok(StepOutput::new(format!(
            "annotated {} on `{}` ({})",
            t.describe(),
            p.cluster.value,
            p.annotations
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => format!("{k} removed"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_data(json!({"cluster": p.cluster.value, "annotations": p.annotations, "restore": restore})))
    }

    async fn compensate(&self, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError> {
        let p: AnnotateParams = cx.params()?;
        let t = target(&self.0, cx, &p.cluster, &p.namespace, p.kind, &p.name).await?;
        restore(&t, cx, done).await
    }
}

#[async_trait]
impl Action for Wait {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: WorkloadParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "wait until the rollout of {} {}/{} on `{}` is ready",
                p.kind.name(),
                p.namespace.value,
                p.name.value,
                p.cluster.value
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: WorkloadParams = cx.params()?;
        let t = target(&self.0, cx, &p.cluster, &p.namespace, p.kind, &p.name).await?;
        match t.wait_ready(wait_until(cx)).await {
            Ok((r, stats)) => Ok(StepOutput::new(format!(
                "{} on `{}` is ready: {} of {} replicas ({:.1}s)",
                t.describe(),
                p.cluster.value,
                r.ready,
                r.desired,
                stats.waited_s
            ))
            .with_data(json!({"cluster": p.cluster.value, "rollout": r, "wait": stats}))),
            Err((WaitEnd::NotReady(r), _)) => Err(ActionError::Retryable(format!(
                "{} on `{}` is not ready: {}",
                t.describe(),
                p.cluster.value,
                r.waiting_for()
            ))),
            Err((WaitEnd::Failed(e), _)) => Err(e),
        }
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

#[async_trait]
impl Action for Check {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: CheckParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "check that {} {}/{} on `{}` has ready replicas",
                p.kind.name(),
                p.namespace.value,
                p.name.value,
                p.cluster.value
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: CheckParams = cx.params()?;
        let t = target(&self.0, cx, &p.cluster, &p.namespace, p.kind, &p.name).await?;
        let (_, r) = t.get().await?;
        let min = p.min_ready.map_or(r.desired, |m| i32::try_from(m).unwrap_or(i32::MAX));
        let what = format!("{} on `{}`", t.describe(), p.cluster.value);
        if r.ready >= min {
            Ok(
                StepOutput::new(format!("{what} has {} ready replicas (at least {min})", r.ready))
                    .with_data(json!({"cluster": p.cluster.value, "rollout": r, "min_ready": min})),
            )
        } else {
            Err(ActionError::Retryable(format!(
                "{what} has {} ready replicas, fewer than {min}",
                r.ready
            )))
        }
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}
