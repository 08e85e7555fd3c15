//! The in-process profile store: a bounded LRU cache (moka) with an optional time to live.
//!
//! Profiles live only as long as the process, and each instance has its own: fine for one
//! daemon, tests, or as a stand-in where sticky bucketing across restarts does not matter.

use super::{ExperimentBucket, ProfileStore, StoredProfile};
use crate::BackendError;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Default number of users kept before the least recently used is evicted.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Settings of the in-process store (`type = "memory"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Maximum number of users kept; the least recently used go first.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// How long a profile lives after its last save (humantime, e.g. `"10m"`); none by default.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

fn default_capacity() -> usize {
    DEFAULT_CAPACITY
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            ttl: None,
        }
    }
}

type BucketMap = BTreeMap<String, ExperimentBucket>;

/// A bounded in-process profile store.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<String, Arc<BucketMap>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store with the given bounds.
    pub fn new(config: &MemoryConfig) -> Self {
        let mut builder = Cache::builder()
            .max_capacity(u64::try_from(config.capacity).unwrap_or(u64::MAX))
            .eviction_policy(EvictionPolicy::lru());
        if let Some(ttl) = config.ttl {
            builder = builder.time_to_live(ttl);
        }
        Self {
            cache: builder.build(),
        }
    }
}

#[async_trait::async_trait]
impl ProfileStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn lookup(&self, user_id: &str) -> Result<Option<StoredProfile>, BackendError> {
        Ok(self.cache.get(user_id).map(|map| StoredProfile {
            user_id: user_id.to_owned(),
            experiment_bucket_map: BucketMap::clone(&map),
        }))
    }

    async fn save(&self, profile: &StoredProfile) -> Result<(), BackendError> {
        if profile.experiment_bucket_map.is_empty() {
            return Ok(());
        }
        // moka runs the closure under the key's lock, so concurrent merges for one user are
        // serialised and none is lost. The closure only copies a small map: no await, no I/O.
        self.cache
            .entry(profile.user_id.clone())
            .and_upsert_with(|stored| {
                let mut merged = stored
                    .map(|entry| BucketMap::clone(entry.value()))
                    .unwrap_or_default();
                merged.extend(
                    profile
                        .experiment_bucket_map
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                Arc::new(merged)
            });
        Ok(())
    }

    async fn replace(&self, profile: &StoredProfile) -> Result<(), BackendError> {
        if profile.experiment_bucket_map.is_empty() {
            self.cache.invalidate(&profile.user_id);
        } else {
            self.cache.insert(
                profile.user_id.clone(),
                Arc::new(profile.experiment_bucket_map.clone()),
            );
        }
        Ok(())
    }

    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
