//! S3-compatible servers on loopback ports: moto's server (PyPI `moto[server]`:
//! versioning, Object Lock; accepts any signature) and s3s-fs (crates.io, 0.14.1:
//! checks SigV4 signatures and uploaded checksums, stores objects as plain files, so a
//! test can rot one on disk). Each checks what the other does not.
//!
//! [`S3Server::start`] picks a free port, starts the server in a process group of its
//! own with random credentials (so tests can check that keys never leak) and waits
//! until it answers HTTP. Dropping it kills the group and removes its folder, also when
//! a test panics; a watchdog process does the same if the process that started it dies.
//! `.ci/run` installs both servers; a missing one is an error that says how to install
//! it ([`LabError::NoBinaries`]), never a skipped test.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::postgres::LabError;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    /// `moto_server` (Python): versioning and Object Lock; signatures not checked.
    Moto,
    /// `s3s-fs` (Rust): SigV4 and checksums checked; objects are files in [`S3Server::data_dir`].
    S3sFs,
}

impl S3Kind {
    pub fn name(self) -> &'static str {
        match self {
            S3Kind::Moto => "moto",
            S3Kind::S3sFs => "s3s-fs",
        }
    }

    fn program(self) -> &'static str {
        match self {
            S3Kind::Moto => "moto_server",
            S3Kind::S3sFs => "s3s-fs",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            S3Kind::Moto => "pip install 'moto[server]' (or run .ci/run, which installs it)",
            S3Kind::S3sFs => "cargo install s3s-fs@0.14.1 --features binary --locked (or run .ci/run)",
        }
    }
}

impl fmt::Display for S3Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An S3-compatible server on `127.0.0.1`. See the module documentation.
pub struct S3Server {
    kind: S3Kind,
    dir: TempDir,
    port: u16,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
    watchdog: Option<Child>,
}

impl fmt::Debug for S3Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Server")
            .field("kind", &self.kind)
            .field("port", &self.port)
            .field("keys", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Finds `program` on `PATH` or in `~/.cargo/bin`.
fn find_program(kind: S3Kind) -> Result<PathBuf, LabError> {
    let prog = kind.program();
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            LabError::NoBinaries(format!(
                "the {kind} S3 server (`{prog}`) is not installed: {}",
                kind.install_hint()
            ))
        })
}

impl S3Server {
    /// Starts moto's server.
    pub fn moto() -> Result<Self, LabError> {
        Self::start(S3Kind::Moto)
    }

    /// Starts s3s-fs.
    pub fn s3s_fs() -> Result<Self, LabError> {
        Self::start(S3Kind::S3sFs)
    }

    /// Starts a server of `kind` on a free loopback port (about a second).
    pub fn start(kind: S3Kind) -> Result<Self, LabError> {
        let program = find_program(kind)?;
        let dir = tempfile::Builder::new().prefix("drover-s3-").tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let access_key = format!("LABKEY{}", random_hex(7)?.to_uppercase());
        let secret_key = format!("labsecret{}", random_hex(16)?);
        let mut cmd = Command::new(&program);
        match kind {
            S3Kind::Moto => {
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            }
            S3Kind::S3sFs => {
                cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", &access_key, "--secret-key", &secret_key])
                    .arg(&data);
            }
        }
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn()?;
        let mut server = S3Server {
            kind,
            dir,
            port,
            access_key,
            secret_key,
            child: Some(child),
            watchdog: None,
        };
        server.watchdog = Some(server.spawn_watchdog()?);
        // Dropping `server` on an error kills what runs.
        server.wait_ready(Duration::from_secs(30)).map_err(|e| {
            LabError::Setup(format!(
                "cannot start the {kind} S3 server: {e}; its log: {}",
                server.log()
            ))
        })?;
        Ok(server)
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), LabError> {
        let start = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(LabError::Setup(format!("the {} server exited: {status}", self.kind)));
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                // Any HTTP answer means it serves.
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!(
                    "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                    self.port
                );
                let mut buf = [0u8; 12];
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read(&mut buf).is_ok_and(|n| n >= 5)
                    && buf.starts_with(b"HTTP/")
                {
                    return Ok(());
                }
            }
            if start.elapsed() > within {
                return Err(LabError::Timeout {
                    what: format!("the {} server answering on port {}", self.kind, self.port),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A process that kills the server once this process is gone.
    fn spawn_watchdog(&self) -> Result<Child, LabError> {
        let pgid = self.child.as_ref().map_or(0, Child::id);
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; kill -9 -{pgid} 2>/dev/null; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.path().display().to_string().replace('\'', r"'\''"),
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

    pub fn kind(&self) -> S3Kind {
        self.kind
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access key id (random per server).
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key (random per server): tests check it never leaks.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Where s3s-fs keeps the objects (`DIR/BUCKET/KEY`); unused by moto.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file holding an object on s3s-fs (to rot it on disk).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.data_dir().join(bucket).join(key)
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (it stays down: for "server down" tests).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn random_hex(n: usize) -> Result<String, LabError> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: S3Kind) {
        let mut s = S3Server::start(kind).unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{s:?}").contains(s.secret_key()));
        let addr = SocketAddr::from(([127, 0, 0, 1], s.port()));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok());
        let dir = s.dir().to_owned();
        s.kill();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "killed"
        );
        drop(s);
        assert!(!dir.exists(), "the folder is removed");
    }

    #[test]
    fn moto_starts_serves_and_stops() {
        check(S3Kind::Moto);
    }

    #[test]
    fn s3s_fs_starts_serves_and_stops() {
        check(S3Kind::S3sFs);
    }
}
