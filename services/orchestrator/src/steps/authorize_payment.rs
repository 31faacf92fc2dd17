//! Authorizes the payment: what the order still needs (v3) or its total; a later shipment keeps
//! the authorization unless it expires before that shipment is captured (then it is renewed).
//! Orders on account authorize nothing. Undone by voiding what the authorization still holds.

use std::time::Duration;

use erp_proto::finance;
use tonic::Code;

use crate::ctx::Ctx;
use crate::outcome::{Outcome, StepError, StepResult};
use crate::participants::Participants;
use crate::steps::{Call, Handlers, money};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: Some(|c, ctx| Box::pin(compensate(c, ctx))),
    summary: |ctx| {
        if ctx.replaced_payment.is_empty() {
            format!("payment {}", ctx.payment_id)
        } else {
            format!(
                "payment {}: re-authorized before the authorization expired (payment {} released)",
                ctx.payment_id, ctx.replaced_payment
            )
        }
    },
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call {
        p,
        key: k,
        timeout: t,
        ..
    } = c;
    if !ctx.payment_id.is_empty() {
        // A re-route or a later shipment keeps the authorization, unless it would
        // expire before this shipment is captured (a long backorder): then it is
        // renewed for what the order still needs.
        ctx.replaced_payment.clear();
        let expiring = ctx.parts
            && ctx.authorization_expires_ms > 0
            && ctx.authorization_expires_ms - erp_runtime::time::now_ms() < p.reauthorize_within_ms;
        if expiring {
            reauthorize(p, &k, ctx, t).await?;
        }
        return Ok(Outcome::Next);
    }
    // On account: nothing to authorize; the shipment is invoiced.
    if ctx.order.as_ref().is_some_and(|o| o.net_terms_days > 0) {
        return Ok(Outcome::Next);
    }
    let o = ctx
        .order
        .as_ref()
        .ok_or_else(|| StepError::missing("order"))?;
    // v3 authorizes what the order still needs (less any cancelled lines); each
    // shipment captures its part.
    let amount = if ctx.parts {
        ctx.open_value()
    } else {
        o.total_minor
    };
    let authorized = p
        .ports
        .finance
        .authorize_payment(
            finance::AuthorizePaymentRequest {
                idempotency_key: k,
                order_id: o.order_id.clone(),
                channel: o.channel.clone(),
                amount: money(amount, &o.currency),
                payment_method_token: o.payment_method_token.clone(),
            },
            t,
        )
        .await?;
    let payment = authorized.payment.unwrap_or_default();
    ctx.payment_id = payment.payment_id;
    ctx.authorization_expires_ms = payment
        .expires_at
        .as_ref()
        .map_or(0, erp_runtime::time::from_timestamp);
    ctx.authorized_minor = amount;
    Ok(Outcome::Next)
}

/// Authorizes what the order still needs anew, then releases what the old authorization
/// still held (its captures stay). Safe to repeat: both calls carry keys of this round.
async fn reauthorize(
    p: &Participants,
    key: &str,
    ctx: &mut Ctx,
    t: Duration,
) -> Result<(), StepError> {
    let o = ctx
        .order
        .as_ref()
        .ok_or_else(|| StepError::missing("order"))?;
    let amount = ctx.open_value();
    let authorized = p
        .ports
        .finance
        .authorize_payment(
            finance::AuthorizePaymentRequest {
                idempotency_key: key.to_owned(),
                order_id: o.order_id.clone(),
                channel: o.channel.clone(),
                amount: money(amount, &o.currency),
                payment_method_token: o.payment_method_token.clone(),
            },
            t,
        )
        .await?
        .payment
        .unwrap_or_default();
    let old = ctx.payment_id.clone();
    p.release_rest(format!("{key}:release-previous"), old.clone(), t)
        .await?;
    ctx.replaced_payment = old;
    ctx.payment_id = authorized.payment_id;
    ctx.authorization_expires_ms = authorized
        .expires_at
        .as_ref()
        .map_or(0, erp_runtime::time::from_timestamp);
    ctx.authorized_minor = amount;
    ctx.captured_minor = 0;
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
    match p
        .ports
        .finance
        .void_payment(
            finance::VoidPaymentRequest {
                idempotency_key: k,
                payment_id: String::new(),
                order_id,
            },
            t,
        )
        .await
    {
        // Nothing was authorized: nothing to void.
        Err(s) if s.code() == Code::NotFound => {}
        // Shipments captured all of it: nothing is left to release.
        Err(s) if s.code() == Code::FailedPrecondition && ctx.captured_minor > 0 => {}
        other => {
            other?;
        }
    }
    Ok(())
}
