//! The Cassandra profile store against a CQL server (`BUCKETD_TEST_CQL_ADDR`, started by
//! `.ci/servers/cql.sh`: the kassandra emulator, which accepts but does not enforce TTLs).
//! Each test uses its own keyspace, so they run in parallel.
#![cfg(feature = "cassandra")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::profile::cassandra::{CassandraConfig, CassandraStore};
use backends::testing::{env_or_skip, profile, profile_store_suite};
use backends::{ProfileStore, ProfileStoreConfig};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ENV: &str = "BUCKETD_TEST_CQL_ADDR";

/// A config with a keyspace no other test (or earlier run) uses.
fn config(addr: &str) -> CassandraConfig {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    CassandraConfig {
        contact_points: vec![addr.to_owned()],
        keyspace: format!(
            "bucketd_test_{nanos}_{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        // Generous: a debug-built emulator sharing 2 cores with compilers.
        timeout: Duration::from_secs(5),
        ..CassandraConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let Some(addr) = env_or_skip(ENV) else {
        return;
    };
    let store = CassandraStore::connect(&config(&addr)).await.unwrap();
    profile_store_suite(Arc::new(store), "cassandra").await;
}

#[tokio::test]
async fn the_empty_user_id_is_unknown() {
    let Some(addr) = env_or_skip(ENV) else {
        return;
    };
    let store = CassandraStore::connect(&config(&addr)).await.unwrap();
    assert_eq!(store.lookup("").await.unwrap(), None);
}

#[tokio::test]
async fn ttl_is_part_of_the_save_statement() {
    let Some(addr) = env_or_skip(ENV) else {
        return;
    };
    let cfg = CassandraConfig {
        ttl: Some(Duration::from_secs(90 * 86_400)),
        ..config(&addr)
    };
    let store = CassandraStore::connect(&cfg).await.unwrap();
    assert!(
        store.save_statement().ends_with(" USING TTL 7776000"),
        "{}",
        store.save_statement()
    );
    // The emulator accepts the clause (it does not expire rows, so expiry is not tested here).
    store
        .save(&profile("u", &[("e1", "v1"), ("e2", "v2")]))
        .await
        .unwrap();
    assert_eq!(
        store
            .lookup("u")
            .await
            .unwrap()
            .unwrap()
            .experiment_bucket_map
            .len(),
        2
    );

    let no_ttl = CassandraStore::connect(&CassandraConfig { ttl: None, ..cfg })
        .await
        .unwrap();
    assert!(
        !no_ttl.save_statement().contains("TTL"),
        "{}",
        no_ttl.save_statement()
    );
}

#[tokio::test]
async fn schema_creation_is_idempotent_and_can_be_skipped() {
    let Some(addr) = env_or_skip(ENV) else {
        return;
    };
    let cfg = config(&addr);
    let first = CassandraStore::connect(&cfg).await.unwrap();
    first.save(&profile("u", &[("e", "v")])).await.unwrap();
    let again = CassandraStore::connect(&cfg).await.unwrap();
    let existing = CassandraConfig {
        create_schema: false,
        ..cfg.clone()
    };
    let skipped = CassandraStore::connect(&existing).await.unwrap();
    assert_eq!(
        again.lookup("u").await.unwrap(),
        Some(profile("u", &[("e", "v")]))
    );
    assert_eq!(
        skipped.lookup("u").await.unwrap(),
        Some(profile("u", &[("e", "v")]))
    );

    // Without the schema, connecting fails for good (preparing against a missing table).
    let missing = CassandraConfig {
        create_schema: false,
        ..config(&addr)
    };
    let error = CassandraStore::connect(&missing).await.unwrap_err();
    assert!(!error.is_retryable(), "{error}");
}

#[tokio::test]
async fn unreachable_cluster_fails_fast_and_retryably() {
    // No server needed: nothing listens on port 1.
    let cfg = CassandraConfig {
        contact_points: vec!["127.0.0.1:1".to_owned()],
        connect_timeout: Duration::from_secs(2),
        ..CassandraConfig::default()
    };
    let started = Instant::now();
    let error = CassandraStore::connect(&cfg).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn config_parses_and_validates() {
    let config: ProfileStoreConfig = serde_json::from_str(
        r#"{"type": "cassandra", "contact_points": ["10.0.0.1:9042", "10.0.0.2:9042"],
            "keyspace": "ups", "consistency": "local_one", "ttl": "90d",
            "local_datacenter": "dc1"}"#,
    )
    .unwrap();
    let ProfileStoreConfig::Cassandra(cassandra) = &config else {
        panic!("{config:?}")
    };
    assert_eq!(cassandra.table, "user_profiles");
    assert_eq!(cassandra.timeout, Duration::from_millis(50));
    assert!(cassandra.create_schema);
    cassandra.validate().unwrap();
    assert!(serde_json::from_str::<CassandraConfig>(r#"{"keyspac": "x"}"#).is_err());

    let base = CassandraConfig::default();
    for bad in [
        CassandraConfig {
            consistency: "SERIAL".into(),
            ..base.clone()
        },
        CassandraConfig {
            consistency: "most".into(),
            ..base.clone()
        },
        CassandraConfig {
            keyspace: "drop table x;".into(),
            ..base.clone()
        },
        CassandraConfig {
            table: "1abc".into(),
            ..base.clone()
        },
        CassandraConfig {
            ttl: Some(Duration::from_millis(500)),
            ..base.clone()
        },
        CassandraConfig {
            contact_points: vec![],
            ..base.clone()
        },
        CassandraConfig {
            replication: "{'class': 'X'}; DROP".into(),
            ..base.clone()
        },
    ] {
        let error = CassandraStore::connect(&bad).await.unwrap_err();
        assert!(!error.is_retryable(), "{bad:?}: {error}");
    }
}

#[tokio::test]
async fn test_server_survives_what_the_emulator_lacks() {
    // The emulator panics on counter columns; the wrapper must answer an error and keep the
    // connection (and the shared database) usable.
    let Some(addr) = env_or_skip(ENV) else {
        return;
    };
    let cfg = config(&addr);
    let store = CassandraStore::connect(&cfg).await.unwrap();
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&addr)
        .build()
        .await
        .unwrap();
    let counter = format!(
        "CREATE TABLE {}.counters (k text PRIMARY KEY, n counter)",
        cfg.keyspace
    );
    let error = session.query_unpaged(counter, &[]).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not supported by the test server"),
        "{error}"
    );
    let rows = session
        .query_unpaged(
            format!(
                "SELECT * FROM {}.user_profiles WHERE user_id = 'x'",
                cfg.keyspace
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.into_rows_result().unwrap().rows_num(), 0);
    store.save(&profile("u", &[("e", "v")])).await.unwrap();
    assert!(store.lookup("u").await.unwrap().is_some());
}
