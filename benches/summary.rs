//! The summary table of `benches/run.sh`, computed from the JSON lines the benches wrote
//! (`--json FILE`, see `benches/common.rs`): nothing in it is typed in by hand. First
//! the machine, then one row per comparison (drover against a peer, against a goal, or
//! both) with the ratio first and the absolute figures as context, then every figure's
//! median (min, max and the number of samples) as measured.
//!
//! ```text
//! cargo bench -p drover-benches --bench summary -- --input target/bench-results/results.jsonl [--smoke]
//! ```
//!
//! Exits non-zero when a result the table needs is missing (a bench that failed or did
//! not run): a peer that is not installed is not missing, its row says why. Goals that
//! are missed do not fail it: that is a finding, reported in the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

#[path = "common.rs"]
mod common;
use common::{arg_str, flag};

/// One line of a bench's `--json` output.
#[derive(Debug, Clone)]
struct Rec {
    bench: String,
    tool: String,
    case: String,
    steps: Option<usize>,
    metric: String,
    unit: String,
    value: Option<f64>,
    missing: Option<String>,
    text: Option<String>,
}

fn parse(line: &str) -> Option<Rec> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    Some(Rec {
        bench: s("bench"),
        tool: s("tool"),
        case: s("case"),
        steps: v["steps"].as_u64().map(|n| n as usize),
        metric: s("metric"),
        unit: s("unit"),
        value: v["value"].as_f64(),
        missing: v["missing"].as_str().map(str::to_owned),
        text: v["text"].as_str().map(str::to_owned),
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

struct Data {
    recs: Vec<Rec>,
    /// What the table needed and did not find.
    missing: Vec<String>,
}

impl Data {
    fn values(&self, bench: &str, tool: &str, case: &str, metric: &str) -> Vec<f64> {
        self.recs
            .iter()
            .filter(|r| r.bench == bench && r.tool == tool && r.case == case && r.metric == metric)
            .filter_map(|r| r.value)
            .collect()
    }

    /// The median of a figure; a missing one is noted (unless the tool is known to be
    /// not installed, which `why_missing` tells).
    fn med(&mut self, bench: &str, tool: &str, case: &str, metric: &str) -> Option<f64> {
        let m = median(self.values(bench, tool, case, metric));
        if m.is_none() && self.why_missing(bench, tool, case).is_none() {
            self.missing.push(format!("{bench}: {tool} / {case} / {metric}"));
        }
        m
    }

    /// The largest sample (peak memory).
    fn max(&mut self, bench: &str, tool: &str, case: &str, metric: &str) -> Option<f64> {
        let v = self.values(bench, tool, case, metric);
        if v.is_empty() && self.why_missing(bench, tool, case).is_none() {
            self.missing.push(format!("{bench}: {tool} / {case} / {metric}"));
        }
        v.into_iter().reduce(f64::max)
    }

    /// Why a tool did not run, if its bench said so.
    fn why_missing(&self, bench: &str, tool: &str, case: &str) -> Option<String> {
        self.recs
            .iter()
            .find(|r| r.bench == bench && r.tool == tool && (r.case == case || r.case == "all") && r.missing.is_some())
            .and_then(|r| r.missing.clone())
    }

    /// Whether `benches/run.sh` ran this bench (all of them when it did not say).
    fn ran(&self, bench: &str) -> bool {
        let ran = self.text("ran");
        ran.is_empty() || ran.iter().any(|b| b == bench)
    }

    fn has_bench(&self, bench: &str) -> bool {
        self.recs.iter().any(|r| r.bench == bench && r.bench != "run")
    }

    /// The distinct cases of a bench with a metric, in the order first seen.
    fn cases(&self, bench: &str, tool: &str, metric: &str) -> Vec<(String, Option<usize>)> {
        let mut out: Vec<(String, Option<usize>)> = Vec::new();
        for r in &self.recs {
            if r.bench == bench && r.tool == tool && r.metric == metric && !out.iter().any(|(c, _)| *c == r.case) {
                out.push((r.case.clone(), r.steps));
            }
        }
        out
    }

    fn text(&self, case: &str) -> Vec<String> {
        self.recs
            .iter()
            .filter(|r| r.bench == "run" && r.case == case)
            .filter_map(|r| r.text.clone())
            .collect()
    }
}

/// One row of the summary.
struct Row {
    what: String,
    vs_peer: String,
    vs_goal: String,
    drover: String,
    peer: String,
    goal: String,
}

/// `peer` time against drover's: "2.33x faster than X" or "1.20x slower than X".
fn versus(drover: Option<f64>, peer: Option<f64>, name: &str, why: Option<String>) -> String {
    match (drover, peer) {
        (Some(d), Some(p)) if d > 0.0 && p > 0.0 => {
            if p >= d {
                format!("{:.2}x faster than {name}", p / d)
            } else {
                format!("**{:.2}x slower than {name}**", d / p)
            }
        }
        _ => match why {
            Some(w) => format!("{name}: {w}"),
            None => format!("{name}: no result"),
        },
    }
}

/// A figure against an upper limit: "met (0.40x of the limit)" or "missed (3.3x)".
fn under(value: Option<f64>, limit: f64) -> String {
    match value {
        Some(v) if v <= limit => format!("met ({:.2}x of the limit)", v / limit),
        Some(v) => format!("**missed ({:.2}x the limit)**", v / limit),
        None => "no result".into(),
    }
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) if v.abs() >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1} {unit}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2} {unit}"),
        Some(v) => format!("{v:.3} {unit}"),
        None => "-".into(),
    }
}

fn peer_cell(d: &Data, bench: &str, tool: &str, case: &str, v: Option<f64>, unit: &str, label: &str) -> String {
    match (v, d.why_missing(bench, tool, case)) {
        (Some(v), _) => format!("{label} {}", fmt(Some(v), unit)),
        (None, Some(why)) => format!("{label}: {why}"),
        (None, None) => format!("{label}: no result"),
    }
}

/// A row saying that a bench gave nothing (it failed or did not run); noted as missing.
fn no_results(d: &mut Data, rows: &mut Vec<Row>, bench: &str, why: &str) {
    d.missing.push(format!("{bench}: {why}"));
    rows.push(Row {
        what: format!("{bench}: **no results**"),
        vs_peer: "-".into(),
        vs_goal: why.into(),
        drover: "-".into(),
        peer: "see the bench's log in the output folder's logs/".into(),
        goal: "-".into(),
    });
}

fn engine_rows(d: &mut Data, rows: &mut Vec<Row>) {
    if !d.ran("engine") {
        return;
    }
    if !d.has_bench("engine") {
        no_results(d, rows, "engine", "the bench failed or did not run");
        return;
    }
    let chains: Vec<usize> = {
        let mut v: Vec<usize> = d
            .cases("engine", "drover", "wall")
            .into_iter()
            .filter(|(c, _)| c.starts_with("chain "))
            .filter_map(|(_, n)| n)
            .filter(|&n| n > 1)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let [.., small, large] = chains[..] else {
        d.missing.push("engine: fewer than two chain lengths".into());
        return;
    };
    let fan = d
        .cases("engine", "drover", "wall")
        .into_iter()
        .find(|(c, _)| c.starts_with("fan-out/in"));
    let mut shapes = vec![(format!("chain {small}"), small), (format!("chain {large}"), large)];
    if let Some((c, Some(n))) = &fan {
        shapes.push((c.clone(), *n));
    }
    for (tool, peer, what) in [
        ("drover", "chaos", "exec.run `true`"),
        (
            "drover no-spawn",
            "chaos no-spawn",
            "no process (manual.approve --yes; chaos: python os.getpid)",
        ),
    ] {
        for (case, _) in &shapes {
            let dv = d.med("engine", tool, case, "wall");
            let pv = d.med("engine", peer, case, "wall");
            rows.push(Row {
                what: format!("engine: {case}, {what}, wall"),
                vs_peer: versus(dv, pv, "Chaos Toolkit", d.why_missing("engine", peer, case)),
                vs_goal: "-".into(),
                drover: fmt(dv, "ms"),
                peer: peer_cell(d, "engine", peer, case, pv, "ms", "chaos"),
                goal: "faster than Chaos Toolkit".into(),
            });
        }
    }
    // Marginal cost per step, small to large chain.
    let marginal = |d: &mut Data, tool: &str| -> Option<f64> {
        let a = d.med("engine", tool, &format!("chain {small}"), "wall")?;
        let b = d.med("engine", tool, &format!("chain {large}"), "wall")?;
        Some((b - a) / (large - small) as f64)
    };
    let floor = marginal(d, "spawn");
    let beyond = |m: Option<f64>| Some(m? - floor?);
    let drover = beyond(marginal(d, "drover"));
    let chaos = beyond(marginal(d, "chaos"));
    let goal = 0.1;
    rows.push(Row {
        what: format!("engine: per-step overhead beyond the spawn floor, exec.run chain (marginal {small} to {large})"),
        vs_peer: versus(drover, chaos, "Chaos Toolkit", d.why_missing("engine", "chaos", "all")),
        vs_goal: under(drover, goal),
        drover: fmt(drover, "ms"),
        peer: peer_cell(d, "engine", "chaos", "all", chaos, "ms", "chaos"),
        goal: format!("<= {goal} ms/step"),
    });
    let drover_ns = marginal(d, "drover no-spawn");
    let chaos_ns = marginal(d, "chaos no-spawn");
    rows.push(Row {
        what: format!(
            "engine: per-step overhead with no process at all, manual.approve chain (marginal {small} to {large})"
        ),
        vs_peer: versus(
            drover_ns,
            chaos_ns,
            "Chaos Toolkit",
            d.why_missing("engine", "chaos no-spawn", "all"),
        ),
        vs_goal: under(drover_ns, goal),
        drover: fmt(drover_ns, "ms"),
        peer: peer_cell(d, "engine", "chaos no-spawn", "all", chaos_ns, "ms", "chaos"),
        goal: format!("<= {goal} ms/step"),
    });
    // Where the time of a step goes, from the journal's own clock (large chains).
    let append = median(d.values(
        "store",
        "SQLite (WAL, synchronous=NORMAL)",
        "journal append",
        "append_p50",
    ));
    for (tool, what) in [("drover no-spawn", "a no-process step"), ("drover", "an exec.run step")] {
        let case = format!("chain {large}");
        let run = median(d.values("engine", tool, &case, "started_to_finished"));
        let next = median(d.values("engine", tool, &case, "finished_to_next_started"));
        if run.is_none() && next.is_none() {
            continue;
        }
        rows.push(Row {
            what: format!("engine: where {what}'s time goes ({case}, the journal's clock)"),
            vs_peer: "-".into(),
            vs_goal: "-".into(),
            drover: format!(
                "{} + {}",
                fmt(run, "ms"),
                fmt(next, "ms")
            ),
            peer: format!(
                "step_started to step_finished {} (a commit, the attempt, the action); step_finished to the next step_started {} (a commit, the scheduler); one SQLite journal append alone (store bench, p50) {}",
                fmt(run, "ms"),
                fmt(next, "ms"),
                fmt(append, "ms")
            ),
            goal: "-".into(),
        });
    }
    if let Some((case, Some(n))) = &fan {
        let per = |d: &mut Data, tool: &str, floor_tool: Option<&str>| -> Option<f64> {
            let t = d.med("engine", tool, case, "wall")?;
            let f = match floor_tool {
                Some(f) => d.med("engine", f, case, "wall")?,
                None => 0.0,
            };
            Some((t - f) / *n as f64)
        };
        let dv = per(d, "drover", Some("spawn"));
        let cv = per(d, "chaos", Some("spawn"));
        rows.push(Row {
            what: format!("engine: per-step overhead beyond the parallel spawn floor, exec.run {case}"),
            vs_peer: versus(dv, cv, "Chaos Toolkit", d.why_missing("engine", "chaos", case)),
            vs_goal: under(dv, goal),
            drover: fmt(dv, "ms"),
            peer: peer_cell(d, "engine", "chaos", case, cv, "ms", "chaos"),
            goal: format!("<= {goal} ms/step"),
        });
        let dv = per(d, "drover no-spawn", None);
        let cv = per(d, "chaos no-spawn", None);
        rows.push(Row {
            what: format!("engine: per-step cost with no process, manual.approve {case}"),
            vs_peer: versus(dv, cv, "Chaos Toolkit", d.why_missing("engine", "chaos no-spawn", case)),
            vs_goal: under(dv, goal),
            drover: fmt(dv, "ms"),
            peer: peer_cell(d, "engine", "chaos no-spawn", case, cv, "ms", "chaos"),
            goal: format!("<= {goal} ms/step"),
        });
    }
}

fn rto_rows(d: &mut Data, rows: &mut Vec<Row>) {
    if !d.ran("rto") {
        return;
    }
    let cases = d.cases("rto", "drover", "rto_excess");
    if cases.is_empty() {
        no_results(d, rows, "rto", "the bench failed or did not run");
    }
    for (case, _) in cases {
        let over = d.med("rto", "drover", &case, "rto_excess");
        let path = d.med("rto", "drover", &case, "critical_path");
        let floor = d.med("rto", "sleep floor", &case, "rto_excess");
        let (Some(o), Some(p)) = (over, path) else { continue };
        let pct = o / p * 100.0;
        let met = o.abs() <= 50.0 && pct.abs() <= 2.5;
        rows.push(Row {
            what: format!("RTO precision: {case}, achieved RTO minus the critical path"),
            vs_peer: "-".into(),
            vs_goal: if met {
                format!("met ({:.2}x of 50 ms, {:.2}x of 2.5%)", o / 50.0, pct / 2.5)
            } else {
                format!("**missed ({:.2}x of 50 ms, {:.2}x of 2.5%)**", o / 50.0, pct / 2.5)
            },
            drover: format!("+{} ({pct:.2}%)", fmt(Some(o), "ms")),
            peer: format!(
                "path {}; the same sleeps one after the other without drover: +{}",
                fmt(Some(p / 1e3), "s"),
                fmt(floor, "ms")
            ),
            goal: "within 2.5% and 50 ms".into(),
        });
    }
}

fn s3_rows(d: &mut Data, rows: &mut Vec<Row>) {
    if !d.ran("s3") {
        return;
    }
    if !d.has_bench("s3") {
        no_results(d, rows, "s3", "the bench failed or did not run");
        return;
    }
    let mut peak = None::<f64>;
    let mut peer_rss = Vec::new();
    for (server, _) in d.cases("s3", "drover", "wall") {
        let dv = d.med("s3", "drover", &server, "wall");
        let mib = d.med("s3", "drover", &server, "data").unwrap_or(0.0);
        let goal = if server == "moto" {
            "at least as fast as both"
        } else {
            "faster than both"
        };
        for peer in ["boto3 + hashlib", "rclone hashsum --download"] {
            let pv = d.med("s3", peer, &server, "wall");
            let why = d.why_missing("s3", peer, &server);
            rows.push(Row {
                what: format!("S3 verify (SHA-256) of {mib:.0} MiB on {server}, wall"),
                vs_peer: versus(dv, pv, peer, why),
                vs_goal: "-".into(),
                drover: fmt(dv, "s"),
                peer: peer_cell(d, "s3", peer, &server, pv, "s", peer),
                goal: goal.into(),
            });
            if let Some(r) = d.max("s3", peer, &server, "rss") {
                peer_rss.push(format!("{peer} on {server} {r:.0} MiB"));
            }
        }
        if let Some(r) = d.max("s3", "drover", &server, "rss") {
            peak = Some(peak.map_or(r, |p: f64| p.max(r)));
        }
    }
    rows.push(Row {
        what: "S3 verify: drover's peak RSS".into(),
        vs_peer: "-".into(),
        vs_goal: under(peak, 128.0),
        drover: fmt(peak, "MiB"),
        peer: peer_rss.join("; "),
        goal: "<= 128 MiB".into(),
    });
}

fn plan_rows(d: &mut Data, rows: &mut Vec<Row>) {
    if !d.ran("plan") {
        return;
    }
    let cases = d.cases("plan", "drover", "e2e_plan");
    if cases.is_empty() {
        no_results(
            d,
            rows,
            "plan",
            "no end-to-end results (the bench failed, did not run, or had no binary)",
        );
    }
    for (case, _) in cases {
        let plan = d.med("plan", "drover", &case, "e2e_plan");
        let validate = d.med("plan", "drover", &case, "e2e_validate");
        let rss = d.max("plan", "drover", &case, "e2e_plan_rss");
        let inner = d.med("plan", "drover", &case, "plan");
        let coverage = d.med("plan", "drover", &case, "e2e_coverage");
        rows.push(Row {
            what: format!("planning: `drover plan` (load, validate, plan, JSON), {case}"),
            vs_peer: "-".into(),
            vs_goal: under(plan.map(|p| p / 1e3), 2.0),
            drover: fmt(plan, "ms"),
            peer: format!(
                "`drover validate` {}; drover_engine::plan alone {}; peak RSS {}; `drover coverage` {}",
                fmt(validate, "ms"),
                fmt(inner, "ms"),
                fmt(rss, "MiB"),
                fmt(coverage, "ms")
            ),
            goal: "under 2 s".into(),
        });
    }
}

fn daemon_rows(d: &mut Data, rows: &mut Vec<Row>) {
    if !d.ran("daemon") {
        return;
    }
    if !d.has_bench("daemon") {
        no_results(d, rows, "daemon", "the bench failed or did not run");
        return;
    }
    let idle = d.med("daemon", "drover", "idle", "idle_rss");
    rows.push(Row {
        what: "daemon: idle RSS after start".into(),
        vs_peer: "-".into(),
        vs_goal: under(idle.map(|m| m * 1.048_576), 30.0),
        drover: fmt(idle, "MiB"),
        peer: "-".into(),
        goal: "<= 30 MB".into(),
    });
    for (case, _) in d.cases("daemon", "drover", "p99") {
        let p50 = d.med("daemon", "drover", &case, "p50");
        let p99 = d.med("daemon", "drover", &case, "p99");
        let failed = d.med("daemon", "drover", &case, "failed");
        let running = d.med("daemon", "drover", &case, "drill_running");
        let peak = d.max("daemon", "drover", &case, "peak_rss");
        rows.push(Row {
            what: format!("daemon: API latency p99, {case}"),
            vs_peer: "-".into(),
            vs_goal: under(p99, 20.0),
            drover: format!("p99 {}, p50 {}", fmt(p99, "ms"), fmt(p50, "ms")),
            peer: format!(
                "{} requests failed; drill running throughout: {}; peak RSS {}",
                failed.unwrap_or(0.0),
                if running == Some(1.0) { "yes" } else { "no" },
                fmt(peak, "MiB")
            ),
            goal: "p99 <= 20 ms".into(),
        });
    }
}

/// HA takeover (`benches/ha.rs`): the first step of the resumed run after a kill -9 of
/// the leader, median and worst trial, against the goal (lease + 2 s) it reports.
fn ha_rows(d: &mut Data, rows: &mut Vec<Row>) {
    if !d.ran("ha") {
        return;
    }
    if !d.has_bench("ha") {
        no_results(d, rows, "ha", "the bench failed or did not run");
        return;
    }
    let cases: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for r in d.recs.iter().filter(|r| r.bench == "ha" && r.tool == "goal") {
            if !v.contains(&r.case) {
                v.push(r.case.clone());
            }
        }
        v
    };
    for case in cases {
        let median = d.med("ha", "drover", &case, "first_step_s");
        let worst = d.max("ha", "drover", &case, "first_step_max_s");
        let goal = d.med("ha", "goal", &case, "first_step_max_s");
        let vs_goal = match (worst, goal) {
            (Some(w), Some(g)) => format!("{:.2}x of goal ({})", w / g, if w < g { "met" } else { "MISSED" }),
            _ => "-".into(),
        };
        rows.push(Row {
            what: format!("HA: takeover, {case}: first step of the resumed run (median; worst)"),
            vs_peer: "-".into(),
            vs_goal,
            drover: format!("{}; {}", fmt(median, "s"), fmt(worst, "s")),
            peer: "-".into(),
            goal: format!("worst under {} (lease + 2 s)", fmt(goal, "s")),
        });
    }
}

fn store_rows(d: &mut Data, rows: &mut Vec<Row>) {
    if !d.ran("store") {
        return;
    }
    if !d.has_bench("store") {
        no_results(d, rows, "store", "the bench failed or did not run");
        return;
    }
    let sqlite = "SQLite (WAL, synchronous=NORMAL)";
    let base = d.med("store", sqlite, "chain 100", "wall");
    for pg in ["PostgreSQL, fsync on", "PostgreSQL, fsync off"] {
        let v = d.med("store", pg, "chain 100", "wall");
        let ratio = match (v, base) {
            (Some(v), Some(b)) if b > 0.0 => Some(v / b),
            _ => None,
        };
        rows.push(Row {
            what: format!("state store: 100-step chain on {pg} / on SQLite"),
            vs_peer: "-".into(),
            vs_goal: under(ratio, 2.0),
            drover: format!("{} ({:.2}x)", fmt(v, "ms"), ratio.unwrap_or(f64::NAN)),
            peer: format!("SQLite {}", fmt(base, "ms")),
            goal: "PostgreSQL within 2x of SQLite".into(),
        });
    }
}

/// The machine, as this process sees it, and what the run recorded (load, versions).
fn machine(d: &Data) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    let sha = if flags.split_whitespace().any(|f| f == "sha_ni") {
        ", SHA extensions"
    } else {
        ""
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let virt = if flags.split_whitespace().any(|f| f == "hypervisor") {
        " (a virtual machine)"
    } else {
        ""
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "- machine: {cpu}{sha}, {cores} cores{virt}, {mem_gib:.1} GiB RAM, Linux {kernel}"
    );
    for key in ["rustc", "commit", "started", "finished", "rounds", "peers"] {
        let t = d.text(key);
        if !t.is_empty() {
            let _ = writeln!(out, "- {key}: {}", t.join("; "));
        }
    }
    let loads: Vec<f64> = d
        .recs
        .iter()
        .filter(|r| r.bench == "run" && r.metric == "loadavg1")
        .filter_map(|r| r.value)
        .collect();
    if let (Some(lo), Some(hi)) = (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        let _ = writeln!(
            out,
            "- load average (1 min) before each bench: {lo:.2} to {hi:.2} (this run's own work included)"
        );
    }
    // CPU time of processes outside this run, per bench (run.sh measures it).
    let mut others: Vec<(String, Vec<f64>)> = Vec::new();
    for r in d
        .recs
        .iter()
        .filter(|r| r.bench == "run" && r.metric == "others_cpu_share")
    {
        let Some(v) = r.value else { continue };
        match others.iter_mut().find(|(b, _)| *b == r.case) {
            Some((_, vs)) => vs.push(v),
            None => others.push((r.case.clone(), vec![v])),
        }
    }
    if !others.is_empty() {
        // The store bench's PostgreSQL server detaches from this run's process tree
        // (pg_ctl), so its CPU counts as another process's: not a sign of sharing.
        let worst = others
            .iter()
            .filter(|(b, _)| b != "store")
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0_f64, f64::max);
        let per: Vec<String> = others
            .iter()
            .map(|(b, v)| {
                let note = if b == "store" {
                    " (its own PostgreSQL server included)"
                } else {
                    ""
                };
                format!("{b} {:.0}%{note}", median(v.clone()).unwrap_or(0.0))
            })
            .collect();
        let verdict = if worst >= 10.0 {
            "**shared**: other work ran beside the benches; absolute times are pessimistic, ratios of tools measured in the same rounds hold better"
        } else {
            "quiet"
        };
        let _ = writeln!(
            out,
            "- CPU used by other processes while the benches ran (share of all cores, median per bench): {} ({verdict})",
            per.join(", ")
        );
    }
    out
}

fn all_figures(d: &Data) -> String {
    let mut groups: BTreeMap<(String, String, String, String, String), Vec<f64>> = BTreeMap::new();
    let mut order: Vec<(String, String, String, String, String)> = Vec::new();
    for r in d.recs.iter().filter(|r| r.bench != "run") {
        let Some(v) = r.value else { continue };
        let k = (
            r.bench.clone(),
            r.tool.clone(),
            r.case.clone(),
            r.metric.clone(),
            r.unit.clone(),
        );
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(v);
    }
    let mut out = String::new();
    let _ = writeln!(out, "| bench | tool | case | figure | median | min | max | n |");
    let _ = writeln!(out, "|---|---|---|---|--:|--:|--:|--:|");
    for k in order {
        let v = &groups[&k];
        let (bench, tool, case, metric, unit) = &k;
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            out,
            "| {bench} | {tool} | {case} | {metric} | {} | {} | {} | {} |",
            fmt(median(v.clone()), unit),
            fmt(Some(min), unit),
            fmt(Some(max), unit),
            v.len()
        );
    }
    for r in d.recs.iter().filter(|r| r.missing.is_some()) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | - | {} | | | 0 |",
            r.bench,
            r.tool,
            r.case,
            r.missing.as_deref().unwrap_or_default()
        );
    }
    out
}

fn main() -> ExitCode {
    let Some(input) = arg_str("--input") else {
        eprintln!("usage: summary --input FILE [--smoke] [--figures]");
        return ExitCode::FAILURE;
    };
    let text = match std::fs::read_to_string(&input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut bad = 0;
    let recs: Vec<Rec> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let r = parse(l);
            bad += usize::from(r.is_none());
            r
        })
        .collect();
    let mut d = Data {
        recs,
        missing: Vec::new(),
    };
    if bad > 0 {
        d.missing.push(format!("{bad} unreadable lines in {input}"));
    }
    let failed = d.text("failed");
    let mut rows = Vec::new();
    engine_rows(&mut d, &mut rows);
    rto_rows(&mut d, &mut rows);
    s3_rows(&mut d, &mut rows);
    plan_rows(&mut d, &mut rows);
    daemon_rows(&mut d, &mut rows);
    ha_rows(&mut d, &mut rows);
    store_rows(&mut d, &mut rows);

    println!(
        "## Summary{}",
        if flag("--smoke") {
            " (smoke: tiny sizes, not figures to quote)"
        } else {
            ""
        }
    );
    println!();
    print!("{}", machine(&d));
    println!();
    println!("| what | drover vs peer | drover vs goal | drover | peer / context | goal |");
    println!("|---|---|---|--:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what, r.vs_peer, r.vs_goal, r.drover, r.peer, r.goal
        );
    }
    if flag("--figures") {
        println!();
        println!("### Every figure (medians over all rounds)");
        println!();
        print!("{}", all_figures(&d));
    }
    let mut problems = d.missing.clone();
    problems.sort();
    problems.dedup();
    for f in &failed {
        problems.push(format!("bench failed: {f}"));
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!();
        eprintln!("Missing results or failed benches:");
        for p in &problems {
            eprintln!("  - {p}");
        }
        ExitCode::FAILURE
    }
}
