//! `drover cmdb impact CI` and `drover cmdb graph`.

use std::fmt::Write as _;

use serde_json::json;

use crate::cli::{Cli, CmdbCommand, GraphFormat, TextJson};
use crate::workspace::load;
use crate::{CmdResult, Exit};

pub fn run(cli: &Cli, command: &CmdbCommand) -> CmdResult {
    let loaded = load(&cli.config, &[])?;
    let cmdb = loaded.cmdb();
    let graph = loaded.ci_graph();
    match command {
        CmdbCommand::Impact { ci, format } => {
            if cmdb.item(ci).is_none() {
                return Err(super::unknown("CI", ci, cmdb.items.iter().map(|c| c.id.as_str())));
            }
            let by_id = cmdb.by_id();
            let impacted: Vec<_> = graph
                .dependents(ci)
                .into_iter()
                .map(|(id, depth)| {
                    let item = by_id[id];
                    let t = cmdb.targets(item);
                    json!({
                        "id": id,
                        "kind": item.kind,
                        "tier": item.tier.as_ref().map(|t| t.as_str()),
                        "owner": item.owner,
                        "depth": depth,
                        "rto_s": t.rto.map(|d| d.as_secs_f64()),
                        "rpo_s": t.rpo.map(|d| d.as_secs_f64()),
                    })
                })
                .collect();
            match format {
                TextJson::Json => super::print_json(&json!({"ci": ci, "impacted": impacted}))?,
                TextJson::Text => {
                    let mut out = String::new();
                    if impacted.is_empty() {
                        let _ = writeln!(out, "Nothing depends on {ci}.");
                    } else {
                        let _ = writeln!(
                            out,
                            "Losing {ci} affects {} CI{}:",
                            impacted.len(),
                            if impacted.len() == 1 { "" } else { "s" }
                        );
                        let w = impacted
                            .iter()
                            .map(|i| i["id"].as_str().map_or(0, str::len))
                            .max()
                            .unwrap_or(0);
                        for i in &impacted {
                            let depth = i["depth"].as_u64().unwrap_or(0) as usize;
                            let tier = i["tier"].as_str().unwrap_or("-");
                            let rto = i["rto_s"].as_f64().map(fmt_secs).unwrap_or_else(|| "-".into());
                            let indent = "  ".repeat(depth);
                            let _ = writeln!(
                                out,
                                "{indent}{:<width$}  {:<18} tier {:<8} RTO {rto}",
                                i["id"].as_str().unwrap_or(""),
                                i["kind"].as_str().unwrap_or(""),
                                tier,
                                width = w + 2 * (4usize.saturating_sub(depth))
                            );
                        }
                    }
                    print!("{out}");
                }
            }
        }
        CmdbCommand::Graph { format } => match format {
            GraphFormat::Json => {
                let nodes: Vec<_> = cmdb
                    .items
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "kind": c.kind, "tier": c.tier, "owner": c.owner,
                               "runs_on": c.runs_on, "instances": c.instances})
                    })
                    .collect();
                let edges: Vec<_> = graph
                    .edges()
                    .into_iter()
                    .map(|(a, b)| json!({"from": a, "to": b}))
                    .collect();
                super::print_json(&json!({"nodes": nodes, "edges": edges}))?;
            }
            GraphFormat::Dot => {
                let mut out =
                    String::from("digraph cmdb {\n  rankdir=BT;\n  node [shape=box, fontname=\"Helvetica\"];\n");
                for c in &cmdb.items {
                    let tier = c.tier.as_ref().map(|t| format!("\\n{t}")).unwrap_or_default();
                    let _ = writeln!(out, "  \"{}\" [label=\"{}\\n({}){tier}\"];", c.id, c.id, c.kind);
                }
                for (a, b) in graph.edges() {
                    let _ = writeln!(out, "  \"{a}\" -> \"{b}\";");
                }
                out.push_str("}\n");
                print!("{out}");
            }
        },
    }
    Ok(Exit::Passed)
}

fn fmt_secs(s: f64) -> String {
    drover_model::Dur(std::time::Duration::from_secs_f64(s)).to_string()
}
