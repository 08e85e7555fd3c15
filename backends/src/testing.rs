//! Conformance suites for the backend traits, and the env-or-skip helper of the tests that
//! need a server (cargo feature `test-util`; the crates' tests enable it).
//!
//! A backend's test file calls [`profile_store_suite`] or [`event_queue_suite`] and adds only
//! what is its own (a storage layout, a TTL, a rebalance, a visibility timeout). The suites
//! panic on the first broken promise, as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::profile::{ExperimentBucket, ProfileStore, StoredProfile};
use crate::queue::{AckToken, Delivery, EventQueue, Record};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The value of `var` for a test that needs a server. When it is unset or empty: a panic when
/// `CI` is set (CI must run every test), else `None` after printing that the test skipped.
pub fn env_or_skip(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set but CI is: the test servers must run (see .ci/servers/)")
        }
        _ => {
            let test = std::thread::current().name().unwrap_or("test").to_owned();
            println!("SKIPPED {test}: set {var} to run it");
            None
        }
    }
}

/// A profile with the given (experiment id, variation id) entries.
pub fn profile(user: &str, entries: &[(&str, &str)]) -> StoredProfile {
    StoredProfile {
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

/// What every [`ProfileStore`] promises: its name, health, round trips, merging saves, other
/// users apart, unknown users absent, and concurrent saves for one user losing nothing. Call it
/// from a multi-threaded runtime (the concurrent saves run on several threads).
pub async fn profile_store_suite(store: Arc<dyn ProfileStore>, backend: &str) {
    assert_eq!(store.backend(), backend);
    store.health().await.unwrap();

    // Round trip and merge: a save merges into what is stored, a newer variation wins.
    store.save(&profile("u1", &[("e1", "v1")])).await.unwrap();
    assert_eq!(
        store.lookup("u1").await.unwrap(),
        Some(profile("u1", &[("e1", "v1")]))
    );
    store
        .save(&profile("u1", &[("e2", "v2"), ("e3", "v3")]))
        .await
        .unwrap();
    store.save(&profile("u1", &[("e1", "v9")])).await.unwrap();
    assert_eq!(
        store.lookup("u1").await.unwrap(),
        Some(profile("u1", &[("e1", "v9"), ("e2", "v2"), ("e3", "v3")]))
    );
    store.save(&profile("u1", &[("e4", "v4")])).await.unwrap();
    store.save(&profile("u1", &[("e1", "v3")])).await.unwrap();
    assert_eq!(
        store.lookup("u1").await.unwrap(),
        Some(profile(
            "u1",
            &[("e1", "v3"), ("e2", "v2"), ("e3", "v3"), ("e4", "v4")]
        ))
    );
    // Other users' profiles stay apart.
    store.save(&profile("u2", &[("e1", "v5")])).await.unwrap();
    assert_eq!(
        store.lookup("u2").await.unwrap(),
        Some(profile("u2", &[("e1", "v5")]))
    );
    assert_eq!(
        store
            .lookup("u1")
            .await
            .unwrap()
            .unwrap()
            .experiment_bucket_map
            .len(),
        4
    );

    // Unknown users have no profile.
    assert_eq!(store.lookup("nobody").await.unwrap(), None);

    // A replace keeps exactly its entries; one without entries deletes the profile.
    store
        .save(&profile("u3", &[("e1", "v1"), ("e2", "v2")]))
        .await
        .unwrap();
    store
        .replace(&profile("u3", &[("e2", "v7"), ("e5", "v5")]))
        .await
        .unwrap();
    assert_eq!(
        store.lookup("u3").await.unwrap(),
        Some(profile("u3", &[("e2", "v7"), ("e5", "v5")]))
    );
    store.replace(&profile("u3", &[])).await.unwrap();
    assert_eq!(store.lookup("u3").await.unwrap(), None);
    // A save after a replace merges into the replaced profile.
    store
        .replace(&profile("u3", &[("e1", "v1")]))
        .await
        .unwrap();
    store.save(&profile("u3", &[("e2", "v2")])).await.unwrap();
    assert_eq!(
        store.lookup("u3").await.unwrap(),
        Some(profile("u3", &[("e1", "v1"), ("e2", "v2")]))
    );

    // Concurrent saves for one user lose nothing: 32 single saves, then 32 saves of which half
    // carry a second, shared experiment (multi-entry saves race with single ones).
    for (user, mixed) in [("shared", false), ("shared-mixed", true)] {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (e, v) = (format!("exp{i}"), format!("var{i}"));
                    let entries = [(e.as_str(), v.as_str()), ("common", "c")];
                    let n = if mixed { 1 + i % 2 } else { 1 };
                    store.save(&profile(user, &entries[..n])).await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let stored = store.lookup(user).await.unwrap().unwrap();
        assert_eq!(stored.experiment_bucket_map.len(), 32 + usize::from(mixed));
        for i in 0..32 {
            assert_eq!(
                stored.experiment_bucket_map[&format!("exp{i}")].variation_id,
                format!("var{i}")
            );
        }
    }
}

/// In what order a queue hands records out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Exactly in publish order (the disk queue).
    Publish,
    /// In publish order per key (Kafka: a key's records share a partition).
    PerKey,
    /// No promise (SQS standard queues).
    None,
}

/// What the suite may expect of the queue under test beyond the trait's promises.
#[derive(Debug, Clone)]
pub struct QueueExpectations {
    /// The queue's [`EventQueue::backend`] name.
    pub backend: &'static str,
    pub order: Order,
    /// Whether [`EventQueue::depth`] is exactly `Some(0)` once everything is acked.
    pub exact_depth: bool,
    /// How long records may take to reach a receiver (a consumer-group join, a visibility
    /// timeout running out after a crash).
    pub patience: Duration,
    /// How soon released records are handed out again.
    pub release_latency: Duration,
}

/// The suite's records: key `visitor-<i % 13>`, value `event-<i:06>`.
pub fn record(i: usize) -> Record {
    Record {
        key: format!("visitor-{}", i % 13),
        value: format!("event-{i:06}").into_bytes(),
    }
}

/// The `i` of a [`record`].
pub fn index_of(d: &Delivery) -> usize {
    let v = std::str::from_utf8(&d.record.value).unwrap();
    v["event-".len().."event-".len() + 6].parse().unwrap()
}

/// The tokens of deliveries.
pub fn tokens(ds: &[Delivery]) -> Vec<AckToken> {
    ds.iter().map(|d| d.token.clone()).collect()
}

/// Receives (up to `max` per call) until `n` deliveries arrived or `within` passed.
pub async fn receive_n(
    q: &dyn EventQueue,
    n: usize,
    max: usize,
    within: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        out.extend(
            q.receive(max.min(n - out.len()), left.min(Duration::from_secs(2)))
                .await
                .unwrap(),
        );
    }
    out
}

/// Asserts the queue hands out nothing but what is published now: publishes a marker and
/// receives until it arrives (waiting a fixed time for nothing proves little when a group join
/// takes seconds), then a little longer.
pub async fn assert_drained(q: &dyn EventQueue, patience: Duration) {
    let marker = Record {
        key: "marker".into(),
        value: b"marker".to_vec(),
    };
    q.publish(std::slice::from_ref(&marker)).await.unwrap();
    let deadline = Instant::now() + patience;
    let mut got: Vec<Delivery> = Vec::new();
    while !got.iter().any(|d| d.record == marker) {
        assert!(Instant::now() < deadline, "the marker never arrived");
        got.extend(q.receive(100, Duration::from_secs(2)).await.unwrap());
    }
    got.extend(q.receive(100, Duration::from_millis(500)).await.unwrap());
    let old = got.iter().filter(|d| d.record != marker).count();
    assert_eq!(old, 0, "redelivered {old} acked records");
    q.ack(&tokens(&got)).await.unwrap();
}

/// What every [`EventQueue`] promises, case by case. `open(case)` opens the queue of that case
/// (its own directory, topic or queue); called again with the same case it opens the same
/// queue anew, as a restarted process would (the suite drops the previous one first). Call it
/// from a multi-threaded runtime.
pub async fn event_queue_suite<F, Fut>(open: F, expect: QueueExpectations)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn EventQueue>>,
{
    round_trip(&open, &expect).await;
    redelivered_after_a_crash(&open, &expect).await;
    release_and_foreign_tokens(&open, &expect).await;
    concurrent_receivers_never_share_a_record(&open, &expect).await;
}

/// 5000 records come back intact, each once, in the promised order; acked, they are gone, and
/// stay gone after a restart.
async fn round_trip<F, Fut>(open: &F, expect: &QueueExpectations)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn EventQueue>>,
{
    let q = open("round-trip").await;
    assert_eq!(q.backend(), expect.backend);
    q.health().await.unwrap();
    let all: Vec<Record> = (0..5000).map(record).collect();
    let t = Instant::now();
    for chunk in all.chunks(500) {
        q.publish(chunk).await.unwrap();
    }
    let published = t.elapsed();
    let t = Instant::now();
    let got = receive_n(&*q, 5000, 700, expect.patience + Duration::from_secs(30)).await;
    println!(
        "{}: published 5000 in {published:?}, received them in {:?}",
        expect.backend,
        t.elapsed()
    );
    for d in &got {
        assert_eq!(d.record, record(index_of(d)), "records come back intact");
    }
    let idx: Vec<usize> = got.iter().map(index_of).collect();
    match expect.order {
        Order::Publish => assert_eq!(idx, (0..5000).collect::<Vec<_>>(), "in publish order"),
        Order::PerKey => {
            let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for d in &got {
                by_key
                    .entry(d.record.key.as_str())
                    .or_default()
                    .push(index_of(d));
            }
            for (key, seq) in &by_key {
                assert!(seq.windows(2).all(|w| w[0] < w[1]), "{key} out of order");
            }
        }
        Order::None => {}
    }
    let mut sorted = idx;
    sorted.sort_unstable();
    assert_eq!(sorted, (0..5000).collect::<Vec<_>>(), "each record once");

    q.ack(&tokens(&got)).await.unwrap();
    // Acking again (a repeat after a lost answer) changes nothing.
    q.ack(&tokens(&got)).await.unwrap();
    if expect.exact_depth {
        assert_eq!(q.depth().await.unwrap(), Some(0));
    }
    assert!(q
        .receive(10, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
    drop(q);

    // Everything was acked: the queue opened anew hands out nothing old.
    let q = open("round-trip").await;
    assert_drained(&*q, expect.patience).await;
}

/// Records received and neither acked nor released (a crash) are delivered again.
async fn redelivered_after_a_crash<F, Fut>(open: &F, expect: &QueueExpectations)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn EventQueue>>,
{
    let q = open("crash").await;
    q.publish(&(0..100).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = receive_n(&*q, 100, 100, expect.patience).await;
    assert_eq!(got.len(), 100);
    drop(q); // nothing acked, nothing released

    let q = open("crash").await;
    let again = receive_n(&*q, 100, 100, expect.patience).await;
    let idx: BTreeSet<usize> = again.iter().map(index_of).collect();
    assert_eq!(idx, (0..100).collect(), "every unacked record comes back");
    q.ack(&tokens(&again)).await.unwrap();
    assert_drained(&*q, expect.patience).await;
}

/// Released records are handed out again at once, in the order released; releasing twice, or
/// after an ack, or a token the queue does not know changes nothing; a token of another
/// backend is refused.
async fn release_and_foreign_tokens<F, Fut>(open: &F, expect: &QueueExpectations)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn EventQueue>>,
{
    let q = open("release").await;
    q.publish(&(0..10).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = receive_n(&*q, 10, 10, expect.patience).await;
    assert_eq!(got.len(), 10);
    let mut got = got;
    got.sort_by_key(index_of);
    let (odd, even): (Vec<_>, Vec<_>) = got.iter().cloned().partition(|d| index_of(d) % 2 == 1);
    q.release(&tokens(&odd)).await.unwrap();
    q.release(&tokens(&odd)).await.unwrap(); // twice changes nothing
    q.ack(&tokens(&even)).await.unwrap();
    let t = Instant::now();
    let again = receive_n(&*q, 5, 10, expect.release_latency + Duration::from_secs(5)).await;
    assert!(
        t.elapsed() < expect.release_latency,
        "released records are handed out at once (took {:?})",
        t.elapsed()
    );
    assert_eq!(
        again.iter().map(index_of).collect::<Vec<_>>(),
        vec![1, 3, 5, 7, 9]
    );
    // Releasing something acked or unknown does nothing; a token of another kind is an error.
    let unknown = match &even[0].token {
        AckToken::Disk { .. } => AckToken::Disk {
            batch: 12345,
            index: 0,
        },
        AckToken::Kafka { partition, .. } => AckToken::Kafka {
            partition: *partition,
            offset: 1 << 40,
        },
        AckToken::Sqs { .. } => AckToken::Sqs {
            message: 1 << 40,
            index: 0,
        },
    };
    q.release(&[even[0].token.clone(), unknown.clone()])
        .await
        .unwrap();
    q.ack(&[unknown]).await.unwrap();
    let foreign = match &even[0].token {
        AckToken::Disk { .. } => AckToken::Kafka {
            partition: 0,
            offset: 0,
        },
        _ => AckToken::Disk { batch: 0, index: 0 },
    };
    assert!(q.release(std::slice::from_ref(&foreign)).await.is_err());
    assert!(q.ack(&[foreign]).await.is_err());
    q.ack(&tokens(&again)).await.unwrap();
    assert!(q
        .receive(10, Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
    drop(q);

    let q = open("release").await;
    assert_drained(&*q, expect.patience).await;
}

/// Receivers sharing one queue never get the same record.
async fn concurrent_receivers_never_share_a_record<F, Fut>(open: &F, expect: &QueueExpectations)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn EventQueue>>,
{
    let q = open("concurrent").await;
    let all: Vec<Record> = (0..3000).map(record).collect();
    for chunk in all.chunks(500) {
        q.publish(chunk).await.unwrap();
    }
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + expect.patience + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (q, seen) = (Arc::clone(&q), Arc::clone(&seen));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while seen.load(std::sync::atomic::Ordering::Relaxed) < 3000
                && Instant::now() < deadline
            {
                let got = q.receive(50, Duration::from_millis(500)).await.unwrap();
                q.ack(&tokens(&got)).await.unwrap();
                seen.fetch_add(got.len(), std::sync::atomic::Ordering::Relaxed);
                mine.extend(got.iter().map(index_of));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..3000).collect::<Vec<_>>());
}

/// An AWS configuration with static dummy credentials for `region` (test servers check none,
/// the SDK insists on some), so no test reads credentials from, or sets, the environment, and
/// none probes instance metadata; with the test server's endpoint when given.
#[cfg(feature = "sqs")]
pub async fn test_aws_config(region: &str, endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "bucketd-tests",
        ));
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// Builds a queue as [`crate::EventQueueConfig::build`] does, except that SQS gets the static
/// test credentials of [`test_aws_config`] instead of the standard AWS chain.
pub async fn build_queue(
    config: &crate::EventQueueConfig,
) -> Result<Arc<dyn EventQueue>, crate::BackendError> {
    match config {
        #[cfg(feature = "sqs")]
        crate::EventQueueConfig::Sqs(c) => {
            let sdk = test_aws_config(&c.region, None).await;
            Ok(Arc::new(
                crate::queue::sqs::SqsQueue::connect_with(c, &sdk).await?,
            ))
        }
        #[allow(unreachable_patterns)] // with only the sqs feature
        other => other.build().await,
    }
}
