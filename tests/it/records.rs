//! What every run leaves behind: the continuity report (Markdown, HTML, JSON, JUnit), the
//! change record, the trend, and the signed, hash-chained evidence, through the real
//! binary and a real SQLite store.

use serde_json::Value;

use crate::engine::{CONFIG, drover_json, fixture};
use crate::support::Fixture;

const SMALL: &str = r#"name: rb
service: svc
description: A small drill.
targets: {rto: 10m}
preflight:
  - {name: ready, uses: exec.check, with: {command: ["true"]}}
steps:
  - {id: first, ci: db, uses: exec.run, with: {command: [sh, -c, "echo first >> log"]}}
  - {id: second, ci: api, uses: exec.run, with: {command: [sh, -c, "echo second >> log"]}}
verify:
  - {name: done, uses: exec.check, with: {command: [grep, -q, second, log]}}
rollback:
  - {id: cleanup, uses: exec.run, with: {command: [rm, -f, log]}}
"#;

fn run_id(run: &Value) -> String {
    run["id"].as_str().expect("run id").to_owned()
}

fn stdout(fx: &Fixture, args: &[&str]) -> (i32, String) {
    let out = fx.drover().args(args).output().expect("run drover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// What changes from run to run: times, ids, hashes, signatures, durations.
const VOLATILE: [(&str, &str); 6] = [
    (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]"),
    (r"\d{8}-\d{6}-[0-9a-f]{12}", "[RUN]"),
    (r"[0-9a-f]{128}", "[SIGNATURE]"),
    (r"[0-9a-f]{64}", "[SHA256]"),
    (r"CHG-\d{4}-\d{4}", "[CHG]"),
    (r"\b\d+(\.\d+)?s\b", "[DUR]"),
];

#[test]
fn markdown_report_of_a_drill() {
    let fx = fixture(SMALL);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    let (code, md) = stdout(&fx, &["report", &run_id(&run)]);
    assert_eq!(code, 0);
    insta::with_settings!({filters => VOLATILE.to_vec()}, {
        insta::assert_snapshot!(md);
    });
}

#[test]
fn html_report_is_self_contained_with_a_gantt_chart() {
    let fx = fixture(SMALL);
    let (_, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    let path = fx.path("report.html");
    let out = fx
        .drover()
        .args(["report", &run_id(&run), "--format", "html", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg") && html.contains("</svg>"), "no inline SVG");
    assert!(html.contains("<style>") && html.contains("@media print"));
    assert!(html.contains("Sign-off") && html.contains("Continuity manager"));
    // Self-contained: nothing is fetched (the SVG namespace is a name, not a fetch).
    let without_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for needle in ["http://", "https://", "<link", "<script", "src=", "url(", "@import"] {
        assert!(!without_ns.contains(needle), "the page references `{needle}`");
    }
    // One bar per step that ran: first, second, cleanup; the critical path is outlined.
    assert_eq!(html.matches("<rect").count(), 3, "{html}");
    assert!(html.contains("stroke=\"#000\""));
}

#[test]
fn junit_has_a_testcase_per_step_and_check_and_failures_with_messages() {
    let failing = SMALL.replace("echo second >> log", "echo second >> log; exit 3");
    let fx = fixture(&failing);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 1, "{run:#}");
    let (code, xml) = stdout(&fx, &["report", &run_id(&run), "--format", "junit"]);
    assert_eq!(code, 0);
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("JUnit does not parse: {e}\n{xml}"));
    let cases: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    let names: Vec<&str> = cases.iter().filter_map(|c| c.attribute("name")).collect();
    // preflight `ready`, steps first and second, verify `done`, rollback cleanup.
    for n in ["ready", "first", "second", "done", "cleanup"] {
        assert!(names.contains(&n), "no testcase {n}: {names:?}");
    }
    let failures: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("failure")).collect();
    assert_eq!(failures.len(), 1, "{xml}");
    assert!(
        failures[0]
            .attribute("message")
            .unwrap()
            .contains("exited with status 3")
    );
    let root = doc.root_element();
    assert_eq!(root.attribute("failures"), Some("1"));
    assert_eq!(root.attribute("tests").unwrap().parse::<usize>().unwrap(), cases.len());
    // verify never ran: skipped.
    let done = cases.iter().find(|c| c.attribute("name") == Some("done")).unwrap();
    assert!(done.children().any(|c| c.has_tag_name("skipped")));
}

#[test]
fn json_report_has_the_figures_and_the_evidence() {
    let fx = fixture(SMALL);
    let (_, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    let (code, text) = stdout(&fx, &["report", &run_id(&run), "--format", "json"]);
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["outcome"], "passed");
    assert_eq!(r["service"]["rto"]["target_s"], 600.0);
    assert_eq!(r["service"]["rto"]["met"], true);
    assert!(
        r["cis"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "db" && c["rto"]["achieved_s"].is_number())
    );
    assert_eq!(r["evidence"]["intact"], true);
    assert!(
        r["evidence"]["key_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );
    assert_eq!(r["evidence"]["signature"].as_str().unwrap().len(), 128);
    assert_eq!(r["sign_off"].as_array().unwrap().len(), 3);
    assert_eq!(r["critical_path"], serde_json::json!(["first", "second"]));
}

#[test]
fn the_change_record_uses_servicenow_field_names() {
    let fx = fixture(SMALL);
    let (_, run) = drover_json(&fx, &["failover", "rb", "--yes", "--reason", "east is down"]);
    assert_eq!(run["change"]["type"], "emergency");
    let (code, text) = stdout(&fx, &["change", "show", &run_id(&run), "--format", "json"]);
    assert_eq!(code, 0);
    let c: Value = serde_json::from_str(&text).unwrap();
    for field in [
        "number",
        "short_description",
        "description",
        "type",
        "state",
        "risk",
        "impact",
        "business_service",
        "cmdb_ci",
        "requested_by",
        "start_date",
        "end_date",
        "implementation_plan",
        "backout_plan",
        "test_plan",
        "justification",
        "close_code",
        "close_notes",
    ] {
        assert!(c.get(field).is_some_and(|v| !v.is_null()), "no `{field}` in {c:#}");
    }
    assert_eq!(c["type"], "emergency");
    assert_eq!(c["state"], "Closed");
    assert_eq!(c["close_code"], "Successful");
    assert_eq!(c["justification"], "east is down");
    // The service is gold (RTO 15m): high risk, high impact.
    assert_eq!(c["risk"], "High");
    assert_eq!(c["impact"], "1 - High");
    assert!(c["backout_plan"].as_str().unwrap().contains("cleanup"));
    assert!(c["test_plan"].as_str().unwrap().contains("done"));
    assert!(c["number"].as_str().unwrap().starts_with("CHG-"));
    // A drill is a normal change.
    let (_, drill) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(drill["change"]["type"], "normal");
    assert_ne!(drill["change"]["number"], run["change"]["number"]);
}

#[test]
fn change_numbers_stay_unique_and_sequential_under_concurrent_runs() {
    const N: usize = 8;
    let fx = Fixture::empty();
    fx.write("drover.yaml", CONFIG);
    let mut cmdb = String::from("items:\n");
    for i in 0..N {
        cmdb.push_str(&format!("  - {{id: svc{i}, kind: business_service}}\n"));
        fx.write(
            &format!("runbooks/rb{i}.yaml"),
            &format!(
                "name: rb{i}\nservice: svc{i}\nsteps:\n  - {{id: s, uses: exec.run, with: {{command: [\"true\"]}}}}\n"
            ),
        );
    }
    fx.write("cmdb.yaml", &cmdb);
    let children: Vec<_> = (0..N)
        .map(|i| {
            let mut cmd = fx.drover();
            cmd.args(["drill", &format!("rb{i}"), "--yes"]);
            std::thread::spawn(move || cmd.output().expect("run drover"))
        })
        .collect();
    for c in children {
        let out = c.join().unwrap();
        assert!(
            out.status.success(),
            "a concurrent run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, list) = stdout(&fx, &["runs", "list", "--format", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let mut numbers: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["change"]["number"].as_str().unwrap().to_owned())
        .collect();
    numbers.sort();
    let year = &numbers[0][4..8];
    let expected: Vec<String> = (1..=N).map(|n| format!("CHG-{year}-{n:04}")).collect();
    assert_eq!(numbers, expected);
}

#[test]
fn trend_charts_rto_across_runs() {
    let fx = fixture(SMALL);
    for _ in 0..3 {
        assert_eq!(drover_json(&fx, &["drill", "rb", "--yes"]).0, 0);
    }
    let (code, text) = stdout(&fx, &["trend", "svc", "--format", "json"]);
    assert_eq!(code, 0);
    let t: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(t["runs"], 3);
    assert_eq!(t["points"].as_array().unwrap().len(), 3);
    assert!(t["points"][0]["rto"]["achieved_s"].is_number());
    let (_, html) = stdout(&fx, &["trend", "svc", "--format", "html"]);
    assert!(html.contains("<svg") && html.contains("<polyline"), "{html}");
    let (_, md) = stdout(&fx, &["trend", "svc"]);
    assert_eq!(md.matches("| `").count(), 3, "{md}");
}

/// A sealed run with a bundle exported to `bundle.json`.
fn exported(fx: &Fixture) -> (String, Vec<u8>) {
    let (code, run) = drover_json(fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    let id = run_id(&run);
    let out = fx
        .drover()
        .args(["evidence", "export", &id, "-o"])
        .arg(fx.path("bundle.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (id, std::fs::read(fx.path("bundle.json")).unwrap())
}

#[test]
fn every_flipped_byte_of_a_bundle_is_caught() {
    let fx = fixture("name: rb\nservice: svc\nsteps:\n  - {id: s, uses: exec.run, with: {command: [\"true\"]}}\n");
    let (_, bundle) = exported(&fx);
    assert!(
        drover_engine::evidence::verify_bundle(&bundle).intact(),
        "the untouched bundle must verify"
    );
    let mut missed = Vec::new();
    for i in 0..bundle.len() {
        for mask in [0x01u8, 0x20] {
            let mut b = bundle.clone();
            b[i] ^= mask;
            if drover_engine::evidence::verify_bundle(&b).intact() {
                missed.push((i, mask));
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} flips went unnoticed, first at byte {:?}",
        missed.len(),
        missed.first()
    );
    // Appending or cutting bytes is caught too.
    let mut longer = bundle.clone();
    longer.push(b' ');
    assert!(!drover_engine::evidence::verify_bundle(&longer).intact());
    assert!(!drover_engine::evidence::verify_bundle(&bundle[..bundle.len() - 1]).intact());
}

#[test]
fn verify_names_the_first_bad_record_and_exits_1() {
    let fx = fixture(SMALL);
    let (id, bundle) = exported(&fx);
    let (code, text) = stdout(&fx, &["evidence", "verify", fx.path("bundle.json").to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("intact"), "{text}");
    // Change one record's content (the first step's output) in the bundle.
    let text = String::from_utf8(bundle).unwrap();
    let tampered = text.replacen("first \\\\u003e\\\\u003e log", "first \\\\u003e\\\\u003e LOG", 1);
    let tampered = if tampered == text {
        text.replacen("echo first", "echo FIRST", 1)
    } else {
        tampered
    };
    assert_ne!(tampered, text, "the test must change something");
    fx.write("tampered.json", &tampered);
    let out = fx
        .drover()
        .args([
            "evidence",
            "verify",
            fx.path("tampered.json").to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intact"], false);
    let first_bad = v["first_bad_record"].as_u64().unwrap();
    assert!(first_bad > 0, "{v:#}");
    // Tampering with the store itself (as an attacker would: drop the guard first).
    let db = rusqlite::Connection::open(fx.path("state/state.db")).unwrap();
    db.execute_batch("DROP TRIGGER journal_no_update").unwrap();
    db.execute(
        "UPDATE journal SET record = replace(record, 'echo second', 'echo SECOND') WHERE run_id = ?1",
        [&id],
    )
    .unwrap();
    let out = fx.drover().args(["evidence", "verify", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("TAMPERED") && stdout.contains("first bad record"),
        "{stdout}"
    );
    // A wrong key pin fails an intact bundle.
    let fx2 = fixture(SMALL);
    let (_, _) = exported(&fx2);
    let out = fx2
        .drover()
        .args([
            "evidence",
            "verify",
            fx2.path("bundle.json").to_str().unwrap(),
            "--key",
            "SHA256:00",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn the_journal_is_append_only() {
    let fx = fixture(SMALL);
    let (_, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    let db = rusqlite::Connection::open(fx.path("state/state.db")).unwrap();
    let id = run_id(&run);
    assert!(
        db.execute("UPDATE journal SET record = 'x' WHERE run_id = ?1", [&id])
            .is_err()
    );
    assert!(db.execute("DELETE FROM journal WHERE run_id = ?1", [&id]).is_err());
}

#[test]
fn secrets_never_reach_records_reports_or_evidence() {
    const CANARY: &str = "canary-s3cr3t-4c1d";
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: leak, uses: exec.run, with: {command: [sh, -c, "echo the url is $DB_URL; echo $DB_URL >&2"]}}
  - {id: gone, uses: exec.run, with: {command: [sh, -c, "echo $DB_URL; exit 1"]}, needs: [leak]}
"#,
    );
    fx.write(
        "drover.yaml",
        &format!("{CONFIG}databases:\n  - {{name: db1, site: east, kind: postgres, url: {{env: DB_URL}}}}\n"),
    );
    let out = fx
        .drover()
        .env("DB_URL", CANARY)
        .args(["drill", "rb", "--yes", "--format", "json"])
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = run_id(&run);
    let everything = [
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout(&fx, &["runs", "show", &id, "--format", "json"]).1,
        stdout(&fx, &["report", &id, "--format", "md"]).1,
        stdout(&fx, &["report", &id, "--format", "html"]).1,
        stdout(&fx, &["report", &id, "--format", "junit"]).1,
        stdout(&fx, &["change", "show", &id, "--format", "json"]).1,
    ];
    let export = fx
        .drover()
        .args(["evidence", "export", &id, "-o"])
        .arg(fx.path("b.json"))
        .output()
        .unwrap();
    assert!(export.status.success());
    let bundle = fx.read("b.json");
    let db = std::fs::read(fx.path("state/state.db")).unwrap();
    let wal = std::fs::read(fx.path("state/state.db-wal")).unwrap_or_default();
    for (i, text) in everything.iter().chain(std::iter::once(&bundle)).enumerate() {
        assert!(!text.contains(CANARY), "output {i} contains the secret");
    }
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "the state store contains the secret"
        );
    }
    assert!(
        everything[2].contains("[redacted]"),
        "the step's output should show where the secret was"
    );
    // The redacted journal still verifies.
    assert_eq!(stdout(&fx, &["evidence", "verify", &id]).0, 0);
}
