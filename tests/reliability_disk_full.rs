//! The disk queue on a full disk, through the daemon as its own process: its queue directory
//! is a 2 MiB tmpfs made for the test, filled up while the event endpoint is down. Requests
//! keep answering — those whose impression cannot be made durable at once with 503,
//! `Retry-After` and a JSON error — the refusals are counted in `/metrics` under
//! `reason="disk_full"`, the daemon stays up, and once the space is freed new events are
//! accepted and every accepted one reaches the sink. A restart then opens the queue file
//! (nothing set aside as unreadable).
//!
//! Where `mount` is refused, the queue is bounded by a tiny `events.queue.max_bytes` instead
//! (reason `queue_full`, space freed by the flusher draining); the test says which it ran and
//! asserts the same outcomes — it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::process::{flush_to, serve_command, Daemon};
use common::sink::Sink;
use common::small_fs::SmallFs;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Longest a refusal may take: well under `events.ack_timeout` (5 s), so a 503 that only came
/// from waiting out the timeout fails the test.
const QUICK: Duration = Duration::from_secs(1);

/// One bucketed request: its status, how long it took, and the 503's details.
struct Answer {
    status: u16,
    took: Duration,
    retry_after: Option<String>,
    body: serde_json::Value,
}

async fn bucket(client: &reqwest::Client, base: &str, user: &str) -> Answer {
    let started = Instant::now();
    let r = client
        .get(format!(
            "{base}/bucketer?e=checkout_flow_experiment&u={user}&a=tier:%22gold%22"
        ))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the daemon answers");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        took: started.elapsed(),
        retry_after,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_quickly_counts_the_refusals_and_delivery_resumes() {
    let dir = common::scratch("disk-full");
    let fs = SmallFs::mount(&dir.join("events"), "2m");
    let reason = if fs.is_mounted() {
        eprintln!("queue on a 2 MiB tmpfs");
        "disk_full"
    } else if let SmallFs::Unmounted(_, why) = &fs {
        eprintln!("mount refused ({why}): bounding the queue by max_bytes = 64 KiB instead");
        "queue_full"
    } else {
        unreachable!()
    };
    let sink = Sink::start().await;
    sink.fail_with.store(503, Ordering::Relaxed); // the endpoint is down: events pile up
    let port = common::free_port();
    let mut cmd = serve_command(&dir, port);
    flush_to(&mut cmd, &sink)
        .env("BUCKETD__PROFILES__TYPE", "none")
        .env("BUCKETD__FLUSHER__FLUSH_INTERVAL", "100ms")
        .env("BUCKETD__FLUSHER__MAX_BACKOFF", "500ms");
    if !fs.is_mounted() {
        cmd.env("BUCKETD__EVENTS__QUEUE__MAX_BYTES", "65536");
    }
    let mut daemon = Daemon::start(&mut cmd, port).await;
    let base = daemon.base.clone();
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut i = 0;
    // Some events are queued (undeliverable for now) before the disk fills.
    for _ in 0..100 {
        let user = format!("full-{i}");
        i += 1;
        assert_eq!(bucket(&client, &base, &user).await.status, 200);
        accepted.push(user);
    }
    let filler = fs.is_mounted().then(|| fs.fill());

    // Until a few dozen refusals: every request answers, quickly when refused.
    let mut refused = 0;
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused < 50 {
        assert!(
            Instant::now() < deadline,
            "the queue never refused an event"
        );
        let user = format!("full-{i}");
        i += 1;
        let a = bucket(&client, &base, &user).await;
        match a.status {
            200 => accepted.push(user),
            503 => {
                refused += 1;
                slowest = slowest.max(a.took);
                assert!(a.took < QUICK, "a refusal took {:?}", a.took);
                assert_eq!(a.retry_after.as_deref(), Some("1"));
                let error = a.body["error"].as_str().expect("a JSON error body");
                assert!(error.contains(reason), "error {error:?} names {reason}");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let counted = common::metric(
        &base,
        &format!("bucketd_events_dropped_total{{reason=\"{reason}\"}}"),
    )
    .await;
    assert_eq!(counted, refused as f64, "every refused event is counted");
    assert!(daemon.alive(), "the daemon survived the full disk");
    eprintln!(
        "full: {} accepted, {refused} refused in {i} requests, slowest refusal {slowest:?}",
        accepted.len()
    );

    // Space frees (the filler goes, the endpoint answers): new events are accepted again.
    let freed = Instant::now();
    if let Some(f) = &filler {
        std::fs::remove_file(f).unwrap();
    }
    sink.fail_with.store(0, Ordering::Relaxed);
    let recovered = loop {
        assert!(
            freed.elapsed() < Duration::from_secs(30),
            "events still refused 30 s after space was freed"
        );
        let user = format!("full-{i}");
        i += 1;
        if bucket(&client, &base, &user).await.status == 200 {
            accepted.push(user);
            break freed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for _ in 0..200 {
        let user = format!("full-{i}");
        i += 1;
        let a = bucket(&client, &base, &user).await;
        assert_eq!(a.status, 200, "refused after recovery: {}", a.body);
        accepted.push(user);
    }

    // Everything accepted, before and after, reaches the sink.
    let missing = sink
        .wait_for_visitors(&accepted, Duration::from_secs(30))
        .await;
    eprintln!(
        "recovered in {recovered:?}; {} accepted in all, {missing} not delivered",
        accepted.len()
    );
    assert_eq!(missing, 0, "accepted events not delivered");

    // The queue file survived: a restart opens it and sets nothing aside.
    assert!(daemon.terminate(), "clean shutdown");
    let daemon = Daemon::start(&mut cmd, port).await;
    let aside: Vec<_> = std::fs::read_dir(fs.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("unreadable"))
        .collect();
    assert!(aside.is_empty(), "queue file set aside: {aside:?}");
    drop(daemon);
}
