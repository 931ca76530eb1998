//! The executor: runs a plan for real. Preflight checks gate everything; steps run in
//! dependency order with as much parallelism as the DAG and `max_parallel` allow; the
//! engine owns timeouts, retries with backoff and the polling of checks; the first
//! permanent failure stops new steps, completed steps are compensated in reverse order
//! and the rollback steps run; a drill always ends with its rollback steps.
//!
//! Everything is journaled before and after each side effect, so a run interrupted by
//! Ctrl-C or a crash continues with [`Engine::resume`]: finished steps are not run
//! again, a step that was in flight runs again (actions are idempotent).

use std::collections::VecDeque;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use drover_model::graph::{CiGraph, StepGraph, StepNode};
use drover_model::runbook::DEFAULT_TIMEOUT;
use drover_model::{ActionClass, Check, Cmdb, Config, RunMode, Runbook, Step};
use drover_plugin_api::{
    Action, ActionError, Approver, CancellationToken, Registry, RunFacts, RunScope, StepContext, StepOutput,
};
use petgraph::Direction;
use tokio::task::JoinSet;

use crate::evidence::Signer;
use crate::journal::{
    ChangeHeader, ChangeType, CiInfo, Event, Journal, Observer, Outcome, Phase, RollbackReason, RunClock, RunOptions,
    StepStatus, rfc3339,
};
use crate::plan::plan;
use crate::state::RunState;
use crate::store::{RunRow, Store, StoreError};

/// Why a run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Refused by a safety rule (lock, anti-flap) or because it cannot run here.
    #[error("{0}")]
    Refused(String),
    /// The run or its input is not usable.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Stop starting steps (first Ctrl-C); steps in flight go on to a journaled end.
    pub stop: CancellationToken,
    /// Cancel steps in flight as well (second Ctrl-C, shutdown).
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

/// The exclusive lock a live process holds on a run (released by the OS on exit,
/// kill -9 included).
#[derive(Debug)]
struct RunLock(#[allow(dead_code)] File);

fn lock_path(store: &Store, run_id: &str) -> PathBuf {
    store.dir().join("runs").join(format!("{run_id}.lock"))
}

fn take_run_lock(store: &Store, run_id: &str) -> Result<Option<RunLock>, EngineError> {
    let path = lock_path(store, run_id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::Invalid(format!("cannot create {}: {e}", dir.display())))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::Invalid(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(RunLock(file))),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(EngineError::Invalid(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// Whether a live process is running `run_id` right now.
pub fn is_live(store: &Store, run_id: &str) -> bool {
    let path = lock_path(store, run_id);
    match File::options().write(true).open(&path) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

fn new_run_id(now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{}-{}-{:04x}", &digits[..8], &digits[8..14], h.finish() & 0xffff)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// One run in this process.
struct Ctx {
    engine: Engine,
    journal: Journal,
    runbook: Arc<Runbook>,
    mode: RunMode,
    options: RunOptions,
    /// Cancelled when the run halts: steps in flight make no further attempts.
    halt: CancellationToken,
    /// Background work of the run's steps, ended with the run.
    scope: RunScope,
}

/// How one step ended, for the scheduler.
enum StepEnd {
    Ok,
    Failed(String),
    Cancelled,
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

    /// Starts a run and drives it to its end (or to an interruption).
    pub async fn start(&self, req: StartRequest) -> Result<RunState, EngineError> {
        let rb = &req.runbook;
        self.check_runnable(rb, req.mode)?;
        let ci_graph = CiGraph::new(&req.cmdb);
        let plan = plan(rb, &req.cmdb, &ci_graph).map_err(EngineError::Invalid)?;
        if req.mode == RunMode::Failover {
            self.check_anti_flap(&rb.service, req.options.ack)?;
        }
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
        let id = new_run_id(now);
        let lock = take_run_lock(&self.store, &id)?
            .ok_or_else(|| EngineError::Invalid(format!("run id {id} is already in use")))?;
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
        let store = self.store.clone();
        let created = self.store.create_run(&row, |r| {
            let other = r.id.as_str();
            Some(if is_live(&store, other) {
                format!(
                    "service `{}` is being worked on by run {other} ({} of runbook {}, started {}): one run per service at a time",
                    r.service, r.mode, r.runbook, r.started_at
                )
            } else {
                format!(
                    "run {other} of service `{}` ({} of runbook {}) was interrupted and still holds the service: \
                     continue it with `drover resume {other}`",
                    r.service, r.mode, r.runbook
                )
            })
        })?;
        let number = created.map_err(EngineError::Refused)?;
        let change = ChangeHeader {
            number,
            kind: ChangeType::of(req.mode, req.options.scheduled),
        };
        let cis = plan
            .cis
            .iter()
            .filter_map(|id| req.cmdb.item(id))
            .map(|ci| {
                let t = req.cmdb.targets_of(&ci.id);
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
        let fresh = RunState::from_records(&id, &[]);
        let journal = Journal::new(
            self.store.clone(),
            fresh,
            None,
            RunClock::start(),
            self.observer.clone(),
            &self.secrets,
        );
        journal.append(Event::RunStarted {
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
            change: Some(change),
            cis,
            from: rb.from.as_ref().map(|s| s.value.clone()),
            to: rb.to.as_ref().map(|s| s.value.clone()),
            description: rb.description.clone(),
        })?;
        let ctx = Arc::new(Ctx {
            engine: self.clone(),
            journal,
            runbook: Arc::new(req.runbook.clone()),
            mode: req.mode,
            options: req.options,
            halt: CancellationToken::new(),
            scope: RunScope::new(),
        });
        let state = ctx.journal.state();
        let result = drive(ctx, state, ci_graph).await;
        drop(lock);
        result
    }

    fn check_anti_flap(&self, service: &str, ack: bool) -> Result<(), EngineError> {
        let window = self.config.engine.anti_flap.0;
        if ack || window.is_zero() {
            return Ok(());
        }
        let Some(last) = self.store.last_failover(service)? else {
            return Ok(());
        };
        let finished = last
            .finished_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let age = SystemTime::now().duration_since(finished).unwrap_or_default();
        if age < window {
            return Err(EngineError::Refused(format!(
                "service `{service}` failed over {} ago (run {}); another failover within {} needs --ack (anti-flap)",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                last.id,
                drover_model::Dur(window)
            )));
        }
        Ok(())
    }

    /// Continues an interrupted run from its journal; `yes` approves the gates ahead.
    pub async fn resume(&self, run_id: &str, cmdb: &Cmdb, yes: bool) -> Result<RunState, EngineError> {
        let stored = self.store.records(run_id)?;
        let head = stored.last().map(|r| crate::evidence::sha256_hex(r.json.as_bytes()));
        let records = stored
            .iter()
            .map(|r| {
                serde_json::from_str::<crate::journal::Record>(&r.json).map_err(|e| {
                    EngineError::Invalid(format!("run {run_id}: journal record {} is unreadable: {e}", r.seq))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state = RunState::from_records(run_id, &records);
        if state.mode.is_none() {
            return Err(EngineError::Invalid(format!("run {run_id} has no journal")));
        }
        if state.finished.is_some() {
            return Ok(state);
        }
        let Some(lock) = take_run_lock(&self.store, run_id)? else {
            return Err(EngineError::Refused(format!(
                "run {run_id} is still running in another process"
            )));
        };
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
        let started = humantime::parse_rfc3339_weak(&state.started_at).unwrap_or_else(|_| SystemTime::now());
        let journal = Journal::new(
            self.store.clone(),
            state.clone(),
            head,
            RunClock::resume(started),
            self.observer.clone(),
            &self.secrets,
        );
        journal.append(Event::Resumed {
            pid: std::process::id(),
            host: hostname(),
        })?;
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
            scope: RunScope::new(),
        });
        // Background work of completed steps (a heartbeat) died with the old process.
        for st in state
            .steps
            .iter()
            .filter(|s| s.phase == Phase::Steps && s.status == Some(StepStatus::Ok))
        {
            let Some(step) = ctx.runbook.steps.iter().find(|x| x.id.value == st.id) else {
                continue;
            };
            let action = self.action(&step.uses)?;
            let cx = step_context(&ctx, &st.id, st.attempts, &step.with, None);
            if let Err(e) = action
                .resume(&cx, st.output.as_ref().unwrap_or(&StepOutput::default()))
                .await
            {
                tracing::warn!(step = %st.id, error = %e, "could not restart the step's background work");
            }
        }
        let state = ctx.journal.state();
        let result = drive(ctx, state, CiGraph::new(cmdb)).await;
        drop(lock);
        result
    }
}

fn reload(ctx: &Ctx) -> Result<RunState, EngineError> {
    Ok(ctx.journal.state())
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

/// Ends the background work of the run's steps.
async fn close_scope(ctx: &Ctx) {
    for name in ctx.scope.close(Duration::from_secs(10)).await {
        tracing::warn!(task = %name, "background task did not stop in time and was aborted");
    }
}

/// Records an interruption and returns the run as it stands.
async fn interrupted(ctx: &Ctx, reason: &str) -> Result<RunState, EngineError> {
    close_scope(ctx).await;
    ctx.journal.append(Event::Interrupted { reason: reason.into() })?;
    ctx.engine.store.sync()?;
    reload(ctx)
}

const INTERRUPT: &str = "stopped by the operator (Ctrl-C) or a shutdown";

/// Drives a run from wherever its journal says it is to its end.
async fn drive(ctx: Arc<Ctx>, state: RunState, ci_graph: CiGraph) -> Result<RunState, EngineError> {
    let rb = ctx.runbook.clone();
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
                ctx.journal.append(Event::Halted { reason: reason.clone() })?;
                return finish(&ctx, Outcome::Failed, None, reason).await;
            }
        }
    }
    if ctx.engine.stop.is_cancelled() {
        return interrupted(&ctx, INTERRUPT).await;
    }

    // 2. Steps.
    if ctx.mode != RunMode::Verify && halted.is_none() {
        let state = reload(&ctx)?;
        // A step that failed for good before a crash halts the run now.
        if let Some(s) = state.steps.iter().find(|s| {
            s.phase == Phase::Steps && matches!(s.status, Some(StepStatus::Failed | StepStatus::OutcomeUnknown))
        }) {
            let reason = format!("step `{}` failed: {}", s.id, s.error.clone().unwrap_or_default());
            ctx.journal.append(Event::Halted { reason: reason.clone() })?;
            halted = Some(reason);
        } else {
            match run_steps(&ctx, &state, &ci_graph).await? {
                DagEnd::Done => {}
                DagEnd::Halted(reason) => halted = Some(reason),
                DagEnd::Interrupted => return interrupted(&ctx, INTERRUPT).await,
            }
        }
    }

    // 3. Verify: the RTO clock stops when every check has passed.
    let mut rto_s = None;
    if halted.is_none() {
        let state = reload(&ctx)?;
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
                    ctx.journal.append(Event::Halted { reason: reason.clone() })?;
                    halted = Some(reason);
                }
                ChecksEnd::Passed => {
                    let state = reload(&ctx)?;
                    let verified = rb
                        .verify
                        .iter()
                        .filter_map(|c| state.check(Phase::Verify, &c.name).and_then(|c| c.at_s));
                    let last_step = state
                        .steps
                        .iter()
                        .filter(|s| s.phase == Phase::Steps)
                        .filter_map(|s| s.finished_t);
                    let end = if rb.verify.is_empty() {
                        last_step.fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))))
                    } else {
                        verified.fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))))
                    };
                    if ctx.mode != RunMode::Verify {
                        let rto = state.declared_before_s + end.unwrap_or(state.last_t);
                        ctx.journal.append(Event::Recovered { rto_s: rto })?;
                        rto_s = Some(rto);
                    }
                }
            }
        }
    }

    // 4. Failure: undo completed steps in reverse order, then the rollback steps.
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
        let state = reload(&ctx)?;
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
    let state = reload(&ctx)?;
    let targets = state.plan.as_ref().map(|p| p.targets);
    let rpo_s = rpo_achieved(&state);
    let (outcome, reason) = if let Some(why) = stuck {
        (
            Outcome::Stuck,
            format!(
                "{why}; operator required{}",
                halted.map(|h| format!(" (after: {h})")).unwrap_or_default()
            ),
        )
    } else if let Some(h) = halted {
        (Outcome::Failed, h)
    } else {
        let mut missed = Vec::new();
        if let (Some(a), Some(t)) = (rto_s, targets.and_then(|t| t.rto_s))
            && a > t
        {
            missed.push(format!("RTO {a:.1}s is over the target {t:.0}s"));
        }
        if let (Some(a), Some(t)) = (rpo_s, targets.and_then(|t| t.rpo_s))
            && a > t
        {
            missed.push(format!("RPO {a:.1}s is over the target {t:.0}s"));
        }
        match (missed.is_empty(), rto_s) {
            (false, _) => (
                Outcome::TargetsMissed,
                format!("recovered, but {}", missed.join(" and ")),
            ),
            (true, Some(a)) => (Outcome::Passed, format!("recovered in {a:.1}s")),
            (true, None) => (Outcome::Passed, "every check passed".into()),
        }
    };
    finish(&ctx, outcome, rto_s, reason).await
}

async fn finish(ctx: &Ctx, outcome: Outcome, rto_s: Option<f64>, reason: String) -> Result<RunState, EngineError> {
    close_scope(ctx).await;
    let rpo_s = ctx.journal.with_state(rpo_achieved);
    let rec = ctx.journal.append(Event::RunFinished {
        outcome,
        rto_s,
        rpo_s,
        reason,
    })?;
    // Seal the chain: sign the hash of the last record.
    if let (Some(signer), Some((seq, head))) = (&ctx.engine.signer, ctx.journal.head()) {
        let message = crate::evidence::seal_message(ctx.journal.run_id(), seq, &head);
        ctx.journal.append(Event::Sealed {
            head,
            signature: signer.sign(&message),
            public_key: signer.public_key_hex(),
            fingerprint: signer.fingerprint(),
        })?;
    }
    ctx.engine
        .store
        .finish_run(ctx.journal.run_id(), outcome.as_str(), &rec.at)?;
    // On disk before the outcome is reported.
    ctx.engine.store.sync()?;
    reload(ctx)
}

enum ChecksEnd {
    Passed,
    Failed(String),
    Cancelled,
}

/// Runs checks concurrently, each polled until it passes or its `within` runs out.
async fn run_checks(ctx: &Arc<Ctx>, phase: Phase, checks: &[&Check]) -> Result<ChecksEnd, EngineError> {
    let mut set = JoinSet::new();
    for c in checks {
        let ctx = ctx.clone();
        let c = (*c).clone();
        set.spawn(async move { run_check(&ctx, phase, &c).await.map(|r| (c.name.value.clone(), r)) });
    }
    let mut failures = Vec::new();
    let mut cancelled = false;
    while let Some(joined) = set.join_next().await {
        let (name, res) = joined.map_err(|e| EngineError::Invalid(format!("a check crashed: {e}")))??;
        match res {
            Ok(()) => {}
            Err(ActionError::Cancelled) => cancelled = true,
            Err(e) => failures.push(format!("`{name}`: {e}")),
        }
    }
    Ok(if !failures.is_empty() {
        ChecksEnd::Failed(failures.join("; "))
    } else if cancelled {
        ChecksEnd::Cancelled
    } else {
        ChecksEnd::Passed
    })
}

fn step_context(
    ctx: &Ctx,
    id: &str,
    attempt: u32,
    params: &drover_model::Located<drover_model::Node>,
    timeout: Option<Duration>,
) -> StepContext {
    let now = std::time::Instant::now();
    StepContext {
        run_id: ctx.journal.run_id().to_owned(),
        step_id: id.to_owned(),
        attempt,
        mode: ctx.mode,
        params: params.clone(),
        config: ctx.engine.config.clone(),
        cancel: ctx.engine.abort.child_token(),
        deadline: now + timeout.unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600)),
        approved: ctx.options.yes,
        approver: ctx.engine.approver.clone(),
        facts: Arc::new(Facts(ctx.journal.clone(), ctx.runbook.clone())),
        scope: ctx.scope.clone(),
        assume_lost: ctx.runbook.assume_lost,
        force_lag: ctx.options.force_lag,
        checkpoint: ctx.journal.with_state(|st| {
            st.steps
                .iter()
                .find(|s| s.id == id && matches!(s.phase, Phase::Steps | Phase::Rollback))
                .and_then(|s| s.checkpoint.clone())
        }),
        checkpoints: Arc::new(JournalCheckpoints {
            journal: ctx.journal.clone(),
            step: id.to_owned(),
            attempt,
        }),
    }
}

/// Journals a step's checkpoint.
struct JournalCheckpoints {
    journal: Journal,
    step: String,
    attempt: u32,
}

#[async_trait::async_trait]
impl drover_plugin_api::CheckpointSink for JournalCheckpoints {
    async fn save(&self, data: serde_json::Value) -> Result<(), ActionError> {
        self.journal
            .append(Event::Checkpoint {
                phase: Phase::Steps,
                step: self.step.clone(),
                attempt: self.attempt,
                data,
            })
            .map(drop)
            .map_err(|e| ActionError::Permanent(format!("cannot journal the checkpoint: {e}")))
    }
}

/// The wait before retry number `tries`: `engine.retry_backoff`, doubling, at most 30 s.
fn backoff(ctx: &Ctx, tries: u32) -> Duration {
    ctx.engine
        .retry_backoff
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(Duration::from_secs(30))
}

/// One attempt of `action.execute` under the engine's timeout.
async fn attempt(
    action: &dyn Action,
    cx: &StepContext,
    timeout: Option<Duration>,
    class: ActionClass,
) -> Result<StepOutput, ActionError> {
    match timeout {
        None => action.execute(cx).await,
        Some(t) => match tokio::time::timeout(t, action.execute(cx)).await {
            Ok(r) => r,
            Err(_) => {
                cx.cancel.cancel();
                let msg = format!("timed out after {}", drover_model::Dur(t));
                Err(if class == ActionClass::Check {
                    ActionError::Retryable(msg)
                } else {
                    ActionError::OutcomeUnknown(msg)
                })
            }
        },
    }
}

async fn run_check(ctx: &Ctx, phase: Phase, c: &Check) -> Result<Result<(), ActionError>, EngineError> {
    let action = ctx.engine.action(&c.uses)?;
    let timeout = Some(c.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0));
    let interval = c.interval.map_or(Duration::from_secs(1), |d| d.0);
    let started = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let cx = step_context(ctx, &c.name, n, &c.with, timeout);
        match attempt(action.as_ref(), &cx, timeout, ActionClass::Check).await {
            Ok(out) => {
                ctx.journal.append(Event::CheckPassed {
                    phase,
                    name: c.name.value.clone(),
                    attempts: n,
                    summary: out.summary,
                    at_s: ctx.journal.clock().secs(),
                    data: out.data,
                })?;
                return Ok(Ok(()));
            }
            Err(ActionError::Cancelled) => return Ok(Err(ActionError::Cancelled)),
            Err(e) => {
                let polling = !matches!(e, ActionError::Permanent(_))
                    && c.within.is_some_and(|w| started.elapsed() + interval < w.0);
                if polling {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => continue,
                        () = ctx.engine.abort.cancelled() => return Ok(Err(ActionError::Cancelled)),
                        () = ctx.engine.stop.cancelled() => return Ok(Err(ActionError::Cancelled)),
                    }
                }
                let error = match c.within {
                    Some(w) => format!("{e} (still failing after {} attempts within {w})", n),
                    None => e.to_string(),
                };
                ctx.journal.append(Event::CheckFailed {
                    phase,
                    name: c.name.value.clone(),
                    attempts: n,
                    error: error.clone(),
                })?;
                return Ok(Err(e));
            }
        }
    }
}

/// Runs one step (or rollback step) to its end: attempts, timeouts, retries, polling.
async fn run_step(ctx: &Ctx, phase: Phase, step: &Step, prior_attempts: u32) -> Result<StepEnd, EngineError> {
    let action = ctx.engine.action(&step.uses)?;
    let class = action.class();
    let timeout = match (step.timeout, class) {
        (Some(t), _) => Some(t.0),
        (None, ActionClass::Gate) => None,
        (None, _) => Some(DEFAULT_TIMEOUT),
    };
    let retries = step.retries.unwrap_or(0);
    let interval = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let mut n = prior_attempts;
    let mut tries = 0u32;
    loop {
        n += 1;
        tries += 1;
        ctx.journal.append(Event::StepStarted {
            phase,
            step: step.id.value.clone(),
            attempt: n,
        })?;
        let cx = step_context(ctx, &step.id, n, &step.with, timeout);
        let res = attempt(action.as_ref(), &cx, timeout, class).await;
        let e = match res {
            Ok(out) => {
                ctx.journal.append(Event::StepFinished {
                    phase,
                    step: step.id.value.clone(),
                    status: StepStatus::Ok,
                    attempts: n,
                    output: Some(out),
                    error: None,
                })?;
                return Ok(StepEnd::Ok);
            }
            Err(e) => e,
        };
        let polling = class == ActionClass::Check && step.within.is_some_and(|w| started.elapsed() + interval < w.0);
        let again = match &e {
            ActionError::Cancelled | ActionError::Permanent(_) => None,
            _ if polling => Some(interval),
            _ if tries <= retries => Some(backoff(ctx, tries)),
            _ => None,
        };
        ctx.journal.append(Event::StepAttemptFailed {
            phase,
            step: step.id.value.clone(),
            attempt: n,
            error: e.clone(),
            retry_in_s: again.map(|d| d.as_secs_f64()),
        })?;
        if matches!(e, ActionError::Cancelled) {
            return Ok(StepEnd::Cancelled);
        }
        let mut e = e;
        if let Some(delay) = again {
            tokio::select! {
                () = tokio::time::sleep(delay) => continue,
                () = ctx.engine.abort.cancelled() => return Ok(StepEnd::Cancelled),
                () = ctx.halt.cancelled(), if phase == Phase::Steps => {
                    e = ActionError::Permanent(format!("{e}; not retried: the run is halting"));
                }
            }
        }
        let status = if matches!(e, ActionError::OutcomeUnknown(_)) {
            StepStatus::OutcomeUnknown
        } else {
            StepStatus::Failed
        };
        let msg = e.to_string();
        ctx.journal.append(Event::StepFinished {
            phase,
            step: step.id.value.clone(),
            status,
            attempts: n,
            output: None,
            error: Some(msg.clone()),
        })?;
        return Ok(StepEnd::Failed(msg));
    }
}

enum DagEnd {
    Done,
    Halted(String),
    Interrupted,
}

/// Runs the steps in dependency order, as many at once as the DAG and `max_parallel` allow.
async fn run_steps(ctx: &Arc<Ctx>, state: &RunState, ci_graph: &CiGraph) -> Result<DagEnd, EngineError> {
    let rb = &ctx.runbook;
    let g = StepGraph::new(&rb.steps, Some(ci_graph));
    let max_parallel = ctx.options.max_parallel.max(1);
    let mut indegree: Vec<usize> = g
        .graph
        .node_indices()
        .map(|n| g.graph.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: VecDeque<_> = g.graph.node_indices().filter(|n| indegree[n.index()] == 0).collect();
    let mut running: JoinSet<Result<(usize, StepEnd), EngineError>> = JoinSet::new();
    let mut halted: Option<String> = None;
    let mut cancelled = false;
    let mut done = 0usize;
    loop {
        while !ready.is_empty() && halted.is_none() && !cancelled && !ctx.engine.stop.is_cancelled() {
            let node = ready[0];
            let launch = match g.graph[node] {
                StepNode::Barrier(_) => None,
                StepNode::Step(i) if state.step_ok(Phase::Steps, &rb.steps[i].id) => None,
                StepNode::Step(i) => Some(i),
            };
            match launch {
                None => {
                    ready.pop_front();
                    if matches!(g.graph[node], StepNode::Step(_)) {
                        done += 1;
                    }
                    for m in g.graph.neighbors_directed(node, Direction::Outgoing) {
                        indegree[m.index()] -= 1;
                        if indegree[m.index()] == 0 {
                            ready.push_back(m);
                        }
                    }
                }
                Some(_) if running.len() >= max_parallel => break,
                Some(i) => {
                    ready.pop_front();
                    let ctx = ctx.clone();
                    let step = rb.steps[i].clone();
                    let prior = state.attempts(Phase::Steps, &step.id);
                    running.spawn(async move { run_step(&ctx, Phase::Steps, &step, prior).await.map(|e| (i, e)) });
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            j = running.join_next() => j,
            () = ctx.engine.stop.cancelled(), if !cancelled => { cancelled = true; continue; }
        };
        let Some(joined) = joined else { break };
        let (i, end) = joined.map_err(|e| EngineError::Invalid(format!("a step crashed: {e}")))??;
        match end {
            StepEnd::Ok => {
                done += 1;
                let node = g.steps[i];
                for m in g.graph.neighbors_directed(node, Direction::Outgoing) {
                    indegree[m.index()] -= 1;
                    if indegree[m.index()] == 0 {
                        ready.push_back(m);
                    }
                }
            }
            StepEnd::Failed(msg) => {
                if halted.is_none() {
                    let reason = format!("step `{}` failed: {msg}", rb.steps[i].id);
                    ctx.journal.append(Event::Halted { reason: reason.clone() })?;
                    ctx.halt.cancel();
                    halted = Some(reason);
                }
            }
            StepEnd::Cancelled => cancelled = true,
        }
    }
    if let Some(h) = halted {
        return Ok(DagEnd::Halted(h));
    }
    if cancelled || ctx.engine.stop.is_cancelled() || done < rb.steps.len() {
        return Ok(DagEnd::Interrupted);
    }
    Ok(DagEnd::Done)
}

enum UndoEnd {
    Done,
    Stuck(String),
    Interrupted,
}

/// Compensates completed steps (and those whose outcome is unknown) in reverse order.
async fn compensate(ctx: &Arc<Ctx>) -> Result<UndoEnd, EngineError> {
    let state = reload(ctx)?;
    let mut done: Vec<_> = state
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Steps && matches!(s.status, Some(StepStatus::Ok | StepStatus::OutcomeUnknown)))
        .collect();
    done.sort_by_key(|s| std::cmp::Reverse(s.finish_seq));
    for s in done {
        let Some(step) = ctx.runbook.steps.iter().find(|x| x.id.value == s.id) else {
            continue;
        };
        let action = ctx.engine.action(&step.uses)?;
        if !action.can_compensate(&step.with) || state.step_ok(Phase::Compensation, &s.id) {
            continue;
        }
        if ctx.engine.stop.is_cancelled() {
            return Ok(UndoEnd::Interrupted);
        }
        let limit = step.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        let timeout = Some(limit);
        let retries = step.retries.unwrap_or(0);
        let mut n = state.attempts(Phase::Compensation, &s.id);
        let mut tries = 0;
        loop {
            n += 1;
            tries += 1;
            ctx.journal.append(Event::StepStarted {
                phase: Phase::Compensation,
                step: s.id.clone(),
                attempt: n,
            })?;
            let cx = step_context(ctx, &s.id, n, &step.with, timeout);
            let fut = action.compensate(&cx, s.output.as_ref());
            let res = match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => {
                    cx.cancel.cancel();
                    Err(ActionError::OutcomeUnknown("compensation timed out".into()))
                }
            };
            match res {
                Ok(()) => {
                    ctx.journal.append(Event::StepFinished {
                        phase: Phase::Compensation,
                        step: s.id.clone(),
                        status: StepStatus::Ok,
                        attempts: n,
                        output: None,
                        error: None,
                    })?;
                    break;
                }
                Err(ActionError::Cancelled) => {
                    ctx.journal.append(Event::StepAttemptFailed {
                        phase: Phase::Compensation,
                        step: s.id.clone(),
                        attempt: n,
                        error: ActionError::Cancelled,
                        retry_in_s: None,
                    })?;
                    return Ok(UndoEnd::Interrupted);
                }
                Err(e) => {
                    let retry = !matches!(e, ActionError::Permanent(_)) && tries <= retries;
                    if retry {
                        let d = backoff(ctx, tries);
                        ctx.journal.append(Event::StepAttemptFailed {
                            phase: Phase::Compensation,
                            step: s.id.clone(),
                            attempt: n,
                            error: e.clone(),
                            retry_in_s: Some(d.as_secs_f64()),
                        })?;
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    let status = if matches!(e, ActionError::OutcomeUnknown(_)) {
                        StepStatus::OutcomeUnknown
                    } else {
                        StepStatus::Failed
                    };
                    ctx.journal.append(Event::StepFinished {
                        phase: Phase::Compensation,
                        step: s.id.clone(),
                        status,
                        attempts: n,
                        output: None,
                        error: Some(e.to_string()),
                    })?;
                    return Ok(UndoEnd::Stuck(format!("undoing step `{}` failed: {e}", s.id)));
                }
            }
        }
    }
    Ok(UndoEnd::Done)
}

/// Runs the rollback steps in order, skipping those already done in this run.
async fn rollback(ctx: &Arc<Ctx>, reason: RollbackReason) -> Result<UndoEnd, EngineError> {
    if ctx.runbook.rollback.is_empty() {
        return Ok(UndoEnd::Done);
    }
    let state = reload(ctx)?;
    if !state.rollbacks.contains(&reason) {
        ctx.journal.append(Event::RollbackStarted { reason })?;
    }
    for step in &ctx.runbook.rollback {
        if state.step_ok(Phase::Rollback, &step.id) {
            continue;
        }
        if ctx.engine.stop.is_cancelled() {
            return Ok(UndoEnd::Interrupted);
        }
        match run_step(ctx, Phase::Rollback, step, state.attempts(Phase::Rollback, &step.id)).await? {
            StepEnd::Ok => {}
            StepEnd::Cancelled => return Ok(UndoEnd::Interrupted),
            StepEnd::Failed(msg) => {
                return Ok(UndoEnd::Stuck(format!("rollback step `{}` failed: {msg}", step.id)));
            }
        }
    }
    Ok(UndoEnd::Done)
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
