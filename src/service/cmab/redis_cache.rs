//! The prediction cache shared in Redis (`cmab.cache = "redis://..."`): one key per user and
//! rule under the configured prefix, the cached prediction as JSON, expiring after the TTL. Redis
//! errors count as a miss (or a lost save): a prediction is then fetched again, never wrong.

use super::{CachedPrediction, CmabSetupError, PredictionCache};
use async_trait::async_trait;
use std::time::Duration;

/// A Redis-backed [`PredictionCache`] (without the `redis` feature, `new` refuses).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub struct RedisCache {
    #[cfg(feature = "redis")]
    redis: crate::service::redis_cache::CacheRedis,
    prefix: String,
    ttl: Duration,
}

impl RedisCache {
    /// A cache at `url` (connected on first use).
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> Result<Self, CmabSetupError> {
        #[cfg(feature = "redis")]
        {
            let redis = crate::service::redis_cache::CacheRedis::open(url, "cmab")
                .map_err(|e| CmabSetupError(e.to_string()))?;
            Ok(Self {
                redis,
                prefix: prefix.to_string(),
                ttl,
            })
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = (url, prefix, ttl);
            Err(CmabSetupError("built without the redis feature".into()))
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[cfg(feature = "redis")]
impl RedisCache {
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        self.redis.run(cmd).await
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl PredictionCache for RedisCache {
    async fn lookup(&self, key: &str) -> Option<CachedPrediction> {
        let text: Option<String> = self.run(redis::cmd("GET").arg(self.key(key))).await?;
        serde_json::from_str(&text?).ok()
    }

    async fn save(&self, key: &str, value: CachedPrediction) {
        let Ok(text) = serde_json::to_string(&value) else {
            return;
        };
        let ms = self.ttl.as_millis().max(1) as u64;
        let cmd = redis::cmd("SET")
            .arg(self.key(key))
            .arg(text)
            .arg("PX")
            .arg(ms)
            .to_owned();
        let _: Option<()> = self.run(&cmd).await;
    }

    async fn remove(&self, key: &str) {
        let _: Option<i64> = self.run(redis::cmd("DEL").arg(self.key(key))).await;
    }

    async fn reset(&self) {
        self.redis
            .delete_matching(&format!("{}*", self.prefix))
            .await;
    }
}

#[cfg(not(feature = "redis"))]
#[async_trait]
impl PredictionCache for RedisCache {
    async fn lookup(&self, _key: &str) -> Option<CachedPrediction> {
        None
    }
    async fn save(&self, _key: &str, _value: CachedPrediction) {}
    async fn remove(&self, _key: &str) {}
    async fn reset(&self) {}
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    /// Against the Redis in `BUCKETD_TEST_REDIS_URL` (skipped without it, failing on CI): two daemons' caches
    /// with the same prefix share a prediction; remove and reset reach every daemon.
    #[tokio::test]
    async fn daemons_share_predictions_in_redis() {
        let Some(url) = backends::testing::env_or_skip("BUCKETD_TEST_REDIS_URL") else {
            return;
        };
        let prefix = format!("bucketd-test-cmab-{}:", uuid::Uuid::new_v4());
        let ttl = Duration::from_secs(60);
        let a = RedisCache::new(&url, &prefix, ttl).unwrap();
        let b = RedisCache::new(&url, &prefix, ttl).unwrap();
        let value = CachedPrediction {
            attributes_hash: "h".into(),
            variation_id: "v1".into(),
            cmab_uuid: "u1".into(),
        };
        a.save("1-u-r", value.clone()).await;
        a.save("1-w-r", value.clone()).await;
        assert_eq!(b.lookup("1-u-r").await, Some(value.clone()));
        b.remove("1-u-r").await;
        assert_eq!(a.lookup("1-u-r").await, None);
        assert_eq!(a.lookup("1-w-r").await, Some(value));
        b.reset().await;
        assert_eq!(a.lookup("1-w-r").await, None);
    }
}
