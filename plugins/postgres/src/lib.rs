//! PostgreSQL actions: replication checks with a lag gate, heartbeat, observed fencing,
//! promotion, writability and restore tests.
//!
//! This build declares the actions and checks their parameters at load time; running
//! them needs the PostgreSQL client, which comes with the PostgreSQL issue.

use std::sync::Arc;

use drover_model::{Dur, Located};
use drover_plugin_api::{ActionClass, ParamCx, Registry, TypedSpec, issues};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationParams {
    pub primary: Located<String>,
    pub standby: Located<String>,
    /// Refuse when the standby is further behind than this (time).
    pub max_lag: Dur,
    /// Refuse when the standby is further behind than this many bytes of WAL.
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatParams {
    pub database: Located<String>,
    #[serde(default)]
    pub interval: Option<Located<Dur>>,
    /// Table holding the heartbeat rows (default `drover_heartbeat`).
    #[serde(default)]
    pub table: Option<Located<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseParams {
    pub database: Located<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTestParams {
    pub store: Located<String>,
    /// Object key of a `pg_dump` custom-format backup.
    pub key: String,
    /// SQL run in the scratch database after the restore.
    pub query: String,
    /// The first column of the first row must equal this.
    #[serde(default)]
    pub expect: Option<String>,
}

fn db(p: &DatabaseParams, cx: &ParamCx<'_>) -> Vec<drover_model::Issue> {
    issues([cx.database(&p.database).map(drop)])
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Registers the PostgreSQL actions.
pub fn register(reg: &mut Registry) {
    reg.add_spec(Arc::new(TypedSpec::<ReplicationParams> {
        kind: "postgres.replication",
        class: ActionClass::Check,
        compensable: false,
        check: |p, cx| {
            let mut out = issues([cx.database(&p.primary).map(drop), cx.database(&p.standby).map(drop)]);
            if p.primary.value == p.standby.value {
                out.push(drover_model::Issue::new(
                    p.standby.loc,
                    "standby must differ from primary",
                ));
            }
            out
        },
    }));
    reg.add_spec(Arc::new(TypedSpec::<HeartbeatParams> {
        kind: "postgres.heartbeat",
        class: ActionClass::Change,
        compensable: true,
        check: |p, cx| {
            let mut out = issues([cx.database(&p.database).map(drop)]);
            if let Some(i) = &p.interval
                && i.0.is_zero()
            {
                out.push(drover_model::Issue::new(i.loc, "interval must be longer than zero"));
            }
            if let Some(t) = &p.table
                && !is_identifier(t)
            {
                out.push(drover_model::Issue::new(
                    t.loc,
                    "table must be a plain lower-case SQL identifier (letters, digits, `_`)",
                ));
            }
            out
        },
    }));
    reg.add_spec(Arc::new(TypedSpec::<DatabaseParams> {
        kind: "postgres.fence",
        class: ActionClass::Change,
        compensable: true,
        check: db,
    }));
    reg.add_spec(Arc::new(TypedSpec::<DatabaseParams> {
        kind: "postgres.promote",
        class: ActionClass::Change,
        compensable: false,
        check: db,
    }));
    reg.add_spec(Arc::new(TypedSpec::<DatabaseParams> {
        kind: "postgres.writable",
        class: ActionClass::Check,
        compensable: false,
        check: db,
    }));
    reg.add_spec(Arc::new(TypedSpec::<RestoreTestParams> {
        kind: "postgres.restore-test",
        class: ActionClass::Check,
        compensable: false,
        check: |p, cx| issues([cx.object_store(&p.store).map(drop)]),
    }));
}
