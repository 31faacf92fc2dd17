//! What procurement refuses, and why: one enum, mapped to gRPC once (FAILED_PRECONDITION with
//! the reason code).

use erp_runtime::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcurementError {
    #[error("purchase order {po} is {status}")]
    NotDraft { po: String, status: String },
    #[error("purchase order {po} is {status}; it is sent once approved")]
    NotApproved { po: String, status: String },
    #[error(
        "purchase order {po} is {status}; goods are received while it is sent or partially received"
    )]
    NotReceivable { po: String, status: String },
    #[error("purchase order is {status}: everything was received")]
    NotCancellable { status: String },
    #[error("received quantity out of range")]
    QuantityOutOfRange,
}

impl ProcurementError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotDraft { .. } => "NOT_DRAFT",
            Self::NotApproved { .. } => "NOT_APPROVED",
            Self::NotReceivable { .. } => "NOT_RECEIVABLE",
            Self::NotCancellable { .. } => "NOT_CANCELLABLE",
            Self::QuantityOutOfRange => "QUANTITY_OUT_OF_RANGE",
        }
    }
}

impl From<ProcurementError> for ApiError {
    fn from(e: ProcurementError) -> Self {
        ApiError::precondition(e.reason(), e.to_string())
    }
}
