//! The command line: every subcommand and option, with the help text users read.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// drover: service continuity and disaster recovery orchestrator.
///
/// Reads declarative runbooks and the CMDB dependency graph, orders recovery by that
/// graph, measures the RTO and RPO achieved against their targets, and records every
/// drill or failover as a change record with a continuity report and signed evidence.
///
/// Exit codes: 0 passed, 1 failed or stuck, 2 invalid input or usage, 3 targets missed.
#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The configuration file (it names the CMDB and the runbooks folder).
    #[arg(
        long,
        global = true,
        env = "DROVER_CONFIG",
        default_value = "config/drover.yaml"
    )]
    pub config: PathBuf,

    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the config, the CMDB and every runbook; print all errors at once.
    ///
    /// Errors are printed as PATH:LINE:COL: error: MESSAGE, followed by the source line.
    /// Exit code 2 when anything is wrong.
    Validate {
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// Show what a runbook would do, without side effects.
    ///
    /// Prints the waves of steps that may run in parallel (ordered by explicit `needs`
    /// and by the CMDB dependency graph), the critical path, the CIs touched, the
    /// targets, the preflight and verify checks and the rollback.
    Plan {
        /// A runbook name (from the runbooks folder) or a path to a runbook file.
        runbook: String,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
    },
    /// Query the CMDB.
    Cmdb {
        #[command(subcommand)]
        command: CmdbCommand,
    },
    /// Print the JSON Schema of the config, CMDB and runbook files.
    ///
    /// Use with yaml-language-server, e.g. `drover schema runbook > runbook.schema.json`
    /// and `# yaml-language-server: $schema=runbook.schema.json` at the top of a runbook.
    Schema {
        /// Which file kind; all three (as one object) when left out.
        #[arg(value_enum)]
        kind: Option<SchemaKind>,
        /// Write config.schema.json, cmdb.schema.json and runbook.schema.json into this folder.
        #[arg(long, value_name = "DIR", conflicts_with = "kind")]
        out_dir: Option<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    Man,
}

#[derive(Debug, Subcommand)]
pub enum CmdbCommand {
    /// Everything that depends on CI, transitively: the blast radius of losing it.
    Impact {
        /// A CI id.
        ci: String,
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// The whole dependency graph (edges point from a CI to what it depends on).
    Graph {
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextJson {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Dot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    Config,
    Cmdb,
    Runbook,
}
