//! `postgres.restore-test`: proves a backup restores. A `pg_dump` custom-format object is
//! streamed from an object store straight into `pg_restore` (no copy on disk, one body
//! chunk in memory at a time), restored into a scratch database created for the test on
//! the configured server (`database:`), `query` runs there and its first value is
//! compared with `expect`, and the scratch database is dropped whatever happened.
//!
//! What it measures: `restore_s`, the time from the first byte read to `pg_restore`'s
//! exit (a measured recovery time for that backup), and `backup_age_s`, now minus the
//! object's `LastModified` (also given as `rpo_s`: restoring this backup loses what was
//! written after it). The SHA-256 of the bytes restored is recorded, so the evidence
//! names exactly which backup was proven.
//!
//! The scratch database is named after the run and the step
//! (`drover_restore_<run>_<hash of step>`), so a retry or a resumed run drops what a
//! crashed attempt left behind before it starts. It is dropped `WITH (FORCE)` when the
//! test ends, also when it fails, times out (the work stops early enough to leave time
//! for the drop) or is cancelled (a guard drops it from a task of its own).
//!
//! The connection secrets reach `pg_restore` through its environment (`PGPASSWORD`),
//! never its command line; its messages go through the database's redactor.

use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{
    Action, ActionClass, ActionError, ActionSpec, CancellationToken, Preview, StepContext, StepOutput, issues,
};
use drover_plugin_s3::client::{Store, bounded};
use ring::digest::{Context, SHA256};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::RestoreTestParams;
use crate::conn::Target;

/// Time kept back from the step's deadline for dropping the scratch database (at most).
const CLEANUP_RESERVE: Duration = Duration::from_secs(10);

/// How much of `pg_restore`'s stderr is kept for the error message.
const STDERR_LIMIT: usize = 16 * 1024;

/// `postgres.restore-test`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreTest;

pub(crate) fn check(p: &RestoreTestParams, cx: &ParamCx<'_>) -> Vec<Issue> {
    let mut out = issues([cx.object_store(&p.store).map(drop), cx.database(&p.database).map(drop)]);
    if p.key.value.is_empty() || p.key.value.ends_with('/') {
        out.push(Issue::new(p.key.loc, "key must name one object (a pg_dump -Fc file)"));
    }
    if p.query.value.trim().is_empty() {
        out.push(Issue::new(p.query.loc, "query must not be empty"));
    }
    out
}

impl ActionSpec for RestoreTest {
    fn kind(&self) -> &str {
        "postgres.restore-test"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Check
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, check)
    }
}

/// The scratch database's name: `drover_restore_`, the run id, a hash of the step id.
pub(crate) fn scratch_name(run_id: &str, step_id: &str) -> String {
    let run: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let h = ring::digest::digest(&SHA256, step_id.as_bytes());
    let tag: String = h.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("drover_restore_{run}_{tag}")
}

/// The `pg_restore` to run: `$DROVER_PG_RESTORE`, else the one on `PATH`, else the
/// newest under `/usr/lib/postgresql/*/bin` (Debian's layout, not on `PATH`).
fn pg_restore_path() -> Result<std::path::PathBuf, ActionError> {
    if let Some(p) = std::env::var_os("DROVER_PG_RESTORE") {
        return Ok(p.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("pg_restore");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin/pg_restore");
            p.is_file().then_some((v, p))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        ActionError::Permanent(
            "pg_restore not found (not on PATH, not under /usr/lib/postgresql/*/bin; set DROVER_PG_RESTORE, \
             or install the PostgreSQL client tools, e.g. `apt-get install postgresql-client`)"
                .into(),
        )
    })
}

/// Drops the scratch database from a task of its own if the test is abandoned
/// (cancelled, aborted) before it dropped it itself.
struct ScratchGuard {
    admin: Option<Target>,
    name: String,
}

impl ScratchGuard {
    fn disarm(&mut self) {
        self.admin = None;
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(admin) = self.admin.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let name = std::mem::take(&mut self.name);
            rt.spawn(async move {
                if let Err(e) = drop_scratch(&admin, &name).await {
                    tracing::warn!(database = %admin.name, scratch = %name, error = %e, "the scratch database of an abandoned restore test was not dropped");
                }
            });
        }
    }
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)` on a session of its own (not the step's
/// cancellation: it runs after a cancel too), within [`CLEANUP_RESERVE`].
async fn drop_scratch(admin: &Target, name: &str) -> Result<(), String> {
    let cancel = CancellationToken::new();
    let deadline = Instant::now() + CLEANUP_RESERVE;
    let work = async {
        let db = admin.connect(&cancel, deadline).await.map_err(|e| e.to_string())?;
        db.batch(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .map_err(|e| e.message)
    };
    match tokio::time::timeout(CLEANUP_RESERVE, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(CLEANUP_RESERVE)
        )),
    }
}

#[async_trait]
impl Action for RestoreTest {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: RestoreTestParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "restore `{}` from object store `{}` into a scratch database on `{}`, run the check query, drop it",
                p.key.value, p.store.value, p.database.value
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: RestoreTestParams = cx.params()?;
        let admin = Target::resolve(&cx.config, &p.database.value)?;
        let store = Store::resolve(&cx.config, &p.store.value).await?;
        let scratch = scratch_name(&cx.run_id, &cx.step_id);
        // The work stops early enough to leave time for the drop: 10 s, or a quarter
        // of a shorter step timeout.
        let left = cx.deadline.saturating_duration_since(Instant::now());
        let work_deadline = cx.deadline - CLEANUP_RESERVE.min(left / 4);
        let mut guard = ScratchGuard {
            admin: Some(admin.clone()),
            name: scratch.clone(),
        };
        let what = || format!("restore test of `{}` on `{}`", p.key.value, p.database.value);
        let result = bounded(
            &cx.cancel,
            work_deadline,
            what,
            test(&p, &admin, &store, &scratch, cx, work_deadline),
        )
        .await;
        // Dropped whatever happened; a failed drop is named, never hidden.
        let dropped = drop_scratch(&admin, &scratch).await;
        guard.disarm();
        let mut out = result?;
        match dropped {
            Ok(()) => {
                out.data["scratch_dropped"] = json!(true);
                Ok(out)
            }
            Err(e) => Err(ActionError::Retryable(admin.clean(&format!(
                "{}, but the scratch database `{scratch}` on `{}` could not be dropped: {e}",
                out.summary, p.database.value
            )))),
        }
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

/// Creates the scratch database, restores into it, runs the query. Leaves the drop to
/// the caller.
async fn test(
    p: &RestoreTestParams,
    admin: &Target,
    store: &Store,
    scratch: &str,
    cx: &StepContext,
    deadline: Instant,
) -> Result<StepOutput, ActionError> {
    let key = p.key.value.as_str();
    let head = store
        .client
        .head_object()
        .bucket(&store.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| store.error("reading the metadata of", Some(key), e))?;
    let size = head.content_length().unwrap_or(0).max(0) as u64;
    let modified = head
        .last_modified()
        .map(|t| t.secs() as f64 + f64::from(t.subsec_nanos()) / 1e9)
        .ok_or_else(|| {
            ActionError::Permanent(format!("`{key}` in object store `{}` has no LastModified", store.name))
        })?;

    // A crashed attempt of this step may have left its scratch database: drop it first.
    let db = admin.connect(&cx.cancel, deadline).await?;
    db.batch(&format!("DROP DATABASE IF EXISTS \"{scratch}\" WITH (FORCE)"))
        .await
        .map_err(|e| e.into_action("cannot drop a leftover scratch database", false))?;
    db.batch(&format!("CREATE DATABASE \"{scratch}\"")).await.map_err(|e| {
        e.into_action(
            "cannot create the scratch database (does the user have CREATEDB?)",
            false,
        )
    })?;
    drop(db);

    let started = Instant::now();
    let (bytes, sha256) = restore(admin, store, key, scratch).await?;
    let restore_s = started.elapsed().as_secs_f64();

    let db = admin.on_database(scratch).connect(&cx.cancel, deadline).await?;
    let (value, rows) = db
        .first_value(&p.query.value)
        .await
        .map_err(|e| ActionError::Permanent(format!("the check query failed on the restored backup: {}", e.message)))?;
    drop(db);
    let shown = match &value {
        None => "no row".to_owned(),
        Some(None) => "NULL".to_owned(),
        Some(Some(v)) => format!("`{v}`"),
    };
    if let Some(expect) = &p.expect
        && value.as_ref().and_then(Option::as_deref) != Some(expect.as_str())
    {
        return Err(ActionError::Permanent(format!(
            "`{key}` restored in {restore_s:.1} s, but the check query returned {shown}, expected `{expect}`"
        )));
    }
    let now = crate::now_unix();
    let age = (now - modified).max(0.0);
    let summary = format!(
        "`{key}` ({}) restored into a scratch database on `{}` in {restore_s:.1} s; the check query returned {shown}; backup age {}",
        human_bytes(bytes),
        p.database.value,
        drover_model::Dur(Duration::from_secs(age.round() as u64)),
    );
    Ok(StepOutput::new(summary).with_data(json!({
        "store": store.name,
        "key": key,
        "size": size,
        "bytes_restored": bytes,
        "sha256": sha256,
        "last_modified": crate::rfc3339(modified),
        "database": p.database.value,
        "scratch_database": scratch,
        "query": p.query.value,
        "value": value.flatten(),
        "rows": rows,
        "expect": p.expect,
        "measurements": {"restore_s": restore_s, "backup_age_s": age, "rpo_s": age},
    })))
}

/// Streams the object into `pg_restore` and waits for it: (bytes streamed, SHA-256).
async fn restore(admin: &Target, store: &Store, key: &str, scratch: &str) -> Result<(u64, String), ActionError> {
    let bin = pg_restore_path()?;
    let mut child = tokio::process::Command::new(&bin)
        .args(["--no-owner", "--no-privileges", "--exit-on-error", "--dbname", scratch])
        .envs(admin.libpq_env(scratch))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ActionError::Permanent(format!("cannot start {}: {e}", bin.display())))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) if buf.len() < STDERR_LIMIT => buf.extend_from_slice(&chunk[..n]),
                Ok(_) => {}
            }
        }
        String::from_utf8_lossy(&buf).trim().to_owned()
    });

    let mut body = store.download(key).await?;
    let mut hash = Context::new(&SHA256);
    // Set when pg_restore stopped reading (it exited): its status says why.
    let mut broken_pipe = false;
    while let Some(chunk) = body.chunk().await? {
        hash.update(&chunk);
        if let Err(e) = stdin.write_all(&chunk).await {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                broken_pipe = true;
                break;
            }
            return Err(ActionError::Retryable(format!("writing to pg_restore: {e}")));
        }
    }
    drop(stdin);
    let bytes = body.read();
    let status = child
        .wait()
        .await
        .map_err(|e| ActionError::Retryable(format!("waiting for pg_restore: {e}")))?;
    let stderr = admin.clean(&errors.await.unwrap_or_default());
    if !status.success() || broken_pipe {
        let detail = if stderr.is_empty() {
            "no message".to_owned()
        } else {
            last_lines(&stderr, 6)
        };
        return Err(ActionError::Permanent(format!(
            "pg_restore of `{key}` from object store `{}` failed ({status}) after {bytes} bytes: {detail}",
            store.name
        )));
    }
    let digest: String = hash.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes, digest))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_identifiers_per_run_and_step() {
        let a = scratch_name("20261202-003057-abcdef123456", "payments-restore-test");
        assert!(crate::is_identifier(&a), "{a}");
        assert!(a.starts_with("drover_restore_20261202_003057_abcdef123456_"));
        assert_ne!(a, scratch_name("20261202-003057-abcdef123456", "auth-restore-test"));
        assert_eq!(a, scratch_name("20261202-003057-abcdef123456", "payments-restore-test"));
        assert!(crate::is_identifier(&scratch_name(&"X-".repeat(60), "s")));
    }

    #[test]
    fn sizes_and_messages() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(last_lines("a\nb\nc", 2), "b | c");
    }
}
