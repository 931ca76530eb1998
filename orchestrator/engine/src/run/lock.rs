//! The OS lock a live process holds on a run (`state/runs/RUN.lock`), released by the
//! kernel when the process exits, kill -9 included. A run without a live holder and
//! without an end is *interrupted*.

use std::fs::File;
use std::path::PathBuf;

use super::EngineError;
use crate::store::Store;

/// The exclusive lock on one run.
#[derive(Debug)]
pub(crate) struct RunLock(#[allow(dead_code)] File);

fn lock_path(store: &Store, run_id: &str) -> PathBuf {
    store.dir().join("runs").join(format!("{run_id}.lock"))
}

/// Takes the run's lock; `None` when another process holds it.
pub(crate) fn take(store: &Store, run_id: &str) -> Result<Option<RunLock>, EngineError> {
    let path = lock_path(store, run_id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::Invalid(format!("cannot create {}: {e}", dir.display())))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::Invalid(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(RunLock(file))),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(EngineError::Invalid(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// Whether a live process is running `run_id` right now.
pub fn is_live(store: &Store, run_id: &str) -> bool {
    let path = lock_path(store, run_id);
    match File::options().write(true).open(&path) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}
