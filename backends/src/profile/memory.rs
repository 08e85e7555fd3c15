//! The in-process profile store: an LRU cache (moka) bounded by the bytes its entries weigh,
//! with an optional time to live.
//!
//! Profiles live only as long as the process, and each instance has its own: fine for one
//! daemon, tests, or as a stand-in where sticky bucketing across restarts does not matter.
//!
//! Budget: `max_bytes` (default [`DEFAULT_MAX_BYTES`], 16 MiB) bounds the sum of every entry's
//! weight, [`entry_weight`]: the user id, the packed assignments, and [`ENTRY_OVERHEAD`] bytes
//! for the cache's own bookkeeping of an entry (hash table slot, LRU node, timestamps,
//! allocation headers). The least recently used users are evicted first. A user with one
//! assignment weighs about 300 bytes, so the default keeps about 55,000 such users. A profile
//! is stored packed in one allocation (`[len u32][experiment id][len u32][variation id]...`),
//! not as a `BTreeMap` (whose first leaf alone is ~540 bytes).

use super::{ExperimentBucket, ProfileStore, StoredProfile};
use crate::BackendError;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Default byte budget of the store (16 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// Bytes counted per entry on top of its key and packed value: the cache's bookkeeping.
pub const ENTRY_OVERHEAD: u32 = 256;

/// Bytes counted per user when only the deprecated `capacity` (a user count) is configured.
pub const NOMINAL_ENTRY_BYTES: u64 = 300;

/// Settings of the in-process store (`type = "memory"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Budget of the store in bytes (see the module docs for how an entry is weighed).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Deprecated: a number of users. Without `max_bytes` it becomes a byte budget of
    /// `capacity` × [`NOMINAL_ENTRY_BYTES`].
    #[serde(default)]
    pub capacity: Option<usize>,
    /// How long a profile lives after its last save (humantime, e.g. `"10m"`); none by default.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

impl MemoryConfig {
    /// The byte budget these settings give.
    pub fn budget(&self) -> u64 {
        match (self.max_bytes, self.capacity) {
            (Some(b), _) => b,
            (None, Some(c)) => (c as u64).saturating_mul(NOMINAL_ENTRY_BYTES),
            (None, None) => DEFAULT_MAX_BYTES,
        }
    }
}

/// A profile's assignments packed in one allocation, sorted by experiment id.
type Packed = Arc<[u8]>;

fn pack(map: &BTreeMap<&str, &str>) -> Packed {
    let len = map.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(len);
    for (k, v) in map {
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out.into()
}

/// The (experiment id, variation id) pairs of a packed profile.
fn unpack(packed: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = packed;
    let mut next = move || -> Option<&str> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (s, tail) = tail.split_at_checked(len)?;
        rest = tail;
        std::str::from_utf8(s).ok()
    };
    std::iter::from_fn(move || Some((next()?, next()?)))
}

/// What an entry counts against the budget.
pub fn entry_weight(user_id: &str, packed: &[u8]) -> u32 {
    let bytes = user_id.len().saturating_add(packed.len());
    u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .saturating_add(ENTRY_OVERHEAD)
}

/// moka's weigher signature takes the key type by reference.
#[allow(clippy::borrowed_box)]
fn weigh(user_id: &Box<str>, packed: &Packed) -> u32 {
    entry_weight(user_id, packed)
}

/// A byte-bounded in-process profile store.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Box<str>, Packed>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store with the given bounds.
    pub fn new(config: &MemoryConfig) -> Self {
        let mut builder = Cache::builder()
            .max_capacity(config.budget())
            .weigher(weigh)
            .eviction_policy(EvictionPolicy::lru());
        if let Some(ttl) = config.ttl {
            builder = builder.time_to_live(ttl);
        }
        Self {
            cache: builder.build(),
        }
    }

    /// (users, weighed bytes) held, after pending evictions have run.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[async_trait::async_trait]
impl ProfileStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn in_process(&self) -> bool {
        true
    }

    async fn lookup(&self, user_id: &str) -> Result<Option<StoredProfile>, BackendError> {
        Ok(self.cache.get(user_id).map(|packed| StoredProfile {
            user_id: user_id.to_owned(),
            experiment_bucket_map: unpack(&packed)
                .map(|(k, v)| {
                    let bucket = ExperimentBucket {
                        variation_id: v.to_owned(),
                    };
                    (k.to_owned(), bucket)
                })
                .collect(),
        }))
    }

    async fn save(&self, profile: &StoredProfile) -> Result<(), BackendError> {
        if profile.experiment_bucket_map.is_empty() {
            return Ok(());
        }
        let new = profile
            .experiment_bucket_map
            .iter()
            .map(|(k, v)| (k.as_str(), v.variation_id.as_str()));
        // moka runs the closure under the key's lock, so concurrent merges for one user are
        // serialised and none is lost. The closure only packs a small map: no await, no I/O.
        self.cache
            .entry(Box::from(profile.user_id.as_str()))
            .and_upsert_with(|stored| match stored {
                None => pack(&new.collect()),
                Some(entry) => {
                    let mut merged: BTreeMap<&str, &str> = unpack(entry.value()).collect();
                    for (k, v) in new {
                        merged.insert(k, v);
                    }
                    pack(&merged)
                }
            });
        Ok(())
    }

    async fn replace(&self, profile: &StoredProfile) -> Result<(), BackendError> {
        if profile.experiment_bucket_map.is_empty() {
            self.cache.invalidate(profile.user_id.as_str());
        } else {
            let map = profile
                .experiment_bucket_map
                .iter()
                .map(|(k, v)| (k.as_str(), v.variation_id.as_str()))
                .collect();
            self.cache
                .insert(Box::from(profile.user_id.as_str()), pack(&map));
        }
        Ok(())
    }

    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks_assignments() {
        let map: BTreeMap<&str, &str> = [("e1", "v1"), ("", "x"), ("exp-ü", "")].into();
        let packed = pack(&map);
        assert_eq!(unpack(&packed).collect::<BTreeMap<_, _>>(), map);
        assert_eq!(unpack(&[1, 0]).count(), 0);
    }
}
