//! The continuity programme through the real binary and a real SQLite store: the
//! `drill_every` policy and its diagnostics, `drover coverage` (statuses and due dates
//! judged at fixed instants against runs recorded at known times), and corrective
//! actions: opened by a failed step, a missed target and a stuck rollback, closed by a
//! later passing run and by hand, shown in the reports, the trend and the change record.

use std::time::Duration;

use serde_json::Value;

use crate::engine::{CONFIG, drover_json};
use crate::support::{Fixture, error_lines, validate_fails};

/// shop (gold, 90 days) -> api -> db; dns (gold by inheritance, no runbook); billing
/// (silver, its own 7 days); ledger (silver, 30 days).
const CMDB: &str = r#"tiers:
  gold: {rto: 15m, rpo: 1m, drill_every: 90d}
  silver: {rto: 4h, rpo: 1h, drill_every: 30d}
items:
  - {id: shop, kind: business_service, tier: gold, owner: shop-team, depends_on: [api, dns]}
  - {id: api, kind: application, depends_on: [db]}
  - {id: db, kind: database, owner: dba}
  - {id: dns, kind: dns, owner: network-team}
  - {id: billing, kind: business_service, tier: silver, drill_every: 7d, owner: billing-team}
  - {id: ledger, kind: business_service, tier: silver, owner: ledger-team}
"#;

/// Recovers shop through db and api; the first step fails until the file `fixed` exists.
const SHOP: &str = r#"name: shop
service: shop
targets: {rto: 10m}
steps:
  - {id: restore-db, ci: db, uses: exec.run, with: {command: [sh, -c, "test -f fixed"]}}
  - {id: start-api, ci: api, uses: exec.run, with: {command: ["true"]}}
verify:
  - {name: up, uses: exec.check, with: {command: ["true"]}}
rollback:
  - {id: cleanup, uses: exec.run, with: {command: ["true"]}}
"#;

const BILLING: &str =
    "name: billing\nservice: billing\nsteps:\n  - {id: s, uses: exec.run, with: {command: [\"true\"]}}\n";
const LEDGER: &str =
    "name: ledger\nservice: ledger\nsteps:\n  - {id: s, uses: exec.run, with: {command: [\"false\"]}}\n";

fn fixture() -> Fixture {
    let fx = Fixture::empty();
    fx.write("drover.yaml", CONFIG);
    fx.write("cmdb.yaml", CMDB);
    fx.write("runbooks/shop.yaml", SHOP);
    fx.write("runbooks/billing.yaml", BILLING);
    fx.write("runbooks/ledger.yaml", LEDGER);
    fx
}

/// `drover ARGS` in the fixture: exit code, stdout, stderr.
fn run(fx: &Fixture, args: &[&str]) -> (i32, String, String) {
    let out = fx.drover().args(args).output().expect("run drover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `drover ARGS` that must succeed with JSON on stdout.
fn json(fx: &Fixture, args: &[&str]) -> Value {
    let (code, out, err) = run(fx, args);
    assert_eq!(code, 0, "drover {args:?}: exit {code}\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("drover {args:?}: no JSON ({e}): {out}"))
}

/// `t` plus `days` (fractions allowed), RFC 3339.
fn plus_days(t: &str, days: f64) -> String {
    let t = humantime::parse_rfc3339_weak(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    humantime::format_rfc3339_millis(t + Duration::from_secs_f64(days * 86_400.0)).to_string()
}

fn minus_secs(t: &str, s: u64) -> String {
    let t = humantime::parse_rfc3339_weak(t).unwrap();
    humantime::format_rfc3339_millis(t - Duration::from_secs(s)).to_string()
}

fn coverage_at(fx: &Fixture, at: &str) -> Vec<Value> {
    json(fx, &["coverage", "--format", "json", "--at", at])
        .as_array()
        .expect("an array")
        .clone()
}

fn item<'a>(items: &'a [Value], ci: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["ci"] == ci)
        .unwrap_or_else(|| panic!("no {ci} in {items:#?}"))
}

fn status(items: &[Value], ci: &str) -> String {
    item(items, ci)["status"].as_str().unwrap().to_owned()
}

/// The fixture's open actions as JSON.
fn actions(fx: &Fixture, extra: &[&str]) -> Vec<Value> {
    json(fx, &[&["actions", "list", "--format", "json"], extra].concat())
        .as_array()
        .unwrap()
        .clone()
}

/// What changes from run to run in a snapshot.
const VOLATILE: [(&str, &str); 6] = [
    (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]"),
    (r"\d{8}-\d{6}-[0-9a-f]{12}", "[RUN]"),
    (r"CA-\d{4}-", "CA-[YEAR]-"),
    (r#""achieved_s": [0-9.e-]+"#, r#""achieved_s": "[S]""#),
    (r"\b\d+(\.\d+)?s\b", "[DUR]"),
    (r#""by": "[^"]+""#, r#""by": "[USER]""#),
];

#[test]
fn drill_every_is_validated_with_file_line_and_column() {
    let fx = fixture();
    fx.write(
        "cmdb.yaml",
        &CMDB.replace("drill_every: 90d}", "drill_every: 0s}").replace(
            "{id: dns, kind: dns, owner: network-team}",
            "{id: dns, kind: dns, owner: network-team}\n  - {id: spare, kind: cache, drill_every: 30d}",
        ),
    );
    let stderr = validate_fails(&fx);
    let cmdb = fx.path("cmdb.yaml");
    let cmdb = cmdb.display();
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{cmdb}:2:42: error: tier `gold`: drill_every must be longer than zero"
        )),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{cmdb}:9:43: error: CI `spare` sets drill_every but has no tier"
        )),
        "{stderr}"
    );
    // A duration without a unit is a type error at the value.
    fx.write("cmdb.yaml", &CMDB.replace("drill_every: 7d,", "drill_every: 7,"));
    let stderr = validate_fails(&fx);
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{cmdb}:9:70: error: invalid duration `7`")),
        "{stderr}"
    );
    // A CI that inherits a tier may set its own gap.
    fx.write(
        "cmdb.yaml",
        &CMDB.replace(
            "{id: api, kind: application,",
            "{id: api, kind: application, drill_every: 30d,",
        ),
    );
    let (code, _, err) = run(&fx, &["validate"]);
    assert_eq!(code, 0, "{err}");
    // The JSON Schema knows the field, on tiers and on CIs.
    let schema = json(&fx, &["schema", "cmdb"]);
    let defs = &schema["$defs"];
    for def in ["Tier", "Ci"] {
        assert!(
            defs[def]["properties"]["drill_every"].is_object(),
            "no drill_every in {def}: {schema:#}"
        );
    }
}

#[test]
fn coverage_statuses_and_due_dates_at_fixed_instants() {
    let fx = fixture();
    fx.write("fixed", "");
    // Nothing run yet: never, or uncovered where no runbook reaches.
    let (code, _, err) = run(&fx, &["coverage"]);
    assert_eq!(code, 0, "{err}");
    let (_, pass) = drover_json(&fx, &["drill", "shop", "--yes"]);
    assert_eq!(pass["outcome"], "passed", "{pass:#}");
    assert_eq!(drover_json(&fx, &["drill", "ledger", "--yes"]).0, 1);
    let t = pass["finished_at"].as_str().unwrap().to_owned();
    let pass_id = pass["id"].as_str().unwrap();

    // Just after the drill.
    let items = coverage_at(&fx, &plus_days(&t, 1.0));
    let shop = item(&items, "shop");
    assert_eq!(shop["status"], "ok", "{shop:#}");
    assert_eq!(shop["tier"], "gold");
    assert_eq!(shop["drill_every"], "90d");
    assert_eq!(shop["runbooks"], serde_json::json!(["shop"]));
    assert_eq!(shop["last_drill"]["run"], pass_id);
    assert_eq!(shop["last_drill"]["at"], t.as_str());
    assert_eq!(shop["last_drill"]["outcome"], "passed");
    assert_eq!(shop["last_pass"]["run"], pass_id);
    assert_eq!(shop["due_by"], plus_days(&t, 90.0).as_str(), "{shop:#}");
    assert_eq!(shop["last_drill"]["rto"]["target_s"], 600.0);
    assert!(shop["last_drill"]["rto"]["achieved_s"].as_f64().unwrap() < 600.0);
    // db and api inherit gold from shop, and are recovered by its steps.
    for ci in ["db", "api"] {
        let i = item(&items, ci);
        assert_eq!(i["tier"], "gold", "{i:#}");
        assert_eq!(i["tier_from"], "shop", "{i:#}");
        assert_eq!(i["status"], "ok", "{i:#}");
        assert_eq!(i["runbooks"], serde_json::json!(["shop"]));
        assert!(i["last_drill"]["rto"]["achieved_s"].is_number(), "{i:#}");
    }
    // dns inherits gold too, but nothing recovers it: a gap, with its blast radius.
    let dns = item(&items, "dns");
    assert_eq!(dns["status"], "uncovered");
    assert_eq!(dns["blast_radius"], serde_json::json!(["shop"]));
    assert_eq!(dns["runbooks"], serde_json::json!([]));
    assert_eq!(status(&items, "billing"), "never");
    assert_eq!(item(&items, "billing")["drill_every"], "7d");
    assert_eq!(item(&items, "billing")["due_by"], Value::Null);
    let ledger = item(&items, "ledger");
    assert_eq!(ledger["status"], "failing", "{ledger:#}");
    assert_eq!(ledger["last_drill"]["outcome"], "failed");
    assert_eq!(ledger["last_pass"], Value::Null);

    // Within 14 days of the due date: due; past it: overdue.
    let items = coverage_at(&fx, &plus_days(&t, 75.0));
    assert_eq!(status(&items, "shop"), "ok");
    let items = coverage_at(&fx, &plus_days(&t, 80.0));
    assert_eq!(status(&items, "shop"), "due");
    assert_eq!(status(&items, "db"), "due");
    let items = coverage_at(&fx, &plus_days(&t, 90.5));
    assert_eq!(status(&items, "shop"), "overdue");
    // Before the drill ended it had not happened.
    let items = coverage_at(&fx, &minus_secs(&t, 1));
    assert_eq!(status(&items, "shop"), "never");

    // A verify run is backup verification, not a drill.
    let (code, v) = drover_json(&fx, &["verify", "shop"]);
    assert_eq!(code, 0, "{v:#}");
    let items = coverage_at(&fx, &plus_days(&t, 80.0));
    let shop = item(&items, "shop");
    assert_eq!(shop["last_drill"]["run"], pass_id, "{shop:#}");
    assert_eq!(shop["last_verify"]["run"], v["id"]);
    assert_eq!(shop["status"], "due");

    // The summary per tier, the gaps, in text.
    let (code, text, _) = run(&fx, &["coverage", "--at", &plus_days(&t, 80.0)]);
    assert_eq!(code, 0);
    assert!(text.contains("gold: 3 of 4 services within policy"), "{text}");
    assert!(text.contains("silver: 0 of 2 services within policy"), "{text}");
    assert!(
        text.contains("dns (gold, owner network-team): blast radius shop"),
        "{text}"
    );
    // A time that is no time is a usage error.
    assert_eq!(run(&fx, &["coverage", "--at", "yesterday"]).0, 2);
}

#[test]
fn coverage_json_contract() {
    let fx = fixture();
    fx.write("fixed", "");
    let (_, pass) = drover_json(&fx, &["drill", "shop", "--yes"]);
    assert_eq!(drover_json(&fx, &["drill", "ledger", "--yes"]).0, 1);
    let t = pass["finished_at"].as_str().unwrap();
    let (code, out, err) = run(&fx, &["coverage", "--format", "json", "--at", &plus_days(t, 1.0)]);
    assert_eq!(code, 0, "{err}");
    insta::with_settings!({filters => VOLATILE.to_vec()}, {
        insta::assert_snapshot!(out);
    });
}

#[test]
fn coverage_html_is_self_contained_with_a_drill_timeline() {
    let fx = fixture();
    fx.write("fixed", "");
    assert_eq!(drover_json(&fx, &["drill", "shop", "--yes"]).0, 0);
    assert_eq!(drover_json(&fx, &["drill", "ledger", "--yes"]).0, 1);
    let path = fx.path("coverage.html");
    let out = fx
        .drover()
        .args(["coverage", "--format", "html", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("gold: 3 of 4 services within policy"), "{html}");
    let without_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for needle in ["http://", "https://", "<link", "<script", "src=", "url(", "@import"] {
        assert!(!without_ns.contains(needle), "the page references `{needle}`");
    }
    // One dot per drill on the rows of the CIs its runbook recovers: shop, api and db
    // (the passing shop drill), ledger (its failed drill).
    let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
    assert_eq!(svg.matches("fill=\"#c62828\"").count(), 1, "one failed drill: {svg}");
    // A due-date bar for each passed CI (shop, api, db), none for the others.
    assert_eq!(svg.matches("width=\"3\"").count(), 3, "{svg}");
    assert!(html.contains("Gaps") && html.contains("dns"));
}

#[test]
fn a_failed_step_opens_an_action_that_a_later_passing_run_closes() {
    let fx = fixture();
    let (code, failed) = drover_json(&fx, &["drill", "shop", "--yes"]);
    assert_eq!(code, 1, "{failed:#}");
    let failed_id = failed["id"].as_str().unwrap();
    let open = actions(&fx, &["--open"]);
    assert_eq!(open.len(), 1, "{open:#?}");
    let a = &open[0];
    let id = a["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("CA-") && id.len() == "CA-2026-0001".len() && id.ends_with("-0001"),
        "{id}"
    );
    assert_eq!(a["state"], "open");
    assert_eq!(a["kind"], "failed_step");
    assert_eq!(a["run"], failed_id);
    assert_eq!(a["ci"], "db");
    assert_eq!(a["owner"], "dba");
    assert!(
        a["summary"].as_str().unwrap().contains("step `restore-db` failed")
            && a["summary"].as_str().unwrap().contains("exited with status 1"),
        "{a:#}"
    );
    assert_eq!(a["closed"], Value::Null);
    // The coverage shows it for db, whose last drill failed.
    let items = coverage_at(&fx, &plus_days(failed["finished_at"].as_str().unwrap(), 1.0));
    assert_eq!(item(&items, "db")["open_actions"], serde_json::json!([id]));
    assert_eq!(status(&items, "db"), "failing");
    // The report's issues, the change record's close notes and the trend name it.
    let (_, md, _) = run(&fx, &["report", failed_id]);
    assert!(
        md.contains(&format!("corrective action {id} (open; CI db, owner dba)")),
        "{md}"
    );
    let change = json(&fx, &["change", "show", failed_id, "--format", "json"]);
    let notes = change["close_notes"].as_str().unwrap();
    assert!(notes.contains(&format!("Corrective actions: {id} (open)")), "{notes}");
    let trend = json(&fx, &["trend", "shop", "--format", "json"]);
    assert_eq!(trend["open_actions"], 1);
    assert_eq!(trend["points"][0]["actions"], serde_json::json!([id]));
    let (_, trend_md, _) = run(&fx, &["trend", "shop"]);
    assert!(trend_md.contains(&format!("**{id}** (open)")), "{trend_md}");

    // The same failure again opens a second action (one per finding per run).
    assert_eq!(drover_json(&fx, &["drill", "shop", "--yes"]).0, 1);
    assert_eq!(actions(&fx, &["--open"]).len(), 2);

    // Fixed: the next passing run of the runbook closes both, naming itself.
    fx.write("fixed", "");
    let (code, pass) = drover_json(&fx, &["drill", "shop", "--yes"]);
    assert_eq!(code, 0, "{pass:#}");
    let pass_id = pass["id"].as_str().unwrap();
    assert!(actions(&fx, &["--open"]).is_empty());
    let shown = json(&fx, &["actions", "show", &id, "--format", "json"]);
    assert_eq!(shown["state"], "closed", "{shown:#}");
    assert_eq!(shown["closed"]["by"], "drover");
    assert_eq!(shown["closed"]["run"], pass_id);
    assert!(
        shown["closed"]["note"]
            .as_str()
            .unwrap()
            .contains("step `restore-db` succeeded"),
        "{shown:#}"
    );
    // The passing run's report and change record say what it proved fixed.
    let (_, md, _) = run(&fx, &["report", pass_id]);
    assert!(
        md.contains(&format!(
            "corrective action {id} (opened by run {failed_id}) is proved fixed"
        )),
        "{md}"
    );
    let change = json(&fx, &["change", "show", pass_id, "--format", "json"]);
    assert!(
        change["close_notes"]
            .as_str()
            .unwrap()
            .contains("Proved fixed and closed"),
        "{change:#}"
    );
    // Settling the finished runs again (resume) neither reopens nor doubles anything.
    for run_id in [failed_id, pass_id] {
        let (code, _, err) = run(&fx, &["resume", run_id]);
        assert!(code == 0 || code == 1, "{err}");
    }
    let all = actions(&fx, &[]);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().all(|a| a["state"] == "closed"));
    // --service filters by the run's service or the action's CI.
    assert_eq!(actions(&fx, &["--service", "db"]).len(), 2);
    assert_eq!(actions(&fx, &["--service", "ledger"]).len(), 0);
}

#[test]
fn a_missed_rto_opens_an_action_with_achieved_and_target() {
    let fx = fixture();
    fx.write(
        "runbooks/shop.yaml",
        &SHOP.replace("targets: {rto: 10m}", "targets: {rto: 1s}").replace(
            "command: [\"true\"]}}\nverify",
            "command: [sh, -c, \"test -f fast || sleep 1.5\"]}}\nverify",
        ),
    );
    fx.write("fixed", "");
    let (code, run1) = drover_json(&fx, &["drill", "shop", "--yes"]);
    assert_eq!(code, 3, "{run1:#}");
    let open = actions(&fx, &["--open"]);
    assert_eq!(open.len(), 1, "{open:#?}");
    let a = &open[0];
    assert_eq!(a["kind"], "missed_rto");
    assert_eq!(a["ci"], "shop");
    assert_eq!(a["owner"], "shop-team");
    assert_eq!(a["detail"]["target_s"], 1.0);
    assert!(a["detail"]["achieved_s"].as_f64().unwrap() > 1.0, "{a:#}");
    assert!(
        a["summary"].as_str().unwrap().starts_with("RTO target missed: ")
            && a["summary"].as_str().unwrap().ends_with("achieved, target 1.00s"),
        "{a:#}"
    );
    // Within target next time: closed by that run.
    fx.write("fast", "");
    let (code, run2) = drover_json(&fx, &["drill", "shop", "--yes"]);
    assert_eq!(code, 0, "{run2:#}");
    let a = json(&fx, &["actions", "show", a["id"].as_str().unwrap(), "--format", "json"]);
    assert_eq!(a["state"], "closed");
    assert_eq!(a["closed"]["run"], run2["id"]);
    assert!(a["closed"]["note"].as_str().unwrap().starts_with("RTO "), "{a:#}");
}

#[test]
fn a_stuck_rollback_opens_an_action_and_a_verify_run_does_not_close_a_failed_step() {
    let fx = fixture();
    fx.write(
        "runbooks/shop.yaml",
        &SHOP.replace(
            "{id: cleanup, uses: exec.run, with: {command: [\"true\"]}}",
            "{id: cleanup, ci: api, uses: exec.run, with: {command: [\"false\"]}}",
        ),
    );
    let (code, run1) = drover_json(&fx, &["drill", "shop", "--yes"]);
    assert_eq!(code, 4, "{run1:#}");
    let kinds: Vec<(String, String)> = actions(&fx, &["--open"])
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap().into(),
                a["finding"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("failed_step".into(), "step:restore-db".into()),
            ("stuck_rollback".into(), "undo:rollback:cleanup".into())
        ]
    );
    let (code, _, err) = run(
        &fx,
        &["ack", run1["id"].as_str().unwrap(), "--reason", "cleaned up by hand"],
    );
    assert_eq!(code, 0, "{err}");
    // A verify run runs no step: it proves no step fixed.
    fx.write("fixed", "");
    assert_eq!(drover_json(&fx, &["verify", "shop"]).0, 0);
    assert_eq!(actions(&fx, &["--open"]).len(), 2);
}

#[test]
fn an_action_is_closed_by_hand_once_with_who_and_why() {
    let fx = fixture();
    assert_eq!(drover_json(&fx, &["drill", "ledger", "--yes"]).0, 1);
    let id = actions(&fx, &[])[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(run(&fx, &["actions", "close", &id, "--note", "  "]).0, 2);
    assert_eq!(run(&fx, &["actions", "close", "CA-1999-0001", "--note", "x"]).0, 2);
    let closed = json(
        &fx,
        &[
            "actions",
            "close",
            &id,
            "--note",
            "accepted: ledger is retired next month",
            "--format",
            "json",
        ],
    );
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["closed"]["note"], "accepted: ledger is retired next month");
    assert_eq!(closed["closed"]["run"], Value::Null);
    let who = closed["closed"]["by"].as_str().unwrap();
    assert!(!who.is_empty() && who != "drover", "{closed:#}");
    let (code, _, err) = run(&fx, &["actions", "close", &id, "--note", "again"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("closed already"), "{err}");
    let (code, text, _) = run(&fx, &["actions", "show", &id]);
    assert_eq!(code, 0);
    assert!(text.contains(&format!("closed by {who}: accepted")), "{text}");
    // The history is append-only, and the run's evidence is untouched by it.
    let db = rusqlite::Connection::open(fx.path("state/state.db")).unwrap();
    assert!(db.execute("UPDATE actions SET summary = 'x'", []).is_err());
    assert!(db.execute("DELETE FROM actions", []).is_err());
    assert!(db.execute("DELETE FROM action_events", []).is_err());
    assert!(db.execute("UPDATE action_events SET note = 'x'", []).is_err());
    let run_id = closed["run"].as_str().unwrap();
    assert_eq!(run(&fx, &["evidence", "verify", run_id]).0, 0);
}

#[test]
fn actions_json_contract() {
    let fx = fixture();
    assert_eq!(drover_json(&fx, &["drill", "shop", "--yes"]).0, 1);
    let (code, out, _) = run(&fx, &["actions", "list", "--format", "json"]);
    assert_eq!(code, 0);
    insta::with_settings!({filters => VOLATILE.to_vec()}, {
        insta::assert_snapshot!(out);
    });
}

#[test]
fn a_crash_before_the_finish_is_committed_loses_no_action_and_doubles_none() {
    let fx = fixture();
    let out = fx
        .drover()
        .env("DROVER_CRASH_AT", "finish.before_commit")
        .args(["drill", "shop", "--yes", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "the crash point was not reached: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(actions(&fx, &[]).is_empty(), "nothing is opened before the finish");
    let (_, list, _) = run(&fx, &["runs", "list", "--format", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let (code, _, err) = run(&fx, &["resume", &id, "--yes"]);
    assert_eq!(code, 1, "{err}");
    let all = actions(&fx, &[]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["run"], id.as_str());
    assert_eq!(run(&fx, &["resume", &id]).0, 1);
    assert_eq!(actions(&fx, &[]).len(), 1);
}

#[test]
fn empty_issues_say_none_in_every_format_and_close_notes_keep_sub_second_figures() {
    let fx = Fixture::empty();
    fx.write("drover.yaml", CONFIG);
    fx.write("cmdb.yaml", "items:\n  - {id: svc, kind: business_service}\n");
    fx.write(
        "runbooks/rb.yaml",
        "name: rb\nservice: svc\ntargets: {rto: 10m}\nsteps:\n  - {id: s, uses: exec.run, with: {command: [sh, -c, \"sleep 0.2\"]}}\n",
    );
    let (code, r) = drover_json(&fx, &["drill", "rb", "--yes"]);
    assert_eq!(code, 0, "{r:#}");
    let id = r["id"].as_str().unwrap();
    let (_, md, _) = run(&fx, &["report", id]);
    let issues = &md[md.find("## Issues found").unwrap()..md.find("## Evidence").unwrap()];
    assert!(issues.contains("None"), "{issues}");
    let (_, html, _) = run(&fx, &["report", id, "--format", "html"]);
    let issues = &html[html.find("<h2>Issues found</h2>").unwrap()..html.find("<h2>Evidence</h2>").unwrap()];
    assert!(issues.contains("None"), "{issues}");
    let report = json(&fx, &["report", id, "--format", "json"]);
    assert_eq!(report["issues"], serde_json::json!([]));
    assert_eq!(report["issues_found"], "none");
    let (_, xml, _) = run(&fx, &["report", id, "--format", "junit"]);
    roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    assert!(xml.contains("<system-out>Issues found: none</system-out>"), "{xml}");
    // The RTO of about 0.2 s reads as in the report, not as a rounded `0s`.
    let change = json(&fx, &["change", "show", id, "--format", "json"]);
    let notes = change["close_notes"].as_str().unwrap();
    let rto = notes.split("RTO ").nth(1).unwrap().split(' ').next().unwrap();
    assert!(rto.starts_with("0.") && rto.ends_with('s') && rto != "0.00s", "{notes}");
    assert!(notes.contains("(target 10m)"), "{notes}");
}
