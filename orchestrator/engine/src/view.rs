//! The JSON view of a run (`drover runs show --format json`, the API), computed from
//! its state: outcome, RTO/RPO against target, every step's timeline, the critical path
//! actually taken and when each CI was recovered.

use std::collections::HashMap;

use serde::Serialize;

use crate::journal::{Phase, StepStatus};
use crate::state::RunState;

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub target_s: Option<f64>,
    pub achieved_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub id: String,
    pub phase: Phase,
    pub ci: Option<String>,
    pub uses: Option<String>,
    /// pending, running, ok, failed, outcome_unknown, skipped, interrupted.
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Run-clock seconds.
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    pub duration_s: Option<f64>,
    pub attempts: u32,
    pub error: Option<String>,
    pub summary: Option<String>,
    /// The plan's expected duration.
    pub estimate_s: Option<f64>,
    /// An RPO the step measured (`data.measurements.rpo_s`).
    pub rpo_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckView {
    pub phase: Phase,
    pub name: String,
    pub uses: Option<String>,
    pub passed: Option<bool>,
    pub attempts: u32,
    pub at_s: Option<f64>,
    pub summary: Option<String>,
    pub error: Option<String>,
}

/// The preflight phase as a whole: from the run's start to its last check result.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSpan {
    /// Run-clock seconds.
    pub start_s: f64,
    pub end_s: f64,
    pub duration_s: f64,
    /// Every check of the phase passed.
    pub passed: bool,
    /// How many checks the phase has.
    pub checks: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CiView {
    pub id: String,
    pub tier: Option<String>,
    pub rto_target_s: Option<f64>,
    pub rpo_target_s: Option<f64>,
    /// Run-clock seconds when its last step completed (its steps, when it has some).
    pub recovered_s: Option<f64>,
}

/// A run as `--format json` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub id: String,
    pub runbook: String,
    pub service: String,
    pub mode: Option<&'static str>,
    /// running, interrupted or finished.
    pub state: &'static str,
    pub outcome: Option<&'static str>,
    pub reason: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub declared_at: Option<String>,
    pub rto: Figure,
    pub rpo: Figure,
    pub steps: Vec<StepView>,
    pub checks: Vec<CheckView>,
    /// When the preflight checks ran (`null` for a runbook without any, or before the
    /// first result).
    pub preflight: Option<PhaseSpan>,
    pub critical_path: Vec<String>,
    pub cis: Vec<CiView>,
    pub resumes: u32,
    /// Which node of a cluster ran which part of the run (empty outside high
    /// availability).
    pub writers: Vec<crate::state::WriterSpan>,
    /// The ITIL change record.
    pub change: Option<crate::change::ChangeRecord>,
    /// The fingerprint of the key that sealed the run's journal.
    pub sealed_by: Option<String>,
    /// An operator took the (stuck) run over: who, why, when (`drover ack`).
    pub acknowledged: Option<Acknowledgement>,
    /// The latest upload of the run's evidence to the archive (`evidence.archive`).
    pub archive: Option<crate::state::ArchiveState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Acknowledgement {
    pub by: String,
    pub reason: String,
    pub at: String,
}

/// A duration for people, the same everywhere (reports, change records, actions):
/// `0.23s`, `12.3s`, `4m 5s`.
pub fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2}s")
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        drover_model::Dur(std::time::Duration::from_secs(s.round() as u64)).to_string()
    }
}

fn status_name(s: Option<StepStatus>) -> &'static str {
    match s {
        Some(StepStatus::Ok) => "ok",
        Some(StepStatus::Failed) => "failed",
        Some(StepStatus::OutcomeUnknown) => "outcome_unknown",
        None => "pending",
    }
}

impl RunView {
    /// Builds the view; `live` says whether a process is running the run now.
    pub fn new(state: &RunState, live: bool) -> RunView {
        let run_state = match (&state.finished, live) {
            (Some(_), _) => "finished",
            (None, true) => "running",
            (None, false) => "interrupted",
        };
        let plan = state.plan.as_ref();
        let plan_step = |id: &str| plan.and_then(|p| p.steps.iter().chain(p.rollback.iter()).find(|s| s.id == id));
        let mut steps = Vec::new();
        // Planned steps in plan order (with those never started), then compensations.
        let planned: Vec<(Phase, &str)> = plan
            .map(|p| {
                p.steps
                    .iter()
                    .map(|s| (Phase::Steps, s.id.as_str()))
                    .chain(p.rollback.iter().map(|s| (Phase::Rollback, s.id.as_str())))
                    .collect()
            })
            .unwrap_or_default();
        let extra = state
            .steps
            .iter()
            .filter(|s| !planned.iter().any(|(ph, id)| *ph == s.phase && *id == s.id))
            .map(|s| (s.phase, s.id.as_str()));
        let mut all: Vec<(Phase, &str)> = planned.iter().copied().chain(extra).collect();
        // Steps, then their compensations (as they ran), then the rollback steps.
        let rank = |p: Phase| match p {
            Phase::Preflight | Phase::Steps | Phase::Verify => 0,
            Phase::Compensation => 1,
            Phase::Rollback => 2,
        };
        all.sort_by_key(|(p, _)| rank(*p));
        for (phase, id) in all {
            let ps = plan_step(id);
            let s = state.step(phase, id);
            let status = match s {
                Some(s) if s.status.is_some() => status_name(s.status).to_owned(),
                Some(_) if run_state == "running" => "running".into(),
                Some(_) => "interrupted".into(),
                None if phase == Phase::Rollback && !state.rollbacks.is_empty() && state.finished.is_some() => {
                    "skipped".into()
                }
                None if phase == Phase::Rollback => "pending".into(),
                None if state.halted.is_some()
                    || (state.finished.is_some() && state.mode.map(|m| m.as_str()) == Some("verify")) =>
                {
                    "skipped".into()
                }
                None => "pending".into(),
            };
            if phase == Phase::Rollback && s.is_none() && state.rollbacks.is_empty() && state.finished.is_some() {
                continue; // a rollback that never ran (a passed failover) is not part of the run
            }
            steps.push(StepView {
                id: id.to_owned(),
                phase,
                ci: ps.and_then(|p| p.ci.clone()),
                uses: ps.map(|p| p.uses.clone()),
                status,
                started_at: s.and_then(|s| s.started_at.clone()),
                finished_at: s.and_then(|s| s.finished_at.clone()),
                start_s: s.and_then(|s| s.started_t),
                end_s: s.and_then(|s| s.finished_t),
                duration_s: s.and_then(|s| Some(s.finished_t? - s.started_t?)),
                attempts: s.map_or(0, |s| s.attempts),
                error: s.and_then(|s| s.error.clone().or_else(|| s.attempt_errors.last().cloned())),
                summary: s.and_then(|s| s.output.as_ref().map(|o| o.summary.clone())),
                estimate_s: ps.and_then(|p| p.estimate_s),
                rpo_s: s.and_then(|s| s.output.as_ref()?.data.get("measurements")?.get("rpo_s")?.as_f64()),
            });
        }
        let checks: Vec<CheckView> = plan
            .map(|p| {
                p.preflight
                    .iter()
                    .map(|c| (Phase::Preflight, c))
                    .chain(p.verify.iter().map(|c| (Phase::Verify, c)))
                    .map(|(phase, c)| {
                        let st = state.check(phase, &c.name);
                        CheckView {
                            phase,
                            name: c.name.clone(),
                            uses: Some(c.uses.clone()),
                            passed: st.map(|s| s.passed),
                            attempts: st.map_or(0, |s| s.attempts),
                            at_s: st.and_then(|s| s.at_s),
                            summary: st.and_then(|s| s.summary.clone()),
                            error: st.and_then(|s| s.error.clone()),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let preflight = state.preflight_span.map(|(start_s, end_s)| {
            let of_phase: Vec<&CheckView> = checks.iter().filter(|c| c.phase == Phase::Preflight).collect();
            PhaseSpan {
                start_s,
                end_s,
                duration_s: end_s - start_s,
                passed: of_phase.iter().all(|c| c.passed == Some(true)),
                checks: of_phase.len(),
            }
        });
        let targets = plan.map(|p| p.targets);
        let rto_achieved = state.finished.as_ref().and_then(|f| f.rto_s).or(state.recovered_s);
        RunView {
            id: state.id.clone(),
            runbook: state.runbook.clone(),
            service: state.service.clone(),
            mode: state.mode.map(|m| m.as_str()),
            state: run_state,
            outcome: state.finished.as_ref().map(|f| f.outcome.as_str()),
            reason: state
                .finished
                .as_ref()
                .map(|f| f.reason.clone())
                .or_else(|| state.interrupted.clone()),
            started_at: state.started_at.clone(),
            finished_at: state.finished.as_ref().map(|f| f.at.clone()),
            declared_at: state.declared_at.clone(),
            rto: Figure {
                target_s: targets.and_then(|t| t.rto_s),
                achieved_s: rto_achieved,
            },
            rpo: Figure {
                target_s: targets.and_then(|t| t.rpo_s),
                achieved_s: state.finished.as_ref().and_then(|f| f.rpo_s),
            },
            critical_path: critical_path(state),
            cis: ci_times(state),
            resumes: state.resumes,
            writers: state.writers.clone(),
            checks,
            preflight,
            steps,
            change: crate::change::ChangeRecord::from_state(state),
            sealed_by: state.sealed_by.clone(),
            acknowledged: state
                .acknowledged
                .clone()
                .map(|(by, reason, at)| Acknowledgement { by, reason, at }),
            archive: state.archive.clone(),
        }
    }
}

/// The chain of steps that determined when the last step ended: from the last step to
/// finish, back through the predecessor (explicit or CMDB-implied) that finished last.
pub fn critical_path(state: &RunState) -> Vec<String> {
    let Some(plan) = &state.plan else {
        return Vec::new();
    };
    let end = |id: &str| state.step(Phase::Steps, id).and_then(|s| s.finished_t);
    let preds: HashMap<&str, Vec<&str>> = plan
        .steps
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                s.needs.iter().chain(&s.after).map(String::as_str).collect(),
            )
        })
        .collect();
    let mut cur = plan
        .steps
        .iter()
        .filter_map(|s| end(&s.id).map(|t| (t, s.id.as_str())))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, id)| id);
    let mut path = Vec::new();
    while let Some(id) = cur {
        path.push(id.to_owned());
        cur = preds
            .get(id)
            .and_then(|ps| {
                ps.iter()
                    .filter_map(|p| end(p).map(|t| (t, *p)))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
            })
            .map(|(_, p)| p);
    }
    path.reverse();
    path
}

/// The CIs the run touches, with their targets and when their own steps completed.
pub fn ci_times(state: &RunState) -> Vec<CiView> {
    let Some(plan) = &state.plan else {
        return Vec::new();
    };
    let mut out: Vec<CiView> = state
        .cis
        .iter()
        .map(|c| CiView {
            id: c.id.clone(),
            tier: c.tier.clone(),
            rto_target_s: c.rto_s,
            rpo_target_s: c.rpo_s,
            recovered_s: None,
        })
        .collect();
    let mut has_steps = std::collections::HashSet::new();
    for s in &plan.steps {
        let Some(ci) = &s.ci else { continue };
        let t = state
            .step(Phase::Steps, &s.id)
            .filter(|x| x.status == Some(StepStatus::Ok))
            .and_then(|x| x.finished_t);
        let first = has_steps.insert(ci.clone());
        match out.iter_mut().find(|c| &c.id == ci) {
            Some(c) => {
                c.recovered_s = match (first, c.recovered_s, t) {
                    (true, _, t) => t,
                    (false, Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                }
            }
            None => out.push(CiView {
                id: ci.clone(),
                tier: None,
                rto_target_s: None,
                rpo_target_s: None,
                recovered_s: t,
            }),
        }
    }
    out
}
