//! What the warehouse refuses, and why: one enum, mapped to gRPC once (through [`ApiError`]:
//! FAILED_PRECONDITION with a reason code, NOT_FOUND, INVALID_ARGUMENT naming the field).

use erp_runtime::ApiError;

use crate::domain::{FulfillmentState, TaskState};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarehouseError {
    #[error("site {0} does not exist")]
    SiteNotFound(String),
    /// A site named in a request that must exist (a fulfillment, a receipt).
    #[error("unknown site {0}")]
    UnknownSite(String),
    #[error("site {site} is offline{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    SiteOffline { site: String, reason: String },
    #[error("fulfillment {0} does not exist")]
    FulfillmentNotFound(String),
    #[error("pick task {0} does not exist")]
    TaskNotFound(String),
    #[error("site {0} has no open fulfillment")]
    NothingToRelease(String),
    #[error("site {site}: {left} of {capacity} units left today and no open fulfillment fits")]
    CapacityExhausted {
        site: String,
        left: i64,
        capacity: i64,
    },
    #[error("fulfillment {0} shipped and cannot be cancelled")]
    AlreadyShipped(String),
    #[error("fulfillment {0} is {state}; it ships once packed", state = .1.as_str())]
    NotReadyToShip(String, FulfillmentState),
    #[error("fulfillment {0} is packed in another carton; a label may be bought for it")]
    AlreadyPacked(String),
    #[error("fulfillment {0} is {state}; it packs once every task is picked", state = .1.as_str())]
    NotReadyToPack(String, FulfillmentState),
    #[error("task {0} is {state}", state = .1.as_str())]
    TaskClosed(String, TaskState),
    #[error("fulfillment {0} is {state}", state = .1.as_str())]
    FulfillmentClosed(String, FulfillmentState),
    /// More units than the task holds.
    #[error("the task is for {task_units} units")]
    MoreThanTheTask {
        field: &'static str,
        task_units: i64,
    },
}

impl WarehouseError {
    /// The machine-readable reason of a refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SiteNotFound(_) | Self::FulfillmentNotFound(_) | Self::TaskNotFound(_) => {
                "NOT_FOUND"
            }
            Self::UnknownSite(_) | Self::MoreThanTheTask { .. } => "INVALID_ARGUMENT",
            Self::SiteOffline { .. } => "SITE_OFFLINE",
            Self::NothingToRelease(_) => "NOTHING_TO_RELEASE",
            Self::CapacityExhausted { .. } => "CAPACITY_EXHAUSTED",
            Self::AlreadyShipped(_) => "ALREADY_SHIPPED",
            Self::NotReadyToShip(..) => "NOT_READY_TO_SHIP",
            Self::AlreadyPacked(_) => "ALREADY_PACKED",
            Self::NotReadyToPack(..) => "NOT_READY_TO_PACK",
            Self::TaskClosed(..) => "TASK_CLOSED",
            Self::FulfillmentClosed(..) => "FULFILLMENT_CLOSED",
        }
    }
}

impl From<WarehouseError> for ApiError {
    fn from(e: WarehouseError) -> Self {
        let message = e.to_string();
        match e {
            WarehouseError::SiteNotFound(_)
            | WarehouseError::FulfillmentNotFound(_)
            | WarehouseError::TaskNotFound(_) => ApiError::not_found(message),
            WarehouseError::UnknownSite(_) => ApiError::invalid("site", message),
            WarehouseError::MoreThanTheTask { field, .. } => ApiError::invalid(field, message),
            other => ApiError::precondition(other.reason(), message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn refusals_carry_their_code_and_reason() {
        let status: tonic::Status = ApiError::from(WarehouseError::NotReadyToShip(
            "f1".into(),
            FulfillmentState::Picked,
        ))
        .into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            erp_runtime::error::status_reason(&status).as_deref(),
            Some("NOT_READY_TO_SHIP")
        );
        assert!(
            status.message().contains("f1 is picked"),
            "{}",
            status.message()
        );
        let status: tonic::Status =
            ApiError::from(WarehouseError::FulfillmentNotFound("f9".into())).into();
        assert_eq!(status.code(), Code::NotFound);
        let status: tonic::Status = ApiError::from(WarehouseError::MoreThanTheTask {
            field: "quantity",
            task_units: 3,
        })
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("quantity"),
            "{}",
            status.message()
        );
    }
}
