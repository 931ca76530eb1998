//! Runbooks: preflight checks, steps, verify checks and rollback for one service.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cmdb::Targets;
use crate::node::{Located, Node};
use crate::types::Dur;

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub name: Located<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The CI whose recovery is measured.
    pub service: Located<String>,
    /// The site recovered from.
    #[serde(default)]
    pub from: Option<Located<String>>,
    /// The site recovered to.
    #[serde(default)]
    pub to: Option<Located<String>>,
    /// Tightens the CMDB's targets.
    #[serde(default)]
    pub targets: Option<Targets>,
    /// The `from` site is lost: its primary cannot be observed fenced. Recorded in the run.
    #[serde(default)]
    pub assume_lost: bool,
    /// Most steps running at once (default: the engine setting).
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// All must pass before anything changes.
    #[serde(default)]
    pub preflight: Vec<Check>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// The RTO clock stops when all of these pass.
    #[serde(default)]
    pub verify: Vec<Check>,
    /// Run on failure, and at the end of a drill.
    #[serde(default)]
    pub rollback: Vec<Step>,
}

/// A read-only check (preflight or verify).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: Located<String>,
    /// The CI this check is about (for per-CI measurements).
    #[serde(default)]
    pub ci: Option<Located<String>>,
    pub uses: Located<String>,
    #[serde(default = "empty_params")]
    pub with: Located<Node>,
    /// One attempt's time limit (default 5m).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Poll until it passes or this much time has gone by.
    #[serde(default)]
    pub within: Option<Dur>,
    /// Time between polls (default 1s).
    #[serde(default)]
    pub interval: Option<Dur>,
}

/// A step of `steps` or `rollback`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: Located<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The CI this step recovers; orders it after the steps of the CIs it depends on.
    #[serde(default)]
    pub ci: Option<Located<String>>,
    pub uses: Located<String>,
    #[serde(default = "empty_params")]
    pub with: Located<Node>,
    /// Steps that must finish first.
    #[serde(default)]
    pub needs: Vec<Located<String>>,
    /// One attempt's time limit (default 5m).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Extra attempts after a retryable failure (default 0 for changes).
    #[serde(default)]
    pub retries: Option<u32>,
    /// For a check used as a step: poll until it passes or this much time has gone by.
    #[serde(default)]
    pub within: Option<Dur>,
    /// Expected duration, for the critical-path estimate of `drover plan`.
    #[serde(default)]
    pub estimate: Option<Dur>,
}

fn empty_params() -> Located<Node> {
    Located::empty_map(Default::default())
}

/// Default time limit of one attempt of a step or check.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl Runbook {
    /// Every step: `steps` then `rollback`.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().chain(self.rollback.iter())
    }
}
