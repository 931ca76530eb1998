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
    /// Stopped before any change: a preflight check failed.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::TargetsMissed => "targets_missed",
            Outcome::Failed => "failed",
            Outcome::Stuck => "stuck",
            Outcome::Refused => "refused",
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
        /// What the check found, as data (`ActionError::Found`): e.g. the backups that
        /// are corrupt, one by one.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        found: serde_json::Value,
    },
    /// A polled check is failing: written for its first failure and whenever the error
    /// changes, not for every poll.
    CheckAttemptFailed {
        phase: Phase,
        name: String,
        attempt: u32,
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
    /// How far a step got, journaled while it acts ([`drover_plugin_api::StepContext::save_progress`]):
    /// a later attempt of the step (a re-run after a crash) finds the latest one.
    Progress {
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
        /// What a failed step found, as data (`ActionError::Found`).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        found: serde_json::Value,
    },
    /// The first permanent failure: no further steps start.
    Halted {
        reason: String,
        /// Halted by a failed preflight: nothing was changed, nothing is undone.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        preflight: bool,
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
    /// An operator took a stuck (or abandoned) run over and freed its service.
    Acknowledged {
        by: String,
        reason: String,
    },
    /// The sealed evidence bundle (the records up to `head_seq`) was uploaded to the
    /// archive under Object Lock retention. Written after the run's seal, then sealed again.
    EvidenceArchived {
        store: String,
        bucket: String,
        key: String,
        version_id: Option<String>,
        mode: String,
        retain_until: String,
        /// SHA-256 of the bundle's bytes as uploaded.
        bundle_sha256: String,
        head_seq: u64,
    },
    /// An upload to the archive failed: the run's outcome is unchanged;
    /// `drover evidence archive RUN` retries it.
    EvidenceArchiveFailed {
        store: String,
        key: String,
        error: String,
        head_seq: u64,
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
            Event::CheckAttemptFailed { .. } => "check_attempt_failed",
            Event::StepStarted { .. } => "step_started",
            Event::Checkpoint { .. } => "checkpoint",
            Event::Progress { .. } => "progress",
            Event::StepAttemptFailed { .. } => "step_attempt_failed",
            Event::StepFinished { .. } => "step_finished",
            Event::Halted { .. } => "halted",
            Event::Recovered { .. } => "recovered",
            Event::RollbackStarted { .. } => "rollback_started",
            Event::Interrupted { .. } => "interrupted",
            Event::RunFinished { .. } => "run_finished",
            Event::Acknowledged { .. } => "acknowledged",
            Event::EvidenceArchived { .. } => "evidence_archived",
            Event::EvidenceArchiveFailed { .. } => "evidence_archive_failed",
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
    /// The node and leadership epoch that wrote it (a daemon of a cluster); absent
    /// outside high availability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<crate::store::Writer>,
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

    /// A clock for a resumed run that started at `started` (wall clock) and whose last
    /// record was written at run-clock second `last_t`: it never runs backwards against
    /// that record, even when the wall clock was set back in between.
    pub fn resume(started: SystemTime, last_t: f64) -> Self {
        let wall = SystemTime::now().duration_since(started).unwrap_or_default();
        let last = Duration::try_from_secs_f64(last_t.max(0.0)).unwrap_or_default();
        RunClock {
            origin: Instant::now(),
            offset: wall.max(last),
        }
    }

    pub fn now(&self) -> Duration {
        self.offset + self.origin.elapsed()
    }

    pub fn secs(&self) -> f64 {
        self.now().as_secs_f64()
    }
}

/// A record's stored text, secrets redacted (and the record as it then reads).
pub(crate) fn encode(rec: Record, redact: &Redactor) -> Result<(Record, String), StoreError> {
    redact.record(rec).map_err(|e| StoreError::Other(e.to_string()))
}

/// The run's first record (`seq` 0), before the run exists.
pub(crate) fn first_record(
    event: Event,
    clock: RunClock,
    redact: &Redactor,
    writer: Option<crate::store::Writer>,
) -> Result<(Record, String), StoreError> {
    let rec = Record {
        seq: 0,
        at: rfc3339(SystemTime::now()),
        t: clock.secs(),
        prev: None,
        writer,
        event,
    };
    encode(rec, redact)
}

struct Tip {
    /// The run's state after the last record (its `last_seq` gives the next sequence).
    state: RunState,
    /// The hash of the last record.
    head: Option<String>,
    /// An append failed: the chain on disk ends before the state in memory.
    broken: Option<String>,
}

/// Appends records to one run's journal, keeps the run's state up to date with them,
/// and tells the observer once they are stored.
#[derive(Clone)]
pub struct Journal {
    store: Store,
    run_id: Arc<str>,
    tip: Arc<Mutex<Tip>>,
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

/// Parses an RFC 3339 time as [`rfc3339`] writes it.
pub fn parse_rfc3339(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

/// Builds the next records of a run under its journal's lock (see [`Journal::commit`]).
pub struct Batch<'a> {
    tip: &'a mut Tip,
    clock: RunClock,
    redact: &'a Redactor,
    writer: Option<crate::store::Writer>,
    out: Vec<(Record, String)>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("records", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Batch<'_> {
    /// Adds the next record.
    pub fn push(&mut self, event: Event) -> Result<&Record, StoreError> {
        let rec = Record {
            seq: self.tip.state.last_seq.map_or(0, |s| s + 1),
            at: rfc3339(SystemTime::now()),
            // Never backwards against the record before.
            t: self.clock.secs().max(self.tip.state.last_t),
            prev: self.tip.head.clone(),
            writer: self.writer.clone(),
            event,
        };
        let (rec, json) = encode(rec, self.redact)?;
        self.tip.head = Some(crate::evidence::sha256_hex(json.as_bytes()));
        self.tip.state.apply(&rec);
        self.out.push((rec, json));
        Ok(&self.out.last().expect("just pushed").0)
    }

    /// The state as of the last record added.
    pub fn state(&self) -> &RunState {
        &self.tip.state
    }

    /// The last record's sequence number and hash.
    pub fn head(&self) -> Option<(u64, String)> {
        Some((self.tip.state.last_seq?, self.tip.head.clone()?))
    }
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
        Journal {
            store,
            run_id: state.id.as_str().into(),
            tip: Arc::new(Mutex::new(Tip {
                state,
                head,
                broken: None,
            })),
            redact: Arc::new(Redactor::new(secrets)),
            clock,
            observer,
        }
    }

    fn tip(&self) -> std::sync::MutexGuard<'_, Tip> {
        self.tip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run's state as of the last record.
    pub fn state(&self) -> RunState {
        self.tip().state.clone()
    }

    /// Reads the run's state without copying it.
    pub fn with_state<T>(&self, f: impl FnOnce(&RunState) -> T) -> T {
        f(&self.tip().state)
    }

    /// The hash of the last record and its sequence number.
    pub fn head(&self) -> Option<(u64, String)> {
        let g = self.tip();
        Some((g.state.last_seq?, g.head.clone()?))
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn clock(&self) -> RunClock {
        self.clock
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends `event`; when this returns, the record survives a crash of drover. The
    /// commit happens on the store's writer thread: this never blocks the runtime.
    pub async fn append(&self, event: Event) -> Result<Record, StoreError> {
        let names = crash_names(&event);
        crate::crash::point(&names[0]);
        crate::crash::point(&names[1]);
        let (rec, rx) = {
            let mut tip = self.tip();
            if let Some(why) = &tip.broken {
                return Err(StoreError::Other(format!("run {}: {why}", self.run_id)));
            }
            let mut batch = Batch {
                tip: &mut tip,
                clock: self.clock,
                redact: &self.redact,
                writer: self.store.writer(),
                out: Vec::with_capacity(1),
            };
            batch.push(event)?;
            let (rec, json) = batch.out.pop().expect("one record");
            // Sent under the lock: the writer gets records in sequence order.
            let rx = self.store.append_queued(self.run_id.clone(), rec.seq, json);
            (rec, rx)
        };
        let stored = rx
            .await
            .unwrap_or_else(|_| Err(StoreError::Other("the store's writer thread has stopped".into())));
        if let Err(e) = stored {
            self.tip().broken = Some(format!("record {} was not stored: {e}", rec.seq));
            return Err(e);
        }
        crate::crash::point(&names[2]);
        crate::crash::point(&names[3]);
        self.observer.record(&rec);
        Ok(rec)
    }

    /// Appends `events` in one transaction: all of them survive a crash of drover, or
    /// none. The scheduler journals the end of a step with the starts it releases this
    /// way, one commit per step boundary. The crash points are each event's, the
    /// `before` ones of all of them before the commit, the `after` ones after it.
    pub async fn append_all(&self, events: Vec<Event>) -> Result<Vec<Record>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<[String; 4]> = events.iter().map(crash_names).collect();
        for n in &names {
            crate::crash::point(&n[0]);
            crate::crash::point(&n[1]);
        }
        let (_, records) = self
            .commit(
                |b| {
                    for event in events {
                        b.push(event)?;
                    }
                    Ok(())
                },
                |_, ()| Ok(()),
            )
            .await?;
        for n in &names {
            crate::crash::point(&n[2]);
            crate::crash::point(&n[3]);
        }
        Ok(records)
    }

    /// Appends the records `build` makes and runs `then` (the run row, the service lock)
    /// in one transaction: all of it is stored, or none (and then the journal refuses
    /// further records: the run stops where its stored journal ends).
    pub async fn commit<T: Clone + Send + 'static>(
        &self,
        build: impl FnOnce(&mut Batch<'_>) -> Result<T, StoreError>,
        then: impl FnOnce(&mut dyn crate::store::Sql, &T) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(T, Vec<Record>), StoreError> {
        let (value, records, rx) = {
            let mut tip = self.tip();
            if let Some(why) = &tip.broken {
                return Err(StoreError::Other(format!("run {}: {why}", self.run_id)));
            }
            let mut batch = Batch {
                tip: &mut tip,
                clock: self.clock,
                redact: &self.redact,
                writer: self.store.writer(),
                out: Vec::new(),
            };
            let value = build(&mut batch)?;
            let out = std::mem::take(&mut batch.out);
            let rows: Vec<(u64, String)> = out.iter().map(|(r, j)| (r.seq, j.clone())).collect();
            // Sent under the lock: records of this run appended later queue behind it.
            let built = value.clone();
            let rx = self
                .store
                .commit_queued(self.run_id.clone(), rows, Box::new(move |tx| then(tx, &built)));
            (value, out.into_iter().map(|(r, _)| r).collect::<Vec<_>>(), rx)
        };
        let stored = rx
            .await
            .unwrap_or_else(|_| Err(StoreError::Other("the store's writer thread has stopped".into())));
        if let Err(e) = stored {
            self.tip().broken = Some(format!("records from {} on were not stored: {e}", records[0].seq));
            return Err(e);
        }
        for r in &records {
            self.observer.record(r);
        }
        Ok((value, records))
    }
}

/// The crash points around an append of `event`: before and after, by event kind and by
/// kind and phase (`append.after:step_started:compensation`).
fn crash_names(event: &Event) -> [String; 4] {
    let kind = event.kind();
    let phase = match event {
        Event::StepStarted { phase, .. }
        | Event::StepFinished { phase, .. }
        | Event::StepAttemptFailed { phase, .. }
        | Event::Checkpoint { phase, .. }
        | Event::Progress { phase, .. }
        | Event::CheckPassed { phase, .. }
        | Event::CheckFailed { phase, .. }
        | Event::CheckAttemptFailed { phase, .. } => Some(*phase),
        _ => None,
    };
    let phase = phase
        .map(|p| {
            format!(
                ":{}",
                serde_json::to_value(p)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default();
    [
        format!("append.before:{kind}"),
        format!("append.before:{kind}{phase}"),
        format!("append.after:{kind}"),
        format!("append.after:{kind}{phase}"),
    ]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_clock_never_runs_behind_the_last_record() {
        // The wall clock was set back: by it the run started only 1 s ago, but its last
        // record was written at run-clock second 120.
        let started = SystemTime::now() - Duration::from_secs(1);
        let clock = RunClock::resume(started, 120.0);
        assert!(clock.secs() >= 120.0, "{}", clock.secs());
        // And the wall clock counts when it is ahead (drover was down a while).
        let started = SystemTime::now() - Duration::from_secs(600);
        let clock = RunClock::resume(started, 120.0);
        assert!(clock.secs() >= 600.0, "{}", clock.secs());
    }
}
