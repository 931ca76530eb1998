//! `cmdb.yaml`: tiers and configuration items with their dependency edges.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::node::Located;
use crate::types::{Dur, LocMap};

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cmdb {
    /// Named RTO/RPO targets.
    #[serde(default)]
    pub tiers: LocMap<Tier>,
    #[serde(default)]
    pub items: Vec<Ci>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub rto: Dur,
    pub rpo: Dur,
    /// The longest allowed gap between passing drills of a CI of this tier (`90d`):
    /// `drover coverage` shows when the next one is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_every: Option<Located<Dur>>,
}

/// A configuration item.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ci {
    pub id: Located<String>,
    /// Free-form: business_service, application, database, cache, queue, bucket, cluster...
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub tier: Option<Located<String>>,
    /// Overrides the tier's RTO.
    #[serde(default)]
    pub rto: Option<Dur>,
    /// Overrides the tier's RPO.
    #[serde(default)]
    pub rpo: Option<Dur>,
    /// Overrides the tier's `drill_every` (the longest allowed gap between passing drills).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_every: Option<Located<Dur>>,
    /// CIs this one needs to work.
    #[serde(default)]
    pub depends_on: Vec<Located<String>>,
    /// Site -> Kubernetes cluster where it runs.
    #[serde(default)]
    pub runs_on: LocMap<Located<String>>,
    /// Site -> database or object store holding it.
    #[serde(default)]
    pub instances: LocMap<Located<String>>,
}

/// RTO and RPO targets, each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default)]
    pub rto: Option<Dur>,
    #[serde(default)]
    pub rpo: Option<Dur>,
}

/// A CI's tier as the continuity programme sees it: its own, or inherited from the CIs
/// that depend on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveTier<'a> {
    pub tier: &'a str,
    /// The CI it is inherited from (the nearest, strictest one); `None`: its own.
    pub from: Option<&'a str>,
}

impl Cmdb {
    /// Every CI that has a tier, directly or inherited: a CI without a tier of its own
    /// takes the strictest tier (shortest `drill_every`, then RTO, then RPO, then CMDB
    /// order) among the tiered CIs that depend on it, transitively (typically a business
    /// service). Unknown tiers are left out (validation reports them).
    pub fn effective_tiers<'a>(&'a self, graph: &crate::graph::CiGraph) -> Vec<(&'a Ci, EffectiveTier<'a>)> {
        let rank = |name: &str| {
            let pos = self.tiers.keys().position(|k| k.value == name).unwrap_or(usize::MAX);
            let t = self.tiers.get(name);
            (
                t.and_then(|t| t.drill_every.map(|d| d.value))
                    .unwrap_or(Dur(std::time::Duration::MAX)),
                t.map(|t| t.rto),
                t.map(|t| t.rpo),
                pos,
            )
        };
        let known = |t: &str| self.tiers.get(t).is_some();
        // The first CI of each id (the graph's; validation reports duplicates).
        let by_id = self.by_id();
        let own_tier = |id: &str| {
            let ci = by_id.get(id)?;
            let t = ci.tier.as_ref().filter(|t| known(t))?;
            Some((rank(t), t.as_str()))
        };
        // The strictest tiered CI depending on each CI, nearest first on a tie.
        let inherited: HashMap<&str, (&str, &str)> = match graph.least_dependent(own_tier) {
            Some(least) => least
                .into_iter()
                .filter_map(|(id, l)| Some((id, (l.key.1, by_id.get(l.from)?.id.as_str()))))
                .collect(),
            // A cyclic CMDB (validation reports the cycle): one walk per CI.
            None => self
                .items
                .iter()
                .filter_map(|ci| {
                    let best = graph
                        .dependents(&ci.id)
                        .into_iter()
                        .filter_map(|(id, dist)| own_tier(id).map(|(r, t)| (r, dist, id, t)))
                        .min()?;
                    Some((ci.id.as_str(), (best.3, by_id.get(best.2)?.id.as_str())))
                })
                .collect(),
        };
        let mut out = Vec::new();
        for ci in &self.items {
            if let Some(t) = ci.tier.as_ref().filter(|t| known(t)) {
                out.push((
                    ci,
                    EffectiveTier {
                        tier: t.as_str(),
                        from: None,
                    },
                ));
            } else if let Some(&(tier, from)) = inherited.get(ci.id.as_str()) {
                out.push((ci, EffectiveTier { tier, from: Some(from) }));
            }
        }
        out
    }

    /// The longest allowed gap between passing drills of a CI: its own `drill_every`,
    /// else its (effective) tier's.
    pub fn drill_every(&self, ci: &Ci, tier: Option<&str>) -> Option<Dur> {
        ci.drill_every.map(|d| d.value).or_else(|| {
            tier.and_then(|t| self.tiers.get(t))
                .and_then(|t| t.drill_every.map(|d| d.value))
        })
    }

    /// The CI `id` (the first, if the CMDB repeats it): a scan; for many lookups,
    /// [`Cmdb::by_id`].
    pub fn item(&self, id: &str) -> Option<&Ci> {
        self.items.iter().find(|c| c.id.value == id)
    }

    /// Every CI by id (the first of a repeated id, as [`Cmdb::item`] finds it).
    pub fn by_id(&self) -> HashMap<&str, &Ci> {
        let mut by_id = HashMap::with_capacity(self.items.len());
        for ci in &self.items {
            by_id.entry(ci.id.as_str()).or_insert(ci);
        }
        by_id
    }

    /// A CI's targets: its own, else its tier's.
    pub fn targets_of(&self, id: &str) -> Targets {
        self.item(id).map(|ci| self.targets(ci)).unwrap_or_default()
    }

    /// The targets of `ci`: its own, else its tier's.
    pub fn targets(&self, ci: &Ci) -> Targets {
        let tier = ci.tier.as_ref().and_then(|t| self.tiers.get(t));
        Targets {
            rto: ci.rto.or(tier.map(|t| t.rto)),
            rpo: ci.rpo.or(tier.map(|t| t.rpo)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::CiGraph;

    fn cmdb(yaml: &str) -> Cmdb {
        let node = crate::node::parse_yaml(yaml).expect("parses");
        crate::de::from_node(&node).expect("a CMDB")
    }

    #[test]
    fn a_ci_without_a_tier_inherits_the_strictest_of_its_dependents() {
        let c = cmdb(
            "tiers:\n  bronze: {rto: 24h, rpo: 24h, drill_every: 365d}\n  gold: {rto: 15m, rpo: 1m, drill_every: 90d}\n\
             items:\n  - {id: report, kind: business_service, tier: bronze, depends_on: [db]}\n\
             \x20 - {id: shop, kind: business_service, tier: gold, depends_on: [api]}\n\
             \x20 - {id: api, kind: application, depends_on: [db]}\n\
             \x20 - {id: db, kind: database, drill_every: 30d}\n\
             \x20 - {id: lonely, kind: cache}\n",
        );
        let g = CiGraph::new(&c);
        let tiers = effective(&c, &g);
        assert_eq!(
            tiers,
            [
                ("report", "bronze", None),
                ("shop", "gold", None),
                ("api", "gold", Some("shop")),
                // Two tiered CIs depend on db: the stricter (gold) wins over the nearer.
                ("db", "gold", Some("shop")),
            ]
        );
        let db = c.item("db").unwrap();
        let days = |n: u64| Some(Dur(std::time::Duration::from_secs(n * 86_400)));
        assert_eq!(c.drill_every(db, Some("gold")), days(30), "its own");
        let api = c.item("api").unwrap();
        assert_eq!(c.drill_every(api, Some("gold")), days(90), "its tier's");
        assert_eq!(c.drill_every(api, None), None);
    }

    /// `(CI, tier, inherited from)` of every tiered CI.
    fn effective<'a>(c: &'a Cmdb, g: &CiGraph) -> Vec<(&'a str, &'a str, Option<&'a str>)> {
        c.effective_tiers(g)
            .into_iter()
            .map(|(ci, t)| (ci.id.as_str(), t.tier, t.from))
            .collect()
    }

    /// The reference: one walk of the dependents per CI, as `effective_tiers` did it
    /// before the one-pass version.
    fn by_walks<'a>(c: &'a Cmdb, g: &CiGraph) -> Vec<(&'a str, &'a str, Option<&'a str>)> {
        let rank = |t: &str| {
            let tier = &c.tiers.get(t).unwrap();
            let every = tier
                .drill_every
                .map(|d| d.value)
                .unwrap_or(Dur(std::time::Duration::MAX));
            let pos = c.tiers.keys().position(|k| k.value == t).unwrap();
            (every, tier.rto, tier.rpo, pos)
        };
        let mut out = Vec::new();
        for ci in &c.items {
            if let Some(t) = &ci.tier {
                out.push((ci.id.as_str(), t.as_str(), None));
                continue;
            }
            let best = g
                .dependents(&ci.id)
                .into_iter()
                .filter_map(|(id, dist)| {
                    let dep = c.item(id)?;
                    let t = dep.tier.as_ref()?;
                    Some((rank(t), dist, dep.id.as_str(), t.as_str()))
                })
                .min();
            if let Some((_, _, from, tier)) = best {
                out.push((ci.id.as_str(), tier, Some(from)));
            }
        }
        out
    }

    #[test]
    fn inherited_tiers_in_one_pass_agree_with_a_walk_per_ci() {
        // splitmix64, seeded: random layered CMDBs, some CIs tiered.
        let mut seed = 0x7e57_u64;
        let mut next = move |n: usize| {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % n as u64) as usize
        };
        let tiers = ["gold", "silver", "bronze", "lead"];
        for round in 0..200 {
            let n = 2 + next(40);
            let mut yaml = String::from(
                "tiers:\n  gold: {rto: 15m, rpo: 1m, drill_every: 90d}\n  silver: {rto: 4h, rpo: 1h, drill_every: 90d}\n\
                 \x20 bronze: {rto: 4h, rpo: 1h, drill_every: 180d}\n  lead: {rto: 15m, rpo: 1m}\nitems:\n",
            );
            for i in 0..n {
                let deps: Vec<String> = (0..next(4))
                    .filter(|_| i > 0)
                    .map(|_| format!("c{}", next(i)))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let tier = match next(5) {
                    0 => format!(", tier: {}", tiers[next(tiers.len())]),
                    _ => String::new(),
                };
                yaml += &format!(
                    "  - {{id: c{i}, kind: application{tier}, depends_on: [{}]}}\n",
                    deps.join(", ")
                );
            }
            let c = cmdb(&yaml);
            let g = CiGraph::new(&c);
            assert_eq!(effective(&c, &g), by_walks(&c, &g), "round {round}:\n{yaml}");
        }
    }

    #[test]
    fn a_cyclic_cmdb_still_gets_inherited_tiers() {
        let c = cmdb(
            "tiers:\n  gold: {rto: 15m, rpo: 1m}\nitems:\n  - {id: shop, kind: business_service, tier: gold, depends_on: [a]}\n\
             \x20 - {id: a, kind: application, depends_on: [b]}\n  - {id: b, kind: application, depends_on: [a]}\n",
        );
        let g = CiGraph::new(&c);
        assert!(!g.cycles().is_empty());
        let tiers = effective(&c, &g);
        assert_eq!(
            tiers,
            [
                ("shop", "gold", None),
                ("a", "gold", Some("shop")),
                ("b", "gold", Some("shop"))
            ]
        );
        assert_eq!(tiers, by_walks(&c, &g));
    }
}
