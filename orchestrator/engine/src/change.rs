//! The ITIL change record of a run: number, type, state, risk and impact from the tiers of
//! the CIs touched, plans (implementation, backout, test), approvals, and the close code.
//! [`ChangeRecord::servicenow`] gives it with the field names of ServiceNow's
//! `change_request` table.

use serde::Serialize;
use serde_json::{Value, json};

use crate::journal::{ChangeType, Outcome, Phase, StepStatus};
use crate::state::RunState;

/// Who released a gate of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRecord {
    pub step: String,
    pub by: String,
    pub via: String,
    pub at: Option<String>,
}

/// A run's change record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeRecord {
    pub number: String,
    #[serde(rename = "type")]
    pub kind: ChangeType,
    /// implement (running or interrupted), review (stuck: operator required), closed.
    pub state: &'static str,
    /// high, moderate or low: from the most demanding RTO among the CIs touched.
    pub risk: &'static str,
    /// 1 (high), 2 (medium) or 3 (low).
    pub impact: u8,
    pub short_description: String,
    pub description: String,
    pub business_service: String,
    pub cis: Vec<String>,
    pub requested_by: String,
    pub approvals: Vec<ApprovalRecord>,
    pub planned_start: String,
    pub planned_end: Option<String>,
    pub actual_start: String,
    pub actual_end: Option<String>,
    pub implementation_plan: String,
    pub backout_plan: String,
    pub test_plan: String,
    pub justification: String,
    pub close_code: Option<&'static str>,
    pub close_notes: Option<String>,
    pub run_id: String,
}

fn add_secs(rfc3339: &str, secs: f64) -> Option<String> {
    let t = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    Some(crate::journal::rfc3339(
        t + std::time::Duration::from_secs_f64(secs.max(0.0)),
    ))
}

/// Durations read as in the continuity report (`0.23s`, not a rounded `0s`).
fn dur(s: f64) -> String {
    crate::view::secs(s)
}

impl ChangeRecord {
    /// The change record of a run, from its journal; `None` before it has started.
    pub fn from_state(st: &RunState) -> Option<ChangeRecord> {
        let header = st.change.as_ref()?;
        let plan = st.plan.as_ref()?;
        let mode = st.mode?;
        // Risk and impact: the most demanding RTO target among the CIs touched.
        let tightest = st
            .cis
            .iter()
            .filter_map(|c| c.rto_s)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
        let (risk, impact) = match tightest {
            Some(r) if r <= 3600.0 => ("high", 1),
            Some(r) if r <= 8.0 * 3600.0 => ("moderate", 2),
            _ => ("low", 3),
        };
        let route = match (&st.from, &st.to) {
            (Some(f), Some(t)) => format!(" from {f} to {t}"),
            _ => String::new(),
        };
        let short_description = match mode {
            drover_model::RunMode::Failover => format!("Failover of {}{route} (runbook {})", st.service, st.runbook),
            drover_model::RunMode::Drill => format!("DR drill of {}{route} (runbook {})", st.service, st.runbook),
            drover_model::RunMode::Verify => {
                format!("Recovery verification of {} (runbook {})", st.service, st.runbook)
            }
        };
        let mut implementation_plan = String::new();
        if !plan.preflight.is_empty() {
            implementation_plan.push_str("Preflight checks (all must pass before anything changes):\n");
            for c in &plan.preflight {
                implementation_plan.push_str(&format!("- {} [{}]\n", c.name, c.uses));
            }
        }
        if mode != drover_model::RunMode::Verify {
            for (i, stage) in plan.stages.iter().enumerate() {
                implementation_plan.push_str(&format!("Stage {}: {}\n", i + 1, stage.join(", ")));
            }
        }
        let mut backout_plan = String::from(
            "On failure no further step starts; completed steps with a compensation are undone in reverse order",
        );
        if plan.rollback.is_empty() {
            backout_plan.push_str(".\n");
        } else {
            backout_plan.push_str(", then the rollback steps run:\n");
            for s in &plan.rollback {
                backout_plan.push_str(&format!("- {} [{}]\n", s.id, s.uses));
            }
            if mode == drover_model::RunMode::Drill {
                backout_plan.push_str("A drill always ends with the rollback steps (its cleanup).\n");
            }
        }
        let mut test_plan = String::new();
        if plan.verify.is_empty() {
            test_plan.push_str("No verify checks: recovery is the end of the last step.\n");
        } else {
            test_plan.push_str("Recovery is declared when every check passes (the RTO clock stops):\n");
            for c in &plan.verify {
                let within = c.within_s.map(|w| format!(" within {}", dur(w))).unwrap_or_default();
                test_plan.push_str(&format!("- {} [{}]{within}\n", c.name, c.uses));
            }
        }
        let targets = match (plan.targets.rto_s, plan.targets.rpo_s) {
            (None, None) => String::new(),
            (rto, rpo) => format!(
                " Targets: RTO {}, RPO {}.",
                rto.map_or("none".into(), dur),
                rpo.map_or("none".into(), dur)
            ),
        };
        let justification = match (&st.options.reason, mode) {
            (Some(r), _) => r.clone(),
            (None, drover_model::RunMode::Failover) => format!("Outage of {}: recover it{route}.", st.service),
            (None, drover_model::RunMode::Drill) => format!(
                "Rehearse the recovery of {} and measure the RTO and RPO achieved against their targets.",
                st.service
            ),
            (None, drover_model::RunMode::Verify) => {
                format!(
                    "Verify that {} can be recovered (backups, replication) without changing anything.",
                    st.service
                )
            }
        };
        let approvals = st
            .steps
            .iter()
            .filter(|s| s.status == Some(StepStatus::Ok))
            .filter_map(|s| {
                let d = &s.output.as_ref()?.data;
                Some(ApprovalRecord {
                    step: s.id.clone(),
                    by: d.get("approved_by")?.as_str()?.to_owned(),
                    via: d.get("via")?.as_str()?.to_owned(),
                    at: s.finished_at.clone(),
                })
            })
            .collect();
        let expected = plan.critical_path_estimate_s.or(plan.targets.rto_s);
        let (state, close_code) = match st.finished.as_ref().map(|f| f.outcome) {
            None => ("implement", None),
            Some(Outcome::Passed) => ("closed", Some("Successful")),
            Some(Outcome::TargetsMissed) => ("closed", Some("Successful with issues")),
            Some(Outcome::Failed) => ("closed", Some("Unsuccessful")),
            Some(Outcome::Stuck) => ("review", Some("Unsuccessful")),
            // Stopped before any change (a failed preflight): nothing was implemented.
            Some(Outcome::Refused) => ("canceled", Some("Unsuccessful")),
        };
        let close_notes = st.finished.as_ref().map(|f| {
            let figure = |name: &str, a: Option<f64>, t: Option<f64>| match (a, t) {
                (Some(a), Some(t)) => format!("{name} {} (target {})", dur(a), dur(t)),
                (Some(a), None) => format!("{name} {}", dur(a)),
                (None, _) => format!("{name} not measured"),
            };
            let failed = st
                .steps
                .iter()
                .filter(|s| matches!(s.status, Some(StepStatus::Failed | StepStatus::OutcomeUnknown)))
                .map(|s| {
                    format!(
                        "{} `{}`",
                        if s.phase == Phase::Rollback {
                            "rollback step"
                        } else {
                            "step"
                        },
                        s.id
                    )
                })
                .collect::<Vec<_>>();
            let mut notes = format!(
                "Outcome: {}. {}. {}; {}.",
                f.outcome.as_str(),
                f.reason,
                figure("RTO", f.rto_s, plan.targets.rto_s),
                figure("RPO", f.rpo_s, plan.targets.rpo_s)
            );
            if !failed.is_empty() {
                notes.push_str(&format!(" Failed: {}.", failed.join(", ")));
            }
            notes
        });
        Some(ChangeRecord {
            number: header.number.clone(),
            kind: header.kind,
            state,
            risk,
            impact,
            description: format!(
                "{}{}{targets} Run {} recorded by drover; its signed journal is the evidence.",
                st.description
                    .as_deref()
                    .map(|d| format!("{} ", d.trim()))
                    .unwrap_or_default(),
                short_description,
                st.id
            ),
            short_description,
            business_service: st.service.clone(),
            cis: plan.cis.clone(),
            requested_by: st.options.requested_by.clone(),
            approvals,
            planned_start: st.started_at.clone(),
            planned_end: expected.and_then(|s| add_secs(&st.started_at, s)),
            actual_start: st.started_at.clone(),
            actual_end: st.finished.as_ref().map(|f| f.at.clone()),
            implementation_plan,
            backout_plan,
            test_plan,
            justification,
            close_code,
            close_notes,
            run_id: st.id.clone(),
        })
    }

    /// Adds the corrective actions the run opened (and those it proved fixed) to the
    /// close notes.
    pub fn add_actions(&mut self, run_id: &str, actions: &[crate::actions::CorrectiveAction]) {
        let Some(notes) = &mut self.close_notes else {
            return;
        };
        let opened: Vec<String> = actions.iter().filter(|a| a.run == run_id).map(|a| a.line()).collect();
        let fixed: Vec<String> = actions
            .iter()
            .filter(|a| a.closed.as_ref().and_then(|c| c.run.as_deref()) == Some(run_id))
            .map(|a| format!("{}: {}", a.id, a.summary))
            .collect();
        if !opened.is_empty() {
            notes.push_str(&format!(" Corrective actions: {}.", opened.join("; ")));
        }
        if !fixed.is_empty() {
            notes.push_str(&format!(" Proved fixed and closed: {}.", fixed.join("; ")));
        }
    }

    /// The record with the field names of ServiceNow's `change_request` table.
    pub fn servicenow(&self) -> Value {
        let impact = match self.impact {
            1 => "1 - High",
            2 => "2 - Medium",
            _ => "3 - Low",
        };
        let state = match self.state {
            "implement" => "Implement",
            "review" => "Review",
            _ => "Closed",
        };
        let risk = match self.risk {
            "high" => "High",
            "moderate" => "Moderate",
            _ => "Low",
        };
        let approval = if self.kind == ChangeType::Standard {
            "approved"
        } else if self.approvals.is_empty() {
            "not requested"
        } else {
            "approved"
        };
        json!({
            "number": self.number,
            "short_description": self.short_description,
            "description": self.description,
            "type": self.kind.as_str(),
            "state": state,
            "risk": risk,
            "impact": impact,
            "business_service": self.business_service,
            "cmdb_ci": self.business_service,
            "requested_by": self.requested_by,
            "start_date": self.planned_start,
            "end_date": self.planned_end,
            "work_start": self.actual_start,
            "work_end": self.actual_end,
            "implementation_plan": self.implementation_plan,
            "backout_plan": self.backout_plan,
            "test_plan": self.test_plan,
            "justification": self.justification,
            "approval": approval,
            "close_code": self.close_code,
            "close_notes": self.close_notes,
            "u_affected_cis": self.cis,
            "u_approvals": self.approvals,
            "u_drover_run": self.run_id,
        })
    }
}
