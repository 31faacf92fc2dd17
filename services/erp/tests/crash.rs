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
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

/// Starts an orchestrator replica; `own_port` false gives it a free port of its own (a second
/// replica behind the same service).
fn spawn_orchestrator(s: &Settings, own_port: bool) -> Child {
    let port = if own_port {
        s.peers.orchestrator.rsplit(':').next().unwrap().to_owned()
    } else {
        "0".to_owned()
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_erp"));
    cmd.args(["serve", "orchestrator"])
        .env("ERP__DATA_DIR", &s.data_dir)
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
        .env("ERP__ORCHESTRATOR__POLL_INTERVAL_MS", "50")
        .env("ERP__TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for service in erp_runtime::config::SERVICES {
        cmd.env(
            format!("ERP__PEERS__{}", service.to_uppercase()),
            s.peers.get(service).unwrap(),
        );
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("orchestrator listening on"), "{first}");
    child
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
            ("ERP__BUS__KIND", "redis"),
            ("ERP__BUS__REDIS_URL", &redis_url),
            ("ERP__BUS__STREAM_PREFIX", &prefix),
            ("ERP__BUS__REDELIVER_AFTER_MS", "1000"),
            ("ERP__ORCHESTRATOR__LEASE_MS", "1500"),
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
    c.order
        .put_routing_rules(erp_proto::order::PutRoutingRulesRequest {
            rules: vec![erp_proto::order::RoutingRule {
                name: "ship what is in stock".into(),
                priority: 1,
                strategy: "LOWEST_COST".into(),
                allow_split: true,
                ..Default::default()
            }],
            actor: Some(erp_proto::common::Actor {
                id: "ops".into(),
                reason: "crash test".into(),
            }),
        })
        .await
        .unwrap();
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
        sagas.iter().any(|s| s.status != "waiting"),
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
