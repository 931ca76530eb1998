//! What the model needs to know about actions to validate runbooks, without knowing
//! the plugins: the binary's registry implements [`ActionCatalog`].

use crate::cmdb::Cmdb;
use crate::config::{Config, Database, KubeCluster, ObjectStore};
use crate::diag::{Issue, did_you_mean};
use crate::node::{Located, Node};
use crate::runbook::Runbook;

/// What an action does to the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionClass {
    /// Read-only.
    Check,
    /// Side effects; idempotent; maybe compensable.
    Change,
    /// Waits for a person or for time.
    Gate,
}

/// The actions known to this build (and to the config's external plugins).
pub trait ActionCatalog {
    /// The class of `uses`, or `None` when no such action exists.
    fn class(&self, uses: &str) -> Option<ActionClass>;
    /// Checks the parameters of one use of the action, without I/O.
    fn check_params(&self, uses: &str, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue>;
    /// Every action name, for suggestions.
    fn names(&self) -> Vec<String>;
}

/// What a parameter check may look at: the configuration and the runbook.
#[derive(Debug, Clone, Copy)]
pub struct ParamCx<'a> {
    pub config: &'a Config,
    pub cmdb: Option<&'a Cmdb>,
    pub runbook: &'a Runbook,
}

impl<'a> ParamCx<'a> {
    /// The database named by `name`, or a located error.
    pub fn database(&self, name: &Located<String>) -> Result<&'a Database, Issue> {
        let dbs = &self.config.databases;
        dbs.iter().find(|d| d.name.value == name.value).ok_or_else(|| {
            Issue::new(
                name.loc,
                format!(
                    "unknown database `{name}`{}",
                    did_you_mean(name, dbs.iter().map(|d| d.name.as_str()))
                ),
            )
        })
    }

    /// The Kubernetes cluster named by `name`, or a located error.
    pub fn cluster(&self, name: &Located<String>) -> Result<&'a KubeCluster, Issue> {
        let cs = &self.config.kubernetes;
        cs.iter().find(|c| c.name.value == name.value).ok_or_else(|| {
            Issue::new(
                name.loc,
                format!(
                    "unknown cluster `{name}`{}",
                    did_you_mean(name, cs.iter().map(|c| c.name.as_str()))
                ),
            )
        })
    }

    /// The object store named by `name`, or a located error.
    pub fn object_store(&self, name: &Located<String>) -> Result<&'a ObjectStore, Issue> {
        let ss = &self.config.object_stores;
        ss.iter().find(|s| s.name.value == name.value).ok_or_else(|| {
            Issue::new(
                name.loc,
                format!(
                    "unknown object store `{name}`{}",
                    did_you_mean(name, ss.iter().map(|s| s.name.as_str()))
                ),
            )
        })
    }
}
