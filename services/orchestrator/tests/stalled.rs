//! Which sagas count as stalled (ListSagas `stalled`, the `sagas_stalled` gauge) and which are
//! due, judged by the database's clock, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)]

use erp_orchestrator::store::{self, saga};
use erp_runtime::testing::{self, Backend};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, QueryFilter, QueryOrder};

async fn insert(
    db: &sea_orm::DatabaseConnection,
    id: &str,
    status: &str,
    owner: &str,
    lease_until: i64,
    next_attempt: i64,
) {
    saga::ActiveModel {
        saga_id: Set(id.into()),
        definition: Set("fulfillment".into()),
        definition_version: Set(3),
        order_id: Set(format!("order-{id}")),
        status: Set(store::SagaState::parse(status).expect("a saga state")),
        current_step: Set("await_pack".into()),
        attempts: Set(0),
        last_error: Set(String::new()),
        traceparent: Set(String::new()),
        lease_owner: Set(owner.into()),
        lease_until_ms: Set(lease_until),
        next_attempt_at_ms: Set(next_attempt),
        created_at_ms: Set(0),
        updated_at_ms: Set(0),
        data: Set("{}".into()),
        step_index: Set(7),
        resume_status: Set(String::new()),
        parked_reason: Set(String::new()),
        suggested_action: Set(String::new()),
        waiting_skus: Set(String::new()),
        version: Set(0),
    }
    .insert(db)
    .await
    .unwrap();
}

/// Closes the test's database and, on PostgreSQL, drops it.
async fn drop_database(
    db: sea_orm::DatabaseConnection,
    settings: &erp_runtime::Settings,
    backend: &Backend,
) {
    db.close().await.unwrap();
    if let Backend::Postgres(_) = backend {
        erp_runtime::db::drop_postgres_database(
            &settings.database.url.replace("{service}", "orchestrator"),
        )
        .await
        .unwrap();
    }
}

async fn stalled_and_due(backend: Backend) {
    let (settings, _dir) = testing::settings(&backend, &[]);
    let db = erp_runtime::db::connect_and_migrate::<store::Migrator>(&settings, "orchestrator")
        .await
        .unwrap();
    let now = erp_runtime::db::clock_ms(&db).await.unwrap();
    let local = erp_runtime::time::now_ms();
    assert!(
        (now - local).abs() < 5_000,
        "{}: database clock {now}, local {local}",
        backend.name()
    );
    let day = 86_400_000;
    // The driver died after a wait: lease expired, next attempt a day away.
    insert(
        &db,
        "dead-driver",
        "running",
        "replica-x",
        now - 5_000,
        now + day,
    )
    .await;
    // A driver is at work.
    insert(
        &db,
        "driven",
        "running",
        "replica-y",
        now + 30_000,
        now + day,
    )
    .await;
    // Waits for the packer, released properly: not due, not stalled.
    insert(&db, "waiting", "waiting", "", 0, now + day).await;
    // Due a minute ago and nobody took it.
    insert(&db, "overdue", "pending", "", 0, now - 60_000).await;
    // Due a moment ago: a replica takes it at its next poll.
    insert(&db, "just-due", "pending", "", 0, now - 100).await;
    // Finished, its lease long gone: never stalled.
    insert(
        &db,
        "done",
        "completed",
        "replica-x",
        now - 5_000,
        now - day,
    )
    .await;

    let ids = |rows: Vec<saga::Model>| rows.into_iter().map(|m| m.saga_id).collect::<Vec<_>>();
    let stalled = saga::Entity::find()
        .filter(store::stalled_condition(&db, 10_000))
        .order_by_asc(saga::Column::SagaId)
        .all(&db)
        .await
        .unwrap();
    assert_eq!(
        ids(stalled),
        vec!["dead-driver", "overdue"],
        "{}",
        backend.name()
    );
    // What a replica (not the dead one, not the live one) takes at its next poll.
    let mut due = store::due_sagas(&db, "replica-z", 64).await.unwrap();
    due.sort();
    assert_eq!(
        due,
        vec!["dead-driver", "just-due", "overdue"],
        "{}",
        backend.name()
    );
    drop_database(db, &settings, &backend).await;
}

#[tokio::test]
async fn stalled_sagas_are_those_nobody_drives_and_the_dead_drivers_are_due() {
    for backend in testing::backends() {
        stalled_and_due(backend).await;
    }
}

/// A saga whose stored context cannot be read is parked with its data untouched, not restarted
/// from an empty context (which would repeat its steps under the same keys).
async fn unreadable_context_parks(backend: Backend) {
    use sea_orm::ConnectionTrait;
    let svc = testing::spawn::<erp_orchestrator::Service>(&backend).await;
    let db = &svc.running.db;
    let now = erp_runtime::db::clock_ms(db).await.unwrap();
    insert(db, "garbled", "running", "", 0, now - 1).await;
    db.execute_unprepared("UPDATE sagas SET data = 'not json{' WHERE saga_id = 'garbled'")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let parked = loop {
        let m = saga::Entity::find_by_id("garbled".to_owned())
            .one(db)
            .await
            .unwrap()
            .unwrap();
        if m.status == store::SagaState::Parked {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: not parked: {m:?}",
            backend.name()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        parked.parked_reason.starts_with("CORRUPT_CONTEXT"),
        "{parked:?}"
    );
    assert_eq!(parked.resume_status, "running");
    assert_eq!(parked.data, "not json{", "the evidence is kept");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_with_an_unreadable_context_is_parked_on_every_backend() {
    for backend in testing::backends() {
        unreadable_context_parks(backend).await;
    }
}

/// A saga waiting at `route` for stock (backordered), created at `created`, needing `skus`.
async fn backordered(db: &sea_orm::DatabaseConnection, id: &str, created: i64, skus: &str) {
    let now = erp_runtime::db::clock_ms(db).await.unwrap();
    insert(db, id, "waiting", "", 0, now + 3_600_000).await;
    saga::ActiveModel {
        saga_id: Set(id.into()),
        current_step: Set("route".into()),
        created_at_ms: Set(created),
        waiting_skus: Set(skus.into()),
        ..Default::default()
    }
    .update(db)
    .await
    .unwrap();
}

fn stock_event(id: &str, sku: &str, available: i64, reason: &str) -> erp_runtime::bus::Event {
    erp_runtime::bus::Event {
        id: id.into(),
        topic: "inventory.stock_changed".into(),
        key: format!("{sku}@WH1"),
        payload: serde_json::json!({
            "sku": sku, "location": "WH1", "available": available,
            "on_hand_delta": if reason == "receipt" { available } else { 0 },
            "reason": reason,
        }),
        occurred_at_ms: 0,
        traceparent: String::new(),
        source: "inventory".into(),
    }
}

/// Stock arriving wakes as many backordered sagas as units arrived, oldest first, and only
/// those waiting for that SKU; a site back online wakes the backordered sagas too.
async fn waking(backend: Backend) {
    let (settings, _dir) = testing::settings(&backend, &[]);
    let db = erp_runtime::db::connect_and_migrate::<store::Migrator>(&settings, "orchestrator")
        .await
        .unwrap();
    backordered(&db, "b-newest", 300, "|SKU-A|").await;
    backordered(&db, "b-oldest", 100, "|SKU-A|").await;
    backordered(&db, "b-middle", 200, "|SKU-A|SKU-B|").await;
    backordered(&db, "b-other", 50, "|SKU-B|").await;
    // Backordered for SKU-A and routing again at this moment on another replica: it may have
    // read the stock before the units arrived.
    let now = erp_runtime::db::clock_ms(&db).await.unwrap();
    insert(&db, "b-routing", "running", "replica-y", now + 60_000, now).await;
    saga::ActiveModel {
        saga_id: Set("b-routing".into()),
        current_step: Set("route".into()),
        waiting_skus: Set("|SKU-A|".into()),
        ..Default::default()
    }
    .update(&db)
    .await
    .unwrap();
    let version = |db: &sea_orm::DatabaseConnection, id: &'static str| {
        let db = db.clone();
        async move {
            saga::Entity::find_by_id(id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .version
        }
    };
    let wake = tokio::sync::Notify::new();
    let due = |db: &sea_orm::DatabaseConnection| {
        let db = db.clone();
        async move {
            let mut d = store::due_sagas(&db, "replica-z", 64).await.unwrap();
            d.sort();
            d
        }
    };
    // A reservation takes stock: nothing wakes.
    store::wake_waiting_for_stock(&db, &stock_event("e1", "SKU-A", 5, "reservation"), &wake)
        .await
        .unwrap();
    assert!(due(&db).await.is_empty(), "{}", backend.name());
    // Two units of SKU-A received: the two oldest waiting for SKU-A.
    store::wake_waiting_for_stock(&db, &stock_event("e2", "SKU-A", 2, "receipt"), &wake)
        .await
        .unwrap();
    assert_eq!(
        due(&db).await,
        vec!["b-middle", "b-oldest"],
        "{}",
        backend.name()
    );
    // The routing one is not taken from its replica, but its state moved on: the "recheck
    // later" that replica is about to save (read at version 0) is refused, and the saga is due
    // again once its lease is released.
    assert_eq!(version(&db, "b-routing").await, 1, "{}", backend.name());
    assert_eq!(version(&db, "b-other").await, 0, "{}", backend.name());
    // A site back online: every backordered saga routes again.
    let online = erp_runtime::bus::Event {
        id: "e3".into(),
        topic: "warehouse.site_status_changed".into(),
        key: "WH2".into(),
        payload: serde_json::json!({ "site": "WH2", "online": true }),
        occurred_at_ms: 0,
        traceparent: String::new(),
        source: "warehouse".into(),
    };
    store::on_site_status(&db, &online, &wake).await.unwrap();
    assert_eq!(
        due(&db).await,
        vec!["b-middle", "b-newest", "b-oldest", "b-other"],
        "{}",
        backend.name()
    );
    drop_database(db, &settings, &backend).await;
}

#[tokio::test]
async fn stock_wakes_as_many_backordered_sagas_as_units_arrived_oldest_first() {
    for backend in testing::backends() {
        waking(backend).await;
    }
}

/// The saga of an order (GetSaga and WatchSaga by order) is found by index, not by reading
/// every saga: with thousands of orders watched that scan was the flash sale's bottleneck.
#[tokio::test]
async fn the_saga_of_an_order_is_read_by_index() {
    use sea_orm::{ColumnTrait, QueryTrait};

    let (settings, _dir) = testing::settings(&Backend::Sqlite, &[]);
    let db = erp_runtime::db::connect_and_migrate::<store::Migrator>(&settings, "orchestrator")
        .await
        .unwrap();
    let query = saga::Entity::find()
        .filter(saga::Column::OrderId.eq("order-1"))
        .build(db.get_database_backend());
    let plan = testing::query_plan(&db, query).await;
    assert!(
        plan.iter().any(|d| d.contains("USING INDEX sagas_order")),
        "{plan:?}"
    );
    db.close().await.unwrap();
}
