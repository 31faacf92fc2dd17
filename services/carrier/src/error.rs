//! What the carrier service refuses, and why: one enum, mapped to gRPC once. A carrier's own
//! refusal keeps the carrier's reason code; its timeout is UNAVAILABLE (retry).

use erp_runtime::ApiError;

use crate::adapter::AdapterError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    #[error("{carrier} {service} has no rate for zone {zone} at {weight} g")]
    NoRate {
        carrier: String,
        service: String,
        zone: i32,
        weight: i64,
    },
    #[error("shipment {0} was picked up by the carrier and cannot be voided")]
    AlreadyPickedUp(String),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

impl From<CarrierError> for ApiError {
    fn from(e: CarrierError) -> Self {
        match e {
            CarrierError::NoRate { .. } => ApiError::precondition("NO_RATE", e.to_string()),
            CarrierError::AlreadyPickedUp(_) => {
                ApiError::precondition("ALREADY_PICKED_UP", e.to_string())
            }
            CarrierError::Adapter(AdapterError::Timeout(m)) => ApiError::Unavailable(m),
            CarrierError::Adapter(AdapterError::Refused { reason, message }) => {
                ApiError::precondition(reason, message)
            }
        }
    }
}
