//! Planning at estate scale: a generated CMDB of 100,000 CIs (a layered DAG, each CI
//! depending on 1-3 CIs of lower layers) and a runbook of 10,000 steps bound to random
//! CIs, some with explicit `needs`. Times, as medians of several runs: reading the YAML
//! into typed values, the semantic checks, loading and checking the files from disk
//! (what `drover validate` does), building the CMDB graph, and planning; then the
//! release binary end to end, `drover validate`, `drover plan estate --format json`
//! (which loads, checks and plans) and `drover coverage --format json`, each its own
//! process, with its wall time and peak RSS (GNU time's `%M`, the kernel's `ru_maxrss`
//! of the process). Goal: validate and plan under 2 s.
//!
//! `cargo bench -p drover-benches --bench plan` (a plain `main`, no harness); results
//! are recorded in `docs/BENCHMARKS.md`. Arguments: `--cis N --steps N --iterations N
//! --warmup N --shapes random,bimodal,inherited --json FILE` (see `benches/common.rs`);
//! `DROVER_BIN` overrides the binary (the end-to-end rows are skipped when it is missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_model::graph::CiGraph;
use drover_model::node::parse_yaml;
use drover_model::{Cmdb, Config, Runbook, RunbookFile, Workspace, from_node};
use drover_plugin_api::Registry;

#[path = "common.rs"]
mod common;
use common::{Results, arg_str, binary};

/// splitmix64: a small deterministic generator, so every run plans the same estate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const LAYERS: usize = 20;

struct Estate {
    config: String,
    cmdb: String,
    runbook: String,
    /// Dependency edges in the CMDB and explicit `needs` in the runbook.
    edges: usize,
    needs: usize,
}

/// Which CIs the runbook's steps are bound to.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Any CI.
    Random,
    /// Half on the bottom layer, half on the top layer, none in between: the CMDB
    /// order then runs through long chains of CIs without steps.
    Bimodal,
    /// Steps as in `Random`, but only the top layer (the business services) has a
    /// tier: every other CI inherits the strictest tier of the CIs that depend on it,
    /// as in a real CMDB, where infrastructure is not tiered by hand.
    Inherited,
}

/// The files of a generated estate.
fn generate(cis: usize, steps: usize, shape: Shape) -> Estate {
    let mut rng = Rng(0x5eed_d20e);
    let per_layer = cis.div_ceil(LAYERS);
    let layer = |i: usize| i / per_layer;
    let mut cmdb = String::from("tiers:\n  gold: {rto: 15m, rpo: 1m}\n  silver: {rto: 4h, rpo: 1h}\nitems:\n");
    let mut edges = 0;
    for i in 0..cis {
        let mut deps: Vec<usize> = Vec::new();
        if layer(i) > 0 {
            for _ in 0..1 + rng.below(3) {
                let d = rng.below(layer(i) * per_layer);
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
        }
        edges += deps.len();
        let deps: Vec<String> = deps.iter().map(|d| format!("ci-{d:05}")).collect();
        let tier = match (shape, i % 2) {
            (Shape::Inherited, _) if layer(i) + 1 < LAYERS => "",
            (_, 0) => ", tier: gold",
            _ => ", tier: silver",
        };
        cmdb += &format!(
            "  - {{id: ci-{i:05}, kind: application{tier}, owner: team-{}, depends_on: [{}]}}\n",
            i % 50,
            deps.join(", ")
        );
    }
    // Steps bound to random CIs, listed by the layer of their CI; a step only needs
    // earlier ones, so neither `needs` nor the CMDB order can close a cycle.
    let mut bound: Vec<usize> = (0..steps)
        .map(|i| match shape {
            Shape::Random | Shape::Inherited => rng.below(cis),
            Shape::Bimodal if i % 2 == 0 => rng.below(per_layer),
            Shape::Bimodal => cis - 1 - rng.below(per_layer),
        })
        .collect();
    bound.sort_by_key(|&c| layer(c));
    let service = cis - 1;
    let mut runbook =
        format!("name: estate\ndescription: Generated.\nservice: ci-{service:05}\nfrom: east\nto: west\nsteps:\n");
    let mut needs = 0;
    for (i, ci) in bound.iter().enumerate() {
        let mut need: Vec<usize> = Vec::new();
        if i > 0 && i % 4 == 0 {
            for _ in 0..1 + rng.below(2) {
                let j = rng.below(i);
                if !need.contains(&j) {
                    need.push(j);
                }
            }
        }
        needs += need.len();
        let need: Vec<String> = need.iter().map(|j| format!("s{j:04}")).collect();
        runbook += &format!(
            "  - {{id: s{i:04}, ci: ci-{ci:05}, uses: exec.run, with: {{command: [true]}}, needs: [{}], estimate: {}s}}\n",
            need.join(", "),
            1 + rng.below(120)
        );
    }
    let config = "sites: [{name: east}, {name: west}]\ncmdb: cmdb.yaml\nrunbooks: runbooks\n".to_owned();
    Estate {
        config,
        cmdb,
        runbook,
        edges,
        needs,
    }
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    drover_plugin_exec::register(&mut reg);
    reg
}

/// Runs `f` `warmup` times to warm up, then `n` times; returns the timings sorted.
fn time<T>(warmup: usize, n: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    for _ in 0..warmup {
        std::hint::black_box(f());
    }
    let mut out: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn arg(name: &str, default: usize) -> usize {
    common::arg(name, default as u64) as usize
}

fn write_files(dir: &Path, e: &Estate) {
    std::fs::create_dir_all(dir.join("runbooks")).unwrap();
    std::fs::write(dir.join("drover.yaml"), &e.config).unwrap();
    std::fs::write(dir.join("cmdb.yaml"), &e.cmdb).unwrap();
    std::fs::write(dir.join("runbooks/estate.yaml"), &e.runbook).unwrap();
}

/// One end-to-end run of the release binary under GNU time: wall ms and peak RSS in KiB.
fn process(bin: &Path, dir: &Path, args: &[&str]) -> Result<(f64, u64), String> {
    let timing = dir.join("time.out");
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&timing)
        .arg(bin)
        .arg("--config")
        .arg(dir.join("drover.yaml"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("/usr/bin/time: {e}"))?;
    let wall = start.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(format!(
            "drover {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let rss = std::fs::read_to_string(&timing)
        .ok()
        .and_then(|t| t.split_whitespace().last().and_then(|v| v.parse().ok()))
        .ok_or("GNU time reported no peak RSS")?;
    Ok((wall, rss))
}

/// Settings shared by every shape.
struct Opts {
    cis: usize,
    steps: usize,
    n: usize,
    warmup: usize,
    results: Results,
    /// The release binary, if there is one, and GNU time to measure it with.
    bin: Result<PathBuf, String>,
}

fn main() {
    // `cargo bench` passes `--bench`; ignore what is not ours.
    let bin = binary();
    let bin = if !bin.is_file() {
        Err(format!("{} is missing: cargo build --release -p drover", bin.display()))
    } else if !Path::new("/usr/bin/time").is_file() {
        Err("GNU time is missing (apt-get install time)".to_string())
    } else {
        Ok(bin)
    };
    let opts = Opts {
        cis: arg("--cis", 100_000),
        steps: arg("--steps", 10_000),
        n: arg("--iterations", 9),
        warmup: arg("--warmup", 1),
        results: Results::from_args("plan"),
        bin,
    };
    let shapes = arg_str("--shapes").unwrap_or_else(|| "random,bimodal,inherited".into());
    println!("{} iterations after {} warm-up(s); milliseconds", opts.n, opts.warmup);
    if let Err(why) = &opts.bin {
        println!("end-to-end rows skipped: {why}");
    }
    for name in shapes.split(',') {
        let shape = match name.trim() {
            "random" => Shape::Random,
            "bimodal" => Shape::Bimodal,
            "inherited" => Shape::Inherited,
            other => panic!("unknown shape `{other}` (random, bimodal, inherited)"),
        };
        run(&opts, shape);
    }
}

fn run(opts: &Opts, shape: Shape) {
    let (cis, steps, n, warmup) = (opts.cis, opts.steps, opts.n, opts.warmup);
    let estate = generate(cis, steps, shape);
    let reg = registry();

    let parse_trees = || {
        (
            parse_yaml(&estate.config).unwrap(),
            parse_yaml(&estate.cmdb).unwrap(),
            parse_yaml(&estate.runbook).unwrap(),
        )
    };
    let trees = parse_trees();
    let typed = || {
        let config: Config = from_node(&trees.0).unwrap();
        let cmdb: Cmdb = from_node(&trees.1).unwrap();
        let rb: Runbook = from_node(&trees.2).unwrap();
        (config, cmdb, rb)
    };
    let (config, cmdb, rb) = typed();
    let in_memory = Workspace {
        config_path: PathBuf::from("drover.yaml"),
        config: Some(config),
        cmdb_path: Some(PathBuf::from("cmdb.yaml")),
        cmdb: Some(cmdb.clone()),
        runbooks: vec![RunbookFile {
            path: PathBuf::from("runbooks/estate.yaml"),
            runbook: Some(rb.clone()),
        }],
        ..Default::default()
    };
    let mut check = in_memory.clone();
    check.validate(&reg);
    assert!(
        check.diagnostics.is_empty(),
        "generated estate is invalid:\n{}",
        check.render_diagnostics(&check.diagnostics[..check.diagnostics.len().min(10)])
    );

    let dir = std::env::temp_dir().join(format!("drover-bench-{}", std::process::id()));
    write_files(&dir, &estate);

    let graph = CiGraph::new(&cmdb);
    let plan = drover_engine::plan(&rb, &cmdb, &graph).expect("plan");

    use std::hint::black_box as keep;
    let time = |f: &mut dyn FnMut()| time(warmup, n, f);
    let rows: Vec<(&str, &str, Vec<Duration>)> = vec![
        (
            "YAML to located tree (node::parse_yaml)",
            "parse",
            time(&mut || drop(keep(parse_trees()))),
        ),
        (
            "located tree to types (de::from_node)",
            "from_node",
            time(&mut || drop(keep(typed()))),
        ),
        (
            "semantic checks (Workspace::validate)",
            "validate",
            time(&mut || {
                let mut ws = in_memory.clone();
                ws.validate(&reg);
                drop(keep(ws));
            }),
        ),
        (
            "load + check from disk (drover validate)",
            "load_validate",
            time(&mut || {
                let mut ws = Workspace::load(&dir.join("drover.yaml"), &[]);
                ws.validate(&reg);
                assert!(ws.diagnostics.is_empty());
                drop(keep(ws));
            }),
        ),
        (
            "CiGraph::new",
            "ci_graph",
            time(&mut || drop(keep(CiGraph::new(&cmdb)))),
        ),
        (
            "drover_engine::plan",
            "plan",
            time(&mut || drop(keep(drover_engine::plan(&rb, &cmdb, &graph).unwrap()))),
        ),
        (
            "plan to JSON",
            "plan_json",
            time(&mut || drop(keep(serde_json::to_string(&plan).unwrap()))),
        ),
    ];
    let case = format!("{} {cis} CIs {steps} steps", format!("{shape:?}").to_lowercase());
    for (_, metric, t) in &rows {
        for d in t {
            opts.results
                .sample("drover", &case, Some(steps), metric, "ms", d.as_secs_f64() * 1e3);
        }
    }
    // The release binary, end to end: one process per command, peak RSS from the kernel.
    let mut e2e: Vec<(&str, Vec<f64>, u64)> = Vec::new();
    if let Ok(bin) = &opts.bin {
        for (name, metric, args) in [
            ("drover validate", "e2e_validate", &["validate"][..]),
            (
                "drover plan estate --format json",
                "e2e_plan",
                &["plan", "estate", "--format", "json"][..],
            ),
            // Every tiered CI of the estate (directly or inherited) judged against its
            // drill policy, with its blast radius: no runs recorded.
            (
                "drover coverage --format json",
                "e2e_coverage",
                &["coverage", "--format", "json"][..],
            ),
        ] {
            let mut walls = Vec::new();
            let mut peak = 0;
            for i in 0..warmup + n {
                let (wall, rss) = process(bin, &dir, args).unwrap_or_else(|e| panic!("{e}"));
                if i >= warmup {
                    walls.push(wall);
                    peak = peak.max(rss);
                    opts.results.sample("drover", &case, Some(steps), metric, "ms", wall);
                    opts.results.sample(
                        "drover",
                        &case,
                        Some(steps),
                        &format!("{metric}_rss"),
                        "MiB",
                        rss as f64 / 1024.0,
                    );
                }
            }
            walls.sort_by(f64::total_cmp);
            e2e.push((name, walls, peak));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "\n## {shape:?}\n\nestate: {cis} CIs ({} dependency edges, {LAYERS} layers), runbook: {steps} steps ({} needs), \
         CMDB {:.1} MiB, runbook {:.2} MiB",
        estate.edges,
        estate.needs,
        estate.cmdb.len() as f64 / (1 << 20) as f64,
        estate.runbook.len() as f64 / (1 << 20) as f64,
    );
    println!(
        "plan: {} stages, critical path {} steps ({:.0} s estimated), {} CIs touched",
        plan.stages.len(),
        plan.critical_path.len(),
        plan.critical_path_estimate_s.unwrap_or(0.0),
        plan.cis.len()
    );
    println!();
    println!("| {:<42} | {:>9} | {:>9} | {:>9} |", "what", "median", "min", "max");
    println!("|{:-<44}|{:->11}|{:->11}|{:->11}|", "", ":", ":", ":");
    for (name, _, t) in &rows {
        println!(
            "| {name:<42} | {:>9} | {:>9} | {:>9} |",
            ms(t[t.len() / 2]),
            ms(t[0]),
            ms(t[t.len() - 1])
        );
    }
    if !e2e.is_empty() {
        println!();
        println!("release binary, one process each (goal: validate and plan under 2 s)");
        println!("| command | median ms | min ms | max ms | peak RSS MiB |");
        println!("|---|--:|--:|--:|--:|");
        for (name, w, rss) in &e2e {
            println!(
                "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
                w[w.len() / 2],
                w[0],
                w[w.len() - 1],
                *rss as f64 / 1024.0
            );
        }
    }
}
