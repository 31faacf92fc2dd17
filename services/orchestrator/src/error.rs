//! What the orchestrator's API refuses, and why: one enum, mapped to gRPC once
//! (FAILED_PRECONDITION with the reason code). How a saga's own steps fail is
//! [`crate::outcome`].

use erp_runtime::ApiError;

use crate::store::SagaState;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrchestratorError {
    /// A SHIPPED signal naming a fulfillment the warehouse does not know or has not shipped.
    #[error("{0}")]
    NotShipped(String),
    #[error(
        "fulfillment {fulfillment} belongs to order {belongs_to}, not to this saga's order {order}"
    )]
    NotThisOrder {
        fulfillment: String,
        belongs_to: String,
        order: String,
    },
    #[error("saga {saga} is {status}")]
    Finished { saga: String, status: SagaState },
    #[error("saga {saga} is {status}; only a running or waiting saga can be paused")]
    NotRunning { saga: String, status: SagaState },
    /// Resume or retry of a saga that is not paused (or not parked).
    #[error("saga {saga} is {status}, not {expected}")]
    NotIn {
        saga: String,
        status: SagaState,
        expected: SagaState,
    },
    #[error(
        "saga {saga} is {status} at {step}: after the pivot (or once compensating) it can only finish"
    )]
    PastPivot {
        saga: String,
        status: SagaState,
        step: String,
    },
}

impl From<OrchestratorError> for ApiError {
    fn from(e: OrchestratorError) -> Self {
        let reason = match &e {
            OrchestratorError::NotShipped(_) => "NOT_SHIPPED".to_owned(),
            OrchestratorError::NotThisOrder { .. } => "NOT_THIS_ORDER".to_owned(),
            OrchestratorError::Finished { .. } => "SAGA_FINISHED".to_owned(),
            OrchestratorError::NotRunning { .. } => "NOT_RUNNING".to_owned(),
            // NOT_PAUSED, NOT_PARKED.
            OrchestratorError::NotIn { expected, .. } => {
                format!("NOT_{}", expected.name().to_uppercase())
            }
            OrchestratorError::PastPivot { .. } => "PAST_PIVOT".to_owned(),
        };
        ApiError::precondition(reason, e.to_string())
    }
}
