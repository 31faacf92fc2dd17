//! How a step ends, in types: what a forward step reports ([`Outcome`]), how a step fails
//! ([`StepError`]), and why a saga is undone or parked ([`Reason`]). The engine matches on these;
//! reason codes are strings only on the wire and in the saga's timeline.

use tonic::{Code, Status};

/// Why a step was refused, a saga undone or parked: the codes the suite knows, and any other
/// code a participant answers with (kept as it came, for the timeline and the order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No warehouse can ship what is needed now.
    InsufficientStock,
    /// Every line is shipped or cancelled: nothing is left to plan.
    NothingToShip,
    /// The customer (or the order service) cancelled the order.
    OrderCancelled,
    /// An operator cancelled the saga.
    CancelledByOperator,
    /// No carrier service meets the order's service level.
    NoCarrier,
    /// The saga's own context lacks what a step needs (a bug or a hand-edited saga).
    SagaState,
    /// A step failed on every attempt its policy allows.
    RetriesExhausted,
    /// The warehouse neither packed nor shipped before the deadline.
    ShipDeadlinePassed,
    /// The saga's definition version is unknown to this build.
    UnknownDefinition,
    /// The saga's stored context cannot be read.
    CorruptContext,
    /// Undoing a site-bound step for a re-route was refused.
    RerouteFailed,
    /// A compensation failed on every attempt.
    CompensationFailed,
    /// A participant refused a compensation.
    CompensationRejected,
    /// Any other code a participant answered (`PAYMENT_DECLINED`, `NOT_FOUND`, ...).
    Other(String),
}

impl Reason {
    pub fn as_str(&self) -> &str {
        match self {
            Self::InsufficientStock => "INSUFFICIENT_STOCK",
            Self::NothingToShip => "NOTHING_TO_SHIP",
            Self::OrderCancelled => "ORDER_CANCELLED",
            Self::CancelledByOperator => "CANCELLED_BY_OPERATOR",
            Self::NoCarrier => "NO_CARRIER",
            Self::SagaState => "SAGA_STATE",
            Self::RetriesExhausted => "RETRIES_EXHAUSTED",
            Self::ShipDeadlinePassed => "SHIP_DEADLINE_PASSED",
            Self::UnknownDefinition => "UNKNOWN_DEFINITION",
            Self::CorruptContext => "CORRUPT_CONTEXT",
            Self::RerouteFailed => "REROUTE_FAILED",
            Self::CompensationFailed => "COMPENSATION_FAILED",
            Self::CompensationRejected => "COMPENSATION_REJECTED",
            Self::Other(code) => code,
        }
    }

    /// The reason a code names (what a participant answered, or a stored failure reason).
    pub fn parse(code: &str) -> Self {
        const KNOWN: [Reason; 13] = [
            Reason::InsufficientStock,
            Reason::NothingToShip,
            Reason::OrderCancelled,
            Reason::CancelledByOperator,
            Reason::NoCarrier,
            Reason::SagaState,
            Reason::RetriesExhausted,
            Reason::ShipDeadlinePassed,
            Reason::UnknownDefinition,
            Reason::CorruptContext,
            Reason::RerouteFailed,
            Reason::CompensationFailed,
            Reason::CompensationRejected,
        ];
        KNOWN
            .into_iter()
            .find(|r| r.as_str() == code)
            .unwrap_or_else(|| Self::Other(code.to_owned()))
    }

    /// A cancellation (by the customer or an operator) rather than a failure.
    pub fn is_cancellation(&self) -> bool {
        matches!(self, Self::OrderCancelled | Self::CancelledByOperator)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// May succeed if tried again (the participant is down, slow, overloaded, conflicting).
    Transient(String),
    /// The participant said no; retrying the same request would get the same answer.
    Rejected { reason: Reason, detail: String },
}

impl StepError {
    pub fn rejected(reason: Reason, detail: impl Into<String>) -> Self {
        Self::Rejected {
            reason,
            detail: detail.into(),
        }
    }

    /// The saga's context lacks `what`.
    pub fn missing(what: &str) -> Self {
        Self::rejected(
            Reason::SagaState,
            format!("{what} is missing from the saga context"),
        )
    }
}

impl From<Status> for StepError {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal => Self::Transient(format!("{:?}: {}", s.code(), s.message())),
            code => Self::Rejected {
                reason: Reason::parse(
                    &erp_runtime::error::status_reason(&s)
                        .unwrap_or_else(|| format!("{code:?}").to_uppercase()),
                ),
                detail: s.message().to_owned(),
            },
        }
    }
}

/// What a forward step that succeeded asks of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the next step is due.
    Next,
    /// v3, the last step: lines are left; plan another shipment from the routing step.
    AnotherShipment,
    /// Nothing can ship now: the lines are recorded as backordered and the saga waits for
    /// stock (routing again when it arrives).
    Backordered(String),
    /// v3: the stock went to another order between routing and reserving: plan again.
    TakenMeanwhile(String),
    /// Every line is shipped or cancelled: nothing is left to plan.
    NothingToShip(String),
}

/// The result of a forward step.
pub type StepResult = Result<Outcome, StepError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_kept() {
        for r in [
            Reason::InsufficientStock,
            Reason::OrderCancelled,
            Reason::CompensationRejected,
        ] {
            assert_eq!(Reason::parse(r.as_str()), r);
        }
        assert_eq!(
            Reason::parse("PAYMENT_DECLINED"),
            Reason::Other("PAYMENT_DECLINED".into())
        );
        assert_eq!(
            Reason::parse("PAYMENT_DECLINED").as_str(),
            "PAYMENT_DECLINED"
        );
    }

    #[test]
    fn outages_are_transient_and_refusals_carry_their_reason() {
        let down = StepError::from(Status::unavailable("connection refused"));
        assert!(matches!(down, StepError::Transient(_)));
        let short = StepError::from(Status::from(erp_runtime::error::ApiError::precondition(
            "INSUFFICIENT_STOCK",
            "2 x SKU-1 short",
        )));
        assert_eq!(
            short,
            StepError::rejected(Reason::InsufficientStock, "2 x SKU-1 short")
        );
    }
}
