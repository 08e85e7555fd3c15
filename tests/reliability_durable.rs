//! Durable acknowledgement under `kill -9`: 32 clients send bucketed `GET /bucketer` requests to
//! a daemon running as its own process; after 2,000 answers it is killed with SIGKILL,
//! restarted with its flusher pointed at a local sink, and every event whose request was
//! answered 200 must arrive. One test per queue: the disk queue, Kafka and SQS (real servers
//! from `.ci/servers/`; without them the remote tests skip locally and fail in CI).
//!
//! `BUCKETD_TEST_EVENTS_ACK=fast` runs the same tests with `events.ack = "fast"`, which is how
//! the loss this mode allows is shown (they fail).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use backends::testing::env_or_skip;
use common::process::{flush_to, serve_command_with, wait_ready};
use common::remote::{kafka_config_file, unique};
use common::sink::Sink;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Answers before the kill.
const KILL_AFTER: usize = 2_000;
const CLIENTS: usize = 32;

fn ack_mode() -> String {
    std::env::var("BUCKETD_TEST_EVENTS_ACK").unwrap_or_else(|_| "durable".into())
}

/// The daemon as a process: `queue_env` selects the queue, `flush_to` turns the embedded
/// flusher on towards the sink (off: it only produces).
fn spawn_daemon(
    dir: &Path,
    port: u16,
    queue_env: &[(&str, String)],
    file: Option<&Path>,
    sink: Option<&Sink>,
) -> Child {
    let mut cmd = serve_command_with(&[], file, dir, port);
    cmd.env("BUCKETD__PROFILES__TYPE", "none")
        .env("BUCKETD__EVENTS__ACK", ack_mode())
        .env("BUCKETD__FLUSHER__BATCH_SIZE", "500")
        .env("BUCKETD__FLUSHER__FLUSH_INTERVAL", "100ms")
        .env("BUCKETD__FLUSHER__MAX_BACKOFF", "500ms");
    if let Some(sink) = sink {
        flush_to(&mut cmd, sink);
    }
    for (k, v) in queue_env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// What one crash run measured.
#[derive(Debug)]
struct Crash {
    /// Requests answered 200 before the kill (each recorded one impression).
    answered: usize,
    /// Answered 503 (events not recorded): the client knows to retry.
    refused: usize,
    /// Answered events that never reached the sink after the restart.
    lost: usize,
    /// From the restart until the last answered event arrived.
    recovered_in: Duration,
}

/// Loads the daemon with [`CLIENTS`] clients, kills it with SIGKILL after [`KILL_AFTER`]
/// answers, restarts it with the flusher on, and counts the answered events that never arrive.
async fn crash_and_count(
    name: &str,
    queue_env: Vec<(&'static str, String)>,
    file: Option<PathBuf>,
) -> Crash {
    let sink = Sink::start().await;
    let dir = common::scratch(name);
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_daemon(&dir, port, &queue_env, file.as_deref(), None);
    wait_ready(&base).await;

    let answered = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (answered, answers, refused, stop, next, base) = (
            answered.clone(),
            answers.clone(),
            refused.clone(),
            stop.clone(),
            next.clone(),
            base.clone(),
        );
        let tag = name.to_string();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let user = format!("{tag}-{}", next.fetch_add(1, Ordering::Relaxed));
                let url = format!(
                    "{base}/bucketer?e=checkout_flow_experiment&u={user}&a=tier:%22gold%22"
                );
                match client.get(url).send().await {
                    Ok(r) if r.status().as_u16() == 200 => {
                        answered.lock().unwrap().push(user);
                        answers.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 503 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    // The daemon is gone: this request was never answered.
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers.load(Ordering::Relaxed) < KILL_AFTER {
        assert!(Instant::now() < deadline, "the daemon answers too slowly");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL, mid-load
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());

    let restarted = Instant::now();
    let mut child = spawn_daemon(&dir, port, &queue_env, file.as_deref(), Some(&sink));
    let lost = sink
        .wait_for_visitors(&answered, Duration::from_secs(90))
        .await;
    let recovered_in = restarted.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let crash = Crash {
        answered: answered.len(),
        refused: refused.load(Ordering::Relaxed),
        lost,
        recovered_in,
    };
    eprintln!(
        "{name} ({} ack): answered {}, refused {}, lost {}, recovered in {:?}",
        ack_mode(),
        crash.answered,
        crash.refused,
        crash.lost,
        crash.recovered_in
    );
    crash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_queue_kill_9_loses_no_answered_event() {
    let crash = crash_and_count("durable-disk", Vec::new(), None).await;
    assert!(crash.answered >= KILL_AFTER);
    assert_eq!(
        crash.lost, 0,
        "answered events lost after kill -9: {crash:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_kill_9_loses_no_answered_event() {
    let Some(brokers) = env_or_skip("BUCKETD_TEST_KAFKA_BROKERS") else {
        return;
    };
    let topic = unique("bucketd-durable");
    let env = vec![
        ("BUCKETD__EVENTS__QUEUE__TYPE", "kafka".to_string()),
        ("BUCKETD__EVENTS__QUEUE__BROKERS", brokers),
        ("BUCKETD__EVENTS__QUEUE__TOPIC", topic.clone()),
        (
            "BUCKETD__EVENTS__QUEUE__GROUP_ID",
            format!("{topic}-flusher"),
        ),
    ];
    let file = kafka_config_file("durable-kafka", "");
    let crash = crash_and_count("durable-kafka", env, Some(file)).await;
    assert!(crash.answered >= KILL_AFTER);
    assert_eq!(
        crash.lost, 0,
        "answered events lost after kill -9: {crash:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_kill_9_loses_no_answered_event() {
    let Some(endpoint) = env_or_skip("BUCKETD_TEST_SQS_ENDPOINT") else {
        return;
    };
    let env = vec![
        ("BUCKETD__EVENTS__QUEUE__TYPE", "sqs".to_string()),
        (
            "BUCKETD__EVENTS__QUEUE__QUEUE_NAME",
            unique("bucketd-durable"),
        ),
        ("BUCKETD__EVENTS__QUEUE__ENDPOINT_URL", endpoint),
        ("BUCKETD__EVENTS__QUEUE__VISIBILITY_TIMEOUT", "5s".into()),
        ("BUCKETD__EVENTS__QUEUE__WAIT", "1s".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    let crash = crash_and_count("durable-sqs", env, None).await;
    assert!(crash.answered >= KILL_AFTER);
    assert_eq!(
        crash.lost, 0,
        "answered events lost after kill -9: {crash:?}"
    );
}
