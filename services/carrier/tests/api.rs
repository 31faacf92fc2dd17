//! Carrier API tests on SQLite and PostgreSQL: cheapest option that meets the promise, labels
//! bought once, tracking that never moves backwards.

#![allow(clippy::unwrap_used)]

use erp_proto::carrier::carrier_service_client::CarrierServiceClient;
use erp_proto::carrier::*;
use erp_proto::common::{Address, Money, Parcel};
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};
use erp_runtime::time::to_timestamp;

const DAY_MS: i64 = 86_400_000;

fn offering(code: &str, level: ServiceLevel, days: i32, price: i64) -> ServiceOffering {
    ServiceOffering {
        code: code.into(),
        level: level as i32,
        transit_days: days,
        rates: (1..=10)
            .map(|zone| RateBand {
                zone,
                max_weight_grams: 5000,
                price: Some(Money {
                    amount_minor: price,
                    currency: "USD".into(),
                }),
            })
            .collect(),
        surcharge: None,
    }
}

fn destination() -> Option<Address> {
    Some(Address {
        postal_code: "10001".into(),
        country_code: "US".into(),
        ..Default::default()
    })
}

async fn rates_labels_tracking(backend: Backend) {
    let svc = testing::spawn::<erp_carrier::Service>(&backend).await;
    let mut c = CarrierServiceClient::new(svc.channel().await);
    c.upsert_carrier(UpsertCarrierRequest {
        reason: "setup".into(),
        carrier: Some(Carrier {
            code: "fastco".into(),
            name: "FastCo".into(),
            services: vec![
                offering("ground", ServiceLevel::Ground, 5, 700),
                offering("overnight", ServiceLevel::Overnight, 1, 2500),
            ],
            cutoffs: vec![PickupCutoff {
                site: "east".into(),
                cutoff_minute_of_day: 17 * 60,
            }],
            active: true,
        }),
    })
    .await
    .unwrap();
    c.upsert_carrier(UpsertCarrierRequest {
        reason: "setup".into(),
        carrier: Some(Carrier {
            code: "slowco".into(),
            name: "SlowCo".into(),
            services: vec![offering("twoday", ServiceLevel::TwoDay, 2, 1200)],
            cutoffs: vec![],
            active: true,
        }),
    })
    .await
    .unwrap();

    // Shipping at 10:00 with a promise 3 days out: two-day and overnight qualify, cheapest first.
    let morning = 1_795_000_000_000 / DAY_MS * DAY_MS + 10 * 3_600_000;
    let quote = |ship_at: i64, promise_days: i64| QuoteRatesRequest {
        origin_site: "east".into(),
        origin_region: "07001".into(),
        destination: destination(),
        parcel: Some(Parcel {
            weight_grams: 900,
            ..Default::default()
        }),
        promised_by: Some(to_timestamp(ship_at + promise_days * DAY_MS)),
        ship_at: Some(to_timestamp(ship_at)),
    };
    let q = c.quote_rates(quote(morning, 3)).await.unwrap().into_inner();
    let names: Vec<_> = q.options.iter().map(|o| o.service.clone()).collect();
    assert_eq!(names, ["twoday", "overnight"]);
    assert!(
        q.excluded
            .iter()
            .any(|e| e.service == "ground" && e.reason.contains("after the promised date"))
    );
    // At 18:00 FastCo's 17:00 pickup has passed: a 1-day promise now has no FastCo option.
    let evening = morning + 8 * 3_600_000;
    let q = c.quote_rates(quote(evening, 1)).await.unwrap().into_inner();
    assert!(q.options.is_empty(), "{:?}", q.options);
    assert!(
        q.excluded
            .iter()
            .any(|e| e.service == "overnight" && e.reason.contains("cutoff"))
    );

    // A label is bought once per key.
    let buy = BuyLabelRequest {
        idempotency_key: "label-1".into(),
        order_id: "o1".into(),
        ..buy_template()
    };
    let first = c
        .buy_label(buy.clone())
        .await
        .unwrap()
        .into_inner()
        .shipment
        .unwrap();
    let again = c
        .buy_label(buy)
        .await
        .unwrap()
        .into_inner()
        .shipment
        .unwrap();
    assert_eq!(first.tracking_number, again.tracking_number);
    assert_eq!(first.cost.unwrap().amount_minor, 1200);

    // Tracking: in transit, then a late "picked up" and a duplicate: neither moves it back.
    let event = |id: &str, milestone: ShipmentStatus, at: i64| RecordTrackingEventRequest {
        tracking_number: first.tracking_number.clone(),
        event: Some(TrackingEvent {
            event_id: id.into(),
            milestone: milestone as i32,
            occurred_at: Some(to_timestamp(at)),
            detail: String::new(),
        }),
    };
    let r = c
        .record_tracking_event(event("e2", ShipmentStatus::InTransit, morning + 2))
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    let r = c
        .record_tracking_event(event("e1", ShipmentStatus::PickedUp, morning + 1))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.applied);
    let r = c
        .record_tracking_event(event("e2", ShipmentStatus::InTransit, morning + 2))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.applied);
    assert_eq!(r.shipment.unwrap().status, ShipmentStatus::InTransit as i32);

    // Picked up: the label can no longer be voided, and says so.
    let err = c
        .void_label(VoidLabelRequest {
            idempotency_key: "void-1".into(),
            shipment_id: first.shipment_id.clone(),
            order_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("ALREADY_PICKED_UP"));

    // Delays and exceptions name the orders they affect.
    let list = |overdue: bool, as_of: Option<i64>, status: ShipmentStatus| ListShipmentsRequest {
        status: status as i32,
        overdue,
        as_of: as_of.map(to_timestamp),
        ..Default::default()
    };
    let orders = |r: ListShipmentsResponse| -> Vec<String> {
        r.shipments.into_iter().map(|s| s.order_id).collect()
    };
    let now = erp_runtime::time::now_ms();
    let overdue_now = c
        .list_shipments(list(true, None, ShipmentStatus::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert!(
        orders(overdue_now).is_empty(),
        "two-day label bought just now"
    );
    let label = |key: &str, order: &str, postal: &str| BuyLabelRequest {
        idempotency_key: key.into(),
        order_id: order.into(),
        destination: Some(Address {
            postal_code: postal.into(),
            country_code: "US".into(),
            ..Default::default()
        }),
        ..buy_template()
    };
    let o2 = c
        .buy_label(label("label-2", "o2", "10001"))
        .await
        .unwrap()
        .into_inner()
        .shipment
        .unwrap();
    let exception = RecordTrackingEventRequest {
        tracking_number: o2.tracking_number.clone(),
        event: Some(TrackingEvent {
            event_id: "x1".into(),
            milestone: ShipmentStatus::Exception as i32,
            occurred_at: Some(to_timestamp(now)),
            detail: "address not found".into(),
        }),
    };
    assert!(
        c.record_tracking_event(exception)
            .await
            .unwrap()
            .into_inner()
            .applied
    );
    let in_exception = c
        .list_shipments(list(false, None, ShipmentStatus::Exception))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(orders(in_exception), ["o2"]);

    // The simulated carrier's feed for a third label: repeated and reordered webhooks. Only
    // the milestones that move it forward apply, and it ends delivered.
    let o3 = c
        .buy_label(label("label-3", "o3", "10001"))
        .await
        .unwrap()
        .into_inner()
        .shipment
        .unwrap();
    let mut applied = 0;
    let feed = erp_carrier::adapter::simulated_feed(&o3.tracking_number, now, 2 * DAY_MS);
    for e in &feed {
        let r = c
            .record_tracking_event(RecordTrackingEventRequest {
                tracking_number: o3.tracking_number.clone(),
                event: Some(e.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        applied += usize::from(r.applied);
    }
    assert_eq!((feed.len(), applied), (6, 3));
    let o3 = c
        .get_shipment(GetShipmentRequest {
            shipment_id: o3.shipment_id.clone(),
            tracking_number: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .shipment
        .unwrap();
    assert_eq!(o3.status, ShipmentStatus::Delivered as i32);
    assert_eq!(
        o3.events.len(),
        4,
        "every distinct event is kept, applied or not"
    );
    // Ten days on, the labels still on their way are late; the delivered one is not.
    let mut late = orders(
        c.list_shipments(list(
            true,
            Some(now + 10 * DAY_MS),
            ShipmentStatus::Unspecified,
        ))
        .await
        .unwrap()
        .into_inner(),
    );
    late.sort();
    assert_eq!(late, ["o1", "o2"]);

    // A carrier that does not serve the address refuses; nothing is recorded.
    let err = c
        .buy_label(label("label-4", "o4", "00000"))
        .await
        .unwrap_err();
    assert_eq!(
        status_reason(&err).as_deref(),
        Some("ADDRESS_UNDELIVERABLE")
    );
    let none = c
        .list_shipments(ListShipmentsRequest {
            order_id: "o4".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.shipments.is_empty());
    svc.stop().await;
}

/// A two-day label from east for a 900 g parcel.
fn buy_template() -> BuyLabelRequest {
    BuyLabelRequest {
        idempotency_key: String::new(),
        order_id: String::new(),
        fulfillment_id: "f1".into(),
        carrier: "slowco".into(),
        service: "twoday".into(),
        origin_site: "east".into(),
        origin_region: "07001".into(),
        destination: destination(),
        parcel: Some(Parcel {
            weight_grams: 900,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_labels_tracking_on_every_backend() {
    for backend in testing::backends() {
        rates_labels_tracking(backend).await;
    }
}
