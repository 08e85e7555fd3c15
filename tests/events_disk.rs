//! Events end to end on the embedded disk queue: HTTP API → producer → disk queue → flusher →
//! a local sink standing in for the Optimizely endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::process::{flush_to, serve_command, wait_ready};
use common::sink::Sink;
use common::{produce, spawn_app};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn events_n() -> usize {
    std::env::var("BUCKETD_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn flusher_env(sink: &Sink) -> Vec<(&'static str, String)> {
    vec![
        ("BUCKETD__EVENTS__ENDPOINT", sink.url()),
        ("BUCKETD__FLUSHER__ENABLED", "true".into()),
        ("BUCKETD__PROFILES__TYPE", "none".into()),
        ("BUCKETD__FLUSHER__BATCH_SIZE", "500".into()),
        ("BUCKETD__FLUSHER__FLUSH_INTERVAL", "200ms".into()),
        ("BUCKETD__FLUSHER__MAX_BACKOFF", "1s".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_in_bulk_requests() {
    let n = events_n();
    let sink = Sink::start().await;
    let mut env = flusher_env(&sink);
    // This test measures how the flusher packs events into requests while they stream in.
    // With durable acknowledgement 32 clients produce at the disk's group-commit rate (about
    // 32 events per fsync), which would set the batch sizes instead (tests/reliability_*).
    env.push(("BUCKETD__EVENTS__ACK", "fast".into()));
    // Partial batches are cut once per flush interval while events stream in; on a loaded
    // machine producing takes longer, so a longer interval keeps their number independent of
    // the machine's speed.
    env.retain(|(k, _)| *k != "BUCKETD__FLUSHER__FLUSH_INTERVAL");
    env.push(("BUCKETD__FLUSHER__FLUSH_INTERVAL", "1s".into()));
    let app = spawn_app("events-bulk", &env).await;
    produce(&app.base, n, "bulk").await;
    let got = sink.wait_for(n, Duration::from_secs(120)).await;
    assert_eq!(got, n, "every uuid arrives");
    let rec = sink.recorded.lock().unwrap();
    let requests = rec.payloads.len();
    // One context here, so ≈ n / batch_size requests; partial batches cut by the flush interval
    // while producing may add a few.
    assert!(
        requests <= n / 500 * 2 + 10,
        "{requests} requests for {n} events"
    );
    assert!(requests >= n / 500, "{requests} requests for {n} events");
    let p = &rec.payloads[0];
    assert_eq!(p["account_id"], "10000001");
    assert_eq!(p["project_id"], "20000001");
    assert_eq!(p["revision"], "1");
    assert_eq!(p["enrich_decisions"], true);
    assert_eq!(p["anonymize_ip"], true);
    assert_eq!(p["client_name"], "bucketd");
    let visitors: usize = rec
        .payloads
        .iter()
        .map(|p| p["visitors"].as_array().unwrap().len())
        .sum();
    assert_eq!(visitors, n + rec.duplicates, "one visitor per event");
    let conv = rec
        .payloads
        .iter()
        .flat_map(|p| p["visitors"].as_array().unwrap().iter())
        .find(|v| v["snapshots"][0].get("decisions").is_none())
        .expect("a conversion");
    assert_eq!(conv["snapshots"][0]["events"][0]["key"], "purchase");
    assert_eq!(
        conv["attributes"][0],
        json!({"entity_id": "30000001", "key": "tier", "type": "custom", "value": "gold"})
    );
}

/// With `flusher.concurrency` batches in flight against a slow endpoint, the flusher posts that
/// many at once (and never more), and still delivers everything exactly.
async fn posts_in_flight(concurrency: usize) -> usize {
    let n = 1_200;
    let sink = Sink::start().await;
    sink.delay_ms.store(150, Ordering::Relaxed);
    let mut env = flusher_env(&sink);
    env.push(("BUCKETD__FLUSHER__BATCH_SIZE", "100".into()));
    env.push(("BUCKETD__FLUSHER__CONCURRENCY", concurrency.to_string()));
    let app = spawn_app(&format!("events-concurrency-{concurrency}"), &env).await;
    produce(&app.base, n, &format!("conc{concurrency}")).await;
    let got = sink.wait_for(n, Duration::from_secs(60)).await;
    assert_eq!(got, n, "every uuid arrives");
    sink.max_in_flight.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_posted_concurrently_up_to_the_limit() {
    let four = posts_in_flight(4).await;
    assert!(
        (2..=4).contains(&four),
        "concurrency 4: {four} requests in flight at most"
    );
    let one = posts_in_flight(1).await;
    assert_eq!(one, 1, "concurrency 1: one request at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_ridden_out_and_only_rejected_events_are_dead_lettered() {
    let outage = common::outage_secs();
    let sink = Sink::start().await;
    sink.fail_with.store(500, Ordering::Relaxed);
    *sink.poison.lock().unwrap() = Some("\"poison\":".into());
    let app = spawn_app("events-outage", &flusher_env(&sink)).await;
    let n = 2_000;
    produce(&app.base, n, "outage").await;
    common::produce_poisoned(&app.base, 20).await;
    sink.end_outage_after(outage).await;
    let got = sink.wait_for(n, Duration::from_secs(120)).await;
    assert_eq!(got, n, "every good event arrives after the outage");
    // The 20 poisoned events end up in the dead letter, and nothing else does.
    let path = app.dir.join("dead-letter.jsonl");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if lines.len() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        lines.len(),
        20,
        "exactly the rejected events are dead-lettered"
    );
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["reason"].as_str().unwrap().starts_with("HTTP 400"));
        assert!(v["event"]["visitor_id"]
            .as_str()
            .unwrap()
            .starts_with("bad-"));
    }
    assert_eq!(sink.received(), n, "rejected events never reach the sink");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bucketd_flusher_dead_lettered_total 20"),
        "{metrics}"
    );
}

fn spawn_binary(dir: &std::path::Path, port: u16, sink: &Sink) -> std::process::Child {
    let mut cmd = serve_command(dir, port);
    flush_to(&mut cmd, sink)
        .env("BUCKETD__PROFILES__TYPE", "none")
        .env("BUCKETD__FLUSHER__BATCH_SIZE", "200")
        .env("BUCKETD__FLUSHER__FLUSH_INTERVAL", "100ms")
        .env("BUCKETD__FLUSHER__MAX_BACKOFF", "500ms");
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_loses_nothing() {
    let sink = Sink::start().await;
    sink.fail_with.store(503, Ordering::Relaxed);
    let dir = common::scratch("events-kill9");
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_binary(&dir, port, &sink);
    wait_ready(&base).await;
    let n = 3_000;
    produce(&base, n, "k9").await;
    // Once the events are in the disk queue, let some through, then kill -9 mid-flush.
    for _ in 0..100 {
        if common::metric(&base, "bucketd_events_published_total{backend=\"disk\"}").await as usize
            >= n
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sink.delay_ms.store(150, Ordering::Relaxed);
    sink.fail_with.store(0, Ordering::Relaxed);
    sink.wait_for(n / 4, Duration::from_secs(30)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = sink.received();
    assert!(
        before < n,
        "the kill should interrupt the flush ({before} of {n} already delivered)"
    );
    sink.delay_ms.store(0, Ordering::Relaxed);
    let mut child = spawn_binary(&dir, port, &sink);
    wait_ready(&base).await;
    let got = sink.wait_for(n, Duration::from_secs(60)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, n, "no uuid missing after kill -9 and restart");
}
