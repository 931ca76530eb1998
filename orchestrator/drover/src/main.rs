//! The `drover` binary: command line, tracing setup and the explicit plugin registry.

mod archive;
mod cli;
mod color;
mod commands;
mod demo;
mod progress;
mod serve;
mod workspace;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// How a command ended, as an exit code (see `drover --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Passed = 0,
    /// Failed, and rolled back.
    Failed = 1,
    BadInput = 2,
    TargetsMissed = 3,
    /// An undo failed: an operator is required.
    Stuck = 4,
    /// Stopped before any change (preflight, a held service lock, anti-flap).
    Refused = 5,
    /// Interrupted (Ctrl-C, a crash of a step driver) or an internal error: resumable.
    Interrupted = 6,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// A command's failure: already reported to the user (diagnostics), or an error to print.
#[derive(Debug)]
pub enum Failure {
    /// Printed already; exit with this code.
    Reported(Exit),
    /// Bad input or usage: printed as `error: ...`, exit 2.
    Usage(anyhow::Error),
    /// Anything else (a store that cannot be written, a fault of drover): printed as
    /// `error: ...`, exit 6.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.into())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Reported(code) => write!(f, "exit {}", *code as u8),
            Failure::Usage(e) | Failure::Other(e) => write!(f, "{e:#}"),
        }
    }
}

pub type CmdResult = Result<Exit, Failure>;

fn init_tracing(verbose: u8, format: cli::LogFormat, daemon: bool) {
    // The daemon logs what it does at info: that is its progress.
    let default = match (verbose, daemon) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The AWS SDK's trace lines print credential structs (the access key id): never
    // below debug for its crates, whatever RUST_LOG asks.
    for target in [
        "aws_config",
        "aws_credential_types",
        "aws_sdk_s3",
        "aws_smithy_runtime",
        "aws_sigv4",
    ] {
        if let Ok(d) = format!("{target}=debug").parse() {
            filter = filter.add_directive(d);
        }
    }
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color::enabled(color::Stream::Stderr))
        .with_target(false);
    match format {
        cli::LogFormat::Human => fmt.init(),
        cli::LogFormat::Json => fmt.json().with_current_span(true).with_span_list(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A reader that goes away (`drover runs list | head -1`) ends the command quietly,
    // with the shell's code for SIGPIPE, as other Unix tools do, instead of a panic on
    // the broken pipe. (SIGPIPE itself stays ignored: a closed socket is an error drover
    // handles, never a sudden death.)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    // rustls everywhere, with ring as its one crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_tracing(
        cli.verbose,
        cli.log_format,
        matches!(cli.command, Command::Serve { .. }),
    );
    let result = match &cli.command {
        Command::Validate { format } => commands::validate::run(&cli, *format),
        Command::Plan { runbook, format } => commands::plan::run(&cli, runbook, *format),
        Command::Cmdb { command } => commands::cmdb::run(&cli, command),
        Command::Drill {
            runbook,
            yes,
            reason,
            format,
        } => commands::run::start(
            &cli,
            runbook,
            drover_model::RunMode::Drill,
            commands::run::Flags {
                yes: *yes,
                reason: reason.clone(),
                ..Default::default()
            },
            *format,
        ),
        Command::Failover {
            runbook,
            yes,
            declared_at,
            force_lag,
            ack,
            reason,
            format,
        } => commands::run::start(
            &cli,
            runbook,
            drover_model::RunMode::Failover,
            commands::run::Flags {
                yes: *yes,
                declared_at: declared_at.clone(),
                force_lag: *force_lag,
                ack: *ack,
                reason: reason.clone(),
            },
            *format,
        ),
        Command::Verify {
            runbook,
            reason,
            format,
        } => commands::run::start(
            &cli,
            runbook,
            drover_model::RunMode::Verify,
            commands::run::Flags {
                reason: reason.clone(),
                ..Default::default()
            },
            *format,
        ),
        Command::Resume { run, yes, format } => commands::run::resume(&cli, run, *yes, *format),
        Command::Ack { run, reason, format } => commands::run::ack(&cli, run, reason, *format),
        Command::Serve { routes } => serve::run(&cli, *routes),
        Command::Demo { out, serve } => demo::run(&cli, out, *serve),
        Command::Runs { command } => commands::runs::run(&cli, command),
        Command::Report { run, format, output } => commands::records::report(&cli, run, *format, output.as_deref()),
        Command::Change { command } => commands::records::change(&cli, command),
        Command::Trend {
            service,
            format,
            output,
        } => commands::records::trend(&cli, service, *format, output.as_deref()),
        Command::Evidence { command } => commands::records::evidence(&cli, command),
        Command::Coverage { format, at, output } => {
            commands::continuity::coverage(&cli, *format, at.as_deref(), output.as_deref())
        }
        Command::Actions { command } => commands::continuity::actions(&cli, command),
        Command::Schema { kind, out_dir, .. } => commands::schema::run(*kind, out_dir.as_deref()),
        Command::Completions { shell } => commands::schema::completions(*shell),
        Command::Man => commands::schema::man(),
    };
    let error = || color::paint("error:", color::Tone::Bad, color::enabled(color::Stream::Stderr));
    match result {
        Ok(exit) | Err(Failure::Reported(exit)) => exit.into(),
        Err(Failure::Usage(e)) => {
            eprintln!("{} {e:#}", error());
            Exit::BadInput.into()
        }
        Err(Failure::Other(e)) => {
            eprintln!("{} {e:#}", error());
            Exit::Interrupted.into()
        }
    }
}
