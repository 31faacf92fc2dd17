//! The transactional outbox: facts are written in the same transaction as the state change that
//! makes them true, then a relay publishes them to the bus and marks them published. Consumers
//! record what they processed (the inbox) so a redelivery has no effect.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sea_orm::entity::prelude::*;

use sea_orm::{ActiveValue::Set, ConnectionTrait, QueryOrder, QuerySelect, TransactionTrait};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Event, StreamId};
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
        /// Where on the bus it went (a Redis stream entry id; empty in process).
        pub stream_id: String,
        /// When every consumer group subscribed to the topic had processed it.
        pub acked_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The relay's lease: one row, held by the replica that publishes.
pub mod relay_lease {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox_relay")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub owner: String,
        pub until_ms: i64,
        /// The bus epoch the outbox last published under (see `RedisBus::epoch`).
        pub bus_epoch: String,
        /// Bumped each time the lease changes hands: the fencing token a relay appends with.
        /// Redis refuses appends from a generation older than the newest it saw, so a relay
        /// that stalled past its lease (a pause, a slow disk) cannot publish behind its
        /// successor's back and break a key's order.
        pub generation: i64,
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
        stream_id: Set(String::new()),
        acked_at_ms: Set(None),
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

/// Publishes unpublished outbox rows in order and keeps them until every consumer group
/// subscribed to their topic processed them. Runs on every replica; the one holding the
/// lease publishes.
pub struct Relay {
    pub service: &'static str,
    pub db: DatabaseConnection,
    pub bus: Bus,
    pub waker: OutboxWaker,
    pub settings: crate::config::BusSettings,
    pub status: crate::events::Status,
    /// The lease generation this relay holds (0: none, or in process; -1: just fenced).
    pub generation: std::sync::atomic::AtomicI64,
    /// The newest generation Redis reported when it fenced this relay: the next lease this
    /// relay takes is above it (the database's count can be behind Redis's after a restore).
    pub fence_floor: std::sync::atomic::AtomicI64,
}

/// Rows one publish reads.
const BATCH: u64 = 200;

/// How often the leader reads the groups' progress from Redis (acknowledgements, lag, loss).
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// How often acknowledged rows past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Rows one prune statement deletes.
const PRUNE_BATCH: u64 = 5_000;

/// A published row not confirmed for this long is looked for on its stream (a failover may
/// have dropped it without the bus losing its epoch).
const CHECK_PRESENT_AFTER_MS: i64 = 30_000;

impl Relay {
    /// The relay of `service`'s outbox in `db`, holding no lease yet.
    pub fn new(
        service: &'static str,
        db: DatabaseConnection,
        bus: Bus,
        waker: OutboxWaker,
        settings: crate::config::BusSettings,
        status: crate::events::Status,
    ) -> Self {
        Self {
            service,
            db,
            bus,
            waker,
            settings,
            status,
            generation: std::sync::atomic::AtomicI64::new(0),
            fence_floor: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Publishes until `shutdown`; woken at once by [`OutboxWaker`], else every `interval`.
    pub async fn run(self, shutdown: CancellationToken) {
        let owner = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
            Uuid::now_v7()
        );
        let interval = Duration::from_millis(self.settings.relay_interval_ms);
        let lease = Duration::from_millis(self.settings.relay_lease_ms.max(1));
        let mut held_since: Option<std::time::Instant> = None;
        let mut last_sweep: Option<std::time::Instant> = None;
        let mut last_prune: Option<std::time::Instant> = None;
        // The bus epoch this relay checked its outbox against (empty: not yet).
        let mut epoch = String::new();
        while !shutdown.is_cancelled() {
            if held_since.is_some() && self.generation.load(Ordering::Relaxed) < 0 {
                // Fenced: a newer relay publishes; ask for the lease again.
                held_since = None;
            }
            if held_since.is_none_or(|t| t.elapsed() >= lease / 3) {
                held_since = match self.take_lease(&owner, lease).await {
                    Ok(true) => Some(std::time::Instant::now()),
                    Ok(false) => None,
                    Err(e) => {
                        tracing::warn!(service = self.service, error = %e, "relay lease check failed");
                        None
                    }
                };
                self.status.set_leader(held_since.is_some());
            }
            let mut more = false;
            if held_since.is_some() {
                match self.publish_pending(&mut epoch).await {
                    Ok(n) => {
                        if n > 0 {
                            metrics::counter!("outbox_published_total", "service" => self.service)
                                .increment(n as u64);
                        }
                        more = n as u64 >= BATCH;
                    }
                    Err(e) => {
                        tracing::warn!(service = self.service, error = %format!("{e:#}"), "outbox relay failed, will retry")
                    }
                }
                if self.generation.load(Ordering::Relaxed) < 0 {
                    // Fenced just now: no sweep or prune until the lease is ours again.
                    continue;
                }
                if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                    last_sweep = Some(std::time::Instant::now());
                    if let Err(e) = self.sweep(&mut epoch).await {
                        tracing::warn!(service = self.service, error = %format!("{e:#}"), "outbox sweep failed, will retry");
                    }
                }
                if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(std::time::Instant::now());
                    if let Err(e) = self.prune().await {
                        tracing::warn!(service = self.service, error = %e, "outbox prune failed");
                    }
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.waker.0.notified(), if held_since.is_some() => {}
                () = tokio::time::sleep(if held_since.is_some() { interval } else { lease / 3 }) => {}
            }
        }
        if held_since.is_some() {
            // Hand over at once rather than after the lease runs out.
            let _ = relay_lease::Entity::update_many()
                .col_expr(relay_lease::Column::UntilMs, Expr::value(0))
                .filter(relay_lease::Column::Id.eq(1))
                .filter(relay_lease::Column::Owner.eq(&owner))
                .exec(&self.db)
                .await;
        }
    }

    /// Takes or renews the lease; true while this replica holds it (and its generation is
    /// then in [`Relay::generation`]). In process (embedded mode: one process owns its
    /// databases) there is nobody to share with.
    pub async fn take_lease(&self, owner: &str, lease: Duration) -> Result<bool, DbErr> {
        if matches!(self.bus, Bus::InProcess(_)) {
            return Ok(true);
        }
        let clock = Expr::cust(crate::db::clock_ms_sql(self.db.get_database_backend()));
        let ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        // A new holder gets the next generation; a renewal keeps its own. Both stay above the
        // newest generation Redis fenced this relay with.
        let floor = self.fence_floor.load(Ordering::Relaxed);
        let generation = sea_orm::sea_query::CaseStatement::new()
            .case(
                sea_orm::Condition::all()
                    .add(relay_lease::Column::Owner.eq(owner))
                    .add(relay_lease::Column::Generation.gt(floor)),
                Expr::col(relay_lease::Column::Generation),
            )
            .case(
                relay_lease::Column::Generation.gt(floor),
                sea_orm::sea_query::ExprTrait::add(Expr::col(relay_lease::Column::Generation), 1),
            )
            .finally(Expr::value(floor.saturating_add(1)));
        let taken = relay_lease::Entity::update_many()
            .col_expr(relay_lease::Column::Generation, generation.into())
            .col_expr(relay_lease::Column::Owner, Expr::value(owner))
            .col_expr(
                relay_lease::Column::UntilMs,
                Expr::cust(format!(
                    "{} + {ms}",
                    crate::db::clock_ms_sql(self.db.get_database_backend())
                )),
            )
            .filter(relay_lease::Column::Id.eq(1))
            .filter(
                sea_orm::Condition::any()
                    .add(relay_lease::Column::Owner.eq(owner))
                    .add(sea_orm::sea_query::ExprTrait::lt(
                        Expr::col(relay_lease::Column::UntilMs),
                        clock,
                    )),
            )
            .exec(&self.db)
            .await?;
        if taken.rows_affected != 1 {
            self.generation.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        let held = relay_lease::Entity::find_by_id(1)
            .filter(relay_lease::Column::Owner.eq(owner))
            .one(&self.db)
            .await?;
        let generation = held.map_or(0, |l| l.generation);
        self.generation.store(generation, Ordering::Relaxed);
        Ok(generation > 0)
    }

    /// Publishes one batch in order; returns how many were published. In process, an event a
    /// consumer refuses holds back the later events of its key only (their order is kept),
    /// not the others; on Redis the batch is one pipeline.
    pub async fn publish_pending(&self, epoch: &mut String) -> anyhow::Result<usize> {
        if let Bus::Redis(bus) = &self.bus
            && epoch.is_empty()
        {
            self.check_epoch(bus, epoch).await?;
        }
        let rows = entity::Entity::find()
            .filter(entity::Column::PublishedAtMs.is_null())
            .order_by_asc(entity::Column::Seq)
            .limit(BATCH)
            .all(&self.db)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let events = rows
            .iter()
            .map(|row| {
                Ok(Event {
                    id: row.event_id.clone(),
                    topic: row.topic.clone(),
                    key: row.event_key.clone(),
                    payload: serde_json::from_str(&row.payload)?,
                    occurred_at_ms: row.occurred_at_ms,
                    traceparent: row.traceparent.clone(),
                    source: self.service.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let now = crate::time::now_ms();
        // (seq, stream id, acknowledged already)
        let mut done: Vec<(i64, String, bool)> = Vec::with_capacity(rows.len());
        let mut failure = None;
        match &self.bus {
            Bus::Redis(bus) => {
                let generation = self.generation.load(Ordering::Relaxed);
                let ids = match bus
                    .publish_batch(&events, epoch, self.service, generation)
                    .await
                {
                    Err(e) if e.is::<crate::bus::Fenced>() => {
                        // Marked so that `run` asks for the lease again; should it still be
                        // ours (the database restored to an older generation), the next one is
                        // taken above what Redis has seen.
                        if let Some(f) = e.downcast_ref::<crate::bus::Fenced>() {
                            self.fence_floor.fetch_max(f.newest, Ordering::Relaxed);
                        }
                        self.generation.store(-1, Ordering::Relaxed);
                        tracing::warn!(
                            service = self.service,
                            generation,
                            "relay fenced: a newer relay holds the lease; nothing appended"
                        );
                        return Err(e);
                    }
                    other => other?,
                };
                let Some(ids) = ids else {
                    // Redis lost its data since: what it held goes again, first.
                    epoch.clear();
                    self.check_epoch(bus, epoch).await?;
                    return Ok(0);
                };
                for (row, id) in rows.iter().zip(ids) {
                    done.push((row.seq, id, crate::bus::groups_of(&row.topic).is_empty()));
                }
            }
            Bus::InProcess(_) => {
                let mut held: std::collections::HashSet<(&str, &str)> = Default::default();
                for (row, event) in rows.iter().zip(&events) {
                    let key = (row.topic.as_str(), row.event_key.as_str());
                    if held.contains(&key) {
                        continue;
                    }
                    match self.bus.publish(event).await {
                        // Every group processed it before publish returned.
                        Ok(()) => done.push((row.seq, String::new(), true)),
                        Err(e) => {
                            held.insert(key);
                            failure.get_or_insert(e);
                        }
                    }
                }
            }
        }
        crate::failpoint::hit(&["outbox", self.service, "after_publish"]).await;
        let published = done.len();
        if !done.is_empty() {
            let txn = self.db.begin().await?;
            let acked: Vec<i64> = done.iter().filter(|d| d.2).map(|d| d.0).collect();
            if !acked.is_empty() {
                entity::Entity::update_many()
                    .col_expr(entity::Column::PublishedAtMs, Expr::value(now))
                    .col_expr(entity::Column::AckedAtMs, Expr::value(now))
                    .filter(entity::Column::Seq.is_in(acked))
                    .exec(&txn)
                    .await?;
            }
            for (seq, id, _) in done.into_iter().filter(|d| !d.2) {
                entity::Entity::update_many()
                    .col_expr(entity::Column::PublishedAtMs, Expr::value(now))
                    .col_expr(entity::Column::StreamId, Expr::value(id))
                    .filter(entity::Column::Seq.eq(seq))
                    .exec(&txn)
                    .await?;
            }
            txn.commit().await?;
        }
        match failure {
            Some(e) if published == 0 => Err(e),
            Some(e) => {
                tracing::warn!(service = self.service, error = %format!("{e:#}"), "an event was refused; later events of its key wait");
                Ok(published)
            }
            None => Ok(published),
        }
    }

    /// On Redis: confirms rows every group processed (and trims the streams below them),
    /// publishes again what the bus lost, and reports lag. In process there is nothing to do:
    /// rows are confirmed as they are published.
    async fn sweep(&self, epoch: &mut String) -> anyhow::Result<()> {
        let unpublished = pending_count(&self.db).await?;
        metrics::gauge!("outbox_pending_events", "service" => self.service).set(unpublished as f64);
        let Bus::Redis(bus) = &self.bus else {
            return Ok(());
        };
        if !self.check_epoch(bus, epoch).await? {
            return Ok(());
        }
        let topics: Vec<String> = entity::Entity::find()
            .select_only()
            .column(entity::Column::Topic)
            .distinct()
            .filter(entity::Column::PublishedAtMs.is_not_null())
            .filter(entity::Column::AckedAtMs.is_null())
            .into_tuple()
            .all(&self.db)
            .await?;
        let now = crate::time::now_ms();
        for topic in topics {
            let progress = bus.progress(&topic).await?;
            for (group, lag) in &progress.lag {
                metrics::gauge!("events_consumer_lag", "topic" => topic.clone(), "group" => *group)
                    .set(*lag as f64);
            }
            let rows: Vec<(i64, String, i64)> = entity::Entity::find()
                .select_only()
                .columns([
                    entity::Column::Seq,
                    entity::Column::StreamId,
                    entity::Column::PublishedAtMs,
                ])
                .filter(entity::Column::Topic.eq(&topic))
                .filter(entity::Column::PublishedAtMs.is_not_null())
                .filter(entity::Column::AckedAtMs.is_null())
                .order_by_asc(entity::Column::Seq)
                .limit(10_000)
                .into_tuple()
                .all(&self.db)
                .await?;
            let complete = rows.len() < 10_000;
            let below = progress.acked_below;
            let (below_groups, open): (Vec<_>, Vec<_>) =
                rows.into_iter().partition(|(_, id, _)| {
                    below.is_some_and(|b| StreamId::parse(id).is_some_and(|id| id < b))
                });
            // Below every group's position is no proof of delivery: entries a failover dropped
            // (the epoch survived) fall below it too once newer ones were read. Only this sweep
            // trims a grouped topic, so an entry not on the stream now was lost. The rows
            // unconfirmed for long are checked as well (nothing newer was read past them).
            let mut check: Vec<&(i64, String, i64)> = below_groups.iter().collect();
            check.extend(
                open.iter()
                    .filter(|r| now - r.2 > CHECK_PRESENT_AFTER_MS)
                    .take(1_000),
            );
            let below_seqs: std::collections::HashSet<i64> =
                below_groups.iter().map(|r| r.0).collect();
            let mut lost_from: Option<i64> = None;
            let mut acked = Vec::with_capacity(below_groups.len());
            for chunk in check.chunks(1_000) {
                let ids: Vec<String> = chunk.iter().map(|r| r.1.clone()).collect();
                let present = bus.present(&topic, &ids).await?;
                for (r, p) in chunk.iter().zip(present) {
                    if !p {
                        lost_from = Some(lost_from.map_or(r.0, |l| l.min(r.0)));
                    } else if below_seqs.contains(&r.0) {
                        acked.push(r.0);
                    }
                }
            }
            if let Some(first) = lost_from {
                // Everything unconfirmed of the topic from the first lost row on goes again,
                // in order: a key's later event must not overtake its lost earlier one.
                let again = entity::Entity::update_many()
                    .col_expr(
                        entity::Column::PublishedAtMs,
                        Expr::value(Option::<i64>::None),
                    )
                    .col_expr(entity::Column::StreamId, Expr::value(""))
                    .filter(entity::Column::Topic.eq(&topic))
                    .filter(entity::Column::PublishedAtMs.is_not_null())
                    .filter(entity::Column::AckedAtMs.is_null())
                    .filter(entity::Column::Seq.gte(first))
                    .exec(&self.db)
                    .await?;
                tracing::warn!(service = self.service, %topic, events = again.rows_affected, "events missing from their stream; publishing them again");
                self.status.republished(again.rows_affected);
                metrics::counter!("outbox_republished_total", "service" => self.service)
                    .increment(again.rows_affected);
                self.waker.wake();
                acked.retain(|seq| *seq < first);
            }
            for chunk in acked.chunks(500) {
                entity::Entity::update_many()
                    .col_expr(entity::Column::AckedAtMs, Expr::value(now))
                    .filter(entity::Column::Seq.is_in(chunk.iter().copied()))
                    .exec(&self.db)
                    .await?;
            }
            // Trim only when every row below the groups' position was seen and confirmed.
            if let Some(b) = below
                && complete
                && lost_from.is_none()
                && !acked.is_empty()
            {
                bus.trim(&topic, b).await?;
            }
        }
        Ok(())
    }

    /// Compares the bus's epoch with the one the outbox last published under; when Redis lost
    /// its data (restarted empty, or is another Redis), every row no group confirmed is made
    /// unpublished again, to go out in order before anything newer. False when it did.
    async fn check_epoch(
        &self,
        bus: &crate::bus::RedisBus,
        epoch: &mut String,
    ) -> anyhow::Result<bool> {
        let current = bus.epoch().await?;
        if *epoch == current {
            return Ok(true);
        }
        let stored = relay_lease::Entity::find_by_id(1)
            .one(&self.db)
            .await?
            .map(|l| l.bus_epoch)
            .unwrap_or_default();
        if stored == current {
            *epoch = current;
            return Ok(true);
        }
        let txn = self.db.begin().await?;
        let again = entity::Entity::update_many()
            .col_expr(
                entity::Column::PublishedAtMs,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(entity::Column::StreamId, Expr::value(""))
            .filter(entity::Column::PublishedAtMs.is_not_null())
            .filter(entity::Column::AckedAtMs.is_null())
            .exec(&txn)
            .await?;
        relay_lease::Entity::update_many()
            .col_expr(relay_lease::Column::BusEpoch, Expr::value(current.clone()))
            .filter(relay_lease::Column::Id.eq(1))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        if !stored.is_empty() && again.rows_affected > 0 {
            tracing::warn!(
                service = self.service,
                events = again.rows_affected,
                "the bus lost its data; publishing again what no consumer confirmed"
            );
            self.status.republished(again.rows_affected);
            metrics::counter!("outbox_republished_total", "service" => self.service)
                .increment(again.rows_affected);
        }
        *epoch = current;
        self.waker.wake();
        Ok(false)
    }

    /// Deletes confirmed rows older than the retention.
    /// Deletes confirmed outbox rows older than the retention, and inbox entries older than
    /// twice that (an event can come again as long as an outbox keeps it, so its inbox entry
    /// must outlive it). In batches (short transactions), until none are left or this
    /// round's time is up; the next round goes on.
    pub async fn prune(&self) -> Result<u64, DbErr> {
        const ROUND: Duration = Duration::from_secs(5);
        let retention = i64::try_from(self.settings.outbox_retention_ms).unwrap_or(i64::MAX / 4);
        let now = crate::time::now_ms();
        let started = std::time::Instant::now();
        let mut deleted = 0;
        loop {
            let old: Vec<i64> = entity::Entity::find()
                .select_only()
                .column(entity::Column::Seq)
                .filter(entity::Column::AckedAtMs.lt(now - retention))
                .limit(PRUNE_BATCH)
                .into_tuple()
                .all(&self.db)
                .await?;
            let full = old.len() as u64 == PRUNE_BATCH;
            if !old.is_empty() {
                deleted += entity::Entity::delete_many()
                    .filter(entity::Column::Seq.is_in(old))
                    .exec(&self.db)
                    .await?
                    .rows_affected;
            }
            if !full || started.elapsed() >= ROUND {
                break;
            }
        }
        let cutoff = now - retention.saturating_mul(2);
        loop {
            // The newest age among the oldest batch bounds one delete (by the age index).
            let bound: Option<i64> = processed::Entity::find()
                .select_only()
                .column(processed::Column::ProcessedAtMs)
                .filter(processed::Column::ProcessedAtMs.lt(cutoff))
                .order_by_asc(processed::Column::ProcessedAtMs)
                .offset(PRUNE_BATCH - 1)
                .limit(1)
                .into_tuple()
                .one(&self.db)
                .await?;
            deleted += processed::Entity::delete_many()
                .filter(processed::Column::ProcessedAtMs.lt(cutoff))
                .filter(processed::Column::ProcessedAtMs.lte(bound.unwrap_or(cutoff)))
                .exec(&self.db)
                .await?
                .rows_affected;
            if bound.is_none() || started.elapsed() >= ROUND {
                break;
            }
        }
        Ok(deleted)
    }
}

/// How many events wait to be published (for health and tests).
pub async fn pending_count<C: ConnectionTrait>(conn: &C) -> ApiResult<u64> {
    Ok(entity::Entity::find()
        .filter(entity::Column::PublishedAtMs.is_null())
        .count(conn)
        .await?)
}

/// How many published events some subscribed group has not processed yet.
pub async fn unacknowledged_count<C: ConnectionTrait>(conn: &C) -> ApiResult<u64> {
    Ok(entity::Entity::find()
        .filter(entity::Column::PublishedAtMs.is_not_null())
        .filter(entity::Column::AckedAtMs.is_null())
        .count(conn)
        .await?)
}
