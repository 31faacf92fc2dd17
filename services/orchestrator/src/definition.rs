//! Saga definitions: the ordered steps, which of them can be undone, the pivot after which the
//! saga only moves forward, and each step's retry policy. Instances are pinned to the version
//! they started with; a new version is a new list, never an edit of a released one.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reads the order (and item costs, weights and channel fees). Its compensation fails or
    /// cancels the order with the reason: "cancel order" of the reference flow.
    LoadOrder,
    /// Sales tax per line from finance's rate table, recorded on the order (v2): the amount
    /// authorized and captured includes it.
    ApplyTax,
    /// Chooses the warehouse that ships the order.
    Route,
    ReserveStock,
    RecordAllocation,
    AuthorizePayment,
    CreateFulfillment,
    /// Waits for the packer's carton (v2): its weight and size are what the label is bought for.
    AwaitPack,
    /// Rate shopping: the cheapest option for the service level.
    QuoteLabel,
    BuyLabel,
    /// Waits for the warehouse's ship confirmation, until a deadline.
    AwaitShipment,
    CommitStock,
    CapturePayment,
    PostJournal,
    MarkShipped,
    /// v3: another shipment when lines are left (backordered, or for another warehouse);
    /// otherwise the uncaptured rest of the authorization is released.
    NextShipment,
    /// Step `n` (1 to [`PROBE_STEPS`]) of the synthetic `probe` saga: one call to the probe
    /// participant, undone by another.
    Probe(u8),
}

/// Steps of the synthetic `probe` saga.
pub const PROBE_STEPS: u8 = 8;

const PROBE_NAMES: [&str; PROBE_STEPS as usize] = [
    "probe_1", "probe_2", "probe_3", "probe_4", "probe_5", "probe_6", "probe_7", "probe_8",
];

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Self::LoadOrder => "load_order",
            Self::ApplyTax => "apply_tax",
            Self::Route => "route",
            Self::ReserveStock => "reserve_stock",
            Self::RecordAllocation => "record_allocation",
            Self::AuthorizePayment => "authorize_payment",
            Self::CreateFulfillment => "create_fulfillment",
            Self::AwaitPack => "await_pack",
            Self::QuoteLabel => "quote_label",
            Self::BuyLabel => "buy_label",
            Self::AwaitShipment => "await_shipment",
            Self::CommitStock => "commit_stock",
            Self::CapturePayment => "capture_payment",
            Self::PostJournal => "post_journal",
            Self::MarkShipped => "mark_shipped",
            Self::NextShipment => "next_shipment",
            Self::Probe(n) => usize::from(n)
                .checked_sub(1)
                .and_then(|i| PROBE_NAMES.get(i))
                .copied()
                .unwrap_or("probe"),
        }
    }

    /// Whether the step is tied to the warehouse that was chosen: a re-route (after a short
    /// pick) undoes exactly these, keeping the order read and the payment authorized.
    pub fn site_bound(self) -> bool {
        matches!(
            self,
            Self::ReserveStock | Self::CreateFulfillment | Self::BuyLabel
        )
    }

    /// Whether the step waits for a signal rather than calling a participant.
    pub fn is_wait(self) -> bool {
        matches!(self, Self::AwaitPack | Self::AwaitShipment)
    }

    /// Whether undoing this step calls a participant: read from the step's handlers (see
    /// [`crate::steps`]), the one place that says how a step is undone.
    pub fn compensable(self) -> bool {
        crate::steps::handlers(self).undo.is_some()
    }

    pub fn policy(self) -> Policy {
        match self {
            // After the pivot the saga must finish: many attempts, then an operator.
            Self::CommitStock
            | Self::CapturePayment
            | Self::PostJournal
            | Self::MarkShipped
            | Self::NextShipment => Policy {
                max_attempts: 30,
                timeout: Duration::from_secs(10),
                max_backoff: Duration::from_secs(30),
            },
            // Before the pivot, giving up cancels the customer's order: retry through a
            // participant's outage of a minute or so (15 attempts: 46-93 s between them in
            // all) before undoing the steps done, at most 10 s apart so that a saga resumes
            // soon after the participant is back.
            _ => Policy {
                max_attempts: 15,
                timeout: Duration::from_secs(5),
                max_backoff: Duration::from_secs(10),
            },
        }
    }
}

/// What can be said to a running saga, by the warehouse (packed, shipped, a stock exception, a
/// site offline), the order service and operators (cancel, pause), and routing (replan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Packed,
    Shipped,
    Exception,
    SiteOffline,
    Cancel,
    Pause,
    Replan,
}

impl Signal {
    pub const ALL: [Signal; 7] = [
        Self::Packed,
        Self::Shipped,
        Self::Exception,
        Self::SiteOffline,
        Self::Cancel,
        Self::Pause,
        Self::Replan,
    ];

    /// The name stored with the signal and used on the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Packed => "PACKED",
            Self::Shipped => "SHIPPED",
            Self::Exception => "EXCEPTION",
            Self::SiteOffline => "SITE_OFFLINE",
            Self::Cancel => "CANCEL",
            Self::Pause => "PAUSE",
            Self::Replan => "REPLAN",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Signals from the warehouse about one fulfillment.
    pub fn names_fulfillment(self) -> bool {
        matches!(self, Self::Packed | Self::Exception | Self::SiteOffline)
    }
}

/// Retries and timeout of one step.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_attempts: i32,
    pub timeout: Duration,
    /// The longest wait between two attempts (see [`backoff`]).
    pub max_backoff: Duration,
}

pub const FULFILLMENT_V1: &[Step] = &[
    Step::LoadOrder,
    Step::Route,
    Step::ReserveStock,
    Step::RecordAllocation,
    Step::AuthorizePayment,
    Step::CreateFulfillment,
    Step::QuoteLabel,
    Step::BuyLabel,
    Step::AwaitShipment,
    Step::CommitStock,
    Step::CapturePayment,
    Step::PostJournal,
    Step::MarkShipped,
];

/// Version 2: sales tax is applied before anything is charged, the label is bought after
/// packing, for the packer's carton, and a stock exception at the warehouse re-routes the order
/// (or backorders it) instead of stalling it.
pub const FULFILLMENT_V2: &[Step] = &[
    Step::LoadOrder,
    Step::ApplyTax,
    Step::Route,
    Step::ReserveStock,
    Step::RecordAllocation,
    Step::AuthorizePayment,
    Step::CreateFulfillment,
    Step::AwaitPack,
    Step::QuoteLabel,
    Step::BuyLabel,
    Step::AwaitShipment,
    Step::CommitStock,
    Step::CapturePayment,
    Step::PostJournal,
    Step::MarkShipped,
];

/// Version 3: an order ships in parts. Each round plans one shipment from one warehouse for
/// what can ship now (the routing rules' split, or what is in stock), backorders what no
/// warehouse has, captures that shipment's share of the payment and posts its entry; the last
/// step starts another round while lines are left. A backorder at the first routing waits for
/// stock instead of failing, and a cancelled line stops only the shipment that holds it.
pub const FULFILLMENT_V3: &[Step] = &[
    Step::LoadOrder,
    Step::ApplyTax,
    Step::Route,
    Step::ReserveStock,
    Step::RecordAllocation,
    Step::AuthorizePayment,
    Step::CreateFulfillment,
    Step::AwaitPack,
    Step::QuoteLabel,
    Step::BuyLabel,
    Step::AwaitShipment,
    Step::CommitStock,
    Step::CapturePayment,
    Step::PostJournal,
    Step::MarkShipped,
    Step::NextShipment,
];

/// The synthetic saga: eight calls to the probe participant, each undone by another when a
/// later one is refused. No pivot: every step can be compensated.
pub const PROBE_V1: &[Step] = &[
    Step::Probe(1),
    Step::Probe(2),
    Step::Probe(3),
    Step::Probe(4),
    Step::Probe(5),
    Step::Probe(6),
    Step::Probe(7),
    Step::Probe(8),
];

/// The steps of a definition version, if this build knows it.
pub fn steps(definition: &str, version: i32) -> Option<&'static [Step]> {
    match (definition, version) {
        ("fulfillment", 1) => Some(FULFILLMENT_V1),
        ("fulfillment", 2) => Some(FULFILLMENT_V2),
        ("fulfillment", 3) => Some(FULFILLMENT_V3),
        ("probe", 1) => Some(PROBE_V1),
        _ => None,
    }
}

/// The version new sagas of `definition` start with, and the name of their first step.
pub fn latest(definition: &str) -> Option<(i32, &'static str)> {
    let version = match definition {
        "fulfillment" => crate::FULFILLMENT_VERSION,
        "probe" => 1,
        _ => return None,
    };
    let first = steps(definition, version)?.first()?.name();
    Some((version, first))
}

/// Index of the pivot: the first step that cannot be compensated.
pub fn pivot(steps: &[Step]) -> usize {
    steps
        .iter()
        .position(|s| *s == Step::CommitStock)
        .unwrap_or(steps.len())
}

/// Delay before attempt `attempt + 1`: exponential from 200 ms, capped at `cap`, with jitter
/// (half to all of the delay) so that retries of many sagas do not arrive together.
pub fn backoff(attempt: i32, jitter: f64, cap: Duration) -> Duration {
    let exp = 200u64.saturating_mul(1u64 << attempt.clamp(0, 20));
    let capped = exp.min(u64::try_from(cap.as_millis()).unwrap_or(u64::MAX)) as f64;
    Duration::from_millis((capped * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pivot_splits_compensable_from_forward_only() {
        let p = pivot(FULFILLMENT_V1);
        assert_eq!(FULFILLMENT_V1[p], Step::CommitStock);
        assert!(FULFILLMENT_V1[p..].iter().all(|s| !s.compensable()));
        assert!(FULFILLMENT_V1[..p].iter().any(|s| s.compensable()));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let cap = Duration::from_secs(30);
        assert_eq!(backoff(0, 1.0, cap), Duration::from_millis(200));
        assert_eq!(backoff(0, 0.0, cap), Duration::from_millis(100));
        assert!(backoff(3, 1.0, cap) > backoff(2, 1.0, cap));
        assert_eq!(backoff(40, 1.0, cap), Duration::from_secs(30));
    }

    #[test]
    fn steps_before_the_pivot_outlast_a_minute_of_outage_and_retry_often() {
        let policy = Step::BuyLabel.policy();
        let waits = |jitter: f64| -> Duration {
            (0..policy.max_attempts - 1)
                .map(|a| backoff(a, jitter, policy.max_backoff))
                .sum()
        };
        assert!(waits(0.0) >= Duration::from_secs(45), "{:?}", waits(0.0));
        assert!(waits(1.0) <= Duration::from_secs(95), "{:?}", waits(1.0));
        assert_eq!(
            backoff(40, 1.0, policy.max_backoff),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn signals_round_trip() {
        for s in Signal::ALL {
            assert_eq!(Signal::parse(s.as_str()), Some(s));
        }
        assert_eq!(Signal::parse("shipped"), None);
    }

    #[test]
    fn unknown_versions_are_not_guessed() {
        assert!(steps("fulfillment", 1).is_some());
        assert!(steps("fulfillment", 2).is_some());
        assert!(steps("fulfillment", 3).is_some());
        assert!(steps("fulfillment", 4).is_none());
        assert!(steps("returns", 1).is_none());
        assert!(steps("probe", 2).is_none());
        assert_eq!(latest("fulfillment"), Some((3, "load_order")));
        assert_eq!(latest("probe"), Some((1, "probe_1")));
        assert_eq!(latest("returns"), None);
    }

    #[test]
    fn probe_steps_are_named_apart_and_all_undoable() {
        let names: std::collections::HashSet<_> = PROBE_V1.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), usize::from(PROBE_STEPS));
        assert_eq!(Step::Probe(0).name(), "probe");
        assert_eq!(Step::Probe(9).name(), "probe");
        assert_eq!(pivot(PROBE_V1), PROBE_V1.len());
        assert!(PROBE_V1.iter().all(|s| s.compensable() && !s.is_wait()));
    }

    #[test]
    fn v3_is_v2_with_a_loop_after_the_pivot() {
        assert_eq!(&FULFILLMENT_V3[..FULFILLMENT_V2.len()], FULFILLMENT_V2);
        assert_eq!(FULFILLMENT_V3.last(), Some(&Step::NextShipment));
        assert!(pivot(FULFILLMENT_V3) < FULFILLMENT_V3.len() - 1);
        assert!(!Step::NextShipment.compensable());
    }

    #[test]
    fn v2_packs_before_the_label_and_keeps_the_pivot() {
        let at = |s: Step| FULFILLMENT_V2.iter().position(|x| *x == s).unwrap();
        assert!(at(Step::AwaitPack) < at(Step::QuoteLabel));
        assert!(at(Step::BuyLabel) < at(Step::AwaitShipment));
        assert_eq!(pivot(FULFILLMENT_V2), at(Step::CommitStock));
        // Everything a re-route undoes comes after routing and before the pivot.
        for (i, s) in FULFILLMENT_V2.iter().enumerate() {
            if s.site_bound() {
                assert!(i > at(Step::Route) && i < pivot(FULFILLMENT_V2));
                assert!(s.compensable());
            }
        }
    }
}
