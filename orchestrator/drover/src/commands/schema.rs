//! `drover schema`, `drover completions`, `drover man`.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, SchemaKind};
use crate::{CmdResult, Exit};

pub fn run(kind: Option<SchemaKind>, out_dir: Option<&Path>) -> CmdResult {
    let all = drover_model::schemas();
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir)?;
        for k in ["config", "cmdb", "runbook"] {
            let path = dir.join(format!("{k}.schema.json"));
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&all[k]).map_err(anyhow::Error::from)? + "\n",
            )?;
            println!("wrote {}", path.display());
        }
        return Ok(Exit::Passed);
    }
    let value = match kind {
        None => all,
        Some(SchemaKind::Config) => all["config"].clone(),
        Some(SchemaKind::Cmdb) => all["cmdb"].clone(),
        Some(SchemaKind::Runbook) => all["runbook"].clone(),
    };
    super::print_json(&value)?;
    Ok(Exit::Passed)
}

pub fn completions(shell: clap_complete::Shell) -> CmdResult {
    clap_complete::generate(shell, &mut Cli::command(), "drover", &mut std::io::stdout());
    Ok(Exit::Passed)
}

pub fn man() -> CmdResult {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(Exit::Passed)
}
