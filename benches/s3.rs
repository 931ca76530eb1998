//! Backup verification throughput: SHA-256 of 1 GiB held in four 256 MiB objects,
//! recomputed by streaming, on s3s-fs and on moto, by drover (`s3.verify-backups` with
//! `checksum: sha256`, the release binary), boto3 (`get_object` + `hashlib`, the way a
//! Python script would) and rclone (`hashsum sha256 --download`), side by side in
//! rounds (the order rotates each round, so noise falls on all alike). Each tool
//! compares with the `KEY.sha256` sidecars; a tool that reports a wrong digest fails
//! the benchmark. Peak RSS of each tool comes from GNU time (`%M`).
//!
//! Where the time goes: the bench also measures SHA-256 of one core in memory (ring,
//! the library drover hashes with, and coreutils `sha256sum`), and a download of the
//! same objects that hashes nothing (boto3 reading into the void), so the table says
//! how much is the server and the copy and how much is hashing.
//!
//! ```text
//! cargo build --release -p drover && cargo bench -p drover-benches --bench s3 -- --rounds 3
//! ```
//!
//! Needs moto_server, s3s-fs (the test command installs both), rclone
//! (`apt-get install rclone`), python3 with boto3 (moto brings it) and GNU time
//! (`apt-get install time`). Without rclone its rows say so and the rest runs.
//! `DROVER_BIN` overrides the binary; `--objects N` and `--mib M` change the data set
//! (default 4 of 256); `--json FILE` writes every sample (see `benches/common.rs`).
//! Results: docs/BENCHMARKS.md.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use drover_lab::{S3Kind, S3Server};

#[path = "common.rs"]
mod common;
use common::{Results, arg, binary};

/// A deterministic, incompressible-looking byte stream (xorshift), `len` bytes.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One measured run of a tool: wall seconds and peak RSS (KiB), with its stdout.
struct Measured {
    seconds: f64,
    /// User + system CPU seconds of the tool (not the server).
    cpu: f64,
    rss_kib: u64,
    stdout: String,
}

/// Runs `cmd` under GNU time; fails loudly when it fails.
fn measure(what: &str, cmd: &[String], env: &[(String, String)], cwd: &Path) -> Measured {
    let timing = cwd.join("time.out");
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f")
        .arg("%e %M %U %S")
        .arg("-o")
        .arg(&timing)
        .args(cmd)
        .current_dir(cwd);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env_remove("AWS_CA_BUNDLE");
    let started = Instant::now();
    let out = c
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run /usr/bin/time: {e}"));
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let t = std::fs::read_to_string(&timing).unwrap_or_default();
    let field = |i: usize| {
        t.split_whitespace()
            .nth(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let rss_kib = field(1) as u64;
    let cpu = field(2) + field(3);
    Measured {
        seconds,
        cpu,
        rss_kib,
        stdout,
    }
}

const BOTO3: &str = r#"
import hashlib, os, sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["EP"], aws_access_key_id=os.environ["AK"],
                  aws_secret_access_key=os.environ["SK"], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
hash_it = sys.argv[1] == "hash"
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="data/")
        for o in p.get("Contents", []) if not o["Key"].endswith(".sha256")]
for k in keys:
    body = s3.get_object(Bucket="bench", Key=k)["Body"]
    h = hashlib.sha256()
    for chunk in body.iter_chunks(1 << 20):
        if hash_it:
            h.update(chunk)
    if hash_it:
        want = s3.get_object(Bucket="bench", Key=k + ".sha256")["Body"].read().split()[0].decode()
        if h.hexdigest() != want:
            sys.exit(f"{k}: {h.hexdigest()} != {want}")
        print(h.hexdigest(), k)
"#;

struct Setup {
    server: S3Server,
    dir: tempfile::TempDir,
    digests: Vec<String>,
}

fn setup(kind: S3Kind, objects: u64, mib: u64) -> Setup {
    let server = S3Server::start(kind).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let ep = server.endpoint();
    // Upload with boto3 (multipart for big objects, as backup tools do).
    let upload = r#"
import os, sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["EP"], aws_access_key_id=os.environ["AK"],
                  aws_secret_access_key=os.environ["SK"], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="bench")
for path in sys.argv[1:]:
    name = os.path.basename(path)
    s3.upload_file(path, "bench", "data/" + name)
    with open(path + ".sha256", "rb") as f:
        s3.put_object(Bucket="bench", Key="data/" + name + ".sha256", Body=f.read())
"#;
    let mut files = Vec::new();
    let mut digests = Vec::new();
    for i in 0..objects {
        let body = data(i + 1, (mib << 20) as usize);
        let digest = hex(ring::digest::digest(&ring::digest::SHA256, &body).as_ref());
        let name = format!("backup-{i}.dump");
        let path = dir.path().join(&name);
        std::fs::write(&path, &body).unwrap();
        std::fs::write(dir.path().join(format!("{name}.sha256")), format!("{digest}  {name}\n")).unwrap();
        files.push(path);
        digests.push(digest);
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(upload)
        .args(&files)
        .env("EP", &ep)
        .env("AK", server.access_key())
        .env("SK", server.secret_key())
        .output()
        .expect("python3");
    assert!(out.status.success(), "upload: {}", String::from_utf8_lossy(&out.stderr));
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    // drover's workspace.
    std::fs::write(
        dir.path().join("drover.yaml"),
        format!(
            "sites: [{{name: west}}]\nstate: {{url: \"sqlite://state.db\"}}\n\
             object_stores:\n  - {{name: bench, site: west, endpoint: \"{ep}\", bucket: bench, path_style: true,\n     \
             access_key_id: {{env: BENCH_AK}}, secret_access_key: {{env: BENCH_SK}}}}\n\
             cmdb: cmdb.yaml\nrunbooks: runbooks\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cmdb.yaml"),
        "tiers: {silver: {rto: 4h, rpo: 26h}}\nitems:\n  - {id: svc, kind: business_service, tier: silver}\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::write(
        dir.path().join("runbooks/bench.yaml"),
        "name: bench\nservice: svc\nverify:\n  - {name: backups, uses: s3.verify-backups, timeout: 1h,\n     \
         with: {store: bench, prefix: data/, max_age: 1h, checksum: sha256}}\n",
    )
    .unwrap();
    Setup { server, dir, digests }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Drover,
    Boto3,
    Rclone,
    /// boto3 downloading without hashing: the server and the copy alone.
    Download,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Drover => "drover",
            Tool::Boto3 => "boto3 + hashlib",
            Tool::Rclone => "rclone hashsum --download",
            Tool::Download => "(download only, boto3)",
        }
    }
}

fn run(tool: Tool, s: &Setup, bin: &Path) -> Measured {
    let ep = s.server.endpoint();
    let ak = s.server.access_key().to_owned();
    let sk = s.server.secret_key().to_owned();
    let py_env = vec![
        ("EP".to_owned(), ep.clone()),
        ("AK".to_owned(), ak.clone()),
        ("SK".to_owned(), sk.clone()),
    ];
    let m = match tool {
        Tool::Drover => {
            let _ = std::fs::remove_file(s.dir.path().join("state.db"));
            measure(
                "drover",
                &[
                    bin.display().to_string(),
                    "--config".into(),
                    "drover.yaml".into(),
                    "verify".into(),
                    "bench".into(),
                    "--format".into(),
                    "json".into(),
                ],
                &[("BENCH_AK".into(), ak), ("BENCH_SK".into(), sk)],
                s.dir.path(),
            )
        }
        Tool::Boto3 | Tool::Download => measure(
            tool.name(),
            &[
                "python3".into(),
                "-c".into(),
                BOTO3.into(),
                if tool == Tool::Boto3 { "hash" } else { "read" }.into(),
            ],
            &py_env,
            s.dir.path(),
        ),
        Tool::Rclone => measure(
            "rclone",
            &[
                "rclone".into(),
                "hashsum".into(),
                "sha256".into(),
                "--download".into(),
                // The bucket root and a filter: rclone first HEADs a path it is given
                // as an object, which s3s-fs answers with a 500 for a "folder".
                "--include".into(),
                "/data/*.dump".into(),
                ":s3:bench".into(),
            ],
            &[
                ("RCLONE_S3_PROVIDER".into(), "Other".into()),
                ("RCLONE_S3_ENDPOINT".into(), ep),
                ("RCLONE_S3_ACCESS_KEY_ID".into(), ak),
                ("RCLONE_S3_SECRET_ACCESS_KEY".into(), sk),
                ("RCLONE_S3_REGION".into(), "us-east-1".into()),
                ("RCLONE_S3_FORCE_PATH_STYLE".into(), "true".into()),
                ("RCLONE_CONFIG".into(), "/dev/null".into()),
            ],
            s.dir.path(),
        ),
    };
    // Every tool must have found every digest (a fast wrong answer is no answer).
    if tool != Tool::Download {
        for d in &s.digests {
            assert!(
                m.stdout.contains(d.as_str()) || tool == Tool::Drover,
                "{}: no {d} in its output",
                tool.name()
            );
        }
        if tool == Tool::Drover {
            let v: serde_json::Value = serde_json::from_str(&m.stdout).expect("drover's JSON");
            assert_eq!(v["outcome"], "passed", "drover: {v:#}");
        }
    }
    m
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> ExitCode {
    let rounds = arg("--rounds", 3) as usize;
    let objects = arg("--objects", 4);
    let mib = arg("--mib", 256);
    let results = Results::from_args("s3");
    let bin = binary();
    if !bin.exists() {
        eprintln!("{} is missing: cargo build --release -p drover", bin.display());
        return ExitCode::FAILURE;
    }
    let found = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for (prog, args, hint) in [
        ("/usr/bin/time", &["true"][..], "apt-get install time"),
        (
            "python3",
            &["-c", "import boto3"][..],
            "python3 with boto3 (pip install boto3)",
        ),
    ] {
        if !found(prog, args) {
            eprintln!("`{prog}` is missing or fails: {hint}");
            return ExitCode::FAILURE;
        }
    }
    let rclone = found("rclone", &["--version"]);
    if !rclone {
        eprintln!("rclone is not installed (apt-get install rclone): its rows are skipped");
        results.missing(
            Tool::Rclone.name(),
            "all",
            "not installed: no rclone on PATH (apt-get install rclone)",
        );
    }
    let total_mib = objects * mib;

    // The physical limit: SHA-256 on one core, in memory.
    let buf = data(99, 256 << 20);
    let t = Instant::now();
    let _ = ring::digest::digest(&ring::digest::SHA256, &buf);
    let ring_mibs = 256.0 / t.elapsed().as_secs_f64();
    let shm = std::env::temp_dir().join("drover-bench-sha.bin");
    std::fs::write(&shm, &buf).unwrap();
    drop(buf);
    let _ = Command::new("sha256sum").arg(&shm).output(); // warm the page cache
    let t = Instant::now();
    let _ = Command::new("sha256sum").arg(&shm).output().expect("sha256sum");
    let coreutils_mibs = 256.0 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&shm);
    results.sample("ring", "SHA-256 in memory", None, "throughput", "MiB/s", ring_mibs);
    results.sample(
        "sha256sum",
        "SHA-256 in memory",
        None,
        "throughput",
        "MiB/s",
        coreutils_mibs,
    );

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "SHA-256 verification of {total_mib} MiB in {objects} objects of {mib} MiB; {rounds} rounds; {cores} cores"
    );
    println!(
        "SHA-256 on one core, in memory: ring {ring_mibs:.0} MiB/s, coreutils sha256sum {coreutils_mibs:.0} MiB/s"
    );
    println!();
    let tools: Vec<Tool> = [Tool::Drover, Tool::Boto3, Tool::Rclone, Tool::Download]
        .into_iter()
        .filter(|&t| t != Tool::Rclone || rclone)
        .collect();
    let mut table = Vec::new();
    for kind in [S3Kind::S3sFs, S3Kind::Moto] {
        eprint!("{kind}: uploading {total_mib} MiB ... ");
        let _ = std::io::stderr().flush();
        let s = setup(kind, objects, mib);
        eprintln!("done");
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        let mut rss = vec![0u64; tools.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        for round in 0..rounds {
            for k in 0..tools.len() {
                let i = (k + round) % tools.len();
                let m = run(tools[i], &s, &bin);
                eprintln!(
                    "  {kind} round {} {}: {:.2} s, CPU {:.2} s, {} MiB",
                    round + 1,
                    tools[i].name(),
                    m.seconds,
                    m.cpu,
                    m.rss_kib / 1024
                );
                let case = kind.to_string();
                let tool = tools[i].name();
                results.sample(tool, &case, None, "wall", "s", m.seconds);
                results.sample(tool, &case, None, "cpu", "s", m.cpu);
                results.sample(tool, &case, None, "rss", "MiB", m.rss_kib as f64 / 1024.0);
                results.sample(tool, &case, None, "data", "MiB", total_mib as f64);
                times[i].push(m.seconds);
                cpu[i].push(m.cpu);
                rss[i] = rss[i].max(m.rss_kib);
            }
        }
        let med: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
        let med_cpu: Vec<f64> = cpu.iter_mut().map(|t| median(t)).collect();
        for (i, tool) in tools.iter().enumerate() {
            table.push((
                kind,
                *tool,
                med[i],
                med[i] / med[0],
                total_mib as f64 / med[i],
                med_cpu[i],
                rss[i],
            ));
        }
    }
    println!("| server | tool | time / drover's | median s | MiB/s | tool CPU s | peak RSS MiB |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (kind, tool, s, ratio, rate, cpu, rss) in table {
        println!(
            "| {kind} | {} | {ratio:.2}× | {s:.2} | {rate:.0} | {cpu:.2} | {} |",
            tool.name(),
            rss / 1024
        );
    }
    ExitCode::SUCCESS
}
