//! The in-process profile store: merge semantics, concurrency, TTL and config parsing.
#![cfg(feature = "memory")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::profile::memory::{MemoryConfig, MemoryStore, DEFAULT_CAPACITY};
use backends::profile::ExperimentBucket;
use backends::{ProfileStore, ProfileStoreConfig, UserProfile};
use std::sync::Arc;
use std::time::Duration;

fn profile(user: &str, entries: &[(&str, &str)]) -> UserProfile {
    UserProfile {
        user_id: user.to_owned(),
        experiment_bucket_map: entries
            .iter()
            .map(|(e, v)| {
                (
                    e.to_string(),
                    ExperimentBucket {
                        variation_id: v.to_string(),
                    },
                )
            })
            .collect(),
    }
}

#[tokio::test]
async fn round_trip_and_merge() {
    let store = MemoryStore::new(&MemoryConfig::default());
    assert_eq!(store.backend(), "memory");
    store.save(&profile("u1", &[("e1", "v1")])).await.unwrap();
    assert_eq!(
        store.lookup("u1").await.unwrap(),
        Some(profile("u1", &[("e1", "v1")]))
    );

    store.save(&profile("u1", &[("e2", "v2")])).await.unwrap();
    store.save(&profile("u1", &[("e1", "v3")])).await.unwrap();
    assert_eq!(
        store.lookup("u1").await.unwrap(),
        Some(profile("u1", &[("e1", "v3"), ("e2", "v2")]))
    );
    store.health().await.unwrap();
}

#[tokio::test]
async fn unknown_user_is_none() {
    let store = MemoryStore::new(&MemoryConfig::default());
    assert_eq!(store.lookup("nobody").await.unwrap(), None);
    store.save(&profile("empty", &[])).await.unwrap();
    assert_eq!(store.lookup("empty").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_saves_for_one_user_lose_nothing() {
    let store = Arc::new(MemoryStore::new(&MemoryConfig::default()));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let (e, v) = (format!("exp{i}"), format!("var{i}"));
                store.save(&profile("shared", &[(&e, &v)])).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stored = store.lookup("shared").await.unwrap().unwrap();
    assert_eq!(stored.experiment_bucket_map.len(), 32);
    for i in 0..32 {
        assert_eq!(
            stored.experiment_bucket_map[&format!("exp{i}")].variation_id,
            format!("var{i}")
        );
    }
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
