//! Undo: compensation of every step that may have changed something, in reverse order,
//! then the rollback steps in order.
//!
//! "May have changed something" is wider than "completed": a step whose attempt timed
//! out, was cancelled, panicked, or was in flight when drover died has an unknown
//! outcome, and is undone too; its compensation gets the checkpoint the step journaled
//! before acting. Such a step is first journaled as `outcome_unknown`, so the report
//! says what happened.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use drover_model::runbook::DEFAULT_TIMEOUT;

use super::attempt::{self, Attempts, End, StepRecords, Work};
use super::{Ctx, EngineError};
use crate::journal::{Event, Phase, RollbackReason, StepStatus};

pub(crate) enum UndoEnd {
    Done,
    Stuck(String),
    Interrupted,
}

/// Compensates, in reverse order, the steps that completed or may have acted.
pub(crate) async fn compensate(ctx: &Arc<Ctx>) -> Result<UndoEnd, EngineError> {
    let state = ctx.journal.state();
    let mut todo: Vec<_> = state
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Steps && (s.status == Some(StepStatus::Ok) || s.may_have_acted))
        .collect();
    todo.sort_by_key(|s| Reverse(s.finish_seq.unwrap_or(s.last_seq)));
    for s in todo {
        let Some(step) = ctx.runbook.steps.iter().find(|x| x.id.value == s.id) else {
            continue;
        };
        let action = ctx.engine.action(&step.uses)?;
        if !action.can_compensate(&step.with) || state.step_ok(Phase::Compensation, &s.id) {
            continue;
        }
        if ctx.stop.is_cancelled() {
            return Ok(UndoEnd::Interrupted);
        }
        if s.status.is_none() {
            ctx.journal
                .append(Event::StepFinished {
                    phase: Phase::Steps,
                    step: s.id.clone(),
                    status: StepStatus::OutcomeUnknown,
                    attempts: s.attempts,
                    output: None,
                    found: serde_json::Value::Null,
                    error: Some(
                        s.attempt_errors
                            .last()
                            .cloned()
                            .unwrap_or_else(|| "its attempt was interrupted".into())
                            + "; outcome unknown: undoing it",
                    ),
                })
                .await?;
        }
        let rec = StepRecords {
            phase: Phase::Compensation,
            step: s.id.clone(),
        };
        let end = attempt::drive(
            ctx,
            Attempts {
                phase: Phase::Compensation,
                id: &s.id,
                action,
                params: &step.with,
                timeout: Some(step.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0)),
                retries: step.retries.unwrap_or(0),
                within: None,
                interval: Duration::from_secs(1),
                prior_attempts: state.attempts(Phase::Compensation, &s.id),
                work: Work::Compensate(s.output.clone().filter(|_| s.status == Some(StepStatus::Ok))),
                halts: false,
                stop_cancels_wait: true,
                at_boundary: false,
            },
            &rec,
        )
        .await?;
        match end {
            // `Done` only comes `at_boundary`, which undo is not.
            End::Ok | End::Done(_) => {}
            End::Cancelled => return Ok(UndoEnd::Interrupted),
            End::Failed(e) => return Ok(UndoEnd::Stuck(format!("undoing step `{}` failed: {e}", s.id))),
        }
    }
    Ok(UndoEnd::Done)
}

/// Runs the rollback steps in order, skipping those already done in this run.
pub(crate) async fn rollback(ctx: &Arc<Ctx>, reason: RollbackReason) -> Result<UndoEnd, EngineError> {
    if ctx.runbook.rollback.is_empty() {
        return Ok(UndoEnd::Done);
    }
    let state = ctx.journal.state();
    if !state.rollbacks.contains(&reason) {
        ctx.journal.append(Event::RollbackStarted { reason }).await?;
    }
    for step in &ctx.runbook.rollback {
        if state.step_ok(Phase::Rollback, &step.id) {
            continue;
        }
        if ctx.stop.is_cancelled() {
            return Ok(UndoEnd::Interrupted);
        }
        let action = ctx.engine.action(&step.uses)?;
        let class = action.class();
        let timeout = match (step.timeout, class) {
            (Some(t), _) => Some(t.0),
            (None, drover_model::ActionClass::Gate) => None,
            (None, _) => Some(DEFAULT_TIMEOUT),
        };
        let rec = StepRecords {
            phase: Phase::Rollback,
            step: step.id.value.clone(),
        };
        let end = attempt::drive(
            ctx,
            Attempts {
                phase: Phase::Rollback,
                id: &step.id,
                action,
                params: &step.with,
                timeout,
                retries: step.retries.unwrap_or(0),
                within: step
                    .within
                    .map(|w| w.0)
                    .filter(|_| class == drover_model::ActionClass::Check),
                interval: Duration::from_secs(1),
                prior_attempts: state.attempts(Phase::Rollback, &step.id),
                work: Work::Execute,
                halts: false,
                stop_cancels_wait: false,
                at_boundary: false,
            },
            &rec,
        )
        .await?;
        match end {
            // `Done` only comes `at_boundary`, which undo is not.
            End::Ok | End::Done(_) => {}
            End::Cancelled => return Ok(UndoEnd::Interrupted),
            End::Failed(e) => {
                return Ok(UndoEnd::Stuck(format!("rollback step `{}` failed: {e}", step.id)));
            }
        }
    }
    Ok(UndoEnd::Done)
}
