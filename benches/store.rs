//! State store: SQLite against PostgreSQL. Two figures per backend:
//!
//! - **journal append latency**: `Journal::append` of a small record (a `checkpoint`),
//!   one at a time, awaited (hash chain, redaction, the writer thread's commit: for
//!   SQLite WAL with `synchronous=NORMAL`, for PostgreSQL a transaction on loopback
//!   with `synchronous_commit=on`: an fsync of its WAL per commit, which the lab's
//!   server (`fsync = off`, a lab) is switched to for the `fsync on` rows);
//! - **a 100-step chain**: the released `drover drill chain --yes --format json` of 100
//!   `exec.run` steps of `true`, each needing the one before (as in `benches/engine.rs`),
//!   process start to exit, with `state.url` `sqlite://...` or `postgres://...` (a fresh
//!   store each time, its schema created beforehand, untimed; for PostgreSQL a database on a server of the lab: `PgPair::start_single`), with the
//!   server's `fsync` on (as in production) and off (the lab's setting).
//!
//! ```text
//! cargo build --release -p drover && cargo bench -p drover-benches --bench store
//! # options: -- --iterations 5 --appends 2000 --json FILE ; DROVER_BIN=/path/to/drover
//! ```
//!
//! `--json FILE` writes every figure as a JSON line (see `benches/common.rs`).
//!
//! Figures are recorded in `docs/BENCHMARKS.md` ("State store: SQLite and PostgreSQL").

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_engine::journal::{Phase, RunClock};
use drover_engine::{Event, Journal, Quiet, RunState, Store};
use drover_lab::{Node, PgPair};

#[path = "common.rs"]
mod common;
use common::Results;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `n` appends, one after the other; their latencies in milliseconds.
fn appends(store: Store, n: usize) -> Vec<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let journal = Journal::new(
            store,
            RunState::from_records("bench-append", []),
            None,
            RunClock::start(),
            Arc::new(Quiet),
            &[],
        );
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let event = Event::Checkpoint {
                phase: Phase::Steps,
                step: "s1".into(),
                attempt: 1,
                data: serde_json::json!({"i": i}),
            };
            let t = Instant::now();
            journal.append(event).await.expect("append");
            out.push(ms(t.elapsed()));
        }
        out
    })
}

fn runbook(n: usize) -> String {
    let mut out = String::from("name: chain\nservice: svc\nsteps:\n");
    for i in 1..=n {
        let needs = if i == 1 {
            String::new()
        } else {
            format!(", needs: [s{}]", i - 1)
        };
        writeln!(
            out,
            "  - {{id: s{i}, uses: exec.run, with: {{command: [\"true\"]}}{needs}}}"
        )
        .expect("write");
    }
    out
}

/// One drill of the 100-step chain with this state url; the wall time.
fn drill(bin: &Path, url: &str) -> Result<Duration, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let write = |p: &str, t: &str| std::fs::write(d.join(p), t).map_err(|e| e.to_string());
    std::fs::create_dir_all(d.join("runbooks")).map_err(|e| e.to_string())?;
    write(
        "drover.yaml",
        &format!(
            "sites: [{{name: east}}]\nstate: {{url: \"{url}\"}}\nengine: {{max_parallel: 16}}\ncmdb: cmdb.yaml\nrunbooks: runbooks\n"
        ),
    )?;
    write("cmdb.yaml", "items: [{id: svc, kind: business_service}]\n")?;
    write("runbooks/chain.yaml", &runbook(100))?;
    let start = Instant::now();
    let out = Command::new(bin)
        .arg("--config")
        .arg(d.join("drover.yaml"))
        .args(["drill", "chain", "--yes", "--format", "json"])
        .current_dir(d)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let elapsed = start.elapsed();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))?;
    let ok = json["steps"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["status"] == "ok").count());
    if json["outcome"] != "passed" || ok != 100 {
        return Err(format!("drill: {} with {ok} steps ok", json["outcome"]));
    }
    Ok(elapsed)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let iterations = arg(&args, "--iterations", 5);
    let n = arg(&args, "--appends", 2000);
    let results = Results::from_args("store");
    let bin = common::binary();
    if !bin.exists() {
        eprintln!("{} is missing: cargo build --release -p drover", bin.display());
        return ExitCode::FAILURE;
    }
    let pair = match PgPair::start_single() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot start PostgreSQL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut db = 0;
    let mut fresh_db = || {
        db += 1;
        pair.sql(Node::Primary, &format!("CREATE DATABASE bench_{db}"))
            .expect("create database");
        pair.primary_url().replace("/postgres?", &format!("/bench_{db}?"))
    };

    let fsync = |on: bool| {
        let v = if on { "on" } else { "off" };
        pair.sql(Node::Primary, &format!("ALTER SYSTEM SET fsync = {v}"))
            .expect("fsync");
        pair.sql(Node::Primary, "SELECT pg_reload_conf()").expect("reload");
        std::thread::sleep(Duration::from_millis(300));
        let now = pair.sql(Node::Primary, "SHOW fsync").expect("show fsync");
        assert_eq!(now, v, "fsync did not change");
    };
    const CASES: [(&str, Option<bool>); 3] = [
        ("SQLite (WAL, synchronous=NORMAL)", None),
        ("PostgreSQL, fsync on", Some(true)),
        ("PostgreSQL, fsync off", Some(false)),
    ];

    println!("journal append latency, {n} appends one at a time (ms)");
    println!("| backend | median | p90 | p99 | max | mean |");
    println!("|---|--:|--:|--:|--:|--:|");
    let tmp = tempfile::tempdir().expect("temp dir");
    for (name, pg) in CASES {
        let store = match pg {
            None => Store::open(&tmp.path().join("state.db")).expect("sqlite"),
            Some(on) => {
                fsync(on);
                Store::open_url(&fresh_db()).expect("postgres")
            }
        };
        let v = sorted(appends(store, n));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        for (metric, p) in [("append_p50", 0.5), ("append_p90", 0.9), ("append_p99", 0.99)] {
            results.sample(name, "journal append", None, metric, "ms", pct(&v, p));
        }
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {mean:.3} |",
            pct(&v, 0.5),
            pct(&v, 0.9),
            pct(&v, 0.99),
            pct(&v, 1.0)
        );
    }
    // A leader of a cluster: its writes carry its epoch and the fence trigger checks the
    // lease row (FOR SHARE) in every append's transaction.
    {
        fsync(false);
        let store = Store::open_url(&fresh_db()).expect("postgres");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let lease = store
                .acquire_lease("leader", "bench", Duration::from_secs(3600))
                .await
                .expect("lease")
                .expect("free lease");
            store
                .set_writer(Some(drover_engine::Writer {
                    node: "bench".into(),
                    epoch: lease.epoch,
                }))
                .await
                .expect("writer");
        });
        let v = sorted(appends(store, n));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "| PostgreSQL, fsync off, as a leader (fenced by its epoch) | {:.3} | {:.3} | {:.3} | {:.3} | {mean:.3} |",
            pct(&v, 0.5),
            pct(&v, 0.9),
            pct(&v, 0.99),
            pct(&v, 1.0)
        );
    }

    println!("\n100-step chain, {iterations} rounds after a warm-up (ms)");
    println!("| backend | median | min | max | / SQLite |");
    println!("|---|--:|--:|--:|--:|");
    let mut base = 0.0;
    for (name, pg) in CASES {
        if let Some(on) = pg {
            fsync(on);
        }
        let mut times = Vec::new();
        for round in 0..=iterations {
            let dir = tempfile::tempdir().expect("tmp");
            let url = match pg {
                None => format!("sqlite://{}/state.db", dir.path().display()),
                Some(_) => fresh_db(),
            };
            // The schema exists already (created and migrated once per store, not per
            // drill): what is timed is the drill on a store in service.
            drop(Store::open_url(&url).expect("open the store"));
            match drill(&bin, &url) {
                Ok(d) if round > 0 => {
                    results.sample(name, "chain 100", Some(100), "wall", "ms", ms(d));
                    times.push(ms(d));
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let v = sorted(times);
        let median = pct(&v, 0.5);
        if pg.is_none() {
            base = median;
        }
        println!(
            "| {name} | {median:.1} | {:.1} | {:.1} | {:.2}x |",
            v[0],
            v[v.len() - 1],
            median / base
        );
    }
    ExitCode::SUCCESS
}
