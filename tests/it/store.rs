//! The PostgreSQL state store end to end, through the real `drover` binary: the same
//! drills as on SQLite with `state: {url: "postgres://..."}` pointing at a real server
//! from the lab. A drill passes and its evidence verifies; a drill killed half-way is
//! resumed to its end without running a completed step again; a failing drill opens
//! its corrective action; the database itself refuses to change a journal row. (The
//! store's contract, operation by operation, is tested on both backends in
//! `drover-engine`'s `store::tests`.)

use drover_lab::{Node, PgPair};
use serde_json::Value;

use crate::engine::{drover_json, log};
use crate::support::Fixture;

const CMDB: &str = "items:\n  - {id: svc, kind: business_service}\n";

fn chain(ids: &[&str], fail: Option<&str>) -> String {
    let mut text = String::from("name: rb\nservice: svc\nsteps:\n");
    for (i, id) in ids.iter().enumerate() {
        let needs = if i == 0 {
            String::new()
        } else {
            format!(", needs: [{}]", ids[i - 1])
        };
        let cmd = if Some(*id) == fail {
            format!("echo {id} >> log; exit 3")
        } else {
            format!("echo {id} >> log")
        };
        text.push_str(&format!(
            "  - {{id: {id}, uses: exec.run, with: {{command: [sh, -c, \"{cmd}\"], undo: [sh, -c, \"echo undo-{id} >> log\"]}}{needs}}}\n"
        ));
    }
    text
}

/// A fixture whose state store is the `postgres` database of a server of its own.
fn lab(runbook: &str) -> (Fixture, PgPair) {
    let pair = PgPair::start_single().expect("start PostgreSQL");
    let fx = Fixture::empty();
    fx.write(
        "drover.yaml",
        &format!(
            "sites: [{{name: east}}]\nstate: {{url: \"{}\"}}\nengine: {{retry_backoff: 50ms}}\ncmdb: cmdb.yaml\nrunbooks: runbooks\n",
            pair.primary_url()
        ),
    );
    fx.write("cmdb.yaml", CMDB);
    fx.write("runbooks/rb.yaml", runbook);
    (fx, pair)
}

fn verify(fx: &Fixture, id: &str) -> Value {
    let out = fx
        .drover()
        .args(["evidence", "verify", id, "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "evidence verify {id}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_drill_on_postgres_passes_and_its_evidence_verifies() {
    let (fx, pair) = lab(&chain(&["a", "b", "c"], None));
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!((code, run["outcome"].as_str()), (0, Some("passed")), "{run:#}");
    assert_eq!(log(&fx), ["a", "b", "c"]);
    let id = run["id"].as_str().unwrap().to_owned();
    verify(&fx, &id);
    let (_, list) = drover_json(&fx, &["runs", "list"]);
    assert_eq!(list[0]["id"], id.as_str());
    // The records are in PostgreSQL, and the server refuses to change them.
    let n: usize = pair
        .sql(
            Node::Primary,
            &format!("SELECT count(*) FROM journal WHERE run_id = '{id}'"),
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 8, "{n} records");
    for sql in [
        format!("UPDATE journal SET record = 'x' WHERE run_id = '{id}'"),
        format!("DELETE FROM journal WHERE run_id = '{id}'"),
        "TRUNCATE journal".to_owned(),
    ] {
        let e = pair.sql(Node::Primary, &sql).expect_err(&sql).to_string();
        assert!(e.contains("the journal is append-only"), "{sql}: {e}");
    }
    verify(&fx, &id);
    // No password in what drover says about its store.
    let out = fx.drover().args(["runs", "show", "nope"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("postgres://drover@127.0.0.1:"), "{err}");
    assert!(!err.contains(pair.password()), "{err}");
}

#[test]
fn a_drill_killed_half_way_on_postgres_resumes_to_its_end() {
    let (fx, _pair) = lab(&chain(&["a", "b", "c", "d"], None));
    let out = fx
        .drover()
        .args(["drill", "rb", "--yes"])
        .env("DROVER_CRASH_AT", "append.after:step_finished:steps")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "drover did not crash");
    let (_, list) = drover_json(&fx, &["runs", "list"]);
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let (_, before) = drover_json(&fx, &["runs", "show", &id]);
    assert_eq!(before["state"], "interrupted", "{before:#}");
    let done: Vec<String> = log(&fx);
    assert_eq!(done, ["a"]);
    let (code, after) = drover_json(&fx, &["resume", &id]);
    assert_eq!((code, after["outcome"].as_str()), (0, Some("passed")), "{after:#}");
    // The step that had completed did not run again.
    assert_eq!(log(&fx), ["a", "b", "c", "d"]);
    let v = verify(&fx, &id);
    assert_eq!(v["run"], id.as_str(), "{v:#}");
    // The service is free: the next drill starts.
    let (code, _) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0);
}

#[test]
fn a_failing_drill_on_postgres_opens_a_corrective_action_and_a_passing_one_closes_it() {
    let (fx, _pair) = lab(&chain(&["a", "b"], Some("b")));
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_ne!(code, 0);
    assert_eq!(run["outcome"], "failed", "{run:#}");
    assert!(log(&fx).contains(&"undo-a".to_owned()), "{:?}", log(&fx));
    let (_, actions) = drover_json(&fx, &["actions", "list"]);
    let actions = actions.as_array().unwrap().clone();
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert_eq!(
        (actions[0]["kind"].as_str(), actions[0]["state"].as_str()),
        (Some("failed_step"), Some("open"))
    );
    fx.write("runbooks/rb.yaml", &chain(&["a", "b"], None));
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    let (_, actions) = drover_json(&fx, &["actions", "list"]);
    assert_eq!(actions[0]["state"], "closed", "{actions:#}");
}
