//! The in-process profile store: the conformance suite, TTL and config parsing.
#![cfg(feature = "memory")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::profile::memory::{
    entry_weight, MemoryConfig, MemoryStore, DEFAULT_MAX_BYTES, NOMINAL_ENTRY_BYTES,
};
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
    assert_eq!(parsed.budget(), DEFAULT_MAX_BYTES);
    assert_eq!(parsed.ttl, Some(Duration::from_secs(600)));
    assert!(serde_json::from_str::<MemoryConfig>(r#"{"capacty": 5}"#).is_err());

    let config: ProfileStoreConfig =
        serde_json::from_str(r#"{"type": "memory", "capacity": 5}"#).unwrap();
    assert_eq!(
        config,
        ProfileStoreConfig::Memory(MemoryConfig {
            capacity: Some(5),
            ..MemoryConfig::default()
        })
    );
    let ProfileStoreConfig::Memory(memory) = &config else {
        panic!("not a memory config")
    };
    assert_eq!(memory.budget(), 5 * NOMINAL_ENTRY_BYTES);
    let bytes: ProfileStoreConfig =
        serde_json::from_str(r#"{"type": "memory", "max_bytes": 1048576, "capacity": 5}"#).unwrap();
    let ProfileStoreConfig::Memory(memory) = &bytes else {
        panic!("not a memory config")
    };
    assert_eq!(memory.budget(), 1 << 20, "max_bytes wins over capacity");
    let store = config.build().await.unwrap().unwrap();
    assert_eq!(store.backend(), "memory");
    assert!(
        serde_json::from_str::<ProfileStoreConfig>(r#"{"type": "memory", "capacty": 5}"#).is_err()
    );
}

#[tokio::test]
async fn the_byte_budget_evicts_the_least_recently_used() {
    // 64 KiB: a few hundred small profiles. Users with big profiles weigh more, so fewer fit.
    let budget = 64 << 10;
    let store = MemoryStore::new(&MemoryConfig {
        max_bytes: Some(budget),
        ..MemoryConfig::default()
    });
    let variation = "v".repeat(1000);
    for i in 0..1000 {
        let user = format!("user-{i}");
        store
            .save(&profile(&user, &[("e1", &variation), ("e2", "v2")]))
            .await
            .unwrap();
    }
    let (users, bytes) = store.usage();
    assert!(bytes <= budget, "{bytes} bytes held, budget {budget}");
    let one = u64::from(entry_weight("user-999", &[0; 1000 + 2 + 2 + 2 + 16]));
    assert!(
        users <= budget / one + 1,
        "{users} users of ~{one} bytes each"
    );
    assert!(users > 0);
    assert!(store.lookup("user-999").await.unwrap().is_some());
    assert_eq!(
        store.lookup("user-0").await.unwrap(),
        None,
        "oldest is evicted"
    );
}
