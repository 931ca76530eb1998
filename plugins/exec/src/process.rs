//! Running a child process: argv without a shell, drover's environment plus extra
//! variables, its own process group (killed whole on timeout or cancellation), and
//! stdout/stderr captured up to a bound.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_plugin_api::{ActionError, CancellationToken};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Bytes of stdout and of stderr kept for the record.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// Output of one stream: the first [`CAPTURE_LIMIT`] bytes and the total size.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub total: u64,
}

impl Captured {
    pub fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.total > self.bytes.len() as u64 {
            s.push_str(&format!(
                "\n[... {} more bytes not kept]",
                self.total - self.bytes.len() as u64
            ));
        }
        s
    }

    /// The last non-empty line, for error messages.
    pub fn last_line(&self) -> Option<String> {
        String::from_utf8_lossy(&self.bytes)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.chars().take(300).collect())
    }
}

/// How a child process ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub argv: Vec<String>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn describe_status(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            (None, None) => "ended without a status".to_owned(),
        }
    }

    /// What is recorded in the journal.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "argv": self.argv,
            "exit_code": self.code,
            "signal": self.signal,
            "stdout": self.stdout.text(),
            "stderr": self.stderr.text(),
            "stdout_bytes": self.stdout.total,
            "stderr_bytes": self.stderr.total,
            "duration_s": self.duration.as_secs_f64(),
        })
    }

    /// `` `prog` exited with status 3: last stderr line``.
    pub fn failure_message(&self) -> String {
        let mut m = format!("`{}` {}", self.argv.join(" "), self.describe_status());
        if let Some(line) = self.stderr.last_line().or_else(|| self.stdout.last_line()) {
            m.push_str(": ");
            m.push_str(&line);
        }
        m
    }
}

/// Kills the whole process group when dropped while armed: on timeout the engine drops
/// the action's future, and nothing the command started may outlive it.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn drain(mut r: impl AsyncRead + Unpin, into: Arc<Mutex<Captured>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut c = into.lock().expect("capture lock");
                let room = CAPTURE_LIMIT.saturating_sub(c.bytes.len());
                c.bytes.extend_from_slice(&buf[..n.min(room)]);
                c.total += n as u64;
            }
        }
    }
}

/// Runs `argv` to completion (or cancellation), feeding `stdin` if given.
pub async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    stdin: Option<Vec<u8>>,
    cancel: &CancellationToken,
) -> Result<Finished, ActionError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| ActionError::Permanent("empty command".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| ActionError::Permanent(format!("cannot start `{program}`: {e}")))?;
    let mut guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw));
    let out = Arc::new(Mutex::new(Captured::default()));
    let err = Arc::new(Mutex::new(Captured::default()));
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        readers.push(tokio::spawn(drain(s, out.clone())));
    }
    if let Some(s) = child.stderr.take() {
        readers.push(tokio::spawn(drain(s, err.clone())));
    }
    if let (Some(mut pipe), Some(data)) = (child.stdin.take(), stdin) {
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
            let _ = pipe.shutdown().await;
        });
    }
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| ActionError::OutcomeUnknown(format!("lost track of `{program}`: {e}")))?,
        () = cancel.cancelled() => {
            guard.kill();
            for r in &readers {
                r.abort();
            }
            return Err(ActionError::Cancelled);
        }
    };
    // The command is done; what it left running in the background keeps its pipes
    // open, so wait only briefly for the rest of the output.
    guard.0 = None;
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        for r in &mut readers {
            let _ = r.await;
        }
    })
    .await;
    for r in &readers {
        r.abort();
    }
    use std::os::unix::process::ExitStatusExt;
    let stdout = out.lock().expect("capture lock").clone();
    let stderr = err.lock().expect("capture lock").clone();
    Ok(Finished {
        argv: argv.to_vec(),
        code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        duration: started.elapsed(),
    })
}
