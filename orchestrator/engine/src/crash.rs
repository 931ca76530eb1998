//! Named crash points, for the reliability tests: at every journal and store boundary
//! the engine calls [`point`] with a name such as `append.after:step_started:steps` or
//! `finish.before_commit`. When the environment variable `DROVER_CRASH_AT` names that
//! point (`NAME`, or `NAME#N` for its N-th occurrence in this process), drover aborts
//! there (`SIGABRT`, like a kill -9: no destructor, no flush), so a test can check
//! that `drover resume` recovers from exactly that instant.
//!
//! `DROVER_CRASH_TRACE=FILE` appends the name of every point passed to FILE, one per
//! line, so a test can list the points a runbook goes through and crash at each.
//!
//! Both variables are read once, at the first point; without them a point costs one
//! atomic load. The list of points and what the tests found is in docs/RELIABILITY.md.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

struct Config {
    /// The point to crash at, and at which occurrence (1-based).
    at: Option<(String, u32)>,
    trace: Option<std::path::PathBuf>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static SEEN: AtomicU32 = AtomicU32::new(0);

fn config() -> &'static Config {
    CONFIG.get_or_init(|| {
        let at = std::env::var("DROVER_CRASH_AT")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| match s.rsplit_once('#') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1).max(1)),
                None => (s, 1),
            });
        let trace = std::env::var_os("DROVER_CRASH_TRACE")
            .filter(|s| !s.is_empty())
            .map(Into::into);
        Config { at, trace }
    })
}

/// A crash point: aborts the process when `DROVER_CRASH_AT` names it.
pub fn point(name: &str) {
    let cfg = config();
    if let Some(path) = &cfg.trace
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "{name}");
    }
    if let Some((at, n)) = &cfg.at
        && at == name
        && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("drover: crash point `{name}` reached: aborting (DROVER_CRASH_AT)");
        std::process::abort();
    }
}
