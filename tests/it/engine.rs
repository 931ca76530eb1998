//! The engine, end to end through the real `drover` binary: real child processes, a
//! real SQLite state store in a temporary folder, real signals (SIGINT, SIGKILL).
//!
//! Steps record what they do by appending lines to a `log` file in the fixture folder
//! (drover runs them with that folder as working directory), so the tests check order
//! and effects on the world, and the run's JSON for what drover says about it.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Fixture, drover_bin};

pub(crate) const CONFIG: &str = r#"sites: [{name: east}, {name: west}]
state: {url: "sqlite://state/state.db"}
engine: {max_parallel: 16, retry_backoff: 50ms, anti_flap: 1h}
cmdb: cmdb.yaml
runbooks: runbooks
"#;

/// svc -> api -> db, cache -> db.
const CMDB: &str = r#"tiers: {gold: {rto: 15m, rpo: 1m}}
items:
  - {id: svc, kind: business_service, tier: gold, depends_on: [api]}
  - {id: api, kind: application, depends_on: [db, cache]}
  - {id: cache, kind: cache, depends_on: [db]}
  - {id: db, kind: database}
"#;

/// A fixture with the engine config, the CMDB and one runbook `rb`.
pub(crate) fn fixture(runbook: &str) -> Fixture {
    let fx = Fixture::empty();
    fx.write("drover.yaml", CONFIG);
    fx.write("cmdb.yaml", CMDB);
    fx.write("runbooks/rb.yaml", runbook);
    fx
}

/// Runs `drover ARGS --format json` in the fixture; the exit code and the run's JSON.
pub(crate) fn drover_json(fx: &Fixture, args: &[&str]) -> (i32, Value) {
    let out = fx
        .drover()
        .args(args)
        .args(["--format", "json"])
        .output()
        .expect("run drover");
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "drover {args:?} printed no JSON ({e}), exit {code}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

pub(crate) fn log(fx: &Fixture) -> Vec<String> {
    std::fs::read_to_string(fx.path("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub(crate) fn step<'a>(run: &'a Value, phase: &str, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["id"] == id && s["phase"] == phase)
        .unwrap_or_else(|| panic!("no {phase} step {id} in {run:#}"))
}

pub(crate) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[track_caller]
pub(crate) fn wait_for(path: &Path, within: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < within,
            "{} did not appear within {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts drover in the background (stdin closed, output discarded).
pub(crate) fn spawn(fx: &Fixture, args: &[&str]) -> Child {
    std::process::Command::new(drover_bin())
        .current_dir(fx.root())
        .arg("--config")
        .arg(fx.config())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start drover")
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

/// The single interrupted run of the fixture.
pub(crate) fn interrupted_run(fx: &Fixture) -> String {
    let out = fx
        .drover()
        .args(["runs", "list", "--format", "json"])
        .output()
        .expect("runs list");
    let list: Value = serde_json::from_slice(&out.stdout).expect("runs list JSON");
    let runs = list.as_array().expect("array");
    let run = runs
        .iter()
        .find(|r| r["state"] == "interrupted")
        .unwrap_or_else(|| panic!("no interrupted run: {list:#}"));
    assert_eq!(run["outcome"], Value::Null, "an interrupted run has no outcome yet");
    run["id"].as_str().expect("id").to_owned()
}

/// A step appending `name` to the log (and `undo-name` as its compensation).
fn logged(id: &str, extra: &str) -> String {
    format!(
        "  - {{id: {id}, uses: exec.run, with: {{command: [sh, -c, \"echo {id} >> log\"], undo: [sh, -c, \"echo undo-{id} >> log\"]}}{extra}}}\n"
    )
}

#[test]
fn steps_follow_needs_and_the_cmdb_order_and_run_in_parallel() {
    // db-a and db-b are independent; cache runs after both (the CMDB: cache depends on
    // db); api after cache and db (CMDB); `last` needs api explicitly.
    let slow = |id: &str, ci: &str| {
        format!(
            "  - {{id: {id}, ci: {ci}, uses: exec.run, with: {{command: [sh, -c, \"echo {id} >> log; sleep 0.4\"]}}}}\n"
        )
    };
    let rb = format!(
        "name: rb\nservice: svc\nsteps:\n{}{}{}{}  - {{id: last, uses: exec.run, with: {{command: [\"true\"]}}, needs: [api]}}\n",
        slow("db-a", "db"),
        slow("db-b", "db"),
        slow("cache", "cache"),
        slow("api", "api"),
    );
    let fx = fixture(&rb);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "passed");
    let start = |id: &str| f(&step(&run, "steps", id)["start_s"]);
    let span = |id: &str| {
        (
            f(&step(&run, "steps", id)["start_s"]),
            f(&step(&run, "steps", id)["end_s"]),
        )
    };
    // The two database steps overlap: they ran at the same time.
    let (a0, a1) = span("db-a");
    let (b0, b1) = span("db-b");
    assert!(
        a0 < b1 && b0 < a1,
        "db-a {a0}..{a1} and db-b {b0}..{b1} did not overlap"
    );
    // The CMDB order.
    assert!(start("cache") >= a1.max(b1), "cache started before the db steps ended");
    assert!(start("api") >= span("cache").1, "api started before cache ended");
    assert!(start("last") >= span("api").1, "last started before api ended");
    assert_eq!(run["critical_path"].as_array().unwrap().last().unwrap(), "last");
}

#[test]
fn max_parallel_one_runs_one_step_at_a_time() {
    let rb = "name: rb\nservice: svc\nmax_parallel: 1\nsteps:\n".to_owned()
        + &(1..=3)
            .map(|i| format!("  - {{id: s{i}, uses: exec.run, with: {{command: [sleep, \"0.2\"]}}}}\n"))
            .collect::<String>();
    let fx = fixture(&rb);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    let mut spans: Vec<(f64, f64)> = (1..=3)
        .map(|i| {
            let s = step(&run, "steps", &format!("s{i}"));
            (f(&s["start_s"]), f(&s["end_s"]))
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "steps overlapped with max_parallel 1: {spans:?}");
    }
}

#[test]
fn a_timed_out_change_is_outcome_unknown_and_its_process_group_is_killed() {
    let rb = r#"name: rb
service: svc
steps:
  - {id: hang, uses: exec.run, with: {command: [sh, -c, "sleep 30 & echo $! > bg.pid; wait"]}, timeout: 300ms}
"#;
    let fx = fixture(rb);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 1);
    assert_eq!(run["outcome"], "failed");
    let s = step(&run, "steps", "hang");
    assert_eq!(s["status"], "outcome_unknown");
    assert!(s["error"].as_str().unwrap().contains("timed out after 300ms"), "{s:#}");
    // The background `sleep 30` was in the step's process group: it is gone.
    let pid = fx.read("bg.pid").trim().to_owned();
    let proc_path = format!("/proc/{pid}");
    let start = Instant::now();
    while Path::new(&proc_path).exists() {
        let stat = std::fs::read_to_string(format!("{proc_path}/stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            break; // a zombie waiting for its reaper is dead
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the background process {pid} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_step_is_retried_until_it_succeeds() {
    // Fails twice, then succeeds: attempts are counted in a file.
    let rb = r#"name: rb
service: svc
steps:
  - {id: flaky, uses: exec.run, with: {command: [sh, -c, "echo x >> tries; test $(wc -l < tries) -ge 3"]}, retries: 3}
  - {id: never, uses: exec.run, with: {command: [sh, -c, "echo y >> fails; exit 7"]}, retries: 1, needs: [flaky]}
"#;
    let fx = fixture(rb);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}");
    let flaky = step(&run, "steps", "flaky");
    assert_eq!(flaky["attempts"], 3);
    let never = step(&run, "steps", "never");
    assert_eq!(never["status"], "failed");
    assert_eq!(never["attempts"], 2);
    assert_eq!(fx.read("fails").lines().count(), 2, "one try and one retry");
    assert!(
        never["error"].as_str().unwrap().contains("exited with status 7"),
        "{never:#}"
    );
}

#[test]
fn a_failure_undoes_completed_steps_in_reverse_order_then_rolls_back() {
    let rb = format!(
        "name: rb\nservice: svc\nsteps:\n{}{}  - {{id: boom, uses: exec.run, with: {{command: [sh, -c, \"echo boom >> log; exit 1\"]}}, needs: [b]}}\n  - {{id: after, uses: exec.run, with: {{command: [sh, -c, \"echo after >> log\"]}}, needs: [boom]}}\nrollback:\n{}{}",
        logged("a", ""),
        logged("b", ", needs: [a]"),
        "  - {id: r1, uses: exec.run, with: {command: [sh, -c, \"echo r1 >> log\"]}}\n",
        "  - {id: r2, uses: exec.run, with: {command: [sh, -c, \"echo r2 >> log\"]}}\n",
    );
    let fx = fixture(&rb);
    let (code, run) = drover_json(&fx, &["failover", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["outcome"], "failed");
    assert_eq!(log(&fx), ["a", "b", "boom", "undo-b", "undo-a", "r1", "r2"]);
    assert_eq!(step(&run, "steps", "after")["status"], "skipped");
    assert_eq!(step(&run, "compensation", "a")["status"], "ok");
    assert!(
        run["reason"].as_str().unwrap().contains("step `boom` failed"),
        "{run:#}"
    );
}

#[test]
fn a_failing_rollback_step_leaves_the_run_stuck() {
    let rb = r#"name: rb
service: svc
steps:
  - {id: boom, uses: exec.run, with: {command: ["false"]}}
rollback:
  - {id: r1, uses: exec.run, with: {command: [sh, -c, "echo r1 >> log; exit 4"]}}
  - {id: r2, uses: exec.run, with: {command: [sh, -c, "echo r2 >> log"]}}
"#;
    let fx = fixture(rb);
    let (code, run) = drover_json(&fx, &["failover", "rb", "--yes"]);
    assert_eq!(code, 4);
    assert_eq!(run["outcome"], "stuck");
    assert!(
        run["reason"].as_str().unwrap().contains("rollback step `r1` failed"),
        "{run:#}"
    );
    assert!(run["reason"].as_str().unwrap().contains("operator required"), "{run:#}");
    // r2 may depend on r1: it does not run after r1 failed.
    assert_eq!(log(&fx), ["r1"]);
}

#[test]
fn a_drill_runs_its_rollback_steps_once_success_or_not() {
    let ok = format!(
        "name: rb\nservice: svc\nsteps:\n{}rollback:\n  - {{id: cleanup, uses: exec.run, with: {{command: [sh, -c, \"echo cleanup >> log\"]}}}}\n",
        logged("a", "")
    );
    let fx = fixture(&ok);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(log(&fx), ["a", "cleanup"]);
    assert_eq!(step(&run, "rollback", "cleanup")["status"], "ok");

    let failing = ok.replace("echo a >> log", "echo a >> log; exit 1");
    let fx = fixture(&failing);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(
        log(&fx),
        ["a", "cleanup"],
        "the cleanup runs once, not once for the failure and once for the drill"
    );
}

#[test]
fn a_failed_preflight_changes_nothing() {
    let rb = format!(
        "name: rb\nservice: svc\npreflight:\n  - {{name: gate, uses: exec.check, with: {{command: [\"false\"]}}}}\nsteps:\n{}rollback:\n  - {{id: r, uses: exec.run, with: {{command: [sh, -c, \"echo r >> log\"]}}}}\n",
        logged("a", "")
    );
    let fx = fixture(&rb);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 5, "refused: nothing was changed");
    assert_eq!(run["outcome"], "refused");
    assert!(log(&fx).is_empty(), "something ran: {:?}", log(&fx));
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("preflight failed, nothing was changed")
    );
    assert_eq!(run["checks"][0]["passed"], false);
}

#[test]
fn verify_mode_runs_only_the_checks() {
    let rb = format!(
        "name: rb\nservice: svc\npreflight:\n  - {{name: pre, uses: exec.check, with: {{command: [\"true\"]}}}}\nsteps:\n{}verify:\n  - {{name: post, uses: exec.check, with: {{command: [\"true\"]}}}}\n",
        logged("a", "")
    );
    let fx = fixture(&rb);
    let (code, run) = drover_json(&fx, &["verify", "rb"]);
    assert_eq!(code, 0, "{run:#}");
    assert!(log(&fx).is_empty());
    assert_eq!(run["mode"], "verify");
    assert_eq!(run["checks"].as_array().unwrap().len(), 2);
}

/// A step that says it started, then waits for a `go` file.
const GATED: &str = r#"name: rb
service: svc
steps:
  - {id: s1, uses: exec.run, with: {command: [sh, -c, "echo s1 >> log"]}}
  - {id: s2, uses: exec.run, with: {command: [sh, -c, "touch s2.started; while [ ! -f go ]; do sleep 0.02; done; echo s2 >> log"]}, needs: [s1]}
  - {id: s3, uses: exec.run, with: {command: [sh, -c, "echo s3 >> log"]}, needs: [s2]}
verify:
  - {name: s3 ran, uses: exec.check, with: {command: [sh, -c, "touch verify.started; test -f go2 && grep -q s3 log"]}, within: 1h, interval: 50ms}
rollback:
  - {id: cleanup, uses: exec.run, with: {command: [sh, -c, "touch cleanup.started; while [ ! -f go3 ]; do sleep 0.02; done; echo cleanup >> log"]}}
"#;

#[test]
fn kill_9_at_any_point_then_resume_finishes_the_run() {
    let fx = fixture(GATED);
    let (gates, starts) = (
        ["go", "go2", "go3"],
        ["s2.started", "verify.started", "cleanup.started"],
    );
    // Kill drover while a step is in flight, while verify polls, while the drill cleans up.
    let mut child = spawn(&fx, &["drill", "rb", "--yes"]);
    for (i, started) in starts.iter().enumerate() {
        wait_for(&fx.path(started), Duration::from_secs(30));
        signal(&child, "-KILL");
        let _ = child.wait();
        let id = interrupted_run(&fx);
        // The service stays locked by the interrupted run.
        let out = fx.drover().args(["drill", "rb", "--yes"]).output().unwrap();
        assert_eq!(out.status.code(), Some(5));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("drover resume {id}")));
        std::fs::remove_file(fx.path(started)).unwrap();
        fx.write(gates[i], "");
        if i + 1 < starts.len() {
            child = spawn(&fx, &["resume", &id]);
        } else {
            let (code, run) = drover_json(&fx, &["resume", &id]);
            assert_eq!(code, 0, "{run:#}");
            assert_eq!(run["outcome"], "passed");
            assert_eq!(run["resumes"], 3);
            // Completed steps did not run again; the in-flight ones ran (at least) once.
            let lines = log(&fx);
            assert_eq!(lines.iter().filter(|l| *l == "s1").count(), 1, "{lines:?}");
            assert_eq!(lines.iter().filter(|l| *l == "s3").count(), 1, "{lines:?}");
            assert!(
                lines.contains(&"s2".to_owned()) && lines.contains(&"cleanup".to_owned()),
                "{lines:?}"
            );
            assert_eq!(
                step(&run, "steps", "s2")["attempts"],
                2,
                "s2 was re-run once after the kill"
            );
        }
    }
}

#[test]
fn ctrl_c_lets_the_step_in_flight_finish_and_starts_no_more() {
    let fx = fixture(GATED);
    let child = spawn(&fx, &["drill", "rb", "--yes"]);
    wait_for(&fx.path("s2.started"), Duration::from_secs(30));
    signal(&child, "-INT");
    std::thread::sleep(Duration::from_millis(200));
    fx.write("go", "");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "an interrupted run exits 6");
    assert_eq!(log(&fx), ["s1", "s2"], "s2 finished, s3 never started");
    let id = interrupted_run(&fx);
    let (_, shown) = drover_json(&fx, &["runs", "show", &id]);
    assert_eq!(step(&shown, "steps", "s2")["status"], "ok");
    assert_eq!(step(&shown, "steps", "s3")["status"], "pending");
    fx.write("go2", "");
    fx.write("go3", "");
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(log(&fx), ["s1", "s2", "s3", "cleanup"]);
}

#[test]
fn a_second_run_of_a_service_is_refused_naming_the_first() {
    let fx = fixture(GATED);
    let mut child = spawn(&fx, &["drill", "rb", "--yes"]);
    wait_for(&fx.path("s2.started"), Duration::from_secs(30));
    let out = fx.drover().args(["drill", "rb", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is being worked on by run"), "{stderr}");
    assert!(stderr.contains("one run per service"), "{stderr}");
    for g in ["go", "go2", "go3"] {
        fx.write(g, "");
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn running_the_same_drill_twice_gives_the_same_state() {
    // Idempotent actions: each run creates and removes the same world.
    let rb = r#"name: rb
service: svc
steps:
  - {id: mk, uses: exec.run, with: {command: [sh, -c, "mkdir -p world && echo v1 > world/state"], undo: [rm, -rf, world]}}
  - {id: up, uses: exec.run, with: {command: [sh, -c, "echo up > world/api"]}, needs: [mk]}
verify:
  - {name: up, uses: exec.check, with: {command: [grep, -qx, up, world/api]}}
"#;
    let fx = fixture(rb);
    for _ in 0..2 {
        let (code, run) = drover_json(&fx, &["failover", "rb", "--yes", "--ack"]);
        assert_eq!(code, 0, "{run:#}");
        assert_eq!(fx.read("world/state"), "v1\n");
        assert_eq!(fx.read("world/api"), "up\n");
    }
}

#[test]
fn rto_is_measured_along_the_critical_path() {
    let rb = r#"name: rb
service: svc
targets: {rto: 10m}
steps:
  - {id: a, uses: exec.run, with: {command: [sleep, "0.6"]}}
  - {id: b, uses: exec.run, with: {command: [sleep, "0.6"]}, needs: [a]}
  - {id: side, uses: exec.run, with: {command: [sleep, "0.1"]}}
verify:
  - {name: ok, uses: exec.check, with: {command: ["true"]}}
"#;
    let fx = fixture(rb);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    let rto = f(&run["rto"]["achieved_s"]);
    // At least the two chained sleeps; the upper bound only guards against nonsense.
    assert!((1.2..30.0).contains(&rto), "RTO {rto}");
    assert_eq!(f(&run["rto"]["target_s"]), 600.0);
    assert_eq!(run["critical_path"], serde_json::json!(["a", "b"]));
}

#[test]
fn a_missed_rto_target_exits_3() {
    let rb = r#"name: rb
service: svc
targets: {rto: 100ms}
steps:
  - {id: a, uses: exec.run, with: {command: [sleep, "0.3"]}}
"#;
    let fx = fixture(rb);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 3, "{run:#}");
    assert_eq!(run["outcome"], "targets_missed");
}

#[test]
fn declared_at_counts_the_time_before_the_run() {
    let rb = "name: rb\nservice: svc\nsteps:\n  - {id: a, uses: exec.run, with: {command: [\"true\"]}}\n";
    let fx = fixture(rb);
    let ten_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(600);
    let at = humantime_rfc3339(ten_minutes_ago);
    let (code, run) = drover_json(&fx, &["failover", "rb", "--yes", "--declared-at", &at]);
    assert_eq!(code, 0, "{run:#}");
    let rto = f(&run["rto"]["achieved_s"]);
    assert!((600.0..660.0).contains(&rto), "RTO {rto}");
    assert!(run["declared_at"].as_str().is_some());
}

fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    // RFC 3339 via `date`, to keep this test free of a time crate.
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_second_failover_within_the_anti_flap_window_needs_ack() {
    let rb = "name: rb\nservice: svc\nsteps:\n  - {id: a, uses: exec.run, with: {command: [\"true\"]}}\n";
    let fx = fixture(rb);
    assert_eq!(drover_json(&fx, &["failover", "rb", "--yes"]).0, 0);
    let out = fx.drover().args(["failover", "rb", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --ack (anti-flap)"), "{stderr}");
    // A drill is not a failover: not blocked.
    assert_eq!(drover_json(&fx, &["drill", "rb", "--yes"]).0, 0);
    assert_eq!(drover_json(&fx, &["failover", "rb", "--yes", "--ack"]).0, 0);
}

#[test]
fn failover_without_yes_refuses_when_stdin_is_not_a_terminal() {
    let rb =
        "name: rb\nservice: svc\nsteps:\n  - {id: a, uses: exec.run, with: {command: [sh, -c, \"echo a >> log\"]}}\n";
    let fx = fixture(rb);
    let out = fx
        .drover()
        .args(["failover", "rb"])
        .write_stdin("svc\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to fail over without --yes"));
    assert!(log(&fx).is_empty());
}

#[test]
fn an_approval_gate_needs_yes_when_nobody_can_answer() {
    let rb = r#"name: rb
service: svc
steps:
  - {id: ok, uses: manual.approve, with: {prompt: "Go ahead?"}}
  - {id: a, uses: exec.run, with: {command: [sh, -c, "echo a >> log"]}, needs: [ok]}
"#;
    let fx = fixture(rb);
    let (code, run) = drover_json(&fx, &["drill", "rb"]);
    assert_eq!(code, 1);
    assert!(
        step(&run, "steps", "ok")["error"]
            .as_str()
            .unwrap()
            .contains("rerun with --yes"),
        "{run:#}"
    );
    assert!(log(&fx).is_empty());
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    assert!(
        step(&run, "steps", "ok")["summary"]
            .as_str()
            .unwrap()
            .contains("via --yes")
    );
}

#[test]
fn http_check_against_a_real_server() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /healthz") {
                ("200 OK", "all good")
            } else {
                ("503 Service Unavailable", "down")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let rb = format!(
        r#"name: rb
service: svc
verify:
  - {{name: healthy, uses: http.check, with: {{url: "http://127.0.0.1:{port}/healthz", body_contains: good}}}}
  - {{name: down, uses: http.check, with: {{url: "http://127.0.0.1:{port}/other", status: 503}}}}
"#
    );
    let fx = fixture(&rb);
    let (code, run) = drover_json(&fx, &["verify", "rb"]);
    assert_eq!(code, 0, "{run:#}");
    let broken = rb.replace("body_contains: good", "body_contains: great");
    let fx = fixture(&broken);
    let (code, run) = drover_json(&fx, &["verify", "rb"]);
    assert_eq!(code, 1, "{run:#}");
    let err = run["checks"][0]["error"].as_str().unwrap();
    assert!(err.contains("does not contain \"great\""), "{err}");
}

#[test]
fn external_plugins_answer_json_on_stdout() {
    let fx = fixture("name: placeholder\nservice: svc\n");
    fx.write(
        "plugins/echo.py",
        r#"import json, sys
req = json.load(sys.stdin)
p = req["params"]
with open("ext.log", "a") as f:
    f.write(req["op"] + " " + req["step"] + "\n")
if p.get("fail"):
    print(json.dumps({"status": "permanent", "message": "told to fail"}))
else:
    print(json.dumps({"status": "ok", "summary": "did " + p["what"], "data": {"n": 1}}))
"#,
    );
    fx.write(
        "drover.yaml",
        &format!(
            "{CONFIG}plugins:\n  - {{name: echo, command: [python3, plugins/echo.py], kind: change, compensable: true}}\n"
        ),
    );
    fx.write(
        "runbooks/rb.yaml",
        r#"name: rb
service: svc
steps:
  - {id: one, uses: ext.echo, with: {what: things}}
  - {id: two, uses: ext.echo, with: {what: more, fail: true}, needs: [one]}
"#,
    );
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(step(&run, "steps", "one")["summary"], "did things");
    assert!(
        step(&run, "steps", "two")["error"]
            .as_str()
            .unwrap()
            .contains("told to fail")
    );
    assert_eq!(fx.read("ext.log"), "execute one\nexecute two\ncompensate one\n");
}
