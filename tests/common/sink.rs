//! A local HTTP sink standing in for the Optimizely event endpoint: records every payload the
//! flusher posts, and can fail on command (5xx for a while, 400 for poisoned events).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the sink saw.
#[derive(Default)]
pub struct Recorded {
    pub payloads: Vec<Value>,
    pub uuids: HashSet<String>,
    pub duplicates: usize,
    /// Distinct `visitor_id`s of the events received.
    pub visitors: HashSet<String>,
    /// Every accepted request body as received (byte-level checks).
    pub bodies: Vec<Bytes>,
}

/// The sink's shared state.
pub struct Sink {
    pub addr: SocketAddr,
    pub recorded: Mutex<Recorded>,
    /// Status for every request while non-zero (e.g. 500).
    pub fail_with: AtomicU16,
    /// Payloads containing this text are refused with 400.
    pub poison: Mutex<Option<String>>,
    pub requests: AtomicUsize,
    /// Delay before answering each request, in milliseconds (a slow endpoint).
    pub delay_ms: AtomicU64,
    /// Requests being answered right now, and the most there ever were at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl Sink {
    /// Starts a sink on 127.0.0.1:0.
    pub async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = Arc::new(Sink {
            addr: listener.local_addr().unwrap(),
            recorded: Mutex::new(Recorded::default()),
            fail_with: AtomicU16::new(0),
            poison: Mutex::new(None),
            requests: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        sink
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/events", self.addr)
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let response = self.answer(req).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        response
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let status = self.fail_with.load(Ordering::Relaxed);
        let respond = |code: u16| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            r
        };
        if status != 0 {
            return respond(status);
        }
        let text = String::from_utf8_lossy(&body);
        if let Some(p) = self.poison.lock().unwrap().as_deref() {
            if text.contains(p) {
                return respond(400);
            }
        }
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return respond(400);
        };
        let mut rec = self.recorded.lock().unwrap();
        for visitor in v["visitors"].as_array().into_iter().flatten() {
            if let Some(id) = visitor["visitor_id"].as_str() {
                rec.visitors.insert(id.to_string());
            }
            for snap in visitor["snapshots"].as_array().into_iter().flatten() {
                for e in snap["events"].as_array().into_iter().flatten() {
                    let u = e["uuid"].as_str().unwrap_or_default().to_string();
                    if !rec.uuids.insert(u) {
                        rec.duplicates += 1;
                    }
                }
            }
        }
        rec.payloads.push(v);
        rec.bodies.push(body.clone());
        respond(204)
    }

    /// Keeps failing for `secs` (the flusher must keep retrying and deliver nothing), then
    /// starts accepting.
    pub async fn end_outage_after(&self, secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        assert_eq!(self.received(), 0, "nothing is accepted during the outage");
        assert!(
            self.requests.load(Ordering::Relaxed) > 1,
            "the flusher kept retrying"
        );
        self.fail_with.store(0, Ordering::Relaxed);
    }

    /// How many of `ids` no event received so far names as its visitor.
    pub fn missing_visitors<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> usize {
        let rec = self.recorded.lock().unwrap();
        ids.into_iter()
            .filter(|id| !rec.visitors.contains(*id))
            .count()
    }

    /// Waits until an event names each of `ids` as its visitor (or the timeout passes);
    /// returns how many are still missing.
    pub async fn wait_for_visitors(&self, ids: &[String], timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut missing = self.missing_visitors(ids);
        while missing > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            missing = self.missing_visitors(ids);
        }
        missing
    }

    /// Distinct event uuids received.
    pub fn received(&self) -> usize {
        self.recorded.lock().unwrap().uuids.len()
    }

    /// Waits until `n` distinct events arrived (or the timeout passes); returns the count.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            if got >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
