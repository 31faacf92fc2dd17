//! A step of the synthetic `probe` saga: one call to the probe participant, undone by another.
//! What the participant records (one row per key) is all the saga changes, so the saga measures
//! the engine: its commits, its calls, its retries and compensations.

use erp_proto::probe;

use crate::ctx::Ctx;
use crate::definition::Step;
use crate::outcome::{Outcome, Reason, StepError, StepResult};
use crate::ports::ProbePort;
use crate::steps::{Call, Handlers};

pub const HANDLERS: Handlers = Handlers {
    forward: |c, ctx| Box::pin(forward(c, ctx)),
    undo: Some(|c, ctx| Box::pin(undo(c, ctx))),
    summary: |_| String::new(),
};

/// The participant and the step's number, or why the step cannot be called.
fn target<'a>(c: &Call<'a>) -> Result<(&'a dyn ProbePort, i32), StepError> {
    let Step::Probe(n) = c.step else {
        return Err(StepError::missing("the probe step's number"));
    };
    let port = c.p.ports.probe.as_deref().ok_or_else(|| {
        StepError::rejected(
            Reason::Other("PROBE_UNCONFIGURED".into()),
            "orchestrator.probe_url is not set: this orchestrator has no probe participant",
        )
    })?;
    Ok((port, i32::from(n)))
}

async fn forward(c: Call<'_>, ctx: &mut Ctx) -> StepResult {
    let (port, step) = target(&c)?;
    port.apply(
        probe::ApplyRequest {
            idempotency_key: c.key,
            business_key: ctx.order_id(),
            step,
        },
        c.timeout,
    )
    .await?;
    Ok(Outcome::Next)
}

async fn undo(c: Call<'_>, ctx: &Ctx) -> Result<(), StepError> {
    let (port, step) = target(&c)?;
    port.revert(
        probe::RevertRequest {
            idempotency_key: c.key,
            business_key: ctx.order_id(),
            step,
        },
        c.timeout,
    )
    .await?;
    Ok(())
}
