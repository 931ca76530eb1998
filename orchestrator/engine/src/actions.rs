//! Corrective actions: what a run that did not pass found wrong, followed up from run to
//! run (ISO 20000 continual improvement).
//!
//! A run that ends other than `passed` opens one action per finding: a failed step
//! (with its error), a failed check, a missed RTO or RPO target (achieved against
//! target), a backup that is stale, corrupt, missing, too small or unverifiable (by its
//! key, from the check's data), a stuck undo or rollback step. A later passing run of
//! the same runbook closes the actions it proves fixed (the step ran ok, the check
//! passed, the target was met), recording its run id; an operator closes one by hand
//! with a note.
//!
//! Both happen in the transaction that stores the run's final records ([`record`] is
//! called from the finish), and again, idempotently, when a finished run is settled, so
//! a crash can neither lose nor double them. Actions never touch a run's journal (its
//! evidence): they live in tables of their own, `actions` (one row per action, never
//! changed) and `action_events` (its closes, append-only); triggers refuse updates and
//! deletes of both. Numbers are `CA-YYYY-NNNN`, counted per year like change numbers.

use serde::Serialize;
use serde_json::{Value, json};

use crate::journal::{Outcome, Phase, StepStatus};
use crate::state::RunState;
use crate::store::StoreResult;
use crate::store::sql::{Row, Sql, args};
use crate::view::secs;

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS actions (
    id        TEXT PRIMARY KEY,
    run_id    TEXT NOT NULL,
    finding   TEXT NOT NULL,
    runbook   TEXT NOT NULL,
    service   TEXT NOT NULL,
    kind      TEXT NOT NULL,
    ci        TEXT,
    owner     TEXT,
    summary   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    UNIQUE (run_id, finding)
);
CREATE INDEX IF NOT EXISTS actions_by_runbook ON actions (runbook, id);
CREATE TRIGGER IF NOT EXISTS actions_no_update BEFORE UPDATE ON actions
BEGIN SELECT RAISE(ABORT, 'corrective actions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS actions_no_delete BEFORE DELETE ON actions
BEGIN SELECT RAISE(ABORT, 'corrective actions are append-only'); END;
CREATE TABLE IF NOT EXISTS action_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id TEXT NOT NULL,
    at        TEXT NOT NULL,
    event     TEXT NOT NULL,
    by        TEXT NOT NULL,
    run_id    TEXT,
    note      TEXT
);
CREATE INDEX IF NOT EXISTS action_events_by_action ON action_events (action_id, id);
CREATE TRIGGER IF NOT EXISTS action_events_no_update BEFORE UPDATE ON action_events
BEGIN SELECT RAISE(ABORT, 'the history of corrective actions is append-only'); END;
CREATE TRIGGER IF NOT EXISTS action_events_no_delete BEFORE DELETE ON action_events
BEGIN SELECT RAISE(ABORT, 'the history of corrective actions is append-only'); END;
CREATE TABLE IF NOT EXISTS action_numbers (
    year INTEGER PRIMARY KEY,
    last INTEGER NOT NULL
);
"#;

/// Who closes an action that a passing run proved fixed.
pub const BY_DROVER: &str = "drover";

/// Something a run found wrong, before it is numbered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Unique within the run: `step:ID`, `check:PHASE:NAME`, `target:rto`,
    /// `backup:STORE/KEY`, `undo:PHASE:ID`, `outcome`.
    pub key: String,
    /// `failed_step`, `failed_check`, `missed_rto`, `missed_rpo`, `backup`,
    /// `stuck_rollback` or `run`.
    pub kind: &'static str,
    pub ci: Option<String>,
    pub owner: Option<String>,
    /// One line for people.
    pub summary: String,
    /// The figures behind it (achieved and target, the error, the backup's status).
    pub detail: Value,
}

/// A closing of an action (or a later event of its history).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionEvent {
    pub at: String,
    /// `closed`.
    pub event: String,
    /// A person (`drover actions close`, the API) or `drover` (a passing run).
    pub by: String,
    /// The passing run that proved it fixed.
    pub run: Option<String>,
    pub note: Option<String>,
}

/// A corrective action as `drover actions show --format json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorrectiveAction {
    /// `CA-YYYY-NNNN`.
    pub id: String,
    /// `open` or `closed`.
    pub state: &'static str,
    pub kind: String,
    /// The run that found it.
    pub run: String,
    pub runbook: String,
    pub service: String,
    pub ci: Option<String>,
    pub owner: Option<String>,
    pub finding: String,
    pub summary: String,
    pub detail: Value,
    pub opened_at: String,
    /// The close, when closed.
    pub closed: Option<ActionEvent>,
    /// Its history after the opening, oldest first.
    pub events: Vec<ActionEvent>,
}

impl CorrectiveAction {
    pub fn is_open(&self) -> bool {
        self.state == "open"
    }

    /// `CA-2026-0001 (open): step `promote` failed: ...`, for reports and notes.
    pub fn line(&self) -> String {
        match &self.closed {
            None => format!("{} (open): {}", self.id, self.summary),
            Some(c) => format!(
                "{} (closed by {}{}): {}",
                self.id,
                c.by,
                c.run.as_deref().map(|r| format!(" in run {r}")).unwrap_or_default(),
                self.summary
            ),
        }
    }

    /// Whether it is open at `at` (RFC 3339): opened by then and not closed before.
    pub fn open_at(&self, at: &str) -> bool {
        self.opened_at.as_str() <= at && self.closed.as_ref().is_none_or(|c| c.at.as_str() > at)
    }
}

/// Which actions to list.
#[derive(Debug, Clone, Default)]
pub struct ActionFilter {
    pub open_only: bool,
    /// The run's service or the action's CI.
    pub service: Option<String>,
    pub runbook: Option<String>,
    /// Opened by this run, or closed by it.
    pub run: Option<String>,
}

/// Why an action cannot be closed by hand.
#[derive(Debug, Clone, PartialEq)]
pub enum CloseRefusal {
    NotFound,
    AlreadyClosed(Box<CorrectiveAction>),
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Preflight => "preflight",
        Phase::Steps => "steps",
        Phase::Verify => "verify",
        Phase::Compensation => "compensation",
        Phase::Rollback => "rollback",
    }
}

/// The backups a check or step found bad, from its data (`objects` with a `status`, as
/// `s3.verify-backups` writes them, also in a failure's `found`).
fn bad_backups(data: &Value) -> Vec<(String, String, Value)> {
    let store = data.get("store").and_then(Value::as_str).unwrap_or("");
    data.get("objects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let status = o.get("status")?.as_str()?;
            (status != "ok").then(|| {
                let key = o.get("key").and_then(Value::as_str).unwrap_or("?");
                (format!("{store}/{key}"), status.to_owned(), o.clone())
            })
        })
        .collect()
}

/// What a finished run found wrong; nothing for a run that passed.
pub fn findings(st: &RunState) -> Vec<Finding> {
    let Some(fin) = &st.finished else {
        return Vec::new();
    };
    if fin.outcome == Outcome::Passed {
        return Vec::new();
    }
    let plan = st.plan.as_ref();
    let owner_of = |ci: &str| {
        st.cis
            .iter()
            .find(|c| c.id == ci)
            .and_then(|c| c.owner.clone())
            .or_else(|| st.cis.iter().find(|c| c.id == st.service).and_then(|c| c.owner.clone()))
    };
    let step_ci = |id: &str| {
        plan.and_then(|p| p.steps.iter().chain(&p.rollback).find(|s| s.id == id))
            .and_then(|s| s.ci.clone())
            .unwrap_or_else(|| st.service.clone())
    };
    let mut out: Vec<Finding> = Vec::new();
    let mut push = |key: String, kind: &'static str, ci: String, summary: String, detail: Value| {
        if !out.iter().any(|f| f.key == key) {
            let owner = owner_of(&ci);
            out.push(Finding {
                key,
                kind,
                ci: Some(ci),
                owner,
                summary,
                detail,
            });
        }
    };
    // Backups found bad, by key: in failed checks and steps, and in passing ones (a
    // backup that could not be verified does not fail the check, but it is a finding).
    let sources = st
        .checks
        .iter()
        .map(|c| {
            (
                format!("{} check `{}`", phase_name(c.phase), c.name),
                st.service.clone(),
                if c.passed { &c.data } else { &c.found },
            )
        })
        .chain(st.steps.iter().map(|s| {
            (
                format!("{} `{}`", phase_name(s.phase), s.id),
                step_ci(&s.id),
                if s.status == Some(StepStatus::Ok) {
                    s.output.as_ref().map_or(&Value::Null, |o| &o.data)
                } else {
                    &s.found
                },
            )
        }))
        .collect::<Vec<_>>();
    let mut with_backups = std::collections::HashSet::new();
    for (source, ci, data) in &sources {
        for (key, status, object) in bad_backups(data) {
            with_backups.insert(source.clone());
            let why = object
                .get("detail")
                .and_then(Value::as_str)
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            push(
                format!("backup:{key}"),
                "backup",
                ci.clone(),
                format!("backup `{key}` is {status}{why} (found by {source})"),
                json!({"key": key, "status": status, "source": source, "object": object}),
            );
        }
    }
    for s in &st.steps {
        let failed = matches!(s.status, Some(StepStatus::Failed | StepStatus::OutcomeUnknown));
        if !failed {
            continue;
        }
        let error = s.error.clone().unwrap_or_default();
        let source = format!("{} `{}`", phase_name(s.phase), s.id);
        match s.phase {
            Phase::Steps if with_backups.contains(&source) => {}
            Phase::Steps => push(
                format!("step:{}", s.id),
                "failed_step",
                step_ci(&s.id),
                format!("step `{}` failed: {error}", s.id),
                json!({"step": s.id, "error": error, "attempts": s.attempts}),
            ),
            Phase::Compensation | Phase::Rollback => push(
                format!("undo:{}:{}", phase_name(s.phase), s.id),
                "stuck_rollback",
                step_ci(&s.id),
                format!(
                    "{} `{}` failed, the run is stuck: {error}",
                    if s.phase == Phase::Rollback {
                        "rollback step"
                    } else {
                        "the undo of step"
                    },
                    s.id
                ),
                json!({"step": s.id, "phase": phase_name(s.phase), "error": error}),
            ),
            Phase::Preflight | Phase::Verify => {}
        }
    }
    for c in st.checks.iter().filter(|c| !c.passed && c.error.is_some()) {
        let source = format!("{} check `{}`", phase_name(c.phase), c.name);
        if with_backups.contains(&source) {
            continue;
        }
        let error = c.error.clone().unwrap_or_default();
        push(
            format!("check:{}:{}", phase_name(c.phase), c.name),
            "failed_check",
            st.service.clone(),
            format!("{} check `{}` failed: {error}", phase_name(c.phase), c.name),
            json!({"check": c.name, "phase": phase_name(c.phase), "error": error, "attempts": c.attempts}),
        );
    }
    let targets = plan.map(|p| p.targets);
    for (name, kind, achieved, target) in [
        ("RTO", "missed_rto", fin.rto_s, targets.and_then(|t| t.rto_s)),
        ("RPO", "missed_rpo", fin.rpo_s, targets.and_then(|t| t.rpo_s)),
    ] {
        if let (Some(a), Some(t)) = (achieved, target)
            && a > t
        {
            push(
                format!("target:{}", name.to_lowercase()),
                kind,
                st.service.clone(),
                format!("{name} target missed: {} achieved, target {}", secs(a), secs(t)),
                json!({"achieved_s": a, "target_s": t}),
            );
        }
    }
    if out.is_empty() {
        // Nothing more specific: the run's end itself is the finding.
        out.push(Finding {
            key: "outcome".into(),
            kind: "run",
            ci: Some(st.service.clone()),
            owner: owner_of(&st.service),
            summary: format!("run ended {}: {}", fin.outcome.as_str(), fin.reason),
            detail: json!({"outcome": fin.outcome.as_str(), "reason": fin.reason}),
        });
    }
    out
}

/// Why the passing run `st` proves `a` fixed, or `None` when it does not.
pub fn proves_fixed(st: &RunState, a: &CorrectiveAction) -> Option<String> {
    let fin = st.finished.as_ref().filter(|f| f.outcome == Outcome::Passed)?;
    // Only what was found before this run ended (settling an old run later proves
    // nothing about what newer runs found).
    if st.runbook != a.runbook || a.run == st.id || a.opened_at.as_str() >= fin.at.as_str() {
        return None;
    }
    let field = |k: &str| a.detail.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let target = |k: &str| a.detail.get(k).and_then(Value::as_f64);
    match a.kind.as_str() {
        "failed_step" => {
            let step = field("step");
            st.step_ok(Phase::Steps, &step)
                .then(|| format!("step `{step}` succeeded in run {}", st.id))
        }
        "stuck_rollback" => {
            let step = field("step");
            (field("phase") == "rollback" && st.step_ok(Phase::Rollback, &step))
                .then(|| format!("rollback step `{step}` succeeded in run {}", st.id))
        }
        "failed_check" => {
            let (check, phase) = (field("check"), field("phase"));
            st.checks
                .iter()
                .any(|c| c.name == check && phase_name(c.phase) == phase && c.passed)
                .then(|| format!("check `{check}` passed in run {}", st.id))
        }
        "backup" => {
            // The check or step that found it passed, and does not list the key as bad.
            let key = field("key");
            let source = field("source");
            let clean = st
                .checks
                .iter()
                .filter(|c| c.passed && format!("{} check `{}`", phase_name(c.phase), c.name) == source)
                .map(|c| &c.data)
                .chain(
                    st.steps
                        .iter()
                        .filter(|s| s.status == Some(StepStatus::Ok))
                        .filter(|s| format!("{} `{}`", phase_name(s.phase), s.id) == source)
                        .filter_map(|s| s.output.as_ref().map(|o| &o.data)),
                )
                .any(|data| !bad_backups(data).iter().any(|(k, _, _)| *k == key));
            clean.then(|| format!("{source} passed in run {} and no longer finds `{key}` bad", st.id))
        }
        "missed_rto" => match (fin.rto_s, target("target_s")) {
            (Some(r), Some(t)) if r <= t => Some(format!("RTO {} within {} in run {}", secs(r), secs(t), st.id)),
            _ => None,
        },
        "missed_rpo" => match (fin.rpo_s, target("target_s")) {
            (Some(r), Some(t)) if r <= t => Some(format!("RPO {} within {} in run {}", secs(r), secs(t), st.id)),
            _ => None,
        },
        // A run that failed or got stuck without a more specific finding: a passing
        // drill or failover of the same runbook is the proof.
        "run" => (st.mode != Some(drover_model::RunMode::Verify) || a.detail["mode"] == "verify")
            .then(|| format!("run {} of the same runbook passed", st.id)),
        _ => None,
    }
}

/// Opens the actions of a finished run that did not pass, or closes those a passing run
/// proves fixed; in the transaction that stores the run's end. Idempotent: a finding
/// already opened, or an action already closed, is left as it is.
pub(crate) fn record(tx: &mut dyn Sql, st: &RunState) -> StoreResult<()> {
    let Some(fin) = &st.finished else {
        return Ok(());
    };
    let at = fin.at.clone();
    if fin.outcome == Outcome::Passed {
        let open = list(
            tx,
            &ActionFilter {
                open_only: true,
                runbook: Some(st.runbook.clone()),
                ..Default::default()
            },
        )?;
        for a in open {
            if let Some(note) = proves_fixed(st, &a) {
                tx.execute(
                    r#"INSERT INTO action_events (action_id, at, event, "by", run_id, note) VALUES ($1, $2, 'closed', $3, $4, $5)"#,
                    args![&a.id, &at, BY_DROVER, &st.id, &note],
                )?;
            }
        }
        return Ok(());
    }
    let year: i64 = at.get(..4).and_then(|y| y.parse().ok()).unwrap_or(1970);
    for f in findings(st) {
        let known = tx
            .query_one(
                "SELECT COUNT(*) FROM actions WHERE run_id = $1 AND finding = $2",
                args![&st.id, &f.key],
            )?
            .int(0)?
            > 0;
        if known {
            continue;
        }
        let n = tx
            .query_one(
                "INSERT INTO action_numbers (year, last) VALUES ($1, 1)
                 ON CONFLICT (year) DO UPDATE SET last = action_numbers.last + 1 RETURNING last",
                args![year],
            )?
            .int(0)?;
        let mut detail = f.detail.clone();
        if let Some(o) = detail.as_object_mut() {
            o.insert("mode".into(), json!(st.mode.map(|m| m.as_str())));
            o.insert("outcome".into(), json!(fin.outcome.as_str()));
        }
        tx.execute(
            "INSERT INTO actions (id, run_id, finding, runbook, service, kind, ci, owner, summary, detail, opened_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            args![
                &format!("CA-{year}-{n:04}"),
                &st.id,
                &f.key,
                &st.runbook,
                &st.service,
                f.kind,
                &f.ci,
                &f.owner,
                &f.summary,
                &detail.to_string(),
                &at
            ],
        )?;
    }
    Ok(())
}

/// Closes an action by hand: who and why, in its append-only history.
pub(crate) fn close(
    tx: &mut dyn Sql,
    id: &str,
    by: &str,
    note: &str,
    at: &str,
) -> StoreResult<Result<CorrectiveAction, CloseRefusal>> {
    let Some(a) = get(tx, id)? else {
        return Ok(Err(CloseRefusal::NotFound));
    };
    if !a.is_open() {
        return Ok(Err(CloseRefusal::AlreadyClosed(Box::new(a))));
    }
    tx.execute(
        r#"INSERT INTO action_events (action_id, at, event, "by", run_id, note) VALUES ($1, $2, 'closed', $3, NULL, $4)"#,
        args![id, at, by, note],
    )?;
    Ok(get(tx, id)?.map(Ok).unwrap_or(Err(CloseRefusal::NotFound)))
}

const COLUMNS: &str = "id, run_id, finding, runbook, service, kind, ci, owner, summary, detail, opened_at";

fn events(db: &mut dyn Sql, id: &str) -> StoreResult<Vec<ActionEvent>> {
    db.query(
        r#"SELECT at, event, "by", run_id, note FROM action_events WHERE action_id = $1 ORDER BY id"#,
        args![id],
    )?
    .iter()
    .map(|r| {
        Ok(ActionEvent {
            at: r.text(0)?,
            event: r.text(1)?,
            by: r.text(2)?,
            run: r.opt_text(3)?,
            note: r.opt_text(4)?,
        })
    })
    .collect()
}

fn from_row(db: &mut dyn Sql, r: &Row) -> StoreResult<CorrectiveAction> {
    let id = r.text(0)?;
    let detail = r.text(9)?;
    let events = events(db, &id)?;
    let closed = events.iter().rev().find(|e| e.event == "closed").cloned();
    Ok(CorrectiveAction {
        state: if closed.is_some() { "closed" } else { "open" },
        run: r.text(1)?,
        finding: r.text(2)?,
        runbook: r.text(3)?,
        service: r.text(4)?,
        kind: r.text(5)?,
        ci: r.opt_text(6)?,
        owner: r.opt_text(7)?,
        summary: r.text(8)?,
        detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
        opened_at: r.text(10)?,
        closed,
        events,
        id,
    })
}

/// One action.
pub(crate) fn get(db: &mut dyn Sql, id: &str) -> StoreResult<Option<CorrectiveAction>> {
    match db.query_opt(&format!("SELECT {COLUMNS} FROM actions WHERE id = $1"), args![id])? {
        Some(r) => from_row(db, &r).map(Some),
        None => Ok(None),
    }
}

/// Actions, oldest first.
pub(crate) fn list(db: &mut dyn Sql, f: &ActionFilter) -> StoreResult<Vec<CorrectiveAction>> {
    let rows = db.query(
        &format!(
            "SELECT {COLUMNS} FROM actions
             WHERE (CAST($1 AS TEXT) IS NULL OR service = CAST($1 AS TEXT) OR ci = CAST($1 AS TEXT))
               AND (CAST($2 AS TEXT) IS NULL OR runbook = CAST($2 AS TEXT))
               AND (CAST($3 AS TEXT) IS NULL OR run_id = CAST($3 AS TEXT)
                    OR id IN (SELECT action_id FROM action_events WHERE run_id = CAST($3 AS TEXT)))
             ORDER BY opened_at, id"
        ),
        args![&f.service, &f.runbook, &f.run],
    )?;
    let mut all = Vec::with_capacity(rows.len());
    for r in &rows {
        let a = from_row(db, r)?;
        if !f.open_only || a.is_open() {
            all.push(a);
        }
    }
    Ok(all)
}
