//! The state store: runs, their append-only journals and the per-service locks, in an
//! embedded SQLite file (WAL mode).
//!
//! **One writer thread.** Every write (a journal append, the creation of a run, its
//! finish, an acknowledgement) runs on a dedicated thread that owns the write
//! connection, so no commit or fsync ever blocks an async worker thread: the engine
//! sends the write and awaits its reply. Appends that queue up while a commit is under
//! way (parallel steps) are committed together in one transaction (group commit), each
//! still acknowledged only once it is committed. Reads use a second connection; in WAL
//! mode they never wait for the writer.
//!
//! Durability: every journal record is committed before the engine goes on (before and
//! after each side effect). With `synchronous=NORMAL` in WAL mode a commit is in the
//! operating system's hands when `append` returns, so a kill -9 of drover loses nothing
//! already appended; [`Store::sync`] (a full WAL checkpoint, fsynced) puts a finished
//! run on disk before its outcome is reported. That keeps a step's bookkeeping to two
//! small commits without an fsync each (see docs/RELIABILITY.md).
//!
//! The run lifecycle is atomic: [`Store::create_run`] checks the service lock and
//! anti-flap, takes the change number, inserts the run row, locks the service and
//! stores the first journal record in one transaction; [`Store::finish`] stores the
//! last records with the finish of the row and the release (or keeping) of the lock.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store: {0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Records an acknowledgement of a run: its time, and the release of its service.
pub fn acknowledge_row(tx: &Transaction<'_>, run_id: &str, acked_at: &str) -> StoreResult<()> {
    tx.execute("UPDATE runs SET acked_at = ?2 WHERE id = ?1", params![run_id, acked_at])?;
    tx.execute("DELETE FROM service_locks WHERE run_id = ?1", [run_id])?;
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

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

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
}

/// What a [`Op::Commit`] writes beside its records.
pub(crate) type Then = Box<dyn FnOnce(&Transaction<'_>) -> StoreResult<()> + Send>;

struct Inner {
    path: PathBuf,
    /// For reads; never used for writes.
    read: Mutex<Connection>,
    writer: Mutex<mpsc::Sender<Op>>,
}

/// The SQLite state store. Cheap to clone.
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

/// The writer thread: runs jobs in order; commits queued appends together.
fn writer_loop(mut conn: Connection, path: PathBuf, ops: mpsc::Receiver<Op>) {
    let err = sqlite_err(&path);
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
            Op::Job(job) => job(&mut conn),
            Op::Commit {
                run_id,
                rows,
                then,
                reply,
            } => {
                let r = if broken.contains(&run_id) {
                    Err(StoreError::Other(format!(
                        "run {run_id}: refused: an earlier record of this run was not stored"
                    )))
                } else {
                    in_transaction(&mut conn, &path, |tx| {
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
                let result = (|| -> rusqlite::Result<()> {
                    let tx = conn.transaction()?;
                    {
                        let mut st =
                            tx.prepare_cached("INSERT INTO journal (run_id, seq, record) VALUES (?1, ?2, ?3)")?;
                        for (run_id, seq, json, _) in &batch {
                            if !broken.contains(run_id) {
                                st.execute(params![&**run_id, *seq as i64, json])?;
                            }
                        }
                    }
                    tx.commit()
                })();
                match result {
                    Ok(()) => {
                        for (run_id, seq, _, reply) in batch {
                            let r = if broken.contains(&run_id) {
                                Err(StoreError::Other(format!(
                                    "run {run_id}: record {seq} refused: an earlier record of this run was not stored"
                                )))
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
                                Err(StoreError::Other(format!(
                                    "run {run_id}: record {seq} refused: an earlier record of this run was not stored"
                                )))
                            } else {
                                conn.prepare_cached("INSERT INTO journal (run_id, seq, record) VALUES (?1, ?2, ?3)")
                                    .and_then(|mut st| st.execute(params![&*run_id, seq as i64, json]))
                                    .map(drop)
                                    .map_err(&err)
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
                        let _ = reply.send(Err(err(e)));
                    }
                }
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store named by a `state.url`.
    pub fn open_url(url: &str) -> StoreResult<Store> {
        match url.strip_prefix("sqlite://") {
            Some(path) => Store::open(Path::new(path)),
            None if url.starts_with("postgres://") || url.starts_with("postgresql://") => Err(StoreError::Other(
                "a PostgreSQL state store is not supported by this build yet; use sqlite://PATH".into(),
            )),
            None => Err(StoreError::Other(format!("unsupported state url `{url}`"))),
        }
    }

    /// Opens (creating if needed) the SQLite file at `path`.
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
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("drover-store-writer".into())
            .spawn(move || writer_loop(write, thread_path, rx))
            .map_err(|e| StoreError::Other(format!("cannot start the store's writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                read: Mutex::new(read),
                writer: Mutex::new(tx),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The folder holding the database (run locks live beside it).
    pub fn dir(&self) -> PathBuf {
        drover_model::paths::folder_of(&self.inner.path)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.inner.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.inner.path.clone(),
            source,
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
        f: impl FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = self.inner.path.clone();
        self.send(Op::Job(Box::new(move |conn| {
            let _ = tx.send(in_transaction(conn, &path, f));
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
            let year: i64 = row.started_at.get(..4).and_then(|y| y.parse().ok()).unwrap_or(1970);
            let n: i64 = tx.query_row(
                "INSERT INTO change_numbers (year, last) VALUES (?1, 1)
                 ON CONFLICT (year) DO UPDATE SET last = last + 1 RETURNING last",
                [year],
                |r| r.get(0),
            )?;
            let number = format!("CHG-{year}-{n:04}");
            let inserted = tx.execute(
                "INSERT INTO runs (id, runbook, service, mode, state, outcome, started_at, finished_at, change_number)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING",
                params![
                    row.id,
                    row.runbook,
                    row.service,
                    row.mode,
                    row.state,
                    row.outcome,
                    row.started_at,
                    row.finished_at,
                    number
                ],
            )?;
            if inserted == 0 {
                return Ok(Err(Refusal::IdInUse));
            }
            tx.execute(
                "INSERT INTO service_locks (service, run_id) VALUES (?1, ?2)
                 ON CONFLICT (service) DO UPDATE SET run_id = excluded.run_id",
                params![row.service, row.id],
            )?;
            let json = first_record(&number)?;
            tx.execute(
                "INSERT INTO journal (run_id, seq, record) VALUES (?1, 0, ?2)",
                params![row.id, json],
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

    /// Makes everything committed so far durable on disk (a full, fsynced checkpoint).
    pub async fn sync(&self) -> StoreResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = self.inner.path.clone();
        self.send(Op::Job(Box::new(move |conn| {
            let _ = tx.send(checkpoint(conn, &path));
        })))?;
        rx.await
            .map_err(|_| StoreError::Other("the store's writer thread has stopped".into()))?
    }

    /// Appends an entry to the audit log.
    pub async fn audit(&self, e: AuditEntry) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO audit (at, who, role, action, decision, status, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![e.at, e.who, e.role, e.action, e.decision, e.status, e.detail],
            )?;
            Ok(())
        })
        .await
    }

    /// The newest audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT at, who, role, action, decision, status, detail FROM audit ORDER BY id DESC LIMIT ?1")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(AuditEntry {
                    at: r.get(0)?,
                    who: r.get(1)?,
                    role: r.get(2)?,
                    action: r.get(3)?,
                    decision: r.get(4)?,
                    status: r.get(5)?,
                    detail: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Records a schedule's firing.
    pub async fn record_firing(&self, f: Firing) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO schedule_firings (schedule, at, outcome, run_id, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![f.schedule, f.at, f.outcome, f.run_id, f.reason],
            )?;
            Ok(())
        })
        .await
    }

    /// A schedule's newest firings, newest first.
    pub fn firings(&self, schedule: &str, limit: usize) -> StoreResult<Vec<Firing>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT schedule, at, outcome, run_id, reason FROM schedule_firings WHERE schedule = ?1
                 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![schedule, limit as i64], |r| {
                Ok(Firing {
                    schedule: r.get(0)?,
                    at: r.get(1)?,
                    outcome: r.get(2)?,
                    run_id: r.get(3)?,
                    reason: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Corrective actions, oldest first.
    pub fn actions(&self, filter: &crate::actions::ActionFilter) -> StoreResult<Vec<crate::actions::CorrectiveAction>> {
        crate::actions::list(&self.conn(), filter).map_err(|e| self.with_path(e))
    }

    /// One corrective action.
    pub fn action(&self, id: &str) -> StoreResult<Option<crate::actions::CorrectiveAction>> {
        crate::actions::get(&self.conn(), id).map_err(|e| self.with_path(e))
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

    fn with_path(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Sqlite { path, source } if path.as_os_str().is_empty() => self.err(source),
            e => e,
        }
    }

    /// Every record of a run, in order.
    pub fn records(&self, run_id: &str) -> StoreResult<Vec<StoredRecord>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached("SELECT seq, record FROM journal WHERE run_id = ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([run_id], |r| {
                Ok(StoredRecord {
                    seq: r.get::<_, i64>(0)? as u64,
                    json: r.get(1)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The run holding `service`'s lock, if any.
    pub fn service_holder(&self, service: &str) -> StoreResult<Option<String>> {
        self.conn()
            .query_row("SELECT run_id FROM service_locks WHERE service = ?1", [service], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// A run's row.
    pub fn run(&self, run_id: &str) -> StoreResult<Option<RunRow>> {
        self.conn()
            .query_row(&format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"), [run_id], row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Runs, newest first.
    pub fn runs(&self, limit: usize) -> StoreResult<Vec<RunRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM runs ORDER BY started_at DESC, id DESC LIMIT ?1"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([limit as i64], row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Runs whose id starts with `prefix` (for short ids on the command line).
    pub fn runs_with_prefix(&self, prefix: &str) -> StoreResult<Vec<RunRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM runs WHERE substr(id, 1, ?2) = ?1 ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![prefix, prefix.chars().count() as i64], row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every run id, in order (for "did you mean" on a mistyped id).
    pub fn run_ids(&self) -> StoreResult<Vec<String>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT id FROM runs ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

fn in_transaction<T>(
    conn: &mut Connection,
    path: &Path,
    f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>,
) -> StoreResult<T> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(path))?;
    // Errors converted with `?` inside `f` do not know the path: give it to them.
    let out = f(&tx).map_err(|e| match e {
        StoreError::Sqlite { path: p, source } if p.as_os_str().is_empty() => StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        },
        e => e,
    })?;
    tx.commit().map_err(sqlite_err(path))?;
    Ok(out)
}

fn checkpoint(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let err = sqlite_err(path);
    conn.pragma_update(None, "synchronous", "FULL").map_err(&err)?;
    let r = conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()));
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(&err)?;
    r.map_err(&err)
}

impl From<rusqlite::Error> for StoreError {
    fn from(source: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            path: PathBuf::new(),
            source,
        }
    }
}

pub(crate) fn insert_records(tx: &Transaction<'_>, run_id: &str, records: &[(u64, String)]) -> StoreResult<()> {
    let mut st = tx.prepare_cached("INSERT INTO journal (run_id, seq, record) VALUES (?1, ?2, ?3)")?;
    for (seq, json) in records {
        st.execute(params![run_id, *seq as i64, json])?;
    }
    Ok(())
}

/// Marks the row finished with its outcome; frees or keeps the service lock.
pub fn finish_row(
    tx: &Transaction<'_>,
    run_id: &str,
    outcome: &str,
    finished_at: &str,
    lock: LockRelease,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE runs SET state = 'finished', outcome = ?2, finished_at = ?3 WHERE id = ?1",
        params![run_id, outcome, finished_at],
    )?;
    match lock {
        LockRelease::Free => {
            tx.execute("DELETE FROM service_locks WHERE run_id = ?1", [run_id])?;
        }
        LockRelease::Keep => {
            // A stuck run keeps (or takes back) its service.
            let service: String = tx.query_row("SELECT service FROM runs WHERE id = ?1", [run_id], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO service_locks (service, run_id) VALUES (?1, ?2)
                 ON CONFLICT (service) DO UPDATE SET run_id = excluded.run_id",
                params![service, run_id],
            )?;
        }
    }
    Ok(())
}

const COLUMNS: &str = "id, runbook, service, mode, state, outcome, started_at, finished_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        runbook: r.get(1)?,
        service: r.get(2)?,
        mode: r.get(3)?,
        state: r.get(4)?,
        outcome: r.get(5)?,
        started_at: r.get(6)?,
        finished_at: r.get(7)?,
    })
}

/// The run that holds `service`: a run that has not finished (running or interrupted)
/// or a stuck one that nobody acknowledged.
fn lock_holder(tx: &Transaction<'_>, service: &str) -> StoreResult<Option<RunRow>> {
    Ok(tx
        .query_row(
            &format!(
                "SELECT {} FROM service_locks l JOIN runs r ON r.id = l.run_id WHERE l.service = ?1",
                COLUMNS
                    .split(", ")
                    .map(|c| format!("r.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            [service],
            row,
        )
        .optional()?
        .filter(|r| r.state != "finished" || r.outcome.as_deref() == Some("stuck")))
}

/// The service's newest failover that changed something (it recovered the service, or
/// got stuck), and when it ended: its finish, or for a stuck run its acknowledgement.
fn last_failover_end(tx: &Transaction<'_>, service: &str) -> StoreResult<Option<(RunRow, SystemTime)>> {
    let found = tx
        .query_row(
            &format!(
                "SELECT {COLUMNS}, acked_at FROM runs WHERE service = ?1 AND mode = 'failover' AND state = 'finished'
                 AND outcome IN ('passed', 'targets_missed', 'stuck')
                 ORDER BY max(finished_at, coalesce(acked_at, '')) DESC LIMIT 1"
            ),
            [service],
            |r| Ok((row(r)?, r.get::<_, Option<String>>(8)?)),
        )
        .optional()?;
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
