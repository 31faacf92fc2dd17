//! Dies at every crash point. The order service and the orchestrator run as one "node" in a
//! runtime of their own (PostgreSQL when available, Redis Streams); the other services run in
//! the test's runtime. For each saga path (happy, compensated by a customer's cancel after the
//! label was bought, re-routed after a damaged pick, shipped in two parts with a backorder in
//! between), a first run records the crash points it passes (`erp_runtime::failpoint`); then,
//! for every point not yet crashed at, the path runs again with that point armed: when it is
//! reached the node's runtime is dropped with every task in it (open transactions roll back,
//! connections close, nothing after the point runs), and a new node starts on the same
//! databases and ports. Each run must end in its terminal state within the lease plus a few
//! seconds of the restart, with exactly one reservation, authorization, fulfillment, label,
//! capture and journal entry per shipment, nothing left reserved, the stock ledger replaying and
//! the books balanced.
//!
//! `ERP_CRASH_POINTS_ALL=1` crashes at every point of every path (about four times as long).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use erp::testkit::Clients;
use erp_proto::orchestrator::SagaStatus;
use erp_proto::{carrier, finance, inventory, order, warehouse};
use erp_runtime::bus::Bus;
use erp_runtime::config::Settings;
use erp_runtime::{failpoint, testing};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

/// The threads of the node's runtime: crash points count only there.
const NODE_THREADS: &str = "erp-node";
const LEASE_MS: u64 = 1_000;
/// The services that die together at a crash point.
const NODE: [&str; 2] = ["order", "orchestrator"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Happy,
    /// The customer cancels the order after the label was bought: everything is undone.
    Cancelled,
    /// The first pick finds the unit damaged: the order ships from another warehouse.
    Rerouted,
    /// One line is in no warehouse: the other ships, the saga waits for a receipt, then ships it.
    TwoParts,
    /// The customer cancels one of two lines after the label was bought: the shipment is undone
    /// and planned again for the other line.
    LineCancelled,
}

/// What a path must leave behind, counted per order.
struct Expect {
    shipments: usize,
    /// Reservations undone (a re-route or a cancel releases the first round's).
    released: usize,
    fulfillments: usize,
    labels: usize,
}

impl Path {
    fn terminal(self) -> SagaStatus {
        if self == Self::Cancelled {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        }
    }

    fn expect(self) -> Expect {
        let e = |shipments, released, fulfillments, labels| Expect {
            shipments,
            released,
            fulfillments,
            labels,
        };
        match self {
            Self::Happy => e(1, 0, 1, 1),
            Self::Cancelled => e(0, 1, 1, 1),
            Self::Rerouted => e(1, 1, 2, 1),
            Self::TwoParts => e(2, 0, 2, 2),
            // One reservation per line of the undone shipment.
            Self::LineCancelled => e(1, 2, 2, 2),
        }
    }
}

/// The order service and the orchestrator in a runtime that a crash drops.
struct Node {
    rt: tokio::runtime::Runtime,
}

impl Node {
    async fn start(settings: &Arc<Settings>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(NODE_THREADS)
            .enable_all()
            .build()
            .unwrap();
        for service in NODE {
            let s = settings.clone();
            rt.spawn(async move {
                let addr = s.peers.get(service).unwrap().trim_start_matches("http://");
                // The dropped node's socket may linger a moment.
                let mut tries = 0;
                let listener = loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) if tries < 100 => {
                            tries += 1;
                            tracing::debug!(error = %e, "port still taken");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("{service} cannot bind {addr}: {e}"),
                    }
                };
                let bus = Bus::from_settings(&s.bus).await.unwrap();
                // Never cancelled: the node serves until its runtime is dropped.
                let token = tokio_util::sync::CancellationToken::new();
                erp::start_one(service, s, listener, bus, token)
                    .await
                    .unwrap();
            })
            .await
            .unwrap_or_else(|e| panic!("starting {service}: {e}"));
        }
        Self { rt }
    }

    /// What a killed process leaves: every task dropped where it stood.
    fn kill(self) {
        self.rt.shutdown_background();
    }
}

struct World {
    suite: erp::Suite,
    c: Clients,
    node: Option<Node>,
    finance: sea_orm::DatabaseConnection,
    next: usize,
}

impl World {
    async fn restart(&mut self) -> Instant {
        self.kill();
        self.start().await
    }

    fn kill(&mut self) {
        if let Some(node) = self.node.take() {
            node.kill();
        }
        failpoint::reset();
    }

    async fn start(&mut self) -> Instant {
        self.node = Some(Node::start(&self.suite.settings).await);
        Instant::now()
    }
}

/// What one run of a path observed.
struct Run {
    trace: Vec<String>,
    crashed_at: Option<String>,
    recovery: Option<Duration>,
}

/// Runs `path` once with a fresh order (and items of its own); when `arm` is set, the node dies
/// at that point's `nth` passage and is started again. Asserts every invariant at the end.
async fn run(w: &mut World, path: Path, arm: Option<(&str, usize)>) -> Run {
    run_with(w, path, arm, false).await
}

/// [`run`]; with `floor_while_down`, the warehouse floor works the order's open fulfillment
/// while the node is down (packs it, or reports the damaged unit on the re-route path), so
/// its signal reaches a saga that may not have recorded that fulfillment yet.
async fn run_with(
    w: &mut World,
    path: Path,
    arm: Option<(&str, usize)>,
    floor_while_down: bool,
) -> Run {
    w.next += 1;
    let tag = format!("cp{}", w.next);
    let sku = |s: &str| format!("{}-{s}", tag.to_uppercase());
    let (a, b) = (sku("A"), sku("B"));
    w.c.create_item(&a, 400, 300, 0).await;
    w.c.create_item(&b, 500, 300, 0).await;
    w.c.receive(&format!("{tag}-in-a-east"), &a, "east", 5)
        .await;
    if path == Path::Rerouted {
        w.c.receive(&format!("{tag}-in-a-west"), &a, "west", 5)
            .await;
    }
    failpoint::record();
    if let Some((point, nth)) = arm {
        failpoint::arm(point, nth);
    }
    let mut req = erp::seed::sample_order(&format!("{tag}-order"), &a, 1);
    if path == Path::LineCancelled {
        w.c.receive(&format!("{tag}-in-b-east"), &b, "east", 5)
            .await;
    }
    if matches!(path, Path::TwoParts | Path::LineCancelled) {
        // TwoParts: the second line is in no warehouse yet; it waits backordered for a receipt.
        req.lines.push(order::OrderLineInput {
            line_number: 2,
            sku: b.clone(),
            quantity: 1,
            unit_price: req.lines[0].unit_price.clone(),
        });
    }
    let order_id = retry("create order", || {
        let mut c = w.c.clone();
        let req = req.clone();
        async move {
            c.order
                .create_order(req)
                .await
                .map(|r| r.into_inner().order.unwrap().order_id)
        }
    })
    .await;

    let mut done: HashSet<String> = HashSet::new();
    let mut restarted: Option<Instant> = None;
    let mut crashed_at = None;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    eprintln!("{path:?} {arm:?}: order {order_id}");
    let saga = loop {
        assert!(
            Instant::now() < deadline,
            "{path:?} {arm:?}: saga of {order_id} not terminal after 60 s; last: {last:#?}"
        );
        if restarted.is_none()
            && let Some(point) = failpoint::fired()
        {
            crashed_at = Some(point);
            w.kill();
            if floor_while_down {
                let f = loop {
                    if let Some(f) = w.c.open_fulfillments(&order_id).await.into_iter().next() {
                        break f;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                floor(w, path, &order_id, "await_pack", &b, &tag, &mut done).await;
                assert!(
                    done.contains(&format!("pack-{}", f.fulfillment_id))
                        || done.contains("exception"),
                    "the floor acted on {}",
                    f.fulfillment_id
                );
                record_floor_signal(w, &order_id, &f.fulfillment_id).await;
            }
            restarted = Some(w.start().await);
        }
        let Some(s) = w.c.saga(&order_id).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if s.status == path.terminal() as i32 {
            break s;
        }
        assert!(
            ![
                SagaStatus::Parked,
                SagaStatus::Compensated,
                SagaStatus::Completed
            ]
            .iter()
            .any(|x| *x as i32 == s.status),
            "{path:?} {arm:?}: saga of {order_id} ended wrong: {s:#?}"
        );
        if s.status == SagaStatus::Waiting as i32 {
            floor(w, path, &order_id, &s.current_step, &b, &tag, &mut done).await;
        }
        last = Some(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A point after the saga's last commit fires just after the test saw the saga finished.
    if arm.is_some() && crashed_at.is_none() {
        for _ in 0..100 {
            if let Some(point) = failpoint::fired() {
                crashed_at = Some(point);
                restarted = Some(w.restart().await);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let recovery = restarted.map(|t| t.elapsed());
    if floor_while_down {
        assert!(
            saga.timeline.iter().any(|e| e
                .detail
                .contains("held until the saga records its fulfillment")),
            "{path:?}: the early signal was not held: {:#?}",
            saga.timeline
        );
    }
    let trace = failpoint::take_trace();
    if let Some((point, _)) = arm {
        assert_eq!(
            crashed_at.as_deref(),
            Some(point),
            "{path:?}: the armed point was not reached"
        );
        let limit = Duration::from_millis(LEASE_MS) + Duration::from_secs(8);
        assert!(
            recovery.unwrap() <= limit,
            "{path:?} crashed at {point}: terminal {:?} after the restart (limit {limit:?})",
            recovery
        );
    }
    check_exactly_once(w, path, &order_id, &saga).await;
    eprintln!(
        "{path:?} crashed at {crashed_at:?}: terminal {:.2} s after the restart",
        recovery.unwrap_or_default().as_secs_f64()
    );
    Run {
        trace,
        crashed_at,
        recovery,
    }
}

/// Plays the warehouse floor (and the customer, and the buyer) for what the saga waits for.
/// Every action happens once per fulfillment; repeats are idempotent anyway.
async fn floor(
    w: &mut World,
    path: Path,
    order_id: &str,
    step: &str,
    backordered_sku: &str,
    tag: &str,
    done: &mut HashSet<String>,
) {
    let c = &mut w.c;
    match step {
        "route" if path == Path::TwoParts && done.insert("receipt".into()) => {
            c.receive(&format!("{tag}-in-b"), backordered_sku, "west", 3)
                .await;
        }
        "await_pack" => {
            let Some(f) = c.open_fulfillments(order_id).await.into_iter().next() else {
                return;
            };
            if path == Path::Rerouted && done.insert("exception".into()) {
                c.warehouse
                    .report_exception(warehouse::ReportExceptionRequest {
                        idempotency_key: format!("exc-{}", f.fulfillment_id),
                        task_id: f.tasks[0].task_id.clone(),
                        reason: warehouse::ExceptionReason::Damaged as i32,
                        quantity: 1,
                        note: "crushed box".into(),
                        reporter: "picker-7".into(),
                    })
                    .await
                    .unwrap();
                return;
            }
            if done.contains(&format!("exc-{}", f.fulfillment_id)) {
                return;
            }
            if f.status == warehouse::FulfillmentStatus::Packed as i32
                || !done.insert(format!("pack-{}", f.fulfillment_id))
            {
                return;
            }
            c.pick_and_pack_fulfillment(&f).await;
        }
        "await_shipment" if path == Path::LineCancelled && !done.contains("cancel") => {
            let line = get_order(c, order_id)
                .await
                .lines
                .into_iter()
                .find(|l| l.line_number == 2)
                .unwrap()
                .line_id;
            let sent = c
                .order
                .cancel_order(order::CancelOrderRequest {
                    idempotency_key: format!("{tag}-cancel-line"),
                    order_id: order_id.into(),
                    line_ids: vec![line],
                    actor: Some(erp_proto::common::Actor {
                        id: "cust-1".into(),
                        reason: "one is enough".into(),
                    }),
                    include_allocated: false,
                })
                .await;
            if sent.is_ok() {
                done.insert("cancel".into());
            }
        }
        "await_shipment" if path == Path::Cancelled && !done.contains("cancel") => {
            let sent = c
                .order
                .cancel_order(order::CancelOrderRequest {
                    idempotency_key: format!("{tag}-cancel"),
                    order_id: order_id.into(),
                    line_ids: vec![],
                    actor: Some(erp_proto::common::Actor {
                        id: "cust-1".into(),
                        reason: "changed my mind".into(),
                    }),
                    include_allocated: false,
                })
                .await;
            // The order service is in the node: when it is down, try again next time.
            if sent.is_ok() {
                done.insert("cancel".into());
            }
        }
        // The customer cancelled: the floor does not ship while the cancel travels to the saga
        // (a floor that did would race it, and a shipped fulfillment cannot be undone).
        "await_shipment" if path == Path::Cancelled => {}
        "await_shipment" => {
            let packed: Vec<_> = c
                .open_fulfillments(order_id)
                .await
                .into_iter()
                .filter(|f| f.status == warehouse::FulfillmentStatus::Packed as i32)
                .collect();
            for f in packed {
                let labels = c.labels(order_id).await;
                let Some(label) = labels
                    .iter()
                    .find(|s| s.status == carrier::ShipmentStatus::LabelCreated as i32)
                else {
                    return;
                };
                if done.insert(format!("ship-{}", f.fulfillment_id)) {
                    c.warehouse
                        .confirm_ship(warehouse::ConfirmShipRequest {
                            idempotency_key: format!("ship-{}", f.fulfillment_id),
                            fulfillment_id: f.fulfillment_id,
                            tracking_number: label.tracking_number.clone(),
                        })
                        .await
                        .unwrap();
                }
            }
        }
        _ => {}
    }
}

/// The order, read from the node (retried while it is down).
async fn get_order(c: &Clients, order_id: &str) -> order::Order {
    retry("get order", || {
        let mut c = c.clone();
        async move {
            c.order
                .get_order(order::GetOrderRequest {
                    order_id: order_id.into(),
                })
                .await
        }
    })
    .await
    .into_inner()
    .order
    .unwrap()
}

/// What the orchestrator's consumer does with the warehouse's event about `fulfillment_id`
/// (packed, or a stock exception), done here because the node is down: the signal is recorded
/// before a replica drives the saga again, as when the consumer got it in before the crash.
async fn record_floor_signal(w: &World, order_id: &str, fulfillment_id: &str) {
    use erp_runtime::outbox::entity as outbox;
    use sea_orm::QueryOrder;
    let settings = &w.suite.settings;
    let warehouse = erp_runtime::db::connect(settings, "warehouse")
        .await
        .unwrap();
    let orchestrator = erp_runtime::db::connect(settings, "orchestrator")
        .await
        .unwrap();
    let event = loop {
        let found = outbox::Entity::find()
            .filter(outbox::Column::Topic.is_in(["warehouse.packed", "warehouse.exception"]))
            .filter(outbox::Column::Payload.contains(fulfillment_id))
            .order_by_asc(outbox::Column::Seq)
            .one(&warehouse)
            .await
            .unwrap();
        if let Some(e) = found {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let saga = erp_orchestrator::store::saga::Entity::find()
        .filter(erp_orchestrator::store::saga::Column::OrderId.eq(order_id))
        .one(&orchestrator)
        .await
        .unwrap()
        .unwrap();
    let name = if event.topic == "warehouse.packed" {
        "PACKED"
    } else {
        "EXCEPTION"
    };
    erp_orchestrator::store::insert_signal(
        &orchestrator,
        &saga.saga_id,
        name,
        &event.payload,
        &format!("event:{}", event.event_id),
    )
    .await
    .unwrap();
    warehouse.close().await.unwrap();
    orchestrator.close().await.unwrap();
}

/// Retries a call to the node while it is down (or restarting).
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "{what}: retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Exactly one of every effect per shipment, nothing left held, books and stock reconciled.
async fn check_exactly_once(
    w: &mut World,
    path: Path,
    order_id: &str,
    saga: &erp_proto::orchestrator::Saga,
) {
    let expect = path.expect();
    let parts = expect.shipments;
    let c = &mut w.c;
    let ctx = format!("{path:?} order {order_id}");
    let reservations = c.reservations(order_id).await;
    let state = |s: inventory::ReservationState| {
        reservations.iter().filter(|r| r.state == s as i32).count()
    };
    assert_eq!(
        state(inventory::ReservationState::Active),
        0,
        "{ctx}: left reserved"
    );
    assert_eq!(
        state(inventory::ReservationState::Committed),
        parts,
        "{ctx}: committed reservations {reservations:#?}"
    );
    let released = state(inventory::ReservationState::Released);
    assert_eq!(
        released, expect.released,
        "{ctx}: released reservations {reservations:#?}"
    );
    let authorizations = erp_finance::store::payment::Entity::find()
        .filter(erp_finance::store::payment::Column::OrderId.eq(order_id))
        .count(&w.finance)
        .await
        .unwrap();
    assert_eq!(authorizations, 1, "{ctx}: authorizations");
    let payment = c.payment(order_id).await.unwrap();
    let o = get_order(c, order_id).await;
    if parts == 0 {
        assert_eq!(
            payment.status,
            finance::PaymentStatus::Voided as i32,
            "{ctx}: {payment:#?}"
        );
        assert_eq!(payment.captured.unwrap().amount_minor, 0, "{ctx}");
    } else {
        assert_eq!(
            payment.status,
            finance::PaymentStatus::Captured as i32,
            "{ctx}"
        );
        assert_eq!(
            payment.captured, o.total,
            "{ctx}: captured once, the order's total (what was not cancelled); {payment:#?}"
        );
    }
    let labels = c.labels(order_id).await;
    let live = labels
        .iter()
        .filter(|l| l.status != carrier::ShipmentStatus::Voided as i32)
        .count();
    assert_eq!(live, parts, "{ctx}: live labels {labels:#?}");
    assert_eq!(labels.len(), expect.labels, "{ctx}: labels {labels:#?}");
    let fulfillments = c.fulfillments(order_id).await;
    let shipped = fulfillments
        .iter()
        .filter(|f| f.status == warehouse::FulfillmentStatus::Shipped as i32)
        .count();
    assert_eq!(shipped, parts, "{ctx}: shipped fulfillments");
    assert_eq!(
        fulfillments.len(),
        expect.fulfillments,
        "{ctx}: one fulfillment per shipment (plus the undone one) {fulfillments:#?}"
    );
    let entries = c.journal_entries(order_id).await;
    let from_saga = entries
        .iter()
        .filter(|e| e.source.as_ref().is_some_and(|s| s.kind == "saga"))
        .count();
    assert_eq!(from_saga, parts, "{ctx}: journal entries {entries:#?}");
    let status = if parts == 0 {
        order::OrderStatus::Cancelled
    } else {
        order::OrderStatus::Shipped
    };
    assert_eq!(
        o.status, status as i32,
        "{ctx}: order {o:#?}; saga {saga:#?}"
    );
    c.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_survives_a_crash_at_every_point() {
    let _watchdog = testing::watchdog(
        "the_saga_survives_a_crash_at_every_point",
        Duration::from_secs(1_500),
    );
    let Some(redis_url) = testing::redis_url() else {
        return;
    };
    let backend = testing::backends().pop().unwrap();
    let prefix = format!("erp-cp-{}", uuid::Uuid::now_v7().simple());
    let lease = LEASE_MS.to_string();
    let (settings, _dir) = testing::settings(
        &backend,
        &[
            ("ERP__BUS__KIND", "redis"),
            ("ERP__BUS__REDIS_URL", &redis_url),
            ("ERP__BUS__STREAM_PREFIX", &prefix),
            ("ERP__BUS__REDELIVER_AFTER_MS", "300"),
            ("ERP__ORCHESTRATOR__LEASE_MS", &lease),
            // A dead node's outbox relay lease runs out as soon as its sagas' leases do.
            ("ERP__BUS__RELAY_LEASE_MS", &lease),
            ("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50"),
            ("ERP__SERVER__SHUTDOWN_GRACE_MS", "200"),
        ],
    );
    let bus = Bus::from_settings(&settings.bus).await.unwrap();
    let suite = erp::start_suite_without(settings, bus, true, &NODE)
        .await
        .unwrap();
    failpoint::set_scope(NODE_THREADS);
    let finance = suite
        .services
        .iter()
        .find(|r| r.name == "finance")
        .unwrap()
        .db
        .clone();
    let c = Clients::for_suite(&suite);
    let mut w = World {
        suite,
        c,
        node: None,
        finance,
        next: 0,
    };
    w.restart().await;
    erp::seed::seed(&w.suite).await.unwrap();
    // Split across warehouses and ship what is in stock (the rest waits backordered).
    retry("routing rules", || {
        let mut c = w.c.clone();
        async move { c.allow_splits("crash-point test").await }
    })
    .await;

    let all = std::env::var("ERP_CRASH_POINTS_ALL").as_deref() == Ok("1");
    let catalogue: BTreeSet<String> = erp_orchestrator::engine::crash_points()
        .into_iter()
        .chain(["outbox.order.after_publish".to_owned()])
        .collect();
    let mut crashed: BTreeSet<String> = BTreeSet::new();
    let mut runs = 0;
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for path in [
        Path::Happy,
        Path::Cancelled,
        Path::Rerouted,
        Path::TwoParts,
        Path::LineCancelled,
    ] {
        let dry = run(&mut w, path, None).await;
        runs += 1;
        let unknown: Vec<&String> = dry
            .trace
            .iter()
            .filter(|p| !catalogue.contains(*p))
            .collect();
        assert!(
            unknown.is_empty(),
            "{path:?} passed crash points missing from crash_points(): {unknown:?}"
        );
        let mut points: Vec<(String, usize)> = Vec::new();
        for p in &dry.trace {
            if points.iter().any(|(q, _)| q == p) {
                continue;
            }
            // The second shipment's passage, for the points a two-part order passes twice.
            let nth = if path == Path::TwoParts {
                dry.trace.iter().filter(|q| *q == p).count()
            } else {
                1
            };
            points.push((p.clone(), nth));
        }
        let mut here = 0;
        for (point, nth) in points {
            if !all && crashed.contains(&point) {
                continue;
            }
            let r = run(&mut w, path, Some((&point, nth))).await;
            runs += 1;
            here += 1;
            slowest = slowest.max(r.recovery.unwrap_or_default());
            crashed.insert(r.crashed_at.unwrap());
        }
        println!(
            "{path:?}: {} points passed, crashed at {here} of them",
            dry.trace.len()
        );
    }
    // The floor is quicker than the restart: the fulfillment the dead replica created but never
    // recorded is packed (or reports a damaged unit) while no orchestrator runs.
    for path in [Path::Happy, Path::Rerouted] {
        let r = run_with(
            &mut w,
            path,
            Some(("saga.forward.create_fulfillment.after_call", 1)),
            true,
        )
        .await;
        runs += 1;
        slowest = slowest.max(r.recovery.unwrap_or_default());
    }
    let missed: Vec<&String> = catalogue.difference(&crashed).collect();
    println!(
        "crash points: {} of {} crashed at, in {runs} runs, {:.0} s; slowest restart to terminal {:.1} s",
        crashed.len(),
        catalogue.len(),
        started.elapsed().as_secs_f64(),
        slowest.as_secs_f64()
    );
    assert!(
        missed.is_empty(),
        "crash points no path reached: {missed:?}"
    );
    if let Some(node) = w.node.take() {
        node.kill();
    }
    w.suite.stop().await.unwrap();
}
