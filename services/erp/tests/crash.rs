//! The orchestrator as its own process in distributed mode (PostgreSQL when available, Redis
//! Streams), killed with SIGKILL in the middle of a batch of sagas and started again: every saga
//! completes (now shared by two replicas), with exactly one reservation, one authorization, one label, one capture and one
//! journal entry per order.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erp::testkit::Clients;
use erp_proto::orchestrator::SagaStatus;
use erp_runtime::bus::Bus;
use erp_runtime::config::Settings;
use erp_runtime::testing;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};

/// Starts an orchestrator replica; `own_port` false gives it a free port of its own (a second
/// replica behind the same service).
fn spawn_orchestrator(s: &Settings, own_port: bool) -> Proc {
    spawn_service(s, "orchestrator", own_port)
}

/// Starts `service` as its own `erp serve` process on the configured databases and Redis; on
/// its peer port when `own_port`, else on a free one.
fn spawn_service(s: &Settings, service: &str, own_port: bool) -> Proc {
    let port = if own_port {
        s.peers
            .get(service)
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    } else {
        "0".to_owned()
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_erp"));
    cmd.args(["serve", service])
        .env("ERP__DATA_DIR", &s.data_dir)
        .env(
            "ERP__AUTH__MODE",
            match s.auth.mode {
                erp_runtime::config::AuthMode::Jwt => "jwt",
                erp_runtime::config::AuthMode::Off => "off",
            },
        )
        .env("ERP__AUTH__JWKS_FILE", s.jwks_path())
        .env("ERP__SERVER__PORT", port)
        .env("ERP__DATABASE__URL", &s.database.url)
        .env("ERP__BUS__KIND", "redis")
        .env("ERP__BUS__REDIS_URL", &s.bus.redis_url)
        .env("ERP__BUS__STREAM_PREFIX", &s.bus.stream_prefix)
        .env(
            "ERP__BUS__REDELIVER_AFTER_MS",
            s.bus.redeliver_after_ms.to_string(),
        )
        .env(
            "ERP__ORCHESTRATOR__LEASE_MS",
            s.orchestrator.lease_ms.to_string(),
        )
        .env("ERP__BUS__RELAY_LEASE_MS", s.bus.relay_lease_ms.to_string())
        .env("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50")
        .env("ERP__BUS__RELAY_INTERVAL_MS", "50")
        .env("ERP__TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for peer in erp_runtime::config::SERVICES {
        cmd.env(
            format!("ERP__PEERS__{}", peer.to_uppercase()),
            s.peers.get(peer).unwrap(),
        );
    }
    let mut child = Proc(cmd.spawn().unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with(&format!("{service} listening on")),
        "{first}"
    );
    child
}

/// A process the test started, killed when the test ends, also when it fails: an orphan would
/// hold its port and its databases into the next test (the README runbook's `erp up` once
/// found port 50056 taken by a failed run's finance).
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_killed_mid_saga_resumes_with_exactly_one_of_everything() {
    let _watchdog = erp_runtime::testing::watchdog(
        "orchestrator_killed_mid_saga_resumes_with_exactly_one_of_everything",
        std::time::Duration::from_secs(300),
    );
    let Some(redis_url) = testing::redis_url() else {
        return;
    };
    let backend = testing::backends().pop().unwrap();
    let prefix = format!("erp-crash-{}", std::process::id());
    let (settings, _dir) = testing::settings(
        &backend,
        &[
            ("ERP__AUTH__MODE", "jwt"),
            ("ERP__BUS__KIND", "redis"),
            ("ERP__BUS__REDIS_URL", &redis_url),
            ("ERP__BUS__STREAM_PREFIX", &prefix),
            ("ERP__BUS__REDELIVER_AFTER_MS", "1000"),
            ("ERP__ORCHESTRATOR__LEASE_MS", "1500"),
            ("ERP__BUS__RELAY_LEASE_MS", "1500"),
        ],
    );
    let bus = Bus::from_settings(&settings.bus).await.unwrap();
    let suite = erp::start_suite_without(settings, bus, true, &["orchestrator"])
        .await
        .unwrap();
    erp::seed::seed(&suite).await.unwrap();
    let mut c = Clients::for_suite(&suite);

    // Orders in two parts: each of two items is stocked at one warehouse only, and the rules
    // allow a split, so these ship in two shipments (saga v3 loops after its pivot).
    c.allow_splits("crash test").await.unwrap();
    for (sku, site) in [("PART-A", "east"), ("PART-B", "west")] {
        c.create_item(sku, 300, 200, 0).await;
        c.receive(&format!("{sku}-in"), sku, site, 10).await;
    }
    let mut orchestrator = spawn_orchestrator(&suite.settings, true);
    let mut split = Vec::new();
    for i in 0..3 {
        let mut req = erp::seed::sample_order(&format!("K-split-{i}"), "PART-A", 1);
        req.lines.push(erp_proto::order::OrderLineInput {
            line_number: 2,
            sku: "PART-B".into(),
            quantity: 1,
            unit_price: req.lines[0].unit_price.clone(),
        });
        split.push(
            c.order
                .create_order(req)
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap()
                .order_id,
        );
    }
    let mut orders = Vec::new();
    for i in 0..12 {
        let sku = erp::seed::CATALOG[i % 3].0;
        orders.push(
            c.place(&format!("K-{i}"), sku, 1, "tok_visa", "standard")
                .await,
        );
    }
    // Kill as soon as the first saga is under way: the others are at every stage.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = match c.saga(&orders[0]).await {
            Some(s) => s.timeline.len() >= 4,
            None => false,
        };
        if started {
            break;
        }
        assert!(Instant::now() < deadline, "the first saga never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    orchestrator.kill().unwrap();
    orchestrator.wait().unwrap();
    // Where the dead orchestrator left its sagas, read from its own database.
    let orch_db = erp_runtime::db::connect(&suite.settings, "orchestrator")
        .await
        .unwrap();
    let sagas = erp_orchestrator::store::saga::Entity::find()
        .all(&orch_db)
        .await
        .unwrap();
    let stages: Vec<String> = sagas
        .iter()
        .map(|s| format!("{}:{}", s.status, s.current_step))
        .collect();
    println!(
        "killed with {} of {} sagas recorded, at: {stages:?}",
        sagas.len(),
        orders.len() + split.len()
    );
    assert!(
        sagas
            .iter()
            .any(|s| s.status != erp_orchestrator::store::SagaState::Waiting),
        "the kill should land while sagas are in flight: {stages:?}"
    );

    // Orders placed while no orchestrator runs still get their saga (from the outbox, via the
    // stream, once a replica is back).
    for i in 0..2 {
        orders.push(
            c.place(&format!("K-down-{i}"), "TEE-M", 1, "tok_visa", "standard")
                .await,
        );
    }

    // Two replicas now: they share the sagas through leases, and the dead one's leases expire.
    let orchestrator = spawn_orchestrator(&suite.settings, true);
    let second = spawn_orchestrator(&suite.settings, false);
    for id in &orders {
        c.wait_saga(id, &[SagaStatus::Waiting], Duration::from_secs(30))
            .await;
        c.ship(id).await;
    }
    for id in &split {
        for _ in 0..2 {
            c.wait_step(id, "await_pack").await;
            c.ship(id).await;
        }
    }
    for id in orders.iter().chain(&split) {
        c.wait_saga(id, &[SagaStatus::Completed], Duration::from_secs(30))
            .await;
    }
    // The cost of the goods is posted from inventory's events: let the books catch up.
    c.assert_inventory_in_books().await;

    let finance = suite
        .services
        .iter()
        .find(|r| r.name == "finance")
        .unwrap()
        .db
        .clone();
    for (id, parts) in orders
        .iter()
        .map(|id| (id, 1))
        .chain(split.iter().map(|id| (id, 2)))
    {
        assert_eq!(
            c.reservations(id).await.len(),
            parts,
            "one reservation per shipment for {id}"
        );
        let authorizations = erp_finance::store::payment::Entity::find()
            .filter(erp_finance::store::payment::Column::OrderId.eq(id.as_str()))
            .count(&finance)
            .await
            .unwrap();
        assert_eq!(authorizations, 1, "one authorization for {id}");
        let payment = c.payment(id).await.unwrap();
        assert_eq!(
            payment.status,
            erp_proto::finance::PaymentStatus::Captured as i32
        );
        assert_eq!(
            payment.captured, payment.authorized,
            "captured once, in full"
        );
        let labels = c
            .carrier
            .list_shipments(erp_proto::carrier::ListShipmentsRequest {
                order_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .shipments;
        assert_eq!(labels.len(), parts, "one label per shipment for {id}");
        let entries = c
            .finance
            .list_journal_entries(erp_proto::finance::ListJournalEntriesRequest {
                order_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        // Per shipment: its entry from the saga, its cost of goods from inventory's shipment.
        let by_source = |kind: &str| {
            entries
                .iter()
                .filter(|e| e.source.as_ref().is_some_and(|s| s.kind == kind))
                .count()
        };
        assert_eq!(
            (by_source("saga"), by_source("order"), entries.len()),
            (parts, parts, 2 * parts),
            "journal entries for {id}: {entries:#?}"
        );
    }
    c.assert_reconciled().await;
    for mut replica in [orchestrator, second] {
        replica.kill().unwrap();
        replica.wait().unwrap();
    }
    suite.stop().await.unwrap();
}

/// The warehouse floor as a loop over the API: picks and packs every open fulfillment, ships
/// every packed one whose label exists. Errors (a service down) are retried at the next round.
async fn play_floor(mut c: Clients, stop: tokio_util::sync::CancellationToken) {
    use erp_proto::warehouse::{self, FulfillmentStatus as F};
    while !stop.is_cancelled() {
        for status in [F::Open, F::Released, F::Picked, F::Packed] {
            let Ok(list) = c
                .warehouse
                .list_fulfillments(warehouse::ListFulfillmentsRequest {
                    status: status as i32,
                    page_size: 500,
                    ..Default::default()
                })
                .await
            else {
                continue;
            };
            for f in list.into_inner().fulfillments {
                if status != F::Packed {
                    // The warehouse may be down: the next round tries again.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), c.try_pick_and_pack(&f)).await;
                    continue;
                }
                let Ok(labels) = c
                    .carrier
                    .list_shipments(erp_proto::carrier::ListShipmentsRequest {
                        order_id: f.order_id.clone(),
                        ..Default::default()
                    })
                    .await
                else {
                    continue;
                };
                if let Some(label) =
                    labels.into_inner().shipments.iter().find(|s| {
                        s.status == erp_proto::carrier::ShipmentStatus::LabelCreated as i32
                    })
                {
                    let _ = c
                        .warehouse
                        .confirm_ship(warehouse::ConfirmShipRequest {
                            idempotency_key: format!("ship-{}", f.fulfillment_id),
                            fulfillment_id: f.fulfillment_id.clone(),
                            tracking_number: label.tracking_number.clone(),
                        })
                        .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Places `n` one-unit orders `gap` apart (retrying while the order service is unreachable:
/// a retry is idempotent).
fn place_orders(
    mut c: Clients,
    prefix: &'static str,
    n: usize,
    gap: Duration,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..n {
            let sku = erp::seed::CATALOG[i % 3].0;
            let req = erp::seed::sample_order(&format!("{prefix}-{i}"), sku, 1);
            let id = loop {
                match c.order.create_order(req.clone()).await {
                    Ok(r) => break r.into_inner().order.unwrap().order_id,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            ids.push(id);
            tokio::time::sleep(gap).await;
        }
        ids
    })
}

/// Waits until the saga of every one of `orders` is terminal, failing with where the stuck
/// ones are if that takes longer than `limit` from `since`; then checks each order: at most one
/// authorization; completed → captured its total, one live label, one journal entry from the
/// saga; compensated → no live label; nothing left reserved; and the books reconcile. Returns
/// how many completed and how long after `since` all were terminal.
///
/// The limit runs from the last fault or from the last order placed, whichever is later: on a
/// slow machine placing the orders (one at a time, each retried while the order service is
/// unreachable) can outlast the faults by a minute, and the sagas placed last cannot be
/// expected to finish before they exist.
async fn assert_settled(
    c: &mut Clients,
    s: &Settings,
    orders: &[String],
    since: Instant,
    limit: Duration,
) -> (usize, Duration) {
    use erp_orchestrator::store::{saga, signal, step};
    // Every saga terminal within `limit` of `since` or of now (every order placed).
    let placed = Instant::now();
    let limit_from = since.max(placed);
    let orch = erp_runtime::db::connect(s, "orchestrator").await.unwrap();
    let terminal = ["completed", "compensated"];
    let stuck = loop {
        let active = saga::Entity::find()
            .filter(saga::Column::Status.is_not_in(terminal))
            .all(&orch)
            .await
            .unwrap();
        let count = saga::Entity::find().count(&orch).await.unwrap();
        if active.is_empty() && count == orders.len() as u64 {
            break None;
        }
        if limit_from.elapsed() > limit {
            break Some(active);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let all_terminal = since.elapsed();
    if let Some(stuck) = stuck {
        let mut report = String::new();
        // One snapshot for the whole report: the sagas may still be moving, and a row read
        // before its timeline would look behind it.
        let snapshot = erp_runtime::db::snapshot(&orch).await.unwrap();
        let stuck = saga::Entity::find()
            .filter(saga::Column::SagaId.is_in(stuck.iter().map(|m| m.saga_id.clone())))
            .all(&snapshot)
            .await
            .unwrap();
        for m in stuck
            .iter()
            .filter(|m| !terminal.contains(&m.status.name()))
        {
            let steps = step::Entity::find()
                .filter(step::Column::SagaId.eq(m.saga_id.as_str()))
                .order_by_asc(step::Column::Seq)
                .all(&snapshot)
                .await
                .unwrap();
            let signals = signal::Entity::find()
                .filter(signal::Column::SagaId.eq(m.saga_id.as_str()))
                .order_by_asc(signal::Column::Seq)
                .all(&snapshot)
                .await
                .unwrap();
            report.push_str(&format!(
                "\n{} {} at {} #{} attempt {} v{} (lease {} until {}, next attempt {}, updated {}):",
                m.saga_id,
                m.status,
                m.current_step,
                m.step_index,
                m.attempts,
                m.version,
                m.lease_owner,
                m.lease_until_ms,
                m.next_attempt_at_ms,
                m.updated_at_ms,
            ));
            // The whole timeline and every signal: what a stuck saga went through is the
            // evidence a failure has to carry.
            for st in &steps {
                report.push_str(&format!(
                    "\n    {} {} {} {} #{}: {}",
                    st.recorded_at_ms, st.step, st.direction, st.outcome, st.attempt, st.detail
                ));
            }
            for sg in &signals {
                report.push_str(&format!(
                    "\n    signal {} {} consumed={} at {} ({})",
                    sg.seq, sg.signal, sg.consumed, sg.recorded_at_ms, sg.idem_key
                ));
            }
        }
        if orch.get_database_backend() == sea_orm::DbBackend::Postgres {
            // What every session of the cluster is doing: a session idle in a transaction or
            // waiting on a lock is where a stuck saga usually is.
            use sea_orm::ConnectionTrait;
            let rows = orch
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT datname || ' ' || state || ' ' || coalesce(wait_event_type, '-') \
                     || '/' || coalesce(wait_event, '-') || ' xact ' \
                     || coalesce((extract(epoch FROM now() - xact_start) * 1000)::bigint, -1) \
                     || ' ms: ' || left(query, 160) AS line \
                     FROM pg_stat_activity WHERE datname IS NOT NULL AND pid <> pg_backend_pid()",
                ))
                .await
                .unwrap_or_default();
            report.push_str("\nsessions:");
            for row in rows {
                let line: String = row.try_get("", "line").unwrap_or_default();
                report.push_str(&format!("\n    {line}"));
            }
        }
        panic!(
            "{} sagas not terminal {} s after the last fault and the last order:{report}",
            stuck.len(),
            limit.as_secs()
        );
    }

    let finance_db = erp_runtime::db::connect(s, "finance").await.unwrap();
    let mut completed = 0;
    for id in orders {
        let saga = c.saga(id).await.unwrap();
        let live_labels = c
            .labels(id)
            .await
            .iter()
            .filter(|l| l.status != erp_proto::carrier::ShipmentStatus::Voided as i32)
            .count();
        let authorizations = erp_finance::store::payment::Entity::find()
            .filter(erp_finance::store::payment::Column::OrderId.eq(id.as_str()))
            .count(&finance_db)
            .await
            .unwrap();
        assert!(authorizations <= 1, "{id}: {authorizations} authorizations");
        if saga.status == SagaStatus::Completed as i32 {
            completed += 1;
            let order = c.order(id).await;
            let payment = c.payment(id).await.unwrap();
            assert_eq!(payment.captured, order.total, "{id}: captured the total");
            assert_eq!(live_labels, 1, "{id}: one live label");
            let from_saga = c
                .journal_entries(id)
                .await
                .iter()
                .filter(|e| e.source.as_ref().is_some_and(|s| s.kind == "saga"))
                .count();
            assert_eq!(from_saga, 1, "{id}: one journal entry");
        } else {
            assert_eq!(live_labels, 0, "{id} compensated with a live label");
        }
        assert!(
            c.reservations(id)
                .await
                .iter()
                .all(|r| r.state != erp_proto::inventory::ReservationState::Active as i32),
            "{id}: left reserved"
        );
    }
    c.assert_reconciled().await;
    (completed, all_terminal)
}

/// Settings for a fault test on `backend` and the Redis at `redis_url` (a stream prefix of its
/// own), with short leases and redelivery so that recovery is quick.
fn fault_settings(backend: &testing::Backend, redis_url: &str) -> (Settings, std::path::PathBuf) {
    let prefix = format!("erp-fault-{}", uuid::Uuid::now_v7().simple());
    // ERP_TEST_LOG=<filter> (e.g. `warn`): the in-process services log on stderr, to follow
    // a failing run (the first test to ask installs the process's subscriber).
    if let Ok(filter) = std::env::var("ERP_TEST_LOG") {
        let mut telemetry = Settings::load_with(None, None).unwrap().telemetry;
        telemetry.log_filter = filter;
        std::mem::forget(erp_runtime::telemetry::init("crash-test", &telemetry));
    }
    testing::settings(
        backend,
        &[
            ("ERP__AUTH__MODE", "jwt"),
            ("ERP__BUS__KIND", "redis"),
            ("ERP__BUS__REDIS_URL", redis_url),
            ("ERP__BUS__STREAM_PREFIX", &prefix),
            ("ERP__BUS__REDELIVER_AFTER_MS", "1000"),
            ("ERP__ORCHESTRATOR__LEASE_MS", "2000"),
            ("ERP__BUS__RELAY_LEASE_MS", "2000"),
        ],
    )
}

/// Seeds the suite, stocks the catalog for a load (300 each at east) and starts the floor.
/// Returns the clients, and what stops the floor and its task.
async fn stock_and_floor(
    suite: &erp::Suite,
    tag: &str,
) -> (
    Clients,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    erp::seed::seed(suite).await.unwrap();
    let mut c = Clients::for_suite(suite);
    for (sku, ..) in erp::seed::CATALOG {
        c.receive(&format!("{tag}-{sku}"), sku, "east", 300).await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let floor = tokio::spawn(play_floor(c.clone(), stop.clone()));
    (c, stop, floor)
}

/// Ends a fault test's load: waits for the orders being placed, checks them all settled
/// ([`assert_settled`]) within `limit` of `last_fault`, stops the floor, and requires every
/// order completed. Returns the orders and how long after the last fault all were done.
async fn all_completed(
    c: &mut Clients,
    s: &Settings,
    placing: tokio::task::JoinHandle<Vec<String>>,
    last_fault: Instant,
    floor: (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    ),
) -> (Vec<String>, Duration) {
    let orders = placing.await.unwrap();
    let (completed, settled) =
        assert_settled(c, s, &orders, last_fault, Duration::from_secs(90)).await;
    floor.0.cancel();
    floor.1.await.unwrap();
    assert_eq!(completed, orders.len(), "every order completed");
    (orders, settled)
}

/// SIGKILL, then wait for the process to be gone.
fn kill(child: &mut Proc) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// 200 orders while one of two orchestrator replicas is SIGKILLed every 2-3 s for 30 s and
/// finance, then the warehouse, die and come back once (processes on PostgreSQL and Redis
/// Streams; the floor is played through the API). Every saga must be terminal within 60 s of
/// the last fault; every completed order captured its total exactly once and has one live label;
/// nothing stays reserved; the stock ledger and the books reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_two_replicas_killed_at_random_and_participants_restarted() {
    use rand::Rng;
    let _watchdog = erp_runtime::testing::watchdog(
        "chaos_two_replicas_killed_at_random_and_participants_restarted",
        std::time::Duration::from_secs(400),
    );
    let Some(redis_url) = testing::redis_url() else {
        return;
    };
    let backend = testing::backends().pop().unwrap();
    let (settings, _dir) = fault_settings(&backend, &redis_url);
    let bus = Bus::from_settings(&settings.bus).await.unwrap();
    let own = ["orchestrator", "finance", "warehouse"];
    let suite = erp::start_suite_without(settings, bus, true, &own)
        .await
        .unwrap();
    let s = suite.settings.clone();
    let mut finance = spawn_service(&s, "finance", true);
    let mut warehouse = spawn_service(&s, "warehouse", true);
    let mut replicas = [spawn_orchestrator(&s, true), spawn_orchestrator(&s, false)];
    let (mut c, stop_floor, floor) = stock_and_floor(&suite, "chaos").await;

    // Orders arrive over the first 20 s of the chaos.
    let placing = place_orders(c.clone(), "chaos", 200, Duration::from_millis(100));

    let chaos_started = Instant::now();
    let (mut kills, mut finance_done, mut warehouse_done) = (0, false, false);
    while chaos_started.elapsed() < Duration::from_secs(30) {
        let pause = rand::rng().random_range(2_000..3_000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let which = rand::rng().random_range(0..2);
        kill(&mut replicas[which]);
        kills += 1;
        replicas[which] = spawn_orchestrator(&s, which == 0);
        let t = chaos_started.elapsed();
        if !finance_done && t > Duration::from_secs(8) {
            kill(&mut finance);
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            finance = spawn_service(&s, "finance", true);
            finance_done = true;
        } else if !warehouse_done && t > Duration::from_secs(18) {
            kill(&mut warehouse);
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            warehouse = spawn_service(&s, "warehouse", true);
            warehouse_done = true;
        }
    }
    let last_fault = Instant::now();
    let orders = placing.await.unwrap();

    let (completed, all_terminal) =
        assert_settled(&mut c, &s, &orders, last_fault, Duration::from_secs(60)).await;
    stop_floor.cancel();
    floor.await.unwrap();
    println!(
        "chaos: {} orders, {kills} orchestrator kills in {:.0} s, finance and warehouse restarted \
         once; all terminal {:.1} s after the last fault ({:.1} s after the first order); \
         {completed} completed, {} compensated",
        orders.len(),
        (last_fault - chaos_started).as_secs_f64(),
        all_terminal.as_secs_f64(),
        chaos_started.elapsed().as_secs_f64(),
        orders.len() - completed
    );
    for mut r in replicas {
        kill(&mut r);
    }
    kill(&mut finance);
    kill(&mut warehouse);
    suite.stop().await.unwrap();
}

/// 200 orders while the suite's Redis (its own process, no persistence) is SIGKILLed twice and
/// comes back empty each time: streams, consumer groups and their positions are gone. The
/// services keep serving (events wait in the outboxes), the relays publish again what no group
/// confirmed, and every saga completes: each order captured once, one label, one journal entry,
/// nothing left reserved, the books reconciled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty_mid_load_loses_no_order() {
    use erp_proto::events::GetEventsStatusRequest;
    use erp_proto::events::events_service_client::EventsServiceClient;
    let _watchdog = erp_runtime::testing::watchdog(
        "redis_killed_and_restarted_empty_mid_load_loses_no_order",
        std::time::Duration::from_secs(400),
    );
    let Some(mut redis) = testing::PrivateRedis::reserve() else {
        return;
    };
    redis.start();
    let url = redis.url();
    let backend = testing::backends().pop().unwrap();
    let (settings, _dir) = fault_settings(&backend, &url);
    let bus = Bus::from_settings(&settings.bus).await.unwrap();
    let suite = erp::start_suite(settings, bus, true).await.unwrap();
    let s = suite.settings.clone();
    let (mut c, stop_floor, floor) = stock_and_floor(&suite, "redis").await;
    let placing = place_orders(c.clone(), "redis", 200, Duration::from_millis(50));

    let started = Instant::now();
    let mut down = Duration::ZERO;
    for (after, outage) in [(3_000, 1_500), (3_000, 1_000)] {
        tokio::time::sleep(Duration::from_millis(after)).await;
        redis.kill();
        tokio::time::sleep(Duration::from_millis(outage)).await;
        redis.start();
        down += Duration::from_millis(outage);
    }
    let last_fault = Instant::now();
    let (orders, settled) =
        all_completed(&mut c, &s, placing, last_fault, (stop_floor, floor)).await;
    let mut republished = 0;
    for service in erp_runtime::config::SERVICES {
        let ch = erp::testkit::channel_as(
            &s,
            service,
            erp::testkit::TOOL_SUBJECT,
            &[erp_runtime::auth::roles::OPERATOR],
        );
        let status = EventsServiceClient::new(ch)
            .get_events_status(GetEventsStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.degraded, "", "{service} still degraded");
        assert_eq!(status.dead_letters, 0, "{service} gave up on events");
        republished += status.republished;
    }
    println!(
        "redis loss: {} orders, Redis killed twice ({:.1} s down in all) and restarted empty; all \
         completed {:.1} s after the last restart ({:.1} s after the first order); {republished} \
         events published again",
        orders.len(),
        down.as_secs_f64(),
        settled.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    suite.stop().await.unwrap();
}

/// 200 orders while the suite's PostgreSQL (a cluster of the test's own) is stopped the way a
/// crash stops it (`pg_ctl -m immediate`: no checkpoint, every connection cut) and started
/// again 2 s later (crash recovery). Every saga completes, exactly once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_and_recovered_mid_load_loses_no_order() {
    let _watchdog = erp_runtime::testing::watchdog(
        "postgres_crashed_and_recovered_mid_load_loses_no_order",
        std::time::Duration::from_secs(400),
    );
    let (Some(pg), Some(redis_url)) = (testing::PrivatePostgres::start(), testing::redis_url())
    else {
        return;
    };
    let (settings, _dir) = fault_settings(&testing::Backend::Postgres(pg.url()), &redis_url);
    let bus = Bus::from_settings(&settings.bus).await.unwrap();
    let suite = erp::start_suite(settings, bus, true).await.unwrap();
    let s = suite.settings.clone();
    let (mut c, stop_floor, floor) = stock_and_floor(&suite, "pg").await;
    let placing = place_orders(c.clone(), "pg", 200, Duration::from_millis(50));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.crash();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.up();
    let last_fault = Instant::now();
    let (orders, settled) =
        all_completed(&mut c, &s, placing, last_fault, (stop_floor, floor)).await;
    println!(
        "postgres crash: {} orders, PostgreSQL down 2 s (immediate stop, crash recovery); all \
         completed {:.1} s after it came back ({:.1} s after the first order)",
        orders.len(),
        settled.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    suite.stop().await.unwrap();
}

/// The carrier service cut off for 20 s by a real TCP fault proxy (Toxiproxy) in front of it,
/// while 100 orders go through: calls to it are refused, open connections dropped. The sagas
/// wait at their label step, retry, and finish once it is back: one label each, nothing
/// charged twice, the books reconciled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_cut_off_for_20_s_by_a_fault_proxy_delays_but_loses_nothing() {
    let _watchdog = erp_runtime::testing::watchdog(
        "a_participant_cut_off_for_20_s_by_a_fault_proxy_delays_but_loses_nothing",
        std::time::Duration::from_secs(400),
    );
    let (Some(proxy), Some(redis_url)) = (testing::Toxiproxy::start(), testing::redis_url()) else {
        return;
    };
    let backend = testing::backends().pop().unwrap();
    let (settings, _dir) = fault_settings(&backend, &redis_url);
    let bus = Bus::from_settings(&settings.bus).await.unwrap();
    let suite = erp::start_suite_without(settings, bus, true, &["carrier"])
        .await
        .unwrap();
    let s = suite.settings.clone();
    // The suite reaches the carrier at its peer address, where the proxy listens; the carrier
    // itself runs as a process on a port of its own behind it.
    let front = s.peers.carrier.trim_start_matches("http://").to_owned();
    let back = format!("127.0.0.1:{}", testing::free_ports(1)[0]);
    let mut behind = (*s).clone();
    behind.peers.carrier = format!("http://{back}");
    let _carrier = spawn_service(&behind, "carrier", true);
    proxy.proxy("carrier", &front, &back).await;
    let (mut c, stop_floor, floor) = stock_and_floor(&suite, "cut").await;
    let placing = place_orders(c.clone(), "cut", 100, Duration::from_millis(50));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_enabled("carrier", false).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    proxy.set_enabled("carrier", true).await;
    let last_fault = Instant::now();
    let (orders, settled) =
        all_completed(&mut c, &s, placing, last_fault, (stop_floor, floor)).await;
    println!(
        "carrier cut: {} orders, the carrier unreachable through the proxy for 20 s; all \
         completed {:.1} s after it was reachable again ({:.1} s after the first order)",
        orders.len(),
        settled.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    suite.stop().await.unwrap();
}
