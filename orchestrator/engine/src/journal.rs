//! The journal: the append-only list of what happened in a run, written before and after
//! every side effect. It is the source of truth: the live view, `runs show`, resume and
//! the reports are all computed from it ([`crate::state::RunState`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use drover_model::RunMode;
use drover_plugin_api::{ActionError, StepOutput};
use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::redact::Redactor;
use crate::state::RunState;
use crate::store::{Store, StoreError};

/// Which part of a run a step or check belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Preflight,
    Steps,
    Verify,
    Compensation,
    Rollback,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ok,
    Failed,
    /// A change that timed out or lost contact: it may or may not have happened.
    OutcomeUnknown,
}

/// Why the rollback steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackReason {
    /// A step or verify check failed.
    Failure,
    /// The end of a drill.
    DrillCleanup,
}

/// A run's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    TargetsMissed,
    Failed,
    Stuck,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::TargetsMissed => "targets_missed",
            Outcome::Failed => "failed",
            Outcome::Stuck => "stuck",
        }
    }
}

/// Options the run was started with, recorded so that a resume behaves the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    pub yes: bool,
    pub force_lag: bool,
    pub ack: bool,
    pub max_parallel: usize,
    pub requested_by: String,
    /// Started by a schedule of the daemon (a `standard` change).
    #[serde(default)]
    pub scheduled: bool,
    /// Why the run was started (the API requires one).
    #[serde(default)]
    pub reason: Option<String>,
}

/// ITIL change types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    /// A scheduled drill or verification: pre-approved, routine.
    Standard,
    /// A manual drill or verification.
    Normal,
    /// A failover.
    Emergency,
}

impl ChangeType {
    pub fn of(mode: RunMode, scheduled: bool) -> ChangeType {
        match (mode, scheduled) {
            (RunMode::Failover, _) => ChangeType::Emergency,
            (_, true) => ChangeType::Standard,
            (_, false) => ChangeType::Normal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Standard => "standard",
            ChangeType::Normal => "normal",
            ChangeType::Emergency => "emergency",
        }
    }
}

/// The change record's number and type, fixed when the run is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeHeader {
    pub number: String,
    #[serde(rename = "type")]
    pub kind: ChangeType,
}

/// A CI the run touches, as the CMDB described it when the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CiInfo {
    pub id: String,
    pub kind: String,
    pub tier: Option<String>,
    pub owner: Option<String>,
    pub rto_s: Option<f64>,
    pub rpo_s: Option<f64>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
// `run_started` is large and written once per run; boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    RunStarted {
        runbook: String,
        service: String,
        mode: RunMode,
        /// When the outage was declared (RTO counts from here), RFC 3339.
        declared_at: Option<String>,
        /// Seconds between `declared_at` and the run's start.
        declared_before_s: f64,
        options: RunOptions,
        plan: Box<Plan>,
        /// The runbook file as it was when the run started; resume uses this copy.
        runbook_source: String,
        runbook_path: String,
        host: String,
        pid: u32,
        change: Option<ChangeHeader>,
        /// The CIs touched, with their tiers and targets at the start.
        #[serde(default)]
        cis: Vec<CiInfo>,
        /// Sites recovered from and to.
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        description: Option<String>,
    },
    /// A later process took the run over (`drover resume`).
    Resumed {
        pid: u32,
        /// The machine that took the run over.
        host: String,
    },
    CheckPassed {
        phase: Phase,
        name: String,
        attempts: u32,
        summary: String,
        /// Run-clock seconds of the first pass.
        at_s: f64,
        data: serde_json::Value,
    },
    CheckFailed {
        phase: Phase,
        name: String,
        attempts: u32,
        error: String,
    },
    StepStarted {
        phase: Phase,
        step: String,
        attempt: u32,
    },
    /// The prior state a change journaled before acting, for its compensation.
    Checkpoint {
        phase: Phase,
        step: String,
        attempt: u32,
        data: serde_json::Value,
    },
    StepAttemptFailed {
        phase: Phase,
        step: String,
        attempt: u32,
        error: ActionError,
        /// Seconds until the next attempt; `None` when there is none.
        retry_in_s: Option<f64>,
    },
    StepFinished {
        phase: Phase,
        step: String,
        status: StepStatus,
        attempts: u32,
        output: Option<StepOutput>,
        error: Option<String>,
    },
    /// The first permanent failure: no further steps start.
    Halted {
        reason: String,
    },
    /// Every verify check passed: the RTO clock stops here.
    Recovered {
        rto_s: f64,
    },
    RollbackStarted {
        reason: RollbackReason,
    },
    /// Ctrl-C or shutdown: the run stopped at a journaled point and can be resumed.
    Interrupted {
        reason: String,
    },
    RunFinished {
        outcome: Outcome,
        rto_s: Option<f64>,
        rpo_s: Option<f64>,
        reason: String,
    },
    /// The last record: an ed25519 signature over the hash of the record before it.
    Sealed {
        head: String,
        signature: String,
        public_key: String,
        fingerprint: String,
    },
}

impl Event {
    /// Short name of the event kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::Resumed { .. } => "resumed",
            Event::CheckPassed { .. } => "check_passed",
            Event::CheckFailed { .. } => "check_failed",
            Event::StepStarted { .. } => "step_started",
            Event::Checkpoint { .. } => "checkpoint",
            Event::StepAttemptFailed { .. } => "step_attempt_failed",
            Event::StepFinished { .. } => "step_finished",
            Event::Halted { .. } => "halted",
            Event::Recovered { .. } => "recovered",
            Event::RollbackStarted { .. } => "rollback_started",
            Event::Interrupted { .. } => "interrupted",
            Event::RunFinished { .. } => "run_finished",
            Event::Sealed { .. } => "sealed",
        }
    }
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Wall clock, RFC 3339 UTC, for display.
    pub at: String,
    /// Run clock: seconds since the run started (monotonic within a process).
    pub t: f64,
    /// SHA-256 (hex) of the previous record's stored text; `None` for the first.
    pub prev: Option<String>,
    #[serde(flatten)]
    pub event: Event,
}

/// Sees records as they are appended (live progress).
pub trait Observer: Send + Sync {
    fn record(&self, rec: &Record);
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn record(&self, _: &Record) {}
}

/// The run clock: monotonic within a process, continued across a resume by the wall
/// clock (the only clock two processes share).
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    origin: Instant,
    /// Run-clock seconds at `origin`.
    offset: Duration,
}

impl RunClock {
    /// A clock starting now at zero.
    pub fn start() -> Self {
        RunClock {
            origin: Instant::now(),
            offset: Duration::ZERO,
        }
    }

    /// A clock for a resumed run that started at `started` (wall clock).
    pub fn resume(started: SystemTime) -> Self {
        RunClock {
            origin: Instant::now(),
            offset: SystemTime::now().duration_since(started).unwrap_or_default(),
        }
    }

    pub fn now(&self) -> Duration {
        self.offset + self.origin.elapsed()
    }

    pub fn secs(&self) -> f64 {
        self.now().as_secs_f64()
    }
}

/// Appends records to one run's journal, keeps the run's state up to date with them,
/// and tells the observer.
#[derive(Clone)]
pub struct Journal {
    store: Store,
    run_id: Arc<str>,
    /// The run's state after the last record (its `last_seq` gives the next sequence),
    /// and the hash of that record.
    state: Arc<Mutex<(RunState, Option<String>)>>,
    /// Replaces secret values in records before anything is stored.
    redact: Arc<Redactor>,
    clock: RunClock,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Journal {
    /// A journal continuing after the records `state` was built from; `head` is the
    /// hash of the last of them. `secrets` are redacted from every record.
    pub fn new(
        store: Store,
        state: RunState,
        head: Option<String>,
        clock: RunClock,
        observer: Arc<dyn Observer>,
        secrets: &[String],
    ) -> Self {
        let redact = Redactor::new(secrets);
        Journal {
            store,
            run_id: state.id.as_str().into(),
            state: Arc::new(Mutex::new((state, head))),
            redact: Arc::new(redact),
            clock,
            observer,
        }
    }

    /// The run's state as of the last record.
    pub fn state(&self) -> RunState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Reads the run's state without copying it.
    pub fn with_state<T>(&self, f: impl FnOnce(&RunState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()).0)
    }

    /// The hash of the last record and its sequence number.
    pub fn head(&self) -> Option<(u64, String)> {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Some((g.0.last_seq?, g.1.clone()?))
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn clock(&self) -> RunClock {
        self.clock
    }

    /// Appends `event`; when this returns, the record survives a crash of drover.
    pub fn append(&self, event: Event) -> Result<Record, StoreError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (state, head) = &mut *guard;
        let rec = Record {
            seq: state.last_seq.map_or(0, |s| s + 1),
            at: rfc3339(SystemTime::now()),
            t: self.clock.secs(),
            prev: head.clone(),
            event,
        };
        let (rec, json) = self.redact.record(rec).map_err(|e| StoreError::Other(e.to_string()))?;
        self.store.append(&self.run_id, rec.seq, &json)?;
        *head = Some(crate::evidence::sha256_hex(json.as_bytes()));
        state.apply(&rec);
        drop(guard);
        self.observer.record(&rec);
        Ok(rec)
    }
}

/// Reads a run's records back.
pub fn load_records(store: &Store, run_id: &str) -> Result<Vec<Record>, StoreError> {
    store
        .records(run_id)?
        .into_iter()
        .map(|r| {
            serde_json::from_str::<Record>(&r.json)
                .map_err(|e| StoreError::Other(format!("run {run_id}: journal record {} is unreadable: {e}", r.seq)))
        })
        .collect()
}
