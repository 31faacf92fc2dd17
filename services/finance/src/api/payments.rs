//! Payments with the provider: authorize, capture, void.

use super::*;
use crate::error::FinanceError;

impl FinanceApi {
    pub(super) async fn authorize(
        &self,
        req: AuthorizePaymentRequest,
    ) -> ApiResult<AuthorizePaymentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.text("order_id", &req.order_id, 100);
        v.code("channel", &req.channel);
        let amount = req.amount.clone().unwrap_or_default();
        v.positive("amount.amount_minor", amount.amount_minor);
        v.currency("amount.currency", &amount.currency);
        v.text("payment_method_token", &req.payment_method_token, 200);
        v.finish()?;
        let (txn, guard) = match idempotency::begin::<_, AuthorizePaymentResponse>(
            &self.db,
            "finance.AuthorizePayment",
            &req.idempotency_key,
            &req,
        )
        .await?
        {
            // A repeat of a declined authorization is the same decline.
            Begun::Replay(previous) => {
                return match previous.payment {
                    Some(p) if p.status == PaymentStatus::Declined as i32 => {
                        Err(declined(&req.order_id, p.decline_reason))
                    }
                    _ => Ok(previous),
                };
            }
            Begun::New(txn, guard) => (txn, guard),
        };
        self.provider_timeout(&req.payment_method_token, &req.idempotency_key)?;
        let answer = domain::fake_authorize(
            &req.payment_method_token,
            amount.amount_minor,
            &req.idempotency_key,
        );
        let (status, reference, reason) = match &answer {
            ProviderAnswer::Approved { reference } => {
                ("authorized", reference.clone(), String::new())
            }
            ProviderAnswer::Declined { reason } => ("declined", String::new(), reason.clone()),
        };
        let authorized_at = now_ms();
        let model = payment::ActiveModel {
            payment_id: Set(uuid::Uuid::now_v7().to_string()),
            order_id: Set(req.order_id.clone()),
            channel: Set(req.channel.clone()),
            currency: Set(amount.currency.clone()),
            authorized_minor: Set(if status == "authorized" {
                amount.amount_minor
            } else {
                0
            }),
            captured_minor: Set(0),
            refunded_minor: Set(0),
            charged_back_minor: Set(0),
            status: Set(status.to_owned()),
            provider_reference: Set(reference),
            decline_reason: Set(reason.clone()),
            created_at_ms: Set(authorized_at),
            expires_at_ms: Set(authorized_at.saturating_add(self.authorization_ttl_ms)),
        }
        .insert(&txn)
        .await?;
        let response = AuthorizePaymentResponse {
            payment: Some(payment_to_wire(model)),
        };
        // A decline is an answer too: the same key gets the same decline.
        guard.commit(txn, &response).await?;
        if let ProviderAnswer::Declined { reason } = answer {
            return Err(declined(&req.order_id, reason));
        }
        Ok(response)
    }

    pub(super) async fn capture(
        &self,
        req: CapturePaymentRequest,
    ) -> ApiResult<CapturePaymentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.id("payment_id", &req.payment_id);
        if let Some(a) = &req.amount {
            v.positive("amount.amount_minor", a.amount_minor);
        }
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "finance.CapturePayment", req);
        let p = store::payment_for_update(&txn, &req.payment_id, "").await?;
        if !matches!(p.status.as_str(), "authorized" | "partially_captured") {
            return Err(FinanceError::PaymentNotAuthorized {
                payment: p.payment_id,
                status: p.status,
            }
            .into());
        }
        if p.expires_at_ms > 0 && now_ms() >= p.expires_at_ms {
            return Err(FinanceError::AuthorizationExpired(p.payment_id).into());
        }
        let left = p.authorized_minor - p.captured_minor;
        let amount = req.amount.as_ref().map_or(left, |a| a.amount_minor);
        if let Some(a) = &req.amount
            && a.currency != p.currency
        {
            return Err(ApiError::invalid(
                "amount.currency",
                format!("payment is in {}", p.currency),
            ));
        }
        if amount > left {
            return Err(FinanceError::OverCapture {
                amount,
                authorized: p.authorized_minor,
                captured: p.captured_minor,
            }
            .into());
        }
        let captured = checked(p.captured_minor.checked_add(amount))?;
        let mut am: payment::ActiveModel = p.into();
        am.captured_minor = Set(captured);
        am.status = Set(if req.more_to_follow && amount < left {
            "partially_captured"
        } else {
            "captured"
        }
        .into());
        let p = am.update(&txn).await?;
        let response = CapturePaymentResponse {
            payment: Some(payment_to_wire(p)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }

    pub(super) async fn void(&self, req: VoidPaymentRequest) -> ApiResult<VoidPaymentResponse> {
        let mut v = Violations::new();
        v.idempotency_key(&req.idempotency_key);
        v.check(
            !(req.payment_id.is_empty() && req.order_id.is_empty()),
            "payment_id",
            "give payment_id or order_id",
        );
        v.finish()?;
        let (txn, guard) = erp_runtime::begin_idempotent!(&self.db, "finance.VoidPayment", req);
        idempotency::tombstone_forward(&txn, "finance.AuthorizePayment", &req.idempotency_key)
            .await?;
        let p = store::payment_for_update(&txn, &req.payment_id, &req.order_id).await?;
        let p = match p.status.as_str() {
            "authorized" => {
                let mut am: payment::ActiveModel = p.into();
                am.status = Set("voided".into());
                am.update(&txn).await?
            }
            // Part was captured for what shipped: the rest of the authorization is released.
            "partially_captured" => {
                let mut am: payment::ActiveModel = p.into();
                am.status = Set("captured".into());
                am.update(&txn).await?
            }
            "voided" => p,
            other => {
                return Err(FinanceError::PaymentNotVoidable {
                    payment: p.payment_id.clone(),
                    status: other.to_owned(),
                }
                .into());
            }
        };
        let response = VoidPaymentResponse {
            payment: Some(payment_to_wire(p)),
        };
        guard.commit(txn, &response).await?;
        Ok(response)
    }
}
