//! Security canaries: distinctive secret values (a database password in a secret file,
//! an S3 secret key and a webhook URL in the environment, the API's bearer tokens) given
//! to the real binary with every log line switched on (`RUST_LOG=trace`), then searched
//! for, byte for byte, in everything drover writes: its stdout and stderr (human and JSON
//! logs), the reports, the change record, the evidence bundle, the state store's files,
//! the API's responses and the webhook bodies. Each test also checks that the canary was
//! really in play (a step read it, the log is at trace level), so that none of them can
//! pass by not looking. Also: a secret file open to other users is refused, naming the
//! file and not its content.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{Daemon, TOKENS, start_with, token, webhook_listener};
use crate::support::{Fixture, drover_bin};

/// The database password, inside the URL in `secrets/db-url`.
const DB_PASSWORD: &str = "canary-pw-7f3a9c";
/// The S3 secret access key, in the environment.
const S3_SECRET: &str = "canary-s3-key-51e0";
/// The webhook URL's token, in the environment.
const HOOK_TOKEN: &str = "canary-hook-d4b2";

/// A port on which nothing listens (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `text` to `rel` in the fixture with `mode`.
fn write_secret(fx: &Fixture, rel: &str, text: &str, mode: u32) {
    fx.write(rel, text);
    std::fs::set_permissions(fx.path(rel), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The config's lines that name the canaries: a database whose URL is a secret file, an
/// object store whose keys and a webhook whose URL are in the environment.
fn secret_config(db_port: u16) -> String {
    format!(
        "databases:\n  - {{name: db1, site: east, kind: postgres, url: {{file: secrets/db-url}}}}\n\
         object_stores:\n  - {{name: s1, site: east, endpoint: \"http://127.0.0.1:{db_port}\", bucket: b, \
         access_key_id: {{env: S3_KEY_ID}}, secret_access_key: {{env: S3_SECRET}}}}\n\
         webhooks:\n  - {{name: chat, url: {{env: HOOK_URL}}}}\n"
    )
}

/// A step prints every canary (stdout and stderr) and copies the secret file where the
/// test can see that it was read; a check connects to the database with the password
/// (nothing listens: it fails, and its error passes through the logs and the records);
/// an HTTP check of a local listener makes the HTTP client write its trace lines.
fn runbook(http_port: u16) -> String {
    format!(
        r#"name: canary
service: svc
steps:
  - id: peek
    uses: exec.run
    with: {{command: [sh, -c, "cat secrets/db-url; cp secrets/db-url seen; echo \"key $S3_SECRET\" >&2; echo $HOOK_URL"]}}
verify:
  - {{name: up, uses: http.check, with: {{url: "http://127.0.0.1:{http_port}/health"}}}}
  - {{name: db-writable, uses: postgres.writable, with: {{database: db1}}, within: 1s}}
"#
    )
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file under `dir` (the state store and its WAL, keys, locks), with its bytes.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Fails naming every output (by its label) that holds one of `canaries`.
#[track_caller]
fn assert_no_canary(outputs: &[(String, Vec<u8>)], canaries: &[&str]) {
    let leaks: Vec<String> = outputs
        .iter()
        .flat_map(|(what, bytes)| {
            canaries
                .iter()
                .filter(|c| contains(bytes, c))
                .map(move |c| format!("`{c}` in {what}"))
        })
        .collect();
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
}

#[test]
fn security_canaries_at_trace_level_stay_out_of_logs_reports_evidence_and_the_store() {
    let db_port = closed_port();
    let fx = Fixture::empty();
    fx.write(
        "drover.yaml",
        &format!("{}{}", crate::engine::CONFIG, secret_config(db_port)),
    );
    fx.write("cmdb.yaml", "items:\n  - {id: svc, kind: business_service}\n");
    let (http_port, _) = webhook_listener();
    fx.write("runbooks/canary.yaml", &runbook(http_port));
    let url = format!("postgres://drover:{DB_PASSWORD}@127.0.0.1:{db_port}/app");
    write_secret(&fx, "secrets/db-url", &url, 0o600);
    let hook = format!("http://127.0.0.1:{db_port}/hook?token={HOOK_TOKEN}");
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ids = Vec::new();
    for log_format in ["human", "json"] {
        let out = fx
            .drover()
            .env("RUST_LOG", "trace")
            .env("S3_KEY_ID", "canary-key-id")
            .env("S3_SECRET", S3_SECRET)
            .env("HOOK_URL", &hook)
            .args([
                "--log-format",
                log_format,
                "drill",
                "canary",
                "--yes",
                "--format",
                "json",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // The run went as far as the check, which failed: the drill is rolled back.
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        // Logging was at trace level, so every line that could carry a secret was written.
        let trace = match log_format {
            "human" => stderr.contains("TRACE"),
            _ => stderr.contains(r#""level":"TRACE""#),
        };
        assert!(trace, "no trace-level line in the {log_format} log:\n{stderr}");
        let run: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(run["id"].as_str().unwrap().to_owned());
        outputs.push((format!("drill stdout ({log_format} logs)"), out.stdout));
        outputs.push((format!("drill stderr ({log_format} logs)"), out.stderr));
    }
    // The step read the secret file: the canary was in play.
    assert_eq!(fx.read("seen"), url);
    for id in &ids {
        for args in [
            vec!["runs", "show", id, "--format", "json"],
            vec!["report", id, "--format", "md"],
            vec!["report", id, "--format", "html"],
            vec!["report", id, "--format", "json"],
            vec!["report", id, "--format", "junit"],
            vec!["change", "show", id, "--format", "json"],
            vec!["evidence", "verify", id, "--format", "json"],
        ] {
            let out = fx.drover().env("RUST_LOG", "trace").args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            outputs.push((format!("{args:?} stdout"), out.stdout));
            outputs.push((format!("{args:?} stderr"), out.stderr));
        }
        let bundle = fx.path(format!("{id}.bundle.json").as_str());
        let out = fx
            .drover()
            .env("RUST_LOG", "trace")
            .args(["evidence", "export", id, "-o"])
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        outputs.push((format!("evidence bundle of {id}"), std::fs::read(&bundle).unwrap()));
    }
    // The step's output is in the records, redacted where the secrets were.
    let db = rusqlite::Connection::open(fx.path("state/state.db")).unwrap();
    let peek: String = db
        .query_row(
            "SELECT record FROM journal WHERE run_id = ?1 AND record LIKE '%\"event\":\"step_finished\"%'",
            [&ids[0]],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        peek.contains("key [redacted]") && peek.matches("[redacted]").count() >= 3,
        "{peek}"
    );
    drop(db);
    outputs.extend(files_under(&fx.path("state")));
    assert!(
        outputs.iter().any(|(w, _)| w.ends_with("state.db")),
        "the store's file is searched too"
    );
    assert_no_canary(&outputs, &[DB_PASSWORD, S3_SECRET, HOOK_TOKEN]);
}

#[test]
fn security_canaries_at_trace_level_stay_out_of_the_daemons_logs_api_and_webhooks() {
    let db_port = closed_port();
    let (hook_port, bodies) = webhook_listener();
    let (fx, ca) = crate::daemon::fixture(&secret_config(db_port));
    let (http_port, _) = webhook_listener();
    fx.write("runbooks/canary.yaml", &runbook(http_port));
    let url = format!("postgres://drover:{DB_PASSWORD}@127.0.0.1:{db_port}/app");
    write_secret(&fx, "secrets/db-url", &url, 0o600);
    let mut cmd = std::process::Command::new(drover_bin());
    cmd.current_dir(fx.root())
        .args(["--config"])
        .arg(fx.config())
        .args(["--log-format", "json", "serve"])
        .env("RUST_LOG", "trace")
        .env("S3_KEY_ID", "canary-key-id")
        .env("S3_SECRET", S3_SECRET)
        .env(
            "HOOK_URL",
            format!("http://127.0.0.1:{hook_port}/hook?token={HOOK_TOKEN}"),
        );
    let mut d: Daemon = start_with(cmd, &ca);
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let (status, run) = d.json(
        "POST",
        "/api/v1/runs",
        "operator",
        Some(json!({"runbook": "canary", "mode": "drill", "reason": "security canary"})),
    );
    assert_eq!(status, 202, "{run:#}");
    let id = run["id"].as_str().unwrap().to_owned();
    let run = d.wait_finished(&id);
    assert_eq!(run["outcome"], "failed", "{run:#}");
    assert_eq!(fx.read("seen"), url, "the step read the secret file");
    // Every read route, as the admin (who may see everything) and the auditor.
    for role in ["admin", "auditor"] {
        for path in [
            "/api/v1/runs".to_owned(),
            format!("/api/v1/runs/{id}"),
            format!("/api/v1/runs/{id}/events"),
            format!("/api/v1/runs/{id}/report"),
            format!("/api/v1/runs/{id}/report?format=html"),
            format!("/api/v1/runs/{id}/report?format=md"),
            format!("/api/v1/runs/{id}/evidence"),
            "/api/v1/runbooks".to_owned(),
            "/api/v1/schedules".to_owned(),
            "/api/v1/audit".to_owned(),
            "/api/v1/actions".to_owned(),
            "/api/v1/coverage".to_owned(),
            "/api/v1/cluster".to_owned(),
            "/metrics".to_owned(),
        ] {
            let (status, body) = d.call("GET", &path, Some(token(role)), None);
            assert!(status < 500, "GET {path}: {status} {body}");
            outputs.push((format!("GET {path} as {role} ({status})"), body.into_bytes()));
        }
    }
    // Both webhook events arrive (started, finished).
    let start = Instant::now();
    while bodies.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            bodies.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, b) in bodies.lock().unwrap().iter().enumerate() {
        outputs.push((format!("webhook body {i}"), b.clone().into_bytes()));
    }
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
    let log = d.stderr.lock().unwrap().clone();
    assert!(log.contains(r#""level":"TRACE""#), "not at trace level:\n{log}");
    outputs.push(("the daemon's log (stderr)".to_owned(), log.into_bytes()));
    outputs.extend(files_under(&fx.path("state")));
    let tokens: Vec<&str> = TOKENS.iter().map(|(_, t)| *t).collect();
    let mut canaries = vec![DB_PASSWORD, S3_SECRET, HOOK_TOKEN];
    canaries.extend(tokens);
    assert_no_canary(&outputs, &canaries);
}

#[test]
fn security_a_secret_file_open_to_other_users_is_refused_by_name_not_content() {
    let fx = crate::engine::fixture(&runbook(closed_port()));
    fx.write(
        "drover.yaml",
        &format!("{}{}", crate::engine::CONFIG, secret_config(closed_port())),
    );
    fx.write("cmdb.yaml", "items:\n  - {id: svc, kind: business_service}\n");
    // The evidence signing key: drover refuses to sign with a key others can read.
    write_secret(&fx, "secrets/db-url", "postgres://drover:x@127.0.0.1:1/app", 0o600);
    for mode in [0o644, 0o640, 0o604] {
        write_secret(&fx, ".drover/evidence.key", &format!("{}\n", "ab".repeat(32)), mode);
        let out = fx
            .drover()
            .env("RUST_LOG", "trace")
            .args(["drill", "canary", "--yes"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode:o}: {stderr}");
        assert!(
            stderr.contains("open to other users") && stderr.contains("chmod 600"),
            "{mode:o}: {stderr}"
        );
        assert!(!stderr.contains(&"ab".repeat(32)), "{stderr}");
    }
    std::fs::set_permissions(fx.path(".drover/evidence.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // A database URL others can read: the check that needs it fails, naming the file.
    write_secret(
        &fx,
        "secrets/db-url",
        &format!("postgres://drover:{DB_PASSWORD}@127.0.0.1:1/app"),
        0o644,
    );
    let out = fx
        .drover()
        .env("RUST_LOG", "trace")
        .args(["drill", "canary", "--yes", "--format", "json"])
        .output()
        .unwrap();
    let all = [out.stdout.clone(), out.stderr.clone()].concat();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("open to other users"), "{text}");
    let mut outputs = vec![("drill output".to_owned(), all)];
    outputs.extend(files_under(&fx.path("state")));
    assert_no_canary(&outputs, &[DB_PASSWORD]);
}

#[test]
fn security_no_canary_in_the_message_and_backtrace_of_a_crash_nor_after_its_resume() {
    // drover has no panic that input from outside can trigger (that is what the fuzz
    // targets check); a crash point aborts the process as a crash would, with a full
    // backtrace asked for. What it prints, and the resumed run's output, hold no secret.
    let db_port = closed_port();
    let (http_port, _) = webhook_listener();
    let fx = crate::engine::fixture(&runbook(http_port));
    fx.write(
        "drover.yaml",
        &format!("{}{}", crate::engine::CONFIG, secret_config(db_port)),
    );
    fx.write("cmdb.yaml", "items:\n  - {id: svc, kind: business_service}\n");
    let url = format!("postgres://drover:{DB_PASSWORD}@127.0.0.1:{db_port}/app");
    write_secret(&fx, "secrets/db-url", &url, 0o600);
    let hook = format!("http://127.0.0.1:{db_port}/hook?token={HOOK_TOKEN}");
    let run = |args: &[&str], crash: Option<&str>| {
        let mut cmd = fx.drover();
        cmd.env("RUST_LOG", "trace")
            .env("RUST_BACKTRACE", "full")
            .env("S3_KEY_ID", "canary-key-id")
            .env("S3_SECRET", S3_SECRET)
            .env("HOOK_URL", &hook)
            .args(args);
        if let Some(point) = crash {
            cmd.env("DROVER_CRASH_AT", point);
        }
        cmd.output().unwrap()
    };
    let crashed = run(&["drill", "canary", "--yes"], Some("append.after:step_finished"));
    let stderr = String::from_utf8_lossy(&crashed.stderr).into_owned();
    assert_eq!(crashed.status.code(), None, "killed by SIGABRT: {stderr}");
    assert!(stderr.contains("crash point `append.after:step_finished`"), "{stderr}");
    // The step ran before the crash: the secret was read.
    assert_eq!(fx.read("seen"), url);
    let list = run(&["runs", "list", "--format", "json"], None);
    let runs: Value = serde_json::from_slice(&list.stdout).unwrap();
    let id = runs[0]["id"].as_str().unwrap().to_owned();
    let resumed = run(&["resume", &id], None);
    assert_eq!(
        resumed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let mut outputs = vec![
        ("the crashed drill's stdout".to_owned(), crashed.stdout),
        ("the crashed drill's stderr".to_owned(), crashed.stderr),
        ("runs list".to_owned(), list.stdout),
        ("the resume's stdout".to_owned(), resumed.stdout),
        ("the resume's stderr".to_owned(), resumed.stderr),
    ];
    outputs.extend(files_under(&fx.path("state")));
    assert_no_canary(&outputs, &[DB_PASSWORD, S3_SECRET, HOOK_TOKEN]);
}
