//! Diagnostics of `drover validate`: each kind of error in the config, the CMDB or a
//! runbook, written into a temporary workspace, must come out of the real binary as
//! `PATH:LINE:COL: error: MESSAGE` with a source snippet, all of them at once, exit 2.
//! The rendered stderr is snapshotted with the temporary folder shown as `[TMP]`.

use crate::support::{Fixture, error_lines, validate_fails};

const RB: &str = "runbooks/failover.yaml";

#[test]
fn base_fixture_is_valid() {
    let fx = Fixture::new();
    let out = fx.drover().arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(stdout.contains("(4 CIs), 2 runbooks"), "{stdout}");
}

// --- Syntax -------------------------------------------------------------------------

#[test]
fn yaml_syntax_error() {
    let fx = Fixture::new();
    fx.replace(RB, "with: {database: db-east}}", "with: {database: db-east}");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn yaml_tab_indentation() {
    let fx = Fixture::new();
    fx.replace("cmdb.yaml", "  gold: {rto", "\tgold: {rto");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn yaml_duplicate_key() {
    let fx = Fixture::new();
    fx.replace(RB, "to: west\n", "to: west\nfrom: west\n");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

// --- Types ----------------------------------------------------------------------------

#[test]
fn unknown_field_is_reported_at_the_key() {
    let fx = Fixture::new();
    fx.replace(RB, "needs: [fence]}", "needs: [fence], retry: 3}");
    fx.replace(
        "drover.yaml",
        "runbooks: runbooks\n",
        "runbooks: runbooks\nrunbook: x\n",
    );
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn wrong_type_is_reported_at_the_value() {
    let fx = Fixture::new();
    fx.replace(RB, "needs: [fence]}", "needs: [fence], retries: many}");
    fx.replace("cmdb.yaml", "depends_on: [api]", "depends_on: api");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn missing_field_is_reported_at_the_mapping() {
    let fx = Fixture::new();
    fx.replace(RB, "ci: db, uses: postgres.fence, ", "ci: db, ");
    fx.replace("drover.yaml", ", url: {env: DB_WEST_URL}", "");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn bad_durations() {
    let fx = Fixture::new();
    fx.replace(RB, "needs: [fence]}", "needs: [fence], timeout: 5}");
    fx.replace(RB, "within: 1m", "within: soon");
    fx.replace("cmdb.yaml", "rto: 15m", "rto: fast");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn broken_list_elements_do_not_hide_their_siblings() {
    let fx = Fixture::new();
    // Three broken steps and a broken top-level field: four errors, not one.
    fx.replace(RB, "ci: db, uses: postgres.fence", "ci: db, use: postgres.fence");
    fx.replace(RB, "needs: [fence]}", "needs: fence, bogus: 1}");
    fx.replace(RB, "ci: api, uses", "ci: [api], uses");
    fx.replace(RB, "from: east", "from: [east]");
    let stderr = validate_fails(&fx);
    assert_eq!(error_lines(&stderr).len(), 4, "{stderr}");
    assert_tmp_snapshot!(fx, stderr);
}

// --- Names that must exist ------------------------------------------------------------

#[test]
fn unknown_ci_in_depends_on_and_in_step() {
    let fx = Fixture::new();
    fx.replace("cmdb.yaml", "depends_on: [db, cache]", "depends_on: [db, cahce]");
    fx.replace(RB, "{id: scale, ci: api,", "{id: scale, ci: apj,");
    fx.replace(RB, "{name: healthy, uses", "{name: healthy, ci: nothing-like-it, uses");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn unknown_action_with_suggestion() {
    let fx = Fixture::new();
    fx.replace(
        RB,
        "uses: postgres.fence, with: {database: db-east}",
        "uses: exec.rnu, with: {command: [true]}",
    );
    fx.replace(RB, "uses: http.check", "uses: nagios.check");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn kubernetes_scale_without_replicas() {
    let fx = Fixture::new();
    fx.replace(RB, "name: api, replicas: 3}", "name: api}");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn action_parameter_types_and_unknown_parameters() {
    let fx = Fixture::new();
    fx.replace(RB, "replicas: 3}", "replicas: three}");
    fx.replace(RB, "{database: db-west}", "{database: db-west, force: true}");
    fx.replace(
        RB,
        "kind: Deployment, name: api, replicas: 0",
        "kind: Pod, name: api, replicas: 0",
    );
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn unknown_cluster_store_database_and_site() {
    let fx = Fixture::new();
    fx.replace(
        RB,
        "cluster: west-k8s, namespace: shop, kind: Deployment, name: api, replicas: 3",
        "cluster: west-k9s, namespace: shop, kind: Deployment, name: api, replicas: 3",
    );
    fx.replace(RB, "{database: db-east}", "{database: db-eats}");
    fx.replace(RB, "to: west", "to: wset");
    fx.replace("runbooks/backups.yaml", "store: backups-west", "store: backups-wset");
    fx.replace(
        "drover.yaml",
        "{name: west-k8s, site: west}",
        "{name: west-k8s, site: nort}",
    );
    fx.replace(
        "cmdb.yaml",
        "runs_on: {east: east-k8s, west: west-k8s}",
        "runs_on: {east: east-k8s, wst: west-k8s}",
    );
    fx.replace(
        "cmdb.yaml",
        "{east: db-east, west: db-west}",
        "{east: db-east, west: db-wset}",
    );
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn unknown_step_in_needs() {
    let fx = Fixture::new();
    fx.replace(RB, "needs: [fence]", "needs: [fenec]");
    fx.replace(RB, "replicas: 0}}", "replicas: 0}, needs: [scale]}");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn step_needing_itself() {
    let fx = Fixture::new();
    fx.replace(RB, "needs: [fence]", "needs: [fence, promote]");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn odd_shapes() {
    let fx = Fixture::new();
    fx.write(
        RB,
        concat!(
            "name: failover\nservice: shop\n",
            "steps: {id: fence}\n",
            "verify:\n",
            "  - {name: up, uses: http.check, with: [url]}\n",
            "rollback:\n",
            "  - just a string\n",
        ),
    );
    fx.write("runbooks/empty.yaml", "");
    fx.write("runbooks/comment.yml", "# nothing yet\n");
    fx.write("runbooks/list.yaml", "- name: x\n");
    fx.write("runbooks/key.yaml", "? [a, b]\n: c\n");
    std::fs::write(fx.path("runbooks/latin1.yaml"), b"name: caf\xe9\n").unwrap();
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn missing_runbooks_folder() {
    let fx = Fixture::new();
    fx.replace("drover.yaml", "runbooks: runbooks", "runbooks: nowhere");
    let stderr = validate_fails(&fx);
    // The schedule's runbook is unknown now too.
    assert_eq!(error_lines(&stderr).len(), 2, "{stderr}");
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn runbook_service_not_in_cmdb() {
    let fx = Fixture::new();
    fx.replace(RB, "service: shop", "service: shops");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn schedule_of_unknown_runbook() {
    let fx = Fixture::new();
    fx.replace("drover.yaml", "runbook: failover", "runbook: failvoer");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn missing_cmdb_file_is_reported_where_it_is_named() {
    let fx = Fixture::new();
    fx.remove("cmdb.yaml");
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

// --- Names that must be unique --------------------------------------------------------

#[test]
fn duplicate_ci_step_and_runbook_name() {
    let fx = Fixture::new();
    fx.replace(
        "cmdb.yaml",
        "  - {id: cache, kind: cache}\n",
        "  - {id: cache, kind: cache}\n  - {id: api, kind: application}\n",
    );
    fx.replace(RB, "{id: promote,", "{id: fence,");
    fx.replace(RB, "needs: [fence]", "needs: []");
    fx.replace("runbooks/backups.yaml", "name: backups", "name: failover");
    let stderr = validate_fails(&fx);
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn duplicate_target_systems_and_sites() {
    let fx = Fixture::new();
    fx.replace(
        "drover.yaml",
        "  - {name: west}\n",
        "  - {name: west}\n  - {name: east}\n",
    );
    fx.replace(
        "drover.yaml",
        "{name: db-west, site: west,",
        "{name: db-east, site: west,",
    );
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

// --- Cycles ---------------------------------------------------------------------------

#[test]
fn cmdb_cycle_names_every_member() {
    let fx = Fixture::new();
    fx.replace(
        "cmdb.yaml",
        "{id: db, kind: database,",
        "{id: db, kind: database, depends_on: [shop],",
    );
    let stderr = validate_fails(&fx);
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].ends_with("shop -> api -> db -> shop (members: api, db, shop)"),
        "{}",
        lines[0]
    );
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn two_cmdb_cycles_and_a_self_loop() {
    let fx = Fixture::new();
    // a <-> b <-> c is one group of three (no single cycle goes through all three);
    // d depends on itself.
    fx.write(
        "cmdb.yaml",
        concat!(
            "items:\n",
            "  - {id: a, kind: x, depends_on: [b]}\n",
            "  - {id: b, kind: x, depends_on: [a, c]}\n",
            "  - {id: c, kind: x, depends_on: [b]}\n",
            "  - {id: d, kind: x, depends_on: [d]}\n",
            "  - {id: shop, kind: x}\n",
            "  - {id: db, kind: x}\n",
            "  - {id: api, kind: x}\n",
        ),
    );
    let stderr = validate_fails(&fx);
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].ends_with("(members: a, b, c)"), "{stderr}");
    assert!(lines[1].ends_with("d -> d (members: d)"), "{stderr}");
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn step_cycle_through_needs() {
    let fx = Fixture::new();
    fx.write(
        RB,
        concat!(
            "name: failover\nservice: shop\nsteps:\n",
            "  - {id: a, uses: exec.run, with: {command: [true]}, needs: [c]}\n",
            "  - {id: b, uses: exec.run, with: {command: [true]}, needs: [a]}\n",
            "  - {id: c, uses: exec.run, with: {command: [true]}, needs: [b]}\n",
            "  - {id: d, uses: exec.run, with: {command: [true]}, needs: [a]}\n",
        ),
    );
    let stderr = validate_fails(&fx);
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert!(!stderr.contains("CMDB"), "{stderr}");
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn step_cycle_names_every_member() {
    let fx = Fixture::new();
    // fence needs scale, scale needs promote, promote needs fence; the CMDB also puts
    // scale (CI api) after fence and promote (CI db). The shortest cycle shown goes
    // through the CMDB order; the members are all three steps.
    fx.replace(
        RB,
        "with: {database: db-east}}",
        "with: {database: db-east}, needs: [scale]}",
    );
    fx.replace(
        RB,
        "name: api, replicas: 3}}",
        "name: api, replicas: 3}, needs: [promote]}",
    );
    let stderr = validate_fails(&fx);
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].ends_with("(members: fence, promote, scale)"), "{stderr}");
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn step_cycle_through_the_cmdb_order() {
    let fx = Fixture::new();
    // fence (CI db) needs scale (CI api); the CMDB puts api's steps after db's.
    fx.replace(
        RB,
        "with: {database: db-east}}",
        "with: {database: db-east}, needs: [scale]}",
    );
    let stderr = validate_fails(&fx);
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert!(stderr.contains("through the order implied by the CMDB"), "{stderr}");
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn step_cycle_through_a_ci_without_steps() {
    let fx = Fixture::new();
    // switch (CI shop) -> via api (no steps of its own here) -> needs of a db step.
    fx.write(
        RB,
        "name: failover\nservice: shop\nsteps:\n  - {id: fence, ci: db, uses: postgres.fence, with: {database: db-east}, needs: [switch]}\n  - {id: switch, ci: shop, uses: exec.run, with: {command: [true]}}\n",
    );
    let stderr = validate_fails(&fx);
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert_tmp_snapshot!(fx, stderr);
}

// --- Checks, schedules ----------------------------------------------------------------

#[test]
fn preflight_and_verify_must_be_read_only() {
    let fx = Fixture::new();
    fx.replace(
        RB,
        "uses: postgres.replication, with: {primary: db-east, standby: db-west, max_lag: 10s}",
        "uses: postgres.promote, with: {database: db-west}",
    );
    fx.replace(
        RB,
        "uses: http.check, with: {url: \"http://127.0.0.1:8080/healthz\"}",
        "uses: manual.approve, with: {prompt: ok?}",
    );
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

#[test]
fn preflight_using_an_external_change_plugin_keeps_its_name() {
    let fx = Fixture::new();
    fx.replace(
        "drover.yaml",
        "cmdb: cmdb.yaml\n",
        "plugins:\n  - {name: DnsSwitch, command: [./dns-switch], kind: change}\ncmdb: cmdb.yaml\n",
    );
    fx.replace(
        RB,
        "uses: postgres.replication, with: {primary: db-east, standby: db-west, max_lag: 10s}",
        "uses: ext.DnsSwitch, with: {zone: example.com}",
    );
    let stderr = validate_fails(&fx);
    assert!(stderr.contains("`ext.DnsSwitch` is a change action"), "{stderr}");
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn bad_cron_and_scheduled_failover() {
    let fx = Fixture::new();
    fx.replace(
        "drover.yaml",
        "  - {name: nightly, runbook: failover, cron: \"0 0 3 * * *\", mode: drill}\n",
        concat!(
            "  - {name: nightly, runbook: failover, cron: \"0 3 * * *\", mode: drill}\n",
            "  - {name: hourly, runbook: failover, cron: \"0 0 25 * * *\"}\n",
            "  - {name: weekly, runbook: backups, cron: \"0 0 3 * * Sun\", mode: failover}\n",
        ),
    );
    assert_tmp_snapshot!(fx, validate_fails(&fx));
}

// --- All at once ----------------------------------------------------------------------

#[test]
fn several_errors_in_several_files_at_once() {
    let fx = Fixture::new();
    fx.replace(
        "drover.yaml",
        "{name: east-k8s, site: east}",
        "{name: east-k8s, site: esat}",
    );
    fx.replace("cmdb.yaml", "depends_on: [api]", "depends_on: [api, payments]");
    fx.replace(RB, "uses: postgres.fence", "uses: exec.rnu");
    fx.replace(RB, "replicas: 3}", "}");
    fx.replace("runbooks/backups.yaml", "max_age: 26h", "max_age: 26");
    fx.write("runbooks/broken.yaml", "name: broken\nsteps: [\n");
    let stderr = validate_fails(&fx);
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 6, "{stderr}");
    assert!(stderr.ends_with("6 errors\n"), "{stderr}");
    // Sorted by file, then position.
    let files: Vec<&str> = lines.iter().map(|l| l.split(':').next().unwrap()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    assert_tmp_snapshot!(fx, stderr);
}

#[test]
fn validate_json_lists_every_error() {
    let fx = Fixture::new();
    fx.replace(RB, "uses: postgres.fence", "uses: exec.rnu");
    fx.replace("cmdb.yaml", "depends_on: [api]", "depends_on: [apii]");
    let out = fx.drover().args(["validate", "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["config"], fx.config().display().to_string());
    assert_eq!(v["cmdb"], fx.path("cmdb.yaml").display().to_string());
    let runbooks: Vec<&str> = v["runbooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        runbooks,
        [
            fx.path("runbooks/backups.yaml").display().to_string(),
            fx.path(RB).display().to_string()
        ]
    );
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v:#}");
    for e in errors {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["col", "file", "line", "message"]);
    }
    assert_eq!(errors[0]["file"], fx.path("cmdb.yaml").display().to_string());
    assert_eq!(errors[0]["line"], 4);
    assert_eq!(errors[0]["col"], 65);
    assert_eq!(errors[0]["message"], "unknown CI `apii` (did you mean `api`?)");
    assert_eq!(errors[1]["file"], fx.path(RB).display().to_string());
    assert_eq!(errors[1]["line"], 8);
    assert_eq!(errors[1]["col"], 31);
    assert_eq!(
        errors[1]["message"],
        "unknown action `exec.rnu` (did you mean `exec.run`?)"
    );
}

#[test]
fn validate_json_when_all_is_well() {
    let fx = Fixture::new();
    let out = fx.drover().args(["validate", "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["runbooks"].as_array().unwrap().len(), 2);
}
