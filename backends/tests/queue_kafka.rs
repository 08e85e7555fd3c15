//! The Kafka queue against real brokers: tansu (`BUCKETD_TEST_KAFKA_BROKERS`) and noida-db
//! (`BUCKETD_TEST_KAFKA_BROKERS_NOIDA`), two independent implementations of the protocol.
//! Every test uses its own topic and consumer group, so they run in parallel.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::queue::kafka::{KafkaConfig, KafkaQueue};
use backends::queue::{AckToken, Delivery, EventQueue, Record};
use backends::testing::{env_or_skip, event_queue_suite, Order, QueueExpectations};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(brokers: &str, test: &str, server: &str, partitions: i32) -> KafkaConfig {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!(
        "bucketd-test-{test}-{server}-{}-{nanos}",
        std::process::id()
    );
    let mut c = KafkaConfig::new(brokers);
    c.topic = name.replace('_', "-");
    c.group_id = format!("{name}-group");
    c.partitions = partitions;
    // Fast group joins (test-servers.md): tansu takes about half the session timeout.
    c.properties
        .insert("session.timeout.ms".into(), "6000".into());
    c.properties
        .insert("heartbeat.interval.ms".into(), "300".into());
    c
}

fn record(i: usize) -> Record {
    Record {
        key: format!("visitor-{}", i % 13),
        value: format!("event-{i:06}").into_bytes(),
    }
}

fn index_of(d: &Delivery) -> usize {
    std::str::from_utf8(&d.record.value).unwrap()["event-".len()..]
        .parse()
        .unwrap()
}

fn partition_offset(t: &AckToken) -> (i32, i64) {
    let AckToken::Kafka { partition, offset } = *t else {
        panic!("not a kafka token: {t:?}")
    };
    (partition, offset)
}

async fn publish(q: &KafkaQueue, range: std::ops::Range<usize>, batch: usize) {
    let all: Vec<Record> = range.map(record).collect();
    for chunk in all.chunks(batch) {
        q.publish(chunk).await.unwrap();
    }
}

/// Receives until `n` deliveries arrived or `within` passed.
async fn receive_n(q: &KafkaQueue, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        out.extend(
            q.receive(n - out.len(), left.min(Duration::from_secs(2)))
                .await
                .unwrap(),
        );
    }
    out
}

/// Asserts the member gets nothing but what is published now. Waiting a fixed time for
/// nothing to arrive proves little when a group join takes seconds, so it publishes a marker
/// and receives until the marker arrives (the member has joined and fetches), then a little
/// longer for the other partitions.
async fn assert_drained(q: &KafkaQueue) {
    let marker = Record {
        key: "marker".into(),
        value: b"marker".to_vec(),
    };
    q.publish(std::slice::from_ref(&marker)).await.unwrap();
    let deadline = Instant::now() + JOIN;
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

/// Long enough for a group join on tansu (about 3 s with a 6 s session timeout).
const JOIN: Duration = Duration::from_secs(30);

fn tokens(ds: &[Delivery]) -> Vec<AckToken> {
    ds.iter().map(|d| d.token.clone()).collect()
}

async fn conformance(brokers: &str, server: &str) {
    // One topic per case, named once for this run: opening a case again reconnects to it.
    let run = config(brokers, "conformance", server, 4);
    event_queue_suite(
        move |case| {
            let cfg = KafkaConfig {
                topic: format!("{}-{case}", run.topic),
                group_id: format!("{}-{case}", run.group_id),
                ..run.clone()
            };
            async move { Arc::new(KafkaQueue::connect(&cfg).await.unwrap()) as Arc<dyn EventQueue> }
        },
        QueueExpectations {
            backend: "kafka",
            order: Order::PerKey,
            // tansu 0.6 counts record batches in its high watermark, not records.
            exact_depth: server == "noida",
            patience: JOIN,
            release_latency: Duration::from_secs(1),
        },
    )
    .await;
}

async fn unacked_records_are_redelivered_after_reconnect(brokers: &str, server: &str) {
    let cfg = config(brokers, "redeliver", server, 4);
    let q = KafkaQueue::connect(&cfg).await.unwrap();
    publish(&q, 0..400, 100).await;
    let got = receive_n(&q, 400, JOIN).await;
    assert_eq!(got.len(), 400);
    // Ack the first half of each partition's records (a prefix), keep the rest in flight.
    let mut per_partition: BTreeMap<i32, Vec<&Delivery>> = BTreeMap::new();
    for d in &got {
        per_partition
            .entry(partition_offset(&d.token).0)
            .or_default()
            .push(d);
    }
    let mut acked = BTreeSet::new();
    let mut to_ack = Vec::new();
    for ds in per_partition.values() {
        for d in &ds[..ds.len() / 2] {
            acked.insert(index_of(d));
            to_ack.push(d.token.clone());
        }
    }
    q.ack(&to_ack).await.unwrap();
    drop(q); // a crash of the flusher, as far as the group can tell

    let q = KafkaQueue::connect(&cfg).await.unwrap();
    let again: BTreeSet<usize> = receive_n(&q, 400 - acked.len(), JOIN)
        .await
        .iter()
        .map(index_of)
        .collect();
    let expected: BTreeSet<usize> = (0..400).filter(|i| !acked.contains(i)).collect();
    assert_eq!(again, expected);
}

async fn out_of_order_acks_never_skip_a_record(brokers: &str, server: &str) {
    let cfg = config(brokers, "out-of-order", server, 1);
    let q = KafkaQueue::connect(&cfg).await.unwrap();
    publish(&q, 0..1000, 250).await;
    let got = receive_n(&q, 1000, JOIN).await;
    assert_eq!(got.len(), 1000);
    let offsets: Vec<i64> = got.iter().map(|d| partition_offset(&d.token).1).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    // Ack everything but positions 10 and 500, in a scrambled order.
    let mut to_ack = Vec::new();
    for k in 0..1000 {
        let i = (k * 389) % 1000;
        if i != 10 && i != 500 {
            to_ack.push(got[i].token.clone());
        }
    }
    for chunk in to_ack.chunks(33) {
        q.ack(chunk).await.unwrap();
    }
    drop(q);

    // The committed position stopped at position 10: everything from it comes again.
    let q = KafkaQueue::connect(&cfg).await.unwrap();
    let again: Vec<usize> = receive_n(&q, 990, JOIN)
        .await
        .iter()
        .map(index_of)
        .collect();
    let first: Vec<usize> = got[10..].iter().map(index_of).collect();
    assert_eq!(again, first);
    assert_drained(&q).await;
}

async fn topic_creation(brokers: &str, server: &str) {
    let cfg = config(brokers, "create", server, 2);
    // Created once, then found existing.
    let q1 = KafkaQueue::connect(&cfg).await.unwrap();
    let q2 = KafkaQueue::connect(&cfg).await.unwrap();
    let no_create = KafkaConfig {
        create: false,
        ..cfg.clone()
    };
    let q3 = KafkaQueue::connect(&no_create).await.unwrap();
    drop((q1, q2, q3));

    let missing = KafkaConfig {
        create: false,
        ..config(brokers, "missing", server, 1)
    };
    let Err(err) = KafkaQueue::connect(&missing).await else {
        panic!("{server}: connected to a topic that does not exist")
    };
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

async fn dead_letter_topic_keeps_records_and_reason(brokers: &str, server: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let plain = config(brokers, "nodlq", server, 1);
    assert!(!KafkaQueue::connect(&plain).await.unwrap().has_dead_letter());
    let mut cfg = config(brokers, "dlq", server, 2);
    cfg.dead_letter_topic = Some(format!("{}-dead-letter", cfg.topic));
    let q = KafkaQueue::connect(&cfg).await.unwrap();
    assert!(q.has_dead_letter());
    let rejected: Vec<Record> = (0..5).map(record).collect();
    q.dead_letter(&rejected, "HTTP 400: bad event")
        .await
        .unwrap();

    // Read the dead-letter topic as an operator would, straight from the broker.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{}-reader", cfg.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let dlq = cfg.dead_letter_topic.clone().unwrap();
    for p in 0..2 {
        tpl.add_partition_offset(&dlq, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < rejected.len() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let reason = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "bucketd-reason"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        got.push((
            Record {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: m.payload().unwrap_or_default().to_vec(),
            },
            reason,
        ));
    }
    got.sort_by(|a, b| a.0.value.cmp(&b.0.value));
    assert_eq!(got.len(), rejected.len(), "{server}: dead-lettered records");
    for ((r, reason), want) in got.iter().zip(&rejected) {
        assert_eq!(r, want, "{server}");
        assert_eq!(reason.as_deref(), Some("HTTP 400: bad event"), "{server}");
    }
    // Nothing went to the events topic.
    assert_drained(&q).await;

    let missing = KafkaConfig {
        create: false,
        dead_letter_topic: Some(format!("{}-absent", cfg.topic)),
        ..cfg.clone()
    };
    let Err(err) = KafkaQueue::connect(&missing).await else {
        panic!("{server}: connected with a dead-letter topic that does not exist")
    };
    assert!(err.to_string().contains("does not exist"), "{err}");
}

async fn group_join_and_depth(brokers: &str, server: &str) {
    let cfg = config(brokers, "join", server, 1);
    let q = KafkaQueue::connect(&cfg).await.unwrap();
    for i in 0..10 {
        publish(&q, i * 10..i * 10 + 10, 10).await;
    }
    let depth = q.depth().await.unwrap();
    println!("{server}: depth with 100 records in 10 publishes, nothing committed: {depth:?}");
    if server == "noida" {
        assert_eq!(depth, Some(100));
    } else {
        assert!(matches!(depth, Some(d) if d > 0));
    }
    let t = Instant::now();
    let first = q.receive(100, JOIN).await.unwrap();
    let joined = t.elapsed();
    println!("{server}: first delivery {joined:?} after the first receive (group join)");
    assert!(!first.is_empty());
    assert!(
        joined < Duration::from_secs(15),
        "group join took {joined:?}"
    );
    let mut all = first;
    all.extend(receive_n(&q, 100 - all.len(), Duration::from_secs(10)).await);
    q.ack(&tokens(&all[..50])).await.unwrap();
    let depth = q.depth().await.unwrap();
    println!("{server}: depth after acking 50: {depth:?}");
    if server == "noida" {
        assert_eq!(depth, Some(50));
    }
}

async fn rebalance_redelivers_unacked_records_to_the_new_owner(brokers: &str, server: &str) {
    let cfg = config(brokers, "rebalance", server, 4);
    let a = Arc::new(KafkaQueue::connect(&cfg).await.unwrap());
    publish(&a, 0..400, 100).await;
    let got_a = receive_n(&a, 400, JOIN).await;
    assert_eq!(got_a.len(), 400);

    // A second member joins while A holds everything unacked. A keeps receiving, as a flusher
    // does, so it takes part in the rebalance.
    let b = KafkaQueue::connect(&cfg).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let a_loop = tokio::spawn({
        let (a, stop) = (Arc::clone(&a), Arc::clone(&stop));
        async move {
            let mut again = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                again.extend(a.receive(100, Duration::from_millis(200)).await.unwrap());
            }
            again
        }
    });
    let t = Instant::now();
    let mut got_b = receive_n(&b, 1, JOIN).await;
    println!(
        "{server}: rebalance gave the new member records after {:?}",
        t.elapsed()
    );
    got_b.extend(receive_n(&b, 400, Duration::from_secs(5)).await);
    stop.store(true, Ordering::Relaxed);
    let again_a = a_loop.await.unwrap();

    // B owns some partitions now and got every record of them: A's unacked records there
    // were redelivered to B.
    let b_partitions: BTreeSet<i32> = got_b.iter().map(|d| partition_offset(&d.token).0).collect();
    assert!(
        !b_partitions.is_empty() && b_partitions.len() < 4,
        "{b_partitions:?}"
    );
    let of = |ds: &[Delivery], keep: &dyn Fn(i32) -> bool| -> BTreeSet<usize> {
        ds.iter()
            .filter(|d| keep(partition_offset(&d.token).0))
            .map(index_of)
            .collect()
    };
    let expected_b = of(&got_a, &|p| b_partitions.contains(&p));
    assert_eq!(of(&got_b, &|_| true), expected_b);
    // Acks from A for partitions it lost are ignored, not errors; nothing of B's is committed.
    a.ack(&tokens(&got_a)).await.unwrap();
    // Each member acks what it got after the rebalance; then nothing is left for anyone.
    a.ack(&tokens(&again_a)).await.unwrap();
    b.ack(&tokens(&got_b)).await.unwrap();
    assert_eq!(
        of(&again_a, &|_| true).len() + expected_b.len(),
        400,
        "after the rebalance A got again exactly the records of the partitions it kept"
    );
    drop((a, b));
    let c = KafkaQueue::connect(&cfg).await.unwrap();
    assert_drained(&c).await;
}

/// `cargo test -p backends --features kafka --test queue_kafka -- --ignored --nocapture`
async fn throughput(brokers: &str, server: &str) {
    let cfg = config(brokers, "throughput", server, 4);
    let q = KafkaQueue::connect(&cfg).await.unwrap();
    let n = 100_000;
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            key: format!("visitor-{}", i % 5000),
            value: vec![b'x'; 100],
        })
        .collect();
    let t = Instant::now();
    for chunk in records.chunks(500) {
        q.publish(chunk).await.unwrap();
    }
    let publish = t.elapsed();
    // Join the group first, so the drain rate does not include the join.
    let mut received = q.receive(500, JOIN).await.unwrap();
    q.ack(&tokens(&received)).await.unwrap();
    let mut count = received.len();
    let t = Instant::now();
    while count < n {
        received = q.receive(500, Duration::from_secs(5)).await.unwrap();
        assert!(!received.is_empty(), "stalled at {count}");
        count += received.len();
        q.ack(&tokens(&received)).await.unwrap();
    }
    let drain = t.elapsed();
    println!(
        "{server}: publish {n} records (100 B, batches of 500): {:.0}/s; receive+ack (batches \
         of 500): {:.0}/s",
        n as f64 / publish.as_secs_f64(),
        n as f64 / drain.as_secs_f64()
    );
}

macro_rules! against {
    ($server:ident, $var:literal, $($test:ident),* $(,)?) => {
        mod $server {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "throughput measurement"]
            async fn throughput() {
                let Some(brokers) = super::env_or_skip($var) else { return };
                super::throughput(&brokers, stringify!($server)).await;
            }
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(brokers) = super::env_or_skip($var) else { return };
                    super::$test(&brokers, stringify!($server)).await;
                }
            )*
        }
    };
}

against!(
    tansu,
    "BUCKETD_TEST_KAFKA_BROKERS",
    conformance,
    unacked_records_are_redelivered_after_reconnect,
    out_of_order_acks_never_skip_a_record,
    topic_creation,
    dead_letter_topic_keeps_records_and_reason,
    group_join_and_depth,
    rebalance_redelivers_unacked_records_to_the_new_owner,
);

against!(
    noida,
    "BUCKETD_TEST_KAFKA_BROKERS_NOIDA",
    conformance,
    unacked_records_are_redelivered_after_reconnect,
    out_of_order_acks_never_skip_a_record,
    topic_creation,
    dead_letter_topic_keeps_records_and_reason,
    group_join_and_depth,
    rebalance_redelivers_unacked_records_to_the_new_owner,
);

#[test]
#[allow(irrefutable_let_patterns)] // with only the kafka feature, Kafka is the only variant
fn config_parses_with_defaults_and_rejects_typos() {
    let c: backends::EventQueueConfig = serde_json::from_str(
        r#"{"type": "kafka", "brokers": "k1:9092,k2:9092",
            "properties": {"security.protocol": "ssl"}}"#,
    )
    .unwrap();
    let backends::EventQueueConfig::Kafka(c) = c else {
        panic!("{c:?}")
    };
    assert_eq!(c.brokers, "k1:9092,k2:9092");
    assert_eq!(c.topic, "bucketd-events");
    assert_eq!(c.group_id, "bucketd-flusher");
    assert_eq!(c.partitions, 4);
    assert_eq!(c.replication_factor, -1);
    assert!(c.create);
    assert_eq!(c.properties["security.protocol"], "ssl");
    let typo =
        serde_json::from_str::<backends::EventQueueConfig>(r#"{"type": "kafka", "broker": "x"}"#);
    assert!(typo.is_err());
}
