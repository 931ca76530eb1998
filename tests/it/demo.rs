//! `drover demo` end to end, as a newcomer runs it: the real binary builds the two-site
//! lab (PostgreSQL pair, S3 endpoints, Kubernetes simulators), runs the drill, prints
//! RTO and RPO against their targets, writes the report and the evidence bundle, and
//! leaves nothing behind: no folder of the lab, no process of it. Also when it is
//! interrupted with Ctrl-C in the middle of the drill.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{drover, drover_bin};

/// The lab's folders, from the line `lab: ready in ... (folders A, B, ...; all removed at the end)`.
fn lab_folders(stderr: &str) -> Vec<PathBuf> {
    let line = stderr
        .lines()
        .find(|l| l.contains("lab: ready in"))
        .unwrap_or_else(|| panic!("no `lab: ready` line:\n{stderr}"));
    let list = line
        .split("(folders ")
        .nth(1)
        .and_then(|r| r.split("; all removed").next())
        .unwrap_or_else(|| panic!("no folder list in `{line}`"));
    let folders: Vec<PathBuf> = list.split(", ").map(PathBuf::from).collect();
    assert!(folders.len() >= 5, "{line}");
    folders
}

/// The processes whose command line names one of `folders` (servers, watchdogs).
fn processes_using(folders: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if folders.iter().any(|f| cmd.contains(&*f.to_string_lossy())) {
            found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// Nothing of the lab is left: its folders are gone and no process names them
/// (PostgreSQL's postmaster takes a moment to go once it is told to).
#[track_caller]
fn assert_nothing_left(folders: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = processes_using(folders);
        let dirs: Vec<_> = folders.iter().filter(|f| f.exists()).collect();
        if procs.is_empty() && dirs.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: folders {dirs:?}, processes {procs:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `RTO achieved 4.3s, target 2m: met` -> (4.3, "2m", "met").
fn figure(stdout: &str, name: &str) -> (f64, String, String) {
    let prefix = format!("{name} achieved ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line:\n{stdout}"));
    let rest = &line[prefix.len()..];
    let (value, rest) = rest.split_once(", target ").unwrap_or_else(|| panic!("{line}"));
    let (target, verdict) = rest.split_once(": ").unwrap_or_else(|| panic!("{line}"));
    let value: f64 = value
        .strip_suffix('s')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not seconds: {line}"));
    (value, target.to_owned(), verdict.to_owned())
}

/// The path printed after `label` on stdout.
fn printed_path(stdout: &str, label: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line:\n{stdout}"));
    PathBuf::from(line[label.len()..].split_whitespace().next().expect("a path"))
}

#[test]
fn demo_runs_a_drill_on_a_two_site_lab_reports_rto_rpo_and_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = drover()
        .current_dir(work.path())
        .args(["demo", "--out", "kept"])
        .timeout(Duration::from_secs(180))
        .output()
        .expect("run drover demo");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(took < Duration::from_secs(60), "took {took:?}\n{all}");

    // The drill ran every part of it, and passed.
    assert!(
        stdout.contains("(drill of payments-demo, service payments): PASSED"),
        "{all}"
    );
    for step in [
        "heartbeat-east",
        "fence-east",
        "promote-west",
        "start-queue-west",
        "start-api-west",
        "start-web-west",
        "stop-web-west",
        "west-idle-again",
    ] {
        assert!(
            stderr.contains(&format!("✓ step `{step}` done")) || stderr.contains(&format!("✓ rollback `{step}` done")),
            "{step}\n{all}"
        );
    }
    for check in [
        "standby replicating",
        "backups verified",
        "newest dump restores",
        "west serves payments",
        "west database writable",
    ] {
        assert!(stderr.contains(&format!("check `{check}` passed")), "{check}\n{all}");
    }
    assert!(
        stdout.contains("the check query returned `1000`"),
        "the restore test restored the real dump\n{all}"
    );
    assert!(stdout.contains("2 SHA-256 verified"), "{all}");

    // RTO and RPO against their targets, measured.
    let (rto, rto_target, rto_verdict) = figure(&stdout, "RTO");
    assert!(rto > 0.0 && rto < 120.0, "{all}");
    assert_eq!((rto_target.as_str(), rto_verdict.as_str()), ("2m", "met"), "{all}");
    let (rpo, rpo_target, rpo_verdict) = figure(&stdout, "RPO");
    assert!(rpo > 0.0 && rpo < 60.0, "{all}");
    assert_eq!((rpo_target.as_str(), rpo_verdict.as_str()), ("1m", "met"), "{all}");
    assert!(stdout.contains("newest heartbeat on west"), "{all}");

    // The report: in the kept folder, one self-contained page.
    let report = work.path().join(printed_path(&stdout, "report:"));
    assert!(report.starts_with(work.path().join("kept")), "{report:?}");
    let html = std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{report:?}: {e}\n{all}"));
    assert!(html.contains("<svg"), "a Gantt chart inline");
    assert!(
        html.contains("payments-demo") && html.contains("promote-west"),
        "{report:?}"
    );
    for external in ["src=\"http", "href=\"http", "<link ", "@import", "url(http"] {
        assert!(!html.contains(external), "the report loads `{external}`");
    }

    // The evidence bundle verifies offline, with the real CLI.
    let bundle = work.path().join(printed_path(&stdout, "evidence:"));
    let verify = drover()
        .current_dir(work.path())
        .args(["evidence", "verify"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // ... and tampering with it is found (the check can fail).
    let text = std::fs::read_to_string(&bundle).unwrap();
    let tampered = work.path().join("tampered.json");
    std::fs::write(&tampered, text.replacen("promote-west", "promote-east", 1)).unwrap();
    let verify = drover()
        .current_dir(work.path())
        .args(["evidence", "verify"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(1));

    // Nothing of the lab is left; only what the user keeps.
    assert!(stderr.contains("lab removed"), "{all}");
    let folders = lab_folders(&stderr);
    assert_nothing_left(&folders);
    let kept: Vec<_> = std::fs::read_dir(work.path().join("kept"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
}

#[test]
fn demo_interrupted_with_ctrl_c_mid_drill_removes_the_lab() {
    let work = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(drover_bin())
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .env_remove("DROVER_CONFIG")
        .args(["demo", "--out", "kept"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start drover demo");
    let stdout = child.stdout.take().unwrap();
    let out_thread = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let mut stderr = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Ctrl-C once the database failover is under way.
    for line in lines.by_ref() {
        let line = line.unwrap();
        stderr.push_str(&line);
        stderr.push('\n');
        if line.contains("step `fence-east` started") {
            let kill = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(kill.success());
            break;
        }
        assert!(Instant::now() < deadline, "{stderr}");
    }
    for line in lines {
        stderr.push_str(&line.unwrap());
        stderr.push('\n');
    }
    let status = child.wait().unwrap();
    let stdout = out_thread.join().unwrap();
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("stopping: no new steps start"),
        "the run saw Ctrl-C\n{all}"
    );
    assert!(!stdout.contains("PASSED"), "{all}");
    assert_ne!(status.code(), Some(0), "{all}");
    assert!(stderr.contains("lab removed"), "{all}");
    assert_nothing_left(&lab_folders(&stderr));
}

/// Sends Ctrl-C to a served demo that a failed assertion left running, so that it
/// removes its lab.
struct Interrupt(u32);

impl Drop for Interrupt {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &self.0.to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}

#[test]
fn demo_serve_keeps_the_lab_and_the_daemon_up_until_ctrl_c() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(drover_bin())
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .env_remove("DROVER_CONFIG")
        .args(["demo", "--serve", "--out", "kept"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start drover demo --serve");
    let _interrupt = Interrupt(child.id());
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut stdout = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        if let Some(u) = line.strip_prefix("listening on ") {
            url = Some(u.trim().to_owned());
            break;
        }
        assert!(Instant::now() < deadline, "{stdout}");
    }
    let url = url.unwrap_or_else(|| panic!("no `listening on` line:\n{stdout}"));
    let token = stdout
        .split("log in with token ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no token printed:\n{stdout}"))
        .to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let get = |path: &str, auth: bool| {
        rt.block_on(async {
            let mut req = http.get(format!("{url}{path}"));
            if auth {
                req = req.bearer_auth(&token);
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    assert_eq!(get("/healthz", false).0, 200);
    assert_eq!(get("/api/v1/runs", false).0, 401, "the API wants the token");
    let (status, runs) = get("/api/v1/runs", true);
    assert_eq!(status, 200, "{runs}");
    assert!(runs.contains("payments-demo") && runs.contains("passed"), "{runs}");
    let (status, page) = get("/", true);
    assert_eq!(status, 200);
    assert!(page.contains("payments"), "the dashboard shows the drill: {page}");

    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    for line in lines {
        stdout.push_str(&line.unwrap());
        stdout.push('\n');
    }
    let status = child.wait().unwrap();
    let stderr = err_thread.join().unwrap();
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(status.success(), "Ctrl-C ends the served demo cleanly\n{all}");
    assert!(stderr.contains("lab removed"), "{all}");
    assert_nothing_left(&lab_folders(&stderr));
}
