//! Semantic checks across all files: names that must exist, names that must be unique,
//! dependency cycles, and each action's own parameter check. Every problem is reported;
//! nothing stops at the first.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::catalog::{ActionCatalog, ActionClass, ParamCx};
use crate::cmdb::Cmdb;
use crate::config::Config;
use crate::diag::{Diagnostic, Location, did_you_mean, sort_and_dedup};
use crate::graph::{CiGraph, StepGraph};
use crate::load::Workspace;
use crate::node::Located;
use crate::runbook::Runbook;

/// Collects diagnostics for one file.
struct Sink<'a> {
    file: &'a Path,
    out: &'a mut Vec<Diagnostic>,
}

impl Sink<'_> {
    fn err(&mut self, loc: Location, msg: impl Into<String>) {
        self.out.push(Diagnostic::new(self.file, loc, msg));
    }

    /// Reports every name after the first that repeats an earlier one.
    fn unique<'n>(&mut self, what: &str, names: impl IntoIterator<Item = &'n Located<String>>) {
        let mut seen: HashMap<&str, Location> = HashMap::new();
        for n in names {
            if let Some(first) = seen.get(n.as_str()) {
                self.err(
                    n.loc,
                    format!("duplicate {what} `{n}` (first defined at line {})", first.line),
                );
            } else {
                seen.insert(n.as_str(), n.loc);
            }
        }
    }

    /// As [`Sink::known`], for many names (the CMDB's): a hash lookup, not a scan.
    fn known_in(&mut self, what: &str, name: &Located<String>, names: &HashSet<&str>) {
        if !names.contains(name.as_str()) {
            self.known(what, name, names.iter().copied());
        }
    }

    fn known<'c>(&mut self, what: &str, name: &Located<String>, candidates: impl IntoIterator<Item = &'c str> + Clone) {
        if !candidates.clone().into_iter().any(|c| c == name.as_str()) {
            self.err(
                name.loc,
                format!("unknown {what} `{name}`{}", did_you_mean(name, candidates)),
            );
        }
    }
}

impl Workspace {
    /// Runs every semantic check and adds what it finds to `self.diagnostics`.
    pub fn validate(&mut self, catalog: &dyn ActionCatalog) {
        let mut out = Vec::new();
        if let Some(config) = &self.config {
            check_config(config, &self.config_path, &self.runbooks, &mut out);
        }
        let ci_graph = match (&self.cmdb, &self.cmdb_path) {
            (Some(cmdb), Some(path)) => {
                let g = CiGraph::new(cmdb);
                let acyclic = check_cmdb(cmdb, &g, self.config.as_ref(), path, &mut out);
                acyclic.then_some(g)
            }
            _ => None,
        };
        let names = Sink {
            file: Path::new(""),
            out: &mut out,
        };
        // Runbook names are unique across files.
        let mut seen: HashMap<&str, &Path> = HashMap::new();
        let mut dups = Vec::new();
        for rf in &self.runbooks {
            if let Some(rb) = &rf.runbook {
                match seen.get(rb.name.as_str()) {
                    Some(first) => dups.push(Diagnostic::new(
                        &rf.path,
                        rb.name.loc,
                        format!("duplicate runbook name `{}` (also in {})", rb.name, first.display()),
                    )),
                    None => {
                        seen.insert(rb.name.as_str(), &rf.path);
                    }
                }
            }
        }
        names.out.extend(dups);
        if let Some(config) = &self.config {
            for rf in &self.runbooks {
                if let Some(rb) = &rf.runbook {
                    let mut sink = Sink {
                        file: &rf.path,
                        out: &mut out,
                    };
                    check_runbook(rb, config, self.cmdb.as_ref(), ci_graph.as_ref(), catalog, &mut sink);
                }
            }
        }
        self.diagnostics.extend(out);
        sort_and_dedup(&mut self.diagnostics);
        self.ci_graph = ci_graph;
    }
}

fn check_config(c: &Config, path: &Path, runbooks: &[crate::load::RunbookFile], out: &mut Vec<Diagnostic>) {
    let mut s = Sink { file: path, out };
    s.unique("site", c.sites.iter().map(|x| &x.name));
    let sites: Vec<&str> = c.sites.iter().map(|x| x.name.as_str()).collect();
    s.unique("cluster", c.kubernetes.iter().map(|x| &x.name));
    s.unique("object store", c.object_stores.iter().map(|x| &x.name));
    s.unique("database", c.databases.iter().map(|x| &x.name));
    for site in c
        .kubernetes
        .iter()
        .map(|x| &x.site)
        .chain(c.object_stores.iter().map(|x| &x.site))
        .chain(c.databases.iter().map(|x| &x.site))
    {
        s.known("site", site, sites.iter().copied());
    }
    for st in &c.object_stores {
        if !(st.endpoint.starts_with("http://") || st.endpoint.starts_with("https://")) {
            s.err(
                st.endpoint.loc,
                format!("endpoint `{}` must start with http:// or https://", st.endpoint),
            );
        }
        if st.bucket.is_empty() {
            s.err(st.bucket.loc, "bucket must not be empty");
        }
    }
    let url = &c.state.url;
    if !(url.starts_with("sqlite://") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        s.err(
            non_zero(url.loc),
            format!("state url `{url}` must be sqlite://PATH or postgres://..."),
        );
    }
    if let Some(ha) = &c.ha {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            s.err(
                ha.node.loc,
                format!(
                    "ha needs a PostgreSQL state store shared by the nodes (state: {{url: \"postgres://...\"}}); state url is `{url}`"
                ),
            );
        }
        if ha.node.trim().is_empty() {
            s.err(ha.node.loc, "node must not be empty");
        }
        if let Some(site) = &ha.site {
            s.known("site", site, sites.iter().copied());
        }
        let lease = ha.lease.value.0;
        if lease < std::time::Duration::from_secs(1) || lease > std::time::Duration::from_secs(600) {
            s.err(
                non_zero(ha.lease.loc),
                format!(
                    "lease must be between 1s and 10m (it is {}): renewals come every third of it",
                    ha.lease.value
                ),
            );
        }
    }
    for key in &c.evidence.trusted_keys {
        if let Err(e) = crate::config::check_fingerprint(key) {
            s.err(key.loc, e);
        }
    }
    if let Some(archive) = &c.evidence.archive {
        s.known(
            "object store",
            &archive.object_store,
            c.object_stores.iter().map(|x| x.name.as_str()),
        );
        if archive.retention_days.value == 0 {
            s.err(
                archive.retention_days.loc,
                "retention_days must be at least 1: archived evidence is kept under Object Lock",
            );
        }
    }
    if let Some(api) = &c.api {
        if api.listen.parse::<std::net::SocketAddr>().is_err() {
            s.err(
                api.listen.loc,
                format!("listen address `{}` must be HOST:PORT, e.g. 127.0.0.1:7443", api.listen),
            );
        }
        s.unique("token", api.tokens.iter().map(|t| &t.name));
        for t in &api.tokens {
            if t.sha256.len() != 64 || !t.sha256.chars().all(|ch| ch.is_ascii_hexdigit()) {
                s.err(t.sha256.loc, "sha256 must be 64 hex digits (the SHA-256 of the token)");
            }
        }
    }
    if c.engine.max_parallel == 0 {
        s.err(Location::new(1, 1), "engine.max_parallel must be at least 1");
    }
    s.unique("schedule", c.schedules.iter().map(|x| &x.name));
    let runbook_names: Vec<&str> = runbooks
        .iter()
        .filter_map(|r| r.runbook.as_ref())
        .map(|r| r.name.as_str())
        .collect();
    // A runbook file with errors has no name yet: a schedule may well name it.
    let all_runbooks_read = runbooks.iter().all(|r| r.runbook.is_some());
    for sch in &c.schedules {
        if all_runbooks_read {
            s.known("runbook", &sch.runbook, runbook_names.iter().copied());
        }
        if let Err(e) = parse_cron(&sch.cron) {
            s.err(sch.cron.loc, e);
        }
        if sch.mode.value == crate::config::RunMode::Failover {
            s.err(sch.mode.loc, "failovers are never scheduled: use `drill` or `verify`");
        }
        if let Some(tz) = &sch.timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            s.err(
                tz.loc,
                format!(
                    "unknown time zone `{}`: use an IANA name such as `Europe/Berlin` or `UTC`",
                    tz.value
                ),
            );
        }
    }
    s.unique("webhook", c.webhooks.iter().map(|x| &x.name));
    s.unique("plugin", c.plugins.iter().map(|x| &x.name));
    for p in &c.plugins {
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            s.err(p.name.loc, "plugin names use letters, digits, `-` and `_`");
        }
        if p.command.is_empty() {
            s.err(p.command.loc, "command must name an executable");
        }
    }
}

/// Checks a six-field cron expression (seconds first), as the scheduler reads it.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "cron `{expr}` must have six fields, seconds first: `sec min hour day month weekday`, e.g. `0 0 3 * * Sun`"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron `{expr}`: {e}"))
}

/// Returns whether the CMDB is free of cycles.
fn check_cmdb(cmdb: &Cmdb, g: &CiGraph, config: Option<&Config>, path: &Path, out: &mut Vec<Diagnostic>) -> bool {
    let mut s = Sink { file: path, out };
    s.unique("tier", cmdb.tiers.keys());
    s.unique("CI", cmdb.items.iter().map(|c| &c.id));
    let ids: HashSet<&str> = cmdb.items.iter().map(|c| c.id.as_str()).collect();
    let tiers: Vec<&str> = cmdb.tiers.keys().map(|k| k.as_str()).collect();
    for ci in &cmdb.items {
        if let Some(t) = &ci.tier {
            s.known("tier", t, tiers.iter().copied());
        }
        for dep in &ci.depends_on {
            s.known_in("CI", dep, &ids);
        }
        if let Some(config) = config {
            let sites: Vec<&str> = config.sites.iter().map(|x| x.name.as_str()).collect();
            for (site, cluster) in ci.runs_on.iter() {
                s.known("site", site, sites.iter().copied());
                s.known("cluster", cluster, config.kubernetes.iter().map(|k| k.name.as_str()));
            }
            for (site, instance) in ci.instances.iter() {
                s.known("site", site, sites.iter().copied());
                let targets = config
                    .databases
                    .iter()
                    .map(|d| d.name.as_str())
                    .chain(config.object_stores.iter().map(|o| o.name.as_str()));
                s.known("database or object store", instance, targets);
            }
        }
    }
    // The continuity programme's policy: a gap between drills, never zero.
    let zero = |d: &Located<crate::types::Dur>| d.value.0.is_zero();
    for (name, tier) in cmdb.tiers.iter() {
        if let Some(d) = tier.drill_every.as_ref().filter(|d| zero(d)) {
            s.err(
                d.loc,
                format!("tier `{name}`: drill_every must be longer than zero (e.g. `90d`)"),
            );
        }
    }
    let tiered: HashSet<&str> = cmdb
        .effective_tiers(g)
        .into_iter()
        .map(|(ci, _)| ci.id.as_str())
        .collect();
    for ci in &cmdb.items {
        let Some(d) = &ci.drill_every else { continue };
        if zero(d) {
            s.err(
                d.loc,
                format!("CI `{}`: drill_every must be longer than zero (e.g. `90d`)", ci.id),
            );
        } else if !tiered.contains(ci.id.as_str()) && ci.tier.is_none() {
            s.err(
                d.loc,
                format!(
                    "CI `{}` sets drill_every but has no tier, of its own or from a CI that depends on it: \
                     give it a `tier`",
                    ci.id
                ),
            );
        }
    }
    let cycles = g.cycles();
    for cycle in &cycles {
        let first = cmdb.item(cycle.path[0]).map_or(Location::new(1, 1), |c| c.id.loc);
        let mut path: Vec<&str> = cycle.path.clone();
        path.push(cycle.path[0]);
        s.err(
            first,
            format!(
                "dependency cycle in the CMDB: {} (members: {})",
                path.join(" -> "),
                cycle.members.join(", ")
            ),
        );
    }
    cycles.is_empty()
}

fn sorted<'a>(v: &[&'a str]) -> Vec<&'a str> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

fn check_runbook(
    rb: &Runbook,
    config: &Config,
    cmdb: Option<&Cmdb>,
    ci_graph: Option<&CiGraph>,
    catalog: &dyn ActionCatalog,
    s: &mut Sink<'_>,
) {
    let sites: Vec<&str> = config.sites.iter().map(|x| x.name.as_str()).collect();
    for site in [&rb.from, &rb.to].into_iter().flatten() {
        s.known("site", site, sites.iter().copied());
    }
    if let (Some(from), Some(to)) = (&rb.from, &rb.to)
        && from.value == to.value
    {
        s.err(to.loc, format!("`to` is the same site as `from` (`{from}`)"));
    }
    if rb.max_parallel == Some(0) {
        s.err(rb.name.loc, "max_parallel must be at least 1");
    }
    let ci_ids: HashSet<&str> = cmdb
        .map(|c| c.items.iter().map(|i| i.id.as_str()).collect())
        .unwrap_or_default();
    if let Some(cmdb) = cmdb {
        s.known_in("service (a CI of the CMDB)", &rb.service, &ci_ids);
        // A runbook may tighten the service's targets, never loosen them.
        let service = cmdb.targets_of(&rb.service);
        let own = rb.targets.unwrap_or_default();
        for (what, mine, theirs) in [("rto", own.rto, service.rto), ("rpo", own.rpo, service.rpo)] {
            if let (Some(mine), Some(theirs)) = (mine, theirs)
                && mine > theirs
            {
                s.err(
                    rb.service.loc,
                    format!(
                        "targets.{what} {mine} is looser than the {theirs} the CMDB sets for `{}`: \
                         a runbook may only tighten targets",
                        rb.service
                    ),
                );
            }
        }
    }
    s.unique("step id", rb.all_steps().map(|st| &st.id));
    s.unique("preflight check", rb.preflight.iter().map(|c| &c.name));
    s.unique("verify check", rb.verify.iter().map(|c| &c.name));
    let cx = ParamCx {
        config,
        cmdb,
        runbook: rb,
    };
    let names = catalog.names();
    let uses = |s: &mut Sink<'_>, uses: &Located<String>, with, section: &str| match catalog.class(uses) {
        None => {
            let hint = did_you_mean(uses, names.iter().map(String::as_str));
            s.err(uses.loc, format!("unknown action `{uses}`{hint}"));
        }
        Some(class) => {
            if matches!(section, "preflight" | "verify") && class != ActionClass::Check {
                let class = format!("{class:?}").to_lowercase();
                s.err(
                    uses.loc,
                    format!("{section} checks must be read-only, but `{uses}` is a {class} action"),
                );
            }
            for issue in catalog.check_params(uses, with, &cx) {
                s.err(issue.loc, issue.message);
            }
        }
    };
    for c in &rb.preflight {
        uses(s, &c.uses, &c.with, "preflight");
    }
    for c in &rb.verify {
        uses(s, &c.uses, &c.with, "verify");
    }
    for st in &rb.steps {
        uses(s, &st.uses, &st.with, "steps");
    }
    for st in &rb.rollback {
        uses(s, &st.uses, &st.with, "rollback");
    }
    if cmdb.is_some() {
        for ci in rb
            .all_steps()
            .filter_map(|st| st.ci.as_ref())
            .chain(rb.preflight.iter().chain(&rb.verify).filter_map(|c| c.ci.as_ref()))
        {
            s.known_in("CI", ci, &ci_ids);
        }
    }
    // `needs`: steps name steps, rollback steps name rollback steps.
    for (list, other, what) in [
        (&rb.steps, &rb.rollback, "step"),
        (&rb.rollback, &rb.steps, "rollback step"),
    ] {
        let ids: HashSet<&str> = list.iter().map(|x| x.id.as_str()).collect();
        for st in list {
            for need in &st.needs {
                if need.value == st.id.value {
                    s.err(need.loc, format!("step `{}` needs itself", st.id));
                } else if !ids.contains(need.as_str()) {
                    let note = if other.iter().any(|o| o.id.value == need.value) {
                        format!(" (`{need}` is in another section: a {what} can only need a {what})")
                    } else {
                        did_you_mean(need, list.iter().map(|x| x.id.as_str()))
                    };
                    s.err(need.loc, format!("unknown {what} `{need}` in needs{note}"));
                }
            }
        }
    }
    let graph = StepGraph::new(&rb.steps, ci_graph);
    for (cycle, through_cmdb) in graph.cycles() {
        if cycle.members.len() == 1 && !through_cmdb {
            continue; // "needs itself", reported above
        }
        let first = &rb.steps[cycle.path[0]];
        let mut path: Vec<&str> = cycle.path.iter().map(|&i| rb.steps[i].id.as_str()).collect();
        let members: Vec<&str> = cycle.members.iter().map(|&i| rb.steps[i].id.as_str()).collect();
        let members = sorted(&members).join(", ");
        path.push(first.id.as_str());
        let why = if through_cmdb {
            " (partly through the order implied by the CMDB)"
        } else {
            ""
        };
        s.err(
            first.id.loc,
            format!(
                "dependency cycle among steps: {}{why} (members: {members})",
                path.join(" -> ")
            ),
        );
    }
}

fn non_zero(loc: Location) -> Location {
    if loc.line == 0 { Location::new(1, 1) } else { loc }
}
