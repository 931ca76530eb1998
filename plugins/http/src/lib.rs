//! `http.check`: an HTTP(S) endpoint answers with the expected status, body and latency.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_model::{Dur, Issue, Located};
use drover_plugin_api::{ActionClass, Registry, TypedSpec};
use serde::Deserialize;

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
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => {}
        _ => out.push(Issue::new(
            p.url.loc,
            format!("url `{url}` must be http://HOST/... or https://HOST/..."),
        )),
    }
    if let Some(s) = &p.status {
        if !(100..=599).contains(&s.value) {
            out.push(Issue::new(
                s.loc,
                format!("status {} is not an HTTP status (100-599)", s.value),
            ));
        }
    }
    out
}

/// Registers `http.check`.
pub fn register(reg: &mut Registry) {
    reg.add_spec(Arc::new(TypedSpec::<CheckParams> {
        kind: "http.check",
        class: ActionClass::Check,
        compensable: false,
        check: |p, _| check(p),
    }));
}
