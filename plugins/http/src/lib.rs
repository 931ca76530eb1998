//! `http.check`: an HTTP(S) endpoint answers with the expected status, body and latency.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_model::{Dur, Issue, Located, Node, ParamCx};
use drover_plugin_api::{
    Action, ActionClass, ActionError, ActionSpec, Preview, Registry, StepContext, StepOutput, parse_params,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    pub url: Located<String>,
    /// Expected status (default 200).
    #[serde(default)]
    pub status: Option<Located<u16>>,
    /// The body must contain this text.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// The answer must come within this time.
    #[serde(default)]
    pub max_latency: Option<Dur>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn check(p: &CheckParams) -> Vec<Issue> {
    let mut out = Vec::new();
    let url = p.url.as_str();
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => {}
        _ => out.push(Issue::new(
            p.url.loc,
            format!("url `{url}` must be http://HOST/... or https://HOST/..."),
        )),
    }
    if let Some(s) = &p.status
        && !(100..=599).contains(&s.value)
    {
        out.push(Issue::new(
            s.loc,
            format!("status {} is not an HTTP status (100-599)", s.value),
        ));
    }
    out
}

/// `http.check`.
#[derive(Debug, Clone, Default)]
pub struct HttpCheck {
    client: Arc<OnceLock<reqwest::Client>>,
}

impl HttpCheck {
    fn client(&self) -> Result<&reqwest::Client, ActionError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        // rustls with ring, whatever else the process installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| ActionError::Permanent(format!("cannot set up the HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }
}

impl ActionSpec for HttpCheck {
    fn kind(&self) -> &str {
        "http.check"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Check
    }
    fn validate(&self, with: &Located<Node>, _: &ParamCx<'_>) -> Vec<Issue> {
        match parse_params::<CheckParams>(with) {
            Ok(p) => check(&p),
            Err(e) => e,
        }
    }
}

#[async_trait]
impl Action for HttpCheck {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: CheckParams = cx.params()?;
        Ok(Preview {
            summary: format!("GET {} expecting {}", p.url, p.status.map_or(200, |s| s.value)),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: CheckParams = cx.params()?;
        let client = self.client()?;
        let expected = p.status.map_or(200, |s| s.value);
        let mut req = client
            .get(p.url.as_str())
            .timeout(cx.remaining().max(Duration::from_millis(1)));
        for (k, v) in &p.headers {
            req = req.header(k, v);
        }
        let started = Instant::now();
        let send = async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let body = resp.text().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = tokio::select! {
            r = send => r.map_err(|e| ActionError::Retryable(format!("GET {}: {}", p.url, error_chain(&e))))?,
            () = cx.cancel.cancelled() => return Err(ActionError::Cancelled),
        };
        let latency = started.elapsed();
        let data = json!({
            "url": p.url.as_str(),
            "status": status,
            "latency_s": latency.as_secs_f64(),
            "body_bytes": body.len(),
        });
        if status != expected {
            return Err(ActionError::Retryable(format!(
                "GET {}: status {status}, expected {expected}",
                p.url
            )));
        }
        if let Some(needle) = &p.body_contains
            && !body.contains(needle.as_str())
        {
            return Err(ActionError::Retryable(format!(
                "GET {}: the body does not contain {needle:?}",
                p.url
            )));
        }
        if let Some(max) = p.max_latency
            && latency > max.0
        {
            return Err(ActionError::Retryable(format!(
                "GET {}: answered in {} ms, more than max_latency {max}",
                p.url,
                latency.as_millis()
            )));
        }
        Ok(StepOutput::new(format!("GET {}: {status} in {} ms", p.url, latency.as_millis())).with_data(data))
    }

    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Registers `http.check`.
pub fn register(reg: &mut Registry) {
    reg.add(Arc::new(HttpCheck::default()));
}
