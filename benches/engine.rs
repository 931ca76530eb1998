//! Engine: per-step overhead, end to end. Times the released `drover` binary running
//! `drover drill chain --yes --format json` on generated runbooks of trivial `exec.run`
//! steps (each spawns `true`), from process start to exit:
//!
//! - chains of 1, 100 and 1,000 steps (each step `needs` the one before);
//! - a 1,000-step fan-out/fan-in: one root, 998 middle steps that each need the root,
//!   and one last step that needs all of them, with `engine.max_parallel: 16`;
//! - the same shapes of `manual.approve` gates released by `--yes` (`drover no-spawn`):
//!   a step that starts no process and waits for nothing, so what is left is the
//!   orchestrator alone (scheduling, the two journal records of each step, the progress
//!   line). Not `manual.wait` of `0s`: tokio's timer has a resolution of 1 ms, so a
//!   zero sleep still waits for the next tick (about 1 ms a step, measured with this
//!   bench), which would hide the orchestrator. `USER` is set for drover, as in a shell:
//!   without it the gate reads `/etc/passwd` to name who approved;
//!
//! against references:
//!
//! - three floors: the same number of `true` processes spawned and waited for from this
//!   program with `std::process::Command` (one after the other, or 16 at a time for the
//!   fan-out), bare (`spawn`) and as `exec.run` spawns them (`spawn+pipes`: stdout and
//!   stderr piped and read, own process group), and on a tokio runtime as `exec.run`
//!   does it (`tokio`: `tokio::process`, two drain tasks, `kill_on_drop`);
//! - Chaos Toolkit (`chaos run`) on the same shapes, as an experiment whose `method` is a
//!   list of `process` actions running `true` (`chaos`) or of `python` actions calling
//!   `os.getpid` (`chaos no-spawn`), if it is installed in `target/bench-peers/venv`
//!   (`bash benches/peers/setup.sh`). Chaos Toolkit has no dependencies between
//!   actions: its fan-out/in is the root, the middle actions with `background: true`
//!   (one thread each, no bound) and the last action, the run waiting for all of them
//!   at the end of the method. The same work, not quite the same order.
//!
//! Nothing is built here: build the binary first.
//!
//! ```text
//! cargo build --release -p drover && bash benches/peers/setup.sh && cargo bench -p drover-benches --bench engine
//! ```
//!
//! Arguments: `--iterations N` (default 5: rounds of one run of every case, after
//! `--warmup N` warm-up rounds, default 1), `--small N` and `--large N` (the chain
//! lengths, default 100 and 1,000; the marginal cost per step is taken between them),
//! `--fan N` (default 1,000), `--no-chaos`, `--json FILE` (every sample as a JSON line,
//! see `benches/common.rs`).
//! `DROVER_BIN` overrides the path of the binary. Results are recorded in
//! `docs/BENCHMARKS.md`.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;
use common::Results;

/// `engine.max_parallel` of the generated config, and the width of the parallel floors.
const MAX_PARALLEL: usize = 16;

/// The shape of a generated runbook.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Each step needs the one before.
    Chain(usize),
    /// One root, `n - 2` middle steps needing the root, one last step needing them all.
    FanOutIn(usize),
}

impl Shape {
    fn steps(self) -> usize {
        match self {
            Shape::Chain(n) | Shape::FanOutIn(n) => n,
        }
    }

    fn label(self) -> String {
        match self {
            Shape::Chain(n) => format!("chain {n}"),
            Shape::FanOutIn(n) => format!("fan-out/in {n}"),
        }
    }
}

/// Timings of one case, in seconds.
#[derive(Debug)]
struct Sample {
    tool: &'static str,
    shape: Shape,
    secs: Vec<f64>,
}

impl Sample {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.secs.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> f64 {
        let v = self.sorted();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.sorted()[0]
    }

    fn max(&self) -> f64 {
        *self.sorted().last().expect("at least one iteration")
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ sits in the workspace root")
        .to_path_buf()
}

/// What each step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Spawns `true` (`exec.run`; a Chaos Toolkit `process` action).
    Spawn,
    /// Starts no process (`manual.approve` released by `--yes`; a Chaos Toolkit
    /// `python` action calling `os.getpid`).
    NoSpawn,
}

/// The runbook `chain` of the given shape.
fn runbook(shape: Shape, kind: Kind) -> String {
    let mut out = String::from("name: chain\nservice: svc\nsteps:\n");
    let uses = match kind {
        Kind::Spawn => "uses: exec.run, with: {command: [\"true\"]}",
        Kind::NoSpawn => "uses: manual.approve, with: {prompt: go}",
    };
    let step = |out: &mut String, i: usize, needs: &str| {
        writeln!(out, "  - {{id: s{i}, {uses}{needs}}}").expect("write to String");
    };
    match shape {
        Shape::Chain(n) => {
            for i in 1..=n {
                let needs = if i == 1 {
                    String::new()
                } else {
                    format!(", needs: [s{}]", i - 1)
                };
                step(&mut out, i, &needs);
            }
        }
        Shape::FanOutIn(n) => {
            assert!(n >= 3, "a fan-out/in needs at least 3 steps");
            step(&mut out, 1, "");
            for i in 2..n {
                step(&mut out, i, ", needs: [s1]");
            }
            let all: Vec<String> = (2..n).map(|i| format!("s{i}")).collect();
            step(&mut out, n, &format!(", needs: [{}]", all.join(", ")));
        }
    }
    out
}

/// Writes a fresh drover workspace (config, CMDB, runbook, empty state folder) into `dir`.
fn write_drover_workspace(dir: &Path, shape: Shape, kind: Kind) -> std::io::Result<PathBuf> {
    let config = dir.join("drover.yaml");
    fs::write(
        &config,
        format!(
            "sites: [{{name: east}}]\nstate: {{url: \"sqlite://state/state.db\"}}\nengine: {{max_parallel: {MAX_PARALLEL}}}\ncmdb: cmdb.yaml\nrunbooks: runbooks\n"
        ),
    )?;
    fs::write(dir.join("cmdb.yaml"), "items: [{id: svc, kind: business_service}]\n")?;
    fs::create_dir_all(dir.join("runbooks"))?;
    fs::create_dir_all(dir.join("state"))?;
    fs::write(dir.join("runbooks/chain.yaml"), runbook(shape, kind))?;
    Ok(config)
}

/// One `drover drill`, in a fresh temporary workspace; returns the wall time.
fn run_drover(bin: &Path, shape: Shape, kind: Kind) -> Result<Timed, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let config = write_drover_workspace(dir.path(), shape, kind).map_err(|e| format!("writing the workspace: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["drill", "chain", "--yes", "--format", "json"])
        .current_dir(dir.path())
        .env("USER", "bench")
        .stdin(Stdio::null());
    let start = Instant::now();
    let out = cmd.output().map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("drover exited with {}: {stderr}", out.status));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("drover's output is not JSON ({e}): {stderr}"))?;
    let outcome = json["outcome"].as_str();
    let ok = json["steps"]
        .as_array()
        .map_or(0, |steps| steps.iter().filter(|s| s["status"] == "ok").count());
    if outcome != Some("passed") || ok != shape.steps() {
        return Err(format!(
            "drover reported outcome {outcome:?} with {ok} of {} steps ok, not \"passed\": {stderr}",
            shape.steps()
        ));
    }
    let extra = match (shape, json["id"].as_str()) {
        (Shape::Chain(n), Some(id)) if n > 1 => gaps(&dir.path().join("state/state.db"), id)?,
        _ => Vec::new(),
    };
    Ok(Timed { wall: elapsed, extra })
}

/// Where a chain's time goes, from its journal's run clock (`t`, taken as each record
/// is built, before its commit): the median time from a step's `step_started` record to
/// its `step_finished` (the commit of the first, starting the attempt, the action, its
/// end) and from a `step_finished` to the next step's `step_started` (the commit of the
/// first, the scheduler's release of the next step, its start).
fn gaps(db: &Path, run_id: &str) -> Result<Vec<(&'static str, f64)>, String> {
    use drover_engine::journal::{Event, load_records};
    let store = drover_engine::Store::open(db).map_err(|e| e.to_string())?;
    let recs = load_records(&store, run_id).map_err(|e| e.to_string())?;
    let (mut run, mut next) = (Vec::new(), Vec::new());
    for w in recs.windows(2) {
        match (&w[0].event, &w[1].event) {
            (Event::StepStarted { .. }, Event::StepFinished { .. }) => run.push((w[1].t - w[0].t) * 1e3),
            (Event::StepFinished { .. }, Event::StepStarted { .. }) => next.push((w[1].t - w[0].t) * 1e3),
            _ => {}
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    match (median(run), median(next)) {
        (Some(a), Some(b)) => Ok(vec![("started_to_finished", a), ("finished_to_next_started", b)]),
        _ => Err("the journal has no step_started/step_finished pairs".into()),
    }
}

/// One `chaos run` of the same shape as an experiment of `process` (or `python`) actions.
fn run_chaos(chaos: &Path, shape: Shape, kind: Kind) -> Result<Duration, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let steps = shape.steps();
    let provider = match kind {
        Kind::Spawn => serde_json::json!({"type": "process", "path": "true"}),
        Kind::NoSpawn => serde_json::json!({"type": "python", "module": "os", "func": "getpid"}),
    };
    let method: Vec<serde_json::Value> = (1..=steps)
        .map(|i| {
            let mut action = serde_json::json!({
                "type": "action",
                "name": format!("s{i}"),
                "provider": provider,
            });
            // The fan-out: the middle actions in the background (Chaos Toolkit's only
            // parallelism); the method's end waits for them.
            if matches!(shape, Shape::FanOutIn(_)) && i > 1 && i < steps {
                action["background"] = true.into();
            }
            action
        })
        .collect();
    let experiment = serde_json::json!({
        "version": "1.0.0",
        "title": "chain",
        "description": "Trivial actions (drover engine bench).",
        "method": method,
    });
    let experiment_path = dir.path().join("experiment.json");
    fs::write(&experiment_path, experiment.to_string()).map_err(|e| format!("writing the experiment: {e}"))?;
    let journal = dir.path().join("journal.json");
    let mut cmd = Command::new(chaos);
    // Offline and quiet: no version check (a network call), no log file, a settings
    // file that does not exist (so ~/.chaostoolkit is not read).
    cmd.args(["--no-version-check", "--no-log-file", "--settings"])
        .arg(dir.path().join("settings.yaml"))
        .args(["run", "--journal-path"])
        .arg(&journal)
        .arg(&experiment_path)
        .current_dir(dir.path())
        .stdin(Stdio::null());
    let start = Instant::now();
    let out = cmd.output().map_err(|e| format!("starting {}: {e}", chaos.display()))?;
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("chaos exited with {}: {stderr}", out.status));
    }
    let journal: serde_json::Value = serde_json::from_slice(&fs::read(&journal).map_err(|e| format!("journal: {e}"))?)
        .map_err(|e| format!("journal is not JSON: {e}"))?;
    let status = journal["status"].as_str();
    let succeeded = journal["run"]
        .as_array()
        .map_or(0, |runs| runs.iter().filter(|r| r["status"] == "succeeded").count());
    if status != Some("completed") || succeeded != steps {
        return Err(format!(
            "chaos: status {status:?}, {succeeded} of {steps} actions succeeded: {stderr}"
        ));
    }
    Ok(elapsed)
}

/// How a floor spawns `true`.
#[derive(Debug, Clone, Copy)]
enum Spawn {
    /// `Command::new("true").status()`: stdio inherited, nothing else.
    Bare,
    /// As `exec.run` does it: stdin from /dev/null, stdout and stderr piped and read to
    /// the end, the child in its own process group.
    Piped,
}

fn spawn_true(how: Spawn) -> Result<(), String> {
    let mut cmd = Command::new("true");
    let status = match how {
        Spawn::Bare => cmd.status(),
        Spawn::Piped => cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .output()
            .map(|o| o.status),
    }
    .map_err(|e| format!("spawning true: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("true exited with {status}"))
    }
}

/// A floor: `n` `true` processes spawned and waited for, one after the other.
fn run_floor_sequential(how: Spawn, n: usize) -> Result<Duration, String> {
    let start = Instant::now();
    for _ in 0..n {
        spawn_true(how)?;
    }
    Ok(start.elapsed())
}

/// The floor of the fan-out/in: one `true`, then `n - 2` with `MAX_PARALLEL` in flight
/// (one thread each), then one more.
fn run_floor_fan(how: Spawn, n: usize) -> Result<Duration, String> {
    let start = Instant::now();
    spawn_true(how)?;
    let next = AtomicUsize::new(0);
    let middle = n - 2;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..MAX_PARALLEL)
            .map(|_| {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < middle {
                        spawn_true(how)?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| "a floor thread panicked".to_string())?)
    })?;
    spawn_true(how)?;
    Ok(start.elapsed())
}

/// One `true` spawned and awaited on tokio the way `exec.run` does it: stdin from
/// /dev/null, stdout and stderr piped and drained by two tasks, own process group,
/// `kill_on_drop`, then `wait` and the drains joined.
async fn tokio_true() -> Result<(), String> {
    let mut child = tokio::process::Command::new("true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawning true: {e}"))?;
    let mut readers = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        readers.push(tokio::spawn(async move {
            tokio::io::copy(&mut s, &mut tokio::io::sink()).await
        }));
    }
    if let Some(mut s) = child.stderr.take() {
        readers.push(tokio::spawn(async move {
            tokio::io::copy(&mut s, &mut tokio::io::sink()).await
        }));
    }
    let status = child.wait().await.map_err(|e| format!("waiting for true: {e}"))?;
    for r in readers {
        let _ = r.await;
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("true exited with {status}"))
    }
}

/// The tokio floor: a multi-threaded runtime (as drover's) spawning `n` `true`, one
/// after the other, or for the fan-out/in one, then `n - 2` with `MAX_PARALLEL` in
/// flight, then one. The runtime is built outside the timing.
fn run_floor_tokio(shape: Shape) -> Result<Duration, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        let start = Instant::now();
        match shape {
            Shape::Chain(n) => {
                for _ in 0..n {
                    tokio_true().await?;
                }
            }
            Shape::FanOutIn(n) => {
                tokio_true().await?;
                let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PARALLEL));
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..n - 2 {
                    let permit = permits.clone().acquire_owned().await.map_err(|e| e.to_string())?;
                    set.spawn(async move {
                        let r = tokio_true().await;
                        drop(permit);
                        r
                    });
                }
                while let Some(r) = set.join_next().await {
                    r.map_err(|e| format!("a floor task failed: {e}"))??;
                }
                tokio_true().await?;
            }
        }
        Ok(start.elapsed())
    })
}

/// One run of a case: its wall time, and figures drover's journal gives (milliseconds).
struct Timed {
    wall: Duration,
    extra: Vec<(&'static str, f64)>,
}

impl From<Duration> for Timed {
    fn from(wall: Duration) -> Self {
        Timed {
            wall,
            extra: Vec::new(),
        }
    }
}

/// One case of the table: what to run once, and its timings.
struct Case<'a> {
    tool: &'static str,
    shape: Shape,
    once: Box<dyn FnMut() -> Result<Timed, String> + 'a>,
}

/// `warmup` warm-up runs of every case, then `iterations` rounds of one timed run of
/// every case. Rounds rather than one case after the other, so that a burst of load from
/// elsewhere on the machine falls on every case alike, not on one.
fn measure(cases: Vec<Case<'_>>, args: &Args, results: &Results) -> Result<Vec<Sample>, String> {
    let mut cases = cases;
    let iterations = args.iterations;
    let mut samples: Vec<Sample> = cases
        .iter()
        .map(|c| Sample {
            tool: c.tool,
            shape: c.shape,
            secs: Vec::with_capacity(iterations),
        })
        .collect();
    for round in 0..args.warmup + iterations {
        let timed = round >= args.warmup;
        eprintln!(
            "{}",
            if timed {
                format!("round {} of {iterations}", round - args.warmup + 1)
            } else {
                "warm-up".to_string()
            }
        );
        for (c, s) in cases.iter_mut().zip(&mut samples) {
            let run = (c.once)().map_err(|e| format!("{} {}: {e}", c.tool, c.shape.label()))?;
            let t = run.wall;
            if timed {
                for (metric, v) in &run.extra {
                    results.sample(c.tool, &c.shape.label(), Some(c.shape.steps()), metric, "ms", *v);
                }
                s.secs.push(t.as_secs_f64());
                results.sample(
                    c.tool,
                    &c.shape.label(),
                    Some(c.shape.steps()),
                    "wall",
                    "ms",
                    t.as_secs_f64() * 1e3,
                );
            }
        }
    }
    Ok(samples)
}

struct Args {
    iterations: usize,
    warmup: usize,
    small: usize,
    large: usize,
    fan: usize,
    chaos: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        iterations: 5,
        warmup: 1,
        small: 100,
        large: 1000,
        fan: 1000,
        chaos: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |min: usize| {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n >= min)
                .ok_or(format!("{a} needs a number of at least {min}"))
        };
        match a.as_str() {
            "--iterations" => args.iterations = number(1)?,
            "--warmup" => args.warmup = number(0)?,
            "--small" => args.small = number(2)?,
            "--large" => args.large = number(3)?,
            "--fan" => args.fan = number(3)?,
            "--no-chaos" => args.chaos = false,
            // `cargo bench` passes `--bench`; `--json` is read by `Results`.
            _ => {}
        }
    }
    if args.large <= args.small {
        return Err("--large must be more than --small".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let results = Results::from_args("engine");
    let root = workspace_root();
    let bin = common::binary();
    if !bin.is_file() {
        return Err(format!(
            "{} not found: this bench times the release binary and builds nothing itself.\n\
             Build it first:  cargo build --release -p drover",
            bin.display()
        ));
    }
    let chaos_path = root.join("target/bench-peers/venv/bin/chaos");
    let chaos = (args.chaos && chaos_path.is_file()).then_some(chaos_path.clone());

    let chains = [Shape::Chain(1), Shape::Chain(args.small), Shape::Chain(args.large)];
    let fan = Shape::FanOutIn(args.fan);
    eprintln!(
        "drover: {}\n{} rounds of every case after {} warm-up round(s)",
        bin.display(),
        args.iterations,
        args.warmup
    );

    let mut cases: Vec<Case<'_>> = Vec::new();
    for (tool, how) in [("spawn", Spawn::Bare), ("spawn+pipes", Spawn::Piped)] {
        for shape in &chains[1..] {
            let steps = shape.steps();
            cases.push(Case {
                tool,
                shape: *shape,
                once: Box::new(move || run_floor_sequential(how, steps).map(Timed::from)),
            });
        }
        cases.push(Case {
            tool,
            shape: fan,
            once: Box::new(move || run_floor_fan(how, fan.steps()).map(Timed::from)),
        });
    }
    for shape in chains[1..].iter().copied().chain([fan]) {
        cases.push(Case {
            tool: "tokio",
            shape,
            once: Box::new(move || run_floor_tokio(shape).map(Timed::from)),
        });
    }
    for (tool, kind) in [("drover", Kind::Spawn), ("drover no-spawn", Kind::NoSpawn)] {
        for shape in chains.into_iter().chain([fan]) {
            let bin = &bin;
            cases.push(Case {
                tool,
                shape,
                once: Box::new(move || run_drover(bin, shape, kind)),
            });
        }
    }
    match &chaos {
        Some(chaos) => {
            for (tool, kind) in [("chaos", Kind::Spawn), ("chaos no-spawn", Kind::NoSpawn)] {
                for shape in chains.into_iter().chain([fan]) {
                    cases.push(Case {
                        tool,
                        shape,
                        once: Box::new(move || run_chaos(chaos, shape, kind).map(Timed::from)),
                    });
                }
            }
        }
        None => {
            let why = if args.chaos {
                format!(
                    "not installed: {} not found (bash benches/peers/setup.sh installs it)",
                    chaos_path.display()
                )
            } else {
                "skipped (--no-chaos)".to_string()
            };
            eprintln!("Chaos Toolkit {why}");
            for tool in ["chaos", "chaos no-spawn"] {
                results.missing(tool, "all", &why);
            }
        }
    }
    let samples = measure(cases, &args, &results)?;

    print_table(&samples);
    print_derived(&samples, &args);
    Ok(())
}

fn find<'a>(samples: &'a [Sample], tool: &str, shape: Shape) -> Option<&'a Sample> {
    let label = shape.label();
    samples.iter().find(|s| s.tool == tool && s.shape.label() == label)
}

fn print_table(samples: &[Sample]) {
    println!();
    println!("| tool | case | steps | median ms | min ms | max ms | median ms/step |");
    println!("|---|---|--:|--:|--:|--:|--:|");
    for s in samples {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.3} |",
            s.tool,
            s.shape.label(),
            s.shape.steps(),
            s.median() * 1e3,
            s.min() * 1e3,
            s.max() * 1e3,
            s.median() * 1e3 / s.shape.steps() as f64
        );
    }
}

/// Fixed cost (the 1-step chain), marginal cost per step (from the small to the large
/// chain), and the marginal cost beyond each floor's spawn; for the fan-out/in, the cost
/// per step beyond the parallel `spawn` floor.
fn print_derived(samples: &[Sample], args: &Args) {
    let (small, large) = (Shape::Chain(args.small), Shape::Chain(args.large));
    let fan = Shape::FanOutIn(args.fan);
    let marginal = |tool: &str| -> Option<f64> {
        let a = find(samples, tool, small)?.median();
        let b = find(samples, tool, large)?.median();
        Some((b - a) / (args.large - args.small) as f64 * 1e3)
    };
    let (Some(bare), Some(piped)) = (marginal("spawn"), marginal("spawn+pipes")) else {
        return;
    };
    let bare_fan = find(samples, "spawn", fan).map(Sample::median);
    println!();
    println!(
        "| tool | fixed ms (1-step chain) | marginal ms/step ({} to {}) | beyond spawn ms/step | beyond spawn+pipes ms/step | fan-out/in {}: beyond spawn ms/step |",
        args.small, args.large, args.fan
    );
    println!("|---|--:|--:|--:|--:|--:|");
    for tool in [
        "spawn",
        "spawn+pipes",
        "tokio",
        "drover",
        "drover no-spawn",
        "chaos",
        "chaos no-spawn",
    ] {
        let Some(m) = marginal(tool) else { continue };
        let fixed =
            find(samples, tool, Shape::Chain(1)).map_or("-".to_string(), |s| format!("{:.1}", s.median() * 1e3));
        // A step that spawns nothing has no spawn floor: all of it is overhead.
        let (floor, floor_piped, floor_fan) = if tool.ends_with("no-spawn") {
            (0.0, 0.0, Some(0.0))
        } else {
            (bare, piped, bare_fan)
        };
        let fan_beyond = match (find(samples, tool, fan), floor_fan) {
            (Some(s), Some(f)) => format!("{:.3}", (s.median() - f) / args.fan as f64 * 1e3),
            _ => "-".to_string(),
        };
        println!(
            "| {tool} | {fixed} | {m:.3} | {:.3} | {:.3} | {fan_beyond} |",
            m - floor,
            m - floor_piped
        );
    }
    println!();
    for shape in [small, large, fan] {
        for (d, c) in [("drover", "chaos"), ("drover no-spawn", "chaos no-spawn")] {
            if let (Some(d_s), Some(c_s)) = (find(samples, d, shape), find(samples, c, shape)) {
                println!(
                    "{} ({d}): {c} / {d} = {:.2}x",
                    shape.label(),
                    c_s.median() / d_s.median()
                );
            }
        }
    }
}
