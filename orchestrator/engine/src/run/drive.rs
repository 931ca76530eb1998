//! A run's phases, from wherever its journal says it is to its end: preflight (gates
//! everything; a failure changes nothing and ends the run `refused`), the steps, verify
//! (the RTO clock stops when every check passes), undo on failure, the drill cleanup,
//! then the outcome, its record, the seal and the release of the service, atomically.

use std::sync::Arc;
use std::time::Duration;

use drover_model::{Check, RunMode};

use super::checks::{ChecksEnd, run_checks};
use super::dag::{DagEnd, run_steps};
use super::undo::{UndoEnd, compensate, rollback};
use super::{Ctx, EngineError};
use crate::journal::{Event, Outcome, Phase, RollbackReason, StepStatus};
use crate::state::RunState;
use crate::store::{LockRelease, finish_row};
use crate::view::secs;

const INTERRUPT: &str = "stopped by the operator (Ctrl-C) or a shutdown";

/// Ends the background work of the run's steps.
async fn close_scope(ctx: &Ctx) {
    for name in ctx.scope.close(Duration::from_secs(10)).await {
        tracing::warn!(task = %name, "background task did not stop in time and was aborted");
    }
}

/// Records an interruption and returns the run as it stands.
async fn interrupted(ctx: &Ctx, reason: &str) -> Result<RunState, EngineError> {
    close_scope(ctx).await;
    ctx.journal.append(Event::Interrupted { reason: reason.into() }).await?;
    ctx.engine.store.sync().await?;
    Ok(ctx.journal.state())
}

/// Journals a halt: no further steps start.
async fn halt(ctx: &Ctx, reason: &str, preflight: bool) -> Result<(), EngineError> {
    ctx.journal
        .append(Event::Halted {
            reason: reason.to_owned(),
            preflight,
        })
        .await?;
    Ok(())
}

/// Drives the run to its end (or an interruption).
pub(crate) async fn drive(ctx: Arc<Ctx>) -> Result<RunState, EngineError> {
    let rb = ctx.runbook.clone();
    let state = ctx.journal.state();
    // A failed preflight changed nothing: it ends refused, also when drover died
    // between the halt and the end. Nothing is undone, no rollback step runs.
    if state.halted_in_preflight {
        let reason = state.halted.clone().unwrap_or_default();
        return finish(&ctx, preflight_outcome(ctx.mode), None, reason).await;
    }
    let mut halted = state.halted.clone();
    let mut stuck: Option<String> = None;

    // 1. Preflight: every check must pass before anything changes.
    let pending: Vec<&Check> = rb
        .preflight
        .iter()
        .filter(|c| !state.check_passed(Phase::Preflight, &c.name))
        .collect();
    if halted.is_none() && state.steps.iter().all(|s| s.phase != Phase::Steps) && !pending.is_empty() {
        match run_checks(&ctx, Phase::Preflight, &pending).await? {
            ChecksEnd::Passed => {}
            ChecksEnd::Cancelled => return interrupted(&ctx, INTERRUPT).await,
            ChecksEnd::Failed(why) => {
                let reason = format!("preflight failed, nothing was changed: {why}");
                halt(&ctx, &reason, true).await?;
                return finish(&ctx, preflight_outcome(ctx.mode), None, reason).await;
            }
        }
    }
    if ctx.stop.is_cancelled() {
        return interrupted(&ctx, INTERRUPT).await;
    }

    // 2. Steps.
    if ctx.mode != RunMode::Verify && halted.is_none() {
        let state = ctx.journal.state();
        // A step that failed for good before a crash halts the run now.
        if let Some(s) = state.steps.iter().find(|s| {
            s.phase == Phase::Steps && matches!(s.status, Some(StepStatus::Failed | StepStatus::OutcomeUnknown))
        }) {
            let reason = format!("step `{}` failed: {}", s.id, s.error.clone().unwrap_or_default());
            halt(&ctx, &reason, false).await?;
            halted = Some(reason);
        } else {
            match run_steps(&ctx).await? {
                DagEnd::Done => {}
                DagEnd::Halted(reason) => halted = Some(reason),
                DagEnd::Interrupted => return interrupted(&ctx, INTERRUPT).await,
            }
        }
    }

    // 3. Verify: the RTO clock stops when every check has passed.
    let mut rto_s = None;
    if halted.is_none() {
        let state = ctx.journal.state();
        if let Some(r) = state.recovered_s {
            rto_s = Some(r);
        } else {
            let pending: Vec<&Check> = rb
                .verify
                .iter()
                .filter(|c| !state.check_passed(Phase::Verify, &c.name))
                .collect();
            match run_checks(&ctx, Phase::Verify, &pending).await? {
                ChecksEnd::Cancelled => return interrupted(&ctx, INTERRUPT).await,
                ChecksEnd::Failed(why) => {
                    let reason = format!("verification failed: {why}");
                    halt(&ctx, &reason, false).await?;
                    halted = Some(reason);
                }
                ChecksEnd::Passed => {
                    if ctx.mode != RunMode::Verify {
                        let rto = recovery_instant(&ctx.journal.state(), &rb);
                        ctx.journal.append(Event::Recovered { rto_s: rto }).await?;
                        rto_s = Some(rto);
                    }
                }
            }
        }
    }

    // 4. Failure: undo what may have changed, in reverse order, then the rollback steps.
    if halted.is_some() && ctx.mode != RunMode::Verify {
        match compensate(&ctx).await? {
            UndoEnd::Done => {}
            UndoEnd::Stuck(why) => stuck = Some(why),
            UndoEnd::Interrupted => return interrupted(&ctx, INTERRUPT).await,
        }
        if stuck.is_none() {
            match rollback(&ctx, RollbackReason::Failure).await? {
                UndoEnd::Done => {}
                UndoEnd::Stuck(why) => stuck = Some(why),
                UndoEnd::Interrupted => return interrupted(&ctx, INTERRUPT).await,
            }
        }
    }
    // 5. A drill always cleans up, once.
    if ctx.mode == RunMode::Drill && stuck.is_none() {
        let state = ctx.journal.state();
        if !state.rollbacks.contains(&RollbackReason::Failure)
            || state.rollbacks.contains(&RollbackReason::DrillCleanup)
        {
            match rollback(&ctx, RollbackReason::DrillCleanup).await? {
                UndoEnd::Done => {}
                UndoEnd::Stuck(why) => stuck = Some(why),
                UndoEnd::Interrupted => return interrupted(&ctx, INTERRUPT).await,
            }
        }
    }

    // 6. Outcome.
    let (outcome, reason) = outcome(&ctx.journal.state(), rto_s, halted, stuck);
    finish(&ctx, outcome, rto_s, reason).await
}

/// A failed preflight changed nothing; in verify mode the checks are the job.
fn preflight_outcome(mode: RunMode) -> Outcome {
    if mode == RunMode::Verify {
        Outcome::Failed
    } else {
        Outcome::Refused
    }
}

/// The RTO achieved: from the start (or the declared outage) to the last verify pass,
/// or to the last step's end for a runbook without verify checks.
fn recovery_instant(state: &RunState, rb: &drover_model::Runbook) -> f64 {
    let latest = |it: &mut dyn Iterator<Item = f64>| it.fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let end = if rb.verify.is_empty() {
        latest(
            &mut state
                .steps
                .iter()
                .filter(|s| s.phase == Phase::Steps)
                .filter_map(|s| s.finished_t),
        )
    } else {
        latest(
            &mut rb
                .verify
                .iter()
                .filter_map(|c| state.check(Phase::Verify, &c.name).and_then(|c| c.at_s)),
        )
    };
    state.declared_before_s + end.unwrap_or(state.last_t)
}

/// The outcome and its one-line reason.
fn outcome(state: &RunState, rto_s: Option<f64>, halted: Option<String>, stuck: Option<String>) -> (Outcome, String) {
    if let Some(why) = stuck {
        return (
            Outcome::Stuck,
            format!(
                "{why}; operator required{}",
                halted.map(|h| format!(" (after: {h})")).unwrap_or_default()
            ),
        );
    }
    if let Some(h) = halted {
        return (Outcome::Failed, h);
    }
    let targets = state.plan.as_ref().map(|p| p.targets);
    let rpo_s = rpo_achieved(state);
    let mut missed = Vec::new();
    if let (Some(a), Some(t)) = (rto_s, targets.and_then(|t| t.rto_s))
        && a > t
    {
        missed.push(format!("RTO {} is over the target {}", secs(a), secs(t)));
    }
    if let (Some(a), Some(t)) = (rpo_s, targets.and_then(|t| t.rpo_s))
        && a > t
    {
        missed.push(format!("RPO {} is over the target {}", secs(a), secs(t)));
    }
    match (missed.is_empty(), rto_s) {
        (false, _) => (
            Outcome::TargetsMissed,
            format!("recovered, but {}", missed.join(" and ")),
        ),
        (true, Some(a)) => (Outcome::Passed, format!("recovered in {}", secs(a))),
        (true, None) => (Outcome::Passed, "every check passed".into()),
    }
}

/// Journals the end, seals the chain and finishes the row (freeing the service unless
/// the run is stuck) in one transaction, then puts it on disk.
pub(crate) async fn finish(
    ctx: &Ctx,
    outcome: Outcome,
    rto_s: Option<f64>,
    reason: String,
) -> Result<RunState, EngineError> {
    close_scope(ctx).await;
    let rpo_s = ctx.journal.with_state(rpo_achieved);
    crate::crash::point("finish.before_commit");
    let signer = ctx.engine.signer.clone();
    let run_id = ctx.journal.run_id().to_owned();
    let lock = if outcome == Outcome::Stuck {
        LockRelease::Keep
    } else {
        LockRelease::Free
    };
    // The corrective actions the end opens (or closes) are stored with it.
    ctx.journal
        .commit(
            |b| {
                let at = b
                    .push(Event::RunFinished {
                        outcome,
                        rto_s,
                        rpo_s,
                        reason,
                    })?
                    .at
                    .clone();
                let ended = b.state().clone();
                seal(b, &run_id, signer.as_deref())?;
                Ok((at, Arc::new(ended)))
            },
            {
                let run_id = ctx.journal.run_id().to_owned();
                let outcome = outcome.as_str();
                move |tx, (at, ended): &(String, Arc<RunState>)| {
                    finish_row(tx, &run_id, outcome, at, lock)?;
                    crate::actions::record(tx, ended)
                }
            },
        )
        .await?;
    crate::crash::point("finish.after_commit");
    // On disk before the outcome is reported.
    ctx.engine.store.sync().await?;
    Ok(ctx.journal.state())
}

/// Adds a seal: the signature over the hash of the last record.
pub(crate) fn seal(
    b: &mut crate::journal::Batch<'_>,
    run_id: &str,
    signer: Option<&crate::evidence::Signer>,
) -> Result<(), crate::store::StoreError> {
    if let (Some(signer), Some((seq, head))) = (signer, b.head()) {
        let message = crate::evidence::seal_message(run_id, seq, &head);
        b.push(Event::Sealed {
            head,
            signature: signer.sign(&message),
            public_key: signer.public_key_hex(),
            fingerprint: signer.fingerprint(),
        })?;
    }
    Ok(())
}

/// The run's RPO achieved: the largest `measurements.rpo_s` of its steps and checks.
pub fn rpo_achieved(st: &RunState) -> Option<f64> {
    let from = |v: &serde_json::Value| {
        v.get("measurements")
            .and_then(|m| m.get("rpo_s"))
            .and_then(serde_json::Value::as_f64)
    };
    st.steps
        .iter()
        .filter(|s| s.status == Some(StepStatus::Ok))
        .filter_map(|s| s.output.as_ref().and_then(|o| from(&o.data)))
        .chain(st.checks.iter().filter(|c| c.passed).filter_map(|c| from(&c.data)))
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
}
