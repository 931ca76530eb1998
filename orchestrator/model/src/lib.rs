//! drover's model: the configuration, CMDB and runbook types, their loading from YAML
//! with `path:line:col` diagnostics, and the semantic checks across files.
//!
//! Loading happens in two phases (see `docs/ARCHITECTURE.md`): [`node::parse_yaml`]
//! turns text into a located tree, [`de::from_node`] reads typed values from it. This
//! crate does no I/O beyond reading the user's files and knows no infrastructure crate.

pub mod catalog;
pub mod cmdb;
pub mod config;
pub mod de;
pub mod diag;
pub mod graph;
pub mod load;
pub mod node;
pub mod paths;
pub mod runbook;
pub mod types;
pub mod validate;
pub mod yaml;

pub use catalog::{ActionCatalog, ActionClass, ParamCx};
pub use cmdb::{Ci, Cmdb, Targets, Tier};
pub use config::{Config, RunMode};
pub use de::{DeError, from_node};
pub use diag::{Diagnostic, Issue, Location};
pub use load::{RunbookFile, Workspace};
pub use node::{Located, Node};
pub use runbook::{Check, Runbook, Step};
pub use types::{Dur, LocMap, SecretRef, SecretString};

/// JSON Schemas of the three file kinds, generated from the types.
pub fn schemas() -> serde_json::Value {
    serde_json::json!({
        "config": schemars::schema_for!(config::Config),
        "cmdb": schemars::schema_for!(cmdb::Cmdb),
        "runbook": schemars::schema_for!(runbook::Runbook),
    })
}
