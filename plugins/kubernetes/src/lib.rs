//! Kubernetes actions on Deployments and StatefulSets: `kubernetes.scale` (through the
//! scale subresource, optionally waiting until the rollout is ready), `kubernetes.patch`
//! (a JSON merge patch), `kubernetes.annotate`, `kubernetes.wait` (rollout ready) and
//! `kubernetes.check` (ready replicas); per cluster, through a kubeconfig context,
//! with the kube client (rustls with ring).
//!
//! - `client`: one client per configured cluster, calls bounded by the attempt's
//!   deadline, API errors as step errors.
//! - `workload`: Deployments and StatefulSets behind one interface, rollout
//!   readiness, waiting on watches.
//! - `actions`: the actions and their checkpoints and compensations.
//!
//! docs/KUBERNETES.md describes the semantics and the lab's API simulator.

mod actions;
mod client;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Registry, issues};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitFor {
    Ready,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleParams {
    pub cluster: Located<String>,
    pub namespace: Located<String>,
    pub kind: WorkloadKind,
    pub name: Located<String>,
    pub replicas: u32,
    #[serde(default)]
    pub wait: Option<WaitFor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchParams {
    pub cluster: Located<String>,
    pub namespace: Located<String>,
    pub kind: WorkloadKind,
    pub name: Located<String>,
    /// A JSON merge patch, written as YAML.
    pub patch: Located<Node>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotateParams {
    pub cluster: Located<String>,
    pub namespace: Located<String>,
    pub kind: WorkloadKind,
    pub name: Located<String>,
    /// `key: value` sets an annotation, `key: null` removes it.
    pub annotations: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadParams {
    pub cluster: Located<String>,
    pub namespace: Located<String>,
    pub kind: WorkloadKind,
    pub name: Located<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    pub cluster: Located<String>,
    pub namespace: Located<String>,
    pub kind: WorkloadKind,
    pub name: Located<String>,
    /// Passes when at least this many replicas are ready (default: `spec.replicas`).
    #[serde(default)]
    pub min_ready: Option<u32>,
}

/// A parameter mapping written as YAML, as JSON.
pub(crate) fn node_json(node: &Located<Node>) -> serde_json::Value {
    drover_model::from_node::<serde_json::Value>(node).unwrap_or(serde_json::Value::Null)
}

/// Kubernetes object names: DNS-1123 labels (namespaces) or subdomains (workloads).
fn dns_name(n: &Located<String>, what: &str, max: usize) -> Result<(), Issue> {
    let ok = !n.is_empty()
        && n.len() <= max
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Issue::new(
            n.loc,
            format!("`{n}` is not a valid {what} name (lower-case letters, digits, `-`, at most {max} characters)"),
        ))
    }
}

fn workload(cluster: &Located<String>, ns: &Located<String>, name: &Located<String>, cx: &ParamCx<'_>) -> Vec<Issue> {
    issues([
        cx.cluster(cluster).map(drop),
        dns_name(ns, "namespace", 63),
        dns_name(name, "workload", 253),
    ])
}

/// The load-time checks of each parameter struct.
pub(crate) mod checks {
    use super::*;

    pub(crate) trait Check {
        fn check(&self, cx: &ParamCx<'_>) -> Vec<Issue>;
    }

    pub(crate) fn check<P: Check>(p: &P, cx: &ParamCx<'_>) -> Vec<Issue> {
        p.check(cx)
    }

    impl Check for ScaleParams {
        fn check(&self, cx: &ParamCx<'_>) -> Vec<Issue> {
            workload(&self.cluster, &self.namespace, &self.name, cx)
        }
    }

    impl Check for PatchParams {
        fn check(&self, cx: &ParamCx<'_>) -> Vec<Issue> {
            let mut out = workload(&self.cluster, &self.namespace, &self.name, cx);
            if !matches!(self.patch.value, Node::Map(_)) {
                out.push(Issue::new(
                    self.patch.loc,
                    "patch must be a mapping (a JSON merge patch)",
                ));
            }
            out
        }
    }

    impl Check for AnnotateParams {
        fn check(&self, cx: &ParamCx<'_>) -> Vec<Issue> {
            let mut out = workload(&self.cluster, &self.namespace, &self.name, cx);
            if self.annotations.is_empty() {
                out.push(Issue::new(
                    self.name.loc,
                    "annotations must name at least one annotation",
                ));
            }
            out
        }
    }

    impl Check for WorkloadParams {
        fn check(&self, cx: &ParamCx<'_>) -> Vec<Issue> {
            workload(&self.cluster, &self.namespace, &self.name, cx)
        }
    }

    impl Check for CheckParams {
        fn check(&self, cx: &ParamCx<'_>) -> Vec<Issue> {
            workload(&self.cluster, &self.namespace, &self.name, cx)
        }
    }
}

/// Registers the Kubernetes actions; they share one client per cluster.
pub fn register(reg: &mut Registry) {
    let clients = Arc::new(client::Clients::default());
    reg.add(Arc::new(actions::Scale(clients.clone())));
    reg.add(Arc::new(actions::PatchAction(clients.clone())));
    reg.add(Arc::new(actions::Annotate(clients.clone())));
    reg.add(Arc::new(actions::Wait(clients.clone())));
    reg.add(Arc::new(actions::Check(clients)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_plugin_api::ActionClass;

    #[test]
    fn every_action_is_registered_and_runnable() {
        let mut reg = Registry::new();
        register(&mut reg);
        for (kind, class, comp) in [
            ("kubernetes.scale", ActionClass::Change, true),
            ("kubernetes.patch", ActionClass::Change, true),
            ("kubernetes.annotate", ActionClass::Change, true),
            ("kubernetes.wait", ActionClass::Check, false),
            ("kubernetes.check", ActionClass::Check, false),
        ] {
            assert!(reg.is_runnable(kind), "{kind}");
            let spec = reg.spec(kind).unwrap();
            assert_eq!(spec.class(), class, "{kind}");
            assert_eq!(spec.compensable(), comp, "{kind}");
        }
    }
}
