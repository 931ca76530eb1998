//! The dashboard at `/`: server-rendered HTML with no external assets. Runs with their
//! outcome and RTO/RPO against target, each service's trend chart, the gates waiting for
//! a decision (an operator approves or rejects them here, with a reason), links to the
//! reports, and the continuity programme: drill coverage per tier (the same view as
//! `drover coverage`) and the open corrective actions. A browser logs in once with its
//! token (a form; the session is an HttpOnly, Secure, SameSite=Strict cookie) and every
//! form carries the session's CSRF token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};
use serde::Deserialize;

use super::Daemon;
use super::api::{ApiError, ApproveBody, decide, list, see_other, session_cookie, set_cookie, trend_of};
use super::auth::Caller;

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drover — {{ node }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1c2530; background: #f5f7fa; }
header { background: #1c2530; color: #fff; padding: .7em 1.5em; display: flex; justify-content: space-between; align-items: center; }
header form { margin: 0; } main { padding: 1em 1.5em; max-width: 1200px; }
h2 { font-size: 1.1em; margin: 1.4em 0 .5em; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e3e7ed; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0 .5em; border-radius: 3px; color: #fff; font-size: .85em; }
.passed { background: #2e7d32; } .targets_missed { background: #ef6c00; } .failed, .stuck { background: #c62828; }
.refused, .interrupted, .running, .never { background: #546e7a; }
.ok { background: #2e7d32; } .due { background: #f9a825; color: #1c2530; } .overdue, .failing { background: #ad1457; } .uncovered { background: #424242; }
.miss { color: #c62828; font-weight: 600; } .gate { background: #fff8e1; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; } .chart { background: #fff; padding: .5em; }
input[type=text] { width: 18em; } code { font-size: .9em; }
</style></head><body>
<header><div><strong>drover</strong> · {{ node }}{% if cluster_role %} ({{ cluster_role }}{% if leader and cluster_role != "leader" %}; the leader is {{ leader }}{% endif %}){% endif %} · signed in as {{ who }} ({{ role }})</div>
<form method="post" action="/logout"><button>Sign out</button></form></header>
<main>
{% if message %}<p class="miss">{{ message }}</p>{% endif %}
<h2>Approvals waiting</h2>
{% if gates %}<table><tr><th>run</th><th>step</th><th>prompt</th><th>since</th><th>decision</th></tr>
{% for g in gates %}<tr class="gate"><td><code>{{ g.run }}</code></td><td>{{ g.step }}</td><td>{{ g.prompt }}</td><td>{{ g.since }}</td>
<td>{% if can_operate %}<form method="post" action="/ui/runs/{{ g.run }}/approve">
<input type="hidden" name="step" value="{{ g.step }}"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="text" name="reason" placeholder="reason (required)" required>
<button name="decision" value="approve">Approve</button> <button name="decision" value="reject">Reject</button></form>
{% else %}an operator decides{% endif %}</td></tr>{% endfor %}</table>
{% else %}<p>None.</p>{% endif %}
<h2>Drill coverage</h2>
<ul>{% for line in coverage.summary %}<li><strong>{{ line }}</strong></li>{% else %}<li>No CI has a tier.</li>{% endfor %}</ul>
<div class="chart">{{ coverage.chart | safe }}</div>
<table><tr><th>CI</th><th>tier</th><th>status</th><th>runbooks</th><th>last drill</th><th>last passing drill</th><th>due by</th><th>open actions</th><th>blast radius</th></tr>
{% for i in coverage.items %}<tr><td>{{ i.ci }}</td><td>{{ i.tier }}</td><td><span class="badge {{ i.status }}">{{ i.status }}</span></td><td>{{ i.runbooks | join(", ") or "—" }}</td>
<td>{% if i.last_drill %}{{ i.last_drill.at }} <span class="badge {{ i.last_drill.outcome }}">{{ i.last_drill.outcome }}</span>{% else %}never{% endif %}</td>
<td>{{ i.last_pass.at if i.last_pass else "never" }}</td><td>{{ i.due_by or "—" }}</td><td>{{ i.open_actions | join(", ") or "—" }}</td>
<td>{% if i.status == "uncovered" %}{{ i.blast_radius | join(", ") or "nothing" }}{% endif %}</td></tr>
{% endfor %}</table>
<h2>Open corrective actions</h2>
{% if coverage.actions %}<table><tr><th>id</th><th>CI</th><th>owner</th><th>opened</th><th>run</th><th>finding</th></tr>
{% for a in coverage.actions %}<tr><td><code>{{ a.id }}</code></td><td>{{ a.ci or "—" }}</td><td>{{ a.owner or "—" }}</td><td>{{ a.opened_at }}</td><td><code>{{ a.run }}</code></td><td>{{ a.summary }}</td></tr>
{% endfor %}</table>{% else %}<p>None.</p>{% endif %}
<h2>Runs</h2>
<table><tr><th>run</th><th>runbook</th><th>service</th><th>mode</th><th>outcome</th><th class="num">RTO</th><th class="num">target</th><th class="num">RPO</th><th class="num">target</th><th>started</th><th>report</th></tr>
{% for r in runs %}<tr><td><code>{{ r.id }}</code></td><td>{{ r.runbook }}</td><td>{{ r.service }}</td><td>{{ r.mode }}</td>
<td><span class="badge {{ r.outcome or r.state }}">{{ r.outcome or r.state }}</span></td>
<td class="num {% if r.rto_miss %}miss{% endif %}">{{ r.rto }}</td><td class="num">{{ r.rto_target }}</td>
<td class="num {% if r.rpo_miss %}miss{% endif %}">{{ r.rpo }}</td><td class="num">{{ r.rpo_target }}</td>
<td>{{ r.started_at }}</td><td><a href="/api/v1/runs/{{ r.id }}/report?format=html">html</a> · <a href="/api/v1/runs/{{ r.id }}/report?format=md">md</a></td></tr>
{% else %}<tr><td colspan="11">No runs yet.</td></tr>{% endfor %}</table>
<h2>RTO and RPO per service</h2>
<div class="charts">{% for s in services %}<div class="chart"><strong>{{ s.service }}</strong> — {{ s.passed }} of {{ s.runs }} runs passed, {{ s.within }} within targets<br>{{ s.chart | safe }}</div>{% else %}<p>No finished runs yet.</p>{% endfor %}</div>
<h2>Schedules</h2>
<table><tr><th>name</th><th>runbook</th><th>cron</th><th>next</th><th>last</th></tr>
{% for s in schedules %}<tr><td>{{ s.name }}</td><td>{{ s.runbook }}</td><td><code>{{ s.cron }}</code> ({{ s.timezone }})</td><td>{{ s.next }}</td>
<td>{% if s.last %}{{ s.last.at }}: {{ s.last.outcome }}{% if s.last.reason %} — {{ s.last.reason }}{% endif %}{% endif %}</td></tr>
{% else %}<tr><td colspan="5">No schedules.</td></tr>{% endfor %}</table>
</main></body></html>"#;

const LOGIN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drover — sign in</title>
<style>body { font: 14px/1.45 system-ui, sans-serif; display: grid; place-items: center; height: 90vh; background: #f5f7fa; }
form { background: #fff; padding: 2em; border-radius: 6px; box-shadow: 0 1px 4px #0002; } input { width: 24em; }
.miss { color: #c62828; }</style></head><body>
<form method="post" action="/login"><h1>drover</h1>
{% if message %}<p class="miss">{{ message }}</p>{% endif %}
<p><label>API token<br><input type="password" name="token" autocomplete="current-password" required autofocus></label></p>
<p><button>Sign in</button></p></form></body></html>"#;

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("page.html", PAGE).expect("the dashboard template");
    env.add_template("login.html", LOGIN).expect("the login template");
    env
}

/// The sign-in page, with an error message.
pub fn login_page(message: Option<&str>) -> String {
    env()
        .get_template("login.html")
        .and_then(|t| t.render(context! { message }))
        .unwrap_or_default()
}

fn secs(s: Option<f64>) -> String {
    s.map(drover_report::secs).unwrap_or_else(|| "—".into())
}

/// `GET /`.
pub async fn page(State(d): State<Arc<Daemon>>, c: Option<axum::Extension<Caller>>) -> Result<Html<String>, ApiError> {
    let c = c
        .map(|c| c.0)
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "sign in".into()))?;
    let runs = list(&d, 50)?;
    let rows: Vec<_> = runs
        .iter()
        .map(|r| {
            context! {
                id => r.id, runbook => r.runbook, service => r.service, mode => r.mode,
                outcome => r.outcome, state => r.state, started_at => r.started_at,
                rto => secs(r.rto.achieved_s), rto_target => secs(r.rto.target_s),
                rpo => secs(r.rpo.achieved_s), rpo_target => secs(r.rpo.target_s),
                rto_miss => matches!((r.rto.achieved_s, r.rto.target_s), (Some(a), Some(t)) if a > t),
                rpo_miss => matches!((r.rpo.achieved_s, r.rpo.target_s), (Some(a), Some(t)) if a > t),
            }
        })
        .collect();
    let mut services = BTreeMap::new();
    for r in runs.iter().filter(|r| r.outcome.is_some()) {
        if !services.contains_key(&r.service) {
            let t = trend_of(&d, &r.service)?;
            services.insert(
                r.service.clone(),
                context! { service => t.service, runs => t.runs, passed => t.passed, within => t.within_targets, chart => t.chart },
            );
        }
    }
    let cov = super::api::coverage_of(&d, std::time::SystemTime::now())?;
    let coverage = context! {
        summary => cov.tiers.iter().map(|t| t.line()).collect::<Vec<_>>(),
        chart => drover_report::coverage_svg(&cov),
        items => cov.items,
        actions => cov.open_actions,
    };
    let gates: Vec<_> = d
        .approvals
        .all()
        .into_iter()
        .map(|(run, g)| context! { run => run, step => g.step, prompt => g.prompt, since => g.since })
        .collect();
    let html = env()
        .get_template("page.html")
        .and_then(|t| {
            t.render(context! {
                node => d.node,
                cluster_role => d.ha.as_ref().map(|h| if h.is_leader() { "leader" } else { "standby" }),
                leader => d.ha.as_ref().and_then(|h| h.leader()),
                who => c.name, role => format!("{:?}", c.role).to_lowercase(),
                can_operate => super::auth::allows(c.role, drover_model::config::Role::Operator),
                csrf => c.csrf, gates, runs => rows, services => services.into_values().collect::<Vec<_>>(),
                schedules => d.sched.views(&d), message => Option::<String>::None, coverage,
            })
        })
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Html(html))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login`: a valid token starts a session.
pub async fn login(State(d): State<Arc<Daemon>>, axum::Form(f): axum::Form<LoginForm>) -> Response {
    match d.auth.login(f.token.trim()) {
        Some((id, _)) => {
            let mut r = see_other("/");
            r.headers_mut().insert(header::SET_COOKIE, set_cookie(&id));
            r
        }
        None => (
            StatusCode::UNAUTHORIZED,
            Html(login_page(Some("That token is not valid."))),
        )
            .into_response(),
    }
}

/// `POST /logout`.
pub async fn logout(State(d): State<Arc<Daemon>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        d.auth.logout(&id);
    }
    let mut r = see_other("/");
    r.headers_mut().insert(header::SET_COOKIE, set_cookie(""));
    r
}

#[derive(Deserialize)]
pub struct ApproveForm {
    step: String,
    reason: String,
    decision: String,
    csrf: String,
}

/// `POST /ui/runs/{id}/approve`: the dashboard's approve and reject buttons.
pub async fn approve(
    State(d): State<Arc<Daemon>>,
    Path(id): Path<String>,
    c: Option<axum::Extension<Caller>>,
    axum::Form(f): axum::Form<ApproveForm>,
) -> Result<Response, ApiError> {
    let c = c
        .map(|c| c.0)
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "sign in".into()))?;
    // A form must carry the session's CSRF token; a bearer token has none to check.
    if c.csrf.as_deref().is_some_and(|t| t != f.csrf) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the form's CSRF token does not match".into(),
        ));
    }
    decide(
        &d,
        &id,
        &c,
        ApproveBody {
            step: f.step,
            reason: f.reason,
            decision: Some(f.decision),
        },
    )?;
    Ok(see_other("/"))
}
