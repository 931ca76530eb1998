//! High availability: takeover time. Two released `drover serve` daemons (nodes `east`
//! and `west`) share a real PostgreSQL state store from the lab (a fresh database per
//! trial). East leads and runs a drill (a chain of 40 steps of 0.25 s); once two steps
//! are done, and after a delay that puts the kill at a different point of the renewal
//! cycle in each trial, it is killed with SIGKILL. Measured, from the kill (wall clock, one machine):
//!
//! - **leader**: until west's `/readyz` says `leader` (polled every 10 ms);
//! - **resumed**: until west's first journal record of the run (`resumed`);
//! - **first step**: until west's first `step_started` record of the run, the figure
//!   the goal is about (leader kill to first step of the resumed run).
//!
//! The records' times are read from the run's evidence bundle, so polling adds nothing
//! to the last two. The protocol's bound is the lease plus one renewal interval (a
//! third of the lease): the standby may take the lease only once it has expired by the
//! database's clock, and it tries every renewal interval.
//!
//! ```text
//! cargo build --release -p drover && cargo bench -p drover-benches --bench ha
//! # options: -- --trials 10 --lease 5 ; DROVER_BIN=/path/to/drover
//! ```

#[path = "common.rs"]
mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant, SystemTime};

use common::{Results, arg, binary, serve, sha256_hex};
use drover_lab::{Node, PgPair};
use serde_json::Value;

const TOKEN: &str = "bench-token-0123456789";

struct Daemon {
    child: Child,
    url: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &Path, dir: &Path, node: &str) -> Daemon {
    let (child, url) = serve(bin, dir, &format!("drover-{node}.yaml"));
    Daemon { child, url }
}

struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn call(&self, method: reqwest::Method, url: &str, body: Option<&str>) -> (u16, String) {
        self.rt.block_on(async {
            let mut req = self
                .client
                .request(method, url)
                .header("authorization", format!("Bearer {TOKEN}"));
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b.to_owned());
            }
            match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.text().await.unwrap_or_default())
                }
                Err(_) => (0, String::new()),
            }
        })
    }

    fn get(&self, url: &str) -> Value {
        serde_json::from_str(&self.call(reqwest::Method::GET, url, None).1).unwrap_or(Value::Null)
    }
}

fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn at(record: &Value) -> SystemTime {
    drover_engine::journal::parse_rfc3339(record["at"].as_str().unwrap()).unwrap()
}

fn secs(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).map_or(0.0, |d| d.as_secs_f64())
}

fn main() -> ExitCode {
    let trials = arg("--trials", 10) as usize;
    let lease = arg("--lease", 5);
    let results = Results::from_args("ha");
    let case = format!("kill -9 of the leader, lease {lease}s");
    let bin = binary();
    if !bin.exists() {
        eprintln!("{} is missing: cargo build --release -p drover", bin.display());
        return ExitCode::FAILURE;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pg = PgPair::start_single().expect("start PostgreSQL");
    let http = Http {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    let hash = sha256_hex(TOKEN);
    let mut rows: Vec<(f64, f64, f64)> = Vec::new();
    for trial in 0..trials {
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel);
        let db = format!("drover_ha_{trial}");
        pg.sql(Node::Primary, &format!("CREATE DATABASE {db}")).unwrap();
        let url = pg.primary_url().replace("/postgres?", &format!("/{db}?"));
        std::fs::create_dir_all(p("runbooks")).unwrap();
        for node in ["east", "west"] {
            std::fs::write(
                p(&format!("drover-{node}.yaml")),
                format!(
                    "state: {{url: \"{url}\"}}\nha: {{node: {node}, lease: {lease}s}}\nengine: {{max_parallel: 4}}\napi:\n  listen: \"127.0.0.1:0\"\n  tokens: [{{name: bench, role: admin, sha256: \"{hash}\"}}]\ncmdb: cmdb.yaml\nrunbooks: runbooks\n"
                ),
            )
            .unwrap();
        }
        std::fs::write(p("cmdb.yaml"), "items:\n  - {id: svc, kind: business_service}\n").unwrap();
        let steps: String = (0..40)
            .map(|i| {
                let needs = if i == 0 {
                    String::new()
                } else {
                    format!(", needs: [s{}]", i - 1)
                };
                format!("  - {{id: s{i}, uses: exec.run, with: {{command: [sleep, \"0.25\"]}}{needs}}}\n")
            })
            .collect();
        std::fs::write(
            p("runbooks/chain.yaml"),
            format!("name: chain\nservice: svc\nsteps:\n{steps}"),
        )
        .unwrap();
        let role = |d: &Daemon| {
            http.get(&format!("{}/readyz", d.url))["role"]
                .as_str()
                .map(str::to_owned)
        };
        let mut east = start(&bin, dir.path(), "east");
        wait("east leads", Duration::from_secs(30), || {
            role(&east).as_deref() == Some("leader")
        });
        let west = start(&bin, dir.path(), "west");
        wait("west stands by", Duration::from_secs(30), || {
            role(&west).as_deref() == Some("standby")
        });
        let (status, started) = http.call(
            reqwest::Method::POST,
            &format!("{}/api/v1/runs", east.url),
            Some(r#"{"runbook":"chain","mode":"drill","reason":"benchmark"}"#),
        );
        assert_eq!(status, 202, "{started}");
        let id = serde_json::from_str::<Value>(&started).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        wait("two steps done", Duration::from_secs(30), || {
            let run = http.get(&format!("{}/api/v1/runs/{id}", east.url));
            run["steps"]
                .as_array()
                .is_some_and(|s| s.iter().filter(|s| s["status"] == "ok").count() >= 2)
        });
        // The kill lands at a different moment of the renewal cycle in each trial
        // (spread evenly over one renewal interval), since that moment decides how much
        // of the lease is left.
        let phase = (trial as f64 * 0.618_033_988_7).fract();
        std::thread::sleep(Duration::from_secs_f64(phase * lease as f64 / 3.0));
        let killed = SystemTime::now();
        let _ = east.child.kill();
        let _ = east.child.wait();
        wait("west leads", Duration::from_secs(60), || {
            role(&west).as_deref() == Some("leader")
        });
        let leader = secs(killed, SystemTime::now());
        let mut firsts = None;
        wait("west starts a step", Duration::from_secs(60), || {
            let (_, text) = http.call(
                reqwest::Method::GET,
                &format!("{}/api/v1/runs/{id}/evidence", west.url),
                None,
            );
            let Ok(bundle) = serde_json::from_str::<Value>(&text) else {
                return false;
            };
            let records: Vec<Value> = bundle["records"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().and_then(|s| serde_json::from_str(s).ok()))
                .filter(|r: &Value| r["writer"]["node"] == "west")
                .collect();
            let resumed = records.first().map(at);
            let step = records.iter().find(|r| r["event"] == "step_started").map(at);
            firsts = resumed.zip(step);
            firsts.is_some()
        });
        let (resumed, step) = firsts.unwrap();
        rows.push((leader, secs(killed, resumed), secs(killed, step)));
        results.sample("drover", &case, None, "leader_s", "s", leader);
        results.sample("drover", &case, None, "first_step_s", "s", secs(killed, step));
        eprintln!(
            "trial {}: leader after {leader:.2} s, resumed after {:.2} s, first step after {:.2} s",
            trial + 1,
            secs(killed, resumed),
            secs(killed, step)
        );
        drop(west);
    }
    let stat = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let bound = lease as f64 * 4.0 / 3.0;
    let goal = lease as f64 + 2.0;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Takeover with `ha.lease: {lease}s` over {trials} trials (from the SIGKILL of the leader; seconds)\n"
    );
    let _ = writeln!(out, "| from the kill until | median | min | max |\n|---|--:|--:|--:|");
    for (name, f) in [
        (
            "the standby's /readyz says leader",
            (|r: &(f64, f64, f64)| r.0) as fn(&_) -> f64,
        ),
        ("its first record of the run (resumed)", |r| r.1),
        ("**its first step of the run starts**", |r| r.2),
    ] {
        let (med, min, max) = stat(f);
        let _ = writeln!(out, "| {name} | {med:.2} | {min:.2} | {max:.2} |");
    }
    let (med, _, max) = stat(|r| r.2);
    let _ = writeln!(
        out,
        "\nProtocol bound (lease + one renewal interval): {bound:.2} s. Goal: under lease + 2 s = {goal:.1} s: median {med:.2} s, max {max:.2} s: {}.",
        if max < goal { "met" } else { "MISSED" }
    );
    results.sample("drover", &case, None, "first_step_max_s", "s", max);
    results.sample("goal", &case, None, "first_step_max_s", "s", goal);
    ExitCode::SUCCESS
}
