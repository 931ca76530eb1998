//! drover's engine: planning runbooks over the CMDB dependency graph, and running the
//! plans with a durable journal, rollback, resume and RTO measurement.

pub mod actions;
pub mod change;
pub mod coverage;
pub mod crash;
pub mod evidence;
pub mod journal;
pub mod plan;
pub mod redact;
pub mod run;
pub mod state;
pub mod store;
pub mod view;

pub use journal::{Event, Journal, Observer, Outcome, Phase, Quiet, Record, RunOptions, StepStatus};
pub use plan::{Plan, PlanStep, plan};
pub use run::{Engine, EngineError, RunHandle, StartRequest, is_live, rpo_achieved};
pub use state::RunState;
pub use store::{Lease, Member, RunRow, Store, StoreError, Writer};
