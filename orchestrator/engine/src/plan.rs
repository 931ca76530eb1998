//! Planning: the step DAG of a runbook (explicit `needs` plus the order the CMDB
//! implies), cut into waves of steps that may run in parallel, with the critical path
//! and the CIs the run touches.

use petgraph::algo::toposort;
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

use drover_model::graph::{CiGraph, StepGraph, StepNode};
use drover_model::{Cmdb, Runbook, Targets};

/// A runbook's plan, as `drover plan --format json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub runbook: String,
    pub service: String,
    /// Waves of step ids: each wave may run in parallel, after the waves before it.
    pub stages: Vec<Vec<String>>,
    /// The longest chain of steps: by `estimate` where steps have one, else by count.
    pub critical_path: Vec<String>,
    /// The critical path's expected duration, when every step on it has an estimate.
    pub critical_path_estimate_s: Option<f64>,
    pub steps: Vec<PlanStep>,
    /// The service and everything it depends on, transitively.
    pub cis: Vec<String>,
    /// The RTO/RPO targets that apply (runbook, else the service's CMDB entry).
    pub targets: PlanTargets,
    pub preflight: Vec<PlanCheck>,
    pub verify: Vec<PlanCheck>,
    pub rollback: Vec<PlanStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    pub id: String,
    pub uses: String,
    pub ci: Option<String>,
    /// Explicit `needs`.
    pub needs: Vec<String>,
    /// Steps it waits for because of the CMDB order (nearest ones only).
    pub after: Vec<String>,
    /// Its wave (0-based); `None` for rollback steps.
    pub stage: Option<usize>,
    pub estimate_s: Option<f64>,
    pub timeout_s: f64,
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCheck {
    pub name: String,
    pub uses: String,
    pub within_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanTargets {
    pub rto_s: Option<f64>,
    pub rpo_s: Option<f64>,
}

/// The targets of a run: the runbook's, each tightening (never loosening) the CMDB's.
pub fn targets(rb: &Runbook, cmdb: &Cmdb) -> Targets {
    let ci = cmdb.targets_of(&rb.service);
    let own = rb.targets.unwrap_or_default();
    let pick = |a: Option<drover_model::Dur>, b: Option<drover_model::Dur>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Targets {
        rto: pick(own.rto, ci.rto),
        rpo: pick(own.rpo, ci.rpo),
    }
}

/// Plans a validated runbook. `ci_graph` is the CMDB's graph (build it once for many plans).
///
/// # Panics
/// Never on a validated runbook; a cycle (which validation reports) yields an error.
pub fn plan(rb: &Runbook, cmdb: &Cmdb, ci_graph: &CiGraph) -> Result<Plan, String> {
    let sg = StepGraph::new(&rb.steps, Some(ci_graph));
    let order = toposort(&sg.graph, None).map_err(|_| "the steps form a dependency cycle".to_owned())?;
    let n = sg.graph.node_count();
    // Steps without an estimate count as one second when others have one, and as one
    // step each when none has.
    let weight = |i: usize| -> f64 { rb.steps[i].estimate.map_or(1.0, |d| d.as_secs_f64()) };
    // level: steps on the longest chain ending at a node; dist: weighted finish time.
    let mut level = vec![0usize; n];
    let mut dist = vec![0f64; n];
    let mut best_pred: Vec<Option<NodeIndex>> = vec![None; n];
    // frontier[node]: the nearest steps at or before a node; a step's incoming
    // frontier is what it waits for (`after`).
    let mut frontier: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut after_by_node: std::collections::HashMap<usize, Vec<usize>> = std::collections::HashMap::new();
    for &node in &order {
        let mut start_level = 0;
        let mut start = 0f64;
        let mut pred = None;
        let mut near: Vec<usize> = Vec::new();
        for p in sg.graph.neighbors_directed(node, petgraph::Direction::Incoming) {
            let pi = p.index();
            start_level = start_level.max(level[pi]);
            if pred.is_none() || dist[pi] > start {
                start = dist[pi];
                pred = Some(p);
            }
            near.extend_from_slice(&frontier[pi]);
        }
        near.sort_unstable();
        near.dedup();
        let ni = node.index();
        best_pred[ni] = pred;
        match sg.graph[node] {
            StepNode::Step(i) => {
                level[ni] = start_level + 1;
                dist[ni] = start + weight(i);
                frontier[ni] = vec![i];
                after_by_node.insert(ni, near);
            }
            StepNode::Barrier(_) => {
                level[ni] = start_level;
                dist[ni] = start;
                // A CI's own steps run after everything of its dependencies, so when it
                // has steps they alone are its frontier.
                let own: Vec<usize> = sg
                    .graph
                    .neighbors_directed(node, petgraph::Direction::Incoming)
                    .filter_map(|p| match sg.graph[p] {
                        StepNode::Step(i) => Some(i),
                        StepNode::Barrier(_) => None,
                    })
                    .collect();
                frontier[ni] = if own.is_empty() { near } else { own };
            }
        }
    }
    // Waves.
    let mut stages: Vec<Vec<String>> = Vec::new();
    let mut stage_of = vec![0usize; rb.steps.len()];
    for (i, &node) in sg.steps.iter().enumerate() {
        let l = level[node.index()] - 1;
        stage_of[i] = l;
        if stages.len() <= l {
            stages.resize(l + 1, Vec::new());
        }
        stages[l].push(rb.steps[i].id.value.clone());
    }
    // Critical path: back from the step that finishes last.
    let mut critical_path = Vec::new();
    let last = sg.steps.iter().copied().max_by(|a, b| {
        dist[a.index()]
            .total_cmp(&dist[b.index()])
            .then(b.index().cmp(&a.index()))
    });
    let mut cur = last;
    while let Some(node) = cur {
        if let StepNode::Step(i) = sg.graph[node] {
            critical_path.push(rb.steps[i].id.value.clone());
        }
        cur = best_pred[node.index()];
    }
    critical_path.reverse();
    let critical_path_estimate_s = critical_path
        .iter()
        .map(|id| rb.steps.iter().find(|s| s.id.value == *id).and_then(|s| s.estimate))
        .try_fold(0f64, |acc, e| e.map(|d| acc + d.as_secs_f64()))
        .filter(|_| !critical_path.is_empty());
    let plan_step = |s: &drover_model::Step, stage: Option<usize>, after: Vec<String>| PlanStep {
        id: s.id.value.clone(),
        uses: s.uses.value.clone(),
        ci: s.ci.as_ref().map(|c| c.value.clone()),
        needs: s.needs.iter().map(|x| x.value.clone()).collect(),
        after,
        stage,
        estimate_s: s.estimate.map(|d| d.as_secs_f64()),
        timeout_s: s
            .timeout
            .map_or(drover_model::runbook::DEFAULT_TIMEOUT, |d| d.0)
            .as_secs_f64(),
        retries: s.retries.unwrap_or(0),
    };
    let steps = rb
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let node = sg.steps[i].index();
            let explicit: Vec<&str> = s.needs.iter().map(|x| x.as_str()).collect();
            let after = after_by_node
                .get(&node)
                .map(|v| {
                    v.iter()
                        .map(|&j| rb.steps[j].id.value.clone())
                        .filter(|id| !explicit.contains(&id.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            plan_step(s, Some(stage_of[i]), after)
        })
        .collect();
    let rollback = rb.rollback.iter().map(|s| plan_step(s, None, Vec::new())).collect();
    let mut cis = vec![rb.service.value.clone()];
    cis.extend(
        ci_graph
            .dependencies(&rb.service)
            .into_iter()
            .map(|(id, _)| id.to_owned()),
    );
    // Any other CI a step or check is bound to is touched too.
    let bound = rb
        .all_steps()
        .filter_map(|s| s.ci.as_ref())
        .chain(rb.preflight.iter().chain(&rb.verify).filter_map(|c| c.ci.as_ref()));
    let mut seen: std::collections::HashSet<String> = cis.iter().cloned().collect();
    for ci in bound {
        if seen.insert(ci.value.clone()) {
            cis.push(ci.value.clone());
        }
    }
    let t = targets(rb, cmdb);
    let check = |c: &drover_model::Check| PlanCheck {
        name: c.name.value.clone(),
        uses: c.uses.value.clone(),
        within_s: c.within.map(|d| d.as_secs_f64()),
    };
    Ok(Plan {
        runbook: rb.name.value.clone(),
        service: rb.service.value.clone(),
        stages,
        critical_path,
        critical_path_estimate_s,
        steps,
        cis,
        targets: PlanTargets {
            rto_s: t.rto.map(|d| d.as_secs_f64()),
            rpo_s: t.rpo.map(|d| d.as_secs_f64()),
        },
        preflight: rb.preflight.iter().map(check).collect(),
        verify: rb.verify.iter().map(check).collect(),
        rollback,
    })
}
