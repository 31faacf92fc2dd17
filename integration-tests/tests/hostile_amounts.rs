//! Amounts, quantities and times chosen to overflow, sent through the public API: each is
//! refused with a clear status (or served without harm), nothing changes, and every service
//! keeps answering — a sum of money or quantity never wraps and never panics a handler.

#![allow(clippy::unwrap_used)]

use erp::testkit::Clients;
use erp_integration_tests::{FAST, settings, suite};
use erp_proto::common::{Address, Money, Parcel};
use erp_proto::{carrier, inventory, order, procurement};
use erp_runtime::bus::Bus;
use erp_runtime::testing::{self, Backend};
use tonic::Code;

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

fn reason(status: &tonic::Status) -> String {
    erp_runtime::error::status_reason(status).unwrap_or_default()
}

async fn on_hand(c: &mut Clients, sku: &str, location: &str) -> i64 {
    c.inventory
        .get_stock(inventory::GetStockRequest {
            sku: sku.into(),
            location: location.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .levels
        .first()
        .map_or(0, |l| l.on_hand)
}

async fn hostile(backend: Backend) {
    let s = suite(settings(&backend, FAST), Bus::InProcess(Default::default())).await;
    erp::seed::seed(&s).await.unwrap();
    let mut c = Clients::for_suite(&s);

    // A receipt whose value (10^9 units x 10^10) exceeds any amount the books accept: refused
    // whole, the stock and its value untouched.
    let before = on_hand(&mut c, "MUG-BLUE", "east").await;
    let e = c
        .inventory
        .receive_stock(inventory::ReceiveStockRequest {
            idempotency_key: "hostile-receipt".into(),
            sku: "MUG-BLUE".into(),
            location: "east".into(),
            quantity: 1_000_000_000,
            source: None,
            from_inbound: false,
            unit_cost: usd(10_000_000_000),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(reason(&e), "AMOUNT_OUT_OF_RANGE");
    assert_eq!(on_hand(&mut c, "MUG-BLUE", "east").await, before);

    // Receipts up to the per-bucket ceiling, then one more unit: STOCK_OUT_OF_RANGE, not a
    // wrapped or REAL-typed bucket (each at the catalog cost, 4.50: 10^12 units would be worth
    // more than the books take, so this item is a free sample).
    c.create_item("FREEBIE", 0, 1, 0).await;
    for i in 0..1000 {
        c.inventory
            .receive_stock(inventory::ReceiveStockRequest {
                idempotency_key: format!("hostile-fill-{i}"),
                sku: "FREEBIE".into(),
                location: "east".into(),
                quantity: 1_000_000_000,
                source: None,
                from_inbound: false,
                unit_cost: usd(0),
            })
            .await
            .unwrap();
    }
    let e = c
        .inventory
        .receive_stock(inventory::ReceiveStockRequest {
            idempotency_key: "hostile-fill-over".into(),
            sku: "FREEBIE".into(),
            location: "east".into(),
            quantity: 1,
            source: None,
            from_inbound: false,
            unit_cost: usd(0),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "STOCK_OUT_OF_RANGE", "{e:?}");
    assert_eq!(on_hand(&mut c, "FREEBIE", "east").await, 1_000_000_000_000);

    // An order worth more than 10^12: INVALID_ARGUMENT naming the lines, no order.
    let mut big = erp::seed::sample_order("HOSTILE-1", "MUG-BLUE", 1_000_000_000);
    big.lines[0].unit_price = usd(1_000_000_000_000);
    let e = c.order.create_order(big).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(testing::bad_fields(&e), ["lines"]);
    let listed = c
        .order
        .list_orders(order::ListOrdersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert!(listed.iter().all(|o| o.external_order_id != "HOSTILE-1"));

    // Stock positions a caller made up: refused, naming the field.
    let e = c
        .procurement
        .suggest_replenishment(procurement::SuggestReplenishmentRequest {
            location: String::new(),
            positions: vec![procurement::StockPosition {
                sku: "MUG-BLUE".into(),
                location: "east".into(),
                available: i64::MAX,
                inbound: 1,
            }],
            create_drafts: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(testing::bad_fields(&e), ["positions[0].available"]);

    // Times at the ends of i64: answered (clamped), not a panic.
    for seconds in [i64::MAX, i64::MIN] {
        let r = c
            .carrier
            .quote_rates(carrier::QuoteRatesRequest {
                origin_site: "east".into(),
                origin_region: "US-NJ".into(),
                destination: Some(Address {
                    postal_code: "07102".into(),
                    country_code: "US".into(),
                    ..Default::default()
                }),
                parcel: Some(Parcel {
                    weight_grams: 500,
                    ..Default::default()
                }),
                promised_by: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                ship_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            })
            .await;
        assert!(
            r.is_ok() || r.as_ref().is_err_and(|e| e.code() != Code::Unknown),
            "{r:?}"
        );
    }

    // Every service still answers.
    let mut ordinary = c.clone();
    let id = ordinary
        .place("HOSTILE-OK", "MUG-BLUE", 1, "tok_visa", "standard")
        .await;
    assert!(!id.is_empty());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_amounts_are_refused_on_every_backend() {
    let _watchdog = testing::watchdog(
        "hostile_amounts_are_refused_on_every_backend",
        std::time::Duration::from_secs(300),
    );
    for backend in testing::backends() {
        hostile(backend).await;
    }
}
