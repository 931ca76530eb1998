//! `drover serve`, the real binary, over real TLS (a CA and a server certificate made
//! with rcgen for each test), with the real SQLite store and real child processes: the
//! route table × roles × credentials, runs started and gated over the API, the
//! scheduler, SIGTERM and restart, SIGHUP, webhooks.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Fixture, drover_bin};

pub(crate) const TOKENS: [(&str, &str); 4] = [
    ("viewer", "tok-viewer-0123456789"),
    ("operator", "tok-operator-0123456789"),
    ("auditor", "tok-auditor-0123456789"),
    ("admin", "tok-admin-0123456789"),
];

pub(crate) fn sha(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

pub(crate) fn token(role: &str) -> &'static str {
    TOKENS.iter().find(|(r, _)| *r == role).unwrap().1
}

/// A new test CA: its certificate and the issuer that signs with it.
fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    (ca, rcgen::Issuer::new(ca_params, ca_key))
}

/// A test CA and a server certificate for 127.0.0.1, written to the fixture.
pub(crate) fn certificates(fx: &Fixture) -> String {
    let (ca, issuer) = test_ca("drover test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    fx.write("tls/ca.pem", &ca.pem());
    fx.write("tls/server.pem", &cert.pem());
    fx.write("tls/server.key", &key.serialize_pem());
    ca.pem()
}

/// The daemon's config: TLS, the four tokens, engine settings for quick tests.
fn config(fx: &Fixture, extra: &str) -> String {
    let tokens: Vec<String> = TOKENS
        .iter()
        .map(|(role, t)| format!("{{name: {role}-bot, role: {role}, sha256: \"{}\"}}", sha(t)))
        .collect();
    let text = format!(
        r#"sites: [{{name: east}}, {{name: west}}]
state: {{url: "sqlite://state/state.db"}}
engine: {{max_parallel: 16, retry_backoff: 50ms, anti_flap: 1h}}
api:
  listen: "127.0.0.1:0"
  tls: {{cert: tls/server.pem, key: tls/server.key}}
  tokens: [{}]
daemon: {{shutdown_grace: 2s}}
cmdb: cmdb.yaml
runbooks: runbooks
{extra}"#,
        tokens.join(", ")
    );
    fx.write("drover.yaml", &text);
    text
}

const CMDB: &str = "tiers: {gold: {rto: 15m, rpo: 1m}}\nitems:\n  - {id: svc, kind: business_service, tier: gold}\n  - {id: other, kind: business_service}\n";

const QUICK: &str =
    "name: quick\nservice: svc\nsteps:\n  - {id: a, uses: exec.run, with: {command: [sh, -c, \"echo a >> log\"]}}\n";

const GATED: &str = r#"name: gated
service: other
steps:
  - {id: gate, uses: manual.approve, with: {prompt: "Fail over now?"}}
  - {id: after, uses: exec.run, with: {command: [sh, -c, "echo after >> log"]}, needs: [gate]}
"#;

pub(crate) fn fixture(extra_config: &str) -> (Fixture, String) {
    let fx = Fixture::empty();
    let ca = certificates(&fx);
    config(&fx, extra_config);
    fx.write("cmdb.yaml", CMDB);
    fx.write("runbooks/quick.yaml", QUICK);
    fx.write("runbooks/gated.yaml", GATED);
    (fx, ca)
}

/// A running `drover serve` and an HTTPS client that trusts the test CA.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) url: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    pub(crate) stderr: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(fx: &Fixture, ca: &str) -> Daemon {
        let mut cmd = Command::new(drover_bin());
        cmd.current_dir(fx.root()).arg("--config").arg(fx.config()).arg("serve");
        start_with(cmd, ca)
    }

    /// One call: (status, body).
    pub(crate) fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, String) {
        self.send(&self.client, method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One call through `client`: (status, body), or the error of a call that got no
    /// answer (a refused TLS handshake).
    fn send(
        &self,
        client: &reqwest::Client,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, String)> {
        let mut req = client.request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        self.rt.block_on(async {
            let r = req.send().await?;
            let status = r.status().as_u16();
            Ok((status, r.text().await.unwrap_or_default()))
        })
    }

    pub(crate) fn json(&self, method: &str, path: &str, role: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.call(method, path, Some(token(role)), body);
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Polls a run until it has an outcome.
    pub(crate) fn wait_finished(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let (_, run) = self.json("GET", &format!("/api/v1/runs/{id}"), "viewer", None);
            if !run["outcome"].is_null() {
                return run;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "run {id} did not finish: {run:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (10 s at most) until the daemon's standard error holds `text`.
    #[track_caller]
    pub(crate) fn wait_stderr(&self, text: &str, what: &str) {
        let start = Instant::now();
        while !self.stderr.lock().unwrap().contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: no `{text}` in the daemon's log:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the process to exit; its exit code.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(start.elapsed() < within, "drover serve did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_run(d: &Daemon, runbook: &str, mode: &str) -> String {
    let (status, v) = d.json(
        "POST",
        "/api/v1/runs",
        "operator",
        Some(json!({"runbook": runbook, "mode": mode, "reason": "integration test"})),
    );
    assert_eq!(status, 202, "{v:#}");
    v["id"].as_str().unwrap().to_owned()
}

/// Calls every route of `drover serve --routes` through `d`'s client, with a run of
/// `quick` for `{id}`: without a token and with a wrong one (401 unless the route is
/// public), with each role's token (403 for a role the route does not allow, neither
/// 401 nor 403 for one it does); a public route refuses nobody.
#[track_caller]
fn assert_route_matrix(fx: &Fixture, d: &Daemon) {
    let out = crate::support::drover()
        .current_dir(fx.root())
        .args(["--config"])
        .arg(fx.config())
        .args(["serve", "--routes"])
        .output()
        .unwrap();
    let routes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(routes.len() >= 15, "{routes:#?}");
    let id = start_run(d, "quick", "drill");
    d.wait_finished(&id);
    let allows = |role: &str, needed: &str| role == "admin" || role == needed || needed == "viewer";
    let mut wrong = Vec::new();
    for r in &routes {
        let method = r["method"].as_str().unwrap();
        let path = r["path"].as_str().unwrap().replace("{id}", &id).replace("{ci}", "svc");
        let needed = r["role"].as_str();
        let (no_token, _) = d.call(method, &path, None, None);
        let (bad_token, _) = d.call(method, &path, Some("not-a-token"), None);
        match needed {
            None => {
                if no_token == 401 || no_token == 403 {
                    wrong.push(format!("{method} {path} is public, yet {no_token} without a token"));
                }
            }
            Some(needed) => {
                if no_token != 401 {
                    wrong.push(format!("{method} {path}: {no_token} without a token, expected 401"));
                }
                if bad_token != 401 {
                    wrong.push(format!("{method} {path}: {bad_token} with a wrong token, expected 401"));
                }
                for (role, t) in TOKENS {
                    let (status, body) = d.call(method, &path, Some(t), None);
                    let ok = allows(role, needed);
                    if ok && (status == 401 || status == 403) {
                        wrong.push(format!("{method} {path}: {status} for {role}, which it allows: {body}"));
                    }
                    if !ok && status != 403 {
                        wrong.push(format!("{method} {path}: {status} for {role}, expected 403"));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_route_answers_only_the_roles_it_allows() {
    let (fx, ca) = fixture("");
    let d = Daemon::start(&fx, &ca);
    assert_route_matrix(&fx, &d);
    // Every call was audited, the denied ones too.
    let (status, log) = d.json("GET", "/api/v1/audit", "admin", None);
    assert_eq!(status, 200);
    let entries = log.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["decision"] == "denied" && e["who"] == "anonymous" && e["status"] == 401)
    );
    assert!(
        entries
            .iter()
            .any(|e| e["decision"] == "denied" && e["who"] == "viewer-bot" && e["status"] == 403)
    );
    assert!(
        entries
            .iter()
            .any(|e| e["decision"] == "allowed" && e["who"] == "operator-bot" && e["action"] == "POST /api/v1/runs")
    );
}

#[test]
fn a_drill_started_over_the_api_finishes_and_its_records_are_served() {
    let (fx, ca) = fixture("");
    let d = Daemon::start(&fx, &ca);
    // A body without its reason is a 400 that names the field.
    let (status, v) = d.json(
        "POST",
        "/api/v1/runs",
        "operator",
        Some(json!({"runbook": "quick", "mode": "drill"})),
    );
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("`reason`"), "{v:#}");
    let (status, v) = d.json(
        "POST",
        "/api/v1/runs",
        "operator",
        Some(json!({"runbook": "nope", "mode": "drill", "reason": "x"})),
    );
    assert_eq!(status, 404, "{v:#}");
    let id = start_run(&d, "quick", "drill");
    let run = d.wait_finished(&id);
    assert_eq!(run["outcome"], "passed", "{run:#}");
    assert_eq!(run["change"]["requested_by"], "operator-bot", "{run:#}");
    let (status, html) = d.call(
        "GET",
        &format!("/api/v1/runs/{id}/report?format=html"),
        Some(token("viewer")),
        None,
    );
    assert_eq!(status, 200);
    assert!(html.contains("<svg"), "the report has its chart");
    let (status, bundle) = d.call(
        "GET",
        &format!("/api/v1/runs/{id}/evidence"),
        Some(token("auditor")),
        None,
    );
    assert_eq!(status, 200);
    fx.write("bundle.json", &bundle);
    let out = crate::support::drover()
        .current_dir(fx.root())
        .args(["evidence", "verify"])
        .arg(fx.path("bundle.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // The journal as server-sent events: every record, then the stream ends.
    let (status, sse) = d.call("GET", &format!("/api/v1/runs/{id}/events"), Some(token("viewer")), None);
    assert_eq!(status, 200);
    assert!(
        sse.contains("event: run_started") && sse.contains("event: sealed"),
        "{sse}"
    );
    let (_, metrics) = d.call("GET", "/metrics", Some(token("viewer")), None);
    assert!(
        metrics.contains("drover_runs_total{mode=\"drill\",outcome=\"passed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_rto_target_seconds{service=\"svc\"} 900"),
        "{metrics}"
    );
}

#[test]
fn an_approval_over_the_api_releases_a_gate_and_a_reject_fails_it() {
    let (fx, ca) = fixture("");
    let d = Daemon::start(&fx, &ca);
    for (decision, outcome) in [("approve", "passed"), ("reject", "failed")] {
        let id = start_run(&d, "gated", "drill");
        let start = Instant::now();
        loop {
            let (_, run) = d.json("GET", &format!("/api/v1/runs/{id}"), "viewer", None);
            if run["pending_approvals"].as_array().is_some_and(|a| !a.is_empty()) {
                assert_eq!(run["pending_approvals"][0]["step"], "gate");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no gate waited: {run:#}");
            std::thread::sleep(Duration::from_millis(30));
        }
        let (status, v) = d.json(
            "POST",
            &format!("/api/v1/runs/{id}/approve"),
            "operator",
            Some(json!({"step": "nothing", "reason": "x"})),
        );
        assert_eq!(status, 409, "{v:#}");
        let (status, v) = d.json(
            "POST",
            &format!("/api/v1/runs/{id}/approve"),
            "operator",
            Some(json!({"step": "gate", "reason": "checked the standby", "decision": decision})),
        );
        assert_eq!(status, 200, "{v:#}");
        let run = d.wait_finished(&id);
        assert_eq!(run["outcome"], outcome, "{run:#}");
        let gate = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "gate")
            .unwrap()
            .clone();
        let said = format!("{} {}", gate["summary"], gate["error"]);
        assert!(
            said.contains("operator-bot") && said.contains("checked the standby"),
            "{gate:#}"
        );
    }
    assert_eq!(fx.read("log"), "after\n", "only the approved run went past its gate");
}

#[test]
fn the_scheduler_fires_and_skips_a_busy_service() {
    let (fx, ca) = fixture("schedules: [{name: often, runbook: slow, cron: \"* * * * * *\"}]\n");
    fx.write(
        "runbooks/slow.yaml",
        "name: slow\nservice: svc\nsteps:\n  - {id: a, uses: exec.run, with: {command: [sleep, \"2.5\"]}}\n",
    );
    let d = Daemon::start(&fx, &ca);
    let start = Instant::now();
    let schedule = loop {
        let (_, v) = d.json("GET", "/api/v1/schedules", "viewer", None);
        let s = v[0].clone();
        if s["skipped"].as_array().is_some_and(|a| !a.is_empty()) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "nothing skipped: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(schedule["next"].is_string(), "{schedule:#}");
    let reason = schedule["skipped"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("is being worked on by run"), "{reason}");
    let (_, runs) = d.json("GET", "/api/v1/runs", "viewer", None);
    let first = runs.as_array().unwrap().last().unwrap();
    assert_eq!(
        first["change"]["type"], "standard",
        "a scheduled run is a standard change"
    );
    let (_, metrics) = d.call("GET", "/metrics", Some(token("viewer")), None);
    assert!(
        metrics.contains("drover_schedule_skipped_total{schedule=\"often\"}"),
        "{metrics}"
    );
}

#[test]
fn sigterm_during_a_run_then_a_restart_resumes_it_to_its_end() {
    let (fx, ca) = fixture("");
    fx.write(
        "runbooks/long.yaml",
        "name: long\nservice: svc\nsteps:\n  - {id: wait, uses: exec.run, with: {command: [sh, -c, \"touch started; while [ ! -f go ]; do sleep 0.05; done; echo done >> log\"]}}\n",
    );
    let mut d = Daemon::start(&fx, &ca);
    let id = start_run(&d, "long", "drill");
    crate::engine::wait_for(&fx.path("started"), Duration::from_secs(30));
    d.signal("-TERM");
    // Within the shutdown grace (2 s) and the cancellation that follows it.
    assert_eq!(
        d.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        d.stderr.lock().unwrap()
    );
    fx.write("go", "");
    let d = Daemon::start(&fx, &ca);
    let run = d.wait_finished(&id);
    assert_eq!(run["outcome"], "passed", "{run:#}");
    assert_eq!(run["resumes"], 1);
    assert_eq!(fx.read("log"), "done\n");
}

#[test]
fn sighup_reloads_valid_files_and_keeps_the_old_ones_when_broken() {
    let (fx, ca) = fixture("");
    let d = Daemon::start(&fx, &ca);
    let names = |d: &Daemon| -> Vec<String> {
        let (_, v) = d.json("GET", "/api/v1/runbooks", "viewer", None);
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&d), ["gated", "quick"]);
    fx.write(
        "runbooks/quick.yaml",
        "name: quick\nservice: svc\nsteps:\n  - {id: a, uses: exec.nope}\n",
    );
    d.signal("-HUP");
    d.wait_stderr("reload refused", "a broken runbook");
    assert!(
        d.stderr.lock().unwrap().contains("quick.yaml:4:"),
        "{}",
        d.stderr.lock().unwrap()
    );
    let id = start_run(&d, "quick", "drill");
    assert_eq!(
        d.wait_finished(&id)["outcome"],
        "passed",
        "the old runbook is still in use"
    );
    fx.write("runbooks/third.yaml", &QUICK.replace("name: quick", "name: third"));
    fx.write("runbooks/quick.yaml", QUICK);
    d.signal("-HUP");
    let start = Instant::now();
    while names(&d).len() != 3 {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Logs in to the dashboard with `token`: the session cookie (`drover_session=ID`).
fn dashboard_login(d: &Daemon, token: &str) -> String {
    d.rt.block_on(async {
        let r = d
            .client
            .post(format!("{}/login", d.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap();
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no session cookie: {} {:?}", r.status(), r.headers()));
        cookie.split(';').next().unwrap().to_owned()
    })
}

/// `GET path` with a session cookie: the status.
fn with_cookie(d: &Daemon, path: &str, cookie: &str) -> u16 {
    d.rt.block_on(async {
        d.client
            .get(format!("{}{path}", d.url))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

#[test]
fn sighup_replaces_the_tokens_a_removed_one_is_refused_and_its_dashboard_logins_end() {
    let (fx, ca) = fixture("");
    let d = Daemon::start(&fx, &ca);
    assert_eq!(d.call("GET", "/api/v1/runs", Some(token("viewer")), None).0, 200);
    let operator_login = dashboard_login(&d, token("operator"));
    let auditor_login = dashboard_login(&d, token("auditor"));
    assert_eq!(with_cookie(&d, "/api/v1/runs", &operator_login), 200);
    assert_eq!(with_cookie(&d, "/api/v1/runs", &auditor_login), 200);
    // The viewer's and the operator's tokens are taken out of the config.
    for role in ["viewer", "operator"] {
        fx.replace(
            "drover.yaml",
            &format!("{{name: {role}-bot, role: {role}, sha256: \"{}\"}}, ", sha(token(role))),
            "",
        );
    }
    d.signal("-HUP");
    let start = Instant::now();
    while d.call("GET", "/api/v1/runs", Some(token("viewer")), None).0 != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the removed token still gets through:\n{}",
            d.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.call("GET", "/api/v1/runs", Some(token("operator")), None).0, 401);
    assert_eq!(with_cookie(&d, "/api/v1/runs", &operator_login), 401, "its login ended");
    assert_eq!(
        with_cookie(&d, "/api/v1/runs", &auditor_login),
        200,
        "a kept token's login goes on"
    );
    assert_eq!(d.call("GET", "/api/v1/runs", Some(token("admin")), None).0, 200);
    // A reload that would leave the daemon without an API is refused as a whole.
    let text = std::fs::read_to_string(fx.config()).unwrap();
    let without_api: String = text
        .lines()
        .filter(|l| !l.starts_with("api:") && !l.starts_with("  "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!without_api.contains("tokens"), "{without_api}");
    fx.write("drover.yaml", &without_api);
    d.signal("-HUP");
    d.wait_stderr("no `api` section", "a config without api");
    assert_eq!(d.call("GET", "/api/v1/runs", Some(token("admin")), None).0, 200);
}

/// A local HTTP listener that answers 200 to every POST: its port and the bodies it got.
pub(crate) fn webhook_listener() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            // Read the headers and the body (content-length).
            loop {
                let m = s.read(&mut buf[n..]).unwrap_or(0);
                if m == 0 {
                    break;
                }
                n += m;
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        sink.lock().unwrap().push(body.to_owned());
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, got)
}

#[test]
fn webhooks_are_told_and_one_that_is_down_slows_nothing() {
    let (port, got) = webhook_listener();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (fx, ca) = fixture(
        "webhooks:\n  - {name: chat, url: {env: HOOK_URL}}\n  - {name: gone, url: {env: DEAD_URL}, events: [run_finished]}\n",
    );
    let d = {
        let mut child = Command::new(drover_bin());
        child
            .current_dir(fx.root())
            .arg("--config")
            .arg(fx.config())
            .arg("serve")
            .env("HOOK_URL", format!("http://127.0.0.1:{port}/hook?token=s3cr3t-hook"))
            .env("DEAD_URL", format!("http://127.0.0.1:{dead}/"));
        start_with(child, &ca)
    };
    let id = start_run(&d, "quick", "drill");
    assert_eq!(d.wait_finished(&id)["outcome"], "passed");
    let start = Instant::now();
    while got.lock().unwrap().len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", got.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let bodies: Vec<Value> = got
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert!(bodies.iter().any(|b| b["event"] == "run_started"), "{bodies:#?}");
    let fin = bodies
        .iter()
        .find(|b| b["event"] == "run_finished")
        .expect("run_finished");
    assert_eq!(fin["outcome"], "passed");
    assert!(fin["text"].as_str().unwrap().contains("PASSED"), "{fin:#}");
    assert!(fin["report"].as_str().unwrap().contains(&id));
    // The dead webhook is retried in the background and never named by its URL.
    std::thread::sleep(Duration::from_millis(1500));
    let log = d.stderr.lock().unwrap().clone();
    assert!(log.contains("webhook=gone"), "{log}");
    assert!(!log.contains("s3cr3t-hook"), "a webhook URL is a secret: {log}");
}

/// Starts `drover serve` as `cmd` says and waits until it listens. `RUST_LOG` is
/// removed unless `cmd` sets it.
pub(crate) fn start_with(mut cmd: Command, ca: &str) -> Daemon {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !cmd.get_envs().any(|(k, v)| k == "RUST_LOG" && v.is_some()) {
        cmd.env_remove("RUST_LOG");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no `listening on` line: {line:?}\n{}", stderr.lock().unwrap()))
        .to_owned();
    assert!(url.starts_with("https://"), "{url}");
    let client = https_client(ca, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Daemon {
        child,
        url,
        client,
        rt,
        stderr,
    }
}

/// An HTTPS client that trusts `ca` and presents `identity`, if any, as its client
/// certificate.
fn https_client(ca: &str, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

#[test]
fn serve_refuses_a_public_address_without_tls() {
    let (fx, _) = fixture("");
    let text = fx.read("drover.yaml").replace(
        "  listen: \"127.0.0.1:0\"\n  tls: {cert: tls/server.pem, key: tls/server.key}\n",
        "  listen: \"0.0.0.0:0\"\n",
    );
    fx.write("drover.yaml", &text);
    let out = fx.drover().arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without TLS"));
}

#[test]
fn firings_missed_while_the_daemon_was_down_are_reported_once_not_replayed() {
    let (fx, ca) = fixture("schedules: [{name: often, runbook: quick, cron: \"* * * * * *\"}]\n");
    let mut d = Daemon::start(&fx, &ca);
    let start = Instant::now();
    while d.json("GET", "/api/v1/schedules", "viewer", None).1[0]["last"].is_null() {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
    let runs_before = fx.read("log").lines().count();
    std::thread::sleep(Duration::from_millis(3500));
    let d = Daemon::start(&fx, &ca);
    let (_, v) = d.json("GET", "/api/v1/schedules", "viewer", None);
    let missed: Vec<&Value> = v[0]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["outcome"] == "missed")
        .collect();
    assert_eq!(missed.len(), 1, "{v:#}");
    assert!(
        missed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("missed while the daemon was down"),
        "{v:#}"
    );
    // Not replayed: at most the one or two firings since the restart ran.
    std::thread::sleep(Duration::from_millis(300));
    let runs_after = fx.read("log").lines().count();
    assert!(
        runs_after <= runs_before + 2,
        "{runs_before} -> {runs_after}: a burst of replays"
    );
}

/// A minimal WebDriver client (the W3C protocol is JSON over HTTP) for chromedriver.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is missing: `apt-get install chromium chromium-driver` (.ci/run installs them)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = Instant::now();
        while rt.block_on(http.get(format!("{base}/status")).send()).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            http,
            rt,
            _profile: profile,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", b._profile.path().display()),
            ]},
        }}});
        let v = b.cmd("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v:#}"))
            .to_owned();
        b
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let mut req = self.http.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let text = self
            .rt
            .block_on(async { req.send().await.unwrap().text().await.unwrap() });
        let v: Value = serde_json::from_str(&text).unwrap();
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {v}"))
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({"text": text})));
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn source(&self) -> String {
        self.cmd("GET", "/source", None).as_str().unwrap_or_default().to_owned()
    }

    /// Saves a PNG of the window as `NAME.png` in `$DROVER_SCREENSHOTS`, when it is set
    /// (how docs/dashboard.png is made: `DROVER_SCREENSHOTS=docs cargo nextest run -p
    /// drover-tests -E 'test(/in_a_real_browser/)'`).
    fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let Some(dir) = std::env::var_os("DROVER_SCREENSHOTS") else {
            return;
        };
        self.cmd("POST", "/window/rect", Some(json!({"width": 1280, "height": 900})));
        let v = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a screenshot"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }

    /// The page, once it contains `text` (a form post navigates asynchronously).
    #[track_caller]
    fn wait_for(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let page = self.source();
            if page.contains(text) {
                return page;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no `{text}` on the page: {page}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            self.cmd("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn in_a_real_browser_an_operator_logs_in_sees_the_run_and_approves_its_gate() {
    let (fx, ca) = fixture("");
    let d = Daemon::start(&fx, &ca);
    let id = start_run(&d, "gated", "drill");
    let start = Instant::now();
    while d.json("GET", &format!("/api/v1/runs/{id}"), "viewer", None).1["pending_approvals"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(30));
    }
    let b = Browser::start();
    b.go(&format!("{}/", d.url));
    b.wait_for("API token");
    b.type_into("input[name=token]", "not-the-token");
    b.click("button");
    b.wait_for("not valid");
    b.type_into("input[name=token]", token("operator"));
    b.click("button");
    let page = b.wait_for("Approvals waiting");
    assert!(page.contains(&id), "the dashboard lists the run: {page}");
    assert!(page.contains("Fail over now?"), "and its gate: {page}");
    b.type_into("input[name=reason]", "standby checked by hand");
    b.click("button[value=approve]");
    let run = d.wait_finished(&id);
    assert_eq!(run["outcome"], "passed", "{run:#}");
    let gate = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "gate")
        .unwrap()
        .clone();
    assert!(
        gate["summary"].as_str().unwrap().contains("standby checked by hand"),
        "{gate:#}"
    );
    b.go(&format!("{}/", d.url));
    b.wait_for("badge passed");
    b.screenshot("dashboard");
}

/// A client certificate for `ops-laptop` signed by `issuer`, for client authentication
/// unless `edit` says otherwise, as a reqwest identity (certificate and key in one PEM).
fn client_identity(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> reqwest::Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["ops-laptop".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    edit(&mut params);
    let cert = params.signed_by(&key, issuer).unwrap();
    reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes()).unwrap()
}

#[test]
fn with_client_ca_the_route_matrix_holds_and_only_a_valid_client_certificate_gets_through() {
    let (fx, ca) = fixture("");
    let (client_ca, issuer) = test_ca("drover test client CA");
    fx.write("tls/client-ca.pem", &client_ca.pem());
    fx.replace(
        "drover.yaml",
        "tls: {cert: tls/server.pem, key: tls/server.key}",
        "tls: {cert: tls/server.pem, key: tls/server.key, client_ca: tls/client-ca.pem}",
    );
    let mut d = Daemon::start(&fx, &ca);
    // From here on the daemon's own client presents a valid client certificate.
    d.client = https_client(&ca, Some(client_identity(&issuer, |_| {})));
    // What the audit log holds (but the audit log's own reads) once a call to the
    // nonexistent run `marker`, made with the valid certificate, is in it.
    let audited_through = |marker: &str| -> Vec<Value> {
        let (status, _) = d.call("GET", &format!("/api/v1/runs/{marker}"), Some(token("viewer")), None);
        assert_eq!(status, 404, "a valid certificate and token get through to the handler");
        let start = Instant::now();
        loop {
            let (status, log) = d.json("GET", "/api/v1/audit", "admin", None);
            assert_eq!(status, 200, "{log:#}");
            let entries = log.as_array().unwrap();
            if entries
                .iter()
                .any(|e| e["action"] == format!("GET /api/v1/runs/{marker}"))
            {
                return entries
                    .iter()
                    .filter(|e| e["action"] != "GET /api/v1/audit")
                    .cloned()
                    .collect();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "`{marker}` not audited: {log:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let before = audited_through("before-the-handshakes");

    // Each of these is refused in the TLS handshake, for the reason the daemon logs:
    // no HTTP answer at all, not even to the admin's token.
    let (_, other_issuer) = test_ca("another client CA");
    let (_, impostor) = test_ca("drover test client CA");
    let refused = [
        ("no client certificate", None, "peer sent no certificates"),
        (
            "a certificate signed by another CA",
            Some(client_identity(&other_issuer, |_| {})),
            "UnknownIssuer",
        ),
        (
            "a certificate signed by another CA of the client CA's very name",
            Some(client_identity(&impostor, |_| {})),
            "BadSignature",
        ),
        (
            "an expired certificate",
            Some(client_identity(&issuer, |p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            })),
            "certificate expired",
        ),
        (
            "a certificate not valid yet",
            Some(client_identity(&issuer, |p| {
                p.not_before = rcgen::date_time_ymd(2090, 1, 1);
                p.not_after = rcgen::date_time_ymd(2091, 1, 1);
            })),
            "certificate not valid yet",
        ),
        (
            "a certificate for server authentication only",
            Some(client_identity(&issuer, |p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            })),
            "does not allow extended key usage for client authentication",
        ),
    ];
    for (i, (what, identity, reason)) in refused.into_iter().enumerate() {
        let client = https_client(&ca, identity);
        let path = format!("/api/v1/runs/refused-handshake-{i}");
        let answer = d.send(&client, "GET", &path, Some(token("admin")), None);
        assert!(answer.is_err(), "answered with {what}: {answer:?}");
        d.wait_stderr(reason, &format!("{what}: the handshake refused"));
    }
    // None of them reached the daemon's routes: the audit log got only the next marker.
    let after = audited_through("after-the-handshakes");
    assert_eq!(
        after.len(),
        before.len() + 1,
        "{:#?}",
        &after[..after.len().saturating_sub(before.len())]
    );
    assert!(
        !after
            .iter()
            .any(|e| e["action"].as_str().unwrap().contains("refused-handshake")),
        "{after:#?}"
    );

    // With the valid certificate, the tokens and roles decide, as without client_ca.
    assert_route_matrix(&fx, &d);
}

#[test]
fn with_on_start_hold_an_interrupted_run_waits_for_an_operator() {
    let (fx, ca) = fixture("");
    fx.replace(
        "drover.yaml",
        "daemon: {shutdown_grace: 2s}",
        "daemon: {shutdown_grace: 1s, on_start: hold}",
    );
    fx.write(
        "runbooks/long.yaml",
        "name: long\nservice: svc\nsteps:\n  - {id: wait, uses: exec.run, with: {command: [sh, -c, \"touch started; while [ ! -f go ]; do sleep 0.05; done\"]}}\n",
    );
    let mut d = Daemon::start(&fx, &ca);
    let id = start_run(&d, "long", "drill");
    crate::engine::wait_for(&fx.path("started"), Duration::from_secs(30));
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
    fx.write("go", "");
    let d = Daemon::start(&fx, &ca);
    std::thread::sleep(Duration::from_millis(1000));
    let (_, run) = d.json("GET", &format!("/api/v1/runs/{id}"), "viewer", None);
    assert_eq!(run["state"], "interrupted", "held, not resumed: {run:#}");
    assert!(d.stderr.lock().unwrap().contains("held for an operator"));
}

#[test]
fn coverage_and_corrective_actions_over_the_api_the_dashboard_and_metrics() {
    let (fx, ca) = fixture("");
    fx.write(
        "cmdb.yaml",
        &CMDB.replace("{rto: 15m, rpo: 1m}", "{rto: 15m, rpo: 1m, drill_every: 90d}"),
    );
    fx.write(
        "runbooks/failing.yaml",
        "name: failing\nservice: svc\nsteps:\n  - {id: broken, uses: exec.run, with: {command: [sh, -c, \"test -f fixed\"]}}\n",
    );
    let d = Daemon::start(&fx, &ca);
    let id = start_run(&d, "failing", "drill");
    assert_eq!(d.wait_finished(&id)["outcome"], "failed");

    let (status, list) = d.json("GET", "/api/v1/actions?open=true", "viewer", None);
    assert_eq!(status, 200, "{list:#}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:#?}");
    let action = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["run"], id.as_str());
    assert_eq!(list[0]["kind"], "failed_step");

    let (status, cov) = d.json("GET", "/api/v1/coverage", "viewer", None);
    assert_eq!(status, 200, "{cov:#}");
    let svc = cov.as_array().unwrap().iter().find(|i| i["ci"] == "svc").unwrap();
    assert_eq!(svc["status"], "failing", "{svc:#}");
    assert_eq!(svc["open_actions"], json!([action]));
    assert_eq!(svc["runbooks"], json!(["failing", "quick"]));

    let (status, metrics) = d.call("GET", "/metrics", Some(token("viewer")), None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("drover_coverage_cis{tier=\"gold\",status=\"failing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_coverage_cis{tier=\"gold\",status=\"ok\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("drover_corrective_actions_open 1"), "{metrics}");

    let (status, html) = d.call("GET", "/", Some(token("viewer")), None);
    assert_eq!(status, 200);
    assert!(
        html.contains("Drill coverage") && html.contains("gold: 0 of 1 service within policy"),
        "{html}"
    );
    assert!(html.contains(&action), "the dashboard lists the open action");

    // Closing needs an operator and a note; who closed it is the token's name.
    let path = format!("/api/v1/actions/{action}/close");
    let (status, _) = d.json("POST", &path, "viewer", Some(json!({"note": "x"})));
    assert_eq!(status, 403);
    let (status, v) = d.json("POST", &path, "operator", Some(json!({"note": ""})));
    assert_eq!(status, 400, "{v:#}");
    let (status, v) = d.json(
        "POST",
        &path,
        "operator",
        Some(json!({"note": "fixed the script by hand"})),
    );
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(v["state"], "closed");
    assert_eq!(v["closed"]["by"], "operator-bot");
    assert_eq!(v["closed"]["note"], "fixed the script by hand");
    let (status, v) = d.json("POST", &path, "operator", Some(json!({"note": "again"})));
    assert_eq!(status, 409, "{v:#}");
    let (status, _) = d.json(
        "POST",
        "/api/v1/actions/CA-1999-0001/close",
        "operator",
        Some(json!({"note": "x"})),
    );
    assert_eq!(status, 404);
    let (_, shown) = d.json("GET", &format!("/api/v1/actions/{action}"), "viewer", None);
    assert_eq!(shown["state"], "closed");
    let (_, metrics) = d.call("GET", "/metrics", Some(token("viewer")), None);
    assert!(metrics.contains("drover_corrective_actions_open 0"), "{metrics}");
}
