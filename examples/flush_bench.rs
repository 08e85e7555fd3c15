//! Flusher throughput, queue → bulk requests → a local sink, against the seed's design (one
//! HTTP request per event) measured in the same run to the same sink, twice:
//! - as the seed ships it: the official Python SDK's default dispatcher (`benches/sdk_dispatch.py`,
//!   a new connection per event), when a Python with `optimizely-sdk` is found
//!   (`BUCKETD_BENCH_PYTHON`, default `.venv/bin/python`);
//! - at its best: the same requests from Rust over one keep-alive connection.
//!
//! Usage (queue from the usual config / env, e.g. `BUCKETD__EVENTS__QUEUE__TYPE=kafka
//! BUCKETD__EVENTS__QUEUE__BROKERS=127.0.0.1:9092`):
//!   cargo run --release --example flush_bench -- [events=200000] [per_event_sample=5000] [latency_ms=0]
//! `latency_ms` makes the sink answer each request that much later (an endpoint over a network;
//! the seed measured ~60 ms to Optimizely's), the same for both designs.
//! `benches/flush_load.sh` runs it for the disk queue and Kafka.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark with a broken setup stops loudly

use bucketd::core::events::{
    DecisionMetadata, EventContext, EventKind, ImpressionDecision, UserEvent, VisitorAttribute,
};
use bucketd::core::payload::{render, Client};
use bucketd::metrics::Metrics;
use bucketd::pipeline::Flusher;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The daemon's allocator, so the flusher is measured as it runs in `bucketd`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the sink reads of a payload: the visitors, counted without building them.
#[derive(serde::Deserialize)]
struct Counted {
    visitors: Vec<serde::de::IgnoredAny>,
}

fn event(i: usize) -> UserEvent {
    UserEvent {
        context: EventContext {
            account_id: "10000001".into(),
            project_id: "20000001".into(),
            revision: "1".into(),
            anonymize_ip: true,
            region: "US".into(),
        }
        .into(),
        visitor_id: format!("user-{i}"),
        attributes: vec![VisitorAttribute {
            entity_id: "30000001".into(),
            key: "tier".into(),
            kind: "custom".into(),
            value: json!("gold"),
        }],
        uuid: uuid::Uuid::new_v4().to_string(),
        timestamp: 1_700_000_000_000 + i as u64,
        event: EventKind::Impression(ImpressionDecision {
            campaign_id: "70000001".into(),
            experiment_id: "60000001".into(),
            variation_id: Some("80000002".into()),
            metadata: DecisionMetadata {
                flag_key: String::new(),
                rule_key: "checkout_flow_experiment".into(),
                rule_type: "experiment".into(),
                variation_key: "variation_a".into(),
                enabled: true,
                cmab_uuid: None,
            },
        }),
    }
}

/// Counts visitors (events) in every payload; answers 204.
async fn sink(counter: Arc<AtomicUsize>, requests: Arc<AtomicUsize>, latency: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (counter, requests) = (counter.clone(), requests.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (counter, requests) = (counter.clone(), requests.clone());
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let visitors = serde_json::from_slice::<Counted>(&body)
                                .map_or(0, |c| c.visitors.len());
                            if !latency.is_zero() {
                                tokio::time::sleep(latency).await;
                            }
                            counter.fetch_add(visitors, Ordering::Relaxed);
                            requests.fetch_add(1, Ordering::Relaxed);
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = hyper::StatusCode::NO_CONTENT;
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/v1/events")
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let sample: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let latency = Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(0));
    let settings = bucketd::config::load_from_process_env(None).expect("config");
    let queue = settings.events.queue.build().await.expect("queue");
    let backend = queue.backend();

    // Fill the queue.
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let records: Vec<_> = chunk
            .iter()
            .map(|&i| bucketd::pipeline::record::encode(&event(i)).unwrap())
            .collect();
        queue.publish(&records).await.expect("publish");
    }
    eprintln!("filled {backend} with {n} events in {:.2?}", t.elapsed());

    // The flusher.
    let (count, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = sink(count.clone(), reqs.clone(), latency).await;
    let mut flusher_settings = settings.flusher.clone();
    flusher_settings.batch_size = 1000;
    flusher_settings.flush_interval = Duration::from_millis(100);
    let flusher = Flusher::new(
        queue.clone(),
        flusher_settings,
        Some(url.parse().unwrap()),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let t = Instant::now();
    let task = tokio::spawn(flusher.run(cancel.clone()));
    while count.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(t.elapsed() < Duration::from_secs(600), "flusher too slow");
    }
    let flusher_secs = t.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = task.await;
    let flusher_rate = n as f64 / flusher_secs;

    let c = Client {
        name: "bucketd",
        version: env!("CARGO_PKG_VERSION"),
    };
    let events: Vec<UserEvent> = (0..sample).map(event).collect();
    let bodies: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(&render(std::slice::from_ref(e), &c)[0].batch).unwrap())
        .collect();

    // The seed's design at its best: one synchronous request per event, keep-alive, from Rust.
    let (count2, reqs2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url2 = sink(count2.clone(), reqs2.clone(), latency).await;
    let client = reqwest::Client::new();
    let t = Instant::now();
    for body in &bodies {
        let r = client
            .post(&url2)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let keepalive_rate = sample as f64 / t.elapsed().as_secs_f64();
    assert_eq!(count2.load(Ordering::Relaxed), sample);

    // The seed's design as shipped: the Python SDK's default dispatcher.
    let sdk_rate = sdk_dispatch_rate(&bodies, latency).await;

    println!(
        "{backend}, endpoint latency {latency:?}: flusher {flusher_rate:.0} events/s ({n} events, {} requests)",
        reqs.load(Ordering::Relaxed),
    );
    match sdk_rate {
        Some(r) => println!(
            "  per-event, Python SDK default dispatcher: {r:.0} events/s -> flusher {:.0}x",
            flusher_rate / r
        ),
        None => println!("  per-event, Python SDK default dispatcher: not measured (no Python with optimizely-sdk)"),
    }
    println!(
        "  per-event, Rust keep-alive client:        {keepalive_rate:.0} events/s -> flusher {:.0}x",
        flusher_rate / keepalive_rate
    );
}

/// Sends `bodies` through `benches/sdk_dispatch.py` to a fresh sink; events/s, or `None`
/// without a Python that has the SDK.
async fn sdk_dispatch_rate(bodies: &[Vec<u8>], latency: Duration) -> Option<f64> {
    let python =
        std::env::var("BUCKETD_BENCH_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sdk_dispatch.py");
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import optimizely"])
        .output()
        .await
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let file = std::env::temp_dir().join(format!("bucketd-bench-{}.jsonl", std::process::id()));
    let mut lines = Vec::new();
    for b in bodies {
        lines.extend_from_slice(b);
        lines.push(b'\n');
    }
    std::fs::write(&file, lines).unwrap();
    let (count, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = sink(count.clone(), reqs, latency).await;
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&url)
        .arg(&file)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let sent: usize = parts.next()?.parse().ok()?;
    let secs: f64 = parts.next()?.parse().ok()?;
    assert_eq!(
        count.load(Ordering::Relaxed),
        sent,
        "the SDK dispatcher lost events"
    );
    Some(sent as f64 / secs)
}
