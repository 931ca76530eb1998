//! The HTTP API and the dashboard's routes. [`ROUTES`] is the one table of routes: the
//! router is built from it, the guard reads the role each route needs from it, and the
//! tests check every route × role × credential from it (`drover serve --routes`), so a
//! route cannot be added without its policy. Deny by default: 401 without valid
//! credentials, 403 for a role that may not. Every call, allowed or denied, is written to
//! the audit log. Errors are JSON: `{"error": {"code", "message"}}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};
use drover_engine::EngineError;
use drover_engine::actions::{ActionFilter, CloseRefusal, CorrectiveAction};
use drover_engine::store::AuditEntry;
use drover_engine::view::RunView;
use drover_model::RunMode;
use drover_model::config::Role;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Daemon;
use super::approvals::Decision;
use super::auth::{Caller, allows};

/// One route and who may call it (`None`: anyone, e.g. liveness probes).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub role: Option<Role>,
    /// A browser form post (URL-encoded, CSRF token in the form) rather than JSON.
    pub form: bool,
}

const fn r(method: &'static str, path: &'static str, role: Option<Role>) -> Route {
    Route {
        method,
        path,
        role,
        form: false,
    }
}

const fn form(path: &'static str, role: Option<Role>) -> Route {
    Route {
        method: "POST",
        path,
        role,
        form: true,
    }
}

const VIEWER: Option<Role> = Some(Role::Viewer);
const OPERATOR: Option<Role> = Some(Role::Operator);
const AUDITOR: Option<Role> = Some(Role::Auditor);
const ADMIN: Option<Role> = Some(Role::Admin);

/// Every route of the daemon.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz", None),
    r("GET", "/readyz", None),
    r("GET", "/metrics", VIEWER),
    r("GET", "/", VIEWER),
    form("/login", None),
    form("/logout", None),
    form("/ui/runs/{id}/approve", OPERATOR),
    r("GET", "/api/v1/runbooks", VIEWER),
    r("GET", "/api/v1/runs", VIEWER),
    r("POST", "/api/v1/runs", OPERATOR),
    r("GET", "/api/v1/runs/{id}", VIEWER),
    r("POST", "/api/v1/runs/{id}/approve", OPERATOR),
    r("GET", "/api/v1/runs/{id}/report", VIEWER),
    r("GET", "/api/v1/runs/{id}/evidence", AUDITOR),
    r("GET", "/api/v1/runs/{id}/events", VIEWER),
    r("GET", "/api/v1/services/{ci}/trend", VIEWER),
    r("GET", "/api/v1/schedules", VIEWER),
    r("GET", "/api/v1/coverage", VIEWER),
    r("GET", "/api/v1/actions", VIEWER),
    r("GET", "/api/v1/actions/{id}", VIEWER),
    r("POST", "/api/v1/actions/{id}/close", OPERATOR),
    r("GET", "/api/v1/cluster", VIEWER),
    r("GET", "/api/v1/audit", ADMIN),
];

/// The largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// A JSON error.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            axum::Json(json!({"error": {"code": self.1, "message": self.2}})),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn handler(route: &Route) -> MethodRouter<Arc<Daemon>> {
    match (route.method, route.path) {
        ("GET", "/healthz") => get(|| async { "ok\n" }),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/") => get(super::dashboard::page),
        ("POST", "/login") => post(super::dashboard::login),
        ("POST", "/logout") => post(super::dashboard::logout),
        ("POST", "/ui/runs/{id}/approve") => post(super::dashboard::approve),
        ("GET", "/api/v1/runbooks") => get(runbooks),
        ("GET", "/api/v1/runs") => get(list_runs),
        ("POST", "/api/v1/runs") => post(start_run),
        ("GET", "/api/v1/runs/{id}") => get(show_run),
        ("POST", "/api/v1/runs/{id}/approve") => post(approve),
        ("GET", "/api/v1/runs/{id}/report") => get(report),
        ("GET", "/api/v1/runs/{id}/evidence") => get(evidence),
        ("GET", "/api/v1/runs/{id}/events") => get(events),
        ("GET", "/api/v1/services/{ci}/trend") => get(trend),
        ("GET", "/api/v1/schedules") => get(schedules),
        ("GET", "/api/v1/coverage") => get(coverage),
        ("GET", "/api/v1/actions") => get(list_actions),
        ("GET", "/api/v1/actions/{id}") => get(show_action),
        ("POST", "/api/v1/actions/{id}/close") => post(close_action),
        ("GET", "/api/v1/cluster") => get(cluster),
        ("GET", "/api/v1/audit") => get(audit),
        (m, p) => unreachable!("route {m} {p} in ROUTES has no handler"),
    }
}

/// The router: [`ROUTES`], each behind the guard.
pub fn router(d: Arc<Daemon>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, handler(route));
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(d.clone(), guard))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "not_found", "no such route".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(d)
}

const COOKIE: &str = "drover_session";

/// The session id in the request's cookie, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The cookie that logs a browser in (or out, with an empty id).
pub fn set_cookie(id: &str) -> HeaderValue {
    let max_age = if id.is_empty() { "; Max-Age=0" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/{max_age}"
    ))
    .expect("a valid header")
}

fn credentials(d: &Daemon, headers: &HeaderMap) -> Result<Option<Caller>, ()> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let token = v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or(())?;
        return d.auth.bearer(token.trim()).map(Some).ok_or(());
    }
    Ok(session_cookie(headers).and_then(|id| d.auth.session(&id)))
}

/// Authenticates, authorizes by the route's role, audits.
async fn guard(State(d): State<Arc<Daemon>>, matched: MatchedPath, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let action = format!("{method} {}", req.uri().path());
    let route = ROUTES
        .iter()
        .find(|r| r.method == method.as_str() && r.path == matched.as_str())
        .copied();
    let Some(route) = route else {
        return ApiError(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", action).into_response();
    };
    let caller = credentials(&d, req.headers());
    let (who, role) = match &caller {
        Ok(Some(c)) => (c.name.clone(), Some(c.role)),
        Ok(None) => ("anonymous".to_owned(), None),
        Err(()) => ("invalid-token".to_owned(), None),
    };
    let denied = match (route.role, &caller) {
        (None, _) => None,
        (Some(_), Ok(None) | Err(())) => Some((StatusCode::UNAUTHORIZED, "a valid bearer token is required")),
        (Some(needed), Ok(Some(c))) if !allows(c.role, needed) => {
            Some((StatusCode::FORBIDDEN, "this role may not call this route"))
        }
        (Some(_), Ok(Some(c))) => {
            // A browser session may post only its forms, with their CSRF token.
            let csrf_ok = c.csrf.is_none()
                || method == Method::GET
                || route.form
                || req
                    .headers()
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| Some(v) == c.csrf.as_deref());
            (!csrf_ok).then_some((StatusCode::FORBIDDEN, "a browser session needs the CSRF token"))
        }
    };
    let response = match denied {
        Some((status, why)) => {
            if route.path == "/" && status == StatusCode::UNAUTHORIZED {
                (status, Html(super::dashboard::login_page(None))).into_response()
            } else {
                ApiError(
                    status,
                    if status == StatusCode::UNAUTHORIZED {
                        "unauthorized"
                    } else {
                        "forbidden"
                    },
                    why.into(),
                )
                .into_response()
            }
        }
        None if method != Method::GET && !matches!(route.path, "/login" | "/logout") && !d.is_leader() => {
            standby(&d).into_response()
        }
        None => {
            if let Ok(Some(c)) = caller {
                req.extensions_mut().insert(c);
            }
            next.run(req).await
        }
    };
    let entry = AuditEntry {
        at: drover_engine::journal::rfc3339(SystemTime::now()),
        who,
        role: role.map(|r| format!("{r:?}").to_lowercase()),
        action,
        decision: if denied.is_some() { "denied" } else { "allowed" }.into(),
        status: response.status().as_u16(),
        detail: denied.map(|(_, why)| why.to_owned()),
    };
    // Written by the store's writer thread in the background: the answer does not wait
    // for the commit (the entry carries its own time).
    let store = d.store().clone();
    tokio::spawn(async move {
        if let Err(e) = store.audit(entry).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    });
    response
}

/// Parses a JSON body; a bad one is a 400 that names the field.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_request", format!("invalid body: {e}")))
}

fn caller(req_caller: Option<axum::Extension<Caller>>) -> ApiResult<Caller> {
    req_caller
        .map(|c| c.0)
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "no caller".into()))
}

/// A mutating call on a standby: 503, with where the leader is.
fn standby(d: &Daemon) -> Response {
    let (leader, address) = leader_contact(d);
    let message = match (&leader, &address) {
        (Some(l), Some(a)) => format!("node {} stands by; the leader is {l} at {a}", d.node),
        (Some(l), None) => format!("node {} stands by; the leader is {l}", d.node),
        _ => format!(
            "node {} stands by and no node leads right now; try again shortly",
            d.node
        ),
    };
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "error": {"code": "standby", "message": message},
            "leader": leader,
            "leader_address": address,
        })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The leader's name and API address, as the state store knows them.
fn leader_contact(d: &Daemon) -> (Option<String>, Option<String>) {
    let Some(ha) = &d.ha else {
        return (Some(d.node.clone()), Some(d.base_url()));
    };
    let leader = match d.store().lease(super::ha::LEASE) {
        Ok(Some(l)) if l.live() => l.holder,
        Ok(_) => None,
        Err(_) => ha.leader(),
    };
    let address = leader
        .as_ref()
        .and_then(|l| d.store().members().ok()?.into_iter().find(|m| &m.node == l)?.address);
    (leader, address)
}

/// The role this node plays: `leader` (or alone), `standby`, `starting`, `draining`.
fn role(d: &Daemon) -> &'static str {
    if d.draining.load(Ordering::SeqCst) {
        "draining"
    } else if !d.ready.load(Ordering::SeqCst) {
        "starting"
    } else if d.is_leader() {
        "leader"
    } else {
        "standby"
    }
}

async fn readyz(State(d): State<Arc<Daemon>>) -> Response {
    let ready = d.ready.load(Ordering::SeqCst);
    let body = json!({
        "ready": ready,
        "role": role(&d),
        "node": d.node,
        "epoch": d.ha.as_ref().map_or(0, |h| h.epoch()),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    // The coverage is judged at the scrape.
    match coverage_of(&d, SystemTime::now()) {
        Ok(c) => d.metrics.coverage(&c),
        Err(e) => tracing::warn!(error = %e.2, "coverage metrics not updated"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.encode(),
    )
        .into_response()
}

async fn runbooks(State(d): State<Arc<Daemon>>) -> axum::Json<Value> {
    let snap = d.snapshot();
    let list: Vec<Value> = snap
        .runbooks
        .iter()
        .map(|(rb, path, _)| {
            let t = drover_engine::plan::targets(rb, &snap.cmdb);
            json!({
                "name": rb.name.value,
                "service": rb.service.value,
                "description": rb.description,
                "from": rb.from.as_ref().map(|s| s.value.clone()),
                "to": rb.to.as_ref().map(|s| s.value.clone()),
                "path": path.display().to_string(),
                "targets": {"rto_s": t.rto.map(|d| d.as_secs_f64()), "rpo_s": t.rpo.map(|d| d.as_secs_f64())},
            })
        })
        .collect();
    axum::Json(Value::Array(list))
}

/// A run as `runs show --format json` prints it, or 404.
pub fn view_of(d: &Daemon, id: &str) -> ApiResult<RunView> {
    if d.store().run(id).map_err(internal)?.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, "not_found", format!("no run `{id}`")));
    }
    let st = d.state(id).map_err(internal)?;
    Ok(RunView::new(&st, drover_engine::is_live(d.store(), id)))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// Runs, newest first, without their steps.
pub fn list(d: &Daemon, limit: usize) -> ApiResult<Vec<RunView>> {
    let rows = d.store().runs(limit).map_err(internal)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let st = d.state(&r.id).map_err(internal)?;
        let mut v = RunView::new(&st, drover_engine::is_live(d.store(), &r.id));
        v.steps.clear();
        out.push(v);
    }
    Ok(out)
}

async fn list_runs(State(d): State<Arc<Daemon>>, Query(q): Query<ListQuery>) -> ApiResult<axum::Json<Vec<RunView>>> {
    Ok(axum::Json(list(&d, q.limit.unwrap_or(100).min(10_000))?))
}

async fn show_run(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    let view = view_of(&d, &id)?;
    let mut v = serde_json::to_value(&view).map_err(internal)?;
    v["pending_approvals"] = serde_json::to_value(d.approvals.pending(&id)).map_err(internal)?;
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    runbook: String,
    mode: RunMode,
    reason: String,
    #[serde(default)]
    ack: bool,
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Refused(m) => ApiError(StatusCode::CONFLICT, "refused", m),
        EngineError::Invalid(m) if m.starts_with("no runbook") => ApiError(StatusCode::NOT_FOUND, "unknown_runbook", m),
        EngineError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, "invalid", m),
        other => internal(other),
    }
}

async fn start_run(
    State(d): State<Arc<Daemon>>,
    c: Option<axum::Extension<Caller>>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let c = caller(c)?;
    let b: StartBody = body(&bytes)?;
    if b.reason.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`reason` must not be empty".into(),
        ));
    }
    let id = d
        .start_run(&b.runbook, b.mode, &c.name, Some(b.reason), false, b.ack)
        .await
        .map_err(engine_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"id": id}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    pub step: String,
    pub reason: String,
    #[serde(default)]
    pub decision: Option<String>,
}

/// Approves or rejects a waiting gate.
pub fn decide(d: &Daemon, id: &str, c: &Caller, b: ApproveBody) -> ApiResult<Value> {
    view_of(d, id)?;
    if b.reason.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`reason` must not be empty".into(),
        ));
    }
    let approve = match b.decision.as_deref() {
        None | Some("approve") => true,
        Some("reject") => false,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`decision` must be `approve` or `reject`, not `{other}`"),
            ));
        }
    };
    let decision = Decision {
        approve,
        by: c.name.clone(),
        reason: b.reason.clone(),
    };
    if !d.approvals.decide(id, &b.step, decision) {
        let waiting: Vec<String> = d.approvals.pending(id).into_iter().map(|g| g.step).collect();
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no_pending_gate",
            format!(
                "run {id} has no gate `{}` waiting for a decision (waiting: {})",
                b.step,
                if waiting.is_empty() {
                    "none".into()
                } else {
                    waiting.join(", ")
                }
            ),
        ));
    }
    tracing::info!(run = %id, step = %b.step, by = %c.name, approve, reason = %b.reason, "gate decided over the API");
    Ok(json!({"run": id, "step": b.step, "decision": if approve { "approve" } else { "reject" }, "by": c.name}))
}

async fn approve(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    c: Option<axum::Extension<Caller>>,
    bytes: Bytes,
) -> ApiResult<axum::Json<Value>> {
    let c = caller(c)?;
    Ok(axum::Json(decide(&d, &id, &c, body(&bytes)?)?))
}

#[derive(Deserialize)]
struct FormatQuery {
    #[serde(default)]
    format: Option<String>,
}

fn build_report(d: &Daemon, id: &str) -> ApiResult<drover_report::Report> {
    view_of(d, id)?;
    crate::commands::records::build_report(d.store(), id)
        .map_err(|_| internal(format!("cannot build the report of run {id}")))
}

async fn report(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(q): Query<FormatQuery>,
) -> ApiResult<Response> {
    let r = build_report(&d, &id)?;
    let (ctype, text) = match q.format.as_deref().unwrap_or("json") {
        "md" => ("text/markdown; charset=utf-8", r.markdown()),
        "html" => ("text/html; charset=utf-8", r.html()),
        "junit" => ("application/xml", r.junit()),
        "json" => (
            "application/json",
            serde_json::to_string_pretty(&r.json()).map_err(internal)?,
        ),
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`format` must be md, html, json or junit, not `{other}`"),
            ));
        }
    };
    Ok(([(header::CONTENT_TYPE, ctype)], text).into_response())
}

async fn evidence(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> ApiResult<Response> {
    let r = build_report(&d, &id)?;
    let Some(signer) = d.engine.signer.clone() else {
        return Err(internal("no signing key"));
    };
    let records = d.store().records(&id).map_err(internal)?;
    let bundle = drover_engine::evidence::export_bundle(&id, &records, &r.json(), &signer).map_err(internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.evidence.json\""),
            ),
        ],
        bundle,
    )
        .into_response())
}

/// The run's journal as server-sent events: what is stored, then live records until the
/// run ends.
async fn events(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> ApiResult<Response> {
    view_of(&d, &id)?;
    // Subscribe first, then read: nothing falls between the two.
    let live = d
        .runs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .map(|r| r.events.subscribe());
    let stored = drover_engine::journal::load_records(d.store(), &id).map_err(internal)?;
    let last = stored.last().map(|r| r.seq);
    let to_event = |rec: &drover_engine::Record| -> Result<SseEvent, Infallible> {
        Ok(SseEvent::default()
            .id(rec.seq.to_string())
            .event(rec.event.kind())
            .data(serde_json::to_string(rec).unwrap_or_default()))
    };
    let head = futures_util::stream::iter(stored.iter().map(to_event).collect::<Vec<_>>());
    let tail = futures_util::stream::unfold(live, move |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(rec) if last.is_some_and(|l| rec.seq <= l) => continue,
                Ok(rec) => return Some((rec, Some(rx))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .map(move |rec| to_event(&rec));
    Ok(Sse::new(head.chain(tail))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The service's runs, as `drover trend` sees them.
pub fn trend_of(d: &Daemon, service: &str) -> ApiResult<drover_report::Trend> {
    crate::commands::records::build_trend(d.store(), service)
        .map_err(|_| internal(format!("cannot build the trend of `{service}`")))
}

async fn trend(
    State(d): State<Arc<Daemon>>,
    Path(ci): Path<String>,
    Query(q): Query<FormatQuery>,
) -> ApiResult<Response> {
    let t = trend_of(&d, &ci)?;
    Ok(match q.format.as_deref().unwrap_or("json") {
        "html" => Html(t.html()).into_response(),
        "md" => ([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], t.markdown()).into_response(),
        _ => axum::Json(t.json()).into_response(),
    })
}

/// The coverage as of `at` (default now), from the daemon's current files.
pub fn coverage_of(d: &Daemon, at: SystemTime) -> ApiResult<drover_engine::coverage::Coverage> {
    let snap = d.snapshot();
    let runbooks: Vec<drover_model::Runbook> = snap.runbooks.iter().map(|(rb, _, _)| rb.clone()).collect();
    drover_engine::coverage::Coverage::new(&snap.cmdb, &runbooks, d.store(), at).map_err(internal)
}

#[derive(Deserialize)]
struct CoverageQuery {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    at: Option<String>,
}

/// `GET /api/v1/coverage`: as `drover coverage --format json` (or `?format=html`).
async fn coverage(State(d): State<Arc<Daemon>>, Query(q): Query<CoverageQuery>) -> ApiResult<Response> {
    let at = match q.at.as_deref() {
        None => SystemTime::now(),
        Some(t) => humantime::parse_rfc3339_weak(t).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`at` must be an RFC 3339 time: {e}"),
            )
        })?,
    };
    let c = coverage_of(&d, at)?;
    Ok(match q.format.as_deref().unwrap_or("json") {
        "html" => Html(drover_report::CoverageReport::new(c).html()).into_response(),
        "json" => axum::Json(serde_json::to_value(&c.items).map_err(internal)?).into_response(),
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`format` must be json or html, not `{other}`"),
            ));
        }
    })
}

#[derive(Deserialize)]
struct ActionsQuery {
    #[serde(default)]
    open: Option<bool>,
    #[serde(default)]
    service: Option<String>,
}

/// `GET /api/v1/actions`: as `drover actions list --format json`.
async fn list_actions(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ActionsQuery>,
) -> ApiResult<axum::Json<Vec<CorrectiveAction>>> {
    let filter = ActionFilter {
        open_only: q.open.unwrap_or(false),
        service: q.service,
        ..Default::default()
    };
    Ok(axum::Json(d.store().actions(&filter).map_err(internal)?))
}

fn no_action(id: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no corrective action `{id}`"),
    )
}

async fn show_action(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> ApiResult<axum::Json<CorrectiveAction>> {
    d.store()
        .action(&id)
        .map_err(internal)?
        .map(axum::Json)
        .ok_or_else(|| no_action(&id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    note: String,
}

/// `POST /api/v1/actions/{id}/close` `{"note"}`: an operator closes an action; who
/// (the token's name) and why go into its history.
async fn close_action(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    c: Option<axum::Extension<Caller>>,
    bytes: Bytes,
) -> ApiResult<axum::Json<CorrectiveAction>> {
    let c = caller(c)?;
    let b: CloseBody = body(&bytes)?;
    if b.note.trim().is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`note` must not be empty".into(),
        ));
    }
    match d.store().close_action(&id, &c.name, &b.note).await.map_err(internal)? {
        Ok(a) => {
            d.store().sync().await.map_err(internal)?;
            tracing::info!(action = %id, by = %c.name, note = %b.note, "corrective action closed over the API");
            Ok(axum::Json(a))
        }
        Err(CloseRefusal::NotFound) => Err(no_action(&id)),
        Err(CloseRefusal::AlreadyClosed(a)) => Err(ApiError(
            StatusCode::CONFLICT,
            "already_closed",
            format!(
                "{id} is closed already (by {} at {})",
                a.closed.as_ref().map_or("?", |c| c.by.as_str()),
                a.closed.as_ref().map_or("?", |c| c.at.as_str())
            ),
        )),
    }
}

async fn schedules(State(d): State<Arc<Daemon>>) -> axum::Json<Value> {
    axum::Json(serde_json::to_value(d.sched.views(&d)).unwrap_or_default())
}

async fn cluster(State(d): State<Arc<Daemon>>) -> ApiResult<axum::Json<Value>> {
    let Some(ha) = &d.ha else {
        // A daemon alone leads itself, at epoch 0.
        return Ok(axum::Json(json!({
            "leader": d.node,
            "epoch": 0,
            "lease_s": null,
            "this_node": d.node,
            "members": [{
                "node": d.node,
                "site": null,
                "address": d.base_url(),
                "last_seen": drover_engine::journal::rfc3339(SystemTime::now()),
                "leader": true,
            }],
        })));
    };
    let lease = d.store().lease(super::ha::LEASE).map_err(unavailable)?;
    let members = d.store().members().map_err(unavailable)?;
    let leader = lease.as_ref().filter(|l| l.live()).and_then(|l| l.holder.clone());
    Ok(axum::Json(json!({
        "leader": leader,
        "epoch": lease.as_ref().map_or(0, |l| l.epoch),
        "lease_expires_at": lease.as_ref().map(|l| l.expires_at.clone()),
        "lease_s": ha.lease.as_secs_f64(),
        "this_node": d.node,
        "members": members.iter().map(|m| json!({
            "node": m.node,
            "site": m.site,
            "address": m.address,
            "last_seen": m.last_seen,
            "last_seen_s": m.age_ms as f64 / 1000.0,
            "leader": leader.as_deref() == Some(m.node.as_str()),
        })).collect::<Vec<_>>(),
    })))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
}

async fn audit(State(d): State<Arc<Daemon>>) -> ApiResult<axum::Json<Vec<AuditEntry>>> {
    Ok(axum::Json(d.store().audit_log(500).map_err(internal)?))
}

/// A redirect after a form post.
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}
