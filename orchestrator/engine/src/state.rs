//! A run's state, rebuilt from its journal by replaying the records in order. The live
//! engine, `runs show`, `resume` and the reports all read runs through this.

use std::collections::HashMap;

use drover_model::RunMode;
use drover_plugin_api::{ActionError, StepOutput};
use serde::Serialize;

use crate::journal::{ChangeHeader, CiInfo, Event, Outcome, Phase, Record, RollbackReason, RunOptions, StepStatus};
use crate::plan::Plan;

/// One step (or compensation) as the journal tells it.
#[derive(Debug, Clone, Serialize)]
pub struct StepState {
    pub phase: Phase,
    pub id: String,
    /// `None` while not finished.
    pub status: Option<StepStatus>,
    pub attempts: u32,
    /// Whether an attempt was started and has not ended (a crash leaves it so).
    pub in_flight: bool,
    pub started_at: Option<String>,
    pub started_t: Option<f64>,
    pub finished_at: Option<String>,
    pub finished_t: Option<f64>,
    pub output: Option<StepOutput>,
    pub error: Option<String>,
    /// Errors of failed attempts, in order.
    pub attempt_errors: Vec<String>,
    /// Journal sequence of the finish, for undoing in reverse order.
    pub finish_seq: Option<u64>,
    /// The first checkpoint the step journaled (the state before it acted).
    pub checkpoint: Option<serde_json::Value>,
    /// The latest progress the step journaled (how far an attempt got).
    pub progress: Option<serde_json::Value>,
    /// Whether the step may have changed something: it completed, or an attempt's
    /// outcome is unknown (timed out, cancelled, panicked, or drover died during it).
    /// Such a step is undone when the run halts, whatever its status says.
    pub may_have_acted: bool,
    /// Journal sequence of the step's latest record.
    pub last_seq: u64,
    /// What the step found when it failed, as data (e.g. corrupt backups).
    pub found: serde_json::Value,
}

/// One preflight or verify check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckState {
    pub phase: Phase,
    pub name: String,
    pub passed: bool,
    pub attempts: u32,
    /// Run-clock seconds of the first pass.
    pub at_s: Option<f64>,
    pub summary: Option<String>,
    pub error: Option<String>,
    pub data: serde_json::Value,
    /// What the check found when it last failed, as data (e.g. corrupt backups).
    pub found: serde_json::Value,
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Finish {
    pub outcome: Outcome,
    pub rto_s: Option<f64>,
    pub rpo_s: Option<f64>,
    pub reason: String,
    pub at: String,
}

/// The latest upload of the run's evidence to the archive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchiveState {
    /// `archived` or `failed`.
    pub status: &'static str,
    pub store: String,
    pub key: String,
    pub version_id: Option<String>,
    pub mode: Option<String>,
    pub retain_until: Option<String>,
    pub bundle_sha256: Option<String>,
    pub error: Option<String>,
    /// The last record of the bundle it uploaded (or tried to).
    pub head_seq: u64,
    pub at: String,
}

/// A run as its journal tells it.
#[derive(Debug, Clone, Default)]
pub struct RunState {
    pub id: String,
    pub runbook: String,
    pub service: String,
    pub mode: Option<RunMode>,
    pub declared_at: Option<String>,
    pub declared_before_s: f64,
    pub options: RunOptions,
    pub plan: Option<Plan>,
    pub runbook_source: String,
    pub runbook_path: String,
    pub change: Option<ChangeHeader>,
    pub cis: Vec<CiInfo>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub description: Option<String>,
    pub started_at: String,
    /// Run-clock seconds of the preflight phase: from the run's start to the last result
    /// of a preflight check (`None` until there is one).
    pub preflight_span: Option<(f64, f64)>,
    pub steps: Vec<StepState>,
    index: HashMap<(Phase, String), usize>,
    pub checks: Vec<CheckState>,
    check_index: HashMap<(Phase, String), usize>,
    pub halted: Option<String>,
    /// The run halted in preflight: nothing changed, nothing is undone.
    pub halted_in_preflight: bool,
    pub recovered_s: Option<f64>,
    pub rollbacks: Vec<RollbackReason>,
    pub interrupted: Option<String>,
    pub resumes: u32,
    pub finished: Option<Finish>,
    /// The fingerprint of the key that sealed the run.
    pub sealed_by: Option<String>,
    /// Whether the last record is a seal.
    pub sealed: bool,
    /// Who took the run over, and why (`drover ack`).
    pub acknowledged: Option<(String, String, String)>,
    /// The latest archive upload (`evidence.archive`), if any was tried.
    pub archive: Option<ArchiveState>,
    /// The last record that is not a seal or an archive upload: what an archived
    /// bundle must reach to be current.
    pub last_content_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Which node, at which leadership epoch, wrote which records (high availability):
    /// one entry per unbroken stretch of records by one writer. Empty outside a cluster.
    pub writers: Vec<WriterSpan>,
    /// Run-clock seconds of the `run_started` record.
    pub run_started_t: f64,
    pub last_t: f64,
    pub last_at: String,
}

/// An unbroken stretch of a run's records written by one node at one epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WriterSpan {
    pub node: String,
    pub epoch: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Run-clock seconds and wall clock of its first and last record.
    pub from_t: f64,
    pub until_t: f64,
    pub from_at: String,
    pub until_at: String,
    /// The steps it started, in order.
    pub steps: Vec<String>,
}

impl RunState {
    /// Replays records (in order).
    pub fn from_records<'a>(id: &str, records: impl IntoIterator<Item = &'a Record>) -> RunState {
        let mut s = RunState {
            id: id.to_owned(),
            ..Default::default()
        };
        for r in records {
            s.apply(r);
        }
        s
    }

    pub fn step(&self, phase: Phase, id: &str) -> Option<&StepState> {
        self.index.get(&(phase, id.to_owned())).map(|&i| &self.steps[i])
    }

    pub fn check(&self, phase: Phase, name: &str) -> Option<&CheckState> {
        self.check_index
            .get(&(phase, name.to_owned()))
            .map(|&i| &self.checks[i])
    }

    fn step_mut(&mut self, phase: Phase, id: &str) -> &mut StepState {
        let key = (phase, id.to_owned());
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.steps.push(StepState {
                    phase,
                    id: id.to_owned(),
                    status: None,
                    attempts: 0,
                    in_flight: false,
                    started_at: None,
                    started_t: None,
                    finished_at: None,
                    finished_t: None,
                    output: None,
                    error: None,
                    attempt_errors: Vec::new(),
                    finish_seq: None,
                    checkpoint: None,
                    progress: None,
                    may_have_acted: false,
                    last_seq: 0,
                    found: serde_json::Value::Null,
                });
                self.index.insert(key, self.steps.len() - 1);
                self.steps.len() - 1
            }
        };
        &mut self.steps[i]
    }

    fn check_mut(&mut self, phase: Phase, name: &str) -> &mut CheckState {
        let key = (phase, name.to_owned());
        let i = match self.check_index.get(&key) {
            Some(&i) => i,
            None => {
                self.checks.push(CheckState {
                    phase,
                    name: name.to_owned(),
                    passed: false,
                    attempts: 0,
                    at_s: None,
                    summary: None,
                    error: None,
                    data: serde_json::Value::Null,
                    found: serde_json::Value::Null,
                });
                self.check_index.insert(key, self.checks.len() - 1);
                self.checks.len() - 1
            }
        };
        &mut self.checks[i]
    }

    /// Applies one record.
    pub fn apply(&mut self, r: &Record) {
        if let Some(w) = &r.writer {
            match self.writers.last_mut() {
                Some(span) if span.node == w.node && span.epoch == w.epoch => {
                    span.last_seq = r.seq;
                    span.until_t = r.t;
                    span.until_at.clone_from(&r.at);
                }
                _ => self.writers.push(WriterSpan {
                    node: w.node.clone(),
                    epoch: w.epoch,
                    first_seq: r.seq,
                    last_seq: r.seq,
                    from_t: r.t,
                    until_t: r.t,
                    from_at: r.at.clone(),
                    until_at: r.at.clone(),
                    steps: Vec::new(),
                }),
            }
            if let Event::StepStarted { step, .. } = &r.event
                && let Some(span) = self.writers.last_mut()
                && !span.steps.contains(step)
            {
                span.steps.push(step.clone());
            }
        }
        self.last_seq = Some(r.seq);
        self.last_t = r.t;
        self.last_at.clone_from(&r.at);
        self.sealed = matches!(r.event, Event::Sealed { .. });
        if !matches!(
            r.event,
            Event::Sealed { .. } | Event::EvidenceArchived { .. } | Event::EvidenceArchiveFailed { .. }
        ) {
            self.last_content_seq = Some(r.seq);
        }
        if let Event::CheckPassed {
            phase: Phase::Preflight,
            ..
        }
        | Event::CheckFailed {
            phase: Phase::Preflight,
            ..
        } = &r.event
        {
            let start = self.run_started_t;
            let end = self.preflight_span.map_or(r.t, |(_, e)| e.max(r.t));
            self.preflight_span = Some((start, end));
        }
        match &r.event {
            Event::RunStarted {
                runbook,
                service,
                mode,
                declared_at,
                declared_before_s,
                options,
                plan,
                runbook_source,
                runbook_path,
                change,
                cis,
                from,
                to,
                description,
                ..
            } => {
                self.change.clone_from(change);
                self.cis.clone_from(cis);
                self.from.clone_from(from);
                self.to.clone_from(to);
                self.description.clone_from(description);
                self.runbook.clone_from(runbook);
                self.service.clone_from(service);
                self.mode = Some(*mode);
                self.declared_at.clone_from(declared_at);
                self.declared_before_s = *declared_before_s;
                self.options = options.clone();
                self.plan = Some((**plan).clone());
                self.runbook_source.clone_from(runbook_source);
                self.runbook_path.clone_from(runbook_path);
                self.started_at.clone_from(&r.at);
                self.run_started_t = r.t;
            }
            Event::Resumed { .. } => {
                self.resumes += 1;
                self.interrupted = None;
                // A stuck run resumed goes on: its earlier finish no longer stands.
                self.finished = None;
                // An attempt in flight when the last process died may have acted.
                for s in &mut self.steps {
                    if s.in_flight {
                        s.in_flight = false;
                        s.may_have_acted = true;
                        s.attempt_errors
                            .push("interrupted: drover stopped during this attempt (outcome unknown)".into());
                    }
                }
            }
            Event::CheckPassed {
                phase,
                name,
                attempts,
                summary,
                at_s,
                data,
            } => {
                let c = self.check_mut(*phase, name);
                c.passed = true;
                c.attempts += attempts;
                c.at_s = Some(*at_s);
                c.summary = Some(summary.clone());
                c.error = None;
                c.data = data.clone();
                c.found = serde_json::Value::Null;
            }
            Event::CheckFailed {
                phase,
                name,
                attempts,
                error,
                found,
            } => {
                let c = self.check_mut(*phase, name);
                c.passed = false;
                c.attempts += attempts;
                c.error = Some(error.clone());
                c.found = found.clone();
            }
            Event::CheckAttemptFailed { phase, name, error, .. } => {
                let c = self.check_mut(*phase, name);
                c.error = Some(error.clone());
            }
            Event::StepStarted { phase, step, attempt } => {
                let (at, t) = (r.at.clone(), r.t);
                let seq = r.seq;
                let s = self.step_mut(*phase, step);
                s.attempts = s.attempts.max(*attempt);
                if s.in_flight {
                    // A new attempt while one was in flight: drover died during it.
                    s.may_have_acted = true;
                }
                s.in_flight = true;
                s.last_seq = seq;
                if s.started_at.is_none() {
                    s.started_at = Some(at);
                    s.started_t = Some(t);
                }
            }
            Event::Checkpoint { phase, step, data, .. } => {
                let seq = r.seq;
                let s = self.step_mut(*phase, step);
                s.may_have_acted = true;
                s.last_seq = seq;
                if s.checkpoint.is_none() {
                    s.checkpoint = Some(data.clone());
                }
            }
            Event::Progress { phase, step, data, .. } => {
                let seq = r.seq;
                let s = self.step_mut(*phase, step);
                s.may_have_acted = true;
                s.last_seq = seq;
                s.progress = (!data.is_null()).then(|| data.clone());
            }
            Event::StepAttemptFailed { phase, step, error, .. } => {
                let seq = r.seq;
                let s = self.step_mut(*phase, step);
                s.in_flight = false;
                s.last_seq = seq;
                if matches!(error, ActionError::OutcomeUnknown(_) | ActionError::Cancelled) {
                    s.may_have_acted = true;
                }
                s.attempt_errors.push(error.to_string());
            }
            Event::StepFinished {
                phase,
                step,
                status,
                attempts,
                output,
                error,
                found,
            } => {
                let (at, t, seq) = (r.at.clone(), r.t, r.seq);
                let s = self.step_mut(*phase, step);
                s.status = Some(*status);
                s.attempts = s.attempts.max(*attempts);
                s.in_flight = false;
                s.finished_at = Some(at);
                s.finished_t = Some(t);
                s.output.clone_from(output);
                s.error.clone_from(error);
                s.found = found.clone();
                s.finish_seq = Some(seq);
                s.last_seq = seq;
                if matches!(status, StepStatus::Ok | StepStatus::OutcomeUnknown) {
                    s.may_have_acted = true;
                }
            }
            Event::Halted { reason, preflight } => {
                if self.halted.is_none() {
                    self.halted = Some(reason.clone());
                    self.halted_in_preflight = *preflight;
                }
            }
            Event::Acknowledged { by, reason } => {
                self.acknowledged = Some((by.clone(), reason.clone(), r.at.clone()));
            }
            Event::Recovered { rto_s } => self.recovered_s = Some(*rto_s),
            Event::RollbackStarted { reason } => self.rollbacks.push(*reason),
            Event::Interrupted { reason } => self.interrupted = Some(reason.clone()),
            Event::Sealed { fingerprint, .. } => self.sealed_by = Some(fingerprint.clone()),
            Event::EvidenceArchived {
                store,
                key,
                version_id,
                mode,
                retain_until,
                bundle_sha256,
                head_seq,
                ..
            } => {
                self.archive = Some(ArchiveState {
                    status: "archived",
                    store: store.clone(),
                    key: key.clone(),
                    version_id: version_id.clone(),
                    mode: Some(mode.clone()),
                    retain_until: Some(retain_until.clone()),
                    bundle_sha256: Some(bundle_sha256.clone()),
                    error: None,
                    head_seq: *head_seq,
                    at: r.at.clone(),
                });
            }
            Event::EvidenceArchiveFailed {
                store,
                key,
                error,
                head_seq,
            } => {
                self.archive = Some(ArchiveState {
                    status: "failed",
                    store: store.clone(),
                    key: key.clone(),
                    version_id: None,
                    mode: None,
                    retain_until: None,
                    bundle_sha256: None,
                    error: Some(error.clone()),
                    head_seq: *head_seq,
                    at: r.at.clone(),
                });
            }
            Event::RunFinished {
                outcome,
                rto_s,
                rpo_s,
                reason,
            } => {
                self.finished = Some(Finish {
                    outcome: *outcome,
                    rto_s: *rto_s,
                    rpo_s: *rpo_s,
                    reason: reason.clone(),
                    at: r.at.clone(),
                });
            }
        }
    }

    /// Whether the archive holds a bundle with everything but seals and archive
    /// records: nothing more to upload.
    pub fn archive_current(&self) -> bool {
        self.archive
            .as_ref()
            .is_some_and(|a| a.status == "archived" && Some(a.head_seq) >= self.last_content_seq)
    }

    /// Whether the step finished ok.
    pub fn step_ok(&self, phase: Phase, id: &str) -> bool {
        self.step(phase, id).is_some_and(|s| s.status == Some(StepStatus::Ok))
    }

    /// Attempts made so far (a resumed step goes on counting).
    pub fn attempts(&self, phase: Phase, id: &str) -> u32 {
        self.step(phase, id).map_or(0, |s| s.attempts)
    }

    pub fn check_passed(&self, phase: Phase, name: &str) -> bool {
        self.check(phase, name).is_some_and(|c| c.passed)
    }
}
