//! The executor: runs a plan for real. Starting a run returns a [`RunHandle`] (its id,
//! its own stop and abort, a stream of its records) and the run goes on in a task of
//! its own, so one process can run several at once (the daemon does).
//!
//! Everything is journaled before and after each side effect, so a run interrupted by
//! Ctrl-C or a crash continues with [`Engine::resume`]: finished steps are not run
//! again, a step that was in flight runs again (actions are idempotent), and what may
//! have acted is undone if the run halts.
//!
//! The parts, each in its own module: `lock` (the OS lock of a live run), `id` (run ids),
//! `attempt` (the one attempt driver: timeouts, retries, polling, panics), `checks`
//! (preflight and verify), `dag` (the step scheduler), `undo` (compensation and
//! rollback) and `drive` (the phases, the outcome, the atomic finish).

mod attempt;
mod checks;
mod dag;
mod drive;
mod id;
mod lock;
mod undo;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use drover_model::graph::CiGraph;
use drover_model::{Cmdb, Config, Located, Node, RunMode, Runbook};
use drover_plugin_api::{
    Action, ActionError, Approver, CancellationToken, Registry, RunFacts, RunScope, StepContext, StepOutput,
};
use tokio::sync::broadcast;

pub use drive::rpo_achieved;
pub use lock::is_live;

use crate::evidence::Signer;
use crate::journal::{
    ChangeHeader, ChangeType, CiInfo, Event, Journal, Observer, Outcome, Phase, Record, RunClock, RunOptions,
    StepStatus, first_record, rfc3339,
};
use crate::plan::plan;
use crate::state::RunState;
use crate::store::{Admission, LockRelease, Refusal, RunRow, Store, StoreError, acknowledge_row, finish_row};

/// Why a run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Refused by a safety rule (lock, anti-flap) before anything changed.
    #[error("{0}")]
    Refused(String),
    /// The run or its input is not usable.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault of drover itself.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub runbook: Runbook,
    /// The runbook file's text, kept in the journal for resume and audit.
    pub runbook_source: String,
    pub runbook_path: PathBuf,
    pub cmdb: Cmdb,
    pub mode: RunMode,
    /// When the outage was declared: RTO counts from here.
    pub declared_at: Option<SystemTime>,
    pub options: RunOptions,
}

/// The engine: a state store, the actions of this build, and how to reach people.
#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub config: Arc<Config>,
    pub observer: Arc<dyn Observer>,
    pub approver: Arc<dyn Approver>,
    /// Delay before the first retry; doubles per attempt, at most 30 s.
    pub retry_backoff: Duration,
    /// Stop starting steps in every run (first Ctrl-C, shutdown); steps in flight go on
    /// to a journaled end. Each run's own stop is a child of it.
    pub stop: CancellationToken,
    /// Cancel steps in flight as well, in every run (second Ctrl-C).
    pub abort: CancellationToken,
    /// Seals finished runs (evidence); `None` leaves them unsealed.
    pub signer: Option<Arc<Signer>>,
    /// Secret values of the configuration: never written to the journal.
    pub secrets: Arc<Vec<String>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A run going on in this process.
#[derive(Debug)]
pub struct RunHandle {
    pub id: String,
    /// Stops starting steps in this run (steps in flight go on to a journaled end).
    pub stop: CancellationToken,
    /// Cancels this run's steps in flight as well.
    pub abort: CancellationToken,
    events: broadcast::Sender<Record>,
    task: tokio::task::JoinHandle<Result<RunState, EngineError>>,
}

impl RunHandle {
    /// The run's records from now on, as they are stored.
    pub fn events(&self) -> broadcast::Receiver<Record> {
        self.events.subscribe()
    }

    /// Where the run's records are sent (subscribe to it later, e.g. per API client).
    pub fn events_sender(&self) -> broadcast::Sender<Record> {
        self.events.clone()
    }

    /// Waits for the run to end (or be interrupted).
    pub async fn wait(self) -> Result<RunState, EngineError> {
        self.task
            .await
            .map_err(|e| EngineError::Internal(format!("run {} crashed: {e}", self.id)))?
    }
}

/// Sends every record to the engine's observer and to the run's handle.
struct Fanout {
    observer: Arc<dyn Observer>,
    events: broadcast::Sender<Record>,
}

impl Observer for Fanout {
    fn record(&self, rec: &Record) {
        self.observer.record(rec);
        let _ = self.events.send(rec.clone());
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// One run in this process.
pub(crate) struct Ctx {
    engine: Engine,
    journal: Journal,
    runbook: Arc<Runbook>,
    mode: RunMode,
    options: RunOptions,
    /// Cancelled when the run halts: steps in flight make no further attempts.
    halt: CancellationToken,
    /// This run's stop and abort (children of the engine's).
    stop: CancellationToken,
    abort: CancellationToken,
    /// Background work of the run's steps, ended with the run.
    scope: RunScope,
}

impl Engine {
    fn action(&self, uses: &str) -> Result<Arc<dyn Action>, EngineError> {
        self.registry
            .action(uses)
            .ok_or_else(|| match self.registry.spec(uses) {
                Some(_) => EngineError::Refused(format!(
                    "action `{uses}` cannot run in this build yet (its plugin only checks parameters)"
                )),
                None => EngineError::Invalid(format!("unknown action `{uses}`")),
            })
    }

    /// Every action the run would use must be runnable here: refuse before changing anything.
    fn check_runnable(&self, rb: &Runbook, mode: RunMode) -> Result<(), EngineError> {
        let checks = rb.preflight.iter().chain(&rb.verify).map(|c| c.uses.as_str());
        let steps = rb.all_steps().map(|s| s.uses.as_str());
        let all: Vec<&str> = if mode == RunMode::Verify {
            checks.collect()
        } else {
            checks.chain(steps).collect()
        };
        for uses in all {
            self.action(uses)?;
        }
        Ok(())
    }

    fn handle_parts(&self) -> (CancellationToken, CancellationToken, broadcast::Sender<Record>) {
        (
            self.stop.child_token(),
            self.abort.child_token(),
            broadcast::channel(1024).0,
        )
    }

    fn fanout(&self, events: &broadcast::Sender<Record>) -> Arc<dyn Observer> {
        Arc::new(Fanout {
            observer: self.observer.clone(),
            events: events.clone(),
        })
    }

    /// Starts a run. The run row, the service lock (refused when another run holds it,
    /// or anti-flap does), the change number and the first journal record are written
    /// in one transaction; then the run goes on in the background.
    pub async fn start(&self, req: StartRequest) -> Result<RunHandle, EngineError> {
        let rb = &req.runbook;
        self.check_runnable(rb, req.mode)?;
        let ci_graph = CiGraph::new(&req.cmdb);
        let plan = plan(rb, &req.cmdb, &ci_graph).map_err(EngineError::Invalid)?;
        let now = SystemTime::now();
        let declared_before_s = match req.declared_at {
            Some(t) if t > now => {
                return Err(EngineError::Invalid(format!(
                    "--declared-at {} is in the future",
                    rfc3339(t)
                )));
            }
            Some(t) => now.duration_since(t).unwrap_or_default().as_secs_f64(),
            None => 0.0,
        };
        // Anti-flap holds failovers and scheduled runs; a person's --ack lifts it.
        let window = self.config.engine.anti_flap.0;
        let admission = Admission {
            anti_flap: (!req.options.ack
                && !window.is_zero()
                && (req.mode == RunMode::Failover || req.options.scheduled))
                .then_some(window),
        };
        let by_id = req.cmdb.by_id();
        let cis: Vec<CiInfo> = plan
            .cis
            .iter()
            .filter_map(|id| by_id.get(id.as_str()).copied())
            .map(|ci| {
                let t = req.cmdb.targets(ci);
                CiInfo {
                    id: ci.id.value.clone(),
                    kind: ci.kind.clone(),
                    tier: ci.tier.as_ref().map(|t| t.value.clone()),
                    owner: ci.owner.clone(),
                    rto_s: t.rto.map(|d| d.as_secs_f64()),
                    rpo_s: t.rpo.map(|d| d.as_secs_f64()),
                }
            })
            .collect();
        let change_kind = ChangeType::of(req.mode, req.options.scheduled);
        let redact = Arc::new(crate::redact::Redactor::new(&self.secrets));
        let template = Event::RunStarted {
            runbook: rb.name.value.clone(),
            service: rb.service.value.clone(),
            mode: req.mode,
            declared_at: req.declared_at.map(rfc3339),
            declared_before_s,
            options: req.options.clone(),
            plan: Box::new(plan),
            runbook_source: req.runbook_source.clone(),
            runbook_path: req.runbook_path.display().to_string(),
            host: hostname(),
            pid: std::process::id(),
            change: None,
            cis,
            from: rb.from.as_ref().map(|s| s.value.clone()),
            to: rb.to.as_ref().map(|s| s.value.clone()),
            description: rb.description.clone(),
        };
        // The change number is taken in the transaction that stores this record.
        let started = move |number: &str| {
            let mut ev = template.clone();
            if let Event::RunStarted { change, .. } = &mut ev {
                *change = Some(ChangeHeader {
                    number: number.to_owned(),
                    kind: change_kind,
                });
            }
            ev
        };
        let started = Arc::new(started);
        let mut attempts = 0;
        let (id, lock, first, clock) = loop {
            attempts += 1;
            let id = id::new_run_id(now).map_err(EngineError::Internal)?;
            let Some(lock) = lock::take(&self.store, &id)? else {
                continue;
            };
            let row = RunRow {
                id: id.clone(),
                runbook: rb.name.value.clone(),
                service: rb.service.value.clone(),
                mode: req.mode.as_str().to_owned(),
                state: "running".into(),
                outcome: None,
                started_at: rfc3339(now),
                finished_at: None,
            };
            let clock = RunClock::start();
            let (make, redact, writer) = (started.clone(), redact.clone(), self.store.writer());
            crate::crash::point("start.before_commit");
            let created = self
                .store
                .create_run(row, admission, move |number| {
                    first_record(make(number), clock, &redact, writer).map(|(_, json)| json)
                })
                .await?;
            match created {
                Ok((_, json)) => break (id, lock, json, clock),
                Err(Refusal::IdInUse) if attempts < 8 => continue,
                Err(refusal) => return Err(EngineError::Refused(self.refusal(rb, refusal))),
            }
        };
        crate::crash::point("start.after_commit");
        let rec: Record = serde_json::from_str(&first).map_err(|e| EngineError::Internal(e.to_string()))?;
        let state = RunState::from_records(&id, [&rec]);
        let head = Some(crate::evidence::sha256_hex(first.as_bytes()));
        let (stop, abort, events) = self.handle_parts();
        let journal = Journal::new(
            self.store.clone(),
            state,
            head,
            clock,
            self.fanout(&events),
            &self.secrets,
        );
        let ctx = Arc::new(Ctx {
            engine: self.clone(),
            journal,
            runbook: Arc::new(req.runbook.clone()),
            mode: req.mode,
            options: req.options.clone(),
            halt: CancellationToken::new(),
            stop: stop.clone(),
            abort: abort.clone(),
            scope: RunScope::new(),
        });
        let span = tracing::info_span!("run", run = %id, runbook = %rb.name.value, mode = req.mode.as_str());
        let task = spawn_drive(ctx, lock, span);
        Ok(RunHandle {
            id,
            stop,
            abort,
            events,
            task,
        })
    }

    /// Says why a new run of `rb` is refused.
    fn refusal(&self, rb: &Runbook, refusal: Refusal) -> String {
        match refusal {
            Refusal::Locked(r) => {
                let other = r.id.as_str();
                if is_live(&self.store, other) {
                    format!(
                        "service `{}` is being worked on by run {other} ({} of runbook {}, started {}): one run per service at a time",
                        r.service, r.mode, r.runbook, r.started_at
                    )
                } else if r.outcome.as_deref() == Some("stuck") {
                    format!(
                        "run {other} of service `{}` ({} of runbook {}) is stuck and still holds the service: \
                         an operator must take it over with `drover ack {other} --reason TEXT`, \
                         or retry its undo with `drover resume {other}`",
                        r.service, r.mode, r.runbook
                    )
                } else {
                    format!(
                        "run {other} of service `{}` ({} of runbook {}) was interrupted and still holds the service: \
                         continue it with `drover resume {other}`",
                        r.service, r.mode, r.runbook
                    )
                }
            }
            Refusal::AntiFlap(last, age) => format!(
                "service `{}` failed over {} ago (run {}); another failover or scheduled run within {} needs --ack (anti-flap)",
                rb.service,
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                last.id,
                drover_model::Dur(self.config.engine.anti_flap.0)
            ),
            Refusal::IdInUse => "could not draw an unused run id".into(),
        }
    }

    /// Reads a run's journal (after its lock is taken).
    /// The journal of a recorded run, to append to: its clock goes on from the last
    /// record (it never runs backwards).
    fn reopen_journal(&self, state: &RunState, head: Option<String>, observer: Arc<dyn Observer>) -> Journal {
        let started = humantime::parse_rfc3339_weak(&state.started_at).unwrap_or_else(|_| SystemTime::now());
        Journal::new(
            self.store.clone(),
            state.clone(),
            head,
            RunClock::resume(started, state.last_t),
            observer,
            &self.secrets,
        )
    }

    async fn read(&self, run_id: &str) -> Result<(RunState, Option<String>), EngineError> {
        let store = self.store.clone();
        let id = run_id.to_owned();
        let stored = tokio::task::spawn_blocking(move || store.records(&id))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        let head = stored.last().map(|r| crate::evidence::sha256_hex(r.json.as_bytes()));
        let records = stored
            .iter()
            .map(|r| {
                serde_json::from_str::<Record>(&r.json).map_err(|e| {
                    EngineError::Invalid(format!("run {run_id}: journal record {} is unreadable: {e}", r.seq))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state = RunState::from_records(run_id, &records);
        if state.mode.is_none() {
            return Err(EngineError::Invalid(format!("run {run_id} has no journal")));
        }
        Ok((state, head))
    }

    /// Continues an interrupted run from its journal; `yes` approves the gates ahead. A
    /// stuck run that nobody acknowledged retries its undo. A finished run whose end
    /// was not settled (unsealed, or its row or lock left behind) is settled.
    pub async fn resume(&self, run_id: &str, yes: bool) -> Result<RunHandle, EngineError> {
        // The lock first: nobody else may write this journal while it is read.
        let Some(lock) = lock::take(&self.store, run_id)? else {
            return Err(EngineError::Refused(format!(
                "run {run_id} is still running in another process"
            )));
        };
        self.store.reopen(run_id);
        let (state, head) = self.read(run_id).await?;
        let (stop, abort, events) = self.handle_parts();
        let journal = self.reopen_journal(&state, head, self.fanout(&events));
        let reopen = matches!(&state.finished, Some(f) if f.outcome == Outcome::Stuck) && state.acknowledged.is_none();
        if state.finished.is_some() && !reopen {
            let settled = self.settle(&journal, &state).await?;
            let task = tokio::spawn(async move {
                drop(lock);
                Ok(settled)
            });
            return Ok(RunHandle {
                id: run_id.to_owned(),
                stop,
                abort,
                events,
                task,
            });
        }
        let node = drover_model::node::parse_yaml(&state.runbook_source).map_err(|e| {
            EngineError::Invalid(format!(
                "run {run_id}: the recorded runbook does not parse: {}",
                e.message
            ))
        })?;
        let runbook: Runbook = drover_model::from_node(&node)
            .map_err(|e| EngineError::Invalid(format!("run {run_id}: the recorded runbook does not load: {e}")))?;
        let mode = state.mode.unwrap_or(RunMode::Drill);
        self.check_runnable(&runbook, mode)?;
        journal
            .append(Event::Resumed {
                pid: std::process::id(),
                host: hostname(),
            })
            .await?;
        let ctx = Arc::new(Ctx {
            engine: self.clone(),
            journal,
            runbook: Arc::new(runbook),
            mode,
            options: RunOptions {
                yes: state.options.yes || yes,
                ..state.options.clone()
            },
            halt: CancellationToken::new(),
            stop: stop.clone(),
            abort: abort.clone(),
            scope: RunScope::new(),
        });
        // Background work of completed steps (a heartbeat) died with the old process:
        // restart it, unless the step was already undone.
        let state = ctx.journal.state();
        for st in state
            .steps
            .iter()
            .filter(|s| s.phase == Phase::Steps && s.status == Some(StepStatus::Ok))
            .filter(|s| state.step(Phase::Compensation, &s.id).is_none())
        {
            let Some(step) = ctx.runbook.steps.iter().find(|x| x.id.value == st.id) else {
                continue;
            };
            let action = self.action(&step.uses)?;
            let cx = step_context(&ctx, Phase::Steps, &st.id, st.attempts, &step.with, None);
            if let Err(e) = action
                .resume(&cx, st.output.as_ref().unwrap_or(&StepOutput::default()))
                .await
            {
                tracing::warn!(step = %st.id, error = %e, "could not restart the step's background work");
            }
        }
        let span = tracing::info_span!("run", run = %run_id, runbook = %state.runbook, resumed = true);
        let task = spawn_drive(ctx, lock, span);
        Ok(RunHandle {
            id: run_id.to_owned(),
            stop,
            abort,
            events,
            task,
        })
    }

    /// A finished run: seals it if its seal is missing, and finishes its row and frees
    /// (or keeps, when stuck) its service if they were left behind.
    async fn settle(&self, journal: &Journal, state: &RunState) -> Result<RunState, EngineError> {
        let Some(finish) = state.finished.clone() else {
            return Ok(state.clone());
        };
        let lock = if finish.outcome == Outcome::Stuck && state.acknowledged.is_none() {
            LockRelease::Keep
        } else {
            LockRelease::Free
        };
        if !state.sealed && self.signer.is_some() {
            let signer = self.signer.clone();
            let run_id = state.id.clone();
            let (outcome, at, rid) = (finish.outcome.as_str(), finish.at.clone(), state.id.clone());
            journal
                .commit(
                    |b| drive::seal(b, &run_id, signer.as_deref()),
                    move |tx, ()| finish_row(tx, &rid, outcome, &at, lock),
                )
                .await?;
            self.store.record_actions(state.clone()).await?;
            self.store.sync().await?;
            return Ok(journal.state());
        }
        let id = state.id.clone();
        let store = self.store.clone();
        let row = tokio::task::spawn_blocking(move || store.run(&id))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        let holder = self.store.service_holder(&state.service)?;
        let row_stale =
            row.is_none_or(|r| r.state != "finished" || r.outcome.as_deref() != Some(finish.outcome.as_str()));
        let lock_stale = match lock {
            LockRelease::Free => holder.as_deref() == Some(state.id.as_str()),
            LockRelease::Keep => holder.as_deref() != Some(state.id.as_str()),
        };
        if row_stale || lock_stale {
            self.store
                .settle(&state.id, finish.outcome.as_str(), &finish.at, lock)
                .await?;
        }
        // Its corrective actions, if the end that should have opened them was cut short.
        self.store.record_actions(state.clone()).await?;
        self.store.sync().await?;
        Ok(state.clone())
    }

    /// An operator takes over a stuck run (or abandons an interrupted one): journals who,
    /// when and why, re-seals the journal and frees the service, in one transaction.
    pub async fn acknowledge(&self, run_id: &str, by: &str, reason: &str) -> Result<RunState, EngineError> {
        if reason.trim().is_empty() {
            return Err(EngineError::Invalid(
                "an acknowledgement needs a reason (--reason TEXT)".into(),
            ));
        }
        let Some(lock) = lock::take(&self.store, run_id)? else {
            return Err(EngineError::Refused(format!(
                "run {run_id} is running in another process: stop it first (Ctrl-C), then acknowledge it"
            )));
        };
        let (state, head) = self.read(run_id).await?;
        if let Some((who, why, at)) = &state.acknowledged {
            return Err(EngineError::Refused(format!(
                "run {run_id} was already acknowledged by {who} at {at}: {why}"
            )));
        }
        let abandon = match &state.finished {
            Some(f) if f.outcome == Outcome::Stuck => false,
            Some(f) => {
                return Err(EngineError::Refused(format!(
                    "run {run_id} ended {}: there is nothing to acknowledge (only a stuck or interrupted run holds its service)",
                    f.outcome.as_str()
                )));
            }
            None => true,
        };
        let journal = self.reopen_journal(&state, head, self.observer.clone());
        let signer = self.signer.clone();
        let (id, by, why) = (run_id.to_owned(), by.to_owned(), reason.to_owned());
        let run = id.clone();
        journal
            .commit(
                move |b| {
                    if abandon {
                        b.push(Event::RunFinished {
                            outcome: Outcome::Stuck,
                            rto_s: None,
                            rpo_s: rpo_achieved(b.state()),
                            reason: format!("interrupted, then abandoned by {by}: the operator took it over ({why})"),
                        })?;
                    }
                    let at = b
                        .push(Event::Acknowledged {
                            by: by.clone(),
                            reason: why.clone(),
                        })?
                        .at
                        .clone();
                    let ended = Arc::new(b.state().clone());
                    drive::seal(b, &id, signer.as_deref())?;
                    Ok((at, ended))
                },
                move |tx, (at, ended): &(String, Arc<RunState>)| {
                    if abandon {
                        finish_row(tx, &run, "stuck", at, LockRelease::Free)?;
                    }
                    acknowledge_row(tx, &run, at)?;
                    // An abandoned run ends stuck here: its actions open with that end.
                    crate::actions::record(tx, ended)
                },
            )
            .await?;
        self.store.sync().await?;
        drop(lock);
        Ok(journal.state())
    }
    /// Journals an upload of the run's sealed evidence to the archive (or its failure)
    /// and seals the journal again. The run must be finished and sealed; its outcome,
    /// row and lock are untouched (a failed upload never changes a run's outcome).
    pub async fn record_archive(&self, run_id: &str, event: Event) -> Result<RunState, EngineError> {
        if !matches!(
            event,
            Event::EvidenceArchived { .. } | Event::EvidenceArchiveFailed { .. }
        ) {
            return Err(EngineError::Internal(format!(
                "record_archive takes an archive event, not {}",
                event.kind()
            )));
        }
        let Some(lock) = lock::take(&self.store, run_id)? else {
            return Err(EngineError::Refused(format!(
                "run {run_id} is running in another process: archive its evidence when it has finished"
            )));
        };
        let (state, head) = self.read(run_id).await?;
        if state.finished.is_none() || !state.sealed {
            return Err(EngineError::Refused(format!(
                "run {run_id} has not finished: its evidence is archived once it is sealed"
            )));
        }
        let journal = self.reopen_journal(&state, head, self.observer.clone());
        let signer = self.signer.clone();
        let id = run_id.to_owned();
        journal
            .commit(
                move |b| {
                    b.push(event)?;
                    drive::seal(b, &id, signer.as_deref())
                },
                |_, ()| Ok(()),
            )
            .await?;
        self.store.sync().await?;
        drop(lock);
        Ok(journal.state())
    }
}

/// Drives a run in a task of its own, holding its lock, in its span.
fn spawn_drive(
    ctx: Arc<Ctx>,
    lock: lock::RunLock,
    span: tracing::Span,
) -> tokio::task::JoinHandle<Result<RunState, EngineError>> {
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let result = drive::drive(ctx).await;
            drop(lock);
            result
        },
        span,
    ))
}

/// The steps of this run, as the actions see them.
struct Facts(Journal, Arc<Runbook>);

impl RunFacts for Facts {
    fn completed(&self, kind: &str) -> Vec<(String, StepOutput)> {
        self.0.with_state(|st| {
            let mut done: Vec<_> = st
                .steps
                .iter()
                .filter(|s| s.phase == Phase::Steps && s.status == Some(StepStatus::Ok))
                .filter(|s| self.1.steps.iter().any(|x| x.id.value == s.id && x.uses.value == kind))
                .map(|s| (s.finish_seq, s.id.clone(), s.output.clone().unwrap_or_default()))
                .collect();
            done.sort_by_key(|d| d.0);
            done.into_iter().map(|(_, id, out)| (id, out)).collect()
        })
    }
}

/// Journals a step's checkpoint.
struct JournalCheckpoints {
    journal: Journal,
    phase: Phase,
    step: String,
    attempt: u32,
}

impl JournalCheckpoints {
    async fn append(&self, event: Event, what: &str) -> Result<(), ActionError> {
        self.journal
            .append(event)
            .await
            .map(drop)
            .map_err(|e| ActionError::Permanent(format!("cannot journal the {what}: {e}")))
    }
}

#[async_trait::async_trait]
impl drover_plugin_api::CheckpointSink for JournalCheckpoints {
    async fn save(&self, data: serde_json::Value) -> Result<(), ActionError> {
        let event = Event::Checkpoint {
            phase: self.phase,
            step: self.step.clone(),
            attempt: self.attempt,
            data,
        };
        self.append(event, "checkpoint").await
    }

    async fn save_progress(&self, data: serde_json::Value) -> Result<(), ActionError> {
        let event = Event::Progress {
            phase: self.phase,
            step: self.step.clone(),
            attempt: self.attempt,
            data,
        };
        self.append(event, "step's progress").await
    }
}

/// What an action gets for one attempt.
fn step_context(
    ctx: &Ctx,
    phase: Phase,
    id: &str,
    attempt: u32,
    params: &Located<Node>,
    timeout: Option<Duration>,
) -> StepContext {
    let now = std::time::Instant::now();
    // A compensation undoes the step: it gets the step's checkpoint.
    let of = if phase == Phase::Compensation {
        Phase::Steps
    } else {
        phase
    };
    StepContext {
        run_id: ctx.journal.run_id().to_owned(),
        step_id: id.to_owned(),
        attempt,
        mode: ctx.mode,
        params: params.clone(),
        config: ctx.engine.config.clone(),
        cancel: ctx.abort.child_token(),
        deadline: now + timeout.unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600)),
        approved: ctx.options.yes,
        approver: ctx.engine.approver.clone(),
        facts: Arc::new(Facts(ctx.journal.clone(), ctx.runbook.clone())),
        scope: ctx.scope.clone(),
        assume_lost: ctx.runbook.assume_lost,
        force_lag: ctx.options.force_lag,
        checkpoint: ctx
            .journal
            .with_state(|st| st.step(of, id).and_then(|s| s.checkpoint.clone())),
        progress: ctx
            .journal
            .with_state(|st| st.step(phase, id).and_then(|s| s.progress.clone())),
        checkpoints: Arc::new(JournalCheckpoints {
            journal: ctx.journal.clone(),
            phase,
            step: id.to_owned(),
            attempt,
        }),
    }
}
