//! High availability with real processes: two `drover serve` daemons (nodes `east` and
//! `west`) on one real PostgreSQL state store from the lab, over real TLS. The leader is
//! killed with SIGKILL, paused with SIGSTOP past its lease, cut off from the store by a
//! TCP proxy the test breaks; the store itself is restarted; a schedule fires across a
//! takeover. Each case checks the run's end, that no step completed by one node ran
//! again, the node and epoch of every stretch of the journal, and the evidence.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_lab::{Node, PgPair, TcpProxy};
use serde_json::{Value, json};

use crate::daemon::{Daemon, TOKENS, certificates, sha, start_run, start_with, token};
use crate::support::{Fixture, drover_bin};

/// The lease of the test clusters: renewed every 667 ms.
const LEASE_S: f64 = 2.0;

/// What the bounds of the protocol (the lease plus one renewal interval) allow on top
/// for polling and a loaded machine. The figures themselves are measured by
/// `benches/ha.rs` (docs/BENCHMARKS.md); these only catch a takeover that is late by
/// a whole lease.
const SLACK_S: f64 = 1.5;

const CMDB: &str = "tiers: {gold: {rto: 15m, rpo: 1m}}\nitems:\n  - {id: svc, kind: business_service, tier: gold}\n  - {id: other, kind: business_service}\n";

/// A chain of `n` steps of `secs` each; every step logs its start and its end.
fn chain(n: usize, secs: f64) -> String {
    let mut text = String::from("name: chain\nservice: svc\nsteps:\n");
    for i in 0..n {
        let needs = if i == 0 {
            String::new()
        } else {
            format!(", needs: [s{}]", i - 1)
        };
        text.push_str(&format!(
            "  - {{id: s{i}, uses: exec.run, with: {{command: [sh, -c, \"echo start s{i} >> steps.log; sleep {secs}; echo end s{i} >> steps.log\"]}}{needs}}}\n"
        ));
    }
    text
}

const QUICK: &str = "name: quick\nservice: other\nsteps:\n  - {id: a, uses: exec.run, with: {command: [sh, -c, \"echo fired >> fired.log\"]}}\n";

/// Two nodes' files in one folder and their shared PostgreSQL store.
struct Cluster {
    fx: Fixture,
    ca: String,
    pg: Box<PgPair>,
}

impl Cluster {
    fn new(extra: &str) -> Cluster {
        let pg = Box::new(PgPair::start_single().expect("start PostgreSQL"));
        pg.sql(Node::Primary, "CREATE DATABASE drover_state").unwrap();
        let fx = Fixture::empty();
        let ca = certificates(&fx);
        fx.write("cmdb.yaml", CMDB);
        fx.write("runbooks/chain.yaml", &chain(8, 0.4));
        fx.write("runbooks/quick.yaml", QUICK);
        let c = Cluster { fx, ca, pg };
        for node in ["east", "west"] {
            c.write_config(node, c.pg.port(Node::Primary), extra);
        }
        c
    }

    /// `drover-NODE.yaml`, reaching the store on `port` (the server's, or a proxy's).
    fn write_config(&self, node: &str, port: u16, extra: &str) {
        let url = self.pg.url_with_port(port).replace("/postgres?", "/drover_state?");
        // West keeps the password out of its config: `state.password` names a file.
        let (url, password) = if node == "west" {
            let secret = "secrets/state-password";
            self.fx.write(secret, self.pg.password());
            std::fs::set_permissions(
                self.fx.path(secret),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            (
                url.replace(&format!(":{}@", self.pg.password()), "@"),
                format!(", password: {{file: {secret}}}"),
            )
        } else {
            (url, String::new())
        };
        let tokens: Vec<String> = TOKENS
            .iter()
            .map(|(role, t)| format!("{{name: {role}-bot, role: {role}, sha256: \"{}\"}}", sha(t)))
            .collect();
        self.fx.write(
            &format!("drover-{node}.yaml"),
            &format!(
                r#"sites: [{{name: east}}, {{name: west}}]
state: {{url: "{url}"{password}}}
ha: {{node: {node}, site: {node}, lease: {LEASE_S}s}}
engine: {{max_parallel: 4, retry_backoff: 50ms}}
api:
  listen: "127.0.0.1:0"
  tls: {{cert: tls/server.pem, key: tls/server.key}}
  tokens: [{}]
daemon: {{shutdown_grace: 2s}}
cmdb: cmdb.yaml
runbooks: runbooks
{extra}"#,
                tokens.join(", ")
            ),
        );
    }

    fn start(&self, node: &str) -> Daemon {
        let mut cmd = Command::new(drover_bin());
        cmd.current_dir(self.fx.root())
            .arg("--config")
            .arg(self.fx.path(&format!("drover-{node}.yaml")))
            .arg("serve");
        start_with(cmd, &self.ca)
    }

    /// East first (it leads), then west (it stands by).
    fn start_both(&self) -> (Daemon, Daemon) {
        let east = self.start("east");
        wait_role(&east, "leader", Duration::from_secs(20));
        let west = self.start("west");
        wait_role(&west, "standby", Duration::from_secs(20));
        (east, west)
    }

    fn steps_log(&self) -> String {
        std::fs::read_to_string(self.fx.path("steps.log")).unwrap_or_default()
    }
}

fn readyz(d: &Daemon) -> Value {
    let (_, text) = d.call("GET", "/readyz", None, None);
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Waits until the node plays `role`; how long it took.
fn wait_role(d: &Daemon, role: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = readyz(d);
        if r["role"] == role {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not {role} within {within:?}: {r}\n{}",
            d.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(d: &Daemon, id: &str) -> Value {
    d.json("GET", &format!("/api/v1/runs/{id}"), "viewer", None).1
}

/// Waits until `n` steps of the run have finished.
fn wait_steps_done(d: &Daemon, id: &str, n: usize) {
    let start = Instant::now();
    loop {
        let r = run(d, id);
        let done = r["steps"]
            .as_array()
            .map_or(0, |s| s.iter().filter(|s| s["status"] == "ok").count());
        if done >= n {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{n} steps not done: {r:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the run ends, polling `d`, and returns it.
fn wait_end(d: &Daemon, id: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let r = run(d, id);
        if !r["outcome"].is_null() && r["sealed_by"].is_string() {
            return r;
        }
        assert!(
            start.elapsed() < within,
            "run {id} did not end within {within:?}: {r:#}\n{}",
            d.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The steps that `node` completed (their `step_finished` is in a stretch it wrote).
fn completed_by(journal: &[Value], node: &str) -> Vec<String> {
    journal
        .iter()
        .filter(|r| r["writer"]["node"] == node && r["event"] == "step_finished")
        .filter_map(|r| r["step"].as_str().map(str::to_owned))
        .collect()
}

/// The run's stored records, from its evidence bundle (which also checks offline).
fn journal(c: &Cluster, d: &Daemon, id: &str) -> Vec<Value> {
    let (status, bundle) = d.call(
        "GET",
        &format!("/api/v1/runs/{id}/evidence"),
        Some(token("auditor")),
        None,
    );
    assert_eq!(status, 200, "{bundle}");
    let path = c.fx.path(&format!("{id}.evidence.json"));
    std::fs::write(&path, &bundle).unwrap();
    let out = Command::new(drover_bin())
        .current_dir(c.fx.root())
        .args(["evidence", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the evidence does not verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&bundle).unwrap();
    v["records"]
        .as_array()
        .expect("records in the bundle")
        .iter()
        .map(|r| match r {
            Value::String(s) => serde_json::from_str(s).unwrap(),
            other => other.clone(),
        })
        .collect()
}

/// No step ran again once completed, and nothing ran unjournaled: every step has one
/// `step_finished`, no `step_started` after it, and the processes the steps spawned
/// (their `start` lines) are no more than the journal's `step_started` records (each is
/// committed before its process is spawned; a kill between the two spawns nothing).
fn assert_no_completed_step_ran_again(c: &Cluster, journal: &[Value], steps: usize) {
    let log = c.steps_log();
    for i in 0..steps {
        let step = format!("s{i}");
        let of_step = |r: &&Value| r["phase"] == "steps" && r["step"] == step.as_str();
        let events: Vec<&str> = journal
            .iter()
            .filter(of_step)
            .filter_map(|r| r["event"].as_str())
            .collect();
        let finished = events.iter().filter(|e| **e == "step_finished").count();
        assert_eq!(finished, 1, "step {step}: {events:?}");
        let last_start = events.iter().rposition(|e| *e == "step_started");
        let finish = events.iter().position(|e| *e == "step_finished");
        assert!(
            last_start < finish,
            "step {step} started again after it finished: {events:?}"
        );
        let journaled = events.iter().filter(|e| **e == "step_started").count();
        let spawned = log.lines().filter(|l| *l == format!("start {step}")).count();
        assert!(
            (1..=journaled).contains(&spawned),
            "step {step}: {spawned} processes for {journaled} journaled starts:\n{log}"
        );
    }
}

/// The nodes and epochs of the journal's stretches, in order.
fn writers(run: &Value) -> Vec<(String, i64)> {
    run["writers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["node"].as_str().unwrap().to_owned(), w["epoch"].as_i64().unwrap()))
        .collect()
}

#[test]
fn two_daemons_elect_one_leader_and_a_standby_serves_reads_and_points_to_the_leader() {
    let c = Cluster::new("");
    let (east, west) = c.start_both();
    for d in [&east, &west] {
        let (status, cluster) = d.json("GET", "/api/v1/cluster", "viewer", None);
        assert_eq!(status, 200, "{cluster}");
        assert_eq!(cluster["leader"], "east", "{cluster:#}");
        assert_eq!(cluster["epoch"], 1, "{cluster:#}");
        let members = cluster["members"].as_array().unwrap();
        assert_eq!(members.len(), 2, "{cluster:#}");
        assert_eq!(members.iter().filter(|m| m["leader"] == true).count(), 1, "{cluster:#}");
        assert!(members.iter().any(|m| m["node"] == "west" && m["site"] == "west"));
    }
    // Reads work on the standby; a mutating call is 503 and names the leader.
    let (status, _) = west.json("GET", "/api/v1/runs", "viewer", None);
    assert_eq!(status, 200);
    let (status, refused) = west.json(
        "POST",
        "/api/v1/runs",
        "operator",
        Some(json!({"runbook": "quick", "mode": "drill"})),
    );
    assert_eq!(status, 503, "{refused:#}");
    assert_eq!(refused["leader"], "east");
    assert_eq!(refused["leader_address"], east.url.as_str());
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the leader is east")
    );
    // Credentials come first: no token is still 401 on a standby.
    let (status, _) = west.call("POST", "/api/v1/runs", None, Some(json!({"runbook": "quick"})));
    assert_eq!(status, 401);
    // The CLI writes unfenced: while a node leads, it refuses to start a run here.
    let out = Command::new(drover_bin())
        .current_dir(c.fx.root())
        .arg("--config")
        .arg(c.fx.path("drover-west.yaml"))
        .args(["drill", "quick", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("node east leads this state store (epoch 1"), "{stderr}");
    assert!(stderr.contains(&format!("through its API at {}", east.url)), "{stderr}");
    // A run on the leader, read from the standby: the records name east at epoch 1.
    let id = start_run(&east, "quick", "drill");
    let done = wait_end(&west, &id, Duration::from_secs(30));
    assert_eq!(done["outcome"], "passed", "{done:#}");
    assert_eq!(writers(&done), [("east".to_owned(), 1)]);
    let (_, metrics) = east.call("GET", "/metrics", Some(token("viewer")), None);
    assert!(metrics.contains("drover_ha_leader 1"), "{metrics}");
    assert!(metrics.contains("drover_ha_epoch 1"), "{metrics}");
    let (_, metrics) = west.call("GET", "/metrics", Some(token("viewer")), None);
    assert!(metrics.contains("drover_ha_leader 0"), "{metrics}");
    let (_, page) = west.call("GET", "/", Some(token("viewer")), None);
    assert!(page.contains("west (standby; the leader is east)"), "{page}");
    let config = c.fx.read("drover-west.yaml");
    assert!(!config.contains(c.pg.password()), "{config}");
    assert!(!metrics.contains("drover_ha_lease_renewals_total 0"), "{metrics}");
}

#[test]
fn kill_9_of_the_leader_mid_drill_the_standby_takes_over_and_the_run_passes() {
    let c = Cluster::new("");
    let (mut east, west) = c.start_both();
    let id = start_run(&east, "chain", "drill");
    wait_steps_done(&east, &id, 3);
    east.signal("-KILL");
    let killed = Instant::now();
    east.wait_exit(Duration::from_secs(10));
    let took = wait_role(&west, "leader", Duration::from_secs(20));
    // Within the lease plus one renewal (and the poll's slack).
    assert!(
        took.as_secs_f64() <= LEASE_S + LEASE_S / 3.0 + SLACK_S,
        "takeover took {took:?}"
    );
    let done = wait_end(&west, &id, Duration::from_secs(60));
    assert_eq!(done["outcome"], "passed", "{done:#}");
    assert!(killed.elapsed() < Duration::from_secs(30));
    assert_eq!(writers(&done), [("east".to_owned(), 1), ("west".to_owned(), 2)]);
    let journal = journal(&c, &west, &id);
    assert_no_completed_step_ran_again(&c, &journal, 8);
    assert!(completed_by(&journal, "east").len() >= 3);
    let log = c.steps_log();
    for i in 0..8 {
        assert!(log.contains(&format!("end s{i}")), "{log}");
    }
    // The report says who ran what.
    let (_, html) = west.call(
        "GET",
        &format!("/api/v1/runs/{id}/report?format=html"),
        Some(token("viewer")),
        None,
    );
    assert!(html.contains("<h2>Nodes</h2>"), "{html}");
    assert!(html.contains("node west (epoch 2) took the run over from node east (epoch 1)"));
}

#[test]
fn a_paused_leader_is_fenced_after_a_takeover_and_steps_down_when_it_wakes() {
    let c = Cluster::new("");
    let (east, west) = c.start_both();
    let id = start_run(&east, "chain", "drill");
    wait_steps_done(&east, &id, 2);
    east.signal("-STOP");
    wait_role(&west, "leader", Duration::from_secs(20));
    // West resumes the run and completes a step of its own before east wakes.
    let start = Instant::now();
    loop {
        let r = run(&west, &id);
        if writers(&r).iter().any(|(n, _)| n == "west")
            && r["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["status"] == "ok")
                .count()
                >= 4
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{r:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    east.signal("-CONT");
    wait_role(&east, "standby", Duration::from_secs(10));
    let done = wait_end(&west, &id, Duration::from_secs(60));
    assert_eq!(done["outcome"], "passed", "{done:#}");
    // Nothing east wrote landed after the new epoch: its stretch comes first, alone.
    assert_eq!(writers(&done), [("east".to_owned(), 1), ("west".to_owned(), 2)]);
    let journal = journal(&c, &west, &id);
    assert_no_completed_step_ran_again(&c, &journal, 8);
    // Its step in flight ended while it was paused; the record of that end was
    // refused by the fence (before the journal's own key could refuse it).
    let log = east.stderr.lock().unwrap().clone();
    assert!(log.contains("stepping down"), "{log}");
    assert!(
        log.contains("fenced: this node wrote as the leader of epoch 1, but west leads at epoch 2"),
        "{log}"
    );
    // It stays a standby and points to west.
    let (status, refused) = east.json(
        "POST",
        "/api/v1/runs",
        "operator",
        Some(json!({"runbook": "quick", "mode": "drill"})),
    );
    assert_eq!(status, 503, "{refused:#}");
    assert_eq!(refused["leader"], "west");
}

#[test]
fn a_leader_cut_off_from_the_store_stops_and_the_standby_takes_over() {
    let c = Cluster::new("");
    let target = SocketAddr::from(([127, 0, 0, 1], c.pg.port(Node::Primary)));
    let proxy = TcpProxy::start(target).unwrap();
    c.write_config("east", proxy.port(), "");
    let (east, west) = c.start_both();
    let id = start_run(&east, "chain", "drill");
    wait_steps_done(&east, &id, 2);
    proxy.cut();
    let cut = Instant::now();
    // East stops leading within its lease (plus a renewal interval for the attempt that
    // finds out), before the store would let west take over.
    wait_role(&east, "standby", Duration::from_secs(10));
    let stepped_down = cut.elapsed();
    assert!(
        stepped_down.as_secs_f64() <= LEASE_S + LEASE_S / 3.0 + SLACK_S,
        "east stepped down after {stepped_down:?}"
    );
    wait_role(&west, "leader", Duration::from_secs(20));
    let done = wait_end(&west, &id, Duration::from_secs(60));
    assert_eq!(done["outcome"], "passed", "{done:#}");
    assert_eq!(writers(&done), [("east".to_owned(), 1), ("west".to_owned(), 2)]);
    proxy.heal();
    std::thread::sleep(Duration::from_secs_f64(LEASE_S));
    assert_eq!(readyz(&east)["role"], "standby");
    let journal = journal(&c, &west, &id);
    assert_no_completed_step_ran_again(&c, &journal, 8);
}

#[test]
fn the_state_store_restarted_mid_run_the_leader_reconnects_and_the_run_goes_on() {
    let c = Cluster::new("");
    let (east, _west) = c.start_both();
    let id = start_run(&east, "chain", "drill");
    wait_steps_done(&east, &id, 2);
    c.pg.stop_primary().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.pg.start_primary().unwrap();
    let done = wait_end(&east, &id, Duration::from_secs(60));
    assert_eq!(done["outcome"], "passed", "{done:#}");
    let journal = journal(&c, &east, &id);
    assert_no_completed_step_ran_again(&c, &journal, 8);
    let log = c.steps_log();
    for i in 0..8 {
        assert!(log.contains(&format!("end s{i}")), "{log}");
    }
}

#[test]
fn a_schedule_fires_once_per_slot_across_two_daemons_and_a_takeover() {
    let c = Cluster::new("schedules: [{name: every3, runbook: quick, cron: \"*/3 * * * * *\"}]");
    let (mut east, west) = c.start_both();
    // Waits for the schedule's runs, not for a fixed time: a loaded machine starts slowly.
    let count = || std::fs::read_to_string(c.fx.path("fired.log")).map_or(0, |f| f.lines().count());
    let fired = |at_least: usize, within: Duration| {
        let start = Instant::now();
        loop {
            let n = count();
            if n >= at_least {
                return n;
            }
            assert!(
                start.elapsed() < within,
                "{n} firings, expected {at_least} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    fired(2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    east.signal("-KILL");
    east.wait_exit(Duration::from_secs(10));
    let before = count();
    wait_role(&west, "leader", Duration::from_secs(20));
    fired(before + 2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    let (_, runs) = west.json("GET", "/api/v1/runs", "viewer", None);
    let runs: Vec<&Value> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["runbook"] == "quick")
        .collect();
    // One run per 3-second slot at most.
    let mut slots: Vec<i64> = runs
        .iter()
        .map(|r| {
            let t = humantime::parse_rfc3339_weak(r["started_at"].as_str().unwrap()).unwrap();
            let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
            secs.div_euclid(3)
        })
        .collect();
    let n = slots.len();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), n, "two runs in one slot: {runs:#?}");
    assert!(n >= 4, "too few firings: {runs:#?}");
    // Both nodes fired: east before the kill, west after it.
    let mut by = std::collections::BTreeSet::new();
    for r in &runs {
        let id = r["id"].as_str().unwrap();
        for (node, _) in writers(&run(&west, id)) {
            by.insert(node);
        }
    }
    assert_eq!(by.into_iter().collect::<Vec<_>>(), ["east", "west"]);
    let fired = std::fs::read_to_string(c.fx.path("fired.log")).unwrap();
    assert_eq!(fired.lines().count(), n, "{fired}");
}

#[test]
fn ha_on_an_embedded_store_or_with_a_bad_lease_is_refused_with_its_location() {
    let fx = Fixture::new();
    let config = fx.read("drover.yaml");
    fx.write(
        "drover.yaml",
        &format!("{config}\nha:\n  node: east\n  site: north\n  lease: 100ms\n"),
    );
    let stderr = crate::support::validate_fails(&fx);
    let lines = crate::support::error_lines(&stderr);
    let n = config.lines().count();
    let at = |line: usize, col: usize| format!("drover.yaml:{}:{col}: error: ", n + line);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&at(3, 9)) && l.contains("ha needs a PostgreSQL state store")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.contains(&at(4, 9)) && l.contains("north")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&at(5, 10)) && l.contains("lease must be between 1s and 10m")),
        "{stderr}"
    );
}
