//! Events as an operator sees them: each consumer counts the deliveries of an event it fails
//! on and, after enough of them over enough time, parks it as a dead letter instead of
//! failing forever (a poison event must not hold back the ones after it); dead letters are
//! listed and replayed through `erp.events.v1.EventsService`, which also reports what waits
//! and what is degraded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use erp_proto::events as pb;
use erp_proto::events::events_service_server::EventsServiceServer;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect, TransactionTrait};

use crate::auth::Caller;
use crate::bus::{Bus, Event, Handler};
use crate::error::{ApiError, ApiResult};

pub mod failure {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "event_failures")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub deliveries: i32,
        pub first_failed_at_ms: i64,
        pub last_error: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod dead_letter {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dead_letters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub topic: String,
        pub event_key: String,
        pub source: String,
        pub payload: String,
        pub occurred_at_ms: i64,
        pub traceparent: String,
        pub deliveries: i32,
        pub last_error: String,
        pub dead_at_ms: i64,
        pub replayed_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        pub fn event(&self) -> Result<crate::bus::Event, serde_json::Error> {
            Ok(crate::bus::Event {
                id: self.event_id.clone(),
                topic: self.topic.clone(),
                key: self.event_key.clone(),
                payload: serde_json::from_str(&self.payload)?,
                occurred_at_ms: self.occurred_at_ms,
                traceparent: self.traceparent.clone(),
                source: self.source.clone(),
            })
        }
    }
}

/// When a consumer gives up on an event.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterPolicy {
    pub max_deliveries: u32,
    pub after_ms: i64,
}

impl DeadLetterPolicy {
    pub fn from_settings(bus: &crate::config::BusSettings) -> Self {
        Self {
            max_deliveries: bus.max_deliveries.max(1),
            after_ms: i64::try_from(bus.dead_letter_after_ms).unwrap_or(i64::MAX),
        }
    }
}

/// Wraps `inner`, the handler of consumer group `consumer`: a failure is counted in the
/// consumer's database; once an event failed `max_deliveries` times and for longer than
/// `after_ms`, it is stored as a dead letter and reported as handled, so the bus moves on.
pub fn guarded(
    db: DatabaseConnection,
    consumer: &'static str,
    policy: DeadLetterPolicy,
    inner: Handler,
) -> Handler {
    let failing: Arc<Mutex<HashSet<String>>> = Arc::default();
    crate::bus::handler(move |event: Event| {
        let (db, inner, failing) = (db.clone(), inner.clone(), failing.clone());
        async move {
            match inner(event.clone()).await {
                Ok(()) => {
                    let was_failing = failing.lock().is_ok_and(|mut f| f.remove(&event.id));
                    if was_failing {
                        failure::Entity::delete_by_id((consumer.to_owned(), event.id.clone()))
                            .exec(&db)
                            .await?;
                    }
                    Ok(())
                }
                Err(error) => {
                    if let Ok(mut f) = failing.lock() {
                        f.insert(event.id.clone());
                    }
                    let text = format!("{error:#}");
                    if count_failure(&db, consumer, &event, &text, policy).await? {
                        tracing::error!(consumer, event_id = %event.id, topic = %event.topic, error = %text, "event dead-lettered after repeated failures");
                        metrics::counter!("events_dead_lettered_total", "consumer" => consumer, "topic" => event.topic.clone())
                            .increment(1);
                        if let Ok(mut f) = failing.lock() {
                            f.remove(&event.id);
                        }
                        return Ok(());
                    }
                    Err(error)
                }
            }
        }
    })
}

/// Counts one failed delivery; true when the event became a dead letter (in the same
/// transaction).
async fn count_failure(
    db: &DatabaseConnection,
    consumer: &str,
    event: &Event,
    error: &str,
    policy: DeadLetterPolicy,
) -> Result<bool, DbErr> {
    let now = crate::time::now_ms();
    let error: String = error.chars().take(2_000).collect();
    let txn = db.begin().await?;
    let key = (consumer.to_owned(), event.id.clone());
    let before = failure::Entity::find_by_id(key.clone())
        .lock_exclusive()
        .one(&txn)
        .await?;
    let (deliveries, first) = match &before {
        Some(f) => (f.deliveries.saturating_add(1), f.first_failed_at_ms),
        None => (1, now),
    };
    let dead = u32::try_from(deliveries).unwrap_or(u32::MAX) >= policy.max_deliveries
        && now.saturating_sub(first) >= policy.after_ms;
    if dead {
        failure::Entity::delete_by_id(key).exec(&txn).await?;
        let row = dead_letter::ActiveModel {
            consumer: Set(consumer.to_owned()),
            event_id: Set(event.id.clone()),
            topic: Set(event.topic.clone()),
            event_key: Set(event.key.clone()),
            source: Set(event.source.clone()),
            payload: Set(event.payload.to_string()),
            occurred_at_ms: Set(event.occurred_at_ms),
            traceparent: Set(event.traceparent.clone()),
            deliveries: Set(deliveries),
            last_error: Set(error),
            dead_at_ms: Set(now),
            replayed_at_ms: Set(None),
        };
        // A redelivery of an event already dead (two consumers raced) replaces nothing.
        dead_letter::Entity::insert(row)
            .on_conflict_do_nothing()
            .exec(&txn)
            .await?;
    } else if before.is_some() {
        failure::Entity::update_many()
            .col_expr(failure::Column::Deliveries, Expr::value(deliveries))
            .col_expr(failure::Column::LastError, Expr::value(error))
            .filter(failure::Column::Consumer.eq(consumer))
            .filter(failure::Column::EventId.eq(&event.id))
            .exec(&txn)
            .await?;
    } else {
        failure::Entity::insert(failure::ActiveModel {
            consumer: Set(consumer.to_owned()),
            event_id: Set(event.id.clone()),
            deliveries: Set(1),
            first_failed_at_ms: Set(now),
            last_error: Set(error),
        })
        .on_conflict_do_nothing()
        .exec(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(dead)
}

/// What the relay and the bus report, shared with [`EventsApi`].
#[derive(Clone, Default)]
pub struct Status(Arc<StatusInner>);

#[derive(Default)]
struct StatusInner {
    leader: AtomicBool,
    republished: AtomicU64,
}

impl Status {
    pub fn set_leader(&self, leader: bool) {
        self.0.leader.store(leader, Ordering::Relaxed);
    }

    pub fn republished(&self, n: u64) {
        self.0.republished.fetch_add(n, Ordering::Relaxed);
    }
}

/// The handlers of one service's consumers, by topic, for replays.
pub type Consumers = Arc<Mutex<HashMap<String, Handler>>>;

/// `erp.events.v1.EventsService` over one service's database.
pub struct EventsApi {
    pub db: DatabaseConnection,
    pub bus: Bus,
    pub status: Status,
    pub consumer: &'static str,
    pub consumers: Consumers,
}

impl EventsApi {
    pub fn server(self) -> EventsServiceServer<Self> {
        EventsServiceServer::new(self)
    }
}

fn to_wire(m: dead_letter::Model) -> pb::DeadLetter {
    pb::DeadLetter {
        consumer: m.consumer,
        event_id: m.event_id,
        topic: m.topic,
        event_key: m.event_key,
        source: m.source,
        payload_json: m.payload,
        deliveries: m.deliveries,
        last_error: m.last_error,
        dead_at: Some(crate::time::to_timestamp(m.dead_at_ms)),
        replayed_at: m.replayed_at_ms.map(crate::time::to_timestamp),
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl pb::events_service_server::EventsService for EventsApi {
    async fn get_events_status(
        &self,
        _request: tonic::Request<pb::GetEventsStatusRequest>,
    ) -> Result<tonic::Response<pb::GetEventsStatusResponse>, tonic::Status> {
        let dead = dead_letter::Entity::find()
            .filter(dead_letter::Column::ReplayedAtMs.is_null())
            .count(&self.db)
            .await
            .map_err(ApiError::from)?;
        Ok(tonic::Response::new(pb::GetEventsStatusResponse {
            outbox_unpublished: count(crate::outbox::pending_count(&self.db).await?),
            outbox_unacknowledged: count(crate::outbox::unacknowledged_count(&self.db).await?),
            dead_letters: count(dead),
            degraded: self.bus.degraded().unwrap_or_default(),
            relay_leader: self.status.0.leader.load(Ordering::Relaxed),
            republished: count(self.status.0.republished.load(Ordering::Relaxed)),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: tonic::Request<pb::ListDeadLettersRequest>,
    ) -> Result<tonic::Response<pb::ListDeadLettersResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut v = crate::validate::Violations::new();
        v.optional_text("topic", &req.topic, 200);
        if !(0..=500).contains(&req.page_size) {
            v.add("page_size", "must be 0..=500");
        }
        v.finish()?;
        let mut q = dead_letter::Entity::find();
        if !req.topic.is_empty() {
            q = q.filter(dead_letter::Column::Topic.eq(&req.topic));
        }
        if !req.include_replayed {
            q = q.filter(dead_letter::Column::ReplayedAtMs.is_null());
        }
        let limit = if req.page_size == 0 {
            100
        } else {
            req.page_size
        };
        let rows = q
            .order_by_desc(dead_letter::Column::DeadAtMs)
            .limit(u64::try_from(limit).unwrap_or(100))
            .all(&self.db)
            .await
            .map_err(ApiError::from)?;
        Ok(tonic::Response::new(pb::ListDeadLettersResponse {
            dead_letters: rows.into_iter().map(to_wire).collect(),
        }))
    }

    async fn replay_dead_letter(
        &self,
        request: tonic::Request<pb::ReplayDeadLetterRequest>,
    ) -> Result<tonic::Response<pb::ReplayDeadLetterResponse>, tonic::Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let mut v = crate::validate::Violations::new();
        v.text("event_id", &req.event_id, 200);
        v.text("reason", &req.reason, 500);
        v.finish()?;
        Ok(tonic::Response::new(pb::ReplayDeadLetterResponse {
            dead_letter: Some(self.replay(&caller, &req.event_id, &req.reason).await?),
        }))
    }
}

impl EventsApi {
    async fn replay(
        &self,
        caller: &Caller,
        event_id: &str,
        reason: &str,
    ) -> ApiResult<pb::DeadLetter> {
        let key = (self.consumer.to_owned(), event_id.to_owned());
        let dead = dead_letter::Entity::find_by_id(key.clone())
            .one(&self.db)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("dead letter {event_id}")))?;
        if dead.replayed_at_ms.is_some() {
            return Err(ApiError::precondition(
                "ALREADY_REPLAYED",
                format!("dead letter {event_id} was replayed already"),
            ));
        }
        let handler = self
            .consumers
            .lock()
            .ok()
            .and_then(|c| c.get(&dead.topic).cloned())
            .ok_or_else(|| {
                ApiError::precondition(
                    "NO_CONSUMER",
                    format!("{} no longer consumes {}", self.consumer, dead.topic),
                )
            })?;
        let event = dead
            .event()
            .map_err(|e| ApiError::Internal(format!("stored event {event_id} unreadable: {e}")))?;
        // The consumer's own inbox makes a replay of something it processed meanwhile a no-op.
        handler(event).await.map_err(|e| {
            ApiError::precondition("REPLAY_FAILED", format!("the consumer failed again: {e:#}"))
        })?;
        let txn = self.db.begin().await?;
        let updated = dead_letter::Entity::update_many()
            .col_expr(
                dead_letter::Column::ReplayedAtMs,
                Expr::value(crate::time::now_ms()),
            )
            .filter(dead_letter::Column::Consumer.eq(self.consumer))
            .filter(dead_letter::Column::EventId.eq(event_id))
            .filter(dead_letter::Column::ReplayedAtMs.is_null())
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Err(ApiError::precondition(
                "ALREADY_REPLAYED",
                format!("dead letter {event_id} was replayed concurrently"),
            ));
        }
        let after = dead_letter::Entity::find_by_id(key)
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::Internal("dead letter vanished".into()))?;
        crate::audit::record(
            &txn,
            crate::audit::Change {
                caller,
                target: format!("dead_letter:{event_id}"),
                reason,
                before: Some(serde_json::json!({ "replayed": false, "topic": dead.topic })),
                after: Some(serde_json::json!({ "replayed": true, "topic": after.topic })),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(to_wire(after))
    }
}
