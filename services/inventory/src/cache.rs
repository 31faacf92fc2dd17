//! Available-to-promise served from Redis in distributed mode, so a storefront can ask at a high
//! rate without a database read each time, and never sees a figure higher than the truth once a
//! reservation has answered.
//!
//! Every sku has a generation counter, and there is one global counter (location status). A
//! cached figure carries the generations it was computed under and is served only while both
//! are current. A stock change bumps the sku's generation inside its transaction and again
//! after its commit, before it answers; a reader stores what it computed only if the
//! generation it started with is still current (an atomic compare-and-set script), so a figure
//! read before a commit can never be stored after it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;

tokio::task_local! {
    /// Skus changed by the current request, invalidated again once it has committed.
    static DIRTY: RefCell<Vec<String>>;
}

/// Availability of one sku per online location.
pub type PerLocation = BTreeMap<String, i64>;

#[derive(Clone)]
pub enum AtpCache {
    Disabled,
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
        ttl: Duration,
        /// Reads skip the cache until then (epoch ms) after Redis failed to answer, so that
        /// an outage costs one timeout, not one per read. Invalidations always try.
        skip_until: std::sync::Arc<std::sync::atomic::AtomicI64>,
    },
}

/// How long reads go straight to the database after Redis failed to answer.
const SKIP_AFTER_FAILURE_MS: i64 = 5_000;

const STORE_IF_CURRENT: &str = r"
local global = redis.call('GET', KEYS[1]) or '0'
local sku = redis.call('GET', KEYS[2]) or '0'
if global == ARGV[1] and sku == ARGV[2] then
  redis.call('SET', KEYS[3], ARGV[1] .. ':' .. ARGV[2] .. '|' .. ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
";

impl AtpCache {
    pub async fn from_settings(settings: &erp_runtime::Settings) -> anyhow::Result<Self> {
        if settings.bus.kind != erp_runtime::config::BusKind::Redis
            || settings.inventory.availability_cache_ms == 0
        {
            return Ok(Self::Disabled);
        }
        let client = redis::Client::open(settings.bus.redis_url.as_str())?;
        Ok(Self::Redis {
            // Lazily: inventory starts and serves (from its database) while Redis is down.
            conn: redis::aio::ConnectionManager::new_lazy_with_config(
                client,
                redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1),
            )?,
            prefix: format!("{}:atp", settings.bus.stream_prefix),
            ttl: Duration::from_millis(settings.inventory.availability_cache_ms),
            skip_until: Default::default(),
        })
    }

    fn keys(prefix: &str, sku: &str) -> (String, String, String) {
        (
            format!("{prefix}:gen"),
            format!("{prefix}:gen:{sku}"),
            format!("{prefix}:v:{sku}"),
        )
    }

    /// The cached figures of `sku`, if current; otherwise the generations to store under.
    pub async fn get(&self, sku: &str) -> Result<PerLocation, Option<(String, String)>> {
        let Self::Redis {
            conn,
            prefix,
            skip_until,
            ..
        } = self
        else {
            return Err(None);
        };
        let now = erp_runtime::time::now_ms();
        if now < skip_until.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(None);
        }
        let (g, s, v) = Self::keys(prefix, sku);
        let mut conn = conn.clone();
        let got: redis::RedisResult<(Option<String>, Option<String>, Option<String>)> =
            redis::pipe()
                .get(&g)
                .get(&s)
                .get(&v)
                .query_async(&mut conn)
                .await;
        let Ok((global, sku_gen, value)) = got else {
            skip_until.store(
                now + SKIP_AFTER_FAILURE_MS,
                std::sync::atomic::Ordering::Relaxed,
            );
            return Err(None);
        };
        let global = global.unwrap_or_else(|| "0".into());
        let sku_gen = sku_gen.unwrap_or_else(|| "0".into());
        if let Some(value) = value
            && let Some((tag, json)) = value.split_once('|')
            && tag == format!("{global}:{sku_gen}")
            && let Ok(figures) = serde_json::from_str(json)
        {
            return Ok(figures);
        }
        Err(Some((global, sku_gen)))
    }

    /// Stores figures computed after reading `generations`, unless a change happened since.
    pub async fn put(&self, sku: &str, generations: (String, String), figures: &PerLocation) {
        let Self::Redis {
            conn, prefix, ttl, ..
        } = self
        else {
            return;
        };
        let (g, s, v) = Self::keys(prefix, sku);
        let Ok(json) = serde_json::to_string(figures) else {
            return;
        };
        let mut conn = conn.clone();
        let stored: redis::RedisResult<i64> = redis::Script::new(STORE_IF_CURRENT)
            .key(g)
            .key(s)
            .key(v)
            .arg(generations.0)
            .arg(generations.1)
            .arg(json)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(2000))
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = stored {
            tracing::warn!(sku, error = %e, "caching availability failed");
        }
    }

    /// Makes cached figures of `sku` unservable. Called inside the changing transaction and
    /// again after it commits.
    pub async fn invalidate(&self, sku: &str) {
        let Self::Redis { conn, prefix, .. } = self else {
            return;
        };
        let _ = DIRTY.try_with(|d| d.borrow_mut().push(sku.to_owned()));
        let (_, s, v) = Self::keys(prefix, sku);
        let mut conn = conn.clone();
        let r: redis::RedisResult<()> = redis::pipe()
            .incr(&s, 1)
            .ignore()
            .del(&v)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::error!(sku, error = %e, "invalidating cached availability failed; figures may be stale until they expire");
        }
    }

    /// Makes every cached figure unservable (a location went offline or online).
    pub async fn invalidate_all(&self) {
        let Self::Redis { conn, prefix, .. } = self else {
            return;
        };
        let mut conn = conn.clone();
        let r: redis::RedisResult<i64> = conn.incr(format!("{prefix}:gen"), 1).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "invalidating cached availability failed");
        }
    }

    /// Runs a request, then invalidates again every sku it changed (after its commit).
    pub async fn tracked<F: std::future::Future>(&self, request: F) -> F::Output {
        if matches!(self, Self::Disabled) {
            return request.await;
        }
        let (out, dirty) = DIRTY
            .scope(RefCell::new(Vec::new()), async {
                let out = request.await;
                let dirty = DIRTY.with(|d| d.take());
                (out, dirty)
            })
            .await;
        let mut dirty = dirty;
        dirty.sort();
        dirty.dedup();
        for sku in dirty {
            self.invalidate(&sku).await;
        }
        out
    }
}
