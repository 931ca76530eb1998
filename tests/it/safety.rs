//! Failover safety and the run lifecycle, through the real `drover` binary, real child
//! processes and the real SQLite store: what may have acted is undone, a failed
//! preflight never rolls back, start and finish are atomic, a stuck run holds its
//! service until acknowledged or resumed, polling does not flood the journal, resume
//! keeps the order recorded at the start, and the approval prompt blocks nothing.
//!
//! Crashes are made at named crash points (`DROVER_CRASH_AT`, see
//! `drover_engine::crash`): drover aborts exactly there, as a kill -9 would.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine::{drover_json, fixture, interrupted_run, log, signal, spawn, step, wait_for};
use crate::support::Fixture;

/// Runs drover with a crash point armed; it must die at it.
#[track_caller]
fn crash_at(fx: &Fixture, point: &str, args: &[&str]) -> Output {
    let out = fx
        .drover()
        .args(args)
        .env("DROVER_CRASH_AT", point)
        .output()
        .expect("run drover");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("crash point `{point}` reached")),
        "drover did not reach the crash point {point}: exit {:?}\n{stderr}",
        out.status.code()
    );
    assert_eq!(out.status.code(), None, "drover should have died of SIGABRT");
    out
}

/// The kinds of a run's journal records, in order (read from the store's file).
pub(crate) fn record_kinds(fx: &Fixture, run: &str) -> Vec<(String, Value)> {
    let db = rusqlite::Connection::open(fx.path("state/state.db")).expect("open the state store");
    let mut st = db
        .prepare("SELECT record FROM journal WHERE run_id = ?1 ORDER BY seq")
        .unwrap();
    st.query_map([run], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|j| {
            let v: Value = serde_json::from_str(&j.unwrap()).unwrap();
            (v["event"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// Waits until the run's journal has a record of `kind`.
fn wait_for_record(fx: &Fixture, kind: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(db) = rusqlite::Connection::open(fx.path("state/state.db"))
            && let Ok(id) = db.query_row(
                "SELECT run_id FROM journal WHERE json_extract(record, '$.event') = ?1 LIMIT 1",
                [kind],
                |r| r.get::<_, String>(0),
            )
        {
            return id;
        }
        assert!(start.elapsed() < within, "no `{kind}` record within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| *l == what).count()
}

#[test]
fn a_step_in_flight_when_drover_dies_is_undone_when_the_run_halts() {
    // `a` is in flight when `boom` fails; drover dies right after journaling the halt.
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: a, uses: exec.run, with: {command: [sh, -c, "echo a >> log; while [ ! -f go ]; do sleep 0.02; done"], undo: [sh, -c, "echo undo-a >> log"]}}
  - {id: boom, uses: exec.run, with: {command: [sh, -c, "sleep 0.2; exit 1"]}}
rollback:
  - {id: r, uses: exec.run, with: {command: [sh, -c, "echo r >> log"]}}
"#,
    );
    crash_at(&fx, "append.after:halted", &["failover", "rb", "--yes"]);
    fx.write("go", ""); // lets the orphaned `a` process end
    let id = interrupted_run(&fx);
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["outcome"], "failed");
    let lines = log(&fx);
    assert_eq!(count(&lines, "a"), 1, "a was not re-run: {lines:?}");
    assert_eq!(count(&lines, "undo-a"), 1, "a may have acted: it is undone: {lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("r"), "{lines:?}");
    assert_eq!(step(&run, "steps", "a")["status"], "outcome_unknown");
    assert_eq!(step(&run, "compensation", "a")["status"], "ok");
}

#[test]
fn a_halt_during_the_retry_wait_of_an_unknown_outcome_keeps_it_unknown_and_undoes_it() {
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: slow, uses: exec.run, with: {command: [sh, -c, "echo slow >> log; sleep 5"], undo: [sh, -c, "echo undo-slow >> log"]}, timeout: 200ms, retries: 2}
  - {id: boom, uses: exec.run, with: {command: [sh, -c, "sleep 0.8; exit 1"]}}
"#,
    );
    // The first retry of `slow` would come 10 s after its timeout: the halt comes first.
    fx.replace("drover.yaml", "retry_backoff: 50ms", "retry_backoff: 10s");
    let (code, run) = drover_json(&fx, &["failover", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}");
    let slow = step(&run, "steps", "slow");
    assert_eq!(slow["status"], "outcome_unknown", "{slow:#}");
    assert!(
        slow["error"]
            .as_str()
            .unwrap()
            .contains("not retried: the run is halting"),
        "{slow:#}"
    );
    assert_eq!(log(&fx), ["slow", "undo-slow"]);
}

#[test]
fn an_attempt_cancelled_by_a_second_ctrl_c_is_undone_on_resume() {
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: a, uses: exec.run, with: {command: [sh, -c, "echo a >> log; sleep 30"], undo: [sh, -c, "echo undo-a >> log"]}}
  - {id: boom, uses: exec.run, with: {command: [sh, -c, "sleep 0.2; exit 1"]}}
"#,
    );
    let mut child = spawn(&fx, &["failover", "rb", "--yes"]);
    // `boom` failed and the run halted; it waits for `a`, which is in flight.
    wait_for_record(&fx, "halted", Duration::from_secs(30));
    signal(&child, "-INT");
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, "-INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(6), "interrupted");
    assert_eq!(log(&fx), ["a"], "the undo has not run yet");
    let id = interrupted_run(&fx);
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(log(&fx), ["a", "undo-a"]);
    assert_eq!(step(&run, "steps", "a")["status"], "outcome_unknown");
}

#[test]
fn the_compensation_gets_the_checkpoint_journaled_before_the_change() {
    // `scale` records the replica count before it changes it, then hangs: its outcome is
    // unknown, and its undo restores the recorded count.
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: scale, uses: exec.run, timeout: 300ms, with: {checkpoint: [cat, replicas], command: [sh, -c, "echo 5 > replicas; sleep 10"], undo: [sh, -c, "echo \"$DROVER_CHECKPOINT\" > replicas; echo undo >> log"]}}
  - {id: boom, uses: exec.run, with: {command: [sh, -c, "sleep 0.6; exit 1"]}}
"#,
    );
    fx.write("replicas", "3\n");
    let (code, run) = drover_json(&fx, &["failover", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(step(&run, "steps", "scale")["status"], "outcome_unknown");
    assert_eq!(fx.read("replicas"), "3\n", "restored from the checkpoint");
    let id = run["id"].as_str().unwrap();
    let checkpoints: Vec<Value> = record_kinds(&fx, id)
        .into_iter()
        .filter(|(k, _)| k == "checkpoint")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:#?}");
    assert_eq!(checkpoints[0]["data"], "3");
}

#[test]
fn a_checkpoint_survives_a_crash_and_is_not_overwritten_by_the_re_run() {
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: scale, uses: exec.run, with: {checkpoint: [cat, replicas], command: [sh, -c, "echo 5 > replicas; echo scaled >> log"], undo: [sh, -c, "echo \"$DROVER_CHECKPOINT\" > replicas"]}}
  - {id: boom, uses: exec.run, with: {command: ["false"]}, needs: [scale]}
"#,
    );
    fx.write("replicas", "3\n");
    // Dies after the change, before its end is journaled: the re-run reads 5 now.
    crash_at(&fx, "append.after:checkpoint", &["failover", "rb", "--yes"]);
    fx.write("replicas", "5\n");
    let id = interrupted_run(&fx);
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(fx.read("replicas"), "3\n", "the first checkpoint wins");
}

#[test]
fn a_failed_preflight_never_rolls_back_even_across_a_crash() {
    let fx = fixture(
        r#"name: rb
service: svc
preflight:
  - {name: gate, uses: exec.check, with: {command: ["false"]}}
steps:
  - {id: a, uses: exec.run, with: {command: [sh, -c, "echo a >> log"], undo: [sh, -c, "echo undo-a >> log"]}}
rollback:
  - {id: r, uses: exec.run, with: {command: [sh, -c, "echo r >> log"]}}
"#,
    );
    crash_at(&fx, "append.after:halted", &["drill", "rb", "--yes"]);
    let id = interrupted_run(&fx);
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 5, "{run:#}");
    assert_eq!(run["outcome"], "refused");
    assert!(log(&fx).is_empty(), "something ran: {:?}", log(&fx));
    // The service is free again.
    fx.replace("runbooks/rb.yaml", "command: [\"false\"]", "command: [\"true\"]");
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
}

#[test]
fn a_refusal_before_the_run_exists_prints_json_with_outcome_refused() {
    let fx = fixture("name: rb\nservice: svc\nsteps:\n  - {id: a, uses: exec.run, with: {command: [\"true\"]}}\n");
    assert_eq!(drover_json(&fx, &["failover", "rb", "--yes"]).0, 0);
    let (code, out) = drover_json(&fx, &["failover", "rb", "--yes"]);
    assert_eq!(code, 5);
    assert_eq!(out["outcome"], "refused");
    assert!(out["reason"].as_str().unwrap().contains("anti-flap"), "{out:#}");
}

#[test]
fn a_crash_before_the_start_commits_leaves_nothing_behind() {
    let fx = fixture(
        "name: rb\nservice: svc\nsteps:\n  - {id: a, uses: exec.run, with: {command: [sh, -c, \"echo a >> log\"]}}\n",
    );
    crash_at(&fx, "start.before_commit", &["drill", "rb", "--yes"]);
    let out = fx.drover().args(["runs", "list", "--format", "json"]).output().unwrap();
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs, serde_json::json!([]), "no run, no lock");
    // Right after the commit: a run with its first record, resumable.
    crash_at(&fx, "start.after_commit", &["drill", "rb", "--yes"]);
    let id = interrupted_run(&fx);
    assert_eq!(record_kinds(&fx, &id)[0].0, "run_started");
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(log(&fx), ["a"]);
}

#[test]
fn resume_settles_a_finished_run_whose_row_and_lock_were_left_behind() {
    let fx = fixture(
        "name: rb\nservice: svc\nsteps:\n  - {id: a, uses: exec.run, with: {command: [sh, -c, \"echo a >> log\"]}}\n",
    );
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0);
    let id = run["id"].as_str().unwrap().to_owned();
    // As a crash of an older build between the final record and the finish left it.
    let db = rusqlite::Connection::open(fx.path("state/state.db")).unwrap();
    db.execute(
        "UPDATE runs SET state = 'running', outcome = NULL, finished_at = NULL WHERE id = ?1",
        [&id],
    )
    .unwrap();
    db.execute("INSERT INTO service_locks (service, run_id) VALUES ('svc', ?1)", [&id])
        .unwrap();
    drop(db);
    let out = fx.drover().args(["drill", "rb", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "the service is held");
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["state"], "finished");
    assert_eq!(count(&log(&fx), "a"), 1, "nothing ran again");
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "the service is free again: {run:#}");
}

const STUCK: &str = r#"name: rb
service: svc
steps:
  - {id: a, uses: exec.run, with: {command: [sh, -c, "echo a >> log"]}}
  - {id: boom, uses: exec.run, with: {command: ["false"]}, needs: [a]}
rollback:
  - {id: r, uses: exec.run, with: {command: [sh, -c, "test -f fixed && echo r >> log"]}}
"#;

#[test]
fn a_stuck_run_holds_its_service_and_anti_flap_until_acknowledged() {
    let fx = fixture(STUCK);
    let (code, run) = drover_json(&fx, &["failover", "rb", "--yes"]);
    assert_eq!(code, 4, "{run:#}");
    assert_eq!(run["outcome"], "stuck");
    let id = run["id"].as_str().unwrap().to_owned();
    let out = fx.drover().args(["drill", "rb", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("drover ack {id} --reason")), "{stderr}");

    let out = fx.drover().args(["ack", &id, "--reason", ""]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a reason is required");
    let out = fx
        .drover()
        .args(["ack", &id, "--reason", "scaled back by hand", "--format", "json"])
        .env("USER", "alice")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["acknowledged"]["by"], "alice");
    assert_eq!(shown["acknowledged"]["reason"], "scaled back by hand");
    let kinds: Vec<String> = record_kinds(&fx, &id).into_iter().map(|(k, _)| k).collect();
    assert_eq!(&kinds[kinds.len() - 2..], ["acknowledged", "sealed"], "{kinds:?}");
    // A second acknowledgement is refused; the service is free for a drill.
    let out = fx.drover().args(["ack", &id, "--reason", "again"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    fx.write("fixed", "");
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 1, "a drill is not held by anti-flap: {run:#}");
    // The stuck failover counts for anti-flap, from its acknowledgement.
    let out = fx.drover().args(["failover", "rb", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("anti-flap"));
}

#[test]
fn resuming_a_stuck_run_retries_its_undo_and_frees_the_service() {
    let fx = fixture(STUCK);
    let (code, run) = drover_json(&fx, &["failover", "rb", "--yes"]);
    assert_eq!(code, 4, "{run:#}");
    let id = run["id"].as_str().unwrap().to_owned();
    fx.write("fixed", "");
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 1, "rolled back now: {run:#}");
    assert_eq!(run["outcome"], "failed");
    assert_eq!(log(&fx), ["a", "r"]);
    let (code, _) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 1, "the service is free (the drill fails at boom, as designed)");
}

#[test]
fn polling_journals_the_first_failure_each_change_and_the_end() {
    // Fails 29 times (the first 14 with one message, then another), then passes.
    let poll = |file: &str| {
        format!(
            r#"[sh, -c, "n=$(cat {file} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {file}; if [ $n -lt 15 ]; then echo early >&2; else echo late >&2; fi; test $n -ge 30"]"#
        )
    };
    let fx = fixture(&format!(
        "name: rb\nservice: svc\nsteps:\n  - {{id: wait, uses: exec.check, with: {{command: {}}}, within: 1h}}\nverify:\n  - {{name: ready, uses: exec.check, with: {{command: {}}}, within: 1h, interval: 10ms}}\n",
        poll("m"),
        poll("n")
    ));
    // Steps poll once a second: keep that one short.
    fx.replace(
        "runbooks/rb.yaml",
        "echo $n > m;",
        "echo $n > m; [ $n -ge 3 ] && exit 0;",
    );
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    let id = run["id"].as_str().unwrap();
    let kinds = record_kinds(&fx, id);
    let of = |kind: &str| {
        kinds
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
    };
    let failing = of("check_attempt_failed");
    assert_eq!(failing.len(), 2, "the first failure and one change: {failing:#?}");
    assert!(failing[0]["error"].as_str().unwrap().contains("early"));
    assert!(failing[1]["error"].as_str().unwrap().contains("late"));
    assert_eq!(of("check_passed")[0]["attempts"], 30);
    // The polled step: one start, its first failure, its end with the count.
    assert_eq!(of("step_started").len(), 1, "{kinds:#?}");
    assert_eq!(of("step_attempt_failed").len(), 1);
    assert_eq!(step(&run, "steps", "wait")["attempts"], 3);
}

#[test]
fn resume_keeps_the_cmdb_order_recorded_at_the_start() {
    // api depends on db in the CMDB: `d` (db) runs before `a` (api).
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: a, ci: api, uses: exec.run, with: {command: [sh, -c, "echo a >> log"]}}
  - {id: d, ci: db, uses: exec.run, with: {command: [sh, -c, "touch d.started; while [ ! -f go ]; do sleep 0.02; done; echo d >> log"]}}
"#,
    );
    let mut child = spawn(&fx, &["drill", "rb", "--yes"]);
    wait_for(&fx.path("d.started"), Duration::from_secs(30));
    signal(&child, "-KILL");
    let _ = child.wait();
    // The CMDB is edited during the outage: the order would now be the other way round,
    // and the file has an error besides.
    fx.write(
        "cmdb.yaml",
        "tiers: {gold: {rto: 15m, rpo: 1m}}\nitems:\n  - {id: svc, kind: business_service, tier: gold, depends_on: [api]}\n  - {id: api, kind: application}\n  - {id: cache, kind: cache, depends_on: [db]}\n  - {id: db, kind: database, depends_on: [api, nowhere]}\n",
    );
    fx.write("go", "");
    let id = interrupted_run(&fx);
    let (code, run) = drover_json(&fx, &["resume", &id]);
    assert_eq!(code, 0, "{run:#}");
    // `d` ran again (it was in flight), then `a`: the recorded order, not the file's.
    let lines = log(&fx);
    assert_eq!(lines.last().map(String::as_str), Some("a"), "{lines:?}");
    assert!(lines.contains(&"d".to_owned()), "{lines:?}");
}

#[test]
fn the_backoff_of_a_failing_undo_is_cancelled_by_ctrl_c() {
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: a, uses: exec.run, retries: 5, with: {command: [sh, -c, "echo a >> log"], undo: [sh, -c, "echo undo >> log; exit 1"]}}
  - {id: boom, uses: exec.run, with: {command: ["false"]}, needs: [a]}
"#,
    );
    fx.replace("drover.yaml", "retry_backoff: 50ms", "retry_backoff: 30s");
    let mut child = spawn(&fx, &["failover", "rb", "--yes"]);
    let id = wait_for_record(&fx, "step_started", Duration::from_secs(30));
    // Wait until the undo's first attempt failed: it waits 30 s for the next one.
    let start = Instant::now();
    while !record_kinds(&fx, &id)
        .iter()
        .any(|(k, v)| k == "step_attempt_failed" && v["phase"] == "compensation")
    {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, "-INT");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Ctrl-C did not cancel the 30 s wait before the next undo attempt"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(6));
}

#[test]
fn an_approval_prompt_blocks_nothing_else() {
    // `side` has no `needs`: it runs while the gate asks. Answered under a real pty.
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: gate, uses: manual.approve, with: {prompt: "Go ahead?"}}
  - {id: side, uses: exec.run, with: {command: [sh, -c, "sleep 0.3; echo side >> log"]}}
  - {id: after, uses: exec.run, with: {command: [sh, -c, "echo after >> log"]}, needs: [gate]}
"#,
    );
    let script = r#"
import os, pty, select, subprocess, sys, time
master, slave = pty.openpty()
p = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=slave, stderr=slave, close_fds=True)
os.close(slave)
seen, asked_at, answered = b"", None, False
deadline = time.time() + 60
while time.time() < deadline:
    r, _, _ = select.select([master], [], [], 0.05)
    if r:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    if asked_at is None and b"approval needed" in seen:
        asked_at = time.time()
    # Answer only once `side` has finished while the question waited.
    if asked_at is not None and not answered and os.path.exists("log") and b"side" in open("log", "rb").read():
        time.sleep(0.2)
        os.write(master, b"y\n")
        answered = True
    if p.poll() is not None and not r:
        break
p.wait()
sys.stdout.write("answered=%s exit=%d\n" % (answered, p.returncode))
"#;
    let out = std::process::Command::new("python3")
        .current_dir(fx.root())
        .arg("-c")
        .arg(script)
        .arg(crate::support::drover_bin())
        .arg("--config")
        .arg(fx.config())
        .args(["drill", "rb"])
        .env_remove("NO_COLOR")
        .output()
        .expect("run python3");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("answered=True exit=0"), "{report}");
    let list = fx.drover().args(["runs", "list", "--format", "json"]).output().unwrap();
    let runs: Value = serde_json::from_slice(&list.stdout).unwrap();
    let id = runs[0]["id"].as_str().unwrap().to_owned();
    let (_, run) = drover_json(&fx, &["runs", "show", &id]);
    let side = step(&run, "steps", "side");
    let gate = step(&run, "steps", "gate");
    let (side_start, side_end) = (side["start_s"].as_f64().unwrap(), side["end_s"].as_f64().unwrap());
    // What really happened: `side` started at once and ended before the gate was
    // answered; its duration is its own, not the prompt's.
    assert!(side_end < gate["end_s"].as_f64().unwrap(), "{run:#}");
    assert!(side_end - side_start < 5.0, "side lasted {}s", side_end - side_start);
    assert!(side_start < 5.0, "side started at {side_start}s");
    assert_eq!(log(&fx), ["side", "after"]);
    assert!(gate["summary"].as_str().unwrap().contains("terminal"), "{gate:#}");
}
