//! ODP (Optimizely Data Platform): the integration a datafile declares (`integrations`, key
//! `odp`: host and public key) and the segments its audiences test (`qualified` conditions);
//! fetching a user's qualified segments (GraphQL, cached per user) and sending ODP events (a
//! bounded queue drained by one background sender, batches of up to [`EVENT_BATCH`]).

mod segment_cache;

use super::{PinnedProject, Service};
use crate::config::OdpSettings;
use crate::config::SegmentsCacheConfig;
pub use segment_cache::{user_key, SegmentCache, SegmentCacheError};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events sent in one ODP request at most.
pub const EVENT_BATCH: usize = 10;

/// How long a partial batch waits for more events.
const EVENT_LINGER: Duration = Duration::from_secs(1);

/// Why an ODP call cannot be made. The wording is the Agent's (its Go SDK's).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OdpError {
    #[error("ODP is not enabled")]
    Disabled,
    #[error("ODP is not integrated")]
    NotIntegrated,
    #[error("ODP data is not valid")]
    InvalidData,
    #[error("missing \"action\" in request payload")]
    MissingAction,
    #[error("missing or empty \"identifiers\" in request payload")]
    MissingIdentifiers,
    #[error("ODP event queue is full")]
    QueueFull,
    #[error("failed to fetch qualified segments: {0}")]
    Segments(String),
}

/// A datafile's ODP integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OdpIntegration {
    pub host: String,
    pub public_key: String,
    /// Every segment a `qualified` condition of the datafile names, sorted.
    pub segments: Vec<String>,
}

/// Collects the values of `qualified` leaf conditions.
fn qualified_values(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| qualified_values(i, out)),
        Value::Object(m) if m.get("match").and_then(Value::as_str) == Some("qualified") => {
            if let Some(s) = m.get("value").and_then(Value::as_str) {
                out.insert(s.to_string());
            }
        }
        // `audiences[].conditions` is JSON text.
        Value::String(s) => {
            if let Ok(inner) = serde_json::from_str::<Value>(s) {
                if !inner.is_string() {
                    qualified_values(&inner, out);
                }
            }
        }
        _ => {}
    }
}

/// The ODP integration of a datafile text, if it declares one with a host and key.
pub fn integration(datafile: &str) -> Option<OdpIntegration> {
    let v: Value = serde_json::from_str(datafile).ok()?;
    let odp = v
        .get("integrations")?
        .as_array()?
        .iter()
        .find(|i| i.get("key").and_then(Value::as_str) == Some("odp"))?;
    let host = odp
        .get("host")
        .and_then(Value::as_str)?
        .trim_end_matches('/');
    let public_key = odp.get("publicKey").and_then(Value::as_str)?;
    if host.is_empty() || public_key.is_empty() {
        return None;
    }
    let mut segments = BTreeSet::new();
    for list in ["audiences", "typedAudiences"] {
        for a in v.get(list).and_then(Value::as_array).into_iter().flatten() {
            if let Some(c) = a.get("conditions") {
                qualified_values(c, &mut segments);
            }
        }
    }
    Some(OdpIntegration {
        host: host.to_string(),
        public_key: public_key.to_string(),
        segments: segments.into_iter().collect(),
    })
}

/// How a segment fetch treats the cache (decide's `fetchSegmentsOptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentOptions {
    /// `IGNORE_CACHE`: neither read nor write the cache.
    pub ignore_cache: bool,
    /// `RESET_CACHE`: empty the cache first.
    pub reset_cache: bool,
}

impl SegmentOptions {
    /// Parses the Agent's option names; unknown names are ignored, as the Go SDK does.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut o = Self::default();
        for n in names {
            match n {
                "IGNORE_CACHE" => o.ignore_cache = true,
                "RESET_CACHE" => o.reset_cache = true,
                _ => {}
            }
        }
        o
    }
}

/// An ODP event as `POST /v1/send-odp-event` takes it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct OdpEvent {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub identifiers: Map<String, Value>,
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// One event on its way, with where it goes.
struct Outgoing {
    url: String,
    public_key: String,
    event: Value,
}

/// A datafile text's address and the integration parsed from it (`None`: it declares none).
type ParsedIntegration = (usize, Option<Arc<OdpIntegration>>);

/// The service's ODP state.
pub struct Odp {
    settings: OdpSettings,
    http: reqwest::Client,
    /// Per project: the datafile text's address and the integration parsed from it.
    integrations: Mutex<Vec<Option<ParsedIntegration>>>,
    segments: SegmentCache,
    events: Mutex<Option<mpsc::Sender<Outgoing>>>,
}

impl Odp {
    /// ODP as `settings` say, for `projects` projects.
    pub fn new(settings: OdpSettings, projects: usize) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .build()
            .unwrap_or_default();
        let memory = || {
            SegmentCache::memory(
                settings.segments_cache_size,
                settings.segments_cache_timeout,
            )
        };
        let segments = match &settings.segments_cache {
            SegmentsCacheConfig::Memory => memory(),
            SegmentsCacheConfig::Redis { url, prefix } => {
                match SegmentCache::redis(url, prefix, settings.segments_cache_timeout) {
                    Ok(cache) => cache,
                    Err(e) => {
                        tracing::error!(error = %e, "ODP segments are cached in memory instead");
                        memory()
                    }
                }
            }
        };
        Self {
            segments,
            settings,
            http,
            integrations: Mutex::new(vec![None; projects]),
            events: Mutex::new(None),
        }
    }

    /// Where ODP requests go: the configured host, else the datafile's.
    fn host<'a>(&'a self, i: &'a OdpIntegration) -> &'a str {
        self.settings.host.as_deref().unwrap_or(&i.host)
    }

    /// The sender of the event queue, started on first use.
    fn queue(&self) -> Option<mpsc::Sender<Outgoing>> {
        let mut guard = self.events.lock().ok()?;
        if let Some(tx) = guard.as_ref() {
            return Some(tx.clone());
        }
        let (tx, rx) = mpsc::channel(self.settings.events_queue);
        tokio::spawn(send_events(self.http.clone(), rx));
        *guard = Some(tx.clone());
        Some(tx)
    }
}

/// Posts queued events in batches until the queue closes.
async fn send_events(http: reqwest::Client, mut rx: mpsc::Receiver<Outgoing>) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(EVENT_BATCH);
    loop {
        let next = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(EVENT_LINGER, rx.recv()).await {
                Ok(n) => n,
                Err(_) => {
                    post(&http, std::mem::take(&mut batch)).await;
                    continue;
                }
            }
        };
        let Some(event) = next else {
            post(&http, std::mem::take(&mut batch)).await;
            return;
        };
        batch.push(event);
        if batch.len() >= EVENT_BATCH {
            post(&http, std::mem::take(&mut batch)).await;
        }
    }
}

/// Posts events, one request per destination.
async fn post(http: &reqwest::Client, mut events: Vec<Outgoing>) {
    while let Some(first) = events.first() {
        let (url, key) = (first.url.clone(), first.public_key.clone());
        let (same, rest): (Vec<Outgoing>, Vec<Outgoing>) = events
            .into_iter()
            .partition(|e| e.url == url && e.public_key == key);
        events = rest;
        let body: Vec<Value> = same.into_iter().map(|e| e.event).collect();
        let sent = http
            .post(&url)
            .header("x-api-key", &key)
            .json(&body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        if let Err(e) = sent {
            tracing::warn!(error = %e, events = body.len(), "ODP events not sent");
        }
    }
}

/// The identifier names the Go SDK folds into `fs_user_id`.
fn identifier_name(name: &str) -> String {
    match name.to_ascii_lowercase().replace('-', "_").as_str() {
        "fs_user_id" => "fs_user_id".to_string(),
        _ => name.to_string(),
    }
}

impl Service {
    /// The ODP state (created disabled for services built without [`Service::with_odp`]).
    pub fn odp(&self) -> &Odp {
        &self.odp
    }

    /// The pinned datafile's ODP integration, parsed once per datafile.
    pub fn odp_integration(&self, snap: &PinnedProject) -> Result<Arc<OdpIntegration>, OdpError> {
        if !self.odp.settings.enabled {
            return Err(OdpError::Disabled);
        }
        let text = &snap.config().datafile;
        let id = text.as_ptr() as usize;
        let Ok(mut cached) = self.odp.integrations.lock() else {
            return integration(text)
                .map(Arc::new)
                .ok_or(OdpError::NotIntegrated);
        };
        if let Some(Some((at, found))) = cached.get(snap.index) {
            if *at == id {
                return found.clone().ok_or(OdpError::NotIntegrated);
            }
        }
        let found = integration(text).map(Arc::new);
        if let Some(slot) = cached.get_mut(snap.index) {
            *slot = Some((id, found.clone()));
        }
        found.ok_or(OdpError::NotIntegrated)
    }

    /// Queues an ODP event for the pinned project's ODP (`POST /v1/send-odp-event`).
    pub fn send_odp_event(&self, snap: &PinnedProject, e: OdpEvent) -> Result<(), OdpError> {
        if e.action.is_empty() {
            return Err(OdpError::MissingAction);
        }
        if e.identifiers.is_empty() {
            return Err(OdpError::MissingIdentifiers);
        }
        let odp = self.odp_integration(snap)?;
        let valid = |v: &Value| {
            matches!(
                v,
                Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null
            )
        };
        if !e.data.values().all(valid) || !e.identifiers.values().all(Value::is_string) {
            return Err(OdpError::InvalidData);
        }
        let mut data = Map::new();
        data.insert(
            "idempotence_id".into(),
            json!(uuid::Uuid::new_v4().to_string()),
        );
        data.insert("data_source_type".into(), json!("sdk"));
        data.insert("data_source".into(), json!("bucketd"));
        data.insert(
            "data_source_version".into(),
            json!(env!("CARGO_PKG_VERSION")),
        );
        data.extend(e.data);
        let identifiers: Map<String, Value> = e
            .identifiers
            .into_iter()
            .map(|(k, v)| (identifier_name(&k), v))
            .collect();
        let kind = if e.kind.is_empty() {
            "fullstack".to_string()
        } else {
            e.kind
        };
        let event = json!({
            "type": kind,
            "action": e.action,
            "identifiers": identifiers,
            "data": data,
        });
        let tx = self.odp.queue().ok_or(OdpError::QueueFull)?;
        tx.try_send(Outgoing {
            url: format!("{}/v3/events", self.odp.host(&odp)),
            public_key: odp.public_key.clone(),
            event,
        })
        .map_err(|_| OdpError::QueueFull)
    }

    /// The user's qualified segments among those the datafile tests, from the cache or ODP.
    pub async fn qualified_segments(
        &self,
        snap: &PinnedProject,
        user_id: &str,
        options: SegmentOptions,
    ) -> Result<Vec<String>, OdpError> {
        let odp = self.odp_integration(snap)?;
        self.odp.qualified(snap.index, &odp, user_id, options).await
    }
}

impl Odp {
    /// The user's qualified segments among those the datafile tests, from the cache or ODP.
    pub async fn qualified(
        &self,
        project: usize,
        odp: &OdpIntegration,
        user_id: &str,
        options: SegmentOptions,
    ) -> Result<Vec<String>, OdpError> {
        if odp.segments.is_empty() {
            return Ok(Vec::new());
        }
        if options.reset_cache {
            self.segments.reset().await;
        }
        if !options.ignore_cache {
            if let Some(found) = self.segments.get(project, user_id).await {
                return Ok(found);
            }
        }
        let found = self.fetch(odp, user_id).await?;
        if !options.ignore_cache {
            self.segments.put(project, user_id, &found).await;
        }
        Ok(found)
    }

    async fn fetch(&self, odp: &OdpIntegration, user_id: &str) -> Result<Vec<String>, OdpError> {
        let query = json!({
            "query": "query($userId: String, $audiences: [String]) {customer(fs_user_id: $userId) {audiences(subset: $audiences) {edges {node {name state}}}}}",
            "variables": {"userId": user_id, "audiences": odp.segments},
        });
        let failed = |e: &dyn std::fmt::Display| OdpError::Segments(e.to_string());
        let answer: Value = self
            .http
            .post(format!("{}/v3/graphql", self.host(odp)))
            .header("x-api-key", &odp.public_key)
            .json(&query)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| failed(&e))?
            .json()
            .await
            .map_err(|e| failed(&e))?;
        if let Some(errors) = answer.get("errors").and_then(Value::as_array) {
            let invalid = errors.iter().any(|e| {
                e.pointer("/extensions/classification")
                    .and_then(Value::as_str)
                    == Some("InvalidIdentifierException")
            });
            return Err(failed(&if invalid {
                "invalid identifier"
            } else {
                "ODP answered with errors"
            }));
        }
        let edges = answer
            .pointer("/data/customer/audiences/edges")
            .and_then(Value::as_array)
            .ok_or_else(|| failed(&"decode error"))?;
        Ok(edges
            .iter()
            .filter(|e| e.pointer("/node/state").and_then(Value::as_str) == Some("qualified"))
            .filter_map(|e| e.pointer("/node/name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integration_and_its_segments_come_from_the_datafile() {
        let df = json!({
            "integrations": [{"key": "other"}, {"key": "odp", "host": "https://odp.test/", "publicKey": "pk"}],
            "audiences": [{"id": "1", "conditions": "[\"and\", {\"match\": \"qualified\", \"value\": \"seg-b\", \"type\": \"third_party_dimension\", \"name\": \"odp.audiences\"}]"}],
            "typedAudiences": [{"id": "2", "conditions": ["or", {"match": "qualified", "value": "seg-a"}, {"match": "exact", "value": "x"}]}],
        });
        let i = integration(&df.to_string()).unwrap();
        assert_eq!(i.host, "https://odp.test");
        assert_eq!(i.public_key, "pk");
        assert_eq!(i.segments, ["seg-a", "seg-b"]);
        assert_eq!(integration(r#"{"integrations": []}"#), None);
        assert_eq!(
            integration(r#"{"integrations": [{"key": "odp", "host": "", "publicKey": "k"}]}"#),
            None
        );
    }

    #[test]
    fn segment_options_and_identifiers() {
        let o = SegmentOptions::parse(["RESET_CACHE", "NOPE"]);
        assert!(o.reset_cache && !o.ignore_cache);
        assert_eq!(identifier_name("FS-USER-ID"), "fs_user_id");
        assert_eq!(identifier_name("email"), "email");
    }

    /// A local ODP GraphQL stand-in: answers every query with `qualified` as qualified and the
    /// other asked segments as not; counts requests and keeps the last query.
    struct StandIn {
        url: String,
        requests: Arc<std::sync::atomic::AtomicUsize>,
        last: Arc<Mutex<Option<(String, Value)>>>,
    }

    async fn stand_in(qualified: &'static [&'static str]) -> StandIn {
        use http_body_util::{BodyExt, Full};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let (r, l) = (requests.clone(), last.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, l) = (r.clone(), l.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (r, l) = (r.clone(), l.clone());
                            async move {
                                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let key = req
                                    .headers()
                                    .get("x-api-key")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let q: Value = serde_json::from_slice(&body).unwrap();
                                let edges: Vec<Value> = q["variables"]["audiences"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|a| {
                                        let name = a.as_str().unwrap();
                                        let state = if qualified.contains(&name) {
                                            "qualified"
                                        } else {
                                            "not_qualified"
                                        };
                                        json!({"node": {"name": name, "state": state}})
                                    })
                                    .collect();
                                *l.lock().unwrap() = Some((key, q));
                                let answer =
                                    json!({"data": {"customer": {"audiences": {"edges": edges}}}});
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    bytes::Bytes::from(answer.to_string()),
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
        StandIn {
            url,
            requests,
            last,
        }
    }

    fn odp_at(url: &str) -> (Odp, OdpIntegration) {
        let odp = Odp::new(OdpSettings::default(), 1);
        let integration = OdpIntegration {
            host: url.to_string(),
            public_key: "pk-1".into(),
            segments: vec!["seg-a".into(), "seg-b".into()],
        };
        (odp, integration)
    }

    #[tokio::test]
    async fn segments_are_fetched_once_then_cached_unless_told_otherwise() {
        let server = stand_in(&["seg-b"]).await;
        let (odp, i) = odp_at(&server.url);
        let count = || server.requests.load(std::sync::atomic::Ordering::SeqCst);
        let got = odp
            .qualified(0, &i, "u1", SegmentOptions::default())
            .await
            .unwrap();
        assert_eq!(got, ["seg-b"]);
        let (key, query) = server.last.lock().unwrap().clone().unwrap();
        assert_eq!(key, "pk-1", "the public key goes in x-api-key");
        assert_eq!(query["variables"]["userId"], "u1");
        assert_eq!(query["variables"]["audiences"], json!(["seg-a", "seg-b"]));
        assert!(query["query"].as_str().unwrap().contains("fs_user_id"));

        odp.qualified(0, &i, "u1", SegmentOptions::default())
            .await
            .unwrap();
        assert_eq!(count(), 1, "the second fetch is served from the cache");
        let ignore = SegmentOptions {
            ignore_cache: true,
            ..Default::default()
        };
        odp.qualified(0, &i, "u1", ignore).await.unwrap();
        assert_eq!(count(), 2, "IGNORE_CACHE asks ODP");
        let reset = SegmentOptions {
            reset_cache: true,
            ..Default::default()
        };
        odp.qualified(0, &i, "u1", reset).await.unwrap();
        assert_eq!(count(), 3, "RESET_CACHE empties the cache first");
        odp.qualified(0, &i, "u2", SegmentOptions::default())
            .await
            .unwrap();
        assert_eq!(count(), 4, "users are cached apart");
    }

    #[tokio::test]
    async fn no_tested_segments_means_no_request_and_a_dead_host_is_an_error() {
        let server = stand_in(&[]).await;
        let (odp, mut i) = odp_at(&server.url);
        i.segments.clear();
        assert!(odp
            .qualified(0, &i, "u", SegmentOptions::default())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
        let (odp, i) = odp_at("http://127.0.0.1:9");
        assert!(matches!(
            odp.qualified(0, &i, "u", SegmentOptions::default()).await,
            Err(OdpError::Segments(_))
        ));
    }
}
