//! One module per saga step: its forward call, its compensation (or the explicit absence of
//! one) and its timeline summary, gathered in [`Handlers`]. [`handlers`] is the one exhaustive
//! list: a new step does not compile until it names its module, and whether a step can be
//! undone ([`crate::definition::Step::compensable`]) is read from its handlers, never written
//! twice.
//!
//! Adding a step: a variant in [`crate::definition::Step`] (its name, and its place in a new
//! definition version), a module here with its `HANDLERS`, one arm in [`handlers`], and the
//! participant's RPC in [`crate::ports`] when it is new.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use erp_proto::common::{Address, Money, Parcel};

use crate::ctx::{Carton, Ctx, OrderSnapshot};
use crate::definition::Step;
use crate::outcome::{StepError, StepResult};
use crate::participants::Participants;

pub mod apply_tax;
pub mod authorize_payment;
pub mod await_pack;
pub mod await_shipment;
pub mod buy_label;
pub mod capture_payment;
pub mod commit_stock;
pub mod create_fulfillment;
pub mod load_order;
pub mod mark_shipped;
pub mod next_shipment;
pub mod post_journal;
pub mod probe;
pub mod quote_label;
pub mod record_allocation;
pub mod reserve_stock;
pub mod route;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One call of a step: the participants, the saga, the call's idempotency key and deadline.
pub struct Call<'a> {
    pub p: &'a Participants,
    /// The step being called (a handler shared by several steps reads which one it is).
    pub step: Step,
    pub saga_id: &'a str,
    /// `<saga>:<step>:<direction>`, with the round after a re-route (see [`key`]).
    pub key: String,
    pub timeout: Duration,
}

/// A step's forward action.
pub type Forward = for<'a> fn(Call<'a>, &'a mut Ctx) -> BoxFuture<'a, StepResult>;

/// A step's compensation.
pub type Undo = for<'a> fn(Call<'a>, &'a Ctx) -> BoxFuture<'a, Result<(), StepError>>;

/// What a step does, forward and back.
pub struct Handlers {
    /// The forward action; may update the saga's context.
    pub forward: Forward,
    /// How the step is undone; `None`: nothing to undo (it changed nothing a participant keeps,
    /// or it comes after the pivot). A compensation is safe to call when the forward action
    /// never happened.
    pub undo: Option<Undo>,
    /// What the step learned, for the timeline.
    pub summary: fn(&Ctx) -> String,
}

/// The handlers of `step`.
pub fn handlers(step: Step) -> Handlers {
    match step {
        Step::LoadOrder => load_order::HANDLERS,
        Step::ApplyTax => apply_tax::HANDLERS,
        Step::Route => route::HANDLERS,
        Step::ReserveStock => reserve_stock::HANDLERS,
        Step::RecordAllocation => record_allocation::HANDLERS,
        Step::AuthorizePayment => authorize_payment::HANDLERS,
        Step::CreateFulfillment => create_fulfillment::HANDLERS,
        Step::AwaitPack => await_pack::HANDLERS,
        Step::QuoteLabel => quote_label::HANDLERS,
        Step::BuyLabel => buy_label::HANDLERS,
        Step::AwaitShipment => await_shipment::HANDLERS,
        Step::CommitStock => commit_stock::HANDLERS,
        Step::CapturePayment => capture_payment::HANDLERS,
        Step::PostJournal => post_journal::HANDLERS,
        Step::MarkShipped => mark_shipped::HANDLERS,
        Step::NextShipment => next_shipment::HANDLERS,
        Step::Probe(_) => probe::HANDLERS,
    }
}

/// `<saga>:<step>:<direction>`; after a re-route `<saga>:r<round>:<step>:<direction>`, so the
/// new warehouse's reservation, fulfillment and label are new requests, not replays.
pub fn key(saga_id: &str, round: u32, step: Step, forward: bool) -> String {
    let direction = if forward { "forward" } else { "compensate" };
    if round == 0 {
        format!("{saga_id}:{}:{direction}", step.name())
    } else {
        format!("{saga_id}:r{round}:{}:{direction}", step.name())
    }
}

/// Runs the forward action of `step`.
pub async fn forward(
    step: Step,
    p: &Participants,
    saga_id: &str,
    ctx: &mut Ctx,
    timeout: Duration,
) -> StepResult {
    let call = Call {
        p,
        step,
        saga_id,
        key: key(saga_id, ctx.round, step, true),
        timeout,
    };
    (handlers(step).forward)(call, ctx).await
}

/// Undoes `step` (nothing for a step without a compensation).
pub async fn compensate(
    step: Step,
    p: &Participants,
    saga_id: &str,
    ctx: &Ctx,
    timeout: Duration,
) -> Result<(), StepError> {
    let Some(undo) = handlers(step).undo else {
        return Ok(());
    };
    let call = Call {
        p,
        step,
        saga_id,
        key: key(saga_id, ctx.round, step, false),
        timeout,
    };
    undo(call, ctx).await
}

/// What `step` learned, for the timeline.
pub fn summary(step: Step, ctx: &Ctx) -> String {
    (handlers(step).summary)(ctx)
}

pub(crate) fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: currency.to_owned(),
    })
}

pub(crate) fn destination(o: &OrderSnapshot) -> Address {
    Address {
        postal_code: o.postal_code.clone(),
        country_code: o.country_code.clone(),
        ..Default::default()
    }
}

/// The packer's carton when there is one; else an estimate from the catalog weights.
pub(crate) fn parcel(o: &OrderSnapshot, packed: Option<&Carton>) -> Parcel {
    if let Some(c) = packed {
        return Parcel {
            weight_grams: c.weight_grams,
            length_mm: c.length_mm,
            width_mm: c.width_mm,
            height_mm: c.height_mm,
        };
    }
    Parcel {
        weight_grams: o
            .lines
            .iter()
            // A figure for quoting: saturating (a carrier finds no band for an absurd weight
            // and the saga compensates) rather than a panic in the step.
            .fold(0i64, |sum, l| {
                sum.saturating_add(l.weight_grams.saturating_mul(l.quantity))
            })
            .max(100),
        ..Default::default()
    }
}
