//! The state store: runs, their append-only journals and the per-service locks, in an
//! embedded SQLite file (WAL mode).
//!
//! Durability: every journal record is committed before the engine goes on (before and
//! after each side effect). With `synchronous=NORMAL` in WAL mode a commit is in the
//! operating system's hands when `append` returns, so a kill -9 of drover loses nothing
//! already appended; [`Store::sync`] (a full WAL checkpoint, fsynced) puts a finished
//! run on disk before its outcome is reported. That keeps a step's bookkeeping to two
//! small commits without an fsync each (see docs/RELIABILITY.md).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

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
"#;

/// The SQLite state store. Cheap to clone; one connection behind a mutex.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
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
        let err = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
        // Switching a new database to WAL takes an exclusive lock and reports "busy"
        // without waiting when another process opens it at the same moment: retry.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(err(e)),
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        // One process at a time creates or migrates the schema.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        let migrated = conn.execute_batch(SCHEMA).and_then(|()| {
            // Stores made before the change number existed get the column.
            let has_change: bool = conn.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('runs') WHERE name = 'change_number'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !has_change {
                conn.execute_batch("ALTER TABLE runs ADD COLUMN change_number TEXT")?;
            }
            Ok(())
        });
        match migrated {
            Ok(()) => conn.execute_batch("COMMIT").map_err(err)?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(err(e));
            }
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder holding the database (run locks live beside it).
    pub fn dir(&self) -> PathBuf {
        drover_model::paths::folder_of(&self.path)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Creates a run, gives it the next change number of its year (`CHG-YYYY-NNNN`) and
    /// takes its service's lock, atomically. When another unfinished
    /// run holds the service, `holder` gets that run and says why this one is refused
    /// (`None`: take the lock over).
    pub fn create_run(
        &self,
        row: &RunRow,
        holder: impl Fn(&RunRow) -> Option<String>,
    ) -> StoreResult<Result<String, String>> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT run_id FROM service_locks WHERE service = ?1",
                [&row.service],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(other) = existing {
            let other_row = tx
                .query_row(
                    &format!("SELECT {} FROM runs WHERE id = ?1", Self::COLUMNS),
                    [&other],
                    Self::row,
                )
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(other_row) = other_row.filter(|r| r.state != "finished")
                && let Some(why) = holder(&other_row)
            {
                return Ok(Err(why));
            }
        }
        let year: i64 = row.started_at.get(..4).and_then(|y| y.parse().ok()).unwrap_or(1970);
        let n: i64 = tx
            .query_row(
                "INSERT INTO change_numbers (year, last) VALUES (?1, 1)
                 ON CONFLICT (year) DO UPDATE SET last = last + 1 RETURNING last",
                [year],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let number = format!("CHG-{year}-{n:04}");
        tx.execute(
            "INSERT INTO runs (id, runbook, service, mode, state, outcome, started_at, finished_at, change_number)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO service_locks (service, run_id) VALUES (?1, ?2)
             ON CONFLICT (service) DO UPDATE SET run_id = excluded.run_id",
            params![row.service, row.id],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Ok(number))
    }

    /// Appends one record to a run's journal.
    pub fn append(&self, run_id: &str, seq: u64, json: &str) -> StoreResult<()> {
        self.conn()
            .prepare_cached("INSERT INTO journal (run_id, seq, record) VALUES (?1, ?2, ?3)")
            .and_then(|mut st| st.execute(params![run_id, seq as i64, json]))
            .map(drop)
            .map_err(|e| self.err(e))
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

    /// Marks a run finished with its outcome and frees its service.
    pub fn finish_run(&self, run_id: &str, outcome: &str, finished_at: &str) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE runs SET state = 'finished', outcome = ?2, finished_at = ?3 WHERE id = ?1",
            params![run_id, outcome, finished_at],
        )
        .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM service_locks WHERE run_id = ?1", [run_id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Makes everything committed so far durable on disk (a full, fsynced checkpoint).
    pub fn sync(&self) -> StoreResult<()> {
        let conn = self.conn();
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e))?;
        let r = conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()));
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        r.map_err(|e| self.err(e))
    }

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

    const COLUMNS: &'static str = "id, runbook, service, mode, state, outcome, started_at, finished_at";

    /// Runs, newest first.
    pub fn runs(&self, limit: usize) -> StoreResult<Vec<RunRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {} FROM runs ORDER BY started_at DESC, id DESC LIMIT ?1",
                Self::COLUMNS
            ))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([limit as i64], Self::row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Runs whose id starts with `prefix` (for short ids on the command line).
    pub fn runs_with_prefix(&self, prefix: &str) -> StoreResult<Vec<RunRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {} FROM runs WHERE substr(id, 1, ?2) = ?1 ORDER BY id",
                Self::COLUMNS
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![prefix, prefix.chars().count() as i64], Self::row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The newest finished failover of `service` that recovered it.
    pub fn last_failover(&self, service: &str) -> StoreResult<Option<RunRow>> {
        let conn = self.conn();
        conn.query_row(
            &format!(
                "SELECT {} FROM runs WHERE service = ?1 AND mode = 'failover' AND state = 'finished'
                 AND outcome IN ('passed', 'targets_missed') ORDER BY finished_at DESC LIMIT 1",
                Self::COLUMNS
            ),
            [service],
            Self::row,
        )
        .optional()
        .map_err(|e| self.err(e))
    }
}
