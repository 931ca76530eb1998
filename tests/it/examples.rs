//! The repository's own example files: `config/drover.yaml` with its CMDB and every
//! runbook under `runbooks/` must validate, and every runbook must plan in each format.

use std::path::PathBuf;

use crate::support::{drover, repo_root};

fn config() -> PathBuf {
    repo_root().join("config/drover.yaml")
}

/// `(path, name)` of every runbook file under `runbooks/`.
fn runbooks() -> Vec<(PathBuf, String)> {
    let dir = repo_root().join("runbooks");
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read runbooks folder") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                let text = std::fs::read_to_string(&path).unwrap();
                let node = drover_model::node::parse_yaml(&text)
                    .unwrap_or_else(|e| panic!("{}: {}: {}", path.display(), e.loc, e.message));
                let name = match node.get("name").map(|n| &n.value) {
                    Some(drover_model::Node::Str(s)) => s.clone(),
                    other => panic!("{}: no name ({other:?})", path.display()),
                };
                out.push((path, name));
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no runbooks under runbooks/");
    out
}

#[test]
fn example_config_cmdb_and_runbooks_validate() {
    let out = drover().arg("validate").arg("--config").arg(config()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(stdout.contains(&format!("{} runbook", runbooks().len())), "{stdout}");
}

#[test]
fn example_files_validate_in_process() {
    let ws = crate::support::load_workspace(&config());
    assert!(ws.diagnostics.is_empty(), "{}", ws.render_diagnostics(&ws.diagnostics));
    assert!(ws.config.is_some() && ws.cmdb.is_some());
    assert!(ws.runbooks.iter().all(|r| r.runbook.is_some()));
}

#[test]
fn every_example_runbook_plans_in_every_format() {
    for (path, name) in runbooks() {
        for format in ["text", "json", "dot"] {
            let out = drover()
                .arg("--config")
                .arg(config())
                .args(["plan", &name, "--format", format])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "plan {name} --format {format}: {stderr}");
            let stdout = String::from_utf8(out.stdout).unwrap();
            match format {
                "json" => {
                    let v: serde_json::Value =
                        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{name}: invalid JSON: {e}\n{stdout}"));
                    assert_eq!(v["runbook"], name.as_str());
                    for key in ["service", "stages", "critical_path", "steps", "cis"] {
                        assert!(!v[key].is_null(), "{name}: no `{key}`");
                    }
                    // Every step is in exactly one stage.
                    let mut staged: Vec<&str> = v["stages"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|s| s.as_array().unwrap())
                        .map(|s| s.as_str().unwrap())
                        .collect();
                    let mut ids: Vec<&str> = v["steps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s["id"].as_str().unwrap())
                        .collect();
                    staged.sort_unstable();
                    ids.sort_unstable();
                    assert_eq!(staged, ids, "{name}");
                }
                "dot" => {
                    assert!(stdout.starts_with("digraph "), "{name}: {stdout}");
                    assert!(stdout.trim_end().ends_with('}'), "{name}: {stdout}");
                }
                _ => assert!(stdout.starts_with(&format!("Runbook {name} ")), "{name}: {stdout}"),
            }
        }
        // The same runbook given by its path.
        let out = drover()
            .arg("--config")
            .arg(config())
            .arg("plan")
            .arg(&path)
            .args(["--format", "json"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "plan {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
