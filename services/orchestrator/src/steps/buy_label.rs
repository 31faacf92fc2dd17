//! Buys the label of the quoted service for the packed carton; undone by voiding it (a
//! re-route undoes it too: it is bound to the site).

use erp_proto::carrier;

use crate::ctx::Ctx;
use crate::outcome::{Outcome, StepError, StepResult};
use crate::steps::{Call, Handlers, destination, parcel};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: Some(|c, ctx| Box::pin(compensate(c, ctx))),
    summary: |ctx| {
        format!(
            "tracking {} cost {}",
            ctx.tracking_number, ctx.label_cost_minor
        )
    },
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call {
        p,
        key: k,
        timeout: t,
        ..
    } = c;
    let o = &ctx.shipping().ok_or_else(|| StepError::missing("order"))?;
    let s = p
        .ports
        .carrier
        .buy_label(
            carrier::BuyLabelRequest {
                idempotency_key: k,
                order_id: o.order_id.clone(),
                fulfillment_id: ctx.fulfillment_id.clone(),
                carrier: ctx.carrier.clone(),
                service: ctx.service.clone(),
                origin_site: ctx.location.clone(),
                origin_region: ctx.origin_zone(),
                destination: Some(destination(o)),
                parcel: Some(parcel(o, ctx.parcel.as_ref())),
            },
            t,
        )
        .await?
        .shipment
        .ok_or_else(|| StepError::Transient("BuyLabel answered no shipment".into()))?;
    ctx.shipment_id = s.shipment_id;
    ctx.tracking_number = s.tracking_number;
    ctx.label_cost_minor = s.cost.map_or(0, |c| c.amount_minor);
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
        .carrier
        .void_label(
            carrier::VoidLabelRequest {
                idempotency_key: k,
                shipment_id: String::new(),
                order_id,
            },
            t,
        )
        .await?;
    Ok(())
}
