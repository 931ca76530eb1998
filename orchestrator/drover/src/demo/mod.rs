//! `drover demo`: builds a local two-site lab ([`lab`]), runs a realistic drill on it
//! end to end with the normal run progress, prints RTO and RPO achieved against their
//! targets, writes the HTML continuity report and the evidence bundle into a folder the
//! user keeps, and removes the lab: nothing keeps running, no temporary folder stays
//! (also on Ctrl-C and on failure). With `--serve`, the lab and the daemon stay up,
//! dashboard on loopback, until Ctrl-C.
//!
//! The drill is `payments-demo` ([`lab::files::runbook`]): preflight (replication lag gate,
//! backups verified by SHA-256 and replicated, a restore test of the newest real
//! `pg_dump`), a heartbeat on east, fence east, promote west, the payments workloads
//! scaled up in west in CMDB dependency order, verification over HTTP (the
//! application's health endpoint, `drover::demolab`'s `app`) and SQL, and the cleanup.

use drover::demolab as lab;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use drover_engine::evidence::{Signer, export_bundle};
use drover_engine::view::RunView;
use drover_model::RunMode;

use crate::cli::{Cli, Command, TextJson};
use crate::commands::records::build_report;
use crate::commands::run::{Flags, open_store};
use crate::commands::runs::state_of;
use crate::{CmdResult, Exit, Failure};

use lab::LabFailure;

/// Ctrl-C and SIGTERM set `stop` (the run itself and the daemon watch them too).
fn watch_signals(rt: &tokio::runtime::Runtime, stop: Arc<AtomicBool>) {
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::SeqCst);
        }
    });
}

fn secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        drover_model::Dur(std::time::Duration::from_secs(s.round() as u64)).to_string()
    }
}

/// `RTO achieved 8.1s, target 2m: met`.
fn figure(name: &str, f: &drover_engine::view::Figure) -> String {
    match (f.achieved_s, f.target_s) {
        (Some(a), Some(t)) => format!(
            "{name} achieved {}, target {}: {}",
            secs(a),
            secs(t),
            if a <= t { "met" } else { "MISSED" }
        ),
        (Some(a), None) => format!("{name} achieved {} (no target)", secs(a)),
        (None, Some(t)) => format!("{name} not measured (target {})", secs(t)),
        (None, None) => format!("{name} not measured"),
    }
}

pub fn run(cli: &Cli, out: &Path, serve: bool) -> CmdResult {
    let started = std::time::Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))?;
    // A current-thread runtime runs its tasks only inside `block_on`: drive it from a
    // thread of its own for the whole demo.
    let (quit_tx, quit_rx) = tokio::sync::oneshot::channel::<()>();
    watch_signals(&signals, stop.clone());
    let signal_thread = std::thread::spawn(move || {
        let _ = signals.block_on(quit_rx);
    });
    let result = demo(cli, out, serve, &stop, started);
    let _ = quit_tx.send(());
    let _ = signal_thread.join();
    result
}

fn demo(cli: &Cli, out: &Path, serve: bool, stop: &AtomicBool, started: std::time::Instant) -> CmdResult {
    eprintln!("drover demo: building a two-site lab (east: Frankfurt, west: Dublin) on this machine");
    let say = |s: &str| eprintln!("  lab: {s}");
    let lab = match lab::build(stop, &say) {
        Ok(lab) => lab,
        Err(LabFailure::Missing(m)) => {
            eprintln!(
                "error: drover demo needs the PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup, \
                 postgres, psql, pg_dump, pg_restore) and nothing else.\n  {m}\n  \
                 Install them, e.g. `sudo apt-get install postgresql` (Debian, Ubuntu), \
                 `sudo dnf install postgresql-server` (Fedora), `brew install postgresql@15` (macOS), \
                 or point DROVER_PG_BIN at the folder that holds them."
            );
            return Err(Failure::Reported(Exit::BadInput));
        }
        Err(LabFailure::Interrupted) => {
            eprintln!("interrupted: the lab was removed; nothing is left running");
            return Err(Failure::Reported(Exit::Interrupted));
        }
        Err(LabFailure::Other(e)) => {
            return Err(Failure::Other(e.context("cannot build the demo lab (it was removed)")));
        }
    };
    let folders = lab.folders();
    eprintln!(
        "  lab: ready in {} (folders {}; all removed at the end)",
        secs(started.elapsed().as_secs_f64()),
        folders
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let result = drill(cli, &lab, out, serve, stop);
    drop(lab);
    let left: Vec<_> = folders.iter().filter(|p| p.exists()).collect();
    if left.is_empty() {
        eprintln!(
            "lab removed: its servers are stopped and its folders deleted ({} in all)",
            secs(started.elapsed().as_secs_f64())
        );
    } else {
        eprintln!("warning: could not remove {left:?}");
    }
    result
}

/// The demo's own command line: the same options, the lab's config.
fn lab_cli(cli: &Cli, lab: &lab::Lab) -> Cli {
    Cli {
        config: lab.config(),
        verbose: cli.verbose,
        log_format: cli.log_format,
        command: Command::Demo {
            out: PathBuf::new(),
            serve: false,
        },
    }
}

fn drill(cli: &Cli, lab: &lab::Lab, out: &Path, serve: bool, stop: &AtomicBool) -> CmdResult {
    let cli = lab_cli(cli, lab);
    if stop.load(Ordering::SeqCst) {
        eprintln!("interrupted before the drill started");
        return Ok(Exit::Interrupted);
    }
    let exit = match crate::commands::run::start(
        &cli,
        "payments-demo",
        RunMode::Drill,
        Flags {
            yes: true,
            reason: Some("drover demo: a drill on the local two-site lab".into()),
            ..Default::default()
        },
        TextJson::Text,
    ) {
        Ok(e) | Err(Failure::Reported(e)) => e,
        Err(e) => return Err(e),
    };
    let loaded = crate::workspace::load_for_recorded_run(&cli.config)?;
    let config = loaded.config().clone();
    let store = open_store(&config)?;
    let Some(row) = store.runs(1).map_err(|e| Failure::Other(e.into()))?.into_iter().next() else {
        return Ok(exit);
    };
    let state = state_of(&store, &row.id)?;
    let view = RunView::new(&state, false);
    println!();
    println!("{}", figure("RTO", &view.rto));
    println!("{}", figure("RPO", &view.rpo));
    if let Some(s) = view
        .steps
        .iter()
        .find(|s| s.uses.as_deref() == Some("postgres.promote") && s.rpo_s.is_some())
    {
        println!(
            "  data-loss window at cutover (fence instant minus the newest heartbeat on west): {}",
            secs(s.rpo_s.unwrap_or_default())
        );
    }
    if state.finished.is_some() {
        std::fs::create_dir_all(out)
            .map_err(|e| Failure::Other(anyhow::anyhow!("cannot create {}: {e}", out.display())))?;
        let report = build_report(&store, &row.id)?;
        let html = out.join(format!("{}.html", row.id));
        std::fs::write(&html, report.html())
            .map_err(|e| Failure::Other(anyhow::anyhow!("cannot write {}: {e}", html.display())))?;
        let signer =
            Signer::load_or_create(&config.evidence.signing_key).map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
        let records = store.records(&row.id).map_err(|e| Failure::Other(e.into()))?;
        let bundle = export_bundle(&row.id, &records, &report.json(), &signer)
            .map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
        let evidence = out.join(format!("{}.evidence.json", row.id));
        std::fs::write(&evidence, bundle)
            .map_err(|e| Failure::Other(anyhow::anyhow!("cannot write {}: {e}", evidence.display())))?;
        println!("report:   {}", html.display());
        println!(
            "evidence: {}  (check it offline: drover evidence verify {})",
            evidence.display(),
            evidence.display()
        );
    }
    if serve && !stop.load(Ordering::SeqCst) {
        println!();
        println!(
            "dashboard: http://{}/  (log in with token {})",
            lab.api_listen, lab.token
        );
        println!("the lab and the daemon run until Ctrl-C");
        crate::serve::run(&cli, false)?;
    }
    Ok(exit)
}
