//! `postgres.fence`: the old primary refuses writes, and drover has seen it refuse.
//!
//! Before it changes anything the step journals a checkpoint of what it will change
//! (the `ALTER SYSTEM` value of `default_transaction_read_only`, the role and database
//! overrides of it in `pg_db_role_setting`, the standbys then streaming), so that the
//! compensation restores exactly that, also when the outcome of the fence is unknown.
//!
//! 1. Overrides that would let a role or database start read-write transactions
//!    (`ALTER ROLE app SET default_transaction_read_only = off`, `ALTER DATABASE ...`,
//!    `ALTER ROLE ... IN DATABASE ...`, `ALTER ROLE ALL ...`) are reset: they take
//!    precedence over `ALTER SYSTEM`.
//! 2. `ALTER SYSTEM SET default_transaction_read_only = on` and `pg_reload_conf()`:
//!    every new transaction, in every session, is read-only by default. The step waits
//!    until its own session has re-read the configuration (the postmaster re-reads it
//!    first), so that no session forked later starts with the old default.
//! 3. Every other client session is terminated and drover waits until they have
//!    exited, so that no transaction that began read-write can still commit. A session
//!    that cannot be ended fails the fence (retryable), as do prepared transactions
//!    (`COMMIT PREPARED` is allowed in a read-only transaction).
//! 4. Observed, not assumed: a new session tries a write (a temporary table in a
//!    transaction that is rolled back) until the server refuses it as read-only, and
//!    no overriding setting is left in `pg_db_role_setting`.
//!
//! A fence that fails after it has changed something undoes its change from the
//! checkpoint before it reports the failure (the engine compensates completed steps
//! only), so a failed fence does not leave a primary read-only with nobody promoted.
//!
//! Recorded: the fence instant (drover's wall clock, the clock of the heartbeat rows):
//! the moment no write could commit any more, every session that began before the
//! fence having exited and no prepared transaction left, an upper bound of the old
//! primary's last write and the instant the RPO is measured from. It is journaled as the
//! step's progress before the observation, and a re-run after a crash keeps it if the
//! fence has held since (same server, no configuration reload or restart, still
//! read-only); else the re-run takes its own, later one. Also the moment the refusal was
//! seen, the primary's WAL position then, its `system_identifier` and whether it was in
//! recovery (`postgres.promote` accepts only a fence of its standby's own primary),
//! the standbys then streaming from it, the newest heartbeat row of this run on it.
//!
//! An unreachable primary cannot be observed fenced: the step fails, unless the runbook
//! declares the site lost (`assume_lost: true`) and the failure is one of the
//! unreachable kinds ([`Unreachable`]: refused, timeout, no route, network
//! unreachable); then it succeeds with `assumed_lost: true` in its output. A wrong
//! password, a TLS failure or any answer from the server is a failed fence, never a
//! lost site. The fence instant is then the first failed heartbeat write after the
//! last acknowledged one, both seen by this process's heartbeat writer at the time the
//! fence runs, else the moment the fence found the primary unreachable; whichever it
//! is, it is journaled in the step's output, where every later step (and a resumed
//! process) reads it.
//!
//! The compensation restores the checkpoint, except when a standby that streamed from
//! the primary at the fence no longer does: it may have been promoted, and unfencing
//! would leave two writable primaries, so the compensation refuses (the run is then
//! stuck and an operator decides).
//!
//! What this cannot do: a session may still `SET default_transaction_read_only = off`
//! or `BEGIN READ WRITE` (the setting is a default, not a lock), a client may pass it
//! in its startup options, and a superuser session opened later may undo everything.
//! docs/POSTGRES.md says how to fence harder (stop the server, cut its network).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_model::{Issue, Located, Node, ParamCx};
use drover_plugin_api::{Action, ActionClass, ActionError, ActionSpec, Preview, StepContext, StepOutput};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::conn::{Db, SqlError, Target, Unreachable};
use crate::{DatabaseParams, is_identifier, now_unix, rfc3339};

/// `postgres.fence`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fence;

/// How long a fence (or unfence) may take to be observed in a new session.
const OBSERVE_FOR: Duration = Duration::from_secs(10);
/// How long terminated sessions may take to exit.
const SESSIONS_EXIT_WITHIN: Duration = Duration::from_secs(5);

impl ActionSpec for Fence {
    fn kind(&self) -> &str {
        "postgres.fence"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Change
    }
    fn compensable(&self) -> bool {
        true
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        crate::validate(with, cx, crate::check_database)
    }
}

/// A setting of `default_transaction_read_only` for a role and/or a database
/// (`pg_db_role_setting`); it takes precedence over `ALTER SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Override {
    /// `None`: every role (`ALTER ROLE ALL` or `ALTER DATABASE`).
    pub role: Option<String>,
    /// `None`: every database.
    pub database: Option<String>,
    pub value: String,
}

impl Override {
    /// Whether sessions it applies to would start read-write transactions.
    fn defeats_fence(&self) -> bool {
        parse_bool(&self.value) != Some(true)
    }

    /// The `format()` template and arguments of the statement that resets it
    /// (`value: None`) or sets it to `value`.
    fn alter(&self, value: Option<&str>) -> (String, Vec<String>) {
        let mut args = Vec::new();
        let target = match (&self.role, &self.database) {
            (Some(r), Some(d)) => {
                args.extend([r.clone(), d.clone()]);
                "ALTER ROLE %I IN DATABASE %I"
            }
            (Some(r), None) => {
                args.push(r.clone());
                "ALTER ROLE %I"
            }
            (None, Some(d)) => {
                args.push(d.clone());
                "ALTER DATABASE %I"
            }
            (None, None) => "ALTER ROLE ALL",
        };
        let action = match value {
            Some(v) => {
                args.push(v.to_owned());
                " SET default_transaction_read_only = %L"
            }
            None => " RESET default_transaction_read_only",
        };
        (format!("{target}{action}"), args)
    }

    /// How people would write it.
    fn describe(&self) -> String {
        let target = match (&self.role, &self.database) {
            (Some(r), Some(d)) => format!("ALTER ROLE {r} IN DATABASE {d}"),
            (Some(r), None) => format!("ALTER ROLE {r}"),
            (None, Some(d)) => format!("ALTER DATABASE {d}"),
            (None, None) => "ALTER ROLE ALL".to_owned(),
        };
        format!("{target} SET default_transaction_read_only = {}", self.value)
    }
}

/// PostgreSQL's boolean spellings (`parse_bool` in the server): `on`/`off`, prefixes
/// of `true`/`false`/`yes`/`no`, `1`/`0`, any case.
fn parse_bool(v: &str) -> Option<bool> {
    let v = v.trim().to_ascii_lowercase();
    let prefix_of = |word: &str| !v.is_empty() && word.starts_with(v.as_str());
    match v.as_str() {
        "on" | "1" => Some(true),
        "off" | "of" | "0" => Some(false),
        _ if prefix_of("true") || prefix_of("yes") => Some(true),
        _ if prefix_of("false") || prefix_of("no") => Some(false),
        _ => None,
    }
}

/// What the fence changes, as it was before: the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Prior {
    /// `default_transaction_read_only` in `postgresql.auto.conf` (`ALTER SYSTEM`);
    /// `None` when not set there.
    pub auto_conf: Option<String>,
    /// Every override of it in `pg_db_role_setting`.
    pub overrides: Vec<Override>,
    /// The standbys streaming from it.
    pub standbys: Vec<Value>,
    /// It was a standby: it refuses writes whatever the settings.
    #[serde(default)]
    pub in_recovery: bool,
}

impl Prior {
    /// Whether the server was fenced already (by `ALTER SYSTEM`) before this step.
    fn was_fenced(&self) -> bool {
        self.auto_conf.as_deref().and_then(parse_bool) == Some(true)
    }
}

fn read_err(e: SqlError) -> ActionError {
    e.into_action("unexpected answer", false)
}

/// The overrides of `default_transaction_read_only` in `pg_db_role_setting`.
async fn overrides(db: &Db) -> Result<Vec<Override>, ActionError> {
    let rows = db
        .rows(
            "SELECT r.rolname::text, d.datname::text, \
             substr(c.cfg, length('default_transaction_read_only=') + 1) \
             FROM pg_db_role_setting s \
             LEFT JOIN pg_roles r ON r.oid = s.setrole \
             LEFT JOIN pg_database d ON d.oid = s.setdatabase \
             CROSS JOIN LATERAL unnest(s.setconfig) AS c(cfg) \
             WHERE lower(c.cfg) LIKE 'default\\_transaction\\_read\\_only=%' \
             ORDER BY 1 NULLS FIRST, 2 NULLS FIRST",
            &[],
        )
        .await
        .map_err(|e| e.into_action("cannot read its role and database settings (pg_db_role_setting)", false))?;
    rows.iter()
        .map(|r| {
            Ok(Override {
                role: db.get(r, 0).map_err(read_err)?,
                database: db.get(r, 1).map_err(read_err)?,
                value: db.get(r, 2).map_err(read_err)?,
            })
        })
        .collect()
}

/// Runs `ALTER ROLE/DATABASE ...` for `o`, quoted by the server's `format()`.
async fn alter(db: &Db, o: &Override, value: Option<&str>, what: &str) -> Result<(), ActionError> {
    let (template, args) = o.alter(value);
    let row = db
        .one("SELECT format($1, VARIADIC $2::text[])", &[&template, &args])
        .await
        .map_err(|e| e.into_action("cannot quote a statement", false))?;
    let sql: String = db.get(&row, 0).map_err(read_err)?;
    db.batch(&sql)
        .await
        .map_err(|e| e.into_action(&format!("cannot {what} `{}`", o.describe()), true))
}

/// The `ALTER SYSTEM` value of `default_transaction_read_only`, from
/// `pg_file_settings` (the file as it is), or for a role that may not read that view
/// (superusers only) from `pg_settings` (the value in force, whose source file
/// `pg_read_all_settings` may see).
async fn auto_conf(db: &Db) -> Result<Option<String>, ActionError> {
    let from_file = db
        .one(
            "SELECT (SELECT setting FROM pg_file_settings WHERE name = 'default_transaction_read_only' \
             AND sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno DESC LIMIT 1)",
            &[],
        )
        .await;
    let row = match from_file {
        Ok(row) => row,
        Err(e) if e.code.as_ref() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => db
            .one(
                "SELECT (SELECT setting FROM pg_settings WHERE name = 'default_transaction_read_only' \
                 AND sourcefile LIKE '%postgresql.auto.conf')",
                &[],
            )
            .await
            .map_err(|e| e.into_action("cannot read its ALTER SYSTEM settings (pg_settings)", false))?,
        Err(e) => return Err(e.into_action("cannot read its ALTER SYSTEM settings (pg_file_settings)", false)),
    };
    db.get(&row, 0).map_err(read_err)
}

/// drover's own session administers the fence: it must not be read-only itself (a
/// primary fenced before, a setting of drover's role), or it could not change roles.
async fn admin_session(db: &Db) -> Result<(), ActionError> {
    db.batch("SET default_transaction_read_only = off")
        .await
        .map_err(|e| e.into_action("cannot make its own session read-write", false))
}

/// The prior state, read before the fence changes anything.
async fn read_prior(db: &Db) -> Result<Prior, ActionError> {
    let in_recovery = {
        let r = db
            .one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| e.into_action("cannot query it", false))?;
        db.get::<bool>(&r, 0).map_err(read_err)?
    };
    Ok(Prior {
        auto_conf: auto_conf(db).await?,
        overrides: overrides(db).await?,
        standbys: if in_recovery { Vec::new() } else { standbys(db).await? },
        in_recovery,
    })
}

/// Puts back what [`read_prior`] saw: the overrides the fence reset, the `ALTER
/// SYSTEM` value, and observes the result (writes accepted again unless the server
/// was fenced before).
async fn restore(db: &Db, target: &Target, cx: &StepContext, prior: &Prior) -> Result<(), ActionError> {
    let now = overrides(db).await?;
    for o in prior.overrides.iter().filter(|o| o.defeats_fence()) {
        if !now.contains(o) {
            alter(db, o, Some(&o.value), "restore").await?;
        }
    }
    match &prior.auto_conf {
        None => db
            .batch("ALTER SYSTEM RESET default_transaction_read_only")
            .await
            .map_err(|e| e.into_action("cannot reset default_transaction_read_only", true))?,
        Some(v) => {
            let row = db
                .one(
                    "SELECT format('ALTER SYSTEM SET default_transaction_read_only = %L', $1::text)",
                    &[v],
                )
                .await
                .map_err(|e| e.into_action("cannot quote a statement", false))?;
            let sql: String = db.get(&row, 0).map_err(read_err)?;
            db.batch(&sql)
                .await
                .map_err(|e| e.into_action("cannot restore default_transaction_read_only", true))?;
        }
    }
    db.batch("SELECT pg_reload_conf()")
        .await
        .map_err(|e| e.into_action("cannot reload its configuration", true))?;
    if !prior.was_fenced() && !prior.in_recovery {
        observe(target, cx, false).await?;
    }
    Ok(())
}

/// The standbys streaming from a primary: identity (application name, client
/// address) and lag.
async fn standbys(db: &Db) -> Result<Vec<Value>, ActionError> {
    let rows = db
        .rows(
            "SELECT application_name, coalesce(host(client_addr), 'local'), state, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8, \
             extract(epoch FROM replay_lag)::float8 \
             FROM pg_stat_replication ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| e.into_action("cannot list its standbys", false))?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "application_name": db.get::<Option<String>>(r, 0).map_err(read_err)?,
                "client_addr": db.get::<Option<String>>(r, 1).map_err(read_err)?,
                "state": db.get::<Option<String>>(r, 2).map_err(read_err)?,
                "lag_bytes": db.get::<Option<f64>>(r, 3).map_err(read_err)?,
                "replay_lag_s": db.get::<Option<f64>>(r, 4).map_err(read_err)?,
            }))
        })
        .collect()
}

/// Counts standbys by identity (a name and an address can repeat).
fn identities(standbys: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in standbys {
        let id = format!(
            "{} at {}",
            s["application_name"].as_str().unwrap_or("?"),
            s["client_addr"].as_str().unwrap_or("?")
        );
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

/// Opens new sessions until a write is refused (`want_refused`) or accepted; the
/// refusal message when refused.
async fn observe(target: &Target, cx: &StepContext, want_refused: bool) -> Result<Option<String>, ActionError> {
    let until = Instant::now() + cx.remaining().min(OBSERVE_FOR);
    loop {
        let db = target.connect(&cx.cancel, cx.deadline).await?;
        let probe = db
            .probe_write()
            .await
            .map_err(|e| e.into_action("the write probe failed", false))?;
        match (probe, want_refused) {
            (Err(refusal), true) => return Ok(Some(refusal)),
            (Ok(()), false) => return Ok(None),
            _ => {}
        }
        drop(db);
        if Instant::now() >= until {
            let name = &target.name;
            return Err(ActionError::Retryable(if want_refused {
                format!(
                    "`{name}` still accepts writes in new sessions {} after default_transaction_read_only was set \
                     (is it set on the server's command line?): the fence is not observed",
                    humantime::format_duration(OBSERVE_FOR)
                )
            } else {
                format!(
                    "`{name}` still refuses writes after default_transaction_read_only was restored (is it set in \
                     postgresql.conf, or is the server a standby?)"
                )
            }));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(25)) => {}
            () = cx.cancel.cancelled() => return Err(ActionError::Cancelled),
        }
    }
}

/// The heartbeat table of this run's heartbeat step on `database`, from the journal.
fn heartbeat_table(cx: &StepContext, database: &str) -> Option<String> {
    cx.facts
        .completed("postgres.heartbeat")
        .into_iter()
        .rev()
        .find(|(_, o)| o.data["database"].as_str() == Some(database))
        .and_then(|(_, o)| o.data["table"].as_str().map(str::to_owned))
        .filter(|t| is_identifier(t))
}

/// The step's output when the primary is unreachable and the site declared lost.
fn assumed_lost(cx: &StepContext, name: &str, error: &ActionError, kind: Unreachable) -> StepOutput {
    let now = now_unix();
    // The heartbeat writer of this process, if it saw the primary go away: its first
    // failed write after its last acknowledged one. A process that did not see both
    // (a resumed one, when the primary went away while drover was down) has nothing
    // better than now, which overstates the loss rather than understating it.
    let health = crate::heartbeat::health(&cx.run_id, name);
    let (instant, source) = match health {
        Some(crate::heartbeat::Health {
            last_ok: Some(_),
            failing_since: Some(f),
        }) => (f, "the first failed heartbeat write"),
        _ => (now, "the moment the fence found it unreachable"),
    };
    StepOutput::new(format!(
        "`{name}` is unreachable ({}) and the runbook declares its site lost (assume_lost): not fenced, recorded; \
         fence instant {} ({source})",
        kind.as_str(),
        rfc3339(instant)
    ))
    .with_data(json!({
        "database": name,
        "assumed_lost": true,
        "unreachable_kind": kind.as_str(),
        "fenced_at": rfc3339(instant),
        "fenced_at_unix": instant,
        "fence_instant_source": source,
        "last_heartbeat_ok_at": health.and_then(|h| h.last_ok).map(rfc3339),
        "declared_lost_at": rfc3339(now),
        "unreachable": error.to_string(),
    }))
}

/// What the fence did, for its output.
struct Done {
    neutralised: Vec<Override>,
    ended: usize,
    refusal: String,
    /// drover's wall clock once no write could commit any more: every session that
    /// began before the fence had exited and no prepared transaction was left.
    writes_stopped_by: f64,
}

/// The server's `pg_conf_load_time()` in this session, in microseconds (the server's
/// clock).
async fn conf_loaded_us(db: &Db) -> Result<i64, ActionError> {
    let row = db
        .one("SELECT (extract(epoch FROM pg_conf_load_time()) * 1000000)::int8", &[])
        .await
        .map_err(|e| e.into_action("cannot read when it loaded its configuration", true))?;
    db.get::<i64>(&row, 0).map_err(read_err)
}

/// How long the server may take to re-read its configuration after `pg_reload_conf()`.
const RELOAD_WITHIN: Duration = Duration::from_secs(5);

/// Waits until this session has re-read the configuration since `before` (the
/// postmaster re-reads it first, then signals every session, this one included), so
/// that no session can start after the listing in step 3 with the old default.
async fn await_reload(db: &Db, cx: &StepContext, name: &str, before: i64) -> Result<i64, ActionError> {
    let until = Instant::now() + cx.remaining().min(RELOAD_WITHIN);
    loop {
        let now = conf_loaded_us(db).await?;
        if now > before {
            return Ok(now);
        }
        if Instant::now() >= until {
            return Err(ActionError::Retryable(format!(
                "`{name}` did not re-read its configuration within {} of pg_reload_conf()",
                humantime::format_duration(RELOAD_WITHIN)
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(2)) => {}
            () = cx.cancel.cancelled() => return Err(ActionError::Cancelled),
        }
    }
}

/// The instant an earlier attempt of this step saw writes stop (journaled as its
/// progress before drover died, or before that attempt failed), when the fence it
/// applied has held since: the same server, `ALTER SYSTEM` still read-only and no
/// override (`still_fenced`), and no configuration reload nor restart since that
/// attempt's own reload (`pg_conf_load_time()` of a new session is the postmaster's,
/// which re-read it before that attempt's session did). Else `None`: this attempt takes
/// its own, later instant, which overstates the loss rather than understating it.
async fn earlier_instant(
    db: &Db,
    cx: &StepContext,
    still_fenced: bool,
    system_identifier: Option<&str>,
) -> Option<f64> {
    let p = cx.progress.as_ref()?;
    if !still_fenced || p["system_identifier"].as_str() != system_identifier {
        return None;
    }
    let t = p["writes_stopped_by_unix"].as_f64()?;
    let loaded = p["conf_loaded_us"].as_i64()?;
    let now = conf_loaded_us(db).await.ok()?;
    (now <= loaded).then_some(t)
}

/// Steps 1-4 of the fence (see the module documentation) on a connected primary.
async fn apply(
    db: &Db,
    target: &Target,
    cx: &StepContext,
    in_recovery: bool,
    system_identifier: Option<&str>,
) -> Result<Done, ActionError> {
    let name = target.name.as_str();
    // 1. Overrides that would start read-write transactions for some role or database
    // (a standby starts none, and cannot change them).
    let mut neutralised = Vec::new();
    let found = if in_recovery { Vec::new() } else { overrides(db).await? };
    for o in found.into_iter().filter(Override::defeats_fence) {
        alter(db, &o, None, "reset the override").await?;
        neutralised.push(o);
    }
    // 2. Read-only for every new transaction.
    let loaded_before = conf_loaded_us(db).await?;
    db.batch("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .map_err(|e| e.into_action("cannot set default_transaction_read_only", true))?;
    db.batch("SELECT pg_reload_conf()")
        .await
        .map_err(|e| e.into_action("cannot reload its configuration", true))?;
    let loaded = await_reload(db, cx, name, loaded_before).await?;

    // 3. End the other client sessions: signal them all, then wait until they are gone.
    let rows = db
        .rows(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.into_action("cannot list its sessions", true))?;
    let (mut signalled, mut not_ended) = (Vec::new(), Vec::new());
    for r in &rows {
        let pid: i32 = db.get(r, 0).map_err(read_err)?;
        match db.one("SELECT pg_terminate_backend($1)", &[&pid]).await {
            Ok(row) if db.get::<bool>(&row, 0).unwrap_or(false) => signalled.push(pid),
            Ok(_) => {} // gone already
            Err(e) if e.cancelled => return Err(ActionError::Cancelled),
            Err(e) if e.code.is_some() => not_ended.push(format!("{pid}: {}", e.message)),
            Err(e) => return Err(e.into_action("cannot end its sessions", true)),
        }
    }
    let until = Instant::now() + cx.remaining().min(SESSIONS_EXIT_WITHIN);
    let mut left = signalled.clone();
    while !left.is_empty() {
        let rows = db
            .rows("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)", &[&left])
            .await
            .map_err(|e| e.into_action("cannot list its sessions", true))?;
        left = rows.iter().filter_map(|r| db.get::<i32>(r, 0).ok()).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= until {
            not_ended.extend(left.iter().map(|pid| {
                format!(
                    "{pid}: did not exit within {}",
                    humantime::format_duration(SESSIONS_EXIT_WITHIN)
                )
            }));
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            () = cx.cancel.cancelled() => return Err(ActionError::Cancelled),
        }
    }
    if !not_ended.is_empty() {
        tracing::warn!(database = %name, sessions = ?not_ended, "sessions of the primary being fenced could not be ended");
        return Err(ActionError::Retryable(format!(
            "`{name}`: {} session(s) could not be ended ({}); a transaction of theirs that began read-write \
             could still commit, so the fence is not complete",
            not_ended.len(),
            not_ended.join("; ")
        )));
    }
    // Prepared transactions can be committed in a read-only transaction.
    let rows = db
        .rows("SELECT gid FROM pg_prepared_xacts ORDER BY prepared", &[])
        .await
        .map_err(|e| e.into_action("cannot list its prepared transactions", true))?;
    if !rows.is_empty() {
        let gids: Vec<String> = rows.iter().filter_map(|r| db.get::<String>(r, 0).ok()).collect();
        return Err(ActionError::Retryable(format!(
            "`{name}` has {} prepared transaction(s) ({}) that COMMIT PREPARED could still commit after the fence; \
             have their transaction manager commit or roll them back, then fence again",
            gids.len(),
            gids.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(", ")
        )));
    }
    // No write can commit from here on: journaled, so that a re-run after a crash keeps
    // this instant while the fence holds (see `earlier_instant`).
    let writes_stopped_by = now_unix();
    cx.save_progress(json!({
        "writes_stopped_by_unix": writes_stopped_by,
        "conf_loaded_us": loaded,
        "system_identifier": system_identifier,
    }))
    .await?;

    // 4. Observe: a new session's write is refused, and nothing overrides the fence.
    let refusal = observe(target, cx, true).await?.unwrap_or_default();
    let left: Vec<Override> = overrides(db)
        .await?
        .into_iter()
        .filter(Override::defeats_fence)
        .collect();
    if !left.is_empty() && !in_recovery {
        return Err(ActionError::Retryable(format!(
            "`{name}`: settings that start read-write transactions appeared during the fence: {}",
            left.iter().map(Override::describe).collect::<Vec<_>>().join("; ")
        )));
    }
    Ok(Done {
        neutralised,
        ended: signalled.len(),
        refusal,
        writes_stopped_by,
    })
}

#[async_trait]
impl Action for Fence {
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError> {
        let p: DatabaseParams = cx.params()?;
        Ok(Preview {
            summary: format!(
                "fence `{}`: reset role/database overrides, default_transaction_read_only = on, end client sessions, \
                 observe a refused write",
                p.database.value
            ),
        })
    }

    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError> {
        let p: DatabaseParams = cx.params()?;
        let name = p.database.value.as_str();
        let target = Target::resolve(&cx.config, name)?;
        let db = match target.try_connect(&cx.cancel, cx.deadline).await {
            Ok(db) => db,
            Err(f) if f.error == ActionError::Cancelled => return Err(ActionError::Cancelled),
            Err(f) => {
                return match (cx.assume_lost, f.unreachable) {
                    (true, Some(kind)) => Ok(assumed_lost(cx, name, &f.error, kind)),
                    (true, None) => {
                        let msg = format!(
                            "{}; the fence failed: with assume_lost only an unreachable primary (connection refused, \
                             timeout, no route to host, network unreachable) counts as lost, and this is not one",
                            f.error
                        );
                        Err(match f.error {
                            ActionError::Permanent(_) => ActionError::Permanent(msg),
                            _ => ActionError::Retryable(msg),
                        })
                    }
                    (false, _) => {
                        let msg = format!(
                            "{}; an unreachable primary cannot be observed fenced, so promotion stays blocked \
                             (if its site is lost, declare it with `assume_lost: true` in the runbook)",
                            f.error
                        );
                        Err(match f.error {
                            ActionError::Permanent(_) => ActionError::Permanent(msg),
                            _ => ActionError::Retryable(msg),
                        })
                    }
                };
            }
        };
        let row = db
            .one(
                "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())::text",
                &[],
            )
            .await
            .map_err(|e| e.into_action("cannot query it", false))?;
        let in_recovery: bool = db.get(&row, 0).map_err(read_err)?;
        admin_session(&db).await?;
        let system_identifier: Option<String> = db.get(&row, 1).map_err(read_err)?;
        let started = Instant::now();
        let started_at = now_unix();

        // The checkpoint: what the fence changes, as it is now (or as an earlier
        // attempt of this step saw it, which wins).
        let prior = read_prior(&db).await?;
        let still_fenced = prior.was_fenced() && !prior.overrides.iter().any(Override::defeats_fence);
        let earlier = earlier_instant(&db, cx, still_fenced, system_identifier.as_deref()).await;
        let saved = cx
            .save_checkpoint(serde_json::to_value(&prior).unwrap_or(Value::Null))
            .await?;
        let prior: Prior = serde_json::from_value(saved).unwrap_or(prior);

        let done = match apply(&db, &target, cx, in_recovery, system_identifier.as_deref()).await {
            Ok(d) => d,
            Err(e @ (ActionError::Cancelled | ActionError::OutcomeUnknown(_))) => return Err(e),
            Err(e) => {
                // Do not leave a half fence behind: the engine does not compensate a
                // failed step.
                return Err(match restore(&db, &target, cx, &prior).await {
                    Ok(()) => {
                        tracing::info!(database = %name, "the incomplete fence was undone");
                        with_note(e, "; the incomplete fence was undone (the checkpoint restored)")
                    }
                    Err(u) => ActionError::OutcomeUnknown(format!(
                        "{e}; undoing the incomplete fence failed too ({u}): the compensation will retry it"
                    )),
                });
            }
        };
        let observed_at = now_unix();
        let took_s = started.elapsed().as_secs_f64();
        // The fence instant: when writes stopped (not when the refusal was seen, later).
        let (fenced_at, source) = match earlier {
            Some(t) => (
                t,
                "an earlier attempt: every session ended and no prepared transaction left (the fence held since)",
            ),
            None => (
                done.writes_stopped_by,
                "every session ended and no prepared transaction left",
            ),
        };

        // What the primary had written at the fence, and who streamed from it.
        let row = db
            .one(
                "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text",
                &[],
            )
            .await
            .map_err(|e| e.into_action("cannot read its WAL position", false))?;
        let fence_lsn: Option<String> = db.get(&row, 0).map_err(read_err)?;
        let standbys = if in_recovery { Vec::new() } else { standbys(&db).await? };
        // The newest heartbeat row of this run it holds: its last acknowledged one.
        let last_heartbeat = match heartbeat_table(cx, name) {
            Some(table) => db
                .one(
                    &format!("SELECT extract(epoch FROM max(at))::float8 FROM {table} WHERE run_id = $1"),
                    &[&cx.run_id],
                )
                .await
                .ok()
                .and_then(|r| db.get::<Option<f64>>(&r, 0).ok().flatten()),
            None => None,
        };

        let neutralised: Vec<String> = done.neutralised.iter().map(Override::describe).collect();
        let summary = format!(
            "`{name}` fenced at {} (in {took_s:.2}s): a write in a new session was refused ({}); {} session(s) \
             ended{}{}",
            rfc3339(fenced_at),
            done.refusal,
            done.ended,
            if neutralised.is_empty() {
                String::new()
            } else {
                format!("; overrides reset: {}", neutralised.join("; "))
            },
            if in_recovery {
                "; note: it is a standby (in recovery), which no promotion accepts as a fence"
            } else {
                ""
            }
        );
        Ok(StepOutput::new(summary).with_data(json!({
            "database": name,
            "assumed_lost": false,
            "system_identifier": system_identifier,
            "in_recovery": in_recovery,
            "fenced_at": rfc3339(fenced_at),
            "fenced_at_unix": fenced_at,
            "fence_instant_source": source,
            "refusal_observed_at": rfc3339(observed_at),
            "fence_started_at": rfc3339(started_at),
            "fence_took_s": took_s,
            "fence_lsn": fence_lsn,
            "observed_refusal": done.refusal,
            "overrides_reset": done.neutralised,
            "sessions_ended": done.ended,
            "standbys": standbys,
            "last_heartbeat_at": last_heartbeat.map(rfc3339),
            "last_heartbeat_at_unix": last_heartbeat,
        })))
    }

    async fn compensate(&self, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError> {
        let p: DatabaseParams = cx.params()?;
        let name = p.database.value.as_str();
        if done.is_some_and(|d| d.data["assumed_lost"] == json!(true)) {
            tracing::info!(database = %name, "the fence was assumed (site lost): nothing to undo");
            return Ok(());
        }
        let prior: Option<Prior> = cx
            .checkpoint
            .as_ref()
            .and_then(|c| serde_json::from_value(c.clone()).ok());
        if done.is_none() && prior.is_none() {
            // No checkpoint: the fence never got as far as changing anything.
            tracing::info!(database = %name, "the fence changed nothing (no checkpoint): nothing to undo");
            return Ok(());
        }
        let target = Target::resolve(&cx.config, name)?;
        let db = target.connect(&cx.cancel, cx.deadline).await?;
        admin_session(&db).await?;
        // Unfencing while a standby of this primary may have been promoted would leave
        // two writable primaries.
        let at_fence = done
            .and_then(|d| d.data["standbys"].as_array().cloned())
            .or_else(|| prior.as_ref().map(|p| p.standbys.clone()));
        if let Some(at_fence) = at_fence {
            let before = identities(&at_fence);
            let now = identities(&standbys(&db).await?);
            let gone: Vec<&String> = before
                .iter()
                .filter(|(id, n)| now.get(*id).copied().unwrap_or(0) < **n)
                .map(|(id, _)| id)
                .collect();
            if !gone.is_empty() {
                return Err(ActionError::Permanent(format!(
                    "refusing to unfence `{name}`: {} streamed from it at the fence and no longer does; it may have \
                     been promoted, and unfencing would leave two writable primaries. Check, then unfence by hand \
                     (ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf(); and restore the \
                     role and database settings the fence reset, listed in its output)",
                    gone.iter()
                        .map(|s| format!("standby {s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        // A fence journaled before checkpoints existed: reset, as it did then.
        let prior = prior.unwrap_or_default();
        restore(&db, &target, cx, &prior).await?;
        tracing::info!(database = %name, "unfenced: the settings before the fence are restored");
        Ok(())
    }
}

/// `e` with `note` appended to its message.
fn with_note(e: ActionError, note: &str) -> ActionError {
    e.map_message(|m| m + note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_identities_count_repeats() {
        let s = vec![
            json!({"application_name": "walreceiver", "client_addr": "127.0.0.1"}),
            json!({"application_name": "walreceiver", "client_addr": "127.0.0.1"}),
            json!({"application_name": "west", "client_addr": "10.0.0.2"}),
        ];
        let ids = identities(&s);
        assert_eq!(ids["walreceiver at 127.0.0.1"], 2);
        assert_eq!(ids["west at 10.0.0.2"], 1);
    }

    #[test]
    fn booleans_parse_like_the_server() {
        for t in ["on", "ON", "true", "t", "tr", "yes", "y", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["off", "of", "false", "f", "no", "n", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        // `o` is ambiguous for the server too.
        assert_eq!(parse_bool("o"), None);
        assert_eq!(parse_bool(""), None);
    }

    #[test]
    fn overrides_become_the_right_statements() {
        let o = |role: Option<&str>, db: Option<&str>, v: &str| Override {
            role: role.map(str::to_owned),
            database: db.map(str::to_owned),
            value: v.into(),
        };
        assert!(o(Some("app"), None, "off").defeats_fence());
        assert!(!o(Some("app"), None, "on").defeats_fence());
        assert_eq!(
            o(Some("app"), Some("shop"), "off").alter(None),
            (
                "ALTER ROLE %I IN DATABASE %I RESET default_transaction_read_only".into(),
                vec!["app".into(), "shop".into()]
            )
        );
        assert_eq!(
            o(None, Some("shop"), "off").alter(Some("off")),
            (
                "ALTER DATABASE %I SET default_transaction_read_only = %L".into(),
                vec!["shop".into(), "off".into()]
            )
        );
        assert_eq!(
            o(None, None, "0").alter(None).0,
            "ALTER ROLE ALL RESET default_transaction_read_only"
        );
        assert_eq!(
            o(Some("app"), None, "off").describe(),
            "ALTER ROLE app SET default_transaction_read_only = off"
        );
    }

    #[test]
    fn a_prior_state_says_whether_it_was_fenced() {
        assert!(!Prior::default().was_fenced());
        let fenced = Prior {
            auto_conf: Some("on".into()),
            ..Prior::default()
        };
        assert!(fenced.was_fenced());
        let back: Prior = serde_json::from_value(serde_json::to_value(&fenced).unwrap()).unwrap();
        assert_eq!(back, fenced);
    }
}
