//! The Redis profile store against a real Redis (`BUCKETD_TEST_REDIS_URL`, started by
//! `.ci/servers/redis.sh`). Each test uses its own key prefix, so they run in parallel.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::profile::redis::{RedisConfig, RedisStore};
use backends::testing::{env_or_skip, profile, profile_store_suite};
use backends::{BackendError, ProfileStore, ProfileStoreConfig};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ENV: &str = "BUCKETD_TEST_REDIS_URL";

const CLUSTER_ENV: &str = "BUCKETD_TEST_REDIS_CLUSTER_URL";

/// A config with a key prefix no other test (or earlier run) uses.
fn config(url: &str, test: &str) -> RedisConfig {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    RedisConfig {
        key_prefix: format!("bucketd-test:{test}:{}:{nanos}:", std::process::id()),
        // Generous: the tests share 2 cores with compilers.
        timeout: Duration::from_secs(2),
        ..RedisConfig::new(url)
    }
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let Some(url) = env_or_skip(ENV) else {
        return;
    };
    let store = RedisStore::connect(&config(&url, "conformance"))
        .await
        .unwrap();
    profile_store_suite(Arc::new(store), "redis").await;
}

#[tokio::test]
async fn stored_in_the_agent_layout() {
    let Some(url) = env_or_skip(ENV) else {
        return;
    };
    let cfg = config(&url, "round_trip");
    let store = RedisStore::connect(&cfg).await.unwrap();
    store.save(&profile("u1", &[("e1", "v1")])).await.unwrap();
    store
        .save(&profile("u1", &[("e2", "v2"), ("e3", "v3")]))
        .await
        .unwrap();
    store.save(&profile("u1", &[("e1", "v9")])).await.unwrap();

    // Stored in the Agent's layout: the bare bucket map under prefix + user id, no expiry.
    let mut conn = raw(&url).await;
    let key = format!("{}u1", cfg.key_prefix);
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({
            "e1": {"variation_id": "v9"}, "e2": {"variation_id": "v2"}, "e3": {"variation_id": "v3"}
        })
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pttl, -1);
}

#[tokio::test]
async fn ttl_expires_profiles() {
    let Some(url) = env_or_skip(ENV) else {
        return;
    };
    let cfg = RedisConfig {
        ttl: Some(Duration::from_secs(1)),
        ..config(&url, "ttl")
    };
    let store = RedisStore::connect(&cfg).await.unwrap();
    store.save(&profile("u", &[("e", "v")])).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}u", cfg.key_prefix))
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    assert!((1..=1000).contains(&pttl), "PTTL {pttl}");
    assert!(store.lookup("u").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(store.lookup("u").await.unwrap(), None);
}

#[tokio::test]
async fn reads_profiles_written_by_the_agent() {
    let Some(url) = env_or_skip(ENV) else {
        return;
    };
    let cfg = config(&url, "agent");
    let store = RedisStore::connect(&cfg).await.unwrap();
    let mut conn = raw(&url).await;
    let set = |key: String, value: &'static str| redis::cmd("SET").arg(key).arg(value).clone();

    // What the Agent's Redis user profile service SETs: the bare bucket map.
    let agent = r#"{"1001":{"variation_id":"2001"},"1002":{"variation_id":"2002"}}"#;
    let (): () = set(format!("{}agent-user", cfg.key_prefix), agent)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        store.lookup("agent-user").await.unwrap(),
        Some(profile("agent-user", &[("1001", "2001"), ("1002", "2002")]))
    );
    // The SDKs' full schema is read too.
    let sdk = r#"{"user_id":"sdk-user","experiment_bucket_map":{"1003":{"variation_id":"2003"}}}"#;
    let (): () = set(format!("{}sdk-user", cfg.key_prefix), sdk)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        store.lookup("sdk-user").await.unwrap(),
        Some(profile("sdk-user", &[("1003", "2003")]))
    );
    // A save merges into either, keeping what the Agent wrote.
    store
        .save(&profile("agent-user", &[("1004", "2004")]))
        .await
        .unwrap();
    store
        .save(&profile("sdk-user", &[("1004", "2004")]))
        .await
        .unwrap();
    assert_eq!(
        store.lookup("agent-user").await.unwrap(),
        Some(profile(
            "agent-user",
            &[("1001", "2001"), ("1002", "2002"), ("1004", "2004")]
        ))
    );
    assert_eq!(
        store.lookup("sdk-user").await.unwrap(),
        Some(profile("sdk-user", &[("1003", "2003"), ("1004", "2004")]))
    );
}

#[tokio::test]
async fn unreadable_value_is_a_fatal_lookup_error_and_a_save_repairs_it() {
    let Some(url) = env_or_skip(ENV) else {
        return;
    };
    let cfg = config(&url, "corrupt");
    let store = RedisStore::connect(&cfg).await.unwrap();
    let mut conn = raw(&url).await;
    for (user, junk) in [
        ("u1", "not json {"),
        ("u2", r#"{"e":"not a bucket"}"#),
        ("u3", "[1,2]"),
    ] {
        let (): () = redis::cmd("SET")
            .arg(format!("{}{user}", cfg.key_prefix))
            .arg(junk)
            .query_async(&mut conn)
            .await
            .unwrap();
        let error = store.lookup(user).await.unwrap_err();
        assert!(
            matches!(error, BackendError::Fatal { .. }),
            "{user}: {error}"
        );
    }
    for user in ["u1", "u2", "u3"] {
        store.save(&profile(user, &[("e1", "v1")])).await.unwrap();
        assert_eq!(
            store.lookup(user).await.unwrap(),
            Some(profile(user, &[("e1", "v1")]))
        );
    }
    // Readable entries survive next to unreadable ones.
    let mixed = r#"{"e0":{"variation_id":"v0"},"bad":{"variation_id":7},"worse":null}"#;
    let (): () = redis::cmd("SET")
        .arg(format!("{}u4", cfg.key_prefix))
        .arg(mixed)
        .query_async(&mut conn)
        .await
        .unwrap();
    store.save(&profile("u4", &[("e1", "v1")])).await.unwrap();
    assert_eq!(
        store.lookup("u4").await.unwrap(),
        Some(profile("u4", &[("e0", "v0"), ("e1", "v1")]))
    );
}

#[tokio::test]
async fn closed_port_fails_fast_and_retryably() {
    // No server needed: nothing listens on port 1.
    let cfg = RedisConfig {
        timeout: Duration::from_millis(200),
        ..RedisConfig::new("redis://127.0.0.1:1")
    };
    let started = Instant::now();
    let store = RedisStore::connect(&cfg)
        .await
        .expect("an unreachable server is not a config error");
    let lookup = store.lookup("u").await.unwrap_err();
    let save = store.save(&profile("u", &[("e", "v")])).await.unwrap_err();
    assert!(lookup.is_retryable(), "{lookup}");
    assert!(save.is_retryable(), "{save}");
    assert!(store.health().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn silent_server_times_out() {
    // A listener that accepts and never answers: every operation must end at the deadline.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let cfg = RedisConfig {
        timeout: Duration::from_millis(100),
        ..RedisConfig::new(format!("redis://127.0.0.1:{port}"))
    };
    let store = RedisStore::connect(&cfg).await.unwrap();
    let started = Instant::now();
    let error = store.lookup("u").await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn config_parses_validates_and_hides_the_password() {
    let config: ProfileStoreConfig = serde_json::from_str(
        r#"{"type": "redis", "url": "redis://user:secret@10.0.0.1:6379/2", "ttl": "30d",
            "timeout": "80ms", "key_prefix": "ups:"}"#,
    )
    .unwrap();
    let ProfileStoreConfig::Redis(redis) = &config else {
        panic!("{config:?}")
    };
    assert_eq!(redis.ttl, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(redis.timeout, Duration::from_millis(80));
    assert_eq!(redis.pool_size, 16);
    assert!(!redis.cluster);
    redis.validate().unwrap();
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("secret") && shown.contains("user:***@10.0.0.1"),
        "{shown}"
    );

    assert!(serde_json::from_str::<RedisConfig>(r#"{"url": "redis://h", "pool": 3}"#).is_err());
    for bad in [
        RedisConfig::new("http://localhost"),
        RedisConfig::new(""),
        RedisConfig::new("redis://a:1,redis://b:2"),
        RedisConfig {
            pool_size: 0,
            ..RedisConfig::new("redis://h")
        },
        RedisConfig {
            ttl: Some(Duration::from_micros(10)),
            ..RedisConfig::new("redis://h")
        },
    ] {
        let error = RedisStore::connect(&bad).await.unwrap_err();
        assert!(!error.is_retryable(), "{bad:?}: {error}");
    }
    let cluster = RedisConfig {
        cluster: true,
        ..RedisConfig::new("redis://a:1, redis://b:2")
    };
    cluster.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_conformance_and_users_over_every_node() {
    let Some(urls) = env_or_skip(CLUSTER_ENV) else {
        return;
    };
    let cfg = RedisConfig {
        cluster: true,
        ..config(&urls, "cluster")
    };
    let store = Arc::new(RedisStore::connect(&cfg).await.unwrap());
    // Users spread over the slots of every node.
    for i in 0..50 {
        let user = format!("user{i}");
        store.save(&profile(&user, &[("e1", "v1")])).await.unwrap();
        store.save(&profile(&user, &[("e2", "v2")])).await.unwrap();
        assert_eq!(
            store.lookup(&user).await.unwrap(),
            Some(profile(&user, &[("e1", "v1"), ("e2", "v2")]))
        );
    }
    profile_store_suite(store, "redis").await;
}
