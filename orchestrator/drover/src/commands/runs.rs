//! `drover runs list` and `drover runs show`.

use std::fmt::Write as _;

use drover_engine::view::RunView;
use drover_engine::{RunState, Store};

use crate::cli::{Cli, RunsCommand, TextJson};
use crate::workspace::load_for_recorded_run;
use crate::{CmdResult, Exit, Failure};

/// At most this many candidates are listed for an ambiguous prefix.
const AMBIGUOUS_SHOWN: usize = 10;

/// A run id from an id or a unique prefix of one. An ambiguous prefix lists the runs it
/// matches; an unknown one names the closest id (a typo in the prefix); both exit 2.
pub fn resolve(store: &Store, arg: &str) -> Result<String, Failure> {
    let found = if arg.is_empty() {
        Vec::new()
    } else {
        store.runs_with_prefix(arg).map_err(|e| Failure::Other(e.into()))?
    };
    if let Some(exact) = found.iter().find(|r| r.id == arg) {
        return Ok(exact.id.clone());
    }
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => {
            let ids = store.run_ids().map_err(|e| Failure::Other(e.into()))?;
            let hint = match drover_model::diag::suggest_by_prefix(arg, ids.iter().map(String::as_str)) {
                Some(id) => format!(" (did you mean `{id}`?)"),
                None if ids.is_empty() => " (there are no runs yet)".to_owned(),
                None => " (`drover runs list` shows the runs)".to_owned(),
            };
            Err(Failure::Usage(anyhow::anyhow!(
                "unknown run `{arg}` in {}{hint}",
                store.path().display()
            )))
        }
        many => {
            let mut list = String::new();
            for r in many.iter().rev().take(AMBIGUOUS_SHOWN) {
                let _ = write!(
                    list,
                    "\n  {}  {} of {}, started {}",
                    r.id, r.mode, r.runbook, r.started_at
                );
            }
            if many.len() > AMBIGUOUS_SHOWN {
                let _ = write!(list, "\n  ... and {} more", many.len() - AMBIGUOUS_SHOWN);
            }
            Err(Failure::Usage(anyhow::anyhow!(
                "`{arg}` matches {} runs; give more of the id:{list}",
                many.len()
            )))
        }
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
                TextJson::Text => print!("{}", text(&v, crate::color::enabled(crate::color::Stream::Stdout))),
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
    // Columns as wide as their widest value, so that full run ids line up.
    let id_w = views.iter().map(|v| v.id.len()).max().unwrap_or(0).max(3);
    let rb_w = views.iter().map(|v| v.runbook.len()).max().unwrap_or(0).max(7);
    let _ = writeln!(
        out,
        "{:<id_w$} {:<rb_w$} {:<9} {:<15} {:<24} {:>9} {:>9}",
        "RUN", "RUNBOOK", "MODE", "RESULT", "STARTED", "RTO", "TARGET"
    );
    for v in views {
        let result = v.outcome.unwrap_or(v.state);
        let _ = writeln!(
            out,
            "{:<id_w$} {:<rb_w$} {:<9} {:<15} {:<24} {:>9} {:>9}",
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

/// A run for people: result, figures, every step's timeline; the result coloured when
/// `color`.
pub fn text(v: &RunView, color: bool) -> String {
    let mut out = String::new();
    let word = v.outcome.unwrap_or(v.state);
    let result = match crate::color::outcome_tone(word) {
        Some(tone) => crate::color::paint(&word.to_uppercase(), tone, color),
        None => word.to_uppercase(),
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
    if !v.writers.is_empty() {
        let nodes: Vec<String> = v
            .writers
            .iter()
            .map(|w| format!("{} (epoch {}, records {}-{})", w.node, w.epoch, w.first_seq, w.last_seq))
            .collect();
        let _ = writeln!(out, "  run by: {}", nodes.join(", then "));
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
