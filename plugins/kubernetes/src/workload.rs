//! Deployments and StatefulSets behind one interface: reading one, its rollout
//! state (as `kubectl rollout status` judges it), its scale subresource, merge
//! patches, and waiting on a watch until the rollout is ready.

use std::fmt;
use std::time::{Duration, Instant};

use drover_plugin_api::{ActionError, StepContext};
use futures_util::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use kube::core::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::WorkloadKind;
use crate::client::{Call, call, map_error};

/// What a rollout's readiness is judged on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Rollout {
    pub generation: i64,
    pub observed_generation: i64,
    /// `spec.replicas` (1 when unset, as the API server defaults it).
    pub desired: i32,
    /// `status.replicas`: pods of any revision.
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// StatefulSets: `currentRevision` and `updateRevision`, when reported.
    pub current_revision: Option<String>,
    pub update_revision: Option<String>,
    /// A Deployment's `Progressing` condition says `ProgressDeadlineExceeded`: the
    /// controller gave up (kubectl's rollout status fails on it too).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deadline_exceeded: bool,
}

impl Rollout {
    /// Ready as `kubectl rollout status` has it: the controller has seen the latest
    /// generation, and every desired pod is updated, ready and available, with no
    /// old pod left (a StatefulSet: its current revision is the update revision).
    pub fn is_ready(&self) -> bool {
        let n = self.desired;
        let revisions_agree = match (&self.current_revision, &self.update_revision) {
            (Some(c), Some(u)) => c == u,
            _ => true,
        };
        self.observed_generation >= self.generation
            && self.updated == n
            && self.ready == n
            && self.available == n
            && self.replicas == n
            && revisions_agree
    }

    /// Why it is not ready, for messages.
    pub fn waiting_for(&self) -> String {
        if self.observed_generation < self.generation {
            return format!(
                "the controller has not observed generation {} yet (observed {})",
                self.generation, self.observed_generation
            );
        }
        let mut s = format!(
            "{} of {} updated, {} ready, {} available",
            self.updated, self.desired, self.ready, self.available
        );
        if self.replicas > self.desired {
            s += &format!(", {} old replicas pending termination", self.replicas - self.desired);
        }
        if let (Some(c), Some(u)) = (&self.current_revision, &self.update_revision)
            && c != u
        {
            s += &format!(", revision {c} rolling to {u}");
        }
        s
    }
}

/// A workload type the plugin handles.
pub(crate) trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn rollout(&self) -> Rollout;
}

fn z(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

impl Workload for Deployment {
    fn rollout(&self) -> Rollout {
        let st = self.status.clone().unwrap_or_default();
        Rollout {
            generation: self.metadata.generation.unwrap_or(0),
            observed_generation: st.observed_generation.unwrap_or(0),
            desired: self.spec.replicas.unwrap_or(1),
            replicas: z(st.replicas),
            updated: z(st.updated_replicas),
            ready: z(st.ready_replicas),
            available: z(st.available_replicas),
            current_revision: None,
            update_revision: None,
            deadline_exceeded: st.conditions.iter().flatten().any(|c| {
                c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            }),
        }
    }
}

impl Workload for StatefulSet {
    fn rollout(&self) -> Rollout {
        let st = self.status.clone().unwrap_or_default();
        let ready = z(st.ready_replicas);
        Rollout {
            generation: self.metadata.generation.unwrap_or(0),
            observed_generation: st.observed_generation.unwrap_or(0),
            desired: self.spec.replicas.unwrap_or(1),
            replicas: st.replicas,
            updated: z(st.updated_replicas),
            ready,
            // Older servers leave out availableReplicas: ready then counts.
            available: st.available_replicas.unwrap_or(ready),
            current_revision: st.current_revision,
            update_revision: st.update_revision,
            deadline_exceeded: false,
        }
    }
}

/// One workload on one cluster.
pub(crate) struct Target<'a> {
    pub cx: &'a StepContext,
    pub client: kube::Client,
    pub cluster: &'a str,
    pub namespace: &'a str,
    pub kind: WorkloadKind,
    pub name: &'a str,
}

/// How a wait went: the watches it took.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct WaitStats {
    /// Watch requests made.
    pub watches: u32,
    /// Watches that ended early and were resumed from the last resourceVersion.
    pub resumed: u32,
    /// Fresh reads after `410 Gone`.
    pub relists: u32,
    pub waited_s: f64,
}

/// A wait that ended without a ready rollout.
#[derive(Debug)]
pub(crate) enum WaitEnd {
    Failed(ActionError),
    /// The attempt's time is up; the rollout as last seen.
    NotReady(Rollout),
}

impl From<ActionError> for WaitEnd {
    fn from(e: ActionError) -> Self {
        WaitEnd::Failed(e)
    }
}

impl Target<'_> {
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind.name(), self.namespace, self.name)
    }

    fn call(&self, change: bool) -> Call<'_> {
        Call {
            cluster: self.cluster,
            object: self.describe(),
            change,
        }
    }

    fn api<K: Workload>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    fn gave_up(&self) -> ActionError {
        ActionError::Permanent(format!(
            "{} on `{}` exceeded its progress deadline (Progressing: ProgressDeadlineExceeded)",
            self.describe(),
            self.cluster
        ))
    }

    /// The object as JSON and its rollout.
    pub async fn get(&self) -> Result<(Value, Rollout), ActionError> {
        match self.kind {
            WorkloadKind::Deployment => self.get_as::<Deployment>().await,
            WorkloadKind::StatefulSet => self.get_as::<StatefulSet>().await,
        }
    }

    async fn get_as<K: Workload>(&self) -> Result<(Value, Rollout), ActionError> {
        let o: K = call(self.cx, &self.call(false), self.api::<K>().get(self.name)).await?;
        let r = o.rollout();
        Ok((serde_json::to_value(&o).unwrap_or(Value::Null), r))
    }

    /// `spec.replicas` through the scale subresource.
    pub async fn scale(&self) -> Result<i32, ActionError> {
        let s = match self.kind {
            WorkloadKind::Deployment => {
                call(
                    self.cx,
                    &self.call(false),
                    self.api::<Deployment>().get_scale(self.name),
                )
                .await?
            }
            WorkloadKind::StatefulSet => {
                call(
                    self.cx,
                    &self.call(false),
                    self.api::<StatefulSet>().get_scale(self.name),
                )
                .await?
            }
        };
        Ok(s.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    /// Sets `spec.replicas` through the scale subresource (a merge patch).
    pub async fn set_scale(&self, replicas: i32) -> Result<(), ActionError> {
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
        let pp = PatchParams::default();
        match self.kind {
            WorkloadKind::Deployment => {
                call(
                    self.cx,
                    &self.call(true),
                    self.api::<Deployment>().patch_scale(self.name, &pp, &patch),
                )
                .await?;
            }
            WorkloadKind::StatefulSet => {
                call(
                    self.cx,
                    &self.call(true),
                    self.api::<StatefulSet>().patch_scale(self.name, &pp, &patch),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Applies a JSON merge patch to the object.
    pub async fn merge_patch(&self, patch: &Value) -> Result<(), ActionError> {
        let patch = Patch::Merge(patch);
        let pp = PatchParams::default();
        match self.kind {
            WorkloadKind::Deployment => {
                call(
                    self.cx,
                    &self.call(true),
                    self.api::<Deployment>().patch(self.name, &pp, &patch),
                )
                .await?;
            }
            WorkloadKind::StatefulSet => {
                call(
                    self.cx,
                    &self.call(true),
                    self.api::<StatefulSet>().patch(self.name, &pp, &patch),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Waits until the rollout is ready, on a watch of this one object from the
    /// resourceVersion last read: a watch that ends is resumed from the last version
    /// seen (bookmarks included), a `410 Gone` makes a fresh read. Ends `until`.
    pub async fn wait_ready(&self, until: Instant) -> Result<(Rollout, WaitStats), (WaitEnd, WaitStats)> {
        match self.kind {
            WorkloadKind::Deployment => self.wait_as::<Deployment>(until).await,
            WorkloadKind::StatefulSet => self.wait_as::<StatefulSet>(until).await,
        }
    }

    async fn wait_as<K: Workload>(&self, until: Instant) -> Result<(Rollout, WaitStats), (WaitEnd, WaitStats)> {
        let started = Instant::now();
        let mut stats = WaitStats::default();
        let done = |mut stats: WaitStats| {
            stats.waited_s = started.elapsed().as_secs_f64();
            stats
        };
        let api = self.api::<K>();
        let fields = format!("metadata.name={}", self.name);
        'read: loop {
            let o: K = match call(self.cx, &self.call(false), api.get(self.name)).await {
                Ok(o) => o,
                Err(e) => return Err((e.into(), done(stats))),
            };
            let mut last = o.rollout();
            if last.is_ready() {
                return Ok((last, done(stats)));
            }
            if last.deadline_exceeded {
                return Err((self.gave_up().into(), done(stats)));
            }
            let mut rv = o.meta().resource_version.clone().unwrap_or_default();
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err((WaitEnd::NotReady(last), done(stats)));
                }
                let secs = left.as_secs().clamp(1, 290) as u32;
                let wp = WatchParams::default().fields(&fields).timeout(secs);
                stats.watches += 1;
                let stream = match call(self.cx, &self.call(false), api.watch(&wp, &rv)).await {
                    Ok(s) => s,
                    Err(e) => return Err((e.into(), done(stats))),
                };
                let mut stream = std::pin::pin!(stream);
                loop {
                    let next = tokio::select! {
                        _ = self.cx.cancel.cancelled() => return Err((WaitEnd::Failed(ActionError::Cancelled), done(stats))),
                        _ = tokio::time::sleep_until(until.into()) => return Err((WaitEnd::NotReady(last), done(stats))),
                        n = stream.next() => n,
                    };
                    match next {
                        // The server ended the watch (its timeout, a cut connection).
                        None => {
                            stats.resumed += 1;
                            break;
                        }
                        Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                            rv = o.meta().resource_version.clone().unwrap_or(rv);
                            last = o.rollout();
                            if last.is_ready() {
                                return Ok((last, done(stats)));
                            }
                            if last.deadline_exceeded {
                                return Err((self.gave_up().into(), done(stats)));
                            }
                        }
                        Some(Ok(WatchEvent::Deleted(_))) => {
                            let e = ActionError::Permanent(format!(
                                "{} was deleted from cluster `{}` while waiting for its rollout",
                                self.describe(),
                                self.cluster
                            ));
                            return Err((e.into(), done(stats)));
                        }
                        Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                        Some(Ok(WatchEvent::Error(s))) if s.code == 410 => {
                            stats.relists += 1;
                            continue 'read;
                        }
                        Some(Ok(WatchEvent::Error(s))) => {
                            let e = map_error(self.cx, &self.call(false), kube::Error::Api(s)).await;
                            return Err((e.into(), done(stats)));
                        }
                        // A broken stream: resume from the last version seen.
                        Some(Err(_)) => {
                            stats.resumed += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// The merge patch that puts back what `patch` would change in `current`: for every
/// key `patch` sets, the value `current` has there (`null` where it has none), down
/// through the objects both have; a list or scalar is restored whole.
pub(crate) fn inverse_merge_patch(current: &Value, patch: &Value) -> Value {
    match (current, patch) {
        (Value::Object(cur), Value::Object(p)) => {
            let mut out = serde_json::Map::new();
            for (k, pv) in p {
                let inv = match cur.get(k) {
                    None => Value::Null,
                    Some(cv) if pv.is_object() && cv.is_object() => inverse_merge_patch(cv, pv),
                    Some(cv) => cv.clone(),
                };
                out.insert(k.clone(), inv);
            }
            Value::Object(out)
        }
        _ => current.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(target: &mut Value, patch: &Value) {
        if let Value::Object(p) = patch {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        } else {
            *target = patch.clone();
        }
    }

    #[test]
    fn the_inverse_patch_restores_exactly_the_touched_fields() {
        let before = json!({"metadata": {"annotations": {"a": "1", "keep": "x"}, "labels": {"l": "v"}},
            "spec": {"paused": false, "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        let patch = json!({"metadata": {"annotations": {"a": "2", "b": "new", "keep": null}},
            "spec": {"paused": true, "minReadySeconds": 5, "template": {"spec": {"containers": [{"name": "c", "image": "i:2"}]}}}});
        let inverse = inverse_merge_patch(&before, &patch);
        let mut after = before.clone();
        merge(&mut after, &patch);
        assert_ne!(after, before);
        merge(&mut after, &inverse);
        assert_eq!(after, before);
        assert_eq!(
            inverse["metadata"],
            json!({"annotations": {"a": "1", "b": null, "keep": "x"}}),
            "labels are not touched"
        );
    }

    #[test]
    fn readiness_follows_rollout_status() {
        let mut r = Rollout {
            generation: 2,
            observed_generation: 1,
            desired: 3,
            replicas: 3,
            updated: 3,
            ready: 3,
            available: 3,
            ..Default::default()
        };
        assert!(!r.is_ready(), "generation not observed");
        r.observed_generation = 2;
        assert!(r.is_ready());
        r.available = 2;
        assert!(!r.is_ready());
        r.available = 3;
        r.replicas = 4;
        assert!(!r.is_ready(), "an old pod is left");
        r.replicas = 3;
        r.current_revision = Some("a".into());
        r.update_revision = Some("b".into());
        assert!(!r.is_ready());
        assert!(r.waiting_for().contains("rolling to b"));
    }
}
