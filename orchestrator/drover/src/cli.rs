//! The command line: every subcommand and option, with the help text users read.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// drover: service continuity and disaster recovery orchestrator.
///
/// Reads declarative runbooks and the CMDB dependency graph, orders recovery by that
/// graph, measures the RTO and RPO achieved against their targets, and records every
/// drill or failover as a change record with a continuity report and signed evidence.
///
/// Exit codes: 0 passed, 1 failed (and rolled back), 2 invalid input or usage, 3 targets
/// missed, 4 stuck (an undo failed: operator required), 5 refused (stopped before any
/// change: preflight, a held service, anti-flap), 6 interrupted or internal error.
#[derive(Debug, Parser)]
#[command(name = "drover", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// The configuration file (it names the CMDB and the runbooks folder).
    #[arg(long, global = true, env = "DROVER_CONFIG", default_value = "config/drover.yaml")]
    pub config: PathBuf,

    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log lines for people (`human`) or one JSON object per line (`json`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

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
        /// Output format.
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
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
    },
    /// Rehearse a runbook: run it for real, then run its rollback steps to clean up.
    ///
    /// Preflight checks gate everything; steps run in dependency order with as much
    /// parallelism as the plan allows; verify checks stop the RTO clock; the rollback
    /// steps always run at the end (once). Ctrl-C stops starting steps and lets the ones
    /// in flight finish (twice: cancels them); the run can then be resumed.
    Drill {
        /// A runbook name (from the runbooks folder) or a path to a runbook file.
        runbook: String,
        /// Approve every `manual.approve` gate (and skip confirmations).
        #[arg(long)]
        yes: bool,
        /// Why this run: recorded as the change record's justification.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// Fail a service over for real (shows the plan and asks for confirmation first).
    ///
    /// Without --yes, drover asks on the terminal and refuses when stdin is not one.
    Failover {
        /// A runbook name (from the runbooks folder) or a path to a runbook file.
        runbook: String,
        /// Confirm without asking, and approve every `manual.approve` gate.
        #[arg(long)]
        yes: bool,
        /// When the outage was declared (RFC 3339, e.g. 2026-11-27T03:12:00Z): the RTO
        /// counts from there, so detection time counts too.
        #[arg(long, value_name = "TIME")]
        declared_at: Option<String>,
        /// Go on even when the standby lags more than the runbook's lag gate allows (recorded).
        #[arg(long)]
        force_lag: bool,
        /// Acknowledge a recent failover of the same service (anti-flap window).
        #[arg(long)]
        ack: bool,
        /// Why this run: recorded as the change record's justification.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// Run only the preflight and verify checks of a runbook: nothing changes.
    Verify {
        /// A runbook name (from the runbooks folder) or a path to a runbook file.
        runbook: String,
        /// Why this run: recorded as the change record's justification.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// Continue an interrupted run from its journal, or retry the undo of a stuck one.
    ///
    /// Finished steps are not run again; a step that was in flight runs again (actions
    /// are idempotent), or is undone when the run halts. A stuck run retries the undo
    /// that failed. A finished run whose end was cut short by a crash is settled
    /// (sealed, its service freed).
    Resume {
        /// A run id (or a unique prefix of one).
        run: String,
        /// Approve the manual gates ahead.
        #[arg(long)]
        yes: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// The daemon: scheduled drills, the HTTPS API with roles, the dashboard, metrics.
    ///
    /// Listens on `api.listen` (TLS from `api.tls`; a non-loopback address needs TLS),
    /// runs the `schedules`, resumes the runs it finds interrupted (`daemon.on_start`),
    /// releases `manual.approve` gates from the API, reloads its files on SIGHUP (an
    /// invalid set is refused and the old one kept) and on SIGTERM stops accepting, lets
    /// steps in flight reach a journaled point (`daemon.shutdown_grace`) and exits 0.
    /// Prints `listening on URL` on stdout once it serves.
    Serve {
        /// Print the route table (method, path, role) as JSON and exit.
        #[arg(long, hide = true)]
        routes: bool,
    },
    /// Build a local two-site lab, run a drill on it end to end, remove the lab.
    ///
    /// East and west each get a PostgreSQL (east primary, west streaming standby), an
    /// S3 endpoint seeded with pg_dump backups and a Kubernetes API simulator with the
    /// payments workloads; a CMDB and a runbook for them. The drill: preflight (lag gate,
    /// backups verified by SHA-256, a restore test), fence east, promote west with a
    /// heartbeat RPO, scale the workloads in west in dependency order, verify over HTTP
    /// and SQL, clean up. Then RTO and RPO achieved against target, and the HTML report
    /// and evidence bundle in --out. Needs only the PostgreSQL server binaries and no
    /// network; leaves nothing running and no temporary folder, also on Ctrl-C.
    /// Exits with the drill's outcome (2 when PostgreSQL is not installed).
    Demo {
        /// Where the report and the evidence bundle go (kept; the lab is not).
        #[arg(long, default_value = "drover-demo")]
        out: PathBuf,
        /// Keep the lab and run the daemon with its dashboard on loopback until Ctrl-C.
        #[arg(long)]
        serve: bool,
    },
    /// An operator takes over a stuck run: records who and why, frees its service.
    ///
    /// A stuck run (an undo failed) keeps its service locked, and counts for anti-flap,
    /// until it is acknowledged here or resumed to an end. The acknowledgement is
    /// journaled (who, when, why) and the journal re-sealed. An interrupted run that
    /// will not be resumed can be abandoned the same way: it ends `stuck`, acknowledged.
    Ack {
        /// A run id (or a unique prefix of one).
        run: String,
        /// Why, and what the operator will do instead (recorded).
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// List and inspect runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The continuity report of a run: outcome, RTO/RPO against target, timeline,
    /// checks, issues found, evidence and sign-off fields.
    Report {
        /// A run id (or a unique prefix of one).
        run: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The ITIL change record of a run.
    Change {
        #[command(subcommand)]
        command: ChangeCommand,
    },
    /// RTO and RPO achieved against target across the runs of a service.
    Trend {
        /// The service (a CI id).
        service: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TrendFormat::Md)]
        format: TrendFormat,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The continuity programme: which tiered CIs are drilled, due, overdue, failing or
    /// not covered by any runbook.
    ///
    /// For every CMDB item with a tier (its own, or inherited from a CI that depends on
    /// it): the runbooks that recover it, its last drill and last passing drill (from the
    /// recorded runs; verify runs count as backup verification, not drills), the RTO and
    /// RPO achieved there, the date the next drill is due (`drill_every`) and a status:
    /// ok, due (within 14 days), overdue, never, failing (the last drill did not pass) or
    /// uncovered (no runbook; listed as a gap with its blast radius). A summary line per
    /// tier, and the open corrective actions per CI.
    Coverage {
        /// Output format.
        #[arg(long, value_enum, default_value_t = CoverageFormat::Text)]
        format: CoverageFormat,
        /// Judge as of this instant (RFC 3339, e.g. an audit date) instead of now; runs
        /// that ended later are left out.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Corrective actions: what runs that did not pass found wrong, followed up.
    ///
    /// A run that ends other than passed opens one action per finding (a failed step or
    /// check, a missed RTO or RPO target, a bad backup by its key, a stuck undo); a later
    /// passing run of the same runbook closes those it proves fixed.
    Actions {
        #[command(subcommand)]
        command: ActionsCommand,
    },
    /// Export and verify the signed, hash-chained evidence of runs.
    Evidence {
        #[command(subcommand)]
        command: EvidenceCommand,
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
        /// Output format.
        #[arg(long, value_enum, default_value_t = SchemaFormat::Json)]
        format: SchemaFormat,
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
pub enum RunsCommand {
    /// Runs, newest first.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One run: outcome, RTO/RPO against target, every step's timeline.
    Show {
        /// A run id (or a unique prefix of one).
        run: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChangeCommand {
    /// Show the change record (JSON uses the field names of ServiceNow's change_request).
    Show {
        /// A run id (or a unique prefix of one).
        run: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
}

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// Corrective actions, oldest first.
    List {
        /// Only the open ones.
        #[arg(long)]
        open: bool,
        /// Only those of this service (a run's service or the action's CI).
        #[arg(long, value_name = "S")]
        service: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// One corrective action with its history.
    Show {
        /// An action id, e.g. CA-2026-0001.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// Close an action by hand: who and why are recorded in its history.
    Close {
        /// An action id, e.g. CA-2026-0001.
        id: String,
        /// Why it is closed (what was fixed, or why it is accepted).
        #[arg(long, value_name = "TEXT")]
        note: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CoverageFormat {
    Text,
    Json,
    Html,
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Write one self-contained bundle file: records, signature, public key, report.
    Export {
        /// A run id (or a unique prefix of one).
        run: String,
        /// The bundle file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Check a run (from the state store) or a bundle file offline; names the first bad
    /// record. Every seal must be by a pinned key (`evidence.trusted_keys` in the
    /// config, or `--key`); without a pinned key the output says "not pinned". Exit 0
    /// intact, 1 tampered or sealed by a key that is not pinned.
    Verify {
        /// A run id (or a unique prefix of one), or the path of a bundle file.
        target: String,
        /// Accept only this key (SHA256:..., e.g. from a report you trust); repeat it to
        /// accept several. Replaces `evidence.trusted_keys` for this check.
        #[arg(long, value_name = "FINGERPRINT")]
        key: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// Upload the run's sealed bundle to the evidence archive (`evidence.archive`: an
    /// object store with Object Lock) under retention, and journal the upload. Runs do
    /// this themselves when they are sealed; this retries a failed upload. Exit 0
    /// archived (or already current), 1 the upload failed.
    Archive {
        /// A run id (or a unique prefix of one).
        run: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    #[value(alias = "markdown")]
    Md,
    Html,
    Json,
    Junit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrendFormat {
    #[value(alias = "markdown")]
    Md,
    Html,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CmdbCommand {
    /// Everything that depends on CI, transitively: the blast radius of losing it.
    Impact {
        /// A CI id.
        ci: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = TextJson::Text)]
        format: TextJson,
    },
    /// The whole dependency graph (edges point from a CI to what it depends on).
    Graph {
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
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

/// JSON Schema is JSON: the one format of `drover schema`, accepted for consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaFormat {
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    Config,
    Cmdb,
    Runbook,
}
