//! The transactional outbox: facts are written in the same transaction as the state change that
//! makes them true, then a relay publishes them to the bus and marks them published. Consumers
//! record what they processed (the inbox) so a redelivery has no effect.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, ConnectionTrait, QueryOrder, QuerySelect};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Event};
use crate::error::{ApiError, ApiResult};

pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        pub event_id: String,
        pub topic: String,
        pub event_key: String,
        pub payload: String,
        pub occurred_at_ms: i64,
        pub traceparent: String,
        pub published_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod processed {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "processed_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub processed_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Writes an event into the outbox; call inside the transaction that makes it true.
pub async fn enqueue<C: ConnectionTrait, P: Serialize>(
    conn: &C,
    topic: &str,
    key: &str,
    payload: &P,
) -> ApiResult<String> {
    let event_id = Uuid::now_v7().to_string();
    let payload = serde_json::to_string(payload)
        .map_err(|e| ApiError::Internal(format!("encoding {topic} event: {e}")))?;
    entity::ActiveModel {
        event_id: Set(event_id.clone()),
        topic: Set(topic.to_owned()),
        event_key: Set(key.to_owned()),
        payload: Set(payload),
        occurred_at_ms: Set(crate::time::now_ms()),
        traceparent: Set(crate::telemetry::current_traceparent().unwrap_or_default()),
        published_at_ms: Set(None),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(event_id)
}

/// Records that `consumer` processed `event_id`; false when it already had (a redelivery).
/// Call inside the transaction that applies the event's effect.
pub async fn mark_processed<C: ConnectionTrait>(
    conn: &C,
    consumer: &str,
    event_id: &str,
) -> ApiResult<bool> {
    if processed::Entity::find_by_id((consumer.to_owned(), event_id.to_owned()))
        .one(conn)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    processed::ActiveModel {
        consumer: Set(consumer.to_owned()),
        event_id: Set(event_id.to_owned()),
        processed_at_ms: Set(crate::time::now_ms()),
    }
    .insert(conn)
    .await?;
    Ok(true)
}

/// Wakes the relay right after a commit, so events do not wait for the next poll.
#[derive(Clone, Default)]
pub struct OutboxWaker(Arc<Notify>);

impl OutboxWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Publishes unpublished outbox rows in order, marking each after the bus accepted it.
pub struct Relay {
    pub service: &'static str,
    pub db: DatabaseConnection,
    pub bus: Bus,
    pub waker: OutboxWaker,
    pub interval: Duration,
}

impl Relay {
    /// Publishes until `shutdown`; woken at once by [`OutboxWaker`], else every `interval`.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.publish_pending().await {
                Ok(n) if n > 0 => {
                    metrics::counter!("outbox_published_total", "service" => self.service)
                        .increment(n as u64);
                    continue;
                }
                Ok(_) => {
                    metrics::gauge!("outbox_pending_events", "service" => self.service).set(0.0);
                }
                Err(e) => {
                    tracing::warn!(service = self.service, error = %e, "outbox relay failed, will retry")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.waker.0.notified() => {}
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Publishes one batch; returns how many were published.
    pub async fn publish_pending(&self) -> anyhow::Result<usize> {
        let rows = entity::Entity::find()
            .filter(entity::Column::PublishedAtMs.is_null())
            .order_by_asc(entity::Column::Seq)
            .limit(100)
            .all(&self.db)
            .await?;
        let mut published = 0;
        for row in rows {
            let event = Event {
                id: row.event_id.clone(),
                topic: row.topic.clone(),
                key: row.event_key.clone(),
                payload: serde_json::from_str(&row.payload)?,
                occurred_at_ms: row.occurred_at_ms,
                traceparent: row.traceparent.clone(),
                source: self.service.to_owned(),
            };
            // Stop at the first failure so events of one key stay in order.
            self.bus.publish(&event).await?;
            crate::failpoint::hit(&["outbox", self.service, "after_publish"]).await;
            entity::Entity::update_many()
                .col_expr(
                    entity::Column::PublishedAtMs,
                    Expr::value(crate::time::now_ms()),
                )
                .filter(entity::Column::Seq.eq(row.seq))
                .exec(&self.db)
                .await?;
            published += 1;
        }
        Ok(published)
    }
}

/// How many events wait to be published (for health and tests).
pub async fn pending_count<C: ConnectionTrait>(conn: &C) -> ApiResult<u64> {
    Ok(entity::Entity::find()
        .filter(entity::Column::PublishedAtMs.is_null())
        .count(conn)
        .await?)
}
