//! Refunds, and the second pair of eyes on large ones: up to the configured threshold a refund
//! is paid at once; above it the request waits (`refund_approvals`) until an approver other
//! than the requester, whose approval limit covers the amount, approves or rejects it. Every
//! step appends to the audit trail in its own transaction.

use erp_proto::common::Money;
use erp_proto::finance::*;
use erp_runtime::audit;
use erp_runtime::auth::Caller;
use erp_runtime::time::{now_ms, opt_timestamp, to_timestamp};
use erp_runtime::validate::{Violations, next_page_token, page_offset, page_size};
use erp_runtime::{ApiError, ApiResult};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, TransactionTrait};

use crate::api::{FinanceApi, checked, payment_to_wire, post_against_clearing};
use crate::error::FinanceError;
use crate::store::{self, payment, refund_approval};

fn approval_to_wire(a: refund_approval::Model) -> RefundApproval {
    let status = match a.status.as_str() {
        "pending" => RefundApprovalStatus::Pending,
        "approved" => RefundApprovalStatus::Approved,
        "rejected" => RefundApprovalStatus::Rejected,
        _ => RefundApprovalStatus::Unspecified,
    };
    RefundApproval {
        approval_id: a.approval_id,
        payment_id: a.payment_id,
        amount: Some(Money {
            amount_minor: a.amount_minor,
            currency: a.currency,
        }),
        reason: a.reason,
        requested_by: a.requested_by,
        status: status as i32,
        decided_by: a.decided_by,
        decision_reason: a.decision_reason,
        requested_at: Some(to_timestamp(a.requested_at_ms)),
        decided_at: opt_timestamp(a.decided_at_ms),
    }
}

/// What the audit trail digests of a payment.
pub(crate) fn payment_state(p: &payment::Model) -> serde_json::Value {
    serde_json::json!({
        "status": p.status,
        "currency": p.currency,
        "authorized_minor": p.authorized_minor,
        "captured_minor": p.captured_minor,
        "refunded_minor": p.refunded_minor,
        "charged_back_minor": p.charged_back_minor,
    })
}

fn approval_state(a: &refund_approval::Model) -> serde_json::Value {
    serde_json::json!({
        "payment_id": a.payment_id,
        "amount_minor": a.amount_minor,
        "currency": a.currency,
        "status": a.status,
        "requested_by": a.requested_by,
        "decided_by": a.decided_by,
    })
}

/// Whether `amount` may be refunded from `p` now (the payment row is locked by the caller).
fn refundable(p: &payment::Model, amount: &Money) -> ApiResult<i64> {
    if !matches!(
        p.status.as_str(),
        "captured" | "partially_refunded" | "partially_captured"
    ) {
        return Err(FinanceError::PaymentNotCaptured {
            payment: p.payment_id.clone(),
            status: p.status.clone(),
            chargeback: false,
        }
        .into());
    }
    if amount.currency != p.currency {
        return Err(ApiError::invalid(
            "amount.currency",
            format!("payment is in {}", p.currency),
        ));
    }
    let refunded = checked(p.refunded_minor.checked_add(amount.amount_minor))?;
    if refunded > p.captured_minor {
        return Err(FinanceError::OverRefund {
            amount: amount.amount_minor,
            captured: p.captured_minor,
            refunded: p.refunded_minor,
        }
        .into());
    }
    if checked(refunded.checked_add(p.charged_back_minor))? > p.captured_minor {
        return Err(FinanceError::RefundChargedBack {
            amount: amount.amount_minor,
            charged_back: p.charged_back_minor,
            captured: p.captured_minor,
        }
        .into());
    }
    Ok(refunded)
}

impl FinanceApi {
    /// Pays `amount` back from the locked payment `p`: the journal entry, the payment row and
    /// the audit record, all in `txn`.
    async fn pay_refund<C: ConnectionTrait>(
        &self,
        txn: &C,
        caller: &Caller,
        p: payment::Model,
        amount: &Money,
        key: &str,
        reason: &str,
    ) -> ApiResult<payment::Model> {
        let refunded = refundable(&p, amount)?;
        let before = payment_state(&p);
        let captured = p.captured_minor;
        // The refund leaves the provider clearing account and reduces the channel's sales.
        post_against_clearing(txn, &p, "4200", amount.amount_minor, "refund", key, reason).await?;
        let still_capturing = p.status == "partially_captured";
        let mut am: payment::ActiveModel = p.into();
        am.refunded_minor = Set(refunded);
        am.status = Set(if still_capturing {
            // More shipments are coming: the payment keeps taking captures.
            "partially_captured"
        } else if refunded == captured {
            "refunded"
        } else {
            "partially_refunded"
        }
        .into());
        let p = am.update(txn).await?;
        audit::record(
            txn,
            audit::Change {
                caller,
                target: format!("payment:{}", p.payment_id),
                reason,
                before: Some(before),
                after: Some(payment_state(&p)),
            },
        )
        .await?;
        Ok(p)
    }

    pub(crate) async fn refund(
        &self,
        caller: &Caller,
        req: RefundPaymentRequest,
    ) -> ApiResult<RefundPaymentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("payment_id", &req.payment_id);
        let amount = req.amount.clone().unwrap_or_default();
        v.positive("amount.amount_minor", amount.amount_minor);
        v.optional_text("reason", &req.reason, 500);
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "finance.RefundPayment", req);
        let p = store::payment_for_update(&txn, &req.payment_id, "").await?;
        let response = if amount.amount_minor > self.refund_approval_threshold_minor {
            // Checked now so that an impossible refund is refused at once, and again at the
            // approval, when the payment may have moved.
            refundable(&p, &amount)?;
            let approval = refund_approval::ActiveModel {
                approval_id: Set(uuid::Uuid::now_v7().to_string()),
                payment_id: Set(p.payment_id.clone()),
                amount_minor: Set(amount.amount_minor),
                currency: Set(amount.currency.clone()),
                reason: Set(req.reason.clone()),
                requested_by: Set(caller.subject.clone()),
                status: Set("pending".into()),
                decided_by: Set(String::new()),
                decision_reason: Set(String::new()),
                requested_at_ms: Set(now_ms()),
                decided_at_ms: Set(None),
            }
            .insert(&txn)
            .await?;
            audit::record(
                &txn,
                audit::Change {
                    caller,
                    target: format!("refund_approval:{}", approval.approval_id),
                    reason: &req.reason,
                    before: None,
                    after: Some(approval_state(&approval)),
                },
            )
            .await?;
            RefundPaymentResponse {
                payment: Some(payment_to_wire(p)),
                pending_approval: Some(approval_to_wire(approval)),
            }
        } else {
            let p = self
                .pay_refund(&txn, caller, p, &amount, &req.idempotency_key, &req.reason)
                .await?;
            RefundPaymentResponse {
                payment: Some(payment_to_wire(p)),
                pending_approval: None,
            }
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    /// The pending approval `id`, locked until the transaction ends (two approvers racing:
    /// the second sees the first's decision).
    async fn pending_approval<C: ConnectionTrait>(
        c: &C,
        id: &str,
        caller: &Caller,
    ) -> ApiResult<refund_approval::Model> {
        let a = store::approval_for_update(c, id).await?;
        if a.status != "pending" {
            return Err(FinanceError::NotPending {
                approval: id.to_owned(),
                status: a.status,
                by: a.decided_by,
            }
            .into());
        }
        if caller.authenticated && caller.subject == a.requested_by {
            return Err(ApiError::denied(format!(
                "maker-checker: {} asked for refund {id} and cannot decide on it",
                caller.subject
            )));
        }
        Ok(a)
    }

    pub(crate) async fn approve_refund(
        &self,
        caller: &Caller,
        req: ApproveRefundRequest,
    ) -> ApiResult<ApproveRefundResponse> {
        let mut v = Violations::new();
        v.id("approval_id", &req.approval_id);
        v.optional_text("reason", &req.reason, 500);
        v.finish()?;
        let txn = self.db.begin().await?;
        let a = Self::pending_approval(&txn, &req.approval_id, caller).await?;
        caller.may_approve(a.amount_minor).map_err(|why| {
            ApiError::denied(format!(
                "refund of {} {}: {why}",
                a.amount_minor, a.currency
            ))
        })?;
        let p = store::payment_for_update(&txn, &a.payment_id, "").await?;
        let amount = Money {
            amount_minor: a.amount_minor,
            currency: a.currency.clone(),
        };
        let reason = if req.reason.is_empty() {
            a.reason.clone()
        } else {
            req.reason.clone()
        };
        let p = self
            .pay_refund(
                &txn,
                caller,
                p,
                &amount,
                &format!("approval:{}", a.approval_id),
                &reason,
            )
            .await?;
        let before = approval_state(&a);
        let mut am: refund_approval::ActiveModel = a.into();
        am.status = Set("approved".into());
        am.decided_by = Set(caller.subject.clone());
        am.decision_reason = Set(req.reason.clone());
        am.decided_at_ms = Set(Some(now_ms()));
        let a = am.update(&txn).await?;
        // The decision itself is audited, like a rejection (the payment's change is audited
        // by pay_refund).
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("refund_approval:{}", a.approval_id),
                reason: &reason,
                before: Some(before),
                after: Some(approval_state(&a)),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(ApproveRefundResponse {
            payment: Some(payment_to_wire(p)),
            approval: Some(approval_to_wire(a)),
        })
    }

    pub(crate) async fn reject_refund(
        &self,
        caller: &Caller,
        req: RejectRefundRequest,
    ) -> ApiResult<RejectRefundResponse> {
        let mut v = Violations::new();
        v.id("approval_id", &req.approval_id);
        v.text("reason", &req.reason, 500);
        v.finish()?;
        let txn = self.db.begin().await?;
        let a = Self::pending_approval(&txn, &req.approval_id, caller).await?;
        let before = approval_state(&a);
        let mut am: refund_approval::ActiveModel = a.into();
        am.status = Set("rejected".into());
        am.decided_by = Set(caller.subject.clone());
        am.decision_reason = Set(req.reason.clone());
        am.decided_at_ms = Set(Some(now_ms()));
        let a = am.update(&txn).await?;
        audit::record(
            &txn,
            audit::Change {
                caller,
                target: format!("refund_approval:{}", a.approval_id),
                reason: &req.reason,
                before: Some(before),
                after: Some(approval_state(&a)),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(RejectRefundResponse {
            approval: Some(approval_to_wire(a)),
        })
    }

    pub(crate) async fn list_refund_approvals(
        &self,
        req: ListRefundApprovalsRequest,
    ) -> ApiResult<ListRefundApprovalsResponse> {
        let limit = page_size(req.page_size)?;
        let offset = page_offset(&req.page_token)?;
        let status = match RefundApprovalStatus::try_from(req.status) {
            Ok(RefundApprovalStatus::Unspecified) => None,
            Ok(RefundApprovalStatus::Pending) => Some("pending"),
            Ok(RefundApprovalStatus::Approved) => Some("approved"),
            Ok(RefundApprovalStatus::Rejected) => Some("rejected"),
            Err(_) => return Err(ApiError::invalid("status", "unknown status")),
        };
        let rows = store::approvals_page(&self.db, status, offset, limit).await?;
        let next_page_token = next_page_token(offset, rows.len(), limit);
        Ok(ListRefundApprovalsResponse {
            approvals: rows.into_iter().map(approval_to_wire).collect(),
            next_page_token,
        })
    }
}
