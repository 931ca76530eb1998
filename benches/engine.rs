//! Engine: per-step overhead, end to end. Times the released `drover` binary running
//! `drover drill chain --yes --format json` on generated runbooks of trivial `exec.run`
//! steps (each spawns `true`), from process start to exit:
//!
//! - chains of 1, 100 and 1,000 steps (each step `needs` the one before);
//! - a 1,000-step fan-out/fan-in: one root, 998 middle steps that each need the root,
//!   and one last step that needs all of them, with `engine.max_parallel: 16`;
//!
//! against references:
//!
//! - three floors: the same number of `true` processes spawned and waited for from this
//!   program with `std::process::Command` (one after the other, or 16 at a time for the
//!   fan-out), bare (`spawn`) and as `exec.run` spawns them (`spawn+pipes`: stdout and
//!   stderr piped and read, own process group), and on a tokio runtime as `exec.run`
//!   does it (`tokio`: `tokio::process`, two drain tasks, `kill_on_drop`);
//! - Chaos Toolkit (`chaos run`) on the same chains, as an experiment whose `method` is a
//!   list of `process` actions running `true`, if it is installed in
//!   `target/bench-peers/venv` (`bash benches/peers/setup.sh`).
//!
//! Nothing is built here: build the binary first.
//!
//! ```text
//! cargo build --release -p drover && bash benches/peers/setup.sh && cargo bench -p drover-benches --bench engine
//! ```
//!
//! Arguments: `--iterations N` (default 5: rounds of one run of every case, after one
//! warm-up round), `--no-chaos`.
//! `DROVER_BIN` overrides the path of the binary. Results are recorded in
//! `docs/BENCHMARKS.md`.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// The runbook `chain` of the given shape.
fn runbook(shape: Shape) -> String {
    let mut out = String::from("name: chain\nservice: svc\nsteps:\n");
    let step = |out: &mut String, i: usize, needs: &str| {
        writeln!(
            out,
            "  - {{id: s{i}, uses: exec.run, with: {{command: [\"true\"]}}{needs}}}"
        )
        .expect("write to String");
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
fn write_drover_workspace(dir: &Path, shape: Shape) -> std::io::Result<PathBuf> {
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
    fs::write(dir.join("runbooks/chain.yaml"), runbook(shape))?;
    Ok(config)
}

/// One `drover drill`, in a fresh temporary workspace; returns the wall time.
fn run_drover(bin: &Path, shape: Shape) -> Result<Duration, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let config = write_drover_workspace(dir.path(), shape).map_err(|e| format!("writing the workspace: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["drill", "chain", "--yes", "--format", "json"])
        .current_dir(dir.path())
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
    Ok(elapsed)
}

/// One `chaos run` of the same chain as an experiment of `process` actions.
fn run_chaos(chaos: &Path, steps: usize) -> Result<Duration, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let method: Vec<serde_json::Value> = (1..=steps)
        .map(|i| {
            serde_json::json!({
                "type": "action",
                "name": format!("s{i}"),
                "provider": {"type": "process", "path": "true"},
            })
        })
        .collect();
    let experiment = serde_json::json!({
        "version": "1.0.0",
        "title": "chain",
        "description": "A chain of trivial process actions (drover engine bench).",
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

/// One case of the table: what to run once, and its timings.
struct Case<'a> {
    tool: &'static str,
    shape: Shape,
    once: Box<dyn FnMut() -> Result<Duration, String> + 'a>,
}

/// One warm-up run of every case, then `iterations` rounds of one timed run of every
/// case. Rounds rather than one case after the other, so that a burst of load from
/// elsewhere on the machine falls on every case alike, not on one.
fn measure(cases: Vec<Case<'_>>, iterations: usize) -> Result<Vec<Sample>, String> {
    let mut cases = cases;
    let mut samples: Vec<Sample> = cases
        .iter()
        .map(|c| Sample {
            tool: c.tool,
            shape: c.shape,
            secs: Vec::with_capacity(iterations),
        })
        .collect();
    for round in 0..=iterations {
        eprintln!(
            "{}",
            if round == 0 {
                "warm-up".to_string()
            } else {
                format!("round {round} of {iterations}")
            }
        );
        for (c, s) in cases.iter_mut().zip(&mut samples) {
            let t = (c.once)().map_err(|e| format!("{} {}: {e}", c.tool, c.shape.label()))?;
            if round > 0 {
                s.secs.push(t.as_secs_f64());
            }
        }
    }
    Ok(samples)
}

struct Args {
    iterations: usize,
    chaos: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        iterations: 5,
        chaos: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => {
                args.iterations = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .ok_or("--iterations needs a positive number")?;
            }
            "--no-chaos" => args.chaos = false,
            // `cargo bench` passes `--bench`; ignore it and any filter.
            _ => {}
        }
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
    let root = workspace_root();
    let bin = std::env::var_os("DROVER_BIN").map_or_else(|| root.join("target/release/drover"), PathBuf::from);
    if !bin.is_file() {
        return Err(format!(
            "{} not found: this bench times the release binary and builds nothing itself.\n\
             Build it first:  cargo build --release -p drover",
            bin.display()
        ));
    }
    let chaos = root.join("target/bench-peers/venv/bin/chaos");
    let chaos = (args.chaos && chaos.is_file()).then_some(chaos);

    let chains = [Shape::Chain(1), Shape::Chain(100), Shape::Chain(1000)];
    let fan = Shape::FanOutIn(1000);
    let n = args.iterations;
    eprintln!(
        "drover: {}\n{n} rounds of every case after one warm-up round",
        bin.display()
    );

    let mut cases: Vec<Case<'_>> = Vec::new();
    for (tool, how) in [("spawn", Spawn::Bare), ("spawn+pipes", Spawn::Piped)] {
        for shape in &chains[1..] {
            let steps = shape.steps();
            cases.push(Case {
                tool,
                shape: *shape,
                once: Box::new(move || run_floor_sequential(how, steps)),
            });
        }
        cases.push(Case {
            tool,
            shape: fan,
            once: Box::new(move || run_floor_fan(how, fan.steps())),
        });
    }
    for shape in chains[1..].iter().copied().chain([fan]) {
        cases.push(Case {
            tool: "tokio",
            shape,
            once: Box::new(move || run_floor_tokio(shape)),
        });
    }
    for shape in chains.into_iter().chain([fan]) {
        let bin = &bin;
        cases.push(Case {
            tool: "drover",
            shape,
            once: Box::new(move || run_drover(bin, shape)),
        });
    }
    match &chaos {
        Some(chaos) => {
            for shape in chains {
                cases.push(Case {
                    tool: "chaos",
                    shape,
                    once: Box::new(move || run_chaos(chaos, shape.steps())),
                });
            }
        }
        None if !args.chaos => eprintln!("Chaos Toolkit skipped (--no-chaos)."),
        None => eprintln!(
            "Chaos Toolkit skipped: {} not found. Install it with:  bash benches/peers/setup.sh",
            root.join("target/bench-peers/venv/bin/chaos").display()
        ),
    }
    let samples = measure(cases, n)?;

    print_table(&samples);
    print_derived(&samples);
    Ok(())
}

fn find<'a>(samples: &'a [Sample], tool: &str, label: &str) -> Option<&'a Sample> {
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

/// Fixed cost (the 1-step chain), marginal cost per step (from 100 to 1,000 steps), and
/// the marginal cost beyond each floor's spawn.
fn print_derived(samples: &[Sample]) {
    let marginal = |tool: &str| -> Option<f64> {
        let a = find(samples, tool, "chain 100")?.median();
        let b = find(samples, tool, "chain 1000")?.median();
        Some((b - a) / 900.0 * 1e3)
    };
    let (Some(bare), Some(piped)) = (marginal("spawn"), marginal("spawn+pipes")) else {
        return;
    };
    println!();
    println!(
        "| tool | fixed ms (1-step chain) | marginal ms/step (100 to 1,000) | beyond spawn ms/step | beyond spawn+pipes ms/step |"
    );
    println!("|---|--:|--:|--:|--:|");
    for tool in ["spawn", "spawn+pipes", "tokio", "drover", "chaos"] {
        let Some(m) = marginal(tool) else { continue };
        let fixed = find(samples, tool, "chain 1").map_or("-".to_string(), |s| format!("{:.1}", s.median() * 1e3));
        println!("| {tool} | {fixed} | {m:.3} | {:.3} | {:.3} |", m - bare, m - piped);
    }
    println!();
    for label in ["chain 100", "chain 1000"] {
        if let (Some(d), Some(c)) = (find(samples, "drover", label), find(samples, "chaos", label)) {
            println!("{label}: chaos / drover = {:.2}x", c.median() / d.median());
        }
    }
}
