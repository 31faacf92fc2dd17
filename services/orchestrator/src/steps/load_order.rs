//! Reads the order, its channel's terms and each item's cost and weight into the saga. Its
//! compensation ends the order: cancelled (what did not ship) when the customer or an operator
//! cancelled it or parts of it shipped, failed with the reason otherwise: the reference flow's
//! "cancel order".

use erp_proto::{inventory, order};

use crate::ctx::{Ctx, LineSnapshot, OrderSnapshot};
use crate::outcome::{Outcome, Reason, StepError, StepResult};
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: Some(|c, ctx| Box::pin(compensate(c, ctx))),
    summary: |_| String::new(),
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call { p, timeout: t, .. } = c;
    // The order id was put in the context when the saga was created.
    let order_id = ctx
        .order
        .as_ref()
        .map(|o| o.order_id.clone())
        .ok_or_else(|| StepError::missing("order id"))?;
    let o = p
        .ports
        .order
        .get_order(order::GetOrderRequest { order_id }, t)
        .await?
        .order
        .ok_or_else(|| StepError::Transient("GetOrder answered no order".into()))?;
    if o.status == order::OrderStatus::Cancelled as i32 {
        return Err(StepError::rejected(
            Reason::OrderCancelled,
            "the order was cancelled before fulfillment",
        ));
    }
    let channels = p
        .ports
        .order
        .list_channels(order::ListChannelsRequest {}, t)
        .await?
        .channels;
    let channel = channels.iter().find(|c| c.code == o.channel);
    let mut lines = Vec::with_capacity(o.lines.len());
    for l in &o.lines {
        let item = p
            .ports
            .inventory
            .get_item(inventory::GetItemRequest { sku: l.sku.clone() }, t)
            .await?
            .item
            .unwrap_or_default();
        lines.push(LineSnapshot {
            line_id: l.line_id.clone(),
            sku: l.sku.clone(),
            quantity: l.quantities.map_or(0, |q| q.ordered - q.cancelled),
            ordered: l.quantities.map_or(0, |q| q.ordered),
            tax_minor: l.tax.as_ref().map_or(0, |m| m.amount_minor),
            unit_price_minor: l.unit_price.as_ref().map_or(0, |p| p.amount_minor),
            unit_cost_minor: item.unit_cost.map_or(0, |c| c.amount_minor),
            weight_grams: item.weight_grams,
            tax_class: item.tax_class,
        });
    }
    let ship_to = o.ship_to.unwrap_or_default();
    let total_minor = o.total.map_or(0, |m| m.amount_minor);
    let tax_minor = o.tax_total.map_or(0, |m| m.amount_minor);
    let jurisdiction = match (ship_to.country_code.trim(), ship_to.region.trim()) {
        ("", _) => String::new(),
        (country, "") => country.to_uppercase(),
        (country, region) => format!("{}-{}", country.to_uppercase(), region.to_uppercase()),
    };
    ctx.order = Some(OrderSnapshot {
        order_id: o.order_id,
        channel: o.channel,
        currency: o.currency,
        total_minor,
        subtotal_minor: total_minor - tax_minor,
        tax_minor,
        jurisdiction,
        service_level: o.service_level,
        payment_method_token: o.payment_method_token,
        postal_code: ship_to.postal_code,
        country_code: ship_to.country_code,
        commission_bps: channel.map_or(0, |c| c.commission_bps),
        fixed_fee_minor: channel.map_or(0, |c| c.fixed_fee_minor),
        ship_complete: channel.is_some_and(|c| c.ship_complete),
        net_terms_days: channel.map_or(0, |c| c.net_terms_days),
        lines,
    });
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
    if order_id.is_empty() {
        // The order was never read.
        return Ok(());
    }
    // A cancelled order, or one with shipped parts, cancels what did not ship (the
    // units its stopped shipment held too); otherwise the order failed.
    let cancel = Reason::parse(&ctx.failure_reason).is_cancellation() || !ctx.shipments.is_empty();
    if cancel {
        let reason = format!("{}: {}", ctx.failure_reason, ctx.failure_detail);
        return p.cancel_on_order(k, order_id, vec![], reason, t).await;
    }
    p.ports
        .order
        .mark_failed(
            order::MarkFailedRequest {
                idempotency_key: k,
                order_id,
                reason: ctx.failure_reason.clone(),
                detail: ctx.failure_detail.clone(),
            },
            t,
        )
        .await?;
    Ok(())
}
