//! The simulator's state: workloads as the JSON of their k8s-openapi types, the
//! cluster's resourceVersion counter, per-object generation, the event history that
//! watches replay, and the controller that moves `status` towards `spec.replicas`.
//!
//! Bookkeeping as the API server keeps it:
//! - `metadata.resourceVersion` is one counter for the whole cluster (etcd's
//!   revision); every write that changes an object takes the next value; a write that
//!   changes nothing (a no-op patch) keeps the old one and emits no event.
//! - `metadata.generation` starts at 1 and increases by one on every change of
//!   `spec`, and for a Deployment also of its annotations (the API server's
//!   deployment strategy does so because annotations are copied to ReplicaSets);
//!   labels and `status` leave it alone.
//! - `status.observedGeneration` is set by the controller once it has seen a
//!   generation; readiness follows after the workload's readiness delay.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use serde_json::{Value, json};

/// The two workload kinds the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deployment,
    StatefulSet,
}

impl Kind {
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
        }
    }
    pub fn from_plural(p: &str) -> Option<Kind> {
        match p {
            "deployments" => Some(Kind::Deployment),
            "statefulsets" => Some(Kind::StatefulSet),
            _ => None,
        }
    }
}

/// One key of the store.
pub(crate) type Key = (Kind, String, String);

/// A workload and what the controller knows about it.
#[derive(Debug, Clone)]
pub(crate) struct Obj {
    pub value: Value,
    pub ready_delay: Duration,
    /// Ready pods (what `readyReplicas` and `availableReplicas` report).
    pub ready: i32,
    /// Pods of the current template.
    pub updated: i32,
    /// The template hash the pods run (StatefulSet `currentRevision`).
    pub current_revision: String,
    /// The rollout never becomes ready: once it observes a change, the controller
    /// reports `Progressing: False, ProgressDeadlineExceeded` (Deployments).
    pub stalled: bool,
}

/// A watch event, kept in the history.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind_of_event: &'static str,
    pub object: Value,
}

/// At most this many events are kept for watches; older ones are compacted away.
const HISTORY: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct Store {
    pub rv: u64,
    pub uid: u64,
    pub objects: BTreeMap<Key, Obj>,
    pub namespaces: BTreeSet<String>,
    pub history: VecDeque<Event>,
    /// Events at or before this resourceVersion are gone: a watch from an older
    /// version gets `410 Gone`.
    pub compacted: u64,
}

pub(crate) fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The hash-like revision name of a template (what a StatefulSet reports).
pub(crate) fn revision(name: &str, template: &Value) -> String {
    // FNV-1a of the template's canonical JSON: stable, and different for any change.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in template.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{name}-{:010x}", h & 0xff_ffff_ffff)
}

fn template(name: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("registry.example/app:1.0".to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn record(&mut self, key: &Key, kind_of_event: &'static str, object: Value, rv: u64) {
        self.history.push_back(Event {
            rv,
            kind: key.0,
            namespace: key.1.clone(),
            name: key.2.clone(),
            kind_of_event,
            object,
        });
        while self.history.len() > HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
    }

    /// Creates a workload with `replicas` ready pods (its status settled).
    pub fn create(&mut self, kind: Kind, ns: &str, name: &str, replicas: i32, ready_delay: Duration) -> Value {
        self.namespaces.insert(ns.to_owned());
        self.uid += 1;
        let rv = self.next_rv();
        let meta = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            uid: Some(format!("6c0f1d2e-0000-4000-8000-{:012x}", self.uid)),
            resource_version: Some(rv.to_string()),
            generation: Some(1),
            creation_timestamp: Some(now()),
            labels: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ..Default::default()
        };
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ..Default::default()
        };
        let mut value = match kind {
            Kind::Deployment => serde_json::to_value(Deployment {
                metadata: meta,
                spec: DeploymentSpec {
                    replicas: Some(replicas),
                    selector,
                    template: template(name),
                    ..Default::default()
                },
                status: None,
            }),
            Kind::StatefulSet => serde_json::to_value(StatefulSet {
                metadata: meta,
                spec: StatefulSetSpec {
                    replicas: Some(replicas),
                    selector,
                    service_name: Some(name.to_owned()),
                    template: template(name),
                    ..Default::default()
                },
                status: None,
            }),
        }
        .expect("a workload serializes");
        let rev = revision(name, &value["spec"]["template"]);
        let obj = Obj {
            value: Value::Null,
            ready_delay,
            ready: replicas,
            updated: replicas,
            current_revision: rev.clone(),
            stalled: false,
        };
        value["status"] = status(kind, &value, &obj, 1, &rev);
        let key = (kind, ns.to_owned(), name.to_owned());
        self.objects.insert(
            key.clone(),
            Obj {
                value: value.clone(),
                ..obj
            },
        );
        self.record(&key, "ADDED", value.clone(), rv);
        value
    }

    /// Stores a changed object: a new resourceVersion (unless nothing changed), a new
    /// generation when `spec` (or a Deployment's annotations) changed. Returns (the
    /// stored object, whether the generation changed).
    pub fn update(&mut self, key: &Key, mut new: Value) -> (Value, bool) {
        let old = self.objects[key].value.clone();
        // What the client may not change.
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
        ] {
            match old["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        if new == old {
            return (old, false);
        }
        // A Deployment's annotations count too: the API server bumps its generation
        // for them, as they are copied to its ReplicaSets (a StatefulSet's do not).
        let spec_changed = new["spec"] != old["spec"]
            || (key.0 == Kind::Deployment && new["metadata"]["annotations"] != old["metadata"]["annotations"]);
        if spec_changed {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = self.objects.get_mut(key).expect("the object exists");
        obj.value = new.clone();
        self.record(key, "MODIFIED", new.clone(), rv);
        (new, spec_changed)
    }

    /// The controller's view: writes `status` for generation `g` (bumping the
    /// resourceVersion when it changes).
    pub fn set_status(&mut self, key: &Key, g: i64) {
        let Some(obj) = self.objects.get(key) else { return };
        let rev = revision(&key.2, &obj.value["spec"]["template"]);
        let st = status(key.0, &obj.value, obj, g, &rev);
        if obj.value["status"] == st {
            return;
        }
        let rv = self.next_rv();
        let obj = self.objects.get_mut(key).expect("the object exists");
        obj.value["status"] = st;
        obj.value["metadata"]["resourceVersion"] = json!(rv.to_string());
        let v = obj.value.clone();
        self.record(key, "MODIFIED", v, rv);
    }
}

/// `spec.replicas` (default 1, as the API server defaults it).
pub(crate) fn desired(v: &Value) -> i32 {
    v["spec"]["replicas"].as_i64().map_or(1, |r| r as i32)
}

/// The status a controller reports. Zero counts are left out, as the API server's
/// `omitempty` does.
fn status(kind: Kind, v: &Value, obj: &Obj, observed: i64, update_revision: &str) -> Value {
    let n = desired(v);
    let nz = |x: i32| (x != 0).then_some(x);
    match kind {
        Kind::Deployment => {
            let available = obj.ready.min(n);
            let now = now();
            let cond = |type_: &str, ok: bool, reason: &str, message: String| DeploymentCondition {
                type_: Some(type_.to_owned()),
                status: Some(if ok { "True" } else { "False" }.to_owned()),
                reason: Some(reason.to_owned()),
                message: Some(message),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now.clone()),
            };
            let name = v["metadata"]["name"].as_str().unwrap_or_default();
            let rolled = obj.updated >= n && available >= n;
            let st = DeploymentStatus {
                observed_generation: Some(observed),
                replicas: nz(n.max(obj.ready)),
                updated_replicas: nz(obj.updated.min(n)),
                ready_replicas: nz(obj.ready.min(n)),
                available_replicas: nz(available),
                unavailable_replicas: nz((n - available).max(0)),
                conditions: Some(vec![
                    cond(
                        "Available",
                        available >= n,
                        if available >= n {
                            "MinimumReplicasAvailable"
                        } else {
                            "MinimumReplicasUnavailable"
                        },
                        format!("Deployment has {available} of {n} replicas available."),
                    ),
                    cond(
                        "Progressing",
                        !obj.stalled,
                        if obj.stalled {
                            "ProgressDeadlineExceeded"
                        } else if rolled {
                            "NewReplicaSetAvailable"
                        } else {
                            "ReplicaSetUpdated"
                        },
                        format!(
                            "ReplicaSet \"{}\" {}.",
                            revision(name, &v["spec"]["template"]),
                            if obj.stalled {
                                "has timed out progressing"
                            } else if rolled {
                                "has successfully progressed"
                            } else {
                                "is progressing"
                            }
                        ),
                    ),
                ]),
                ..Default::default()
            };
            serde_json::to_value(st).expect("a status serializes")
        }
        Kind::StatefulSet => {
            let st = StatefulSetStatus {
                observed_generation: Some(observed),
                replicas: n.max(obj.ready),
                ready_replicas: nz(obj.ready.min(n)),
                available_replicas: nz(obj.ready.min(n)),
                current_replicas: nz(if obj.current_revision == update_revision {
                    obj.updated.min(n)
                } else {
                    (n - obj.updated).max(0)
                }),
                updated_replicas: nz(obj.updated.min(n)),
                current_revision: Some(obj.current_revision.clone()),
                update_revision: Some(update_revision.to_owned()),
                collision_count: Some(0),
                ..Default::default()
            };
            serde_json::to_value(st).expect("a status serializes")
        }
    }
}
