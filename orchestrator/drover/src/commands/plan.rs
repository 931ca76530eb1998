//! `drover plan RUNBOOK`: the waves, the critical path and the CIs touched; no side effects.

use std::fmt::Write as _;

use drover_engine::Plan;

use crate::cli::{Cli, PlanFormat};
use crate::workspace::load_runbook;
use crate::{CmdResult, Exit, Failure};

pub fn run(cli: &Cli, arg: &str, format: PlanFormat) -> CmdResult {
    let (loaded, rb) = load_runbook(&cli.config, arg)?;
    let graph = loaded.ci_graph();
    let plan = drover_engine::plan(&rb, loaded.cmdb(), &graph).map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
    match format {
        PlanFormat::Json => super::print_json(&plan)?,
        PlanFormat::Text => print!("{}", text(&plan, &rb)),
        PlanFormat::Dot => print!("{}", dot(&plan)),
    }
    Ok(Exit::Passed)
}

fn secs(s: f64) -> String {
    drover_model::Dur(std::time::Duration::from_secs_f64(s)).to_string()
}

/// The plan for people.
pub fn text(plan: &Plan, rb: &drover_model::Runbook) -> String {
    let mut out = String::new();
    let route = match (&rb.from, &rb.to) {
        (Some(f), Some(t)) => format!(", {f} -> {t}"),
        _ => String::new(),
    };
    let _ = writeln!(out, "Runbook {} (service {}{route})", plan.runbook, plan.service);
    if let Some(d) = &rb.description {
        let _ = writeln!(out, "  {}", d.trim());
    }
    let target = |t: Option<f64>| t.map_or("none".to_owned(), secs);
    let _ = writeln!(
        out,
        "Targets: RTO {}, RPO {}",
        target(plan.targets.rto_s),
        target(plan.targets.rpo_s)
    );
    let _ = writeln!(out, "CIs touched ({}): {}", plan.cis.len(), plan.cis.join(", "));
    if !plan.preflight.is_empty() {
        let _ = writeln!(out, "\nPreflight (all must pass before anything changes):");
        for c in &plan.preflight {
            let _ = writeln!(out, "  - {} [{}]", c.name, c.uses);
        }
    }
    let _ = writeln!(out, "\nStages (steps in a stage may run in parallel):");
    let width = plan.steps.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let uses_width = plan.steps.iter().map(|s| s.uses.len()).max().unwrap_or(0);
    for (i, stage) in plan.stages.iter().enumerate() {
        for (j, id) in stage.iter().enumerate() {
            let s = plan.steps.iter().find(|s| &s.id == id).expect("step of the plan");
            let num = if j == 0 {
                format!("{:>3}.", i + 1)
            } else {
                "    ".to_owned()
            };
            let mut line = format!("{num} {:<width$}  {:<uses_width$}", s.id, s.uses);
            if let Some(ci) = &s.ci {
                let _ = write!(line, "  ci={ci}");
            }
            if !s.needs.is_empty() {
                let _ = write!(line, "  needs {}", s.needs.join(", "));
            }
            if !s.after.is_empty() {
                let _ = write!(line, "  after {} (CMDB)", s.after.join(", "));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    if plan.steps.is_empty() {
        let _ = writeln!(out, "  (no steps)");
    }
    let est = plan
        .critical_path_estimate_s
        .map(|s| format!(", about {}", secs(s)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\nCritical path ({} step{}{est}): {}",
        plan.critical_path.len(),
        if plan.critical_path.len() == 1 { "" } else { "s" },
        plan.critical_path.join(" -> ")
    );
    if !plan.verify.is_empty() {
        let _ = writeln!(out, "\nVerify (the RTO clock stops when all pass):");
        for c in &plan.verify {
            let within = c.within_s.map(|w| format!(" within {}", secs(w))).unwrap_or_default();
            let _ = writeln!(out, "  - {} [{}]{within}", c.name, c.uses);
        }
    }
    if !plan.rollback.is_empty() {
        let _ = writeln!(out, "\nRollback (on failure, and at the end of a drill):");
        for s in &plan.rollback {
            let _ = writeln!(out, "  - {} [{}]", s.id, s.uses);
        }
    }
    out
}

fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The plan as a Graphviz digraph: solid edges are `needs`, dashed ones the CMDB order,
/// bold red nodes and edges the critical path.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", q(&plan.runbook));
    let _ = writeln!(out, "  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];");
    let on_path = |id: &str| plan.critical_path.iter().any(|c| c == id);
    let consecutive = |a: &str, b: &str| plan.critical_path.windows(2).any(|w| w[0] == a && w[1] == b);
    for (i, stage) in plan.stages.iter().enumerate() {
        let _ = writeln!(out, "  subgraph {} {{\n    rank=same;", q(&format!("stage{}", i + 1)));
        for id in stage {
            let s = plan.steps.iter().find(|s| &s.id == id).expect("step of the plan");
            let label = match &s.ci {
                Some(ci) => format!("{}\\n{}\\nci: {}", s.id, s.uses, ci),
                None => format!("{}\\n{}", s.id, s.uses),
            };
            let style = if on_path(id) { ", color=red, penwidth=2" } else { "" };
            let _ = writeln!(out, "    {} [label=\"{}\"{style}];", q(id), label.replace('"', "\\\""));
        }
        let _ = writeln!(out, "  }}");
    }
    for s in &plan.steps {
        for (list, dashed) in [(&s.needs, false), (&s.after, true)] {
            for from in list {
                let mut attrs = Vec::new();
                if dashed {
                    attrs.push("style=dashed".to_owned());
                }
                if consecutive(from, &s.id) {
                    attrs.push("color=red, penwidth=2".to_owned());
                }
                let attrs = if attrs.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", attrs.join(", "))
                };
                let _ = writeln!(out, "  {} -> {}{attrs};", q(from), q(&s.id));
            }
        }
    }
    let _ = writeln!(out, "}}");
    out
}
