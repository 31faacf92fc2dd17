//! v3, the last step of a shipment: another round when lines are left; else the part of the
//! authorization no shipment captured (cancelled lines) is released. After the pivot: not
//! undone.

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
        p, key, timeout: t, ..
    } = c;
    let order_id = ctx
        .order
        .as_ref()
        .map(|o| o.order_id.clone())
        .ok_or_else(|| StepError::missing("order"))?;
    // A shipment that took everything the order still needed leaves nothing (a cancel can
    // only take more away); otherwise ask the order what is left.
    let covered = ctx.remaining.iter().all(|r| {
        ctx.shipments.last().is_some_and(|s| {
            s.lines
                .iter()
                .any(|p| p.line_id == r.line_id && p.quantity >= r.quantity)
        })
    });
    ctx.more_to_ship = !covered && !p.still_needed(&order_id, t).await?.is_empty();
    if ctx.more_to_ship || ctx.payment_id.is_empty() || ctx.captured_minor >= ctx.authorized_minor {
        return Ok(if ctx.more_to_ship {
            Outcome::AnotherShipment
        } else {
            Outcome::Next
        });
    }
    p.release_rest(key, ctx.payment_id.clone(), t).await?;
    Ok(Outcome::Next)
}
