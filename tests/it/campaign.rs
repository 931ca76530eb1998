//! The crash campaign over the demo lab: the real `drover` binary runs the demo's drill
//! (`payments-demo`: preflight over PostgreSQL, S3 and HTTP, a heartbeat, fence east,
//! promote west, the workloads scaled up in west's Kubernetes, verification, cleanup)
//! on a fresh two-site lab ([`drover::demolab`]: a PostgreSQL primary and streaming
//! standby, a scratch server, two S3 endpoints, two Kubernetes API simulators over
//! HTTPS), and is killed in the middle: either at a named crash point
//! (`DROVER_CRASH_AT`, SIGABRT: nothing flushed or unwound) or by SIGKILL at a random
//! instant. Then `drover resume` takes the run over (the first resume of a crash-point
//! trial is killed again right after it took the run over) and ends it. Each trial
//! checks that:
//!
//! - the run ends with the outcome of an uninterrupted run (`passed`);
//! - no record written before the kill is lost or changed (the records after the resume
//!   start with exactly the same text), and the evidence verifies;
//! - no step that had completed before the kill starts again;
//! - the service lock is free;
//! - the lab is in the state the outcome says: west is a writable primary, east is a
//!   primary fenced read-only (by `ALTER SYSTEM`), west's workloads are back at zero
//!   replicas (the cleanup), east's still run, and the heartbeat rows reached west.
//!
//! The trials are seeded. `DROVER_CAMPAIGN_SEED=N` replays a campaign;
//! `DROVER_CAMPAIGN_TRIALS=N` sets how many (default 4, what CI runs: two crash points
//! and two random kills). With N at least the number of crash points, every crash point
//! is tried once and the rest are random kills and random occurrences of points. The
//! full run and what it found are in docs/RELIABILITY.md:
//!
//! ```text
//! DROVER_CAMPAIGN_TRIALS=120 cargo nextest run -p drover-tests -E 'test(campaign::)' --no-capture
//! ```

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use drover::demolab::{self, Lab};
use drover_lab::Node;
use drover_lab::k8s::Kind;
use serde_json::Value;

use crate::support::{Rng, drover_bin, seed};

#[derive(Clone, Debug)]
enum Trial {
    /// Abort at this crash point (`NAME` or `NAME#N`).
    Point(String),
    /// SIGKILL this long after the start.
    Kill(Duration),
}

impl std::fmt::Display for Trial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trial::Point(p) => write!(f, "crash at {p}"),
            Trial::Kill(d) => write!(f, "kill -9 after {} ms", d.as_millis()),
        }
    }
}

fn lab() -> Lab {
    demolab::build(&AtomicBool::new(false), &|_| {}).unwrap_or_else(|e| panic!("cannot build the demo lab: {e:?}"))
}

fn drover(lab: &Lab) -> Command {
    let mut cmd = Command::new(drover_bin());
    cmd.arg("--config")
        .arg(lab.config())
        .current_dir(lab.dir.path())
        .env_remove("DROVER_CRASH_AT")
        .env_remove("DROVER_CRASH_TRACE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

fn drill(lab: &Lab) -> Command {
    let mut cmd = drover(lab);
    cmd.args(["drill", "payments-demo", "--yes", "--reason", "crash campaign"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The lab's state store.
fn db(lab: &Lab) -> rusqlite::Connection {
    rusqlite::Connection::open(lab.dir.path().join("state.db")).expect("open the state store")
}

fn run_id(lab: &Lab) -> Option<String> {
    db(lab)
        .query_row("SELECT id FROM runs ORDER BY started_at DESC LIMIT 1", [], |r| r.get(0))
        .ok()
}

/// The run's records as stored (JSON text), in order.
fn records(lab: &Lab, id: &str) -> Vec<String> {
    let db = db(lab);
    let mut st = db
        .prepare("SELECT record FROM journal WHERE run_id = ?1 ORDER BY seq")
        .unwrap();
    st.query_map([id], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// The runs holding a service lock; none when drover was killed before it created the
/// store's tables.
fn locks(lab: &Lab) -> Vec<String> {
    let db = db(lab);
    let created: bool = db
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'service_locks'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if !created {
        return Vec::new();
    }
    let mut st = db.prepare("SELECT run_id FROM service_locks").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// (phase, step) of every step that finished `ok` in these records.
fn completed(records: &[String]) -> BTreeSet<(String, String)> {
    records
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r).ok())
        .filter(|r| r["event"] == "step_finished" && r["status"] == "ok")
        .map(|r| {
            (
                r["phase"].as_str().unwrap_or("").to_owned(),
                r["step"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The crash points an uninterrupted drill passes, in order, with repeats.
fn trace() -> (Vec<String>, Duration) {
    let lab = lab();
    let file = lab.dir.path().join("crash-trace");
    // The lab checks can fail: a lab the drill has not touched fails them.
    let untouched = lab_problems(&lab);
    assert!(
        untouched.len() >= 3,
        "a fresh lab passes the checks of a drilled one: {untouched:?}"
    );
    let started = Instant::now();
    let out = drill(&lab).env("DROVER_CRASH_TRACE", &file).output().unwrap();
    let took = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the uninterrupted drill must pass:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and an uninterrupted drill passes them.
    let drilled = lab_problems(&lab);
    assert!(
        drilled.is_empty(),
        "the uninterrupted drill left the lab wrong: {drilled:?}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    (text.lines().map(str::to_owned).collect(), took)
}

fn sql(lab: &Lab, node: Node, q: &str) -> String {
    lab.pg
        .sql(node, q)
        .unwrap_or_else(|e| format!("error: {e}"))
        .trim()
        .to_owned()
}

/// What is wrong with the lab after a passed drill (empty: nothing).
fn lab_problems(lab: &Lab) -> Vec<String> {
    let mut problems = Vec::new();
    let mut want = |what: &str, got: String, expected: &str| {
        if got != expected {
            problems.push(format!("{what}: `{got}`, expected `{expected}`"));
        }
    };
    want(
        "west in recovery",
        sql(lab, Node::Standby, "SELECT pg_is_in_recovery()"),
        "f",
    );
    want(
        "west read-only",
        sql(lab, Node::Standby, "SHOW default_transaction_read_only"),
        "off",
    );
    want(
        "east in recovery",
        sql(lab, Node::Primary, "SELECT pg_is_in_recovery()"),
        "f",
    );
    want(
        "east read-only (fenced)",
        sql(lab, Node::Primary, "SHOW default_transaction_read_only"),
        "on",
    );
    let beats = sql(lab, Node::Standby, "SELECT count(*) > 0 FROM drover_heartbeat");
    want("heartbeat rows on west", beats, "t");
    for (kind, name, replicas) in demolab::WORKLOADS {
        want(
            &format!("west {name} replicas"),
            format!("{:?}", lab.west_k8s.replicas(kind, "payments", name)),
            "Some(0)",
        );
        want(
            &format!("east {name} replicas"),
            format!("{:?}", lab.east_k8s.replicas(kind, "payments", name)),
            &format!("{:?}", Some(replicas)),
        );
    }
    problems
}

/// One trial on a fresh lab; the problems found (empty: the trial passed).
fn trial(t: &Trial) -> Vec<String> {
    let lab = lab();
    let mut cmd = drill(&lab);
    let crashed = match t {
        Trial::Point(p) => {
            let out = cmd.env("DROVER_CRASH_AT", p).output().unwrap();
            out.status.code().is_none()
        }
        Trial::Kill(after) => {
            let mut child = cmd.stderr(Stdio::null()).spawn().unwrap();
            let deadline = Instant::now() + *after;
            let mut exited = None;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().unwrap() {
                    exited = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(2).min(deadline - Instant::now()));
            }
            match exited {
                Some(_) => false,
                None => {
                    let _ = child.kill();
                    child.wait().unwrap().code().is_none()
                }
            }
        }
    };
    let mut problems = Vec::new();
    let Some(id) = run_id(&lab) else {
        // Killed before the run's first record committed: nothing may have happened.
        if !locks(&lab).is_empty() {
            problems.push("no run, yet the service is locked".into());
        }
        if lab.west_k8s.replicas(Kind::Deployment, "payments", "api") != Some(0)
            || sql(&lab, Node::Standby, "SELECT pg_is_in_recovery()") != "t"
        {
            problems.push("no run, yet the lab changed".into());
        }
        return problems;
    };
    let before = records(&lab, &id);
    let done_before = completed(&before);
    if crashed {
        let mut again = drover(&lab);
        again.args(["resume", &id, "--yes", "--format", "json"]);
        if matches!(t, Trial::Point(_)) {
            again.env("DROVER_CRASH_AT", "append.after:resumed");
        }
        let out = again.stderr(Stdio::null()).output().unwrap();
        if out.status.code().is_none() {
            let out = drover(&lab)
                .args(["resume", &id, "--yes", "--format", "json"])
                .output()
                .unwrap();
            if out.status.code().is_none() {
                problems.push("the second resume crashed".into());
            }
        }
    }
    let after = records(&lab, &id);
    if after.len() < before.len() || after[..before.len()] != before[..] {
        problems.push(format!(
            "records before the kill were lost or changed ({} before, {} after)",
            before.len(),
            after.len()
        ));
    }
    let outcome: Option<String> = db(&lab)
        .query_row("SELECT outcome FROM runs WHERE id = ?1", [&id], |r| r.get(0))
        .unwrap_or(None);
    if outcome.as_deref() != Some("passed") {
        problems.push(format!("outcome {outcome:?}, expected passed"));
    }
    for r in after.iter().skip(before.len()) {
        let r: Value = serde_json::from_str(r).unwrap();
        if r["event"] == "step_started" {
            let key = (
                r["phase"].as_str().unwrap_or("").to_owned(),
                r["step"].as_str().unwrap_or("").to_owned(),
            );
            if done_before.contains(&key) {
                problems.push(format!("{} step `{}` had completed and started again", key.0, key.1));
            }
        }
    }
    let held = locks(&lab);
    if !held.is_empty() {
        problems.push(format!("service still locked by {held:?}"));
    }
    let verify = drover(&lab).args(["evidence", "verify", &id]).output().unwrap();
    if verify.status.code() != Some(0) {
        problems.push(format!(
            "evidence does not verify: {}",
            String::from_utf8_lossy(&verify.stdout).trim()
        ));
    }
    if outcome.as_deref() == Some("passed") {
        problems.extend(lab_problems(&lab));
    }
    problems
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The trials of a campaign: with room for them, every distinct crash point once, then
/// random occurrences of points and random kills, alternating; otherwise half points
/// drawn at random, half kills.
fn plan(rng: &mut Rng, points: &[String], took: Duration, n: usize) -> Vec<Trial> {
    let mut distinct: Vec<&String> = Vec::new();
    for p in points {
        if !distinct.contains(&p) {
            distinct.push(p);
        }
    }
    let mut trials = Vec::new();
    if n >= distinct.len() {
        trials.extend(distinct.iter().map(|p| Trial::Point((*p).clone())));
    }
    let random_kill =
        |rng: &mut Rng| Trial::Kill(Duration::from_millis((rng.next() % took.as_millis().max(1) as u64) + 1));
    let random_point = |rng: &mut Rng| {
        let i = rng.below(points.len());
        let nth = points[..=i].iter().filter(|p| **p == points[i]).count();
        Trial::Point(if nth == 1 {
            points[i].clone()
        } else {
            format!("{}#{nth}", points[i])
        })
    };
    while trials.len() < n {
        let t = if trials.len() % 2 == 0 {
            random_point(rng)
        } else {
            random_kill(rng)
        };
        trials.push(t);
    }
    trials
}

#[test]
fn the_demo_drill_survives_kills_at_random_moments_and_crash_points() {
    let seed = seed("DROVER_CAMPAIGN_SEED");
    let n = env_u64("DROVER_CAMPAIGN_TRIALS").unwrap_or(4) as usize;
    let (points, took) = trace();
    let distinct: BTreeSet<&String> = points.iter().collect();
    eprintln!(
        "campaign: seed {seed} (replay with DROVER_CAMPAIGN_SEED={seed}), {n} trials; \
         the uninterrupted drill took {} ms and passed {} crash points ({} distinct)",
        took.as_millis(),
        points.len(),
        distinct.len()
    );
    assert!(distinct.len() >= 20, "too few crash points: {distinct:?}");
    let mut rng = Rng(seed);
    let trials = plan(&mut rng, &points, took, n);
    let started = Instant::now();
    let mut failures = Vec::new();
    for (i, t) in trials.iter().enumerate() {
        let at = Instant::now();
        let problems = trial(t);
        eprintln!(
            "trial {}/{}: {t}: {} ({} ms)",
            i + 1,
            trials.len(),
            if problems.is_empty() {
                "ok".to_owned()
            } else {
                problems.join("; ")
            },
            at.elapsed().as_millis()
        );
        if !problems.is_empty() {
            failures.push(format!("{t}: {}", problems.join("; ")));
        }
    }
    eprintln!(
        "campaign: {} of {} trials passed in {:.0} s (seed {seed})",
        trials.len() - failures.len(),
        trials.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} trials broke the run (seed {seed}):\n{}",
        failures.len(),
        trials.len(),
        failures.join("\n")
    );
}
