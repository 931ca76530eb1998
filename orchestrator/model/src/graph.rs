//! Dependency graphs: the CMDB's `depends_on` edges, and the step graph of a runbook
//! (explicit `needs` plus the order the CMDB implies).
//!
//! The CMDB order is encoded with one *barrier* node per CI ("every step of this CI and
//! of everything it depends on is done") so that the step graph stays linear in the
//! size of the estate: a step of CI X waits for the barriers of X's direct
//! dependencies, and a CI's barrier waits for its own steps and its dependencies'
//! barriers. Transitivity through CIs without steps comes for free.

use std::collections::{HashMap, HashSet, VecDeque};

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::cmdb::Cmdb;
use crate::runbook::Step;

/// The CMDB as a graph; an edge `a -> b` means `a` depends on `b`.
#[derive(Debug, Clone)]
pub struct CiGraph {
    graph: DiGraph<usize, ()>,
    index: HashMap<String, NodeIndex>,
    ids: Vec<String>,
}

impl CiGraph {
    /// Builds the graph; unknown `depends_on` targets are left out (validation reports them).
    pub fn new(cmdb: &Cmdb) -> Self {
        let mut graph = DiGraph::with_capacity(cmdb.items.len(), cmdb.items.len() * 2);
        let mut index = HashMap::with_capacity(cmdb.items.len());
        let mut ids = Vec::with_capacity(cmdb.items.len());
        for (i, ci) in cmdb.items.iter().enumerate() {
            if !index.contains_key(ci.id.as_str()) {
                let n = graph.add_node(i);
                index.insert(ci.id.value.clone(), n);
                ids.push(ci.id.value.clone());
            }
        }
        for ci in &cmdb.items {
            let a = index[ci.id.as_str()];
            for dep in &ci.depends_on {
                if let Some(&b) = index.get(dep.as_str()) {
                    graph.add_edge(a, b, ());
                }
            }
        }
        CiGraph { graph, index, ids }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    fn id(&self, n: NodeIndex) -> &str {
        &self.ids[n.index()]
    }

    /// Direct dependencies of `id`.
    pub fn direct_dependencies(&self, id: &str) -> Vec<&str> {
        match self.index.get(id) {
            Some(&n) => self
                .graph
                .neighbors_directed(n, Direction::Outgoing)
                .map(|m| self.id(m))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Everything `id` depends on, transitively, with the distance in edges, nearest first.
    pub fn dependencies(&self, id: &str) -> Vec<(&str, usize)> {
        self.walk(id, Direction::Outgoing)
    }

    /// Everything that depends on `id`, transitively (its blast radius), nearest first.
    pub fn dependents(&self, id: &str) -> Vec<(&str, usize)> {
        self.walk(id, Direction::Incoming)
    }

    fn walk(&self, id: &str, dir: Direction) -> Vec<(&str, usize)> {
        let Some(&start) = self.index.get(id) else {
            return Vec::new();
        };
        let mut seen = HashSet::from([start]);
        let mut queue = VecDeque::from([(start, 0)]);
        let mut out = Vec::new();
        while let Some((n, d)) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = self.graph.neighbors_directed(n, dir).collect();
            next.sort_by(|a, b| self.id(*a).cmp(self.id(*b)));
            for m in next {
                if seen.insert(m) {
                    out.push((self.id(m), d + 1));
                    queue.push_back((m, d + 1));
                }
            }
        }
        out
    }

    /// For every CI, the least `key` among the CIs that depend on it, transitively (not
    /// itself): the least key, then the nearest, then the first id, which is what a
    /// walk of [`CiGraph::dependents`] from every CI would find. One pass over the
    /// graph in dependency order, linear in its size (a walk per CI is quadratic:
    /// minutes for 100,000 CIs). `None` when the graph has a cycle.
    pub fn least_dependent<K: Ord + Clone>(
        &self,
        key: impl Fn(&str) -> Option<K>,
    ) -> Option<Vec<(&str, Least<'_, K>)>> {
        // For an edge `a -> b` (a depends on b), `a` comes first: when a CI is reached,
        // every CI that depends on it has been, and its own least is final.
        let order = petgraph::algo::toposort(&self.graph, None).ok()?;
        let mut least: Vec<Option<Least<'_, K>>> = vec![None; self.ids.len()];
        for n in order {
            let id = self.id(n);
            let own = key(id).map(|key| Least {
                key,
                distance: 0,
                from: id,
            });
            let through = match (own, least[n.index()].clone()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(through) = through else { continue };
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                let candidate = Least {
                    distance: through.distance + 1,
                    ..through.clone()
                };
                let slot = &mut least[m.index()];
                if slot.as_ref().is_none_or(|l| candidate < *l) {
                    *slot = Some(candidate);
                }
            }
        }
        Some(
            self.ids
                .iter()
                .map(String::as_str)
                .zip(least)
                .filter_map(|(id, l)| Some((id, l?)))
                .collect(),
        )
    }

    /// Every group of CIs that depend on each other: one cycle through the group's
    /// first member (in CMDB order), and every member of the group.
    pub fn cycles(&self) -> Vec<Cycle<&str>> {
        let mut out = Vec::new();
        for scc in tarjan_scc(&self.graph) {
            let is_cycle = scc.len() > 1 || self.graph.contains_edge(scc[0], scc[0]);
            if !is_cycle {
                continue;
            }
            let start = *scc.iter().min_by_key(|n| self.graph[**n]).expect("non-empty");
            let members: HashSet<NodeIndex> = scc.iter().copied().collect();
            let path = cycle_through(&self.graph, start, &members);
            let mut members: Vec<&str> = scc.iter().map(|&n| self.id(n)).collect();
            members.sort_unstable();
            out.push(Cycle {
                path: path.into_iter().map(|n| self.id(n)).collect(),
                members,
            });
        }
        out.sort();
        out
    }

    /// Edges as `(from, to)` id pairs (`from` depends on `to`), for export.
    pub fn edges(&self) -> Vec<(&str, &str)> {
        self.graph
            .edge_references()
            .map(|e| (self.id(e.source()), self.id(e.target())))
            .collect()
    }
}

/// What [`CiGraph::least_dependent`] found for a CI; ordered by key, then distance,
/// then id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Least<'g, K> {
    pub key: K,
    /// In edges.
    pub distance: usize,
    /// The CI it was found at.
    pub from: &'g str,
}

/// A group of nodes that depend on each other (a strongly connected component).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cycle<T> {
    /// One shortest cycle from the group's first member back to it, without repeating
    /// the first member at the end.
    pub path: Vec<T>,
    /// Every member of the group, sorted; a group may hold more than one cycle, so
    /// this can be more than `path`.
    pub members: Vec<T>,
}

/// A shortest cycle from `start` back to itself within `members` (BFS), as nodes.
fn cycle_through<N, E>(g: &DiGraph<N, E>, start: NodeIndex, members: &HashSet<NodeIndex>) -> Vec<NodeIndex> {
    if g.contains_edge(start, start) {
        return vec![start];
    }
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for m in g.neighbors(n) {
            if !members.contains(&m) {
                continue;
            }
            if m == start {
                let mut path = vec![n];
                let mut cur = n;
                while cur != start {
                    cur = prev[&cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    vec![start]
}

/// A node of the step graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepNode {
    /// Index into the runbook's `steps`.
    Step(usize),
    /// "All steps of this CI and of its dependencies are done".
    Barrier(NodeIndex),
}

/// Why one node must come after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    Needs,
    Cmdb,
}

/// The runbook's `steps` as a graph; an edge `a -> b` means `b` runs after `a`.
#[derive(Debug, Clone)]
pub struct StepGraph {
    pub graph: DiGraph<StepNode, EdgeKind>,
    /// Node of each step, by index in `steps`.
    pub steps: Vec<NodeIndex>,
}

impl StepGraph {
    /// Builds the graph. Unknown `needs` and CIs are left out (validation reports them);
    /// pass `ci_graph: None` when the CMDB is cyclic, to order by `needs` only.
    pub fn new(steps: &[Step], ci_graph: Option<&CiGraph>) -> Self {
        let mut graph = DiGraph::with_capacity(steps.len(), steps.len() * 2);
        let nodes: Vec<NodeIndex> = (0..steps.len()).map(|i| graph.add_node(StepNode::Step(i))).collect();
        let by_id: HashMap<&str, NodeIndex> = steps.iter().zip(&nodes).map(|(s, n)| (s.id.as_str(), *n)).collect();
        for (s, &n) in steps.iter().zip(&nodes) {
            for need in &s.needs {
                if let Some(&m) = by_id.get(need.as_str()) {
                    graph.add_edge(m, n, EdgeKind::Needs);
                }
            }
        }
        if let Some(cg) = ci_graph {
            // Barriers for every CI reachable from a step's CI.
            let mut barrier: HashMap<NodeIndex, NodeIndex> = HashMap::new();
            let mut stack: Vec<NodeIndex> = steps
                .iter()
                .filter_map(|s| s.ci.as_ref().and_then(|c| cg.index.get(c.as_str()).copied()))
                .collect();
            while let Some(c) = stack.pop() {
                if barrier.contains_key(&c) {
                    continue;
                }
                barrier.insert(c, graph.add_node(StepNode::Barrier(c)));
                stack.extend(cg.graph.neighbors(c));
            }
            for (&c, &b) in &barrier {
                for d in cg.graph.neighbors(c) {
                    graph.add_edge(barrier[&d], b, EdgeKind::Cmdb);
                }
            }
            for (s, &n) in steps.iter().zip(&nodes) {
                let Some(&c) = s.ci.as_ref().and_then(|c| cg.index.get(c.as_str())) else {
                    continue;
                };
                graph.add_edge(n, barrier[&c], EdgeKind::Cmdb);
                for d in cg.graph.neighbors(c) {
                    graph.add_edge(barrier[&d], n, EdgeKind::Cmdb);
                }
            }
        }
        StepGraph { graph, steps: nodes }
    }

    /// Every group of steps that wait for each other, as step indices: one cycle
    /// through the group's first step and every step of the group; and whether that
    /// cycle goes through an order implied by the CMDB.
    pub fn cycles(&self) -> Vec<(Cycle<usize>, bool)> {
        let mut out = Vec::new();
        for scc in tarjan_scc(&self.graph) {
            let is_cycle = scc.len() > 1 || self.graph.contains_edge(scc[0], scc[0]);
            if !is_cycle {
                continue;
            }
            let Some(start) = scc
                .iter()
                .filter_map(|n| match self.graph[*n] {
                    StepNode::Step(i) => Some((i, *n)),
                    StepNode::Barrier(_) => None,
                })
                .min()
                .map(|(_, n)| n)
            else {
                continue;
            };
            let members: HashSet<NodeIndex> = scc.iter().copied().collect();
            let path = cycle_through(&self.graph, start, &members);
            let through_cmdb = path.iter().any(|n| matches!(self.graph[*n], StepNode::Barrier(_)));
            let step_of = |n: &NodeIndex| match self.graph[*n] {
                StepNode::Step(i) => Some(i),
                StepNode::Barrier(_) => None,
            };
            let mut members: Vec<usize> = scc.iter().filter_map(step_of).collect();
            members.sort_unstable();
            let path = path.iter().filter_map(step_of).collect();
            out.push((Cycle { path, members }, through_cmdb));
        }
        out.sort();
        out
    }
}
