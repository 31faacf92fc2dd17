//! What finance refuses, and why: one enum, mapped to gRPC once (FAILED_PRECONDITION with the
//! reason code callers and the saga branch on, and the decline reason as metadata).

use erp_runtime::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinanceError {
    #[error("payment {payment} is {status}{}", if *chargeback { ": only captured money can be charged back" } else { "" })]
    PaymentNotCaptured {
        payment: String,
        status: String,
        chargeback: bool,
    },
    #[error("cannot refund {amount}: {captured} captured, {refunded} already refunded")]
    OverRefund {
        amount: i64,
        captured: i64,
        refunded: i64,
    },
    #[error("cannot refund {amount}: {charged_back} of {captured} captured was charged back")]
    RefundChargedBack {
        amount: i64,
        charged_back: i64,
        captured: i64,
    },
    #[error(
        "cannot charge back {amount}: {captured} captured, {refunded} refunded, {charged_back} charged back"
    )]
    OverChargeback {
        amount: i64,
        captured: i64,
        refunded: i64,
        charged_back: i64,
    },
    #[error("refund approval {approval} is already {status} by {by}")]
    NotPending {
        approval: String,
        status: String,
        by: String,
    },
    #[error("entry {0} was already reversed")]
    AlreadyReversed(String),
    #[error("payment {payment} is {status}")]
    PaymentNotAuthorized { payment: String, status: String },
    #[error("payment {0}: the provider no longer honours the authorization; authorize again")]
    AuthorizationExpired(String),
    #[error("cannot capture {amount}: {authorized} authorized, {captured} captured already")]
    OverCapture {
        amount: i64,
        authorized: i64,
        captured: i64,
    },
    #[error("payment {payment} is {status}; only an authorization can be voided")]
    PaymentNotVoidable { payment: String, status: String },
    #[error("payment for order {order} declined: {reason}")]
    Declined { order: String, reason: String },
}

impl FinanceError {
    /// The machine-readable reason of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PaymentNotCaptured { .. } => "PAYMENT_NOT_CAPTURED",
            Self::OverRefund { .. } | Self::RefundChargedBack { .. } => "OVER_REFUND",
            Self::OverChargeback { .. } => "OVER_CHARGEBACK",
            Self::NotPending { .. } => "NOT_PENDING",
            Self::AlreadyReversed(_) => "ALREADY_REVERSED",
            Self::PaymentNotAuthorized { .. } => "PAYMENT_NOT_AUTHORIZED",
            Self::AuthorizationExpired(_) => "AUTHORIZATION_EXPIRED",
            Self::OverCapture { .. } => "OVER_CAPTURE",
            Self::PaymentNotVoidable { .. } => "PAYMENT_NOT_VOIDABLE",
            Self::Declined { .. } => "PAYMENT_DECLINED",
        }
    }
}

impl From<FinanceError> for ApiError {
    fn from(e: FinanceError) -> Self {
        let mut err = ApiError::precondition(e.reason(), e.to_string());
        if let (
            FinanceError::Declined { reason, .. },
            ApiError::FailedPrecondition { metadata, .. },
        ) = (e, &mut err)
        {
            metadata.insert("decline_reason".into(), reason);
        }
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt as _;

    #[test]
    fn refusals_carry_their_reason_and_a_decline_its_cause() {
        let status: tonic::Status = ApiError::from(FinanceError::Declined {
            order: "o-1".into(),
            reason: "insufficient_funds".into(),
        })
        .into();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "PAYMENT_DECLINED");
        assert_eq!(info.metadata["decline_reason"], "insufficient_funds");
        let status: tonic::Status = ApiError::from(FinanceError::OverCapture {
            amount: 5,
            authorized: 4,
            captured: 0,
        })
        .into();
        assert_eq!(
            erp_runtime::error::status_reason(&status).as_deref(),
            Some("OVER_CAPTURE")
        );
        assert!(status.message().starts_with("cannot capture 5"));
    }
}
