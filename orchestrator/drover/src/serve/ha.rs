//! High availability (`ha: {node, site, lease}`): several daemons, one per site, share a
//! PostgreSQL state store; one leads (runs the schedules and the runs), the others stand
//! by and answer reads.
//!
//! Leadership is the store's lease row (holder, epoch, expiry by the database's clock),
//! taken or renewed every third of `ha.lease` with one conditional UPDATE
//! ([`drover_engine::Store::acquire_lease`]). The epoch is a fencing token: once this
//! node leads, its writer connection says the epoch and the store refuses, inside the
//! same transaction, every write of run state made under an older epoch. So a leader
//! that was paused or cut off can never write after a standby took over, whatever its
//! own clock believes.
//!
//! This node's own view is conservative: it counts its lease from the moment it *sent*
//! the renewal, by its monotonic clock, so it believes it has lost the lease before the
//! database does. A leader that misses two renewals stops starting steps; one that
//! cannot renew within the lease cancels its runs' work in flight and stands by, before
//! any other node can take over; a leader whose writes are refused as fenced does the
//! same at once. A node that becomes leader resumes every run left in flight (the
//! normal resume path) and starts the schedules.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drover_engine::{Lease, Writer};
use drover_plugin_api::CancellationToken;

use super::Daemon;

/// The name of the leadership lease in the store.
pub const LEASE: &str = "leader";

/// This node in its cluster.
#[derive(Debug)]
pub struct Ha {
    pub node: String,
    pub site: Option<String>,
    pub lease: Duration,
    state: Mutex<HaState>,
}

#[derive(Debug, Default, Clone)]
struct HaState {
    leader: bool,
    /// The epoch this node leads at, or the newest it saw.
    epoch: i64,
    /// The lease as last read (who leads, until when).
    lease: Option<Lease>,
}

/// Why a leader stops leading. Either way its runs' work in flight stops: another node
/// may take the lease from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDown {
    /// It could not renew within the lease.
    Unrenewed,
    /// Another node leads at a newer epoch.
    Fenced,
}

impl Ha {
    pub fn new(config: &drover_model::config::HaConfig) -> Ha {
        Ha {
            node: config.node.value.clone(),
            site: config.site.as_ref().map(|s| s.value.clone()),
            lease: config.lease.value.0,
            state: Mutex::new(HaState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HaState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_leader(&self) -> bool {
        self.state().leader
    }

    pub fn epoch(&self) -> i64 {
        self.state().epoch
    }

    /// The leader as last seen: its name, when the lease was live.
    pub fn leader(&self) -> Option<String> {
        let st = self.state();
        if st.leader {
            return Some(self.node.clone());
        }
        st.lease.as_ref().filter(|l| l.live()).and_then(|l| l.holder.clone())
    }

    /// How often the lease is renewed.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }
}

/// The lease loop: runs until `shutdown`, then gives the lease up if this node holds it.
pub async fn run(d: Arc<Daemon>, shutdown: CancellationToken) {
    let Some(ha) = d.ha.clone() else { return };
    let every = ha.renew_every();
    // When the last successful renewal was sent: the lease runs from there.
    let mut renewed_at: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        let attempt = tokio::time::timeout(every, async {
            d.store()
                .heartbeat(&ha.node, ha.site.as_deref(), Some(&d.base_url()))
                .await?;
            d.store().acquire_lease(LEASE, &ha.node, ha.lease).await
        })
        .await;
        match attempt {
            Ok(Ok(Some(lease))) => {
                d.metrics.ha_renewals.inc();
                renewed_at = Some(sent);
                let epoch = lease.epoch;
                let was_leader = {
                    let mut st = ha.state();
                    st.lease = Some(lease);
                    st.leader
                };
                if !was_leader {
                    become_leader(&d, &ha, epoch).await;
                }
            }
            Ok(Ok(None)) => {
                d.metrics.ha_renewals.inc();
                let lease = d.store().lease(LEASE).ok().flatten();
                let was_leader = {
                    let mut st = ha.state();
                    if let Some(l) = &lease {
                        st.epoch = st.epoch.max(l.epoch);
                    }
                    st.lease = lease.clone();
                    st.leader
                };
                d.metrics.ha_epoch.set(ha.epoch());
                if was_leader {
                    let holder = lease.and_then(|l| l.holder).unwrap_or_else(|| "another node".into());
                    step_down(&d, StepDown::Fenced, &format!("{holder} holds the lease now")).await;
                }
            }
            Ok(Err(e)) => {
                d.metrics.ha_failures.inc();
                tracing::warn!(node = %ha.node, error = %e, "cannot renew the leadership lease");
            }
            Err(_) => {
                d.metrics.ha_failures.inc();
                tracing::warn!(node = %ha.node, "the leadership lease attempt timed out after {every:?}");
            }
        }
        let unrenewed = renewed_at.map_or(ha.lease, |t| t.elapsed());
        if ha.is_leader() && unrenewed >= ha.lease {
            step_down(
                &d,
                StepDown::Unrenewed,
                &format!("the lease could not be renewed within {:?}", ha.lease),
            )
            .await;
        } else if ha.is_leader() && unrenewed >= ha.lease * 2 / 3 {
            // Two renewals missed: no new steps; the runs stop at a journaled point and
            // are resumed if the lease is renewed after all.
            let mut paused = 0;
            for run in d.runs.lock().unwrap_or_else(|p| p.into_inner()).values() {
                if !run.stop.is_cancelled() {
                    run.stop.cancel();
                    paused += 1;
                }
            }
            if paused > 0 {
                tracing::warn!(node = %ha.node, runs = paused, "the lease is not being renewed: no new steps until it is");
            }
        }
        if !d.draining.load(Ordering::SeqCst) {
            d.ready.store(true, Ordering::SeqCst);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until((sent + every).into()) => {}
        }
    }
}

/// Gives the lease up after a clean shutdown, so a standby need not wait for it to end.
pub async fn release(d: &Daemon) {
    let Some(ha) = &d.ha else { return };
    if !ha.is_leader() {
        return;
    }
    match d.store().release_lease(LEASE, &ha.node).await {
        Ok(true) => tracing::info!(node = %ha.node, "gave the leadership lease up"),
        Ok(false) => {}
        Err(e) => tracing::warn!(node = %ha.node, error = %e, "could not give the lease up; it ends by itself"),
    }
}

async fn become_leader(d: &Arc<Daemon>, ha: &Ha, epoch: i64) {
    if let Err(e) = d
        .store()
        .set_writer(Some(Writer {
            node: ha.node.clone(),
            epoch,
        }))
        .await
    {
        tracing::error!(node = %ha.node, error = %e, "took the lease but cannot write as its epoch; standing by");
        return;
    }
    {
        let mut st = ha.state();
        st.leader = true;
        st.epoch = epoch;
    }
    d.metrics.ha_leader.set(1);
    d.metrics.ha_epoch.set(epoch);
    d.metrics.ha_takeovers.inc();
    tracing::warn!(node = %ha.node, epoch, "this node leads the cluster now");
    super::resume_interrupted(d, d.snapshot().config.daemon.on_start).await;
    if let Err(e) = d.sched.start(d).await {
        tracing::error!(error = %e, "the schedules did not start");
    }
}

/// Stops leading: the schedules stop, and the runs in flight stop, work in flight
/// included. They end interrupted; the next leader, this node or another, resumes them.
pub async fn step_down(d: &Arc<Daemon>, why: StepDown, reason: &str) {
    let Some(ha) = &d.ha else { return };
    {
        let mut st = ha.state();
        if !st.leader {
            return;
        }
        st.leader = false;
    }
    d.metrics.ha_leader.set(0);
    tracing::error!(node = %ha.node, ?why, "stepping down: {reason}");
    d.sched.shutdown().await;
    for run in d.runs.lock().unwrap_or_else(|p| p.into_inner()).values() {
        run.stop.cancel();
        run.abort.cancel();
    }
}
