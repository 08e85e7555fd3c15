//! Shared helpers for integration tests: start a real daemon on 127.0.0.1:0 with an injected
//! configuration, and small datafile builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cdn;
pub mod process;
pub mod remote;
pub mod sink;
pub mod small_fs;

use bucketd::app::{App, Mode, StartError};
use bucketd::config::{self, Settings};
use bucketd::signal::Reloads;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// A running daemon plus its scratch directory.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub dir: PathBuf,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<()>,
}

/// A fresh scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts a daemon with `BUCKETD__...` overrides (state dir and listen address are set here).
pub async fn spawn_app(name: &str, overrides: &[(&str, String)]) -> TestApp {
    spawn_app_with_file(name, overrides, None).await
}

/// Like [`spawn_app`], plus a configuration file (for keys the environment cannot express,
/// such as librdkafka properties with dots in their names).
pub async fn spawn_app_with_file(
    name: &str,
    overrides: &[(&str, String)],
    file: Option<&std::path::Path>,
) -> TestApp {
    let dir = scratch(name);
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("BUCKETD__STATE_DIR".into(), dir.display().to_string());
    env.insert("BUCKETD__SERVER__LISTEN".into(), "127.0.0.1:0".into());
    env.insert("BUCKETD__SERVER__SHUTDOWN_GRACE".into(), "3s".into());
    // Tests never talk to the real Optimizely endpoint: the flusher is off unless a test turns
    // it on with a local sink as the endpoint.
    env.insert("BUCKETD__FLUSHER__ENABLED".into(), "false".into());
    env.insert(
        "BUCKETD__EVENTS__ENDPOINT".into(),
        "http://127.0.0.1:9/v1/events".into(),
    );
    // The daemon's default is no profile store; these tests exercise the sticky paths (lookup,
    // save, /v1/lookup, /v1/save) on the in-process one unless they choose another.
    env.insert("BUCKETD__PROFILES__TYPE".into(), "memory".into());
    for (k, v) in overrides {
        env.insert((*k).to_string(), v.clone());
    }
    let settings = config::load(file, &env).expect("test config is valid");
    start(settings, dir).await.expect("daemon starts")
}

/// Builds and runs the daemon from `settings` the way `bucketd serve` does (the same
/// [`App::build`]), with a shutdown the test triggers ([`TestApp::stop`]) instead of signals.
pub async fn start(settings: Settings, dir: PathBuf) -> Result<TestApp, StartError> {
    let app = App::build(settings, Mode::Serve).await?;
    let addr = app.addr().expect("the daemon listens");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone().cancelled_owned(), Reloads::never()));
    Ok(TestApp {
        addr,
        base: format!("http://{addr}"),
        dir,
        client: reqwest::Client::new(),
        shutdown,
        running,
    })
}

impl TestApp {
    /// Shuts down as on SIGTERM and waits until the daemon has stopped (drained or out of
    /// grace).
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running
            .await
            .expect("the daemon task ends without panicking");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// A one-experiment datafile whose experiment sends all traffic to `variation` (`a` or `b`).
pub fn all_to(variation: &str, revision: &str) -> Value {
    let end = |v: &str| if v == variation { 10000 } else { 0 };
    json!({
        "version": "4", "accountId": "1", "projectId": "2", "revision": revision,
        "attributes": [], "audiences": [], "events": [{"id": "9", "key": "buy", "experimentIds": ["100"]}],
        "experiments": [{
            "id": "100", "key": "exp", "status": "Running", "layerId": "10", "audienceIds": [],
            "forcedVariations": {},
            "variations": [{"id": "101", "key": "a"}, {"id": "102", "key": "b"}],
            "trafficAllocation": [
                {"entityId": "101", "endOfRange": end("a")},
                {"entityId": "102", "endOfRange": 10000}
            ]
        }],
        "groups": [], "featureFlags": [], "rollouts": []
    })
}

/// Sends `n` event-producing requests (half activations, half conversions) from 32 tasks.
pub async fn produce(base: &str, n: usize, tag: &str) {
    let client = reqwest::Client::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, next, base, tag) = (
            client.clone(),
            next.clone(),
            base.to_string(),
            tag.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let status = if i % 2 == 0 {
                    client
                        .get(format!("{base}/bucketer?e=checkout_flow_experiment&u={tag}-{i}&a=tier:%22gold%22"))
                        .send()
                        .await
                        .unwrap()
                        .status()
                } else {
                    client
                        .post(format!("{base}/v1/track?eventKey=purchase"))
                        .json(&json!({"userId": format!("{tag}-{i}"), "userAttributes": {"tier": "gold"}, "eventTags": {"revenue": i, "value": 1.5}}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                };
                assert_eq!(status.as_u16(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Seconds the endpoint-outage tests keep the sink failing (`BUCKETD_TEST_OUTAGE_SECS`, 30).
pub fn outage_secs() -> u64 {
    std::env::var("BUCKETD_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// Records `count` conversions for visitors `bad-0`, `bad-1`, ... whose tags carry `"poison"`
/// (the sink refuses payloads containing it when told to).
pub async fn produce_poisoned(base: &str, count: usize) {
    let client = reqwest::Client::new();
    for i in 0..count {
        let r = client
            .post(format!("{base}/v1/track?eventKey=purchase"))
            .json(&json!({"userId": format!("bad-{i}"), "eventTags": {"poison": format!("p{i}")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
}

/// The value of the first `/metrics` line of the daemon at `base` that starts with `name`
/// (a metric name, with labels when given); 0 when there is none.
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A free local port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
