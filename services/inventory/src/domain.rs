//! Stock rules, free of I/O.

use erp_runtime::ApiError;

/// The quantity buckets of one item at one location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    OnHand,
    Reserved,
    Inbound,
    ReturnsPending,
    Quarantined,
}

impl Bucket {
    pub const ALL: [Bucket; 5] = [
        Bucket::OnHand,
        Bucket::Reserved,
        Bucket::Inbound,
        Bucket::ReturnsPending,
        Bucket::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnHand => "on_hand",
            Self::Reserved => "reserved",
            Self::Inbound => "inbound",
            Self::ReturnsPending => "returns_pending",
            Self::Quarantined => "quarantined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// Why a ledger entry was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Receipt,
    Reservation,
    Release,
    Shipment,
    Adjustment,
    Inbound,
    TransferOut,
    TransferIn,
    CycleCount,
    Return,
    Quarantine,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Reservation => "reservation",
            Self::Release => "release",
            Self::Shipment => "shipment",
            Self::Adjustment => "adjustment",
            Self::Inbound => "inbound",
            Self::TransferOut => "transfer_out",
            Self::TransferIn => "transfer_in",
            Self::CycleCount => "cycle_count",
            Self::Return => "return",
            Self::Quarantine => "quarantine",
        }
    }
}

/// Stock of one item at one location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Levels {
    pub on_hand: i64,
    pub reserved: i64,
    pub inbound: i64,
    pub returns_pending: i64,
    pub quarantined: i64,
}

impl Levels {
    /// What can be promised now.
    pub fn available(&self) -> i64 {
        (self.on_hand - self.reserved).max(0)
    }

    pub fn get(&self, bucket: Bucket) -> i64 {
        match bucket {
            Bucket::OnHand => self.on_hand,
            Bucket::Reserved => self.reserved,
            Bucket::Inbound => self.inbound,
            Bucket::ReturnsPending => self.returns_pending,
            Bucket::Quarantined => self.quarantined,
        }
    }

    /// The invariants every stored row satisfies.
    pub fn is_valid(&self) -> bool {
        self.on_hand >= 0
            && self.reserved >= 0
            && self.inbound >= 0
            && self.returns_pending >= 0
            && self.quarantined >= 0
            && self.reserved <= self.on_hand
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    Active,
    Committed,
    Released,
    Expired,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Committed, Self::Released, Self::Expired]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Errors of stock operations, with the context that makes them actionable.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("sku {sku} at {location}: need {requested}, available {available}")]
    InsufficientStock {
        sku: String,
        location: String,
        requested: i64,
        available: i64,
    },
    #[error("sku {sku} at {location}: {bucket} would go negative ({current} {delta:+})")]
    NegativeBucket {
        sku: String,
        location: String,
        bucket: &'static str,
        current: i64,
        delta: i64,
    },
    #[error("unknown sku {0}")]
    UnknownSku(String),
    #[error("unknown location {0}")]
    UnknownLocation(String),
    #[error("location {0} is offline")]
    LocationOffline(String),
    #[error("reservation {id} is {state}, not active")]
    ReservationNotActive { id: String, state: &'static str },
    #[error("order {0} has no reservations")]
    NoReservations(String),
    #[error(
        "sku {sku} at {location}: counted {counted} but {reserved} are reserved; release or re-allocate reservations first"
    )]
    CountBelowReserved {
        sku: String,
        location: String,
        counted: i64,
        reserved: i64,
    },
    #[error("transfer {0}: {1}")]
    Transfer(String, String),
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        let message = e.to_string();
        match e {
            InventoryError::InsufficientStock { .. } => {
                ApiError::precondition("INSUFFICIENT_STOCK", message)
            }
            InventoryError::NegativeBucket { .. } => {
                ApiError::precondition("NEGATIVE_STOCK", message)
            }
            InventoryError::UnknownSku(_) | InventoryError::UnknownLocation(_) => {
                ApiError::NotFound(message)
            }
            InventoryError::LocationOffline(_) => {
                ApiError::precondition("LOCATION_OFFLINE", message)
            }
            InventoryError::ReservationNotActive { .. } => {
                ApiError::precondition("RESERVATION_NOT_ACTIVE", message)
            }
            InventoryError::NoReservations(_) => ApiError::NotFound(message),
            InventoryError::CountBelowReserved { .. } => {
                ApiError::precondition("COUNT_BELOW_RESERVED", message)
            }
            InventoryError::Transfer(..) => ApiError::precondition("TRANSFER_STATE", message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_never_negative_and_validity() {
        let l = Levels {
            on_hand: 5,
            reserved: 3,
            ..Levels::default()
        };
        assert_eq!(l.available(), 2);
        assert!(l.is_valid());
        let bad = Levels {
            on_hand: 1,
            reserved: 2,
            ..Levels::default()
        };
        assert!(!bad.is_valid());
        assert_eq!(bad.available(), 0);
    }

    #[test]
    fn bucket_names_round_trip() {
        for b in Bucket::ALL {
            assert_eq!(Bucket::parse(b.as_str()), Some(b));
        }
        assert_eq!(Bucket::parse("nope"), None);
    }
}
