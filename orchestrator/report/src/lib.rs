//! Continuity reports and trends: what a run leaves for continuity managers and auditors.
//!
//! [`Report::new`] gathers a run's figures (RTO and RPO against target, per service and
//! per CI), its checks, the timeline of every step, the critical path, the issues found,
//! the change record, the evidence digest and signature, and the sign-off fields. The
//! same report renders as JSON, Markdown, a self-contained HTML page (inline CSS and SVG,
//! no network, prints well) and JUnit XML. [`Trend`] does the same across runs.

mod charts;

use drover_engine::actions::CorrectiveAction;
use drover_engine::coverage::Coverage;
use drover_engine::evidence::Verification;
use drover_engine::journal::Phase;
use drover_engine::view::{CheckView, RunView, StepView};
use minijinja::Environment;
use serde::Serialize;

pub use charts::{coverage_svg, gantt_svg, trend_svg};

/// A figure against its target.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub target_s: Option<f64>,
    pub achieved_s: Option<f64>,
    /// `None` when there is nothing to compare.
    pub met: Option<bool>,
    /// For people: `1m 3s (target 15m)`.
    pub text: String,
}

impl Measure {
    fn new(target: Option<f64>, achieved: Option<f64>) -> Measure {
        let met = match (target, achieved) {
            (Some(t), Some(a)) => Some(a <= t),
            _ => None,
        };
        let text = match (achieved, target) {
            (Some(a), Some(t)) => format!("{} (target {})", secs(a), secs(t)),
            (Some(a), None) => secs(a),
            (None, Some(t)) => format!("not measured (target {})", secs(t)),
            (None, None) => "not measured".into(),
        };
        Measure {
            target_s: target,
            achieved_s: achieved,
            met,
            text,
        }
    }
}

/// A duration for people: `0.42s`, `12.3s`, `4m 5s` (the change record uses the same).
pub use drover_engine::view::secs;

/// Targets against achievements for the service or one CI.
#[derive(Debug, Clone, Serialize)]
pub struct TargetRow {
    /// `service` or `ci`.
    pub scope: &'static str,
    pub id: String,
    pub tier: Option<String>,
    pub rto: Measure,
    pub rpo: Measure,
}

/// Something a reader should look at.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `error`, `warning` or `note`.
    pub severity: &'static str,
    pub what: String,
}

/// The evidence part of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub records: usize,
    /// SHA-256 of the last record: the digest the signature covers.
    pub digest: Option<String>,
    pub signature: Option<String>,
    pub key_fingerprint: Option<String>,
    pub intact: bool,
    pub problem: Option<String>,
}

/// A sign-off line, left blank for a person to fill in.
#[derive(Debug, Clone, Serialize)]
pub struct SignOff {
    pub role: &'static str,
    pub name: Option<String>,
    pub date: Option<String>,
    pub signature: Option<String>,
}

/// One step row of the timeline, with display strings.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineRow {
    pub phase: String,
    pub id: String,
    pub uses: Option<String>,
    pub ci: Option<String>,
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub start_s: Option<f64>,
    pub duration_s: Option<f64>,
    pub duration: String,
    pub attempts: u32,
    pub detail: String,
    pub critical: bool,
}

/// One check row, with display strings.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub phase: String,
    pub name: String,
    pub uses: Option<String>,
    /// passed, failed, not run.
    pub result: &'static str,
    pub attempts: u32,
    pub at: String,
    pub detail: String,
}

/// A continuity report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub run: RunView,
    pub outcome: String,
    pub service: TargetRow,
    pub cis: Vec<TargetRow>,
    pub preflight: Vec<CheckRow>,
    pub verify: Vec<CheckRow>,
    /// Backup verification: restore tests and backup checks, wherever they ran.
    pub backups: Vec<CheckRow>,
    pub timeline: Vec<TimelineRow>,
    pub critical_path: Vec<String>,
    pub issues: Vec<Finding>,
    /// `none`, or how many issues of which severity: what "Issues found" says first.
    pub issues_found: String,
    /// The corrective actions this run opened, and those it proved fixed.
    pub actions: Vec<CorrectiveAction>,
    pub evidence: Evidence,
    pub sign_off: Vec<SignOff>,
    /// The Gantt chart of the timeline (inline SVG).
    #[serde(skip)]
    pub gantt: String,
}

fn phase_name(p: Phase) -> String {
    format!("{p:?}").to_lowercase()
}

fn check_row(c: &CheckView) -> CheckRow {
    CheckRow {
        phase: phase_name(c.phase),
        name: c.name.clone(),
        uses: c.uses.clone(),
        result: match c.passed {
            Some(true) => "passed",
            Some(false) => "failed",
            None => "not run",
        },
        attempts: c.attempts,
        at: c.at_s.map(secs).unwrap_or_default(),
        detail: c.error.clone().or_else(|| c.summary.clone()).unwrap_or_default(),
    }
}

fn is_backup_check(uses: Option<&str>) -> bool {
    matches!(
        uses,
        Some("s3.verify-backups" | "postgres.restore-test" | "s3.replication" | "s3.object-lock")
    )
}

impl Report {
    /// Builds the report of a run from its view and the check of its evidence.
    pub fn new(run: RunView, evidence: &Verification) -> Report {
        let service = TargetRow {
            scope: "service",
            id: run.service.clone(),
            tier: run
                .cis
                .iter()
                .find(|c| c.id == run.service)
                .and_then(|c| c.tier.clone()),
            rto: Measure::new(run.rto.target_s, run.rto.achieved_s),
            rpo: Measure::new(run.rpo.target_s, run.rpo.achieved_s),
        };
        let cis = run
            .cis
            .iter()
            .filter(|c| c.id != run.service)
            .map(|c| {
                let rpo = run
                    .steps
                    .iter()
                    .filter(|s| s.ci.as_deref() == Some(c.id.as_str()))
                    .filter_map(|s| s.rpo_s)
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
                TargetRow {
                    scope: "ci",
                    id: c.id.clone(),
                    tier: c.tier.clone(),
                    rto: Measure::new(c.rto_target_s, c.recovered_s),
                    rpo: Measure::new(c.rpo_target_s, rpo),
                }
            })
            .collect();
        let preflight: Vec<CheckRow> = run
            .checks
            .iter()
            .filter(|c| c.phase == Phase::Preflight)
            .map(check_row)
            .collect();
        let verify: Vec<CheckRow> = run
            .checks
            .iter()
            .filter(|c| c.phase == Phase::Verify)
            .map(check_row)
            .collect();
        let mut backups: Vec<CheckRow> = run
            .checks
            .iter()
            .filter(|c| is_backup_check(c.uses.as_deref()))
            .map(check_row)
            .collect();
        backups.extend(
            run.steps
                .iter()
                .filter(|s| is_backup_check(s.uses.as_deref()))
                .map(|s| CheckRow {
                    phase: phase_name(s.phase),
                    name: s.id.clone(),
                    uses: s.uses.clone(),
                    result: match s.status.as_str() {
                        "ok" => "passed",
                        "failed" | "outcome_unknown" => "failed",
                        _ => "not run",
                    },
                    attempts: s.attempts,
                    at: s.end_s.map(secs).unwrap_or_default(),
                    detail: s.error.clone().or_else(|| s.summary.clone()).unwrap_or_default(),
                }),
        );
        let timeline = run
            .steps
            .iter()
            .map(|s: &StepView| TimelineRow {
                phase: phase_name(s.phase),
                id: s.id.clone(),
                uses: s.uses.clone(),
                ci: s.ci.clone(),
                status: s.status.clone(),
                started_at: s.started_at.clone(),
                finished_at: s.finished_at.clone(),
                start_s: s.start_s,
                duration_s: s.duration_s,
                duration: s.duration_s.map(secs).unwrap_or_default(),
                attempts: s.attempts,
                detail: s.error.clone().or_else(|| s.summary.clone()).unwrap_or_default(),
                critical: s.phase == Phase::Steps && run.critical_path.contains(&s.id),
            })
            .collect();
        let issues = findings(&run, evidence);
        let ev = Evidence {
            records: evidence.records,
            digest: evidence.head.clone(),
            signature: evidence.signature.clone(),
            key_fingerprint: evidence.fingerprint.clone(),
            intact: evidence.intact(),
            problem: evidence.problem.as_ref().map(|p| p.message.clone()),
        };
        let gantt = gantt_svg(&run);
        Report {
            title: format!("Continuity report: {} of {}", run.mode.unwrap_or("run"), run.runbook),
            outcome: run.outcome.unwrap_or(run.state).to_owned(),
            critical_path: run.critical_path.clone(),
            service,
            cis,
            preflight,
            verify,
            backups,
            timeline,
            issues_found: issues_found(&issues),
            issues,
            actions: Vec::new(),
            evidence: ev,
            sign_off: ["Continuity manager", "Service owner", "Auditor"]
                .into_iter()
                .map(|role| SignOff {
                    role,
                    name: None,
                    date: None,
                    signature: None,
                })
                .collect(),
            gantt,
            run,
        }
    }

    /// Adds the corrective actions the run opened (each an issue found, with its id and
    /// owner) and those it proved fixed; the change record's close notes name them too.
    pub fn with_actions(mut self, actions: Vec<CorrectiveAction>) -> Report {
        let id = self.run.id.clone();
        for a in &actions {
            if a.run == id {
                let owner = a.owner.as_deref().map(|o| format!(", owner {o}")).unwrap_or_default();
                let state = match &a.closed {
                    None => "open".to_owned(),
                    Some(c) => format!("closed by {}", c.by),
                };
                self.issues.push(Finding {
                    severity: "action",
                    what: format!(
                        "corrective action {} ({state}; CI {}{owner}): {}",
                        a.id,
                        a.ci.as_deref().unwrap_or("-"),
                        a.summary
                    ),
                });
            } else if a.closed.as_ref().and_then(|c| c.run.as_deref()) == Some(id.as_str()) {
                self.issues.push(Finding {
                    severity: "fixed",
                    what: format!(
                        "corrective action {} (opened by run {}) is proved fixed by this run: {}",
                        a.id, a.run, a.summary
                    ),
                });
            }
        }
        if let Some(c) = &mut self.run.change {
            c.add_actions(&id, &actions);
        }
        self.issues_found = issues_found(&self.issues);
        self.actions = actions;
        self
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        render("report.md", self, None)
    }

    /// The report as one self-contained HTML page.
    pub fn html(&self) -> String {
        render("report.html", self, Some(&self.gantt))
    }

    /// The report as JUnit XML: a test suite per phase, a test case per step and check.
    pub fn junit(&self) -> String {
        render("report.xml", self, None)
    }
}

/// `none`, or `3 (2 error, 1 action)`.
fn issues_found(issues: &[Finding]) -> String {
    if issues.is_empty() {
        return "none".into();
    }
    let mut by: Vec<(&str, usize)> = Vec::new();
    for i in issues {
        match by.iter_mut().find(|(s, _)| *s == i.severity) {
            Some((_, n)) => *n += 1,
            None => by.push((i.severity, 1)),
        }
    }
    let parts: Vec<String> = by.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{} ({})", issues.len(), parts.join(", "))
}

/// What a reader should look at: failures, unknown outcomes, retries, slow steps,
/// targets missed, interruptions, evidence problems.
fn findings(run: &RunView, ev: &Verification) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |severity, what: String| out.push(Finding { severity, what });
    if let Some(p) = &ev.problem {
        push(
            "error",
            format!("evidence check failed at record {}: {}", p.record, p.message),
        );
    }
    for s in &run.steps {
        let phase = phase_name(s.phase);
        match s.status.as_str() {
            "failed" => push(
                "error",
                format!("{phase} `{}` failed: {}", s.id, s.error.clone().unwrap_or_default()),
            ),
            "outcome_unknown" => push(
                "error",
                format!(
                    "{phase} `{}`: outcome unknown ({}); check by hand whether it took effect",
                    s.id,
                    s.error.clone().unwrap_or_default()
                ),
            ),
            "interrupted" | "running" => push("warning", format!("{phase} `{}` did not finish", s.id)),
            _ => {}
        }
        if s.attempts > 1 && s.status == "ok" {
            push("warning", format!("{phase} `{}` needed {} attempts", s.id, s.attempts));
        }
        if let (Some(d), Some(e)) = (s.duration_s, s.estimate_s)
            && d > 1.5 * e
            && d > 1.0
        {
            push(
                "warning",
                format!("{phase} `{}` took {}, its estimate is {}", s.id, secs(d), secs(e)),
            );
        }
    }
    for c in &run.checks {
        if c.passed == Some(false) {
            push(
                "error",
                format!(
                    "{} check `{}` failed: {}",
                    phase_name(c.phase),
                    c.name,
                    c.error.clone().unwrap_or_default()
                ),
            );
        }
    }
    for (name, f) in [("RTO", &run.rto), ("RPO", &run.rpo)] {
        if let (Some(a), Some(t)) = (f.achieved_s, f.target_s)
            && a > t
        {
            push(
                "error",
                format!("{name} target missed: {} achieved, target {}", secs(a), secs(t)),
            );
        }
    }
    if run.rpo.target_s.is_some() && run.rpo.achieved_s.is_none() && run.mode != Some("verify") {
        push(
            "note",
            "RPO was not measured in this run (no heartbeat or backup measurement)".into(),
        );
    }
    if let Some(a) = &run.acknowledged {
        push(
            "warning",
            format!(
                "stuck, then taken over by {} at {}: {}; what the operator did is outside this journal",
                a.by, a.at, a.reason
            ),
        );
    } else if run.outcome == Some("stuck") {
        push(
            "error",
            format!(
                "stuck: an undo failed and the service stays locked until an operator acknowledges it (`drover ack {} --reason TEXT`) or resumes it",
                run.id
            ),
        );
    }
    if let Some(a) = &run.archive
        && a.status == "failed"
    {
        push(
            "warning",
            format!(
                "the evidence archive upload to {} failed: {}; the outcome is unchanged (retry: `drover evidence archive {}`)",
                a.store,
                a.error.as_deref().unwrap_or("unknown error"),
                run.id
            ),
        );
    }
    if run.outcome == Some("refused") {
        push(
            "note",
            "refused before any change: nothing was changed, nothing was undone".into(),
        );
    }
    for pair in run.writers.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        if old.node != new.node || old.epoch != new.epoch {
            push(
                "note",
                format!(
                    "node {} (epoch {}) took the run over from node {} (epoch {}) at {}",
                    new.node, new.epoch, old.node, old.epoch, new.from_at
                ),
            );
        }
    }
    if run.resumes > 0 {
        push(
            "warning",
            format!(
                "the run was interrupted and resumed {} time(s); RTO counts the time in between",
                run.resumes
            ),
        );
    }
    out
}

/// Figures of one run in a trend.
#[derive(Debug, Clone, Serialize)]
pub struct TrendPoint {
    pub run: String,
    pub started_at: String,
    pub mode: Option<&'static str>,
    pub outcome: Option<&'static str>,
    pub rto: Measure,
    pub rpo: Measure,
    /// The corrective actions this run opened.
    pub actions: Vec<String>,
}

/// RTO and RPO achieved against target across runs of one service.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub service: String,
    /// Oldest first.
    pub points: Vec<TrendPoint>,
    pub runs: usize,
    pub passed: usize,
    /// Runs whose RTO and RPO, where measured, met their targets.
    pub within_targets: usize,
    /// Corrective actions found by the service's runs, oldest first.
    pub actions: Vec<CorrectiveAction>,
    pub open_actions: usize,
    #[serde(skip)]
    pub chart: String,
}

impl Trend {
    /// From finished runs of the service, in any order.
    pub fn new(service: &str, runs: &[RunView]) -> Trend {
        let mut runs: Vec<&RunView> = runs
            .iter()
            .filter(|r| r.service == service && r.outcome.is_some())
            .collect();
        runs.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        let points: Vec<TrendPoint> = runs
            .iter()
            .map(|r| TrendPoint {
                run: r.id.clone(),
                started_at: r.started_at.clone(),
                mode: r.mode,
                outcome: r.outcome,
                rto: Measure::new(r.rto.target_s, r.rto.achieved_s),
                rpo: Measure::new(r.rpo.target_s, r.rpo.achieved_s),
                actions: Vec::new(),
            })
            .collect();
        let within_targets = points
            .iter()
            .filter(|p| p.rto.met != Some(false) && p.rpo.met != Some(false))
            .count();
        let chart = trend_svg(service, &points);
        Trend {
            service: service.to_owned(),
            runs: points.len(),
            passed: runs.iter().filter(|r| r.outcome == Some("passed")).count(),
            within_targets,
            points,
            actions: Vec::new(),
            open_actions: 0,
            chart,
        }
    }

    /// Adds the corrective actions the service's runs opened.
    pub fn with_actions(mut self, actions: Vec<CorrectiveAction>) -> Trend {
        let actions: Vec<CorrectiveAction> = actions
            .into_iter()
            .filter(|a| self.points.iter().any(|p| p.run == a.run))
            .collect();
        for p in &mut self.points {
            p.actions = actions
                .iter()
                .filter(|a| a.run == p.run)
                .map(|a| a.id.clone())
                .collect();
        }
        self.open_actions = actions.iter().filter(|a| a.is_open()).count();
        self.actions = actions;
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    pub fn markdown(&self) -> String {
        render("trend.md", self, None)
    }

    pub fn html(&self) -> String {
        render("trend.html", self, Some(&self.chart))
    }
}

/// The continuity programme's coverage, as one self-contained HTML page.
#[derive(Debug, Clone, Serialize)]
pub struct CoverageReport {
    pub coverage: Coverage,
    pub summary: Vec<String>,
    #[serde(skip)]
    pub chart: String,
}

impl CoverageReport {
    pub fn new(coverage: Coverage) -> CoverageReport {
        let chart = coverage_svg(&coverage);
        CoverageReport {
            summary: coverage.tiers.iter().map(|t| t.line()).collect(),
            coverage,
            chart,
        }
    }

    pub fn html(&self) -> String {
        render("coverage.html", self, Some(&self.chart))
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, text) in [
        ("report.md", include_str!("templates/report.md")),
        ("report.html", include_str!("templates/report.html")),
        ("report.xml", include_str!("templates/report.xml")),
        ("trend.md", include_str!("templates/trend.md")),
        ("trend.html", include_str!("templates/trend.html")),
        ("coverage.html", include_str!("templates/coverage.html")),
        ("style.css", include_str!("templates/style.css")),
    ] {
        env.add_template(name, text).expect("built-in templates parse");
    }
    env.add_filter("secs", |s: Option<f64>| s.map(secs).unwrap_or_default());
    env.add_filter("truncate", |s: String, n: usize| {
        if s.chars().count() > n {
            s.chars().take(n.saturating_sub(1)).collect::<String>() + "…"
        } else {
            s
        }
    });
    env.add_filter("round3", |s: Option<f64>| {
        s.map(|s| format!("{s:.3}")).unwrap_or_else(|| "0".into())
    });
    env
}

fn render<T: Serialize>(template: &str, value: &T, svg: Option<&str>) -> String {
    let env = environment();
    let tmpl = env.get_template(template).expect("built-in template");
    let ctx = minijinja::context! {
        r => minijinja::Value::from_serialize(value),
        svg => minijinja::Value::from_safe_string(svg.unwrap_or_default().to_owned()),
        version => env!("CARGO_PKG_VERSION"),
    };
    tmpl.render(ctx)
        .unwrap_or_else(|e| format!("report template {template} failed: {e:#}"))
}
