//! Kubernetes actions on Deployments and StatefulSets: scale, patch, annotate, wait for
//! a rollout, check readiness; per cluster, through a kubeconfig context.
//!
//! This build declares the actions and checks their parameters at load time; running
//! them needs the Kubernetes client, which comes with the Kubernetes issue.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{ActionClass, Registry, TypedSpec, issues};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
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
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadParams {
    pub cluster: Located<String>,
    pub namespace: Located<String>,
    pub kind: WorkloadKind,
    pub name: Located<String>,
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

/// Registers the Kubernetes actions.
pub fn register(reg: &mut Registry) {
    reg.add_spec(Arc::new(TypedSpec::<ScaleParams> {
        kind: "kubernetes.scale",
        class: ActionClass::Change,
        compensable: true,
        check: |p, cx| workload(&p.cluster, &p.namespace, &p.name, cx),
    }));
    reg.add_spec(Arc::new(TypedSpec::<PatchParams> {
        kind: "kubernetes.patch",
        class: ActionClass::Change,
        compensable: true,
        check: |p, cx| {
            let mut out = workload(&p.cluster, &p.namespace, &p.name, cx);
            if !matches!(p.patch.value, Node::Map(_)) {
                out.push(Issue::new(p.patch.loc, "patch must be a mapping (a JSON merge patch)"));
            }
            out
        },
    }));
    reg.add_spec(Arc::new(TypedSpec::<AnnotateParams> {
        kind: "kubernetes.annotate",
        class: ActionClass::Change,
        compensable: true,
        check: |p, cx| workload(&p.cluster, &p.namespace, &p.name, cx),
    }));
    reg.add_spec(Arc::new(TypedSpec::<WorkloadParams> {
        kind: "kubernetes.wait",
        class: ActionClass::Check,
        compensable: false,
        check: |p, cx| workload(&p.cluster, &p.namespace, &p.name, cx),
    }));
    reg.add_spec(Arc::new(TypedSpec::<WorkloadParams> {
        kind: "kubernetes.check",
        class: ActionClass::Check,
        compensable: false,
        check: |p, cx| workload(&p.cluster, &p.namespace, &p.name, cx),
    }));
}
