//! The event bus. Embedded mode delivers in process: the relay hands each event to every
//! subscribed consumer group and marks it published only when all of them succeeded, so a crash
//! mid-delivery means redelivery, never loss. Distributed mode uses Redis Streams: one stream
//! per topic, one consumer group per consuming service, XACK after the handler committed, and
//! XAUTOCLAIM to hand messages a dead consumer left pending to a live one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::AsyncCommands;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BusKind, BusSettings};

/// A fact published by a service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// UUIDv7; consumers deduplicate on it.
    pub id: String,
    pub topic: String,
    pub key: String,
    pub payload: serde_json::Value,
    pub occurred_at_ms: i64,
    /// W3C traceparent of the transaction that recorded the fact (may be empty).
    pub traceparent: String,
    /// The publishing service.
    pub source: String,
}

/// Per topic: the consumer group, its handler, and the token that stops it.
type Subscribers = HashMap<String, Vec<(String, Handler, CancellationToken)>>;

pub type Handler = Arc<dyn Fn(Event) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Builds a [`Handler`] from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |e| Box::pin(f(e)))
}

#[derive(Clone)]
pub enum Bus {
    InProcess(InProcessBus),
    Redis(Box<RedisBus>),
}

impl Bus {
    pub async fn from_settings(settings: &BusSettings) -> anyhow::Result<Self> {
        Ok(match settings.kind {
            BusKind::InProcess => Self::InProcess(InProcessBus::default()),
            BusKind::Redis => Self::Redis(Box::new(RedisBus::connect(settings).await?)),
        })
    }

    pub async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        match self {
            Self::InProcess(bus) => bus.publish(event).await,
            Self::Redis(bus) => bus.publish(event).await,
        }
    }

    /// Subscribes consumer `group` to `topic` until `shutdown`. In Redis mode this spawns a
    /// consumer loop on `tasks`. In both modes, events published while the consumer is stopped
    /// wait (in the publisher's outbox, or in the stream) until it subscribes again.
    pub async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        handler: Handler,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> anyhow::Result<()> {
        match self {
            Self::InProcess(bus) => {
                bus.subscribe(topic, group, handler, shutdown).await;
                Ok(())
            }
            Self::Redis(bus) => bus.subscribe(topic, group, handler, shutdown, tasks).await,
        }
    }
}

/// Delivery inside one process. Shared by every service of `erp up`.
#[derive(Clone, Default)]
pub struct InProcessBus {
    subscribers: Arc<RwLock<Subscribers>>,
}

impl InProcessBus {
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        handler: Handler,
        shutdown: CancellationToken,
    ) {
        let mut subscribers = self.subscribers.write().await;
        let groups = subscribers.entry(topic.to_owned()).or_default();
        // A group subscribing again (its service restarted) replaces its stopped self.
        groups.retain(|(g, _, stop)| g != group || !stop.is_cancelled());
        groups.push((group.to_owned(), handler, shutdown));
    }

    async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        let handlers: Vec<(String, Handler, CancellationToken)> = self
            .subscribers
            .read()
            .await
            .get(&event.topic)
            .cloned()
            .unwrap_or_default();
        for (group, handler, stopped) in handlers {
            if stopped.is_cancelled() {
                // Like a consumer group whose service is down: the event stays unpublished in
                // the outbox and is delivered once the group subscribes again.
                anyhow::bail!("consumer {group} of {} is stopped", event.topic);
            }
            handler(event.clone()).await.map_err(|e| {
                anyhow::anyhow!(
                    "consumer {group} failed on {} {}: {e:#}",
                    event.topic,
                    event.id
                )
            })?;
        }
        Ok(())
    }
}

/// Redis Streams.
#[derive(Clone)]
pub struct RedisBus {
    conn: redis::aio::ConnectionManager,
    client: redis::Client,
    prefix: String,
    redeliver_after: Duration,
    consumer_name: String,
}

impl RedisBus {
    pub async fn connect(settings: &BusSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
        Ok(Self {
            conn,
            client,
            prefix: settings.stream_prefix.clone(),
            redeliver_after: Duration::from_millis(settings.redeliver_after_ms),
            consumer_name: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
                uuid::Uuid::now_v7()
            ),
        })
    }

    fn stream(&self, topic: &str) -> String {
        format!("{}:events:{topic}", self.prefix)
    }

    async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let body = serde_json::to_string(event)?;
        let _: String = redis::cmd("XADD")
            .arg(self.stream(&event.topic))
            .arg("MAXLEN")
            .arg("~")
            .arg(1_000_000)
            .arg("*")
            .arg("event")
            .arg(body)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        handler: Handler,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> anyhow::Result<()> {
        let stream = self.stream(topic);
        let mut conn = self.conn.clone();
        // From the beginning of the stream: events published before this group first existed
        // (the consumer was down when they happened) are still delivered.
        let created: redis::RedisResult<String> =
            conn.xgroup_create_mkstream(&stream, group, "0").await;
        if let Err(e) = created
            && !e.to_string().contains("BUSYGROUP")
        {
            return Err(e.into());
        }
        let consumer = Consumer {
            client: self.client.clone(),
            conn,
            stream,
            group: group.to_owned(),
            name: self.consumer_name.clone(),
            handler,
            redeliver_after: self.redeliver_after,
        };
        tasks.spawn(consumer.run(shutdown));
        Ok(())
    }
}

struct Consumer {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    stream: String,
    group: String,
    name: String,
    handler: Handler,
    redeliver_after: Duration,
}

impl Consumer {
    async fn run(mut self, shutdown: CancellationToken) {
        // Blocking reads get their own connection so they do not stall the shared one.
        let mut blocking = loop {
            match self.client.get_multiplexed_async_connection().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(stream = %self.stream, error = %e, "redis unavailable, retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        // The client's default response timeout (500 ms) is shorter than the blocking read: a
        // read cut off by it loses the reply while the server has already delivered the
        // messages, which then wait in the pending list for XAUTOCLAIM.
        blocking.set_response_timeout(Duration::from_secs(10));
        let mut last_claim = std::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if last_claim.elapsed() >= self.redeliver_after / 4 {
                last_claim = std::time::Instant::now();
                if let Err(e) = self.claim_stale().await {
                    tracing::warn!(stream = %self.stream, error = %e, "claiming stale messages failed");
                }
            }
            let options = StreamReadOptions::default()
                .group(&self.group, &self.name)
                .count(64)
                .block(1000);
            let streams = [self.stream.as_str()];
            let read: redis::RedisResult<StreamReadReply> = tokio::select! {
                () = shutdown.cancelled() => return,
                r = blocking.xread_options(&streams, &[">"], &options) => r,
            };
            match read {
                Ok(reply) => {
                    for key in reply.keys {
                        for message in key.ids {
                            self.handle(message).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %self.stream, error = %e, "reading stream failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Takes over messages another consumer read but never acknowledged (it died).
    async fn claim_stale(&mut self) -> anyhow::Result<()> {
        let min_idle = u64::try_from(self.redeliver_after.as_millis()).unwrap_or(u64::MAX);
        let reply: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.name)
            .arg(min_idle)
            .arg("0-0")
            .arg("COUNT")
            .arg(64)
            .query_async(&mut self.conn)
            .await?;
        let claimed: redis::streams::StreamAutoClaimReply =
            redis::FromRedisValue::from_redis_value(reply)?;
        for message in claimed.claimed {
            self.handle(message).await;
        }
        Ok(())
    }

    async fn handle(&mut self, message: StreamId) {
        let event: Option<Event> = message
            .get::<String>("event")
            .and_then(|body| serde_json::from_str(&body).ok());
        let Some(event) = event else {
            tracing::error!(stream = %self.stream, id = %message.id, "unreadable message, acknowledging to skip it");
            let _: redis::RedisResult<i64> = self
                .conn
                .xack(&self.stream, &self.group, &[&message.id])
                .await;
            return;
        };
        match (self.handler)(event.clone()).await {
            Ok(()) => {
                let acked: redis::RedisResult<i64> = self
                    .conn
                    .xack(&self.stream, &self.group, &[&message.id])
                    .await;
                if let Err(e) = acked {
                    // Not acknowledged: it will be redelivered and deduplicated by the inbox.
                    tracing::warn!(event_id = %event.id, error = %e, "acknowledging failed");
                }
            }
            Err(e) => {
                // Left pending; XAUTOCLAIM redelivers it after `redeliver_after`.
                tracing::warn!(group = %self.group, event_id = %event.id, topic = %event.topic, error = %format!("{e:#}"), "event handler failed, will be redelivered");
            }
        }
    }
}
