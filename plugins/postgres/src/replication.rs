//! `postgres.replication`: the standby is in recovery and streaming from the primary,
//! and not further behind than `max_lag` (time) and `max_lag_bytes` (WAL): the lag
//! gate before a promotion.
//!
//! Byte lag is `primary pg_current_wal_flush_lsn() - standby pg_last_wal_replay_lsn()`
//! (WAL the primary has written that the standby has not applied; the flush position,
//! because WAL is streamed once flushed: records the WAL writer has not flushed yet,
//! such as an idle primary's periodic snapshot records, are not lag). Time lag is the age of
//! the newest transaction the standby replayed, `now() - pg_last_xact_replay_timestamp()`,
//! counted only while the byte lag is not zero: an idle primary writes nothing, so an
//! old replay timestamp is not lag. A standby that has replayed no transaction since it
//! started has no such timestamp: then the primary's own measure of its standbys'
//! replay lag (`pg_stat_replication.replay_lag`, the largest) stands in; when neither
//! is known the time lag is unknown, which the gate treats as over the limit. With `--force-lag` a standby over the limits passes,
//! and the check records that it was forced, with the figures.

use async_trait::async_trait;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use serde_json::json;

use crate::ReplicationParams;
use crate::conn::{Target, lsn_diff, parse_lsn};

/// `postgres.replication`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replication;

impl ActionSpec for Replication {
    fn kind(&self) -> &str {
        "postgres.replication"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Check
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_replication)
    }
}

/// What the standby says about itself.
const STANDBY_SQL: &str = "SELECT pg_is_in_recovery(), \
     (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
     pg_last_wal_receive_lsn()::text, \
     pg_last_wal_replay_lsn()::text, \
     extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
     CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END";

fn limits(p: &ReplicationParams) -> String {
    match p.max_lag_bytes {
        Some(b) => format!("max {} and {b} bytes", p.max_lag),
        None => format!("max {}", p.max_lag),
    }
}

#[async_trait]
impl Action for Replication {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: ReplicationParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "check that `{}` streams from `{}`, lag {}",
                p.standby.value,
                p.primary.value,
                limits(&p)
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: ReplicationParams = cx.params()?;
        let (primary, standby) = (&p.primary.value, &p.standby.value);
        let pt = Target::resolve(&cx.config, primary)?;
        let st = Target::resolve(&cx.config, standby)?;
        let (pdb, sdb) = tokio::try_join!(pt.connect(&cx.cancel, cx.deadline), st.connect(&cx.cancel, cx.deadline))?;

        // The primary first: WAL written after this read does not count as lag.
        let row = pdb
            .one(
                "SELECT pg_is_in_recovery(), \
                 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END, \
                 (SELECT extract(epoch FROM max(replay_lag)) FROM pg_stat_replication)::float8",
                &[],
            )
            .await
            .map_err(|e| e.into_action("cannot read its WAL position", false))?;
        let read = |e: crate::conn::SqlError| e.into_action("unexpected answer", false);
        if pdb.get::<bool>(&row, 0).map_err(read)? {
            return Err(ActionError::Permanent(format!(
                "`{primary}` is in recovery: it is a standby, not a primary"
            )));
        }
        let primary_lsn: String = pdb.get(&row, 1).map_err(read)?;
        let primary_replay_lag: Option<f64> = pdb.get(&row, 2).map_err(read)?;

        let row = sdb
            .one(STANDBY_SQL, &[])
            .await
            .map_err(|e| e.into_action("cannot read its replication state", false))?;
        let in_recovery: bool = sdb.get(&row, 0).map_err(read)?;
        let status: Option<String> = sdb.get(&row, 1).map_err(read)?;
        let receive_lsn: Option<String> = sdb.get(&row, 2).map_err(read)?;
        let replay_lsn: Option<String> = sdb.get(&row, 3).map_err(read)?;
        let replay_age: Option<f64> = sdb.get(&row, 4).map_err(read)?;
        let paused: bool = sdb.get(&row, 5).map_err(read)?;
        if !in_recovery {
            return Err(ActionError::Permanent(format!(
                "`{standby}` is not in recovery: it is not a standby (was it promoted?)"
            )));
        }
        if status.as_deref() != Some("streaming") {
            return Err(ActionError::Retryable(format!(
                "`{standby}` is not streaming from `{primary}` (WAL receiver: {})",
                status.as_deref().unwrap_or("not running")
            )));
        }
        let p_lsn = parse_lsn(&primary_lsn);
        let s_lsn = replay_lsn.as_deref().and_then(parse_lsn);
        let (Some(p_lsn), Some(s_lsn)) = (p_lsn, s_lsn) else {
            return Err(ActionError::Retryable(format!(
                "`{standby}` has not replayed any WAL yet"
            )));
        };
        let lag_bytes = lsn_diff(p_lsn, s_lsn);
        // An idle primary is not lag: time counts only while WAL is outstanding.
        let lag_s: Option<f64> = if lag_bytes == 0 {
            Some(0.0)
        } else {
            replay_age.or(primary_replay_lag).map(|a| a.max(0.0))
        };
        let max_lag_s = p.max_lag.as_secs_f64();
        let over_time = lag_s.is_none_or(|l| l > max_lag_s);
        let over_bytes = p.max_lag_bytes.is_some_and(|m| lag_bytes > m);
        let over = over_time || over_bytes;
        let time_text = match lag_s {
            Some(l) => format!("{l:.1}s"),
            None => "unknown (no transaction replayed since the standby started)".into(),
        };
        let figures = format!("lag {time_text} and {lag_bytes} bytes of WAL ({})", limits(&p));
        if over && !cx.force_lag {
            return Err(ActionError::Retryable(format!(
                "`{standby}` is too far behind `{primary}`: {figures}{}",
                if paused { "; its replay is paused" } else { "" }
            )));
        }
        let forced = over && cx.force_lag;
        let summary = if forced {
            format!("`{standby}` is over the lag gate, passed because of --force-lag (recorded): {figures}")
        } else {
            format!("`{standby}` streams from `{primary}`: {figures}")
        };
        Ok(StepOutput::new(summary).with_data(json!({
            "primary": primary,
            "standby": standby,
            "lag_bytes": lag_bytes,
            "lag_s": lag_s,
            "max_lag_s": max_lag_s,
            "max_lag_bytes": p.max_lag_bytes,
            "over_limit": over,
            "forced": forced,
            "receiver_status": status,
            "replay_paused": paused,
            "primary_lsn": primary_lsn,
            "primary_replay_lag_s": primary_replay_lag,
            "standby_receive_lsn": receive_lsn,
            "standby_replay_lsn": replay_lsn,
            "measurements": {"replication_lag_s": lag_s, "replication_lag_bytes": lag_bytes},
        })))
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}
