//! A Kubernetes API simulator: the subset of a real API server that drover's
//! Kubernetes plugin uses, over HTTPS, reached through a real kubeconfig by the real
//! kube client.
//!
//! [`K8sSim::start`] generates a CA and a server certificate (rcgen), listens on a
//! free loopback port (rustls with ring, HTTP/1.1), and writes a kubeconfig for itself
//! with four contexts: `NAME` (a read-write bearer token), `NAME-readonly` (a token
//! allowed to get, list and watch only: writes are `403 Forbidden`), `NAME-bad-token`
//! (a token the server does not know: `401 Unauthorized`) and `NAME-wrong-ca` (the
//! right token, but a CA that did not sign the server's certificate).
//!
//! It serves discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/apps`,
//! `/apis/apps/v1`), namespaces (get, list), and apps/v1 Deployments and StatefulSets:
//! get, list and watch (all namespaces or one), patch (merge, strategic merge, apply),
//! replace, and the `scale` subresource (get, patch, replace). Objects are the JSON of
//! the k8s-openapi types, every error is a `Status` object, and resourceVersion and
//! generation are kept as the API server keeps them (see [`store`]). A controller
//! moves each workload's status towards `spec.replicas`: `observedGeneration` first,
//! then, after the workload's readiness delay, ready, available and updated replicas
//! (and a StatefulSet's `currentRevision`). Faults can be injected
//! ([`K8sSim::inject`]): 429 with `Retry-After`, 5xx, slowness, dropped watches; and
//! the watch history can be compacted ([`K8sSim::compact`]) so that a watch from an
//! older version gets `410 Gone`. docs/KUBERNETES.md compares it with a real server.
//!
//! The server runs on a Tokio runtime of its own, so synchronous tests can use it;
//! dropping the simulator stops it and removes its folder.

mod http;
mod patch;
mod store;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tempfile::TempDir;

pub use store::Kind;

use crate::postgres::LabError;
use store::{Key, Store, desired, revision};

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `429 Too Many Requests` with `Retry-After` (and `details.retryAfterSeconds`).
    TooManyRequests { retry_after_s: u32 },
    /// A `Status` with this 5xx code (503 `ServiceUnavailable`, 500 `InternalError`...).
    ServerError(u16),
    /// The request is carried out, and answered after this delay.
    Slow(Duration),
    /// A watch stream that ends after 100 ms, whatever it has sent (a cut connection,
    /// a load balancer's idle timeout).
    DropWatch,
    /// A watch answered at once with `410 Gone` (its version was compacted away).
    WatchGone,
}

/// Which requests a fault applies to (discovery never gets one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every request but watches.
    Any,
    /// Gets and lists.
    Reads,
    /// Patches and replaces.
    Writes,
    /// Watches.
    Watches,
}

/// A request the simulator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

#[derive(Debug)]
struct FaultRule {
    scope: Scope,
    fault: Fault,
    left: u32,
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Bumped on every change: wakes the watches.
    changed: tokio::sync::watch::Sender<u64>,
    faults: Mutex<VecDeque<FaultRule>>,
    log: Mutex<Vec<Logged>>,
    admin_token: String,
    readonly_token: String,
    addr: String,
    observe_delay: Duration,
    bookmark_every: Duration,
}

impl Shared {
    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The first injected fault whose scope matches, used up by one.
    fn take_fault(&self, matches: impl Fn(Scope) -> bool) -> Option<Fault> {
        let mut faults = self.faults.lock().expect("faults");
        let i = faults.iter().position(|r| matches(r.scope))?;
        let fault = faults[i].fault;
        faults[i].left -= 1;
        if faults[i].left == 0 {
            faults.remove(i);
        }
        Some(fault)
    }
}

/// The controller's two steps after a change of `spec` to generation `g`: observe it
/// (`observedGeneration`, updated replicas, fewer ready pods at once when scaled
/// down), then, after the readiness delay, every desired pod ready and updated.
pub(crate) fn controller(shared: Arc<Shared>, key: Key, g: i64) {
    tokio::spawn(async move {
        let delay = match shared.store.lock().expect("store").objects.get(&key) {
            Some(o) => o.ready_delay,
            None => return,
        };
        let observe = shared.observe_delay.min(delay);
        tokio::time::sleep(observe).await;
        let still = |store: &Store| {
            store
                .objects
                .get(&key)
                .is_some_and(|o| o.value["metadata"]["generation"].as_i64() == Some(g))
        };
        {
            let mut store = shared.store.lock().expect("store");
            if !still(&store) {
                return;
            }
            let obj = store.objects.get_mut(&key).expect("the object");
            let n = desired(&obj.value);
            let rev = revision(&key.2, &obj.value["spec"]["template"]);
            obj.updated = if rev == obj.current_revision { n } else { 0 };
            obj.ready = obj.ready.min(n);
            store.set_status(&key, g);
        }
        shared.notify();
        tokio::time::sleep(delay - observe).await;
        {
            let mut store = shared.store.lock().expect("store");
            if !still(&store) {
                return;
            }
            let obj = store.objects.get_mut(&key).expect("the object");
            if obj.stalled {
                store.set_status(&key, g);
                drop(store);
                shared.notify();
                return;
            }
            let n = desired(&obj.value);
            obj.ready = n;
            obj.updated = n;
            obj.current_revision = revision(&key.2, &obj.value["spec"]["template"]);
            store.set_status(&key, g);
        }
        shared.notify();
    });
}

/// A running simulator. See the module documentation.
pub struct K8sSim {
    name: String,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
    dir: TempDir,
    port: u16,
    ca_pem: String,
    /// The PEM of an unrelated CA (the `NAME-wrong-ca` context).
    other_ca_pem: String,
    kubeconfig: PathBuf,
}

impl fmt::Debug for K8sSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sSim")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

fn random_token() -> Result<String, LabError> {
    use std::io::Read;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl K8sSim {
    /// Starts a simulator called `name` (its kubeconfig's cluster and context name).
    pub fn start(name: &str) -> Result<Self, LabError> {
        let certs = tls::generate(name)?;
        let dir = tempfile::Builder::new().prefix("drover-k8s-sim-").tempdir()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("k8s-sim-{name}"))
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: tokio::sync::watch::channel(0).0,
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            admin_token: random_token()?,
            readonly_token: random_token()?,
            addr: format!("127.0.0.1:{port}"),
            observe_delay: Duration::from_millis(20),
            bookmark_every: Duration::from_secs(1),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server.clone());
        let s = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| http::handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let sim = K8sSim {
            name: name.to_owned(),
            shared,
            rt: Some(rt),
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            port,
            ca_pem: certs.ca_pem.clone(),
            other_ca_pem: certs.other_ca_pem.clone(),
        };
        K8sSim::write_kubeconfig(&sim.kubeconfig, &[&sim])?;
        Ok(sim)
    }

    /// This simulator's clusters, users and contexts, as kubeconfig list items.
    fn kubeconfig_entries(&self) -> [String; 3] {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let n = &self.name;
        let server = self.url();
        let (ca, wrong) = (b64(&self.ca_pem), b64(&self.other_ca_pem));
        let (admin, ro) = (&self.shared.admin_token, &self.shared.readonly_token);
        [
            format!(
                "- name: {n}
  cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}
- name: {n}-wrong-ca
  cluster: {{server: \"{server}\", certificate-authority-data: \"{wrong}\"}}
"
            ),
            format!(
                "- name: {n}-admin
  user: {{token: \"{admin}\"}}
- name: {n}-readonly
  user: {{token: \"{ro}\"}}
- name: {n}-bad-token
  user: {{token: \"not-a-token-of-this-cluster\"}}
"
            ),
            format!(
                "- name: {n}
  context: {{cluster: {n}, user: {n}-admin, namespace: default}}
- name: {n}-readonly
  context: {{cluster: {n}, user: {n}-readonly, namespace: default}}
- name: {n}-bad-token
  context: {{cluster: {n}, user: {n}-bad-token, namespace: default}}
- name: {n}-wrong-ca
  context: {{cluster: {n}-wrong-ca, user: {n}-admin, namespace: default}}
"
            ),
        ]
    }

    /// Writes one kubeconfig with the contexts of every simulator in `sims` (the
    /// two-site lab: contexts `east`, `west`, ...); the current context is the first's.
    pub fn write_kubeconfig(path: &Path, sims: &[&K8sSim]) -> Result<(), LabError> {
        let mut parts = [String::new(), String::new(), String::new()];
        for sim in sims {
            for (part, entry) in parts.iter_mut().zip(sim.kubeconfig_entries()) {
                part.push_str(&entry);
            }
        }
        let current = sims.first().map_or("", |s| s.name.as_str());
        let [clusters, users, contexts] = parts;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n{clusters}users:\n{users}contexts:\n{contexts}current-context: {current}\n"
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text)?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The kubeconfig this simulator wrote for itself.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The PEM of the CA that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The folder the simulator keeps its files in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a workload with `replicas` pods, all ready, whose later changes become
    /// ready `ready_delay` after they are made.
    pub fn add(&self, kind: Kind, ns: &str, name: &str, replicas: i32, ready_delay: Duration) -> Value {
        let v = self
            .shared
            .store
            .lock()
            .expect("store")
            .create(kind, ns, name, replicas, ready_delay);
        self.shared.notify();
        v
    }

    /// Adds a namespace (workloads add theirs).
    pub fn add_namespace(&self, ns: &str) {
        self.shared
            .store
            .lock()
            .expect("store")
            .namespaces
            .insert(ns.to_owned());
    }

    /// Changes how long the workload's changes take to become ready.
    pub fn set_ready_delay(&self, kind: Kind, ns: &str, name: &str, delay: Duration) {
        if let Some(o) =
            self.shared
                .store
                .lock()
                .expect("store")
                .objects
                .get_mut(&(kind, ns.to_owned(), name.to_owned()))
        {
            o.ready_delay = delay;
        }
    }

    /// Makes the workload's next rollouts stall: never ready, and (Deployments) the
    /// `Progressing` condition says `ProgressDeadlineExceeded` once the change is observed.
    pub fn set_stalled(&self, kind: Kind, ns: &str, name: &str, stalled: bool) {
        if let Some(o) =
            self.shared
                .store
                .lock()
                .expect("store")
                .objects
                .get_mut(&(kind, ns.to_owned(), name.to_owned()))
        {
            o.stalled = stalled;
        }
    }

    /// The workload as the API serves it.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().expect("store");
        store
            .objects
            .get(&(kind, ns.to_owned(), name.to_owned()))
            .map(|o| o.value.clone())
    }

    /// `spec.replicas` of the workload.
    pub fn replicas(&self, kind: Kind, ns: &str, name: &str) -> Option<i32> {
        self.get(kind, ns, name).map(|v| desired(&v))
    }

    /// The cluster's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().expect("store").rv
    }

    /// Makes the next `times` requests in `scope` fail (or slow down) with `fault`.
    pub fn inject(&self, scope: Scope, fault: Fault, times: u32) {
        if times > 0 {
            self.shared.faults.lock().expect("faults").push_back(FaultRule {
                scope,
                fault,
                left: times,
            });
        }
    }

    /// Forgets the watch history: a watch from any version before now gets `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().expect("store");
        store.history.clear();
        store.compacted = store.rv;
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().expect("log").clone()
    }
}

impl Drop for K8sSim {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
