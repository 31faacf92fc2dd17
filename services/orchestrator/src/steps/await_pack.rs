//! v2: waits for the packer's carton (its weight and size are what the label is bought for).
//! The engine completes the wait when the warehouse's PACKED signal names the saga's
//! fulfillment; until the ship deadline, then the saga is parked.

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
