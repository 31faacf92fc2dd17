//! Inventory valuation end to end: receipts at their purchase price, freight, duty and
//! insurance allocated across a receipt by value into the moving average (hand-computed), the
//! cost of goods shipped at that average, a landed cost on goods already sold expensed; the
//! inventory asset in the ledger equals the valued stock throughout.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use erp_integration_tests::{Clients, seeded};
use erp_proto::common::{Money, SourceDocument};
use erp_proto::inventory::*;
use erp_runtime::testing::{self, Backend};

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

fn po(id: &str) -> Option<SourceDocument> {
    Some(SourceDocument {
        kind: "purchase_order".into(),
        id: id.into(),
    })
}

async fn receive(c: &mut Clients, sku: &str, qty: i64, cost: i64, po_id: &str) {
    c.inventory
        .receive_stock(ReceiveStockRequest {
            idempotency_key: format!("{po_id}-{sku}"),
            sku: sku.into(),
            location: "east".into(),
            quantity: qty,
            source: po(po_id),
            from_inbound: false,
            unit_cost: usd(cost),
        })
        .await
        .unwrap();
}

async fn valuation(c: &mut Clients, sku: &str) -> ItemValuation {
    c.inventory
        .get_valuation(GetValuationRequest {
            skus: vec![sku.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .remove(0)
}

async fn landed_costs(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    c.create_item("LC-A", 450, 1_000, 0).await;
    c.create_item("LC-B", 190, 500, 0).await;
    // One purchase order: 10 A at 5.00 (50.00), 30 B at 2.00 (60.00).
    receive(&mut c, "LC-A", 10, 500, "PO-LC-1").await;
    receive(&mut c, "LC-B", 30, 200, "PO-LC-1").await;
    let a = valuation(&mut c, "LC-A").await;
    assert_eq!((a.quantity, a.value.unwrap().amount_minor), (10, 5_000));
    let before = c.assert_inventory_in_books().await;

    // 15.00 freight, 5.00 duty, 2.00 insurance = 22.00 by value 50 : 60 -> 10.00 and 12.00.
    let charge = |kind: &str, amount| LandedCharge {
        kind: kind.into(),
        amount: usd(amount),
    };
    let req = AllocateLandedCostRequest {
        idempotency_key: "lc-1".into(),
        receipt: po("PO-LC-1"),
        charges: vec![
            charge("freight", 1_500),
            charge("duty", 500),
            charge("insurance", 200),
        ],
        basis: AllocationBasis::Value as i32,
    };
    let r = c
        .inventory
        .allocate_landed_cost(req.clone())
        .await
        .unwrap()
        .into_inner();
    let again = c
        .inventory
        .allocate_landed_cost(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r, again, "allocated once");
    let got: Vec<_> = r
        .lines
        .iter()
        .map(|l| {
            (
                l.sku.as_str(),
                l.allocated.as_ref().unwrap().amount_minor,
                l.unit_cost_after.as_ref().unwrap().amount_minor,
                l.capitalized,
            )
        })
        .collect();
    // A: (50.00 + 10.00) / 10 = 6.00; B: (60.00 + 12.00) / 30 = 2.40.
    assert_eq!(
        got,
        [("LC-A", 1_000, 600, true), ("LC-B", 1_200, 240, true)]
    );
    assert_eq!(c.assert_inventory_in_books().await - before, 2_200);

    // Four A leave (a write-off): at the new average, 24.00.
    c.inventory
        .adjust_stock(AdjustStockRequest {
            idempotency_key: "lc-writeoff".into(),
            sku: "LC-A".into(),
            location: "east".into(),
            bucket: Bucket::OnHand as i32,
            delta: -4,
            actor: Some(erp_proto::common::Actor {
                id: "auditor".into(),
                reason: "water damage".into(),
            }),
        })
        .await
        .unwrap();
    let a = valuation(&mut c, "LC-A").await;
    assert_eq!((a.quantity, a.value.unwrap().amount_minor), (6, 3_600));
    c.assert_inventory_in_books().await;

    // Every B leaves; a late freight bill on B's receipt is a cost of goods sold, not stock.
    c.inventory
        .adjust_stock(AdjustStockRequest {
            idempotency_key: "lc-b-out".into(),
            sku: "LC-B".into(),
            location: "east".into(),
            bucket: Bucket::OnHand as i32,
            delta: -30,
            actor: Some(erp_proto::common::Actor {
                id: "auditor".into(),
                reason: "sold to a jobber".into(),
            }),
        })
        .await
        .unwrap();
    let late = c
        .inventory
        .allocate_landed_cost(AllocateLandedCostRequest {
            idempotency_key: "lc-2".into(),
            receipt: po("PO-LC-1"),
            charges: vec![charge("freight", 600)],
            basis: AllocationBasis::Quantity as i32,
        })
        .await
        .unwrap()
        .into_inner();
    // By quantity 10 : 30 -> 1.50 and 4.50.
    let got: Vec<_> = late
        .lines
        .iter()
        .map(|l| (l.allocated.as_ref().unwrap().amount_minor, l.capitalized))
        .collect();
    assert_eq!(got, [(150, true), (450, false)]);
    let b = valuation(&mut c, "LC-B").await;
    assert_eq!((b.quantity, b.value.unwrap().amount_minor), (0, 0));
    c.assert_inventory_in_books().await;

    // A receipt nobody made cannot carry costs; bad input names its fields.
    let err = c
        .inventory
        .allocate_landed_cost(AllocateLandedCostRequest {
            idempotency_key: "lc-3".into(),
            receipt: po("PO-NOPE"),
            charges: vec![charge("freight", 100)],
            basis: AllocationBasis::Weight as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(
        erp_runtime::error::status_reason(&err).as_deref(),
        Some("NO_SUCH_RECEIPT")
    );
    let err = c
        .inventory
        .allocate_landed_cost(AllocateLandedCostRequest {
            idempotency_key: String::new(),
            receipt: None,
            charges: vec![],
            basis: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        testing::bad_fields(&err),
        [
            "idempotency_key",
            "receipt.kind",
            "receipt.id",
            "charges",
            "basis"
        ]
    );
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landed_costs_flow_into_the_moving_average_and_the_books_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "landed_costs_flow_into_the_moving_average_and_the_books_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        landed_costs(backend).await;
    }
}
