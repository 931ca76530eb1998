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
    assert!(stderr.contains("unknown runbook `no-such-runbook`"), "{stderr}");
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

// Did you mean: every kind of name given on the command line.

#[test]
fn a_misspelt_runbook_is_suggested_by_every_command_that_takes_one() {
    let fx = Fixture::new();
    for cmd in [&["plan"][..], &["drill", "--yes"], &["failover", "--yes"], &["verify"]] {
        let out = fx.drover().args(cmd).arg("failovr").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{cmd:?}");
        assert!(
            stderr.contains("unknown runbook `failovr`") && stderr.contains("(did you mean `failover`?)"),
            "{cmd:?}: {stderr}"
        );
    }
}

#[test]
fn a_misspelt_action_is_suggested() {
    let fx = Fixture::new();
    fx.replace(
        "runbooks/failover.yaml",
        "uses: postgres.promote",
        "uses: postgres.promtoe",
    );
    let out = fx.drover().args(["plan", "failover"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("unknown action `postgres.promtoe` (did you mean `postgres.promote`?)"),
        "{stderr}"
    );
}

#[test]
fn a_misspelt_ci_is_suggested_by_trend_and_cmdb_impact() {
    let fx = Fixture::new();
    for cmd in [&["trend", "shpo"][..], &["cmdb", "impact", "shpo"]] {
        let out = fx.drover().args(cmd).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{cmd:?}");
        assert!(
            stderr.contains("unknown CI `shpo` (did you mean `shop`?)"),
            "{cmd:?}: {stderr}"
        );
    }
    // A known service without runs yet is no error: an empty trend.
    let out = fx
        .drover()
        .args(["trend", "shop", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["runs"], 0);
}

// Run ids: a unique prefix is enough; an ambiguous one lists the runs; an unknown one
// names the closest id.

const QUICK: &str = r#"name: rb
service: svc
steps:
  - {id: one, ci: db, uses: exec.run, with: {command: ["true"]}}
"#;

/// A fixture with two finished drills, and their ids (oldest first).
fn two_runs() -> (Fixture, [String; 2]) {
    let fx = crate::engine::fixture(QUICK);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (code, run) = crate::engine::drover_json(&fx, &["drill", "rb", "--yes"]);
        assert_eq!(code, 0, "{run:#}");
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    (fx, [ids[0].clone(), ids[1].clone()])
}

/// The shortest prefix of `id` that no other id starts with.
fn unique_prefix(id: &str, other: &str) -> String {
    let common = id.chars().zip(other.chars()).take_while(|(a, b)| a == b).count();
    id[..=common].to_owned()
}

/// Every command that takes a recorded run: its arguments before and after the run id.
const RUN_COMMANDS: [(&[&str], &[&str]); 8] = [
    (&["runs", "show"], &[]),
    (&["report"], &[]),
    (&["change", "show"], &[]),
    (&["evidence", "verify"], &[]),
    (&["evidence", "export"], &["-o", "bundle.json"]),
    (&["resume"], &[]),
    (&["ack"], &["--reason", "test"]),
    (&["runs", "show"], &["--format", "json"]),
];

#[test]
fn a_unique_prefix_of_a_run_id_is_enough() {
    let (fx, [old, new]) = two_runs();
    let prefix = unique_prefix(&new, &old);
    assert!(prefix.len() < new.len());
    for (before, after) in &RUN_COMMANDS[..5] {
        let run = |id: &str| {
            let out = fx.drover().args(*before).arg(id).args(*after).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(0), "{before:?} {id}: {stderr}");
            (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
        };
        // The same as with the whole id.
        assert_eq!(run(&prefix), run(&new), "{before:?} {prefix}");
    }
    let out = fx
        .drover()
        .args(["runs", "show", &prefix, "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(stdout_json(&out)["id"], new.as_str());
}

#[test]
fn an_ambiguous_run_prefix_lists_the_runs_and_exits_2() {
    let (fx, [old, new]) = two_runs();
    let common: String = old
        .chars()
        .zip(new.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    assert!(!common.is_empty());
    for (before, after) in RUN_COMMANDS {
        let out = fx.drover().args(before).arg(&common).args(after).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{before:?} {common}: {stderr}");
        assert!(out.stdout.is_empty(), "{before:?}");
        assert!(
            stderr.contains(&format!("`{common}` matches 2 runs")) && stderr.contains(&old) && stderr.contains(&new),
            "{before:?}: {stderr}"
        );
    }
}

#[test]
fn an_unknown_run_id_names_the_closest_and_exits_2() {
    let (fx, [_, new]) = two_runs();
    // One character of the id's random part changed.
    let mut typo: Vec<char> = new.chars().collect();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == '0' { '1' } else { '0' };
    let typo: String = typo.into_iter().collect();
    for (before, after) in RUN_COMMANDS {
        let out = fx.drover().args(before).arg(&typo).args(after).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{before:?} {typo}: {stderr}");
        assert!(
            stderr.contains(&format!("unknown run `{typo}`")) && stderr.contains(&format!("(did you mean `{new}`?)")),
            "{before:?}: {stderr}"
        );
    }
    // A mistyped prefix too: compared with the ids' beginnings.
    let short = format!("{}x", &new[..new.len() - 6]);
    let out = fx.drover().args(["runs", "show", &short]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("(did you mean `{new}`?)")), "{stderr}");
    // Nothing like it: no suggestion, a pointer to the list.
    let out = fx.drover().args(["runs", "show", "19990101"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains("did you mean") && stderr.contains("drover runs list"),
        "{stderr}"
    );
}

// Colour: only on a terminal, never with NO_COLOR.

const ESC: u8 = 0x1b;

fn has_esc(bytes: &[u8]) -> bool {
    bytes.contains(&ESC)
}

/// `drover ARGS` in the fixture with `env` set (and `NO_COLOR` only when given):
/// stdout and stderr.
fn colour_run(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> (Vec<u8>, Vec<u8>) {
    let mut cmd = fx.drover();
    cmd.env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .env("TERM", "xterm-256color");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().unwrap();
    (out.stdout, out.stderr)
}

#[test]
fn output_that_is_not_a_terminal_has_no_escape_bytes() {
    let (fx, [_, id]) = two_runs();
    let cases: [&[&str]; 5] = [
        &["-v", "drill", "rb", "--yes"],
        &["runs", "show", &id],
        &["evidence", "verify", &id],
        &["runs", "show", "nope"],
        &["frobnicate"],
    ];
    for args in cases {
        for env in [
            &[][..],
            &[("NO_COLOR", "1")],
            &[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")],
        ] {
            let (out, err) = colour_run(&fx, args, env);
            assert!(!out.is_empty() || !err.is_empty(), "{args:?}: no output");
            assert!(
                !has_esc(&out),
                "{args:?} {env:?}: ESC on stdout: {:?}",
                String::from_utf8_lossy(&out)
            );
            assert!(
                !has_esc(&err),
                "{args:?} {env:?}: ESC on stderr: {:?}",
                String::from_utf8_lossy(&err)
            );
        }
        // Forced, there is colour: so the checks above can see it.
        let (out, err) = colour_run(&fx, args, &[("CLICOLOR_FORCE", "1")]);
        assert!(
            has_esc(&out) || has_esc(&err),
            "{args:?}: CLICOLOR_FORCE gave no colour"
        );
    }
}

/// Runs `drover ARGS` under a pseudo-terminal (stdin, stdout and stderr), with `env`:
/// everything it wrote.
fn under_a_terminal(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let script = r#"
import os, pty, select, subprocess, sys
master, slave = pty.openpty()
p = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=slave, stderr=slave, close_fds=True)
os.close(slave)
seen = b""
while True:
    r, _, _ = select.select([master], [], [], 0.05)
    if r:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    elif p.poll() is not None:
        break
p.wait()
sys.stdout.buffer.write(seen)
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.current_dir(fx.root())
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .env_remove("DROVER_CONFIG")
        .env_remove("RUST_LOG")
        .env("TERM", "xterm-256color");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .arg("-c")
        .arg(script)
        .arg(crate::support::drover_bin())
        .arg("--config")
        .arg(fx.config())
        .args(args)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn no_color_on_a_terminal_means_no_escape_bytes() {
    let fx = crate::engine::fixture(QUICK);
    let plain = under_a_terminal(&fx, &["drill", "rb", "--yes"], &[("NO_COLOR", "1")]);
    let text = String::from_utf8_lossy(&plain);
    assert!(text.contains("PASSED"), "{text}");
    assert!(!has_esc(&plain), "ESC under NO_COLOR: {text:?}");
    // On a terminal without NO_COLOR, there is colour (and the live display).
    let coloured = under_a_terminal(&fx, &["drill", "rb", "--yes"], &[]);
    assert!(has_esc(&coloured), "{:?}", String::from_utf8_lossy(&coloured));
}

#[test]
fn a_reader_that_goes_away_ends_a_printing_command_quietly() {
    use std::io::Read;
    // A plan far larger than a pipe's buffer, read one byte of.
    let steps: String = (0..3000)
        .map(|i| format!("  - {{id: s{i}, uses: exec.run, with: {{command: [\"true\"]}}}}\n"))
        .collect();
    let fx = crate::engine::fixture(&format!("name: rb\nservice: svc\nsteps:\n{steps}"));
    let mut child = std::process::Command::new(crate::support::drover_bin())
        .current_dir(fx.root())
        .arg("--config")
        .arg(fx.config())
        .args(["plan", "rb", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    out.read_exact(&mut one).unwrap();
    drop(out);
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(done.status.code(), Some(141), "{stderr}");
}
