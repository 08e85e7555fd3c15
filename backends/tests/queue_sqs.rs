//! The SQS queue against a real SQS-protocol server (moto, `BUCKETD_TEST_SQS_ENDPOINT`): the
//! conformance suite, then what is SQS's own (packing records into messages, visibility).
//! Every test uses its own queue, so they run in parallel.
#![cfg(feature = "sqs")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::queue::sqs::{SqsConfig, SqsQueue};
use backends::queue::{AckToken, Delivery, EventQueue, EventQueueConfig, Record};
use backends::testing::{env_or_skip, event_queue_suite, Order, QueueExpectations};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENDPOINT: &str = "BUCKETD_TEST_SQS_ENDPOINT";

fn config(endpoint: &str, test: &str) -> SqsConfig {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut c = SqsConfig::named(format!(
        "bucketd-test-{test}-{}-{nanos}",
        std::process::id()
    ));
    c.endpoint_url = Some(endpoint.to_owned());
    c.wait = Duration::from_secs(2);
    c
}

async fn test_sdk(region: &str, endpoint: Option<&str>) -> aws_config::SdkConfig {
    backends::testing::test_aws_config(region, endpoint).await
}

async fn connect(cfg: &SqsConfig) -> Result<SqsQueue, backends::BackendError> {
    SqsQueue::connect_with(cfg, &test_sdk(&cfg.region, None).await).await
}

fn record(i: usize) -> Record {
    Record {
        key: format!("visitor-{}", i % 13),
        value: format!("event-{i:06}").into_bytes(),
    }
}

fn index_of(d: &Delivery) -> usize {
    let v = std::str::from_utf8(&d.record.value).unwrap();
    v["event-".len().."event-".len() + 6].parse().unwrap()
}

fn tokens(ds: &[Delivery]) -> Vec<AckToken> {
    ds.iter().map(|d| d.token.clone()).collect()
}

/// Receives until `n` deliveries arrived or `within` passed.
async fn receive_n(q: &SqsQueue, n: usize, max: usize, within: Duration) -> Vec<Delivery> {
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

macro_rules! endpoint_or_skip {
    ($test:literal) => {
        match env_or_skip(ENDPOINT) {
            Some(e) => e,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let ep = endpoint_or_skip!("conformance");
    // One queue per case, named once for this run: opening a case again reconnects to it.
    let run = config(&ep, "conformance");
    event_queue_suite(
        move |case| {
            let mut cfg = SqsConfig {
                queue_name: Some(format!("{}-{case}", run.queue_name.clone().unwrap())),
                ..run.clone()
            };
            if case == "crash" {
                // Records held by a crashed receiver come back once this runs out.
                cfg.visibility_timeout = Duration::from_secs(2);
            }
            async move { Arc::new(connect(&cfg).await.unwrap()) as Arc<dyn EventQueue> }
        },
        QueueExpectations {
            backend: "sqs",
            order: Order::None,
            exact_depth: true,
            patience: Duration::from_secs(20),
            release_latency: Duration::from_secs(5),
        },
    )
    .await;
}

#[tokio::test]
async fn publishes_pack_records_into_few_messages() {
    let ep = endpoint_or_skip!("publishes_pack_records_into_few_messages");
    let q = connect(&config(&ep, "round-trip")).await.unwrap();
    let all: Vec<Record> = (0..5000).map(record).collect();
    for chunk in all.chunks(500) {
        q.publish(chunk).await.unwrap();
    }
    let messages = q.depth().await.unwrap().unwrap();
    assert_eq!(messages, 10, "one message per publish of 500 small records");
    let got = receive_n(&q, 5000, 1000, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 5000);
    q.ack(&tokens(&got)).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), Some(0));
}

#[tokio::test]
async fn large_publishes_split_into_messages_and_calls() {
    let ep = endpoint_or_skip!("large_publishes_split_into_messages_and_calls");
    let q = connect(&config(&ep, "large")).await.unwrap();
    // 3,000 records of 1 KiB: more than one 256 KiB message and more than one batch call.
    let big = |i: usize| {
        let mut r = record(i);
        r.value.resize(1024, b'.');
        r
    };
    let all: Vec<Record> = (0..3000).map(big).collect();
    q.publish(&all).await.unwrap();
    let messages = q.depth().await.unwrap().unwrap();
    assert!((16..=17).contains(&messages), "{messages} messages");
    let got = receive_n(&q, 3000, 3000, Duration::from_secs(30)).await;
    let mut idx: Vec<usize> = got.iter().map(index_of).collect();
    idx.sort_unstable();
    assert_eq!(idx, (0..3000).collect::<Vec<_>>());
    for d in &got {
        assert_eq!(d.record, big(index_of(d)));
    }
    q.ack(&tokens(&got)).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), Some(0));

    // One record too large for any message.
    let huge = Record {
        key: "k".into(),
        value: vec![0; 200 * 1024],
    };
    let err = q.publish(&[huge]).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    // Just under the limit fits.
    let fits = Record {
        key: "k".into(),
        value: vec![7; 190 * 1024],
    };
    q.publish(std::slice::from_ref(&fits)).await.unwrap();
    let got = receive_n(&q, 1, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].record, fits);
    q.ack(&tokens(&got)).await.unwrap();
}

#[tokio::test]
async fn receive_hands_out_a_message_over_several_calls() {
    let ep = endpoint_or_skip!("receive_hands_out_a_message_over_several_calls");
    let q = connect(&config(&ep, "split")).await.unwrap();
    q.publish(&(0..100).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    while all.len() < 100 {
        let got = q.receive(30, Duration::from_secs(5)).await.unwrap();
        assert!(!got.is_empty());
        sizes.push(got.len());
        all.extend(got);
    }
    assert_eq!(sizes, vec![30, 30, 30, 10]);
    // The message goes only when every record of it is acked.
    q.ack(&tokens(&all[..99])).await.unwrap();
    assert_eq!(depth_in_flight(&q).await, 1);
    q.ack(&tokens(&all[99..])).await.unwrap();
    assert_eq!(depth_in_flight(&q).await, 0);
}

/// Messages received and not deleted.
async fn depth_in_flight(q: &SqsQueue) -> u64 {
    // Read through a second client so the queue under test is not disturbed.
    let sdk = test_sdk("us-east-1", Some(&std::env::var(ENDPOINT).unwrap())).await;
    let out = aws_sdk_sqs::Client::new(&sdk)
        .get_queue_attributes()
        .queue_url(q.queue_url())
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .send()
        .await
        .unwrap();
    out.attributes()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn unacked_records_come_back_after_a_restart() {
    let ep = endpoint_or_skip!("unacked_records_come_back_after_a_restart");
    let mut cfg = config(&ep, "redeliver");
    cfg.visibility_timeout = Duration::from_secs(2);
    let q = connect(&cfg).await.unwrap();
    // Three publishes, three messages.
    for part in 0..3 {
        q.publish(
            &(part * 100..part * 100 + 100)
                .map(record)
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    }
    let got = receive_n(&q, 300, 300, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 300);
    // Ack everything except record 150, scrambled: messages 0 and 2 go, message 1 stays.
    let mut to_ack = Vec::new();
    for k in 0..300 {
        let d = &got[(k * 97) % 300];
        if index_of(d) != 150 {
            to_ack.push(d.token.clone());
        }
    }
    for chunk in to_ack.chunks(41) {
        q.ack(chunk).await.unwrap();
    }
    drop(q); // a crash: nothing released

    let q = connect(&cfg).await.unwrap();
    let t = Instant::now();
    let again = receive_n(&q, 100, 100, Duration::from_secs(20)).await;
    println!("sqs: unacked message back after {:?}", t.elapsed());
    let idx: BTreeSet<usize> = again.iter().map(index_of).collect();
    // The whole message holding record 150 comes back (the acked records of it too: the
    // unit of redelivery is the message), nothing of the fully acked ones.
    assert_eq!(idx, (100..200).collect());
    q.ack(&tokens(&again)).await.unwrap();
    assert!(receive_n(&q, 1, 1, Duration::from_secs(4)).await.is_empty());
}

#[tokio::test]
async fn keep_held_stops_other_receivers_from_getting_records_in_flight() {
    let ep = endpoint_or_skip!("keep_held_stops_other_receivers_from_getting_records_in_flight");
    let mut cfg = config(&ep, "hold");
    cfg.visibility_timeout = Duration::from_secs(2);
    let holder = connect(&cfg).await.unwrap();
    let other = connect(&cfg).await.unwrap();
    let every = holder.hold_interval().expect("sqs holds expire");
    assert!(every < cfg.visibility_timeout);
    holder
        .publish(&(0..50).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = receive_n(&holder, 50, 50, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 50);
    // Three visibility timeouts long, the holder keeps extending: the other receiver gets nothing.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        holder.keep_held().await.unwrap();
        let stolen = other.receive(50, every).await.unwrap();
        assert!(
            stolen.is_empty(),
            "held records went to another receiver after {:?}",
            t.elapsed()
        );
    }
    // Once the holder stops extending (a crash), they come back to the other receiver.
    drop(holder);
    let again = receive_n(&other, 50, 50, Duration::from_secs(15)).await;
    assert_eq!(
        again.iter().map(index_of).collect::<BTreeSet<_>>(),
        (0..50).collect()
    );
    other.ack(&tokens(&again)).await.unwrap();
}

#[tokio::test]
async fn dead_letter_queue_keeps_records_and_reason() {
    let ep = endpoint_or_skip!("dead_letter_queue_keeps_records_and_reason");
    assert!(!connect(&config(&ep, "nodlq"))
        .await
        .unwrap()
        .has_dead_letter());
    let mut cfg = config(&ep, "dlq");
    let dlq_name = format!("{}-dead-letter", cfg.queue_name.clone().unwrap());
    cfg.dead_letter_queue = Some(dlq_name.clone());
    let q = connect(&cfg).await.unwrap();
    assert!(q.has_dead_letter());
    let rejected: Vec<Record> = (0..5).map(record).collect();
    q.dead_letter(&rejected, "HTTP 400: bad event")
        .await
        .unwrap();

    // The reason travels as a message attribute (read with a plain SQS client)...
    let sdk = test_sdk(&cfg.region, Some(&ep)).await;
    let raw = aws_sdk_sqs::Client::new(&sdk);
    let dlq_url = raw
        .get_queue_url()
        .queue_name(&dlq_name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let got = raw
        .receive_message()
        .queue_url(&dlq_url)
        .message_attribute_names("All")
        .visibility_timeout(0)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let m = &got.messages()[0];
    let reason = m
        .message_attributes()
        .and_then(|a| a.get("bucketd-reason"))
        .and_then(|v| v.string_value());
    assert_eq!(reason, Some("HTTP 400: bad event"));
    // ...and the records, in the usual packed body, read back by a queue over the DLQ.
    let reader = connect(&SqsConfig {
        queue_url: Some(dlq_url),
        ..config(&ep, "dlq-reader")
    })
    .await
    .unwrap();
    let back = receive_n(&reader, 5, 10, Duration::from_secs(10)).await;
    let mut records: Vec<Record> = back.iter().map(|d| d.record.clone()).collect();
    records.sort_by(|a, b| a.value.cmp(&b.value));
    assert_eq!(records, rejected);
    // Nothing went to the events queue.
    assert!(receive_n(&q, 1, 1, Duration::from_secs(2)).await.is_empty());

    let missing = connect(&SqsConfig {
        create: false,
        dead_letter_queue: Some(format!("{dlq_name}-absent")),
        ..cfg.clone()
    })
    .await;
    let Err(err) = missing else {
        panic!("connected with a dead-letter queue that does not exist")
    };
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn release_makes_records_receivable_again() {
    let ep = endpoint_or_skip!("release_makes_records_receivable_again");
    let q = connect(&config(&ep, "release")).await.unwrap(); // 60 s visibility
    q.publish(&(0..10).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = receive_n(&q, 10, 10, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 10);

    // All released: the message itself becomes visible again, well before 60 s.
    q.release(&tokens(&got)).await.unwrap();
    let t = Instant::now();
    let again = receive_n(&q, 10, 10, Duration::from_secs(10)).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        again.iter().map(index_of).collect::<BTreeSet<_>>(),
        (0..10).collect()
    );

    // Some acked, the rest released: only the rest comes back.
    let (odd, even): (Vec<_>, Vec<_>) = again.iter().cloned().partition(|d| index_of(d) % 2 == 1);
    q.ack(&tokens(&even)).await.unwrap();
    q.release(&tokens(&odd)).await.unwrap();
    let rest = receive_n(&q, 5, 10, Duration::from_secs(10)).await;
    assert_eq!(
        rest.iter().map(index_of).collect::<Vec<_>>(),
        vec![1, 3, 5, 7, 9]
    );
    q.ack(&tokens(&rest)).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), Some(0));
    assert!(q
        .receive(10, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(depth_in_flight(&q).await, 0);
}

#[tokio::test]
async fn queue_lookup_and_creation() {
    let ep = endpoint_or_skip!("queue_lookup_and_creation");
    let cfg = config(&ep, "create");
    let q1 = connect(&cfg).await.unwrap();
    // Created already: found.
    let q2 = connect(&SqsConfig {
        create: false,
        ..cfg.clone()
    })
    .await
    .unwrap();
    assert_eq!(q1.queue_url(), q2.queue_url());
    // Different attributes than the existing queue: still used.
    let q3 = connect(&SqsConfig {
        visibility_timeout: Duration::from_secs(5),
        ..cfg.clone()
    })
    .await
    .unwrap();
    assert_eq!(q1.queue_url(), q3.queue_url());
    // By URL.
    let by_url = SqsConfig {
        queue_name: None,
        queue_url: Some(q1.queue_url().into()),
        ..cfg.clone()
    };
    let q4 = connect(&by_url).await.unwrap();
    q4.publish(&[record(1)]).await.unwrap();
    assert_eq!(
        receive_n(&q1, 1, 1, Duration::from_secs(5)).await[0].record,
        record(1)
    );

    let missing = SqsConfig {
        create: false,
        ..config(&ep, "missing")
    };
    let err = connect(&missing).await.err().unwrap();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let neither = SqsConfig {
        queue_name: None,
        ..cfg.clone()
    };
    assert!(!connect(&neither).await.err().unwrap().is_retryable());
    let too_long = SqsConfig {
        wait: Duration::from_secs(21),
        ..cfg
    };
    assert!(!connect(&too_long).await.err().unwrap().is_retryable());
}

#[test]
#[allow(irrefutable_let_patterns)] // with only the sqs feature, Sqs is the only variant
fn config_parses_with_defaults_and_rejects_typos() {
    let c: EventQueueConfig = serde_json::from_str(
        r#"{"type": "sqs", "queue_name": "events", "visibility_timeout": "2m", "wait": "5s"}"#,
    )
    .unwrap();
    let EventQueueConfig::Sqs(c) = c else {
        panic!("{c:?}")
    };
    assert_eq!(c.queue_name.as_deref(), Some("events"));
    assert_eq!(c.region, "us-east-1");
    assert!(c.create);
    assert_eq!(c.visibility_timeout, Duration::from_secs(120));
    assert_eq!(c.wait, Duration::from_secs(5));
    let typo = serde_json::from_str::<EventQueueConfig>(r#"{"type": "sqs", "queue_nam": "x"}"#);
    assert!(typo.is_err());
}
