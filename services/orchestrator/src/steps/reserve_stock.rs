//! Holds the shipment's units at the chosen warehouse, all or nothing; undone by releasing
//! them (a re-route undoes it too: it is bound to the site).

use erp_proto::inventory;

use crate::ctx::Ctx;
use crate::outcome::{Outcome, Reason, StepError, StepResult};
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: Some(|c, ctx| Box::pin(compensate(c, ctx))),
    summary: |ctx| format!("{} reservation(s)", ctx.reservation_ids.len()),
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    match reserve(c, ctx).await {
        // Another order took the stock between routing and reserving: plan this shipment
        // again (v3) rather than give the order up.
        Err(StepError::Rejected {
            reason: Reason::InsufficientStock,
            detail,
        }) if ctx.parts && !ctx.rerouting => Ok(Outcome::TakenMeanwhile(format!(
            "INSUFFICIENT_STOCK: {detail}; taken meanwhile, planning again"
        ))),
        other => other.map(|()| Outcome::Next),
    }
}

async fn reserve(c: Call<'_>, ctx: &mut Ctx) -> Result<(), StepError> {
    let Call {
        p,
        key: k,
        timeout: t,
        ..
    } = c;
    let o = &ctx.shipping().ok_or_else(|| StepError::missing("order"))?;
    let r = p
        .ports
        .inventory
        .reserve_stock(
            inventory::ReserveStockRequest {
                idempotency_key: k,
                order_id: o.order_id.clone(),
                lines: o
                    .lines
                    .iter()
                    .map(|l| inventory::ReserveLine {
                        order_line_id: l.line_id.clone(),
                        sku: l.sku.clone(),
                        location: ctx.location.clone(),
                        quantity: l.quantity,
                    })
                    .collect(),
                mode: inventory::ReserveMode::AllOrNothing as i32,
                expires_at: None,
            },
            t,
        )
        .await?;
    ctx.reservation_ids = r
        .reservations
        .into_iter()
        .map(|r| r.reservation_id)
        .collect();
    Ok(())
}

async fn compensate(c: Call<'_>, ctx: &Ctx) -> Result<(), StepError> {
    let Call {
        p,
        key: k,
        timeout: t,
        ..
    } = c;
    let order_id = ctx.order_id();
    p.ports
        .inventory
        .release_reservations(
            inventory::ReleaseReservationsRequest {
                idempotency_key: k,
                order_id,
                reservation_ids: vec![],
            },
            t,
        )
        .await?;
    Ok(())
}
