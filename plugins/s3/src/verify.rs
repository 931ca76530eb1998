//! `s3.verify-backups`: the backups under a prefix are fresh, big enough and, with
//! `checksum: sha256`, intact.
//!
//! Every object under the prefix is listed (paginated). Sidecars (`KEY.sha256`) and the
//! manifest are not backups. With `checksum: sha256` each backup's SHA-256 is recomputed
//! by streaming the object (constant memory: one body chunk at a time) and compared with
//! the first of:
//! 1. the object's stored SHA-256 checksum (`HEAD` with checksum mode). A multipart
//!    upload's stored checksum is a *composite*, `BASE64-N`: the SHA-256 of the N part
//!    digests. It is verified as such: the part sizes come from `HEAD ?partNumber=i`,
//!    each part is hashed on its own, never compared with a plain digest;
//! 2. a sidecar `KEY.sha256` in `sha256sum` format;
//! 3. the manifest's line for the key (`manifest: KEY`, `sha256sum` lines).
//!
//! With nothing to compare against a backup is `unverifiable`, never verified. Each
//! object gets a status: `ok`, `stale` (the newest passing backup, older than
//! `max_age`), `corrupt`, `unverifiable`, `missing` (in the manifest, not in the
//! bucket), `too_small`. The check fails on any corrupt, missing or too small backup,
//! when no backup passed, and when the newest passing one is older than `max_age`.
//! Backup RPO (`rpo_s`) = now minus the `LastModified` of the newest passing backup.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use ring::digest::{Context, SHA256};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::client::{Store, bounded};
use crate::{ChecksumAlgo, VerifyBackupsParams};

/// How many objects are verified at once.
const PARALLEL: usize = 8;

/// How many failing keys an error message names before "and N more".
const NAMED: usize = 10;

/// `s3.verify-backups`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyBackups;

impl ActionSpec for VerifyBackups {
    fn kind(&self) -> &str {
        "s3.verify-backups"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Check
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_verify)
    }
}

/// One object of a listing.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub key: String,
    pub size: u64,
    /// `LastModified`, seconds since the Unix epoch.
    pub modified: f64,
    pub etag: Option<String>,
}

/// Lists every object under `prefix`, page by page.
pub(crate) async fn list(store: &Store, prefix: &str) -> Result<Vec<Listed>, ActionError> {
    let mut out = Vec::new();
    let mut pages = store
        .client
        .list_objects_v2()
        .bucket(&store.bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| store.error("listing", None, e))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            out.push(Listed {
                key: key.to_owned(),
                size: o.size().unwrap_or(0).max(0) as u64,
                modified: o.last_modified().map_or(0.0, |t| t.as_secs_f64()),
                etag: o.e_tag().map(str::to_owned),
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Stale,
    Corrupt,
    Unverifiable,
    Missing,
    TooSmall,
}

/// What the recomputed digest was compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// The stored full-object checksum (raw digest).
    Stored(Vec<u8>),
    /// The stored composite checksum of a multipart upload: digest of the part digests.
    Composite {
        digest: Vec<u8>,
        parts: u32,
    },
    Sidecar(Vec<u8>),
    Manifest(Vec<u8>),
}

impl Expected {
    fn source(&self) -> &'static str {
        match self {
            Expected::Stored(_) => "stored_checksum",
            Expected::Composite { .. } => "stored_composite_checksum",
            Expected::Sidecar(_) => "sidecar",
            Expected::Manifest(_) => "manifest",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Verdict {
    key: String,
    size: u64,
    last_modified: String,
    status: Status,
    /// What the digest was compared with, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    verified_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip)]
    modified: f64,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Parses `sha256sum` output: `HEX  NAME` or `HEX *NAME` per line; blank lines and
/// `#` comments are skipped. Errors name the line.
pub(crate) fn parse_sha256sum(text: &str) -> Result<Vec<(Vec<u8>, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (h, rest) = line.split_once(char::is_whitespace).map_or((line, ""), |(h, r)| (h, r));
        let digest = unhex(&h.to_ascii_lowercase()).ok_or_else(|| {
            format!(
                "line {}: `{}` is not a SHA-256 in hex",
                i + 1,
                h.chars().take(80).collect::<String>()
            )
        })?;
        let name = rest.trim_start_matches([' ', '\t']);
        let name = name.strip_prefix('*').unwrap_or(name);
        out.push((digest, name.to_owned()));
    }
    Ok(out)
}

/// Decodes a stored checksum: `BASE64` (full object) or `BASE64-N` (composite). A
/// multipart object (its ETag ends in `-N`) has a composite SHA-256 even when the server
/// leaves out the `-N` (moto does) and the checksum type; only an explicit
/// `FULL_OBJECT` type makes it a plain digest. `None`: nothing usable.
fn parse_stored(value: &str, kind: Option<&ChecksumType>, etag_parts: Option<u32>) -> Option<Expected> {
    let (b64, parts) = match value.rsplit_once('-') {
        Some((b, n)) => (b, n.parse::<u32>().ok()),
        None => (value, None),
    };
    let digest = aws_smithy_types::base64::decode(b64).ok()?;
    if digest.len() != 32 {
        return None;
    }
    match (parts, kind) {
        (Some(parts), _) => Some(Expected::Composite { digest, parts }),
        (None, Some(ChecksumType::FullObject)) => Some(Expected::Stored(digest)),
        // Composite without a part count: it cannot be recomputed.
        (None, Some(ChecksumType::Composite)) => etag_parts.map(|parts| Expected::Composite { digest, parts }),
        (None, _) => Some(match etag_parts {
            Some(parts) => Expected::Composite { digest, parts },
            None => Expected::Stored(digest),
        }),
    }
}

/// The part count of a multipart upload's ETag (`"HEX-N"`).
fn etag_parts(etag: Option<&str>) -> Option<u32> {
    etag?.trim_matches('"').rsplit_once('-')?.1.parse().ok()
}

pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn rfc3339(unix: f64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Streams `key` and returns (its SHA-256, the part digests when `parts` is given, bytes read).
async fn digest(store: &Store, key: &str, parts: Option<&[u64]>) -> Result<(Vec<u8>, Vec<Vec<u8>>, u64), ActionError> {
    let mut body = store.download(key).await?;
    let mut h = PartHasher::new(parts);
    while let Some(chunk) = body.chunk().await? {
        h.update(&chunk);
    }
    Ok(h.finish())
}

/// SHA-256 of a stream, and with part sizes, of each part too (for a composite).
struct PartHasher<'a> {
    whole: Context,
    sizes: Option<&'a [u64]>,
    part: Context,
    index: usize,
    left: u64,
    digests: Vec<Vec<u8>>,
    read: u64,
}

impl<'a> PartHasher<'a> {
    fn new(sizes: Option<&'a [u64]>) -> Self {
        PartHasher {
            whole: Context::new(&SHA256),
            sizes,
            part: Context::new(&SHA256),
            index: 0,
            left: sizes.and_then(|p| p.first().copied()).unwrap_or(u64::MAX),
            digests: Vec::new(),
            read: 0,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.read += chunk.len() as u64;
        self.whole.update(chunk);
        let Some(sizes) = self.sizes else { return };
        let mut rest = chunk;
        while !rest.is_empty() {
            let take = self.left.min(rest.len() as u64) as usize;
            self.part.update(&rest[..take]);
            rest = &rest[take..];
            self.left -= take as u64;
            if self.left == 0 {
                let done = std::mem::replace(&mut self.part, Context::new(&SHA256));
                self.digests.push(done.finish().as_ref().to_vec());
                self.index += 1;
                self.left = sizes.get(self.index).copied().unwrap_or(u64::MAX);
            }
        }
    }

    /// (SHA-256 of everything, the part digests, bytes read).
    fn finish(self) -> (Vec<u8>, Vec<Vec<u8>>, u64) {
        let mut digests = self.digests;
        if self.sizes.is_some() && self.left != u64::MAX {
            // A short last part: keep what was read, so that the composite cannot match.
            digests.push(self.part.finish().as_ref().to_vec());
        }
        (self.whole.finish().as_ref().to_vec(), digests, self.read)
    }
}

/// The sizes of the parts of a multipart object (`HEAD ?partNumber=i`).
async fn part_sizes(store: &Store, key: &str, parts: u32) -> Result<Vec<u64>, ActionError> {
    let mut sizes = Vec::with_capacity(parts as usize);
    for i in 1..=parts {
        let head = store
            .client
            .head_object()
            .bucket(&store.bucket)
            .key(key)
            .part_number(i as i32)
            .send()
            .await
            .map_err(|e| store.error(&format!("reading the size of part {i} of"), Some(key), e))?;
        sizes.push(head.content_length().unwrap_or(0).max(0) as u64);
    }
    Ok(sizes)
}

/// Fetches a small text object (a sidecar, the manifest), at most 16 MiB.
pub(crate) async fn fetch_text(store: &Store, key: &str) -> Result<String, ActionError> {
    let out = store
        .client
        .get_object()
        .bucket(&store.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| store.error("reading", Some(key), e))?;
    if out.content_length().unwrap_or(0) > 16 << 20 {
        return Err(ActionError::Permanent(format!(
            "`{key}` is larger than 16 MiB: not a checksum file"
        )));
    }
    let bytes = out.body.collect().await.map_err(|e| {
        store.clean(ActionError::Retryable(format!(
            "reading `{key}` from object store `{}`: {e}",
            store.name
        )))
    })?;
    Ok(String::from_utf8_lossy(&bytes.into_bytes()).into_owned())
}

struct Job {
    obj: Listed,
    sidecar: Option<String>,
    manifest: Option<Vec<u8>>,
    min_size: Option<u64>,
    checksum: bool,
}

/// Verifies one backup.
async fn verify_one(store: &Store, job: Job) -> Result<Verdict, ActionError> {
    let o = &job.obj;
    let mut v = Verdict {
        key: o.key.clone(),
        size: o.size,
        last_modified: rfc3339(o.modified),
        status: Status::Ok,
        verified_by: None,
        sha256: None,
        detail: None,
        modified: o.modified,
    };
    if let Some(min) = job.min_size
        && o.size < min
    {
        v.status = Status::TooSmall;
        v.detail = Some(format!("{} bytes, less than min_size {min}", o.size));
        return Ok(v);
    }
    if !job.checksum {
        return Ok(v);
    }
    let head = store
        .client
        .head_object()
        .bucket(&store.bucket)
        .key(&o.key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .map_err(|e| store.error("reading the metadata of", Some(&o.key), e))?;
    let stored = head
        .checksum_sha256()
        .and_then(|s| parse_stored(s, head.checksum_type(), etag_parts(head.e_tag())));
    let expected = match stored {
        Some(e) => Some(e),
        None => match &job.sidecar {
            Some(sidecar) => {
                let text = fetch_text(store, sidecar).await?;
                match parse_sha256sum(&text) {
                    Ok(lines) if !lines.is_empty() => Some(Expected::Sidecar(lines[0].0.clone())),
                    Ok(_) => {
                        v.status = Status::Corrupt;
                        v.detail = Some(format!("its sidecar `{sidecar}` is empty"));
                        return Ok(v);
                    }
                    Err(e) => {
                        v.status = Status::Corrupt;
                        v.detail = Some(format!("its sidecar `{sidecar}` is not in sha256sum format: {e}"));
                        return Ok(v);
                    }
                }
            }
            None => job.manifest.clone().map(Expected::Manifest),
        },
    };
    let Some(expected) = expected else {
        v.status = Status::Unverifiable;
        v.detail = Some("no stored SHA-256 checksum, no sidecar, not in a manifest: nothing to compare with".into());
        return Ok(v);
    };
    v.verified_by = Some(expected.source());
    let sizes = match &expected {
        Expected::Composite { parts, .. } => Some(part_sizes(store, &o.key, *parts).await?),
        _ => None,
    };
    let (whole, part_digests, read) = digest(store, &o.key, sizes.as_deref()).await?;
    v.sha256 = Some(hex(&whole));
    if read != o.size {
        v.status = Status::Corrupt;
        v.detail = Some(format!("read {read} bytes, the listing says {}", o.size));
        return Ok(v);
    }
    let (good, detail) = match &expected {
        Expected::Stored(d) | Expected::Sidecar(d) | Expected::Manifest(d) => (
            *d == whole,
            format!(
                "SHA-256 {} does not match the {} {}",
                hex(&whole),
                expected.source().replace('_', " "),
                hex(d)
            ),
        ),
        Expected::Composite { digest, parts } => {
            let mut c = Context::new(&SHA256);
            for d in &part_digests {
                c.update(d);
            }
            let got = c.finish().as_ref().to_vec();
            (
                part_digests.len() == *parts as usize && got == *digest,
                format!(
                    "composite SHA-256 of {} parts {}-{} does not match the stored {}-{parts}",
                    part_digests.len(),
                    aws_smithy_types::base64::encode(&got),
                    part_digests.len(),
                    aws_smithy_types::base64::encode(digest),
                ),
            )
        }
    };
    if !good {
        v.status = Status::Corrupt;
        v.detail = Some(detail);
    }
    Ok(v)
}

fn name_keys(keys: &[&str]) -> String {
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

/// The manifest's entries, by key: a name is a full key, or relative to the manifest's folder.
fn manifest_entries(
    manifest_key: &str,
    lines: Vec<(Vec<u8>, String)>,
    present: &HashMap<&str, ()>,
) -> BTreeMap<String, Vec<u8>> {
    let dir = manifest_key.rfind('/').map_or("", |i| &manifest_key[..=i]);
    lines
        .into_iter()
        .map(|(d, name)| {
            let name = name.strip_prefix("./").unwrap_or(&name).to_owned();
            let key = if present.contains_key(name.as_str()) || dir.is_empty() || name.starts_with(dir) {
                name
            } else {
                format!("{dir}{name}")
            };
            (key, d)
        })
        .collect()
}

#[async_trait]
impl Action for VerifyBackups {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: VerifyBackupsParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "verify the backups under `{}` in object store `{}`: newest younger than {}{}",
                p.prefix,
                p.store.value,
                p.max_age,
                if p.checksum.is_some() {
                    ", SHA-256 recomputed"
                } else {
                    ""
                }
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: VerifyBackupsParams = cx.params()?;
        let store = Arc::new(Store::resolve(&cx.config, &p.store.value).await?);
        let what = || {
            format!(
                "verifying the backups under `{}` in object store `{}`",
                p.prefix, p.store.value
            )
        };
        bounded(&cx.cancel, cx.deadline, what, run(&store, &p)).await
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

async fn run(store: &Arc<Store>, p: &VerifyBackupsParams) -> Result<StepOutput, ActionError> {
    let started = std::time::Instant::now();
    let checksum = matches!(p.checksum, Some(ChecksumAlgo::Sha256));
    let listed = list(store, &p.prefix).await?;
    let present: HashMap<&str, ()> = listed.iter().map(|o| (o.key.as_str(), ())).collect();
    let mut manifest = BTreeMap::new();
    if let Some(m) = &p.manifest {
        let text = fetch_text(store, m).await?;
        let lines = parse_sha256sum(&text).map_err(|e| ActionError::Permanent(format!("manifest `{m}`: {e}")))?;
        manifest = manifest_entries(m, lines, &present);
    }
    let is_backup =
        |o: &Listed| !o.key.ends_with(".sha256") && Some(&o.key) != p.manifest.as_ref() && !o.key.ends_with('/');
    let backups: Vec<&Listed> = listed.iter().filter(|o| is_backup(o)).collect();
    let sidecars = listed.iter().filter(|o| o.key.ends_with(".sha256")).count();

    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, o) in backups.iter().enumerate() {
        let sidecar = format!("{}.sha256", o.key);
        let job = Job {
            obj: (*o).clone(),
            sidecar: present.contains_key(sidecar.as_str()).then_some(sidecar),
            manifest: manifest.get(&o.key).cloned(),
            min_size: p.min_size,
            checksum,
        };
        let store = store.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, verify_one(&store, job).await)
        });
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; backups.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.map_err(|e| ActionError::Permanent(format!("a verification task failed: {e}")))?;
        verdicts[i] = Some(r?);
    }
    let mut verdicts: Vec<Verdict> = verdicts.into_iter().flatten().collect();
    // Listed in the manifest, absent from the bucket.
    for key in manifest.keys() {
        if key.starts_with(&p.prefix) && !present.contains_key(key.as_str()) {
            verdicts.push(Verdict {
                key: key.clone(),
                size: 0,
                last_modified: String::new(),
                status: Status::Missing,
                verified_by: None,
                sha256: None,
                detail: Some(format!(
                    "listed in the manifest `{}`, not in the bucket",
                    p.manifest.as_deref().unwrap_or("")
                )),
                modified: 0.0,
            });
        }
    }

    let now = now_unix();
    let max_age = p.max_age.as_secs_f64();
    // The newest backup that passed: ok and (with checksum) compared with something.
    let newest = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| v.status == Status::Ok)
        .max_by(|a, b| a.1.modified.total_cmp(&b.1.modified))
        .map(|(i, _)| i);
    let mut stale = false;
    if let Some(i) = newest
        && now - verdicts[i].modified > max_age
    {
        verdicts[i].status = Status::Stale;
        verdicts[i].detail = Some(format!(
            "the newest backup that passed is {} old, more than max_age {}",
            humantime::format_duration(std::time::Duration::from_secs(
                (now - verdicts[i].modified).max(0.0) as u64
            )),
            p.max_age
        ));
        stale = true;
    }
    let keys_with = |s: Status| {
        verdicts
            .iter()
            .filter(|v| v.status == s)
            .map(|v| v.key.as_str())
            .collect::<Vec<_>>()
    };
    let (corrupt, missing, small, unverifiable) = (
        keys_with(Status::Corrupt),
        keys_with(Status::Missing),
        keys_with(Status::TooSmall),
        keys_with(Status::Unverifiable),
    );
    let mut counts = BTreeMap::new();
    for v in &verdicts {
        *counts
            .entry(
                serde_json::to_value(v.status)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
            .or_insert(0u64) += 1;
    }
    let newest_v = newest.map(|i| &verdicts[i]);
    let rpo = newest_v.map(|v| (now - v.modified).max(0.0).floor());
    let bytes: u64 = verdicts
        .iter()
        .filter(|v| v.verified_by.is_some())
        .map(|v| v.size)
        .sum();
    let took = started.elapsed().as_secs_f64();

    let mut problems = Vec::new();
    if !corrupt.is_empty() {
        problems.push(format!("corrupt: {}", name_keys(&corrupt)));
    }
    if !missing.is_empty() {
        problems.push(format!("missing: {}", name_keys(&missing)));
    }
    if !small.is_empty() {
        problems.push(format!(
            "too small (min_size {}): {}",
            p.min_size.unwrap_or(0),
            name_keys(&small)
        ));
    }
    let permanent = !problems.is_empty();
    if backups.is_empty() {
        problems.push(format!("no backups under `{}`", p.prefix));
    } else if newest.is_none() && !permanent {
        problems.push(if unverifiable.is_empty() {
            "no backup passed verification".to_owned()
        } else {
            format!(
                "no backup could be verified, nothing to compare with (unverifiable: {})",
                name_keys(&unverifiable)
            )
        });
    }
    if stale && let Some(v) = newest_v {
        problems.push(format!("stale: `{}`: {}", v.key, v.detail.as_deref().unwrap_or("")));
    }
    let where_ = format!("under `{}` in object store `{}`", p.prefix, store.name);
    if !problems.is_empty() {
        let msg = format!("backups {where_}: {}", problems.join("; "));
        // Corrupt, missing and too small backups do not mend by waiting; a stale or
        // absent one may be followed by a fresh one.
        // Every object with its status, so that each bad backup can be followed up.
        return Err(ActionError::Found {
            message: msg,
            retryable: !(permanent || (!unverifiable.is_empty() && newest.is_none())),
            data: json!({
                "store": store.name,
                "bucket": store.bucket,
                "prefix": p.prefix,
                "backups": backups.len(),
                "counts": counts,
                "objects": verdicts,
            }),
        });
    }
    let v = newest_v.expect("a passing backup");
    let mut summary = format!(
        "{} backups {where_}: newest passing `{}` is {}s old (max {})",
        backups.len(),
        v.key,
        rpo.unwrap_or(0.0),
        p.max_age
    );
    if checksum {
        summary += &format!(
            ", {} SHA-256 verified ({bytes} bytes in {took:.2}s)",
            counts.get("ok").copied().unwrap_or(0)
        );
    }
    if !unverifiable.is_empty() {
        summary += &format!(", {} unverifiable: {}", unverifiable.len(), name_keys(&unverifiable));
    }
    Ok(StepOutput::new(summary).with_data(json!({
        "store": store.name,
        "bucket": store.bucket,
        "prefix": p.prefix,
        "checksum": checksum.then_some("sha256"),
        "backups": backups.len(),
        "sidecars": sidecars,
        "counts": counts,
        "newest": {"key": v.key, "last_modified": v.last_modified, "age_s": rpo},
        "unverifiable": unverifiable,
        "bytes_verified": bytes,
        "seconds": took,
        "objects": verdicts,
        "measurements": {"rpo_s": rpo, "backup_age_s": rpo},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sum_lines() {
        let h = "a".repeat(64);
        let text = format!("{h}  db/a.dump\n\n# comment\n{} *b.dump\n", "B".repeat(64));
        let lines = parse_sha256sum(&text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].1, "db/a.dump");
        assert_eq!(lines[1].1, "b.dump");
        assert_eq!(hex(&lines[1].0), "b".repeat(64));
        assert!(parse_sha256sum("xyz  a\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn stored_checksums() {
        let d = aws_smithy_types::base64::encode([7u8; 32]);
        let composite = |parts| {
            Some(Expected::Composite {
                digest: vec![7; 32],
                parts,
            })
        };
        assert_eq!(parse_stored(&d, None, None), Some(Expected::Stored(vec![7; 32])));
        assert_eq!(
            parse_stored(&format!("{d}-3"), Some(&ChecksumType::Composite), None),
            composite(3)
        );
        assert_eq!(parse_stored(&d, Some(&ChecksumType::Composite), None), None);
        // moto: a multipart object's composite comes without `-N` and without a type.
        assert_eq!(parse_stored(&d, None, etag_parts(Some("\"88fc-2\""))), composite(2));
        assert_eq!(
            parse_stored(&d, Some(&ChecksumType::FullObject), Some(2)),
            Some(Expected::Stored(vec![7; 32]))
        );
        assert_eq!(parse_stored("notbase64!", None, None), None);
        assert_eq!(etag_parts(Some("\"5d41402abc4b2a76b9719d911017c592\"")), None);
    }

    #[test]
    fn parts_are_hashed_on_their_own_whatever_the_chunk_boundaries() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sizes = [400u64, 400, 200];
        let want: Vec<Vec<u8>> = [&data[..400], &data[400..800], &data[800..]]
            .iter()
            .map(|p| ring::digest::digest(&SHA256, p).as_ref().to_vec())
            .collect();
        for chunk in [1, 7, 399, 400, 401, 1000] {
            let mut h = PartHasher::new(Some(&sizes));
            for c in data.chunks(chunk) {
                h.update(c);
            }
            let (whole, parts, read) = h.finish();
            assert_eq!(whole, ring::digest::digest(&SHA256, &data).as_ref(), "chunk {chunk}");
            assert_eq!(parts, want, "chunk {chunk}");
            assert_eq!(read, 1000);
        }
        // Truncated: the short part's digest is of what was read, never the expected one.
        for end in [900, 800] {
            let mut h = PartHasher::new(Some(&sizes));
            h.update(&data[..end]);
            let (_, parts, read) = h.finish();
            assert_eq!(read, end as u64);
            assert_eq!(parts[..2], want[..2]);
            assert_ne!(parts[2], want[2], "truncated at {end}");
        }
    }

    #[test]
    fn manifest_names_resolve_against_its_folder() {
        let present: HashMap<&str, ()> = [("db/a.dump", ())].into_iter().collect();
        let m = manifest_entries(
            "db/MANIFEST",
            vec![
                (vec![1], "a.dump".into()),
                (vec![2], "db/b.dump".into()),
                (vec![3], "./c.dump".into()),
            ],
            &present,
        );
        assert_eq!(m.keys().collect::<Vec<_>>(), ["db/a.dump", "db/b.dump", "db/c.dump"]);
    }

    #[test]
    fn failing_keys_are_named_up_to_a_limit() {
        let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let s = name_keys(&refs);
        assert!(s.contains("`k0`") && s.contains("`k9`") && !s.contains("`k10`") && s.ends_with("and 2 more"));
    }
}
