//! The simulator as an API server, spoken to over raw HTTPS (rustls, the CA it
//! generated): authentication and authorization, `Status` objects, resourceVersion and
//! generation bookkeeping, patch content types, replace preconditions, watches from a
//! version and `410 Gone`.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// One request with `Connection: close`; the status and the body (de-chunked).
fn request(sim: &K8sSim, token: &str, method: &str, path: &str, ctype: &str, body: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        let pem = sim.ca_pem().to_owned();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        roots.add(CertificateDer::from(der)).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(sim.url().trim_start_matches("https://"))
            .await
            .unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        let code: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            let mut out = String::new();
            let mut rest = rest;
            while let Some((size, tail)) = rest.split_once("\r\n") {
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if n == 0 || tail.len() < n {
                    break;
                }
                out.push_str(&tail[..n]);
                rest = tail[n..].trim_start_matches("\r\n");
            }
            out
        } else {
            rest.to_owned()
        };
        (code, body)
    })
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

const DEPLOY: &str = "/apis/apps/v1/namespaces/shop/deployments/api";
const MERGE: &str = "application/merge-patch+json";

#[test]
fn tokens_statuses_and_discovery() {
    let sim = K8sSim::start("t").unwrap();
    sim.add(Kind::Deployment, "shop", "api", 1, Duration::ZERO);
    let admin = sim.shared.admin_token.clone();
    let ro = sim.shared.readonly_token.clone();

    let (code, body) = request(&sim, "wrong", "GET", DEPLOY, MERGE, "");
    assert_eq!(code, 401);
    let st = json_of(&body);
    assert_eq!(
        (st["kind"].as_str(), st["reason"].as_str(), st["code"].as_i64()),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );

    let (code, body) = request(&sim, &ro, "GET", DEPLOY, MERGE, "");
    assert_eq!(code, 200, "{body}");
    let (code, body) = request(
        &sim,
        &ro,
        "PATCH",
        &format!("{DEPLOY}/scale"),
        MERGE,
        r#"{"spec":{"replicas":2}}"#,
    );
    assert_eq!(code, 403);
    assert_eq!(json_of(&body)["reason"], "Forbidden");
    assert_eq!(sim.replicas(Kind::Deployment, "shop", "api"), Some(1));

    let (code, body) = request(
        &sim,
        &admin,
        "GET",
        "/apis/apps/v1/namespaces/shop/deployments/nope",
        MERGE,
        "",
    );
    assert_eq!(code, 404);
    let st = json_of(&body);
    assert_eq!(st["message"], "deployments.apps \"nope\" not found");
    assert_eq!(
        st["details"],
        json!({"name": "nope", "group": "apps", "kind": "deployments"})
    );

    let (_, body) = request(&sim, &admin, "GET", "/apis/apps/v1", MERGE, "");
    let names: Vec<String> = json_of(&body)["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"deployments/scale".to_owned()) && names.contains(&"statefulsets".to_owned()));
    let (code, body) = request(&sim, &admin, "GET", "/version", MERGE, "");
    assert_eq!((code, json_of(&body)["minor"].as_str()), (200, Some("37")));
}

#[test]
fn resource_versions_generations_and_patch_types() {
    let sim = K8sSim::start("t").unwrap();
    sim.add(Kind::Deployment, "shop", "api", 1, Duration::ZERO);
    let admin = sim.shared.admin_token.clone();
    let rv = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let g = |v: &Value| v["metadata"]["generation"].as_i64().unwrap();
    let before = sim.get(Kind::Deployment, "shop", "api").unwrap();

    // A label: a new resourceVersion, the same generation.
    let label = r#"{"metadata":{"labels":{"tier":"web"}}}"#;
    let (code, body) = request(&sim, &admin, "PATCH", DEPLOY, MERGE, label);
    assert_eq!(code, 200, "{body}");
    let labelled = json_of(&body);
    assert!(rv(&labelled) > rv(&before));
    assert_eq!(g(&labelled), g(&before));
    // The same patch again changes nothing: the same resourceVersion (no controller
    // runs for a label, so nothing else can have written in between).
    let (_, body) = request(&sim, &admin, "PATCH", DEPLOY, MERGE, label);
    assert_eq!(
        rv(&json_of(&body)),
        rv(&labelled),
        "a no-op patch keeps the resourceVersion"
    );
    // A Deployment's annotation bumps the generation (they are copied to ReplicaSets).
    let annotation = r#"{"metadata":{"annotations":{"a":"1"}}}"#;
    let (code, body) = request(&sim, &admin, "PATCH", DEPLOY, MERGE, annotation);
    assert_eq!(code, 200, "{body}");
    let after = json_of(&body);
    assert!(rv(&after) > rv(&labelled));
    assert_eq!(g(&after), g(&before) + 1);
    // A strategic merge of a container by name: a new generation.
    let (code, body) = request(
        &sim,
        &admin,
        "PATCH",
        DEPLOY,
        "application/strategic-merge-patch+json",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"x:2"}]}}}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(g(&v), g(&before) + 2);
    assert_eq!(v["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
    // Apply needs a field manager; JSON patch is not served.
    let (code, _) = request(
        &sim,
        &admin,
        "PATCH",
        DEPLOY,
        "application/apply-patch+yaml",
        r#"{"spec":{"replicas":2}}"#,
    );
    assert_eq!(code, 422);
    let (code, body) = request(
        &sim,
        &admin,
        "PATCH",
        &format!("{DEPLOY}?fieldManager=drover"),
        "application/apply-patch+yaml",
        r#"{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replicas":2}}"#,
    );
    assert_eq!(
        (code, json_of(&body)["spec"]["replicas"].as_i64()),
        (200, Some(2)),
        "{body}"
    );
    let (code, _) = request(&sim, &admin, "PATCH", DEPLOY, "application/json-patch+json", "[]");
    assert_eq!(code, 415);
    // Status cannot be patched through the main resource; replicas must be >= 0.
    let (_, body) = request(
        &sim,
        &admin,
        "PATCH",
        DEPLOY,
        MERGE,
        r#"{"status":{"readyReplicas":99}}"#,
    );
    assert_ne!(json_of(&body)["status"]["readyReplicas"], 99);
    let (code, _) = request(
        &sim,
        &admin,
        "PATCH",
        &format!("{DEPLOY}/scale"),
        MERGE,
        r#"{"spec":{"replicas":-1}}"#,
    );
    assert_eq!(code, 422);
    // Replace with a stale resourceVersion: 409.
    let mut stale = before.clone();
    stale["spec"]["replicas"] = json!(5);
    let (code, body) = request(&sim, &admin, "PUT", DEPLOY, "application/json", &stale.to_string());
    assert_eq!(code, 409, "{body}");
    assert_eq!(json_of(&body)["reason"], "Conflict");
    let mut fresh = sim.get(Kind::Deployment, "shop", "api").unwrap();
    fresh["spec"]["replicas"] = json!(5);
    let (code, _) = request(&sim, &admin, "PUT", DEPLOY, "application/json", &fresh.to_string());
    assert_eq!(code, 200);
    assert_eq!(sim.replicas(Kind::Deployment, "shop", "api"), Some(5));
}

#[test]
fn watches_replay_from_a_version_and_say_410_when_it_is_gone() {
    let sim = K8sSim::start("t").unwrap();
    sim.add(Kind::Deployment, "shop", "api", 1, Duration::ZERO);
    let admin = sim.shared.admin_token.clone();
    let from = sim.resource_version();
    let (code, _) = request(
        &sim,
        &admin,
        "PATCH",
        &format!("{DEPLOY}/scale"),
        MERGE,
        r#"{"spec":{"replicas":2}}"#,
    );
    assert_eq!(code, 200);
    // Let the controller settle, then watch from before the change (ends after 1 s).
    std::thread::sleep(Duration::from_millis(200));
    let path = format!(
        "/apis/apps/v1/namespaces/shop/deployments?watch=true&resourceVersion={from}&timeoutSeconds=1&fieldSelector=metadata.name%3Dapi"
    );
    let (code, body) = request(&sim, &admin, "GET", &path, MERGE, "");
    assert_eq!(code, 200);
    let events: Vec<Value> = body.lines().map(json_of).collect();
    assert!(events.len() >= 2, "the scale and the controller's status: {events:#?}");
    assert!(events.iter().all(|e| e["type"] == "MODIFIED"));
    let last = events.last().unwrap();
    assert_eq!(last["object"]["status"]["readyReplicas"], 2);
    assert_eq!(last["object"]["status"]["observedGeneration"], 2);
    // After compaction the same version is gone.
    sim.compact();
    let (_, body) = request(&sim, &admin, "GET", &path, MERGE, "");
    let ev = json_of(body.lines().next().unwrap());
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
}
