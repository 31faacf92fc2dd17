//! Finance API tests on SQLite and PostgreSQL: the journal only ever holds balanced entries,
//! payments follow the provider's answers and never refund more than was captured.

#![allow(clippy::unwrap_used)]

use erp_proto::common::{Actor, Money};
use erp_proto::finance::finance_service_client::FinanceServiceClient;
use erp_proto::finance::*;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};
use tonic::Code;
use tonic_types::StatusExt;

fn line(account: &str, debit: i64, credit: i64) -> JournalLine {
    JournalLine {
        account_code: account.into(),
        debit_minor: debit,
        credit_minor: credit,
        currency: "USD".into(),
        channel: "web".into(),
        order_id: "o-1".into(),
        memo: String::new(),
    }
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

async fn journal_and_payments(backend: Backend) {
    let svc = testing::spawn::<erp_finance::Service>(&backend).await;
    let mut c = FinanceServiceClient::new(svc.channel().await);

    // Unbalanced: refused, nothing written.
    let err = c
        .post_journal(PostJournalRequest {
            idempotency_key: "j0".into(),
            memo: "sale".into(),
            source: None,
            lines: vec![line("1100", 1000, 0), line("4000", 0, 900)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("debits 1000 != credits 900"),
        "{}",
        err.message()
    );
    let unknown = c
        .post_journal(PostJournalRequest {
            idempotency_key: "j0b".into(),
            memo: "sale".into(),
            source: None,
            lines: vec![line("1100", 1000, 0), line("9999", 0, 1000)],
        })
        .await
        .unwrap_err();
    let fields: Vec<_> = unknown
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["lines[1].account_code"]);

    // A sale: receivable against revenue and tax; posted once whatever the retries.
    let sale = PostJournalRequest {
        idempotency_key: "j1".into(),
        memo: "sale o-1".into(),
        source: None,
        lines: vec![
            line("1100", 1070, 0),
            line("4000", 0, 1000),
            line("2200", 0, 70),
        ],
    };
    let first = c.post_journal(sale.clone()).await.unwrap().into_inner();
    let again = c.post_journal(sale).await.unwrap().into_inner();
    assert_eq!(first, again);
    let tb = c
        .get_trial_balance(GetTrialBalanceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(tb.balanced);
    assert_eq!(tb.totals[0].debit_minor, 1070);

    // Reversal: balances and cancels; a second reversal is refused.
    let entry_id = first.entry.unwrap().entry_id;
    let actor = Some(Actor {
        id: "controller".into(),
        reason: "duplicate invoice".into(),
    });
    c.reverse_journal(ReverseJournalRequest {
        idempotency_key: "rev1".into(),
        entry_id: entry_id.clone(),
        actor: actor.clone(),
    })
    .await
    .unwrap();
    let err = c
        .reverse_journal(ReverseJournalRequest {
            idempotency_key: "rev2".into(),
            entry_id,
            actor,
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("ALREADY_REVERSED"));
    let tb = c
        .get_trial_balance(GetTrialBalanceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(tb.balanced);
    assert!(
        tb.rows.iter().all(|r| r.balance_minor == 0),
        "{:?}",
        tb.rows
    );

    // Payments: a decline is FAILED_PRECONDITION / PAYMENT_DECLINED, and stays one on repeat.
    let declined = AuthorizePaymentRequest {
        idempotency_key: "a0".into(),
        order_id: "o-0".into(),
        channel: "web".into(),
        amount: usd(500),
        payment_method_token: "tok_decline_insufficient_funds".into(),
    };
    for _ in 0..2 {
        let err = c.authorize_payment(declined.clone()).await.unwrap_err();
        assert_eq!(status_reason(&err).as_deref(), Some("PAYMENT_DECLINED"));
    }
    let auth = c
        .authorize_payment(AuthorizePaymentRequest {
            idempotency_key: "a1".into(),
            order_id: "o-1".into(),
            channel: "web".into(),
            amount: usd(1070),
            payment_method_token: "tok_visa".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(auth.status, PaymentStatus::Authorized as i32);
    let over = c
        .capture_payment(CapturePaymentRequest {
            idempotency_key: "cap0".into(),
            payment_id: auth.payment_id.clone(),
            amount: usd(2000),
            more_to_follow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&over).as_deref(), Some("OVER_CAPTURE"));
    let captured = c
        .capture_payment(CapturePaymentRequest {
            idempotency_key: "cap1".into(),
            payment_id: auth.payment_id.clone(),
            amount: None,
            more_to_follow: false,
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(captured.captured.unwrap().amount_minor, 1070);
    let err = c
        .void_payment(VoidPaymentRequest {
            idempotency_key: "v1".into(),
            payment_id: auth.payment_id.clone(),
            order_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("PAYMENT_NOT_VOIDABLE"));
    let refund = |key: &str, amount| RefundPaymentRequest {
        idempotency_key: key.into(),
        payment_id: auth.payment_id.clone(),
        amount: usd(amount),
        reason: "damaged".into(),
    };
    let p = c
        .refund_payment(refund("r1", 70))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.status, PaymentStatus::PartiallyRefunded as i32);
    let err = c.refund_payment(refund("r2", 1001)).await.unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("OVER_REFUND"));
    let p = c
        .refund_payment(refund("r3", 1000))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.status, PaymentStatus::Refunded as i32);
    assert_eq!(p.refunded.unwrap().amount_minor, 1070);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_and_payments_on_every_backend() {
    for backend in testing::backends() {
        journal_and_payments(backend).await;
    }
}

async fn taxes(backend: Backend) {
    let svc = testing::spawn::<erp_finance::Service>(&backend).await;
    let mut c = FinanceServiceClient::new(svc.channel().await);
    let err = c
        .set_tax_rate(SetTaxRateRequest {
            reason: "setup".into(),
            rate: Some(TaxRate {
                jurisdiction: "usa".into(),
                tax_class: String::new(),
                rate_bps: 20_000,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        testing::bad_fields(&err),
        ["rate.jurisdiction", "rate.tax_class", "rate.rate_bps"]
    );
    for (jurisdiction, rate_bps) in [("US", 500), ("US-NJ", 663), ("US-NJ", 663)] {
        c.set_tax_rate(SetTaxRateRequest {
            reason: "setup".into(),
            rate: Some(TaxRate {
                jurisdiction: jurisdiction.into(),
                tax_class: "standard".into(),
                rate_bps,
            }),
        })
        .await
        .unwrap();
    }
    let line = |id: &str, class: &str, amount_minor| TaxableLine {
        line_id: id.into(),
        tax_class: class.into(),
        amount: Some(Money {
            amount_minor,
            currency: "USD".into(),
        }),
    };
    let calc = |jurisdiction: &str| CalculateTaxRequest {
        jurisdiction: jurisdiction.into(),
        lines: vec![line("l1", "standard", 2598), line("l2", "food", 1000)],
    };
    // New Jersey's own rate; food has no rate anywhere here, so it is not taxed.
    let nj = c.calculate_tax(calc("US-NJ")).await.unwrap().into_inner();
    let rates: Vec<_> = nj.lines.iter().map(|l| l.rate_bps).collect();
    assert_eq!(rates, [663, 0]);
    assert_eq!(nj.total_tax.unwrap().amount_minor, 172);
    // California has no rate of its own: the country's applies.
    let ca = c.calculate_tax(calc("US-CA")).await.unwrap().into_inner();
    assert_eq!(ca.total_tax.unwrap().amount_minor, 130);
    // Nothing configured for Germany.
    let de = c.calculate_tax(calc("DE")).await.unwrap().into_inner();
    assert_eq!(de.total_tax.unwrap().amount_minor, 0);
    let err = c
        .calculate_tax(CalculateTaxRequest {
            jurisdiction: "US-NJ".into(),
            lines: vec![line("l1", "standard", 100), {
                let mut l = line("l2", "standard", -5);
                l.amount.as_mut().unwrap().currency = "EUR".into();
                l
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("lines[1].amount"),
        "{}",
        err.message()
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_timeout_records_nothing_and_the_retry_authorizes_once() {
    let svc = testing::spawn::<erp_finance::Service>(&Backend::Sqlite).await;
    let mut c = FinanceServiceClient::new(svc.channel().await);
    let auth = AuthorizePaymentRequest {
        idempotency_key: "auth-slow-1".into(),
        order_id: uuid::Uuid::now_v7().to_string(),
        channel: "web".into(),
        amount: Some(Money {
            amount_minor: 4_200,
            currency: "USD".into(),
        }),
        payment_method_token: "tok_timeout_visa".into(),
    };
    let err = c.authorize_payment(auth.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let nothing = c
        .get_payment(GetPaymentRequest {
            payment_id: String::new(),
            order_id: auth.order_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(nothing.code(), Code::NotFound, "a timeout records nothing");
    let first = c
        .authorize_payment(auth.clone())
        .await
        .unwrap()
        .into_inner();
    let again = c.authorize_payment(auth).await.unwrap().into_inner();
    assert_eq!(first, again);
    assert_eq!(
        first.payment.unwrap().status,
        PaymentStatus::Authorized as i32
    );
    svc.stop().await;
}

/// An order shipped in parts: one capture per shipment against one authorization, a refund
/// between them, and a void at the end that releases only what no shipment captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_captures_then_the_rest_is_released() {
    let svc = testing::spawn::<erp_finance::Service>(&Backend::Sqlite).await;
    let mut c = FinanceServiceClient::new(svc.channel().await);
    let auth = c
        .authorize_payment(AuthorizePaymentRequest {
            idempotency_key: "parts-auth".into(),
            order_id: "o-parts".into(),
            channel: "web".into(),
            amount: usd(1000),
            payment_method_token: "tok_visa".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    let capture = |key: &str, amount: i64| CapturePaymentRequest {
        idempotency_key: key.into(),
        payment_id: auth.payment_id.clone(),
        amount: usd(amount),
        more_to_follow: true,
    };
    let p = c
        .capture_payment(capture("parts-c1", 400))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.status, PaymentStatus::PartiallyCaptured as i32);
    assert_eq!(p.captured.unwrap().amount_minor, 400);
    // A repeat of the same capture is the same capture, not a second one.
    let again = c
        .capture_payment(capture("parts-c1", 400))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(again.captured.unwrap().amount_minor, 400);
    let over = c
        .capture_payment(capture("parts-c2", 700))
        .await
        .unwrap_err();
    assert_eq!(status_reason(&over).as_deref(), Some("OVER_CAPTURE"));
    // A return of the first shipment is refunded while the second is still coming.
    let p = c
        .refund_payment(RefundPaymentRequest {
            idempotency_key: "parts-r1".into(),
            payment_id: auth.payment_id.clone(),
            amount: usd(100),
            reason: "returned".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.status, PaymentStatus::PartiallyCaptured as i32);
    // A dispute over the first shipment does not stop the next shipment's capture either.
    let p = c
        .record_chargeback(RecordChargebackRequest {
            idempotency_key: "parts-d1".into(),
            payment_id: auth.payment_id.clone(),
            amount: usd(50),
            reason: "not received".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.status, PaymentStatus::PartiallyCaptured as i32);
    let p = c
        .capture_payment(capture("parts-c3", 300))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.captured.unwrap().amount_minor, 700);
    assert_eq!(p.status, PaymentStatus::PartiallyCaptured as i32);
    // The last line was cancelled: the void releases the 300 never captured, keeps the 700.
    let p = c
        .void_payment(VoidPaymentRequest {
            idempotency_key: "parts-v".into(),
            payment_id: auth.payment_id.clone(),
            order_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.status, PaymentStatus::Captured as i32);
    assert_eq!(p.captured.unwrap().amount_minor, 700);
    assert_eq!(p.refunded.unwrap().amount_minor, 100);
    let closed = c
        .capture_payment(capture("parts-c4", 100))
        .await
        .unwrap_err();
    assert_eq!(
        status_reason(&closed).as_deref(),
        Some("PAYMENT_NOT_AUTHORIZED")
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tax_rates_by_jurisdiction_and_class_on_every_backend() {
    for backend in testing::backends() {
        taxes(backend).await;
    }
}

/// The provider honours an authorization only for a while: a capture after that is refused
/// and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_authorization_cannot_be_captured() {
    let svc = testing::spawn_env::<erp_finance::Service>(
        &Backend::Sqlite,
        &[("ERP__FINANCE__AUTHORIZATION_TTL_MS", "300")],
    )
    .await;
    let mut c = FinanceServiceClient::new(svc.channel().await);
    let auth = c
        .authorize_payment(AuthorizePaymentRequest {
            idempotency_key: "exp-auth".into(),
            order_id: "o-exp".into(),
            channel: "web".into(),
            amount: usd(500),
            payment_method_token: "tok_visa".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    let expires = auth.expires_at.unwrap();
    let created = auth.created_at.unwrap();
    assert_eq!(
        erp_runtime::time::from_timestamp(&expires) - erp_runtime::time::from_timestamp(&created),
        300
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let err = c
        .capture_payment(CapturePaymentRequest {
            idempotency_key: "exp-cap".into(),
            payment_id: auth.payment_id.clone(),
            amount: None,
            more_to_follow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status_reason(&err).as_deref(),
        Some("AUTHORIZATION_EXPIRED")
    );
    let p = c
        .get_payment(GetPaymentRequest {
            payment_id: auth.payment_id.clone(),
            order_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(p.status, PaymentStatus::Authorized as i32);
    assert_eq!(p.captured.map_or(0, |m| m.amount_minor), 0);
    svc.stop().await;
}
