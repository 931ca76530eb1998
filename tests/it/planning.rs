//! Planning through the library API: files loaded with `Workspace::load`, validated
//! with every plugin registered, then planned with `drover_engine::plan`. Checks the
//! ordering rule of the product specification (a step runs after its `needs` and after
//! every step bound to a CI its own CI depends on, transitively), the waves, the
//! critical path, the CIs touched and the JSON contract; then the same properties on
//! random graphs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use drover_engine::Plan;
use drover_model::graph::CiGraph;
use drover_model::node::parse_yaml;
use drover_model::{Cmdb, Runbook, from_node};
use proptest::prelude::*;

use crate::support::Fixture;

const CONFIG: &str = "sites: [{name: east}, {name: west}]\ncmdb: cmdb.yaml\nrunbooks: runbooks\n";

/// One step of a test runbook: `exec.run` bound to `ci`, after `needs`.
fn step(id: &str, ci: Option<&str>, needs: &[&str], estimate: Option<&str>) -> String {
    let mut s = format!("  - {{id: {id}, uses: exec.run, with: {{command: [true]}}");
    if let Some(ci) = ci {
        s += &format!(", ci: {ci}");
    }
    if !needs.is_empty() {
        s += &format!(", needs: [{}]", needs.join(", "));
    }
    if let Some(e) = estimate {
        s += &format!(", estimate: {e}");
    }
    s + "}\n"
}

fn runbook(service: &str, steps: &[String]) -> String {
    format!("name: rb\nservice: {service}\nsteps:\n{}", steps.concat())
}

/// A CMDB from `(id, depends_on)` pairs.
fn cmdb(items: &[(&str, &[&str])]) -> String {
    let mut s = String::from("items:\n");
    for (id, deps) in items {
        s += &format!("  - {{id: {id}, kind: x, depends_on: [{}]}}\n", deps.join(", "));
    }
    s
}

/// Writes the files, loads and validates them (no diagnostics allowed) and plans.
#[track_caller]
fn plan_files(cmdb_text: &str, runbook_text: &str) -> (Plan, Runbook, Cmdb) {
    let fx = Fixture::empty();
    fx.write("drover.yaml", CONFIG);
    fx.write("cmdb.yaml", cmdb_text);
    fx.write("runbooks/rb.yaml", runbook_text);
    let ws = fx.load();
    assert!(ws.diagnostics.is_empty(), "{}", ws.render_diagnostics(&ws.diagnostics));
    let rb = ws.runbooks[0].runbook.clone().expect("runbook loaded");
    let cmdb = ws.cmdb.clone().expect("cmdb loaded");
    let plan = drover_engine::plan(&rb, &cmdb, &CiGraph::new(&cmdb)).expect("plan");
    check_invariants(&plan, &rb, &cmdb);
    (plan, rb, cmdb)
}

fn stages(plan: &Plan) -> Vec<Vec<&str>> {
    plan.stages
        .iter()
        .map(|s| s.iter().map(String::as_str).collect())
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The steps each step must wait for under the specification's ordering rule.
fn predecessors(rb: &Runbook, cmdb: &Cmdb) -> Vec<BTreeSet<usize>> {
    let deps: HashMap<&str, Vec<&str>> = cmdb
        .items
        .iter()
        .map(|c| (c.id.as_str(), c.depends_on.iter().map(|d| d.as_str()).collect()))
        .collect();
    let reach = |ci: &str| -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = deps.get(ci).cloned().unwrap_or_default();
        while let Some(c) = stack.pop() {
            if seen.insert(c) {
                stack.extend(deps.get(c).cloned().unwrap_or_default());
            }
        }
        seen
    };
    let index: HashMap<&str, usize> = rb.steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    rb.steps
        .iter()
        .map(|s| {
            let mut p: BTreeSet<usize> = s.needs.iter().map(|n| index[n.as_str()]).collect();
            if let Some(ci) = &s.ci {
                let below = reach(ci);
                for (j, t) in rb.steps.iter().enumerate() {
                    if t.ci.as_ref().is_some_and(|c| below.contains(c.as_str())) {
                        p.insert(j);
                    }
                }
            }
            p
        })
        .collect()
}

/// Whether the ordering relation has a cycle, and otherwise each step's earliest wave
/// and latest finish (steps weigh their `estimate` in seconds, else 1).
fn expected(rb: &Runbook, preds: &[BTreeSet<usize>]) -> Option<(Vec<usize>, Vec<f64>)> {
    let n = rb.steps.len();
    let mut wave = vec![None; n];
    let mut finish = vec![0f64; n];
    for _ in 0..n {
        for i in 0..n {
            if wave[i].is_some() {
                continue;
            }
            if preds[i].iter().all(|&j| wave[j].is_some()) {
                wave[i] = Some(preds[i].iter().map(|&j| wave[j].unwrap() + 1).max().unwrap_or(0));
                let w = rb.steps[i].estimate.map_or(1.0, |d| d.as_secs_f64());
                finish[i] = w + preds[i].iter().map(|&j| finish[j]).fold(0f64, f64::max);
            }
        }
    }
    wave.into_iter().collect::<Option<Vec<usize>>>().map(|w| (w, finish))
}

/// Everything each node reaches through `edges` (which must be acyclic).
fn closure(edges: &[BTreeSet<usize>]) -> Vec<BTreeSet<usize>> {
    (0..edges.len())
        .map(|i| {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<usize> = edges[i].iter().copied().collect();
            while let Some(j) = stack.pop() {
                if seen.insert(j) {
                    stack.extend(edges[j].iter().copied());
                }
            }
            seen
        })
        .collect()
}

/// What must hold of every plan: each step in exactly one wave, at the earliest wave
/// the ordering rule allows; the critical path a chain of that order with the largest
/// total weight; the CIs the service and its transitive dependencies.
#[track_caller]
fn check_invariants(plan: &Plan, rb: &Runbook, cmdb: &Cmdb) {
    let preds = predecessors(rb, cmdb);
    let (wave, finish) = expected(rb, &preds).expect("acyclic");
    let index: HashMap<&str, usize> = rb.steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let mut seen = vec![0; rb.steps.len()];
    for (k, stage) in plan.stages.iter().enumerate() {
        assert!(!stage.is_empty(), "empty wave {k} in {:?}", plan.stages);
        for id in stage {
            let i = index[id.as_str()];
            seen[i] += 1;
            assert_eq!(k, wave[i], "wave of `{id}` in {:?}", plan.stages);
        }
    }
    assert!(seen.iter().all(|&c| c == 1), "{:?}", plan.stages);
    assert_eq!(
        plan.steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        rb.steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>()
    );
    for (s, &w) in plan.steps.iter().zip(&wave) {
        assert_eq!(s.stage, Some(w), "stage of `{}`", s.id);
    }
    // `needs` and `after` (what `plan` shows and draws) imply exactly the order.
    let shown: Vec<BTreeSet<usize>> = plan
        .steps
        .iter()
        .map(|s| s.needs.iter().chain(&s.after).map(|id| index[id.as_str()]).collect())
        .collect();
    assert_eq!(closure(&shown), closure(&preds), "needs + after of {:?}", plan.steps);
    // Critical path.
    if rb.steps.is_empty() {
        assert!(plan.critical_path.is_empty());
    } else {
        let path: Vec<usize> = plan.critical_path.iter().map(|id| index[id.as_str()]).collect();
        assert!(!path.is_empty());
        assert!(
            preds[path[0]].is_empty(),
            "critical path {:?} starts at a step that waits for others",
            plan.critical_path
        );
        for w in path.windows(2) {
            assert!(
                preds[w[1]].contains(&w[0]),
                "critical path {:?}: `{}` does not wait for `{}`",
                plan.critical_path,
                rb.steps[w[1]].id,
                rb.steps[w[0]].id
            );
        }
        let weight = |i: usize| rb.steps[i].estimate.map_or(1.0, |d| d.as_secs_f64());
        let total: f64 = path.iter().map(|&i| weight(i)).sum();
        let longest = finish.iter().copied().fold(0f64, f64::max);
        assert_eq!(total, longest, "critical path {:?}", plan.critical_path);
        let all_estimated = path.iter().all(|&i| rb.steps[i].estimate.is_some());
        assert_eq!(
            plan.critical_path_estimate_s,
            all_estimated.then_some(total),
            "{:?}",
            plan.critical_path
        );
    }
    // CIs: the service first, then everything it depends on, then any other CI a step
    // or check is bound to.
    assert_eq!(plan.cis.first().map(String::as_str), Some(rb.service.as_str()));
    let mut deps: BTreeSet<&str> = BTreeSet::new();
    let mut stack = vec![rb.service.as_str()];
    while let Some(c) = stack.pop() {
        if deps.insert(c)
            && let Some(item) = cmdb.item(c)
        {
            stack.extend(item.depends_on.iter().map(|d| d.as_str()));
        }
    }
    let bound: BTreeSet<&str> = rb
        .all_steps()
        .filter_map(|s| s.ci.as_ref())
        .chain(rb.preflight.iter().chain(&rb.verify).filter_map(|c| c.ci.as_ref()))
        .map(|c| c.as_str())
        .filter(|c| !deps.contains(c))
        .collect();
    let cis: Vec<&str> = strs(&plan.cis);
    let unique: BTreeSet<&str> = cis.iter().copied().collect();
    assert_eq!(cis.len(), unique.len(), "duplicates in {cis:?}");
    assert_eq!(
        cis[..deps.len()].iter().copied().collect::<BTreeSet<_>>(),
        deps,
        "{cis:?}"
    );
    assert_eq!(
        cis[deps.len()..].iter().copied().collect::<BTreeSet<_>>(),
        bound,
        "{cis:?}"
    );
}

#[test]
fn explicit_needs_order_the_steps() {
    let (plan, ..) = plan_files(
        &cmdb(&[("svc", &[])]),
        &runbook(
            "svc",
            &[
                step("c", None, &["b"], None),
                step("a", None, &[], None),
                step("b", None, &["a"], None),
                step("d", None, &[], None),
            ],
        ),
    );
    assert_eq!(stages(&plan), [vec!["a", "d"], vec!["b"], vec!["c"]]);
    assert_eq!(strs(&plan.critical_path), ["a", "b", "c"]);
    assert_eq!(plan.critical_path_estimate_s, None);
    let c = &plan.steps[0];
    assert_eq!((c.id.as_str(), strs(&c.needs)), ("c", vec!["b"]));
    assert!(c.after.is_empty());
}

#[test]
fn cmdb_order_puts_steps_after_those_of_their_dependencies() {
    // web -> app -> {db, cache}; one step per CI, listed top-down, no needs.
    let (plan, ..) = plan_files(
        &cmdb(&[
            ("web", &["app"]),
            ("app", &["db", "cache"]),
            ("db", &[]),
            ("cache", &[]),
        ]),
        &runbook(
            "web",
            &[
                step("switch", Some("web"), &[], None),
                step("start-app", Some("app"), &[], None),
                step("promote", Some("db"), &[], None),
                step("warm", Some("cache"), &[], None),
            ],
        ),
    );
    assert_eq!(
        stages(&plan),
        [vec!["promote", "warm"], vec!["start-app"], vec!["switch"]]
    );
    let by_id: BTreeMap<&str, &drover_engine::PlanStep> = plan.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    // `after` names the nearest steps the CMDB order waits for.
    assert_eq!(strs(&by_id["start-app"].after), ["promote", "warm"]);
    assert_eq!(strs(&by_id["switch"].after), ["start-app"]);
    assert!(by_id["promote"].after.is_empty());
    assert_eq!(plan.critical_path.len(), 3);
    assert_eq!(plan.critical_path[1..], ["start-app", "switch"]);
}

#[test]
fn cmdb_order_is_transitive_through_cis_without_steps() {
    // web -> app -> mid -> db, steps on web and db only.
    let (plan, ..) = plan_files(
        &cmdb(&[("web", &["app"]), ("app", &["mid"]), ("mid", &["db"]), ("db", &[])]),
        &runbook(
            "web",
            &[
                step("switch", Some("web"), &[], None),
                step("promote", Some("db"), &[], None),
            ],
        ),
    );
    assert_eq!(stages(&plan), [vec!["promote"], vec!["switch"]]);
    assert_eq!(strs(&plan.steps[0].after), ["promote"]);
    assert_eq!(strs(&plan.critical_path), ["promote", "switch"]);
}

#[test]
fn steps_of_one_ci_are_not_ordered_among_themselves_by_the_cmdb() {
    let (plan, ..) = plan_files(
        &cmdb(&[("app", &["db"]), ("db", &[])]),
        &runbook(
            "app",
            &[
                step("fence", Some("db"), &[], None),
                step("promote", Some("db"), &["fence"], None),
                step("check", Some("db"), &[], None),
                step("start", Some("app"), &[], None),
            ],
        ),
    );
    assert_eq!(stages(&plan), [vec!["fence", "check"], vec!["promote"], vec!["start"]]);
    // `start` waits for every db step: the last ones at least are named.
    let after = strs(&plan.steps[3].after);
    assert!(after.contains(&"promote") && after.contains(&"check"), "{after:?}");
    assert!(
        after.iter().all(|s| ["fence", "promote", "check"].contains(s)),
        "{after:?}"
    );
}

#[test]
fn independent_steps_share_a_wave() {
    let (plan, ..) = plan_files(
        &cmdb(&[("svc", &[]), ("a", &[]), ("b", &[])]),
        &runbook(
            "svc",
            &[
                step("one", None, &[], None),
                step("two", Some("a"), &[], None),
                step("three", Some("b"), &[], None),
                step("four", Some("svc"), &[], None),
                step("five", None, &[], None),
            ],
        ),
    );
    assert_eq!(stages(&plan), [vec!["one", "two", "three", "four", "five"]]);
    assert_eq!(plan.critical_path.len(), 1);
}

#[test]
fn critical_path_by_step_count() {
    let (plan, ..) = plan_files(
        &cmdb(&[("svc", &[])]),
        &runbook(
            "svc",
            &[
                step("short1", None, &[], None),
                step("short2", None, &["short1"], None),
                step("long1", None, &[], None),
                step("long2", None, &["long1"], None),
                step("long3", None, &["long2"], None),
            ],
        ),
    );
    assert_eq!(strs(&plan.critical_path), ["long1", "long2", "long3"]);
    assert_eq!(plan.critical_path_estimate_s, None);
}

#[test]
fn critical_path_by_estimate() {
    // Three quick steps in a row lose to two slow ones.
    let (plan, ..) = plan_files(
        &cmdb(&[("svc", &[])]),
        &runbook(
            "svc",
            &[
                step("q1", None, &[], Some("1s")),
                step("q2", None, &["q1"], Some("1s")),
                step("q3", None, &["q2"], Some("1s")),
                step("slow", None, &[], Some("10m")),
                step("after-slow", None, &["slow"], Some("30s")),
            ],
        ),
    );
    assert_eq!(strs(&plan.critical_path), ["slow", "after-slow"]);
    assert_eq!(plan.critical_path_estimate_s, Some(630.0));
    // The waves still count steps.
    assert_eq!(
        stages(&plan),
        [vec!["q1", "slow"], vec!["q2", "after-slow"], vec!["q3"]]
    );
}

#[test]
fn critical_path_by_estimate_through_the_cmdb_order() {
    let (plan, ..) = plan_files(
        &cmdb(&[("app", &["db", "cache"]), ("db", &[]), ("cache", &[])]),
        &runbook(
            "app",
            &[
                step("start", Some("app"), &[], Some("20s")),
                step("promote", Some("db"), &[], Some("10s")),
                step("warm", Some("cache"), &[], Some("2m")),
            ],
        ),
    );
    assert_eq!(strs(&plan.critical_path), ["warm", "start"]);
    assert_eq!(plan.critical_path_estimate_s, Some(140.0));
}

#[test]
fn critical_path_estimate_needs_every_step_estimated() {
    let (plan, ..) = plan_files(
        &cmdb(&[("svc", &[])]),
        &runbook(
            "svc",
            &[step("a", None, &[], Some("5m")), step("b", None, &["a"], None)],
        ),
    );
    assert_eq!(strs(&plan.critical_path), ["a", "b"]);
    assert_eq!(plan.critical_path_estimate_s, None);
}

#[test]
fn cis_are_the_service_and_its_transitive_dependencies() {
    let (plan, ..) = plan_files(
        &cmdb(&[
            ("shop", &["api", "dns"]),
            ("api", &["db", "cache"]),
            ("db", &["disk"]),
            ("cache", &[]),
            ("dns", &[]),
            ("disk", &[]),
            ("reporting", &["db"]),
        ]),
        &runbook("shop", &[step("s", Some("db"), &[], None)]),
    );
    // Nearest first; `reporting` depends on db but shop does not depend on it.
    assert_eq!(strs(&plan.cis), ["shop", "api", "dns", "cache", "db", "disk"]);
}

#[test]
fn cis_include_other_cis_that_steps_act_on() {
    let (plan, ..) = plan_files(
        &cmdb(&[("shop", &["db"]), ("db", &[]), ("reporting", &["db"]), ("dns", &[])]),
        &runbook(
            "shop",
            &[
                step("s", Some("db"), &[], None),
                step("r", Some("reporting"), &[], None),
                step("d", Some("dns"), &[], None),
            ],
        ),
    );
    assert_eq!(strs(&plan.cis), ["shop", "db", "reporting", "dns"]);
}

#[test]
fn empty_runbook_plans_to_nothing() {
    let (plan, ..) = plan_files(&cmdb(&[("svc", &[])]), "name: rb\nservice: svc\n");
    assert!(plan.stages.is_empty());
    assert!(plan.critical_path.is_empty());
    assert_eq!(plan.critical_path_estimate_s, None);
    assert_eq!(strs(&plan.cis), ["svc"]);
}

#[test]
fn plan_json_contract() {
    let (plan, ..) = plan_files(
        &cmdb(&[("app", &["db"]), ("db", &[])]),
        &runbook(
            "app",
            &[
                step("promote", Some("db"), &[], None),
                step("start", Some("app"), &[], None),
                step("check", None, &["start"], None),
            ],
        ),
    );
    let v = serde_json::to_value(&plan).unwrap();
    assert_eq!(v["runbook"], "rb");
    assert_eq!(v["service"], "app");
    assert_eq!(v["stages"], serde_json::json!([["promote"], ["start"], ["check"]]));
    assert_eq!(v["critical_path"], serde_json::json!(["promote", "start", "check"]));
    assert_eq!(v["cis"], serde_json::json!(["app", "db"]));
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["id"], "promote");
    assert_eq!(steps[0]["uses"], "exec.run");
    assert_eq!(steps[0]["ci"], "db");
    assert_eq!(steps[0]["needs"], serde_json::json!([]));
    assert_eq!(steps[2]["ci"], serde_json::Value::Null);
    assert_eq!(steps[2]["needs"], serde_json::json!(["start"]));
}

#[test]
fn a_cycle_is_an_error_not_a_panic() {
    // Validation reports cycles; `plan` on an unvalidated runbook must still refuse.
    let cmdb: Cmdb = from_node(&parse_yaml(&cmdb(&[("app", &["db"]), ("db", &[])])).unwrap()).unwrap();
    let rb: Runbook = from_node(
        &parse_yaml(&runbook(
            "app",
            &[
                step("promote", Some("db"), &["start"], None),
                step("start", Some("app"), &[], None),
            ],
        ))
        .unwrap(),
    )
    .unwrap();
    let err = drover_engine::plan(&rb, &cmdb, &CiGraph::new(&cmdb)).unwrap_err();
    assert!(err.contains("cycle"), "{err}");
}

// --- Random graphs ----------------------------------------------------------------------

/// A random layered estate and runbook: CI `i` depends on some CIs `j < i`; each step
/// is bound to a random CI (or none), needs some earlier or later steps and may have an
/// estimate. Some of these have cycles (through `needs` or the CMDB order).
fn arb_case() -> impl Strategy<Value = (String, String)> {
    (2usize..10, 1usize..12).prop_flat_map(|(n_ci, n_steps)| {
        let deps = proptest::collection::vec(proptest::collection::vec(any::<bool>(), n_ci), n_ci);
        let steps = proptest::collection::vec(
            (
                proptest::option::of(0..n_ci),
                proptest::collection::vec(0..n_steps, 0..3),
                proptest::option::of(1u32..100),
            ),
            n_steps,
        );
        (deps, steps).prop_map(move |(deps, steps)| {
            let mut c = String::from("items:\n");
            for (i, row) in deps.iter().enumerate() {
                let d: Vec<String> = (0..i).filter(|&j| row[j]).map(|j| format!("c{j}")).collect();
                c += &format!("  - {{id: c{i}, kind: x, depends_on: [{}]}}\n", d.join(", "));
            }
            let mut r = format!("name: rb\nservice: c{}\nsteps:\n", n_ci - 1);
            for (i, (ci, needs, est)) in steps.iter().enumerate() {
                let mut needs: Vec<String> = needs.iter().filter(|&&j| j != i).map(|j| format!("s{j}")).collect();
                needs.sort();
                needs.dedup();
                r += &format!(
                    "  - {{id: s{i}, uses: exec.run, with: {{command: [true]}}, needs: [{}]",
                    needs.join(", ")
                );
                if let Some(ci) = ci {
                    r += &format!(", ci: c{ci}");
                }
                if let Some(e) = est {
                    r += &format!(", estimate: {e}s");
                }
                r += "}\n";
            }
            (c, r)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// On random graphs, `plan` succeeds exactly when the ordering relation is acyclic,
    /// and its waves, critical path and CIs are then those the relation implies.
    #[test]
    fn plans_follow_the_ordering_rule((cmdb_text, rb_text) in arb_case()) {
        let cmdb: Cmdb = from_node(&parse_yaml(&cmdb_text).unwrap()).unwrap();
        let rb: Runbook = from_node(&parse_yaml(&rb_text).unwrap()).unwrap();
        let preds = predecessors(&rb, &cmdb);
        let result = drover_engine::plan(&rb, &cmdb, &CiGraph::new(&cmdb));
        match expected(&rb, &preds) {
            None => prop_assert!(result.is_err(), "cyclic, yet planned:\n{cmdb_text}\n{rb_text}"),
            Some(_) => {
                let plan = result.map_err(|e| TestCaseError::fail(format!("{e}\n{cmdb_text}\n{rb_text}")))?;
                check_invariants(&plan, &rb, &cmdb);
            }
        }
    }
}
