//! `cmdb.yaml`: tiers and configuration items with their dependency edges.

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

impl Cmdb {
    pub fn item(&self, id: &str) -> Option<&Ci> {
        self.items.iter().find(|c| c.id.value == id)
    }

    /// A CI's targets: its own, else its tier's.
    pub fn targets_of(&self, id: &str) -> Targets {
        let Some(ci) = self.item(id) else {
            return Targets::default();
        };
        let tier = ci.tier.as_ref().and_then(|t| self.tiers.get(t));
        Targets {
            rto: ci.rto.or(tier.map(|t| t.rto)),
            rpo: ci.rpo.or(tier.map(|t| t.rpo)),
        }
    }
}
