//! Stock exceptions on the warehouse floor, end to end: a short pick re-routes the order to
//! another warehouse, or backorders it until a receipt brings stock; the units that were not
//! found (or were damaged) are written off where they were; nothing is lost, nothing is charged
//! twice, and stock, saga, order and ledger agree at every step.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use erp_integration_tests::{Clients, T, seeded};
use erp_proto::finance::PaymentStatus;
use erp_proto::inventory::{self, ReservationState};
use erp_proto::orchestrator::SagaStatus;
use erp_proto::order::OrderStatus;
use erp_proto::warehouse::{
    self, ExceptionReason, FulfillmentStatus, ReceiptKind, ReceiptLine, RecordReceiptRequest,
    ReportExceptionRequest,
};
use erp_runtime::testing::{self, Backend};

/// The stock level of `sku` at `location`.
async fn level(c: &mut Clients, sku: &str, location: &str) -> inventory::StockLevel {
    c.inventory
        .get_stock(inventory::GetStockRequest {
            sku: sku.into(),
            location: location.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .levels
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Reports `reason` for `quantity` units of the first task of the order's open fulfillment;
/// returns the fulfillment's site.
async fn report(c: &mut Clients, order_id: &str, reason: ExceptionReason, quantity: i64) -> String {
    let f = c.open_fulfillments(order_id).await.remove(0);
    c.warehouse
        .report_exception(ReportExceptionRequest {
            idempotency_key: format!("exc-{}", f.fulfillment_id),
            task_id: f.tasks[0].task_id.clone(),
            reason: reason as i32,
            quantity,
            note: "found on the floor".into(),
            reporter: "picker-7".into(),
        })
        .await
        .unwrap();
    f.site
}

async fn short_pick_reroutes(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    let (on_hand_before, _) = c.stock_totals().await;
    let id = c.place("X-1", "TEE-M", 2, "tok_visa", "standard").await;
    c.wait_step(&id, "await_pack").await;
    let site = c.open_fulfillments(&id).await[0].site.clone();
    let before_first = level(&mut c, "TEE-M", &site).await;
    let first = report(&mut c, &id, ExceptionReason::Damaged, 1).await;
    assert_eq!(first, site);

    // The saga undoes the site-bound steps, writes the damaged unit off to quarantine, and
    // routes the order to another warehouse, where the floor picks and packs it.
    // Until the saga waits at the new warehouse: the report reaches it as a signal, so right
    // after the report it may still be seen waiting at the first one.
    let mut waited = 0;
    let (saga, f) = loop {
        let saga = c.wait_step(&id, "await_pack").await;
        if let Some(f) = c.open_fulfillments(&id).await.into_iter().next()
            && f.site != first
        {
            break (saga, f);
        }
        waited += 1;
        assert!(waited < 200, "never re-routed away from {first}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_ne!(f.site, first, "re-routed away from the site that reported");
    assert!(
        saga.timeline
            .iter()
            .any(|e| e.detail.starts_with("re-route 1 without")),
        "{:#?}",
        saga.timeline
    );
    // The routing rules were told: the new decision names the excluded site and why.
    let decisions = c.order(&id).await.routing_decisions;
    let last = decisions.last().unwrap();
    assert_eq!(last.allocations[0].location, f.site);
    assert!(
        last.explanation.iter().any(|e| e
            == &format!(
                "{first}: rejected, excluded for this order: it reported a stock exception"
            )),
        "{:?}",
        last.explanation
    );
    c.ship(&id).await;
    let done = c.wait_saga(&id, &[SagaStatus::Completed], T).await;

    // Order: shipped in full, from the second warehouse.
    let o = c.order(&id).await;
    assert_eq!(o.status, OrderStatus::Shipped as i32);
    let q = o.lines[0].quantities.unwrap();
    assert_eq!((q.shipped, q.backordered, q.allocated), (2, 0, 0));
    assert_eq!(o.lines[0].location, f.site);
    // Warehouse: the first fulfillment cancelled, the second shipped.
    let all = c
        .warehouse
        .list_fulfillments(warehouse::ListFulfillmentsRequest {
            order_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .fulfillments;
    let by_site = |site: &str| all.iter().find(|f| f.site == site).unwrap().status;
    assert_eq!(by_site(&first), FulfillmentStatus::Cancelled as i32);
    assert_eq!(by_site(&f.site), FulfillmentStatus::Shipped as i32);
    // Stock: the first hold released, the second committed; one unit quarantined at the first
    // site; two units left the second.
    let mut states: Vec<_> = c
        .reservations(&id)
        .await
        .iter()
        .map(|r| (r.location.clone(), r.state))
        .collect();
    states.sort();
    let mut expected = vec![
        (first.clone(), ReservationState::Released as i32),
        (f.site.clone(), ReservationState::Committed as i32),
    ];
    expected.sort();
    assert_eq!(states, expected);
    let after_first = level(&mut c, "TEE-M", &first).await;
    assert_eq!(after_first.quarantined, before_first.quarantined + 1);
    assert_eq!(after_first.on_hand, before_first.on_hand - 1);
    let (on_hand_after, reserved) = c.stock_totals().await;
    assert_eq!(
        on_hand_before - on_hand_after,
        2 + 1,
        "shipped plus quarantined"
    );
    assert_eq!(reserved, 0);
    // Money: one authorization, captured once; one label, voided none (bought after packing).
    let p = c.payment(&id).await.unwrap();
    assert_eq!(p.status, PaymentStatus::Captured as i32);
    let mut authorizations: Vec<_> = done
        .timeline
        .iter()
        .filter(|e| e.step == "authorize_payment" && e.outcome == 2)
        .map(|e| e.detail.clone())
        .collect();
    authorizations.dedup();
    assert_eq!(
        authorizations,
        [format!("payment {}", p.payment_id)],
        "the re-route kept the one authorization"
    );
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_pick_ships_from_another_warehouse_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "a_short_pick_ships_from_another_warehouse_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        short_pick_reroutes(backend).await;
    }
}

async fn short_pick_backorders(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    // An item only the east warehouse holds, one unit of it.
    c.create_item("RARE-1", 900, 300, 0).await;
    c.receive("rare-east", "RARE-1", "east", 1).await;
    let id = c.place("X-2", "RARE-1", 1, "tok_visa", "standard").await;
    c.wait_step(&id, "await_pack").await;
    assert_eq!(
        report(&mut c, &id, ExceptionReason::CouldNotLocate, 1).await,
        "east"
    );

    // No other warehouse has it: the order is backordered, the saga waits at routing, the
    // unit that could not be found left east's on hand, and the payment stays authorized.
    let deadline = std::time::Instant::now() + T;
    loop {
        let o = c.order(&id).await;
        if o.status == OrderStatus::Backordered as i32 {
            assert_eq!(o.lines[0].quantities.unwrap().backordered, 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not backordered: {o:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The saga records the backorder right after the order does.
    let deadline = std::time::Instant::now() + T;
    loop {
        let saga = c.saga(&id).await.unwrap();
        if saga.last_error.starts_with("BACKORDERED") {
            assert_eq!(saga.current_step, "route");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "saga not backordered: {saga:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(level(&mut c, "RARE-1", "east").await.on_hand, 0);
    assert_eq!(
        c.payment(&id).await.unwrap().status,
        PaymentStatus::Authorized as i32
    );
    c.assert_reconciled().await;

    // A purchase order arrives at central: 3 units, one of them damaged.
    c.inventory
        .record_inbound(inventory::RecordInboundRequest {
            idempotency_key: "rare-po".into(),
            sku: "RARE-1".into(),
            location: "central".into(),
            quantity: 3,
            expected_at: Some(erp_runtime::time::to_timestamp(
                erp_runtime::time::now_ms() + 86_400_000,
            )),
            source: None,
        })
        .await
        .unwrap();
    let receipt = RecordReceiptRequest {
        idempotency_key: "rare-receipt".into(),
        site: "central".into(),
        kind: ReceiptKind::PurchaseOrder as i32,
        document_id: "PO-RARE-1".into(),
        lines: vec![ReceiptLine {
            sku: "RARE-1".into(),
            quantity: 3,
            damaged_quantity: 1,
            unit_cost: None,
        }],
    };
    let first = c.warehouse.record_receipt(receipt.clone()).await.unwrap();
    let again = c.warehouse.record_receipt(receipt).await.unwrap();
    assert_eq!(
        first.into_inner(),
        again.into_inner(),
        "a retried receipt is one"
    );
    let central = level(&mut c, "RARE-1", "central").await;
    assert_eq!(
        (central.inbound, central.quarantined),
        (0, 1),
        "received from inbound, the damaged unit quarantined"
    );

    // The backorder is released by the saga on its own: routed to central, shipped.
    c.wait_step(&id, "await_pack").await;
    c.ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    let o = c.order(&id).await;
    assert_eq!(o.status, OrderStatus::Shipped as i32);
    assert_eq!(o.lines[0].location, "central");
    let q = o.lines[0].quantities.unwrap();
    assert_eq!((q.shipped, q.backordered), (1, 0));
    let central = level(&mut c, "RARE-1", "central").await;
    assert_eq!((central.on_hand, central.reserved), (1, 0));
    assert_eq!(
        c.payment(&id).await.unwrap().status,
        PaymentStatus::Captured as i32
    );
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_pick_with_no_other_stock_backorders_until_a_receipt_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "a_short_pick_with_no_other_stock_backorders_until_a_receipt_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        short_pick_backorders(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backorder_voids_the_kept_authorization() {
    let _watchdog = erp_runtime::testing::watchdog(
        "a_cancelled_backorder_voids_the_kept_authorization",
        Duration::from_secs(300),
    );
    let (s, mut c) = seeded(&Backend::Sqlite).await;
    // 30 lamps: only central (40) holds that many.
    let id = c.place("X-3", "LAMP-01", 30, "tok_visa", "standard").await;
    c.wait_step(&id, "await_pack").await;
    assert_eq!(
        report(&mut c, &id, ExceptionReason::ShortPick, 30).await,
        "central"
    );
    let deadline = std::time::Instant::now() + T;
    while c.order(&id).await.status != OrderStatus::Backordered as i32 {
        assert!(std::time::Instant::now() < deadline, "not backordered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The customer gives up: the saga compensates from the highest step it ever completed.
    c.order
        .cancel_order(erp_proto::order::CancelOrderRequest {
            idempotency_key: "x3-cancel".into(),
            order_id: id.clone(),
            line_ids: vec![],
            actor: Some(erp_proto::common::Actor {
                id: "customer".into(),
                reason: "too slow".into(),
            }),
            include_allocated: false,
        })
        .await
        .unwrap();
    c.wait_saga(&id, &[SagaStatus::Compensated], T).await;
    assert_eq!(
        c.payment(&id).await.unwrap().status,
        PaymentStatus::Voided as i32
    );
    assert_eq!(c.order(&id).await.status, OrderStatus::Cancelled as i32);
    assert!(
        c.reservations(&id)
            .await
            .iter()
            .all(|r| r.state == ReservationState::Released as i32)
    );
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}
