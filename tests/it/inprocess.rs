//! The engine in-process, with real SQLite and real child processes, and actions that
//! only a test can provide: one that panics, one with background work that counts its
//! restarts. Also several runs in one process through their handles (the daemon's way).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use drover_engine::journal::{Phase, RunOptions, StepStatus};
use drover_engine::{Engine, Outcome, Quiet, RunState, StartRequest, Store};
use drover_model::{ActionClass, Issue, Located, Node, ParamCx, RunMode, Workspace};
use drover_plugin_api::{
    Action, ActionError, ActionSpec, CancellationToken, NoApprover, Preview, Registry, StepContext, StepOutput,
};

use crate::engine::CONFIG;
use crate::support::Fixture;

/// `test.panic`: panics in `execute`; its compensation writes `undone` to `file`.
struct Panicky;

impl ActionSpec for Panicky {
    fn kind(&self) -> &str {
        "test.panic"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Change
    }
    fn compensable(&self) -> bool {
        true
    }
    fn validate(&self, _: &Located<Node>, _: &ParamCx<'_>) -> Vec<Issue> {
        Vec::new()
    }
}

#[async_trait]
impl Action for Panicky {
    async fn plan(&self, _: &StepContext) -> Result<Preview, ActionError> {
        Ok(Preview::default())
    }
    async fn execute(&self, _: &StepContext) -> Result<StepOutput, ActionError> {
        panic!("the plugin fell over");
    }
    async fn compensate(&self, cx: &StepContext, done: Option<&StepOutput>) -> Result<(), ActionError> {
        assert!(done.is_none(), "a panicked step has no output");
        #[derive(serde::Deserialize)]
        struct P {
            file: String,
        }
        let p: P = cx.params()?;
        std::fs::write(p.file, "undone").unwrap();
        Ok(())
    }
}

/// `test.bg`: a change with background work for the rest of the run; counts how often
/// a resumed run restarts it.
struct Background(Arc<AtomicU32>);

impl ActionSpec for Background {
    fn kind(&self) -> &str {
        "test.bg"
    }
    fn class(&self) -> ActionClass {
        ActionClass::Change
    }
    fn compensable(&self) -> bool {
        true
    }
    fn validate(&self, _: &Located<Node>, _: &ParamCx<'_>) -> Vec<Issue> {
        Vec::new()
    }
}

#[async_trait]
impl Action for Background {
    async fn plan(&self, _: &StepContext) -> Result<Preview, ActionError> {
        Ok(Preview::default())
    }
    async fn execute(&self, _: &StepContext) -> Result<StepOutput, ActionError> {
        Ok(StepOutput::new("background work started"))
    }
    async fn compensate(&self, _: &StepContext, _: Option<&StepOutput>) -> Result<(), ActionError> {
        Ok(())
    }
    async fn resume(&self, _: &StepContext, _: &StepOutput) -> Result<(), ActionError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Lab {
    fx: Fixture,
    ws: Workspace,
    registry: Arc<Registry>,
    store: Store,
}

impl Lab {
    fn new(runbooks: &[(&str, &str)], restarts: Arc<AtomicU32>) -> Lab {
        let fx = Fixture::empty();
        fx.write("drover.yaml", CONFIG);
        fx.write(
            "cmdb.yaml",
            "items:\n  - {id: svc, kind: business_service}\n  - {id: other, kind: business_service}\n",
        );
        let dir = fx.root().display().to_string();
        for (name, text) in runbooks {
            fx.write(&format!("runbooks/{name}.yaml"), &text.replace("{DIR}", &dir));
        }
        let mut registry = drover::registry::build(None);
        registry.add(Arc::new(Panicky));
        registry.add(Arc::new(Background(restarts)));
        let mut ws = Workspace::load(&fx.config(), &[]);
        ws.validate(&registry);
        assert!(ws.diagnostics.is_empty(), "{:?}", ws.diagnostics);
        let store = Store::open(&fx.path("state/state.db")).unwrap();
        Lab {
            fx,
            ws,
            registry: Arc::new(registry),
            store,
        }
    }

    fn engine(&self) -> Engine {
        Engine {
            store: self.store.clone(),
            registry: self.registry.clone(),
            config: Arc::new(self.ws.config.clone().unwrap()),
            observer: Arc::new(Quiet),
            approver: Arc::new(NoApprover),
            retry_backoff: Duration::from_millis(50),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            signer: None,
            secrets: Arc::new(Vec::new()),
        }
    }

    fn request(&self, name: &str, mode: RunMode) -> StartRequest {
        let file = self
            .ws
            .runbooks
            .iter()
            .find(|r| r.runbook.as_ref().is_some_and(|rb| rb.name.value == name))
            .unwrap();
        StartRequest {
            runbook: file.runbook.clone().unwrap(),
            runbook_source: self.ws.sources[&file.path].clone(),
            runbook_path: file.path.clone(),
            cmdb: self.ws.cmdb.clone().unwrap(),
            mode,
            declared_at: None,
            options: RunOptions {
                max_parallel: 8,
                requested_by: "test".into(),
                ..Default::default()
            },
        }
    }
}

fn status(st: &RunState, phase: Phase, id: &str) -> Option<StepStatus> {
    st.step(phase, id).and_then(|s| s.status)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_plugin_panic_is_its_steps_unknown_outcome_and_its_siblings_finish() {
    let lab = Lab::new(
        &[(
            "rb",
            r#"name: rb
service: svc
steps:
  - {id: bad, uses: test.panic, with: {file: "{DIR}/undone"}}
  - {id: side, uses: exec.run, with: {command: [sh, -c, "sleep 0.5; echo side >> {DIR}/log"]}}
"#,
        )],
        Arc::default(),
    );
    let undone = lab.fx.path("undone");
    let req = lab.request("rb", RunMode::Drill);
    let engine = lab.engine();
    let st = runtime()
        .block_on(async {
            let handle = engine.start(req).await?;
            handle.wait().await
        })
        .expect("the run ends with an outcome, not an error");
    let finished = st.finished.as_ref().unwrap();
    assert_eq!(finished.outcome, Outcome::Failed, "{}", finished.reason);
    assert_eq!(status(&st, Phase::Steps, "bad"), Some(StepStatus::OutcomeUnknown));
    assert!(
        st.step(Phase::Steps, "bad")
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("panicked"),
        "{:?}",
        st.step(Phase::Steps, "bad")
    );
    // The sibling was not cut off mid-way: it ran to its journaled end.
    assert_eq!(status(&st, Phase::Steps, "side"), Some(StepStatus::Ok));
    assert_eq!(
        std::fs::read_to_string(&undone).unwrap(),
        "undone",
        "the panicked step was undone"
    );
}

#[test]
fn one_process_runs_several_runs_through_their_handles() {
    let lab = Lab::new(
        &[
            (
                "slow",
                "name: slow\nservice: svc\nsteps:\n  - {id: wait, uses: exec.run, with: {command: [sleep, \"30\"]}}\n",
            ),
            (
                "quick",
                "name: quick\nservice: other\nsteps:\n  - {id: a, uses: exec.run, with: {command: [\"true\"]}}\n",
            ),
        ],
        Arc::default(),
    );
    let engine = lab.engine();
    runtime().block_on(async {
        let slow = engine.start(lab.request("slow", RunMode::Drill)).await.unwrap();
        let quick = engine.start(lab.request("quick", RunMode::Drill)).await.unwrap();
        assert_ne!(slow.id, quick.id);
        let mut events = quick.events();
        let quick_state = quick.wait().await.unwrap();
        assert_eq!(quick_state.finished.unwrap().outcome, Outcome::Passed);
        let mut kinds = Vec::new();
        while let Ok(rec) = events.try_recv() {
            kinds.push(rec.event.kind());
        }
        assert!(kinds.contains(&"run_finished"), "{kinds:?}");
        // The slow run is still going; its own abort ends it, interrupted.
        assert!(drover_engine::is_live(&lab.store, &slow.id));
        slow.abort.cancel();
        let slow_state = slow.wait().await.unwrap();
        assert!(slow_state.finished.is_none());
        assert!(slow_state.interrupted.is_some());
        assert!(!engine.abort.is_cancelled(), "only that run was aborted");
    });
}

#[test]
fn resume_restarts_background_work_only_for_steps_not_undone() {
    let restarts = Arc::new(AtomicU32::new(0));
    let lab = Lab::new(
        &[
            (
                "undone",
                r#"name: undone
service: svc
steps:
  - {id: bg, uses: test.bg, with: {}}
  - {id: boom, uses: exec.run, with: {command: ["false"]}, needs: [bg]}
rollback:
  - {id: r, uses: exec.run, with: {command: [sh, -c, "while [ ! -f {DIR}/go ]; do sleep 0.02; done"]}}
"#,
            ),
            (
                "kept",
                r#"name: kept
service: other
steps:
  - {id: bg, uses: test.bg, with: {}}
  - {id: next, uses: exec.run, with: {command: [sh, -c, "while [ ! -f {DIR}/go ]; do sleep 0.02; done"]}, needs: [bg]}
"#,
            ),
        ],
        restarts.clone(),
    );
    let rt = runtime();
    for (name, expected) in [("undone", 0), ("kept", 1)] {
        restarts.store(0, Ordering::SeqCst);
        let _ = std::fs::remove_file(lab.fx.path("go"));
        let engine = lab.engine();
        let id = rt.block_on(async {
            let h = engine.start(lab.request(name, RunMode::Drill)).await.unwrap();
            let id = h.id.clone();
            // Wait until the last thing is in flight (the rollback, or `next`), then stop.
            loop {
                let st = RunState::from_records(&id, &drover_engine::journal::load_records(&lab.store, &id).unwrap());
                if st.steps.iter().any(|s| s.in_flight && (s.id == "r" || s.id == "next")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            h.abort.cancel();
            assert!(h.wait().await.unwrap().finished.is_none());
            id
        });
        lab.fx.write("go", "");
        let engine = lab.engine();
        let st = rt.block_on(async { engine.resume(&id, false).await.unwrap().wait().await.unwrap() });
        assert!(st.finished.is_some(), "{name}");
        assert_eq!(
            restarts.load(Ordering::SeqCst),
            expected,
            "{name}: background work restarted {} times",
            restarts.load(Ordering::SeqCst)
        );
    }
}
