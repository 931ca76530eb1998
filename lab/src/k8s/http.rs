//! The simulator's HTTP side: routing, bearer-token authentication and the
//! read-only token's authorization, `Status` objects for every error, discovery,
//! workloads get / list / watch / patch / replace, the `scale` subresource, and the
//! injected faults.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status, StatusDetails};
use serde_json::{Value, json};

use super::patch;
use super::store::{Key, Kind, desired};
use super::{Fault, Logged, Scope, Shared};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A chunked body fed by a channel: the event stream of a watch.
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a valid response")
}

/// A `Status` object (`kind: Status`), as the API server sends for every error.
fn status(code: u16, reason: &str, message: impl Into<String>, details: Option<StatusDetails>) -> Value {
    let st = Status {
        code: Some(i32::from(code)),
        details,
        message: Some(message.into()),
        metadata: ListMeta::default(),
        reason: Some(reason.to_owned()),
        status: Some("Failure".to_owned()),
    };
    let mut v = serde_json::to_value(st).expect("a status serializes");
    v["kind"] = json!("Status");
    v["apiVersion"] = json!("v1");
    v
}

fn error(code: u16, reason: &str, message: impl Into<String>, details: Option<StatusDetails>) -> Response<Body> {
    respond(code, &status(code, reason, message, details))
}

fn details(kind: Kind, name: &str) -> Option<StatusDetails> {
    Some(StatusDetails {
        name: Some(name.to_owned()),
        group: Some("apps".to_owned()),
        kind: Some(kind.plural().to_owned()),
        ..Default::default()
    })
}

fn not_found(kind: Kind, name: &str) -> Response<Body> {
    error(
        404,
        "NotFound",
        format!("{}.apps \"{name}\" not found", kind.plural()),
        details(kind, name),
    )
}

fn conflict(kind: Kind, name: &str) -> Response<Body> {
    error(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {}.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.plural()
        ),
        details(kind, name),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Which user a bearer token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum User {
    Admin,
    ReadOnly,
}

impl User {
    fn name(self) -> &'static str {
        match self {
            User::Admin => "system:serviceaccount:drover:admin",
            User::ReadOnly => "system:serviceaccount:drover:readonly",
        }
    }
}

/// Handles one request (and logs it).
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let q = req.uri().query().map(str::to_owned);
    let resp = route(&shared, req, true).await;
    shared.log.lock().expect("log").push(Logged {
        method: method.to_string(),
        path,
        query: q.unwrap_or_default(),
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>, faults: bool) -> Response<Body> {
    // Authentication: a bearer token of a known user, else 401.
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let user = match token.as_deref() {
        Some(t) if t == shared.admin_token => User::Admin,
        Some(t) if t == shared.readonly_token => User::ReadOnly,
        _ => return error(401, "Unauthorized", "Unauthorized", None),
    };
    let segs: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let params = query(req.uri().query());
    let method = req.method().clone();
    let is_watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let workload_route = segs.first() == Some(&"apis") && segs.len() > 3;

    // Faults apply to the API proper (not discovery), in the order they were injected.
    if workload_route && faults {
        let write = method != Method::GET;
        let fault = shared.take_fault(|s| match s {
            Scope::Any => !is_watch,
            Scope::Reads => !write && !is_watch,
            Scope::Writes => write,
            Scope::Watches => is_watch,
        });
        match fault {
            Some(Fault::TooManyRequests { retry_after_s }) => {
                let d = StatusDetails {
                    retry_after_seconds: Some(retry_after_s as i32),
                    ..Default::default()
                };
                let mut r = error(
                    429,
                    "TooManyRequests",
                    "the server has received too many requests and has asked us to try again later",
                    Some(d),
                );
                r.headers_mut()
                    .insert("retry-after", retry_after_s.to_string().parse().expect("a header"));
                return r;
            }
            Some(Fault::ServerError(code)) => {
                let reason = match code {
                    503 => "ServiceUnavailable",
                    504 => "Timeout",
                    _ => "InternalError",
                };
                return error(
                    code,
                    reason,
                    format!("injected fault: the server answered {code}"),
                    None,
                );
            }
            // The request is carried out at once; its answer comes late (a change whose
            // answer never arrives in time is the classic unknown outcome).
            Some(Fault::Slow(d)) => {
                let resp = Box::pin(route(shared, req, false)).await;
                tokio::time::sleep(d).await;
                return resp;
            }
            Some(Fault::DropWatch) => return watch(shared, &segs, &params, true).await,
            Some(Fault::WatchGone) => {
                let rv = shared.store.lock().expect("store").rv;
                let from = params.get("resourceVersion").cloned().unwrap_or_default();
                let st = status(410, "Expired", format!("too old resource version: {from} ({rv})"), None);
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Full::new(event_line("ERROR", &st)).boxed())
                    .expect("a valid response");
            }
            None => {}
        }
    }

    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["version"]) => respond(
            200,
            &json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-drover-sim", "gitCommit": "drover-lab",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none",
                "compiler": "rustc", "platform": "linux/amd64"}),
        ),
        (Method::GET, ["api"]) => respond(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr}]}),
        ),
        (Method::GET, ["api", "v1"]) => respond(
            200,
            &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
                 "verbs": ["get", "list"], "shortNames": ["ns"]}]}),
        ),
        (Method::GET, ["apis"]) => respond(
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]}),
        ),
        (Method::GET, ["apis", "apps"]) => respond(
            200,
            &json!({"kind": "APIGroup", "apiVersion": "v1", "name": "apps",
                "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}),
        ),
        (Method::GET, ["apis", "apps", "v1"]) => respond(200, &apps_resources()),
        (Method::GET, ["api", "v1", "namespaces"]) => {
            let store = shared.store.lock().expect("store");
            let items: Vec<Value> = store.namespaces.iter().map(|n| namespace(n)).collect();
            respond(
                200,
                &json!({"kind": "NamespaceList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
            )
        }
        (Method::GET, ["api", "v1", "namespaces", ns]) => {
            let store = shared.store.lock().expect("store");
            if store.namespaces.contains(*ns) {
                respond(200, &namespace(ns))
            } else {
                let d = StatusDetails {
                    name: Some((*ns).to_owned()),
                    kind: Some("namespaces".to_owned()),
                    ..Default::default()
                };
                error(404, "NotFound", format!("namespaces \"{ns}\" not found"), Some(d))
            }
        }
        (Method::GET, ["apis", "apps", "v1", plural]) if Kind::from_plural(plural).is_some() => {
            if is_watch {
                watch(shared, &segs, &params, false).await
            } else {
                list(shared, Kind::from_plural(plural).expect("a kind"), None, &params)
            }
        }
        (_, ["apis", "apps", "v1", "namespaces", ns, plural, rest @ ..]) if Kind::from_plural(plural).is_some() => {
            let kind = Kind::from_plural(plural).expect("a kind");
            match (method, rest) {
                (Method::GET, []) if is_watch => watch(shared, &segs, &params, false).await,
                (Method::GET, []) => list(shared, kind, Some(ns), &params),
                (Method::GET, [name]) => get(shared, &(kind, (*ns).to_owned(), (*name).to_owned()), false),
                (Method::GET, [name, "scale"]) => get(shared, &(kind, (*ns).to_owned(), (*name).to_owned()), true),
                (Method::GET, [name, "status"]) => get(shared, &(kind, (*ns).to_owned(), (*name).to_owned()), false),
                (m @ (Method::PATCH | Method::PUT), [name, sub @ ..]) if sub.is_empty() || sub == ["scale"] => {
                    let key = (kind, (*ns).to_owned(), (*name).to_owned());
                    let resource = if sub.is_empty() {
                        kind.plural().to_owned()
                    } else {
                        format!("{}/scale", kind.plural())
                    };
                    if user == User::ReadOnly {
                        let verb = if m == Method::PATCH { "patch" } else { "update" };
                        return error(
                            403,
                            "Forbidden",
                            format!(
                                "{}.apps \"{name}\" is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"apps\" in the namespace \"{ns}\"",
                                kind.plural(),
                                user.name()
                            ),
                            details(kind, name),
                        );
                    }
                    let ctype = req
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    let body = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(e) => return error(400, "BadRequest", format!("reading the body: {e}"), None),
                    };
                    write(
                        shared,
                        &key,
                        m == Method::PATCH,
                        !sub.is_empty(),
                        &ctype,
                        &body,
                        &params,
                    )
                }
                (m, _) => error(
                    405,
                    "MethodNotAllowed",
                    format!("the server does not allow this method on the requested resource ({m})"),
                    None,
                ),
            }
        }
        _ => error(
            404,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}

fn namespace(name: &str) -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

fn apps_resources() -> Value {
    let mut resources = Vec::new();
    for (plural, singular, kind, short) in [
        ("deployments", "deployment", "Deployment", "deploy"),
        ("statefulsets", "statefulset", "StatefulSet", "sts"),
    ] {
        resources.push(
            json!({"name": plural, "singularName": singular, "namespaced": true, "kind": kind,
            "verbs": ["get", "list", "patch", "update", "watch"], "shortNames": [short], "categories": ["all"]}),
        );
        resources.push(
            json!({"name": format!("{plural}/scale"), "singularName": "", "namespaced": true,
            "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}),
        );
        resources.push(
            json!({"name": format!("{plural}/status"), "singularName": "", "namespaced": true,
            "kind": kind, "verbs": ["get"]}),
        );
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1", "resources": resources})
}

/// The autoscaling/v1 `Scale` of a workload.
fn scale_of(v: &Value) -> Value {
    let m = &v["metadata"];
    let selector = v["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": desired(v)},
        "status": {"replicas": v["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector}})
}

fn get(shared: &Arc<Shared>, key: &Key, scale: bool) -> Response<Body> {
    let store = shared.store.lock().expect("store");
    match store.objects.get(key) {
        Some(o) if scale => respond(200, &scale_of(&o.value)),
        Some(o) => respond(200, &o.value),
        None => not_found(key.0, &key.2),
    }
}

/// A field selector (`metadata.name=X,metadata.namespace=Y`) and an equality-based
/// label selector (`k=v,k2=v2`).
#[derive(Debug, Default)]
struct Filter {
    name: Option<String>,
    namespace: Option<String>,
    labels: Vec<(String, String)>,
}

impl Filter {
    fn parse(params: &BTreeMap<String, String>) -> Result<Filter, String> {
        let mut f = Filter::default();
        for term in params.get("fieldSelector").into_iter().flat_map(|s| s.split(',')) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            match term.split_once('=') {
                Some(("metadata.name", v)) => f.name = Some(v.trim_start_matches('=').to_owned()),
                Some(("metadata.namespace", v)) => f.namespace = Some(v.trim_start_matches('=').to_owned()),
                _ => {
                    return Err(format!(
                        "unable to parse requirement: field label not supported: {term}"
                    ));
                }
            }
        }
        for term in params.get("labelSelector").into_iter().flat_map(|s| s.split(',')) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            match term.split_once('=') {
                Some((k, v)) if !k.ends_with('!') => {
                    f.labels.push((k.to_owned(), v.trim_start_matches('=').to_owned()))
                }
                _ => {
                    return Err(format!("the simulator supports equality label selectors only: {term}"));
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, ns: &str, name: &str, obj: &Value) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.namespace.as_deref().is_none_or(|n| n == ns)
            && self
                .labels
                .iter()
                .all(|(k, v)| obj["metadata"]["labels"][k].as_str() == Some(v.as_str()))
    }
}

fn list(shared: &Arc<Shared>, kind: Kind, ns: Option<&str>, params: &BTreeMap<String, String>) -> Response<Body> {
    let filter = match Filter::parse(params) {
        Ok(f) => f,
        Err(m) => return error(400, "BadRequest", m, None),
    };
    let store = shared.store.lock().expect("store");
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, n, name), o)| *k == kind && ns.is_none_or(|ns| ns == n) && filter.matches(n, name, &o.value))
        .map(|(_, o)| o.value.clone())
        .collect();
    respond(
        200,
        &json!({"kind": format!("{}List", kind.name()), "apiVersion": "apps/v1",
            "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
    )
}

/// A patch or replace of a workload or of its scale subresource.
fn write(
    shared: &Arc<Shared>,
    key: &Key,
    is_patch: bool,
    scale: bool,
    ctype: &str,
    body: &[u8],
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let (kind, _, name) = (key.0, &key.1, key.2.as_str());
    let input: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(400, "BadRequest", format!("the body is not JSON: {e}"), None),
    };
    if params.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return error(400, "BadRequest", "the simulator does not support dryRun", None);
    }
    let mut store = shared.store.lock().expect("store");
    let Some(obj) = store.objects.get(key) else {
        return not_found(kind, name);
    };
    let current = obj.value.clone();
    let base = if scale { scale_of(&current) } else { current.clone() };
    let mut edited = base.clone();
    if is_patch {
        match ctype {
            "application/merge-patch+json" => patch::merge(&mut edited, &input),
            "application/strategic-merge-patch+json" => patch::strategic(&mut edited, &input),
            "application/apply-patch+yaml" => {
                if params.get("fieldManager").is_none_or(String::is_empty) {
                    return error(
                        422,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                        None,
                    );
                }
                patch::strategic(&mut edited, &input)
            }
            other => {
                return error(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got `{other}`)"
                    ),
                    None,
                );
            }
        }
    } else {
        edited = input.clone();
    }
    // A resourceVersion in the body is a precondition (replace, or a patch that carries one).
    let sent_rv = edited["metadata"]["resourceVersion"].as_str().map(str::to_owned);
    let base_rv = base["metadata"]["resourceVersion"].as_str().map(str::to_owned);
    let precondition = if is_patch {
        input["metadata"]["resourceVersion"].as_str().map(str::to_owned)
    } else {
        sent_rv
    };
    if let Some(rv) = precondition
        && Some(&rv) != base_rv.as_ref()
    {
        return conflict(kind, name);
    }
    let new = if scale {
        let Some(r) = edited["spec"]["replicas"].as_i64() else {
            return error(
                422,
                "Invalid",
                format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Required value"),
                None,
            );
        };
        let mut n = current.clone();
        n["spec"]["replicas"] = json!(r);
        n
    } else {
        // The main resource ignores changes of status.
        let mut n = edited;
        n["status"] = current["status"].clone();
        n
    };
    if let Err(e) = validate(kind, &new) {
        return error(
            422,
            "Invalid",
            format!("{}.apps \"{name}\" is invalid: {e}", kind.plural()),
            details(kind, name),
        );
    }
    let (stored, spec_changed) = store.update(key, new);
    let g = stored["metadata"]["generation"].as_i64().unwrap_or(1);
    drop(store);
    shared.notify();
    if spec_changed {
        super::controller(shared.clone(), key.clone(), g);
    }
    respond(200, &if scale { scale_of(&stored) } else { stored })
}

/// The object must still be a valid Deployment / StatefulSet (k8s-openapi reads it),
/// with a non-negative replica count.
fn validate(kind: Kind, v: &Value) -> Result<(), String> {
    let typed = match kind {
        Kind::Deployment => serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(v.clone()).map(drop),
        Kind::StatefulSet => serde_json::from_value::<k8s_openapi::api::apps::v1::StatefulSet>(v.clone()).map(drop),
    };
    typed.map_err(|e| e.to_string())?;
    if v["spec"]["replicas"].as_i64().is_some_and(|r| r < 0) {
        return Err("spec.replicas: Invalid value: must be greater than or equal to 0".into());
    }
    Ok(())
}

fn event_line(kind_of_event: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind_of_event, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A watch: a chunked stream of events, one JSON object per line, from the given
/// `resourceVersion` (or the current state as `ADDED` events when it is empty or `0`),
/// with `BOOKMARK`s when asked for, ending after `timeoutSeconds`; `410 Gone` as an
/// `ERROR` event when the version is older than the history kept.
async fn watch(
    shared: &Arc<Shared>,
    segs: &[&str],
    params: &BTreeMap<String, String>,
    dropped: bool,
) -> Response<Body> {
    let (kind, ns) = match segs {
        ["apis", "apps", "v1", plural] => (Kind::from_plural(plural), None),
        ["apis", "apps", "v1", "namespaces", ns, plural] => (Kind::from_plural(plural), Some((*ns).to_owned())),
        _ => (None, None),
    };
    let Some(kind) = kind else {
        return error(
            405,
            "MethodNotAllowed",
            "watch is supported on workload collections only",
            None,
        );
    };
    let filter = match Filter::parse(params) {
        Ok(f) => f,
        Err(m) => return error(400, "BadRequest", m, None),
    };
    let bookmarks = matches!(
        params.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from = params.get("resourceVersion").cloned().unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let shared = shared.clone();
    let matches = move |e_kind: Kind, e_ns: &str, e_name: &str, obj: &Value| {
        e_kind == kind && ns.as_deref().is_none_or(|n| n == e_ns) && filter.matches(e_ns, e_name, obj)
    };
    tokio::spawn(async move {
        let started = Instant::now();
        let (initial, mut last) = {
            let store = shared.store.lock().expect("store");
            if from.is_empty() || from == "0" {
                let lines: Vec<Bytes> = store
                    .objects
                    .iter()
                    .filter(|((k, n, name), o)| matches(*k, n, name, &o.value))
                    .map(|(_, o)| event_line("ADDED", &o.value))
                    .collect();
                (lines, store.rv)
            } else {
                (Vec::new(), from.parse().unwrap_or(0))
            }
        };
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let bookmark_every = shared.bookmark_every;
        let mut next_bookmark = Instant::now() + bookmark_every;
        let mut changed = shared.changed.subscribe();
        loop {
            let (events, gone, rv_now) = {
                let store = shared.store.lock().expect("store");
                if last < store.compacted {
                    (Vec::new(), true, store.rv)
                } else {
                    let ev: Vec<(u64, Bytes)> = store
                        .history
                        .iter()
                        .filter(|e| e.rv > last && matches(e.kind, &e.namespace, &e.name, &e.object))
                        .map(|e| (e.rv, event_line(e.kind_of_event, &e.object)))
                        .collect();
                    (ev, false, store.rv)
                }
            };
            if gone {
                let st = status(
                    410,
                    "Expired",
                    format!("too old resource version: {last} ({rv_now})"),
                    None,
                );
                let _ = tx.send(event_line("ERROR", &st)).await;
                return;
            }
            for (rv, line) in events {
                last = rv;
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            if bookmarks && Instant::now() >= next_bookmark {
                let b = json!({"kind": kind.name(), "apiVersion": "apps/v1",
                    "metadata": {"resourceVersion": rv_now.to_string()}});
                last = last.max(rv_now);
                if tx.send(event_line("BOOKMARK", &b)).await.is_err() {
                    return;
                }
                next_bookmark = Instant::now() + bookmark_every;
            }
            let end = if dropped {
                started + Duration::from_millis(100)
            } else {
                started + timeout
            };
            if Instant::now() >= end {
                return;
            }
            let wake = if bookmarks { end.min(next_bookmark) } else { end };
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(ChanBody(rx).boxed())
        .expect("a valid response")
}
