//! The one place where service errors become gRPC statuses with rich details
//! (`google.rpc.BadRequest` for invalid fields, `google.rpc.ErrorInfo` with a machine-readable
//! reason for failed preconditions).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The error domain carried in `ErrorInfo`.
pub const ERROR_DOMAIN: &str = "erp.example.com";

/// What a handler can fail with. Domain errors of each service convert into this.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// One or more request fields are invalid; nothing was written.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<(String, String)>),
    /// The request is valid but the system is not in a state that allows it.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable, e.g. `INSUFFICIENT_STOCK`.
        reason: String,
        message: String,
        metadata: HashMap<String, String>,
    },
    #[error("{0}")]
    NotFound(String),
    /// The caller is known but may not do this (a limit, maker-checker, a fulfillment that is
    /// not theirs to signal).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A dependency (database, peer service) is temporarily unavailable: retry.
    #[error("{0}")]
    Unavailable(String),
    /// The operation conflicted with a concurrent one: retry.
    #[error("{0}")]
    Aborted(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A peer service's answer, passed on with its code, message and details (a refusal of
    /// the inventory service during a receipt, say).
    #[error("{}", .0.message())]
    Upstream(Status),
}

fn describe(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(f, d)| format!("{f}: {d}"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub type ApiResult<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![(field.into(), description.into())])
    }

    pub fn precondition(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason: reason.into(),
            message: message.into(),
            metadata: HashMap::new(),
        }
    }

    pub fn denied(why: impl Into<String>) -> Self {
        Self::PermissionDenied(why.into())
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    /// The reason of a failed precondition, if this is one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::FailedPrecondition { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let message = err.to_string();
        match err {
            ApiError::InvalidArgument(violations) => {
                let violations: Vec<FieldViolation> = violations
                    .into_iter()
                    .map(|(f, d)| FieldViolation::new(f, d))
                    .collect();
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::FailedPrecondition {
                reason, metadata, ..
            } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
            ),
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::PermissionDenied(_) => Status::permission_denied(message),
            ApiError::AlreadyExists(_) => Status::already_exists(message),
            ApiError::Unavailable(_) => Status::unavailable(message),
            ApiError::Aborted(_) => Status::aborted(message),
            // The detail (a database's error text, a query) stays in the log; the caller gets a
            // reference to quote.
            ApiError::Internal(detail) => {
                let reference = uuid::Uuid::now_v7();
                tracing::error!(%reference, detail = %detail, "internal error");
                Status::internal(format!("internal error; reference {reference}"))
            }
            ApiError::Upstream(status) => status,
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                let reference = uuid::Uuid::now_v7();
                tracing::warn!(%reference, error = %err, "database unavailable");
                Self::Unavailable(format!("database unavailable; reference {reference}"))
            }
            _ if matches!(
                err.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) =>
            {
                // Two writers raced to create the same record (read, nothing there, insert):
                // the loser's retry reads the winner's row and answers as a repeat would.
                let reference = uuid::Uuid::now_v7();
                tracing::warn!(%reference, error = %err, "concurrent insert of one key");
                Self::Aborted(format!(
                    "a concurrent request created the same record; retry; reference {reference}"
                ))
            }
            _ => {
                let text = err.to_string();
                // Serialization failures and lock timeouts are worth a retry by the caller.
                if text.contains("could not serialize")
                    || text.contains("deadlock detected")
                    || text.contains("database is locked")
                {
                    let reference = uuid::Uuid::now_v7();
                    tracing::warn!(%reference, error = %err, "database conflict");
                    Self::Aborted(format!("concurrent update, retry; reference {reference}"))
                } else {
                    Self::Internal(format!("database: {text}"))
                }
            }
        }
    }
}

impl From<sea_orm::TransactionError<ApiError>> for ApiError {
    fn from(err: sea_orm::TransactionError<ApiError>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(e) => e.into(),
            sea_orm::TransactionError::Transaction(e) => e,
        }
    }
}

/// What a tonic handler returns for a handler result: the one place results become statuses.
pub fn respond<T>(result: ApiResult<T>) -> Result<tonic::Response<T>, Status> {
    result.map(tonic::Response::new).map_err(Status::from)
}

/// A gRPC status received from a peer, classified for retry decisions.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted
    )
}

/// The `ErrorInfo.reason` of a status, if it carries one.
pub fn status_reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_fields_in_details() {
        let status: Status = ApiError::InvalidArgument(vec![
            ("sku".into(), "must not be empty".into()),
            ("quantity".into(), "must be positive".into()),
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("sku: must not be empty"));
        let bad = status.get_details_bad_request().unwrap();
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["sku", "quantity"]);
    }

    #[test]
    fn database_errors_reach_the_log_not_the_caller() {
        let status: Status = ApiError::from(sea_orm::DbErr::Custom(
            "relation \"payments\" violates check constraint payments_refund_le_capture".into(),
        ))
        .into();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("internal error; reference "));
        assert!(
            !status.message().contains("payments"),
            "{}",
            status.message()
        );
    }

    /// Against a real SQLite file: an insert that loses a race on a unique key is ABORTED
    /// (retry and be answered as a repeat), not INTERNAL.
    #[tokio::test]
    async fn unique_violation_is_aborted() {
        use sea_orm::{ConnectionTrait, Database};
        let path = std::env::temp_dir().join(format!("erp-unique-{}.db", uuid::Uuid::now_v7()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let db = Database::connect(&url).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .await
            .unwrap();
        db.execute_unprepared("INSERT INTO t VALUES ('a')")
            .await
            .unwrap();
        let err = db
            .execute_unprepared("INSERT INTO t VALUES ('a')")
            .await
            .unwrap_err();
        let status: Status = ApiError::from(err).into();
        assert_eq!(status.code(), Code::Aborted, "{}", status.message());
        assert!(status.message().contains("retry"), "{}", status.message());
        db.close().await.unwrap();
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn failed_precondition_carries_reason() {
        let status: Status =
            ApiError::precondition("INSUFFICIENT_STOCK", "sku A at east: need 5, available 2")
                .into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status_reason(&status).as_deref(),
            Some("INSUFFICIENT_STOCK")
        );
    }
}
