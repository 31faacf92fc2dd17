//! Waits for the warehouse's ship confirmation (SHIPPED naming the saga's fulfillment), until
//! the ship deadline; then the saga is parked for an operator.

use crate::ctx::Ctx;
use crate::outcome::{Outcome, StepResult};
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: None,
    summary: |_| String::new(),
};

/// The engine does the waiting (see `Step::is_wait`); reaching here means the wait is over.
async fn forward(_: Call<'_>, _: &mut Ctx) -> StepResult {
    Ok(Outcome::Next)
}
