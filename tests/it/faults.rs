//! Faults injected into the demo lab's Kubernetes API (west's simulator) while the
//! real `drover` binary runs the demo drill: throttling, slowness and dropped watches
//! must not change the outcome; an API that answers every change with a 5xx must end
//! the run in bounded time with the failed step naming the server's answer, the lab in
//! the state that outcome says, and the evidence verifiable. West's S3 endpoint behind
//! a proxy ([`drover_lab::TcpProxy`]) that is cut, answers 500 or holds every chunk:
//! down or broken, the preflight refuses the drill at once, naming the store, and
//! nothing changes; slow, the drill passes later. Faults of PostgreSQL and the state
//! store have tests of their own (docs/RELIABILITY.md, "Fault injection").

use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use drover::demolab::{self, Lab};
use drover_lab::k8s::{Fault, Kind, Scope};
use serde_json::Value;

use crate::support::drover_bin;

fn drill(lab: &Lab) -> (Value, Duration, String) {
    let started = Instant::now();
    let out = std::process::Command::new(drover_bin())
        .arg("--config")
        .arg(lab.config())
        .current_dir(lab.dir.path())
        .args(["drill", "payments-demo", "--yes", "--format", "json"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let run = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}), exit {:?}\n{stderr}", out.status.code()));
    (run, took, stderr)
}

fn verify(lab: &Lab, id: &str) {
    let out = std::process::Command::new(drover_bin())
        .arg("--config")
        .arg(lab.config())
        .args(["evidence", "verify", id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

fn lab() -> Lab {
    demolab::build(&AtomicBool::new(false), &|_| {}).expect("the demo lab")
}

#[test]
fn throttled_slow_and_dropped_kubernetes_calls_do_not_change_the_drills_outcome() {
    for (name, scope, fault, times) in [
        (
            "429 on writes, twice",
            Scope::Writes,
            Fault::TooManyRequests { retry_after_s: 1 },
            2,
        ),
        ("503 on reads, twice", Scope::Reads, Fault::ServerError(503), 2),
        (
            "every call 1.5 s slow, 6 times",
            Scope::Any,
            Fault::Slow(Duration::from_millis(1500)),
            6,
        ),
        ("watches dropped, 20 times", Scope::Watches, Fault::DropWatch, 20),
    ] {
        let lab = lab();
        lab.west_k8s.inject(scope, fault, times);
        let (run, took, stderr) = drill(&lab);
        assert_eq!(run["outcome"], "passed", "{name}: {run:#}\n{stderr}");
        assert!(took < Duration::from_secs(90), "{name}: took {took:?}");
        for (kind, workload, _) in demolab::WORKLOADS {
            assert_eq!(
                lab.west_k8s.replicas(kind, "payments", workload),
                Some(0),
                "{name}: cleanup"
            );
        }
        verify(&lab, run["id"].as_str().unwrap());
        eprintln!("{name}: passed in {:.1} s", took.as_secs_f64());
    }
}

#[test]
fn a_kubernetes_api_failing_every_change_ends_the_drill_in_bounded_time_with_a_clear_failed_step() {
    let lab = lab();
    lab.west_k8s.inject(Scope::Writes, Fault::ServerError(500), 10_000);
    let (run, took, stderr) = drill(&lab);
    eprintln!("outcome {} in {:.1} s", run["outcome"], took.as_secs_f64());
    assert!(took < Duration::from_secs(120), "took {took:?}");
    let steps = run["steps"].as_array().unwrap();
    let failed: Vec<&Value> = steps.iter().filter(|s| s["status"] == "failed").collect();
    let first = failed
        .iter()
        .find(|s| s["phase"] == "steps")
        .unwrap_or_else(|| panic!("no failed step: {run:#}\n{stderr}"));
    assert_eq!(first["id"], "start-queue-west", "{run:#}");
    let error = first["error"].as_str().unwrap_or_default();
    assert!(error.contains("500"), "the error names the server's answer: {error}");
    // Nothing in west was scaled up; the database failover (fence, promote) cannot be
    // taken back by unfencing east once west may be a primary: the run says so.
    assert_eq!(lab.west_k8s.replicas(Kind::Deployment, "payments", "api"), Some(0));
    let outcome = run["outcome"].as_str().unwrap_or_default();
    assert!(matches!(outcome, "failed" | "stuck"), "{run:#}");
    // Never two writable primaries: west promoted means east stays fenced.
    let west_primary = lab
        .pg
        .sql(drover_lab::Node::Standby, "SELECT pg_is_in_recovery()")
        .unwrap()
        == "f";
    let east_open = lab
        .pg
        .sql(drover_lab::Node::Primary, "SHOW default_transaction_read_only")
        .unwrap()
        == "off";
    assert!(
        !(west_primary && east_open),
        "two writable primaries after the failed drill:\n{run:#}"
    );
    eprintln!(
        "{}",
        steps
            .iter()
            .map(|s| format!("{} {} {} {}", s["phase"], s["id"], s["status"], s["error"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
    verify(&lab, run["id"].as_str().unwrap());
}

/// The demo lab with west's S3 endpoint behind a proxy the test controls.
fn lab_with_s3_proxy() -> (Lab, drover_lab::TcpProxy) {
    let lab = lab();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], lab.s3_west.port()));
    let proxy = drover_lab::TcpProxy::start(target).unwrap();
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let routed = config.replace(
        &format!("\"{}\"", lab.s3_west.endpoint()),
        &format!("\"http://127.0.0.1:{}\"", proxy.port()),
    );
    assert_ne!(config, routed, "west's endpoint is in the config");
    std::fs::write(lab.config(), routed).unwrap();
    (lab, proxy)
}

/// Nothing changed: west is still a standby, east writable, west's workloads at zero.
#[track_caller]
fn lab_untouched(lab: &Lab, what: &str) {
    use drover_lab::Node;
    assert_eq!(
        lab.pg.sql(Node::Standby, "SELECT pg_is_in_recovery()").unwrap(),
        "t",
        "{what}"
    );
    assert_eq!(
        lab.pg.sql(Node::Primary, "SHOW default_transaction_read_only").unwrap(),
        "off",
        "{what}"
    );
    for (kind, workload, _) in demolab::WORKLOADS {
        assert_eq!(lab.west_k8s.replicas(kind, "payments", workload), Some(0), "{what}");
    }
}

#[test]
fn s3_down_or_answering_500_refuses_the_drill_at_preflight_and_slow_s3_only_slows_it() {
    // Down: connections reset. Broken: every request answered 500.
    let broken: &[u8] =
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    for (name, setup) in [
        (
            "down",
            Box::new(|p: &drover_lab::TcpProxy| p.cut()) as Box<dyn Fn(&drover_lab::TcpProxy)>,
        ),
        (
            "answering 500",
            Box::new(move |p: &drover_lab::TcpProxy| p.set_reply(Some(broken))),
        ),
    ] {
        let (lab, proxy) = lab_with_s3_proxy();
        setup(&proxy);
        let (run, took, stderr) = drill(&lab);
        eprintln!("S3 {name}: outcome {} in {:.1} s", run["outcome"], took.as_secs_f64());
        assert_eq!(run["outcome"], "refused", "S3 {name}: {run:#}\n{stderr}");
        assert!(took < Duration::from_secs(90), "S3 {name}: took {took:?}");
        let failed: Vec<&Value> = run["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == false)
            .collect();
        assert!(!failed.is_empty(), "S3 {name}: no failed check: {run:#}");
        for c in &failed {
            let error = c["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("backups-west"),
                "S3 {name}: the error names the store: {error}"
            );
            if name == "answering 500" {
                assert!(error.contains("500"), "S3 {name}: the error names the answer: {error}");
            }
            eprintln!("  check `{}`: {error}", c["name"].as_str().unwrap_or_default());
        }
        lab_untouched(&lab, name);
        verify(&lab, run["id"].as_str().unwrap());
    }

    // Slow: every chunk held 500 ms, both ways (a request and its answer: 1 s at least).
    let (lab, proxy) = lab_with_s3_proxy();
    proxy.set_delay(Duration::from_millis(500));
    let (run, took, stderr) = drill(&lab);
    let preflight = run["preflight"]["duration_s"].as_f64().unwrap_or_default();
    eprintln!(
        "S3 slow: outcome {} in {:.1} s, preflight {preflight:.1} s",
        run["outcome"],
        took.as_secs_f64()
    );
    assert_eq!(run["outcome"], "passed", "{run:#}\n{stderr}");
    assert!(
        preflight >= 1.0,
        "the slowness reached the checks: preflight {preflight} s"
    );
    verify(&lab, run["id"].as_str().unwrap());
}
