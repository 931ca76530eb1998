//! The PostgreSQL backend of the state store (`state: {url: "postgres://..."}`).
//!
//! tokio-postgres is async; the store's callers are not all (reads are synchronous
//! methods called from async code, as SQLite reads are). So each connection lives on a
//! thread of its own with a current-thread tokio runtime: the writer thread (the same
//! loop as SQLite's: jobs in order, group commit of queued appends) and a reader thread.
//! Callers send work over a channel and wait for the reply, the way a SQLite read waits
//! for the disk; no tokio worker thread ever polls a PostgreSQL future.
//!
//! The schema is versioned (`schema_version`) and migrated in one transaction under
//! `pg_advisory_xact_lock`, so daemons starting together migrate once. The journal,
//! the audit log and the corrective actions are append-only: a PL/pgSQL trigger refuses
//! every UPDATE, DELETE and TRUNCATE of them.
//!
//! TLS follows the URL's `sslmode` like the postgres plugin does (rustls with ring;
//! `disable` is plain text; `verify-ca`/`verify-full`/`require` insist on TLS; the
//! server's certificate is verified against the system's roots or `sslrootcert=PATH`).
//! The URL's password never appears in an error: the store is named by
//! `postgres://USER@HOST:PORT/DB`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use super::sql::{Backend, Conn, Param, Row, Sql, Value};
use super::{StoreError, StoreResult};

/// The advisory lock key under which the schema is migrated (`drover` in ASCII).
const MIGRATION_LOCK: i64 = 0x6472_6f76_6572;

/// The schema, one migration per version, applied in order.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE FUNCTION drover_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TABLE runs (
    id            TEXT COLLATE "C" PRIMARY KEY,
    runbook       TEXT COLLATE "C" NOT NULL,
    service       TEXT COLLATE "C" NOT NULL,
    mode          TEXT NOT NULL,
    state         TEXT NOT NULL,
    outcome       TEXT,
    started_at    TEXT COLLATE "C" NOT NULL,
    finished_at   TEXT COLLATE "C",
    change_number TEXT,
    acked_at      TEXT COLLATE "C"
);
CREATE INDEX runs_service ON runs (service, started_at);
CREATE TABLE journal (
    run_id TEXT COLLATE "C" NOT NULL,
    seq    BIGINT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal
    FOR EACH ROW EXECUTE FUNCTION drover_append_only('the journal is append-only');
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION drover_append_only('the journal is append-only');
CREATE TABLE service_locks (
    service TEXT COLLATE "C" PRIMARY KEY,
    run_id  TEXT COLLATE "C" NOT NULL
);
CREATE TABLE change_numbers (
    year BIGINT PRIMARY KEY,
    last BIGINT NOT NULL
);
CREATE TABLE audit (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       TEXT COLLATE "C" NOT NULL,
    who      TEXT NOT NULL,
    role     TEXT,
    action   TEXT NOT NULL,
    decision TEXT NOT NULL,
    status   BIGINT NOT NULL,
    detail   TEXT
);
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION drover_append_only('the audit log is append-only');
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION drover_append_only('the audit log is append-only');
CREATE TABLE schedule_firings (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule TEXT COLLATE "C" NOT NULL,
    at       TEXT COLLATE "C" NOT NULL,
    outcome  TEXT NOT NULL,
    run_id   TEXT,
    reason   TEXT
);
CREATE INDEX schedule_firings_by_name ON schedule_firings (schedule, id);
CREATE TABLE actions (
    id        TEXT COLLATE "C" PRIMARY KEY,
    run_id    TEXT COLLATE "C" NOT NULL,
    finding   TEXT COLLATE "C" NOT NULL,
    runbook   TEXT COLLATE "C" NOT NULL,
    service   TEXT COLLATE "C" NOT NULL,
    kind      TEXT NOT NULL,
    ci        TEXT COLLATE "C",
    owner     TEXT,
    summary   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    opened_at TEXT COLLATE "C" NOT NULL,
    UNIQUE (run_id, finding)
);
CREATE INDEX actions_by_runbook ON actions (runbook, id);
CREATE TRIGGER actions_append_only BEFORE UPDATE OR DELETE ON actions
    FOR EACH ROW EXECUTE FUNCTION drover_append_only('corrective actions are append-only');
CREATE TRIGGER actions_no_truncate BEFORE TRUNCATE ON actions
    FOR EACH STATEMENT EXECUTE FUNCTION drover_append_only('corrective actions are append-only');
CREATE TABLE action_events (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action_id TEXT COLLATE "C" NOT NULL,
    at        TEXT COLLATE "C" NOT NULL,
    event     TEXT NOT NULL,
    "by"      TEXT NOT NULL,
    run_id    TEXT COLLATE "C",
    note      TEXT
);
CREATE INDEX action_events_by_action ON action_events (action_id, id);
CREATE TRIGGER action_events_append_only BEFORE UPDATE OR DELETE ON action_events
    FOR EACH ROW EXECUTE FUNCTION drover_append_only('the history of corrective actions is append-only');
CREATE TRIGGER action_events_no_truncate BEFORE TRUNCATE ON action_events
    FOR EACH STATEMENT EXECUTE FUNCTION drover_append_only('the history of corrective actions is append-only');
CREATE TABLE action_numbers (
    year BIGINT PRIMARY KEY,
    last BIGINT NOT NULL
);
"#,
    r#"
CREATE TABLE leases (
    name       TEXT COLLATE "C" PRIMARY KEY,
    holder     TEXT COLLATE "C",
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO leases (name, holder, epoch, expires_at) VALUES ('leader', NULL, 0, 'epoch');
"#,
    // Fencing: a connection that writes as a leader says its epoch
    // (`set_config('drover.epoch', N, false)`); every write of run state is refused in
    // its own transaction when the lease has moved on to a newer epoch. The check reads
    // the lease row FOR SHARE, so a node taking the lease waits for the writes in
    // flight: a write either lands before the new epoch exists or not at all.
    // Connections that say no epoch (the CLI, a single daemon) are not fenced.
    r#"
CREATE FUNCTION drover_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mine TEXT := current_setting('drover.epoch', true);
    lease_epoch BIGINT;
    lease_holder TEXT;
BEGIN
    IF mine IS NULL OR mine = '' THEN
        RETURN NULL;
    END IF;
    SELECT epoch, holder INTO lease_epoch, lease_holder FROM leases WHERE name = 'leader' FOR SHARE;
    IF lease_epoch > mine::BIGINT THEN
        RAISE EXCEPTION 'fenced: this node wrote as the leader of epoch %, but % leads at epoch % now',
            mine, coalesce(lease_holder, 'nobody'), lease_epoch
            USING ERRCODE = 'DR001';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER journal_fence BEFORE INSERT ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION drover_fence();
CREATE TRIGGER runs_fence BEFORE INSERT OR UPDATE OR DELETE ON runs
    FOR EACH STATEMENT EXECUTE FUNCTION drover_fence();
CREATE TRIGGER service_locks_fence BEFORE INSERT OR UPDATE OR DELETE ON service_locks
    FOR EACH STATEMENT EXECUTE FUNCTION drover_fence();
CREATE TRIGGER change_numbers_fence BEFORE INSERT OR UPDATE OR DELETE ON change_numbers
    FOR EACH STATEMENT EXECUTE FUNCTION drover_fence();
CREATE TRIGGER schedule_firings_fence BEFORE INSERT OR UPDATE OR DELETE ON schedule_firings
    FOR EACH STATEMENT EXECUTE FUNCTION drover_fence();
CREATE TRIGGER actions_fence BEFORE INSERT ON actions
    FOR EACH STATEMENT EXECUTE FUNCTION drover_fence();
CREATE TRIGGER action_events_fence BEFORE INSERT ON action_events
    FOR EACH STATEMENT EXECUTE FUNCTION drover_fence();
CREATE TRIGGER action_numbers_fence BEFORE INSERT OR UPDATE OR DELETE ON action_numbers
    FOR EACH STATEMENT EXECUTE FUNCTION drover_fence();
-- The daemons of a cluster, each seen at its last lease attempt (not fenced: standbys
-- write here too).
CREATE TABLE members (
    node      TEXT COLLATE "C" PRIMARY KEY,
    site      TEXT,
    address   TEXT,
    last_seen TIMESTAMPTZ NOT NULL
);
"#,
];

/// The SQLSTATE of a write refused by the fence.
pub const FENCED: &str = "DR001";

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A parsed `postgres://` state URL. No `Debug`: it holds the password.
#[derive(Clone)]
pub(crate) struct PgTarget {
    config: tokio_postgres::Config,
    tls: Option<Option<PathBuf>>,
    /// `postgres://USER@HOST:PORT/DB`: how errors name the store.
    pub(crate) label: String,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PgTarget {
    /// Parses the URL, taking out the TLS options drover handles itself (tokio-postgres
    /// knows neither `sslrootcert` nor the `verify-*` modes).
    pub(crate) fn set_password(&mut self, password: &str) {
        self.config.password(password);
    }

    pub(crate) fn parse(url: &str) -> StoreResult<PgTarget> {
        let mut sslmode = "prefer";
        let mut root_cert = None;
        let after_auth = url.rfind('@').map_or(0, |i| i + 1);
        let (base, query) = match url[after_auth..].find('?') {
            Some(q) => (&url[..after_auth + q], &url[after_auth + q + 1..]),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => {
                    sslmode = match percent_decode(v).as_str() {
                        "disable" | "none" => "disable",
                        "allow" | "prefer" => "prefer",
                        "require" | "verify-ca" | "verify-full" => "require",
                        other => {
                            return Err(StoreError::Other(format!(
                                "state url: unknown sslmode `{other}` (disable, allow, prefer, require, verify-ca, verify-full)"
                            )));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v))),
                _ => kept.push(pair),
            }
        }
        kept.push(match sslmode {
            "disable" => "sslmode=disable",
            "require" => "sslmode=require",
            _ => "sslmode=prefer",
        });
        let rewritten = format!("{base}?{}", kept.join("&"));
        let mut config: tokio_postgres::Config = rewritten.parse().map_err(|e: tokio_postgres::Error| {
            // The parser may quote the URL: say only what is wrong.
            let msg = e.to_string().replace(url, "[url]").replace(&rewritten, "[url]");
            StoreError::Other(format!("state url: invalid PostgreSQL URL: {msg}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("drover");
        let host = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
        let db = config.get_dbname().unwrap_or("").to_owned();
        let label = format!("postgres://{user}{host}:{port}/{db}");
        let tls = (sslmode != "disable").then_some(root_cert);
        Ok(PgTarget { config, tls, label })
    }

    fn err(&self, source: tokio_postgres::Error) -> StoreError {
        StoreError::Postgres {
            target: self.label.clone(),
            source,
        }
    }

    async fn connect(&self) -> StoreResult<Client> {
        let label = self.label.clone();
        match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(|e| self.err(e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(store = %label, error = %e, "state store connection ended");
                    }
                });
                Ok(client)
            }
            Some(root_cert) => {
                let tls = tls_config(root_cert.as_deref()).map_err(|e| StoreError::Other(format!("{label}: {e}")))?;
                let (client, conn) = self
                    .config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                    .await
                    .map_err(|e| self.err(e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(store = %label, error = %e, "state store connection ended");
                    }
                });
                Ok(client)
            }
        }
    }
}

fn tls_config(root_cert: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("TLS: no trusted root certificates (set sslrootcert=PATH in the URL)".into());
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// A [`Param`] bound to whatever integer width the statement's parameter has.
struct Arg<'a>(Param<'a>);

impl std::fmt::Debug for Arg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(s) => s.to_sql(ty, out),
            Param::Int(n) if *ty == Type::INT4 => i32::try_from(n)?.to_sql(ty, out),
            Param::Int(n) if *ty == Type::INT2 => i16::try_from(n)?.to_sql(ty, out),
            Param::Int(n) if *ty == Type::TEXT || *ty == Type::VARCHAR => n.to_string().as_str().to_sql(ty, out),
            Param::Int(n) => n.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One connection on its own thread's runtime.
pub(crate) struct PgConn {
    rt: tokio::runtime::Runtime,
    client: Client,
    target: PgTarget,
    statements: HashMap<String, Statement>,
    /// The leadership epoch this connection writes with (said again on a reconnect).
    epoch: Option<i64>,
}

impl PgConn {
    /// Connects; to be called on the thread that will own the connection.
    pub(crate) fn connect(target: PgTarget) -> StoreResult<PgConn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other(format!("{}: cannot start a runtime: {e}", target.label)))?;
        let client = rt.block_on(target.connect())?;
        Ok(PgConn {
            rt,
            client,
            target,
            statements: HashMap::new(),
            epoch: None,
        })
    }

    /// Tells the server the epoch this session writes with (empty: none).
    fn say_epoch(&mut self) -> StoreResult<()> {
        let epoch = self.epoch.map(|e| e.to_string()).unwrap_or_default();
        self.rt
            .block_on(
                self.client
                    .execute("SELECT set_config('drover.epoch', $1, false)", &[&epoch]),
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn err(&self, source: tokio_postgres::Error) -> StoreError {
        self.target.err(source)
    }

    /// A connection that was cut (the server restarted) is opened again before the next
    /// statement; the statement that met the cut has failed already.
    fn ensure_open(&mut self) -> StoreResult<()> {
        if self.client.is_closed() {
            tracing::info!(store = %self.target.label, "reconnecting to the state store");
            self.client = self.rt.block_on(self.target.connect())?;
            self.statements.clear();
            if self.epoch.is_some() {
                self.say_epoch()?;
            }
        }
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> StoreResult<Statement> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.rt.block_on(self.client.prepare(sql)).map_err(|e| self.err(e))?;
        self.statements.insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    fn batch(&mut self, sql: &str) -> StoreResult<()> {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| self.err(e))
    }

    /// Creates or migrates the schema, under an advisory lock held by the transaction.
    pub(crate) fn migrate(&mut self) -> StoreResult<()> {
        self.ensure_open()?;
        self.batch("BEGIN")?;
        let r = (|| {
            self.batch(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))?;
            self.batch(
                "CREATE TABLE IF NOT EXISTS schema_version (
                    version    BIGINT PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
            )?;
            let have = self
                .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?
                .int(0)?;
            if have > SCHEMA_VERSION {
                return Err(StoreError::Other(format!(
                    "{}: the state store's schema is version {have}, newer than this build of drover knows ({SCHEMA_VERSION}): upgrade drover",
                    self.target.label
                )));
            }
            for (i, m) in MIGRATIONS.iter().enumerate().skip(have as usize) {
                self.batch(m)?;
                self.execute(
                    "INSERT INTO schema_version (version) VALUES ($1)",
                    &[Param::Int(i as i64 + 1)],
                )?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => self.batch("COMMIT"),
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

fn pg_value(row: &tokio_postgres::Row, i: usize) -> Result<Value, tokio_postgres::Error> {
    let ty = row.columns()[i].type_();
    Ok(if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int)
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)?
            .map_or(Value::Null, |n| Value::Int(n.into()))
    } else if *ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)?
            .map_or(Value::Null, |n| Value::Int(n.into()))
    } else if *ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)?
            .map_or(Value::Null, |b| Value::Int(b.into()))
    } else {
        row.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Text)
    })
}

impl Sql for PgConn {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<u64> {
        self.ensure_open()?;
        let st = self.statement(sql)?;
        let args: Vec<Arg<'_>> = args.iter().map(|a| Arg(*a)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        self.rt
            .block_on(self.client.execute(&st, &refs))
            .map_err(|e| self.err(e))
    }

    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<Vec<Row>> {
        self.ensure_open()?;
        let st = self.statement(sql)?;
        let args: Vec<Arg<'_>> = args.iter().map(|a| Arg(*a)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let rows = self
            .rt
            .block_on(self.client.query(&st, &refs))
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| pg_value(r, i))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
                    .map_err(|e| self.err(e))
            })
            .collect()
    }
}

impl Conn for PgConn {
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> StoreResult<()>) -> StoreResult<()> {
        self.ensure_open()?;
        self.batch("BEGIN")?;
        match f(self) {
            Ok(()) => match self.batch("COMMIT") {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = self.batch("ROLLBACK");
                    Err(e)
                }
            },
            Err(e) => {
                if !self.client.is_closed() {
                    let _ = self.batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    fn sync(&mut self) -> StoreResult<()> {
        // A commit returns once PostgreSQL has flushed it (synchronous_commit).
        Ok(())
    }

    fn set_epoch(&mut self, epoch: Option<i64>) -> StoreResult<()> {
        self.epoch = epoch;
        self.ensure_open()?;
        self.say_epoch()
    }

    /// One round trip: BEGIN, the inserts and COMMIT are pipelined (each with its own
    /// Sync). After a failed insert the transaction is aborted, so the COMMIT rolls it
    /// back: all of it is stored, or none.
    fn append(&mut self, rows: &[(&str, u64, &str)]) -> StoreResult<()> {
        self.ensure_open()?;
        let begin = self.statement("BEGIN")?;
        let insert = self.statement(super::INSERT_RECORD)?;
        let commit = self.statement("COMMIT")?;
        let args: Vec<[Arg<'_>; 3]> = rows
            .iter()
            .map(|(run, seq, json)| {
                [
                    Arg(Param::Text(run)),
                    Arg(Param::Int(*seq as i64)),
                    Arg(Param::Text(json)),
                ]
            })
            .collect();
        let refs: Vec<Vec<&(dyn ToSql + Sync)>> = args
            .iter()
            .map(|a| a.iter().map(|x| x as &(dyn ToSql + Sync)).collect())
            .collect();
        let client = &self.client;
        let results = self.rt.block_on(async {
            let none: &[&(dyn ToSql + Sync)] = &[];
            let mut calls = Vec::with_capacity(rows.len() + 2);
            calls.push(client.execute(&begin, none));
            for r in &refs {
                calls.push(client.execute(&insert, r.as_slice()));
            }
            calls.push(client.execute(&commit, none));
            futures_util::future::join_all(calls).await
        });
        match results.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some(e) => {
                if !self.client.is_closed() {
                    let _ = self.batch("ROLLBACK");
                }
                Err(self.err(e))
            }
        }
    }
}

/// Work for the reader thread.
pub(crate) type ReadJob = Box<dyn FnOnce(&mut PgConn) + Send>;

/// Starts a thread that owns a connection (set up by `init`), running jobs until the
/// channel closes. Waits for the connection so that a bad URL fails the open.
pub(crate) fn spawn<Op: Send + 'static>(
    name: &str,
    target: PgTarget,
    init: impl FnOnce(&mut PgConn) -> StoreResult<()> + Send + 'static,
    run: impl FnOnce(PgConn, mpsc::Receiver<Op>) + Send + 'static,
) -> StoreResult<mpsc::Sender<Op>> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(
            move || match PgConn::connect(target).and_then(|mut c| init(&mut c).map(|()| c)) {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    run(conn, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            },
        )
        .map_err(|e| StoreError::Other(format!("cannot start the state store's {name} thread: {e}")))?;
    ready_rx
        .recv()
        .map_err(|_| StoreError::Other(format!("the state store's {name} thread has stopped")))??;
    Ok(tx)
}

/// The reader thread's loop.
pub(crate) fn reader_loop(mut conn: PgConn, jobs: mpsc::Receiver<ReadJob>) {
    while let Ok(job) = jobs.recv() {
        job(&mut conn);
    }
}
