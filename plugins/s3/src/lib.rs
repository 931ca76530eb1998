//! S3 actions: `s3.verify-backups` (newest backup's age, sizes, SHA-256 recomputed by
//! streaming and compared with the stored checksum, a sidecar or a manifest),
//! `s3.replication` (two buckets compared: missing, stale, mismatching objects, lag)
//! and `s3.object-lock` (the bucket's Object Lock and default retention); and the
//! upload of sealed evidence bundles under retention ([`archive`]).
//!
//! The [`client`] module builds the aws-sdk-s3 client of a configured store (rustls with
//! ring) and keeps the keys out of every message; other plugins (`postgres.restore-test`)
//! may use it. docs/S3.md describes the semantics.

pub mod archive;
pub mod client;
mod lock;
mod replication;
pub mod verify;

use std::sync::Arc;

use drover_model::{Dur, Issue, Located, Node, ParamCx};
use drover_plugin_api::{Registry, issues, parse_params};
use serde::Deserialize;

pub use client::Store;
pub use lock::ObjectLock;
pub use replication::Replication;
pub use verify::VerifyBackups;

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgo {
    Sha256,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBackupsParams {
    pub store: Located<String>,
    pub prefix: String,
    /// The newest backup must be younger than this.
    pub max_age: Dur,
    #[serde(default)]
    pub checksum: Option<ChecksumAlgo>,
    #[serde(default)]
    pub min_size: Option<u64>,
    /// Key of a manifest listing keys and their SHA-256.
    #[serde(default)]
    pub manifest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationParams {
    pub source: Located<String>,
    pub target: Located<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub max_lag: Option<Dur>,
}

/// Object Lock retention modes; COMPLIANCE is the stronger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LockMode {
    #[serde(rename = "GOVERNANCE", alias = "governance")]
    Governance,
    #[serde(rename = "COMPLIANCE", alias = "compliance")]
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockParams {
    pub store: Located<String>,
    /// The default retention mode must be at least this.
    #[serde(default)]
    pub mode: Option<LockMode>,
    /// Objects under this prefix must be locked (each one is checked).
    #[serde(default)]
    pub prefix: Option<String>,
    /// The default retention (or, with `prefix`, each object's remaining retention)
    /// must be at least this many days.
    #[serde(default)]
    pub min_retention_days: Option<u32>,
}

pub(crate) fn check_verify(p: &VerifyBackupsParams, cx: &ParamCx<'_>) -> Vec<Issue> {
    issues([cx.object_store(&p.store).map(drop)])
}

pub(crate) fn check_replication(p: &ReplicationParams, cx: &ParamCx<'_>) -> Vec<Issue> {
    let mut out = issues([
        cx.object_store(&p.source).map(drop),
        cx.object_store(&p.target).map(drop),
    ]);
    if p.source.value == p.target.value {
        out.push(Issue::new(p.target.loc, "target must differ from source"));
    }
    out
}

pub(crate) fn check_lock(p: &ObjectLockParams, cx: &ParamCx<'_>) -> Vec<Issue> {
    issues([cx.object_store(&p.store).map(drop)])
}

/// Parses `with:` as `P` and runs `check` on it: the load-time validation of an action.
pub(crate) fn validate<P: serde::de::DeserializeOwned>(
    with: &Located<Node>,
    cx: &ParamCx<'_>,
    check: fn(&P, &ParamCx<'_>) -> Vec<Issue>,
) -> Vec<Issue> {
    match parse_params::<P>(with) {
        Ok(p) => check(&p, cx),
        Err(e) => e,
    }
}

/// Registers the S3 actions.
pub fn register(reg: &mut Registry) {
    reg.add(Arc::new(VerifyBackups));
    reg.add(Arc::new(Replication));
    reg.add(Arc::new(ObjectLock));
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_plugin_api::ActionClass;

    #[test]
    fn every_action_is_registered_as_a_runnable_check() {
        let mut reg = Registry::new();
        register(&mut reg);
        for kind in ["s3.verify-backups", "s3.replication", "s3.object-lock"] {
            assert!(reg.is_runnable(kind), "{kind}");
            assert_eq!(reg.spec(kind).unwrap().class(), ActionClass::Check);
        }
    }
}
