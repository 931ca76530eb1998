//! The step scheduler: runs the steps in dependency order, as many at once as the DAG
//! and `max_parallel` allow.
//!
//! The order comes from the plan recorded when the run started (each step's `needs`
//! and the steps the CMDB order makes it wait for), never from the files as they are
//! now: a CMDB edited during an outage cannot reorder or break a half-done failover.
//! A step whose driver fails (a panic in drover itself) ends as outcome unknown and
//! halts the run; its siblings go on to their journaled end.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use drover_model::ActionClass;
use drover_model::runbook::DEFAULT_TIMEOUT;
use tokio::task::JoinSet;

use super::attempt::{self, Attempts, End, StepRecords, Work};
use super::{Ctx, EngineError};
use crate::journal::{Event, Phase, StepStatus};

pub(crate) enum DagEnd {
    Done,
    Halted(String),
    Interrupted,
}

/// The step DAG from the recorded plan: for each step (by index in the runbook), the
/// steps it waits for.
fn predecessors(ctx: &Ctx) -> Result<Vec<Vec<usize>>, EngineError> {
    let rb = &ctx.runbook;
    let index: HashMap<&str, usize> = rb.steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let plan = ctx
        .journal
        .with_state(|st| st.plan.clone())
        .ok_or_else(|| EngineError::Invalid("the run has no recorded plan".into()))?;
    let mut preds = vec![Vec::new(); rb.steps.len()];
    for ps in &plan.steps {
        let Some(&i) = index.get(ps.id.as_str()) else {
            return Err(EngineError::Invalid(format!(
                "the recorded plan names step `{}`, which the recorded runbook lacks",
                ps.id
            )));
        };
        for p in ps.needs.iter().chain(&ps.after) {
            if let Some(&j) = index.get(p.as_str()) {
                preds[i].push(j);
            }
        }
    }
    Ok(preds)
}

/// Runs one step to its end. Its first start is journaled already (by the scheduler,
/// after `prior` attempts of earlier processes); its end, when it succeeds, is left to
/// the scheduler ([`End::Done`]).
async fn run_step(ctx: Arc<Ctx>, i: usize, prior: u32) -> Result<End, EngineError> {
    let step = &ctx.runbook.steps[i];
    let action = ctx.engine.action(&step.uses)?;
    let class = action.class();
    let timeout = match (step.timeout, class) {
        (Some(t), _) => Some(t.0),
        (None, ActionClass::Gate) => None,
        (None, _) => Some(DEFAULT_TIMEOUT),
    };
    let rec = StepRecords {
        phase: Phase::Steps,
        step: step.id.value.clone(),
    };
    attempt::drive(
        &ctx,
        Attempts {
            phase: Phase::Steps,
            id: &step.id,
            action,
            params: &step.with,
            timeout,
            retries: step.retries.unwrap_or(0),
            within: step.within.map(|w| w.0).filter(|_| class == ActionClass::Check),
            interval: Duration::from_secs(1),
            prior_attempts: prior,
            work: Work::Execute,
            halts: true,
            stop_cancels_wait: false,
            at_boundary: true,
        },
        &rec,
    )
    .await
}

/// Runs the steps that have not completed.
pub(crate) async fn run_steps(ctx: &Arc<Ctx>) -> Result<DagEnd, EngineError> {
    let rb = ctx.runbook.clone();
    let preds = predecessors(ctx)?;
    let n = rb.steps.len();
    let mut succs = vec![Vec::new(); n];
    let mut waiting = vec![0usize; n];
    for (i, ps) in preds.iter().enumerate() {
        waiting[i] = ps.len();
        for &p in ps {
            succs[p].push(i);
        }
    }
    let max_parallel = ctx.options.max_parallel.max(1);
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut running: JoinSet<Result<End, EngineError>> = JoinSet::new();
    let mut running_ids: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut halted: Option<String> = None;
    let mut cancelled = false;
    let mut fatal: Option<EngineError> = None;
    let mut done = 0usize;
    let release = |i: usize, waiting: &mut Vec<usize>, ready: &mut VecDeque<usize>| {
        for &m in &succs[i] {
            waiting[m] -= 1;
            if waiting[m] == 0 {
                ready.push_back(m);
            }
        }
    };
    // The ends of steps that succeeded, not journaled yet: each goes into the commit of
    // the starts it releases (one commit per step boundary), before any of them runs.
    let mut ended: Vec<Event> = Vec::new();
    loop {
        let mut starts: Vec<(usize, u32)> = Vec::new();
        while let Some(&i) = ready.front() {
            if halted.is_some() || cancelled || fatal.is_some() || ctx.stop.is_cancelled() {
                break;
            }
            if ctx.journal.with_state(|st| st.step_ok(Phase::Steps, &rb.steps[i].id)) {
                ready.pop_front();
                done += 1;
                release(i, &mut waiting, &mut ready);
                continue;
            }
            if running.len() + starts.len() >= max_parallel {
                break;
            }
            ready.pop_front();
            let prior = ctx.journal.with_state(|st| st.attempts(Phase::Steps, &rb.steps[i].id));
            starts.push((i, prior));
        }
        let events: Vec<Event> = ended
            .drain(..)
            .chain(starts.iter().map(|&(i, prior)| Event::StepStarted {
                phase: Phase::Steps,
                step: rb.steps[i].id.value.clone(),
                attempt: prior + 1,
            }))
            .collect();
        if let Err(e) = ctx.journal.append_all(events).await {
            // Nothing more can be journaled: none of these starts, the others stop at
            // their next await, the run is left interrupted where its journal ends.
            ctx.abort.cancel();
            fatal.get_or_insert(e.into());
            starts.clear();
        }
        for (i, prior) in starts {
            let handle = running.spawn(run_step(ctx.clone(), i, prior));
            running_ids.insert(handle.id(), i);
        }
        if running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            j = running.join_next_with_id() => j,
            () = ctx.stop.cancelled(), if !cancelled => { cancelled = true; continue; }
        };
        let Some(mut joined) = joined else { break };
        // This step and every other that ended meanwhile: their ends and the starts
        // they release go into one commit.
        loop {
            let (i, end) = match joined {
                Ok((id, end)) => (running_ids.remove(&id).unwrap_or(usize::MAX), end),
                Err(e) => {
                    let i = running_ids.remove(&e.id()).unwrap_or(usize::MAX);
                    (
                        i,
                        Ok(End::Failed(drover_plugin_api::ActionError::OutcomeUnknown(format!(
                            "drover's step driver crashed: {e}"
                        )))),
                    )
                }
            };
            if let Some(step) = rb.steps.get(i) {
                match end {
                    Err(e) => {
                        // The store failed: nothing more can be journaled. Stop the others
                        // at their next await and leave the run interrupted where its
                        // journal ends.
                        ctx.abort.cancel();
                        fatal.get_or_insert(e);
                    }
                    Ok(ok @ (End::Done(_) | End::Ok)) => {
                        done += 1;
                        release(i, &mut waiting, &mut ready);
                        if let End::Done(end) = ok {
                            ended.push(*end);
                        }
                    }
                    Ok(End::Failed(e)) => {
                        // The ends joined before it first, in the order they came.
                        ctx.journal.append_all(std::mem::take(&mut ended)).await?;
                        let finished = ctx
                            .journal
                            .with_state(|st| st.step(Phase::Steps, &step.id).and_then(|s| s.status).is_some());
                        if !finished {
                            ctx.journal
                                .append(Event::StepFinished {
                                    phase: Phase::Steps,
                                    step: step.id.value.clone(),
                                    status: StepStatus::OutcomeUnknown,
                                    attempts: ctx.journal.with_state(|st| st.attempts(Phase::Steps, &step.id)),
                                    output: None,
                                    error: Some(e.to_string()),
                                    found: serde_json::Value::Null,
                                })
                                .await?;
                        }
                        if halted.is_none() {
                            let reason = format!("step `{}` failed: {e}", step.id);
                            ctx.journal
                                .append(Event::Halted {
                                    reason: reason.clone(),
                                    preflight: false,
                                })
                                .await?;
                            ctx.halt.cancel();
                            halted = Some(reason);
                        }
                    }
                    Ok(End::Cancelled) => cancelled = true,
                }
            }
            match running.try_join_next_with_id() {
                Some(next) => joined = next,
                None => break,
            }
        }
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(h) = halted {
        return Ok(DagEnd::Halted(h));
    }
    if cancelled || ctx.stop.is_cancelled() || done < n {
        return Ok(DagEnd::Interrupted);
    }
    Ok(DagEnd::Done)
}
