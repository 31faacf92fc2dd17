//! Money that concurrency and hostile amounts cannot break, on SQLite and PostgreSQL (where
//! READ COMMITTED lets two transactions read the same row: the races show there). Many clients
//! hit one payment at once; the payment, the journal and the database's own constraints must
//! agree afterwards.

#![allow(clippy::unwrap_used)]

use erp_proto::common::Money;
use erp_proto::finance::finance_service_client::FinanceServiceClient;
use erp_proto::finance::*;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend, TestService};
use tonic::Code;
use tonic::transport::Channel;

fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: currency.into(),
    })
}

async fn authorize(c: &mut FinanceServiceClient<Channel>, order: &str, amount: i64) -> Payment {
    c.authorize_payment(AuthorizePaymentRequest {
        idempotency_key: format!("auth-{order}"),
        order_id: order.into(),
        channel: "web".into(),
        amount: money(amount, "USD"),
        payment_method_token: "tok_visa".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .payment
    .unwrap()
}

async fn capture(c: &mut FinanceServiceClient<Channel>, p: &Payment) -> Payment {
    c.capture_payment(CapturePaymentRequest {
        idempotency_key: format!("cap-{}", p.payment_id),
        payment_id: p.payment_id.clone(),
        amount: None,
        more_to_follow: false,
    })
    .await
    .unwrap()
    .into_inner()
    .payment
    .unwrap()
}

async fn payment(c: &mut FinanceServiceClient<Channel>, id: &str) -> Payment {
    c.get_payment(GetPaymentRequest {
        payment_id: id.into(),
        order_id: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .payment
    .unwrap()
}

fn amount(m: &Option<Money>) -> i64 {
    m.as_ref().map_or(0, |m| m.amount_minor)
}

/// The refunds posted to the journal for this payment, in minor units.
async fn refunds_in_journal(c: &mut FinanceServiceClient<Channel>, order: &str) -> i64 {
    c.list_journal_entries(ListJournalEntriesRequest {
        order_id: order.into(),
        page_size: 500,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .entries
    .iter()
    .filter(|e| e.memo.contains("refund"))
    .flat_map(|e| e.lines.iter())
    .map(|l| l.debit_minor)
    .sum()
}

async fn concurrent_refunds_never_exceed_the_capture(svc: &TestService) {
    let mut c = FinanceServiceClient::new(svc.channel().await);
    let order = format!("race-refund-{}", uuid::Uuid::now_v7());
    let p = authorize(&mut c, &order, 10_000).await;
    let p = capture(&mut c, &p).await;
    assert_eq!(amount(&p.captured), 10_000);
    // Twelve clients refund 30.00 each, each with its own key, all at once.
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut c = c.clone();
        let id = p.payment_id.clone();
        calls.push(tokio::spawn(async move {
            c.refund_payment(RefundPaymentRequest {
                idempotency_key: format!("refund-{id}-{i}"),
                payment_id: id,
                amount: money(3_000, "USD"),
                reason: "damaged".into(),
            })
            .await
        }));
    }
    let mut accepted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                assert_eq!(status_reason(&e).as_deref(), Some("OVER_REFUND"));
            }
        }
    }
    let after = payment(&mut c, &p.payment_id).await;
    println!(
        "{}: 12 concurrent refunds of 30.00 on a 100.00 capture: {accepted} accepted, {} refunded",
        svc.backend_name(),
        amount(&after.refunded)
    );
    assert_eq!(accepted, 3, "exactly what the capture covers");
    assert_eq!(amount(&after.refunded), 9_000);
    assert_eq!(
        refunds_in_journal(&mut c, &order).await,
        9_000,
        "the journal pays out what the payment shows"
    );
}

async fn capture_racing_void_has_one_winner(svc: &TestService) {
    let mut c = FinanceServiceClient::new(svc.channel().await);
    for round in 0..8 {
        let order = format!("race-void-{round}-{}", uuid::Uuid::now_v7());
        let p = authorize(&mut c, &order, 5_000).await;
        let (mut c1, mut c2) = (c.clone(), c.clone());
        let (id1, id2) = (p.payment_id.clone(), p.payment_id.clone());
        let captured = tokio::spawn(async move {
            c1.capture_payment(CapturePaymentRequest {
                idempotency_key: format!("cap-{id1}"),
                payment_id: id1,
                amount: None,
                more_to_follow: false,
            })
            .await
        });
        let voided = tokio::spawn(async move {
            c2.void_payment(VoidPaymentRequest {
                idempotency_key: format!("void-{id2}"),
                payment_id: id2,
                order_id: String::new(),
            })
            .await
        });
        let (captured, voided) = (captured.await.unwrap(), voided.await.unwrap());
        let after = payment(&mut c, &p.payment_id).await;
        match (captured.is_ok(), voided.is_ok()) {
            (true, false) => {
                assert_eq!(after.status, PaymentStatus::Captured as i32);
                assert_eq!(amount(&after.captured), 5_000);
            }
            (false, true) => {
                assert_eq!(after.status, PaymentStatus::Voided as i32);
                assert_eq!(amount(&after.captured), 0);
            }
            other => panic!("capture and void both {other:?}: {after:#?}"),
        }
    }
}

async fn hostile_amounts_change_nothing(svc: &TestService) {
    let mut c = FinanceServiceClient::new(svc.channel().await);
    let order = format!("hostile-{}", uuid::Uuid::now_v7());
    let p = authorize(&mut c, &order, 10_000).await;
    let p = capture(&mut c, &p).await;
    let refund = |key: &str, m: Option<Money>| RefundPaymentRequest {
        idempotency_key: key.into(),
        payment_id: p.payment_id.clone(),
        amount: m,
        reason: "test".into(),
    };
    c.refund_payment(refund("tiny", money(1, "USD")))
        .await
        .unwrap();
    for (key, m, code) in [
        ("max", money(i64::MAX, "USD"), Code::InvalidArgument),
        ("min", money(i64::MIN, "USD"), Code::InvalidArgument),
        ("negative", money(-500, "USD"), Code::InvalidArgument),
        (
            "over-cap",
            money(1_000_000_000_001, "USD"),
            Code::InvalidArgument,
        ),
        ("euro", money(100, "EUR"), Code::InvalidArgument),
        (
            "over-capture",
            money(10_000, "USD"),
            Code::FailedPrecondition,
        ),
    ] {
        let err = c.refund_payment(refund(key, m)).await.unwrap_err();
        assert_eq!(err.code(), code, "{key}: {err:?}");
    }
    for (key, m) in [
        ("auth-max", money(i64::MAX, "USD")),
        ("auth-negative", money(-1, "USD")),
    ] {
        let err = c
            .authorize_payment(AuthorizePaymentRequest {
                idempotency_key: key.into(),
                order_id: format!("{order}-{key}"),
                channel: "web".into(),
                amount: m,
                payment_method_token: "tok_visa".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{key}: {err:?}");
    }
    let err = c
        .record_chargeback(RecordChargebackRequest {
            idempotency_key: "cb-max".into(),
            payment_id: p.payment_id.clone(),
            amount: money(i64::MAX, "USD"),
            reason: "fraud".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let after = payment(&mut c, &p.payment_id).await;
    assert_eq!(
        amount(&after.refunded),
        1,
        "nothing but the first refund changed"
    );
    assert_eq!(amount(&after.captured), 10_000);
    assert_eq!(refunds_in_journal(&mut c, &order).await, 1);
    let tb = c
        .get_trial_balance(GetTrialBalanceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(tb.balanced);
}

/// The database refuses what no handler should write, whatever the handler: here a refund
/// beyond the capture written straight into the table.
async fn the_database_refuses_impossible_payments(svc: &TestService) {
    use sea_orm::ConnectionTrait;
    let mut c = FinanceServiceClient::new(svc.channel().await);
    let order = format!("constraint-{}", uuid::Uuid::now_v7());
    let p = authorize(&mut c, &order, 1_000).await;
    let p = capture(&mut c, &p).await;
    let db = &svc.running.db;
    for set in [
        "refunded_minor = 1001",
        "refunded_minor = -1",
        "charged_back_minor = 600, refunded_minor = 500",
        "captured_minor = 2000",
    ] {
        let sql = format!(
            "UPDATE payments SET {set} WHERE payment_id = '{}'",
            p.payment_id
        );
        let result = db.execute_unprepared(&sql).await;
        assert!(
            result.is_err(),
            "{}: {sql} was accepted",
            svc.backend_name()
        );
    }
    let after = payment(&mut c, &p.payment_id).await;
    assert_eq!(amount(&after.refunded), 0);
}

/// Entries of one order posted at the same moment are each listed once (their lines interleave
/// by sequence on PostgreSQL).
async fn concurrent_entries_of_one_order_are_listed_once(svc: &TestService) {
    let c = FinanceServiceClient::new(svc.channel().await);
    let order = format!("listed-{}", uuid::Uuid::now_v7());
    let line = |account: &str, debit: i64, credit: i64| JournalLine {
        account_code: account.into(),
        debit_minor: debit,
        credit_minor: credit,
        currency: "USD".into(),
        channel: "web".into(),
        order_id: order.clone(),
        memo: String::new(),
    };
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        let lines = vec![
            line("1100", 100, 0),
            line("4000", 0, 60),
            line("4000", 0, 30),
            line("2200", 0, 10),
        ];
        calls.push(tokio::spawn(async move {
            c.post_journal(PostJournalRequest {
                idempotency_key: format!("listed-{i}"),
                memo: format!("sale part {i}"),
                source: None,
                lines,
            })
            .await
            .unwrap()
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let mut c = c.clone();
    let entries = c
        .list_journal_entries(ListJournalEntriesRequest {
            order_id: order.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let ids: std::collections::HashSet<_> = entries.iter().map(|e| e.entry_id.clone()).collect();
    assert_eq!(
        (entries.len(), ids.len()),
        (20, 20),
        "{}: each entry once",
        svc.backend_name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn money_cannot_be_double_spent_or_wrapped_on_every_backend() {
    for backend in testing::backends() {
        let svc = testing::spawn::<erp_finance::Service>(&backend).await;
        concurrent_refunds_never_exceed_the_capture(&svc).await;
        capture_racing_void_has_one_winner(&svc).await;
        hostile_amounts_change_nothing(&svc).await;
        the_database_refuses_impossible_payments(&svc).await;
        concurrent_entries_of_one_order_are_listed_once(&svc).await;
        if let Backend::Postgres(_) = backend {
            println!("postgres: races and constraints hold");
        }
    }
}
