//! User-profile stores: where sticky bucketing assignments live.
//!
//! A profile is the user profile service schema of the Optimizely SDKs:
//! `{"user_id": ..., "experiment_bucket_map": {"<experiment id>": {"variation_id": ...}}}`.
//! `save` MERGES the given entries into what is stored (entries for other experiments are kept),
//! so concurrent saves for one user never lose an assignment; `replace` overwrites the whole
//! profile (an explicit write of a user's profile, as the Agent's `/v1/save` does).

use crate::BackendError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One stored assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentBucket {
    pub variation_id: String,
}

/// A user's sticky assignments as a store keeps them (the core has its own `UserProfile`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredProfile {
    pub user_id: String,
    #[serde(default)]
    pub experiment_bucket_map: BTreeMap<String, ExperimentBucket>,
}

/// A store of user profiles.
#[async_trait::async_trait]
pub trait ProfileStore: Send + Sync + 'static {
    /// A short backend name for metrics and logs (`memory`, `redis`, `cassandra`).
    fn backend(&self) -> &'static str;
    /// Whether the store lives in this process and answers without I/O: the gateway then
    /// calls it inline (no timeout, breaker or write-behind task).
    fn in_process(&self) -> bool {
        false
    }
    /// The stored profile of a user, if any.
    async fn lookup(&self, user_id: &str) -> Result<Option<StoredProfile>, BackendError>;
    /// Merges `profile.experiment_bucket_map` into the stored profile of `profile.user_id`.
    async fn save(&self, profile: &StoredProfile) -> Result<(), BackendError>;
    /// Replaces the stored profile of `profile.user_id` by exactly `profile`'s entries (the
    /// Agent's `/v1/save`); a profile without entries deletes the stored one.
    async fn replace(&self, profile: &StoredProfile) -> Result<(), BackendError>;
    /// Checks the store answers.
    async fn health(&self) -> Result<(), BackendError>;
}

/// Which store to use, with its settings (the `profiles` section, validated).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProfileStoreConfig {
    /// No store: stateless deterministic bucketing.
    None,
    #[cfg(feature = "memory")]
    Memory(memory::MemoryConfig),
    #[cfg(feature = "redis")]
    Redis(redis::RedisConfig),
    #[cfg(feature = "cassandra")]
    Cassandra(cassandra::CassandraConfig),
}

impl ProfileStoreConfig {
    /// Connects (and, where configured, creates schema); `None` for the `none` store.
    pub async fn build(&self) -> Result<Option<Arc<dyn ProfileStore>>, BackendError> {
        Ok(match self {
            Self::None => None,
            #[cfg(feature = "memory")]
            Self::Memory(c) => Some(Arc::new(memory::MemoryStore::new(c))),
            #[cfg(feature = "redis")]
            Self::Redis(c) => Some(Arc::new(redis::RedisStore::connect(c).await?)),
            #[cfg(feature = "cassandra")]
            Self::Cassandra(c) => Some(Arc::new(cassandra::CassandraStore::connect(c).await?)),
        })
    }
}

#[cfg(feature = "cassandra")]
pub mod cassandra;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
