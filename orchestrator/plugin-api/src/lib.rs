//! The plugin API: what an action is, what it gets when it runs, and how it fails.
//!
//! Actions are sagas (after oxidecomputer/steno): [`Action::execute`] is idempotent because
//! after a crash it runs again, [`Action::compensate`] undoes a completed change where
//! that is possible, and the engine, never the plugin, owns retries, backoff and
//! timeouts. Every call gets a cancellation token and a deadline in its [`StepContext`];
//! a change that times out is [`ActionError::OutcomeUnknown`], never "did not happen".
//!
//! Each plugin crate registers its actions in a [`Registry`] with a parameter check
//! ([`ActionSpec::validate`]) that runs when files are loaded, without I/O. This crate
//! depends on `drover-model` only; plugins depend on it and never on the engine.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use drover_model::{ActionCatalog, ActionClass, Config, Issue, Located, Node, ParamCx, RunMode};
pub use tokio_util::sync::CancellationToken;

/// The load-time half of an action: its name, class and parameter check.
pub trait ActionSpec: Send + Sync {
    /// The name used in `uses:`, e.g. `postgres.promote`; persisted in journals.
    fn kind(&self) -> &str;
    fn class(&self) -> ActionClass;
    /// Whether a completed execution can be undone by [`Action::compensate`].
    fn compensable(&self) -> bool {
        false
    }
    /// Whether this use of the action (with these parameters) can be undone; e.g.
    /// `exec.run` only when it has an `undo` command.
    fn can_compensate(&self, _with: &Located<Node>) -> bool {
        self.compensable()
    }
    /// Checks `with:` without I/O: types, required parameters, names of target systems.
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue>;
}

/// An action that can run.
#[async_trait]
pub trait Action: ActionSpec {
    /// Read-only preview of what `execute` would do (for `plan` and dry runs).
    async fn plan(&self, cx: &StepContext) -> Result<Preview, ActionError>;
    /// Does the work. Must be idempotent: it runs again after a crash.
    async fn execute(&self, cx: &StepContext) -> Result<StepOutput, ActionError>;
    /// Undoes an execution that completed or may have acted (its outcome is unknown: it
    /// timed out, was cancelled, or drover crashed while it ran). `done` is what the
    /// execution returned, when it completed; [`StepContext::checkpoint`] holds the prior
    /// state it journaled before acting ([`StepContext::save_checkpoint`]), in both cases.
    async fn compensate(&self, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError>;
    /// Called for each completed step of a run that a new process resumes, so that an
    /// action with background work for the rest of the run (a heartbeat) restarts it.
    async fn resume(&self, _cx: &StepContext, _done: &StepOutput) -> Result<(), ActionError> {
        Ok(())
    }
}

/// What an action may know about the rest of its run.
pub trait RunFacts: Send + Sync {
    /// The steps of this run that completed with action `kind`, in order: (step id, output).
    fn completed(&self, kind: &str) -> Vec<(String, StepOutput)>;
}

/// Journals a step's checkpoint: the prior state a change needs to undo itself.
#[async_trait]
pub trait CheckpointSink: Send + Sync {
    /// Appends the checkpoint to the run's journal; when this returns `Ok` it survives a
    /// crash of drover.
    async fn save(&self, data: serde_json::Value) -> Result<(), ActionError>;
    /// Appends the step's progress to the run's journal; when this returns `Ok` it
    /// survives a crash of drover.
    async fn save_progress(&self, data: serde_json::Value) -> Result<(), ActionError>;
}

/// Keeps no checkpoints: for actions run outside a run (tests, previews).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCheckpoints;

#[async_trait]
impl CheckpointSink for NoCheckpoints {
    async fn save(&self, _data: serde_json::Value) -> Result<(), ActionError> {
        Ok(())
    }
    async fn save_progress(&self, _data: serde_json::Value) -> Result<(), ActionError> {
        Ok(())
    }
}

/// No facts: for actions run outside a run (tests, previews).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFacts;

impl RunFacts for NoFacts {
    fn completed(&self, _kind: &str) -> Vec<(String, StepOutput)> {
        Vec::new()
    }
}

/// A background task and its name.
type NamedTask = (String, tokio::task::JoinHandle<()>);

/// Work that lasts for the rest of a run (a heartbeat writer). The engine cancels
/// [`RunScope::ending`] when the run ends, is interrupted or fails, and waits for the
/// tasks to finish.
#[derive(Clone, Default)]
pub struct RunScope {
    ending: CancellationToken,
    tasks: Arc<std::sync::Mutex<Vec<NamedTask>>>,
}

impl fmt::Debug for RunScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunScope")
            .field("ending", &self.ending.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl RunScope {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled when the run ends: background tasks stop on it.
    pub fn ending(&self) -> CancellationToken {
        self.ending.clone()
    }

    /// Runs `task` in the background until the run ends (it should watch [`Self::ending`]).
    pub fn spawn(&self, name: impl Into<String>, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.into(), handle));
    }

    /// Ends the run's background work: cancels and waits up to `grace` for each task
    /// (then aborts it). Returns the names of tasks that had to be aborted.
    pub async fn close(&self, grace: Duration) -> Vec<String> {
        self.ending.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let mut aborted = Vec::new();
        for (name, mut handle) in tasks {
            if tokio::time::timeout(grace, &mut handle).await.is_err() {
                handle.abort();
                aborted.push(name);
            }
        }
        aborted
    }
}

/// How an attempt failed. The engine decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ActionError {
    /// Worth another attempt (connection refused, not ready yet).
    Retryable(String),
    /// Will not get better by retrying (bad credentials, refused by a safety gate).
    Permanent(String),
    /// A change may or may not have happened (timeout, lost connection mid-call).
    OutcomeUnknown(String),
    /// Stopped because the run is stopping.
    Cancelled,
    /// A check found problems and says which as data (the backups that are corrupt,
    /// stale, missing or unverifiable), so that they can be followed up one by one.
    /// Retried like `Retryable` when `retryable`, final like `Permanent` otherwise.
    Found {
        message: String,
        retryable: bool,
        data: serde_json::Value,
    },
}

impl ActionError {
    /// The structured findings of a failure, when it has some.
    pub fn data(&self) -> Option<&serde_json::Value> {
        match self {
            ActionError::Found { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The same error with its message rewritten (a note added, a secret blanked).
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> ActionError {
        match self {
            ActionError::Retryable(m) => ActionError::Retryable(f(m)),
            ActionError::Permanent(m) => ActionError::Permanent(f(m)),
            ActionError::OutcomeUnknown(m) => ActionError::OutcomeUnknown(f(m)),
            ActionError::Cancelled => ActionError::Cancelled,
            ActionError::Found {
                message,
                retryable,
                data,
            } => ActionError::Found {
                message: f(message),
                retryable,
                data,
            },
        }
    }
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionError::Retryable(m) => f.write_str(m),
            ActionError::Permanent(m) => f.write_str(m),
            ActionError::OutcomeUnknown(m) => write!(f, "outcome unknown: {m}"),
            ActionError::Cancelled => f.write_str("cancelled"),
            ActionError::Found { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for ActionError {}

/// What a successful execution reports; recorded in the journal.
///
/// Measurements go under `data.measurements` (e.g. `{"rpo_s": 0.8}`): the engine takes
/// a run's RPO achieved from the `rpo_s` of its steps and checks (the largest one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct StepOutput {
    /// One line for people.
    pub summary: String,
    /// Structured results (measurements, captured output), recorded as JSON.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl StepOutput {
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            data: serde_json::Value::Null,
        }
    }
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

/// What `plan` says an execution would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Preview {
    pub summary: String,
}

/// Everything an action gets for one attempt.
#[derive(Clone)]
pub struct StepContext {
    pub run_id: String,
    /// The step id, or the check name.
    pub step_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub mode: RunMode,
    pub params: Located<Node>,
    pub config: Arc<Config>,
    /// Cancelled when the run stops (Ctrl-C, shutdown) or the attempt times out.
    pub cancel: CancellationToken,
    /// When this attempt's time is up.
    pub deadline: Instant,
    /// Gates: whether `--yes` was given for this run (approves every gate).
    pub approved: bool,
    /// Asks a person to release a `manual.approve` gate.
    pub approver: Arc<dyn Approver>,
    /// What happened earlier in this run.
    pub facts: Arc<dyn RunFacts>,
    /// Background work for the rest of the run.
    pub scope: RunScope,
    /// The runbook declares its `from` site lost: a fence cannot be observed (recorded).
    pub assume_lost: bool,
    /// `--force-lag`: a lag gate over its limit warns instead of refusing (recorded).
    pub force_lag: bool,
    /// The checkpoint this step journaled in an earlier attempt (the first one saved),
    /// also after a crash; `None` when it has none yet.
    pub checkpoint: Option<serde_json::Value>,
    /// The progress an earlier attempt of this step journaled last
    /// ([`StepContext::save_progress`]), also after a crash; `None` when there is none.
    pub progress: Option<serde_json::Value>,
    /// Where [`StepContext::save_checkpoint`] and [`StepContext::save_progress`] journal to.
    pub checkpoints: Arc<dyn CheckpointSink>,
}

/// Who released a gate, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Approval {
    pub by: String,
    /// `--yes`, `terminal`, `api`.
    pub via: String,
    /// Why (the API requires one).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Releases `manual.approve` gates: a terminal prompt in the CLI, the API in the daemon.
#[async_trait]
pub trait Approver: Send + Sync {
    /// Waits for a decision; `Err` carries why the gate stays closed.
    async fn approve(&self, run_id: &str, step: &str, prompt: &str) -> Result<Approval, String>;
}

/// An approver that never approves: for runs with nobody to ask.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoApprover;

#[async_trait]
impl Approver for NoApprover {
    async fn approve(&self, _run_id: &str, step: &str, _prompt: &str) -> Result<Approval, String> {
        Err(format!(
            "step `{step}` needs an approval and nobody can give it here: rerun with --yes, or approve it through the API"
        ))
    }
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("run_id", &self.run_id)
            .field("step_id", &self.step_id)
            .field("attempt", &self.attempt)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl StepContext {
    /// Reads the typed parameters (already validated at load time).
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, ActionError> {
        drover_model::from_node(&self.params).map_err(|e| ActionError::Permanent(format!("invalid parameters: {e}")))
    }

    /// Journals the prior state this change needs to undo itself, before it acts.
    ///
    /// Call it before the first side effect of `execute`. The first checkpoint of a step
    /// wins: when an earlier attempt already saved one (a retry after a timeout, a re-run
    /// after a crash), nothing is written and that earlier checkpoint is returned, because
    /// the state read now may already be the changed one. The returned value is what
    /// [`Action::compensate`] will find in [`StepContext::checkpoint`].
    pub async fn save_checkpoint(&self, data: serde_json::Value) -> Result<serde_json::Value, ActionError> {
        if let Some(prior) = &self.checkpoint {
            return Ok(prior.clone());
        }
        self.checkpoints.save(data.clone()).await?;
        Ok(data)
    }

    /// Journals how far this attempt got, for a later attempt (a re-run after a crash
    /// finds the latest in [`StepContext::progress`]). Unlike a checkpoint, the latest
    /// wins; `Value::Null` withdraws an earlier one. Not given to `compensate`.
    pub async fn save_progress(&self, data: serde_json::Value) -> Result<(), ActionError> {
        self.checkpoints.save_progress(data).await
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Reads typed parameters at load time, turning errors into located issues.
pub fn parse_params<T: DeserializeOwned>(with: &Located<Node>) -> Result<T, Vec<Issue>> {
    drover_model::from_node(with).map_err(|e| vec![e.into_issue(with.loc)])
}

/// The actions of this build: the explicit registry the binary fills, plugin by plugin.
#[derive(Default, Clone)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

#[derive(Clone)]
enum Entry {
    /// Known and validated, but this build cannot run it.
    Spec(Arc<dyn ActionSpec>),
    Runnable(Arc<dyn Action>),
}

impl Entry {
    fn spec(&self) -> &dyn ActionSpec {
        match self {
            Entry::Spec(s) => s.as_ref(),
            Entry::Runnable(a) => a.as_ref(),
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an action whose parameters can be checked but that cannot run in this build.
    pub fn add_spec(&mut self, spec: Arc<dyn ActionSpec>) {
        self.entries.insert(spec.kind().to_owned(), Entry::Spec(spec));
    }

    /// Registers a runnable action.
    pub fn add(&mut self, action: Arc<dyn Action>) {
        self.entries.insert(action.kind().to_owned(), Entry::Runnable(action));
    }

    pub fn spec(&self, kind: &str) -> Option<&dyn ActionSpec> {
        self.entries.get(kind).map(Entry::spec)
    }

    /// The runnable action, or `None` when unknown or not runnable in this build.
    pub fn action(&self, kind: &str) -> Option<Arc<dyn Action>> {
        match self.entries.get(kind)? {
            Entry::Runnable(a) => Some(a.clone()),
            Entry::Spec(_) => None,
        }
    }

    /// Whether `kind` is registered and can run.
    pub fn is_runnable(&self, kind: &str) -> bool {
        matches!(self.entries.get(kind), Some(Entry::Runnable(_)))
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

impl ActionCatalog for Registry {
    fn class(&self, uses: &str) -> Option<ActionClass> {
        self.spec(uses).map(ActionSpec::class)
    }

    fn check_params(&self, uses: &str, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        match self.spec(uses) {
            Some(spec) => {
                if !matches!(with.value, Node::Map(_)) {
                    return vec![Issue::new(
                        with.loc,
                        format!("`with` must be a mapping of parameters, found {}", with.describe()),
                    )];
                }
                spec.validate(with, cx)
            }
            None => Vec::new(),
        }
    }

    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}

/// A parameter-checked action described by a typed parameter struct `P` plus a check of
/// the names it refers to. Used by plugins to declare actions tersely.
pub struct TypedSpec<P> {
    pub kind: &'static str,
    pub class: ActionClass,
    pub compensable: bool,
    /// Checks beyond the types: referenced target systems, value ranges.
    pub check: fn(&P, &ParamCx<'_>) -> Vec<Issue>,
}

impl<P> fmt::Debug for TypedSpec<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind)
    }
}

impl<P: DeserializeOwned + Send + Sync> ActionSpec for TypedSpec<P> {
    fn kind(&self) -> &str {
        self.kind
    }
    fn class(&self) -> ActionClass {
        self.class
    }
    fn compensable(&self) -> bool {
        self.compensable
    }
    fn validate(&self, with: &Located<Node>, cx: &ParamCx<'_>) -> Vec<Issue> {
        match parse_params::<P>(with) {
            Ok(p) => (self.check)(&p, cx),
            Err(issues) => issues,
        }
    }
}

/// Collects the errors of several reference checks.
pub fn issues(checks: impl IntoIterator<Item = Result<(), Issue>>) -> Vec<Issue> {
    checks.into_iter().filter_map(Result::err).collect()
}

/// The operating-system user running drover: `$USER`, `$LOGNAME`, else the name of the
/// process's uid in `/etc/passwd`, else `uid N`.
pub fn current_user() -> String {
    if let Some(u) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    {
        return u;
    }
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    });
    let Some(uid) = uid else { return "unknown".into() };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines()
                .find(|l| l.split(':').nth(2) == Some(uid.as_str()))
                .and_then(|l| l.split(':').next().map(str::to_owned))
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}
