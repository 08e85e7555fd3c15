//! Where fetched ODP segments are kept between requests: in memory (per daemon and project,
//! LRU-bounded) or in Redis (`api.odp.segments_cache = "redis://..."`), shared by a fleet of
//! daemons and by Optimizely Agents pointed at the same Redis: the key is the Go SDK's
//! `fs_user_id-$-<user id>` (after an optional prefix), the value a JSON array of segment names,
//! expiring after `segments_cache_timeout`.
//!
//! `RESET_CACHE` empties the cache. In Redis that deletes the segment keys under the prefix; the
//! Agent runs `FLUSHDB`, which also wipes every unrelated key of that database (sticky profiles
//! among them) — a behaviour no client can want, so bucketd does not copy it.
//!
//! Redis errors count as a miss (or a lost save): segments are then fetched again, never wrong.

use moka::future::Cache;
use std::sync::Arc;
use std::time::Duration;

/// The Go SDK's cache key for a user's segments.
pub fn user_key(user_id: &str) -> String {
    format!("fs_user_id-$-{user_id}")
}

/// A fetched-segments cache.
pub enum SegmentCache {
    Memory(Cache<(usize, String), Arc<Vec<String>>>),
    #[cfg(feature = "redis")]
    Redis(Box<RedisSegments>),
}

/// Why the configured cache cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("ODP segment cache: {0}")]
pub struct SegmentCacheError(String);

impl SegmentCache {
    /// An in-memory cache of at most `size` users, each kept for `ttl`.
    pub fn memory(size: u64, ttl: Duration) -> Self {
        Self::Memory(
            Cache::builder()
                .max_capacity(size)
                .time_to_live(ttl)
                .build(),
        )
    }

    /// A Redis cache at `url` (connected on first use), keys under `prefix`, kept for `ttl`.
    pub fn redis(url: &str, prefix: &str, ttl: Duration) -> Result<Self, SegmentCacheError> {
        #[cfg(feature = "redis")]
        {
            RedisSegments::new(url, prefix, ttl).map(|r| Self::Redis(Box::new(r)))
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = (url, prefix, ttl);
            Err(SegmentCacheError("built without the redis feature".into()))
        }
    }

    /// The cached segments of `user_id` in `project`.
    pub async fn get(&self, project: usize, user_id: &str) -> Option<Vec<String>> {
        match self {
            Self::Memory(c) => c
                .get(&(project, user_id.to_string()))
                .await
                .map(|s| s.as_ref().clone()),
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.get(user_id).await,
        }
    }

    /// Keeps `segments` for `user_id` in `project`.
    pub async fn put(&self, project: usize, user_id: &str, segments: &[String]) {
        match self {
            Self::Memory(c) => {
                c.insert((project, user_id.to_string()), Arc::new(segments.to_vec()))
                    .await
            }
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.put(user_id, segments).await,
        }
    }

    /// Forgets every user's segments.
    pub async fn reset(&self) {
        match self {
            Self::Memory(c) => c.invalidate_all(),
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.reset().await,
        }
    }
}

/// Segments in Redis, one string key per user.
#[cfg(feature = "redis")]
pub struct RedisSegments {
    redis: crate::service::redis_cache::CacheRedis,
    prefix: String,
    ttl: Duration,
}

#[cfg(feature = "redis")]
impl RedisSegments {
    fn new(url: &str, prefix: &str, ttl: Duration) -> Result<Self, SegmentCacheError> {
        let redis = crate::service::redis_cache::CacheRedis::open(url, "odp_segments")
            .map_err(|e| SegmentCacheError(e.to_string()))?;
        Ok(Self {
            redis,
            prefix: prefix.to_string(),
            ttl,
        })
    }

    fn key(&self, user_id: &str) -> String {
        format!("{}{}", self.prefix, user_key(user_id))
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        self.redis.run(cmd).await
    }

    async fn get(&self, user_id: &str) -> Option<Vec<String>> {
        let text: Option<String> = self.run(redis::cmd("GET").arg(self.key(user_id))).await?;
        serde_json::from_str(&text?).ok()
    }

    async fn put(&self, user_id: &str, segments: &[String]) {
        let Ok(text) = serde_json::to_string(segments) else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(user_id)).arg(text);
        if !self.ttl.is_zero() {
            cmd.arg("PX").arg(self.ttl.as_millis() as u64);
        }
        let _: Option<()> = self.run(&cmd).await;
    }

    async fn reset(&self) {
        self.redis
            .delete_matching(&format!("{}*", self.key("")))
            .await;
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use backends::testing::env_or_skip;

    /// Against the test Redis: two daemons share a user's segments under the Go SDK's key (so
    /// an Agent on the same Redis reads them too), and a reset removes segment keys only.
    #[tokio::test]
    async fn daemons_share_segments_in_redis_under_the_agents_key() {
        let Some(url) = env_or_skip("BUCKETD_TEST_REDIS_URL") else {
            return;
        };
        let prefix = format!("bucketd-test-odp-{}:", uuid::Uuid::new_v4());
        let ttl = Duration::from_secs(60);
        let a = SegmentCache::redis(&url, &prefix, ttl).unwrap();
        let b = SegmentCache::redis(&url, &prefix, ttl).unwrap();
        let segments = vec!["seg-a".to_string(), "seg-b".to_string()];
        a.put(0, "user-1", &segments).await;
        assert_eq!(b.get(3, "user-1").await, Some(segments.clone()));

        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let raw: String = redis::cmd("GET")
            .arg(format!("{prefix}fs_user_id-$-user-1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(raw, r#"["seg-a","seg-b"]"#);
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}fs_user_id-$-user-1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl_ms > 50_000 && ttl_ms <= 60_000, "ttl {ttl_ms}");

        // Written by someone else (an Agent): read as cached segments.
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}fs_user_id-$-user-2"))
            .arg(r#"["from-agent"]"#)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            b.get(0, "user-2").await,
            Some(vec!["from-agent".to_string()])
        );

        let unrelated = format!("{prefix}profile-user-1");
        let _: () = redis::cmd("SET")
            .arg(&unrelated)
            .arg("keep")
            .query_async(&mut conn)
            .await
            .unwrap();
        b.reset().await;
        assert_eq!(a.get(0, "user-1").await, None);
        assert_eq!(a.get(0, "user-2").await, None);
        let kept: Option<String> = redis::cmd("GET")
            .arg(&unrelated)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kept.as_deref(), Some("keep"));
        let _: () = redis::cmd("DEL")
            .arg(&unrelated)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
