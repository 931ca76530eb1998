//! The help text of every command, snapshotted (`tests/it/snapshots/it__help__*.snap`),
//! so that a change of wording, an option or a default shows up in review. The commands
//! are found by walking `drover --help`, so a new subcommand gets a snapshot too (and
//! fails until it is recorded). Re-record with `INSTA_UPDATE=always` after an intended
//! change and review the diff.

use crate::support::drover;

/// The subcommands listed under `Commands:` in a help text (without clap's `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        // A command's line starts with two spaces; a wrapped description with more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

fn help_of(path: &[String]) -> String {
    let out = drover()
        // The width clap wraps at when it sees no terminal, whatever the caller's is.
        .env("COLUMNS", "100")
        .args(path)
        .arg("--help")
        .output()
        .expect("run drover");
    assert_eq!(out.status.code(), Some(0), "drover {path:?} --help");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 help")
}

#[test]
fn every_commands_help_is_snapshotted() {
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = Vec::new();
    while let Some(path) = todo.pop() {
        let help = help_of(&path);
        for sub in subcommands(&help) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
        let name = if path.is_empty() {
            "drover".to_owned()
        } else {
            format!("drover_{}", path.join("_"))
        };
        insta::assert_snapshot!(name.clone(), help, &format!("drover {} --help", path.join(" ")));
        seen.push(name);
    }
    // The walk found the nested commands, not only the top level.
    for nested in [
        "drover_runs_show",
        "drover_evidence_verify",
        "drover_cmdb_graph",
        "drover_change_show",
    ] {
        assert!(seen.iter().any(|s| s == nested), "{nested} not among {seen:?}");
    }
}

#[test]
fn every_format_option_reads_the_same() {
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut with_format = 0;
    while let Some(path) = todo.pop() {
        let help = help_of(&path);
        let subs = subcommands(&help);
        for sub in &subs {
            let mut p = path.clone();
            p.push(sub.clone());
            todo.push(p);
        }
        // `-h` style: one line per option.
        let short = drover().env("COLUMNS", "100").args(&path).arg("-h").output().unwrap();
        let short = String::from_utf8(short.stdout).unwrap();
        let mut lines = short.lines().skip_while(|l| !l.trim_start().starts_with("--format"));
        if let Some(first) = lines.next() {
            // With its wrapped continuation lines.
            let line = std::iter::once(first)
                .chain(lines.take_while(|l| l.starts_with("          ")))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            with_format += 1;
            assert!(
                line.contains("--format <FORMAT>  ") && line.contains("Output format [default: "),
                "drover {}: {line}",
                path.join(" ")
            );
            // Every data format list offers JSON, for programs.
            assert!(line.contains("json"), "drover {}: {line}", path.join(" "));
        }
    }
    assert!(with_format >= 15, "only {with_format} commands take --format");
}
