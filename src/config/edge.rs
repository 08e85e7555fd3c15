//! The production-edge sections: `[api.auth]` (who may call the API), `[api.cors]` (which
//! browser origins may), `[server.tls]` (the listener's certificate), as written and as
//! validated. Validation decodes every secret hash and loads the certificate files, so a bad
//! value stops `bucketd check` and `bucketd serve` at start, naming the key.

use super::{invalid, ConfigError, Secret};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Lifetime of a token issued by `POST /oauth/token` when `ttl` is not set.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How often the JWKS is fetched again when `jwks_update_interval` is not set.
pub const DEFAULT_JWKS_UPDATE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest JWKS fetch.
pub const DEFAULT_JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
pub const DEFAULT_JWKS_MAX_BYTES: usize = 1 << 20;
/// Client-secret checks (bcrypt, deliberately slow) running at once; more get 503.
pub const DEFAULT_MAX_CONCURRENT_SECRET_CHECKS: usize = 4;
/// The methods a browser may use when `[api.cors]` lists none.
pub const DEFAULT_CORS_METHODS: [&str; 3] = ["GET", "POST", "OPTIONS"];
/// How long a browser may cache a preflight answer.
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(300);

/// `[api.auth]` as written (the Optimizely Agent's `api.auth` keys, snake_cased).
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Base64 HS256 keys: the first signs issued tokens, every one verifies.
    pub hmac_secrets: Vec<String>,
    /// Lifetime of issued tokens.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Client credentials `POST /oauth/token` accepts.
    pub clients: Vec<ClientSection>,
    /// Verify RS/ES/PS/EdDSA tokens signed elsewhere with this key set ("" = none).
    pub jwks_url: String,
    #[serde(with = "humantime_serde")]
    pub jwks_update_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
    pub jwks_max_bytes: usize,
    /// Required `iss` of JWKS-verified tokens ("" = not checked).
    pub jwks_issuer: String,
    /// Required `aud` of JWKS-verified tokens ("" = not checked).
    pub jwks_audience: String,
    /// Static API tokens, by SHA-256.
    pub tokens: Vec<StaticTokenSection>,
    pub max_concurrent_secret_checks: usize,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            hmac_secrets: Vec::new(),
            ttl: DEFAULT_TOKEN_TTL,
            clients: Vec::new(),
            jwks_url: String::new(),
            jwks_update_interval: DEFAULT_JWKS_UPDATE_INTERVAL,
            jwks_fetch_timeout: DEFAULT_JWKS_FETCH_TIMEOUT,
            jwks_max_bytes: DEFAULT_JWKS_MAX_BYTES,
            jwks_issuer: String::new(),
            jwks_audience: String::new(),
            tokens: Vec::new(),
            max_concurrent_secret_checks: DEFAULT_MAX_CONCURRENT_SECRET_CHECKS,
        }
    }
}

/// One `[[api.auth.clients]]` entry.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    pub id: String,
    /// Base64 of the bcrypt hash of the secret's bytes (the Agent's `secretHash`).
    pub secret_hash: String,
    /// The SDK keys its tokens may use (at least one).
    pub sdk_keys: Vec<String>,
}

/// One `[[api.auth.tokens]]` entry.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticTokenSection {
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// The SDK keys it may use (empty: every key).
    #[serde(default)]
    pub sdk_keys: Vec<String>,
}

/// `[api.cors]` as written.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSection {
    /// Exact origins (`https://app.example.com`) or `*`; empty: CORS is off.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub exposed_headers: Vec<String>,
    pub allow_credentials: bool,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsSection {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: DEFAULT_CORS_METHODS.iter().map(|m| m.to_string()).collect(),
            allowed_headers: Vec::new(),
            exposed_headers: Vec::new(),
            allow_credentials: false,
            max_age: DEFAULT_CORS_MAX_AGE,
        }
    }
}

/// `[server.tls]` as written (no cert and key: plain TCP).
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA bundle client certificates must chain to (set: client certificates are required).
    pub client_ca: Option<PathBuf>,
}

/// One client allowed to get tokens.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub id: String,
    /// The bcrypt hash (decoded from base64).
    pub secret_hash: String,
    pub sdk_keys: Vec<String>,
}

/// One static token.
#[derive(Debug, Clone)]
pub struct StaticToken {
    pub sha256: [u8; 32],
    /// Empty: every key.
    pub sdk_keys: Vec<String>,
}

/// Where JWTs signed elsewhere are verified.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub url: url::Url,
    pub update_interval: Duration,
    pub fetch_timeout: Duration,
    pub max_bytes: usize,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Validated `[api.auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// HS256 keys (first signs).
    pub hmac_secrets: Vec<Secret>,
    pub ttl: Duration,
    pub clients: Vec<OAuthClient>,
    pub jwks: Option<JwksSettings>,
    pub tokens: Vec<StaticToken>,
    pub max_concurrent_secret_checks: usize,
}

impl AuthSettings {
    /// Whether requests need a token (any verifier configured).
    pub fn enabled(&self) -> bool {
        !self.hmac_secrets.is_empty() || self.jwks.is_some() || !self.tokens.is_empty()
    }
}

/// Validated `[api.cors]` (`None` when off).
#[derive(Debug, Clone)]
pub struct CorsSettings {
    /// `None`: any origin (`*`).
    pub origins: Option<Vec<String>>,
    pub methods: Vec<String>,
    pub headers: Vec<String>,
    pub exposed: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: Duration,
}

/// Validated `[server.tls]`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn b64(key: &str, value: &str) -> Result<Vec<u8>, ConfigError> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| invalid(key, format!("not base64: {e}")))
}

/// Validates `[api.auth]`.
pub(super) fn auth(a: &AuthSection) -> Result<AuthSettings, ConfigError> {
    let mut hmac_secrets = Vec::new();
    for (i, s) in a.hmac_secrets.iter().enumerate() {
        let key = format!("api.auth.hmac_secrets[{i}]");
        let bytes = b64(&key, s)?;
        if bytes.len() < 32 {
            return Err(invalid(key, "must decode to at least 32 bytes"));
        }
        hmac_secrets.push(Secret(s.trim().to_string()));
    }
    let mut clients = Vec::new();
    for (i, c) in a.clients.iter().enumerate() {
        let key = format!("api.auth.clients[{i}]");
        if c.id.is_empty() {
            return Err(invalid(format!("{key}.id"), "must not be empty"));
        }
        if clients.iter().any(|o: &OAuthClient| o.id == c.id) {
            return Err(invalid(format!("{key}.id"), format!("{:?} twice", c.id)));
        }
        let hash = String::from_utf8(b64(&format!("{key}.secret_hash"), &c.secret_hash)?)
            .map_err(|_| invalid(format!("{key}.secret_hash"), "not a bcrypt hash"))?;
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(invalid(
                format!("{key}.secret_hash"),
                "not the base64 of a bcrypt hash ($2a$/$2b$/$2y$...)",
            ));
        }
        if c.sdk_keys.is_empty() {
            return Err(invalid(format!("{key}.sdk_keys"), "must list an SDK key"));
        }
        clients.push(OAuthClient {
            id: c.id.clone(),
            secret_hash: hash,
            sdk_keys: c.sdk_keys.clone(),
        });
    }
    if !clients.is_empty() && hmac_secrets.is_empty() {
        return Err(invalid(
            "api.auth.hmac_secrets",
            "clients are configured but no HMAC secret signs their tokens",
        ));
    }
    let jwks = match a.jwks_url.trim() {
        "" => None,
        u => Some(JwksSettings {
            url: super::parse_http_url("api.auth.jwks_url", u)?,
            update_interval: super::nonzero_duration(
                "api.auth.jwks_update_interval",
                a.jwks_update_interval,
            )?,
            fetch_timeout: super::nonzero_duration(
                "api.auth.jwks_fetch_timeout",
                a.jwks_fetch_timeout,
            )?,
            max_bytes: super::nonzero("api.auth.jwks_max_bytes", a.jwks_max_bytes)?,
            issuer: Some(a.jwks_issuer.clone()).filter(|s| !s.is_empty()),
            audience: Some(a.jwks_audience.clone()).filter(|s| !s.is_empty()),
        }),
    };
    let mut tokens = Vec::new();
    for (i, t) in a.tokens.iter().enumerate() {
        let key = format!("api.auth.tokens[{i}].sha256");
        let bytes =
            hex::decode(t.sha256.trim()).map_err(|e| invalid(&key, format!("not hex: {e}")))?;
        let sha256: [u8; 32] = bytes
            .try_into()
            .map_err(|_| invalid(&key, "must be 64 hex digits (a SHA-256)"))?;
        tokens.push(StaticToken {
            sha256,
            sdk_keys: t.sdk_keys.clone(),
        });
    }
    Ok(AuthSettings {
        hmac_secrets,
        ttl: super::nonzero_duration("api.auth.ttl", a.ttl)?,
        clients,
        jwks,
        tokens,
        max_concurrent_secret_checks: super::nonzero(
            "api.auth.max_concurrent_secret_checks",
            a.max_concurrent_secret_checks,
        )?,
    })
}

/// Validates `[api.cors]`.
pub(super) fn cors(c: &CorsSection) -> Result<Option<CorsSettings>, ConfigError> {
    if c.allowed_origins.is_empty() {
        return Ok(None);
    }
    let any = c.allowed_origins.iter().any(|o| o == "*");
    for (i, o) in c.allowed_origins.iter().enumerate() {
        if o != "*" && (o.ends_with('/') || !o.contains("://")) {
            return Err(invalid(
                format!("api.cors.allowed_origins[{i}]"),
                format!("{o:?} (expected scheme://host[:port] without a path, or *)"),
            ));
        }
    }
    let token = |key: &str, v: &[String]| -> Result<(), ConfigError> {
        for (i, s) in v.iter().enumerate() {
            if s.is_empty() || hyper::header::HeaderName::from_bytes(s.as_bytes()).is_err() {
                return Err(invalid(
                    format!("{key}[{i}]"),
                    format!("{s:?} is not a token"),
                ));
            }
        }
        Ok(())
    };
    token("api.cors.allowed_methods", &c.allowed_methods)?;
    if c.allowed_headers.iter().all(|h| h != "*") {
        token("api.cors.allowed_headers", &c.allowed_headers)?;
    }
    token("api.cors.exposed_headers", &c.exposed_headers)?;
    Ok(Some(CorsSettings {
        origins: (!any).then(|| c.allowed_origins.clone()),
        methods: c
            .allowed_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        headers: c.allowed_headers.clone(),
        exposed: c.exposed_headers.clone(),
        allow_credentials: c.allow_credentials,
        max_age: c.max_age,
    }))
}

/// Validates `[server.tls]`: both files load (so `bucketd check` catches a bad path).
pub(super) fn tls(t: &TlsSection) -> Result<Option<TlsSettings>, ConfigError> {
    let (cert, key) = match (&t.cert, &t.key) {
        (None, None) => {
            if t.client_ca.is_some() {
                return Err(invalid(
                    "server.tls.client_ca",
                    "needs server.tls.cert and server.tls.key",
                ));
            }
            return Ok(None);
        }
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (Some(_), None) => return Err(invalid("server.tls.key", "missing (cert is set)")),
        (None, Some(_)) => return Err(invalid("server.tls.cert", "missing (key is set)")),
    };
    let settings = TlsSettings {
        cert,
        key,
        client_ca: t.client_ca.clone(),
    };
    crate::http::tls::server_config(&settings).map_err(|e| invalid(e.key(), e))?;
    Ok(Some(settings))
}
