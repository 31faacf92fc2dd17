//! Asks the chosen warehouse to pick, pack and ship the shipment; undone by cancelling the
//! fulfillment (a re-route undoes it too: it is bound to the site).

use erp_proto::warehouse;

use crate::ctx::Ctx;
use crate::outcome::{Outcome, StepError, StepResult};
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: Some(|c, ctx| Box::pin(compensate(c, ctx))),
    summary: |ctx| format!("fulfillment {}", ctx.fulfillment_id),
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call {
        p,
        saga_id,
        key: k,
        timeout: t,
        ..
    } = c;
    let o = &ctx.shipping().ok_or_else(|| StepError::missing("order"))?;
    let f = p
        .ports
        .warehouse
        .create_fulfillment(
            warehouse::CreateFulfillmentRequest {
                idempotency_key: k,
                order_id: o.order_id.clone(),
                site: ctx.location.clone(),
                lines: o
                    .lines
                    .iter()
                    .map(|l| warehouse::FulfillmentLine {
                        order_line_id: l.line_id.clone(),
                        sku: l.sku.clone(),
                        quantity: l.quantity,
                    })
                    .collect(),
                service_level: o.service_level.clone(),
                priority: if o.service_level == "express" { 1 } else { 5 },
                saga_id: saga_id.to_owned(),
            },
            t,
        )
        .await?;
    ctx.fulfillment_id = f.fulfillment.map(|f| f.fulfillment_id).unwrap_or_default();
    Ok(Outcome::Next)
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
        .warehouse
        .cancel_fulfillment(
            warehouse::CancelFulfillmentRequest {
                idempotency_key: k,
                fulfillment_id: String::new(),
                order_id,
                reason: ctx.failure_reason.clone(),
            },
            t,
        )
        .await?;
    Ok(())
}
