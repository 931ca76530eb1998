//! The state store: runs, their append-only journals, the per-service locks, change
//! numbers, the audit log, schedule firings and corrective actions. Two backends behind
//! one [`Store`]: an embedded SQLite file (WAL mode, the default: `sqlite://PATH`) and
//! PostgreSQL (`postgres://...`, [`pg`]), chosen by the `state.url` scheme. The logic
//! (admission, numbering, the finish, corrective actions) is written once against
//! [`Sql`]; only the schema and a few spellings are per backend.
//!
//! **One writer thread.** Every write (a journal append, the creation of a run, its
//! finish, an acknowledgement) runs on a dedicated thread that owns the write
//! connection, so no commit or fsync ever blocks an async worker thread: the engine
//! sends the write and awaits its reply. Appends that queue up while a commit is under
//! way (parallel steps) are committed together in one transaction (group commit), each
//! still acknowledged only once it is committed. Reads use a second connection (SQLite:
//! in WAL mode they never wait for the writer; PostgreSQL: on a reader thread of its
//! own, the caller blocking on the reply as a SQLite read blocks on the disk).
//!
//! Durability: every journal record is committed before the engine goes on (before and
//! after each side effect). With `synchronous=NORMAL` in WAL mode a commit is in the
//! operating system's hands when `append` returns, so a kill -9 of drover loses nothing
//! already appended; [`Store::sync`] (a full WAL checkpoint, fsynced) puts a finished
//! run on disk before its outcome is reported. That keeps a step's bookkeeping to two
//! small commits without an fsync each (see docs/RELIABILITY.md). A PostgreSQL commit
//! is durable when it returns (`synchronous_commit`).
//!
//! The run lifecycle is atomic: [`Store::create_run`] checks the service lock and
//! anti-flap, takes the change number, inserts the run row, locks the service and
//! stores the first journal record in one transaction; [`Journal::commit`]
//! (`crate::journal`) stores the last records with the finish of the row and the
//! release (or keeping) of the lock.
//!
//! [`Journal::commit`]: crate::journal::Journal::commit

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;

mod pg;
pub mod sql;

pub use sql::{Backend, Param, Row, Sql, Value};
use sql::{Conn, SqliteConn, SqliteSql, args, in_tx};

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store {target}: {}", pg_message(source))]
    Postgres {
        /// `postgres://USER@HOST:PORT/DB`: never the password.
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("state store: {0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A PostgreSQL error with the server's message (tokio-postgres alone says "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// A write refused because another node leads at a newer epoch: this node must
    /// step down.
    pub fn is_fenced(&self) -> bool {
        self.sqlstate() == Some(pg::FENCED)
    }

    /// The SQLSTATE of a PostgreSQL error (`P0001`, `23505`...), for tests and callers
    /// that tell refusals apart.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StoreError::Postgres { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Records an acknowledgement of a run: its time, and the release of its service.
pub fn acknowledge_row(tx: &mut dyn Sql, run_id: &str, acked_at: &str) -> StoreResult<()> {
    tx.execute("UPDATE runs SET acked_at = $2 WHERE id = $1", args![run_id, acked_at])?;
    tx.execute("DELETE FROM service_locks WHERE run_id = $1", args![run_id])?;
    Ok(())
}

/// A row of the `runs` table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub runbook: String,
    pub service: String,
    pub mode: String,
    /// `running` or `finished` as written; `interrupted` is derived from the run lock.
    pub state: String,
    pub outcome: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// One stored journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    /// The record as JSON text, exactly as appended.
    pub json: String,
}

/// Why a new run may not start; decided inside the transaction that would create it.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Another run holds the service (running, interrupted or stuck).
    Locked(RunRow),
    /// The service failed over recently (`engine.anti_flap`): the run that did, and how
    /// long ago it ended.
    AntiFlap(RunRow, Duration),
    /// The run id drawn is taken already (draw another).
    IdInUse,
}

/// What [`Store::create_run`] checks before it creates a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admission {
    /// Refuse when the service's last failover (or its acknowledgement) ended less
    /// than this long ago; `None`: no anti-flap check.
    pub anti_flap: Option<Duration>,
}

/// What happens to the service lock when a run finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRelease {
    /// Free the service.
    Free,
    /// Keep it (a stuck run: an operator must acknowledge or resume it).
    Keep,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    runbook     TEXT NOT NULL,
    service     TEXT NOT NULL,
    mode        TEXT NOT NULL,
    state       TEXT NOT NULL,
    outcome     TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    change_number TEXT
);
CREATE INDEX IF NOT EXISTS runs_service ON runs (service, started_at);
CREATE TABLE IF NOT EXISTS journal (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_delete BEFORE DELETE ON journal
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TABLE IF NOT EXISTS service_locks (
    service TEXT PRIMARY KEY,
    run_id  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS change_numbers (
    year INTEGER PRIMARY KEY,
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    who      TEXT NOT NULL,
    role     TEXT,
    action   TEXT NOT NULL,
    decision TEXT NOT NULL,
    status   INTEGER NOT NULL,
    detail   TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS schedule_firings (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule TEXT NOT NULL,
    at       TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    run_id   TEXT,
    reason   TEXT
);
CREATE INDEX IF NOT EXISTS schedule_firings_by_name ON schedule_firings (schedule, id);
"#;

/// One entry of the audit log: an API call allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub at: String,
    /// The token's name, or `anonymous`.
    pub who: String,
    pub role: Option<String>,
    /// `METHOD /path`.
    pub action: String,
    /// `allowed` or `denied`.
    pub decision: String,
    pub status: u16,
    pub detail: Option<String>,
}

/// One firing of a schedule: a run started, or skipped with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Firing {
    pub schedule: String,
    pub at: String,
    /// `started`, `skipped` or `missed`.
    pub outcome: String,
    pub run_id: Option<String>,
    pub reason: Option<String>,
}

/// Columns added after the first release, with their types: added on open when missing.
const ADDED_COLUMNS: &[(&str, &str)] = &[("change_number", "TEXT"), ("acked_at", "TEXT")];

const INSERT_RECORD: &str = "INSERT INTO journal (run_id, seq, record) VALUES ($1, $2, $3)";

type Job = Box<dyn FnOnce(&mut dyn Conn) + Send>;

enum Op {
    /// One journal record; committed with the appends queued behind it.
    Append {
        run_id: Arc<str>,
        seq: u64,
        json: String,
        reply: tokio::sync::oneshot::Sender<StoreResult<()>>,
    },
    /// Records of a run stored with other writes (`then`) in one transaction.
    Commit {
        run_id: Arc<str>,
        rows: Vec<(u64, String)>,
        then: Then,
        reply: tokio::sync::oneshot::Sender<StoreResult<()>>,
    },
    /// Anything else, in a transaction of its own.
    Job(Job),
    /// Work on the connection itself, outside any transaction.
    Session(Job),
    /// A run is opened again (resume): its journal is read afresh, so an earlier failed
    /// append no longer refuses its records.
    Reopen(Arc<str>),
}

/// What a [`Op::Commit`] writes beside its records.
pub(crate) type Then = Box<dyn FnOnce(&mut dyn Sql) -> StoreResult<()> + Send>;

/// Where reads go.
enum Reader {
    /// A second connection, never used for writes; in WAL mode it never waits for the
    /// writer.
    Sqlite(Mutex<Connection>),
    /// The reader thread's connection.
    Postgres(Mutex<mpsc::Sender<pg::ReadJob>>),
}

struct Inner {
    /// The SQLite file, or the PostgreSQL store's name (`postgres://USER@HOST:PORT/DB`).
    path: PathBuf,
    /// Where the run locks live (`runs/RUN.lock`).
    dir: PathBuf,
    reader: Reader,
    writer: Mutex<mpsc::Sender<Op>>,
    /// The node and leadership epoch this process writes as (high availability).
    identity: RwLock<Option<Writer>>,
}

/// Who writes: a node of a cluster and the leadership epoch it holds. Stamped on every
/// journal record; the epoch fences the writes on PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Writer {
    pub node: String,
    pub epoch: i64,
}

/// The state store (SQLite or PostgreSQL). Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish()
    }
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn connect(path: &Path) -> StoreResult<Connection> {
    let err = sqlite_err(path);
    let conn = Connection::open(path).map_err(&err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(&err)?;
    // Switching a new database to WAL takes an exclusive lock and reports "busy"
    // without waiting when another process opens it at the same moment: retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => break,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(err(e)),
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(&err)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(crate::actions::SCHEMA)?;
    for (name, ty) in ADDED_COLUMNS {
        let has: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('runs') WHERE name = ?1",
            [name],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE runs ADD COLUMN {name} {ty}"))?;
        }
    }
    Ok(())
}

fn refused(run_id: &str, seq: Option<u64>) -> StoreError {
    StoreError::Other(match seq {
        Some(seq) => format!("run {run_id}: record {seq} refused: an earlier record of this run was not stored"),
        None => format!("run {run_id}: refused: an earlier record of this run was not stored"),
    })
}

/// The writer thread (either backend): runs jobs in order; commits queued appends
/// together.
fn writer_loop(conn: &mut dyn Conn, ops: mpsc::Receiver<Op>) {
    // Runs whose append failed: later records would not chain, so they are refused.
    let mut broken: HashSet<Arc<str>> = HashSet::new();
    let mut pending: Option<Op> = None;
    loop {
        let op = match pending.take() {
            Some(op) => op,
            None => match ops.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        match op {
            Op::Job(job) | Op::Session(job) => job(conn),
            Op::Reopen(run_id) => {
                broken.remove(&run_id);
            }
            Op::Commit {
                run_id,
                rows,
                then,
                reply,
            } => {
                let r = if broken.contains(&run_id) {
                    Err(refused(&run_id, None))
                } else {
                    in_tx(conn, |tx| {
                        insert_records(tx, &run_id, &rows)?;
                        then(tx)
                    })
                };
                if r.is_err() {
                    broken.insert(run_id);
                }
                let _ = reply.send(r);
            }
            Op::Append {
                run_id,
                seq,
                json,
                reply,
            } => {
                let mut batch = vec![(run_id, seq, json, reply)];
                while batch.len() < 256 {
                    match ops.try_recv() {
                        Ok(Op::Append {
                            run_id,
                            seq,
                            json,
                            reply,
                        }) => batch.push((run_id, seq, json, reply)),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let rows: Vec<(&str, u64, &str)> = batch
                    .iter()
                    .filter(|(run_id, ..)| !broken.contains(run_id))
                    .map(|(run_id, seq, json, _)| (&**run_id, *seq, json.as_str()))
                    .collect();
                let result = if rows.is_empty() { Ok(()) } else { conn.append(&rows) };
                match result {
                    Ok(()) => {
                        for (run_id, seq, _, reply) in batch {
                            let r = if broken.contains(&run_id) {
                                Err(refused(&run_id, Some(seq)))
                            } else {
                                Ok(())
                            };
                            let _ = reply.send(r);
                        }
                    }
                    Err(_) if batch.len() > 1 => {
                        // Find the failing record: one transaction each.
                        for (run_id, seq, json, reply) in batch {
                            let r = if broken.contains(&run_id) {
                                Err(refused(&run_id, Some(seq)))
                            } else {
                                conn.append(&[(&*run_id, seq, json.as_str())])
                            };
                            if r.is_err() {
                                broken.insert(run_id);
                            }
                            let _ = reply.send(r);
                        }
                    }
                    Err(e) => {
                        let (run_id, _, _, reply) = batch.pop().expect("one append");
                        broken.insert(run_id);
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store named by a `state.url`: `sqlite://PATH` or
    /// `postgres://...` (`postgresql://...`).
    pub fn open_url(url: &str) -> StoreResult<Store> {
        Store::open_url_with_password(url, None)
    }

    /// [`Store::open_url`], with the PostgreSQL password given apart from the URL (a
    /// secret of the config); it replaces any password in the URL.
    pub fn open_url_with_password(url: &str, password: Option<&str>) -> StoreResult<Store> {
        match url.strip_prefix("sqlite://") {
            Some(path) => Store::open(Path::new(path)),
            None if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Store::open_postgres(url, password)
            }
            None => Err(StoreError::Other(format!("unsupported state url `{url}`"))),
        }
    }

    /// Opens the SQLite file at `path`, creating it (and its folder) if needed.
    pub fn open(path: &Path) -> StoreResult<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let err = sqlite_err(path);
        let write = connect(path)?;
        // One process at a time creates or migrates the schema.
        write.execute_batch("BEGIN IMMEDIATE").map_err(&err)?;
        match migrate(&write) {
            Ok(()) => write.execute_batch("COMMIT").map_err(&err)?,
            Err(e) => {
                let _ = write.execute_batch("ROLLBACK");
                return Err(err(e));
            }
        }
        let read = connect(path)?;
        let (tx, rx) = mpsc::channel();
        let mut conn = SqliteConn {
            conn: write,
            path: path.to_path_buf(),
        };
        std::thread::Builder::new()
            .name("drover-store-writer".into())
            .spawn(move || writer_loop(&mut conn, rx))
            .map_err(|e| StoreError::Other(format!("cannot start the store's writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                dir: drover_model::paths::folder_of(path),
                reader: Reader::Sqlite(Mutex::new(read)),
                writer: Mutex::new(tx),
                identity: RwLock::new(None),
            }),
        })
    }

    /// Opens a PostgreSQL store: connects (a writer and a reader connection, each on a
    /// thread of its own) and creates or migrates the schema.
    pub fn open_postgres(url: &str, password: Option<&str>) -> StoreResult<Store> {
        let mut target = pg::PgTarget::parse(url)?;
        if let Some(p) = password {
            target.set_password(p);
        }
        let label = target.label.clone();
        let writer = pg::spawn(
            "drover-store-writer",
            target.clone(),
            pg::PgConn::migrate,
            |mut conn, rx| writer_loop(&mut conn, rx),
        )?;
        let reader = pg::spawn("drover-store-reader", target, |_| Ok(()), pg::reader_loop)?;
        // Run locks are a live process's OS locks: on this machine, one folder per store.
        let digest = crate::evidence::sha256_hex(label.as_bytes());
        let dir = std::env::temp_dir().join(format!("drover-state-{}", &digest[..16]));
        Ok(Store {
            inner: Arc::new(Inner {
                path: PathBuf::from(label),
                dir,
                reader: Reader::Postgres(Mutex::new(reader)),
                writer: Mutex::new(writer),
                identity: RwLock::new(None),
            }),
        })
    }

    /// The SQLite file, or for PostgreSQL the store's name (`postgres://USER@HOST:PORT/DB`,
    /// never the password).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The folder where the run locks live: beside the SQLite file; for PostgreSQL a
    /// folder of this machine's temporary directory, one per store.
    pub fn dir(&self) -> PathBuf {
        self.inner.dir.clone()
    }

    /// Run locks in a folder of their own for `node` (below [`Store::dir`]): daemons of
    /// one cluster on one machine (tests, a lab) do not see each other's run locks; the
    /// leadership lease, not an OS lock, says who runs what.
    pub fn lock_scope(mut self, node: &str) -> Store {
        let safe: String = node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.dir = inner.dir.join(format!("node-{safe}"));
        }
        self
    }

    /// The node and epoch this process writes as; `None` outside a cluster.
    pub fn writer(&self) -> Option<Writer> {
        self.inner.identity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets who writes from now on. On PostgreSQL the writer connection then says the
    /// epoch with each write and the store refuses those writes once a newer epoch
    /// holds the lease ([`StoreError::is_fenced`]). Records already queued keep theirs.
    pub async fn set_writer(&self, writer: Option<Writer>) -> StoreResult<()> {
        *self.inner.identity.write().unwrap_or_else(|p| p.into_inner()) = writer.clone();
        let epoch = writer.map(|w| w.epoch);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Session(Box::new(move |conn| {
            let _ = tx.send(conn.set_epoch(epoch));
        })))?;
        rx.await
            .map_err(|_| StoreError::Other("the store's writer thread has stopped".into()))?
    }

    /// Lets a run's records be stored again after a failed append (the run is being
    /// resumed from what its stored journal holds).
    pub(crate) fn reopen(&self, run_id: &str) {
        let _ = self.send(Op::Reopen(Arc::from(run_id)));
    }

    /// Which database holds the store.
    pub fn backend(&self) -> Backend {
        match self.inner.reader {
            Reader::Sqlite(_) => Backend::Sqlite,
            Reader::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs `f` on the read connection and waits for it (for PostgreSQL, on the reader
    /// thread: the caller blocks as a SQLite read blocks on the disk).
    pub fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        match &self.inner.reader {
            Reader::Sqlite(conn) => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut SqliteSql {
                    conn: &conn,
                    path: &self.inner.path,
                })
            }
            Reader::Postgres(jobs) => {
                let (tx, rx) = mpsc::channel();
                jobs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(Box::new(move |conn: &mut pg::PgConn| {
                        let _ = tx.send(f(conn));
                    }))
                    .map_err(|_| StoreError::Other("the store's reader thread has stopped".into()))?;
                rx.recv()
                    .map_err(|_| StoreError::Other("the store's reader thread has stopped".into()))?
            }
        }
    }

    fn send(&self, op: Op) -> StoreResult<()> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(op)
            .map_err(|_| StoreError::Other("the store's writer thread has stopped".into()))
    }

    /// Runs `f` in a transaction on the writer thread and awaits its result.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Job(Box::new(move |conn| {
            let _ = tx.send(in_tx(conn, f));
        })))?;
        rx.await
            .map_err(|_| StoreError::Other("the store's writer thread has stopped".into()))?
    }

    /// Queues one record for a run's journal; the receiver gets the commit's result.
    pub(crate) fn append_queued(
        &self,
        run_id: Arc<str>,
        seq: u64,
        json: String,
    ) -> tokio::sync::oneshot::Receiver<StoreResult<()>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let op = Op::Append {
            run_id,
            seq,
            json,
            reply,
        };
        if let Err(Op::Append { reply, .. }) = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(op)
            .map_err(|e| e.0)
        {
            let _ = reply.send(Err(StoreError::Other("the store's writer thread has stopped".into())));
        }
        rx
    }

    /// Queues records of a run with other writes, in one transaction.
    pub(crate) fn commit_queued(
        &self,
        run_id: Arc<str>,
        rows: Vec<(u64, String)>,
        then: Then,
    ) -> tokio::sync::oneshot::Receiver<StoreResult<()>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let op = Op::Commit {
            run_id,
            rows,
            then,
            reply,
        };
        if let Err(Op::Commit { reply, .. }) = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(op)
            .map_err(|e| e.0)
        {
            let _ = reply.send(Err(StoreError::Other("the store's writer thread has stopped".into())));
        }
        rx
    }

    /// Creates a run atomically: refuses (inside the transaction) when another unfinished
    /// or stuck run holds the service or anti-flap holds it; otherwise takes the next
    /// change number of the year (`CHG-YYYY-NNNN`), inserts the row, locks the service
    /// and stores the run's first journal record, which `first_record` writes for the
    /// change number (it returns the record's JSON text).
    pub async fn create_run(
        &self,
        row: RunRow,
        admission: Admission,
        first_record: impl FnOnce(&str) -> StoreResult<String> + Send + 'static,
    ) -> StoreResult<Result<(String, String), Refusal>> {
        self.write(move |tx| {
            if let Some(holder) = lock_holder(tx, &row.service)? {
                return Ok(Err(Refusal::Locked(holder)));
            }
            if let Some(window) = admission.anti_flap
                && let Some((last, ended)) = last_failover_end(tx, &row.service)?
            {
                let age = SystemTime::now().duration_since(ended).unwrap_or_default();
                if age < window {
                    return Ok(Err(Refusal::AntiFlap(last, age)));
                }
            }
            // Before a change number is taken: a refused start leaves no gap in them.
            if tx
                .query_opt("SELECT 1 FROM runs WHERE id = $1", args![&row.id])?
                .is_some()
            {
                return Ok(Err(Refusal::IdInUse));
            }
            let year: i64 = row.started_at.get(..4).and_then(|y| y.parse().ok()).unwrap_or(1970);
            let n = tx
                .query_one(
                    "INSERT INTO change_numbers (year, last) VALUES ($1, 1)
                     ON CONFLICT (year) DO UPDATE SET last = change_numbers.last + 1 RETURNING last",
                    args![year],
                )?
                .int(0)?;
            let number = format!("CHG-{year}-{n:04}");
            let inserted = tx.execute(
                "INSERT INTO runs (id, runbook, service, mode, state, outcome, started_at, finished_at, change_number)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                args![
                    &row.id,
                    &row.runbook,
                    &row.service,
                    &row.mode,
                    &row.state,
                    &row.outcome,
                    &row.started_at,
                    &row.finished_at,
                    &number
                ],
            )?;
            if inserted == 0 {
                return Ok(Err(Refusal::IdInUse));
            }
            tx.execute(
                "INSERT INTO service_locks (service, run_id) VALUES ($1, $2)
                 ON CONFLICT (service) DO UPDATE SET run_id = excluded.run_id",
                args![&row.service, &row.id],
            )?;
            let json = first_record(&number)?;
            tx.execute(
                "INSERT INTO journal (run_id, seq, record) VALUES ($1, 0, $2)",
                args![&row.id, &json],
            )?;
            Ok(Ok((number, json)))
        })
        .await
    }

    /// Marks a run finished with its outcome and frees or keeps its service; for a run
    /// whose final records are stored but whose row says otherwise (a crash of an older
    /// build, a store edited by hand).
    pub async fn settle(&self, run_id: &str, outcome: &str, finished_at: &str, lock: LockRelease) -> StoreResult<()> {
        let (run_id, outcome, finished_at) = (run_id.to_owned(), outcome.to_owned(), finished_at.to_owned());
        self.write(move |tx| finish_row(tx, &run_id, &outcome, &finished_at, lock))
            .await
    }

    /// Makes everything committed so far durable on disk (for SQLite a full, fsynced
    /// checkpoint; a PostgreSQL commit is durable when it returns).
    pub async fn sync(&self) -> StoreResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Op::Job(Box::new(move |conn| {
            let _ = tx.send(conn.sync());
        })))?;
        rx.await
            .map_err(|_| StoreError::Other("the store's writer thread has stopped".into()))?
    }

    /// Appends an entry to the audit log.
    pub async fn audit(&self, e: AuditEntry) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO audit (at, who, role, action, decision, status, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![&e.at, &e.who, &e.role, &e.action, &e.decision, e.status, &e.detail],
            )?;
            Ok(())
        })
        .await
    }

    /// The newest audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        self.read(move |db| {
            db.query(
                "SELECT at, who, role, action, decision, status, detail FROM audit ORDER BY id DESC LIMIT $1",
                args![limit as i64],
            )?
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.text(0)?,
                    who: r.text(1)?,
                    role: r.opt_text(2)?,
                    action: r.text(3)?,
                    decision: r.text(4)?,
                    status: u16::try_from(r.int(5)?).unwrap_or(0),
                    detail: r.opt_text(6)?,
                })
            })
            .collect()
        })
    }

    /// Records a schedule's firing.
    pub async fn record_firing(&self, f: Firing) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO schedule_firings (schedule, at, outcome, run_id, reason) VALUES ($1, $2, $3, $4, $5)",
                args![&f.schedule, &f.at, &f.outcome, &f.run_id, &f.reason],
            )?;
            Ok(())
        })
        .await
    }

    /// A schedule's newest firings, newest first.
    pub fn firings(&self, schedule: &str, limit: usize) -> StoreResult<Vec<Firing>> {
        let schedule = schedule.to_owned();
        self.read(move |db| {
            db.query(
                "SELECT schedule, at, outcome, run_id, reason FROM schedule_firings WHERE schedule = $1
                 ORDER BY id DESC LIMIT $2",
                args![&schedule, limit as i64],
            )?
            .iter()
            .map(|r| {
                Ok(Firing {
                    schedule: r.text(0)?,
                    at: r.text(1)?,
                    outcome: r.text(2)?,
                    run_id: r.opt_text(3)?,
                    reason: r.opt_text(4)?,
                })
            })
            .collect()
        })
    }

    /// Corrective actions, oldest first.
    pub fn actions(&self, filter: &crate::actions::ActionFilter) -> StoreResult<Vec<crate::actions::CorrectiveAction>> {
        let filter = filter.clone();
        self.read(move |db| crate::actions::list(db, &filter))
    }

    /// One corrective action.
    pub fn action(&self, id: &str) -> StoreResult<Option<crate::actions::CorrectiveAction>> {
        let id = id.to_owned();
        self.read(move |db| crate::actions::get(db, &id))
    }

    /// Closes a corrective action by hand (`drover actions close`, the API): who, when
    /// and why go into its append-only history. Refused when it is closed already.
    pub async fn close_action(
        &self,
        id: &str,
        by: &str,
        note: &str,
    ) -> StoreResult<Result<crate::actions::CorrectiveAction, crate::actions::CloseRefusal>> {
        let (id, by, note) = (id.to_owned(), by.to_owned(), note.to_owned());
        let at = crate::journal::rfc3339(SystemTime::now());
        self.write(move |tx| crate::actions::close(tx, &id, &by, &note, &at))
            .await
    }

    /// Opens (or, for a passing run, closes) the corrective actions of a finished run,
    /// idempotently: for a run settled after a crash.
    pub async fn record_actions(&self, state: crate::state::RunState) -> StoreResult<()> {
        self.write(move |tx| crate::actions::record(tx, &state)).await
    }

    /// Every record of a run, in order.
    pub fn records(&self, run_id: &str) -> StoreResult<Vec<StoredRecord>> {
        let run_id = run_id.to_owned();
        self.read(move |db| {
            db.query(
                "SELECT seq, record FROM journal WHERE run_id = $1 ORDER BY seq",
                args![&run_id],
            )?
            .iter()
            .map(|r| {
                Ok(StoredRecord {
                    seq: r.int(0)? as u64,
                    json: r.text(1)?,
                })
            })
            .collect()
        })
    }

    /// The run holding `service`'s lock, if any.
    pub fn service_holder(&self, service: &str) -> StoreResult<Option<String>> {
        let service = service.to_owned();
        self.read(move |db| {
            db.query_opt("SELECT run_id FROM service_locks WHERE service = $1", args![&service])?
                .map(|r| r.text(0))
                .transpose()
        })
    }

    /// A run's row.
    pub fn run(&self, run_id: &str) -> StoreResult<Option<RunRow>> {
        let run_id = run_id.to_owned();
        self.read(move |db| {
            db.query_opt(&format!("SELECT {COLUMNS} FROM runs WHERE id = $1"), args![&run_id])?
                .map(|r| row(&r))
                .transpose()
        })
    }

    /// Runs, newest first.
    pub fn runs(&self, limit: usize) -> StoreResult<Vec<RunRow>> {
        self.read(move |db| {
            db.query(
                &format!("SELECT {COLUMNS} FROM runs ORDER BY started_at DESC, id DESC LIMIT $1"),
                args![limit as i64],
            )?
            .iter()
            .map(row)
            .collect()
        })
    }

    /// Runs whose id starts with `prefix` (for short ids on the command line).
    pub fn runs_with_prefix(&self, prefix: &str) -> StoreResult<Vec<RunRow>> {
        let prefix = prefix.to_owned();
        self.read(move |db| {
            db.query(
                &format!(
                    "SELECT {COLUMNS} FROM runs WHERE substr(id, 1, length(CAST($1 AS TEXT))) = CAST($1 AS TEXT) ORDER BY id"
                ),
                args![&prefix],
            )?
            .iter()
            .map(row)
            .collect()
        })
    }

    /// Every run id, in order (for "did you mean" on a mistyped id).
    pub fn run_ids(&self) -> StoreResult<Vec<String>> {
        self.read(|db| {
            db.query("SELECT id FROM runs ORDER BY id", &[])?
                .iter()
                .map(|r| r.text(0))
                .collect()
        })
    }
}

/// The leadership lease as the store holds it (PostgreSQL only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node holding it; `None` before anyone took it.
    pub holder: Option<String>,
    /// Incremented at every change of holder: the fencing token.
    pub epoch: i64,
    /// When it ends, by the database's clock (RFC 3339, UTC).
    pub expires_at: String,
    /// The database's clock when this was read.
    pub now: String,
}

impl Lease {
    /// Whether it was in force when read (by the database's clock).
    pub fn live(&self) -> bool {
        self.holder.is_some() && self.expires_at > self.now
    }
}

/// A daemon of a cluster, as the store last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    pub site: Option<String>,
    /// Its API's base URL.
    pub address: Option<String>,
    /// RFC 3339, UTC, by the database's clock.
    pub last_seen: String,
    /// How long ago, by the database's clock.
    pub age_ms: i64,
}

/// The lease's times as RFC 3339 text in UTC, with microseconds (sortable as text).
const LEASE_COLUMNS: &str = r#"holder, epoch,
    to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;

fn lease_row(r: &Row) -> StoreResult<Lease> {
    Ok(Lease {
        holder: r.opt_text(0)?,
        epoch: r.int(1)?,
        expires_at: r.text(2)?,
        now: r.text(3)?,
    })
}

fn lease_needs_postgres() -> StoreError {
    StoreError::Other("leadership needs a PostgreSQL state store (state: {url: \"postgres://...\"})".into())
}

impl Store {
    /// Takes or renews the lease `name` for `node` for `ttl`, in one conditional
    /// UPDATE: it succeeds when the lease has expired (by the database's clock, so the
    /// nodes' clocks do not matter) or `node` holds it already; the epoch goes up by one
    /// on a change of holder and stays on a renewal. `None`: another node holds it.
    pub async fn acquire_lease(&self, name: &str, node: &str, ttl: Duration) -> StoreResult<Option<Lease>> {
        if self.backend() != Backend::Postgres {
            return Err(lease_needs_postgres());
        }
        let (name, node) = (name.to_owned(), node.to_owned());
        let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        self.write(move |tx| {
            tx.query_opt(
                &format!(
                    "UPDATE leases SET
                         epoch = CASE WHEN holder IS NOT DISTINCT FROM $2 THEN epoch ELSE epoch + 1 END,
                         holder = $2,
                         expires_at = now() + $3::bigint * interval '1 microsecond'
                     WHERE name = $1 AND (holder IS NOT DISTINCT FROM $2 OR expires_at <= now())
                     RETURNING {LEASE_COLUMNS}"
                ),
                args![&name, &node, ttl_us],
            )?
            .map(|r| lease_row(&r))
            .transpose()
        })
        .await
    }

    /// Gives the lease up (a clean shutdown): it expires now, so a standby need not wait
    /// for it; its epoch stays. `false` when `node` did not hold it.
    pub async fn release_lease(&self, name: &str, node: &str) -> StoreResult<bool> {
        if self.backend() != Backend::Postgres {
            return Err(lease_needs_postgres());
        }
        let (name, node) = (name.to_owned(), node.to_owned());
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2 AND expires_at > now()",
                args![&name, &node],
            )? > 0)
        })
        .await
    }

    /// Records that `node` is alive (at its lease attempt), where its API is and which
    /// site it is in, by the database's clock.
    pub async fn heartbeat(&self, node: &str, site: Option<&str>, address: Option<&str>) -> StoreResult<()> {
        if self.backend() != Backend::Postgres {
            return Err(lease_needs_postgres());
        }
        let (node, site, address) = (node.to_owned(), site.map(str::to_owned), address.map(str::to_owned));
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO members (node, site, address, last_seen) VALUES ($1, $2, $3, now())
                 ON CONFLICT (node) DO UPDATE SET site = excluded.site, address = excluded.address,
                     last_seen = excluded.last_seen",
                args![&node, site.as_deref(), address.as_deref()],
            )?;
            Ok(())
        })
        .await
    }

    /// The daemons that ever joined the cluster, with when each was last seen.
    pub fn members(&self) -> StoreResult<Vec<Member>> {
        if self.backend() != Backend::Postgres {
            return Err(lease_needs_postgres());
        }
        self.read(|db| {
            db.query(
                r#"SELECT node, site, address,
                       to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                       (extract(epoch FROM now() - last_seen) * 1000)::bigint
                   FROM members ORDER BY node"#,
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(Member {
                    node: r.text(0)?,
                    site: r.opt_text(1)?,
                    address: r.opt_text(2)?,
                    last_seen: r.text(3)?,
                    age_ms: r.int(4)?,
                })
            })
            .collect()
        })
    }

    /// The lease as it stands, with the database's clock.
    pub fn lease(&self, name: &str) -> StoreResult<Option<Lease>> {
        if self.backend() != Backend::Postgres {
            return Err(lease_needs_postgres());
        }
        let name = name.to_owned();
        self.read(move |db| {
            db.query_opt(
                &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE name = $1"),
                args![&name],
            )?
            .map(|r| lease_row(&r))
            .transpose()
        })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(source: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            path: PathBuf::new(),
            source,
        }
    }
}

pub(crate) fn insert_records(tx: &mut dyn Sql, run_id: &str, records: &[(u64, String)]) -> StoreResult<()> {
    for (seq, json) in records {
        tx.execute(INSERT_RECORD, args![run_id, *seq as i64, json])?;
    }
    Ok(())
}

/// Marks the row finished with its outcome; frees or keeps the service lock.
pub fn finish_row(
    tx: &mut dyn Sql,
    run_id: &str,
    outcome: &str,
    finished_at: &str,
    lock: LockRelease,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE runs SET state = 'finished', outcome = $2, finished_at = $3 WHERE id = $1",
        args![run_id, outcome, finished_at],
    )?;
    match lock {
        LockRelease::Free => {
            tx.execute("DELETE FROM service_locks WHERE run_id = $1", args![run_id])?;
        }
        LockRelease::Keep => {
            // A stuck run keeps (or takes back) its service.
            let service = tx
                .query_one("SELECT service FROM runs WHERE id = $1", args![run_id])?
                .text(0)?;
            tx.execute(
                "INSERT INTO service_locks (service, run_id) VALUES ($1, $2)
                 ON CONFLICT (service) DO UPDATE SET run_id = excluded.run_id",
                args![&service, run_id],
            )?;
        }
    }
    Ok(())
}

const COLUMNS: &str = "id, runbook, service, mode, state, outcome, started_at, finished_at";

fn row(r: &Row) -> StoreResult<RunRow> {
    Ok(RunRow {
        id: r.text(0)?,
        runbook: r.text(1)?,
        service: r.text(2)?,
        mode: r.text(3)?,
        state: r.text(4)?,
        outcome: r.opt_text(5)?,
        started_at: r.text(6)?,
        finished_at: r.opt_text(7)?,
    })
}

/// The run that holds `service`: a run that has not finished (running or interrupted)
/// or a stuck one that nobody acknowledged.
fn lock_holder(tx: &mut dyn Sql, service: &str) -> StoreResult<Option<RunRow>> {
    let columns = COLUMNS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(tx
        .query_opt(
            &format!("SELECT {columns} FROM service_locks l JOIN runs r ON r.id = l.run_id WHERE l.service = $1"),
            args![service],
        )?
        .map(|r| row(&r))
        .transpose()?
        .filter(|r| r.state != "finished" || r.outcome.as_deref() == Some("stuck")))
}

/// The service's newest failover that changed something (it recovered the service, or
/// got stuck), and when it ended: its finish, or for a stuck run its acknowledgement.
fn last_failover_end(tx: &mut dyn Sql, service: &str) -> StoreResult<Option<(RunRow, SystemTime)>> {
    let greatest = match tx.backend() {
        Backend::Sqlite => "max",
        Backend::Postgres => "GREATEST",
    };
    let found = tx
        .query_opt(
            &format!(
                "SELECT {COLUMNS}, acked_at FROM runs WHERE service = $1 AND mode = 'failover' AND state = 'finished'
                 AND outcome IN ('passed', 'targets_missed', 'stuck')
                 ORDER BY {greatest}(finished_at, coalesce(acked_at, '')) DESC LIMIT 1"
            ),
            args![service],
        )?
        .map(|r| Ok::<_, StoreError>((row(&r)?, r.opt_text(8)?)))
        .transpose()?;
    Ok(found.map(|(run, acked)| {
        let parse = |t: Option<&str>| t.and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        let ended = parse(run.finished_at.as_deref())
            .into_iter()
            .chain(parse(acked.as_deref()))
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        (run, ended)
    }))
}

#[cfg(test)]
mod tests;
