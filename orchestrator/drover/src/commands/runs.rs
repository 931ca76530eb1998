//! `drover runs list` and `drover runs show`.

use std::fmt::Write as _;

use drover_engine::view::RunView;
use drover_engine::{RunState, Store};

use crate::cli::{Cli, RunsCommand, TextJson};
use crate::workspace::load_for_recorded_run;
use crate::{CmdResult, Exit, Failure};

/// A run id from an id or a unique prefix of one.
pub fn resolve(store: &Store, arg: &str) -> Result<String, Failure> {
    let found = store.runs_with_prefix(arg).map_err(|e| Failure::Other(e.into()))?;
    if let Some(exact) = found.iter().find(|r| r.id == arg) {
        return Ok(exact.id.clone());
    }
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(Failure::Usage(anyhow::anyhow!(
            "no run `{arg}` in {}",
            store.path().display()
        ))),
        many => Err(Failure::Usage(anyhow::anyhow!(
            "`{arg}` matches {} runs: {}",
            many.len(),
            many.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The state of a run from its journal.
pub fn state_of(store: &Store, id: &str) -> Result<RunState, Failure> {
    let records = drover_engine::journal::load_records(store, id).map_err(|e| Failure::Other(e.into()))?;
    Ok(RunState::from_records(id, &records))
}

pub fn run(cli: &Cli, command: &RunsCommand) -> CmdResult {
    let loaded = load_for_recorded_run(&cli.config)?;
    let store = super::run::open_store(loaded.config())?;
    match command {
        RunsCommand::List { format, limit } => {
            let rows = store.runs(*limit).map_err(|e| Failure::Other(e.into()))?;
            let mut views = Vec::new();
            for r in &rows {
                let st = state_of(&store, &r.id)?;
                let mut v = RunView::new(&st, drover_engine::is_live(&store, &r.id));
                v.steps.clear();
                v.checks.clear();
                views.push(v);
            }
            match format {
                TextJson::Json => {
                    // `steps` is left out of the list.
                    let list: Vec<serde_json::Value> = views
                        .iter()
                        .map(|v| {
                            let mut j = serde_json::to_value(v).unwrap_or_default();
                            if let Some(o) = j.as_object_mut() {
                                o.remove("steps");
                                o.remove("checks");
                            }
                            j
                        })
                        .collect();
                    super::print_json(&list)?;
                }
                TextJson::Text => print!("{}", list_text(&views)),
            }
        }
        RunsCommand::Show { run, format } => {
            let id = resolve(&store, run)?;
            let st = state_of(&store, &id)?;
            let v = RunView::new(&st, drover_engine::is_live(&store, &id));
            match format {
                TextJson::Json => super::print_json(&v)?,
                TextJson::Text => print!("{}", text(&v)),
            }
        }
    }
    Ok(Exit::Passed)
}

fn secs(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 60.0 => format!("{s:.2}s"),
        Some(s) => drover_model::Dur(std::time::Duration::from_secs(s as u64)).to_string(),
    }
}

fn list_text(views: &[RunView]) -> String {
    let mut out = String::new();
    if views.is_empty() {
        out.push_str("no runs yet\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<22} {:<24} {:<9} {:<15} {:<24} {:>9} {:>9}",
        "RUN", "RUNBOOK", "MODE", "RESULT", "STARTED", "RTO", "TARGET"
    );
    for v in views {
        let result = v.outcome.unwrap_or(v.state);
        let _ = writeln!(
            out,
            "{:<22} {:<24} {:<9} {:<15} {:<24} {:>9} {:>9}",
            v.id,
            v.runbook,
            v.mode.unwrap_or("?"),
            result,
            v.started_at,
            secs(v.rto.achieved_s),
            secs(v.rto.target_s)
        );
    }
    out
}

/// A run for people: result, figures, every step's timeline.
pub fn text(v: &RunView) -> String {
    let mut out = String::new();
    let result = match v.outcome {
        Some(o) => o.to_uppercase(),
        None => v.state.to_uppercase(),
    };
    let _ = writeln!(
        out,
        "Run {} ({} of {}, service {}): {result}",
        v.id,
        v.mode.unwrap_or("?"),
        v.runbook,
        v.service
    );
    if let Some(r) = &v.reason {
        let _ = writeln!(out, "  {r}");
    }
    if let Some(a) = &v.acknowledged {
        let _ = writeln!(out, "  acknowledged by {} at {}: {}", a.by, a.at, a.reason);
    }
    match &v.archive {
        Some(a) if a.status == "archived" => {
            let _ = writeln!(out, "  evidence archived: {}", crate::archive::describe(a));
        }
        Some(a) => {
            let _ = writeln!(
                out,
                "  evidence archive FAILED at {}: {} (retry: drover evidence archive {})",
                a.at,
                a.error.as_deref().unwrap_or("unknown error"),
                v.id
            );
        }
        None => {}
    }
    let _ = writeln!(
        out,
        "  RTO {} (target {})   RPO {} (target {})",
        secs(v.rto.achieved_s),
        secs(v.rto.target_s),
        secs(v.rpo.achieved_s),
        secs(v.rpo.target_s)
    );
    let _ = writeln!(
        out,
        "  started {}{}",
        v.started_at,
        v.finished_at
            .as_ref()
            .map(|f| format!(", finished {f}"))
            .unwrap_or_default()
    );
    if !v.checks.is_empty() {
        let _ = writeln!(out, "\n  Checks:");
        for c in &v.checks {
            let mark = match c.passed {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "-",
            };
            let detail = c.error.clone().or(c.summary.clone()).unwrap_or_default();
            let _ = writeln!(
                out,
                "    {:<9} {:<28} {:<7} {detail}",
                format!("{:?}", c.phase).to_lowercase(),
                c.name,
                mark
            );
        }
    }
    if !v.steps.is_empty() {
        let w = v.steps.iter().map(|s| s.id.len()).max().unwrap_or(4).max(4);
        let _ = writeln!(
            out,
            "\n  {:<12} {:<w$} {:<16} {:>9} {:>9} {:>8}  DETAIL",
            "PHASE", "STEP", "STATUS", "START", "DURATION", "ATTEMPTS"
        );
        for s in &v.steps {
            let detail = s.error.clone().or(s.summary.clone()).unwrap_or_default();
            let detail: String = detail.lines().next().unwrap_or("").chars().take(80).collect();
            let _ = writeln!(
                out,
                "  {:<12} {:<w$} {:<16} {:>9} {:>9} {:>8}  {detail}",
                format!("{:?}", s.phase).to_lowercase(),
                s.id,
                s.status,
                secs(s.start_s),
                secs(s.duration_s),
                s.attempts
            );
        }
    }
    if !v.critical_path.is_empty() {
        let _ = writeln!(out, "\n  Critical path: {}", v.critical_path.join(" -> "));
    }
    out
}
