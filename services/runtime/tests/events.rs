//! Durable events, end to end through two real services (a publisher and a consumer, each
//! with its own database) on SQLite and PostgreSQL: a poison event is dead-lettered without
//! holding back other keys, listed and replayed over gRPC (audited); and over Redis, a
//! Redis that is down when the services start and is later killed and restarted empty loses
//! no event, applies none twice, keeps each key's order, and leaves the streams trimmed.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use erp_proto::events::events_service_client::EventsServiceClient;
use erp_proto::events::{
    GetEventsStatusRequest, GetEventsStatusResponse, ListDeadLettersRequest,
    ReplayDeadLetterRequest,
};
use erp_runtime::bus::{Bus, Event, handler};
use erp_runtime::testing::{self, Backend, PrivateRedis, TestService};
use erp_runtime::{ServiceContext, outbox};
use sea_orm::TransactionTrait;

struct Tables;

impl sea_orm_migration::MigratorTrait for Tables {
    fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
        vec![
            erp_runtime::db::runtime_tables(),
            erp_runtime::audit::migration(),
            erp_runtime::db::events_tables(),
            erp_runtime::db::events_tables_v2(),
        ]
    }
}

/// Applied events: (data dir of the test, key, n).
static APPLIED: Mutex<Vec<(String, String, i64)>> = Mutex::new(Vec::new());
/// Whether the consumer refuses events marked poison.
static POISON_REFUSED: AtomicBool = AtomicBool::new(true);

const TOPIC: &str = "inventory.low_stock";

/// Publishes `inventory.low_stock` (its relay does: the events are written to its outbox).
struct Publisher;

impl erp_runtime::Service for Publisher {
    const NAME: &'static str = "inventory";
    const GRPC_NAME: &'static str = "erp.test.Publisher";
    type Migrator = Tables;
    const POLICY: &'static erp_runtime::auth::Policy = &erp_runtime::auth::Policy {
        service: "erp.test.Publisher",
        rules: &[],
    };

    async fn build(_ctx: ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        Ok(tonic::service::Routes::default())
    }
}

/// Consumes it as the `procurement` group, through its inbox.
struct Consumer;

impl erp_runtime::Service for Consumer {
    const NAME: &'static str = "procurement";
    const GRPC_NAME: &'static str = "erp.test.Consumer";
    type Migrator = Tables;
    const POLICY: &'static erp_runtime::auth::Policy = &erp_runtime::auth::Policy {
        service: "erp.test.Consumer",
        rules: &[],
    };

    async fn build(ctx: ServiceContext) -> anyhow::Result<tonic::service::Routes> {
        let db = ctx.db.clone();
        let run = ctx.settings.data_dir.display().to_string();
        ctx.subscribe(
            TOPIC,
            handler(move |event: Event| {
                let (db, run) = (db.clone(), run.clone());
                async move {
                    if event.payload["poison"] == true && POISON_REFUSED.load(Ordering::SeqCst) {
                        anyhow::bail!("poison event refused");
                    }
                    let txn = db.begin().await?;
                    if !outbox::mark_processed(&txn, "procurement", &event.id).await? {
                        return Ok(());
                    }
                    txn.commit().await?;
                    let n = event.payload["n"].as_i64().unwrap();
                    APPLIED.lock().unwrap().push((run, event.key, n));
                    Ok(())
                }
            }),
        )
        .await?;
        Ok(tonic::service::Routes::default())
    }
}

/// SQLite settings on the Redis at `redis_url`, under a stream prefix of their own (returned),
/// with a quick relay.
fn redis_settings(
    tag: &str,
    redis_url: &str,
) -> (Arc<erp_runtime::Settings>, String, std::path::PathBuf) {
    let prefix = format!("{tag}-{}", uuid::Uuid::now_v7().simple());
    let (settings, dir) = testing::settings(
        &Backend::Sqlite,
        &[
            ("ERP__BUS__KIND", "redis"),
            ("ERP__BUS__REDIS_URL", redis_url),
            ("ERP__BUS__STREAM_PREFIX", &prefix),
            ("ERP__BUS__RELAY_INTERVAL_MS", "20"),
        ],
    );
    (Arc::new(settings), prefix, dir)
}

/// A relay of the test publisher's outbox in `db`, outside any running service.
fn relay_of(
    db: &sea_orm::DatabaseConnection,
    bus: Bus,
    settings: &erp_runtime::Settings,
) -> outbox::Relay {
    outbox::Relay::new(
        "inventory",
        db.clone(),
        bus,
        outbox::OutboxWaker::default(),
        settings.bus.clone(),
        erp_runtime::events::Status::default(),
    )
}

/// Starts service `S` on its own bus from `settings`.
async fn spawn<S: erp_runtime::Service>(settings: &Arc<erp_runtime::Settings>) -> TestService {
    testing::spawn_with::<S>(
        settings.clone(),
        Bus::from_settings(&settings.bus).await.unwrap(),
    )
    .await
}

fn applied(run: &str) -> Vec<(String, i64)> {
    APPLIED
        .lock()
        .unwrap()
        .iter()
        .filter(|(r, _, _)| r == run)
        .map(|(_, k, n)| (k.clone(), *n))
        .collect()
}

async fn enqueue(publisher: &TestService, key: &str, n: i64, poison: bool) {
    outbox::enqueue(
        &publisher.running.db,
        TOPIC,
        key,
        &serde_json::json!({ "n": n, "poison": poison }),
    )
    .await
    .unwrap();
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gRPC health of the service's events plumbing (`erp.events.v1.EventsService`).
async fn events_health(s: &TestService) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(s.channel().await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: erp_proto::service_names::EVENTS.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn status(s: &TestService) -> GetEventsStatusResponse {
    EventsServiceClient::new(s.channel().await)
        .get_events_status(GetEventsStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn poison(backend: Backend) {
    POISON_REFUSED.store(true, Ordering::SeqCst);
    let (settings, _dir) = testing::settings(
        &backend,
        &[
            ("ERP__BUS__MAX_DELIVERIES", "3"),
            ("ERP__BUS__DEAD_LETTER_AFTER_MS", "1500"),
        ],
    );
    let run = settings.data_dir.display().to_string();
    let settings = Arc::new(settings);
    let bus = Bus::InProcess(Default::default());
    let consumer = testing::spawn_with::<Consumer>(settings.clone(), bus.clone()).await;
    let publisher = testing::spawn_with::<Publisher>(settings, bus).await;
    enqueue(&publisher, "A", 1, true).await;
    enqueue(&publisher, "A", 2, false).await;
    enqueue(&publisher, "B", 3, false).await;
    // The other key is not held back by the poison event...
    wait_for("key B", Duration::from_secs(20), async || {
        applied(&run).contains(&("B".into(), 3))
    })
    .await;
    // ...its own key is, until the poison event is dead-lettered (order kept).
    assert!(
        !applied(&run).contains(&("A".into(), 2)),
        "{}",
        backend.name()
    );
    wait_for(
        "key A after the dead letter",
        Duration::from_secs(30),
        async || applied(&run).contains(&("A".into(), 2)),
    )
    .await;
    assert_eq!(applied(&run).len(), 2);

    let mut events = EventsServiceClient::new(consumer.channel().await);
    let dead = events
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!((d.topic.as_str(), d.event_key.as_str()), (TOPIC, "A"));
    assert_eq!(
        (d.consumer.as_str(), d.source.as_str()),
        ("procurement", "inventory")
    );
    assert!(d.deliveries >= 3, "{d:?}");
    assert!(d.last_error.contains("poison event refused"), "{d:?}");
    assert!(d.replayed_at.is_none());
    let s = status(&consumer).await;
    assert_eq!(s.dead_letters, 1);
    // The publisher's outbox is drained and confirmed (in process: on delivery).
    wait_for("the outbox to drain", Duration::from_secs(10), async || {
        let s = status(&publisher).await;
        s.outbox_unpublished == 0 && s.outbox_unacknowledged == 0 && s.relay_leader
    })
    .await;

    // A replay needs a reason; one that fails again changes nothing.
    let refused = events
        .replay_dead_letter(ReplayDeadLetterRequest {
            event_id: d.event_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(testing::bad_fields(&refused), vec!["reason"]);
    let replay = || ReplayDeadLetterRequest {
        event_id: d.event_id.clone(),
        reason: "consumer fixed".into(),
    };
    let failed = events.replay_dead_letter(replay()).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::FailedPrecondition);
    assert!(failed.message().contains("failed again"), "{failed:?}");
    assert_eq!(status(&consumer).await.dead_letters, 1);
    // Fixed: the replay applies it, once.
    POISON_REFUSED.store(false, Ordering::SeqCst);
    let replayed = events
        .replay_dead_letter(replay())
        .await
        .unwrap()
        .into_inner()
        .dead_letter
        .unwrap();
    assert!(replayed.replayed_at.is_some());
    assert!(applied(&run).contains(&("A".into(), 1)));
    let again = events.replay_dead_letter(replay()).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert_eq!(applied(&run).len(), 3);
    assert_eq!(status(&consumer).await.dead_letters, 0);
    let audited = erp_runtime::audit::list(
        &consumer.running.db,
        0,
        100,
        &[("target", &format!("dead_letter:{}", d.event_id))],
    )
    .await
    .unwrap();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].reason, "consumer fixed");
    consumer.stop().await;
    publisher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_listed_and_replayed_without_holding_back_other_keys() {
    let _watchdog = testing::watchdog("poison", Duration::from_secs(300));
    for backend in testing::backends() {
        poison(backend).await;
    }
}

async fn redis_loss(backend: Backend) {
    let Some(mut redis) = PrivateRedis::reserve() else {
        return;
    };
    let url = redis.url();
    let (settings, _dir) = testing::settings(
        &backend,
        &[
            ("ERP__BUS__KIND", "redis"),
            ("ERP__BUS__REDIS_URL", &url),
            ("ERP__BUS__STREAM_PREFIX", "t"),
            ("ERP__BUS__RELAY_INTERVAL_MS", "20"),
            ("ERP__BUS__REDELIVER_AFTER_MS", "1000"),
        ],
    );
    let run = settings.data_dir.display().to_string();
    let settings = Arc::new(settings);
    // Both start while Redis is down, and serve.
    let consumer = spawn::<Consumer>(&settings).await;
    let publisher = spawn::<Publisher>(&settings).await;
    let keys = 10;
    for n in 1..=50 {
        enqueue(&publisher, &format!("k{}", n % keys), n, false).await;
    }
    wait_for("the degraded status", Duration::from_secs(20), async || {
        let s = status(&publisher).await;
        s.degraded.contains("redis unreachable")
    })
    .await;
    assert_eq!(status(&publisher).await.outbox_unpublished, 50);
    // Health says so under the events service's name, while the service itself serves.
    use tonic_health::pb::health_check_response::ServingStatus;
    wait_for("NOT_SERVING events", Duration::from_secs(10), async || {
        events_health(&publisher).await == ServingStatus::NotServing as i32
    })
    .await;
    redis.start();
    wait_for("the first 50", Duration::from_secs(30), async || {
        applied(&run).len() >= 50
    })
    .await;
    // More, while Redis is killed and comes back empty.
    let writer = {
        let db = publisher.running.db.clone();
        tokio::spawn(async move {
            for n in 51..=200 {
                outbox::enqueue(
                    &db,
                    TOPIC,
                    &format!("k{}", n % keys),
                    &serde_json::json!({ "n": n, "poison": false }),
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    wait_for("100 applied", Duration::from_secs(30), async || {
        applied(&run).len() >= 100
    })
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.start();
    writer.await.unwrap();
    let started = Instant::now();
    wait_for("all 200", Duration::from_secs(60), async || {
        applied(&run).len() >= 200
    })
    .await;
    let recovered = started.elapsed();
    let got = applied(&run);
    let mut ns: Vec<i64> = got.iter().map(|(_, n)| *n).collect();
    ns.sort_unstable();
    assert_eq!(
        ns,
        (1..=200).collect::<Vec<_>>(),
        "each event applied exactly once"
    );
    for k in 0..keys {
        let key = format!("k{k}");
        let order: Vec<i64> = got
            .iter()
            .filter(|(kk, _)| *kk == key)
            .map(|(_, n)| *n)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{}: key {key} out of order: {order:?}",
            backend.name()
        );
    }
    wait_for(
        "every event confirmed",
        Duration::from_secs(30),
        async || {
            let s = status(&publisher).await;
            s.outbox_unpublished == 0 && s.outbox_unacknowledged == 0 && s.degraded.is_empty()
        },
    )
    .await;
    let s = status(&publisher).await;
    assert!(s.republished > 0, "nothing was published again: {s:?}");
    wait_for("SERVING events", Duration::from_secs(10), async || {
        events_health(&publisher).await == ServingStatus::Serving as i32
    })
    .await;
    // Confirmed entries are trimmed off the stream.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    wait_for("the stream trimmed", Duration::from_secs(10), async || {
        let len: i64 = redis::cmd("XLEN")
            .arg(format!("t:events:{TOPIC}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        len == 0
    })
    .await;
    println!(
        "{}: 200 events, Redis down at start and restarted empty after 100; caught up {:.1} s after it came back; {} published again",
        backend.name(),
        recovered.as_secs_f64(),
        s.republished
    );
    consumer.stop().await;
    publisher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_restarted_empty_loses_no_event_and_applies_none_twice() {
    let _watchdog = testing::watchdog("redis_loss", Duration::from_secs(300));
    for backend in testing::backends() {
        redis_loss(backend).await;
    }
}

/// The suite's in-process bus (strict) keeps an event in the outbox while a group listed for
/// its topic has not subscribed yet: `erp up` starts its services one after another, and the
/// first relay must not hand leftover events to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_events_wait_for_every_listed_group_to_subscribe() {
    let (settings, _dir) = testing::settings(&Backend::Sqlite, &[]);
    let run = settings.data_dir.display().to_string();
    let settings = Arc::new(settings);
    let bus = Bus::InProcess(erp_runtime::bus::InProcessBus::strict());
    let publisher = testing::spawn_with::<Publisher>(settings.clone(), bus.clone()).await;
    enqueue(&publisher, "early", 1, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&publisher).await.outbox_unpublished,
        1,
        "delivered to nobody"
    );
    let consumer = testing::spawn_with::<Consumer>(settings, bus).await;
    wait_for("the early event", Duration::from_secs(20), async || {
        applied(&run) == vec![("early".to_owned(), 1)]
    })
    .await;
    wait_for("the outbox drained", Duration::from_secs(10), async || {
        status(&publisher).await.outbox_unpublished == 0
    })
    .await;
    consumer.stop().await;
    publisher.stop().await;
}

/// Entries a failover dropped while the bus kept its epoch (a replica that missed the last
/// writes): the group reads past them, but they were never processed. The relay finds them
/// missing from the stream before confirming them and publishes them again, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_failover_dropped_are_published_again() {
    use sea_orm::{EntityTrait, QueryOrder};
    let Some(redis_url) = testing::redis_url() else {
        return;
    };
    let (settings, prefix, _dir) = redis_settings("t-drop", &redis_url);
    let run = settings.data_dir.display().to_string();
    let publisher = spawn::<Publisher>(&settings).await;
    for n in 1..=5 {
        enqueue(&publisher, &format!("k{n}"), n, false).await;
    }
    wait_for("all published", Duration::from_secs(20), async || {
        status(&publisher).await.outbox_unpublished == 0
    })
    .await;
    // The failover: entries 2 and 4 are gone, the epoch is not.
    let rows = outbox::entity::Entity::find()
        .order_by_asc(outbox::entity::Column::Seq)
        .all(&publisher.running.db)
        .await
        .unwrap();
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deleted: i64 = redis::cmd("XDEL")
        .arg(format!("{prefix}:events:{TOPIC}"))
        .arg(&rows[1].stream_id)
        .arg(&rows[3].stream_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    let consumer = spawn::<Consumer>(&settings).await;
    wait_for("all five applied", Duration::from_secs(30), async || {
        let mut got: Vec<i64> = applied(&run).iter().map(|(_, n)| *n).collect();
        got.sort_unstable();
        got == vec![1, 2, 3, 4, 5]
    })
    .await;
    wait_for("every row confirmed", Duration::from_secs(10), async || {
        let s = status(&publisher).await;
        s.outbox_unacknowledged == 0 && s.outbox_unpublished == 0
    })
    .await;
    assert!(status(&publisher).await.republished >= 2);
    consumer.stop().await;
    publisher.stop().await;
}

/// Two relays of one outbox (two replicas of a service): the first stalls past its lease, the
/// second takes it over with the next generation and publishes. When the first wakes up it
/// still believes it holds the lease, and tries to append: Redis refuses it (fenced by
/// generation), nothing of it reaches the stream, the row stays for the holder, which
/// publishes it after the others, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_outlived_its_lease_appends_nothing() {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let Some(redis_url) = testing::redis_url() else {
        return;
    };
    let prefix = format!("t-fence-{}", uuid::Uuid::now_v7().simple());
    for backend in testing::backends() {
        let (settings, _dir) = testing::settings(
            &backend,
            &[
                ("ERP__BUS__KIND", "redis"),
                ("ERP__BUS__REDIS_URL", &redis_url),
                ("ERP__BUS__STREAM_PREFIX", &prefix),
            ],
        );
        let db = erp_runtime::db::connect_and_migrate::<Tables>(&settings, "inventory")
            .await
            .unwrap();
        let bus = Bus::from_settings(&settings.bus).await.unwrap();
        let relay = || relay_of(&db, bus.clone(), &settings);
        let (a, b) = (relay(), relay());
        let lease = Duration::from_secs(60);
        let put = async |n: i64| {
            outbox::enqueue(&db, TOPIC, "k", &serde_json::json!({ "key": "k", "n": n }))
                .await
                .unwrap();
        };
        assert!(a.take_lease("replica-a", lease).await.unwrap());
        let first = a.generation.load(Ordering::Relaxed);
        // Replica a stalls; its lease runs out and b takes it.
        outbox::relay_lease::Entity::update_many()
            .col_expr(outbox::relay_lease::Column::UntilMs, Expr::value(0))
            .exec(&db)
            .await
            .unwrap();
        assert!(b.take_lease("replica-b", lease).await.unwrap());
        assert_eq!(b.generation.load(Ordering::Relaxed), first + 1);
        put(1).await;
        put(2).await;
        let mut epoch = String::new();
        assert_eq!(b.publish_pending(&mut epoch).await.unwrap(), 2);
        // Replica a wakes up, still believing it holds the lease.
        put(3).await;
        let mut stale_epoch = String::new();
        let refused = a.publish_pending(&mut stale_epoch).await.unwrap_err();
        assert!(
            refused.is::<erp_runtime::bus::Fenced>(),
            "{}: {refused:#}",
            backend.name()
        );
        let unpublished = outbox::entity::Entity::find()
            .filter(outbox::entity::Column::PublishedAtMs.is_null())
            .count(&db)
            .await
            .unwrap();
        assert_eq!(unpublished, 1, "{}", backend.name());
        assert!(!a.take_lease("replica-a", lease).await.unwrap());
        assert_eq!(b.publish_pending(&mut epoch).await.unwrap(), 1);
        // The database restored to an older generation while Redis kept the newest: the holder
        // is fenced once, then takes the lease above what Redis saw and publishes again (before,
        // it stayed fenced for ever).
        outbox::relay_lease::Entity::update_many()
            .col_expr(outbox::relay_lease::Column::Generation, Expr::value(0))
            .exec(&db)
            .await
            .unwrap();
        put(4).await;
        assert!(b.take_lease("replica-b", lease).await.unwrap());
        let refused = b.publish_pending(&mut epoch).await.unwrap_err();
        assert!(refused.is::<erp_runtime::bus::Fenced>(), "{refused:#}");
        assert!(b.take_lease("replica-b", lease).await.unwrap());
        assert!(b.generation.load(Ordering::Relaxed) > first + 1);
        assert_eq!(b.publish_pending(&mut epoch).await.unwrap(), 1);
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{prefix}:events:{TOPIC}"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let order: Vec<i64> = entries
            .iter()
            .map(|(_, fields)| {
                let event: Event = serde_json::from_str(&fields[0].1).unwrap();
                event.payload["n"].as_i64().unwrap()
            })
            .collect();
        // Earlier backends' entries share the stream: this backend's are the last four.
        assert_eq!(order[order.len() - 4..], [1, 2, 3, 4], "{}", backend.name());
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}:relay-fence:inventory"))
            .query_async(&mut conn)
            .await
            .unwrap();
        db.close().await.unwrap();
    }
}

/// An entry on a stream that is not an event of ours (written by hand, or by a build whose
/// events this one cannot decode) neither blocks its group nor vanishes: it is set aside whole
/// on `<stream>:unreadable` and acknowledged, and the events after it are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_entry_is_set_aside_not_lost() {
    let Some(redis_url) = testing::redis_url() else {
        return;
    };
    let (settings, prefix, _dir) = redis_settings("t-junk", &redis_url);
    let run = settings.data_dir.display().to_string();
    let consumer = spawn::<Consumer>(&settings).await;
    let stream = format!("{prefix}:events:{TOPIC}");
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let junk: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("event")
        .arg("{not an event")
        .query_async(&mut conn)
        .await
        .unwrap();
    let publisher = spawn::<Publisher>(&settings).await;
    enqueue(&publisher, "k1", 1, false).await;
    wait_for(
        "the event after the junk applied",
        Duration::from_secs(20),
        async || applied(&run) == vec![("k1".to_owned(), 1)],
    )
    .await;
    let aside: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{stream}:unreadable"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(aside.len(), 1);
    let fields: std::collections::HashMap<_, _> = aside[0].1.iter().cloned().collect();
    assert_eq!(fields["group"], "procurement");
    assert_eq!(fields["id"], junk);
    assert_eq!(fields["event"], "{not an event");
    // XPENDING's summary starts with the count of entries read and not acknowledged.
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("procurement")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending[0], redis::Value::Int(0), "left pending");
    consumer.stop().await;
    publisher.stop().await;
}

/// Pruning, on SQLite and PostgreSQL: confirmed outbox rows past the retention go, unconfirmed
/// ones stay whatever their age; inbox entries go after twice the retention (an event can come
/// again as long as an outbox keeps it), not before; more than one batch goes in one round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_and_inbox_are_pruned_past_their_retention_only() {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let day: i64 = 86_400_000;
    for backend in testing::backends() {
        let (settings, _dir) = testing::settings(&backend, &[]);
        let db = erp_runtime::db::connect_and_migrate::<Tables>(&settings, "inventory")
            .await
            .unwrap();
        let now = erp_runtime::time::now_ms();
        // 6,000 inbox entries 15 days old (past 2 x 7 days), 10 entries 8 days old.
        let entries: Vec<outbox::processed::ActiveModel> = (0..6_010)
            .map(|n| outbox::processed::ActiveModel {
                consumer: sea_orm::ActiveValue::Set("procurement".into()),
                event_id: sea_orm::ActiveValue::Set(format!("e{n}")),
                // Distinct ages, so that the 6,000 take two batches of 5,000.
                processed_at_ms: sea_orm::ActiveValue::Set(
                    now - if n < 6_000 { 15 } else { 8 } * day - n,
                ),
            })
            .collect();
        for chunk in entries.chunks(1_000) {
            outbox::processed::Entity::insert_many(chunk.to_vec())
                .exec(&db)
                .await
                .unwrap();
        }
        // Three outbox rows: confirmed 8 days ago, confirmed 1 day ago, never confirmed.
        for n in 0..3 {
            outbox::enqueue(&db, TOPIC, "k", &serde_json::json!({ "n": n }))
                .await
                .unwrap();
        }
        let seqs: Vec<i64> = outbox::entity::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        for (seq, acked) in seqs
            .iter()
            .zip([Some(now - 8 * day), Some(now - day), None])
        {
            outbox::entity::Entity::update_many()
                .col_expr(
                    outbox::entity::Column::PublishedAtMs,
                    Expr::value(now - 9 * day),
                )
                .col_expr(outbox::entity::Column::AckedAtMs, Expr::value(acked))
                .filter(outbox::entity::Column::Seq.eq(*seq))
                .exec(&db)
                .await
                .unwrap();
        }
        let relay = relay_of(
            &db,
            Bus::from_settings(&settings.bus).await.unwrap(),
            &settings,
        );
        assert_eq!(relay.prune().await.unwrap(), 6_001, "{}", backend.name());
        assert_eq!(
            outbox::processed::Entity::find().count(&db).await.unwrap(),
            10,
            "{}",
            backend.name()
        );
        let left: Vec<i64> = outbox::entity::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, seqs[1..], "{}", backend.name());
        db.close().await.unwrap();
    }
}
