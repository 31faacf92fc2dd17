//! Captures the payment: this shipment's part (v3) or the whole authorization. Orders on
//! account capture nothing (the shipment is invoiced). After the pivot: not undone.

use erp_proto::finance;

use crate::ctx::Ctx;
use crate::outcome::{Outcome, Reason, StepError, StepResult};
use crate::steps::{Call, Handlers, money};

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
    // On account: nothing was authorized; the shipment is invoiced.
    if ctx.order.as_ref().is_some_and(|o| o.net_terms_days > 0) {
        return Ok(Outcome::Next);
    }
    // v3: this shipment's part; the authorization stays open for the next ones.
    let part = if ctx.parts {
        let o = ctx.shipping().ok_or_else(|| StepError::missing("order"))?;
        Some((o.total_minor, o.currency))
    } else {
        None
    };
    if part.as_ref().is_some_and(|(amount, _)| *amount == 0) {
        return Ok(Outcome::Next);
    }
    p.ports
        .finance
        .capture_payment(
            finance::CapturePaymentRequest {
                idempotency_key: k,
                payment_id: ctx.payment_id.clone(),
                amount: part.as_ref().and_then(|(a, c)| money(*a, c)),
                more_to_follow: part.is_some(),
            },
            t,
        )
        .await?;
    if let Some((amount, _)) = part {
        // Captures never exceed the authorization (finance refuses it), so this cannot overflow
        // unless the context is corrupt: then the saga parks rather than wraps.
        ctx.captured_minor = ctx.captured_minor.checked_add(amount).ok_or_else(|| {
            StepError::rejected(Reason::SagaState, "the captured total is out of range")
        })?;
    }
    Ok(Outcome::Next)
}
