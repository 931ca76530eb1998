//! drover killed at every named crash point, in turn, then resumed.
//!
//! For each scenario a first run lists the crash points it passes
//! (`DROVER_CRASH_TRACE`); then, for every point, a fresh run aborts there
//! (`DROVER_CRASH_AT`, SIGABRT: nothing is flushed or unwound), a first `drover resume`
//! aborts again right after taking the run over, and a second one takes it to its end. Each time: the run ends with the scenario's one outcome; no step that
//! had completed before the crash runs again; every step that may have acted is undone
//! (failing scenarios) or cleaned up (drills); the service lock is free unless the run
//! is stuck; the evidence verifies. The points and results are listed in
//! docs/RELIABILITY.md.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::engine::{drover_json, fixture, log};
use crate::support::Fixture;

fn logged(id: &str, extra: &str) -> String {
    format!(
        "  - {{id: {id}, uses: exec.run, with: {{command: [sh, -c, \"echo {id} >> log\"], undo: [sh, -c, \"echo undo-{id} >> log\"]}}{extra}}}\n"
    )
}

struct Scenario {
    runbook: String,
    args: &'static [&'static str],
    outcome: &'static str,
    /// Log lines that must be there at the end.
    expect: &'static [&'static str],
    /// Log lines that must not.
    never: &'static [&'static str],
}

fn points(fx: &Fixture, args: &[&str]) -> Vec<String> {
    let trace = fx.path("trace");
    let out = fx
        .drover()
        .args(args)
        .env("DROVER_CRASH_TRACE", &trace)
        .output()
        .unwrap();
    assert!(out.status.code().is_some());
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut seen = BTreeSet::new();
    text.lines()
        .filter(|l| seen.insert(l.to_string()))
        .map(str::to_owned)
        .collect()
}

fn runs(fx: &Fixture) -> Vec<Value> {
    let out = fx.drover().args(["runs", "list", "--format", "json"]).output().unwrap();
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn locks(fx: &Fixture) -> Vec<String> {
    let db = rusqlite::Connection::open(fx.path("state/state.db")).unwrap();
    let mut st = db.prepare("SELECT run_id FROM service_locks").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// The log marker of a completed step of a phase.
fn marker(phase: &str, id: &str) -> String {
    match phase {
        "compensation" => format!("undo-{id}"),
        _ => id.to_owned(),
    }
}

fn campaign(sc: &Scenario) {
    let probe = fixture(&sc.runbook);
    let names = points(&probe, sc.args);
    assert!(names.len() >= 6, "too few crash points: {names:?}");
    eprintln!("{} crash points: {}", names.len(), names.join(" "));
    let mut failures = Vec::new();
    for point in &names {
        let fx = fixture(&sc.runbook);
        let out = fx
            .drover()
            .args(sc.args)
            .env("DROVER_CRASH_AT", point)
            .output()
            .unwrap();
        if out.status.code().is_some() {
            failures.push(format!("{point}: drover did not crash (exit {:?})", out.status.code()));
            continue;
        }
        let list = runs(&fx);
        let Some(run) = list.first() else {
            // Before the start committed: nothing happened, nothing is held.
            if !log(&fx).is_empty() || !locks(&fx).is_empty() {
                failures.push(format!("{point}: no run, yet something ran or is locked"));
            }
            continue;
        };
        let id = run["id"].as_str().unwrap().to_owned();
        let (_, before) = drover_json(&fx, &["runs", "show", &id]);
        let completed: Vec<String> = before["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "ok")
            .map(|s| marker(s["phase"].as_str().unwrap(), s["id"].as_str().unwrap()))
            .collect();
        // The first resume dies too, right after it took the run over; the next one ends it.
        let again = fx
            .drover()
            .args(["resume", &id, "--format", "json"])
            .env("DROVER_CRASH_AT", "append.after:resumed")
            .output()
            .unwrap();
        let (code, after) = match again.status.code() {
            // A finished run is only settled: nothing to take over, no second crash.
            Some(code) => (code, serde_json::from_slice(&again.stdout).unwrap_or(Value::Null)),
            None => drover_json(&fx, &["resume", &id]),
        };
        let lines = log(&fx);
        let mut problems = Vec::new();
        if after["outcome"] != sc.outcome {
            problems.push(format!(
                "outcome {} (exit {code}), expected {}",
                after["outcome"], sc.outcome
            ));
        }
        for m in &completed {
            let n = lines.iter().filter(|l| *l == m).count();
            if n != 1 {
                problems.push(format!("`{m}` had completed before the crash and ran {n} times"));
            }
        }
        for m in sc.expect {
            if !lines.iter().any(|l| l == m) {
                problems.push(format!("`{m}` never ran"));
            }
        }
        for m in sc.never {
            if lines.iter().any(|l| l == m) {
                problems.push(format!("`{m}` ran"));
            }
        }
        // Every step that acted was undone (when the scenario undoes).
        if sc.expect.iter().any(|m| m.starts_with("undo-")) {
            for l in &lines {
                if !l.starts_with("undo-") && sc.runbook.contains(&format!("echo undo-{l} ")) {
                    let undo = format!("undo-{l}");
                    if !lines.contains(&undo) {
                        problems.push(format!("`{l}` acted and was not undone"));
                    }
                }
            }
        }
        let held = locks(&fx);
        match sc.outcome {
            "stuck" if held != [id.clone()] => problems.push(format!("a stuck run must hold its service: {held:?}")),
            "stuck" => {}
            _ if !held.is_empty() => problems.push(format!("service still locked: {held:?}")),
            _ => {}
        }
        let verify = fx.drover().args(["evidence", "verify", &id]).output().unwrap();
        if verify.status.code() != Some(0) {
            problems.push(format!(
                "evidence does not verify: {}",
                String::from_utf8_lossy(&verify.stdout)
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{point}: {} (log {lines:?})", problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} crash points broke the run:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}

#[test]
fn a_drill_survives_a_crash_at_every_point() {
    campaign(&Scenario {
        runbook: format!(
            "name: rb\nservice: svc\nsteps:\n{}{}verify:\n  - {{name: up, uses: exec.check, with: {{command: [grep, -q, b, log]}}}}\nrollback:\n  - {{id: cleanup, uses: exec.run, with: {{command: [sh, -c, \"echo cleanup >> log\"]}}}}\n",
            logged("a", ""),
            logged("b", ", needs: [a]")
        ),
        args: &["drill", "rb", "--yes"],
        outcome: "passed",
        expect: &["a", "b", "cleanup"],
        never: &["undo-a", "undo-b"],
    });
}

#[test]
fn a_failing_failover_survives_a_crash_at_every_point() {
    campaign(&Scenario {
        runbook: format!(
            "name: rb\nservice: svc\nsteps:\n{}{}  - {{id: boom, uses: exec.run, with: {{command: [sh, -c, \"exit 1\"]}}, needs: [b]}}\nrollback:\n  - {{id: r, uses: exec.run, with: {{command: [sh, -c, \"echo r >> log\"]}}}}\n",
            logged("a", ""),
            logged("b", ", needs: [a]")
        ),
        args: &["failover", "rb", "--yes"],
        outcome: "failed",
        expect: &["a", "b", "undo-b", "undo-a", "r"],
        never: &[],
    });
}

#[test]
fn a_refused_preflight_survives_a_crash_at_every_point() {
    campaign(&Scenario {
        runbook: format!(
            "name: rb\nservice: svc\npreflight:\n  - {{name: gate, uses: exec.check, with: {{command: [\"false\"]}}}}\nsteps:\n{}rollback:\n  - {{id: r, uses: exec.run, with: {{command: [sh, -c, \"echo r >> log\"]}}}}\n",
            logged("a", "")
        ),
        args: &["drill", "rb", "--yes"],
        outcome: "refused",
        expect: &[],
        never: &["a", "r"],
    });
}

#[test]
fn a_stuck_run_survives_a_crash_at_every_point() {
    campaign(&Scenario {
        runbook: format!(
            "name: rb\nservice: svc\nsteps:\n{}  - {{id: boom, uses: exec.run, with: {{command: [\"false\"]}}, needs: [a]}}\nrollback:\n  - {{id: r, uses: exec.run, with: {{command: [sh, -c, \"echo r-tried >> log; exit 1\"]}}}}\n",
            logged("a", "")
        ),
        args: &["failover", "rb", "--yes"],
        outcome: "stuck",
        expect: &["a", "undo-a", "r-tried"],
        never: &[],
    });
}
