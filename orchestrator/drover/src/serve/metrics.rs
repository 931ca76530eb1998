//! `/metrics` in the Prometheus text format (prometheus-client): runs by outcome, step
//! durations, the last RTO and RPO per service against target, schedule lag, skipped
//! firings, approvals waiting, and the continuity programme: tiered CIs per tier and
//! coverage status, open corrective actions.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub mode: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    pub schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CoverageLabels {
    pub tier: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub runs: Family<OutcomeLabels, Counter>,
    pub runs_active: Gauge,
    pub step_seconds: Family<PhaseLabels, Histogram>,
    pub rto: Family<ServiceLabels, F64Gauge>,
    pub rto_target: Family<ServiceLabels, F64Gauge>,
    pub rpo: Family<ServiceLabels, F64Gauge>,
    pub rpo_target: Family<ServiceLabels, F64Gauge>,
    pub schedule_lag: Family<ScheduleLabels, F64Gauge>,
    pub firings_skipped: Family<ScheduleLabels, Counter>,
    pub approvals_waiting: Gauge,
    pub coverage: Family<CoverageLabels, Gauge>,
    pub actions_open: Gauge,
    /// High availability: 1 while this node leads, 0 while it stands by.
    pub ha_leader: Gauge,
    pub ha_epoch: Gauge,
    pub ha_renewals: Counter,
    pub ha_failures: Counter,
    pub ha_takeovers: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("drover");
        let runs = Family::<OutcomeLabels, Counter>::default();
        registry.register("runs", "Runs that ended, by mode and outcome", runs.clone());
        let runs_active = Gauge::default();
        registry.register("runs_active", "Runs going on in this daemon", runs_active.clone());
        let step_seconds = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0])
        });
        registry.register(
            "step_duration_seconds",
            "Duration of finished steps",
            step_seconds.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<ServiceLabels, F64Gauge>::default();
            registry.register(name, help, f.clone());
            f
        };
        let rto = gauge(
            &mut registry,
            "rto_achieved_seconds",
            "RTO achieved by the service's last run",
        );
        let rto_target = gauge(&mut registry, "rto_target_seconds", "The service's RTO target");
        let rpo = gauge(
            &mut registry,
            "rpo_achieved_seconds",
            "RPO achieved by the service's last run",
        );
        let rpo_target = gauge(&mut registry, "rpo_target_seconds", "The service's RPO target");
        let schedule_lag = Family::<ScheduleLabels, F64Gauge>::default();
        registry.register(
            "schedule_lag_seconds",
            "How late the schedule's last firing started its run",
            schedule_lag.clone(),
        );
        let firings_skipped = Family::<ScheduleLabels, Counter>::default();
        registry.register(
            "schedule_skipped",
            "Firings skipped (service busy, anti-flap) or missed while the daemon was down",
            firings_skipped.clone(),
        );
        let approvals_waiting = Gauge::default();
        registry.register(
            "approvals_waiting",
            "Gates waiting for a decision",
            approvals_waiting.clone(),
        );
        let coverage = Family::<CoverageLabels, Gauge>::default();
        registry.register(
            "coverage_cis",
            "Tiered CIs by tier and drill coverage status (ok, due, overdue, never, failing, uncovered)",
            coverage.clone(),
        );
        let actions_open = Gauge::default();
        registry.register(
            "corrective_actions_open",
            "Corrective actions not closed yet",
            actions_open.clone(),
        );
        let ha_leader = Gauge::default();
        registry.register(
            "ha_leader",
            "1 while this node leads the cluster (or runs alone), 0 while it stands by",
            ha_leader.clone(),
        );
        let ha_epoch = Gauge::default();
        registry.register(
            "ha_epoch",
            "The leadership epoch this node last saw (0 outside high availability)",
            ha_epoch.clone(),
        );
        let ha_renewals = Counter::default();
        registry.register(
            "ha_lease_renewals",
            "Lease attempts that reached the state store (taken, renewed, or held by another node)",
            ha_renewals.clone(),
        );
        let ha_failures = Counter::default();
        registry.register(
            "ha_lease_failures",
            "Lease attempts that failed or timed out (state store unreachable)",
            ha_failures.clone(),
        );
        let ha_takeovers = Counter::default();
        registry.register(
            "ha_takeovers",
            "Times this node became the leader",
            ha_takeovers.clone(),
        );
        Metrics {
            ha_leader,
            ha_epoch,
            ha_renewals,
            ha_failures,
            ha_takeovers,
            coverage,
            actions_open,
            registry,
            runs,
            runs_active,
            step_seconds,
            rto,
            rto_target,
            rpo,
            rpo_target,
            schedule_lag,
            firings_skipped,
            approvals_waiting,
        }
    }

    /// A finished run's figures.
    pub fn finished(&self, st: &drover_engine::RunState) {
        let Some(f) = &st.finished else { return };
        self.runs
            .get_or_create(&OutcomeLabels {
                mode: st.mode.map(|m| m.as_str()).unwrap_or("?").to_owned(),
                outcome: f.outcome.as_str().to_owned(),
            })
            .inc();
        let svc = ServiceLabels {
            service: st.service.clone(),
        };
        let targets = st.plan.as_ref().map(|p| p.targets);
        if let Some(v) = f.rto_s {
            self.rto.get_or_create(&svc).set(v);
        }
        if let Some(v) = f.rpo_s {
            self.rpo.get_or_create(&svc).set(v);
        }
        if let Some(t) = targets.and_then(|t| t.rto_s) {
            self.rto_target.get_or_create(&svc).set(t);
        }
        if let Some(t) = targets.and_then(|t| t.rpo_s) {
            self.rpo_target.get_or_create(&svc).set(t);
        }
    }

    /// The coverage's status counts per tier (every status, zeros too).
    pub fn coverage(&self, c: &drover_engine::coverage::Coverage) {
        for t in &c.tiers {
            for (status, n) in &t.counts {
                self.coverage
                    .get_or_create(&CoverageLabels {
                        tier: t.tier.clone(),
                        status: (*status).to_owned(),
                    })
                    .set(*n as i64);
            }
        }
        self.actions_open.set(c.open_actions.len() as i64);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
