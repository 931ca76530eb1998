//! `postgres.fence`: the old primary refuses writes, and drover has seen it refuse.
//!
//! 1. `ALTER SYSTEM SET default_transaction_read_only = on` and `pg_reload_conf()`:
//!    every new transaction, in every session, is read-only.
//! 2. Every other client session is terminated (`pg_terminate_backend`, then waiting
//!    until they have exited), so no transaction that began read-write can still commit.
//! 3. Observed, not assumed: a new session tries a write (a temporary table in a
//!    transaction that is rolled back) until the server refuses it as read-only.
//!
//! The fence instant (wall clock, when the refusal was seen), the primary's WAL
//! position at that instant and the standbys then streaming from it are recorded;
//! `postgres.promote` measures RPO and the lag at the fence from them.
//!
//! An unreachable primary cannot be observed fenced: the step fails, unless the runbook
//! declares the site lost (`assume_lost: true`), when it succeeds with
//! `assumed_lost: true` in its output (recorded in the journal). The fence instant is
//! then the first failed heartbeat write after the last acknowledged one when this
//! process saw it, else the moment the site was declared lost.
//!
//! The compensation unfences (`ALTER SYSTEM RESET default_transaction_read_only`,
//! reload, and a write observed to succeed), except when a standby that streamed from
//! the primary at the fence no longer does: it may have been promoted, and unfencing
//! would leave two writable primaries, so the compensation refuses (the run is then
//! stuck and an operator decides).
//!
//! This is a fence against well-behaved clients: a superuser session can still
//! `SET default_transaction_read_only = off`. Fencing at the network or the service
//! manager is stronger and can be added as a step of its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use serde_json::{Value, json};

use crate::conn::{Db, Target};
use crate::{DatabaseParams, now_unix, rfc3339};

/// `postgres.fence`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fence;

/// How long a fence (or unfence) may take to be observed in a new session.
const OBSERVE_FOR: Duration = Duration::from_secs(10);

impl ActionSpec for Fence {
    fn kind(&self) -> &str {
        "postgres.fence"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Change
    }
    fn compensable(&self) -> bool {
        true
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_database)
    }
}

/// The standbys streaming from a primary: identity (application name, client
/// address) and lag.
async fn standbys(db: &Db) -> Result<Vec<Value>, ActionError> {
    let rows = db
        .rows(
            "SELECT application_name, coalesce(host(client_addr), 'local'), state, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8, \
             extract(epoch FROM replay_lag)::float8 \
             FROM pg_stat_replication ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| e.into_action("cannot list its standbys", false))?;
    let read = |e: crate::conn::SqlError| e.into_action("unexpected answer", false);
    rows.iter()
        .map(|r| {
            Ok(json!({
                "application_name": db.get::<Option<String>>(r, 0).map_err(read)?,
                "client_addr": db.get::<Option<String>>(r, 1).map_err(read)?,
                "state": db.get::<Option<String>>(r, 2).map_err(read)?,
                "lag_bytes": db.get::<Option<f64>>(r, 3).map_err(read)?,
                "replay_lag_s": db.get::<Option<f64>>(r, 4).map_err(read)?,
            }))
        })
        .collect()
}

/// Counts standbys by identity (a name and an address can repeat).
fn identities(standbys: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in standbys {
        let id = format!(
            "{} at {}",
            s["application_name"].as_str().unwrap_or("?"),
            s["client_addr"].as_str().unwrap_or("?")
        );
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

/// Opens new sessions until a write is refused (`want_refused`) or accepted; the
/// refusal message when refused.
async fn observe(target: &Target, cx: &StepContext, want_refused: bool) -> Result<Option<String>, ActionError> {
    let until = Instant::now() + cx.remaining().min(OBSERVE_FOR);
    loop {
        let db = target.connect(&cx.cancel, cx.deadline).await?;
        let probe = db
            .probe_write()
            .await
            .map_err(|e| e.into_action("the write probe failed", false))?;
        match (probe, want_refused) {
            (Err(refusal), true) => return Ok(Some(refusal)),
            (Ok(()), false) => return Ok(None),
            _ => {}
        }
        drop(db);
        if Instant::now() >= until {
            let name = &target.name;
            return Err(ActionError::Retryable(if want_refused {
                format!(
                    "`{name}` still accepts writes in new sessions {} after default_transaction_read_only was set: the fence is not observed",
                    humantime::format_duration(OBSERVE_FOR)
                )
            } else {
                format!(
                    "`{name}` still refuses writes after default_transaction_read_only was reset (is it set in postgresql.conf, or is the server a standby?)"
                )
            }));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(25)) => {}
            () = cx.cancel.cancelled() => return Err(ActionError::Cancelled),
        }
    }
}

/// The step's output when the primary is unreachable and the site declared lost.
fn assumed_lost(cx: &StepContext, name: &str, error: &ActionError) -> StepOutput {
    let now = now_unix();
    let health = crate::heartbeat::health(&cx.run_id, name);
    let (instant, source) = match health {
        Some(h) if h.last_ok.is_some() && h.failing_since.is_some() => {
            (h.failing_since.unwrap_or(now), "the first failed heartbeat write")
        }
        _ => (now, "the moment the site was declared lost"),
    };
    StepOutput::new(format!(
        "`{name}` is unreachable and the runbook declares its site lost (assume_lost): not fenced, recorded; \
         fence instant {} ({source})",
        rfc3339(instant)
    ))
    .with_data(json!({
        "database": name,
        "assumed_lost": true,
        "fenced_at": rfc3339(instant),
        "fenced_at_unix": instant,
        "fence_instant_source": source,
        "last_heartbeat_ok_at": health.and_then(|h| h.last_ok).map(rfc3339),
        "declared_lost_at": rfc3339(now),
        "unreachable": error.to_string(),
    }))
}

#[async_trait]
impl Action for Fence {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: DatabaseParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "fence `{}`: default_transaction_read_only = on, end client sessions, observe a refused write",
                p.database.value
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: DatabaseParams = cx.params()?;
        let name = p.database.value.as_str();
        let target = Target::resolve(&cx.config, name)?;
        let db = match target.connect(&cx.cancel, cx.deadline).await {
            Ok(db) => db,
            Err(ActionError::Cancelled) => return Err(ActionError::Cancelled),
            Err(e) if cx.assume_lost => return Ok(assumed_lost(cx, name, &e)),
            Err(e) => {
                return Err(ActionError::Retryable(format!(
                    "{e}; an unreachable primary cannot be observed fenced, so promotion stays blocked \
                     (if its site is lost, declare it with `assume_lost: true` in the runbook)"
                )));
            }
        };
        let read = |e: crate::conn::SqlError| e.into_action("unexpected answer", false);
        let row = db
            .one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| e.into_action("cannot query it", false))?;
        let in_recovery: bool = db.get(&row, 0).map_err(read)?;
        let started = Instant::now();
        let started_at = now_unix();

        // 1. Read-only for every new transaction.
        db.batch("ALTER SYSTEM SET default_transaction_read_only = on")
            .await
            .map_err(|e| e.into_action("cannot set default_transaction_read_only", true))?;
        db.batch("SELECT pg_reload_conf()")
            .await
            .map_err(|e| e.into_action("cannot reload its configuration", true))?;

        // 2. End the other client sessions: signal them all, then wait (up to 5 s)
        // until they are gone.
        let rows = db
            .rows(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.into_action("cannot list its sessions", true))?;
        let (mut signalled, mut not_ended) = (Vec::new(), Vec::new());
        for r in &rows {
            let pid: i32 = db.get(r, 0).map_err(read)?;
            match db.one("SELECT pg_terminate_backend($1)", &[&pid]).await {
                Ok(row) if db.get::<bool>(&row, 0).unwrap_or(false) => signalled.push(pid),
                Ok(_) => {} // gone already
                Err(e) if e.cancelled => return Err(ActionError::Cancelled),
                Err(e) if e.code.is_some() => not_ended.push(format!("{pid}: {}", e.message)),
                Err(e) => return Err(e.into_action("cannot end its sessions", true)),
            }
        }
        let until = Instant::now() + cx.remaining().min(Duration::from_secs(5));
        let mut left = signalled.clone();
        while !left.is_empty() {
            let rows = db
                .rows("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)", &[&left])
                .await
                .map_err(|e| e.into_action("cannot list its sessions", true))?;
            left = rows.iter().filter_map(|r| db.get::<i32>(r, 0).ok()).collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= until {
                not_ended.extend(left.iter().map(|pid| format!("{pid}: did not exit within 5 s")));
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
                () = cx.cancel.cancelled() => return Err(ActionError::Cancelled),
            }
        }
        let ended = signalled.len() - left.len();
        if !not_ended.is_empty() {
            tracing::warn!(database = %name, sessions = ?not_ended, "some sessions of the fenced primary could not be ended; their next transactions are read-only");
        }

        // 3. Observe: a new session's write is refused.
        let refusal = observe(&target, cx, true).await?.unwrap_or_default();
        let fenced_at = now_unix();
        let took_s = started.elapsed().as_secs_f64();

        // What the primary had written at the fence, and who streamed from it.
        let row = db
            .one(
                "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text",
                &[],
            )
            .await
            .map_err(|e| e.into_action("cannot read its WAL position", false))?;
        let fence_lsn: Option<String> = db.get(&row, 0).map_err(read)?;
        let standbys = if in_recovery { Vec::new() } else { standbys(&db).await? };

        let summary = format!(
            "`{name}` fenced at {} (in {took_s:.2}s): a write in a new session was refused ({refusal}); {ended} session(s) ended{}",
            rfc3339(fenced_at),
            if in_recovery {
                "; note: it is a standby (in recovery)"
            } else {
                ""
            }
        );
        Ok(StepOutput::new(summary).with_data(json!({
            "database": name,
            "assumed_lost": false,
            "fenced_at": rfc3339(fenced_at),
            "fenced_at_unix": fenced_at,
            "fence_instant_source": "the refused write",
            "fence_started_at": rfc3339(started_at),
            "fence_took_s": took_s,
            "fence_lsn": fence_lsn,
            "in_recovery": in_recovery,
            "observed_refusal": refusal,
            "sessions_ended": ended,
            "sessions_not_ended": not_ended,
            "standbys": standbys,
        })))
    }

    async fn compensate(&self, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError> {
        let p: DatabaseParams = cx.params()?;
        let name = p.database.value.as_str();
        if done.is_some_and(|d| d.data["assumed_lost"] == json!(true)) {
            tracing::info!(database = %name, "the fence was assumed (site lost): nothing to undo");
            return Ok(());
        }
        let target = Target::resolve(&cx.config, name)?;
        let db = target.connect(&cx.cancel, cx.deadline).await?;
        // Unfencing while a standby of this primary may have been promoted would leave
        // two writable primaries.
        if let Some(at_fence) = done.and_then(|d| d.data["standbys"].as_array()) {
            let before = identities(at_fence);
            let now = identities(&standbys(&db).await?);
            let gone: Vec<&String> = before
                .iter()
                .filter(|(id, n)| now.get(*id).copied().unwrap_or(0) < **n)
                .map(|(id, _)| id)
                .collect();
            if !gone.is_empty() {
                return Err(ActionError::Permanent(format!(
                    "refusing to unfence `{name}`: {} streamed from it at the fence and no longer does; it may have \
                     been promoted, and unfencing would leave two writable primaries. Check, then unfence by hand \
                     (ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf())",
                    gone.iter()
                        .map(|s| format!("standby {s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        db.batch("ALTER SYSTEM RESET default_transaction_read_only")
            .await
            .map_err(|e| e.into_action("cannot reset default_transaction_read_only", true))?;
        db.batch("SELECT pg_reload_conf()")
            .await
            .map_err(|e| e.into_action("cannot reload its configuration", true))?;
        observe(&target, cx, false).await?;
        tracing::info!(database = %name, "unfenced: writes are accepted again");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_identities_count_repeats() {
        let s = vec![
            json!({"application_name": "walreceiver", "client_addr": "127.0.0.1"}),
            json!({"application_name": "walreceiver", "client_addr": "127.0.0.1"}),
            json!({"application_name": "west", "client_addr": "10.0.0.2"}),
        ];
        let ids = identities(&s);
        assert_eq!(ids["walreceiver at 127.0.0.1"], 2);
        assert_eq!(ids["west at 10.0.0.2"], 1);
    }
}
