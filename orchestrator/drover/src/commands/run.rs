//! `drover drill`, `failover`, `verify` and `resume`: start or continue a run, show its
//! progress live, print its summary, exit with its outcome.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use drover_engine::evidence::Signer;
use drover_engine::journal::RunOptions;
use drover_engine::view::RunView;
use drover_engine::{Engine, EngineError, RunState, StartRequest, Store};
use drover_model::{Config, RunMode};
use drover_plugin_api::{CancellationToken, Registry};

use crate::cli::{Cli, TextJson};
use crate::progress::Ui;
use crate::workspace::{load_for_recorded_run, load_runbook};
use crate::{CmdResult, Exit, Failure};

/// Options of `drill` / `failover` / `verify`.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub yes: bool,
    pub declared_at: Option<String>,
    pub force_lag: bool,
    pub ack: bool,
    pub reason: Option<String>,
}

/// Opens the configured state store.
pub fn open_store(config: &Config) -> Result<Store, Failure> {
    let password = match &config.state.password {
        Some(secret) => Some(
            secret
                .resolve()
                .map_err(|e| Failure::Usage(anyhow::anyhow!("state.password: {e}")))?,
        ),
        None => None,
    };
    Store::open_url_with_password(&config.state.url, password.as_ref().map(|p| p.expose()))
        .map_err(|e| Failure::Other(e.into()))
}

fn user() -> String {
    drover_plugin_api::current_user()
}

/// Ctrl-C once: stop starting steps. Twice (or SIGTERM): cancel the ones in flight.
fn watch_signals(stop: CancellationToken, abort: CancellationToken, ui: Arc<Ui>) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut presses = 0;
        loop {
            let sigterm = async {
                match &mut term {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    if r.is_err() { return; }
                    presses += 1;
                    if presses == 1 {
                        ui.line("stopping: no new steps start; steps in flight go on to their end (Ctrl-C again cancels them)");
                        stop.cancel();
                    } else {
                        ui.line("cancelling the steps in flight");
                        abort.cancel();
                    }
                }
                () = sigterm => {
                    ui.line("terminated: cancelling the steps in flight");
                    stop.cancel();
                    abort.cancel();
                }
            }
        }
    });
}

fn engine(config: &Config, registry: Registry, ui: Arc<Ui>) -> Result<Engine, Failure> {
    Ok(Engine {
        store: open_store(config)?,
        registry: Arc::new(registry),
        config: Arc::new(config.clone()),
        observer: ui.clone(),
        approver: ui,
        retry_backoff: config.engine.retry_backoff.0,
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
        signer: Some(Arc::new(
            Signer::load_or_create(&config.evidence.signing_key).map_err(|e| Failure::Other(anyhow::anyhow!(e)))?,
        )),
        secrets: Arc::new(secret_values(config)),
    })
}

/// The values of the configuration's secrets that can be read here, so that the
/// journal can keep them out (a command may print one). Also those of secret files
/// refused for being open to other users: a step may print them all the same.
pub fn secret_values(config: &Config) -> Vec<String> {
    config
        .secret_refs()
        .into_iter()
        .filter_map(|s| s.value_to_redact())
        .map(|v| v.expose().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))
}

/// Asks the operator to confirm a failover; refuses when stdin is not a terminal.
fn confirm_failover(plan_text: &str, service: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "refusing to fail over without --yes: stdin is not a terminal to confirm on"
        )));
    }
    eprintln!("{plan_text}");
    eprint!("This is a real failover of `{service}`. Type the service name to go on: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() == service {
        Ok(())
    } else {
        eprintln!("not confirmed: nothing was changed");
        Err(Failure::Reported(Exit::Refused))
    }
}

/// The CLI writes as no leader, so it is not fenced: while a cluster of daemons leads
/// the store (a live lease), starting or resuming a run here is refused.
fn no_cluster_leader(store: &Store) -> Result<(), EngineError> {
    if store.backend() != drover_engine::store::Backend::Postgres {
        return Ok(());
    }
    match store.lease(crate::serve::ha::LEASE) {
        Ok(Some(l)) if l.live() => {
            let address = store
                .members()
                .ok()
                .and_then(|m| m.into_iter().find(|m| Some(&m.node) == l.holder.as_ref()))
                .and_then(|m| m.address)
                .map(|a| format!(" at {a}"))
                .unwrap_or_default();
            Err(EngineError::Refused(format!(
                "node {} leads this state store (epoch {}, lease until {}): start and resume runs through its API{address}",
                l.holder.unwrap_or_default(),
                l.epoch,
                l.expires_at
            )))
        }
        _ => Ok(()),
    }
}

/// An engine error as the command's failure. A refusal before the run exists (a held
/// service, anti-flap) exits 5 and, for `--format json`, still prints an object with
/// `"outcome": "refused"`, so automation can tell "nothing happened".
fn engine_error(e: EngineError, format: TextJson) -> Failure {
    match e {
        EngineError::Refused(m) => {
            eprintln!("refused: {m}");
            if format == TextJson::Json {
                let _ = super::print_json(&serde_json::json!({
                    "id": null,
                    "outcome": "refused",
                    "state": "refused",
                    "reason": m,
                }));
            }
            Failure::Reported(Exit::Refused)
        }
        EngineError::Invalid(m) => Failure::Usage(anyhow::anyhow!(m)),
        EngineError::Store(e) => Failure::Other(e.into()),
        EngineError::Internal(m) => Failure::Other(anyhow::anyhow!(m)),
    }
}

pub fn start(cli: &Cli, arg: &str, mode: RunMode, flags: Flags, format: TextJson) -> CmdResult {
    let (loaded, rb) = load_runbook(&cli.config, arg)?;
    let config = loaded.config().clone();
    let cmdb = loaded.cmdb().clone();
    let path = loaded
        .ws
        .runbooks
        .iter()
        .find(|r| r.runbook.as_ref().is_some_and(|x| x.name.value == rb.name.value))
        .map(|r| r.path.clone())
        .unwrap_or_default();
    let source = loaded.ws.source(&path).unwrap_or_default().to_owned();
    let declared_at = match &flags.declared_at {
        Some(t) => Some(humantime::parse_rfc3339_weak(t).map_err(|e| {
            Failure::Usage(anyhow::anyhow!(
                "--declared-at `{t}`: {e} (write e.g. 2026-11-27T03:12:00Z)"
            ))
        })?),
        None => None,
    };
    let graph = loaded.ci_graph();
    let plan = drover_engine::plan(&rb, &cmdb, &graph).map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
    if mode == RunMode::Failover && !flags.yes {
        confirm_failover(&super::plan::text(&plan, &rb), &rb.service)?;
    }
    let total = if mode == RunMode::Verify { 0 } else { rb.steps.len() };
    let ui = Arc::new(Ui::new(
        format!("{} {}", mode.as_str(), rb.name),
        total,
        plan.targets.rto_s,
    ));
    let registry = loaded.registry;
    let engine = engine(&config, registry, ui.clone())?;
    let req = StartRequest {
        runbook: rb.clone(),
        runbook_source: source,
        runbook_path: path,
        cmdb,
        mode,
        declared_at,
        options: RunOptions {
            yes: flags.yes,
            force_lag: flags.force_lag,
            ack: flags.ack,
            max_parallel: rb.max_parallel.unwrap_or(config.engine.max_parallel),
            requested_by: user(),
            scheduled: false,
            reason: flags.reason.clone(),
        },
    };
    let rt = runtime()?;
    let state = rt.block_on(async {
        watch_signals(engine.stop.clone(), engine.abort.clone(), ui.clone());
        no_cluster_leader(&engine.store)?;
        engine.start(req).await?.wait().await
    });
    ui.finish();
    let state = state.map_err(|e| engine_error(e, format))?;
    let state = rt.block_on(archive_after(&engine, &config, state));
    report(&engine.store, &state, format)
}

/// Archives a sealed run's evidence when `evidence.archive` asks for it, and says how it
/// went on stderr. A failed upload is journaled and leaves the outcome alone.
async fn archive_after(engine: &Engine, config: &Config, state: RunState) -> RunState {
    if config.evidence.archive.is_none() || state.finished.is_none() {
        return state;
    }
    match crate::archive::archive(engine, config, &state.id).await {
        Ok((a, st)) => {
            if let Some(line) = a.line(&st.id) {
                eprintln!("{line}");
            }
            st
        }
        Err(e) => {
            eprintln!(
                "evidence archive: {e}; retry with `drover evidence archive {}`",
                state.id
            );
            state
        }
    }
}

/// `drover evidence archive RUN`: the upload, now.
pub fn archive_now(cli: &Cli, id: &str) -> Result<(crate::archive::Archival, RunState), Failure> {
    let (engine, id, _) = engine_for_run(cli, id, "archive")?;
    let config = engine.config.clone();
    runtime()?.block_on(crate::archive::archive(&engine, &config, &id))
}

/// The engine for a command on a recorded run (`resume`, `ack`), and the run's full id.
fn engine_for_run(cli: &Cli, run: &str, verb: &str) -> Result<(Engine, String, Arc<Ui>), Failure> {
    let loaded = load_for_recorded_run(&cli.config)?;
    let config = loaded.config().clone();
    let store = open_store(&config)?;
    let id = super::runs::resolve(&store, run)?;
    let ui = Arc::new(Ui::new(format!("{verb} {id}"), 0, None));
    let mut engine = engine(&config, loaded.registry, ui.clone())?;
    engine.store = store;
    Ok((engine, id, ui))
}

pub fn resume(cli: &Cli, run: &str, yes: bool, format: TextJson) -> CmdResult {
    let (engine, id, ui) = engine_for_run(cli, run, "resume")?;
    let rt = runtime()?;
    let state = rt.block_on(async {
        watch_signals(engine.stop.clone(), engine.abort.clone(), ui.clone());
        no_cluster_leader(&engine.store)?;
        engine.resume(&id, yes).await?.wait().await
    });
    ui.finish();
    let state = state.map_err(|e| engine_error(e, format))?;
    let config = engine.config.clone();
    let state = rt.block_on(archive_after(&engine, &config, state));
    report(&engine.store, &state, format)
}

/// `drover ack RUN --reason TEXT`: an operator takes a stuck run over.
pub fn ack(cli: &Cli, run: &str, reason: &str, format: TextJson) -> CmdResult {
    let (engine, id, ui) = engine_for_run(cli, run, "ack")?;
    let rt = runtime()?;
    let state = rt.block_on(engine.acknowledge(&id, &user(), reason));
    ui.finish();
    let state = state.map_err(|e| engine_error(e, format))?;
    let config = engine.config.clone();
    let state = rt.block_on(archive_after(&engine, &config, state));
    let live = drover_engine::is_live(&engine.store, &state.id);
    let view = RunView::new(&state, live);
    match format {
        TextJson::Json => super::print_json(&view)?,
        TextJson::Text => {
            let (by, why, at) = state.acknowledged.clone().unwrap_or_default();
            println!(
                "run {} acknowledged by {by} at {at}: {why}\nservice `{}` is free; the journal is sealed again",
                state.id, state.service
            );
        }
    }
    Ok(Exit::Passed)
}

/// Prints the run and turns its outcome into the exit code.
pub fn report(store: &Store, state: &RunState, format: TextJson) -> CmdResult {
    let live = drover_engine::is_live(store, &state.id);
    let view = RunView::new(state, live);
    match format {
        TextJson::Json => super::print_json(&view)?,
        TextJson::Text => print!(
            "{}",
            super::runs::text(&view, crate::color::enabled(crate::color::Stream::Stdout))
        ),
    }
    use drover_engine::Outcome;
    Ok(match state.finished.as_ref().map(|f| f.outcome) {
        Some(Outcome::Passed) => Exit::Passed,
        Some(Outcome::TargetsMissed) => Exit::TargetsMissed,
        Some(Outcome::Failed) => Exit::Failed,
        Some(Outcome::Refused) => Exit::Refused,
        Some(Outcome::Stuck) => {
            if state.acknowledged.is_none() {
                eprintln!(
                    "run {} is stuck and keeps service `{}` locked: an operator must take it over \
                     (`drover ack {} --reason TEXT`) or retry its undo (`drover resume {}`)",
                    state.id, state.service, state.id, state.id
                );
            }
            Exit::Stuck
        }
        None => {
            eprintln!(
                "run {} was interrupted: continue it with `drover resume {}`",
                state.id, state.id
            );
            Exit::Interrupted
        }
    })
}
