//! Order orchestration end to end (saga v3), on SQLite and PostgreSQL: an order whose line no
//! warehouse has ships the rest and waits for the line, which ships after a receipt (or is
//! cancelled, closing the order); a cancelled line stops only the shipment holding it; a
//! shipped line cannot be cancelled. Stock, saga, order and payment are checked at each step,
//! and the books reconcile at the end.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use erp_integration_tests::{Clients, FAST, T, seeded};
use erp_proto::common::{Actor, Money};
use erp_proto::finance::PaymentStatus;
use erp_proto::inventory::ReservationState;
use erp_proto::orchestrator::{SagaStatus, StepOutcome};
use erp_proto::order::{
    CancelOrderRequest, OrderLineInput, OrderStatus, PutRoutingRulesRequest, RoutingRule,
};
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

/// Rules that ship what is in stock and backorder the rest (a retailer's ship-as-available).
async fn ship_as_available(c: &mut Clients) {
    c.order
        .put_routing_rules(PutRoutingRulesRequest {
            rules: vec![RoutingRule {
                name: "ship what is in stock".into(),
                priority: 1,
                service_levels: vec![],
                regions: vec![],
                strategy: "LOWEST_COST".into(),
                allow_split: true,
                locations: vec![],
            }],
            actor: Some(Actor {
                id: "ops-lead".into(),
                reason: "customers want what is in stock now".into(),
            }),
        })
        .await
        .unwrap();
}

/// Places a web order for New Jersey (6.63 % tax) with `lines` of (sku, quantity, price).
async fn place(c: &mut Clients, external: &str, lines: &[(&str, i64, i64)]) -> String {
    let mut req = erp::seed::sample_order(external, lines[0].0, lines[0].1);
    req.lines = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, quantity, price))| OrderLineInput {
            line_number: i32::try_from(i).unwrap() + 1,
            sku: (*sku).into(),
            quantity: *quantity,
            unit_price: usd(*price),
        })
        .collect();
    c.order
        .create_order(req)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap()
        .order_id
}

/// Line quantities of the order's line for `sku`: (allocated, shipped, backordered, cancelled).
async fn line(c: &mut Clients, order_id: &str, sku: &str) -> (i64, i64, i64, i64) {
    let o = c.order(order_id).await;
    let l = o.lines.iter().find(|l| l.sku == sku).unwrap();
    let q = l.quantities.unwrap();
    assert_eq!(
        q.open + q.allocated + q.shipped + q.backordered + q.cancelled + q.returned,
        q.ordered,
        "buckets add up"
    );
    (q.allocated, q.shipped, q.backordered, q.cancelled)
}

async fn wait_status(c: &mut Clients, order_id: &str, status: OrderStatus) {
    let deadline = Instant::now() + T;
    loop {
        let o = c.order(order_id).await;
        if o.status == status as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} never became {status:?}: {o:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On hand of `sku` over every warehouse.
async fn on_hand(c: &mut Clients, sku: &str) -> i64 {
    c.inventory
        .get_stock(erp_proto::inventory::GetStockRequest {
            sku: sku.into(),
            location: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .levels
        .iter()
        .map(|l| l.on_hand)
        .sum()
}

/// What happens to the gadgets the order waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Five arrive: they ship in a second shipment.
    Receipt,
    /// The customer cancels the gadget line: the order closes, shipped.
    CancelLine,
    /// The customer cancels the whole order: only the gadgets can still be cancelled.
    CancelOrder,
}

/// Mugs are in stock, gadgets nowhere: the mugs ship, the gadgets wait. Then a receipt ships
/// them in a second shipment, or a cancellation (of the line or of the order) closes the
/// order with the mugs shipped and the rest of the authorization released.
async fn backordered_line(backend: Backend, then: Then) {
    let receipt = then == Then::Receipt;
    let (s, mut c) = seeded(&backend).await;
    ship_as_available(&mut c).await;
    c.create_item("GADGET-X", 1_200, 500, 0).await;
    let mugs_before = on_hand(&mut c, "MUG-BLUE").await;
    let id = place(
        &mut c,
        match then {
            Then::Receipt => "BO-1",
            Then::CancelLine => "BO-2",
            Then::CancelOrder => "BO-3",
        },
        &[("MUG-BLUE", 2, 1299), ("GADGET-X", 3, 2500)],
    )
    .await;

    // Shipment 1: the mugs, from one warehouse; the gadgets are backordered on the order.
    let saga = c.wait_step(&id, "await_pack").await;
    assert!(
        saga.timeline
            .iter()
            .any(|e| e.step == "route" && e.detail.starts_with("shipment 1 from")),
        "{:#?}",
        saga.timeline
    );
    assert_eq!(line(&mut c, &id, "MUG-BLUE").await, (2, 0, 0, 0));
    assert_eq!(line(&mut c, &id, "GADGET-X").await, (0, 0, 3, 0));
    assert_eq!(c.order(&id).await.status, OrderStatus::Backordered as i32);
    let fulfillments = c.open_fulfillments(&id).await;
    assert_eq!(fulfillments.len(), 1);
    assert!(fulfillments[0].tasks.iter().all(|t| t.sku == "MUG-BLUE"));
    // The whole order is authorized once: 2 x 12.99 + 1.72 tax, 3 x 25.00 + 4.97 tax.
    let p = c.payment(&id).await.unwrap();
    assert_eq!(p.authorized.unwrap().amount_minor, 2_770 + 7_997);
    assert_eq!(p.status, PaymentStatus::Authorized as i32);

    c.ship(&id).await;
    // The mugs are gone; the saga waits for gadgets, holding no stock.
    let deadline = Instant::now() + T;
    loop {
        let saga = c.saga(&id).await.unwrap();
        if saga.status == SagaStatus::Waiting as i32 && saga.current_step == "route" {
            assert!(saga.last_error.contains("BACKORDERED"), "{saga:#?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not waiting for stock: {saga:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_status(&mut c, &id, OrderStatus::PartiallyShipped).await;
    assert_eq!(line(&mut c, &id, "MUG-BLUE").await, (0, 2, 0, 0));
    assert_eq!(line(&mut c, &id, "GADGET-X").await, (0, 0, 3, 0));
    assert_eq!(on_hand(&mut c, "MUG-BLUE").await, mugs_before - 2);
    let p = c.payment(&id).await.unwrap();
    assert_eq!(p.status, PaymentStatus::PartiallyCaptured as i32);
    assert_eq!(p.captured.unwrap().amount_minor, 2_770);
    let r = c.reservations(&id).await;
    assert!(
        r.iter()
            .all(|r| r.state == ReservationState::Committed as i32),
        "{r:#?}"
    );

    if receipt {
        // Stock of another item does not wake the saga (it waits for gadgets only).
        let asleep = c.saga(&id).await.unwrap().next_attempt_at;
        c.receive("tees-in", "TEE-M", "west", 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.saga(&id).await.unwrap().next_attempt_at, asleep);
        // Five gadgets arrive at the west warehouse: the saga plans shipment 2 from there.
        c.receive("gadgets-in", "GADGET-X", "west", 5).await;
        let saga = c.wait_step(&id, "await_pack").await;
        assert!(
            saga.timeline
                .iter()
                .any(|e| e.step == "route" && e.detail.starts_with("shipment 2 from west")),
            "{:#?}",
            saga.timeline
        );
        assert_eq!(line(&mut c, &id, "GADGET-X").await, (3, 0, 0, 0));
        c.ship(&id).await;
        c.wait_saga(&id, &[SagaStatus::Completed], T).await;
        assert_eq!(c.order(&id).await.status, OrderStatus::Shipped as i32);
        assert_eq!(line(&mut c, &id, "GADGET-X").await, (0, 3, 0, 0));
        assert_eq!(on_hand(&mut c, "GADGET-X").await, 2);
        let p = c.payment(&id).await.unwrap();
        assert_eq!(p.status, PaymentStatus::Captured as i32);
        assert_eq!(p.captured.unwrap().amount_minor, 2_770 + 7_997);
        // Two shipments, two labels, one reservation committed per shipment.
        let r = c.reservations(&id).await;
        assert_eq!(r.len(), 2);
        assert!(
            r.iter()
                .all(|r| r.state == ReservationState::Committed as i32)
        );
    } else {
        // The customer gives up on the gadgets: the order closes with the mugs shipped and
        // the 79.97 never captured released.
        let gadgets = c.order(&id).await.lines[1].line_id.clone();
        let cancelled = c
            .order
            .cancel_order(CancelOrderRequest {
                idempotency_key: "bo-cancel".into(),
                order_id: id.clone(),
                line_ids: if then == Then::CancelLine {
                    vec![gadgets]
                } else {
                    vec![]
                },
                actor: None,
                include_allocated: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(cancelled.pending_line_ids.is_empty());
        if then == Then::CancelLine {
            // The saga finds nothing left to ship and closes the payment.
            let done = c.wait_saga(&id, &[SagaStatus::Completed], T).await;
            assert!(
                done.timeline.iter().any(|e| e.step == "next_shipment"),
                "{:#?}",
                done.timeline
            );
        } else {
            // A whole-order cancel compensates what is left: nothing shipped is undone.
            let done = c.wait_saga(&id, &[SagaStatus::Compensated], T).await;
            assert!(
                done.last_error.contains("ORDER_CANCELLED"),
                "{}",
                done.last_error
            );
        }
        assert_eq!(c.order(&id).await.status, OrderStatus::Shipped as i32);
        assert_eq!(line(&mut c, &id, "GADGET-X").await, (0, 0, 0, 3));
        let p = c.payment(&id).await.unwrap();
        assert_eq!(p.status, PaymentStatus::Captured as i32);
        assert_eq!(p.captured.unwrap().amount_minor, 2_770);
    }
    // Every shipment's label is live (none voided by a later shipment's compensation).
    let shipments = c
        .carrier
        .list_shipments(erp_proto::carrier::ListShipmentsRequest {
            order_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .shipments;
    assert_eq!(shipments.len(), if receipt { 2 } else { 1 });
    assert!(
        shipments
            .iter()
            .all(|s| s.status != erp_proto::carrier::ShipmentStatus::Voided as i32)
    );
    let (_, reserved) = c.stock_totals().await;
    assert_eq!(reserved, 0);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backordered_line_ships_after_a_receipt_on_every_backend() {
    let _watchdog = testing::watchdog(
        "a_backordered_line_ships_after_a_receipt_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        backordered_line(backend, Then::Receipt).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_backordered_line_closes_the_order_on_every_backend() {
    let _watchdog = testing::watchdog(
        "cancelling_the_backordered_line_closes_the_order_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        backordered_line(backend, Then::CancelLine).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_partly_shipped_order_keeps_what_shipped_on_every_backend() {
    let _watchdog = testing::watchdog(
        "cancelling_a_partly_shipped_order_keeps_what_shipped_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        backordered_line(backend, Then::CancelOrder).await;
    }
}

/// A line cancelled while its shipment waits for packing: the shipment is undone (fulfillment
/// cancelled, reservation released), the line cancelled, and the rest shipped on its own.
/// Once shipped, a line cannot be cancelled.
async fn line_cancel(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    let tees_before = on_hand(&mut c, "TEE-M").await;
    let id = place(&mut c, "LC-1", &[("MUG-BLUE", 1, 1299), ("TEE-M", 1, 1000)]).await;
    c.wait_step(&id, "await_pack").await;
    let first = c.open_fulfillments(&id).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].tasks.len(), 2);
    let tee_line = c.order(&id).await.lines[1].line_id.clone();
    let requested = c
        .order
        .cancel_order(CancelOrderRequest {
            idempotency_key: "lc-1-tee".into(),
            order_id: id.clone(),
            line_ids: vec![tee_line.clone()],
            actor: Some(Actor {
                id: "customer".into(),
                reason: "wrong size".into(),
            }),
            include_allocated: false,
        })
        .await
        .unwrap()
        .into_inner();
    // The tee is in a shipment in progress: the saga decides.
    assert_eq!(requested.pending_line_ids, vec![tee_line.clone()]);

    // The saga stops that shipment and plans a new one with the mug alone.
    let deadline = Instant::now() + T;
    let second = loop {
        let open = c.open_fulfillments(&id).await;
        if let Some(f) = open
            .into_iter()
            .find(|f| f.fulfillment_id != first[0].fulfillment_id)
        {
            break f;
        }
        assert!(Instant::now() < deadline, "no new fulfillment");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(second.tasks.len(), 1);
    assert_eq!(second.tasks[0].sku, "MUG-BLUE");
    assert_eq!(line(&mut c, &id, "TEE-M").await, (0, 0, 0, 1));
    let old = c
        .warehouse
        .get_fulfillment(erp_proto::warehouse::GetFulfillmentRequest {
            fulfillment_id: first[0].fulfillment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();
    assert_eq!(
        old.status,
        erp_proto::warehouse::FulfillmentStatus::Cancelled as i32
    );
    c.wait_step(&id, "await_pack").await;
    c.ship(&id).await;
    let done = c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    assert!(
        done.timeline
            .iter()
            .any(|e| e.detail.contains("cancelled on the order")),
        "{:#?}",
        done.timeline
    );
    let o = c.order(&id).await;
    assert_eq!(o.status, OrderStatus::Shipped as i32);
    assert_eq!(line(&mut c, &id, "MUG-BLUE").await, (0, 1, 0, 0));
    // The order now totals what was kept: the mug and its tax.
    assert_eq!(o.total.as_ref().unwrap().amount_minor, 1_385);
    assert_eq!(o.tax_total.as_ref().unwrap().amount_minor, 86);
    // The tee never left: its stock is whole. The stopped shipment's two reservations (one
    // per line) were released; the mug's new one was committed.
    assert_eq!(on_hand(&mut c, "TEE-M").await, tees_before);
    let r = c.reservations(&id).await;
    assert_eq!(
        r.iter()
            .filter(|r| r.state == ReservationState::Released as i32)
            .count(),
        2
    );
    assert_eq!(
        r.iter()
            .filter(|r| r.state == ReservationState::Committed as i32)
            .count(),
        1
    );
    // Authorized mug + tee with tax (13.85 + 10.66); captured only the mug; the rest released.
    let p = c.payment(&id).await.unwrap();
    assert_eq!(p.authorized.unwrap().amount_minor, 1_385 + 1_066);
    assert_eq!(p.captured.unwrap().amount_minor, 1_385);
    assert_eq!(p.status, PaymentStatus::Captured as i32);

    // A shipped line cannot be cancelled, and saying so changes nothing.
    let err = c
        .order
        .cancel_order(CancelOrderRequest {
            idempotency_key: "lc-1-mug".into(),
            order_id: id.clone(),
            line_ids: vec![o.lines[0].line_id.clone()],
            actor: None,
            include_allocated: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("ALREADY_SHIPPED"));
    assert_eq!(c.order(&id).await, o);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_line_stops_only_its_shipment_on_every_backend() {
    let _watchdog = testing::watchdog(
        "a_cancelled_line_stops_only_its_shipment_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        line_cancel(backend).await;
    }
}

/// No warehouse has both lines: under ship-complete rules the order waits; once the rules
/// allow a split it is planned again at once and ships in two shipments, one from each
/// warehouse, one label each, like any new order.
async fn split(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    for (sku, site) in [
        ("SPLIT-A", "east"),
        ("SPLIT-B", "west"),
        ("WHOLE-C", "east"),
    ] {
        c.create_item(sku, 500, 300, 0).await;
        c.receive(&format!("{sku}-in"), sku, site, 2).await;
    }
    c.create_item("WHOLE-D", 500, 300, 0).await;
    c.receive("WHOLE-D-in", "WHOLE-D", "central", 2).await;
    // No rules stored: the default ships complete, so this order waits for one warehouse to
    // hold both (a wholesale customer's terms would too).
    let whole = place(&mut c, "SP-0", &[("WHOLE-C", 1, 800), ("WHOLE-D", 1, 900)]).await;
    wait_status(&mut c, &whole, OrderStatus::Backordered).await;
    // The order is marked backordered just before its saga commits the wait; rules stored in
    // between find no waiting saga to re-plan (see issue #15's note), so wait for the saga.
    c.wait_step(&whole, "route").await;
    assert_eq!(line(&mut c, &whole, "WHOLE-C").await, (0, 0, 1, 0));
    assert!(c.open_fulfillments(&whole).await.is_empty());
    assert!(c.payment(&whole).await.is_none());

    // New rules allow a split: the waiting order is planned again at once (no stock changed)
    // and ships in two parts; so does a new one.
    ship_as_available(&mut c).await;
    let id = place(&mut c, "SP-1", &[("SPLIT-A", 1, 800), ("SPLIT-B", 1, 900)]).await;
    for (order, expected) in [
        (&whole, [("central", "WHOLE-D"), ("east", "WHOLE-C")]),
        (&id, [("east", "SPLIT-A"), ("west", "SPLIT-B")]),
    ] {
        let mut sites = Vec::new();
        for _ in 0..2 {
            c.wait_step(order, "await_pack").await;
            let open = c.open_fulfillments(order).await;
            assert_eq!(open.len(), 1, "one shipment at a time");
            assert_eq!(open[0].tasks.len(), 1);
            sites.push((open[0].site.clone(), open[0].tasks[0].sku.clone()));
            c.ship(order).await;
        }
        sites.sort();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(sites, expected);
        c.wait_saga(order, &[SagaStatus::Completed], T).await;
        assert_eq!(c.order(order).await.status, OrderStatus::Shipped as i32);
        let p = c.payment(order).await.unwrap();
        assert_eq!(p.status, PaymentStatus::Captured as i32);
        assert_eq!(p.captured, p.authorized);
    }
    let replanned = c.saga(&whole).await.unwrap();
    assert!(
        replanned
            .timeline
            .iter()
            .any(|e| e.detail.contains("planning again")),
        "{:#?}",
        replanned.timeline
    );
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_ships_from_each_warehouse_on_every_backend() {
    let _watchdog = testing::watchdog(
        "a_split_ships_from_each_warehouse_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        split(backend).await;
    }
}

/// Promise dates: the first routing promises each line from its warehouse's cutoff and the
/// carrier's transit (the mug, in stock), or from the inbound stock that will cover it (the
/// gadget, expected in six days). The order keeps that first promise.
async fn promises(backend: Backend) {
    use erp_proto::carrier::QuoteRatesRequest;
    use erp_runtime::time::{from_timestamp, now_ms, to_timestamp};
    let (s, mut c) = seeded(&backend).await;
    ship_as_available(&mut c).await;
    c.create_item("GADGET-P", 1_200, 500, 0).await;
    let expected = now_ms() + 6 * 86_400_000;
    c.inventory
        .record_inbound(erp_proto::inventory::RecordInboundRequest {
            idempotency_key: "gp-inbound".into(),
            sku: "GADGET-P".into(),
            location: "west".into(),
            quantity: 5,
            expected_at: Some(to_timestamp(expected)),
            source: None,
        })
        .await
        .unwrap();
    let id = place(
        &mut c,
        "PR-1",
        &[("MUG-BLUE", 1, 1299), ("GADGET-P", 2, 2500)],
    )
    .await;
    let deadline = Instant::now() + T;
    let o = loop {
        let o = c.order(&id).await;
        if !o.routing_decisions.is_empty() {
            break o;
        }
        assert!(Instant::now() < deadline, "never routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d = &o.routing_decisions[0];
    let decided = from_timestamp(d.decided_at.as_ref().unwrap());
    let mug_line = &o.lines[0].line_id;
    let mug = d
        .allocations
        .iter()
        .find(|a| &a.line_id == mug_line && a.allocated > 0)
        .unwrap();
    let gadget = d
        .allocations
        .iter()
        .find(|a| a.line_id == o.lines[1].line_id)
        .unwrap();
    assert_eq!(gadget.backordered, 2);
    // What the carrier quotes for the same ship times, computed here from the sites' clocks.
    let mut quote = async |site: &str, ready: i64| -> i64 {
        let s = c
            .warehouse
            .get_site(erp_proto::warehouse::GetSiteRequest { code: site.into() })
            .await
            .unwrap()
            .into_inner()
            .site
            .unwrap();
        let clock = erp_order::promise::SiteClock {
            postal_code: s.postal_code.clone(),
            cutoff_minute_of_day: s.cutoff_minute_of_day,
            utc_offset_minutes: s.utc_offset_minutes,
        };
        let ship_at = erp_order::promise::ship_moment(&clock, ready);
        let options = c
            .carrier
            .quote_rates(QuoteRatesRequest {
                origin_site: site.into(),
                origin_region: s.postal_code,
                destination: Some(erp_proto::common::Address {
                    postal_code: "07102".into(),
                    country_code: "US".into(),
                    ..Default::default()
                }),
                parcel: Some(erp_proto::common::Parcel {
                    weight_grams: 1_000,
                    ..Default::default()
                }),
                promised_by: None,
                ship_at: Some(to_timestamp(ship_at)),
            })
            .await
            .unwrap()
            .into_inner()
            .options;
        from_timestamp(options[0].estimated_delivery.as_ref().unwrap())
    };
    let mug_promise = from_timestamp(mug.promised_by.as_ref().unwrap());
    assert_eq!(mug_promise, quote(&mug.location, decided).await);
    assert!(mug_promise > decided);
    let gadget_promise = from_timestamp(gadget.promised_by.as_ref().unwrap());
    assert_eq!(gadget_promise, quote("west", expected).await);
    assert!(gadget_promise > expected, "not before the stock arrives");
    // The order's promise is its latest line, and it is the one the order keeps.
    assert_eq!(d.promised_by, gadget.promised_by);
    assert_eq!(o.promised_by, d.promised_by);
    assert!(
        d.explanation.iter().any(|e| e.starts_with("promised by")),
        "{:?}",
        d.explanation
    );
    // Shipping the mug routes again (the gadget waits); the first promise stands.
    c.wait_step(&id, "await_pack").await;
    c.ship(&id).await;
    let deadline = Instant::now() + T;
    loop {
        let later = c.order(&id).await;
        if later.routing_decisions.len() >= 2 {
            assert_eq!(later.promised_by, o.promised_by);
            break;
        }
        assert!(Instant::now() < deadline, "not routed again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promise_dates_come_from_cutoffs_transit_and_inbound_on_every_backend() {
    let _watchdog = testing::watchdog(
        "promise_dates_come_from_cutoffs_transit_and_inbound_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        promises(backend).await;
    }
}

/// Wholesale on net terms: no card is authorized or charged; the shipment becomes a
/// receivable due in the channel's terms, and a declining token does not matter.
async fn on_account(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    let receivable = async |c: &mut Clients| -> i64 {
        c.finance
            .get_trial_balance(erp_proto::finance::GetTrialBalanceRequest {})
            .await
            .unwrap()
            .into_inner()
            .rows
            .iter()
            .filter(|r| r.account_code == "1100")
            .map(|r| r.balance_minor)
            .sum()
    };
    let before = receivable(&mut c).await;
    let mut req = erp::seed::sample_order("WH-1", "MUG-BLUE", 4);
    req.channel = "wholesale".into();
    req.payment_method_token = "tok_decline_insufficient_funds".into();
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
    let done = c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    assert!(c.payment(&id).await.is_none(), "no card on account");
    let o = c.order(&id).await;
    assert_eq!(o.status, OrderStatus::Shipped as i32);
    let total = o.total.unwrap().amount_minor;
    assert_eq!(total, 4 * 1299 + 344, "New Jersey tax on 51.96");
    assert_eq!(receivable(&mut c).await - before, total);
    assert!(
        done.timeline
            .iter()
            .any(|e| e.step == "authorize_payment" && e.outcome == StepOutcome::Succeeded as i32)
    );
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wholesale_on_net_terms_ships_on_account_on_every_backend() {
    let _watchdog = testing::watchdog(
        "wholesale_on_net_terms_ships_on_account_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        on_account(backend).await;
    }
}

/// Plays the warehouse floor for `orders` until `done` says stop: packs what waits for packing
/// and ships what has its label, one fulfillment at a time, as pickers would.
async fn play_floor(c: &mut Clients, orders: &[String], done: impl Fn(&[(i32, String)]) -> bool) {
    let mut packed = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut states = Vec::with_capacity(orders.len());
        for id in orders {
            let Some(saga) = c.saga(id).await else {
                states.push((0, String::new()));
                continue;
            };
            if saga.status == SagaStatus::Waiting as i32 {
                let open = c.open_fulfillments(id).await;
                if saga.current_step == "await_pack"
                    && let Some(f) = open.first()
                    && packed.insert(f.fulfillment_id.clone())
                {
                    c.pick_and_pack(id).await;
                } else if saga.current_step == "await_shipment" && !open.is_empty() {
                    c.confirm_ship(id).await;
                }
            }
            states.push((saga.status, saga.current_step));
        }
        if done(&states) {
            return;
        }
        assert!(Instant::now() < deadline, "floor still busy: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Twenty customers at once want two of an item with fifteen in stock, shipped as available:
/// the reservations race (a lost race plans the shipment again), exactly fifteen ship, nobody
/// gets more than ordered, the rest waits backordered; a receipt of 25 completes every order,
/// each captured in full once.
async fn scarce(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    ship_as_available(&mut c).await;
    c.create_item("SCARCE", 400, 200, 0).await;
    c.receive("scarce-in", "SCARCE", "central", 15).await;
    let mut handles = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        handles.push(tokio::spawn(async move {
            place(&mut c, &format!("SC-{i}"), &[("SCARCE", 2, 1000)]).await
        }));
    }
    let mut orders = Vec::new();
    for h in handles {
        orders.push(h.await.unwrap());
    }
    let waiting_or_done = |states: &[(i32, String)]| {
        states.iter().all(|(status, step)| {
            *status == SagaStatus::Completed as i32
                || (*status == SagaStatus::Waiting as i32 && step == "route")
        })
    };
    play_floor(&mut c, &orders, waiting_or_done).await;
    let mut shipped = 0;
    for id in &orders {
        let (allocated, s, backordered, _) = line(&mut c, id, "SCARCE").await;
        assert!(
            s <= 2 && allocated == 0,
            "{id}: shipped {s}, allocated {allocated}"
        );
        assert_eq!(s + backordered, 2, "{id}: what did not ship waits");
        shipped += s;
    }
    assert_eq!(shipped, 15, "every unit in stock shipped, none twice");
    let mut replans = 0;
    for id in &orders {
        replans += c
            .saga(id)
            .await
            .unwrap()
            .timeline
            .iter()
            .filter(|e| e.detail.contains("taken meanwhile"))
            .count();
    }
    println!("{replans} reservation(s) lost a race and were planned again");
    assert_eq!(on_hand(&mut c, "SCARCE").await, 0);
    c.receive("scarce-more", "SCARCE", "central", 25).await;
    let all_done = |states: &[(i32, String)]| {
        states
            .iter()
            .all(|(status, _)| *status == SagaStatus::Completed as i32)
    };
    play_floor(&mut c, &orders, all_done).await;
    for id in &orders {
        assert_eq!(line(&mut c, id, "SCARCE").await, (0, 2, 0, 0));
        let p = c.payment(id).await.unwrap();
        assert_eq!(p.status, PaymentStatus::Captured as i32);
        assert_eq!(p.captured, p.authorized, "{id}");
    }
    assert_eq!(on_hand(&mut c, "SCARCE").await, 0);
    let (_, reserved) = c.stock_totals().await;
    assert_eq!(reserved, 0);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_orders_race_for_fifteen_units_on_every_backend() {
    let _watchdog = testing::watchdog(
        "twenty_orders_race_for_fifteen_units_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        scarce(backend).await;
    }
}

/// A customer's cancellation reaches a saga an operator paused: it is compensated at once
/// (the pause was operational, the cancel is a business fact), not shipped on resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_cancel_applies_to_a_paused_saga() {
    let _watchdog = testing::watchdog(
        "a_customer_cancel_applies_to_a_paused_saga",
        Duration::from_secs(300),
    );
    let (s, mut c) = seeded(&Backend::Sqlite).await;
    let id = place(&mut c, "PZ-1", &[("MUG-BLUE", 1, 1299)]).await;
    let waiting = c.wait_step(&id, "await_pack").await;
    c.orchestrator
        .pause_saga(erp_proto::orchestrator::PauseSagaRequest {
            saga_id: waiting.saga_id.clone(),
            action: Some(erp_proto::orchestrator::OperatorAction {
                operator: "ops-1".into(),
                reason: "address check".into(),
            }),
        })
        .await
        .unwrap();
    c.wait_saga(&id, &[SagaStatus::Paused], T).await;
    let requested = c
        .order
        .cancel_order(CancelOrderRequest {
            idempotency_key: "pz-1-cancel".into(),
            order_id: id.clone(),
            line_ids: vec![],
            actor: None,
            include_allocated: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(requested.pending_line_ids.len(), 1, "the mug is allocated");
    let done = c.wait_saga(&id, &[SagaStatus::Compensated], T).await;
    assert!(
        done.last_error.contains("ORDER_CANCELLED"),
        "{}",
        done.last_error
    );
    let o = c.order(&id).await;
    assert_eq!(o.status, OrderStatus::Cancelled as i32);
    assert_eq!(line(&mut c, &id, "MUG-BLUE").await, (0, 0, 0, 1));
    assert_eq!(
        c.payment(&id).await.unwrap().status,
        PaymentStatus::Voided as i32
    );
    assert!(c.open_fulfillments(&id).await.is_empty());
    let (_, reserved) = c.stock_totals().await;
    assert_eq!(reserved, 0);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

/// A warehouse goes offline (an outage) while an order waits there to be picked: the saga
/// undoes that shipment (fulfillment cancelled, hold released, label none yet) and routes the
/// order to another warehouse, where it ships. Nothing is written off: the stock is still
/// there, only out of reach.
async fn site_outage(backend: Backend) {
    let (s, mut c) = seeded(&backend).await;
    let id = place(&mut c, "OUT-1", &[("TEE-M", 1, 1000)]).await;
    c.wait_step(&id, "await_pack").await;
    let first = c.open_fulfillments(&id).await.remove(0);
    let before = on_hand(&mut c, "TEE-M").await;
    let offline = c
        .warehouse
        .set_site_status(erp_proto::warehouse::SetSiteStatusRequest {
            code: first.site.clone(),
            status: erp_proto::warehouse::SiteStatus::Offline as i32,
            actor: Some(Actor {
                id: "ops".into(),
                reason: "power outage".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        offline
            .unpicked_fulfillments
            .iter()
            .any(|f| f.fulfillment_id == first.fulfillment_id)
    );
    let deadline = Instant::now() + T;
    let second = loop {
        if let Some(f) = c
            .open_fulfillments(&id)
            .await
            .into_iter()
            .find(|f| f.fulfillment_id != first.fulfillment_id)
        {
            break f;
        }
        assert!(Instant::now() < deadline, "not re-routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(second.site, first.site);
    c.wait_step(&id, "await_pack").await;
    c.ship(&id).await;
    let done = c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    assert!(
        done.timeline
            .iter()
            .any(|e| e.detail.contains("went offline before picking")),
        "{:#?}",
        done.timeline
    );
    let old = c
        .warehouse
        .get_fulfillment(erp_proto::warehouse::GetFulfillmentRequest {
            fulfillment_id: first.fulfillment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .fulfillment
        .unwrap();
    assert_eq!(
        old.status,
        erp_proto::warehouse::FulfillmentStatus::Cancelled as i32
    );
    // One unit left, from the second warehouse; nothing written off at the first.
    assert_eq!(on_hand(&mut c, "TEE-M").await, before - 1);
    let p = c.payment(&id).await.unwrap();
    assert_eq!(p.status, PaymentStatus::Captured as i32);
    assert_eq!(p.captured, p.authorized);
    let (_, reserved) = c.stock_totals().await;
    assert_eq!(reserved, 0);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_outage_re_routes_what_it_had_not_picked_on_every_backend() {
    let _watchdog = testing::watchdog(
        "a_warehouse_outage_re_routes_what_it_had_not_picked_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        site_outage(backend).await;
    }
}

/// A backorder outlives the card authorization: the shipment after it re-authorizes what the
/// order still needs and releases the old authorization's rest, so no capture meets an expired
/// authorization. (Authorizations last 8 s here; renewed when they expire within 7 s.)
async fn reauthorization(backend: Backend) {
    use erp_integration_tests::{settings, suite};
    let mut extra = FAST.to_vec();
    extra.push(("ERP__FINANCE__AUTHORIZATION_TTL_MS", "8000"));
    extra.push(("ERP__ORCHESTRATOR__REAUTHORIZE_WITHIN_MS", "7000"));
    let s = suite(
        settings(&backend, &extra),
        erp_runtime::bus::Bus::InProcess(Default::default()),
    )
    .await;
    erp::seed::seed(&s).await.unwrap();
    let mut c = Clients::for_suite(&s);
    ship_as_available(&mut c).await;
    c.create_item("GADGET-R", 1_200, 500, 0).await;
    let id = place(
        &mut c,
        "RA-1",
        &[("MUG-BLUE", 2, 1299), ("GADGET-R", 3, 2500)],
    )
    .await;
    c.wait_step(&id, "await_pack").await;
    let first = c.payment(&id).await.unwrap();
    c.ship(&id).await;
    wait_status(&mut c, &id, OrderStatus::PartiallyShipped).await;
    // The backorder lasts: the authorization now expires within the renewal window.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    c.receive("gadgets-ra", "GADGET-R", "west", 3).await;
    c.wait_step(&id, "await_pack").await;
    c.ship(&id).await;
    let done = c.wait_saga(&id, &[SagaStatus::Completed], T).await;
    assert!(
        done.timeline.iter().any(|e| e.detail.contains(&format!(
            "re-authorized before the authorization expired (payment {} released)",
            first.payment_id
        ))),
        "{:#?}",
        done.timeline
    );
    // The first authorization kept what shipment 1 captured and released the rest; the new
    // one was for the gadgets and was captured in full.
    let old = c
        .finance
        .get_payment(erp_proto::finance::GetPaymentRequest {
            payment_id: first.payment_id.clone(),
            order_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(old.status, PaymentStatus::Captured as i32);
    assert_eq!(old.captured.unwrap().amount_minor, 2_770);
    let new = c.payment(&id).await.unwrap();
    assert_ne!(new.payment_id, first.payment_id);
    assert_eq!(new.authorized.unwrap().amount_minor, 7_997);
    assert_eq!(new.captured.unwrap().amount_minor, 7_997);
    assert_eq!(new.status, PaymentStatus::Captured as i32);
    c.assert_reconciled().await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backorder_re_authorizes_before_capture_on_every_backend() {
    let _watchdog = testing::watchdog(
        "a_long_backorder_re_authorizes_before_capture_on_every_backend",
        Duration::from_secs(300),
    );
    for backend in testing::backends() {
        reauthorization(backend).await;
    }
}
