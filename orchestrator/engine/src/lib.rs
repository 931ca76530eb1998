//! drover's engine: planning runbooks over the CMDB dependency graph (and, as it grows,
//! executing plans with a durable journal, rollback, resume and measurements).

pub mod plan;

pub use plan::{Plan, PlanStep, plan};
