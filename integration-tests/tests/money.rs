//! Money after the shipment, end to end: refunds and chargebacks (duplicate provider callbacks
//! included) post as they happen and never exceed what was captured; channel profitability adds
//! up to the journal; a marketplace settlement report with a missing order, a wrong fee and an
//! unknown adjustment gets exactly those three reported, and its payout posted once.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use erp_integration_tests::{Clients, T, seeded};
use erp_proto::common::Money;
use erp_proto::finance::*;
use erp_proto::orchestrator::SagaStatus;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

/// Places an order on `channel`, ships it through the saga; returns (order id, captured).
async fn shipped(c: &mut Clients, channel: &str, external: &str, qty: i64) -> (String, i64) {
    let mut req = erp::seed::sample_order(external, "MUG-BLUE", qty);
    req.channel = channel.into();
    let id = c
        .order
        .create_order(req)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .order_id;
    c.wait_step(&id, "await_pack").await;
    c.ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    let p = c.payment(&id).await.unwrap();
    (id, p.captured.unwrap().amount_minor)
}

/// Fees posted for an order (account 5100).
async fn fees_posted(c: &mut Clients, order_id: &str) -> i64 {
    c.finance
        .list_journal_entries(ListJournalEntriesRequest {
            order_id: order_id.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .flat_map(|e| e.lines.iter())
        .filter(|l| l.account_code == "5100" && l.order_id == order_id)
        .map(|l| l.debit_minor - l.credit_minor)
        .sum()
}

async fn balances(c: &mut Clients) -> BTreeMap<String, i64> {
    let tb = c
        .finance
        .get_trial_balance(GetTrialBalanceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(tb.balanced, "{:?}", tb.totals);
    tb.rows
        .into_iter()
        .map(|r| (r.account_code, r.balance_minor))
        .collect()
}

async fn money_after_shipment(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    let (a, a_total) = shipped(&mut c, "amazon-us", "113-0000001-0000001", 1).await;
    let (b, b_total) = shipped(&mut c, "amazon-us", "113-0000002-0000002", 2).await;
    let (d, d_total) = shipped(&mut c, "amazon-us", "113-0000003-0000003", 1).await;
    shipped(&mut c, "web", "WEB-M-1", 1).await;
    let payment = |c: &mut Clients, id: &str| {
        let mut f = c.finance.clone();
        let id = id.to_owned();
        async move {
            f.get_payment(GetPaymentRequest {
                payment_id: String::new(),
                order_id: id,
            })
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap()
        }
    };

    // A partial refund on B, then one that would exceed the capture.
    let pb = payment(&mut c, &b).await;
    let refund = |key: &str, amount| RefundPaymentRequest {
        idempotency_key: key.into(),
        payment_id: pb.payment_id.clone(),
        amount: usd(amount),
        reason: "one mug arrived chipped".into(),
    };
    let r = c.finance.refund_payment(refund("rf-1", 500)).await.unwrap();
    assert_eq!(
        r.into_inner().payment.unwrap().status,
        PaymentStatus::PartiallyRefunded as i32
    );
    let err = c
        .finance
        .refund_payment(refund("rf-2", b_total))
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("OVER_REFUND"));

    // A chargeback on D, delivered twice by the provider, then one too many.
    let pd = payment(&mut c, &d).await;
    let dispute = RecordChargebackRequest {
        idempotency_key: "dispute-77".into(),
        payment_id: pd.payment_id.clone(),
        amount: usd(d_total),
        reason: "fraudulent".into(),
    };
    let first = c.finance.record_chargeback(dispute.clone()).await.unwrap();
    let again = c.finance.record_chargeback(dispute).await.unwrap();
    assert_eq!(first.into_inner(), again.into_inner());
    assert_eq!(
        payment(&mut c, &d).await.status,
        PaymentStatus::ChargedBack as i32
    );
    let err = c
        .finance
        .record_chargeback(RecordChargebackRequest {
            idempotency_key: "dispute-78".into(),
            payment_id: pd.payment_id.clone(),
            amount: usd(1),
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("OVER_CHARGEBACK"));

    // Profitability per channel adds up to the journal's profit and loss (once the cost of the
    // goods shipped, posted from inventory's events, is in the books).
    c.assert_inventory_in_books().await;
    let tb = balances(&mut c).await;
    let pnl: i64 = tb
        .iter()
        .filter(|(a, _)| a.starts_with('4') || a.starts_with('5'))
        .map(|(_, b)| -b)
        .sum();
    let prof = c
        .finance
        .channel_profitability(ChannelProfitabilityRequest {
            from: None,
            to: None,
            currency: "USD".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let margins: i64 = prof.channels.iter().map(|r| r.margin_minor).sum();
    assert_eq!(margins, pnl, "{:#?}", prof.channels);
    let amazon = prof
        .channels
        .iter()
        .find(|r| r.channel == "amazon-us")
        .unwrap();
    // Revenue is what was captured less the sales tax collected with it.
    let mut tax = 0;
    for id in [&a, &b, &d] {
        tax += c.order(id).await.tax_total.unwrap().amount_minor;
    }
    assert!(tax > 0);
    assert_eq!(amazon.revenue_minor, a_total + b_total + d_total - tax);
    // The tax collected is owed: sales tax payable holds at least the marketplace orders' tax.
    assert!(-tb.get("2200").copied().unwrap_or(0) >= tax, "{tb:?}");
    assert_eq!(amazon.refunds_minor, 500);
    assert_eq!(amazon.chargebacks_minor, d_total);
    assert!(amazon.fees_minor > 0 && amazon.cogs_minor > 0 && amazon.shipping_minor > 0);
    let err = c
        .finance
        .channel_profitability(ChannelProfitabilityRequest {
            from: None,
            to: None,
            currency: "usd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // The marketplace's settlement: A right; B with a wrong fee and its refund; an order we
    // never had; an adjustment nothing explains; the payout that adds up to the lines.
    let (fee_a, fee_b) = (fees_posted(&mut c, &a).await, fees_posted(&mut c, &b).await);
    assert!(fee_a > 0 && fee_b > 0);
    let line = |external: &str, kind: &str, amount| SettlementLine {
        external_order_id: external.into(),
        order_id: String::new(),
        kind: kind.into(),
        amount: usd(amount),
    };
    let mut lines = vec![
        line("113-0000001-0000001", "ORDER", a_total),
        line("113-0000001-0000001", "FEE", fee_a),
        line("113-0000002-0000002", "ORDER", b_total),
        line("113-0000002-0000002", "FEE", fee_b + 100),
        line("113-0000002-0000002", "ADJUSTMENT", -500),
        line("113-9999999-9999999", "ORDER", 1234),
        line("", "ADJUSTMENT", -777),
    ];
    let payout = a_total - fee_a + b_total - (fee_b + 100) - 500 + 1234 - 777;
    lines.push(line("", "PAYOUT", payout));
    let report = ReconcileSettlementRequest {
        idempotency_key: "settle-2026-11-27".into(),
        channel: "amazon-us".into(),
        settlement_id: "S-2026-11-27".into(),
        lines,
    };
    let cash_before = tb.get("1000").copied().unwrap_or(0);
    let r = c
        .finance
        .reconcile_settlement(report.clone())
        .await
        .unwrap()
        .into_inner();
    let mut kinds: Vec<_> = r
        .discrepancies
        .iter()
        .map(|d| (d.kind.as_str(), d.order_id.as_str()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("FEE_MISMATCH", b.as_str()),
            ("ORDER_NOT_FOUND", "113-9999999-9999999"),
            ("UNKNOWN_ADJUSTMENT", ""),
        ],
        "{:#?}",
        r.discrepancies
    );
    let fee = r
        .discrepancies
        .iter()
        .find(|d| d.kind == "FEE_MISMATCH")
        .unwrap();
    assert_eq!(
        (
            fee.expected.as_ref().unwrap().amount_minor,
            fee.reported.as_ref().unwrap().amount_minor
        ),
        (fee_b, fee_b + 100)
    );
    // A (order, fee), B (order, refund), the payout.
    assert_eq!(r.matched_lines, 5);
    let again = c
        .finance
        .reconcile_settlement(report.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r, again);
    // The same settlement reported again under new keys, some at once: its payout is not
    // posted a second time.
    let mut tasks = Vec::new();
    for k in 0..4 {
        let mut f = c.finance.clone();
        let mut report = report.clone();
        report.idempotency_key = format!("settle-2026-11-27-again-{k}");
        tasks.push(tokio::spawn(async move {
            loop {
                match f.reconcile_settlement(report.clone()).await {
                    Err(e) if e.code() == tonic::Code::Aborted => continue,
                    other => return other.map(|r| r.into_inner()),
                }
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), r);
    }
    let tb = balances(&mut c).await;
    assert_eq!(tb.get("1000").copied().unwrap_or(0) - cash_before, payout);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_chargebacks_profitability_and_settlement_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "refunds_chargebacks_profitability_and_settlement_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        money_after_shipment(backend).await;
    }
}
