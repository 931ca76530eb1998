//! `drover validate`: every file, every check, every error at once.

use serde_json::json;

use crate::cli::{Cli, TextJson};
use crate::workspace::{load_all, report};
use crate::{CmdResult, Exit};

pub fn run(cli: &Cli, format: TextJson) -> CmdResult {
    let (ws, _) = load_all(&cli.config, &[]);
    let ok = ws.diagnostics.is_empty();
    match format {
        TextJson::Json => {
            let errors: Vec<_> = ws
                .diagnostics
                .iter()
                .map(|d| json!({"file": d.file, "line": d.loc.line, "col": d.loc.col, "message": d.message}))
                .collect();
            super::print_json(&json!({
                "ok": ok,
                "config": ws.config_path,
                "cmdb": ws.cmdb_path,
                "runbooks": ws.runbooks.iter().map(|r| &r.path).collect::<Vec<_>>(),
                "errors": errors,
            }))?;
        }
        TextJson::Text if ok => {
            let cis = ws.cmdb.as_ref().map_or(0, |c| c.items.len());
            println!(
                "ok: {} and {} ({cis} CIs), {} runbook{}",
                ws.config_path.display(),
                ws.cmdb_path.as_ref().map_or("?".into(), |p| p.display().to_string()),
                ws.runbooks.len(),
                if ws.runbooks.len() == 1 { "" } else { "s" }
            );
        }
        TextJson::Text => report(&ws, &ws.diagnostics),
    }
    Ok(if ok { Exit::Passed } else { Exit::BadInput })
}
