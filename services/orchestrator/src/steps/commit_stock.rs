//! The pivot: the reserved units leave stock. Not undone; from here the saga only moves
//! forward.

use erp_proto::inventory;

use crate::ctx::Ctx;
use crate::outcome::{Outcome, StepError, StepResult};
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: None,
    summary: |_| String::new(),
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call {
        p,
        key: k,
        timeout: t,
        ..
    } = c;
    let o = ctx
        .order
        .as_ref()
        .ok_or_else(|| StepError::missing("order"))?;
    p.ports
        .inventory
        .commit_reservations(
            inventory::CommitReservationsRequest {
                idempotency_key: k,
                order_id: o.order_id.clone(),
                reservation_ids: ctx.reservation_ids.clone(),
            },
            t,
        )
        .await?;
    Ok(Outcome::Next)
}
