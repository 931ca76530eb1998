//! `postgres.promote`: promotes the standby, waits until it accepts writes, and
//! measures the RPO achieved.
//!
//! Safety: it refuses unless a `postgres.fence` step of this run has completed (the old
//! primary was observed refusing writes, or declared lost), or the runbook declares the
//! old site lost (`assume_lost: true`). A fence of the database being promoted does not
//! count. Already promoted (`pg_is_in_recovery()` false) is success: the step is
//! idempotent.
//!
//! Before promoting, while the standby still streams, it waits (up to 10 s) until it
//! has received the WAL the old primary had written at its fence, so that a healthy
//! standby loses nothing; then `pg_promote(wait => true)`, then a write must succeed.
//!
//! RPO, measured: the fence instant minus the newest heartbeat row of this run visible
//! on the promoted database (`data.measurements.rpo_s`). Both are drover's wall clock.
//! Also recorded: the lag at the fence in bytes (the fence WAL position minus what the
//! standby had replayed) and time (the fence instant minus the standby's last replayed
//! transaction, when bytes were outstanding), and the WAL it never received
//! (`lost_wal_bytes`). Without a heartbeat step in the run there is no RPO figure, and
//! the summary says so. When no heartbeat row of this run reached the standby, the RPO
//! is at least the fence instant minus the first heartbeat: that lower bound is
//! recorded, marked as such.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use serde_json::{Value, json};

use crate::conn::{Db, Target, lsn_diff, parse_lsn};
use crate::{DatabaseParams, is_identifier, rfc3339};

/// `postgres.promote`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Promote;

/// How long to wait for the standby to receive the WAL written up to the fence.
const CATCH_UP_FOR: Duration = Duration::from_secs(10);
/// How long to wait for the promoted server to accept a write.
const WRITABLE_FOR: Duration = Duration::from_secs(30);

impl ActionSpec for Promote {
    fn kind(&self) -> &str {
        "postgres.promote"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Change
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_database)
    }
}

/// The standby's replication position before promotion.
#[derive(Debug, Clone, Default)]
struct Position {
    in_recovery: bool,
    streaming: bool,
    receive: Option<u64>,
    replay: Option<u64>,
    /// Unix time of the last replayed transaction's commit.
    replay_ts: Option<f64>,
}

async fn position(db: &Db) -> Result<Position, ActionError> {
    let row = db
        .one(
            "SELECT pg_is_in_recovery(), \
             coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false), \
             pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
             extract(epoch FROM pg_last_xact_replay_timestamp())::float8",
            &[],
        )
        .await
        .map_err(|e| e.into_action("cannot read its replication state", false))?;
    let read = |e: crate::conn::SqlError| e.into_action("unexpected answer", false);
    Ok(Position {
        in_recovery: db.get(&row, 0).map_err(read)?,
        streaming: db.get(&row, 1).map_err(read)?,
        receive: db
            .get::<Option<String>>(&row, 2)
            .map_err(read)?
            .as_deref()
            .and_then(parse_lsn),
        replay: db
            .get::<Option<String>>(&row, 3)
            .map_err(read)?
            .as_deref()
            .and_then(parse_lsn),
        replay_ts: db.get(&row, 4).map_err(read)?,
    })
}

async fn pause(cx: &StepContext, d: Duration) -> Result<(), ActionError> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = cx.cancel.cancelled() => Err(ActionError::Cancelled),
    }
}

/// The fence this promotion relies on: the newest completed fence of another database.
fn fence_of(cx: &StepContext, name: &str) -> Option<StepOutput> {
    cx.facts
        .completed("postgres.fence")
        .into_iter()
        .map(|(_, out)| out)
        .rfind(|out| out.data["database"].as_str() != Some(name))
}

/// The heartbeat step of this run on `database` (else the newest heartbeat step).
fn heartbeat_of(cx: &StepContext, database: Option<&str>) -> Option<StepOutput> {
    let all: Vec<StepOutput> = cx
        .facts
        .completed("postgres.heartbeat")
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    all.iter()
        .rev()
        .find(|o| database.is_some() && o.data["database"].as_str() == database)
        .or(all.last())
        .cloned()
}

#[async_trait]
impl Action for Promote {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: DatabaseParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "promote `{}` (after an observed fence of the old primary), wait until writable, measure RPO",
                p.database.value
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: DatabaseParams = cx.params()?;
        let name = p.database.value.as_str();
        let fence = fence_of(cx, name);
        if fence.is_none() && !cx.assume_lost {
            return Err(ActionError::Permanent(format!(
                "refusing to promote `{name}`: no postgres.fence step of this run has fenced the old primary \
                 (promotion needs an observed fence, or `assume_lost: true` in the runbook when the old site is lost)"
            )));
        }
        let fence_data = fence.as_ref().map_or(Value::Null, |f| f.data.clone());
        let fence_at = fence_data["fenced_at_unix"].as_f64();
        let fence_lsn = fence_data["fence_lsn"].as_str().and_then(parse_lsn);

        let target = Target::resolve(&cx.config, name)?;
        let db = target.connect(&cx.cancel, cx.deadline).await?;
        let started = Instant::now();
        let before = position(&db).await?;
        let already = !before.in_recovery;
        let mut lag = json!({});
        let mut caught_up_s = None;
        if !already {
            // Lag at the fence: what the standby had not applied of what the old
            // primary wrote up to its fence.
            if let (Some(fl), Some(replay)) = (fence_lsn, before.replay) {
                let bytes = lsn_diff(fl, replay);
                let secs = match (bytes, fence_at, before.replay_ts) {
                    (0, _, _) => Some(0.0),
                    (_, Some(f), Some(r)) => Some((f - r).max(0.0)),
                    _ => None,
                };
                lag = json!({"lag_bytes_at_fence": bytes, "lag_s_at_fence": secs});
            }
            // Let a streaming standby receive everything written up to the fence.
            let mut pos = before.clone();
            if let Some(fl) = fence_lsn
                && pos.streaming
            {
                let until = Instant::now() + cx.remaining().min(CATCH_UP_FOR);
                let t0 = Instant::now();
                while pos.receive.is_none_or(|r| r < fl) && pos.streaming && Instant::now() < until {
                    pause(cx, Duration::from_millis(20)).await?;
                    pos = position(&db).await?;
                }
                caught_up_s = Some(t0.elapsed().as_secs_f64());
            }
            if let Some(fl) = fence_lsn {
                let had = pos.receive.max(pos.replay).unwrap_or(0);
                lag["lost_wal_bytes"] = json!(lsn_diff(fl, had));
            }
            // Promote.
            let wait_s = i32::try_from(cx.remaining().min(Duration::from_secs(60)).as_secs().max(1)).unwrap_or(60);
            let row = db
                .one("SELECT pg_promote(wait => true, wait_seconds => $1)", &[&wait_s])
                .await
                .map_err(|e| e.into_action("pg_promote failed", true))?;
            let done: bool = db.get(&row, 0).map_err(|e| e.into_action("unexpected answer", true))?;
            if !done {
                return Err(ActionError::OutcomeUnknown(format!(
                    "database `{name}`: pg_promote did not finish within {wait_s} s; the promotion may still complete"
                )));
            }
        }
        let promote_s = started.elapsed().as_secs_f64();

        // Wait until a write succeeds.
        let until = Instant::now() + cx.remaining().min(WRITABLE_FOR);
        loop {
            match db.probe_write().await {
                Ok(Ok(())) => break,
                Ok(Err(refusal)) if Instant::now() < until => {
                    tracing::debug!(database = %name, refusal = %refusal, "not writable yet");
                    pause(cx, Duration::from_millis(20)).await?;
                }
                Ok(Err(refusal)) => {
                    return Err(ActionError::Retryable(format!(
                        "database `{name}` was promoted but still refuses writes: {refusal}"
                    )));
                }
                Err(e) => return Err(e.into_action("the write probe failed", false)),
            }
        }
        let writable_s = started.elapsed().as_secs_f64();

        // RPO: the fence instant minus the newest heartbeat visible here.
        let fenced_db = fence_data["database"].as_str();
        let heartbeat = heartbeat_of(cx, fenced_db);
        let mut rpo =
            json!({"fence_at": fence_data["fenced_at"], "fence_instant_source": fence_data["fence_instant_source"]});
        let mut rpo_s: Option<f64> = None;
        let rpo_note: String;
        match (fence_at, &heartbeat) {
            (None, _) => rpo_note = "no RPO measured: no fence instant (no postgres.fence step in this run)".into(),
            (_, None) => rpo_note = "no RPO measured: no postgres.heartbeat step in this run".into(),
            (_, Some(hb)) if hb.data["writing"] == json!(false) => {
                rpo_note = "no RPO measured: the heartbeat never wrote (its primary was unreachable)".into();
            }
            (Some(f), Some(hb)) => {
                let table = hb.data["table"].as_str().unwrap_or(crate::DEFAULT_HEARTBEAT_TABLE);
                if !is_identifier(table) {
                    return Err(ActionError::Permanent(format!(
                        "invalid heartbeat table name {table:?}"
                    )));
                }
                rpo["heartbeat_table"] = json!(table);
                let newest = db
                    .one(
                        &format!("SELECT extract(epoch FROM max(at))::float8 FROM {table} WHERE run_id = $1"),
                        &[&cx.run_id],
                    )
                    .await;
                match newest {
                    Ok(row) => match db.get::<Option<f64>>(&row, 0) {
                        Ok(Some(n)) => {
                            rpo_s = Some((f - n).max(0.0));
                            rpo["newest_heartbeat_at"] = json!(rfc3339(n));
                            rpo["bound"] = json!("exact");
                            rpo_note = format!(
                                "RPO {:.2}s (fence {}, newest heartbeat {})",
                                (f - n).max(0.0),
                                rfc3339(f),
                                rfc3339(n)
                            );
                        }
                        Ok(None) => {
                            if let Some(first) = hb.data["first_at_unix"].as_f64() {
                                rpo_s = Some((f - first).max(0.0));
                                rpo["bound"] = json!("lower");
                                rpo_note = format!(
                                    "RPO at least {:.2}s: no heartbeat row of this run reached `{name}` (first written {})",
                                    (f - first).max(0.0),
                                    rfc3339(first)
                                );
                            } else {
                                rpo_note = format!("no RPO measured: no heartbeat row of this run on `{name}`");
                            }
                        }
                        Err(e) => return Err(e.into_action("unexpected answer", false)),
                    },
                    Err(e) if e.undefined_table() => {
                        rpo_note = format!("no RPO measured: `{name}` has no heartbeat table {table}");
                    }
                    Err(e) => return Err(e.into_action("cannot read the heartbeat table", false)),
                }
            }
        }
        rpo["note"] = json!(rpo_note);

        let mut measurements = lag.clone();
        if let Some(r) = rpo_s {
            measurements["rpo_s"] = json!(r);
        }
        let head = if already {
            format!("`{name}` was already promoted; writable")
        } else {
            format!("promoted `{name}` in {promote_s:.2}s, writable after {writable_s:.2}s")
        };
        let lag_text = match (lag["lag_bytes_at_fence"].as_u64(), lag["lost_wal_bytes"].as_u64()) {
            (Some(b), Some(l)) => format!("; {b} bytes of WAL not yet applied at the fence, {l} never received"),
            _ => String::new(),
        };
        Ok(
            StepOutput::new(format!("{head}; {rpo_note}{lag_text}")).with_data(json!({
                "database": name,
                "already_promoted": already,
                "assume_lost": cx.assume_lost,
                "fence": fence.as_ref().map(|f| f.data["database"].clone()),
                "promote_s": promote_s,
                "writable_after_s": writable_s,
                "caught_up_wait_s": caught_up_s,
                "rpo": rpo,
                "measurements": measurements,
            })),
        )
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        // Not compensable: a promoted server cannot be demoted; re-seeding is a task
        // of its own. The engine never calls this (`compensable` is false).
        Ok(())
    }
}
