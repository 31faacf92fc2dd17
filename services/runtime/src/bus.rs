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
use redis::streams::{StreamReadOptions, StreamReadReply};
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

/// Every consumer group of the suite and the topics it subscribes to. The relays keep an
/// event in their outbox (and on the stream) until each group listed for its topic processed
/// it, so a group must be listed here before it subscribes ([`crate::ServiceContext::subscribe`]
/// refuses one that is not): a group the relay does not know of could lose events.
pub const SUBSCRIPTIONS: &[(&str, &[&str])] = &[
    ("inventory.low_stock", &["procurement"]),
    (
        "inventory.stock_changed",
        &["finance", "orchestrator", "procurement"],
    ),
    ("order.accepted", &["orchestrator"]),
    ("order.cancelled", &["orchestrator"]),
    ("order.routing_rules_changed", &["orchestrator"]),
    ("warehouse.exception", &["orchestrator"]),
    ("warehouse.packed", &["orchestrator"]),
    ("warehouse.receipt_recorded", &["procurement"]),
    ("warehouse.shipped", &["orchestrator"]),
    ("warehouse.site_status_changed", &["orchestrator"]),
];

/// A relay's append refused: a relay with a newer lease generation (`newest`, the newest
/// Redis saw for the service) publishes this outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    pub newest: i64,
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fenced: a relay with a newer lease generation ({}) publishes this outbox",
            self.newest
        )
    }
}

impl std::error::Error for Fenced {}

/// The consumer groups subscribed to `topic` (none: nobody in the suite reads it).
pub fn groups_of(topic: &str) -> &'static [&'static str] {
    SUBSCRIPTIONS
        .iter()
        .find(|(t, _)| *t == topic)
        .map_or(&[], |(_, groups)| groups)
}

/// A Redis stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The next id after this one.
    pub fn next(self) -> Self {
        match self.1.checked_add(1) {
            Some(seq) => Self(self.0, seq),
            None => Self(self.0.saturating_add(1), 0),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// How far the consumer groups of one topic got, as the relay reads it from Redis.
#[derive(Debug, Default)]
pub struct Progress {
    /// Every entry below this id was processed by every expected group (`None`: a group does
    /// not exist yet, nothing counts as processed).
    pub acked_below: Option<StreamId>,
    /// Per expected group: entries not yet delivered plus delivered but not acknowledged.
    pub lag: Vec<(&'static str, u64)>,
}

#[derive(Clone)]
pub enum Bus {
    InProcess(InProcessBus),
    Redis(Box<RedisBus>),
}

impl Bus {
    pub async fn from_settings(settings: &BusSettings) -> anyhow::Result<Self> {
        Ok(match settings.kind {
            BusKind::InProcess => Self::InProcess(InProcessBus::strict()),
            BusKind::Redis => Self::Redis(Box::new(RedisBus::connect(settings).await?)),
        })
    }

    pub async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        match self {
            Self::InProcess(bus) => bus.publish(event).await,
            Self::Redis(bus) => bus.publish(event).await.map(|_| ()),
        }
    }

    /// What is degraded about the bus, if anything (Redis unreachable).
    pub fn degraded(&self) -> Option<String> {
        match self {
            Self::InProcess(_) => None,
            Self::Redis(bus) => bus.health.get(),
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
    /// Refuse an event while a group listed for its topic in [`SUBSCRIPTIONS`] has not
    /// subscribed yet (the suite's services start one after another: the first one's relay must
    /// not deliver its leftover events before the others listen, or they never get them). Off
    /// in tests that run one service, or subscribe groups of their own, with this bus.
    strict: bool,
}

impl InProcessBus {
    /// The bus of a whole suite in one process (`erp up`, `erp demo`): see `strict`.
    pub fn strict() -> Self {
        Self {
            subscribers: Arc::default(),
            strict: true,
        }
    }
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
        if self.strict {
            for group in groups_of(&event.topic) {
                if !handlers.iter().any(|(g, ..)| g == group) {
                    // Like a stopped group: the event waits in the outbox until it listens.
                    anyhow::bail!("consumer {group} of {} has not subscribed yet", event.topic);
                }
            }
        }
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

/// The last failure talking to Redis, cleared by the next success: what readiness and
/// `GetEventsStatus` report as degraded while the services keep serving.
#[derive(Clone, Default)]
pub struct Health(Arc<std::sync::Mutex<Option<String>>>);

impl Health {
    pub fn get(&self) -> Option<String> {
        self.0.lock().map(|g| g.clone()).unwrap_or(None)
    }

    fn record<T>(&self, result: &redis::RedisResult<T>) {
        let now = match result {
            Ok(_) => None,
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                Some(format!("bus: redis unreachable: {e}"))
            }
            Err(_) => return,
        };
        if let Ok(mut g) = self.0.lock() {
            if g.is_some() && now.is_none() {
                tracing::info!("redis reachable again");
            } else if g.is_none() && now.is_some() {
                tracing::warn!(
                    error = now.as_deref().unwrap_or_default(),
                    "redis unreachable; events wait in the outboxes"
                );
            }
            *g = now;
        }
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
    pub health: Health,
}

impl RedisBus {
    /// Connects lazily: a service starts (and serves) while Redis is down; its events wait in
    /// its outbox until Redis answers.
    pub async fn connect(settings: &BusSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)?;
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
            health: Health::default(),
        })
    }

    fn stream(&self, topic: &str) -> String {
        format!("{}:events:{topic}", self.prefix)
    }

    async fn publish(&self, event: &Event) -> anyhow::Result<String> {
        let mut conn = self.conn.clone();
        let id: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(self.stream(&event.topic))
            .arg("*")
            .arg("event")
            .arg(serde_json::to_string(event)?)
            .query_async(&mut conn)
            .await;
        self.health.record(&id);
        Ok(id?)
    }

    /// Appends `events` in order, atomically and in one round trip, if the bus is still the
    /// one of `epoch` (see [`RedisBus::epoch`]); returns each one's stream id, or `None` when
    /// the epoch changed (Redis lost its data: what it held must be published again first, or
    /// a key's later events would overtake its lost earlier ones). A topic nobody subscribes
    /// to is capped by length; the others are trimmed by the relay only below what every
    /// group processed ([`RedisBus::trim`]).
    ///
    /// `generation` is the publishing relay's lease generation for `service` (0: unfenced, in
    /// process or in tests): an append from a generation older than the newest one Redis saw
    /// for that service fails with [`Fenced`] and appends nothing.
    pub async fn publish_batch(
        &self,
        events: &[Event],
        epoch: &str,
        service: &str,
        generation: i64,
    ) -> anyhow::Result<Option<Vec<String>>> {
        static APPEND: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('EPOCH the bus lost its data')
end
local generation = tonumber(ARGV[2])
if generation > 0 then
  local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
  if generation < newest then
    return redis.error_reply('FENCED ' .. newest)
  end
  if generation > newest then
    redis.call('SET', KEYS[2], ARGV[2])
  end
end
local ids = {}
for i = 3, #KEYS do
  if ARGV[2 * i - 3] == '1' then
    ids[i - 2] = redis.call('XADD', KEYS[i], 'MAXLEN', '~', 100000, '*', 'event', ARGV[2 * i - 2])
  else
    ids[i - 2] = redis.call('XADD', KEYS[i], '*', 'event', ARGV[2 * i - 2])
  end
end
return ids
",
            )
        });
        let mut invocation = APPEND.key(self.epoch_key());
        invocation
            .key(format!("{}:relay-fence:{service}", self.prefix))
            .arg(epoch)
            .arg(generation);
        for event in events {
            invocation
                .key(self.stream(&event.topic))
                .arg(if groups_of(&event.topic).is_empty() {
                    "1"
                } else {
                    "0"
                })
                .arg(serde_json::to_string(event)?);
        }
        let mut conn = self.conn.clone();
        let ids: redis::RedisResult<Vec<String>> = invocation.invoke_async(&mut conn).await;
        self.health.record(&ids);
        match ids {
            Ok(ids) => Ok(Some(ids)),
            Err(e) if e.to_string().contains("EPOCH") => Ok(None),
            Err(e) if e.to_string().contains("FENCED") => {
                let newest = e
                    .to_string()
                    .split_whitespace()
                    .filter_map(|w| w.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
                    .next_back()
                    .unwrap_or(generation);
                Err(Fenced { newest }.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn epoch_key(&self) -> String {
        format!("{}:bus-epoch", self.prefix)
    }

    /// The bus's identity: a random token stored in Redis the first time it is asked for. A
    /// relay that finds a token other than the one it published under knows that Redis lost
    /// its data (restarted empty) and publishes again what no group confirmed.
    pub async fn epoch(&self) -> anyhow::Result<String> {
        let key = self.epoch_key();
        let mut conn = self.conn.clone();
        let fresh = uuid::Uuid::now_v7().to_string();
        // One round trip (Redis 7): the stored token, or ours when there was none.
        let old: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&key)
            .arg(&fresh)
            .arg("NX")
            .arg("GET")
            .query_async(&mut conn)
            .await;
        self.health.record(&old);
        Ok(old?.unwrap_or(fresh))
    }

    /// Which of `ids` are still on `topic`'s stream (a failover to a replica that missed the
    /// last writes loses entries without losing the epoch).
    pub async fn present(&self, topic: &str, ids: &[String]) -> anyhow::Result<Vec<bool>> {
        let stream = self.stream(topic);
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XRANGE").arg(&stream).arg(id).arg(id);
        }
        let mut conn = self.conn.clone();
        let found: Vec<Vec<redis::Value>> = pipe.query_async(&mut conn).await?;
        Ok(found
            .into_iter()
            .map(|entries| !entries.is_empty())
            .collect())
    }

    /// How far the groups expected on `topic` got.
    pub async fn progress(&self, topic: &str) -> anyhow::Result<Progress> {
        let stream = self.stream(topic);
        let mut conn = self.conn.clone();
        let infos: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
            conn.xinfo_groups(&stream).await;
        let infos = match infos {
            Ok(infos) => infos,
            // No stream yet (nothing published since Redis started): no group has read it.
            Err(e) if e.to_string().to_lowercase().contains("no such key") => {
                return Ok(Progress::default());
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Progress {
            acked_below: Some(StreamId(u64::MAX, u64::MAX)),
            lag: Vec::new(),
        };
        for group in groups_of(topic) {
            let Some(info) = infos.groups.iter().find(|g| g.name == *group) else {
                out.acked_below = None;
                continue;
            };
            let delivered = StreamId::parse(&info.last_delivered_id).unwrap_or_default();
            let below = if info.pending > 0 {
                let summary: redis::streams::StreamPendingReply =
                    conn.xpending(&stream, *group).await?;
                match summary {
                    redis::streams::StreamPendingReply::Data(d) => {
                        StreamId::parse(&d.start_id).unwrap_or_default()
                    }
                    _ => delivered.next(),
                }
            } else {
                delivered.next()
            };
            out.acked_below = out.acked_below.map(|b| b.min(below));
            let lag = info.lag.unwrap_or(0) as u64 + info.pending as u64;
            out.lag.push((group, lag));
        }
        Ok(out)
    }

    /// Drops the entries of `topic`'s stream below `below` (every group processed them).
    pub async fn trim(&self, topic: &str, below: StreamId) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("XTRIM")
            .arg(self.stream(topic))
            .arg("MINID")
            .arg(below.to_string())
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
        let consumer = Consumer {
            client: self.client.clone(),
            conn: self.conn.clone(),
            stream: self.stream(topic),
            group: group.to_owned(),
            name: self.consumer_name.clone(),
            handler,
            redeliver_after: self.redeliver_after,
            health: self.health.clone(),
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
    health: Health,
}

impl Consumer {
    /// Creates the group (and the stream) unless it exists, reading from the beginning of the
    /// stream: events published before the group existed (its service was down, or Redis
    /// restarted empty and the relays published again) are delivered too.
    async fn ensure_group(&mut self) -> redis::RedisResult<()> {
        let created: redis::RedisResult<String> = self
            .conn
            .xgroup_create_mkstream(&self.stream, &self.group, "0")
            .await;
        match created {
            Err(e) if !e.to_string().contains("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        // Blocking reads get their own connection so they do not stall the shared one; made
        // again after it broke (Redis restarted), which a multiplexed connection does not do.
        let mut blocking: Option<redis::aio::MultiplexedConnection> = None;
        let mut last_claim = std::time::Instant::now();
        let mut group_ready = false;
        let pause = |d: Duration| {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => false,
                    () = tokio::time::sleep(d) => true,
                }
            }
        };
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let conn = match &mut blocking {
                Some(c) => c,
                None => match self.client.get_multiplexed_async_connection().await {
                    Ok(mut c) => {
                        // The client's default response timeout (500 ms) is shorter than the
                        // blocking read: a read cut off by it loses the reply while the server
                        // has already delivered the messages, which then wait in the pending
                        // list for XAUTOCLAIM.
                        c.set_response_timeout(Duration::from_secs(10));
                        blocking.insert(c)
                    }
                    Err(e) => {
                        self.health.record(&Err::<(), _>(e.clone()));
                        tracing::debug!(stream = %self.stream, error = %e, "redis unavailable, retrying");
                        if !pause(Duration::from_secs(1)).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            if !group_ready {
                let created = self.ensure_group().await;
                self.health.record(&created);
                if let Err(e) = created {
                    tracing::debug!(stream = %self.stream, error = %e, "creating the consumer group failed, retrying");
                    if !pause(Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
                group_ready = true;
            }
            let options = StreamReadOptions::default()
                .group(&self.group, &self.name)
                .count(64)
                .block(1000);
            let streams = [self.stream.as_str()];
            let read: redis::RedisResult<StreamReadReply> = tokio::select! {
                () = shutdown.cancelled() => return,
                r = conn.xread_options(&streams, &[">"], &options) => r,
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
                    if e.to_string().contains("NOGROUP") {
                        // Redis restarted without its data: the group is gone; create it again.
                        group_ready = false;
                    } else {
                        self.health.record(&Err::<(), _>(e.clone()));
                        if e.is_io_error()
                            || e.is_connection_dropped()
                            || e.is_unrecoverable_error()
                        {
                            blocking = None;
                        }
                    }
                    tracing::warn!(stream = %self.stream, error = %e, "reading stream failed");
                    if !pause(Duration::from_millis(500)).await {
                        return;
                    }
                    continue;
                }
            }
            if last_claim.elapsed() >= self.redeliver_after / 4 {
                last_claim = std::time::Instant::now();
                if let Err(e) = self.claim_stale().await {
                    tracing::warn!(stream = %self.stream, error = %e, "claiming stale messages failed");
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

    async fn handle(&mut self, message: redis::streams::StreamId) {
        let event: Option<Event> = message
            .get::<String>("event")
            .and_then(|body| serde_json::from_str(&body).ok());
        let Some(event) = event else {
            // Not ours to read (written by hand, or by a build whose events this one cannot
            // decode): kept whole on `<stream>:unreadable` for whoever investigates, and only
            // then acknowledged, so that it neither blocks the group nor vanishes.
            let raw: Vec<(String, String)> = message
                .map
                .iter()
                .map(|(field, value)| {
                    let text = redis::from_redis_value_ref::<String>(value).unwrap_or_default();
                    (field.clone(), text)
                })
                .collect();
            let kept: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(format!("{}:unreadable", self.stream))
                .arg("MAXLEN")
                .arg("~")
                .arg(10_000)
                .arg("*")
                .arg("group")
                .arg(&self.group)
                .arg("id")
                .arg(&message.id)
                .arg(
                    raw.iter()
                        .flat_map(|(f, v)| [f.as_str(), v.as_str()])
                        .collect::<Vec<_>>(),
                )
                .query_async(&mut self.conn)
                .await;
            if let Err(e) = kept {
                // Left pending: tried again at its redelivery.
                tracing::warn!(stream = %self.stream, id = %message.id, error = %e, "unreadable message could not be set aside");
                return;
            }
            metrics::counter!("events_unreadable_total", "group" => self.group.clone())
                .increment(1);
            tracing::error!(stream = %self.stream, id = %message.id, "unreadable message set aside on the :unreadable stream");
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
