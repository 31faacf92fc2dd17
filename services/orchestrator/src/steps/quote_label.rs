//! Rate shopping: the cheapest carrier service that meets the order's service level, for the
//! packed carton. Nothing to undo (a quote binds nobody).

use erp_proto::carrier;

use crate::ctx::Ctx;
use crate::outcome::{Outcome, Reason, StepError, StepResult};
use crate::steps::{Call, Handlers, destination, parcel};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: None,
    summary: |ctx| format!("{} {}", ctx.carrier, ctx.service),
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let Call { p, timeout: t, .. } = c;
    let o = ctx
        .order
        .as_ref()
        .ok_or_else(|| StepError::missing("order"))?;
    let q = p
        .ports
        .carrier
        .quote_rates(
            carrier::QuoteRatesRequest {
                origin_site: ctx.location.clone(),
                origin_region: ctx.origin_zone(),
                destination: Some(destination(o)),
                parcel: Some(parcel(o, ctx.parcel.as_ref())),
                promised_by: None,
                ship_at: None,
            },
            t,
        )
        .await?;
    let fast_enough =
        |level: i32| o.service_level != "express" || level >= carrier::ServiceLevel::TwoDay as i32;
    // Options come cheapest first.
    let Some(option) = q.options.into_iter().find(|x| fast_enough(x.level)) else {
        return Err(StepError::rejected(
            Reason::NoCarrier,
            format!(
                "no carrier service meets the {} service level",
                o.service_level
            ),
        ));
    };
    ctx.carrier = option.carrier;
    ctx.service = option.service;
    Ok(Outcome::Next)
}
