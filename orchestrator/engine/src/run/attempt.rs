//! The attempt driver: the one loop that runs an action until it succeeds, fails for
//! good or is cancelled, for steps, rollback steps, compensations and checks alike.
//!
//! Each attempt runs in a task of its own under the engine's timeout, so a plugin that
//! panics ends only its own attempt (its outcome is unknown, its siblings go on), and a
//! timed-out attempt is cancelled and then aborted (dropping it kills the processes it
//! started). Between attempts the driver waits with backoff (retries) or the check's
//! interval (polling, bounded by `within`). What it journals goes through a
//! [`Records`] of the caller's kind; a polled check journals its first failure and each
//! change of error, not every poll, and its end with the count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_model::{ActionClass, Located, Node};
use drover_plugin_api::{Action, ActionError, StepOutput};

use super::{Ctx, EngineError, step_context};
use crate::journal::{Event, Phase, StepStatus};

/// What an attempt does.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    Execute,
    /// Undo; with what the execution returned, when it completed.
    Compensate(Option<StepOutput>),
}

/// One thing to drive to its end.
pub(crate) struct Attempts<'a> {
    pub phase: Phase,
    pub id: &'a str,
    pub action: Arc<dyn Action>,
    pub params: &'a Located<Node>,
    /// Per attempt; `None`: no limit (a gate).
    pub timeout: Option<Duration>,
    /// Further attempts after a retryable failure (or an unknown outcome).
    pub retries: u32,
    /// Poll until this long after the first attempt (checks).
    pub within: Option<Duration>,
    pub interval: Duration,
    /// Attempts made before (by an earlier process): numbering goes on from there.
    pub prior_attempts: u32,
    pub work: Work,
    /// Stop retrying when the run halts (steps); an undo goes on.
    pub halts: bool,
    /// The operator's first Ctrl-C cancels the wait between attempts (checks, undo);
    /// otherwise only the second one does.
    pub stop_cancels_wait: bool,
    /// A step of the DAG: the scheduler journals its first start (with the end of the
    /// step before it) and, on success, its end (with the starts it releases:
    /// [`End::Done`]); otherwise both are journaled here ([`End::Ok`]).
    pub at_boundary: bool,
}

/// How it ended.
#[derive(Debug)]
pub(crate) enum End {
    Ok,
    /// Succeeded, and the record of its end is not journaled yet: only `at_boundary`.
    Done(Box<Event>),
    Failed(ActionError),
    Cancelled,
}

/// What the driver journals, by kind of thing driven.
pub(crate) trait Records: Send + Sync {
    fn started(&self, attempt: u32) -> Option<Event>;
    fn attempt_failed(&self, attempt: u32, error: &ActionError, retry_in: Option<Duration>) -> Option<Event>;
    fn passed(&self, attempts: u32, out: StepOutput, at_s: f64) -> Event;
    fn failed(&self, attempts: u32, error: &ActionError) -> Option<Event>;
}

/// Steps, rollback steps and compensations.
pub(crate) struct StepRecords {
    pub phase: Phase,
    pub step: String,
}

impl Records for StepRecords {
    fn started(&self, attempt: u32) -> Option<Event> {
        Some(Event::StepStarted {
            phase: self.phase,
            step: self.step.clone(),
            attempt,
        })
    }
    fn attempt_failed(&self, attempt: u32, error: &ActionError, retry_in: Option<Duration>) -> Option<Event> {
        Some(Event::StepAttemptFailed {
            phase: self.phase,
            step: self.step.clone(),
            attempt,
            error: error.clone(),
            retry_in_s: retry_in.map(|d| d.as_secs_f64()),
        })
    }
    fn passed(&self, attempts: u32, out: StepOutput, _at_s: f64) -> Event {
        Event::StepFinished {
            phase: self.phase,
            step: self.step.clone(),
            status: StepStatus::Ok,
            attempts,
            output: Some(out),
            error: None,
            found: serde_json::Value::Null,
        }
    }
    fn failed(&self, attempts: u32, error: &ActionError) -> Option<Event> {
        Some(Event::StepFinished {
            phase: self.phase,
            step: self.step.clone(),
            status: if matches!(error, ActionError::OutcomeUnknown(_)) {
                StepStatus::OutcomeUnknown
            } else {
                StepStatus::Failed
            },
            attempts,
            output: None,
            error: Some(error.to_string()),
            found: error.data().cloned().unwrap_or_default(),
        })
    }
}

/// Preflight and verify checks.
pub(crate) struct CheckRecords {
    pub phase: Phase,
    pub name: String,
    pub within: Option<Duration>,
}

impl Records for CheckRecords {
    fn started(&self, _attempt: u32) -> Option<Event> {
        None
    }
    fn attempt_failed(&self, attempt: u32, error: &ActionError, retry_in: Option<Duration>) -> Option<Event> {
        // Only a failure that will be polled again is news here; the end says the rest.
        retry_in?;
        Some(Event::CheckAttemptFailed {
            phase: self.phase,
            name: self.name.clone(),
            attempt,
            error: error.to_string(),
        })
    }
    fn passed(&self, attempts: u32, out: StepOutput, at_s: f64) -> Event {
        Event::CheckPassed {
            phase: self.phase,
            name: self.name.clone(),
            attempts,
            summary: out.summary,
            at_s,
            data: out.data,
        }
    }
    fn failed(&self, attempts: u32, error: &ActionError) -> Option<Event> {
        if matches!(error, ActionError::Cancelled) {
            return None;
        }
        let error_data = error.data().cloned().unwrap_or_default();
        let error = match self.within {
            Some(w) => format!(
                "{error} (still failing after {attempts} attempts within {})",
                drover_model::Dur(w)
            ),
            None => error.to_string(),
        };
        Some(Event::CheckFailed {
            phase: self.phase,
            name: self.name.clone(),
            found: error_data,
            attempts,
            error,
        })
    }
}

/// The wait before retry number `tries`: `engine.retry_backoff`, doubling, at most 30 s.
pub(crate) fn backoff(ctx: &Ctx, tries: u32) -> Duration {
    ctx.engine
        .retry_backoff
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(Duration::from_secs(30))
}

/// The same error, with a note added to its message.
fn noted(e: ActionError, note: &str) -> ActionError {
    e.map_message(|m| format!("{m}; {note}"))
}

/// Drives `a` to its end, journaling through `rec`, in a span of its own.
pub(crate) async fn drive(ctx: &Arc<Ctx>, a: Attempts<'_>, rec: &dyn Records) -> Result<End, EngineError> {
    let span = tracing::info_span!("step", step = %a.id, phase = ?a.phase, uses = %a.action.kind());
    tracing::Instrument::instrument(drive_inner(ctx, a, rec), span).await
}

async fn drive_inner(ctx: &Arc<Ctx>, a: Attempts<'_>, rec: &dyn Records) -> Result<End, EngineError> {
    let class = a.action.class();
    let first = Instant::now();
    let mut n = a.prior_attempts;
    let mut tries = 0u32;
    // The last failure journaled while polling: the same one again is not news.
    let mut told: Option<String> = None;
    loop {
        n += 1;
        tries += 1;
        if (a.within.is_none() || tries == 1)
            && !(tries == 1 && a.at_boundary)
            && let Some(ev) = rec.started(n)
        {
            ctx.journal.append(ev).await?;
        }
        let cx = step_context(ctx, a.phase, a.id, n, a.params, a.timeout);
        let res = once(a.action.clone(), cx, a.work.clone(), a.timeout, class).await;
        let e = match res {
            Ok(out) => {
                let at_s = ctx.journal.clock().secs();
                let end = rec.passed(n, out, at_s);
                if a.at_boundary {
                    return Ok(End::Done(Box::new(end)));
                }
                ctx.journal.append(end).await?;
                return Ok(End::Ok);
            }
            Err(e) => e,
        };
        let polling = a.within.is_some_and(|w| first.elapsed() + a.interval < w);
        let again = match &e {
            ActionError::Cancelled | ActionError::Permanent(_) => None,
            ActionError::Found { retryable: false, .. } => None,
            _ if polling => Some(a.interval),
            _ if a.within.is_none() && tries <= a.retries => Some(backoff(ctx, tries)),
            _ => None,
        };
        let text = e.to_string();
        let news = a.within.is_none() || told.as_deref() != Some(text.as_str());
        if news && let Some(ev) = rec.attempt_failed(n, &e, again) {
            ctx.journal.append(ev).await?;
            told = Some(text);
        }
        if matches!(e, ActionError::Cancelled) {
            return Ok(End::Cancelled);
        }
        let mut e = e;
        if let Some(delay) = again {
            tokio::select! {
                () = tokio::time::sleep(delay) => continue,
                () = ctx.abort.cancelled() => return Ok(End::Cancelled),
                () = ctx.stop.cancelled(), if a.stop_cancels_wait => return Ok(End::Cancelled),
                () = ctx.halt.cancelled(), if a.halts => {
                    // Still what it was: an unknown outcome stays unknown (and is undone).
                    e = noted(e, "not retried: the run is halting");
                }
            }
        }
        if let Some(ev) = rec.failed(n, &e) {
            ctx.journal.append(ev).await?;
        }
        return Ok(End::Failed(e));
    }
}

/// Aborts a task when dropped (a run stopping drops the attempts it waits for).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

/// One attempt, in a task of its own, under the engine's timeout.
async fn once(
    action: Arc<dyn Action>,
    cx: drover_plugin_api::StepContext,
    work: Work,
    timeout: Option<Duration>,
    class: ActionClass,
) -> Result<StepOutput, ActionError> {
    let cancel = cx.cancel.clone();
    let kind = action.kind().to_owned();
    let compensating = matches!(work, Work::Compensate(_));
    let task = AbortOnDrop(tokio::spawn(async move {
        match work {
            Work::Execute => action.execute(&cx).await,
            Work::Compensate(done) => action
                .compensate(&cx, done.as_ref())
                .await
                .map(|()| StepOutput::default()),
        }
    }));
    let mut task = task;
    let joined = match timeout {
        None => (&mut task.0).await,
        Some(t) => match tokio::time::timeout(t, &mut task.0).await {
            Ok(j) => j,
            Err(_) => {
                cancel.cancel();
                task.0.abort();
                // Dropped at its next await: the processes it started are killed now.
                let _ = (&mut task.0).await;
                let msg = format!("timed out after {}", drover_model::Dur(t));
                return Err(match class {
                    _ if compensating => ActionError::OutcomeUnknown(format!("compensation {msg}")),
                    ActionClass::Check => ActionError::Retryable(msg),
                    ActionClass::Gate => ActionError::Permanent(msg),
                    _ => ActionError::OutcomeUnknown(msg),
                });
            }
        },
    };
    match joined {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Err(ActionError::Cancelled),
        Err(e) => {
            let msg = format!("`{kind}` panicked: {}", panic_message(e));
            Err(if class == ActionClass::Check && !compensating {
                ActionError::Permanent(msg)
            } else {
                ActionError::OutcomeUnknown(msg)
            })
        }
    }
}
