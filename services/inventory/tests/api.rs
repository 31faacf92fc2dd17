//! Inventory API tests: a real server on port 0, a real database (SQLite file, and PostgreSQL
//! when the test script provides one), the generated client.

#![allow(clippy::unwrap_used)]

use erp_proto::common::{Actor, Money};
use erp_proto::inventory::inventory_service_client::InventoryServiceClient;
use erp_proto::inventory::*;
use erp_runtime::error::status_reason;
use erp_runtime::testing::{self, Backend};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

async fn seed(client: &mut InventoryServiceClient<Channel>, on_hand: i64) {
    client
        .create_item(CreateItemRequest {
            item: Some(Item {
                sku: "SKU-1".into(),
                name: "Blue mug".into(),
                unit_cost: Some(Money {
                    amount_minor: 450,
                    currency: "USD".into(),
                }),
                weight_grams: 350,
                tax_class: "standard".into(),
                low_stock_threshold: 5,
                created_at: None,
            }),
        })
        .await
        .unwrap();
    for (code, region) in [("east", "us-east"), ("west", "us-west")] {
        client
            .create_location(CreateLocationRequest {
                location: Some(Location {
                    code: code.into(),
                    name: format!("{code} DC"),
                    region: region.into(),
                    status: 0,
                    status_reason: String::new(),
                }),
            })
            .await
            .unwrap();
    }
    client
        .receive_stock(ReceiveStockRequest {
            idempotency_key: "receipt-1".into(),
            sku: "SKU-1".into(),
            location: "east".into(),
            quantity: on_hand,
            source: None,
            from_inbound: false,
            unit_cost: None,
        })
        .await
        .unwrap();
}

fn reserve(key: &str, order: &str, qty: i64) -> ReserveStockRequest {
    ReserveStockRequest {
        idempotency_key: key.into(),
        order_id: order.into(),
        lines: vec![ReserveLine {
            order_line_id: format!("{order}-1"),
            sku: "SKU-1".into(),
            location: "east".into(),
            quantity: qty,
        }],
        mode: ReserveMode::AllOrNothing as i32,
        expires_at: None,
    }
}

async fn level(client: &mut InventoryServiceClient<Channel>) -> StockLevel {
    client
        .get_stock(GetStockRequest {
            sku: "SKU-1".into(),
            location: "east".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .levels
        .remove(0)
}

async fn assert_ledger_consistent(client: &mut InventoryServiceClient<Channel>) {
    let verify = client
        .verify_ledger(VerifyLedgerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        verify.consistent,
        "ledger mismatches: {:?}",
        verify.mismatches
    );
    assert!(verify.entries_replayed > 0);
}

async fn reservation_lifecycle(backend: Backend) {
    let svc = testing::spawn::<erp_inventory::Service>(&backend).await;
    let mut client = InventoryServiceClient::new(svc.channel().await);
    seed(&mut client, 10).await;

    let first = client
        .reserve_stock(reserve("r1", "o1", 4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.reservations.len(), 1);
    // A repeat of the same key answers the first response and reserves nothing more.
    let again = client
        .reserve_stock(reserve("r1", "o1", 4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    let l = level(&mut client).await;
    assert_eq!((l.on_hand, l.reserved, l.available), (10, 4, 6));

    // The same key with another request is refused, not silently answered.
    let err = client
        .reserve_stock(reserve("r1", "o1", 5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // More than available: FAILED_PRECONDITION / INSUFFICIENT_STOCK, nothing changes.
    let err = client
        .reserve_stock(reserve("r2", "o2", 7))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(status_reason(&err).as_deref(), Some("INSUFFICIENT_STOCK"));
    assert!(
        err.message().contains("need 7, available 6"),
        "{}",
        err.message()
    );
    let l = level(&mut client).await;
    assert_eq!((l.on_hand, l.reserved), (10, 4));

    // Commit at shipment moves the units out of on hand.
    let committed = client
        .commit_reservations(CommitReservationsRequest {
            idempotency_key: "c1".into(),
            order_id: "o1".into(),
            reservation_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        committed.reservations[0].state,
        ReservationState::Committed as i32
    );
    let l = level(&mut client).await;
    assert_eq!((l.on_hand, l.reserved, l.available), (6, 0, 6));

    // Reserve then release returns the units.
    client.reserve_stock(reserve("r3", "o3", 6)).await.unwrap();
    let released = client
        .release_reservations(ReleaseReservationsRequest {
            idempotency_key: "rel3".into(),
            order_id: "o3".into(),
            reservation_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.reservations.len(), 1);
    let l = level(&mut client).await;
    assert_eq!((l.on_hand, l.reserved), (6, 0));

    // Availability network-wide, and excluding an offline location.
    let avail = client
        .get_availability(GetAvailabilityRequest {
            skus: vec!["SKU-1".into()],
            as_of: None,
            include_inbound: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(avail.items[0].network_available, 6);
    client
        .set_location_status(SetLocationStatusRequest {
            code: "east".into(),
            status: LocationStatus::Offline as i32,
            actor: Some(Actor {
                id: "ops".into(),
                reason: "power outage".into(),
            }),
        })
        .await
        .unwrap();
    let avail = client
        .get_availability(GetAvailabilityRequest {
            skus: vec!["SKU-1".into()],
            as_of: None,
            include_inbound: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(avail.items[0].network_available, 0);

    assert_ledger_consistent(&mut client).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_lifecycle_on_every_backend() {
    for backend in testing::backends() {
        reservation_lifecycle(backend).await;
    }
}

async fn concurrent_reservations_never_oversell(backend: Backend) {
    // Room for all 500 at once: beyond the limit the server sheds load with RESOURCE_EXHAUSTED,
    // which is not what this test is about.
    let svc = testing::spawn_env::<erp_inventory::Service>(
        &backend,
        &[("ERP__SERVER__CONCURRENCY_LIMIT", "1000")],
    )
    .await;
    let channel = svc.channel().await;
    let mut client = InventoryServiceClient::new(channel.clone());
    seed(&mut client, 100).await;

    let mut tasks = Vec::new();
    for i in 0..500 {
        let mut c = InventoryServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            c.reserve_stock(reserve(&format!("k{i}"), &format!("order-{i}"), 1))
                .await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(
                    status_reason(&status).as_deref(),
                    Some("INSUFFICIENT_STOCK")
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (100, 400), "backend {}", backend.name());
    let l = level(&mut client).await;
    assert_eq!((l.on_hand, l.reserved, l.available), (100, 100, 0));
    assert_ledger_consistent(&mut client).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_on_every_backend() {
    for backend in testing::backends() {
        concurrent_reservations_never_oversell(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_writes_nothing() {
    let svc = testing::spawn::<erp_inventory::Service>(&Backend::Sqlite).await;
    let mut client = InventoryServiceClient::new(svc.channel().await);
    seed(&mut client, 3).await;

    let err = client
        .reserve_stock(ReserveStockRequest {
            idempotency_key: String::new(),
            order_id: String::new(),
            lines: vec![ReserveLine {
                order_line_id: "l".into(),
                sku: "bad sku".into(),
                location: "east".into(),
                quantity: -1,
            }],
            mode: 0,
            expires_at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "idempotency_key",
            "order_id",
            "lines[0].sku",
            "lines[0].quantity"
        ]
    );
    let err = client
        .adjust_stock(AdjustStockRequest {
            idempotency_key: "a".into(),
            sku: "SKU-1".into(),
            location: "east".into(),
            bucket: Bucket::OnHand as i32,
            delta: -5,
            actor: Some(Actor {
                id: "ops".into(),
                reason: "damaged".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .get_item(GetItemRequest { sku: "NOPE".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let l = level(&mut client).await;
    assert_eq!((l.on_hand, l.reserved), (3, 0));
    assert_ledger_consistent(&mut client).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_before_its_forward_action_leaves_a_tombstone() {
    for backend in testing::backends() {
        let svc = testing::spawn::<erp_inventory::Service>(&backend).await;
        let mut client = InventoryServiceClient::new(svc.channel().await);
        seed(&mut client, 5).await;
        // The saga timed out waiting for the reservation and compensated; the reservation
        // request arrives afterwards.
        let released = client
            .release_reservations(ReleaseReservationsRequest {
                idempotency_key: "saga-9:reserve_stock:compensate".into(),
                order_id: "o9".into(),
                reservation_ids: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(released.reservations.is_empty());
        let err = client
            .reserve_stock(reserve("saga-9:reserve_stock:forward", "o9", 2))
            .await
            .unwrap_err();
        assert_eq!(status_reason(&err).as_deref(), Some("ALREADY_COMPENSATED"));
        let l = level(&mut client).await;
        assert_eq!(
            (l.on_hand, l.reserved),
            (5, 0),
            "the late reservation held nothing"
        );
        svc.stop().await;
    }
}

fn actor(id: &str, reason: &str) -> Option<Actor> {
    Some(Actor {
        id: id.into(),
        reason: reason.into(),
    })
}

async fn transfers_counts_returns(backend: Backend) {
    let svc = testing::spawn::<erp_inventory::Service>(&backend).await;
    let mut c = InventoryServiceClient::new(svc.channel().await);
    seed(&mut c, 20).await;
    let at = |loc: &str| GetStockRequest {
        sku: "SKU-1".into(),
        location: loc.into(),
    };

    // Transfer 8 east -> west: out of east's on hand, into west's inbound, promised by date.
    let expected = erp_runtime::time::now_ms() + 86_400_000;
    let t = c
        .transfer_stock(TransferStockRequest {
            idempotency_key: "t1".into(),
            sku: "SKU-1".into(),
            from_location: "east".into(),
            to_location: "west".into(),
            quantity: 8,
            expected_at: Some(erp_runtime::time::to_timestamp(expected)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.from_level.unwrap().on_hand, 12);
    assert_eq!(t.to_level.unwrap().inbound, 8);
    let by_date = c
        .get_availability(GetAvailabilityRequest {
            skus: vec!["SKU-1".into()],
            as_of: Some(erp_runtime::time::to_timestamp(expected)),
            include_inbound: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_date.items[0].network_available, 20,
        "in transit counts by its date"
    );
    let now = c
        .get_availability(GetAvailabilityRequest {
            skus: vec!["SKU-1".into()],
            as_of: None,
            include_inbound: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.items[0].network_available, 12, "but not now");
    assert!(now.items[0].inbound.is_empty(), "listed only when asked");
    let with_inbound = c
        .get_availability(GetAvailabilityRequest {
            skus: vec!["SKU-1".into()],
            as_of: None,
            include_inbound: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        with_inbound.items[0].inbound,
        [InboundLot {
            location: "west".into(),
            quantity: 8,
            expected_at: Some(erp_runtime::time::to_timestamp(expected)),
        }],
        "what promise dates are computed from"
    );
    // More than available cannot leave.
    let err = c
        .transfer_stock(TransferStockRequest {
            idempotency_key: "t2".into(),
            sku: "SKU-1".into(),
            from_location: "east".into(),
            to_location: "west".into(),
            quantity: 13,
            expected_at: Some(erp_runtime::time::to_timestamp(expected)),
        })
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("INSUFFICIENT_STOCK"));
    // The receipt must match the transfer; then it moves inbound to on hand once.
    let receipt = |key: &str, qty: i64| ReceiveStockRequest {
        idempotency_key: key.into(),
        sku: "SKU-1".into(),
        location: "west".into(),
        quantity: qty,
        source: Some(erp_proto::common::SourceDocument {
            kind: "transfer".into(),
            id: t.transfer_id.clone(),
        }),
        from_inbound: true,
        unit_cost: None,
    };
    let err = c.receive_stock(receipt("rx0", 7)).await.unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("TRANSFER_STATE"));
    c.receive_stock(receipt("rx1", 8)).await.unwrap();
    let err = c.receive_stock(receipt("rx2", 8)).await.unwrap_err();
    assert_eq!(
        status_reason(&err).as_deref(),
        Some("TRANSFER_STATE"),
        "received once"
    );
    let west = c
        .get_stock(at("west"))
        .await
        .unwrap()
        .into_inner()
        .levels
        .remove(0);
    assert_eq!((west.on_hand, west.inbound), (8, 0));

    // Cycle counts: one exact, one short by 2; accuracy 50 %. A count below reserved is refused.
    let count = |key: &str, qty: i64| RecordCycleCountRequest {
        idempotency_key: key.into(),
        sku: "SKU-1".into(),
        location: "east".into(),
        counted_quantity: qty,
        actor: actor("counter-1", "weekly count"),
    };
    let exact = c
        .record_cycle_count(count("cc1", 12))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((exact.variance, exact.location_accuracy_bps), (0, 10_000));
    let short = c
        .record_cycle_count(count("cc2", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((short.expected_quantity, short.variance), (12, -2));
    assert_eq!(short.location_accuracy_bps, 5_000);
    assert_eq!(short.level.unwrap().on_hand, 10);
    c.reserve_stock(reserve("r-cc", "o-cc", 6)).await.unwrap();
    let err = c.record_cycle_count(count("cc3", 5)).await.unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("COUNT_BELOW_RESERVED"));

    // Returns: 3 arrive, 2 restocked, 1 quarantined; more than pending is refused.
    c.record_return(RecordReturnRequest {
        idempotency_key: "ret1".into(),
        sku: "SKU-1".into(),
        location: "east".into(),
        quantity: 3,
        source: None,
    })
    .await
    .unwrap();
    let inspect = |key: &str, qty: i64, d: ReturnDisposition| InspectReturnRequest {
        idempotency_key: key.into(),
        sku: "SKU-1".into(),
        location: "east".into(),
        quantity: qty,
        disposition: d as i32,
        actor: actor("qc-1", "inspection"),
    };
    c.inspect_return(inspect("i1", 2, ReturnDisposition::Restock))
        .await
        .unwrap();
    c.inspect_return(inspect("i2", 1, ReturnDisposition::Quarantine))
        .await
        .unwrap();
    let err = c
        .inspect_return(inspect("i3", 1, ReturnDisposition::Restock))
        .await
        .unwrap_err();
    assert_eq!(status_reason(&err).as_deref(), Some("NEGATIVE_STOCK"));
    let east = level(&mut c).await;
    assert_eq!(
        (
            east.on_hand,
            east.reserved,
            east.returns_pending,
            east.quarantined
        ),
        (12, 6, 0, 1)
    );
    assert_ledger_consistent(&mut c).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_counts_and_returns_on_every_backend() {
    for backend in testing::backends() {
        transfers_counts_returns(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_hold_expires_back_to_stock() {
    let svc = testing::spawn::<erp_inventory::Service>(&Backend::Sqlite).await;
    let mut c = InventoryServiceClient::new(svc.channel().await);
    seed(&mut c, 4).await;
    let mut req = reserve("hold", "cart-1", 3);
    req.expires_at = Some(erp_runtime::time::to_timestamp(
        erp_runtime::time::now_ms() + 300,
    ));
    c.reserve_stock(req).await.unwrap();
    assert_eq!(level(&mut c).await.available, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let l = level(&mut c).await;
        if l.available == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hold never expired: {l:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = c
        .list_reservations(ListReservationsRequest {
            order_id: "cart-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reservations;
    assert_eq!(r[0].state, ReservationState::Expired as i32);
    assert_ledger_consistent(&mut c).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_requests_are_shed_not_queued() {
    let svc = testing::spawn_env::<erp_inventory::Service>(
        &Backend::Sqlite,
        &[("ERP__SERVER__CONCURRENCY_LIMIT", "2")],
    )
    .await;
    let channel = svc.channel().await;
    let mut c = InventoryServiceClient::new(channel.clone());
    seed(&mut c, 1000).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut c = InventoryServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            c.reserve_stock(reserve(&format!("shed-{i}"), &format!("o-{i}"), 1))
                .await
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                shed += 1;
            }
        }
    }
    assert!(shed > 0 && ok > 0, "ok {ok}, shed {shed}");
    // What was accepted was applied exactly; what was shed changed nothing.
    let l = level(&mut c).await;
    assert_eq!(l.reserved, ok);
    assert_ledger_consistent(&mut c).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_arriving_together_reserve_once() {
    for backend in testing::backends() {
        let svc = testing::spawn::<erp_inventory::Service>(&backend).await;
        let channel = svc.channel().await;
        let mut c = InventoryServiceClient::new(channel.clone());
        seed(&mut c, 30).await;
        // 40 distinct keys, each sent three times at once (a client retrying eagerly), for 30
        // units: the repeats land in the same batches as their originals.
        let mut tasks = Vec::new();
        for i in 0..40 {
            for _ in 0..3 {
                let mut c = InventoryServiceClient::new(channel.clone());
                tasks.push(tokio::spawn(async move {
                    (
                        i,
                        c.reserve_stock(reserve(&format!("dup-{i}"), &format!("o-{i}"), 1))
                            .await,
                    )
                }));
            }
        }
        let mut answers: std::collections::BTreeMap<i32, Vec<Result<ReserveStockResponse, Code>>> =
            Default::default();
        for t in tasks {
            let (i, r) = t.await.unwrap();
            answers
                .entry(i)
                .or_default()
                .push(r.map(|r| r.into_inner()).map_err(|s| s.code()));
        }
        let mut granted = 0;
        for (i, rs) in &answers {
            let oks: Vec<_> = rs.iter().filter_map(|r| r.as_ref().ok()).collect();
            if !oks.is_empty() {
                granted += 1;
                assert_eq!(
                    oks.len(),
                    3,
                    "key {i}: a granted reservation is granted to every repeat"
                );
                assert!(
                    oks.iter().all(|r| *r == oks[0]),
                    "key {i}: repeats answer the same reservation"
                );
            }
        }
        assert_eq!(granted, 30, "backend {}", backend.name());
        let l = level(&mut c).await;
        assert_eq!((l.reserved, l.available), (30, 0));
        assert_ledger_consistent(&mut c).await;
        svc.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_changes_and_low_stock_leave_as_events() {
    use erp_runtime::bus::{Bus, Event, InProcessBus, handler};
    let bus = Bus::InProcess(InProcessBus::default());
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Event>>> = Default::default();
    for topic in ["inventory.stock_changed", "inventory.low_stock"] {
        let seen = seen.clone();
        bus.subscribe(
            topic,
            "test",
            handler(move |e: Event| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(e);
                    Ok(())
                }
            }),
            tokio_util::sync::CancellationToken::new(),
            &tokio_util::task::TaskTracker::new(),
        )
        .await
        .unwrap();
    }
    let (settings, _) = testing::settings(&Backend::Sqlite, &[]);
    let svc =
        testing::spawn_with::<erp_inventory::Service>(std::sync::Arc::new(settings), bus).await;
    let mut c = InventoryServiceClient::new(svc.channel().await);
    // Threshold 5: receiving 10 is no alarm; reserving 6 leaves 4 and is.
    seed(&mut c, 10).await;
    c.reserve_stock(reserve("low", "o-low", 6)).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let low: Vec<Event> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.topic == "inventory.low_stock")
            .cloned()
            .collect();
        if let Some(e) = low.first() {
            assert_eq!(low.len(), 1);
            assert_eq!(e.payload["network_available"], 4);
            assert_eq!(e.payload["threshold"], 5);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no low-stock event");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let changed = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.topic == "inventory.stock_changed")
        .count();
    assert_eq!(changed, 2, "one for the receipt, one for the reservation");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_mode_takes_what_is_there_and_names_the_short_lines() {
    for backend in testing::backends() {
        let svc = testing::spawn::<erp_inventory::Service>(&backend).await;
        let mut c = InventoryServiceClient::new(svc.channel().await);
        seed(&mut c, 5).await;
        let mut req = reserve("p1", "o-p", 8);
        req.mode = ReserveMode::Partial as i32;
        let r = c.reserve_stock(req).await.unwrap().into_inner();
        assert_eq!(r.reservations.len(), 1);
        assert_eq!(r.reservations[0].quantity, 5);
        assert_eq!(r.short_lines, ["o-p-1"]);
        // Nothing left: a partial request gets no reservation, and is still answered.
        let mut req = reserve("p2", "o-q", 2);
        req.mode = ReserveMode::Partial as i32;
        let r = c.reserve_stock(req).await.unwrap().into_inner();
        assert!(r.reservations.is_empty());
        assert_eq!(r.short_lines, ["o-q-1"]);
        let l = level(&mut c).await;
        assert_eq!((l.reserved, l.available), (5, 0));
        assert_ledger_consistent(&mut c).await;
        svc.stop().await;
    }
}

/// One reservation released and committed at once, and released twice at once (different
/// keys: a compensation racing the expiry sweep or a late commit): its units leave the reserved
/// bucket exactly once, whichever wins.
async fn release_racing_commit(backend: Backend) {
    let svc = testing::spawn::<erp_inventory::Service>(&backend).await;
    let channel = svc.channel().await;
    let mut client = InventoryServiceClient::new(channel.clone());
    seed(&mut client, 100).await;
    let (mut committed, mut released) = (0, 0);
    for round in 0..10 {
        let order = format!("race-{round}");
        client
            .reserve_stock(reserve(&format!("r-{round}"), &order, 3))
            .await
            .unwrap();
        let mut calls = Vec::new();
        for (i, commit) in [(0, true), (1, false), (2, false)] {
            let mut c = InventoryServiceClient::new(channel.clone());
            let order = order.clone();
            calls.push(tokio::spawn(async move {
                let key = format!("{order}-{i}");
                if commit {
                    c.commit_reservations(CommitReservationsRequest {
                        idempotency_key: key,
                        order_id: order,
                        reservation_ids: vec![],
                    })
                    .await
                    .map(|r| ("commit", r.into_inner().reservations.len()))
                } else {
                    c.release_reservations(ReleaseReservationsRequest {
                        idempotency_key: key,
                        order_id: order,
                        reservation_ids: vec![],
                    })
                    .await
                    .map(|r| ("release", r.into_inner().reservations.len()))
                }
            }));
        }
        let mut moved = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok((what, n)) if n > 0 => {
                    moved += n;
                    if what == "commit" {
                        committed += 1;
                    } else {
                        released += 1;
                    }
                }
                Ok(_) => {}
                // The commit found nothing left to commit: released first.
                Err(e) => assert!(
                    matches!(e.code(), Code::NotFound | Code::FailedPrecondition),
                    "{e:?}"
                ),
            }
        }
        assert_eq!(moved, 1, "{}: round {round}", backend.name());
        let l = level(&mut client).await;
        assert_eq!(l.reserved, 0, "{}: round {round}: {l:?}", backend.name());
    }
    let l = level(&mut client).await;
    assert_eq!(l.on_hand, 100 - 3 * committed, "{}", backend.name());
    println!(
        "{}: 10 rounds of commit vs two releases: {committed} committed, {released} released",
        backend.name()
    );
    assert_ledger_consistent(&mut client).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_leaves_the_reserved_bucket_once_on_every_backend() {
    for backend in testing::backends() {
        release_racing_commit(backend).await;
    }
}

/// A SKU prefix is a prefix, not a LIKE pattern (`_` is allowed in SKUs), and lists of ids in a
/// request are bounded.
async fn prefixes_match_literally(backend: Backend) {
    let svc = testing::spawn::<erp_inventory::Service>(&backend).await;
    let mut client = InventoryServiceClient::new(svc.channel().await);
    for sku in ["P_1", "P_2", "PX1", "P-1"] {
        client
            .create_item(CreateItemRequest {
                item: Some(Item {
                    sku: sku.into(),
                    name: sku.into(),
                    unit_cost: Some(Money {
                        amount_minor: 100,
                        currency: "USD".into(),
                    }),
                    weight_grams: 100,
                    tax_class: "standard".into(),
                    low_stock_threshold: 0,
                    created_at: None,
                }),
            })
            .await
            .unwrap();
    }
    let listed = |prefix: &str| ListItemsRequest {
        sku_prefix: prefix.into(),
        ..Default::default()
    };
    let skus: Vec<String> = client
        .list_items(listed("P_"))
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|i| i.sku)
        .collect();
    assert_eq!(skus, ["P_1", "P_2"], "{}", backend.name());
    let err = client
        .list_items(listed(&"P".repeat(65)))
        .await
        .unwrap_err();
    assert_eq!(testing::bad_fields(&err), ["sku_prefix"]);
    let err = client
        .release_reservations(ReleaseReservationsRequest {
            idempotency_key: "too-many".into(),
            order_id: "o-1".into(),
            reservation_ids: (0..501).map(|i| format!("r-{i}")).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(testing::bad_fields(&err), ["reservation_ids"]);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_match_literally_on_every_backend() {
    for backend in testing::backends() {
        prefixes_match_literally(backend).await;
    }
}
