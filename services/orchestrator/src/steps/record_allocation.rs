//! Tells the order service where each line ships from (v3: this shipment's units; what no
//! warehouse has is backordered). Nothing to undo: the order's compensation closes it. A saga
//! that cannot ship anything records every line as backordered through [`backorder`].

use std::time::Duration;

use erp_proto::order;

use crate::ctx::Ctx;
use crate::outcome::{Outcome, StepError, StepResult};
use crate::participants::Participants;
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: None,
    summary: |_| String::new(),
};

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    allocate(c.p, c.key, ctx, false, c.timeout).await?;
    Ok(Outcome::Next)
}

/// Records every line of the order as backordered: no warehouse can ship it now.
pub async fn backorder(
    p: &Participants,
    saga_id: &str,
    ctx: &Ctx,
    t: Duration,
) -> Result<(), StepError> {
    let k = format!("{saga_id}:r{}:backorder", ctx.round);
    allocate(p, k, ctx, true, t).await
}

/// Tells the order service where every line ships from, or that it is backordered.
async fn allocate(
    p: &Participants,
    key: String,
    ctx: &Ctx,
    backorder: bool,
    t: Duration,
) -> Result<(), StepError> {
    let o = ctx
        .order
        .as_ref()
        .ok_or_else(|| StepError::missing("order"))?;
    let allocations = if ctx.parts {
        // This shipment's units are allocated where it ships from; units no warehouse has
        // are backordered; the rest stays open for a later shipment.
        ctx.remaining
            .iter()
            .map(|r| {
                let batch = ctx.batch.iter().find(|b| b.line_id == r.line_id);
                let allocated = if backorder {
                    0
                } else {
                    batch.map_or(0, |b| b.quantity)
                };
                let short = ctx
                    .short
                    .iter()
                    .find(|s| s.line_id == r.line_id)
                    .map_or(0, |s| s.quantity)
                    .min(r.quantity - allocated);
                order::LineAllocation {
                    line_id: r.line_id.clone(),
                    location: if allocated > 0 {
                        ctx.location.clone()
                    } else {
                        String::new()
                    },
                    allocated,
                    backordered: short.max(0),
                    promised_by: None,
                }
            })
            .collect()
    } else {
        o.lines
            .iter()
            .map(|l| order::LineAllocation {
                line_id: l.line_id.clone(),
                location: if backorder {
                    String::new()
                } else {
                    ctx.location.clone()
                },
                allocated: if backorder { 0 } else { l.quantity },
                backordered: if backorder { l.quantity } else { 0 },
                promised_by: None,
            })
            .collect()
    };
    p.ports
        .order
        .record_allocation(
            order::RecordAllocationRequest {
                idempotency_key: key,
                order_id: o.order_id.clone(),
                allocations,
            },
            t,
        )
        .await?;
    Ok(())
}
