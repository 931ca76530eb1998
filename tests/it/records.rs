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
    // The preflight band, then one bar per step that ran: first, second, cleanup; the
    // critical path is outlined.
    assert_eq!(html.matches("<rect").count(), 4, "{html}");
    assert_eq!(html.matches("<g class=\"preflight\">").count(), 1, "{html}");
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

/// The `x` and `width` of the first `<rect` after `marker` in an SVG.
fn rect_after(svg: &str, marker: &str) -> (f64, f64) {
    let at = svg.find(marker).unwrap_or_else(|| panic!("no {marker} in {svg}"));
    let rect = &svg[at + svg[at..].find("<rect").unwrap()..];
    let rect = &rect[..rect.find("/>").unwrap()];
    let attr = |name: &str| -> f64 {
        let v = rect.split(&format!(" {name}=\"")).nth(1).unwrap();
        v[..v.find('"').unwrap()].parse().unwrap()
    };
    (attr("x"), attr("width"))
}

#[test]
fn the_gantt_chart_shows_the_preflight_band_before_the_first_step() {
    // A preflight that takes most of the run: without its band, the chart would be blank
    // up to the first step.
    let slow = SMALL.replace(r#"command: ["true"]"#, r#"command: [sleep, "0.6"]"#);
    let fx = fixture(&slow);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{run:#}");
    let band = &run["preflight"];
    assert_eq!(band["passed"], true, "{run:#}");
    assert_eq!(band["checks"], 1);
    let end = band["end_s"].as_f64().unwrap();
    assert!(band["start_s"].as_f64().unwrap() < 0.1 && end >= 0.6, "{band}");
    let first = run["steps"][0]["start_s"].as_f64().unwrap();
    assert!(
        first >= end,
        "the first step started at {first}, before the preflight ended at {end}"
    );
    let (_, html) = stdout(&fx, &["report", &run_id(&run), "--format", "html"]);
    assert!(html.contains("preflight (1 check)"), "{html}");
    let (band_x, band_w) = rect_after(&html, "<g class=\"preflight\">");
    let (step_x, _) = rect_after(&html, "<title>first:");
    // The band starts at the run's start (the chart's left edge, 220) and fills most of
    // the time before the first step, ending before it begins (the rest is the journal's
    // bookkeeping between the two).
    let (bx, sx) = (band_x, step_x);
    assert!(bx < 240.0, "band {bx}+{band_w}");
    assert!(band_w > 0.8 * (sx - bx), "band {bx}+{band_w}, first step at {sx}");
    assert!(bx + band_w <= sx + 0.5, "band {bx}+{band_w}, first step at {sx}");
    // A failed preflight is a band too, in the colour of failure.
    let failing = SMALL.replace(r#"command: ["true"]"#, r#"command: ["false"]"#);
    let fx = fixture(&failing);
    let (code, run) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 5, "{run:#}");
    assert_eq!(run["preflight"]["passed"], false, "{run:#}");
    let (_, html) = stdout(&fx, &["report", &run_id(&run), "--format", "html"]);
    let at = html.find("<g class=\"preflight\">").expect("a band");
    assert!(html[at..].contains("fill=\"#c62828\""), "{html}");
}

#[test]
fn trend_labels_runs_of_one_day_with_their_times() {
    let fx = fixture(SMALL);
    for _ in 0..2 {
        assert_eq!(drover_json(&fx, &["drill", "rb", "--yes"]).0, 0);
    }
    let (code, text) = stdout(&fx, &["trend", "svc", "--format", "json"]);
    assert_eq!(code, 0);
    let t: Value = serde_json::from_str(&text).unwrap();
    let started: Vec<&str> = t["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["started_at"].as_str().unwrap())
        .collect();
    assert_eq!(started.len(), 2);
    // (Unless the two runs straddle midnight UTC: then each is alone on its day.)
    if started[0][..10] != started[1][..10] {
        return;
    }
    let (_, html) = stdout(&fx, &["trend", "svc", "--format", "html"]);
    // Each label's lines of text.
    let labels: Vec<Vec<&str>> = html
        .split("<g class=\"x-label\">")
        .skip(1)
        .map(|g| {
            g[..g.find("</g>").unwrap()]
                .split("</text>")
                .filter_map(|t| t.rsplit('>').next())
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(labels.len(), 2, "{html}");
    for (label, at) in labels.iter().zip(&started) {
        // HH:MM, or HH:MM:SS when the two share a minute (they usually do here).
        assert!(
            label[0].len() >= 5 && at[11..].starts_with(label[0]),
            "{label:?} is not the time of {at}"
        );
    }
    // The date once, under the first of the day.
    assert_eq!(labels[0].get(1), Some(&&started[0][..10]), "{labels:?}");
    assert_eq!(labels[1].len(), 1, "{labels:?}");
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
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TAMPERED") && text.contains("first bad record"), "{text}");
    // A wrong key pin fails an intact bundle; a pin that is no fingerprint is a usage error.
    let fx2 = fixture(SMALL);
    let (_, _) = exported(&fx2);
    let bundle = fx2.path("bundle.json");
    let other = format!("SHA256:{}", "0".repeat(64));
    let (code, _) = stdout(&fx2, &["evidence", "verify", bundle.to_str().unwrap(), "--key", &other]);
    assert_eq!(code, 1);
    let (code, _) = stdout(
        &fx2,
        &["evidence", "verify", bundle.to_str().unwrap(), "--key", "SHA256:00"],
    );
    assert_eq!(code, 2);
}

/// `evidence verify TARGET --format json` in the fixture: exit code and the JSON.
fn verify_json(fx: &Fixture, target: &str, extra: &[&str]) -> (i32, Value) {
    let (code, text) = stdout(
        fx,
        &[&["evidence", "verify", target, "--format", "json"], extra].concat(),
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("no JSON ({e}): {text}"));
    (code, v)
}

/// The fixture's config with `evidence: {trusted_keys: KEYS}`.
fn pin(fx: &Fixture, keys: &[&str]) {
    let list = keys.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ");
    fx.write(
        "drover.yaml",
        &format!("{CONFIG}evidence: {{trusted_keys: [{list}]}}\n"),
    );
}

#[test]
fn verification_without_a_pinned_key_says_not_pinned() {
    let fx = fixture(SMALL);
    let (id, _) = exported(&fx);
    let bundle = fx.path("bundle.json");
    for target in [id.as_str(), bundle.to_str().unwrap()] {
        let (code, text) = stdout(&fx, &["evidence", "verify", target]);
        assert_eq!(code, 0, "{text}");
        assert!(text.starts_with("intact"), "{text}");
        assert!(text.contains("key: NOT PINNED"), "{text}");
        let (code, v) = verify_json(&fx, target, &[]);
        assert_eq!(code, 0);
        assert_eq!(v["intact"], true);
        assert_eq!(v["pinned"], false);
        assert_eq!(v["key_trusted"], Value::Null);
        assert_eq!(v["trusted_keys"], serde_json::json!([]));
        assert!(v["key_fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    }
}

#[test]
fn a_pinned_sealing_key_passes() {
    let fx = fixture(SMALL);
    let (id, _) = exported(&fx);
    let fp = verify_json(&fx, &id, &[]).1["key_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    pin(&fx, &[&format!("SHA256:{}", "1".repeat(64)), &fp]);
    let bundle = fx.path("bundle.json");
    for target in [id.as_str(), bundle.to_str().unwrap()] {
        let (code, v) = verify_json(&fx, target, &[]);
        assert_eq!(code, 0, "{v:#}");
        assert_eq!(v["pinned"], true);
        assert_eq!(v["key_trusted"], true);
        assert_eq!(v["seals"][0]["key_fingerprint"], fp.as_str());
        let (code, text) = stdout(&fx, &["evidence", "verify", target]);
        assert_eq!(code, 0);
        assert!(text.contains("key: trusted") && !text.contains("NOT PINNED"), "{text}");
    }
}

#[test]
fn a_key_that_is_not_pinned_fails_naming_both_fingerprints() {
    let fx = fixture(SMALL);
    let (id, _) = exported(&fx);
    let fp = verify_json(&fx, &id, &[]).1["key_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = format!("SHA256:{}", "ab".repeat(32));
    pin(&fx, &[&other]);
    let bundle = fx.path("bundle.json");
    for target in [id.as_str(), bundle.to_str().unwrap()] {
        let (code, text) = stdout(&fx, &["evidence", "verify", target]);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains(&fp) && text.contains(&other), "{text}");
        assert!(
            text.contains("not pinned") && text.contains("key: NOT TRUSTED"),
            "{text}"
        );
        let (code, v) = verify_json(&fx, target, &[]);
        assert_eq!(code, 1);
        assert_eq!(v["intact"], false);
        assert_eq!(v["pinned"], true);
        assert_eq!(v["key_trusted"], false);
        assert_eq!(v["key_fingerprint"], fp.as_str());
        let problem = v["problem"].as_str().unwrap();
        assert!(problem.contains(&fp) && problem.contains(&other), "{problem}");
        // `--key` replaces the config's pins for one check.
        let (code, v) = verify_json(&fx, target, &["--key", &fp]);
        assert_eq!(code, 0, "{v:#}");
        assert_eq!(v["key_trusted"], true);
    }
}

#[test]
fn a_trusted_key_that_is_no_fingerprint_is_a_located_error() {
    let fx = fixture(SMALL);
    let (id, _) = exported(&fx);
    let good = format!("SHA256:{}", "c".repeat(64));
    fx.write(
        "drover.yaml",
        &format!(
            "{CONFIG}evidence:\n  trusted_keys:\n    - {good}\n    - SHA256:abc\n    - \"sha1:{}\"\n",
            "c".repeat(40)
        ),
    );
    let config = fx.path("drover.yaml");
    let config = config.to_str().unwrap();
    for args in [vec!["validate"], vec!["evidence", "verify", id.as_str()]] {
        let out = fx.drover().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for line in [9, 10] {
            assert!(
                err.contains(&format!("{config}:{line}:7: error: `")) && err.contains("is not a key fingerprint"),
                "{args:?}: no located error on line {line}:\n{err}"
            );
        }
        assert!(!err.contains(&good), "the good key is not an error: {err}");
    }
}

/// Adds records to a sealed run in the state store as `drover ack` does: an event,
/// then (when `seal`) a new seal by the run's own key, each chained to the one before.
fn append_to_journal(fx: &Fixture, id: &str, seal: bool) {
    use drover_engine::evidence::{Signer, seal_message, sha256_hex};
    use drover_engine::{Event, Record};
    let db = rusqlite::Connection::open(fx.path("state/state.db")).unwrap();
    let (last, json): (i64, String) = db
        .query_row(
            "SELECT seq, record FROM journal WHERE run_id = ?1 ORDER BY seq DESC LIMIT 1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut prev = sha256_hex(json.as_bytes());
    let seed = hex_decode(fx.read(".drover/evidence.key").trim());
    let signer = Signer::from_seed(&seed).unwrap();
    let mut events = vec![Event::Acknowledged {
        by: "operator".into(),
        reason: "taken over by hand".into(),
    }];
    let mut seq = last as u64 + 1;
    while let Some(event) = events.pop() {
        let rec = Record {
            seq,
            at: "2026-01-01T00:00:00.000Z".into(),
            t: 1.0,
            prev: Some(prev.clone()),
            writer: None,
            event,
        };
        let json = serde_json::to_string(&rec).unwrap();
        db.execute(
            "INSERT INTO journal (run_id, seq, record) VALUES (?1, ?2, ?3)",
            rusqlite::params![id, seq as i64, json],
        )
        .unwrap();
        prev = sha256_hex(json.as_bytes());
        if seal && !matches!(rec.event, Event::Sealed { .. }) {
            events.push(Event::Sealed {
                signature: signer.sign(&seal_message(id, seq, &prev)),
                head: prev.clone(),
                public_key: signer.public_key_hex(),
                fingerprint: signer.fingerprint(),
            });
        }
        seq += 1;
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_run_sealed_again_verifies_and_an_unsealed_tail_fails() {
    let fx = fixture(SMALL);
    let (id, _) = exported(&fx);
    let first = verify_json(&fx, &id, &[]).1;
    let records = first["records"].as_u64().unwrap();
    // An acknowledgement and a new seal by the same key: both seals are checked.
    append_to_journal(&fx, &id, true);
    let (code, v) = verify_json(&fx, &id, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["records"], records + 2);
    let seals: Vec<u64> = v["seals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["record"].as_u64().unwrap())
        .collect();
    assert_eq!(seals, [records - 1, records + 1]);
    // Pinned, every seal must be by a pinned key: it is.
    pin(&fx, &[first["key_fingerprint"].as_str().unwrap()]);
    assert_eq!(verify_json(&fx, &id, &[]).1["key_trusted"], true);
    // The re-sealed run exports and its bundle verifies.
    let out = fx
        .drover()
        .args(["evidence", "export", &id, "-o"])
        .arg(fx.path("again.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(verify_json(&fx, fx.path("again.json").to_str().unwrap(), &[]).0, 0);
    // A record after the last seal, correctly chained but not sealed, fails.
    append_to_journal(&fx, &id, false);
    let (code, v) = verify_json(&fx, &id, &[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["first_bad_record"], records + 2);
    assert!(v["problem"].as_str().unwrap().contains("follow the last seal"), "{v:#}");
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

#[test]
fn a_url_secrets_password_alone_is_redacted_and_a_short_secret_leaves_records_intact() {
    const RAW: &str = "s3cr%40t-pw%20x";
    const DECODED: &str = "s3cr@t-pw x";
    let fx = fixture(
        r#"name: rb
service: svc
steps:
  - {id: leak, uses: exec.run, with: {command: [sh, -c, "printf '%s\n' \"$PW_DECODED\"; echo \"raw $PW_RAW\" >&2; echo seq is a key"]}}
"#,
    );
    // The database URL is a secret, so its password is one; the S3 key id `seq`
    // (a 3-character secret equal to a key of every journal record) is one too.
    fx.write(
        "drover.yaml",
        &format!(
            "{CONFIG}databases:\n  - {{name: db1, site: east, kind: postgres, url: {{env: DB_URL}}}}\n\
             object_stores:\n  - {{name: s1, site: east, endpoint: \"http://127.0.0.1:9\", bucket: b, access_key_id: {{env: S3_KEY}}}}\n"
        ),
    );
    let out = fx
        .drover()
        .env("DB_URL", format!("postgres://app:{RAW}@db.example:5432/payments"))
        .env("S3_KEY", "seq")
        .env("PW_DECODED", DECODED)
        .env("PW_RAW", RAW)
        .args(["drill", "rb", "--yes", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let id = run_id(&serde_json::from_slice(&out.stdout).unwrap());
    let db = rusqlite::Connection::open(fx.path("state/state.db")).unwrap();
    let records: Vec<String> = db
        .prepare("SELECT record FROM journal WHERE run_id = ?1 ORDER BY seq")
        .unwrap()
        .query_map([&id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (i, text) in records.iter().enumerate() {
        assert!(
            !text.contains(DECODED) && !text.contains(RAW),
            "record {i} has the password: {text}"
        );
        // Every record keeps its keys and numbers: `seq` is not touched.
        let rec: drover_engine::Record =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("record {i} is unreadable ({e}): {text}"));
        assert_eq!(rec.seq, i as u64);
    }
    let leak = records
        .iter()
        .find(|r| r.contains("\"event\":\"step_finished\"") && r.contains("\"step\":\"leak\""))
        .expect("the step's record");
    assert!(
        leak.contains("[redacted]\\n"),
        "the password printed alone is redacted: {leak}"
    );
    assert!(leak.contains("raw [redacted]"), "the raw password is redacted: {leak}");
    assert!(
        leak.contains("seq is a key"),
        "a short secret inside text stays: {leak}"
    );
    for file in ["state/state.db", "state/state.db-wal"] {
        let bytes = std::fs::read(fx.path(file)).unwrap_or_default();
        for secret in [DECODED, RAW] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{file} contains the password"
            );
        }
    }
    // The redacted journal still verifies.
    let (code, text) = stdout(&fx, &["evidence", "verify", &id]);
    assert_eq!(code, 0, "{text}");
}
