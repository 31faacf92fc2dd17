//! The warehouse's rules, without I/O: the states of a fulfillment and of its pick tasks and
//! which moves they allow, how a wave is planned within a site's daily capacity, and the
//! calendar day capacity counts against. Handlers load, ask these, and store.

use erp_proto::warehouse::{ExceptionReason, FulfillmentStatus, TaskStatus};

use crate::error::WarehouseError;

/// Where a fulfillment stands. Stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FulfillmentState {
    /// Created, waiting for a wave.
    Open,
    /// Its tasks are released to pickers.
    Released,
    /// Every task picked in full.
    Picked,
    /// In its carton: a label can be bought for it.
    Packed,
    Shipped,
    Cancelled,
    /// A stock exception stopped it: the saga re-routes the order.
    Exception,
}

impl FulfillmentState {
    pub const ALL: [Self; 7] = [
        Self::Open,
        Self::Released,
        Self::Picked,
        Self::Packed,
        Self::Shipped,
        Self::Cancelled,
        Self::Exception,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Released => "released",
            Self::Picked => "picked",
            Self::Packed => "packed",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
            Self::Exception => "exception",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn to_wire(self) -> FulfillmentStatus {
        match self {
            Self::Open => FulfillmentStatus::Open,
            Self::Released => FulfillmentStatus::Released,
            Self::Picked => FulfillmentStatus::Picked,
            Self::Packed => FulfillmentStatus::Packed,
            Self::Shipped => FulfillmentStatus::Shipped,
            Self::Cancelled => FulfillmentStatus::Cancelled,
            Self::Exception => FulfillmentStatus::Exception,
        }
    }

    pub fn from_wire(s: FulfillmentStatus) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.to_wire() == s)
    }

    /// Not picked yet: what a site going offline leaves to re-route.
    pub fn unpicked(self) -> bool {
        matches!(self, Self::Open | Self::Released)
    }

    /// Nothing more happens to it on the floor.
    pub fn closed(self) -> bool {
        matches!(self, Self::Shipped | Self::Cancelled)
    }
}

/// The stored state of a fulfillment row (an unknown name reads as an exception, which stops
/// it rather than letting it move on).
pub fn fulfillment_state(stored: &str) -> FulfillmentState {
    FulfillmentState::parse(stored).unwrap_or(FulfillmentState::Exception)
}

/// Where a pick task stands. Stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Open,
    Released,
    Picked,
    /// Fewer units found than asked (a short pick or a reported exception).
    Short,
    Cancelled,
}

impl TaskState {
    pub const ALL: [Self; 5] = [
        Self::Open,
        Self::Released,
        Self::Picked,
        Self::Short,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Released => "released",
            Self::Picked => "picked",
            Self::Short => "short",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn to_wire(self) -> TaskStatus {
        match self {
            Self::Open => TaskStatus::Open,
            Self::Released => TaskStatus::Released,
            Self::Picked => TaskStatus::Picked,
            Self::Short => TaskStatus::Short,
            Self::Cancelled => TaskStatus::Cancelled,
        }
    }

    /// Still to be picked.
    pub fn pickable(self) -> bool {
        matches!(self, Self::Open | Self::Released)
    }
}

/// The stored state of a task row (an unknown name reads as cancelled: nobody picks it).
pub fn task_state(stored: &str) -> TaskState {
    TaskState::parse(stored).unwrap_or(TaskState::Cancelled)
}

/// The stored code of an exception reason.
pub fn exception_code(r: ExceptionReason) -> &'static str {
    match r {
        ExceptionReason::CouldNotLocate => "could_not_locate",
        ExceptionReason::Damaged => "damaged",
        ExceptionReason::ShortPick => "short_pick",
        ExceptionReason::CartonProblem => "carton_problem",
        ExceptionReason::Unspecified => "unspecified",
    }
}

pub fn exception_reason(code: &str) -> ExceptionReason {
    [
        ExceptionReason::CouldNotLocate,
        ExceptionReason::Damaged,
        ExceptionReason::ShortPick,
        ExceptionReason::CartonProblem,
    ]
    .into_iter()
    .find(|r| exception_code(*r) == code)
    .unwrap_or(ExceptionReason::Unspecified)
}

/// What packing a fulfillment in `carton` does.
#[derive(Debug, PartialEq, Eq)]
pub enum Pack {
    /// Picked: pack it.
    Pack,
    /// Already packed in this very carton: a second scan, answered unchanged.
    AlreadyInThisCarton,
}

pub fn pack(id: &str, state: FulfillmentState, same_carton: bool) -> Result<Pack, WarehouseError> {
    match state {
        FulfillmentState::Picked => Ok(Pack::Pack),
        FulfillmentState::Packed if same_carton => Ok(Pack::AlreadyInThisCarton),
        FulfillmentState::Packed => Err(WarehouseError::AlreadyPacked(id.to_owned())),
        other => Err(WarehouseError::NotReadyToPack(id.to_owned(), other)),
    }
}

/// Whether a fulfillment may ship with `tracking` (shipping it again with the same tracking
/// number is a repeat, not a second shipment).
pub fn ship(id: &str, state: FulfillmentState, same_tracking: bool) -> Result<(), WarehouseError> {
    match state {
        FulfillmentState::Packed => Ok(()),
        FulfillmentState::Shipped if same_tracking => Ok(()),
        other => Err(WarehouseError::NotReadyToShip(id.to_owned(), other)),
    }
}

/// Whether cancelling changes the fulfillment (a cancelled one stays as it is); a shipped one
/// cannot be cancelled.
pub fn cancel(id: &str, state: FulfillmentState) -> Result<bool, WarehouseError> {
    match state {
        FulfillmentState::Shipped => Err(WarehouseError::AlreadyShipped(id.to_owned())),
        FulfillmentState::Cancelled => Ok(false),
        _ => Ok(true),
    }
}

/// The site's local calendar day of `ms`, which daily capacity counts against.
pub fn site_day(ms: i64, utc_offset_minutes: i32) -> String {
    let local = ms.saturating_add(i64::from(utc_offset_minutes) * 60_000);
    chrono::DateTime::from_timestamp_millis(local)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// An open fulfillment a wave could release: its open units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveCandidate {
    pub fulfillment_id: String,
    pub units: i64,
}

/// A wave: the fulfillments it releases, whole, and their units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePlan {
    pub fulfillments: Vec<String>,
    pub units: i64,
}

/// Plans a wave at a site: `candidates` most urgent first, each released whole (a parcel is
/// never split across days) while it fits in what is left of the day's `capacity` after
/// `released` units (and within `max_units` when positive); a fulfillment that does not fit
/// is skipped for a smaller one behind it. Refused when the site has no open fulfillment, or
/// none fits.
pub fn plan_wave(
    site: &str,
    candidates: &[WaveCandidate],
    capacity: i64,
    released: i64,
    max_units: i64,
) -> Result<WavePlan, WarehouseError> {
    let left = capacity.saturating_sub(released);
    let limit = if max_units > 0 {
        left.min(max_units)
    } else {
        left
    };
    if candidates.is_empty() {
        return Err(WarehouseError::NothingToRelease(site.to_owned()));
    }
    let mut plan = WavePlan {
        fulfillments: Vec::new(),
        units: 0,
    };
    for c in candidates {
        let Some(total) = plan.units.checked_add(c.units) else {
            continue;
        };
        if c.units <= 0 || total > limit {
            continue;
        }
        plan.units = total;
        plan.fulfillments.push(c.fulfillment_id.clone());
    }
    if plan.units == 0 {
        return Err(WarehouseError::CapacityExhausted {
            site: site.to_owned(),
            left,
            capacity,
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, units: i64) -> WaveCandidate {
        WaveCandidate {
            fulfillment_id: id.into(),
            units,
        }
    }

    #[test]
    fn states_round_trip_through_storage_and_the_wire() {
        for s in FulfillmentState::ALL {
            assert_eq!(FulfillmentState::parse(s.as_str()), Some(s));
            assert_eq!(FulfillmentState::from_wire(s.to_wire()), Some(s));
        }
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(fulfillment_state("bogus"), FulfillmentState::Exception);
        assert_eq!(task_state("bogus"), TaskState::Cancelled);
        for r in [
            ExceptionReason::CouldNotLocate,
            ExceptionReason::Damaged,
            ExceptionReason::ShortPick,
            ExceptionReason::CartonProblem,
        ] {
            assert_eq!(exception_reason(exception_code(r)), r);
        }
    }

    #[test]
    fn a_wave_takes_whole_fulfillments_most_urgent_first_within_capacity() {
        let open = [c("f1", 6), c("f2", 5), c("f3", 3), c("f4", 1)];
        // 10 left: f1 (6), f2 does not fit (11), f3 (9), f4 (10).
        let w = plan_wave("WH1", &open, 100, 90, 0).unwrap();
        assert_eq!(w.fulfillments, ["f1", "f3", "f4"]);
        assert_eq!(w.units, 10);
        // max_units narrows it further.
        let w = plan_wave("WH1", &open, 100, 0, 7).unwrap();
        assert_eq!(w.fulfillments, ["f1", "f4"]);
        assert_eq!(w.units, 7);
    }

    #[test]
    fn a_wave_with_nothing_open_or_nothing_fitting_is_refused_with_the_reason() {
        assert_eq!(
            plan_wave("WH1", &[], 100, 0, 0),
            Err(WarehouseError::NothingToRelease("WH1".into()))
        );
        assert_eq!(
            plan_wave("WH1", &[c("f1", 6)], 100, 96, 0),
            Err(WarehouseError::CapacityExhausted {
                site: "WH1".into(),
                left: 4,
                capacity: 100
            })
        );
        // Released beyond capacity (capacity lowered since): nothing left, nothing fits.
        assert!(plan_wave("WH1", &[c("f1", 1)], 10, 12, 0).is_err());
    }

    #[test]
    fn packing_and_shipping_move_only_forward_and_repeat_harmlessly() {
        use FulfillmentState as F;
        assert_eq!(pack("f", F::Picked, false), Ok(Pack::Pack));
        assert_eq!(pack("f", F::Packed, true), Ok(Pack::AlreadyInThisCarton));
        assert_eq!(
            pack("f", F::Packed, false),
            Err(WarehouseError::AlreadyPacked("f".into()))
        );
        assert_eq!(
            pack("f", F::Released, false),
            Err(WarehouseError::NotReadyToPack("f".into(), F::Released))
        );
        assert_eq!(ship("f", F::Packed, false), Ok(()));
        assert_eq!(ship("f", F::Shipped, true), Ok(()));
        assert!(ship("f", F::Shipped, false).is_err());
        assert!(ship("f", F::Picked, false).is_err());
        assert_eq!(cancel("f", F::Open), Ok(true));
        assert_eq!(cancel("f", F::Cancelled), Ok(false));
        assert_eq!(
            cancel("f", F::Shipped),
            Err(WarehouseError::AlreadyShipped("f".into()))
        );
    }

    #[test]
    fn capacity_counts_against_the_sites_own_day() {
        // 2026-11-29 23:30 UTC is already the 30th in Berlin (+60) and still the 29th in
        // New York (-300).
        let ms = 1_795_995_000_000;
        assert_eq!(site_day(ms, 0), "2026-11-29");
        assert_eq!(site_day(ms, 60), "2026-11-30");
        assert_eq!(site_day(ms, -300), "2026-11-29");
    }
}
