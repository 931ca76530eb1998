//! `manual.approve` gates in the daemon: a gate waits until an operator approves or
//! rejects it through the API (or the dashboard), with a reason. Pending gates are
//! listed per run; a gate whose run stops is forgotten.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use drover_plugin_api::{Approval, Approver};
use serde::Serialize;
use tokio::sync::oneshot;

use super::metrics::Metrics;
use super::webhooks::Webhooks;

/// An operator's decision on a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub approve: bool,
    pub by: String,
    pub reason: String,
}

/// A gate waiting for a decision.
#[derive(Debug, Clone, Serialize)]
pub struct PendingGate {
    pub step: String,
    pub prompt: String,
    pub since: String,
}

struct Waiting {
    gate: PendingGate,
    tx: oneshot::Sender<Decision>,
}

#[derive(Default)]
struct Inner {
    /// (run, step) -> the gate.
    gates: BTreeMap<(String, String), Waiting>,
}

/// The daemon's approver.
#[derive(Clone)]
pub struct Approvals {
    inner: Arc<Mutex<Inner>>,
    metrics: Arc<Metrics>,
    webhooks: Webhooks,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").finish_non_exhaustive()
    }
}

/// Removes a gate when its wait ends, also when the run drops it.
struct Forget {
    inner: Arc<Mutex<Inner>>,
    key: (String, String),
    metrics: Arc<Metrics>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gates
            .remove(&self.key);
        self.metrics.approvals_waiting.dec();
    }
}

impl Approvals {
    pub fn new(metrics: Arc<Metrics>, webhooks: Webhooks) -> Approvals {
        Approvals {
            inner: Arc::default(),
            metrics,
            webhooks,
        }
    }

    /// The gates of `run` waiting for a decision.
    pub fn pending(&self, run: &str) -> Vec<PendingGate> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .gates
            .iter()
            .filter(|((r, _), _)| r == run)
            .map(|(_, w)| w.gate.clone())
            .collect()
    }

    /// Every waiting gate: (run, gate).
    pub fn all(&self) -> Vec<(String, PendingGate)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .gates
            .iter()
            .map(|((r, _), w)| (r.clone(), w.gate.clone()))
            .collect()
    }

    /// Releases (or rejects) a waiting gate; `false` when there is none.
    pub fn decide(&self, run: &str, step: &str, decision: Decision) -> bool {
        let waiting = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gates
            .remove(&(run.to_owned(), step.to_owned()));
        match waiting {
            Some(w) => w.tx.send(decision).is_ok(),
            None => false,
        }
    }
}

#[async_trait]
impl Approver for Approvals {
    async fn approve(&self, run_id: &str, step: &str, prompt: &str) -> Result<Approval, String> {
        let (tx, rx) = oneshot::channel();
        let key = (run_id.to_owned(), step.to_owned());
        let gate = PendingGate {
            step: step.to_owned(),
            prompt: prompt.to_owned(),
            since: drover_engine::journal::rfc3339(std::time::SystemTime::now()),
        };
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gates
            .insert(key.clone(), Waiting { gate, tx });
        self.metrics.approvals_waiting.inc();
        let _forget = Forget {
            inner: self.inner.clone(),
            key,
            metrics: self.metrics.clone(),
        };
        self.webhooks.send(
            drover_model::config::WebhookEvent::ApprovalNeeded,
            serde_json::json!({
                "event": "approval_needed",
                "run": run_id,
                "step": step,
                "prompt": prompt,
                "text": format!("drover: run {run_id} waits for an approval of `{step}`: {prompt}"),
            }),
        );
        match rx.await {
            Ok(d) if d.approve => Ok(Approval {
                by: d.by,
                via: "api".into(),
                reason: Some(d.reason),
            }),
            Ok(d) => Err(format!("rejected by {} via the API: {}", d.by, d.reason)),
            Err(_) => Err(format!("the approval of `{step}` was withdrawn")),
        }
    }
}
