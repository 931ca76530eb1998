//! Preflight and verify checks: run concurrently, each polled until it passes or its
//! `within` runs out.

use std::sync::Arc;
use std::time::Duration;

use drover_model::Check;
use drover_model::runbook::DEFAULT_TIMEOUT;
use tokio::task::JoinSet;

use super::attempt::{self, Attempts, CheckRecords, End, Work};
use super::{Ctx, EngineError};
use crate::journal::Phase;

pub(crate) enum ChecksEnd {
    Passed,
    Failed(String),
    Cancelled,
}

/// Runs `checks` concurrently; all must pass.
pub(crate) async fn run_checks(ctx: &Arc<Ctx>, phase: Phase, checks: &[&Check]) -> Result<ChecksEnd, EngineError> {
    let mut set = JoinSet::new();
    for c in checks {
        let ctx = ctx.clone();
        let c = (*c).clone();
        set.spawn(async move {
            let name = c.name.value.clone();
            (name, run_check(&ctx, phase, &c).await)
        });
    }
    let mut failures = Vec::new();
    let mut cancelled = false;
    let mut fatal = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            // `Done` only comes `at_boundary`, which checks are not.
            Ok((_, Ok(End::Ok | End::Done(_)))) => {}
            Ok((_, Ok(End::Cancelled))) => cancelled = true,
            Ok((name, Ok(End::Failed(e)))) => failures.push(format!("`{name}`: {e}")),
            Ok((_, Err(e))) => {
                ctx.abort.cancel();
                fatal.get_or_insert(e);
            }
            Err(e) => failures.push(format!("a check's driver crashed: {e}")),
        }
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    Ok(if !failures.is_empty() {
        ChecksEnd::Failed(failures.join("; "))
    } else if cancelled {
        ChecksEnd::Cancelled
    } else {
        ChecksEnd::Passed
    })
}

async fn run_check(ctx: &Arc<Ctx>, phase: Phase, c: &Check) -> Result<End, EngineError> {
    let action = ctx.engine.action(&c.uses)?;
    let within = c.within.map(|d| d.0);
    let rec = CheckRecords {
        phase,
        name: c.name.value.clone(),
        within,
    };
    attempt::drive(
        ctx,
        Attempts {
            phase,
            id: &c.name,
            action,
            params: &c.with,
            timeout: Some(c.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0)),
            retries: 0,
            within,
            interval: c.interval.map_or(Duration::from_secs(1), |d| d.0),
            prior_attempts: 0,
            work: Work::Execute,
            halts: false,
            stop_cancels_wait: true,
            at_boundary: false,
        },
        &rec,
    )
    .await
}
