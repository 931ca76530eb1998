//! `drover report`, `change show`, `trend` and `evidence export|verify`: what every run
//! leaves for continuity managers and auditors.

use std::fmt::Write as _;
use std::path::Path;

use drover_engine::actions::{ActionFilter, CorrectiveAction};
use drover_engine::evidence::{
    Signer, Verification, export_bundle, verify_bundle_pinned, verify_records, verify_records_pinned,
};
use drover_engine::view::RunView;
use drover_engine::{RunState, Store};
use drover_report::{Report, Trend};

use crate::cli::{ChangeCommand, Cli, EvidenceCommand, ReportFormat, TextJson, TrendFormat};
use crate::workspace::load_for_recorded_run;
use crate::{CmdResult, Exit, Failure};

use super::runs::{resolve, state_of};

fn open(cli: &Cli) -> Result<(Store, drover_model::Config), Failure> {
    let loaded = load_for_recorded_run(&cli.config)?;
    let config = loaded.config().clone();
    Ok((super::run::open_store(&config)?, config))
}

/// Writes `text` to `output`, or to stdout.
fn emit(text: &str, output: Option<&Path>) -> Result<(), Failure> {
    match output {
        Some(p) => {
            std::fs::write(p, text)
                .map_err(|e| Failure::Other(anyhow::anyhow!("cannot write {}: {e}", p.display())))?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn check(store: &Store, state: &RunState) -> Result<Verification, Failure> {
    let records = store.records(&state.id).map_err(|e| Failure::Other(e.into()))?;
    Ok(verify_records(&state.id, &records, state.finished.is_some()))
}

/// The corrective actions a run opened or proved fixed.
pub fn actions_of_run(store: &Store, id: &str) -> Result<Vec<CorrectiveAction>, Failure> {
    store
        .actions(&ActionFilter {
            run: Some(id.to_owned()),
            ..Default::default()
        })
        .map_err(|e| Failure::Other(e.into()))
}

/// The report of a run, with the corrective actions it opened or proved fixed.
pub fn build_report(store: &Store, id: &str) -> Result<Report, Failure> {
    let state = state_of(store, id)?;
    let view = RunView::new(&state, drover_engine::is_live(store, id));
    Ok(Report::new(view, &check(store, &state)?).with_actions(actions_of_run(store, id)?))
}

/// The trend of a service's finished runs, with the corrective actions they opened.
pub fn build_trend(store: &Store, service: &str) -> Result<Trend, Failure> {
    let rows = store.runs(10_000).map_err(|e| Failure::Other(e.into()))?;
    let mut views = Vec::new();
    for r in rows.iter().filter(|r| r.service == service && r.state == "finished") {
        let st = state_of(store, &r.id)?;
        let mut v = RunView::new(&st, false);
        v.steps.clear();
        views.push(v);
    }
    let actions = store
        .actions(&ActionFilter::default())
        .map_err(|e| Failure::Other(e.into()))?;
    Ok(Trend::new(service, &views).with_actions(actions))
}

pub fn report(cli: &Cli, run: &str, format: ReportFormat, output: Option<&Path>) -> CmdResult {
    let (store, _) = open(cli)?;
    let id = resolve(&store, run)?;
    let r = build_report(&store, &id)?;
    let text = match format {
        ReportFormat::Md => r.markdown(),
        ReportFormat::Html => r.html(),
        ReportFormat::Junit => r.junit(),
        ReportFormat::Json => serde_json::to_string_pretty(&r.json()).map_err(anyhow::Error::from)? + "\n",
    };
    emit(&text, output)?;
    Ok(Exit::Passed)
}

pub fn change(cli: &Cli, command: &ChangeCommand) -> CmdResult {
    let ChangeCommand::Show { run, format } = command;
    let (store, _) = open(cli)?;
    let id = resolve(&store, run)?;
    let state = state_of(&store, &id)?;
    let Some(mut c) = drover_engine::change::ChangeRecord::from_state(&state) else {
        return Err(Failure::Usage(anyhow::anyhow!("run {id} has no change record")));
    };
    c.add_actions(&id, &actions_of_run(&store, &id)?);
    match format {
        TextJson::Json => super::print_json(&c.servicenow())?,
        TextJson::Text => {
            let mut out = String::new();
            let _ = writeln!(out, "{} ({} change, {})", c.number, c.kind.as_str(), c.state);
            let _ = writeln!(out, "  {}", c.short_description);
            let _ = writeln!(out, "  risk {}, impact {}", c.risk, c.impact);
            let _ = writeln!(
                out,
                "  business service {}; CIs: {}",
                c.business_service,
                c.cis.join(", ")
            );
            let _ = writeln!(out, "  requested by {}", c.requested_by);
            for a in &c.approvals {
                let _ = writeln!(out, "  approved: {} by {} via {}", a.step, a.by, a.via);
            }
            let _ = writeln!(
                out,
                "  planned {} .. {}",
                c.planned_start,
                c.planned_end.as_deref().unwrap_or("?")
            );
            let _ = writeln!(
                out,
                "  actual  {} .. {}",
                c.actual_start,
                c.actual_end.as_deref().unwrap_or("(running)")
            );
            let _ = writeln!(out, "\nJustification:\n  {}", c.justification);
            let _ = writeln!(out, "\nImplementation plan:\n{}", indent(&c.implementation_plan));
            let _ = writeln!(out, "Backout plan:\n{}", indent(&c.backout_plan));
            let _ = writeln!(out, "Test plan:\n{}", indent(&c.test_plan));
            if let Some(code) = c.close_code {
                let _ = writeln!(out, "Closed: {code}\n  {}", c.close_notes.as_deref().unwrap_or(""));
            }
            print!("{out}");
        }
    }
    Ok(Exit::Passed)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

pub fn trend(cli: &Cli, service: &str, format: TrendFormat, output: Option<&Path>) -> CmdResult {
    let loaded = load_for_recorded_run(&cli.config)?;
    let store = super::run::open_store(loaded.config())?;
    let rows = store.runs(10_000).map_err(|e| Failure::Other(e.into()))?;
    // A service is a CI of the CMDB or the service of a recorded run (one since removed
    // from the CMDB still has its history).
    let mut known: Vec<&str> = loaded
        .ws
        .cmdb
        .iter()
        .flat_map(|c| c.items.iter().map(|i| i.id.as_str()))
        .chain(rows.iter().map(|r| r.service.as_str()))
        .collect();
    known.sort_unstable();
    known.dedup();
    if !known.contains(&service) {
        return Err(super::unknown("CI", service, known));
    }
    let t = build_trend(&store, service)?;
    let text = match format {
        TrendFormat::Md => t.markdown(),
        TrendFormat::Html => t.html(),
        TrendFormat::Json => serde_json::to_string_pretty(&t.json()).map_err(anyhow::Error::from)? + "\n",
    };
    emit(&text, output)?;
    Ok(Exit::Passed)
}

/// The keys an evidence check accepts: those given with `--key` (checked here), else
/// the config's `evidence.trusted_keys` (checked when the config was loaded).
fn pins(key: &[String], config: Option<&drover_model::Config>) -> Result<Vec<String>, Failure> {
    if !key.is_empty() {
        for k in key {
            drover_model::config::check_fingerprint(k).map_err(|e| Failure::Usage(anyhow::anyhow!("--key: {e}")))?;
        }
        return Ok(key.to_vec());
    }
    Ok(config
        .map(|c| c.evidence.trusted_keys.iter().map(|k| k.value.clone()).collect())
        .unwrap_or_default())
}

fn print_verification(v: &Verification, format: TextJson, what: &str) -> Result<(), Failure> {
    match format {
        TextJson::Json => super::print_json(&serde_json::json!({
            "intact": v.intact(),
            "run": v.run_id,
            "records": v.records,
            "digest": v.head,
            "signature": v.signature,
            "key_fingerprint": v.fingerprint,
            "seals": v.seals.iter().map(|s| serde_json::json!({
                "record": s.record,
                "key_fingerprint": s.fingerprint,
            })).collect::<Vec<_>>(),
            "pinned": v.pinned(),
            "trusted_keys": v.trusted_keys,
            "key_trusted": v.key_trusted(),
            "first_bad_record": v.problem.as_ref().map(|p| p.record),
            "problem": v.problem.as_ref().map(|p| &p.message),
        }))?,
        TextJson::Text => {
            let color = crate::color::enabled(crate::color::Stream::Stdout);
            match &v.problem {
                None => {
                    let sealed = match v.seals.as_slice() {
                        [] => "(not sealed: the run has not finished)".to_owned(),
                        [one] => one.fingerprint.clone(),
                        many => many
                            .iter()
                            .map(|s| format!("{} (record {})", s.fingerprint, s.record))
                            .collect::<Vec<_>>()
                            .join(", then "),
                    };
                    println!(
                        "{}: {what}: {} records, head {}, sealed by {sealed}",
                        crate::color::paint("intact", crate::color::Tone::Good, color),
                        v.records,
                        v.head.as_deref().unwrap_or("-"),
                    );
                }
                Some(p) => println!(
                    "{}: {what}: first bad record {}: {}",
                    crate::color::paint("TAMPERED", crate::color::Tone::Bad, color),
                    p.record,
                    p.message
                ),
            }
            match v.key_trusted() {
                _ if !v.pinned() => println!(
                    "key: NOT PINNED: no trusted key is configured (evidence.trusted_keys) or given (--key), so this \
                     shows that the records are unchanged since they were sealed, not who sealed them"
                ),
                Some(true) => println!(
                    "key: trusted: every seal is by a pinned key ({})",
                    v.trusted_keys.join(", ")
                ),
                Some(false) => println!(
                    "key: NOT TRUSTED: sealed by {}, which is not pinned (trusted keys: {})",
                    v.seals
                        .iter()
                        .map(|s| s.fingerprint.as_str())
                        .filter(|f| !v.trusted_keys.iter().any(|k| k.eq_ignore_ascii_case(f)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    v.trusted_keys.join(", ")
                ),
                None if v.intact() => {
                    println!(
                        "key: pinned ({}), but the run is not sealed yet",
                        v.trusted_keys.join(", ")
                    )
                }
                None => println!("key: pinned: {}", v.trusted_keys.join(", ")),
            }
        }
    }
    Ok(())
}

pub fn evidence(cli: &Cli, command: &EvidenceCommand) -> CmdResult {
    match command {
        EvidenceCommand::Export { run, output } => {
            let (store, config) = open(cli)?;
            let id = resolve(&store, run)?;
            let state = state_of(&store, &id)?;
            if state.finished.is_none() {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "run {id} has not finished: only sealed runs can be exported"
                )));
            }
            let signer =
                Signer::load_or_create(&config.evidence.signing_key).map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
            let report = build_report(&store, &id)?.json();
            let records = store.records(&id).map_err(|e| Failure::Other(e.into()))?;
            let bundle =
                export_bundle(&id, &records, &report, &signer).map_err(|e| Failure::Other(anyhow::anyhow!(e)))?;
            std::fs::write(output, bundle)
                .map_err(|e| Failure::Other(anyhow::anyhow!("cannot write {}: {e}", output.display())))?;
            eprintln!(
                "wrote {} ({} records, key {})",
                output.display(),
                records.len(),
                signer.fingerprint()
            );
            Ok(Exit::Passed)
        }
        EvidenceCommand::Archive { run, format } => {
            let (store, config) = open(cli)?;
            let id = resolve(&store, run)?;
            if config.evidence.archive.is_none() {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "no evidence archive is configured: set evidence.archive {{object_store, prefix, retention_days}} in {}",
                    cli.config.display()
                )));
            }
            let (archival, state) = super::run::archive_now(cli, &id)?;
            use crate::archive::Archival;
            if let Archival::NotSealed = archival {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "run {id} has not finished: its evidence is archived once it is sealed"
                )));
            }
            match format {
                TextJson::Json => super::print_json(&serde_json::json!({"run": id, "archive": state.archive}))?,
                TextJson::Text => {
                    if let Some(line) = archival.line(&id) {
                        println!("{line}");
                    }
                }
            }
            Ok(match archival {
                Archival::Failed(_) => Exit::Failed,
                _ => Exit::Passed,
            })
        }
        EvidenceCommand::Verify { target, key, format } => {
            let path = Path::new(target);
            let (v, what) = if path.is_file() {
                // Offline, a config is optional: its pins apply when there is one.
                let config = match key.is_empty() && cli.config.is_file() {
                    true => Some(open(cli)?.1),
                    false => None,
                };
                let trusted = pins(key, config.as_ref())?;
                let bytes = std::fs::read(path)
                    .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read {}: {e}", path.display())))?;
                (verify_bundle_pinned(&bytes, &trusted), path.display().to_string())
            } else if target.contains('/') || target.ends_with(".json") {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "no bundle file {} (and it is not a run id)",
                    path.display()
                )));
            } else {
                let (store, config) = open(cli)?;
                let trusted = pins(key, Some(&config))?;
                let id = resolve(&store, target)?;
                let state = state_of(&store, &id)?;
                let records = store.records(&state.id).map_err(|e| Failure::Other(e.into()))?;
                let v = verify_records_pinned(&state.id, &records, state.finished.is_some(), &trusted);
                (v, format!("run {id}"))
            };
            print_verification(&v, *format, &what)?;
            Ok(if v.intact() { Exit::Passed } else { Exit::Failed })
        }
    }
}
