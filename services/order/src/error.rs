//! What the order service refuses, and why: one enum, mapped to gRPC once
//! (FAILED_PRECONDITION with the reason code).

use erp_runtime::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order {order} is {status}")]
    Closed { order: String, status: String },
    #[error("line {line}: {why}")]
    OverAllocation { line: String, why: String },
    #[error("order {0} has no allocated units to ship")]
    NothingAllocated(String),
    #[error("order {order} is {status}: its tax can no longer change")]
    TaxLocked { order: String, status: String },
    #[error("order {0} has shipped units and cannot fail")]
    ShippedCannotFail(String),
    #[error("order {0} has nothing left to cancel: every unit shipped, returned or cancelled")]
    NothingToCancel(String),
}

impl OrderError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Closed { .. } => "ORDER_CLOSED",
            Self::OverAllocation { .. } => "OVER_ALLOCATION",
            Self::NothingAllocated(_) => "NOTHING_ALLOCATED",
            Self::TaxLocked { .. } => "TAX_LOCKED",
            // Callers (the saga's compensation) know both as "it shipped".
            Self::ShippedCannotFail(_) | Self::NothingToCancel(_) => "ALREADY_SHIPPED",
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        ApiError::precondition(e.reason(), e.to_string())
    }
}
