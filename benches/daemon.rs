//! Daemon: idle memory and API latency during a drill. Starts the release `drover serve`
//! over TLS (a CA and certificate made with rcgen) on a generated workspace, reads its
//! resident memory after it settles (VmRSS, and VmHWM, the peak), then starts a drill of
//! 100 one-second steps (8 at a time, about 13 s) over the API and, while it runs, sends
//! `GET /api/v1/runs/{id}` at a fixed rate (default 200 per second, open loop: a request
//! is sent on each tick whether or not the previous one answered) for a bounded time,
//! and reports the latency percentiles over keep-alive connections.
//!
//! ```text
//! cargo build --release -p drover && cargo bench -p drover-benches --bench daemon
//! ```
//!
//! Arguments: `--rate N` (requests per second, default 200), `--seconds S` (default 10),
//! `--steps N` (steps of the drill, default 100), `--json FILE` (see
//! `benches/common.rs`). `DROVER_BIN` overrides the binary. Results are recorded in
//! `docs/BENCHMARKS.md`. Fails when no request was answered.

use std::io::Write;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;
use common::{Results, arg, binary, serve, sha256_hex};

fn kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let rate = arg("--rate", 200);
    let seconds = arg("--seconds", 10);
    let n_steps = arg("--steps", 100);
    let results = Results::from_args("daemon");
    let bin = binary();
    if !bin.exists() {
        eprintln!("{} is missing: cargo build --release -p drover", bin.display());
        return ExitCode::FAILURE;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel);
    // TLS.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::create_dir_all(p("runbooks")).unwrap();
    std::fs::write(p("server.pem"), cert.pem()).unwrap();
    std::fs::write(p("server.key"), key.serialize_pem()).unwrap();
    let token = "bench-token-0123456789";
    let hash = sha256_hex(token);
    std::fs::write(
        p("drover.yaml"),
        format!(
            "state: {{url: \"sqlite://state/state.db\"}}\nengine: {{max_parallel: 8}}\napi:\n  listen: \"127.0.0.1:0\"\n  tls: {{cert: server.pem, key: server.key}}\n  tokens: [{{name: bench, role: admin, sha256: \"{hash}\"}}]\ncmdb: cmdb.yaml\nrunbooks: runbooks\n"
        ),
    )
    .unwrap();
    std::fs::write(p("cmdb.yaml"), "items:\n  - {id: svc, kind: business_service}\n").unwrap();
    let steps: String = (0..n_steps)
        .map(|i| format!("  - {{id: s{i}, uses: exec.run, with: {{command: [sleep, \"1\"]}}}}\n"))
        .collect();
    std::fs::write(
        p("runbooks/load.yaml"),
        format!("name: load\nservice: svc\nsteps:\n{steps}"),
    )
    .unwrap();
    let (mut child, url) = serve(&bin, dir.path(), "drover.yaml");
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = kib(pid, "VmRSS:");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let auth = format!("Bearer {token}");
    let (lat, errors, finished) = rt.block_on(async {
        let started = client
            .post(format!("{url}/api/v1/runs"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(r#"{"runbook":"load","mode":"drill","reason":"benchmark"}"#)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let id = started.split('"').nth(3).unwrap_or_default().to_owned();
        let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        while Instant::now() < end {
            tick.tick().await;
            let (client, auth, lat, errors) = (client.clone(), auth.clone(), lat.clone(), errors.clone());
            let target = format!("{url}/api/v1/runs/{id}");
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                match client.get(target).header("authorization", auth).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.lock().unwrap().push(t0.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let run: String = client
            .get(format!("{url}/api/v1/runs/{id}"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let finished = !run.contains("\"outcome\":null");
        let v = lat.lock().unwrap().clone();
        (v, errors.load(std::sync::atomic::Ordering::Relaxed), finished)
    });
    let peak_rss = kib(pid, "VmHWM:");
    let mut lat = lat;
    lat.sort();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let _ = child.kill();
    let _ = child.wait();
    let case = format!("GET /api/v1/runs/ID at {rate}/s for {seconds} s during a drill");
    let mib = |kib: u64| kib as f64 / 1024.0;
    results.sample("drover", "idle", None, "idle_rss", "MiB", mib(idle_rss));
    results.sample("drover", &case, None, "peak_rss", "MiB", mib(peak_rss));
    results.sample("drover", &case, None, "p50", "ms", ms(pct(0.50)));
    results.sample("drover", &case, None, "p99", "ms", ms(pct(0.99)));
    results.sample(
        "drover",
        &case,
        None,
        "max",
        "ms",
        ms(lat.last().copied().unwrap_or_default()),
    );
    results.sample("drover", &case, None, "ok", "requests", lat.len() as f64);
    results.sample("drover", &case, None, "failed", "requests", errors as f64);
    results.sample(
        "drover",
        &case,
        None,
        "drill_running",
        "bool",
        if finished { 0.0 } else { 1.0 },
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "| what | value |\n|---|--:|");
    let _ = writeln!(out, "| idle RSS after start | {:.1} MiB |", idle_rss as f64 / 1024.0);
    let _ = writeln!(
        out,
        "| peak RSS during the drill and the load | {:.1} MiB |",
        peak_rss as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| requests (GET /api/v1/runs/ID, {rate}/s for {seconds} s) | {} ok, {errors} failed |",
        lat.len()
    );
    let _ = writeln!(out, "| latency p50 | {:.2} ms |", ms(pct(0.50)));
    let _ = writeln!(out, "| latency p99 | {:.2} ms |", ms(pct(0.99)));
    let _ = writeln!(
        out,
        "| latency max | {:.2} ms |",
        ms(lat.last().copied().unwrap_or_default())
    );
    let _ = writeln!(
        out,
        "| drill still running during the whole load | {} |",
        if finished { "no" } else { "yes" }
    );
    if lat.is_empty() {
        eprintln!("error: no request was answered");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
