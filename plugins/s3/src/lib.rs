//! S3 actions: backup verification (age, size, checksum), bucket replication and Object
//! Lock checks.
//!
//! This build declares the actions and checks their parameters at load time; running
//! them needs the S3 client, which comes with the S3 issue.

use std::sync::Arc;

use drover_model::{Dur, Issue, Located};
use drover_plugin_api::{ActionClass, Registry, TypedSpec, issues};
use serde::Deserialize;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockParams {
    pub store: Located<String>,
    /// Objects under this prefix must be locked.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Each must be retained at least this many more days.
    #[serde(default)]
    pub min_retention_days: Option<u32>,
}

/// Registers the S3 actions.
pub fn register(reg: &mut Registry) {
    reg.add_spec(Arc::new(TypedSpec::<VerifyBackupsParams> {
        kind: "s3.verify-backups",
        class: ActionClass::Check,
        compensable: false,
        check: |p, cx| issues([cx.object_store(&p.store).map(drop)]),
    }));
    reg.add_spec(Arc::new(TypedSpec::<ReplicationParams> {
        kind: "s3.replication",
        class: ActionClass::Check,
        compensable: false,
        check: |p, cx| {
            let mut out = issues([
                cx.object_store(&p.source).map(drop),
                cx.object_store(&p.target).map(drop),
            ]);
            if p.source.value == p.target.value {
                out.push(Issue::new(p.target.loc, "target must differ from source"));
            }
            out
        },
    }));
    reg.add_spec(Arc::new(TypedSpec::<ObjectLockParams> {
        kind: "s3.object-lock",
        class: ActionClass::Check,
        compensable: false,
        check: |p, cx| issues([cx.object_store(&p.store).map(drop)]),
    }));
}
