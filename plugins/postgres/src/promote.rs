//! `postgres.promote`: promotes the standby, waits until it accepts writes, and
//! measures the RPO achieved.
//!
//! Safety: it promotes only after a fence of **this standby's own upstream primary**
//! in this run, read from the run's facts (the journal): a completed `postgres.fence`
//! step whose fenced server had the standby's `system_identifier` and was not in
//! recovery when fenced. A fence of another cluster, of a standby, or of the database
//! being promoted does not count, and the refusal says why for each fence it saw. With
//! `assume_lost: true` a fence step that found its database unreachable (refused,
//! timeout, no route, network unreachable) counts too, since no observed fence is
//! possible; but a fence step must still have run (it is what tells "unreachable"
//! from "refusing drover's password"), an observed fence of another cluster is no
//! substitute, and the promotion refuses (retryable) while the standby still streams
//! WAL from its upstream: that server is alive, so the site is not lost. Already
//! promoted (`pg_is_in_recovery()` false) is success: the step is idempotent.
//!
//! Before promoting, while the standby still streams, it waits (up to 10 s) until it
//! has received the WAL the old primary had written at its fence, so that a healthy
//! standby loses nothing; then `pg_promote(wait => true)`, then a write must succeed.
//!
//! RPO, measured: the fence instant minus the newest heartbeat row of this run, written
//! up to the fence instant, visible on the promoted database (`data.measurements.rpo_s`),
//! read from the heartbeat table of the heartbeat step on the fenced database, never
//! another database's. Both are drover's wall clock.
//! Also recorded: the lag at the fence in bytes (the fence WAL position minus what the
//! standby had replayed) and time (the fence instant minus the standby's last replayed
//! transaction, when bytes were outstanding), and the WAL it never received
//! (`lost_wal_bytes`). Without a heartbeat step on the fenced database there is no RPO
//! figure, and the summary says so. When no heartbeat row of this run reached the
//! standby, the RPO is at least the fence instant minus the first heartbeat: that lower
//! bound is recorded, marked as such.

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

/// How a completed `postgres.fence` step counts for promoting a standby.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// An observed fence of the standby's own primary: same `system_identifier`, not
    /// in recovery when fenced.
    Observed,
    /// The fenced database was unreachable and the site declared lost: its identity is
    /// unknown.
    Assumed,
    /// Does not count, because of this.
    Rejected(String),
}

/// Judges the fence `out` (of step `step`) for promoting `name`, whose system
/// identifier is `standby_id`.
fn judge(step: &str, out: &StepOutput, name: &str, standby_id: &str, assume_lost: bool) -> Verdict {
    let db = out.data["database"].as_str().unwrap_or("?");
    let what = format!("fence `{step}` (of `{db}`)");
    if db == name {
        return Verdict::Rejected(format!("{what} fenced the database being promoted"));
    }
    if out.data["assumed_lost"] == json!(true) {
        return if assume_lost {
            Verdict::Assumed
        } else {
            Verdict::Rejected(format!(
                "{what} assumed it lost, but the runbook does not declare assume_lost"
            ))
        };
    }
    match out.data["system_identifier"].as_str() {
        None => Verdict::Rejected(format!(
            "{what} recorded no system identifier (fenced by an older drover?), so it cannot be checked"
        )),
        Some(id) if id != standby_id => Verdict::Rejected(format!(
            "{what} is another database cluster (system identifier {id}; `{name}` has {standby_id}), not the \
             primary `{name}` replicates from"
        )),
        Some(_) if out.data["in_recovery"] != json!(false) => Verdict::Rejected(format!(
            "{what} was a standby (in recovery) when fenced, not the primary"
        )),
        Some(_) => Verdict::Observed,
    }
}

/// The fence this promotion relies on: the newest observed fence of the standby's own
/// primary, else (with `assume_lost`) the newest fence that found its database
/// unreachable; or why there is none.
fn choose_fence(
    fences: &[(String, StepOutput)],
    name: &str,
    standby_id: &str,
    assume_lost: bool,
) -> Result<(String, StepOutput, Verdict), Vec<String>> {
    let judged: Vec<_> = fences
        .iter()
        .rev()
        .map(|(id, out)| (id, out, judge(id, out, name, standby_id, assume_lost)))
        .collect();
    let pick = |want: Verdict| {
        judged
            .iter()
            .find(|(_, _, v)| *v == want)
            .map(|(id, out, v)| ((*id).clone(), (*out).clone(), v.clone()))
    };
    pick(Verdict::Observed)
        .or_else(|| pick(Verdict::Assumed))
        .ok_or_else(|| {
            judged
                .iter()
                .rev()
                .filter_map(|(_, _, v)| match v {
                    Verdict::Rejected(why) => Some(why.clone()),
                    _ => None,
                })
                .collect()
        })
}

/// The heartbeat step of this run on `database` (the fenced one), from the journal;
/// never another database's.
fn heartbeat_of(cx: &StepContext, database: &str) -> Option<StepOutput> {
    cx.facts
        .completed("postgres.heartbeat")
        .into_iter()
        .map(|(_, o)| o)
        .rfind(|o| o.data["database"].as_str() == Some(database))
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
        let fences = cx.facts.completed("postgres.fence");
        if fences.is_empty() {
            return Err(ActionError::Permanent(if cx.assume_lost {
                format!(
                    "refusing to promote `{name}`: no postgres.fence step of this run has fenced the old primary or \
                     found it unreachable; with `assume_lost: true` a postgres.fence step must still run, as it is \
                     what checks that the old primary is unreachable (and not, say, refusing drover's password)"
                )
            } else {
                format!(
                    "refusing to promote `{name}`: no postgres.fence step of this run has fenced the old primary \
                     (promotion needs an observed fence, or `assume_lost: true` in the runbook when the old site is lost)"
                )
            }));
        }
        let target = Target::resolve(&cx.config, name)?;
        let db = target.connect(&cx.cancel, cx.deadline).await?;
        let row = db
            .one("SELECT (SELECT system_identifier FROM pg_control_system())::text", &[])
            .await
            .map_err(|e| e.into_action("cannot read its system identifier", false))?;
        let standby_id: String = db
            .get::<Option<String>>(&row, 0)
            .map_err(|e| e.into_action("unexpected answer", false))?
            .unwrap_or_default();
        let (fence_step, fence, verdict) = choose_fence(&fences, name, &standby_id, cx.assume_lost).map_err(|why| {
            ActionError::Permanent(format!(
                "refusing to promote `{name}`: no fence of the primary it replicates from in this run{}: {}",
                if cx.assume_lost {
                    " (observed, or found unreachable under assume_lost)"
                } else {
                    ""
                },
                why.join("; ")
            ))
        })?;
        let fence = Some(fence);
        let fence_data = fence.as_ref().map_or(Value::Null, |f| f.data.clone());
        let fence_at = fence_data["fenced_at_unix"].as_f64();
        let fence_lsn = fence_data["fence_lsn"].as_str().and_then(parse_lsn);

        let started = Instant::now();
        let before = position(&db).await?;
        let already = !before.in_recovery;
        if !already && verdict == Verdict::Assumed {
            // Nobody observed the old primary fenced. If this standby still streams, the
            // server it replicates from is alive: the site is not lost.
            let row = db
                .one(
                    "SELECT coalesce(sender_host, '?') || ':' || coalesce(sender_port::text, '?') \
                     FROM pg_stat_wal_receiver WHERE status = 'streaming' LIMIT 1",
                    &[],
                )
                .await;
            if let Ok(row) = row
                && let Ok(upstream) = db.get::<String>(&row, 0)
            {
                return Err(ActionError::Retryable(format!(
                    "refusing to promote `{name}`: the fence assumed its primary lost, but `{name}` still streams WAL \
                     from {upstream}, so the server it replicates from is alive and the site is not lost; fence it \
                     (observed) or stop it first (a standby stops streaming within wal_receiver_timeout of a real loss)"
                )));
            }
        }
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
        let fenced_db = fence_data["database"].as_str().unwrap_or_default();
        let heartbeat = heartbeat_of(cx, fenced_db);
        let mut rpo =
            json!({"fence_at": fence_data["fenced_at"], "fence_instant_source": fence_data["fence_instant_source"]});
        let mut rpo_s: Option<f64> = None;
        let rpo_note: String;
        match (fence_at, &heartbeat) {
            (None, _) => rpo_note = "no RPO measured: no fence instant (no postgres.fence step in this run)".into(),
            (_, None) => {
                rpo_note = format!(
                    "no RPO measured: no postgres.heartbeat step on `{fenced_db}` (the fenced database) in this run"
                );
            }
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
                        // Only this run's rows, written up to the fence instant.
                        &format!(
                            "SELECT extract(epoch FROM max(at))::float8 FROM {table} \
                             WHERE run_id = $1 AND at <= to_timestamp($2)"
                        ),
                        &[&cx.run_id, &f],
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
                "fence_step": fence_step,
                "fence_assumed": verdict == Verdict::Assumed,
                "system_identifier": standby_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(db: &str, data: Value) -> StepOutput {
        let mut d = data;
        d["database"] = json!(db);
        StepOutput::new("fenced").with_data(d)
    }

    #[test]
    fn only_a_fence_of_the_standbys_own_primary_counts() {
        let own = fence("db-east", json!({"system_identifier": "7", "in_recovery": false}));
        let other = fence("db-other", json!({"system_identifier": "8", "in_recovery": false}));
        let standby = fence("db-stby", json!({"system_identifier": "7", "in_recovery": true}));
        let itself = fence("db-west", json!({"system_identifier": "7", "in_recovery": false}));
        let old = fence("db-east", json!({}));
        let lost = fence("db-east", json!({"assumed_lost": true}));
        assert_eq!(judge("f", &own, "db-west", "7", false), Verdict::Observed);
        for (f, why) in [
            (
                &other,
                "another database cluster (system identifier 8; `db-west` has 7)",
            ),
            (&standby, "was a standby (in recovery)"),
            (&itself, "the database being promoted"),
            (&old, "no system identifier"),
            (&lost, "does not declare assume_lost"),
        ] {
            match judge("f", f, "db-west", "7", false) {
                Verdict::Rejected(m) => assert!(m.contains(why), "{m}"),
                v => panic!("{v:?} for {f:?}"),
            }
        }
        assert_eq!(judge("f", &lost, "db-west", "7", true), Verdict::Assumed);

        let steps = |v: Vec<&StepOutput>| -> Vec<(String, StepOutput)> {
            v.into_iter()
                .enumerate()
                .map(|(i, o)| (format!("s{i}"), o.clone()))
                .collect()
        };
        // The observed fence wins over an assumed one; another cluster's never counts.
        let (id, _, v) = choose_fence(&steps(vec![&own, &lost, &other]), "db-west", "7", true).unwrap();
        assert_eq!((id.as_str(), v), ("s0", Verdict::Observed));
        let (id, _, v) = choose_fence(&steps(vec![&lost, &other]), "db-west", "7", true).unwrap();
        assert_eq!((id.as_str(), v), ("s0", Verdict::Assumed));
        let why = choose_fence(&steps(vec![&other, &standby]), "db-west", "7", true).unwrap_err();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(
            why[0].contains("another database cluster") && why[1].contains("standby"),
            "{why:?}"
        );
    }
}
