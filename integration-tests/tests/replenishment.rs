//! Replenishment end to end: demand (recorded, and from shipments) and the supplier's lead time
//! trigger exactly the hand-computed quantity, rounded to the pack multiple and at least the
//! minimum; the draft above the approval threshold waits for an approver; sending it makes the
//! stock promisable by date; receipts through the warehouse make it available now; the supplier's
//! scorecard reflects the delivery.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use erp_integration_tests::{Clients, T, seeded};
use erp_proto::common::{Actor, Money};
use erp_proto::inventory;
use erp_proto::orchestrator::SagaStatus;
use erp_proto::procurement::procurement_service_client::ProcurementServiceClient;
use erp_proto::procurement::*;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};
use erp_runtime::time::{now_ms, to_timestamp};

const DAY_MS: i64 = 86_400_000;

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

async fn stock(c: &mut Clients, sku: &str, location: &str) -> inventory::StockLevel {
    c.inventory
        .get_stock(inventory::GetStockRequest {
            sku: sku.into(),
            location: location.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .levels
        .remove(0)
}

async fn available_at(c: &mut Clients, sku: &str, location: &str, as_of: Option<i64>) -> i64 {
    c.inventory
        .get_availability(inventory::GetAvailabilityRequest {
            skus: vec![sku.into()],
            as_of: as_of.map(to_timestamp),
            include_inbound: false,
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .iter()
        .flat_map(|i| i.locations.iter())
        .filter(|l| l.location == location)
        .map(|l| l.available)
        .sum()
}

async fn replenish(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    let mut p = c.procurement.clone();
    // A pricey widget, 20 on hand in east.
    c.create_item("WIDGET", 25_000, 400, 0).await;
    c.receive("widget-east", "WIDGET", "east", 20).await;
    let supplier = p
        .create_supplier(CreateSupplierRequest {
            code: "widgetco".into(),
            name: "Widget Co".into(),
            currency: "USD".into(),
            contact_email: "sales@widgetco.example".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    p.set_supplier_term(SetSupplierTermRequest {
        term: Some(SupplierTerm {
            supplier_id: supplier.supplier_id.clone(),
            sku: "WIDGET".into(),
            unit_cost: usd(25_000),
            lead_time_days: 7,
            minimum_order_quantity: 50,
            pack_multiple: 12,
        }),
    })
    .await
    .unwrap();
    // A bad policy names its fields.
    let err = p
        .set_reorder_policy(SetReorderPolicyRequest {
            policy: Some(ReorderPolicy {
                sku: String::new(),
                location: "east".into(),
                min_quantity: 10,
                max_quantity: 5,
                safety_stock_days: 0,
                preferred_supplier_id: String::new(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("policy.sku") && err.message().contains("policy.max_quantity"));
    p.set_reorder_policy(SetReorderPolicyRequest {
        policy: Some(ReorderPolicy {
            sku: "WIDGET".into(),
            location: "east".into(),
            min_quantity: 0,
            max_quantity: 0,
            safety_stock_days: 3,
            preferred_supplier_id: supplier.supplier_id.clone(),
        }),
    })
    .await
    .unwrap();
    // 84 units over the last four weeks: 3 a day. Recorded twice under one key: counted once.
    let now = now_ms();
    for week in 0..4 {
        let demand = RecordDemandRequest {
            idempotency_key: format!("widget-week-{week}"),
            sku: "WIDGET".into(),
            location: "east".into(),
            quantity: 21,
            occurred_at: Some(to_timestamp(now - (week * 7 + 1) * DAY_MS)),
        };
        p.record_demand(demand.clone()).await.unwrap();
        p.record_demand(demand).await.unwrap();
    }

    // By hand: reorder point 3/day x (7 lead + 3 safety) = 30, order up to 30 + 21 = 51.
    // Position 20 (available, nothing inbound): need 31, at least 50, packs of 12 -> 60.
    let suggest = |create_drafts| SuggestReplenishmentRequest {
        location: "east".into(),
        positions: vec![],
        create_drafts,
    };
    let r = p
        .suggest_replenishment(suggest(false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.suggestions.len(), 1, "{:?}", r.suggestions);
    let sug = &r.suggestions[0];
    assert_eq!(
        (sug.sku.as_str(), sug.quantity),
        ("WIDGET", 60),
        "{}",
        sug.rationale
    );
    assert_eq!(sug.supplier_id, supplier.supplier_id);
    assert!(
        sug.rationale.contains("reorder point 30"),
        "{}",
        sug.rationale
    );
    let drafted = p
        .suggest_replenishment(suggest(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drafted.draft_purchase_order_ids.len(), 1);
    let po_id = drafted.draft_purchase_order_ids[0].clone();
    // The draft counts as coming: asking again drafts nothing more.
    let again = p
        .suggest_replenishment(suggest(true))
        .await
        .unwrap()
        .into_inner();
    assert!(again.suggestions.is_empty() && again.draft_purchase_order_ids.is_empty());

    // 60 x 250.00 = 15,000.00, above the 10,000.00 threshold: an approver whose limit covers
    // it is needed, and not the one who drafted it (maker-checker).
    let approve = ApprovePurchaseOrderRequest {
        purchase_order_id: po_id.clone(),
        approver: Some(Actor {
            id: "ignored: the token says who".into(),
            reason: "weekly replenishment".into(),
        }),
    };
    use erp_runtime::auth::roles;
    for (who, roles, limit, why) in [
        ("buyer-2", &[roles::BUYER][..], None, "approver role"),
        (
            "approver-low",
            &[roles::APPROVER][..],
            Some(1_000_000),
            "at most 1000000",
        ),
        (
            erp::testkit::TOOL_SUBJECT,
            &[roles::ADMIN][..],
            None,
            "maker-checker",
        ),
    ] {
        let err = c
            .as_principal(who, roles, limit)
            .procurement
            .approve_purchase_order(approve.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{who}: {err:?}");
        assert!(err.message().contains(why), "{who}: {}", err.message());
    }
    let send = SendPurchaseOrderRequest {
        purchase_order_id: po_id.clone(),
    };
    let err = p.send_purchase_order(send.clone()).await.unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("NOT_APPROVED"));
    let approved = c
        .as_principal("approver-1", &[roles::APPROVER], Some(5_000_000))
        .procurement
        .approve_purchase_order(approve.clone())
        .await
        .unwrap()
        .into_inner()
        .purchase_order
        .unwrap();
    assert_eq!(approved.status, PurchaseOrderStatus::Approved as i32);
    assert_eq!(approved.approved_by, "approver-1");
    assert_eq!(approved.created_by, erp::testkit::TOOL_SUBJECT);
    assert_eq!(approved.total.unwrap().amount_minor, 1_500_000);

    // Sent: 60 inbound, promisable from the expected date on, not before.
    let sent = p
        .send_purchase_order(send.clone())
        .await
        .unwrap()
        .into_inner();
    let sent = sent.purchase_order.unwrap();
    assert_eq!(sent.status, PurchaseOrderStatus::Sent as i32);
    p.send_purchase_order(send).await.unwrap();
    assert_eq!(
        stock(&mut c, "WIDGET", "east").await.inbound,
        60,
        "sent once"
    );
    assert_eq!(available_at(&mut c, "WIDGET", "east", None).await, 20);
    assert_eq!(
        available_at(&mut c, "WIDGET", "east", Some(now_ms() + 8 * DAY_MS)).await,
        80
    );

    // A partial delivery received through procurement; the rest scanned at the warehouse dock.
    let receive = ReceivePurchaseOrderRequest {
        idempotency_key: "widget-r1".into(),
        purchase_order_id: po_id.clone(),
        lines: vec![ReceivedLine {
            sku: "WIDGET".into(),
            quantity: 24,
        }],
        received_at: None,
    };
    let partial = p
        .receive_purchase_order(receive.clone())
        .await
        .unwrap()
        .into_inner();
    let repeat = p
        .receive_purchase_order(receive)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(partial, repeat, "a retried receipt is one receipt");
    let partial = partial.purchase_order.unwrap();
    assert_eq!(
        partial.status,
        PurchaseOrderStatus::PartiallyReceived as i32
    );
    assert_eq!(partial.lines[0].received_quantity, 24);
    let over = p
        .receive_purchase_order(ReceivePurchaseOrderRequest {
            idempotency_key: "widget-r-over".into(),
            purchase_order_id: po_id.clone(),
            lines: vec![ReceivedLine {
                sku: "WIDGET".into(),
                quantity: 37,
            }],
            received_at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        over.code(),
        tonic::Code::InvalidArgument,
        "only 36 are still expected"
    );
    let level = stock(&mut c, "WIDGET", "east").await;
    assert_eq!((level.on_hand, level.inbound), (44, 36));
    c.warehouse
        .record_receipt(erp_proto::warehouse::RecordReceiptRequest {
            idempotency_key: "dock-scan-7".into(),
            site: "east".into(),
            kind: erp_proto::warehouse::ReceiptKind::PurchaseOrder as i32,
            document_id: po_id.clone(),
            lines: vec![erp_proto::warehouse::ReceiptLine {
                sku: "WIDGET".into(),
                quantity: 36,
                damaged_quantity: 0,
                unit_cost: None,
            }],
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    let done = loop {
        let po = p
            .get_purchase_order(GetPurchaseOrderRequest {
                purchase_order_id: po_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .purchase_order
            .unwrap();
        if po.status == PurchaseOrderStatus::Received as i32 {
            break po;
        }
        assert!(std::time::Instant::now() < deadline, "not received: {po:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.lines[0].received_quantity, 60);
    assert_eq!(available_at(&mut c, "WIDGET", "east", None).await, 80);
    let level = stock(&mut c, "WIDGET", "east").await;
    assert_eq!((level.on_hand, level.inbound), (80, 0));

    // Delivered a week early, in full: on time, full fill, ~168 h off the promised lead time.
    let card = p
        .get_supplier_scorecard(GetSupplierScorecardRequest {
            supplier_id: supplier.supplier_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(card.purchase_orders_received, 1);
    assert_eq!(card.on_time_rate_bps, 10_000);
    assert_eq!(card.fill_rate_bps, 10_000);
    assert!(
        (167..=168).contains(&card.lead_time_variance_hours),
        "{}",
        card.lead_time_variance_hours
    );

    // A second order, closed short: 12 of 60 arrive, the supplier cannot send the rest. The
    // other 48 stop counting as inbound, and the scorecard's fill rate shows the shortfall.
    let second = p
        .create_purchase_order(CreatePurchaseOrderRequest {
            idempotency_key: "widget-po-2".into(),
            supplier_id: supplier.supplier_id.clone(),
            location: "east".into(),
            lines: vec![PurchaseOrderLine {
                sku: "WIDGET".into(),
                quantity: 60,
                unit_cost: None,
                received_quantity: 0,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .purchase_order
        .unwrap()
        .purchase_order_id;
    c.as_principal("approver-1", &[roles::APPROVER], Some(5_000_000))
        .procurement
        .approve_purchase_order(ApprovePurchaseOrderRequest {
            purchase_order_id: second.clone(),
            ..approve
        })
        .await
        .unwrap();
    p.send_purchase_order(SendPurchaseOrderRequest {
        purchase_order_id: second.clone(),
    })
    .await
    .unwrap();
    assert_eq!(stock(&mut c, "WIDGET", "east").await.inbound, 60);
    p.receive_purchase_order(ReceivePurchaseOrderRequest {
        idempotency_key: "widget-r2".into(),
        purchase_order_id: second.clone(),
        lines: vec![ReceivedLine {
            sku: "WIDGET".into(),
            quantity: 12,
        }],
        received_at: None,
    })
    .await
    .unwrap();
    let cancel = CancelPurchaseOrderRequest {
        purchase_order_id: second.clone(),
        actor: Some(Actor {
            id: "buyer-1".into(),
            reason: "supplier out of stock".into(),
        }),
    };
    let closed = p
        .cancel_purchase_order(cancel.clone())
        .await
        .unwrap()
        .into_inner()
        .purchase_order
        .unwrap();
    assert_eq!(closed.status, PurchaseOrderStatus::Closed as i32);
    p.cancel_purchase_order(cancel).await.unwrap();
    let level = stock(&mut c, "WIDGET", "east").await;
    assert_eq!(
        (level.on_hand, level.inbound),
        (92, 0),
        "the 48 never coming are not inbound"
    );
    assert_eq!(
        available_at(&mut c, "WIDGET", "east", Some(now_ms() + 30 * DAY_MS)).await,
        92
    );
    let card = p
        .get_supplier_scorecard(GetSupplierScorecardRequest {
            supplier_id: supplier.supplier_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // (60 + 12) of 120 ordered units.
    assert_eq!(
        (card.purchase_orders_received, card.fill_rate_bps),
        (2, 6_000)
    );

    // Shipments are demand too: two widgets shipped add to the 84 already recorded.
    let id = c.place("W-1", "WIDGET", 2, "tok_visa", "standard").await;
    c.wait_step(&id, "await_pack").await;
    c.ship(&id).await;
    c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    let deadline = std::time::Instant::now() + T;
    loop {
        let r = p
            .suggest_replenishment(SuggestReplenishmentRequest {
                location: "east".into(),
                // A low position, so that the rationale (with the demand) is shown.
                positions: vec![StockPosition {
                    sku: "WIDGET".into(),
                    location: "east".into(),
                    available: 0,
                    inbound: 0,
                }],
                create_drafts: false,
            })
            .await
            .unwrap()
            .into_inner();
        if r.suggestions[0].rationale.contains("86 units demanded") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            r.suggestions[0].rationale
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_and_lead_time_drive_purchase_orders_to_promisable_stock_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "demand_and_lead_time_drive_purchase_orders_to_promisable_stock_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        replenish(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_stock_event_drafts_a_purchase_order_once() {
    let _watchdog = erp_runtime::testing::watchdog(
        "a_low_stock_event_drafts_a_purchase_order_once",
        Duration::from_secs(300),
    );
    let (s, mut c) = seeded(&Backend::Sqlite).await;
    let mut p = c.procurement.clone();
    // Low stock below 5 units network-wide; 6 in east.
    c.create_item("GADGET", 800, 200, 5).await;
    c.receive("gadget-east", "GADGET", "east", 6).await;
    let supplier = p
        .create_supplier(CreateSupplierRequest {
            code: "gadgetco".into(),
            name: "Gadget Co".into(),
            currency: "USD".into(),
            contact_email: "sales@gadgetco.example".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    p.set_supplier_term(SetSupplierTermRequest {
        term: Some(SupplierTerm {
            supplier_id: supplier.supplier_id.clone(),
            sku: "GADGET".into(),
            unit_cost: usd(800),
            lead_time_days: 5,
            minimum_order_quantity: 10,
            pack_multiple: 10,
        }),
    })
    .await
    .unwrap();
    p.set_reorder_policy(SetReorderPolicyRequest {
        policy: Some(ReorderPolicy {
            sku: "GADGET".into(),
            location: "east".into(),
            min_quantity: 5,
            max_quantity: 33,
            safety_stock_days: 0,
            preferred_supplier_id: String::new(),
        }),
    })
    .await
    .unwrap();
    // Two gadgets are written off: 4 left, below the threshold and at the policy's minimum.
    c.inventory
        .adjust_stock(inventory::AdjustStockRequest {
            idempotency_key: "gadget-broken".into(),
            sku: "GADGET".into(),
            location: "east".into(),
            bucket: inventory::Bucket::OnHand as i32,
            delta: -2,
            actor: Some(Actor {
                id: "picker-3".into(),
                reason: "dropped".into(),
            }),
        })
        .await
        .unwrap();
    let drafts = |p: &mut ProcurementServiceClient<erp_runtime::auth::PeerChannel>| {
        let mut p = p.clone();
        let supplier_id = supplier.supplier_id.clone();
        async move {
            p.list_purchase_orders(ListPurchaseOrdersRequest {
                supplier_id,
                status: PurchaseOrderStatus::Draft as i32,
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .purchase_orders
        }
    };
    let deadline = std::time::Instant::now() + T;
    let found = loop {
        let found = drafts(&mut p).await;
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no draft after low stock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Up to 33 from 4: 29, in packs of 10 -> 30 (the cheapest supplier, no preference set).
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].lines[0].quantity, 30);
    // Another low-stock signal (one more write-off) drafts nothing more: the draft is coming.
    c.inventory
        .adjust_stock(inventory::AdjustStockRequest {
            idempotency_key: "gadget-broken-2".into(),
            sku: "GADGET".into(),
            location: "east".into(),
            bucket: inventory::Bucket::OnHand as i32,
            delta: -1,
            actor: Some(Actor {
                id: "picker-3".into(),
                reason: "dropped again".into(),
            }),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(drafts(&mut p).await.len(), 1);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

/// Receipts, sends and cancels of the same purchase orders racing each other: the order's lock
/// is held from the status check to the write, so no order takes in more than it ordered, a
/// cancel racing a send leaves no inbound stock behind.
async fn races(backend: Backend) {
    use erp_runtime::auth::roles;
    let (s, mut c) = seeded(&backend).await;
    let p = c.procurement.clone();
    c.create_item("GIZMO", 100, 100, 0).await;
    let supplier = p
        .clone()
        .create_supplier(CreateSupplierRequest {
            code: "gizmoco".into(),
            name: "Gizmo Co".into(),
            currency: "USD".into(),
            contact_email: "sales@gizmoco.example".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .supplier
        .unwrap();
    p.clone()
        .set_supplier_term(SetSupplierTermRequest {
            term: Some(SupplierTerm {
                supplier_id: supplier.supplier_id.clone(),
                sku: "GIZMO".into(),
                unit_cost: usd(100),
                lead_time_days: 3,
                minimum_order_quantity: 1,
                pack_multiple: 1,
            }),
        })
        .await
        .unwrap();
    let approver = c
        .as_principal("approver-1", &[roles::APPROVER], Some(5_000_000))
        .procurement;
    let approved_po = |key: String| {
        let mut p = p.clone();
        let mut approver = approver.clone();
        let supplier_id = supplier.supplier_id.clone();
        async move {
            let id = p
                .create_purchase_order(CreatePurchaseOrderRequest {
                    idempotency_key: key,
                    supplier_id,
                    location: "east".into(),
                    lines: vec![PurchaseOrderLine {
                        sku: "GIZMO".into(),
                        quantity: 10,
                        unit_cost: None,
                        received_quantity: 0,
                    }],
                })
                .await
                .unwrap()
                .into_inner()
                .purchase_order
                .unwrap()
                .purchase_order_id;
            approver
                .approve_purchase_order(ApprovePurchaseOrderRequest {
                    purchase_order_id: id.clone(),
                    approver: Some(Actor {
                        id: String::new(),
                        reason: "race test".into(),
                    }),
                })
                .await
                .unwrap();
            id
        }
    };
    let cancel = |id: &str| CancelPurchaseOrderRequest {
        purchase_order_id: id.to_owned(),
        actor: Some(Actor {
            id: String::new(),
            reason: "supplier cannot deliver".into(),
        }),
    };

    // Eight receipts of the whole order, each under its own key, at once: one is taken in.
    let po = approved_po("gizmo-po-receive".into()).await;
    p.clone()
        .send_purchase_order(SendPurchaseOrderRequest {
            purchase_order_id: po.clone(),
        })
        .await
        .unwrap();
    let before = stock(&mut c, "GIZMO", "east").await.on_hand;
    let mut tasks = Vec::new();
    for k in 0..8 {
        let mut p = p.clone();
        let po = po.clone();
        tasks.push(tokio::spawn(async move {
            p.receive_purchase_order(ReceivePurchaseOrderRequest {
                idempotency_key: format!("gizmo-dock-{k}"),
                purchase_order_id: po,
                lines: vec![ReceivedLine {
                    sku: "GIZMO".into(),
                    quantity: 10,
                }],
                received_at: None,
            })
            .await
        }));
    }
    let mut taken = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => taken += 1,
            Err(e) => assert!(
                matches!(
                    e.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::InvalidArgument
                        | tonic::Code::Aborted
                ),
                "{e:?}"
            ),
        }
    }
    assert_eq!(taken, 1, "{backend:?}: exactly one receipt of the order");
    let got = p
        .clone()
        .get_purchase_order(GetPurchaseOrderRequest {
            purchase_order_id: po.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .purchase_order
        .unwrap();
    assert_eq!(got.lines[0].received_quantity, 10);
    assert_eq!(got.status, PurchaseOrderStatus::Received as i32);
    assert_eq!(stock(&mut c, "GIZMO", "east").await.on_hand, before + 10);

    // Sends and cancels of six orders at once: whichever goes first, every order ends
    // cancelled (cancelled before it was sent, or sent and then cancelled with its inbound),
    // and no inbound stock is left behind.
    let mut ids = Vec::new();
    for k in 0..6 {
        ids.push(approved_po(format!("gizmo-po-race-{k}")).await);
    }
    let mut tasks = Vec::new();
    for id in &ids {
        let (mut a, mut b) = (p.clone(), p.clone());
        let (send, cancel) = (
            SendPurchaseOrderRequest {
                purchase_order_id: id.clone(),
            },
            cancel(id),
        );
        tasks.push(tokio::spawn(async move {
            a.send_purchase_order(send).await.map(|_| ())
        }));
        tasks.push(tokio::spawn(async move {
            b.cancel_purchase_order(cancel).await.map(|_| ())
        }));
    }
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        }
    }
    for id in &ids {
        let o = p
            .clone()
            .get_purchase_order(GetPurchaseOrderRequest {
                purchase_order_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .purchase_order
            .unwrap();
        assert_eq!(
            o.status,
            PurchaseOrderStatus::Cancelled as i32,
            "{backend:?}"
        );
    }
    assert_eq!(
        stock(&mut c, "GIZMO", "east").await.inbound,
        0,
        "{backend:?}: no inbound left by a cancel racing a send"
    );

    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_receipts_sends_and_cancels_keep_purchase_orders_whole_on_every_backend() {
    let _watchdog = erp_runtime::testing::watchdog(
        "racing_receipts_sends_and_cancels_keep_purchase_orders_whole_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        races(backend).await;
    }
}
