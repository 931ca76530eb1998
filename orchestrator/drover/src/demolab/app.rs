//! The payments application's health endpoint in each site of the lab, as a load
//! balancer would see it: `GET /east/healthz` and `GET /west/healthz` answer 200 `ok`
//! only while every payments workload of that site has all its replicas ready in that
//! site's Kubernetes (the simulator's own status, which the drill changes), and 503
//! with what is missing otherwise. So the drill's HTTP check passes because west really
//! came up, and its cleanup's check passes because west is really idle again.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use drover_lab::K8sSim;

use super::WORKLOADS;

#[derive(Clone)]
struct Sites {
    east: Arc<K8sSim>,
    west: Arc<K8sSim>,
}

/// What is not ready in a site, or an empty list.
fn not_ready(sim: &K8sSim) -> Vec<String> {
    WORKLOADS
        .iter()
        .filter_map(|(kind, name, _)| {
            let v = sim.get(*kind, "payments", name)?;
            let want = v["spec"]["replicas"].as_i64().unwrap_or(0);
            let ready = v["status"]["readyReplicas"].as_i64().unwrap_or(0);
            (want == 0 || ready < want).then(|| format!("{name} {ready}/{want} ready"))
        })
        .collect()
}

async fn healthz(State(s): State<Sites>, Path(site): Path<String>) -> (StatusCode, String) {
    let sim = match site.as_str() {
        "east" => &s.east,
        "west" => &s.west,
        _ => return (StatusCode::NOT_FOUND, format!("no site {site}\n")),
    };
    let missing = not_ready(sim);
    if missing.is_empty() {
        (StatusCode::OK, format!("ok: payments serves in {site}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("payments does not serve in {site}: {}\n", missing.join(", ")),
        )
    }
}

/// Starts the endpoint on `rt`; returns its base URL.
pub fn start(rt: &tokio::runtime::Runtime, east: Arc<K8sSim>, west: Arc<K8sSim>) -> anyhow::Result<String> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/{site}/healthz", get(healthz))
        .with_state(Sites { east, west });
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}
