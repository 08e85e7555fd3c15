//! The in-process profile store: the conformance suite, TTL and config parsing.
#![cfg(feature = "memory")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::profile::memory::{MemoryConfig, MemoryStore, DEFAULT_CAPACITY};
use backends::testing::{profile, profile_store_suite};
use backends::{ProfileStore, ProfileStoreConfig};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    profile_store_suite(
        Arc::new(MemoryStore::new(&MemoryConfig::default())),
        "memory",
    )
    .await;
}

#[tokio::test]
async fn a_save_without_entries_stores_nothing() {
    let store = MemoryStore::new(&MemoryConfig::default());
    store.save(&profile("empty", &[])).await.unwrap();
    assert_eq!(store.lookup("empty").await.unwrap(), None);
}

#[tokio::test]
async fn ttl_expires_profiles() {
    // moka keeps its own clock, so this waits for real (briefly).
    let config = MemoryConfig {
        ttl: Some(Duration::from_millis(300)),
        ..MemoryConfig::default()
    };
    let store = MemoryStore::new(&config);
    store.save(&profile("u", &[("e", "v")])).await.unwrap();
    assert!(store.lookup("u").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.lookup("u").await.unwrap(), None);
}

#[tokio::test]
async fn config_parses_with_defaults_and_rejects_typos() {
    let parsed: MemoryConfig = serde_json::from_str(r#"{"ttl": "10m"}"#).unwrap();
    assert_eq!(parsed.capacity, DEFAULT_CAPACITY);
    assert_eq!(parsed.ttl, Some(Duration::from_secs(600)));
    assert!(serde_json::from_str::<MemoryConfig>(r#"{"capacty": 5}"#).is_err());

    let config: ProfileStoreConfig =
        serde_json::from_str(r#"{"type": "memory", "capacity": 5}"#).unwrap();
    assert_eq!(
        config,
        ProfileStoreConfig::Memory(MemoryConfig {
            capacity: 5,
            ttl: None
        })
    );
    let store = config.build().await.unwrap().unwrap();
    assert_eq!(store.backend(), "memory");
    assert!(
        serde_json::from_str::<ProfileStoreConfig>(r#"{"type": "memory", "capacty": 5}"#).is_err()
    );
}
