//! Live progress of a run: spinners per running step on a terminal, plain timestamped
//! lines otherwise (both on stderr, so stdout stays clean for `--format json`). Also
//! the terminal's answer to `manual.approve` gates.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use drover_engine::Observer;
use drover_engine::journal::{Event, Phase, Record, StepStatus};
use drover_plugin_api::{Approval, Approver};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Renders journal records as they are appended.
pub struct Ui {
    /// Held while a question waits at the terminal: one at a time.
    asking: tokio::sync::Mutex<()>,
    multi: Option<MultiProgress>,
    header: Option<ProgressBar>,
    state: Mutex<UiState>,
    title: String,
    /// Colour the marks of the lines (see `crate::color`).
    color: bool,
}

#[derive(Default)]
struct UiState {
    bars: HashMap<(Phase, String), ProgressBar>,
    total: usize,
    done: usize,
    failed: usize,
    rto_target: Option<f64>,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui").field("title", &self.title).finish_non_exhaustive()
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Preflight => "preflight",
        Phase::Steps => "step",
        Phase::Verify => "verify",
        Phase::Compensation => "undo",
        Phase::Rollback => "rollback",
    }
}

fn secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        drover_model::Dur(Duration::from_secs(s as u64)).to_string()
    }
}

/// One line for a record, or nothing for records not worth a line.
pub fn describe(rec: &Record) -> Option<String> {
    Some(match &rec.event {
        Event::RunStarted {
            runbook, mode, service, ..
        } => {
            format!("{} of runbook {runbook} (service {service}) started", mode.as_str())
        }
        Event::Resumed { pid, .. } => format!("resumed by process {pid}"),
        Event::CheckPassed {
            phase,
            name,
            attempts,
            summary,
            ..
        } => {
            let tries = if *attempts > 1 {
                format!(" after {attempts} attempts")
            } else {
                String::new()
            };
            format!("✓ {} check `{name}` passed{tries}: {summary}", phase_name(*phase))
        }
        Event::CheckFailed { phase, name, error, .. } => {
            format!("✗ {} check `{name}` failed: {error}", phase_name(*phase))
        }
        Event::StepStarted { phase, step, attempt } => {
            if *attempt > 1 {
                format!("{} `{step}` attempt {attempt}", phase_name(*phase))
            } else {
                format!("{} `{step}` started", phase_name(*phase))
            }
        }
        Event::Checkpoint { phase, step, .. } => {
            format!("{} `{step}` journaled its prior state (checkpoint)", phase_name(*phase))
        }
        Event::Progress { phase, step, .. } => {
            format!("{} `{step}` journaled how far it got (progress)", phase_name(*phase))
        }
        Event::StepAttemptFailed {
            phase,
            step,
            attempt,
            error,
            retry_in_s,
        } => match retry_in_s {
            Some(d) => format!(
                "{} `{step}` attempt {attempt} failed: {error}; retrying in {}",
                phase_name(*phase),
                secs(*d)
            ),
            None => format!("{} `{step}` attempt {attempt} ended: {error}", phase_name(*phase)),
        },
        Event::StepFinished {
            phase,
            step,
            status,
            output,
            error,
            ..
        } => match status {
            StepStatus::Ok => format!(
                "✓ {} `{step}` done{}",
                phase_name(*phase),
                output.as_ref().map(|o| format!(": {}", o.summary)).unwrap_or_default()
            ),
            StepStatus::Failed => format!(
                "✗ {} `{step}` failed: {}",
                phase_name(*phase),
                error.clone().unwrap_or_default()
            ),
            StepStatus::OutcomeUnknown => format!(
                "? {} `{step}`: {}",
                phase_name(*phase),
                error.clone().unwrap_or_default()
            ),
        },
        Event::Halted { reason, .. } => format!("halted: {reason}"),
        Event::CheckAttemptFailed {
            phase,
            name,
            attempt,
            error,
        } => format!(
            "… {} check `{name}` failing (attempt {attempt}), polling on: {error}",
            phase_name(*phase)
        ),
        Event::Acknowledged { by, reason } => format!("acknowledged by {by}: {reason}"),
        Event::Recovered { rto_s } => {
            format!("recovered: every verify check passed, RTO {}", secs(*rto_s))
        }
        Event::RollbackStarted { reason } => match reason {
            drover_engine::journal::RollbackReason::Failure => "rolling back".into(),
            drover_engine::journal::RollbackReason::DrillCleanup => {
                "cleaning up after the drill (rollback steps)".into()
            }
        },
        Event::Interrupted { reason } => format!("interrupted: {reason}"),
        Event::RunFinished { outcome, reason, .. } => format!("finished: {} ({reason})", outcome.as_str()),
        Event::Sealed { fingerprint, .. } => format!("journal sealed with key {fingerprint}"),
        Event::EvidenceArchived {
            store,
            key,
            mode,
            retain_until,
            ..
        } => format!("evidence archived to {store}:{key} ({mode} until {retain_until})"),
        Event::EvidenceArchiveFailed { store, error, .. } => {
            format!("evidence archive to {store} failed: {error}")
        }
    })
}

impl Ui {
    /// A live display on a terminal, plain lines otherwise.
    pub fn new(title: String, total_steps: usize, rto_target: Option<f64>) -> Ui {
        let tty = crate::color::live_stderr();
        let color = crate::color::enabled(crate::color::Stream::Stderr);
        let state = Mutex::new(UiState {
            total: total_steps,
            rto_target,
            ..Default::default()
        });
        if !tty {
            return Ui {
                asking: tokio::sync::Mutex::new(()),
                multi: None,
                header: None,
                state,
                title,
                color,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let header = multi.add(ProgressBar::new_spinner());
        header
            .set_style(ProgressStyle::with_template("{spinner} {msg} · elapsed {elapsed_precise}").expect("template"));
        header.enable_steady_tick(Duration::from_millis(120));
        let ui = Ui {
            asking: tokio::sync::Mutex::new(()),
            multi: Some(multi),
            header: Some(header),
            state,
            title,
            color,
        };
        ui.refresh_header(&ui.state.lock().expect("ui lock"));
        ui
    }

    fn refresh_header(&self, st: &UiState) {
        if let Some(h) = &self.header {
            let target = st
                .rto_target
                .map(|t| format!(" · RTO target {}", secs(t)))
                .unwrap_or_default();
            let failed = if st.failed > 0 {
                format!(", {} failed", st.failed)
            } else {
                String::new()
            };
            h.set_message(format!(
                "{}: {}/{} steps done{failed}{target}",
                self.title, st.done, st.total
            ));
        }
    }

    /// Removes the live display (before the summary is printed).
    pub fn finish(&self) {
        if let Some(h) = &self.header {
            h.finish_and_clear();
        }
        let st = self.state.lock().expect("ui lock");
        for b in st.bars.values() {
            b.finish_and_clear();
        }
    }

    /// Prints a line above the live display (or plainly).
    pub fn line(&self, s: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(s);
            }
            None => eprintln!("{s}"),
        }
    }
}

impl Observer for Ui {
    fn record(&self, rec: &Record) {
        let Some(text) = describe(rec) else { return };
        let Some(multi) = &self.multi else {
            // One write per line: stderr is unbuffered.
            let line = format!("[{:>9.3}s] {}\n", rec.t, crate::color::mark_line(&text, self.color));
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            return;
        };
        let mut st = self.state.lock().expect("ui lock");
        match &rec.event {
            Event::StepStarted { phase, step, attempt } => {
                let key = (*phase, step.clone());
                let bar = st.bars.entry(key).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(ProgressStyle::with_template("  {spinner} {msg} {elapsed}").expect("template"));
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                let tries = if *attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                bar.set_message(format!("{} {step}{tries}", phase_name(*phase)));
                return;
            }
            Event::StepFinished {
                phase, step, status, ..
            } => {
                if let Some(b) = st.bars.remove(&(*phase, step.clone())) {
                    b.finish_and_clear();
                }
                if *phase == Phase::Steps {
                    match status {
                        StepStatus::Ok => st.done += 1,
                        _ => st.failed += 1,
                    }
                }
            }
            _ => {}
        }
        self.refresh_header(&st);
        let _ = multi.println(format!(
            "[{:>8.2}s] {}",
            rec.t,
            crate::color::mark_line(&text, self.color)
        ));
    }
}

/// Asks on the terminal; refuses when stdin is not one.
///
/// Nothing blocks while the question waits: it is printed above the live display (and
/// kept in its header), the answer is read on a thread of its own, so the other steps,
/// their progress lines, heartbeats and Ctrl-C go on. One question at a time.
#[async_trait]
impl Approver for Ui {
    async fn approve(&self, _run_id: &str, step: &str, prompt: &str) -> Result<Approval, String> {
        if !std::io::stdin().is_terminal() {
            return drover_plugin_api::NoApprover.approve("", step, prompt).await;
        }
        let _one_at_a_time = self.asking.lock().await;
        let question = format!("approval needed for `{step}`: {prompt} [y/N] ");
        match (&self.multi, &self.header) {
            (Some(m), Some(h)) => {
                let _ = m.println(format!("{question}(type y and Enter)"));
                h.set_message(format!("waiting for your approval of `{step}`: type y and Enter"));
            }
            _ => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(question.as_bytes());
                let _ = err.flush();
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("drover-approval-prompt".into())
            .spawn(move || {
                let mut line = String::new();
                let _ = std::io::stdin().lock().read_line(&mut line);
                let _ = tx.send(line);
            })
            .map_err(|e| format!("cannot ask at the terminal: {e}"))?;
        let answer = rx.await.unwrap_or_default();
        self.refresh_header(&self.state.lock().expect("ui lock"));
        let user = drover_plugin_api::current_user();
        if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            Ok(Approval {
                by: user,
                via: "terminal".into(),
                reason: None,
            })
        } else {
            Err(format!("`{step}` was not approved by {user} at the terminal"))
        }
    }
}
