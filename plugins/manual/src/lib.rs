//! Gates that wait for people or for time: `manual.approve` and `manual.wait`.

use std::sync::Arc;

use drover_model::{Dur, Issue, Located};
use drover_plugin_api::{ActionClass, Registry, TypedSpec};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveParams {
    /// The question put to the operator.
    pub prompt: Located<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    pub duration: Dur,
}

/// Registers `manual.approve` and `manual.wait`.
pub fn register(reg: &mut Registry) {
    reg.add_spec(Arc::new(TypedSpec::<ApproveParams> {
        kind: "manual.approve",
        class: ActionClass::Gate,
        compensable: false,
        check: |p, _| {
            if p.prompt.trim().is_empty() {
                vec![Issue::new(
                    p.prompt.loc,
                    "manual.approve needs a non-empty prompt",
                )]
            } else {
                Vec::new()
            }
        },
    }));
    reg.add_spec(Arc::new(TypedSpec::<WaitParams> {
        kind: "manual.wait",
        class: ActionClass::Gate,
        compensable: false,
        check: |_, _| Vec::new(),
    }));
}
