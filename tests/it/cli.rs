//! The command line of the real `drover` binary: help, schema, usage errors, exit codes,
//! `plan` output and the CMDB queries, on the small fixture workspace.

use crate::support::{Fixture, drover};

fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn help_lists_the_commands() {
    let out = drover().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Usage: drover"), "{text}");
    for cmd in ["validate", "plan", "cmdb", "schema", "completions", "man"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(cmd)),
            "`{cmd}` missing from:\n{text}"
        );
    }
    assert!(text.contains("--config"), "{text}");
}

#[test]
fn plan_help_describes_its_arguments() {
    let out = drover().args(["plan", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Usage: drover plan"), "{text}");
    assert!(text.contains("<RUNBOOK>"), "{text}");
    assert!(text.contains("--format"), "{text}");
    for f in ["text", "json", "dot"] {
        assert!(text.contains(f), "{text}");
    }
}

#[test]
fn version_is_printed() {
    let out = drover().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("drover "));
}

#[test]
fn schema_prints_all_three_schemas() {
    let out = drover().arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = stdout_json(&out);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["cmdb", "config", "runbook"]);
    for k in keys {
        assert_eq!(v[k]["type"], "object", "{k}");
    }
}

#[test]
fn schema_runbook_is_a_json_schema_object() {
    let out = drover().args(["schema", "runbook"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = stdout_json(&out);
    assert!(
        v["$schema"].as_str().is_some_and(|s| s.contains("json-schema.org")),
        "{v:#}"
    );
    assert_eq!(v["type"], "object");
    assert_eq!(v["additionalProperties"], false, "unknown fields are rejected");
    let props = v["properties"].as_object().unwrap();
    for p in ["name", "service", "preflight", "steps", "verify", "rollback"] {
        assert!(props.contains_key(p), "no `{p}` in {props:?}");
    }
    let required: Vec<&str> = v["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(required.contains(&"name") && required.contains(&"service"));
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = drover().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("frobnicate"), "{stderr}");
}

#[test]
fn bad_option_value_is_a_usage_error() {
    let fx = Fixture::new();
    let out = fx
        .drover()
        .args(["plan", "failover", "--format", "yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_of_an_unknown_runbook_names_it() {
    let fx = Fixture::new();
    let out = fx.drover().args(["plan", "no-such-runbook"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("`no-such-runbook`"), "{stderr}");
    assert!(stderr.contains("known: backups, failover"), "{stderr}");
}

#[test]
fn plan_of_a_misspelt_runbook_suggests_the_name() {
    let fx = Fixture::new();
    let out = fx.drover().args(["plan", "failovr"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("did you mean `failover`?"), "{stderr}");
}

#[test]
fn plan_of_a_missing_runbook_file_exits_2() {
    let fx = Fixture::new();
    let out = fx.drover().args(["plan", "runbooks/nope.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("nope.yaml"), "{stderr}");
}

#[test]
fn plan_text() {
    let fx = Fixture::new();
    let out = fx.drover().args(["plan", "failover"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_tmp_snapshot!(fx, String::from_utf8(out.stdout).unwrap());
}

#[test]
fn plan_dot() {
    let fx = Fixture::new();
    let out = fx
        .drover()
        .args(["plan", "failover", "--format", "dot"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_tmp_snapshot!(fx, String::from_utf8(out.stdout).unwrap());
}

#[test]
fn plan_json_has_the_contract_keys() {
    let fx = Fixture::new();
    let out = fx
        .drover()
        .args(["plan", "failover", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = stdout_json(&out);
    assert_eq!(v["runbook"], "failover");
    assert_eq!(v["service"], "shop");
    assert_eq!(v["stages"], serde_json::json!([["fence"], ["promote"], ["scale"]]));
    assert_eq!(v["critical_path"], serde_json::json!(["fence", "promote", "scale"]));
    assert_eq!(v["cis"], serde_json::json!(["shop", "api", "cache", "db"]));
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for s in steps {
        for k in ["id", "uses", "ci", "needs"] {
            assert!(s.get(k).is_some(), "no `{k}` in {s}");
        }
    }
    assert_eq!(steps[1]["id"], "promote");
    assert_eq!(steps[1]["uses"], "postgres.promote");
    assert_eq!(steps[1]["ci"], "db");
    assert_eq!(steps[1]["needs"], serde_json::json!(["fence"]));
    // Rollback steps are listed, not staged.
    assert_eq!(v["rollback"][0]["id"], "scale-back");
}

#[test]
fn plan_by_path_and_config_after_the_subcommand() {
    let fx = Fixture::new();
    let out = drover()
        .current_dir(fx.root())
        .args(["plan", "runbooks/backups.yaml", "--format", "json", "--config"])
        .arg(fx.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["runbook"], "backups");
}

#[test]
fn config_from_the_environment() {
    let fx = Fixture::new();
    let out = drover()
        .current_dir(std::env::temp_dir())
        .env("DROVER_CONFIG", fx.config())
        .args(["plan", "backups", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn plan_of_a_broken_runbook_prints_its_diagnostics() {
    let fx = Fixture::new();
    fx.replace("runbooks/failover.yaml", "uses: postgres.fence", "uses: exec.rnu");
    let out = fx.drover().args(["plan", "failover"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_tmp_snapshot!(fx, stderr);
    // The other runbook is unaffected.
    let out = fx.drover().args(["plan", "backups"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn cmdb_impact_lists_dependents_transitively() {
    let fx = Fixture::new();
    let out = fx
        .drover()
        .args(["cmdb", "impact", "db", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v = stdout_json(&out);
    assert_eq!(v["ci"], "db");
    let impacted: Vec<(&str, u64)> = v["impacted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["depth"].as_u64().unwrap()))
        .collect();
    assert_eq!(impacted, [("api", 1), ("shop", 2)]);
    let shop = &v["impacted"][1];
    assert_eq!(shop["tier"], "gold");
    assert_eq!(shop["rto_s"], 900.0);
    assert_eq!(shop["rpo_s"], 60.0);
}

#[test]
fn cmdb_impact_of_a_leaf_service() {
    let fx = Fixture::new();
    let out = fx.drover().args(["cmdb", "impact", "shop"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "Nothing depends on shop.\n");
}

#[test]
fn cmdb_impact_text() {
    let fx = Fixture::new();
    let out = fx.drover().args(["cmdb", "impact", "cache"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_tmp_snapshot!(fx, String::from_utf8(out.stdout).unwrap());
}

#[test]
fn cmdb_impact_of_an_unknown_ci_exits_2() {
    let fx = Fixture::new();
    let out = fx
        .drover()
        .args(["cmdb", "impact", "dbb", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unknown CI `dbb`"), "{stderr}");
    assert!(stderr.contains("did you mean `db`?"), "{stderr}");
}

#[test]
fn cmdb_graph_json_and_dot() {
    let fx = Fixture::new();
    let out = fx
        .drover()
        .args(["cmdb", "graph", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = stdout_json(&out);
    let nodes: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["shop", "api", "cache", "db"]);
    let mut edges: Vec<(&str, &str)> = v["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    edges.sort_unstable();
    assert_eq!(edges, [("api", "cache"), ("api", "db"), ("shop", "api")]);

    let out = fx.drover().args(["cmdb", "graph", "--format", "dot"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(dot.starts_with("digraph cmdb {"), "{dot}");
    assert!(dot.contains("\"shop\" -> \"api\";"), "{dot}");
}

#[test]
fn cmdb_commands_refuse_a_broken_cmdb() {
    let fx = Fixture::new();
    fx.replace("cmdb.yaml", "depends_on: [api]", "depends_on: [apii]");
    let out = fx.drover().args(["cmdb", "impact", "db"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cmdb.yaml:4:"), "{stderr}");
}

#[test]
fn missing_config_file_exits_2() {
    let fx = Fixture::empty();
    let out = fx.drover().arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("drover.yaml:1:1: error: cannot read"), "{stderr}");
}

#[test]
fn completions_and_man_page() {
    let out = drover().args(["completions", "bash"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("drover"));
    let out = drover().arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains(".TH drover"));
}
