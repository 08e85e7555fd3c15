//! CMAB predictions for the core's pending inputs: the prediction client (the SDK's request body,
//! a bounded timeout, its retry with backoff), the prediction cache (the SDK's key, attribute
//! hash, size and TTL; in memory or shared in Redis) with the `*_CMAB_CACHE` decide options, and
//! [`resolve`], the second pass every caller uses: decide, fetch what the outcome still needs
//! (concurrently, on the async runtime), decide again with the answers, until nothing is pending.
//! A datafile without CMAB experiments never gets past the first `decide`.

use crate::config::{CmabCache, CmabSettings};
use crate::core::decide::Prediction;
use crate::core::{Attributes, DecideOptions, ExternalInputs, Outcome, Pending};
mod redis_cache;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Optimizely's prediction endpoint (`{}` is the rule id), as the SDK has it.
pub const DEFAULT_PREDICTION_URL: &str = "https://prediction.cmab.optimizely.com/predict/{}";

/// Passes after the first before every still-pending input is answered as failed (each pass
/// answers at least one new rule, so only a flag with this many CMAB rules in a row gets there).
const MAX_PASSES: usize = 16;

/// Why a prediction could not be obtained.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmabError {
    /// Transport error, timeout or a non-2xx status (the SDK's `CmabFetchError`).
    #[error("CMAB decision fetch failed with status: {0}.")]
    Fetch(String),
    /// A 2xx answer without `predictions[0].variation_id` (`CmabInvalidResponseError`).
    #[error("Invalid CMAB fetch response.")]
    InvalidResponse,
    /// Every attempt failed.
    #[error("CMAB decision fetch failed with status: Exhausted all retries for CMAB request.")]
    Exhausted,
}

/// The SDK's retry policy: `max_retries` more attempts, sleeping `initial_backoff` first and
/// then `min(backoff * multiplier^(attempt + 1), max_backoff)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl RetryPolicy {
    /// The backoff after `attempt` (0-based) failed, given the previous one.
    fn next(&self, backoff: Duration, attempt: u32) -> Duration {
        let grown = backoff.as_secs_f64() * self.multiplier.powi(attempt as i32 + 1);
        Duration::from_secs_f64(grown.min(self.max_backoff.as_secs_f64()).max(0.0))
    }
}

/// Every attempt a client made: `(rule id, attempt, request body)`.
pub type RequestLog = Arc<std::sync::Mutex<Vec<(String, u32, Value)>>>;

/// A fetched prediction: `(variation id, cmab_uuid)`.
type Fetched = Result<(String, String), CmabError>;

/// Posts prediction requests.
#[derive(Clone)]
pub struct PredictionClient {
    http: reqwest::Client,
    url_template: String,
    timeout: Duration,
    retry: RetryPolicy,
    /// Every attempt's `(rule id, attempt, body)`, when recording (tests compare them).
    recorder: Option<RequestLog>,
}

impl PredictionClient {
    /// A client for a URL template (`{}` is replaced by the rule id).
    pub fn new(url_template: impl Into<String>, timeout: Duration, retry: RetryPolicy) -> Self {
        Self {
            http: reqwest::Client::new(),
            url_template: url_template.into(),
            timeout,
            retry,
            recorder: None,
        }
    }

    /// Records every attempt into `log` (for tests that compare requests).
    pub fn recording(self, log: RequestLog) -> Self {
        Self {
            recorder: Some(log),
            ..self
        }
    }

    /// The body the SDK sends for one prediction.
    pub fn request_body(
        rule_id: &str,
        user_id: &str,
        attributes: &Attributes,
        cmab_uuid: &str,
    ) -> Value {
        let attributes: Vec<Value> = attributes
            .iter()
            .map(|(id, value)| json!({"id": id, "value": value, "type": "custom_attribute"}))
            .collect();
        json!({"instances": [{
            "visitorId": user_id,
            "experimentId": rule_id,
            "attributes": attributes,
            "cmabUUID": cmab_uuid,
        }]})
    }

    /// The predicted variation id, retrying as the SDK does.
    pub async fn fetch(
        &self,
        rule_id: &str,
        user_id: &str,
        attributes: &Attributes,
        cmab_uuid: &str,
    ) -> Result<String, CmabError> {
        let url = self.url_template.replacen("{}", rule_id, 1);
        let body = Self::request_body(rule_id, user_id, attributes, cmab_uuid);
        let mut backoff = self.retry.initial_backoff;
        for attempt in 0..=self.retry.max_retries {
            if let Some(log) = &self.recorder {
                if let Ok(mut log) = log.lock() {
                    log.push((rule_id.to_string(), attempt, body.clone()));
                }
            }
            match self.fetch_once(&url, &body).await {
                Ok(id) => return Ok(id),
                Err(e) => tracing::debug!(%rule_id, attempt, error = %e, "CMAB prediction failed"),
            }
            if attempt < self.retry.max_retries {
                tokio::time::sleep(backoff).await;
                backoff = self.retry.next(backoff, attempt);
            }
        }
        Err(CmabError::Exhausted)
    }

    async fn fetch_once(&self, url: &str, body: &Value) -> Result<String, CmabError> {
        let response = self
            .http
            .post(url)
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| CmabError::Fetch(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(CmabError::Fetch(status.as_u16().to_string()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CmabError::Fetch(e.to_string()))?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| CmabError::InvalidResponse)?;
        body.get("predictions")
            .and_then(Value::as_array)
            .and_then(|p| p.first())
            .and_then(Value::as_object)
            .and_then(|p| p.get("variation_id"))
            .map(python_str)
            .ok_or(CmabError::InvalidResponse)
    }
}

/// `str(value)` as the SDK applies it to `variation_id` (a number answers as its digits).
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// A cached prediction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPrediction {
    pub attributes_hash: String,
    pub variation_id: String,
    pub cmab_uuid: String,
}

/// Where predictions are kept between requests.
#[async_trait]
pub trait PredictionCache: Send + Sync {
    async fn lookup(&self, key: &str) -> Option<CachedPrediction>;
    async fn save(&self, key: &str, value: CachedPrediction);
    async fn remove(&self, key: &str);
    /// Forgets every prediction (`RESET_CMAB_CACHE`).
    async fn reset(&self);
}

/// The SDK's in-process cache: LRU with a size bound and a TTL.
pub struct MemoryCache(moka::sync::Cache<String, CachedPrediction>);

impl MemoryCache {
    pub fn new(size: u64, ttl: Duration) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(size)
                .time_to_live(ttl)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
        )
    }
}

#[async_trait]
impl PredictionCache for MemoryCache {
    async fn lookup(&self, key: &str) -> Option<CachedPrediction> {
        self.0.get(key)
    }
    async fn save(&self, key: &str, value: CachedPrediction) {
        self.0.insert(key.to_string(), value);
    }
    async fn remove(&self, key: &str) {
        self.0.invalidate(key);
    }
    async fn reset(&self) {
        self.0.invalidate_all();
    }
}

/// The SDK's cache key for a user and rule.
pub fn cache_key(user_id: &str, rule_id: &str) -> String {
    format!("{}-{user_id}-{rule_id}", user_id.chars().count())
}

/// A digest of the filtered attributes, independent of their order (the SDK hashes them as JSON
/// with sorted keys).
pub fn attributes_hash(attributes: &Attributes) -> String {
    let sorted: BTreeMap<&String, &Value> = attributes.iter().collect();
    let text = serde_json::to_string(&sorted).unwrap_or_default();
    hex::encode(Sha1::digest(text.as_bytes()))
}

/// The decide options the cache reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheOptions {
    pub ignore: bool,
    pub reset: bool,
    pub invalidate_user: bool,
}

impl From<DecideOptions> for CacheOptions {
    fn from(o: DecideOptions) -> Self {
        Self {
            ignore: o.ignore_cmab_cache,
            reset: o.reset_cmab_cache,
            invalidate_user: o.invalidate_user_cmab_cache,
        }
    }
}

/// The prediction client and cache.
pub struct CmabService {
    client: PredictionClient,
    cache: Arc<dyn PredictionCache>,
}

impl CmabService {
    pub fn new(client: PredictionClient, cache: Arc<dyn PredictionCache>) -> Self {
        Self { client, cache }
    }

    /// The SDK's defaults: Optimizely's endpoint, an in-memory cache.
    pub fn sdk_default() -> Self {
        let defaults = crate::config::CmabSettings::default();
        Self::new(
            PredictionClient::new(&defaults.prediction_url, defaults.timeout, defaults.retry),
            Arc::new(MemoryCache::new(defaults.cache_size, defaults.cache_ttl)),
        )
    }

    /// The service `[cmab]` describes (a Redis cache connects lazily).
    pub fn from_settings(s: &CmabSettings) -> Result<Self, CmabSetupError> {
        let client = PredictionClient::new(&s.prediction_url, s.timeout, s.retry);
        let cache: Arc<dyn PredictionCache> = match &s.cache {
            CmabCache::Memory => Arc::new(MemoryCache::new(s.cache_size, s.cache_ttl)),
            CmabCache::Redis(url) => Arc::new(redis_cache::RedisCache::new(
                url,
                &s.cache_prefix,
                s.cache_ttl,
            )?),
        };
        Ok(Self::new(client, cache))
    }

    /// Answers for `pending`, in order: cache reads and writes follow the SDK's order (one
    /// rule after the other); the fetches between them run concurrently.
    pub async fn predict(
        &self,
        user_id: &str,
        pending: &[Pending],
        options: CacheOptions,
    ) -> Vec<(String, Prediction)> {
        let mut answers: Vec<Option<Prediction>> = Vec::with_capacity(pending.len());
        let mut fetches = JoinSet::new();
        for (i, p) in pending.iter().enumerate() {
            let Pending::Prediction {
                rule_id,
                attributes,
            } = p;
            let hit = if options.ignore {
                None
            } else {
                self.lookup(user_id, rule_id, attributes, options).await
            };
            if hit.is_none() {
                let client = self.client.clone();
                let (rule_id, user_id, attributes) =
                    (rule_id.clone(), user_id.to_string(), attributes.clone());
                fetches.spawn(async move {
                    let uuid = uuid::Uuid::new_v4().to_string();
                    let r = client.fetch(&rule_id, &user_id, &attributes, &uuid).await;
                    (i, r.map(|variation_id| (variation_id, uuid)))
                });
            }
            answers.push(hit);
        }
        let mut fetched: Vec<(usize, Fetched)> = Vec::new();
        while let Some(done) = fetches.join_next().await {
            match done {
                Ok(r) => fetched.push(r),
                Err(e) => tracing::warn!(error = %e, "CMAB prediction task failed"),
            }
        }
        fetched.sort_by_key(|(i, _)| *i);
        for (i, r) in fetched {
            let Some(Pending::Prediction {
                rule_id,
                attributes,
            }) = pending.get(i)
            else {
                continue;
            };
            answers[i] = Some(match r {
                Ok((variation_id, cmab_uuid)) => {
                    if !options.ignore {
                        if options.reset {
                            self.cache.reset().await;
                        }
                        let value = CachedPrediction {
                            attributes_hash: attributes_hash(attributes),
                            variation_id: variation_id.clone(),
                            cmab_uuid: cmab_uuid.clone(),
                        };
                        self.cache.save(&cache_key(user_id, rule_id), value).await;
                    }
                    Prediction::Variation {
                        variation_id,
                        cmab_uuid,
                    }
                }
                Err(e) => {
                    tracing::warn!(%rule_id, error = %e, "CMAB prediction unavailable");
                    Prediction::Failed
                }
            });
        }
        pending
            .iter()
            .zip(answers)
            .map(|(p, a)| (p.rule_id().to_string(), a.unwrap_or(Prediction::Failed)))
            .collect()
    }

    /// A cached prediction still valid for these attributes, after the reset and invalidate
    /// options.
    async fn lookup(
        &self,
        user_id: &str,
        rule_id: &str,
        attributes: &Attributes,
        options: CacheOptions,
    ) -> Option<Prediction> {
        if options.reset {
            self.cache.reset().await;
        }
        let key = cache_key(user_id, rule_id);
        if options.invalidate_user {
            self.cache.remove(&key).await;
        }
        let cached = self.cache.lookup(&key).await?;
        if cached.attributes_hash != attributes_hash(attributes) {
            self.cache.remove(&key).await;
            return None;
        }
        Some(Prediction::Variation {
            variation_id: cached.variation_id,
            cmab_uuid: cached.cmab_uuid,
        })
    }
}

/// Why `[cmab]` could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cmab.cache: {0}")]
pub struct CmabSetupError(pub String);

/// Decides until nothing is pending: `decide` is the core call (given the answers so far); when
/// its outcome lists pending predictions, they are fetched and it runs again. Only the returned
/// (final) outcome's events and profile are to be kept. Without `cmab`, a pending prediction is
/// answered as failed.
pub async fn resolve<T>(
    cmab: Option<&CmabService>,
    user_id: &str,
    options: CacheOptions,
    mut decide: impl FnMut(&ExternalInputs) -> Outcome<T>,
) -> Outcome<T> {
    let mut inputs = ExternalInputs::none();
    let mut outcome = decide(&inputs);
    let mut passes = 0;
    while !outcome.pending.is_empty() {
        passes += 1;
        let answers = match cmab {
            Some(s) if passes <= MAX_PASSES => s.predict(user_id, &outcome.pending, options).await,
            _ => outcome
                .pending
                .iter()
                .map(|p| (p.rule_id().to_string(), Prediction::Failed))
                .collect(),
        };
        for (rule_id, prediction) in answers {
            inputs.add_prediction(rule_id, prediction);
        }
        outcome = decide(&inputs);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A prediction endpoint answering `variation_id` "v1", failing the first `fail_first`
    /// requests with a 500; returns its URL template and the request count.
    async fn endpoint(fail_first: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let (status, body) = if n < fail_first {
                    ("500 Internal Server Error", "{}")
                } else {
                    ("200 OK", r#"{"predictions":[{"variation_id":"v1"}]}"#)
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        (format!("http://127.0.0.1:{port}/predict/{{}}"), count)
    }

    fn service(url: &str) -> CmabService {
        let retry = RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
        };
        let client = PredictionClient::new(url, Duration::from_secs(2), retry);
        CmabService::new(
            client,
            Arc::new(MemoryCache::new(100, Duration::from_secs(60))),
        )
    }

    fn pending(rule: &str, attr: i64) -> Vec<Pending> {
        let mut attributes = Attributes::new();
        attributes.insert("1".into(), json!(attr));
        vec![Pending::Prediction {
            rule_id: rule.into(),
            attributes,
        }]
    }

    fn uuid_of(answers: &[(String, Prediction)]) -> String {
        match &answers[0].1 {
            Prediction::Variation { cmab_uuid, .. } => cmab_uuid.clone(),
            Prediction::Failed => panic!("failed prediction"),
        }
    }

    #[tokio::test]
    async fn cache_options_follow_the_sdk() {
        let (url, count) = endpoint(0).await;
        let s = service(&url);
        let none = CacheOptions::default();
        let first = uuid_of(&s.predict("u", &pending("r", 1), none).await);
        let hit = uuid_of(&s.predict("u", &pending("r", 1), none).await);
        assert_eq!(
            (hit.as_str(), count.load(Ordering::SeqCst)),
            (first.as_str(), 1)
        );
        // Other attributes: a miss, fetched and cached again.
        let changed = uuid_of(&s.predict("u", &pending("r", 2), none).await);
        assert_ne!(changed, first);
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // IGNORE: fetched, and the cache is neither read nor written.
        let ignore = CacheOptions {
            ignore: true,
            ..none
        };
        let ignored = uuid_of(&s.predict("u", &pending("r", 2), ignore).await);
        assert_ne!(ignored, changed);
        assert_eq!(
            uuid_of(&s.predict("u", &pending("r", 2), none).await),
            changed
        );
        assert_eq!(count.load(Ordering::SeqCst), 3);
        // INVALIDATE: this user's entry is fetched again.
        let inv = CacheOptions {
            invalidate_user: true,
            ..none
        };
        let renewed = uuid_of(&s.predict("u", &pending("r", 2), inv).await);
        assert_ne!(renewed, changed);
        assert_eq!(count.load(Ordering::SeqCst), 4);
        // RESET: every entry goes, another user's included.
        let other = uuid_of(&s.predict("w", &pending("r", 2), none).await);
        let reset = CacheOptions {
            reset: true,
            ..none
        };
        let _ = s.predict("u", &pending("r", 2), reset).await;
        assert_eq!(count.load(Ordering::SeqCst), 6);
        assert_ne!(
            uuid_of(&s.predict("w", &pending("r", 2), none).await),
            other
        );
        assert_eq!(count.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn one_retry_then_the_prediction_fails() {
        let (url, count) = endpoint(1).await;
        let s = service(&url);
        let answers = s
            .predict("u", &pending("r", 1), CacheOptions::default())
            .await;
        assert!(
            matches!(&answers[0].1, Prediction::Variation { variation_id, .. } if variation_id == "v1")
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);

        let (url, count) = endpoint(usize::MAX).await;
        let client = service(&url).client;
        let err = client.fetch("r", "u", &Attributes::new(), "id").await;
        assert_eq!(err, Err(CmabError::Exhausted));
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_sdk_backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            multiplier: 2.0,
        };
        let b1 = p.next(p.initial_backoff, 0);
        assert_eq!(b1, Duration::from_millis(200));
        let b2 = p.next(b1, 1);
        assert_eq!(b2, Duration::from_millis(800));
        assert_eq!(p.next(b2, 2), Duration::from_millis(1000));
    }

    #[test]
    fn cache_key_and_hash_are_the_sdks_shape() {
        assert_eq!(cache_key("ü-1", "77"), "3-ü-1-77");
        let mut a = Attributes::new();
        a.insert("1".into(), json!(2));
        a.insert("0".into(), json!("x"));
        let mut b = Attributes::new();
        b.insert("0".into(), json!("x"));
        b.insert("1".into(), json!(2));
        assert_eq!(attributes_hash(&a), attributes_hash(&b));
        b.insert("1".into(), json!(3));
        assert_ne!(attributes_hash(&a), attributes_hash(&b));
    }

    #[test]
    fn the_request_body_is_the_sdks() {
        let mut a = Attributes::new();
        a.insert("11".into(), json!(true));
        let body = PredictionClient::request_body("r1", "u", &a, "uuid-1");
        assert_eq!(
            body.to_string(),
            r#"{"instances":[{"visitorId":"u","experimentId":"r1","attributes":[{"id":"11","value":true,"type":"custom_attribute"}],"cmabUUID":"uuid-1"}]}"#
        );
    }
}
