//! One kube client per configured cluster, and what its errors mean for a step.
//!
//! A cluster of the config names a kubeconfig file and a context; without a file,
//! `$KUBECONFIG` or `~/.kube/config` is read (with the context given), and without
//! either, the in-cluster configuration of a pod (`Config::infer`). The kubeconfig's
//! CA, bearer token or client certificate are used as they are written; TLS is
//! rustls with ring. The client's own retry layer is turned off: the engine owns
//! retries, and a 429 or 503 must reach the step.
//!
//! Every call is bounded by the attempt's deadline and cancellation token. Errors
//! become [`ActionError`]s as docs/KUBERNETES.md lists them: 401 and 403 permanent
//! (the message says which), 404 names the object and the cluster, 409 retryable (the
//! next attempt reads afresh), 429 and 5xx retryable (a 429's `Retry-After` is waited
//! out before the attempt ends, so the next one comes no sooner than the server
//! asked), and a change whose answer never came is outcome unknown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use drover_model::Config;
use drover_plugin_api::{ActionError, StepContext};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How long connecting to an API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The clients made so far, by cluster name.
#[derive(Default)]
pub(crate) struct Clients {
    by_cluster: tokio::sync::Mutex<HashMap<String, kube::Client>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

impl Clients {
    /// The client of cluster `name` (made on first use).
    pub async fn get(&self, config: &Config, name: &str) -> Result<kube::Client, ActionError> {
        let mut map = self.by_cluster.lock().await;
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        let client = connect(config, name).await?;
        map.insert(name.to_owned(), client.clone());
        Ok(client)
    }
}

async fn connect(config: &Config, name: &str) -> Result<kube::Client, ActionError> {
    // The binary installs ring as rustls' provider; so do we, for use without it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = config
        .kubernetes
        .iter()
        .find(|c| c.name.value == name)
        .ok_or_else(|| ActionError::Permanent(format!("unknown cluster `{name}`")))?;
    let opts = KubeConfigOptions {
        context: cluster.context.clone(),
        ..Default::default()
    };
    let bad = |what: &str, e: &dyn std::error::Error| {
        ActionError::Permanent(format!("cluster `{name}`: {what}: {}", chain(e)))
    };
    let mut kc = match &cluster.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| bad(&format!("cannot read the kubeconfig {}", path.display()), &e))?;
            kube::Config::from_custom_kubeconfig(file, &opts)
                .await
                .map_err(|e| bad(&format!("kubeconfig {}", path.display()), &e))?
        }
        None if cluster.context.is_some() => kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| bad("kubeconfig ($KUBECONFIG or ~/.kube/config)", &e))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| bad("no kubeconfig and no in-cluster configuration", &e))?,
    };
    kc.default_retry = false;
    kc.connect_timeout = Some(CONNECT_TIMEOUT);
    // Watches last long; every call is bounded by the attempt's deadline instead.
    kc.read_timeout = None;
    kube::Client::try_from(kc).map_err(|e| bad("cannot make a client", &e))
}

/// An error and its sources, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// What a call was, for messages.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    pub cluster: &'a str,
    /// `Deployment shop/api`.
    pub object: String,
    /// Whether the call changes something (a lost answer is then outcome unknown).
    pub change: bool,
}

/// Runs one API call under the attempt's deadline and cancellation.
pub(crate) async fn call<T>(
    cx: &StepContext,
    what: &Call<'_>,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ActionError> {
    let left = cx.remaining();
    tokio::select! {
        _ = cx.cancel.cancelled() => Err(if what.change {
            ActionError::OutcomeUnknown(format!("cancelled while changing {} on `{}`", what.object, what.cluster))
        } else {
            ActionError::Cancelled
        }),
        r = tokio::time::timeout(left, fut) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(cx, what, e).await),
            Err(_) => {
                let m = format!("`{}` did not answer within the step's timeout ({} on {})", what.cluster, if what.change { "changing" } else { "reading" }, what.object);
                Err(if what.change { ActionError::OutcomeUnknown(m) } else { ActionError::Retryable(m) })
            }
        },
    }
}

/// The error of a call as a step error (see the module documentation).
pub(crate) async fn map_error(cx: &StepContext, what: &Call<'_>, e: kube::Error) -> ActionError {
    let c = what.cluster;
    match e {
        kube::Error::Api(s) => {
            let msg = s.message.clone();
            match s.code {
                401 => ActionError::Permanent(format!(
                    "cluster `{c}` refused the credentials of its kubeconfig (401 Unauthorized): check the token or client certificate of the context"
                )),
                403 => ActionError::Permanent(format!("cluster `{c}` forbids this (403 Forbidden): {msg}")),
                404 => ActionError::Permanent(format!("{} not found on cluster `{c}` (404)", what.object)),
                409 => ActionError::Retryable(format!(
                    "conflict on {} on `{c}` (409): {msg}; the next attempt reads it afresh",
                    what.object
                )),
                429 => {
                    let after = s
                        .details
                        .as_ref()
                        .map(|d| d.retry_after_seconds)
                        .filter(|&s| s > 0)
                        .map(|s| Duration::from_secs(u64::from(s)));
                    match after {
                        Some(d) if honour_retry_after(cx, d).await => ActionError::Retryable(format!(
                            "cluster `{c}` is throttling (429 Too Many Requests); waited the {}s it asked for (Retry-After)",
                            d.as_secs()
                        )),
                        Some(d) => ActionError::Retryable(format!(
                            "cluster `{c}` is throttling (429 Too Many Requests) and asks to retry after {}s, later than this attempt may last",
                            d.as_secs()
                        )),
                        None => ActionError::Retryable(format!(
                            "cluster `{c}` is throttling (429 Too Many Requests): {msg}"
                        )),
                    }
                }
                504 if what.change => ActionError::OutcomeUnknown(format!(
                    "cluster `{c}` timed out (504) while changing {}: {msg}",
                    what.object
                )),
                code @ 500..=599 => ActionError::Retryable(format!(
                    "cluster `{c}` answered {code} {} on {}: {msg}",
                    s.reason, what.object
                )),
                code => ActionError::Permanent(format!(
                    "cluster `{c}` refused the request on {} ({code} {}): {msg}",
                    what.object, s.reason
                )),
            }
        }
        other => {
            let text = chain(&other);
            let lower = text.to_ascii_lowercase();
            if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("tls") {
                ActionError::Permanent(format!(
                    "cluster `{c}`: TLS failed, the server's certificate is not trusted by the kubeconfig's CA: {text}"
                ))
            } else if lower.contains("connection refused")
                || lower.contains("dns error")
                || lower.contains("connect timeout")
                || lower.contains("timed out") && lower.contains("connect")
            {
                ActionError::Retryable(format!("cannot connect to cluster `{c}`: {text}"))
            } else if what.change {
                ActionError::OutcomeUnknown(format!(
                    "the answer of `{c}` to a change of {} was lost: {text}",
                    what.object
                ))
            } else {
                ActionError::Retryable(format!("cluster `{c}`: {text}"))
            }
        }
    }
}

/// Waits out a 429's `Retry-After` when the attempt has time for it (a second of
/// slack kept). Returns whether it did.
async fn honour_retry_after(cx: &StepContext, d: Duration) -> bool {
    let until = Instant::now() + d;
    if until + Duration::from_secs(1) > cx.deadline {
        return false;
    }
    tokio::select! {
        _ = cx.cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
