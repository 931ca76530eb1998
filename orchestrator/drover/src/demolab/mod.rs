//! The demo's two-site lab: a PostgreSQL primary (east) and streaming standby (west),
//! a scratch server for restore tests, an S3 endpoint per site seeded with backups
//! (real `pg_dump -Fc` files of the east database, each with a `KEY.sha256` sidecar),
//! a Kubernetes API simulator per site with the payments workloads (running in east,
//! scaled to zero in west), and the payments application's health endpoint per site.
//!
//! Everything lives in loopback servers and temporary folders; dropping the [`Lab`]
//! stops and removes all of it. A watchdog process removes the folders if this
//! process dies without dropping it (the PostgreSQL servers have watchdogs of their own).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use drover_lab::k8s::Kind;
use drover_lab::{K8sSim, LabError, Node, PgPair, S3Fs};

mod app;
pub mod files;

/// The namespace of the payments workloads.
const NS: &str = "payments";

/// The payments workloads: kind, name, replicas when running.
pub const WORKLOADS: [(Kind, &str, i32); 3] = [
    (Kind::StatefulSet, "queue", 1),
    (Kind::Deployment, "api", 3),
    (Kind::Deployment, "web", 2),
];

/// Why the lab could not be built.
#[derive(Debug)]
pub enum LabFailure {
    /// Something the machine lacks (PostgreSQL server binaries, the `postgres` user).
    Missing(String),
    /// Ctrl-C while it was being built.
    Interrupted,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for LabFailure {
    fn from(e: anyhow::Error) -> Self {
        LabFailure::Other(e)
    }
}

/// A running lab. Field order is drop order: the servers go first, the folder last.
pub struct Lab {
    pub east_k8s: Arc<K8sSim>,
    pub west_k8s: Arc<K8sSim>,
    pub s3_east: S3Fs,
    pub s3_west: S3Fs,
    pub scratch: PgPair,
    pub pg: PgPair,
    /// The application's health endpoint and the daemon's runtime.
    pub rt: Option<tokio::runtime::Runtime>,
    pub api_listen: String,
    pub token: String,
    _watchdog: Watchdog,
    /// The lab's folder: config, CMDB, runbooks, secrets, kubeconfig, state store.
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Lab {
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("drover.yaml")
    }

    /// Every folder the lab uses (all removed when it is dropped).
    pub fn folders(&self) -> Vec<PathBuf> {
        vec![
            self.dir.path().to_owned(),
            self.pg.dir().to_owned(),
            self.scratch.dir().to_owned(),
            self.s3_east.dir().to_owned(),
            self.s3_west.dir().to_owned(),
            self.east_k8s.dir().to_owned(),
            self.west_k8s.dir().to_owned(),
        ]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// The folder watchdog, stopped when the lab is dropped (the folders go with it).
struct Watchdog(Child);

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn missing(e: LabError) -> LabFailure {
    match e {
        LabError::NoBinaries(m) => LabFailure::Missing(format!("PostgreSQL server binaries not found: {m}")),
        LabError::Setup(m) if m.contains("root") || m.contains("runuser") => LabFailure::Missing(m),
        e => LabFailure::Other(e.into()),
    }
}

/// The lab's folder, and a watchdog that removes the folders listed in its `.cleanup`
/// file (and the folder) once this process is gone.
fn folder() -> anyhow::Result<(tempfile::TempDir, Child)> {
    let dir = tempfile::Builder::new().prefix("drover-demo-").tempdir()?;
    let quoted = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let list = dir.path().join(".cleanup");
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         if [ -f {list} ]; then while IFS= read -r p; do rm -rf \"$p\"; done < {list}; fi; rm -rf {dir}",
        pid = std::process::id(),
        list = quoted(&list),
        dir = quoted(dir.path()),
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok((dir, child))
}

fn write_secret(dir: &Path, name: &str, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secrets.join(name))?;
    f.write_all(value.as_bytes())?;
    Ok(())
}

fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(|_| anyhow!("no randomness"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A `pg_dump -Fc` of the east database.
fn pg_dump(pg: &PgPair) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(pg.bin().tool("pg_dump"))
        .args(["-Fc", "-h", "127.0.0.1", "-p", &pg.port(Node::Primary).to_string()])
        .args(["-U", pg.user(), "-d", "postgres", "-t", "payments"])
        .env("PGPASSWORD", pg.password())
        .stdin(Stdio::null())
        .output()
        .context("run pg_dump")?;
    if !out.status.success() || !out.stdout.starts_with(b"PGDMP") {
        return Err(anyhow!(
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Builds the lab, saying what it does through `say`. `stop` is set by Ctrl-C: the
/// build ends at the next phase and everything started so far is removed.
pub fn build(stop: &AtomicBool, say: &dyn Fn(&str)) -> Result<Lab, LabFailure> {
    let check = || {
        if stop.load(Ordering::SeqCst) {
            Err(LabFailure::Interrupted)
        } else {
            Ok(())
        }
    };
    // What the machine must have, before anything starts.
    drover_lab::PgBin::find().map_err(missing)?;
    let (dir, watchdog) = folder().map_err(LabFailure::Other)?;
    let cleanup = dir.path().join(".cleanup");
    let note = |p: &Path| -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&cleanup)?;
        writeln!(f, "{}", p.display())?;
        Ok(())
    };
    // Partly built (an error, Ctrl-C), what was started is dropped, watchdog included.
    let watchdog = Watchdog(watchdog);
    check()?;

    say("PostgreSQL: east primary and west streaming standby");
    let pg = PgPair::start().map_err(missing)?;
    note(pg.dir())?;
    check()?;
    pg.sql(
        Node::Primary,
        "CREATE TABLE payments (id bigint PRIMARY KEY, amount_cents bigint NOT NULL, \
         currency text NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO payments (id, amount_cents, currency) \
         SELECT g, 100 + g % 9000, CASE WHEN g % 3 = 0 THEN 'GBP' ELSE 'EUR' END FROM generate_series(1, 1000) g",
    )
    .map_err(|e| LabFailure::Other(e.into()))?;
    pg.wait_caught_up(Duration::from_secs(30))
        .map_err(|e| LabFailure::Other(e.into()))?;
    say("PostgreSQL: a scratch server in west for restore tests");
    let scratch = PgPair::start_single().map_err(missing)?;
    note(scratch.dir())?;
    check()?;

    say("S3: an endpoint per site, seeded with pg_dump backups and their SHA-256 sidecars");
    let s3_east = S3Fs::start(&["backups"]).map_err(|e| LabFailure::Other(e.into()))?;
    note(s3_east.dir())?;
    let s3_west = S3Fs::start(&["backups"]).map_err(|e| LabFailure::Other(e.into()))?;
    note(s3_west.dir())?;
    let dump = pg_dump(&pg)?;
    let now = chrono::Utc::now();
    let day = chrono::Duration::days(1);
    let mut dump_key = String::new();
    for (at, age) in [(now - day, Duration::from_secs(86_400)), (now, Duration::ZERO)] {
        let name = format!("payments-{}.dump", at.format("%Y%m%dT%H%M"));
        let key = format!("payments/{name}");
        let sidecar = format!("{}  {name}\n", sha256_hex(&dump));
        for s3 in [&s3_east, &s3_west] {
            s3.seed("backups", &key, &dump, age)
                .map_err(|e| LabFailure::Other(e.into()))?;
            s3.seed("backups", &format!("{key}.sha256"), sidecar.as_bytes(), age)
                .map_err(|e| LabFailure::Other(e.into()))?;
        }
        dump_key = key;
    }
    check()?;

    say("Kubernetes: an API simulator per site; payments runs in east, scaled to 0 in west");
    let east_k8s = Arc::new(K8sSim::start("east").map_err(|e| LabFailure::Other(e.into()))?);
    note(east_k8s.dir())?;
    let west_k8s = Arc::new(K8sSim::start("west").map_err(|e| LabFailure::Other(e.into()))?);
    note(west_k8s.dir())?;
    for (kind, name, replicas) in WORKLOADS {
        east_k8s.add(kind, NS, name, replicas, Duration::from_millis(500));
        west_k8s.add(kind, NS, name, 0, Duration::from_millis(800));
    }
    K8sSim::write_kubeconfig(&dir.path().join("kubeconfig"), &[&east_k8s, &west_k8s])
        .map_err(|e| LabFailure::Other(e.into()))?;
    check()?;

    say("payments: the application's health endpoint per site");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo-app")
        .enable_all()
        .build()
        .map_err(|e| LabFailure::Other(e.into()))?;
    let app_url = app::start(&rt, east_k8s.clone(), west_k8s.clone())?;

    let token = random_hex(24)?;
    let api_listen = format!("127.0.0.1:{}", free_port()?);
    let d = dir.path();
    std::fs::write(
        d.join("drover.yaml"),
        files::config(&files::Endpoints {
            s3_east: s3_east.endpoint(),
            s3_west: s3_west.endpoint(),
            app: app_url.clone(),
            api_listen: api_listen.clone(),
            token_sha256: sha256_hex(token.as_bytes()),
        }),
    )
    .map_err(|e| LabFailure::Other(e.into()))?;
    std::fs::write(d.join("cmdb.yaml"), files::CMDB).map_err(|e| LabFailure::Other(e.into()))?;
    std::fs::create_dir_all(d.join("runbooks")).map_err(|e| LabFailure::Other(e.into()))?;
    std::fs::write(
        d.join("runbooks/payments-demo.yaml"),
        files::runbook(&app_url, &dump_key),
    )
    .map_err(|e| LabFailure::Other(e.into()))?;
    write_secret(d, "s3-east-key", s3_east.access_key())?;
    write_secret(d, "s3-east-secret", s3_east.secret_key())?;
    write_secret(d, "s3-west-key", s3_west.access_key())?;
    write_secret(d, "s3-west-secret", s3_west.secret_key())?;
    write_secret(d, "payments-db-east", &pg.primary_url())?;
    write_secret(d, "payments-db-west", &pg.standby_url())?;
    write_secret(d, "restore-scratch-west", &scratch.primary_url())?;
    Ok(Lab {
        east_k8s,
        west_k8s,
        s3_east,
        s3_west,
        scratch,
        pg,
        rt: Some(rt),
        api_listen,
        token,
        _watchdog: watchdog,
        dir,
    })
}
