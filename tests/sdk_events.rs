//! The event relay (`POST /v1/events`) against the official Python SDK.
//!
//! The SDK is given the bundled example datafile directly and a small event dispatcher (written
//! to the test's scratch directory, not committed SDK code) that writes the exact body the
//! SDK's own dispatcher would post to Optimizely (`json.dumps(event.params)`) to a capture file
//! and posts that same body to bucketd instead. bucketd's flusher posts to a local sink, which
//! must receive every event the SDK sent, in bulk, each visitor object byte-equal to the SDK's.
//! A second test kills the daemon with SIGKILL while many clients post the SDK's payloads and
//! checks that every payload answered 2xx arrives after the restart. The rest: malformed
//! payloads (400/413/422 with a JSON error), a payload that cannot be made durable (503 +
//! `Retry-After`), and relayed and daemon events sharing the queue and flusher, with what the
//! endpoint rejects dead-lettered.
//!
//! Environment: `BUCKETD_PARITY_PYTHON` (a Python with `optimizely-sdk`; default
//! `.venv/bin/python`). Without one the SDK tests skip locally and fail in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::sink::Sink;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The SDK side: `sdk.py <datafile> <relay url or ""> <capture file> <users> <processors>`.
/// Each processor (`batch`: a `BatchEventProcessor` of 10; `default`: the SDK's default
/// processor; `forwarding`: `ForwardingEventProcessor`, one request per event) gets its own
/// client; every user of every client is decided, activated and converted.
const SDK_SCRIPT: &str = r#"
import json, sys, threading
import requests
from optimizely import optimizely
from optimizely.event.event_processor import BatchEventProcessor, ForwardingEventProcessor


class Tee:
    """Writes the body the SDK's dispatcher would post to Optimizely, and posts it to the relay."""

    def __init__(self, relay, out):
        self.relay, self.out = relay, out
        self.lock = threading.Lock()
        self.session = requests.Session()

    def dispatch_event(self, event):
        body = json.dumps(event.params)  # exactly what optimizely.event_dispatcher posts
        status = None
        if self.relay:
            status = self.session.post(self.relay, data=body, headers=event.headers, timeout=10).status_code
        with self.lock:
            self.out.write(json.dumps({"url": event.url, "status": status, "body": body}) + "\n")
            self.out.flush()


def client(kind, datafile, tee):
    if kind == "batch":
        processor = BatchEventProcessor(tee, batch_size=10, flush_interval=0.2, start_on_init=True)
        return optimizely.Optimizely(datafile=datafile, event_processor=processor)
    if kind == "forwarding":
        return optimizely.Optimizely(datafile=datafile, event_processor=ForwardingEventProcessor(tee))
    return optimizely.Optimizely(datafile=datafile, event_dispatcher=tee)


def main():
    datafile_path, relay, out_path, users, kinds = sys.argv[1:6]
    datafile = open(datafile_path).read()
    with open(out_path, "w") as out:
        tee = Tee(relay or None, out)
        clients = [(k, client(k, datafile, tee)) for k in kinds.split(",")]
        for i in range(int(users)):
            for kind, c in clients:
                user_id = f"{kind}-user-{i}"
                attrs = {"tier": "platinum" if i % 2 else "gold", "age": 20 + i % 50,
                         "app_version": "1.2.3", "zip": f"\u00e9-{i}"}
                c.create_user_context(user_id, attrs).decide("new_checkout")
                c.activate("checkout_flow_experiment", user_id, attrs)
                c.track("purchase", user_id, attrs,
                        {"revenue": 1299 + i, "value": 3.25, "category": "shoes", "note": "na\u00efve \u2713"})
        for _, c in clients:
            c.close()


main()
"#;

/// The bundled example datafile (what bucketd serves by default, too).
fn datafile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/datafile.json")
}

fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidate = std::env::var_os("BUCKETD_PARITY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import optimizely, requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no Python with optimizely-sdk was found (set BUCKETD_PARITY_PYTHON)"
        );
        eprintln!("SKIPPED: no Python with optimizely-sdk (set BUCKETD_PARITY_PYTHON)");
    }
    ok.then_some(candidate)
}

/// One request the SDK made: where it would have gone, bucketd's answer (when posted), body.
#[derive(Debug, Deserialize)]
struct Sent {
    url: String,
    status: Option<u16>,
    body: String,
}

/// Runs the SDK script (blocking, so off the runtime's threads) and reads what it sent.
async fn run_sdk(python: &Path, dir: &Path, relay: &str, users: usize, kinds: &str) -> Vec<Sent> {
    let script = dir.join("sdk.py");
    std::fs::write(&script, SDK_SCRIPT).unwrap();
    let capture = dir.join("sent.jsonl");
    let (python, relay, kinds, out) = (
        python.to_path_buf(),
        relay.to_string(),
        kinds.to_string(),
        capture.clone(),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(datafile())
            .arg(relay)
            .arg(out)
            .arg(users.to_string())
            .arg(kinds)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(capture)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A v1 body: its visitors as raw text, everything else parsed.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    visitors: Vec<&'a RawValue>,
    #[serde(flatten)]
    envelope: Map<String, Value>,
}

/// `(event uuids, raw visitor text)` of each visitor of a body.
fn visitors(body: &str) -> Vec<(Vec<String>, String)> {
    let parsed: Body<'_> = serde_json::from_str(body).unwrap();
    parsed
        .visitors
        .iter()
        .map(|raw| {
            let v: Value = serde_json::from_str(raw.get()).unwrap();
            let uuids = v["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["events"].as_array().unwrap().iter())
                .map(|e| e["uuid"].as_str().unwrap().to_string())
                .collect();
            (uuids, raw.get().to_string())
        })
        .collect()
}

fn envelope(body: &str) -> Map<String, Value> {
    serde_json::from_str::<Body<'_>>(body).unwrap().envelope
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_events_reach_the_sink_in_bulk_byte_equal() {
    let Some(python) = python() else { return };
    let sink = Sink::start().await;
    let app = common::spawn_app(
        "relay-sdk",
        &[
            ("BUCKETD__FLUSHER__ENABLED", "true".into()),
            ("BUCKETD__EVENTS__ENDPOINT", sink.url()),
            ("BUCKETD__FLUSHER__FLUSH_INTERVAL", "300ms".into()),
            ("BUCKETD__FLUSHER__BATCH_SIZE", "1000".into()),
        ],
    )
    .await;
    let sent = run_sdk(
        &python,
        &app.dir,
        &app.url("/v1/events"),
        30,
        "batch,default,forwarding",
    )
    .await;

    // What the SDK would have sent Optimizely, by event uuid.
    let mut expected: HashMap<String, (String, Map<String, Value>)> = HashMap::new();
    let mut posts_of_more_than_one = 0;
    for s in &sent {
        assert_eq!(s.url, "https://logx.optimizely.com/v1/events");
        assert_eq!(s.status, Some(204), "bucketd answered {:?}", s.status);
        let vs = visitors(&s.body);
        posts_of_more_than_one += usize::from(vs.len() > 1);
        for (uuids, raw) in vs {
            assert_eq!(uuids.len(), 1);
            expected.insert(uuids[0].clone(), (raw, envelope(&s.body)));
        }
    }
    assert!(
        posts_of_more_than_one > 0,
        "the BatchEventProcessor batched"
    );
    assert!(expected.len() >= 200, "{} events", expected.len());
    let got = sink.wait_for(expected.len(), Duration::from_secs(20)).await;
    assert_eq!(got, expected.len(), "every SDK event reaches the sink");

    {
        let rec = sink.recorded.lock().unwrap();
        assert_eq!(rec.duplicates, 0);
        let mut largest = 0;
        let mut seen = HashSet::new();
        for body in &rec.bodies {
            let body = std::str::from_utf8(body).unwrap();
            let vs = visitors(body);
            largest = largest.max(vs.len());
            for (uuids, raw) in vs {
                let (want, want_envelope) = &expected[&uuids[0]];
                assert_eq!(&raw, want, "the visitor is byte-equal to what the SDK sent");
                assert_eq!(&envelope(body), want_envelope, "and so is its envelope");
                seen.insert(uuids[0].clone());
            }
        }
        assert_eq!(seen.len(), expected.len());
        eprintln!(
            "{} SDK events in {} SDK requests reached the sink in {} requests (largest: {largest} visitors)",
            expected.len(),
            sent.len(),
            rec.bodies.len()
        );
        assert!(
            rec.bodies.len() < sent.len() && largest > 10,
            "in bulk: {} requests for the SDK's {}, the largest with {largest} visitors",
            rec.bodies.len(),
            sent.len()
        );
    }
    let relayed =
        common::metric(&app.base, "bucketd_events_received_total{source=\"relay\"}").await;
    assert_eq!(relayed as usize, expected.len());
    app.stop().await;
}

/// Answers before the kill.
const KILL_AFTER: usize = 800;
const CLIENTS: usize = 32;

/// The daemon as a process, killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Daemon(Child);

impl Daemon {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_daemon(dir: &Path, port: u16, flush_to: Option<&Sink>) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bucketd"));
    cmd.arg("serve")
        .env("BUCKETD__STATE_DIR", dir)
        .env("BUCKETD__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("BUCKETD__PROFILES__TYPE", "none")
        .env("BUCKETD__FLUSHER__BATCH_SIZE", "500")
        .env("BUCKETD__FLUSHER__FLUSH_INTERVAL", "100ms")
        .env("BUCKETD__LOG__LEVEL", "warn")
        .stdout(Stdio::null());
    match flush_to {
        Some(sink) => cmd
            .env("BUCKETD__FLUSHER__ENABLED", "true")
            .env("BUCKETD__EVENTS__ENDPOINT", sink.url()),
        None => cmd
            .env("BUCKETD__FLUSHER__ENABLED", "false")
            .env("BUCKETD__EVENTS__ENDPOINT", "http://127.0.0.1:9/v1/events"),
    };
    Daemon(cmd.spawn().unwrap())
}

async fn wait_ready(base: &str) {
    let c = reqwest::Client::new();
    for _ in 0..400 {
        if c.get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon at {base} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_sdk_events_stream_in_loses_no_answered_event() {
    let Some(python) = python() else { return };
    let dir = common::scratch("relay-kill");
    // The SDK's own single-event payloads (its default processor), captured, not posted.
    let sent = run_sdk(&python, &dir, "", 700, "default").await;
    let payloads: Arc<Vec<String>> = Arc::new(sent.into_iter().map(|s| s.body).collect());
    assert!(payloads.len() > 2 * KILL_AFTER);

    let sink = Sink::start().await;
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_daemon(&dir, port, None);
    wait_ready(&base).await;

    let answered = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (answered, answers, refused, stop, next, base, payloads) = (
            answered.clone(),
            answers.clone(),
            refused.clone(),
            stop.clone(),
            next.clone(),
            base.clone(),
            payloads.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = payloads.get(i) else { return };
                let sent = client
                    .post(format!("{base}/v1/events"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        answered.lock().unwrap().push(i);
                        answers.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 503 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    // The daemon is gone: this payload was never answered.
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers.load(Ordering::Relaxed) < KILL_AFTER {
        assert!(Instant::now() < deadline, "the daemon answers too slowly");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill(); // SIGKILL, mid-stream
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    let want: HashSet<String> = answered
        .iter()
        .flat_map(|&i| visitors(&payloads[i]))
        .flat_map(|(uuids, _)| uuids)
        .collect();

    let mut child = spawn_daemon(&dir, port, Some(&sink));
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let missing = {
            let rec = sink.recorded.lock().unwrap();
            want.iter().filter(|u| !rec.uuids.contains(*u)).count()
        };
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill();
    eprintln!(
        "answered {} payloads ({} events), refused {}, lost {missing}",
        answered.len(),
        want.len(),
        refused.load(Ordering::Relaxed)
    );
    assert!(answered.len() >= KILL_AFTER);
    assert_eq!(missing, 0, "answered events lost after kill -9");
}

/// A minimal valid v1 payload with one conversion per visitor id.
fn payload(client_name: &str, visitor_ids: &[&str]) -> Value {
    let visitors: Vec<Value> = visitor_ids
        .iter()
        .map(|id| {
            json!({
                "snapshots": [{"events": [{
                    "entity_id": "50000001", "key": "purchase", "uuid": format!("uuid-{id}"),
                    "timestamp": 1_700_000_000_000u64, "tags": {"note": id}
                }]}],
                "attributes": [], "visitor_id": id
            })
        })
        .collect();
    json!({
        "account_id": "10000001", "project_id": "20000001", "revision": "1",
        "client_name": client_name, "client_version": "1.0.0", "anonymize_ip": true,
        "enrich_decisions": true, "visitors": visitors
    })
}

#[tokio::test]
async fn bad_payloads_are_refused_with_a_json_error() {
    let app = common::spawn_app(
        "relay-bad",
        &[
            ("BUCKETD__EVENTS__RELAY__MAX_VISITORS", "2".into()),
            ("BUCKETD__EVENTS__RELAY__MAX_BODY_BYTES", "2000".into()),
        ],
    )
    .await;
    let post = |body: String| {
        let (client, url) = (app.client.clone(), app.url("/v1/events"));
        async move {
            let r = client.post(url).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let cases = [
        ("".to_string(), "request body required"),
        ("not json".to_string(), "invalid event payload"),
        (
            json!({"visitors": []}).to_string(),
            "missing field `account_id`",
        ),
        (
            json!({"account_id": "1"}).to_string(),
            "missing field `visitors`",
        ),
        (
            json!({"account_id": 1, "visitors": []}).to_string(),
            "invalid type: integer",
        ),
        (
            json!({"account_id": "1", "visitors": [{"visitor_id": 7}]}).to_string(),
            "visitors[0]",
        ),
        (
            json!({"account_id": "1", "visitors": {}}).to_string(),
            "invalid type: map",
        ),
    ];
    for (body, want) in cases {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "{body}: {error}");
    }
    let (status, answer) = post(payload("js", &["a", "b", "c"]).to_string()).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("limit 2"));
    let (status, answer) = post(format!("{}{}", payload("js", &["a"]), " ".repeat(3000))).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].is_string());
    let (status, _) = post(payload("js", &["a", "b"]).to_string()).await;
    assert_eq!(status, 204);
    let base = app.base.clone();
    let m = |reason: &str| {
        let (base, name) = (
            base.clone(),
            format!("bucketd_relay_payloads_rejected_total{{reason=\"{reason}\"}}"),
        );
        async move { common::metric(&base, &name).await }
    };
    assert_eq!(m("malformed").await, 7.0);
    assert_eq!(m("too_many_visitors").await, 1.0);
    assert_eq!(m("too_large").await, 1.0);
    app.stop().await;
}

#[tokio::test]
async fn relayed_and_daemon_events_share_the_flusher_and_rejects_are_dead_lettered() {
    let sink = Sink::start().await;
    *sink.poison.lock().unwrap() = Some("poison-me".into());
    let app = common::spawn_app(
        "relay-share",
        &[
            ("BUCKETD__FLUSHER__ENABLED", "true".into()),
            ("BUCKETD__EVENTS__ENDPOINT", sink.url()),
            ("BUCKETD__FLUSHER__FLUSH_INTERVAL", "200ms".into()),
        ],
    )
    .await;
    let (status, _) = app
        .post_json(
            "/v1/events",
            &payload("node-sdk", &["n1", "poison-me", "n2"]),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .post_json("/v1/events", &payload("go-sdk", &["g1"]))
        .await;
    assert_eq!(status, 204);
    let r = app
        .client
        .get(app.url("/bucketer?e=checkout_flow_experiment&u=daemon-user"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(sink.wait_for(4, Duration::from_secs(10)).await, 4);

    {
        let rec = sink.recorded.lock().unwrap();
        let clients: HashMap<String, HashSet<String>> =
            rec.payloads.iter().fold(HashMap::new(), |mut m, p| {
                let ids = p["visitors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["visitor_id"].as_str().unwrap().to_string());
                m.entry(p["client_name"].as_str().unwrap().to_string())
                    .or_default()
                    .extend(ids);
                m
            });
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        assert_eq!(clients["node-sdk"], set(&["n1", "n2"]));
        assert_eq!(clients["go-sdk"], set(&["g1"]));
        assert_eq!(clients["bucketd"], set(&["daemon-user"]));
    }

    let dead = app.dir.join("dead-letter.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&dead).is_ok_and(|t| t.contains("uuid-poison-me")) {
        assert!(
            Instant::now() < deadline,
            "the rejected visitor is dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let daemon = common::metric(
        &app.base,
        "bucketd_events_received_total{source=\"daemon\"}",
    )
    .await;
    let relayed =
        common::metric(&app.base, "bucketd_events_received_total{source=\"relay\"}").await;
    assert_eq!((daemon, relayed), (1.0, 4.0));
    app.stop().await;
}

#[tokio::test]
async fn events_that_cannot_be_made_durable_answer_503_with_retry_after() {
    // Room for one event in the producer's channel: a payload of two is refused whole.
    let app = common::spawn_app(
        "relay-full",
        &[("BUCKETD__EVENTS__CHANNEL_CAPACITY", "1".into())],
    )
    .await;
    let r = app
        .client
        .post(app.url("/v1/events"))
        .json(&payload("js", &["a", "b"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("retry later"),
        "{body}"
    );
    let (status, _) = app.post_json("/v1/events", &payload("js", &["a"])).await;
    assert_eq!(status, 204, "one event fits");
    app.stop().await;
}
