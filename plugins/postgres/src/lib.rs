//! PostgreSQL actions: `postgres.replication` (a lag gate in time and bytes),
//! `postgres.heartbeat` (timestamped rows written to the primary for the rest of the
//! run, from which RPO is measured), `postgres.fence` (the old primary refuses writes,
//! observed), `postgres.promote` (pg_promote, wait until writable, measure RPO) and
//! `postgres.writable` and `postgres.restore-test` (a `pg_dump` object streamed from an
//! object store into `pg_restore`, restored into a scratch database and queried).
//!
//! Connection URLs are secrets: the `conn` module keeps them out of every message.
//! docs/POSTGRES.md describes the semantics (fencing, RPO, `assume_lost`).

mod conn;
mod fence;
mod heartbeat;
mod promote;
mod replication;
mod restore;
mod writable;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_model::{Dur, Issue, Located, Node};
use drover_plugin_api::{ParamCx, Registry, issues, parse_params};
use serde::Deserialize;

pub use fence::Fence;
pub use heartbeat::Heartbeat;
pub use promote::Promote;
pub use replication::Replication;
pub use restore::RestoreTest;
pub use writable::Writable;

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
    pub key: Located<String>,
    /// The server the scratch database is created on (its user needs CREATEDB).
    pub database: Located<String>,
    /// SQL run in the scratch database after the restore.
    pub query: Located<String>,
    /// The first column of the first row must equal this.
    #[serde(default)]
    pub expect: Option<String>,
}

pub(crate) fn check_database(p: &DatabaseParams, cx: &ParamCx<'_>) -> Vec<Issue> {
    issues([cx.database(&p.database).map(drop)])
}

pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub(crate) fn check_replication(p: &ReplicationParams, cx: &ParamCx<'_>) -> Vec<Issue> {
    let mut out = issues([cx.database(&p.primary).map(drop), cx.database(&p.standby).map(drop)]);
    if p.primary.value == p.standby.value {
        out.push(Issue::new(p.standby.loc, "standby must differ from primary"));
    }
    out
}

pub(crate) fn check_heartbeat(p: &HeartbeatParams, cx: &ParamCx<'_>) -> Vec<Issue> {
    let mut out = issues([cx.database(&p.database).map(drop)]);
    if let Some(i) = &p.interval
        && i.0.is_zero()
    {
        out.push(Issue::new(i.loc, "interval must be longer than zero"));
    }
    if let Some(t) = &p.table
        && !is_identifier(t)
    {
        out.push(Issue::new(
            t.loc,
            "table must be a plain lower-case SQL identifier (letters, digits, `_`)",
        ));
    }
    out
}

/// Parses `with:` as `P` and runs `check` on it: the load-time validation of an action.
pub(crate) fn validate<P: serde::de::DeserializeOwned>(
    with: &Located<Node>,
    cx: &ParamCx<'_>,
    check: fn(&P, &ParamCx<'_>) -> Vec<Issue>,
) -> Vec<Issue> {
    match parse_params::<P>(with) {
        Ok(p) => check(&p, cx),
        Err(e) => e,
    }
}

/// The table heartbeat rows go to unless `table:` says otherwise.
pub const DEFAULT_HEARTBEAT_TABLE: &str = "drover_heartbeat";

/// The heartbeat interval unless `interval:` says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Wall-clock now as seconds since the Unix epoch.
pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// RFC 3339 (UTC, milliseconds) of a Unix time in seconds.
pub(crate) fn rfc3339(unix: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Registers the PostgreSQL actions.
pub fn register(reg: &mut Registry) {
    reg.add(Arc::new(Replication));
    reg.add(Arc::new(Heartbeat::default()));
    reg.add(Arc::new(Fence));
    reg.add(Arc::new(Promote));
    reg.add(Arc::new(Writable));
    reg.add(Arc::new(RestoreTest));
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_plugin_api::ActionClass;

    #[test]
    fn identifiers() {
        assert!(is_identifier("drover_heartbeat"));
        assert!(is_identifier("_t1"));
        assert!(!is_identifier("1t"));
        assert!(!is_identifier("Heartbeat"));
        assert!(!is_identifier("t; DROP TABLE x"));
        assert!(!is_identifier(&"a".repeat(64)));
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000.25), "2023-11-14T22:13:20.250Z");
        assert!(now_unix() > 1_700_000_000.0);
    }

    #[test]
    fn every_action_is_registered_and_runnable() {
        let mut reg = Registry::new();
        register(&mut reg);
        for kind in [
            "postgres.replication",
            "postgres.heartbeat",
            "postgres.fence",
            "postgres.promote",
            "postgres.writable",
            "postgres.restore-test",
        ] {
            assert!(reg.is_runnable(kind), "{kind}");
        }
        let spec = |k: &str| reg.spec(k).unwrap();
        assert!(spec("postgres.heartbeat").compensable());
        assert!(spec("postgres.fence").compensable());
        assert!(!spec("postgres.promote").compensable());
        assert_eq!(spec("postgres.replication").class(), ActionClass::Check);
        assert_eq!(spec("postgres.writable").class(), ActionClass::Check);
        assert_eq!(spec("postgres.restore-test").class(), ActionClass::Check);
        assert!(!spec("postgres.restore-test").compensable());
        assert_eq!(spec("postgres.promote").class(), ActionClass::Change);
    }
}
