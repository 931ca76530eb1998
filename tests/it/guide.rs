//! docs/GUIDE.md cannot drift from the product: its file reference names exactly the
//! fields of `drover schema`, it shows every built-in action, and every action example
//! is a runbook step that validates against the example config in `config/`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{drover, repo_root};

fn guide() -> String {
    std::fs::read_to_string(repo_root().join("docs/GUIDE.md")).expect("docs/GUIDE.md")
}

/// The text between `## TITLE` and the next `## ` heading.
fn section<'a>(text: &'a str, title: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section `{title}` in docs/GUIDE.md"));
    let rest = &text[start + title.len() + 5..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// Every field path of a schema: `config.sites[].name`, `cmdb.tiers.NAME.rto`. A secret
/// (`{env}` or `{file}`) counts as one field.
fn paths(root: &Value, node: &Value, path: &str, out: &mut BTreeSet<String>, depth: usize) {
    assert!(depth < 30, "schema too deep at {path}");
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap();
        if name == "SecretRef" {
            return;
        }
        paths(root, &root["$defs"][name], path, out, depth + 1);
        return;
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        for n in node.get(k).and_then(Value::as_array).into_iter().flatten() {
            paths(root, n, path, out, depth + 1);
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (p, v) in props {
            let q = format!("{path}.{p}");
            out.insert(q.clone());
            paths(root, v, &q, out, depth + 1);
        }
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        paths(root, extra, &format!("{path}.NAME"), out, depth + 1);
    }
    if let Some(items) = node.get("items").filter(|v| v.is_object()) {
        paths(root, items, &format!("{path}[]"), out, depth + 1);
    }
}

#[test]
fn guide_file_reference_names_exactly_the_schema_fields() {
    let out = drover().arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut fields = BTreeSet::new();
    for kind in ["config", "cmdb", "runbook"] {
        paths(&schema[kind], &schema[kind], kind, &mut fields, 0);
    }
    assert!(fields.len() > 100, "only {} fields in the schema", fields.len());
    let text = guide();
    let reference = section(&text, "File reference");
    let documented: BTreeSet<String> = reference
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| t.starts_with("config.") || t.starts_with("cmdb.") || t.starts_with("runbook."))
        .filter(|t| !t.ends_with(".yaml"))
        .map(str::to_owned)
        .collect();
    let missing: Vec<_> = fields.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&fields).collect();
    assert!(
        missing.is_empty(),
        "fields of `drover schema` missing from docs/GUIDE.md: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/GUIDE.md documents fields `drover schema` does not have: {unknown:?}"
    );
}

#[test]
fn guide_shows_every_action_and_its_examples_validate() {
    let text = guide();
    let actions = section(&text, "Actions");
    let reg = drover::registry::build(None);
    for kind in reg.kinds() {
        assert!(
            actions.contains(&format!("uses: {kind}\n")),
            "docs/GUIDE.md has no example of `{kind}`"
        );
    }
    // Every example, as the steps of one runbook for the example config.
    let mut steps = String::new();
    for block in actions.split("```yaml\n").skip(1) {
        let block = &block[..block.find("```").expect("an unclosed code block")];
        for line in block.lines() {
            steps.push_str("  ");
            steps.push_str(line);
            steps.push('\n');
        }
    }
    assert!(steps.matches("uses: ").count() >= 20, "{steps}");
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::create_dir_all(dir.path().join("plugins/external")).unwrap();
    for f in [
        "config/drover.yaml",
        "config/cmdb.yaml",
        "plugins/external/disk_free.py",
    ] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    // The example runbooks too: the config's schedules name them.
    for e in std::fs::read_dir(root.join("runbooks")).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join("runbooks").join(e.file_name())).unwrap();
    }
    let runbook =
        format!("name: guide-examples\nservice: payments\nfrom: east\nto: west\nassume_lost: true\nsteps:\n{steps}");
    std::fs::write(dir.path().join("runbooks/guide-examples.yaml"), &runbook).unwrap();
    let out = drover()
        .args(["validate", "--config"])
        .arg(dir.path().join("config/drover.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the guide's action examples do not validate:\n{}{}\n{runbook}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
