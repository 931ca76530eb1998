//! The Kubernetes actions through the real `drover` binary and the real kube client
//! (TLS, bearer tokens, JSON, watches) against the lab's API simulators (`K8sSim`, one
//! for east and one for west), reached through the kubeconfigs they write: scale and
//! wait, order across clusters, patch and annotate and their compensation, kill -9 on
//! both sides of a change, refused and read-only tokens, a missing workload, 429 and
//! 503, dropped watches and 410 Gone, a slow change past its timeout, StatefulSets,
//! and the kubeconfig's CA.

use std::time::{Duration, Instant};

use drover_lab::K8sSim;
use drover_lab::k8s::{Fault, Kind, Scope};
use serde_json::Value;

use crate::engine::{interrupted_run, step};
use crate::safety::record_kinds;
use crate::support::Fixture;

const CMDB: &str = r#"tiers: {gold: {rto: 15m, rpo: 1m}}
items:
  - {id: shop, kind: business_service, tier: gold, depends_on: [frontend]}
  - {id: frontend, kind: application, depends_on: [backend], runs_on: {east: east-k8s}}
  - {id: backend, kind: application, runs_on: {west: west-k8s}}
"#;

/// Two simulators and a fixture whose clusters point at them.
struct Lab {
    fx: Fixture,
    east: K8sSim,
    west: K8sSim,
}

impl Lab {
    fn new() -> Self {
        Self::with_contexts("east", "west")
    }

    /// `east-k8s` uses context `east_ctx` of the east simulator's kubeconfig.
    fn with_contexts(east_ctx: &str, west_ctx: &str) -> Self {
        let east = K8sSim::start("east").expect("start the east simulator");
        let west = K8sSim::start("west").expect("start the west simulator");
        let fx = Fixture::empty();
        fx.write(
            "drover.yaml",
            &format!(
                "sites: [{{name: east}}, {{name: west}}]
state: {{url: \"sqlite://state/state.db\"}}
engine: {{max_parallel: 8, retry_backoff: 50ms, anti_flap: 1h}}
kubernetes:
  - {{name: east-k8s, site: east, kubeconfig: {}, context: {east_ctx}}}
  - {{name: west-k8s, site: west, kubeconfig: {}, context: {west_ctx}}}
cmdb: cmdb.yaml
runbooks: runbooks
",
                east.kubeconfig().display(),
                west.kubeconfig().display()
            ),
        );
        fx.write("cmdb.yaml", CMDB);
        Lab { fx, east, west }
    }

    fn runbook(&self, text: &str) {
        self.fx.write("runbooks/rb.yaml", text);
    }

    /// `drover ARGS --format json`: exit code, the run's JSON, stderr.
    fn run(&self, args: &[&str]) -> (i32, Value, String) {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, Value, String) {
        let mut cmd = self.fx.drover();
        cmd.args(args).args(["--format", "json"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run drover");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or(-1);
        let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (code, json, stderr)
    }

    /// Runs drover with a crash point armed; it must die there.
    #[track_caller]
    fn crash_at(&self, point: &str, args: &[&str]) {
        let (code, _, stderr) = self.run_env(args, &[("DROVER_CRASH_AT", point)]);
        assert!(
            stderr.contains(&format!("crash point `{point}` reached")),
            "no crash at {point}: exit {code}\n{stderr}"
        );
    }

    /// The output data of the first `step_finished` record of step `id`.
    fn output(&self, run: &str, id: &str) -> Value {
        record_kinds(&self.fx, run)
            .into_iter()
            .find(|(k, v)| k == "step_finished" && v["step"] == id)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no step_finished record of {id}"))
    }

    fn checkpoints(&self, run: &str) -> Vec<Value> {
        record_kinds(&self.fx, run)
            .into_iter()
            .filter(|(k, _)| k == "checkpoint")
            .map(|(_, v)| v["data"].clone())
            .collect()
    }
}

fn id(run: &Value) -> String {
    run["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id in {run:#}"))
        .to_owned()
}

fn error_of<'a>(run: &'a Value, phase: &str, id: &str) -> &'a str {
    step(run, phase, id)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("step {id} has no error: {run:#}"))
}

fn check_error(run: &Value, name: &str) -> String {
    let c = run["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {run:#}"));
    c["error"].as_str().unwrap_or_default().to_owned()
}

const SCALE_DRILL: &str = "name: rb
service: shop
steps:
  - {id: scale-up, ci: frontend, uses: kubernetes.scale, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, replicas: 3, wait: ready}}
verify:
  - {name: api ready, uses: kubernetes.check, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, min_ready: 3}}
  - {name: api rolled out, uses: kubernetes.wait, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api}}
rollback:
  - {id: scale-back, uses: kubernetes.scale, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, replicas: 1, wait: ready}}
";

#[test]
fn kubernetes_scale_with_wait_lasts_the_readiness_delay_and_the_drill_cleans_up() {
    let lab = Lab::new();
    let delay = Duration::from_millis(1500);
    lab.east.add(Kind::Deployment, "shop", "api", 1, delay);
    lab.runbook(SCALE_DRILL);
    for round in 0..2 {
        let (code, run, stderr) = lab.run(&["drill", "rb", "--yes"]);
        assert_eq!(code, 0, "round {round}: {run:#}\n{stderr}");
        let up = step(&run, "steps", "scale-up");
        let took = up["duration_s"].as_f64().unwrap();
        eprintln!(
            "round {round}: scale 1 -> 3 with wait took {took:.3}s for a {:.1}s readiness delay; RTO achieved {:.3}s",
            delay.as_secs_f64(),
            run["rto"]["achieved_s"].as_f64().unwrap_or(f64::NAN)
        );
        assert!(
            took >= delay.as_secs_f64(),
            "scale with wait took {took}s, less than the readiness delay"
        );
        assert!(
            up["summary"].as_str().unwrap().contains("from 1 to 3 replicas"),
            "{up:#}"
        );
        // The drill's cleanup waited for the scale-down too, and left 1 replica.
        assert_eq!(step(&run, "rollback", "scale-back")["status"], "ok");
        assert_eq!(lab.east.replicas(Kind::Deployment, "shop", "api"), Some(1));
        let run_id = id(&run);
        assert_eq!(lab.checkpoints(&run_id)[0], serde_json::json!({"replicas": 1}));
        let out = lab.output(&run_id, "scale-up");
        assert!(
            out["output"]["data"]["wait"]["watches"].as_u64().unwrap() >= 1,
            "{out:#}"
        );
    }
    let obj = lab.east.get(Kind::Deployment, "shop", "api").unwrap();
    assert_eq!(
        obj["metadata"]["generation"], 5,
        "two scale-ups and two scale-downs: {obj:#}"
    );
    assert_eq!(obj["status"]["observedGeneration"], 5);
    // Every watch asked for a resourceVersion.
    let watches: Vec<_> = lab
        .east
        .requests()
        .into_iter()
        .filter(|r| r.query.contains("watch=true"))
        .collect();
    assert!(!watches.is_empty());
    assert!(
        watches.iter().all(|w| w.query.contains("resourceVersion=")),
        "{watches:#?}"
    );
}

#[test]
fn kubernetes_steps_on_two_clusters_follow_the_cmdb_order() {
    let lab = Lab::new();
    // One kubeconfig with both clusters' contexts, as the example config has it.
    let both = lab.fx.path("kube/config");
    K8sSim::write_kubeconfig(&both, &[&lab.east, &lab.west]).unwrap();
    let config = lab
        .fx
        .read("drover.yaml")
        .replace(
            &lab.east.kubeconfig().display().to_string(),
            &both.display().to_string(),
        )
        .replace(
            &lab.west.kubeconfig().display().to_string(),
            &both.display().to_string(),
        );
    assert_eq!(config.matches(&both.display().to_string()).count(), 2);
    lab.fx.write("drover.yaml", &config);
    lab.east
        .add(Kind::Deployment, "shop", "frontend", 0, Duration::from_millis(100));
    lab.west
        .add(Kind::Deployment, "shop", "backend", 0, Duration::from_millis(1000));
    // Written frontend first, without `needs`: the CMDB says frontend depends on backend.
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: frontend, ci: frontend, uses: kubernetes.scale, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: frontend, replicas: 2, wait: ready}}
  - {id: backend, ci: backend, uses: kubernetes.scale, with: {cluster: west-k8s, namespace: shop, kind: Deployment, name: backend, replicas: 2, wait: ready}}
",
    );
    let (code, run, stderr) = lab.run(&["failover", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    let backend_end = step(&run, "steps", "backend")["end_s"].as_f64().unwrap();
    let frontend_start = step(&run, "steps", "frontend")["start_s"].as_f64().unwrap();
    assert!(
        frontend_start >= backend_end,
        "frontend started at {frontend_start}s, before backend was ready at {backend_end}s"
    );
    assert!(step(&run, "steps", "backend")["duration_s"].as_f64().unwrap() >= 1.0);
    assert_eq!(lab.west.replicas(Kind::Deployment, "shop", "backend"), Some(2));
    assert_eq!(lab.east.replicas(Kind::Deployment, "shop", "frontend"), Some(2));
}

#[test]
fn kubernetes_patch_and_annotate_are_undone_to_the_old_values() {
    let lab = Lab::new();
    lab.east
        .add(Kind::Deployment, "shop", "api", 2, Duration::from_millis(50));
    // Give it annotations first, through the API (an earlier change by someone).
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: seed, ci: frontend, uses: kubernetes.annotate, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, annotations: {owner: team-a, keep: 'yes'}}}
",
    );
    let (code, run, _) = lab.run(&["failover", "rb", "--yes", "--ack"]);
    assert_eq!(code, 0, "{run:#}");
    let before = lab.east.get(Kind::Deployment, "shop", "api").unwrap();
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: annotate, ci: frontend, uses: kubernetes.annotate, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, annotations: {owner: drover, drill: 'on', keep: null}}}
  - {id: patch, ci: frontend, uses: kubernetes.patch, needs: [annotate], with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, patch: {spec: {paused: true, minReadySeconds: 7, template: {spec: {containers: [{name: app, image: 'registry.example/app:2.0'}]}}}}}}
  - {id: boom, uses: exec.run, needs: [patch], with: {command: ['false']}}
",
    );
    let (code, run, stderr) = lab.run(&["failover", "rb", "--yes", "--ack"]);
    assert_eq!(code, 1, "{run:#}\n{stderr}");
    assert_eq!(step(&run, "compensation", "annotate")["status"], "ok", "{run:#}");
    assert_eq!(step(&run, "compensation", "patch")["status"], "ok", "{run:#}");
    let after = lab.east.get(Kind::Deployment, "shop", "api").unwrap();
    assert_eq!(after["metadata"]["annotations"], before["metadata"]["annotations"]);
    assert_eq!(after["spec"], before["spec"], "the spec is back as it was");
    let run_id = id(&run);
    let cps = lab.checkpoints(&run_id);
    assert_eq!(
        cps[0],
        serde_json::json!({"restore": {"metadata": {"annotations": {"owner": "team-a", "drill": null, "keep": "yes"}}}}),
        "exactly the touched annotations"
    );
    assert_eq!(cps[1]["restore"]["spec"]["paused"], Value::Null, "paused was not set");
    assert_eq!(
        cps[1]["restore"]["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/app:1.0"
    );
    // Each change and each undo is a new generation (a Deployment's annotations count).
    let g = |v: &Value| v["metadata"]["generation"].as_i64().unwrap();
    assert_eq!(g(&after), g(&before) + 4, "two changes, two undos");
}

const SCALE_THEN_FAIL: &str = "name: rb
service: shop
steps:
  - {id: scale, ci: frontend, uses: kubernetes.scale, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, replicas: 5}}
  - {id: boom, ci: frontend, uses: exec.run, needs: [scale], with: {command: ['false']}}
";

#[test]
fn kubernetes_kill_9_on_either_side_of_the_change_is_compensated_from_the_checkpoint() {
    for point in ["append.after:checkpoint", "append.before:step_finished:steps"] {
        let lab = Lab::new();
        lab.east
            .add(Kind::Deployment, "shop", "api", 2, Duration::from_millis(50));
        lab.runbook(SCALE_THEN_FAIL);
        lab.crash_at(point, &["failover", "rb", "--yes"]);
        let expected = if point == "append.after:checkpoint" { 2 } else { 5 };
        assert_eq!(
            lab.east.replicas(Kind::Deployment, "shop", "api"),
            Some(expected),
            "{point}: the change was{} made before the crash",
            if expected == 2 { " not" } else { "" }
        );
        let run_id = interrupted_run(&lab.fx);
        let (code, run, stderr) = lab.run(&["resume", &run_id]);
        assert_eq!(code, 1, "{point}: {run:#}\n{stderr}");
        assert_eq!(
            lab.east.replicas(Kind::Deployment, "shop", "api"),
            Some(2),
            "{point}: restored from the first checkpoint"
        );
        let cps = lab.checkpoints(&run_id);
        assert_eq!(
            cps,
            [serde_json::json!({"replicas": 2})],
            "{point}: one checkpoint, the first"
        );
        assert_eq!(step(&run, "compensation", "scale")["status"], "ok", "{point}: {run:#}");
    }
}

#[test]
fn kubernetes_refused_and_read_only_tokens_and_a_missing_workload_fail_clearly() {
    // A token the server does not know: 401, at once, not polled until `within`.
    let lab = Lab::with_contexts("east-bad-token", "west-readonly");
    lab.east.add(Kind::Deployment, "shop", "api", 1, Duration::ZERO);
    lab.west.add(Kind::Deployment, "shop", "api", 1, Duration::ZERO);
    lab.runbook(
        "name: rb
service: shop
verify:
  - {name: east, uses: kubernetes.check, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api}, within: 1m}
",
    );
    let started = Instant::now();
    let (code, run, _) = lab.run(&["verify", "rb"]);
    assert_eq!(code, 1, "{run:#}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 401 is not worth polling"
    );
    let e = check_error(&run, "east");
    assert!(e.contains("401 Unauthorized") && e.contains("east-k8s"), "{e}");

    // A read-only token reads, and is refused writes with 403.
    lab.runbook(
        "name: rb
service: shop
verify:
  - {name: west, uses: kubernetes.check, with: {cluster: west-k8s, namespace: shop, kind: Deployment, name: api}}
",
    );
    let (code, run, _) = lab.run(&["verify", "rb"]);
    assert_eq!(code, 0, "{run:#}");
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: scale, ci: backend, uses: kubernetes.scale, retries: 2, with: {cluster: west-k8s, namespace: shop, kind: Deployment, name: api, replicas: 3}}
",
    );
    let (code, run, _) = lab.run(&["failover", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}");
    let e = error_of(&run, "steps", "scale");
    assert!(
        e.contains("403 Forbidden") && e.contains("cannot patch resource \"deployments/scale\""),
        "{e}"
    );
    assert_eq!(step(&run, "steps", "scale")["attempts"], 1, "a 403 is not retried");
    assert_eq!(lab.west.replicas(Kind::Deployment, "shop", "api"), Some(1));

    // A workload that does not exist is named, with its cluster.
    lab.runbook(
        "name: rb
service: shop
verify:
  - {name: missing, uses: kubernetes.check, with: {cluster: west-k8s, namespace: shop, kind: StatefulSet, name: nope}, within: 1m}
",
    );
    let (code, run, _) = lab.run(&["verify", "rb"]);
    assert_eq!(code, 1, "{run:#}");
    let e = check_error(&run, "missing");
    assert!(
        e.contains("StatefulSet shop/nope not found on cluster `west-k8s` (404)"),
        "{e}"
    );
}

#[test]
fn kubernetes_429_with_retry_after_and_503_are_retried_and_succeed() {
    let lab = Lab::new();
    lab.east
        .add(Kind::Deployment, "shop", "api", 1, Duration::from_millis(50));
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: scale, ci: frontend, uses: kubernetes.scale, retries: 3, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, replicas: 2, wait: ready}}
",
    );
    lab.east
        .inject(Scope::Any, Fault::TooManyRequests { retry_after_s: 1 }, 1);
    lab.east.inject(Scope::Any, Fault::ServerError(503), 1);
    let (code, run, stderr) = lab.run(&["failover", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    let s = step(&run, "steps", "scale");
    assert_eq!(s["attempts"], 3, "{s:#}");
    assert!(
        s["duration_s"].as_f64().unwrap() >= 1.0,
        "the Retry-After of 1s was honoured: {s:#}"
    );
    let codes: Vec<u16> = lab.east.requests().iter().map(|r| r.status).collect();
    assert!(codes.contains(&429) && codes.contains(&503), "{codes:?}");
    assert_eq!(lab.east.replicas(Kind::Deployment, "shop", "api"), Some(2));
}

#[test]
fn kubernetes_dropped_watches_are_resumed_and_a_410_relists() {
    let lab = Lab::new();
    lab.east
        .add(Kind::Deployment, "shop", "api", 1, Duration::from_millis(1200));
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: scale, ci: frontend, uses: kubernetes.scale, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, replicas: 4, wait: ready}}
",
    );
    lab.east.inject(Scope::Watches, Fault::WatchGone, 1);
    lab.east.inject(Scope::Watches, Fault::DropWatch, 3);
    let (code, run, stderr) = lab.run(&["failover", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    let out = lab.output(&id(&run), "scale");
    let wait = &out["output"]["data"]["wait"];
    assert_eq!(wait["relists"], 1, "{out:#}");
    assert!(wait["resumed"].as_u64().unwrap() >= 3, "{out:#}");
    assert_eq!(
        step(&run, "steps", "scale")["attempts"],
        1,
        "one attempt rode out the faults"
    );
    let obj = lab.east.get(Kind::Deployment, "shop", "api").unwrap();
    assert_eq!(obj["status"]["readyReplicas"], 4);
}

#[test]
fn kubernetes_a_change_answered_too_late_is_outcome_unknown_and_undone() {
    let lab = Lab::new();
    lab.east
        .add(Kind::Deployment, "shop", "api", 2, Duration::from_millis(50));
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: scale, ci: frontend, uses: kubernetes.scale, timeout: 1s, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, replicas: 6}}
",
    );
    // The server makes the change, then answers after 3 s.
    lab.east.inject(Scope::Writes, Fault::Slow(Duration::from_secs(3)), 1);
    let (code, run, stderr) = lab.run(&["failover", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}\n{stderr}");
    assert_eq!(step(&run, "steps", "scale")["status"], "outcome_unknown", "{run:#}");
    assert_eq!(step(&run, "compensation", "scale")["status"], "ok", "{run:#}");
    assert_eq!(lab.east.replicas(Kind::Deployment, "shop", "api"), Some(2));
}

#[test]
fn kubernetes_statefulset_scale_and_rollout_wait() {
    let lab = Lab::new();
    lab.west
        .add(Kind::StatefulSet, "data", "pg", 1, Duration::from_millis(800));
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: scale, ci: backend, uses: kubernetes.scale, with: {cluster: west-k8s, namespace: data, kind: StatefulSet, name: pg, replicas: 3, wait: ready}}
  - {id: image, ci: backend, uses: kubernetes.patch, needs: [scale], with: {cluster: west-k8s, namespace: data, kind: StatefulSet, name: pg, patch: {spec: {template: {spec: {containers: [{name: app, image: 'registry.example/app:2.0'}]}}}}}}
verify:
  - {name: rolled out, uses: kubernetes.wait, with: {cluster: west-k8s, namespace: data, kind: StatefulSet, name: pg}, within: 30s}
",
    );
    let (code, run, stderr) = lab.run(&["failover", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    assert!(step(&run, "steps", "scale")["duration_s"].as_f64().unwrap() >= 0.8);
    let sts = lab.west.get(Kind::StatefulSet, "data", "pg").unwrap();
    let st = &sts["status"];
    assert_eq!(st["readyReplicas"], 3, "{sts:#}");
    assert_eq!(st["currentRevision"], st["updateRevision"], "{sts:#}");
    // The wait saw the new revision through: verify passed only after the rollout.
    let image_end = step(&run, "steps", "image")["end_s"].as_f64().unwrap();
    let rto = run["rto"]["achieved_s"].as_f64().unwrap();
    assert!(
        rto - image_end >= 0.7,
        "verify passed {:.2}s after the patch",
        rto - image_end
    );
}

#[test]
fn kubernetes_the_kubeconfig_ca_is_used_and_a_wrong_ca_is_refused() {
    let lab = Lab::with_contexts("east-wrong-ca", "west");
    lab.east.add(Kind::Deployment, "shop", "api", 1, Duration::ZERO);
    lab.west.add(Kind::Deployment, "shop", "api", 1, Duration::ZERO);
    lab.runbook(
        "name: rb
service: shop
verify:
  - {name: east, uses: kubernetes.check, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api}, within: 1m}
  - {name: west, uses: kubernetes.check, with: {cluster: west-k8s, namespace: shop, kind: Deployment, name: api}, within: 1m}
",
    );
    let started = Instant::now();
    let (code, run, _) = lab.run(&["verify", "rb"]);
    assert_eq!(code, 1, "{run:#}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a TLS refusal is not worth polling"
    );
    let e = check_error(&run, "east");
    assert!(e.contains("TLS") && e.contains("east-k8s"), "{e}");
    assert_eq!(check_error(&run, "west"), "", "the west kubeconfig's CA is trusted");
    assert!(lab.east.requests().is_empty(), "no request got through the wrong CA");
}

#[test]
fn kubernetes_a_rollout_past_its_progress_deadline_fails_fast_and_is_scaled_back() {
    let lab = Lab::new();
    lab.east
        .add(Kind::Deployment, "shop", "api", 2, Duration::from_millis(100));
    lab.east.set_stalled(Kind::Deployment, "shop", "api", true);
    lab.runbook(
        "name: rb
service: shop
steps:
  - {id: scale, ci: frontend, uses: kubernetes.scale, timeout: 1m, with: {cluster: east-k8s, namespace: shop, kind: Deployment, name: api, replicas: 4, wait: ready}}
",
    );
    let started = Instant::now();
    let (code, run, stderr) = lab.run(&["failover", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it did not wait out the timeout"
    );
    let e = error_of(&run, "steps", "scale");
    assert!(e.contains("exceeded its progress deadline"), "{e}");
    assert_eq!(step(&run, "steps", "scale")["status"], "outcome_unknown");
    assert_eq!(step(&run, "compensation", "scale")["status"], "ok", "{run:#}");
    assert_eq!(lab.east.replicas(Kind::Deployment, "shop", "api"), Some(2));
}
