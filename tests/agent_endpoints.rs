//! The Agent endpoints beyond single decisions: `POST /v1/batch` (operations answered one by
//! one, within bounds), `POST /v1/reset` and `GET /v1/notifications/event-stream` (Server-Sent
//! Events, off unless enabled, bounded subscribers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{spawn_app, TestApp};
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "shop-key";

/// A daemon serving the example datafile under the SDK key [`KEY`], plus `extra` settings.
async fn app(name: &str, extra: &[(&str, &str)]) -> TestApp {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/datafile.json");
    let mut env: Vec<(&str, String)> = vec![
        ("BUCKETD__DATAFILE__PATH", path.to_string()),
        ("BUCKETD__DATAFILE__SDK_KEY", KEY.to_string()),
        ("BUCKETD__API__ENABLE_OVERRIDES", "true".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_string())));
    spawn_app(name, &env).await
}

async fn post_batch(app: &TestApp, body: &Value) -> (u16, Value) {
    app.post_json("/v1/batch", body).await
}

fn headers() -> Value {
    json!({ "X-Optimizely-SDK-Key": KEY })
}

#[tokio::test]
async fn batch_answers_each_operation_with_its_own_status_in_order() {
    let app = app("batch-each", &[]).await;
    let user = json!({"userId": "u7", "userAttributes": {"tier": "gold"}});
    let (_, alone) = app
        .client
        .post(app.url("/v1/decide?keys=new_checkout"))
        .header("X-Optimizely-SDK-Key", KEY)
        .json(&user)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .map(|v| ((), v))
        .unwrap();
    let (status, out) = post_batch(
        &app,
        &json!({"operations": [
            {"method": "GET", "url": "/v1/config", "operationID": "cfg",
             "headers": {"X-Optimizely-SDK-Key": KEY, "X-Request-Id": "req-1"}},
            {"method": "POST", "url": "/v1/decide", "operationID": "dec",
             "params": {"keys": "new_checkout"}, "body": user, "headers": headers()},
            {"method": "POST", "url": "/v1/decide", "operationID": "no-user",
             "body": {"userAttributes": {}}, "headers": headers()},
            {"method": "GET", "url": "/v1/nowhere", "operationID": "missing", "headers": headers()},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let items = out["response"].as_array().unwrap();
    let ids: Vec<&str> = items
        .iter()
        .map(|i| i["operationID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cfg", "dec", "no-user", "missing"], "request order");
    let statuses: Vec<u64> = items
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 400, 404]);
    assert_eq!(out["errorCount"], 2);
    assert_eq!(
        items[0]["requestID"], "req-1",
        "the operation's X-Request-Id"
    );
    assert_eq!(items[0]["url"], "/v1/config");
    assert_eq!(items[0]["method"], "GET");
    assert!(items[0]["body"]["experimentsMap"]["checkout_flow_experiment"].is_object());
    // The decision is the one the same request gets on its own.
    assert_eq!(items[1]["body"]["flagKey"], "new_checkout");
    assert_eq!(items[1]["body"]["variationKey"], alone["variationKey"]);
    assert_eq!(items[1]["body"]["userContext"]["userId"], "u7");
    assert!(items[2]["body"]["error"].is_string());
    for field in ["startedAt", "endedAt"] {
        assert!(out[field].as_str().unwrap().ends_with('Z'), "{field}");
        assert!(items[1][field].is_string(), "item {field}");
    }
    app.stop().await;
}

#[tokio::test]
async fn batch_bounds_operations_and_refuses_nesting() {
    let app = app(
        "batch-bounds",
        &[("BUCKETD__API__BATCH__MAX_OPERATIONS", "3")],
    )
    .await;
    let op = json!({"method": "GET", "url": "/v1/config", "headers": headers()});
    let (status, body) = post_batch(&app, &json!({"operations": [op, op, op, op]})).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["error"], "too many operations, exceeding 3 operations",
        "{body}"
    );
    let (status, _) = post_batch(&app, &json!({"operations": [op, op, op]})).await;
    assert_eq!(status, 200, "the limit itself is allowed");

    let (status, body) = post_batch(&app, &json!({"operations": "nope"})).await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("cannot decode the operation body"));

    let (status, out) = post_batch(
        &app,
        &json!({"operations": [
            {"method": "POST", "url": "/v1/batch", "operationID": "1",
             "body": {"operations": [op]}, "headers": headers()},
            {"method": "GET", "url": "/v1/notifications/event-stream", "operationID": "2",
             "headers": headers()},
            {"method": "GET", "url": "http://elsewhere.example/v1/config", "operationID": "3"},
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    for item in out["response"].as_array().unwrap() {
        assert_eq!(item["status"], 400, "{item}");
        assert!(item["body"]["error"].is_string());
    }
    assert_eq!(out["errorCount"], 3);
    app.stop().await;
}

/// Parses an RFC 3339 timestamp of the batch answer.
fn at(v: &Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn batch_runs_at_most_max_concurrency_operations_at_once() {
    let app = app(
        "batch-serial",
        &[("BUCKETD__API__BATCH__MAX_CONCURRENCY", "1")],
    )
    .await;
    let op = json!({"method": "POST", "url": "/v1/decide", "body": {"userId": "u"},
                    "headers": headers()});
    let ops: Vec<Value> = (0..24).map(|_| op.clone()).collect();
    let (status, out) = post_batch(&app, &json!({ "operations": ops })).await;
    assert_eq!(status, 200);
    let mut spans: Vec<_> = out["response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (at(&i["startedAt"]), at(&i["endedAt"])))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two operations overlapped with max_concurrency = 1"
        );
    }
    app.stop().await;
}

async fn bucketed(app: &TestApp, user: &str) -> Value {
    let (_, b) = app
        .get_json(&format!("/bucketer?e=checkout_flow_experiment&u={user}"))
        .await;
    b["variation_key"].clone()
}

#[tokio::test]
async fn reset_drops_the_projects_forced_variations() {
    let app = app("reset", &[]).await;
    let natural = bucketed(&app, "qa").await;
    let forced = if natural == "variation_b" {
        "control"
    } else {
        "variation_b"
    };
    let r = app
        .client
        .post(app.url("/v1/override"))
        .header("X-Optimizely-SDK-Key", KEY)
        .json(
            &json!({"userId": "qa", "experimentKey": "checkout_flow_experiment",
                      "variationKey": forced}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(bucketed(&app, "qa").await, forced);

    let reset = |key: Option<&'static str>| {
        let mut req = app.client.post(app.url("/v1/reset"));
        if let Some(k) = key {
            req = req.header("X-Optimizely-SDK-Key", k);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = reset(None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "SDK key required for reset");
    assert_eq!(
        bucketed(&app, "qa").await,
        forced,
        "a refused reset resets nothing"
    );
    assert_eq!(
        reset(Some("other-key")).await,
        (200, json!({"result": true}))
    );
    assert_eq!(bucketed(&app, "qa").await, forced, "another key's reset");

    assert_eq!(reset(Some(KEY)).await, (200, json!({"result": true})));
    assert_eq!(bucketed(&app, "qa").await, natural, "the override is gone");
    app.stop().await;
}

/// An open event stream.
struct Stream {
    resp: reqwest::Response,
    pending: String,
}

impl Stream {
    async fn open(app: &TestApp, query: &str) -> Result<Stream, (u16, Value)> {
        let resp = app
            .client
            .get(app.url(&format!("/v1/notifications/event-stream{query}")))
            .header("X-Optimizely-SDK-Key", KEY)
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            let status = resp.status().as_u16();
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        Ok(Stream {
            resp,
            pending: String::new(),
        })
    }

    /// The next frame up to `sep` (`"\n\n"` for SSE, `"\n"` for raw lines).
    async fn frame(&mut self, sep: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(at) = self.pending.find(sep) {
                let frame = self.pending[..at].to_string();
                self.pending.drain(..at + sep.len());
                return frame;
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("a notification within 5 s")
                .unwrap()
                .expect("the stream stays open");
            self.pending.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next SSE event's JSON.
    async fn event(&mut self) -> Value {
        let frame = self.frame("\n\n").await;
        let data = frame.strip_prefix("data: ").expect("an SSE data line");
        serde_json::from_str(data).unwrap()
    }
}

async fn post_keyed(app: &TestApp, path: &str, body: Value) -> u16 {
    app.client
        .post(app.url(path))
        .header("X-Optimizely-SDK-Key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_event_stream_is_off_unless_enabled() {
    let app = app("notify-off", &[]).await;
    let Err((status, body)) = Stream::open(&app, "").await else {
        panic!("the stream answered while disabled");
    };
    assert_eq!(status, 403);
    assert_eq!(body["error"], "Notification stream not enabled");
    let r = app
        .client
        .get(app.url("/v1/notifications/event-stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "{\"error\":\"Notification stream not enabled\"}\n",
        "newline-terminated, as every /v1 body"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_event_stream_sends_decisions_and_conversions_by_filter() {
    let app = app(
        "notify-on",
        &[("BUCKETD__API__NOTIFICATIONS__ENABLED", "true")],
    )
    .await;
    let mut all = Stream::open(&app, "").await.unwrap();
    assert_eq!(
        all.resp.headers()["content-type"],
        "text/event-stream",
        "SSE content type"
    );
    let mut tracks = Stream::open(&app, "?filter=track").await.unwrap();
    let mut raw = Stream::open(&app, "?filter=decision,bogus&raw")
        .await
        .unwrap();

    let user = json!({"userId": "n1", "userAttributes": {"tier": "gold"}});
    assert_eq!(
        post_keyed(&app, "/v1/decide?keys=new_checkout", user.clone()).await,
        200
    );
    assert_eq!(
        post_keyed(&app, "/v1/track?eventKey=purchase", user).await,
        200
    );

    let decision = all.event().await;
    assert_eq!(decision["Type"], "flag");
    assert_eq!(decision["UserContext"]["ID"], "n1");
    assert_eq!(decision["UserContext"]["Attributes"]["tier"], "gold");
    assert_eq!(decision["DecisionInfo"]["flagKey"], "new_checkout");
    assert!(decision["DecisionInfo"]["enabled"].is_boolean());
    let track = all.event().await;
    assert_eq!(track["EventKey"], "purchase");
    assert_eq!(track["UserContext"]["ID"], "n1");

    let only = tracks.event().await;
    assert_eq!(only["EventKey"], "purchase", "filter=track skips decisions");

    let line: Value = serde_json::from_str(&raw.frame("\n").await).unwrap();
    assert_eq!(
        line["DecisionInfo"]["flagKey"], "new_checkout",
        "raw JSON lines"
    );
    app.stop().await;
}

#[tokio::test]
async fn event_stream_subscribers_are_bounded_and_freed_on_disconnect() {
    let app = app(
        "notify-bound",
        &[
            ("BUCKETD__API__NOTIFICATIONS__ENABLED", "true"),
            ("BUCKETD__API__NOTIFICATIONS__MAX_SUBSCRIBERS", "1"),
        ],
    )
    .await;
    let first = Stream::open(&app, "").await.unwrap();
    let Err((status, _)) = Stream::open(&app, "").await else {
        panic!("a second subscriber got in past max_subscribers = 1");
    };
    assert_eq!(status, 503);
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Stream::open(&app, "").await {
            Ok(_) => break,
            Err((503, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the slot of a closed stream never came back: {e:?}"),
        }
    }
    app.stop().await;
}

/// A local ODP stand-in: records every request's path, `x-api-key` and JSON body.
struct OdpStandIn {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>,
}

async fn odp_stand_in() -> OdpStandIn {
    odp_stand_in_qualifying(&[]).await
}

/// [`odp_stand_in`] whose GraphQL answer qualifies every user for `segments`.
async fn odp_stand_in_qualifying(segments: &[&str]) -> OdpStandIn {
    use http_body_util::{BodyExt, Full};
    let edges: Vec<Value> = segments
        .iter()
        .map(|s| json!({"node": {"name": s, "state": "qualified"}}))
        .collect();
    let graphql = bytes::Bytes::from(
        json!({"data": {"customer": {"audiences": {"edges": edges}}}}).to_string(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            let graphql = graphql.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        let graphql = graphql.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let key = req
                                .headers()
                                .get("x-api-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let answer = if path == "/v3/graphql" {
                                graphql
                            } else {
                                bytes::Bytes::from_static(b"{}")
                            };
                            s.lock().unwrap().push((path, key, body));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                answer,
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    OdpStandIn { url, seen }
}

/// A daemon whose [`KEY`] project declares an ODP integration, with ODP requests sent to `host`.
async fn odp_app(name: &str, host: &str) -> TestApp {
    odp_app_with(name, host, |_| {}).await
}

/// [`odp_app`] with the datafile changed by `edit` first.
async fn odp_app_with(name: &str, host: &str, edit: impl FnOnce(&mut Value)) -> TestApp {
    let dir = common::scratch(&format!("{name}-df"));
    let mut df: Value = serde_json::from_str(include_str!("../examples/datafile.json")).unwrap();
    df["integrations"] =
        json!([{"key": "odp", "host": "https://odp.invalid", "publicKey": "pub-7"}]);
    edit(&mut df);
    let path = dir.join("odp.json");
    std::fs::write(&path, df.to_string()).unwrap();
    spawn_app(
        name,
        &[
            ("BUCKETD__DATAFILE__PATH", path.display().to_string()),
            ("BUCKETD__DATAFILE__SDK_KEY", KEY.to_string()),
            ("BUCKETD__API__ODP__HOST", host.to_string()),
        ],
    )
    .await
}

async fn send_odp(app: &TestApp, body: &str) -> (u16, String) {
    let r = app
        .client
        .post(app.url("/v1/send-odp-event"))
        .header("X-Optimizely-SDK-Key", KEY)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn error_of(text: &str) -> Value {
    serde_json::from_str::<Value>(text).unwrap()["error"].clone()
}

#[tokio::test]
async fn odp_events_go_to_the_datafiles_odp_with_its_key() {
    let odp = odp_stand_in().await;
    let app = odp_app("odp-send", &odp.url).await;
    let event = json!({"type": "t1", "action": "clicked", "identifiers": {"FS-USER-ID": "u9"},
                       "data": {"plan": "gold", "seats": 3}});
    let (status, text) = send_odp(&app, &event.to_string()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"success": true})
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while odp.seen.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = odp.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one batch reached the stand-in");
    let (path, key, body) = &seen[0];
    assert_eq!((path.as_str(), key.as_str()), ("/v3/events", "pub-7"));
    let sent = &body[0];
    assert_eq!(sent["type"], "t1");
    assert_eq!(sent["action"], "clicked");
    assert_eq!(sent["identifiers"], json!({"fs_user_id": "u9"}));
    assert_eq!(sent["data"]["plan"], "gold");
    assert_eq!(sent["data"]["seats"], 3);
    assert!(sent["data"]["idempotence_id"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn odp_events_are_validated_with_the_agents_statuses() {
    let odp = odp_stand_in().await;
    let app = odp_app("odp-invalid", &odp.url).await;
    let cases = [
        (
            r#"{"action": "a", "identifiers": {}}"#,
            400,
            "missing or empty \"identifiers\" in request payload",
        ),
        (
            r#"{"action": "a", "identifiers": ""}"#,
            400,
            "error parsing request body",
        ),
        (
            r#"{"action": "", "identifiers": {"user_id": "u"}}"#,
            400,
            "missing \"action\" in request payload",
        ),
        ("not json", 400, "error parsing request body"),
        (
            r#"{"action": "a", "identifiers": {"user_id": "u"}, "data": {"x": {"y": 1}}}"#,
            500,
            "ODP data is not valid",
        ),
        (
            r#"{"action": "a", "identifiers": {"user_id": "u"}, "data": {"x": []}}"#,
            500,
            "ODP data is not valid",
        ),
    ];
    for (body, status, error) in cases {
        let (got, text) = send_odp(&app, body).await;
        assert_eq!((got, error_of(&text)), (status, json!(error)), "{body}");
    }
    app.stop().await;

    // A datafile without an ODP integration.
    let plain = app_without_odp().await;
    let (status, text) = send_odp(
        &plain,
        r#"{"action": "a", "identifiers": {"user_id": "u"}}"#,
    )
    .await;
    assert_eq!(
        (status, error_of(&text)),
        (500, json!("ODP is not integrated"))
    );
    plain.stop().await;
    assert!(
        odp.seen.lock().unwrap().is_empty(),
        "nothing invalid was sent"
    );
}

async fn app_without_odp() -> TestApp {
    app("odp-none", &[]).await
}

/// A decide of `new_checkout` for `user_id`, with `extra` body fields; status and raw text.
async fn decide_text(app: &TestApp, user_id: &str, extra: Value) -> (u16, String) {
    let mut body = json!({"userId": user_id, "userAttributes": {}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = app
        .client
        .post(app.url("/v1/decide?keys=new_checkout"))
        .header("X-Optimizely-SDK-Key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn decide_fetches_qualified_segments_when_asked() {
    let odp = odp_stand_in_qualifying(&["vip"]).await;
    // The platinum rule now asks for the ODP segment `vip` instead of a tier.
    let app = odp_app_with("odp-decide", &odp.url, |df| {
        df["audiences"][0]["conditions"] = json!(
            "[\"and\", {\"type\": \"third_party_dimension\", \"name\": \"odp.audiences\", \"match\": \"qualified\", \"value\": \"vip\"}]"
        );
    })
    .await;
    let (status, text) = decide_text(&app, "seg-u1", json!({})).await;
    assert_eq!(status, 200, "{text}");
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["ruleKey"], "everyone_else", "no fetch, no segment: {d}");
    assert!(odp.seen.lock().unwrap().is_empty(), "nothing was fetched");

    let (status, text) = decide_text(
        &app,
        "seg-u1",
        json!({"fetchSegments": true, "fetchSegmentsOptions": ["IGNORE_CACHE"]}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        d["ruleKey"], "platinum_rollout",
        "the fetched segment counts: {d}"
    );
    let seen = odp.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (path, key, query) = &seen[0];
    assert_eq!((path.as_str(), key.as_str()), ("/v3/graphql", "pub-7"));
    assert_eq!(query["variables"]["userId"], "seg-u1");
    app.stop().await;

    // A project without ODP cannot fetch: the Agent's 500, newline-terminated.
    let plain = app_without_odp().await;
    let (status, text) = decide_text(&plain, "seg-u2", json!({"fetchSegments": true})).await;
    assert_eq!(
        (status, text.as_str()),
        (500, "{\"error\":\"failed to fetch qualified segments\"}\n")
    );
    plain.stop().await;
}

#[tokio::test]
async fn odp_batch_and_reset_bodies_end_in_a_newline() {
    let odp = odp_stand_in().await;
    let app = odp_app("odp-newline", &odp.url).await;
    let ok = r#"{"action": "a", "identifiers": {"user_id": "u"}}"#;
    for (body, status) in [
        (ok, 200),
        ("not json", 400),
        (r#"{"action": "", "identifiers": {"user_id": "u"}}"#, 400),
        (
            r#"{"action": "a", "identifiers": {"user_id": "u"}, "data": {"x": []}}"#,
            500,
        ),
    ] {
        let (got, text) = send_odp(&app, body).await;
        assert_eq!(got, status, "{body}");
        assert!(text.ends_with("}\n"), "{body}: {text:?}");
    }
    let post = |path: &'static str, body: Value| {
        let req = app
            .client
            .post(app.url(path))
            .header("X-Optimizely-SDK-Key", KEY)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let op = json!({"method": "GET", "url": "/v1/config", "headers": headers()});
    let (status, text) = post("/v1/batch", json!({"operations": [op]})).await;
    assert_eq!(status, 200);
    assert!(text.ends_with("}\n"), "{text:?}");
    let (status, text) = post("/v1/batch", json!({"operations": "nope"})).await;
    assert_eq!(status, 400);
    assert!(text.ends_with("}\n"), "{text:?}");
    let (status, text) = post("/v1/reset", json!({})).await;
    assert_eq!((status, text.as_str()), (200, "{\"result\":true}\n"));
    app.stop().await;
}

#[tokio::test]
async fn the_event_stream_reports_new_datafile_revisions_and_feature_activations() {
    let app = app(
        "notify-config",
        &[
            ("BUCKETD__API__NOTIFICATIONS__ENABLED", "true"),
            ("BUCKETD__ADMIN__TOKEN", "tok"),
        ],
    )
    .await;
    let mut updates = Stream::open(&app, "?filter=project_config_update")
        .await
        .unwrap();
    let mut decisions = Stream::open(&app, "?filter=decision").await.unwrap();

    let user = json!({"userId": "n2", "userAttributes": {"tier": "platinum"}});
    assert_eq!(
        post_keyed(&app, "/v1/activate?featureKey=new_checkout", user).await,
        200
    );
    let d = decisions.event().await;
    assert_eq!(d["Type"], "all-feature-variables", "{d}");
    assert_eq!(d["UserContext"]["ID"], "n2");
    let feature = &d["DecisionInfo"]["feature"];
    assert_eq!(feature["featureKey"], "new_checkout");
    assert!(feature["featureEnabled"].is_boolean(), "{d}");
    assert!(feature["variableValues"].is_object(), "{d}");

    let mut df: Value = serde_json::from_str(include_str!("../examples/datafile.json")).unwrap();
    df["revision"] = json!("77");
    let r = app
        .client
        .put(app.url("/admin/datafile"))
        .bearer_auth("tok")
        .header("X-Optimizely-SDK-Key", KEY)
        .body(df.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let u = updates.event().await;
    assert_eq!(
        u,
        json!({"Type": "project_config_update", "Revision": "77"})
    );
    app.stop().await;
}

/// `api.odp.segments_cache = "redis://..."`: segments another daemon or an Agent cached under
/// `fs_user_id-$-<user>` are used without asking ODP; fetched ones are written there;
/// `RESET_CACHE` empties the shared cache and fetches again.
#[tokio::test]
async fn decide_shares_fetched_segments_through_redis() {
    let Some(url) = backends::testing::env_or_skip("BUCKETD_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("bucketd-test-seg-{}:", uuid::Uuid::new_v4());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let cached = |user: &str| format!("{prefix}fs_user_id-$-{user}");
    let _: () = redis::cmd("SET")
        .arg(cached("seg-r1"))
        .arg(r#"["vip"]"#)
        .query_async(&mut conn)
        .await
        .unwrap();

    let odp = odp_stand_in_qualifying(&["vip"]).await;
    let dir = common::scratch("odp-redis-df");
    let mut df: Value = serde_json::from_str(include_str!("../examples/datafile.json")).unwrap();
    df["integrations"] =
        json!([{"key": "odp", "host": "https://odp.invalid", "publicKey": "pub-7"}]);
    df["audiences"][0]["conditions"] = json!(
        "[\"and\", {\"type\": \"third_party_dimension\", \"name\": \"odp.audiences\", \"match\": \"qualified\", \"value\": \"vip\"}]"
    );
    let path = dir.join("odp.json");
    std::fs::write(&path, df.to_string()).unwrap();
    let app = spawn_app(
        "odp-redis",
        &[
            ("BUCKETD__DATAFILE__PATH", path.display().to_string()),
            ("BUCKETD__DATAFILE__SDK_KEY", KEY.to_string()),
            ("BUCKETD__API__ODP__HOST", odp.url.clone()),
            ("BUCKETD__API__ODP__SEGMENTS_CACHE", url.clone()),
            ("BUCKETD__API__ODP__SEGMENTS_CACHE_PREFIX", prefix.clone()),
        ],
    )
    .await;
    let rule = |text: &str| serde_json::from_str::<Value>(text).unwrap()["ruleKey"].clone();

    let (status, text) = decide_text(&app, "seg-r1", json!({"fetchSegments": true})).await;
    assert_eq!(
        (status, rule(&text)),
        (200, json!("platinum_rollout")),
        "{text}"
    );
    assert!(odp.seen.lock().unwrap().is_empty(), "served from Redis");

    let (status, text) = decide_text(&app, "seg-r2", json!({"fetchSegments": true})).await;
    assert_eq!(
        (status, rule(&text)),
        (200, json!("platinum_rollout")),
        "{text}"
    );
    assert_eq!(odp.seen.lock().unwrap().len(), 1, "a miss is fetched");
    let stored: Option<String> = redis::cmd("GET")
        .arg(cached("seg-r2"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(r#"["vip"]"#));

    let _: () = redis::cmd("SET")
        .arg(cached("seg-r1"))
        .arg(r#"["stale"]"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (status, text) = decide_text(
        &app,
        "seg-r1",
        json!({"fetchSegments": true, "fetchSegmentsOptions": ["RESET_CACHE"]}),
    )
    .await;
    assert_eq!(
        (status, rule(&text)),
        (200, json!("platinum_rollout")),
        "{text}"
    );
    assert_eq!(odp.seen.lock().unwrap().len(), 2, "reset: fetched again");
    let stored: Option<String> = redis::cmd("GET")
        .arg(cached("seg-r1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(r#"["vip"]"#),
        "the fresh answer replaced the stale one"
    );
    app.stop().await;
}
