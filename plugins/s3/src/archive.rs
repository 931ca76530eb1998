//! Uploading a sealed evidence bundle under Object Lock retention, for the evidence
//! archive (`evidence.archive` in the config; the binary calls this after a run is
//! sealed and journals the result).
//!
//! The bucket must have Object Lock enabled: a bundle is never archived without
//! retention. The upload carries the mode and retain-until date and a SHA-256 checksum
//! the server checks; a HEAD of the version written then confirms that the server
//! applied the retention (a server that ignores the headers would otherwise pass).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockEnabled, ObjectLockMode};
use drover_plugin_api::{ActionError, CancellationToken};
use ring::digest::{SHA256, digest};

use crate::client::{Store, bounded};
use crate::verify::hex;

/// One bundle as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub mode: String,
    /// RFC 3339, UTC, seconds.
    pub retain_until: String,
    /// SHA-256 (hex) of the bytes uploaded.
    pub sha256: String,
}

/// Uploads `body` as `key` with retention `mode` for `days` days, within `timeout`.
/// `mode` is `COMPLIANCE` or `GOVERNANCE`.
pub async fn upload_locked(
    store: &Store,
    key: &str,
    body: Vec<u8>,
    mode: &str,
    days: u32,
    timeout: Duration,
) -> Result<Archived, ActionError> {
    let cancel = CancellationToken::new();
    let what = || format!("archiving `{key}` to object store `{}`", store.name);
    bounded(
        &cancel,
        Instant::now() + timeout,
        what,
        upload(store, key, body, mode, days),
    )
    .await
}

async fn upload(store: &Store, key: &str, body: Vec<u8>, mode: &str, days: u32) -> Result<Archived, ActionError> {
    let lock = store
        .client
        .get_object_lock_configuration()
        .bucket(&store.bucket)
        .send()
        .await;
    let enabled = match lock {
        Ok(out) => out
            .object_lock_configuration()
            .and_then(|c| c.object_lock_enabled())
            .is_some_and(|e| *e == ObjectLockEnabled::Enabled),
        // No configuration at all (`ObjectLockConfigurationNotFoundError`, 404).
        Err(aws_sdk_s3::error::SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => false,
        Err(e) => return Err(store.error("reading the Object Lock configuration", None, e)),
    };
    if !enabled {
        return Err(ActionError::Permanent(format!(
            "bucket `{}` of object store `{}` has no Object Lock: evidence is only archived under retention \
             (create the bucket with Object Lock enabled, or point evidence.archive at one that has it)",
            store.bucket, store.name
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let until = now + u64::from(days) * 86_400;
    let until_dt = DateTime::from_secs(until as i64);
    let lock_mode = ObjectLockMode::from(mode);
    let sha256 = hex(digest(&SHA256, &body).as_ref());
    let put = store
        .client
        .put_object()
        .bucket(&store.bucket)
        .key(key)
        .content_type("application/json")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .object_lock_mode(lock_mode.clone())
        .object_lock_retain_until_date(until_dt)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| store.error("uploading", Some(key), e))?;
    let version_id = put.version_id().map(str::to_owned);
    let mut head = store.client.head_object().bucket(&store.bucket).key(key);
    if let Some(v) = &version_id {
        head = head.version_id(v);
    }
    let head = head
        .send()
        .await
        .map_err(|e| store.error("reading back the retention of", Some(key), e))?;
    let applied_mode = head.object_lock_mode().map(|m| m.as_str().to_owned());
    let applied_until = head.object_lock_retain_until_date().map(DateTime::secs);
    if applied_mode.as_deref() != Some(mode) || applied_until.is_none_or(|u| u + 1 < until as i64) {
        return Err(ActionError::Permanent(format!(
            "`{key}` was uploaded to object store `{}`, but the server did not apply the retention \
             (mode {}, retain until {}; asked for {mode} until {})",
            store.name,
            applied_mode.as_deref().unwrap_or("none"),
            applied_until.map_or("none".into(), |u| crate::verify::rfc3339(u as f64)),
            crate::verify::rfc3339(until as f64),
        )));
    }
    Ok(Archived {
        bucket: store.bucket.clone(),
        key: key.to_owned(),
        version_id,
        mode: mode.to_owned(),
        retain_until: crate::verify::rfc3339(applied_until.unwrap_or(until as i64) as f64),
        sha256,
    })
}
