//! Datafile management end to end: URL polling with ETag, invalid datafiles never replacing a
//! good one, the last-good cache at start with the source down, and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use bytes::Bytes;
use common::{all_to, spawn_app};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A tiny CDN: serves one body with an ETag, answers 304 to a matching If-None-Match.
struct Cdn {
    addr: std::net::SocketAddr,
    body: Mutex<(String, u64)>,
    fail_with: AtomicU16,
    not_modified: AtomicUsize,
}

impl Cdn {
    async fn start(body: String) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn = Arc::new(Cdn {
            addr: listener.local_addr().unwrap(),
            body: Mutex::new((body, 1)),
            fail_with: AtomicU16::new(0),
            not_modified: AtomicUsize::new(0),
        });
        let c = cdn.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let c = c.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let c = c.clone();
                            async move { Ok::<_, std::convert::Infallible>(c.answer(&req)) }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        cdn
    }

    fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let fail = self.fail_with.load(Ordering::Relaxed);
        if fail != 0 {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::from_u16(fail).unwrap();
            return r;
        }
        let (body, version) = self.body.lock().unwrap().clone();
        let etag = format!("\"v{version}\"");
        if req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            == Some(etag.as_str())
        {
            self.not_modified.fetch_add(1, Ordering::Relaxed);
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::NOT_MODIFIED;
            return r;
        }
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert("etag", etag.parse().unwrap());
        r
    }

    fn set(&self, body: String) {
        let mut b = self.body.lock().unwrap();
        b.0 = body;
        b.1 += 1;
    }

    fn url(&self) -> String {
        format!("http://{}/datafiles/key.json", self.addr)
    }
}

async fn revision(app: &common::TestApp) -> String {
    let (_, b) = app.get_json("/bucketer?e=exp&u=r&debug=1").await;
    b["revision"].as_str().unwrap_or_default().to_string()
}

async fn wait_revision(app: &common::TestApp, want: &str) -> bool {
    for _ in 0..100 {
        if revision(app).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_with_etag_keeps_the_good_datafile_and_restarts_from_cache() {
    let cdn = Cdn::start(all_to("a", "1").to_string()).await;
    let env = vec![
        ("BUCKETD__DATAFILE__URL", cdn.url()),
        ("BUCKETD__DATAFILE__POLL_INTERVAL", "100ms".to_string()),
        ("BUCKETD__PROFILES__TYPE", "none".to_string()),
    ];
    let app = spawn_app("source-poll", &env).await;
    assert_eq!(revision(&app).await, "1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        cdn.not_modified.load(Ordering::Relaxed) > 0,
        "polls send If-None-Match and get 304"
    );

    cdn.set(all_to("b", "2").to_string());
    assert!(
        wait_revision(&app, "2").await,
        "a new datafile is picked up by polling"
    );
    let (_, b) = app.get_json("/bucketer?e=exp&u=x").await;
    assert_eq!(b["variation_key"], "b");

    cdn.set("{\"version\": \"4\", \"experiments\": [{\"id\": 1}]}".into());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        revision(&app).await,
        "2",
        "an invalid datafile never replaces a good one"
    );
    cdn.fail_with.store(503, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        revision(&app).await,
        "2",
        "an unreachable source keeps the current datafile"
    );
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
        metrics.contains("bucketd_datafile_updates_total{outcome=\"invalid\",project=\"default\"}"),
        "{metrics}"
    );

    // Restart with the source down: the last good datafile comes from the cache.
    let dir = app.dir.clone();
    app.stop().await;
    let mut envmap: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    envmap.insert("BUCKETD__STATE_DIR".into(), dir.display().to_string());
    envmap.insert("BUCKETD__SERVER__LISTEN".into(), "127.0.0.1:0".into());
    let settings = bucketd::config::load(None, &envmap).unwrap();
    let d = common::start(settings, dir).await.unwrap();
    let b: Value = reqwest::get(format!("http://{}/bucketer?e=exp&u=x&debug=1", d.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["revision"], "2");
    assert!(
        b["datafile"]["source"]
            .as_str()
            .unwrap()
            .starts_with("cache:"),
        "{b}"
    );
    d.stop().await;

    // No source and no cache: a clear start error, not a panic.
    let empty = common::scratch("source-nocache");
    envmap.insert("BUCKETD__STATE_DIR".into(), empty.display().to_string());
    let settings = bucketd::config::load(None, &envmap).unwrap();
    let err = common::start(settings, empty)
        .await
        .err()
        .expect("start fails");
    assert!(err.to_string().contains("no datafile"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_queued_events_to_the_queue() {
    let app = spawn_app(
        "shutdown",
        &[
            ("BUCKETD__PROFILES__TYPE", "none".into()),
            ("BUCKETD__FLUSHER__ENABLED", "false".into()),
        ],
    )
    .await;
    let n = 500;
    for i in 0..n {
        let (status, _) = app
            .get_json(&format!("/bucketer?e=checkout_flow_experiment&u=g{i}"))
            .await;
        assert_eq!(status, 200);
    }
    let addr = app.addr;
    let dir = app.dir.clone();
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exits within the grace period"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    // Every event made it into the durable queue.
    let cfg: backends::EventQueueConfig = serde_json::from_value(serde_json::json!({
        "type": "disk", "path": dir.join("events")
    }))
    .unwrap();
    let queue = cfg.build().await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), Some(n as u64));
}
