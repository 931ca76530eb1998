//! RTO precision: how far the RTO drover reports lies above the critical path when the
//! critical path is known. Each case is a runbook of `exec.run` steps of `sleep S`
//! (real processes) whose longest path through the `needs` adds up to a known time; the
//! release `drover drill --format json` runs it, and the bench takes the achieved RTO
//! from the report (`rto.achieved_s`: from the run's start to the last step's end,
//! there being no verify checks) and subtracts the critical path. What is left is what drover adds
//! along that path: starting each step after the one it needs, spawning `sleep`,
//! reaping it, the journal records in between. Goal: within 2.5% and 50 ms. Beside it,
//! the floor: the same `sleep` processes along the path run one after the other by this
//! program (`sleep floor`), which is what the operating system alone adds (starting
//! `sleep`, its own overshoot).
//!
//! Every step also carries its sleep as `estimate`, and the bench checks first that
//! `drover plan --format json` finds the known critical path
//! (`critical_path_estimate_s`): the path compared with is drover's own plan. (The
//! critical path a drill reports is the chain that determined its RTO as it ran, which
//! under load may run through another branch of nearly the same length.)
//!
//! ```text
//! cargo build --release -p drover && cargo bench -p drover-benches --bench rto
//! ```
//!
//! Arguments: `--iterations N` (default 5 rounds of every case, after one warm-up round;
//! `--warmup N`), `--scale X` (multiplies every sleep, default 1: critical paths of 2 s
//! and 10 s), `--json FILE` (see `benches/common.rs`). `DROVER_BIN` overrides the binary.
//! Results are recorded in `docs/BENCHMARKS.md`.

use std::fmt::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

#[path = "common.rs"]
mod common;
use common::{Results, arg, arg_str, binary};

/// One step: id, sleep in seconds, the steps it needs.
type Step = (String, f64, Vec<String>);

/// A runbook shape with a known critical path.
struct Case {
    name: String,
    steps: Vec<Step>,
    /// The sum of the sleeps along the longest path, seconds.
    critical_path: f64,
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

fn cases(scale: f64) -> Vec<Case> {
    let s = |x: f64| x * scale;
    let mut out = Vec::new();
    // A chain: the path is every step.
    let chain: Vec<Step> = ids("c", 4)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, s(0.5), if i == 0 { vec![] } else { vec![format!("c{i}")] }))
        .collect();
    out.push(Case {
        name: format!("chain 4 x {:.2} s", s(0.5)),
        steps: chain,
        critical_path: s(2.0),
    });
    // A diamond: the path runs through the longest of three branches.
    out.push(Case {
        name: format!("diamond, {:.2} s path", s(2.0)),
        steps: vec![
            ("a".into(), s(0.5), vec![]),
            ("b".into(), s(1.0), vec!["a".into()]),
            ("c".into(), s(0.3), vec!["a".into()]),
            ("d".into(), s(0.7), vec!["a".into()]),
            ("e".into(), s(0.5), vec!["b".into(), "c".into(), "d".into()]),
        ],
        critical_path: s(2.0),
    });
    // A fan-out/in of 16 (engine.max_parallel is 16: all of them at once).
    let mut fan: Vec<Step> = vec![("root".into(), s(0.5), vec![])];
    for (i, id) in ids("m", 16).into_iter().enumerate() {
        // One middle step is the longest; the others finish earlier.
        let secs = if i == 7 { s(1.0) } else { s(0.8) };
        fan.push((id, secs, vec!["root".into()]));
    }
    fan.push(("last".into(), s(0.5), ids("m", 16)));
    out.push(Case {
        name: format!("fan-out/in 18, {:.2} s path", s(2.0)),
        steps: fan,
        critical_path: s(2.0),
    });
    // A longer chain: the 50 ms bound matters more than 2.5% here.
    let long: Vec<Step> = ids("l", 10)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, s(1.0), if i == 0 { vec![] } else { vec![format!("l{i}")] }))
        .collect();
    out.push(Case {
        name: format!("chain 10 x {:.2} s", s(1.0)),
        steps: long,
        critical_path: s(10.0),
    });
    out
}

fn runbook(case: &Case) -> String {
    let mut out = String::from("name: rto\nservice: svc\nsteps:\n");
    for (id, secs, needs) in &case.steps {
        let ms = (secs * 1000.0).round() as u64;
        writeln!(
            out,
            "  - {{id: {id}, uses: exec.run, with: {{command: [sleep, \"{secs:.3}\"]}}, estimate: {ms}ms, needs: [{}]}}",
            needs.join(", ")
        )
        .expect("write to String");
    }
    out
}

/// What one drill reported.
struct Run {
    rto: f64,
    wall: f64,
}

/// A fresh workspace for `case` in a temporary folder.
fn workspace(case: &Case) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let write = |p: &str, t: &str| std::fs::write(d.join(p), t).map_err(|e| e.to_string());
    std::fs::create_dir_all(d.join("runbooks")).map_err(|e| e.to_string())?;
    write(
        "drover.yaml",
        "sites: [{name: east}]\nstate: {url: \"sqlite://state.db\"}\nengine: {max_parallel: 16}\ncmdb: cmdb.yaml\nrunbooks: runbooks\n",
    )?;
    write("cmdb.yaml", "items: [{id: svc, kind: business_service}]\n")?;
    write("runbooks/rto.yaml", &runbook(case))?;
    Ok(dir)
}

/// drover's planned critical path of `case` (`drover plan --format json`), seconds.
fn planned(bin: &std::path::Path, case: &Case) -> Result<f64, String> {
    let dir = workspace(case)?;
    let out = Command::new(bin)
        .args(["--config", "drover.yaml", "plan", "rto", "--format", "json"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("drover plan: not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))?;
    json["critical_path_estimate_s"]
        .as_f64()
        .ok_or_else(|| format!("drover plan: no critical_path_estimate_s in {json}"))
}

fn drill(bin: &std::path::Path, case: &Case) -> Result<Run, String> {
    let dir = workspace(case)?;
    let start = Instant::now();
    let out = Command::new(bin)
        .args(["--config", "drover.yaml", "drill", "rto", "--yes", "--format", "json"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let wall = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("drover's output is not JSON ({e}): {stderr}"))?;
    if json["outcome"] != "passed" {
        return Err(format!("drill: outcome {}: {stderr}", json["outcome"]));
    }
    let rto = json["rto"]["achieved_s"]
        .as_f64()
        .ok_or_else(|| format!("no rto.achieved_s in drover's report: {json}"))?;
    Ok(Run { rto, wall })
}

/// The sleeps along the longest path (steps only need earlier ones).
fn path_sleeps(case: &Case) -> Vec<f64> {
    let mut best: Vec<(f64, Vec<f64>)> = Vec::new();
    for (i, (_, secs, needs)) in case.steps.iter().enumerate() {
        let before = needs
            .iter()
            .filter_map(|n| case.steps[..i].iter().position(|(id, ..)| id == n))
            .map(|j| best[j].clone())
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or_default();
        let mut path = before.1;
        path.push(*secs);
        best.push((before.0 + secs, path));
    }
    best.into_iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|b| b.1)
        .unwrap_or_default()
}

/// The floor: the same `sleep` processes along the path, one after the other, spawned
/// and awaited by this program; milliseconds beyond the path.
fn floor(case: &Case) -> Result<f64, String> {
    let start = Instant::now();
    for secs in path_sleeps(case) {
        let status = Command::new("sleep")
            .arg(format!("{secs:.3}"))
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("sleep: {e}"))?;
        if !status.success() {
            return Err(format!("sleep exited with {status}"));
        }
    }
    Ok((start.elapsed().as_secs_f64() - case.critical_path) * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> ExitCode {
    let iterations = arg("--iterations", 5) as usize;
    let warmup = arg("--warmup", 1) as usize;
    let scale: f64 = arg_str("--scale").and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let results = Results::from_args("rto");
    let bin = binary();
    if !bin.is_file() {
        eprintln!("{} is missing: cargo build --release -p drover", bin.display());
        return ExitCode::FAILURE;
    }
    let cases = cases(scale);
    for case in &cases {
        match planned(&bin, case) {
            Ok(p) if (p - case.critical_path).abs() <= 0.0015 => {}
            Ok(p) => {
                eprintln!(
                    "error: {}: drover plans a critical path of {p:.3} s, the bench built {:.3} s",
                    case.name, case.critical_path
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("error: {}: {e}", case.name);
                return ExitCode::FAILURE;
            }
        }
    }
    let mut excess: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut floors: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..warmup + iterations {
        let timed = round >= warmup;
        eprintln!(
            "{}",
            if timed {
                format!("round {} of {iterations}", round - warmup + 1)
            } else {
                "warm-up".into()
            }
        );
        for (i, case) in cases.iter().enumerate() {
            let run = match drill(&bin, case) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {}: {e}", case.name);
                    return ExitCode::FAILURE;
                }
            };
            let fl = match floor(case) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: {}: floor: {e}", case.name);
                    return ExitCode::FAILURE;
                }
            };
            if timed {
                floors[i].push(fl);
                results.sample(
                    "sleep floor",
                    &case.name,
                    Some(case.steps.len()),
                    "rto_excess",
                    "ms",
                    fl,
                );
                let over = (run.rto - case.critical_path) * 1e3;
                excess[i].push(over);
                walls[i].push(run.wall * 1e3);
                let n = Some(case.steps.len());
                results.sample("drover", &case.name, n, "critical_path", "ms", case.critical_path * 1e3);
                results.sample("drover", &case.name, n, "rto_excess", "ms", over);
                results.sample("drover", &case.name, n, "wall", "ms", run.wall * 1e3);
            }
        }
    }
    println!();
    println!(
        "| case | steps | critical path s | RTO - path, median ms | min | max | % of path | within 2.5% and 50 ms | sleep floor - path, ms | process wall s |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|---|--:|--:|");
    for (i, case) in cases.iter().enumerate() {
        let m = median(excess[i].clone());
        let min = excess[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = excess[i].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pct = m / (case.critical_path * 1e3) * 100.0;
        let met = m.abs() <= 50.0 && pct.abs() <= 2.5;
        println!(
            "| {} | {} | {:.2} | {m:.1} | {min:.1} | {max:.1} | {pct:.2}% | {} | {:.1} | {:.2} |",
            case.name,
            case.steps.len(),
            case.critical_path,
            if met { "yes" } else { "no" },
            median(floors[i].clone()),
            median(walls[i].clone()) / 1e3
        );
    }
    ExitCode::SUCCESS
}
