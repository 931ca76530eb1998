//! `drover coverage` and `drover actions`: the continuity programme (what is drilled,
//! due, overdue, failing or uncovered; what runs found wrong and whether it is fixed).

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use drover_engine::actions::{ActionFilter, CloseRefusal, CorrectiveAction};
use drover_engine::coverage::Coverage;
use drover_engine::{Store, StoreError};
use drover_model::{Cmdb, Runbook, Workspace};
use drover_report::CoverageReport;

use crate::cli::{ActionsCommand, Cli, CoverageFormat, TextJson};
use crate::workspace::{load, load_for_recorded_run};
use crate::{CmdResult, Exit, Failure};

fn store_err(e: StoreError) -> Failure {
    Failure::Other(e.into())
}

/// The runbooks of the workspace that loaded (a broken one is not counted as coverage).
pub fn runbooks(ws: &Workspace) -> Vec<Runbook> {
    ws.runbooks.iter().filter_map(|r| r.runbook.clone()).collect()
}

/// The coverage as of `at`.
pub fn compute(cmdb: &Cmdb, runbooks: &[Runbook], store: &Store, at: SystemTime) -> Result<Coverage, Failure> {
    Coverage::new(cmdb, runbooks, store, at).map_err(store_err)
}

pub fn coverage(cli: &Cli, format: CoverageFormat, at: Option<&str>, output: Option<&Path>) -> CmdResult {
    let at = match at {
        Some(t) => humantime::parse_rfc3339_weak(t)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("--at `{t}`: {e} (write e.g. 2026-11-27T03:12:00Z)")))?,
        None => SystemTime::now(),
    };
    let loaded = load(&cli.config, &[])?;
    let store = super::run::open_store(loaded.config())?;
    let c = compute(loaded.cmdb(), &runbooks(&loaded.ws), &store, at)?;
    let text = match format {
        CoverageFormat::Json => serde_json::to_string_pretty(&c.items).map_err(anyhow::Error::from)? + "\n",
        CoverageFormat::Html => CoverageReport::new(c).html(),
        CoverageFormat::Text => text(&c),
    };
    match output {
        Some(p) => {
            std::fs::write(p, text)
                .map_err(|e| Failure::Other(anyhow::anyhow!("cannot write {}: {e}", p.display())))?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(Exit::Passed)
}

fn date(t: Option<&str>) -> String {
    t.map(|t| t.get(..16).unwrap_or(t).replace('T', " "))
        .unwrap_or_else(|| "-".into())
}

/// The coverage for people: a line per tier, a row per CI, the gaps, the open actions.
pub fn text(c: &Coverage) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Drill coverage as of {}", c.at);
    if c.items.is_empty() {
        let _ = writeln!(out, "no CI has a tier: nothing to cover");
        return out;
    }
    for t in &c.tiers {
        let _ = writeln!(out, "{}", t.line());
    }
    let w = c.items.iter().map(|i| i.ci.len()).max().unwrap_or(2).max(2);
    let _ = writeln!(
        out,
        "\n{:<w$}  {:<8} {:<9} {:<16} {:<14} {:<16} {:<16} {:<8} RUNBOOKS",
        "CI", "TIER", "STATUS", "LAST DRILL", "OUTCOME", "LAST PASS", "DUE BY", "ACTIONS"
    );
    for i in &c.items {
        let _ = writeln!(
            out,
            "{:<w$}  {:<8} {:<9} {:<16} {:<14} {:<16} {:<16} {:<8} {}",
            i.ci,
            i.tier,
            i.status,
            date(i.last_drill.as_ref().map(|d| d.at.as_str())),
            i.last_drill.as_ref().map_or("-", |d| d.outcome.as_str()),
            date(i.last_pass.as_ref().map(|d| d.at.as_str())),
            date(i.due_by.as_deref()),
            i.open_actions.len(),
            if i.runbooks.is_empty() {
                "-".to_owned()
            } else {
                i.runbooks.join(", ")
            }
        );
    }
    let gaps: Vec<_> = c.gaps().collect();
    if !gaps.is_empty() {
        let _ = writeln!(out, "\nGaps: no runbook recovers these tiered CIs");
        for g in gaps {
            let _ = writeln!(
                out,
                "  {} ({}{}): blast radius {}",
                g.ci,
                g.tier,
                g.owner.as_deref().map(|o| format!(", owner {o}")).unwrap_or_default(),
                if g.blast_radius.is_empty() {
                    "none (nothing depends on it)".to_owned()
                } else {
                    g.blast_radius.join(", ")
                }
            );
        }
    }
    if !c.open_actions.is_empty() {
        let _ = writeln!(out, "\nOpen corrective actions");
        for a in &c.open_actions {
            let _ = writeln!(
                out,
                "  {} {} ({}): {}",
                a.id,
                a.ci.as_deref().unwrap_or("-"),
                a.owner.as_deref().unwrap_or("no owner"),
                a.summary
            );
        }
    }
    out
}

fn list_text(list: &[CorrectiveAction]) -> String {
    let mut out = String::new();
    if list.is_empty() {
        out.push_str("no corrective actions\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<13} {:<6} {:<28} {:<16} {:<16} FINDING",
        "ID", "STATE", "RUN", "CI", "OWNER"
    );
    for a in list {
        let summary: String = a.summary.lines().next().unwrap_or("").chars().take(100).collect();
        let _ = writeln!(
            out,
            "{:<13} {:<6} {:<28} {:<16} {:<16} {summary}",
            a.id,
            a.state,
            a.run,
            a.ci.as_deref().unwrap_or("-"),
            a.owner.as_deref().unwrap_or("-"),
        );
    }
    out
}

fn show_text(a: &CorrectiveAction) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({}): {}", a.id, a.state, a.summary);
    let _ = writeln!(out, "  kind      {}", a.kind);
    let _ = writeln!(
        out,
        "  found by  run {} of runbook {} at {}",
        a.run, a.runbook, a.opened_at
    );
    let _ = writeln!(out, "  service   {}", a.service);
    let _ = writeln!(out, "  CI        {}", a.ci.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "  owner     {}", a.owner.as_deref().unwrap_or("-"));
    for e in &a.events {
        let _ = writeln!(
            out,
            "  {} {} by {}{}{}",
            e.at,
            e.event,
            e.by,
            e.run.as_deref().map(|r| format!(" (run {r})")).unwrap_or_default(),
            e.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default()
        );
    }
    out
}

fn print(a: &CorrectiveAction, format: TextJson) -> Result<(), Failure> {
    match format {
        TextJson::Json => super::print_json(a),
        TextJson::Text => {
            print!("{}", show_text(a));
            Ok(())
        }
    }
}

pub fn actions(cli: &Cli, command: &ActionsCommand) -> CmdResult {
    let loaded = load_for_recorded_run(&cli.config)?;
    let store = super::run::open_store(loaded.config())?;
    match command {
        ActionsCommand::List { open, service, format } => {
            let list = store
                .actions(&ActionFilter {
                    open_only: *open,
                    service: service.clone(),
                    ..Default::default()
                })
                .map_err(store_err)?;
            match format {
                TextJson::Json => super::print_json(&list)?,
                TextJson::Text => print!("{}", list_text(&list)),
            }
        }
        ActionsCommand::Show { id, format } => {
            let Some(a) = store.action(id).map_err(store_err)? else {
                return Err(unknown_action(&store, id));
            };
            print(&a, *format)?;
        }
        ActionsCommand::Close { id, note, format } => {
            if note.trim().is_empty() {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "closing an action needs a note (--note TEXT): what was fixed, or why it is accepted"
                )));
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Other(e.into()))?;
            let by = drover_plugin_api::current_user();
            match rt.block_on(store.close_action(id, &by, note)).map_err(store_err)? {
                Ok(a) => {
                    rt.block_on(store.sync()).map_err(store_err)?;
                    print(&a, *format)?;
                }
                Err(CloseRefusal::NotFound) => {
                    return Err(unknown_action(&store, id));
                }
                Err(CloseRefusal::AlreadyClosed(a)) => {
                    let c = a.closed.as_ref();
                    eprintln!(
                        "refused: {id} is closed already (by {} at {})",
                        c.map_or("?", |c| c.by.as_str()),
                        c.map_or("?", |c| c.at.as_str())
                    );
                    return Err(Failure::Reported(Exit::Refused));
                }
            }
        }
    }
    Ok(Exit::Passed)
}

/// An unknown action id, with the closest known one.
fn unknown_action(store: &drover_engine::Store, id: &str) -> Failure {
    let known: Vec<String> = store
        .actions(&ActionFilter::default())
        .map(|l| l.into_iter().map(|a| a.id).collect())
        .unwrap_or_default();
    super::unknown("corrective action", id, known.iter().map(String::as_str))
}
