//! Drill coverage (ISO 22301 exercising at planned intervals): for every CI with a
//! tier, the runbooks that recover it, its last drill and last passing drill from the
//! recorded runs, when the next one is due (`drill_every`) and its status.
//!
//! Every figure comes from the state store: runs (drills and failovers count as
//! exercises; `verify` runs count as backup verification, not as drills), the RTO and
//! RPO achieved in them, and the open corrective actions. [`Coverage::new`] takes the
//! instant to judge at, so that a coverage can be computed as of any date (an audit
//! date; tests use a fixed one).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use drover_model::graph::CiGraph;
use drover_model::{Cmdb, Runbook};
use serde::Serialize;

use crate::actions::{ActionFilter, CorrectiveAction};
use crate::journal::{Phase, StepStatus, rfc3339};
use crate::state::RunState;
use crate::store::{RunRow, Store, StoreError};
use crate::view::Figure;

/// A drill is `due` this long before its due date.
pub const DUE_WINDOW: Duration = Duration::from_secs(14 * 24 * 3600);

/// Every status, from best to worst.
pub const STATUSES: [&str; 6] = ["ok", "due", "overdue", "never", "failing", "uncovered"];

/// One run of a CI's runbooks, as coverage shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRef {
    pub run: String,
    /// When it ended (RFC 3339).
    pub at: String,
    pub outcome: String,
    pub mode: String,
    pub runbook: String,
    /// The RTO and RPO achieved there for this CI, against its target (the run's own
    /// figures when the CI is the run's service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto: Option<Figure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Figure>,
}

/// One CI's line of the coverage: the JSON contract of `drover coverage --format json`.
#[derive(Debug, Clone, Serialize)]
pub struct CoverageItem {
    pub ci: String,
    pub tier: String,
    /// The CI the tier is inherited from; `None`: its own.
    pub tier_from: Option<String>,
    pub kind: String,
    pub owner: Option<String>,
    /// The longest allowed gap between passing drills, e.g. `90d`.
    pub drill_every: Option<String>,
    pub drill_every_s: Option<f64>,
    pub runbooks: Vec<String>,
    pub last_drill: Option<RunRef>,
    pub last_pass: Option<RunRef>,
    /// The last `verify` run (backup verification), which is not a drill.
    pub last_verify: Option<RunRef>,
    pub due_by: Option<String>,
    /// `ok`, `due` (within 14 days), `overdue`, `never`, `failing` or `uncovered`.
    pub status: &'static str,
    /// Open corrective actions about this CI, by id.
    pub open_actions: Vec<String>,
    /// What depends on this CI, transitively (its blast radius), nearest first.
    pub blast_radius: Vec<String>,
    /// Every drill and failover of its runbooks, oldest first (for the timeline).
    pub drills: Vec<RunRef>,
}

impl CoverageItem {
    /// `ok` or `due`: within policy.
    pub fn within_policy(&self) -> bool {
        matches!(self.status, "ok" | "due")
    }
}

/// A tier's summary line: "gold: 4 of 6 services within policy".
#[derive(Debug, Clone, Serialize)]
pub struct TierSummary {
    pub tier: String,
    pub items: usize,
    pub within_policy: usize,
    /// Items per status (every status, zeros included).
    pub counts: BTreeMap<&'static str, usize>,
}

impl TierSummary {
    pub fn line(&self) -> String {
        format!(
            "{}: {} of {} {} within policy",
            self.tier,
            self.within_policy,
            self.items,
            if self.items == 1 { "service" } else { "services" }
        )
    }
}

/// The coverage of the CMDB as of an instant.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// The instant judged at (RFC 3339).
    pub at: String,
    pub items: Vec<CoverageItem>,
    pub tiers: Vec<TierSummary>,
    /// Every open corrective action at that instant.
    pub open_actions: Vec<CorrectiveAction>,
}

/// `90d` for whole days, else the humantime form.
fn days(d: drover_model::Dur) -> String {
    let s = d.0.as_secs();
    if s > 0 && s.is_multiple_of(86_400) && d.0.subsec_nanos() == 0 {
        format!("{}d", s / 86_400)
    } else {
        d.to_string()
    }
}

fn parse(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

/// The RTO and RPO a run achieved for `ci`, against its targets.
fn figures(st: &RunState, ci: &str) -> (Figure, Figure) {
    let view = crate::view::RunView::new(st, false);
    if ci == st.service {
        return (view.rto, view.rpo);
    }
    let c = view.cis.iter().find(|c| c.id == ci);
    let rpo = st
        .plan
        .as_ref()
        .map(|p| {
            p.steps
                .iter()
                .filter(|s| s.ci.as_deref() == Some(ci))
                .filter_map(|s| st.step(Phase::Steps, &s.id))
                .filter(|s| s.status == Some(StepStatus::Ok))
                .filter_map(|s| s.output.as_ref()?.data.get("measurements")?.get("rpo_s")?.as_f64())
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        })
        .unwrap_or_default();
    (
        Figure {
            target_s: c.and_then(|c| c.rto_target_s),
            achieved_s: c.and_then(|c| c.recovered_s),
        },
        Figure {
            target_s: c.and_then(|c| c.rpo_target_s),
            achieved_s: rpo,
        },
    )
}

impl Coverage {
    /// The coverage of `cmdb` by `runbooks` as of `at`, from the runs recorded in
    /// `store` (runs that ended after `at` are left out).
    pub fn new(cmdb: &Cmdb, runbooks: &[Runbook], store: &Store, at: SystemTime) -> Result<Coverage, StoreError> {
        let graph = CiGraph::new(cmdb);
        let at_text = rfc3339(at);
        let rows: Vec<RunRow> = store
            .runs(usize::MAX >> 1)?
            .into_iter()
            .filter(|r| r.state == "finished" && r.outcome.is_some())
            .filter(|r| r.finished_at.as_deref().and_then(parse).is_some_and(|f| f <= at))
            .collect();
        let actions: Vec<CorrectiveAction> = store
            .actions(&ActionFilter::default())?
            .into_iter()
            .filter(|a| a.open_at(&at_text))
            .collect();
        let mut states: HashMap<String, RunState> = HashMap::new();
        let mut state = |id: &str| -> Result<RunState, StoreError> {
            if let Some(s) = states.get(id) {
                return Ok(s.clone());
            }
            let records = crate::journal::load_records(store, id)?;
            let s = RunState::from_records(id, &records);
            states.insert(id.to_owned(), s.clone());
            Ok(s)
        };
        // The runbooks that recover each CI (its service's, or with a step on it), in
        // runbook order, and the runs of each runbook: looked up per CI, not scanned.
        let mut recovered_by: HashMap<&str, Vec<String>> = HashMap::new();
        for rb in runbooks {
            let mut cis: Vec<&str> = std::iter::once(rb.service.as_str())
                .chain(rb.steps.iter().filter_map(|s| s.ci.as_ref().map(|c| c.as_str())))
                .collect();
            cis.sort_unstable();
            cis.dedup();
            for ci in cis {
                recovered_by.entry(ci).or_default().push(rb.name.value.clone());
            }
        }
        let mut runs_of: HashMap<&str, Vec<&RunRow>> = HashMap::new();
        for r in &rows {
            runs_of.entry(r.runbook.as_str()).or_default().push(r);
        }
        let mut items = Vec::new();
        for (ci, tier) in cmdb.effective_tiers(&graph) {
            let id = ci.id.as_str();
            let recovering: Vec<String> = recovered_by.get(id).cloned().unwrap_or_default();
            // Oldest first.
            let mut runs: Vec<&RunRow> = recovering
                .iter()
                .flat_map(|rb| runs_of.get(rb.as_str()).into_iter().flatten().copied())
                .collect();
            runs.sort_by(|a, b| a.finished_at.cmp(&b.finished_at).then(a.id.cmp(&b.id)));
            // A CI whose tier is inherited has no targets of its own in the runs: its
            // tier's (or its own overrides) are what it is judged against.
            let own = cmdb.targets(ci);
            let tier_targets = cmdb.tiers.get(tier.tier);
            let rto_target = own.rto.or(tier_targets.map(|t| t.rto)).map(|d| d.as_secs_f64());
            let rpo_target = own.rpo.or(tier_targets.map(|t| t.rpo)).map(|d| d.as_secs_f64());
            let mut refs = Vec::new();
            for r in &runs {
                let st = state(&r.id)?;
                let (mut rto, mut rpo) = figures(&st, id);
                rto.target_s = rto.target_s.or(rto_target);
                rpo.target_s = rpo.target_s.or(rpo_target);
                refs.push(RunRef {
                    run: r.id.clone(),
                    at: r.finished_at.clone().unwrap_or_default(),
                    outcome: r.outcome.clone().unwrap_or_default(),
                    mode: r.mode.clone(),
                    runbook: r.runbook.clone(),
                    rto: Some(rto),
                    rpo: Some(rpo),
                });
            }
            let (drills, verifies): (Vec<RunRef>, Vec<RunRef>) = refs.into_iter().partition(|r| r.mode != "verify");
            let last_drill = drills.last().cloned();
            let last_pass = drills.iter().rev().find(|r| r.outcome == "passed").cloned();
            let every = cmdb.drill_every(ci, Some(tier.tier));
            let due = last_pass
                .as_ref()
                .and_then(|p| parse(&p.at))
                .zip(every)
                .map(|(t, e)| t + e.0);
            let status = if recovering.is_empty() {
                "uncovered"
            } else if last_drill.is_none() {
                "never"
            } else if last_drill.as_ref().is_some_and(|d| d.outcome != "passed") {
                "failing"
            } else {
                match due {
                    Some(d) if d < at => "overdue",
                    Some(d) if d.duration_since(at).unwrap_or_default() <= DUE_WINDOW => "due",
                    _ => "ok",
                }
            };
            items.push(CoverageItem {
                ci: id.to_owned(),
                tier: tier.tier.to_owned(),
                tier_from: tier.from.map(str::to_owned),
                kind: ci.kind.clone(),
                owner: ci.owner.clone(),
                drill_every: every.map(days),
                drill_every_s: every.map(|e| e.as_secs_f64()),
                runbooks: recovering,
                last_drill,
                last_pass,
                last_verify: verifies.last().cloned(),
                due_by: due.map(rfc3339),
                status,
                open_actions: actions
                    .iter()
                    .filter(|a| a.ci.as_deref() == Some(id))
                    .map(|a| a.id.clone())
                    .collect(),
                blast_radius: graph.dependents(id).into_iter().map(|(d, _)| d.to_owned()).collect(),
                drills,
            });
        }
        let tiers = cmdb
            .tiers
            .keys()
            .map(|t| {
                let of: Vec<&CoverageItem> = items.iter().filter(|i| i.tier == t.value).collect();
                TierSummary {
                    tier: t.value.clone(),
                    items: of.len(),
                    within_policy: of.iter().filter(|i| i.within_policy()).count(),
                    counts: STATUSES
                        .iter()
                        .map(|s| (*s, of.iter().filter(|i| i.status == *s).count()))
                        .collect(),
                }
            })
            .filter(|t| t.items > 0)
            .collect();
        Ok(Coverage {
            at: at_text,
            items,
            tiers,
            open_actions: actions,
        })
    }

    /// The items no runbook recovers: the gaps.
    pub fn gaps(&self) -> impl Iterator<Item = &CoverageItem> {
        self.items.iter().filter(|i| i.status == "uncovered")
    }
}
