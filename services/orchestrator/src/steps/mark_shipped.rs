//! Tells the order service the shipment left, with its tracking number; v3 records the
//! shipment in the saga. After the pivot: not undone.

use erp_proto::order;

use crate::ctx::{Ctx, Portion, ShipmentDone};
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
        .order
        .mark_shipped(
            order::MarkShippedRequest {
                idempotency_key: k,
                order_id: o.order_id.clone(),
                tracking_number: ctx.tracking_number.clone(),
            },
            t,
        )
        .await?;
    if ctx.parts {
        let lines = ctx
            .batch
            .iter()
            .map(|l| Portion {
                line_id: l.line_id.clone(),
                quantity: l.quantity,
            })
            .collect();
        let captured = ctx.shipping().map_or(0, |o| o.total_minor);
        ctx.shipments.push(ShipmentDone {
            site: ctx.location.clone(),
            fulfillment_id: ctx.fulfillment_id.clone(),
            tracking_number: ctx.tracking_number.clone(),
            lines,
            captured_minor: captured,
        });
        ctx.batch.clear();
    }
    Ok(Outcome::Next)
}
