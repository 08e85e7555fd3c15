//! Events end to end through remote queues, in the Kafka-driven deployment shape: the daemon
//! only produces (HTTP API → producer → Kafka / SQS), a separate `bucketd flush` process drains
//! the queue into bulk requests to a local sink. Real servers from `.ci/servers/` (a
//! Kafka-protocol broker, an SQS-protocol server); without them the tests skip locally and fail
//! in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use backends::testing::env_or_skip;
use common::remote::unique;
use common::sink::Sink;
use common::{produce, spawn_app_with_file};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Credentials for the `bucketd flush` child processes (the in-process daemons get static test
/// credentials from `backends::testing::build_queue`); never an instance-metadata probe, so no
/// traffic leaves this machine. Set on the child only, never on this process.
const AWS_TEST_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// librdkafka properties for these tests: a short produce timeout so an outage is noticed
/// quickly (besides the short consumer-group timers of [`common::remote::kafka_config_file`]).
fn kafka_config_file(name: &str) -> std::path::PathBuf {
    common::remote::kafka_config_file(name, "\"message.timeout.ms\" = \"2000\"\n")
}

/// A `bucketd flush` process with the given queue settings, its status endpoint on
/// `status_port` (0: none).
fn spawn_flusher(
    dir: &std::path::Path,
    queue_env: &[(&str, String)],
    sink: &Sink,
    file: Option<&std::path::Path>,
    status_port: u16,
) -> std::process::Child {
    let metrics_listen = match status_port {
        0 => String::new(),
        p => format!("127.0.0.1:{p}"),
    };
    let mut cmd = common::process::bucketd(&[], file, "flush", dir);
    cmd.env("BUCKETD__EVENTS__ENDPOINT", sink.url())
        .env("BUCKETD__FLUSHER__BATCH_SIZE", "500")
        .env("BUCKETD__FLUSHER__FLUSH_INTERVAL", "200ms")
        .env("BUCKETD__FLUSHER__MAX_BACKOFF", "500ms")
        .env("BUCKETD__FLUSHER__METRICS_LISTEN", metrics_listen);
    for (k, v) in AWS_TEST_ENV {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    for (k, v) in queue_env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Produces `n` events through the daemon, drains them with a flusher process that is killed
/// with SIGKILL mid-run and restarted, and checks every uuid arrives.
async fn deliver_with_flusher_crash(
    name: &str,
    queue_env: Vec<(&'static str, String)>,
    n: usize,
    file: Option<&std::path::Path>,
) {
    let sink = Sink::start().await;
    sink.delay_ms.store(20, Ordering::Relaxed);
    let mut daemon_env = queue_env.clone();
    daemon_env.push(("BUCKETD__PROFILES__TYPE", "none".into()));
    let app = spawn_app_with_file(name, &daemon_env, file).await;
    let dir = common::scratch(&format!("{name}-flusher"));
    let mut flusher = spawn_flusher(&dir, &queue_env, &sink, file, 0);
    produce(&app.base, n, name).await;
    sink.wait_for(n / 4, Duration::from_secs(120)).await;
    flusher.kill().unwrap(); // SIGKILL mid-run
    flusher.wait().unwrap();
    let before = sink.received();
    assert!(
        before < n,
        "the kill should interrupt the flush ({before} of {n} delivered)"
    );
    sink.delay_ms.store(0, Ordering::Relaxed);
    let status_port = common::free_port();
    let mut flusher = spawn_flusher(&dir, &queue_env, &sink, file, status_port);
    let got = sink.wait_for(n, Duration::from_secs(180)).await;
    // The standalone flusher reports on its own status endpoint.
    let status = format!("http://127.0.0.1:{status_port}");
    let delivered = common::metric(
        &status,
        "bucketd_flusher_events_total{outcome=\"delivered\"}",
    )
    .await;
    assert!(
        delivered >= (n - before) as f64,
        "the restarted flusher counts what it delivered: {delivered} < {}",
        n - before
    );
    let health = reqwest::get(format!("{status}/health")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let missing = reqwest::get(format!("{status}/nope")).await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert!(missing.text().await.unwrap().contains("\"error\""));
    let _ = flusher.kill();
    let _ = flusher.wait();
    assert_eq!(
        got, n,
        "every uuid arrives after kill -9 of the flusher and a restart"
    );
    let rec = sink.recorded.lock().unwrap();
    let requests = rec.payloads.len();
    assert!(
        requests < n / 100,
        "events travel in bulk: {requests} requests for {n} events"
    );
    assert_eq!(rec.payloads[0]["enrich_decisions"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_events_reach_the_endpoint_through_a_separate_flusher() {
    let Some(brokers) = env_or_skip("BUCKETD_TEST_KAFKA_BROKERS") else {
        return;
    };
    let n = std::env::var("BUCKETD_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let topic = unique("bucketd-e2e");
    let env = vec![
        ("BUCKETD__EVENTS__QUEUE__TYPE", "kafka".to_string()),
        ("BUCKETD__EVENTS__QUEUE__BROKERS", brokers),
        ("BUCKETD__EVENTS__QUEUE__TOPIC", topic.clone()),
        (
            "BUCKETD__EVENTS__QUEUE__GROUP_ID",
            format!("{topic}-flusher"),
        ),
    ];
    let file = kafka_config_file("kafka-e2e");
    deliver_with_flusher_crash("kafka-e2e", env, n, Some(&file)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_events_reach_the_endpoint_through_a_separate_flusher() {
    let Some(endpoint) = env_or_skip("BUCKETD_TEST_SQS_ENDPOINT") else {
        return;
    };
    let n = std::env::var("BUCKETD_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let env = vec![
        ("BUCKETD__EVENTS__QUEUE__TYPE", "sqs".to_string()),
        ("BUCKETD__EVENTS__QUEUE__QUEUE_NAME", unique("bucketd-e2e")),
        ("BUCKETD__EVENTS__QUEUE__ENDPOINT_URL", endpoint),
        ("BUCKETD__EVENTS__QUEUE__VISIBILITY_TIMEOUT", "5s".into()),
        ("BUCKETD__EVENTS__QUEUE__WAIT", "1s".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    deliver_with_flusher_crash("sqs-e2e", env, n, None).await;
}

/// The daemon (with its in-process flusher) on a remote queue that has a dead letter of its own,
/// against an endpoint that first answers 500 for `BUCKETD_TEST_OUTAGE_SECS` (30): everything
/// arrives afterwards, exactly once (for SQS: the visibility of the held messages was extended
/// through the outage); the events the endpoint refuses (400) land in the dead letter — exactly
/// those.
async fn rejected_events_go_to_the_queue_dead_letter(
    name: &str,
    queue_env: Vec<(&'static str, String)>,
    file: Option<&std::path::Path>,
    dead_letter: backends::EventQueueConfig,
) {
    let outage = common::outage_secs();
    let sink = Sink::start().await;
    sink.fail_with.store(500, Ordering::Relaxed);
    *sink.poison.lock().unwrap() = Some("\"poison\":".into());
    let mut env = queue_env;
    env.extend([
        ("BUCKETD__PROFILES__TYPE", "none".to_string()),
        ("BUCKETD__FLUSHER__ENABLED", "true".into()),
        ("BUCKETD__EVENTS__ENDPOINT", sink.url()),
        ("BUCKETD__FLUSHER__BATCH_SIZE", "100".into()),
        ("BUCKETD__FLUSHER__FLUSH_INTERVAL", "200ms".into()),
    ]);
    let app = spawn_app_with_file(name, &env, file).await;
    let n = 300;
    produce(&app.base, n, name).await;
    common::produce_poisoned(&app.base, 10).await;
    sink.end_outage_after(outage).await;
    assert_eq!(sink.wait_for(n, Duration::from_secs(60)).await, n);

    let dlq = backends::testing::build_queue(&dead_letter).await.unwrap();
    let mut visitors = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while visitors.len() < 10 && std::time::Instant::now() < deadline {
        for d in dlq.receive(100, Duration::from_secs(1)).await.unwrap() {
            let event: serde_json::Value = serde_json::from_slice(&d.record.value).unwrap();
            assert_eq!(event["visitor_id"], d.record.key.as_str());
            visitors.insert(d.record.key.clone());
            dlq.ack(&[d.token]).await.unwrap();
        }
    }
    let want: std::collections::BTreeSet<String> = (0..10).map(|i| format!("bad-{i}")).collect();
    assert_eq!(
        visitors, want,
        "exactly the rejected events are dead-lettered"
    );
    assert!(
        !app.dir.join("dead-letter.jsonl").exists(),
        "no dead-letter file when the queue has a dead letter"
    );
    assert_eq!(sink.received(), n, "no rejected event was delivered");
    assert_eq!(
        sink.recorded.lock().unwrap().duplicates,
        0,
        "nothing was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rejected_events_go_to_the_dead_letter_topic() {
    let Some(brokers) = env_or_skip("BUCKETD_TEST_KAFKA_BROKERS") else {
        return;
    };
    let topic = unique("bucketd-dlq");
    let dead_letter = format!("{topic}-dead-letter");
    let env = vec![
        ("BUCKETD__EVENTS__QUEUE__TYPE", "kafka".to_string()),
        ("BUCKETD__EVENTS__QUEUE__BROKERS", brokers.clone()),
        ("BUCKETD__EVENTS__QUEUE__TOPIC", topic.clone()),
        (
            "BUCKETD__EVENTS__QUEUE__GROUP_ID",
            format!("{topic}-flusher"),
        ),
        (
            "BUCKETD__EVENTS__QUEUE__DEAD_LETTER_TOPIC",
            dead_letter.clone(),
        ),
    ];
    let reader = serde_json::from_value(serde_json::json!({
        "type": "kafka", "brokers": brokers, "topic": dead_letter, "create": false,
        "group_id": format!("{topic}-reader"),
        "properties": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "300"},
    }))
    .unwrap();
    let file = kafka_config_file("kafka-dlq");
    rejected_events_go_to_the_queue_dead_letter("kafka-dlq", env, Some(&file), reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_rejected_events_go_to_the_dead_letter_queue() {
    let Some(endpoint) = env_or_skip("BUCKETD_TEST_SQS_ENDPOINT") else {
        return;
    };
    let queue = unique("bucketd-dlq");
    let dead_letter = format!("{queue}-dead-letter");
    let env = vec![
        ("BUCKETD__EVENTS__QUEUE__TYPE", "sqs".to_string()),
        ("BUCKETD__EVENTS__QUEUE__QUEUE_NAME", queue),
        ("BUCKETD__EVENTS__QUEUE__ENDPOINT_URL", endpoint.clone()),
        ("BUCKETD__EVENTS__QUEUE__WAIT", "1s".into()),
        // Far shorter than the outage: only extending it keeps the held messages from coming
        // back to be delivered twice.
        ("BUCKETD__EVENTS__QUEUE__VISIBILITY_TIMEOUT", "4s".into()),
        (
            "BUCKETD__EVENTS__QUEUE__DEAD_LETTER_QUEUE",
            dead_letter.clone(),
        ),
    ];
    let reader = serde_json::from_value(serde_json::json!({
        "type": "sqs", "queue_name": dead_letter, "create": false,
        "endpoint_url": endpoint, "wait": "1s",
    }))
    .unwrap();
    rejected_events_go_to_the_queue_dead_letter("sqs-dlq", env, None, reader).await;
}

/// The queue server (its own process group, `pgid`) is paused while the daemon produces: the
/// requests never wait on it, the events go to the local spool, and once it is back they are
/// forwarded and a flusher delivers every one.
async fn queue_outage_spools_to_disk_and_forwards_later(
    name: &str,
    env: Vec<(&'static str, String)>,
    file: Option<&std::path::Path>,
    pgid: &str,
) {
    let group = format!("-{pgid}");
    let app = spawn_app_with_file(name, &env, file).await;
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, "--", &group])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let n = 1_000;
    let started = std::time::Instant::now();
    produce(&app.base, n, name).await;
    let produced_in = started.elapsed();
    // Requests never waited on the paused server; the batches went to the spool.
    let mut spooled = 0.0;
    for _ in 0..100 {
        spooled = common::metric(&app.base, "bucketd_events_spooled_total").await;
        if spooled as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal("-CONT");
    assert!(
        spooled as usize >= n,
        "events were spooled during the outage ({spooled})"
    );
    assert!(
        produced_in < Duration::from_secs(20),
        "requests did not wait on the paused server ({produced_in:?} for {n})"
    );
    let sink = Sink::start().await;
    let dir = common::scratch(&format!("{name}-flusher"));
    let mut flusher = spawn_flusher(&dir, &env, &sink, file, 0);
    let got = sink.wait_for(n, Duration::from_secs(120)).await;
    let _ = flusher.kill();
    let _ = flusher.wait();
    assert_eq!(
        got, n,
        "every event reaches the endpoint once the queue server is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_spools_to_disk_and_forwards_later() {
    // Paused broker: noida-db (its own process group), so the other Kafka test on tansu runs
    // undisturbed in parallel.
    let Some(brokers) = env_or_skip("BUCKETD_TEST_KAFKA_BROKERS_NOIDA") else {
        return;
    };
    let Some(pgid) = env_or_skip("BUCKETD_TEST_KAFKA_NOIDA_PGID") else {
        return;
    };
    let topic = unique("bucketd-outage");
    let env = vec![
        ("BUCKETD__EVENTS__QUEUE__TYPE", "kafka".to_string()),
        ("BUCKETD__EVENTS__QUEUE__BROKERS", brokers),
        ("BUCKETD__EVENTS__QUEUE__TOPIC", topic.clone()),
        (
            "BUCKETD__EVENTS__QUEUE__GROUP_ID",
            format!("{topic}-flusher"),
        ),
        ("BUCKETD__PROFILES__TYPE", "none".into()),
    ];
    let file = kafka_config_file("kafka-outage");
    queue_outage_spools_to_disk_and_forwards_later("kafka-outage", env, Some(&file), &pgid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_outage_spools_to_disk_and_forwards_later() {
    // Paused server: the second moto (its own process group), so the other SQS tests run
    // undisturbed in parallel.
    let Some(endpoint) = env_or_skip("BUCKETD_TEST_SQS_ENDPOINT_PAUSABLE") else {
        return;
    };
    let Some(pgid) = env_or_skip("BUCKETD_TEST_SQS_PAUSABLE_PGID") else {
        return;
    };
    let env = vec![
        ("BUCKETD__EVENTS__QUEUE__TYPE", "sqs".to_string()),
        (
            "BUCKETD__EVENTS__QUEUE__QUEUE_NAME",
            unique("bucketd-outage"),
        ),
        ("BUCKETD__EVENTS__QUEUE__ENDPOINT_URL", endpoint),
        ("BUCKETD__EVENTS__QUEUE__WAIT", "1s".into()),
        ("BUCKETD__PROFILES__TYPE", "none".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    queue_outage_spools_to_disk_and_forwards_later("sqs-outage", env, None, &pgid).await;
}
