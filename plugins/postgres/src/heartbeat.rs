//! `postgres.heartbeat`: timestamped rows written to the primary for the rest of the
//! run (like pt-heartbeat), from which `postgres.promote` measures RPO.
//!
//! The step creates its table if missing (`drover_heartbeat(id bigserial, run_id text,
//! at timestamptz)` by default), writes one row, then leaves a writer in the run's
//! background scope that adds a row every `interval` until the run ends. Each row's
//! `at` is drover's wall clock when it sent the row, the same clock the fence instant
//! is taken with, so RPO does not depend on the database servers' clocks.
//!
//! Writes that fail (the primary is fenced or down) are logged, never fatal: the
//! first failure as a warning, the rest at debug level, and a recovery at info. The
//! writer keeps, in this process's memory, the time of its last acknowledged write and
//! of the first failure after it, which lets `postgres.fence` date the loss of a
//! primary it cannot reach. That memory is an observation, not state: nothing reads it
//! but a fence step running at that moment, which journals what it used in its
//! output. A resumed process starts with none (its writer restarts and observes anew),
//! and a fence that finds none dates the loss at the moment it found the primary
//! unreachable, which overstates the RPO rather than understating it. What later
//! steps need (the table, the first row, the fence instant) they read from the
//! journal, and the rows themselves from the database.
//! The compensation stops the writer and leaves the table.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_model::{Config, Issue, Located, Node, ParamCx};
use drover_plugin_api::{
    Action, ActionClass, ActionError, ActionSpec, CancellationToken, Preview, StepContext, StepOutput,
};
use serde_json::json;

use crate::conn::{Db, SqlError, Target};
use crate::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TABLE, HeartbeatParams, now_unix, rfc3339};

/// `postgres.heartbeat`. Knows its running writers, so that running the step again in
/// the same process does not start a second one.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// (run id, step id) -> the writer's stop token.
    writers: Arc<Mutex<HashMap<(String, String), CancellationToken>>>,
}

/// What the writers of this process saw of a primary: (run id, database) -> health.
static HEALTH: Mutex<BTreeMap<(String, String), Health>> = Mutex::new(BTreeMap::new());

/// The last acknowledged heartbeat write and the first failed one after it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Health {
    pub last_ok: Option<f64>,
    pub failing_since: Option<f64>,
}

/// What this process's heartbeat writers know about `database` in run `run_id`.
pub(crate) fn health(run_id: &str, database: &str) -> Option<Health> {
    HEALTH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(run_id.to_owned(), database.to_owned()))
        .copied()
}

fn record(run_id: &str, database: &str, attempt_at: f64, ok: bool) {
    let mut map = HEALTH.lock().unwrap_or_else(|p| p.into_inner());
    let h = map.entry((run_id.to_owned(), database.to_owned())).or_default();
    if ok {
        h.last_ok = Some(attempt_at);
        h.failing_since = None;
    } else if h.failing_since.is_none() {
        h.failing_since = Some(attempt_at);
    }
}

struct Settings {
    database: String,
    table: String,
    interval: Duration,
}

fn settings(p: &HeartbeatParams) -> Settings {
    Settings {
        database: p.database.value.clone(),
        table: p
            .table
            .as_ref()
            .map_or_else(|| DEFAULT_HEARTBEAT_TABLE.to_owned(), |t| t.value.clone()),
        interval: p.interval.as_ref().map_or(DEFAULT_HEARTBEAT_INTERVAL, |i| i.value.0),
    }
}

fn create_sql(table: &str) -> String {
    // An index name longer than 63 bytes would be truncated, maybe onto the table's.
    let index = format!("{}_run_at", &table[..table.len().min(56)]);
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, run_id text NOT NULL, at timestamptz NOT NULL); \
         CREATE INDEX IF NOT EXISTS {index} ON {table} (run_id, at)"
    )
}

/// Writes one heartbeat row stamped with drover's clock; returns that time.
async fn write_row(db: &Db, table: &str, run_id: &str) -> Result<f64, SqlError> {
    let at = now_unix();
    db.execute(
        &format!("INSERT INTO {table} (run_id, at) VALUES ($1, to_timestamp($2))"),
        &[&run_id, &at],
    )
    .await?;
    Ok(at)
}

impl Heartbeat {
    /// Starts the background writer of this step unless one runs already.
    /// `write_now`: the first row is due at once (a resumed run), else after one
    /// interval (the step has just written one).
    fn start_writer(&self, cx: &StepContext, s: Settings, write_now: bool) {
        let key = (cx.run_id.clone(), cx.step_id.clone());
        let stop = {
            let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
            if writers.get(&key).is_some_and(|t| !t.is_cancelled()) {
                return;
            }
            let stop = cx.scope.ending().child_token();
            writers.insert(key.clone(), stop.clone());
            stop
        };
        let writer = Writer {
            config: cx.config.clone(),
            run_id: cx.run_id.clone(),
            database: s.database,
            table: s.table,
            interval: s.interval,
            write_now,
            stop,
        };
        let writers = self.writers.clone();
        cx.scope.spawn(format!("heartbeat on {}", writer.database), async move {
            writer.run().await;
            writers.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
    }
}

/// The background writer.
struct Writer {
    config: Arc<Config>,
    run_id: String,
    database: String,
    table: String,
    interval: Duration,
    write_now: bool,
    stop: CancellationToken,
}

impl Writer {
    async fn run(self) {
        let target = match Target::resolve(&self.config, &self.database) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(database = %self.database, error = %e, "heartbeat writer cannot start");
                return;
            }
        };
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.write_now {
            tick.tick().await; // the first tick is immediate; the step wrote that row
        }
        let mut db: Option<Db> = None;
        let (mut written, mut failing) = (0u64, false);
        // A write may not take longer than this (a hung server).
        let limit = self.interval.max(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let attempt_at = now_unix();
            let result = tokio::time::timeout(limit, async {
                if db.is_none() {
                    db = Some(target.connect(&self.stop, Instant::now() + limit).await?);
                }
                match db.as_ref() {
                    Some(d) => write_row(d, &self.table, &self.run_id)
                        .await
                        .map_err(|e| e.into_action("heartbeat write failed", false)),
                    None => Err(ActionError::Retryable("not connected".into())),
                }
            })
            .await
            .unwrap_or_else(|_| Err(ActionError::Retryable(format!("no answer within {limit:?}"))));
            match result {
                Ok(_) => {
                    written += 1;
                    record(&self.run_id, &self.database, attempt_at, true);
                    if failing {
                        failing = false;
                        tracing::info!(database = %self.database, table = %self.table, "heartbeat writes succeed again");
                    }
                }
                Err(ActionError::Cancelled) => break,
                Err(e) => {
                    db = None; // reconnect on the next tick
                    record(&self.run_id, &self.database, attempt_at, false);
                    if failing {
                        tracing::debug!(database = %self.database, error = %e, "heartbeat write failed");
                    } else {
                        failing = true;
                        tracing::warn!(
                            database = %self.database,
                            table = %self.table,
                            error = %e,
                            "heartbeat write failed; retrying every {} (further failures are logged at debug level)",
                            humantime::format_duration(self.interval)
                        );
                    }
                }
            }
        }
        HEALTH
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.run_id.clone(), self.database.clone()));
        tracing::debug!(database = %self.database, rows = written, "heartbeat writer stopped");
    }
}

impl ActionSpec for Heartbeat {
    fn kind(&self) -> &str {
        "postgres.heartbeat"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Change
    }
    fn compensable(&self) -> bool {
        true
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_heartbeat)
    }
}

#[async_trait]
impl Action for Heartbeat {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let s = settings(&cx.params()?);
        Ok(Preview {
            summary: format!(
                "write a heartbeat row to `{}` (table {}) every {} for the rest of the run",
                s.database,
                s.table,
                humantime::format_duration(s.interval)
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let s = settings(&cx.params()?);
        let base = json!({
            "database": s.database,
            "table": s.table,
            "interval_s": s.interval.as_secs_f64(),
            "run_id": cx.run_id,
        });
        let target = Target::resolve(&cx.config, &s.database)?;
        let db = match target.try_connect(&cx.cancel, cx.deadline).await {
            Ok(db) => db,
            // Only an unreachable primary may be skipped under assume_lost; a wrong
            // password or an error answer fails the step.
            Err(f) if cx.assume_lost && f.unreachable.is_some() => {
                let e = f.error;
                let mut data = base;
                data["writing"] = json!(false);
                data["assumed_lost"] = json!(true);
                data["unreachable_kind"] = json!(f.unreachable.map(|u| u.as_str()));
                data["unreachable"] = json!(e.to_string());
                return Ok(StepOutput::new(format!(
                    "no heartbeat: `{}` is unreachable and the runbook declares its site lost ({e})",
                    s.database
                ))
                .with_data(data));
            }
            Err(f) => return Err(f.error),
        };
        db.batch(&create_sql(&s.table))
            .await
            .map_err(|e| e.into_action(&format!("cannot create the heartbeat table {}", s.table), false))?;
        let at = write_row(&db, &s.table, &cx.run_id)
            .await
            .map_err(|e| e.into_action("cannot write a heartbeat row", false))?;
        record(&cx.run_id, &s.database, at, true);
        let summary = format!(
            "heartbeat on `{}`: a row in {} every {}, first at {}",
            s.database,
            s.table,
            humantime::format_duration(s.interval),
            rfc3339(at)
        );
        self.start_writer(cx, s, false);
        let mut data = base;
        data["writing"] = json!(true);
        data["first_at"] = json!(rfc3339(at));
        data["first_at_unix"] = json!(at);
        Ok(StepOutput::new(summary).with_data(data))
    }

    async fn compensate(&self, cx: &StepContext, _done: Option<&StepOutput>) -> Result<(), ActionError> {
        // Stop writing; the table and its rows stay (they are evidence, and harmless).
        let key = (cx.run_id.clone(), cx.step_id.clone());
        if let Some(stop) = self.writers.lock().unwrap_or_else(|p| p.into_inner()).remove(&key) {
            stop.cancel();
        }
        Ok(())
    }

    async fn resume(&self, cx: &StepContext, done: &StepOutput) -> Result<(), ActionError> {
        if done.data.get("writing").and_then(serde_json::Value::as_bool) == Some(false) {
            return Ok(());
        }
        let s = settings(&cx.params()?);
        tracing::info!(database = %s.database, step = %cx.step_id, "restarting the heartbeat writer of a resumed run");
        self.start_writer(cx, s, true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_remembers_the_first_failure_after_the_last_success() {
        record("run-h", "db", 1.0, true);
        record("run-h", "db", 2.0, false);
        record("run-h", "db", 3.0, false);
        assert_eq!(
            health("run-h", "db"),
            Some(Health {
                last_ok: Some(1.0),
                failing_since: Some(2.0)
            })
        );
        record("run-h", "db", 4.0, true);
        assert_eq!(health("run-h", "db").unwrap().failing_since, None);
        assert_eq!(health("run-h", "other"), None);
    }

    #[test]
    fn long_table_names_keep_a_distinct_index_name() {
        let t = "t".repeat(63);
        let sql = create_sql(&t);
        assert!(sql.contains(&format!("{}_run_at", "t".repeat(56))), "{sql}");
    }
}
