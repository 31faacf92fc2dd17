//! The availability cache (distributed mode, Redis): readers hammering GetAvailability while
//! reservations commit never see a figure higher than the truth as of the last reservation that
//! had answered before the read began.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use erp_proto::common::Money;
use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
use erp_proto::inventory::*;
use erp_runtime::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_availability_is_never_above_the_truth_after_a_reservation_answers() {
    let Some(redis_url) = testing::redis_url() else {
        return;
    };
    let prefix = format!("erp-cache-{}", uuid::Uuid::now_v7().simple());
    for backend in testing::backends() {
        let svc = testing::spawn_env::<erp_inventory::Service>(
            &backend,
            &[
                ("ERP__BUS__KIND", "redis"),
                ("ERP__BUS__REDIS_URL", &redis_url),
                (
                    "ERP__BUS__STREAM_PREFIX",
                    &format!("{prefix}-{}", backend.name()),
                ),
                ("ERP__INVENTORY__AVAILABILITY_CACHE_MS", "60000"),
            ],
        )
        .await;
        let channel = svc.channel().await;
        let mut c = InventoryServiceClient::new(channel.clone());
        c.create_item(CreateItemRequest {
            item: Some(Item {
                sku: "HOT".into(),
                name: "hot".into(),
                unit_cost: Some(Money {
                    amount_minor: 1,
                    currency: "USD".into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        c.create_location(CreateLocationRequest {
            location: Some(Location {
                code: "east".into(),
                name: "east".into(),
                region: "east".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        c.receive_stock(ReceiveStockRequest {
            idempotency_key: "in".into(),
            sku: "HOT".into(),
            location: "east".into(),
            quantity: 60,
            source: None,
            from_inbound: false,
            unit_cost: None,
        })
        .await
        .unwrap();
        let read = |mut c: InventoryServiceClient<tonic::transport::Channel>| async move {
            c.get_availability(GetAvailabilityRequest {
                skus: vec!["HOT".into()],
                as_of: None,
                include_inbound: false,
            })
            .await
            .unwrap()
            .into_inner()
            .items[0]
                .network_available
        };
        assert_eq!(read(c.clone()).await, 60);
        assert_eq!(read(c.clone()).await, 60, "served from the cache");

        let answered = Arc::new(AtomicI64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..6 {
            let (answered, done, c) = (answered.clone(), done.clone(), c.clone());
            readers.push(tokio::spawn(async move {
                let mut reads = 0;
                while !done.load(Ordering::SeqCst) {
                    let before = answered.load(Ordering::SeqCst);
                    let seen = read(c.clone()).await;
                    assert!(
                        seen <= 60 - before,
                        "read {seen} after {before} reservations had answered"
                    );
                    reads += 1;
                }
                reads
            }));
        }
        let mut writers = Vec::new();
        for w in 0..5 {
            let (answered, mut c) = (answered.clone(), c.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..10 {
                    c.reserve_stock(ReserveStockRequest {
                        idempotency_key: format!("r-{w}-{i}"),
                        order_id: format!("o-{w}-{i}"),
                        lines: vec![ReserveLine {
                            order_line_id: "l".into(),
                            sku: "HOT".into(),
                            location: "east".into(),
                            quantity: 1,
                        }],
                        mode: 0,
                        expires_at: None,
                    })
                    .await
                    .unwrap();
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        let mut reads = 0;
        for r in readers {
            reads += r.await.unwrap();
        }
        assert!(reads > 20, "readers ran alongside: {reads}");
        assert_eq!(read(c.clone()).await, 10);
        svc.stop().await;
    }
}
