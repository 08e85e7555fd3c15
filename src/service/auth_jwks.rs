//! The JWKS cache of `[api.auth] jwks_url`: the public keys that verify JWTs signed elsewhere
//! (an identity provider), by `kid`.
//!
//! Fetched at start, then every `jwks_update_interval`, and at once when a token names a `kid`
//! the cache does not know (a rotation), at most once per [`MIN_REFETCH`] so a stream of
//! made-up `kid`s cannot turn into a stream of fetches. Each fetch is bounded in time
//! (`jwks_fetch_timeout`) and size (`jwks_max_bytes`); a failed fetch keeps the keys already
//! known. Symmetric (`oct`) keys in the set are ignored: only bucketd's own HMAC secrets
//! verify HS256 tokens.

use crate::config::JwksSettings;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Shortest time between two fetches caused by unknown `kid`s (the scheduled ones do not
/// count: the first token of a rotated key is accepted at once).
pub const MIN_REFETCH: Duration = Duration::from_secs(5);

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching the JWKS: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the JWKS answered HTTP {0}")]
    Status(u16),
    #[error("the JWKS is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the JWKS is not a JSON key set: {0}")]
    Invalid(String),
}

/// One usable key.
#[derive(Clone)]
pub struct JwksKey {
    pub key: DecodingKey,
    /// The `alg` the set names for it (`None`: any of its family).
    pub alg: Option<Algorithm>,
}

/// The cached key set.
pub struct Jwks {
    settings: JwksSettings,
    client: reqwest::Client,
    keys: ArcSwap<HashMap<String, JwksKey>>,
    /// When the last fetch for an unknown `kid` started (`None`: never); held while any
    /// fetch runs.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    pub fn new(settings: JwksSettings) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            settings,
            client,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    /// `iss` and `aud` that tokens must carry, when configured.
    pub fn settings(&self) -> &JwksSettings {
        &self.settings
    }

    /// The key `kid` names, fetching the set again first when it is unknown (rate-limited).
    pub async fn key(&self, kid: &str) -> Option<JwksKey> {
        if let Some(k) = self.keys.load().get(kid) {
            return Some(k.clone());
        }
        let mut last = self.last_fetch.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(k) = self.keys.load().get(kid) {
            return Some(k.clone());
        }
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return None;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "JWKS refresh for an unknown kid failed");
        }
        self.keys.load().get(kid).cloned()
    }

    /// Fetches now and installs the set (the old one stays on failure).
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let _running = self.last_fetch.lock().await;
        self.fetch().await
    }

    async fn fetch(&self) -> Result<usize, JwksError> {
        let mut resp = self.client.get(self.settings.url.clone()).send().await?;
        if !resp.status().is_success() {
            return Err(JwksError::Status(resp.status().as_u16()));
        }
        let max = self.settings.max_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(JwksError::TooLarge(max));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > max {
                return Err(JwksError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        let keys = parse(&body)?;
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(n)
    }

    /// Fetches at start and every `jwks_update_interval` until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            match self.refresh().await {
                Ok(n) => tracing::debug!(keys = n, "JWKS fetched"),
                Err(e) => tracing::warn!(error = %e, "JWKS fetch failed; keeping the known keys"),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.settings.update_interval) => {}
            }
        }
    }
}

/// The usable keys of a JWKS document (keys without a `kid`, symmetric or unsupported ones
/// are skipped).
fn parse(body: &[u8]) -> Result<HashMap<String, JwksKey>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| JwksError::Invalid(e.to_string()))?;
    let mut out = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        out.insert(kid, JwksKey { key, alg });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_kidless_keys_are_skipped() {
        let set = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","kid":"e","alg":"ES256","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"nope","kid":"n"}
        ]}"#;
        let keys = parse(set).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["e"]);
        assert_eq!(keys["e"].alg, Some(Algorithm::ES256));
        assert!(parse(b"[]").is_err());
    }
}
