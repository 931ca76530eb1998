//! Connecting to a configured database, running SQL, and saying what went wrong
//! without ever saying the secret.
//!
//! The connection URL of a database is a secret (it usually holds a password): it is
//! resolved here, parsed, and never put in an error, a log line or an output. Every
//! message goes through a [`Redactor`] that blanks the URL and the password in case a
//! lower layer quoted them. Databases are named by their config name only.
//!
//! TLS follows the URL's `sslmode`: `disable` (or `none`) connects in plain text;
//! `allow`/`prefer` (the default) use TLS when the server offers it; `require`,
//! `verify-ca` and `verify-full` insist on it. Whenever TLS is used the server
//! certificate is verified (rustls with ring) against the system's roots, or against
//! `sslrootcert=PATH` when the URL names one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use drover_model::Config;
use drover_plugin_api::{ActionError, CancellationToken};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

/// How long a connection attempt may take unless the URL sets `connect_timeout`.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Blanks secrets out of messages.
#[derive(Clone, Default)]
pub(crate) struct Redactor(Vec<String>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor([redacted])")
    }
}

impl Redactor {
    fn add(&mut self, secret: &str) {
        // Very short strings would blank ordinary words; a password that short is
        // not much of a secret anyway.
        if secret.len() >= 4 && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_owned());
            // Longest first, so that a secret containing another is blanked whole.
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub(crate) fn clean(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// How the connection is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tls {
    /// `sslmode=disable`: plain text, no TLS code involved.
    Off,
    /// TLS when offered or required (tokio-postgres' `sslmode` decides which),
    /// verified against these roots (`None`: the system's).
    Verified { root_cert: Option<PathBuf> },
}

/// The TLS options drover handles itself, taken out of the URL before
/// tokio-postgres parses it (it knows neither `sslrootcert` nor the `verify-*` modes).
#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsOptions {
    /// What tokio-postgres gets: disable, prefer or require.
    sslmode: &'static str,
    /// The mode as written (libpq knows all six), for the client tools drover runs.
    written: Option<String>,
    root_cert: Option<PathBuf>,
}

fn map_sslmode(v: &str) -> Result<&'static str, String> {
    Ok(match v {
        "disable" | "none" => "disable",
        "allow" | "prefer" => "prefer",
        "require" | "verify-ca" | "verify-full" => "require",
        other => {
            return Err(format!(
                "unknown sslmode `{other}` (disable, allow, prefer, require, verify-ca, verify-full)"
            ));
        }
    })
}

/// Rewrites a URL (`postgres://...?...`) or a keyword string (`host=... sslmode=...`)
/// so that tokio-postgres can parse it, returning the TLS options it carried.
fn split_tls_options(url: &str) -> Result<(String, TlsOptions), String> {
    let mut opts = TlsOptions {
        sslmode: "prefer",
        written: None,
        root_cert: None,
    };
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_url {
        // The query starts at the first `?` after the user info.
        let after_auth = url.rfind('@').map_or(0, |i| i + 1);
        let Some(q) = url[after_auth..].find('?').map(|i| i + after_auth) else {
            return Ok((url.to_owned(), opts));
        };
        let mut kept = Vec::new();
        for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => {
                    let v = percent_decode(v);
                    opts.sslmode = map_sslmode(&v)?;
                    opts.written = Some(v);
                }
                "sslrootcert" => opts.root_cert = Some(PathBuf::from(percent_decode(v))),
                _ => kept.push(pair),
            }
        }
        kept.push(if opts.sslmode == "disable" {
            "sslmode=disable"
        } else if opts.sslmode == "require" {
            "sslmode=require"
        } else {
            "sslmode=prefer"
        });
        Ok((format!("{}?{}", &url[..q], kept.join("&")), opts))
    } else {
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some(("sslmode", v)) => {
                    let v = v.trim_matches('\'');
                    opts.sslmode = map_sslmode(v)?;
                    opts.written = Some(v.to_owned());
                }
                Some(("sslrootcert", v)) => opts.root_cert = Some(PathBuf::from(v.trim_matches('\''))),
                _ => kept.push(word.to_owned()),
            }
        }
        kept.push(format!("sslmode={}", opts.sslmode));
        Ok((kept.join(" "), opts))
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A configured database, ready to connect to. Holds the parsed secret: no `Debug`
/// that shows it, no `Display`.
#[derive(Clone)]
pub(crate) struct Target {
    pub name: String,
    config: tokio_postgres::Config,
    tls: Tls,
    /// `sslmode` as written in the URL, if it named one.
    sslmode: Option<String>,
    redact: Redactor,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Looks `name` up in the config and resolves its URL.
    pub(crate) fn resolve(config: &Config, name: &str) -> Result<Target, ActionError> {
        let db = config
            .databases
            .iter()
            .find(|d| d.name.value == name)
            .ok_or_else(|| ActionError::Permanent(format!("unknown database `{name}`")))?;
        let secret = db.url.resolve().map_err(|e| {
            ActionError::Permanent(format!("database `{name}`: cannot resolve its URL {}: {e}", db.url))
        })?;
        Self::from_url(name, secret.expose())
    }

    pub(crate) fn from_url(name: &str, url: &str) -> Result<Target, ActionError> {
        let mut redact = Redactor::default();
        redact.add(url);
        // The password as written in the URL (maybe percent-encoded) and decoded.
        if let Some(rest) = url.split_once("://").map(|(_, r)| r)
            && let Some((userinfo, _)) = rest.rsplit_once('@')
            && let Some((_, pw)) = userinfo.split_once(':')
        {
            redact.add(pw);
            redact.add(&percent_decode(pw));
        }
        let invalid = |redact: &Redactor, e: String| {
            ActionError::Permanent(redact.clean(&format!("database `{name}`: invalid connection URL: {e}")))
        };
        let (rewritten, opts) = split_tls_options(url).map_err(|e| invalid(&redact, e))?;
        redact.add(&rewritten);
        let mut config: tokio_postgres::Config = rewritten.parse().map_err(|e| invalid(&redact, error_text(&e)))?;
        if let Some(pw) = config.get_password() {
            redact.add(&String::from_utf8_lossy(pw));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("drover");
        }
        let tls = if opts.sslmode == "disable" {
            Tls::Off
        } else {
            Tls::Verified {
                root_cert: opts.root_cert,
            }
        };
        Ok(Target {
            name: name.to_owned(),
            config,
            tls,
            sslmode: opts.written,
            redact,
        })
    }

    /// The same server and credentials, another database on it.
    pub(crate) fn on_database(&self, dbname: &str) -> Target {
        let mut t = self.clone();
        t.config.dbname(dbname);
        t
    }

    /// The libpq environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGSSLMODE`,
    /// ...) that points a PostgreSQL client tool at database `dbname` of this server.
    /// The password goes through the environment, never the command line (which any
    /// local user can read in `ps`).
    pub(crate) fn libpq_env(&self, dbname: &str) -> Vec<(&'static str, String)> {
        use tokio_postgres::config::Host;
        let c = &self.config;
        let mut env = Vec::new();
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        if !hosts.is_empty() {
            env.push(("PGHOST", hosts.join(",")));
        }
        let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
        if !ports.is_empty() {
            env.push(("PGPORT", ports.join(",")));
        }
        if let Some(u) = c.get_user() {
            env.push(("PGUSER", u.to_owned()));
        }
        if let Some(pw) = c.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(pw).into_owned()));
        }
        env.push(("PGDATABASE", dbname.to_owned()));
        let mode = match (&self.tls, &self.sslmode) {
            (Tls::Off, _) => "disable".to_owned(),
            (_, Some(m)) => m.clone(),
            (_, None) => "prefer".to_owned(),
        };
        env.push(("PGSSLMODE", mode));
        if let Tls::Verified { root_cert: Some(p) } = &self.tls {
            env.push(("PGSSLROOTCERT", p.display().to_string()));
        }
        let timeout = c.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
        env.push(("PGCONNECT_TIMEOUT", timeout.as_secs().max(2).to_string()));
        env.push(("PGAPPNAME", "drover-restore-test".to_owned()));
        env
    }

    /// Blanks the URL and the password out of a message.
    pub(crate) fn clean(&self, text: &str) -> String {
        self.redact.clean(text)
    }

    /// Connects, within the connect timeout (and `deadline`), or fails with a
    /// message naming the database by its config name.
    pub(crate) async fn connect(&self, cancel: &CancellationToken, deadline: Instant) -> Result<Db, ActionError> {
        self.try_connect(cancel, deadline).await.map_err(|f| f.error)
    }

    /// Like [`Self::connect`], and says whether the failure means the server is
    /// unreachable (see [`Unreachable`]): what `assume_lost` may treat as a lost site.
    pub(crate) async fn try_connect(
        &self,
        cancel: &CancellationToken,
        deadline: Instant,
    ) -> Result<Db, ConnectFailure> {
        let limit = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT)
            .min(deadline.saturating_duration_since(Instant::now()));
        let name = self.name.clone();
        let attempt = async {
            match &self.tls {
                Tls::Off => {
                    let (client, conn) = self.config.connect(NoTls).await.map_err(Failure::Pg)?;
                    tokio::spawn(drive(conn, name.clone(), self.redact.clone()));
                    Ok(client)
                }
                Tls::Verified { root_cert } => {
                    let tls = tls_config(root_cert.as_deref()).map_err(Failure::Tls)?;
                    let (client, conn) = self
                        .config
                        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                        .await
                        .map_err(Failure::Pg)?;
                    tokio::spawn(drive(conn, name.clone(), self.redact.clone()));
                    Ok(client)
                }
            }
        };
        let result = tokio::select! {
            r = tokio::time::timeout(limit, attempt) => r,
            () = cancel.cancelled() => return Err(ConnectFailure { error: ActionError::Cancelled, unreachable: None }),
        };
        let fail = |detail: String| {
            self.redact
                .clean(&format!("cannot connect to database `{name}`: {detail}"))
        };
        match result {
            Ok(Ok(client)) => Ok(Db {
                name: self.name.clone(),
                client,
                redact: self.redact.clone(),
                cancel: cancel.clone(),
            }),
            Ok(Err(Failure::Tls(e))) => Err(ConnectFailure {
                error: ActionError::Permanent(fail(e)),
                unreachable: None,
            }),
            Ok(Err(Failure::Pg(e))) => {
                let permanent = e
                    .code()
                    .is_some_and(|c| c.code().starts_with("28") || c == &SqlState::INVALID_CATALOG_NAME);
                let unreachable = unreachable(&e);
                let msg = fail(error_text(&e));
                Err(ConnectFailure {
                    error: if permanent {
                        ActionError::Permanent(msg)
                    } else {
                        ActionError::Retryable(msg)
                    },
                    unreachable,
                })
            }
            Err(_) => Err(ConnectFailure {
                error: ActionError::Retryable(fail(format!(
                    "no answer within {} (connect timeout)",
                    humantime::format_duration(limit)
                ))),
                unreachable: Some(Unreachable::Timeout),
            }),
        }
    }
}

/// Why a server could not be reached at all: the only failures that `assume_lost` may
/// take for a lost site. Everything else (a wrong password, a TLS failure, any answer
/// from the server, an error response included, a name that does not resolve) means
/// the server, or something in front of it, is there or the configuration is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// Nothing listens on the port (`ECONNREFUSED`).
    Refused,
    /// No answer within the connect timeout, at the TCP level or at the start of the
    /// protocol (a server that accepts the connection and never speaks).
    Timeout,
    /// `EHOSTUNREACH`.
    NoRoute,
    /// `ENETUNREACH`.
    NoNetwork,
}

impl Unreachable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Unreachable::Refused => "connection refused",
            Unreachable::Timeout => "timeout",
            Unreachable::NoRoute => "no route to host",
            Unreachable::NoNetwork => "network unreachable",
        }
    }

    fn of_io(e: &std::io::Error) -> Option<Unreachable> {
        use std::io::ErrorKind;
        // Linux errno values, in case the kind is not mapped.
        const ECONNREFUSED: i32 = 111;
        const ETIMEDOUT: i32 = 110;
        const EHOSTUNREACH: i32 = 113;
        const ENETUNREACH: i32 = 101;
        match (e.kind(), e.raw_os_error()) {
            (ErrorKind::ConnectionRefused, _) | (_, Some(ECONNREFUSED)) => Some(Unreachable::Refused),
            (ErrorKind::TimedOut, _) | (_, Some(ETIMEDOUT)) => Some(Unreachable::Timeout),
            (ErrorKind::HostUnreachable, _) | (_, Some(EHOSTUNREACH)) => Some(Unreachable::NoRoute),
            (ErrorKind::NetworkUnreachable, _) | (_, Some(ENETUNREACH)) => Some(Unreachable::NoNetwork),
            _ => None,
        }
    }
}

/// The unreachability a client error shows, if any: never for an answer of the server.
fn unreachable(e: &tokio_postgres::Error) -> Option<Unreachable> {
    if e.as_db_error().is_some() {
        return None;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Unreachable::of_io(io);
        }
        cur = c.source();
    }
    None
}

/// A failed connection attempt: the error, and whether it means "unreachable".
#[derive(Debug, Clone)]
pub(crate) struct ConnectFailure {
    pub error: ActionError,
    pub unreachable: Option<Unreachable>,
}

enum Failure {
    Pg(tokio_postgres::Error),
    Tls(String),
}

/// Runs the connection's I/O until the client is dropped.
async fn drive<S, T>(conn: tokio_postgres::Connection<S, T>, name: String, redact: Redactor)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = conn.await {
        tracing::debug!(database = %name, error = %redact.clean(&error_text(&e)), "connection ended");
    }
}

/// The rustls client configuration: ring, verified against `root_cert` or the
/// system's roots (cached).
fn tls_config(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    fn build(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
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
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
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
    match root_cert {
        Some(p) => build(Some(p)),
        None => {
            static SYSTEM: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
            SYSTEM.get_or_init(|| build(None)).clone()
        }
    }
}

/// The text of a tokio-postgres error with its causes (the server's message for
/// database errors).
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A failed statement, already redacted.
#[derive(Debug, Clone)]
pub(crate) struct SqlError {
    pub database: String,
    pub code: Option<SqlState>,
    pub message: String,
    /// The connection broke or the call was abandoned: the statement may or may not
    /// have taken effect.
    pub lost: bool,
    pub cancelled: bool,
}

impl SqlError {
    /// The server refused because the transaction is read-only (a fenced primary or
    /// a standby).
    pub(crate) fn read_only(&self) -> bool {
        self.code.as_ref() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
    }

    pub(crate) fn undefined_table(&self) -> bool {
        self.code.as_ref() == Some(&SqlState::UNDEFINED_TABLE)
    }

    /// As an action error: `what` says what was being done; `change` whether the
    /// statement has side effects (then a lost connection is "outcome unknown").
    pub(crate) fn into_action(self, what: &str, change: bool) -> ActionError {
        if self.cancelled {
            return ActionError::Cancelled;
        }
        let msg = format!("database `{}`: {what}: {}", self.database, self.message);
        let permanent = self.code.as_ref().is_some_and(|c| {
            let c = c.code();
            c.starts_with("28") || c.starts_with("42") || c == "3D000"
        });
        if permanent {
            ActionError::Permanent(msg)
        } else if self.lost && change {
            ActionError::OutcomeUnknown(msg)
        } else {
            ActionError::Retryable(msg)
        }
    }
}

/// One open session.
pub(crate) struct Db {
    pub name: String,
    client: Client,
    redact: Redactor,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Db {
    fn fail(&self, e: &tokio_postgres::Error) -> SqlError {
        SqlError {
            database: self.name.clone(),
            code: e.code().cloned(),
            message: self.redact.clean(&error_text(e)),
            lost: e.as_db_error().is_none(),
            cancelled: false,
        }
    }

    fn cancelled(&self) -> SqlError {
        SqlError {
            database: self.name.clone(),
            code: None,
            message: "cancelled".into(),
            lost: true,
            cancelled: true,
        }
    }

    /// Runs `fut` unless the step is cancelled first.
    async fn guarded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, SqlError> {
        tokio::select! {
            r = fut => r.map_err(|e| self.fail(&e)),
            () = self.cancel.cancelled() => Err(self.cancelled()),
        }
    }

    /// Runs statements without parameters (simple protocol; may be several).
    pub(crate) async fn batch(&self, sql: &str) -> Result<(), SqlError> {
        self.guarded(self.client.batch_execute(sql)).await
    }

    pub(crate) async fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, SqlError> {
        self.guarded(self.client.query(sql, params)).await
    }

    pub(crate) async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, SqlError> {
        self.guarded(self.client.query_one(sql, params)).await
    }

    pub(crate) async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, SqlError> {
        self.guarded(self.client.execute(sql, params)).await
    }

    /// Runs `sql` (simple protocol: any statement, values as text) and returns the first
    /// column of the first row it returns, and how many rows it returned.
    pub(crate) async fn first_value(&self, sql: &str) -> Result<(Option<Option<String>>, u64), SqlError> {
        use tokio_postgres::SimpleQueryMessage;
        let msgs = self.guarded(self.client.simple_query(sql)).await?;
        let mut first = None;
        let mut rows = 0;
        for m in msgs {
            if let SimpleQueryMessage::Row(r) = m {
                if first.is_none() {
                    first = Some(r.try_get(0).ok().flatten().map(str::to_owned));
                }
                rows += 1;
            }
        }
        Ok((first, rows))
    }

    /// Reads column `i` of `row`.
    pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(&self, row: &'a Row, i: usize) -> Result<T, SqlError> {
        row.try_get(i).map_err(|e| SqlError {
            database: self.name.clone(),
            code: None,
            message: self.redact.clean(&error_text(&e)),
            lost: false,
            cancelled: false,
        })
    }

    /// Tries a write that leaves nothing behind (a temporary table created in a
    /// transaction that is rolled back). `Ok(Err(message))` when the server refuses
    /// because it is read-only (fenced, or a standby).
    pub(crate) async fn probe_write(&self) -> Result<Result<(), String>, SqlError> {
        match self
            .batch("BEGIN; CREATE TEMPORARY TABLE drover_write_probe (x int); ROLLBACK")
            .await
        {
            Ok(()) => Ok(Ok(())),
            Err(e) if e.read_only() => {
                // The failed statement left the transaction open and aborted.
                let _ = self.batch("ROLLBACK").await;
                Ok(Err(e.message))
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK").await;
                Err(e)
            }
        }
    }
}

/// Parses a WAL location (`16/B374D848`) into a byte position.
pub(crate) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u64::from(u32::MAX) && lo <= u64::from(u32::MAX)).then_some((hi << 32) | lo)
}

/// `a - b` in bytes of WAL, or 0 when `b` is ahead.
pub(crate) fn lsn_diff(a: u64, b: u64) -> u64 {
    a.saturating_sub(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_subtract() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("garbage"), None);
        assert_eq!(parse_lsn("1/"), None);
        assert_eq!(
            lsn_diff(parse_lsn("1/10").unwrap(), parse_lsn("0/FFFFFFF0").unwrap()),
            0x20
        );
        assert_eq!(lsn_diff(5, 9), 0);
    }

    #[test]
    fn client_tools_get_the_connection_through_their_environment() {
        let t = Target::from_url(
            "db",
            "postgres://u:s%40cret@h1:5433/app?sslmode=verify-full&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        let env: std::collections::HashMap<_, _> = t.libpq_env("scratch").into_iter().collect();
        assert_eq!(env["PGHOST"], "h1");
        assert_eq!(env["PGPORT"], "5433");
        assert_eq!(env["PGUSER"], "u");
        assert_eq!(env["PGPASSWORD"], "s@cret");
        assert_eq!(env["PGDATABASE"], "scratch");
        assert_eq!(env["PGSSLMODE"], "verify-full");
        assert_eq!(env["PGSSLROOTCERT"], "/ca.pem");
        let t = Target::from_url("db", "postgres://u@h/app?sslmode=none").unwrap();
        let env: std::collections::HashMap<_, _> = t.libpq_env("x").into_iter().collect();
        assert_eq!(env["PGSSLMODE"], "disable");
        assert!(!env.contains_key("PGPASSWORD"));
        assert_eq!(t.on_database("other").config.get_dbname(), Some("other"));
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_urls() {
        let (u, o) = split_tls_options("postgres://u:p@h:5432/db?sslmode=none&application_name=x").unwrap();
        assert_eq!(u, "postgres://u:p@h:5432/db?application_name=x&sslmode=disable");
        assert_eq!(o.sslmode, "disable");
        let (u, o) = split_tls_options("postgresql://u:p%3F@h/db?sslmode=verify-full&sslrootcert=%2Fca.pem").unwrap();
        assert_eq!(u, "postgresql://u:p%3F@h/db?sslmode=require");
        assert_eq!(o.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        let (u, o) = split_tls_options("postgres://u:p@h/db").unwrap();
        assert_eq!(u, "postgres://u:p@h/db");
        assert_eq!(o.sslmode, "prefer");
        let (u, o) = split_tls_options("host=h user=u sslmode=verify-ca sslrootcert=/x.pem").unwrap();
        assert_eq!(u, "host=h user=u sslmode=require");
        assert_eq!(o.root_cert.as_deref(), Some(Path::new("/x.pem")));
        assert!(split_tls_options("postgres://h/db?sslmode=sometimes").is_err());
    }

    #[test]
    fn invalid_urls_do_not_show_the_password() {
        for url in [
            "postgres://drover:s3cretpass@127.0.0.1:notaport/db",
            "postgres://drover:s3cretpass@127.0.0.1:5432/db?bogus_option=1",
            "postgres://drover:s3cretpass@127.0.0.1:5432/db?sslmode=sometimes",
        ] {
            let err = Target::from_url("db-east", url).unwrap_err().to_string();
            assert!(err.contains("db-east"), "{err}");
            assert!(!err.contains("s3cretpass"), "{err}");
        }
    }

    #[test]
    fn the_redactor_blanks_every_form_of_the_secret() {
        let t = Target::from_url("x", "postgres://drover:p%40ssword@127.0.0.1:5432/db?sslmode=disable").unwrap();
        let text = "a p@ssword, p%40ssword and postgres://drover:p%40ssword@127.0.0.1:5432/db?sslmode=disable";
        let clean = t.redact.clean(text);
        assert!(!clean.contains("ssword"), "{clean}");
        assert!(!format!("{t:?}").contains("ssword"));
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_and_retryably() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Target::from_url(
            "db-east",
            &format!("postgres://drover:s3cretpass@127.0.0.1:{port}/db?sslmode=disable"),
        )
        .unwrap();
        let started = Instant::now();
        let err = t
            .connect(&CancellationToken::new(), Instant::now() + Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        let failure = t
            .try_connect(&CancellationToken::new(), Instant::now() + Duration::from_secs(60))
            .await
            .expect_err("a closed port refuses");
        assert_eq!(failure.unreachable, Some(Unreachable::Refused));
        assert!(matches!(err, ActionError::Retryable(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("cannot connect to database `db-east`"), "{msg}");
        assert!(!msg.contains("s3cretpass") && !msg.contains(&port.to_string()), "{msg}");
    }

    #[tokio::test]
    async fn a_silent_server_runs_into_the_connect_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Target::from_url(
            "db-east",
            &format!("postgres://drover:s3cretpass@127.0.0.1:{port}/db?sslmode=disable&connect_timeout=1"),
        )
        .unwrap();
        let started = Instant::now();
        let failure = t
            .try_connect(&CancellationToken::new(), Instant::now() + Duration::from_secs(60))
            .await
            .expect_err("a silent server times out");
        let took = started.elapsed();
        assert_eq!(failure.unreachable, Some(Unreachable::Timeout));
        let err = failure.error;
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(err.to_string().contains("connect timeout"), "{err}");
        drop(listener);
    }

    #[tokio::test]
    async fn any_answer_of_the_server_is_not_unreachable() {
        use std::io::{Read, Write};
        // A "server" that answers the startup message with an error response.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let mut body = Vec::new();
                for (k, v) in [
                    (b'S', "FATAL"),
                    (b'C', "57P03"),
                    (b'M', "the database system is starting up"),
                ] {
                    body.push(k);
                    body.extend_from_slice(v.as_bytes());
                    body.push(0);
                }
                body.push(0);
                let mut msg = vec![b'E'];
                msg.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
                msg.extend_from_slice(&body);
                let _ = s.write_all(&msg);
            }
        });
        let t = Target::from_url(
            "db-east",
            &format!("postgres://drover:s3cretpass@127.0.0.1:{port}/db?sslmode=disable&connect_timeout=5"),
        )
        .unwrap();
        let failure = t
            .try_connect(&CancellationToken::new(), Instant::now() + Duration::from_secs(60))
            .await
            .expect_err("the server refuses");
        server.join().unwrap();
        assert_eq!(failure.unreachable, None, "{:?}", failure.error);
        assert!(failure.error.to_string().contains("starting up"), "{}", failure.error);
    }
}
