//! A PostgreSQL primary and a streaming standby on loopback ports, in a temporary folder.
//!
//! [`PgPair::start`] runs `initdb` (SCRAM password authentication for a superuser
//! `drover` with a random password, so connection URLs carry a real secret), starts the
//! primary, clones the standby with `pg_basebackup -R -X stream` and waits until it
//! streams. About two seconds. The servers run as the `postgres` system user when the
//! caller is root (PostgreSQL refuses to run as root), in a folder that user owns.
//!
//! Dropping the pair stops both servers (`pg_ctl -m immediate stop`) and removes the
//! folder, also when a test panics. A watchdog process does the same if the process
//! that started the pair dies without dropping it (a killed test, a `static` pair).
//!
//! SQL runs through `psql` over TCP with the password: the lab stays synchronous and
//! independent of the client library that drover itself uses.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

/// What can go wrong while running the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("PostgreSQL server binaries not found: {0}")]
    NoBinaries(String),
    #[error("{0}")]
    Setup(String),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("SQL `{sql}` on the {node}: {detail}")]
    Sql { node: Node, sql: String, detail: String },
    #[error("{what} did not happen within {within:?}")]
    Timeout { what: String, within: Duration },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One server of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Primary,
    Standby,
}

impl Node {
    fn name(self) -> &'static str {
        match self {
            Node::Primary => "primary",
            Node::Standby => "standby",
        }
    }
    fn index(self) -> usize {
        match self {
            Node::Primary => 0,
            Node::Standby => 1,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tools the pair needs, all from one folder.
const TOOLS: [&str; 5] = ["initdb", "pg_ctl", "pg_basebackup", "postgres", "psql"];

/// The folder holding the real server binaries (not Debian's `/usr/bin` wrappers).
#[derive(Debug, Clone)]
pub struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// `$DROVER_PG_BIN`, else the first folder on `PATH` with every tool, else the
    /// newest `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<Self, LabError> {
        let mut candidates = Vec::new();
        if let Some(d) = std::env::var_os("DROVER_PG_BIN") {
            candidates.push(PathBuf::from(d));
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versioned.into_iter().map(|(_, p)| p));
        candidates
            .into_iter()
            .find(|d| is_server_bin(d))
            .map(|dir| PgBin { dir })
            .ok_or_else(|| {
                LabError::NoBinaries(format!(
                    "no folder on PATH or under /usr/lib/postgresql/*/bin has {}; install the server \
                     (apt-get install postgresql-15) or set DROVER_PG_BIN",
                    TOOLS.join(", ")
                ))
            })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn is_server_bin(dir: &Path) -> bool {
    TOOLS.iter().all(|t| dir.join(t).is_file())
        && fs::canonicalize(dir.join("pg_ctl")).is_ok_and(|p| !p.to_string_lossy().contains("pg_wrapper"))
}

/// The unprivileged user the servers run as when the caller is root.
#[derive(Debug, Clone)]
struct RunAs {
    user: String,
    uid: u32,
    gid: u32,
}

fn run_as() -> Result<Option<RunAs>, LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .map_err(|e| LabError::Setup(format!("cannot look up the `postgres` user: {e}")))?
        .ok_or_else(|| {
            LabError::Setup("PostgreSQL refuses to run as root and there is no `postgres` user to run it as".into())
        })?;
    if !Path::new("/usr/sbin/runuser").exists() && !Path::new("/sbin/runuser").exists() {
        return Err(LabError::Setup(
            "running as root, the lab needs `runuser` (util-linux) to start PostgreSQL as `postgres`".into(),
        ));
    }
    Ok(Some(RunAs {
        user: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

/// A primary and a streaming standby on `127.0.0.1`. See the module documentation.
pub struct PgPair {
    dir: TempDir,
    bin: PgBin,
    run_as: Option<RunAs>,
    user: String,
    password: String,
    ports: Mutex<[u16; 2]>,
    /// `primary_conninfo` of the standby while it is cut off from the primary.
    cut_conninfo: Mutex<Option<String>>,
    watchdog: Mutex<Option<Child>>,
}

impl fmt::Debug for PgPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPair")
            .field("dir", &self.dir.path())
            .field("ports", &self.ports())
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl PgPair {
    /// Starts a new pair (about two seconds).
    pub fn start() -> Result<Self, LabError> {
        let pair = Self::prepare()?;
        pair.init_primary()?;
        pair.start_node(Node::Primary, None)?;
        pair.clone_standby()?;
        pair.start_node(Node::Standby, None)?;
        pair.wait_streaming(Duration::from_secs(30))?;
        pair.wait_caught_up(Duration::from_secs(30))?;
        Ok(pair)
    }

    /// The folder, the password and the watchdog; no server yet.
    fn prepare() -> Result<Self, LabError> {
        let bin = PgBin::find()?;
        let run_as = run_as()?;
        let dir = tempfile::Builder::new().prefix("drover-pg-").tempdir()?;
        if let Some(u) = &run_as {
            std::os::unix::fs::chown(dir.path(), Some(u.uid), Some(u.gid))?;
        }
        let pair = PgPair {
            dir,
            bin,
            run_as,
            user: "drover".into(),
            password: random_password()?,
            ports: Mutex::new([0, 0]),
            cut_conninfo: Mutex::new(None),
            watchdog: Mutex::new(None),
        };
        // From here on, dropping `pair` (an error) stops whatever runs.
        *pair.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(pair.spawn_watchdog()?);
        Ok(pair)
    }

    /// A primary alone, without a standby: a cluster of its own (its own
    /// `system_identifier`), e.g. an unrelated database for a test. The standby's
    /// methods do not apply to it.
    pub fn start_single() -> Result<Self, LabError> {
        let pair = Self::prepare()?;
        pair.init_primary()?;
        pair.start_node(Node::Primary, None)?;
        Ok(pair)
    }

    /// One pair for the whole process, for tests that only read. It is never dropped:
    /// the watchdog stops it when the process exits. Panics when it cannot start.
    pub fn shared() -> &'static PgPair {
        static PAIR: OnceLock<PgPair> = OnceLock::new();
        PAIR.get_or_init(|| PgPair::start().unwrap_or_else(|e| panic!("cannot start the shared PostgreSQL pair: {e}")))
    }

    /// The temporary folder holding both data directories and their logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server binaries it runs (for tests that start `psql` themselves).
    pub fn bin(&self) -> &PgBin {
        &self.bin
    }

    fn ports(&self) -> [u16; 2] {
        *self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn port(&self, node: Node) -> u16 {
        self.ports()[node.index()]
    }

    /// The superuser drover connects as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Its password (random per pair): tests check it never leaks.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://drover:PASSWORD@127.0.0.1:PORT/postgres?sslmode=disable`.
    pub fn url(&self, node: Node) -> String {
        self.url_with_port(self.port(node))
    }

    /// The URL of the pair's credentials with another port (for "wrong port" tests).
    pub fn url_with_port(&self, port: u16) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{port}/postgres?sslmode=disable",
            self.user, self.password
        )
    }

    pub fn primary_url(&self) -> String {
        self.url(Node::Primary)
    }

    pub fn standby_url(&self) -> String {
        self.url(Node::Standby)
    }

    fn data(&self, node: Node) -> PathBuf {
        self.dir().join(node.name())
    }

    fn log_path(&self, node: Node) -> PathBuf {
        self.dir().join(format!("{}.log", node.name()))
    }

    /// The server log of `node` (for failure messages).
    pub fn log(&self, node: Node) -> String {
        fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// Runs one SQL statement with `psql` and returns its rows (`|` between columns,
    /// one row per line, no header).
    pub fn sql(&self, node: Node, sql: &str) -> Result<String, LabError> {
        self.sql_as(node, &self.user, &self.password, sql)
    }

    /// Like [`Self::sql`], logged in as another role (`user` with `password`).
    pub fn sql_as(&self, node: Node, user: &str, password: &str, sql: &str) -> Result<String, LabError> {
        let out = Command::new(self.bin.tool("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(self.port(node).to_string())
            .args(["-U", user, "-d", "postgres", "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(LabError::Sql {
                node,
                sql: sql.to_owned(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Whether `node` is in recovery (a standby).
    pub fn in_recovery(&self, node: Node) -> Result<bool, LabError> {
        Ok(self.sql(node, "SELECT pg_is_in_recovery()")? == "t")
    }

    /// Waits until the standby's WAL receiver streams from the primary.
    pub fn wait_streaming(&self, within: Duration) -> Result<(), LabError> {
        wait_until("the standby streaming from the primary", within, || {
            Ok(self
                .sql(Node::Standby, "SELECT status FROM pg_stat_wal_receiver")
                .is_ok_and(|s| s == "streaming"))
        })
    }

    /// Waits until the standby has replayed everything the primary has flushed.
    pub fn wait_caught_up(&self, within: Duration) -> Result<(), LabError> {
        let target = self.sql(Node::Primary, "SELECT pg_current_wal_flush_lsn()")?;
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
        wait_until("the standby catching up", within, || {
            Ok(self.sql(Node::Standby, &sql).is_ok_and(|s| s == "t"))
        })
    }

    /// Pauses WAL replay on the standby (`pg_wal_replay_pause()`): it keeps receiving
    /// WAL but stops applying it, so it falls behind while the primary writes.
    pub fn pause_replay(&self) -> Result<(), LabError> {
        self.sql(Node::Standby, "SELECT pg_wal_replay_pause()")?;
        wait_until("replay paused", Duration::from_secs(10), || {
            Ok(self.sql(Node::Standby, "SELECT pg_get_wal_replay_pause_state()")? == "paused")
        })
    }

    pub fn resume_replay(&self) -> Result<(), LabError> {
        self.sql(Node::Standby, "SELECT pg_wal_replay_resume()").map(drop)
    }

    /// Points the standby's replication connection at `port` on loopback instead of the
    /// primary's own (e.g. a [`crate::TcpProxy`] to the primary, so that a test can cut
    /// and heal the link), and waits until it streams through it.
    pub fn replicate_via(&self, port: u16) -> Result<(), LabError> {
        let conninfo = self.sql(Node::Standby, "SHOW primary_conninfo")?;
        let routed: Vec<String> = conninfo
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("port=") {
                    format!("port={port}")
                } else {
                    kv.to_owned()
                }
            })
            .collect();
        if !routed.iter().any(|kv| kv.starts_with("port=")) {
            return Err(LabError::Setup(format!(
                "no port in the standby's primary_conninfo `{conninfo}`"
            )));
        }
        self.sql(
            Node::Standby,
            &format!(
                "ALTER SYSTEM SET primary_conninfo = '{}'",
                routed.join(" ").replace('\'', "''")
            ),
        )?;
        self.sql(Node::Standby, "SELECT pg_reload_conf()")?;
        wait_until(
            "the standby streaming through the new port",
            Duration::from_secs(30),
            || {
                Ok(self.sql(
                    Node::Standby,
                    "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                )? == port.to_string())
            },
        )
    }

    /// Cuts the standby off the primary (it stops receiving WAL, as in a network
    /// partition): what the primary writes from now on is lost if the standby is
    /// promoted before [`Self::reconnect_standby`].
    pub fn cut_standby(&self) -> Result<(), LabError> {
        let conninfo = self.sql(Node::Standby, "SHOW primary_conninfo")?;
        *self.cut_conninfo.lock().unwrap_or_else(|p| p.into_inner()) = Some(conninfo);
        self.sql(Node::Standby, "ALTER SYSTEM SET primary_conninfo = ''")?;
        self.sql(Node::Standby, "SELECT pg_reload_conf()")?;
        wait_until("the standby disconnected", Duration::from_secs(10), || {
            Ok(self.sql(Node::Standby, "SELECT count(*) FROM pg_stat_wal_receiver")? == "0")
        })
    }

    /// Undoes [`Self::cut_standby`] and waits until it streams again.
    pub fn reconnect_standby(&self) -> Result<(), LabError> {
        let Some(conninfo) = self.cut_conninfo.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        self.sql(
            Node::Standby,
            &format!("ALTER SYSTEM SET primary_conninfo = '{}'", conninfo.replace('\'', "''")),
        )?;
        self.sql(Node::Standby, "SELECT pg_reload_conf()")?;
        self.wait_streaming(Duration::from_secs(30))
    }

    /// The primary dies: SIGKILL to the postmaster and all its processes, as in a
    /// crash. Returns when its port no longer accepts connections.
    pub fn kill_primary(&self) -> Result<(), LabError> {
        self.kill(Node::Primary)
    }

    /// A server dies: SIGKILL to its postmaster and all its processes. Returns when its
    /// port no longer accepts connections and those processes are gone.
    /// [`Self::start_node_again`] brings it back.
    pub fn kill(&self, node: Node) -> Result<(), LabError> {
        let pid = self.postmaster_pid(node)?;
        // The postmaster and every process it forked, at once, as a crash of the machine
        // would: a child that is stopped (SIGSTOP) would not notice its postmaster's
        // death, and would keep the shared memory a restart needs.
        let children = children_of(pid.as_raw());
        if killpg(pid, Signal::SIGKILL).is_err() {
            kill(pid, Signal::SIGKILL).map_err(|e| LabError::Setup(format!("kill -9 {pid}: {e}")))?;
        }
        for c in &children {
            let _ = kill(Pid::from_raw(*c), Signal::SIGKILL);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port(node)));
        wait_until("the server gone", Duration::from_secs(10), || {
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err())
        })?;
        wait_until("the server's processes gone", Duration::from_secs(10), || {
            Ok(!children.iter().chain([&pid.as_raw()]).any(|p| live(*p)))
        })
    }

    /// Stops the primary cleanly (`pg_ctl -m fast stop`).
    pub fn stop_primary(&self) -> Result<(), LabError> {
        self.pg_ctl_stop(Node::Primary, "fast")
    }

    /// Starts the primary again on its port (after [`Self::kill_primary`] or
    /// [`Self::stop_primary`]); it runs crash recovery if it was killed.
    pub fn start_primary(&self) -> Result<(), LabError> {
        self.start_node(Node::Primary, Some(self.port(Node::Primary)))
    }

    /// Starts a server again on its port after [`Self::kill`]; it runs crash recovery
    /// (a standby resumes recovery, unless its promotion had completed).
    pub fn start_node_again(&self, node: Node) -> Result<(), LabError> {
        self.start_node(node, Some(self.port(node)))
    }

    fn postmaster_pid(&self, node: Node) -> Result<Pid, LabError> {
        let text = fs::read_to_string(self.data(node).join("postmaster.pid"))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
            .map(Pid::from_raw)
            .ok_or_else(|| LabError::Setup(format!("no pid in {}/postmaster.pid", node.name())))
    }

    /// A server tool, run as the `postgres` user when we are root.
    fn server_cmd(&self, tool: &str) -> Command {
        let path = self.bin.tool(tool);
        let mut cmd = match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &u.user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.current_dir(self.dir())
            .env("LC_ALL", "C")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null());
        cmd
    }

    fn init_primary(&self) -> Result<(), LabError> {
        let pwfile = self.dir().join("pwfile");
        fs::write(&pwfile, format!("{}\n", self.password))?;
        if let Some(u) = &self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(u.uid), Some(u.gid))?;
        }
        let data = self.data(Node::Primary);
        let mut cmd = self.server_cmd("initdb");
        cmd.arg("-D")
            .arg(&data)
            .args(["-U", &self.user])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]);
        let result = run(cmd);
        let _ = fs::remove_file(&pwfile);
        result?;
        let mut conf = fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
        // Loopback only, no Unix socket; replication on; small and fast (a lab, not a
        // database: no fsync).
        conf.write_all(
            b"\n# drover lab\n\
              listen_addresses = '127.0.0.1'\n\
              unix_socket_directories = ''\n\
              wal_level = replica\n\
              max_wal_senders = 8\n\
              max_replication_slots = 8\n\
              wal_keep_size = 256MB\n\
              hot_standby = on\n\
              wal_receiver_status_interval = 1s\n\
              wal_retrieve_retry_interval = 500ms\n\
              fsync = off\n\
              shared_buffers = 32MB\n\
              max_connections = 50\n\
              max_prepared_transactions = 4\n\
              log_line_prefix = '%m [%p] %q%u@%d '\n",
        )?;
        Ok(())
    }

    fn clone_standby(&self) -> Result<(), LabError> {
        let mut cmd = self.server_cmd("pg_basebackup");
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.port(Node::Primary).to_string())
            .args(["-U", &self.user, "-D"])
            .arg(self.data(Node::Standby))
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .env("PGPASSWORD", &self.password);
        run(cmd).map(drop)
    }

    /// Starts `node` on `port` (or on a free port, retrying if another process takes
    /// it first).
    fn start_node(&self, node: Node, port: Option<u16>) -> Result<(), LabError> {
        let log = self.log_path(node);
        let started = Instant::now();
        let mut last = String::new();
        for _ in 0..50 {
            let p = match port {
                Some(p) => p,
                None => free_port()?,
            };
            let before = fs::metadata(&log).map_or(0, |m| m.len());
            let mut cmd = self.server_cmd("pg_ctl");
            cmd.arg("-D")
                .arg(self.data(node))
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {p}"))
                .arg("start");
            match run(cmd) {
                Ok(_) => {
                    self.ports.lock().unwrap_or_else(|x| x.into_inner())[node.index()] = p;
                    return Ok(());
                }
                Err(e) => {
                    let tail = read_from(&log, before);
                    // Another process took the port, or the killed server's processes
                    // still hold its shared memory: try again.
                    let transient = tail.contains("could not bind")
                        || tail.contains("Address already in use")
                        || tail.contains("could not create any TCP/IP sockets")
                        || tail.contains("shared memory block is still in use")
                        || (tail.contains("lock file") && tail.contains("already exists"));
                    last = format!("{e}\n{tail}");
                    if !transient || started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(LabError::Setup(format!("cannot start the {node}: {last}")))
    }

    fn pg_ctl_stop(&self, node: Node, mode: &str) -> Result<(), LabError> {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D").arg(self.data(node)).args(["-m", mode, "-w", "stop"]);
        run(cmd).map(drop)
    }

    /// A process that stops the servers and removes the folder once this process is
    /// gone, in case it never drops the pair.
    fn spawn_watchdog(&self) -> Result<Child, LabError> {
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let pg_ctl = q(&self.bin.tool("pg_ctl"));
        let runuser = match &self.run_as {
            Some(u) => format!("runuser -u {} -- ", u.user),
            None => String::new(),
        };
        let stops: String = [Node::Standby, Node::Primary]
            .iter()
            .map(|n| {
                format!(
                    "{runuser}{pg_ctl} -D {} -m immediate stop >/dev/null 2>&1; ",
                    q(&self.data(*n))
                )
            })
            .collect();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stops}rm -rf {dir}",
            pid = std::process::id(),
            dir = q(self.dir()),
        );
        Ok(Command::new("sh")
            .args(["-c", &script])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?)
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for node in [Node::Standby, Node::Primary] {
            if self.data(node).join("postmaster.pid").exists() {
                let _ = self.pg_ctl_stop(node, "immediate");
            }
        }
        if let Some(mut w) = self.watchdog.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // The TempDir removes the folder.
    }
}

fn run(mut cmd: Command) -> Result<std::process::Output, LabError> {
    let describe = format!("{cmd:?}");
    let out = cmd.output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            command: describe,
            detail: format!(
                "{}; {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        })
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(offset));
        let _ = f.read_to_string(&mut s);
    }
    s
}

fn free_port() -> Result<u16, LabError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_password() -> Result<String, LabError> {
    let mut bytes = [0u8; 12];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "lab{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces):
/// state, ppid, pgrp, ...
fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| proc_stat(*p).and_then(|f| f.get(1)?.parse::<i32>().ok()) == Some(pid))
        .collect()
}

/// Whether process `pid` is alive (a zombie, dead but not reaped, is not).
fn live(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

/// Polls `done` every 20 ms until it says yes, or fails after `within`.
pub fn wait_until(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> Result<bool, LabError>,
) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                within,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_streams_and_stops_on_drop() {
        let pair = PgPair::start().expect("start a pair");
        assert!(!pair.in_recovery(Node::Primary).unwrap());
        assert!(pair.in_recovery(Node::Standby).unwrap());
        pair.sql(Node::Primary, "CREATE TABLE t (x int)").unwrap();
        pair.sql(Node::Primary, "INSERT INTO t VALUES (42)").unwrap();
        pair.wait_caught_up(Duration::from_secs(10)).unwrap();
        assert_eq!(pair.sql(Node::Standby, "SELECT x FROM t").unwrap(), "42");
        // Password authentication is on: a wrong password is refused.
        let out = Command::new(pair.bin.tool("psql"))
            .args(["-X", "-h", "127.0.0.1", "-p"])
            .arg(pair.port(Node::Primary).to_string())
            .args(["-U", "drover", "-d", "postgres", "-c", "SELECT 1"])
            .env("PGPASSWORD", "wrong")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
        assert!(!format!("{pair:?}").contains(pair.password()));
        let dir = pair.dir().to_owned();
        let port = pair.port(Node::Primary);
        drop(pair);
        assert!(!dir.exists(), "the folder is removed");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }

    #[test]
    fn the_primary_can_be_killed_and_restarted() {
        let pair = PgPair::start().expect("start a pair");
        pair.kill_primary().unwrap();
        assert!(pair.sql(Node::Primary, "SELECT 1").is_err());
        pair.start_primary().unwrap();
        pair.wait_streaming(Duration::from_secs(30)).unwrap();
        pair.cut_standby().unwrap();
        pair.sql(Node::Primary, "CREATE TABLE after_cut (x int)").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            pair.sql(Node::Standby, "SELECT * FROM after_cut").is_err(),
            "the cut standby got WAL"
        );
        pair.reconnect_standby().unwrap();
        pair.wait_caught_up(Duration::from_secs(10)).unwrap();
        assert_eq!(pair.sql(Node::Standby, "SELECT count(*) FROM after_cut").unwrap(), "0");
    }
}
