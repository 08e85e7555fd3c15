//! The Redis profile store (single node or Redis Cluster), pooled with deadpool-redis.
//!
//! Key = `key_prefix` + user id. Value = the user's experiment bucket map as JSON,
//! `{"<experiment id>": {"variation_id": "<variation id>"}}`: exactly what the Optimizely
//! Agent's Redis user profile service writes (it stores the bare map under the bare user id), so
//! with an empty prefix bucketd and the Agent share profiles. Values in the SDKs' full schema,
//! `{"user_id": ..., "experiment_bucket_map": {...}}`, are read too (and rewritten in the
//! Agent's form on the next save).
//!
//! `save` merges atomically on the server with a Lua script (EVALSHA, EVAL on NOSCRIPT), so
//! concurrent saves for one user never lose an entry. Every operation, including taking a
//! connection from the pool, is bounded by `timeout`.

use super::{ExperimentBucket, ProfileStore, StoredProfile};
use crate::BackendError;
use deadpool_redis::redis::{self, aio::ConnectionLike, ErrorKind, RedisError, ServerErrorKind};
use deadpool_redis::{PoolConfig, PoolError, Runtime, Timeouts};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

const BACKEND: &str = "redis";

/// Default number of pooled connections.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Default bound on one operation (connection checkout + command).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Merges ARGV[1] (a JSON bucket map) into the JSON stored at KEYS[1] and writes it back in the
/// Agent's form, with a PX of ARGV[2] ms when that is not 0. Reads a stored value in the Agent's
/// form or in the SDKs' `{user_id, experiment_bucket_map}` form; stored entries that are not
/// `{"variation_id": "<string>"}` (or a value that is not JSON at all) are dropped, so a save
/// always leaves a readable profile. Returns 1 when something was dropped, 0 otherwise.
const MERGE_SCRIPT: &str = r#"
local incoming = cjson.decode(ARGV[1])
local stored = redis.call('GET', KEYS[1])
local map = {}
local dropped = 0
if stored then
  local ok, decoded = pcall(cjson.decode, stored)
  if ok and type(decoded) == 'table' and type(decoded['experiment_bucket_map']) == 'table' then
    decoded = decoded['experiment_bucket_map']
  end
  if ok and type(decoded) == 'table' then
    for experiment, bucket in pairs(decoded) do
      if type(experiment) == 'string' and type(bucket) == 'table'
          and type(bucket['variation_id']) == 'string' then
        map[experiment] = bucket
      else
        dropped = 1
      end
    end
  else
    dropped = 1
  end
end
for experiment, bucket in pairs(incoming) do
  map[experiment] = bucket
end
local encoded = cjson.encode(map)
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], encoded, 'PX', ttl)
else
  redis.call('SET', KEYS[1], encoded)
end
return dropped
"#;

/// Settings of the Redis store (`type = "redis"`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS. With `cluster = true`,
    /// a comma-separated list of seed node URLs.
    pub url: String,
    /// Maximum number of pooled connections.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Bound on one operation, connecting included (humantime, e.g. `"50ms"`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Prepended to the user id to form the key. Empty (the Agent's layout) by default.
    #[serde(default)]
    pub key_prefix: String,
    /// Expiry of a profile after its last save; none by default.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Talk to a Redis Cluster instead of a single node.
    #[serde(default)]
    pub cluster: bool,
}

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

impl RedisConfig {
    /// A config for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
            key_prefix: String::new(),
            ttl: None,
            cluster: false,
        }
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), BackendError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(BackendError::fatal(BACKEND, "url is empty"));
        }
        if !self.cluster && urls.len() > 1 {
            return Err(BackendError::fatal(
                BACKEND,
                "several urls need cluster = true",
            ));
        }
        for url in &urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(BackendError::fatal(
                    BACKEND,
                    format!(
                        "url `{}` must start with redis:// or rediss://",
                        redact(url)
                    ),
                ));
            }
            redis::parse_redis_url(url).ok_or_else(|| {
                BackendError::fatal(BACKEND, format!("invalid url `{}`", redact(url)))
            })?;
        }
        if self.pool_size == 0 {
            return Err(BackendError::fatal(BACKEND, "pool_size must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(BackendError::fatal(BACKEND, "timeout must be positive"));
        }
        if self.ttl.is_some_and(|ttl| ttl.as_millis() == 0) {
            return Err(BackendError::fatal(BACKEND, "ttl must be at least 1ms"));
        }
        Ok(())
    }

    fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect()
    }
}

/// Hides the password of a Redis URL (`redis://user:***@host`).
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("ttl", &self.ttl)
            .field("cluster", &self.cluster)
            .finish()
    }
}

enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A connection of either kind: single-node operations share one multiplexed connection
/// (pipelined, cheap to clone); cluster ones check out of the pool.
enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A profile store in Redis.
pub struct RedisStore {
    pool: Pool,
    /// The shared single-node connection, taken from the pool once and reused (a pool checkout
    /// costs an UNWATCH+PING round trip). Dropped after a connection error; the next operation
    /// takes a fresh one from the pool.
    shared: std::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    key_prefix: String,
    /// Expiry in milliseconds; 0 for none (the script's convention).
    ttl_ms: u64,
    timeout: Duration,
    merge: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.pool, Pool::Cluster(_)))
            .field("key_prefix", &self.key_prefix)
            .field("ttl_ms", &self.ttl_ms)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStore {
    /// Validates the config, builds the pool and pings the server once.
    ///
    /// Bad settings and refused credentials are `Fatal`. An unreachable server is not an error
    /// here: it is logged, and each operation reports it (retryably) until the server is back,
    /// so the daemon can start and serve stateless decisions meanwhile.
    pub async fn connect(config: &RedisConfig) -> Result<Self, BackendError> {
        config.validate()?;
        let urls = config.urls();
        if urls.iter().any(|u| u.starts_with("rediss://")) {
            // rustls needs a process-wide crypto provider; another part of the process may have
            // installed one already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut pool_config = PoolConfig::new(config.pool_size);
        pool_config.timeouts = Timeouts {
            wait: Some(config.timeout),
            create: Some(config.timeout),
            recycle: Some(config.timeout),
        };
        let pool =
            if config.cluster {
                let mut c = deadpool_redis::cluster::Config::from_urls(urls);
                c.pool = Some(pool_config);
                Pool::Cluster(c.create_pool(Some(Runtime::Tokio1)).map_err(|e| {
                    BackendError::fatal(BACKEND, format!("cannot build the cluster pool: {e}"))
                })?)
            } else {
                let url = urls.into_iter().next().unwrap_or_default();
                let mut c = deadpool_redis::Config::from_url(url);
                c.pool = Some(pool_config);
                Pool::Single(c.create_pool(Some(Runtime::Tokio1)).map_err(|e| {
                    BackendError::fatal(BACKEND, format!("cannot build the pool: {e}"))
                })?)
            };
        let store = Self {
            pool,
            shared: std::sync::Mutex::new(None),
            key_prefix: config.key_prefix.clone(),
            ttl_ms: config
                .ttl
                .map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            timeout: config.timeout,
            merge: redis::Script::new(MERGE_SCRIPT),
        };
        match store.health().await {
            Err(e) if !e.is_retryable() => return Err(e),
            Err(error) => tracing::warn!(backend = BACKEND, %error, "not reachable yet"),
            Ok(()) => {}
        }
        Ok(store)
    }

    fn key(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.key_prefix)
    }

    /// Runs `op` on a pooled connection, the checkout included in the deadline.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let attempt = async {
            let conn = match &self.pool {
                Pool::Single(p) => {
                    let cached = self.shared.lock().ok().and_then(|g| g.clone());
                    match cached {
                        Some(c) => Conn::Single(c),
                        None => {
                            let c = deadpool_redis::Connection::take(
                                p.get().await.map_err(pool_error)?,
                            );
                            if let Ok(mut g) = self.shared.lock() {
                                *g = Some(c.clone());
                            }
                            Conn::Single(c)
                        }
                    }
                }
                Pool::Cluster(p) => p.get().await.map(Conn::Cluster).map_err(pool_error)?,
            };
            op(conn).await.map_err(|e| {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                {
                    if let Ok(mut g) = self.shared.lock() {
                        *g = None;
                    }
                }
                redis_error(e)
            })
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                // A stalled connection may be dead: the next operation starts from the pool.
                if let Ok(mut g) = self.shared.lock() {
                    *g = None;
                }
                Err(BackendError::Timeout {
                    backend: BACKEND,
                    millis: millis(self.timeout),
                })
            })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn pool_error(e: PoolError) -> BackendError {
    match e {
        PoolError::Backend(e) => redis_error(e),
        PoolError::Timeout(kind) => {
            BackendError::unavailable(BACKEND, format!("pool timeout ({kind:?})"))
        }
        other => BackendError::unavailable(BACKEND, other),
    }
}

/// Server or network trouble is retryable; bad config, credentials, permissions or data are not.
fn redis_error(e: RedisError) -> BackendError {
    if e.is_timeout() {
        return BackendError::unavailable(BACKEND, format!("timed out: {e}"));
    }
    let retryable = match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        ErrorKind::Extension => matches!(e.code(), Some("BUSY" | "OOM")),
        _ => e.is_connection_dropped() || e.is_connection_refusal(),
    };
    if retryable {
        BackendError::unavailable(BACKEND, e)
    } else {
        BackendError::fatal(BACKEND, e)
    }
}

/// Reads a stored value: the Agent's bare bucket map or the SDKs' full profile.
fn parse_stored(user_id: &str, raw: &[u8]) -> Result<StoredProfile, BackendError> {
    let bad = |why: String| BackendError::fatal(BACKEND, format!("unreadable profile: {why}"));
    let mut value: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
    if let Some(inner) = value.get_mut("experiment_bucket_map") {
        value = inner.take();
    }
    let experiment_bucket_map: BTreeMap<String, ExperimentBucket> =
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    Ok(StoredProfile {
        user_id: user_id.to_owned(),
        experiment_bucket_map,
    })
}

#[async_trait::async_trait]
impl ProfileStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn lookup(&self, user_id: &str) -> Result<Option<StoredProfile>, BackendError> {
        let key = self.key(user_id);
        let raw: Option<Vec<u8>> = self
            .run(|mut conn| async move { redis::cmd("GET").arg(&key).query_async(&mut conn).await })
            .await?;
        raw.map(|raw| parse_stored(user_id, &raw)).transpose()
    }

    async fn save(&self, profile: &StoredProfile) -> Result<(), BackendError> {
        if profile.experiment_bucket_map.is_empty() {
            return Ok(());
        }
        let key = self.key(&profile.user_id);
        let entries = serde_json::to_string(&profile.experiment_bucket_map)
            .map_err(|e| BackendError::fatal(BACKEND, e))?;
        let ttl_ms = self.ttl_ms;
        let dropped: i64 = self
            .run(|mut conn| async move {
                self.merge
                    .key(&key)
                    .arg(&entries)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if dropped == 1 {
            tracing::warn!(
                backend = BACKEND,
                "dropped unreadable entries of a stored profile"
            );
        }
        Ok(())
    }

    async fn replace(&self, profile: &StoredProfile) -> Result<(), BackendError> {
        let key = self.key(&profile.user_id);
        if profile.experiment_bucket_map.is_empty() {
            let _: i64 =
                self.run(|mut conn| async move {
                    redis::cmd("DEL").arg(&key).query_async(&mut conn).await
                })
                .await?;
            return Ok(());
        }
        // The bare bucket map, as `save`'s script writes it.
        let entries = serde_json::to_string(&profile.experiment_bucket_map)
            .map_err(|e| BackendError::fatal(BACKEND, e))?;
        let ttl_ms = self.ttl_ms;
        let _: () = self
            .run(|mut conn| async move {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key).arg(&entries);
                if ttl_ms > 0 {
                    cmd.arg("PX").arg(ttl_ms);
                }
                cmd.query_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn health(&self) -> Result<(), BackendError> {
        let pong: String = self
            .run(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(BackendError::unavailable(
                BACKEND,
                format!("unexpected PING answer `{pong}`"),
            ))
        }
    }
}
