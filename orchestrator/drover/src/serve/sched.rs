//! Scheduled drills (tokio-cron-scheduler): six-field cron expressions (seconds first)
//! in an optional IANA time zone. Each firing starts a run (a `standard` change) unless
//! its service is busy or held by anti-flap; then the firing is recorded as skipped,
//! with the reason. Firings missed while the daemon was down are reported once when it
//! starts (a `missed` firing), not replayed in a burst.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use drover_engine::EngineError;
use drover_engine::journal::rfc3339;
use drover_engine::store::Firing;
use serde::Serialize;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::Daemon;

/// What `GET /api/v1/schedules` shows of one schedule.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    pub name: String,
    pub runbook: String,
    pub cron: String,
    pub timezone: String,
    pub mode: &'static str,
    pub next: Option<String>,
    pub last: Option<Firing>,
    /// The newest firings that did not start a run (skipped or missed).
    pub skipped: Vec<Firing>,
}

#[derive(Default)]
pub struct Schedules {
    scheduler: tokio::sync::Mutex<Option<JobScheduler>>,
    /// When each schedule is due next (for its lag).
    due: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl std::fmt::Debug for Schedules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedules").finish_non_exhaustive()
    }
}

fn tz_of(s: &drover_model::config::Schedule) -> Tz {
    s.timezone
        .as_ref()
        .and_then(|t| t.parse::<Tz>().ok())
        .unwrap_or(Tz::UTC)
}

/// The schedule's next firing after `after`.
fn next_after(s: &drover_model::config::Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = drover_model::validate::parse_cron(&s.cron).ok()?;
    cron.find_next_occurrence(&after.with_timezone(&tz_of(s)), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

impl Schedules {
    /// Adds a job per schedule and starts them; reports firings missed while down.
    pub async fn start(&self, d: &Arc<Daemon>) -> Result<(), String> {
        let snap = d.snapshot();
        let now = Utc::now();
        for s in &snap.config.schedules {
            let last = d.store().firings(&s.name, 1).map_err(|e| e.to_string())?;
            if let Some(last) = last.first().and_then(|f| parse_time(&f.at)) {
                let mut missed = 0u32;
                let mut first = None;
                let mut t = last;
                while let Some(next) = next_after(s, t).filter(|n| *n < now) {
                    first.get_or_insert(next);
                    missed += 1;
                    t = next;
                    if missed >= 100_000 {
                        break;
                    }
                }
                if let Some(first) = first {
                    let reason = format!(
                        "{missed} firing(s) missed while the daemon was down (the first due at {}); not replayed",
                        first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                    tracing::warn!(schedule = %s.name.value, "{reason}");
                    d.metrics
                        .firings_skipped
                        .get_or_create(&super::metrics::ScheduleLabels {
                            schedule: s.name.value.clone(),
                        })
                        .inc_by(u64::from(missed));
                    d.store()
                        .record_firing(Firing {
                            schedule: s.name.value.clone(),
                            at: rfc3339(SystemTime::now()),
                            outcome: "missed".into(),
                            run_id: None,
                            reason: Some(reason),
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        self.install(d).await
    }

    async fn install(&self, d: &Arc<Daemon>) -> Result<(), String> {
        let snap = d.snapshot();
        let js = JobScheduler::new().await.map_err(|e| e.to_string())?;
        let now = Utc::now();
        let mut due = HashMap::new();
        for s in &snap.config.schedules {
            let name = s.name.value.clone();
            if let Some(n) = next_after(s, now) {
                due.insert(name.clone(), n);
            }
            let daemon = Arc::downgrade(d);
            let job = Job::new_async_tz(s.cron.value.as_str(), tz_of(s), move |_, _| {
                let (daemon, name) = (daemon.clone(), name.clone());
                Box::pin(async move {
                    if let Some(d) = daemon.upgrade() {
                        fire(&d, &name).await;
                    }
                })
            })
            .map_err(|e| format!("schedule `{}`: {e}", s.name.value))?;
            js.add(job).await.map_err(|e| e.to_string())?;
        }
        *self.due.lock().unwrap_or_else(|p| p.into_inner()) = due;
        js.start().await.map_err(|e| e.to_string())?;
        *self.scheduler.lock().await = Some(js);
        Ok(())
    }

    /// New files: the old jobs go, the new ones start.
    pub async fn reload(&self, d: &Arc<Daemon>) -> Result<(), String> {
        self.shutdown().await;
        self.install(d).await
    }

    pub async fn shutdown(&self) {
        if let Some(mut js) = self.scheduler.lock().await.take() {
            let _ = js.shutdown().await;
        }
    }

    /// Every schedule with its next and last firings.
    pub fn views(&self, d: &Daemon) -> Vec<ScheduleView> {
        let snap = d.snapshot();
        let now = Utc::now();
        snap.config
            .schedules
            .iter()
            .map(|s| {
                let firings = d.store().firings(&s.name, 50).unwrap_or_default();
                ScheduleView {
                    name: s.name.value.clone(),
                    runbook: s.runbook.value.clone(),
                    cron: s.cron.value.clone(),
                    timezone: tz_of(s).name().to_owned(),
                    mode: s.mode.value.as_str(),
                    next: next_after(s, now).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    last: firings.first().cloned(),
                    skipped: firings
                        .into_iter()
                        .filter(|f| f.outcome != "started")
                        .take(10)
                        .collect(),
                }
            })
            .collect()
    }
}

/// A schedule fires: start its run, or record why not.
async fn fire(d: &Arc<Daemon>, name: &str) {
    // Only the leader fires (a standby's scheduler is stopped; this covers the moment
    // of a step-down).
    if !d.is_leader() {
        return;
    }
    let snap = d.snapshot();
    let Some(s) = snap.config.schedules.iter().find(|s| s.name.value == name) else {
        return;
    };
    let now = Utc::now();
    let labels = super::metrics::ScheduleLabels {
        schedule: name.to_owned(),
    };
    {
        let mut due = d.sched.due.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(expected) = due.get(name) {
            let lag = (now - *expected).num_milliseconds().max(0) as f64 / 1000.0;
            d.metrics.schedule_lag.get_or_create(&labels).set(lag);
        }
        if let Some(n) = next_after(s, now) {
            due.insert(name.to_owned(), n);
        }
    }
    let started = d
        .start_run(
            &s.runbook,
            s.mode.value,
            &format!("schedule {name}"),
            Some(format!("scheduled by `{name}` ({})", s.cron.value)),
            true,
            false,
        )
        .await;
    let firing = match started {
        Ok(id) => {
            tracing::info!(schedule = %name, run = %id, "schedule fired");
            Firing {
                schedule: name.to_owned(),
                at: rfc3339(SystemTime::now()),
                outcome: "started".into(),
                run_id: Some(id),
                reason: None,
            }
        }
        Err(e) => {
            let reason = match e {
                EngineError::Refused(m) => m,
                other => other.to_string(),
            };
            tracing::warn!(schedule = %name, reason = %reason, "schedule skipped");
            d.metrics.firings_skipped.get_or_create(&labels).inc();
            Firing {
                schedule: name.to_owned(),
                at: rfc3339(SystemTime::now()),
                outcome: "skipped".into(),
                run_id: None,
                reason: Some(reason),
            }
        }
    };
    if let Err(e) = d.store().record_firing(firing).await {
        tracing::error!(schedule = %name, error = %e, "cannot record the firing");
    }
}
