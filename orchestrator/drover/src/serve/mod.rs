//! `drover serve`: the long-running orchestrator. It runs the schedules, serves the API
//! (TLS, bearer tokens and roles, audit log) and the dashboard, runs several runs at
//! once (one per service), releases `manual.approve` gates from the API, resumes runs
//! interrupted by a crash when it starts, reloads its files on SIGHUP, and on SIGTERM
//! stops accepting, lets steps in flight reach a journaled point and exits.
//!
//! Modules: `auth` (tokens, sessions, roles), `tls` (rustls listener), `api` (the route
//! table, handlers, the dashboard), `approvals` (gates released over the API),
//! `sched` (tokio-cron-scheduler), `metrics` (Prometheus), `webhooks`.

mod api;
mod approvals;
mod auth;
mod dashboard;
pub mod ha;
mod metrics;
mod sched;
mod tls;
mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use drover_engine::journal::{Record, RunOptions};
use drover_engine::{Engine, EngineError, RunState, StartRequest, Store};
use drover_model::config::{OnStart, WebhookEvent};
use drover_model::{Cmdb, Config, RunMode, Runbook};
use drover_plugin_api::{CancellationToken, Registry};
use tokio::sync::broadcast;

use crate::cli::Cli;
use crate::{CmdResult, Exit, Failure};

pub use api::ROUTES;

/// The files the daemon works from; replaced as a whole on SIGHUP.
pub struct Snapshot {
    pub config: Config,
    pub cmdb: Cmdb,
    /// Runbooks with their path and text.
    pub runbooks: Vec<(Runbook, PathBuf, String)>,
}

impl Snapshot {
    fn runbook(&self, name: &str) -> Option<&(Runbook, PathBuf, String)> {
        self.runbooks.iter().find(|(rb, _, _)| rb.name.value == name)
    }
}

/// A run going on in the daemon.
struct LiveRun {
    events: broadcast::Sender<Record>,
    /// Its own stop (no new steps) and abort (work in flight too).
    stop: CancellationToken,
    abort: CancellationToken,
}

/// The daemon's state, shared by the API, the scheduler and the run watchers.
pub struct Daemon {
    config_path: PathBuf,
    snapshot: RwLock<Arc<Snapshot>>,
    engine: Engine,
    runs: Mutex<HashMap<String, LiveRun>>,
    approvals: approvals::Approvals,
    metrics: Arc<metrics::Metrics>,
    auth: auth::Auth,
    webhooks: webhooks::Webhooks,
    sched: sched::Schedules,
    /// This node's name: `ha.node`, or the host's name.
    node: String,
    /// High availability: this node in its cluster (`None`: a daemon alone).
    ha: Option<Arc<ha::Ha>>,
    ready: AtomicBool,
    /// Shutting down: runs that end interrupted are left for the next start.
    draining: AtomicBool,
    /// Where the API is reachable, for links in webhooks.
    base_url: RwLock<String>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Loads and validates the workspace; every located error when it is not usable.
fn load_snapshot(config: &std::path::Path) -> Result<(Snapshot, Registry), String> {
    let (ws, registry) = crate::workspace::load_all(config, &[]);
    if !ws.diagnostics.is_empty() || ws.config.is_none() || ws.cmdb.is_none() {
        return Err(ws.render_diagnostics(&ws.diagnostics));
    }
    let runbooks = ws
        .runbooks
        .iter()
        .filter_map(|f| {
            let rb = f.runbook.clone()?;
            Some((rb, f.path.clone(), ws.source(&f.path).unwrap_or_default().to_owned()))
        })
        .collect();
    Ok((
        Snapshot {
            config: ws.config.clone().expect("checked"),
            cmdb: ws.cmdb.clone().expect("checked"),
            runbooks,
        },
        registry,
    ))
}

impl Daemon {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store(&self) -> &Store {
        &self.engine.store
    }

    /// Whether this node runs schedules and runs: always alone, the leader in a cluster.
    fn is_leader(&self) -> bool {
        self.ha.as_ref().is_none_or(|h| h.is_leader())
    }

    /// Starts a run in the background; returns its id.
    async fn start_run(
        self: &Arc<Self>,
        runbook: &str,
        mode: RunMode,
        requested_by: &str,
        reason: Option<String>,
        scheduled: bool,
        ack: bool,
    ) -> Result<String, EngineError> {
        if !self.is_leader() {
            return Err(EngineError::Refused(format!(
                "node {} stands by: runs start on the leader",
                self.node
            )));
        }
        let snap = self.snapshot();
        let Some((rb, path, source)) = snap.runbook(runbook) else {
            return Err(EngineError::Invalid(format!("no runbook named `{runbook}`")));
        };
        let req = StartRequest {
            runbook: rb.clone(),
            runbook_source: source.clone(),
            runbook_path: path.clone(),
            cmdb: snap.cmdb.clone(),
            mode,
            declared_at: None,
            options: RunOptions {
                yes: false,
                force_lag: false,
                ack,
                max_parallel: rb.max_parallel.unwrap_or(snap.config.engine.max_parallel),
                requested_by: requested_by.to_owned(),
                scheduled,
                reason,
            },
        };
        let handle = self.engine.start(req).await?;
        let id = handle.id.clone();
        self.webhooks.send(
            WebhookEvent::RunStarted,
            serde_json::json!({
                "event": "run_started",
                "run": id,
                "runbook": rb.name.value,
                "service": rb.service.value,
                "mode": mode.as_str(),
                "requested_by": requested_by,
                "text": format!("drover: {} of {} (service {}) started by {requested_by}: run {id}", mode.as_str(), rb.name.value, rb.service.value),
            }),
        );
        self.watch(handle);
        Ok(id)
    }

    /// Keeps track of a run until it ends: live events, metrics, webhooks.
    fn watch(self: &Arc<Self>, handle: drover_engine::RunHandle) {
        let id = handle.id.clone();
        let mut events = handle.events();
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            LiveRun {
                events: handle.events_sender(),
                stop: handle.stop.clone(),
                abort: handle.abort.clone(),
            },
        );
        self.metrics.runs_active.inc();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            // When each step (and phase) started, for the duration histogram.
            let mut started: HashMap<(drover_engine::Phase, String), f64> = HashMap::new();
            loop {
                match events.recv().await {
                    Ok(rec) => match &rec.event {
                        drover_engine::Event::StepStarted { phase, step, .. } => {
                            started.entry((*phase, step.clone())).or_insert(rec.t);
                        }
                        drover_engine::Event::StepFinished { phase, step, .. } => {
                            if let Some(t0) = started.remove(&(*phase, step.clone())) {
                                metrics
                                    .step_seconds
                                    .get_or_create(&metrics::PhaseLabels {
                                        phase: format!("{phase:?}").to_lowercase(),
                                    })
                                    .observe((rec.t - t0).max(0.0));
                            }
                        }
                        _ => {}
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let d = self.clone();
        tokio::spawn(async move {
            let result = handle.wait().await;
            d.runs.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            d.metrics.runs_active.dec();
            match result {
                Ok(st) => {
                    d.finished(&st);
                    d.archive(&st).await;
                    if st.finished.is_none() {
                        d.resume_later(&id);
                    }
                }
                Err(EngineError::Store(e)) if e.is_fenced() => {
                    tracing::error!(run = %id, error = %e, "a newer leader fenced this node's writes");
                    ha::step_down(&d, ha::StepDown::Fenced, &e.to_string()).await;
                }
                Err(e) => {
                    tracing::error!(run = %id, error = %e, "the run ended with an error; it is resumable");
                    d.resume_later(&id);
                }
            }
        });
    }

    /// A run that stopped without an end (the state store went away, this node paused
    /// its runs) while this node still leads: resumed once the store answers again.
    fn resume_later(self: &Arc<Self>, id: &str) {
        let d = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                tokio::time::sleep(wait).await;
                if d.draining.load(Ordering::SeqCst) || !d.is_leader() || d.is_running(&id) {
                    return;
                }
                match d.state(&id) {
                    Ok(st) if st.finished.is_some() && st.sealed => return,
                    Ok(_) => match d.engine.resume(&id, false).await {
                        Ok(h) => {
                            tracing::info!(run = %id, "resuming the run");
                            d.watch(h);
                            return;
                        }
                        Err(EngineError::Store(e)) => {
                            tracing::warn!(run = %id, error = %e, "cannot resume yet; trying again");
                        }
                        Err(e) => {
                            tracing::error!(run = %id, error = %e, "cannot resume the run; it waits for an operator");
                            return;
                        }
                    },
                    Err(e) => tracing::warn!(run = %id, error = %e, "cannot read the run yet; trying again"),
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        });
    }

    fn is_running(&self, id: &str) -> bool {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    fn finished(&self, st: &RunState) {
        self.metrics.finished(st);
        let Some(f) = &st.finished else {
            tracing::info!(run = %st.id, "run interrupted; it is resumed when the daemon starts again");
            return;
        };
        let report = format!("{}/api/v1/runs/{}/report?format=html", self.base_url(), st.id);
        let body = serde_json::json!({
            "event": if f.outcome == drover_engine::Outcome::Stuck { "run_stuck" } else { "run_finished" },
            "run": st.id,
            "runbook": st.runbook,
            "service": st.service,
            "outcome": f.outcome.as_str(),
            "rto_s": f.rto_s,
            "rpo_s": f.rpo_s,
            "reason": f.reason,
            "report": report,
            "text": format!(
                "drover: {} of {} (service {}) {}: {} — RTO {}, RPO {} — {report}",
                st.mode.map(|m| m.as_str()).unwrap_or("run"),
                st.runbook,
                st.service,
                f.outcome.as_str().to_uppercase(),
                f.reason,
                f.rto_s.map_or("n/a".into(), drover_report::secs),
                f.rpo_s.map_or("n/a".into(), drover_report::secs),
            ),
        });
        self.webhooks.send(WebhookEvent::RunFinished, body.clone());
        if f.outcome == drover_engine::Outcome::Stuck {
            self.webhooks.send(WebhookEvent::RunStuck, body);
        }
    }

    fn base_url(&self) -> String {
        self.base_url.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A run's state from its journal.
    /// Archives a finished run's evidence (`evidence.archive`), logging the result.
    async fn archive(&self, st: &RunState) {
        let config = self.snapshot().config.clone();
        if config.evidence.archive.is_none() || st.finished.is_none() {
            return;
        }
        match crate::archive::archive(&self.engine, &config, &st.id).await {
            Ok((crate::archive::Archival::Failed(a), _)) => tracing::error!(
                run = %st.id,
                error = a.error.as_deref().unwrap_or(""),
                "the evidence archive upload failed; the run's outcome is unchanged (retry: drover evidence archive RUN)"
            ),
            Ok((a, _)) => {
                if let Some(line) = a.line(&st.id) {
                    tracing::info!(run = %st.id, "{line}");
                }
            }
            Err(e) => tracing::error!(run = %st.id, error = %e, "the evidence archive could not be recorded"),
        }
    }

    fn state(&self, id: &str) -> Result<RunState, drover_engine::StoreError> {
        let records = drover_engine::journal::load_records(self.store(), id)?;
        Ok(RunState::from_records(id, &records))
    }

    /// SIGHUP: a valid new set of files replaces the old; an invalid one is logged with
    /// its located errors and the old set stays. Runs in flight keep their runbook.
    async fn reload(self: &Arc<Self>) {
        let refused = |why: String| {
            tracing::error!("reload refused, the files in use stay: {why}");
            eprintln!("drover: reload refused, the files in use stay: {why}");
        };
        let snap = match load_snapshot(&self.config_path) {
            Ok((snap, _)) => snap,
            Err(diags) => return refused(format!("\n{diags}")),
        };
        // The tokens go with the files: a token taken out is refused from now on. The
        // listen address and TLS stay until a restart.
        let Some(api) = snap.config.api.as_ref() else {
            return refused("the config has no `api` section".into());
        };
        match self.auth.replace(&api.tokens) {
            Ok(ended) => tracing::info!(tokens = api.tokens.len(), logins_ended = ended, "API tokens replaced"),
            Err(e) => return refused(e),
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
        if let Err(e) = self.sched.reload(self).await {
            tracing::error!(error = %e, "schedules not reloaded");
        }
        tracing::info!("reloaded the config, the CMDB and the runbooks");
    }
}

/// Logs every record (the daemon's progress).
struct LogObserver;

impl drover_engine::Observer for LogObserver {
    fn record(&self, rec: &Record) {
        if let Some(text) = crate::progress::describe(rec) {
            tracing::info!(seq = rec.seq, "{text}");
        }
    }
}

/// `drover serve`.
pub fn run(cli: &Cli, print_routes: bool) -> CmdResult {
    if print_routes {
        let table: Vec<_> = ROUTES
            .iter()
            .map(|r| {
                serde_json::json!({
                    "method": r.method,
                    "path": r.path,
                    "role": r.role.map(|r| format!("{r:?}").to_lowercase()),
                    "form": r.form,
                })
            })
            .collect();
        super::commands::print_json(&table)?;
        return Ok(Exit::Passed);
    }
    let (snap, registry) = load_snapshot(&cli.config).map_err(|d| {
        eprintln!("{d}");
        Failure::Reported(Exit::BadInput)
    })?;
    let config = snap.config.clone();
    let Some(api) = config.api.clone() else {
        return Err(Failure::Usage(anyhow::anyhow!(
            "`drover serve` needs an `api:` section in {} (listen address, TLS, tokens)",
            cli.config.display()
        )));
    };
    let addr: SocketAddr = api.listen.parse().map_err(|e| {
        Failure::Usage(anyhow::anyhow!(
            "{}: api.listen `{}` is not an address:port: {e}",
            cli.config.display(),
            api.listen.value
        ))
    })?;
    if api.tls.is_none() && !addr.ip().is_loopback() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "refusing to listen on {addr} without TLS: set api.tls (cert, key), or listen on a loopback address"
        )));
    }
    let tls = match &api.tls {
        Some(t) => Some(tls::server_config(t).map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?),
        None => None,
    };
    let auth = auth::Auth::new(&api.tokens).map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))?;
    rt.block_on(async move {
        let metrics = Arc::new(metrics::Metrics::new());
        let webhooks = webhooks::Webhooks::start(&config).map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
        let approvals = approvals::Approvals::new(metrics.clone(), webhooks.clone());
        let signer = drover_engine::evidence::Signer::load_or_create(&config.evidence.signing_key)
            .map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
        let ha = config.ha.as_ref().map(|h| Arc::new(ha::Ha::new(h)));
        let node = ha.as_ref().map_or_else(crate::serve::hostname, |h| h.node.clone());
        let mut store = super::commands::run::open_store(&config)?;
        if ha.is_some() {
            store = store.lock_scope(&node);
        }
        let engine = Engine {
            store,
            registry: Arc::new(registry),
            config: Arc::new(config.clone()),
            observer: Arc::new(LogObserver),
            approver: Arc::new(approvals.clone()),
            retry_backoff: config.engine.retry_backoff.0,
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            signer: Some(Arc::new(signer)),
            secrets: Arc::new(super::commands::run::secret_values(&config)),
        };
        let daemon = Arc::new(Daemon {
            config_path: cli.config.clone(),
            snapshot: RwLock::new(Arc::new(snap)),
            engine,
            runs: Mutex::new(HashMap::new()),
            approvals,
            metrics,
            auth,
            webhooks,
            sched: sched::Schedules::default(),
            node,
            ha,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            base_url: RwLock::new(String::new()),
        });
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::Other(anyhow::anyhow!("cannot listen on {addr}: {e}")))?;
        let local = tcp.local_addr().map_err(|e| Failure::Other(e.into()))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        *daemon.base_url.write().unwrap_or_else(|p| p.into_inner()) = format!("{scheme}://{local}");
        let shutdown = CancellationToken::new();
        // Leadership decides: the lease loop resumes runs and starts the schedules when
        // this node leads. It goes on renewing while the runs drain on shutdown.
        let lease_stop = CancellationToken::new();
        let lease_loop = if daemon.ha.is_some() {
            Some(tokio::spawn(ha::run(daemon.clone(), lease_stop.clone())))
        } else {
            resume_interrupted(&daemon, config.daemon.on_start).await;
            daemon
                .sched
                .start(&daemon)
                .await
                .map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
            daemon.metrics.ha_leader.set(1);
            daemon.ready.store(true, Ordering::SeqCst);
            None
        };
        tracing::info!(%local, node = %daemon.node, "drover serve: listening");
        // One line on stdout for whoever started us (tests, scripts): where we listen.
        println!("listening on {scheme}://{local}");
        let signals = tokio::spawn(watch_signals(daemon.clone(), shutdown.clone()));
        let router = api::router(daemon.clone());
        let served = match tls {
            Some(cfg) => {
                let listener = tls::TlsListener::new(tcp, cfg).map_err(|e| Failure::Other(e.into()))?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .await
            }
            None => {
                axum::serve(tcp, router)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .await
            }
        };
        signals.abort();
        if let Err(e) = served {
            tracing::error!(error = %e, "the API server failed");
        }
        drain(&daemon, config.daemon.shutdown_grace.0).await;
        daemon.sched.shutdown().await;
        lease_stop.cancel();
        if let Some(l) = lease_loop {
            let _ = l.await;
        }
        ha::release(&daemon).await;
        daemon.store().sync().await.map_err(|e| Failure::Other(e.into()))?;
        Ok::<_, Failure>(Exit::Passed)
    })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// On start (or on becoming the leader): resume (or hold) every run left interrupted.
async fn resume_interrupted(d: &Arc<Daemon>, on_start: OnStart) {
    let rows = match d.store().runs(10_000) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot list runs");
            return;
        }
    };
    for r in rows.iter().filter(|r| r.state != "finished") {
        if d.is_running(&r.id) || drover_engine::is_live(d.store(), &r.id) {
            continue;
        }
        match on_start {
            OnStart::Hold => {
                tracing::warn!(run = %r.id, "interrupted run held for an operator (daemon.on_start: hold)");
            }
            OnStart::Resume => match d.engine.resume(&r.id, false).await {
                Ok(h) => {
                    tracing::info!(run = %r.id, "resuming an interrupted run");
                    d.watch(h);
                }
                Err(e) => tracing::error!(run = %r.id, error = %e, "cannot resume"),
            },
        }
    }
}

/// SIGTERM (and Ctrl-C): shut down. SIGHUP: reload.
async fn watch_signals(d: Arc<Daemon>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        tracing::error!("cannot watch signals");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => d.reload().await,
        }
    }
    tracing::info!("shutting down: no new runs; steps in flight go on to a journaled point");
    d.draining.store(true, Ordering::SeqCst);
    d.ready.store(false, Ordering::SeqCst);
    shutdown.cancel();
}

/// Stops the runs: no new steps; waits up to `grace` for steps in flight, then cancels
/// them. Each run ends interrupted (journaled) and is resumed on the next start.
async fn drain(d: &Arc<Daemon>, grace: Duration) {
    d.engine.stop.cancel();
    let deadline = tokio::time::Instant::now() + grace;
    while !d.runs.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("steps still in flight after {grace:?}: cancelling them");
            d.engine.abort.cancel();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hard = tokio::time::Instant::now() + Duration::from_secs(10);
    while !d.runs.lock().unwrap_or_else(|p| p.into_inner()).is_empty() && tokio::time::Instant::now() < hard {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
