//! Flusher throughput, queue → bulk requests → a local sink, against the seed's design (one
//! HTTP request per event) measured in the same run to the same sink.
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
use bucketd::flusher::Flusher;
use bucketd::metrics::Metrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn event(i: usize) -> UserEvent {
    UserEvent {
        context: EventContext {
            account_id: "10000001".into(),
            project_id: "20000001".into(),
            revision: "1".into(),
            anonymize_ip: true,
            region: "US".into(),
        },
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
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            if !latency.is_zero() {
                                tokio::time::sleep(latency).await;
                            }
                            counter.fetch_add(
                                v["visitors"].as_array().map_or(0, Vec::len),
                                Ordering::Relaxed,
                            );
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
            .map(|&i| bucketd::service::events::to_record(&event(i)).unwrap())
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

    // The seed's design: one synchronous request per event, same sink, keep-alive client.
    let (count2, reqs2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url2 = sink(count2.clone(), reqs2.clone(), latency).await;
    let client = reqwest::Client::new();
    let version = env!("CARGO_PKG_VERSION");
    let c = Client {
        name: "bucketd",
        version,
    };
    let events: Vec<UserEvent> = (0..sample).map(event).collect();
    let t = Instant::now();
    for e in &events {
        let one = render(std::slice::from_ref(e), &c);
        let body = serde_json::to_vec(&one[0].batch).unwrap();
        let r = client
            .post(&url2)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let per_event_rate = sample as f64 / t.elapsed().as_secs_f64();
    println!(
        "{backend}, endpoint latency {latency:?}: flusher {flusher_rate:.0} events/s ({n} events, {} requests); per-event design {per_event_rate:.0} events/s; ratio {:.0}x",
        reqs.load(Ordering::Relaxed),
        flusher_rate / per_event_rate
    );
}
