//! Webhooks: run started, finished (outcome, RTO, RPO, report link), stuck, approval
//! needed; a JSON body with a Slack-compatible `text`. Delivery happens in the
//! background with retries and backoff: a failing or slow webhook never fails or slows
//! a run (a full queue drops the notice, with a warning). URLs are secrets: logs name
//! the webhook, never its URL.

use std::sync::Arc;
use std::time::Duration;

use drover_model::config::{Config, WebhookEvent};
use tokio::sync::mpsc;

#[derive(Debug)]
struct Notice {
    event: WebhookEvent,
    body: serde_json::Value,
}

/// Sends notices to the configured webhooks.
#[derive(Clone, Debug, Default)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Notice>>,
}

struct Hook {
    name: String,
    url: drover_model::SecretString,
    events: Vec<WebhookEvent>,
}

const ATTEMPTS: u32 = 4;

impl Webhooks {
    /// Starts the delivery task for the config's webhooks (none: a no-op sender).
    pub fn start(config: &Config) -> Result<Webhooks, String> {
        if config.webhooks.is_empty() {
            return Ok(Webhooks::default());
        }
        let hooks: Vec<Arc<Hook>> = config
            .webhooks
            .iter()
            .map(|w| {
                w.url
                    .resolve()
                    .map(|url| {
                        Arc::new(Hook {
                            name: w.name.value.clone(),
                            url,
                            events: w.events.clone(),
                        })
                    })
                    .map_err(|e| format!("webhook `{}`: {e}", w.name.value))
            })
            .collect::<Result<_, _>>()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("webhooks: {e}"))?;
        let (tx, mut rx) = mpsc::channel::<Notice>(256);
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let body = Arc::new(n.body);
                for h in hooks
                    .iter()
                    .filter(|h| h.events.is_empty() || h.events.contains(&n.event))
                {
                    let (h, client, body) = (h.clone(), client.clone(), body.clone());
                    tokio::spawn(async move { deliver(&client, &h, &body).await });
                }
            }
        });
        Ok(Webhooks { tx: Some(tx) })
    }

    /// Queues a notice; never waits.
    pub fn send(&self, event: WebhookEvent, body: serde_json::Value) {
        if let Some(tx) = &self.tx
            && tx.try_send(Notice { event, body }).is_err()
        {
            tracing::warn!("webhook queue full: a notice was dropped");
        }
    }
}

async fn deliver(client: &reqwest::Client, h: &Hook, body: &serde_json::Value) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(h.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(webhook = %h.name, attempt, status = %r.status(), "webhook refused the notice"),
            // The error may quote the URL: only its kind is logged.
            Err(e) => tracing::warn!(
                webhook = %h.name,
                attempt,
                timeout = e.is_timeout(),
                connect = e.is_connect(),
                "webhook unreachable"
            ),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::warn!(webhook = %h.name, "webhook notice given up after {ATTEMPTS} attempts");
}
