//! API authentication (`[api.auth]`, off unless a verifier is configured): which bearer
//! tokens may call which project.
//!
//! A request to a route whose [`Access`] is [`Access::Token`] must carry
//! `Authorization: Bearer <token>`, where the token is one of:
//! - an HS256 JWT signed with one of `hmac_secrets` (those `POST /oauth/token` issues, or the
//!   Optimizely Agent's with the same secrets);
//! - an RS/PS/ES/EdDSA JWT whose `kid` is in the `jwks_url` key set (see
//!   [`crate::service::auth_jwks`]), with `iss` / `aud` checked when configured;
//! - a static token whose SHA-256 is listed in `tokens` (compared in constant time).
//!
//! JWTs need `exp` and, as in the Agent, an `sdk_keys` claim: the SDK keys they may use. The
//! request's SDK key (the `X-Optimizely-SDK-Key` header, or the key in the path for the
//! datafile mirror; without one, the default project's) must be among them, else 403. A
//! missing, malformed, expired or badly signed token is a 401 with `WWW-Authenticate: Bearer`.

use crate::config::{AuthSettings, Secret, StaticToken};
use crate::service::auth_jwks::Jwks;
use base64::Engine;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// Seconds of clock difference tolerated on `exp` / `nbf`.
pub const CLOCK_LEEWAY_SECS: u64 = 5;
/// The `iss` of tokens bucketd issues.
pub const ISSUER: &str = "bucketd";

/// What a route asks of its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No API token (health, metrics, the token endpoint; admin and webhook check their own).
    Open,
    /// A token when `[api.auth]` is on, scoped to the SDK key found here.
    Token(KeyFrom),
}

/// Where a request names its SDK key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFrom {
    /// `X-Optimizely-SDK-Key` (absent: the default project).
    Header,
    /// The last path segment without `.json` (`/datafiles/{sdk_key}.json`).
    DatafilePath,
}

impl KeyFrom {
    fn key<B>(self, req: &Request<B>) -> Option<String> {
        match self {
            Self::Header => crate::http::params::sdk_key(req),
            Self::DatafilePath => req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .map(|s| s.strip_suffix(".json").unwrap_or(s).to_string())
                .filter(|s| !s.is_empty()),
        }
    }
}

/// A refused request.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750).
    pub fn challenge(&self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Missing => "Bearer realm=\"bucketd\"",
            Self::Invalid(_) => "Bearer realm=\"bucketd\", error=\"invalid_token\"",
            Self::Forbidden(_) => "Bearer realm=\"bucketd\", error=\"insufficient_scope\"",
        })
    }

    /// The JSON error response.
    pub fn response(&self) -> crate::http::response::Resp {
        let message = self.to_string();
        let mut resp = crate::http::response::json(
            self.status(),
            &crate::http::response::ErrorBody { error: &message },
        );
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, self.challenge());
        resp
    }
}

/// The claims bucketd issues and reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The SDK keys the token may use (the Agent's claim).
    #[serde(default)]
    pub sdk_keys: Option<Vec<String>>,
}

/// What the token lets its bearer do.
enum Scope {
    Any,
    Keys(Vec<String>),
}

/// The configured verifiers and the signing key.
pub struct Authenticator {
    enabled: bool,
    hmac: Vec<DecodingKey>,
    signing: Option<EncodingKey>,
    tokens: Vec<StaticToken>,
    jwks: Option<Arc<Jwks>>,
}

fn secret_bytes(s: &Secret) -> Vec<u8> {
    // Decoded once at validation; cannot fail here.
    base64::engine::general_purpose::STANDARD
        .decode(s.expose())
        .unwrap_or_default()
}

impl Authenticator {
    /// From `[api.auth]`; the JWKS cache (to be run by the caller) when `jwks_url` is set.
    pub fn new(settings: &AuthSettings) -> Self {
        let hmac = settings
            .hmac_secrets
            .iter()
            .map(|s| DecodingKey::from_secret(&secret_bytes(s)))
            .collect();
        let signing = settings
            .hmac_secrets
            .first()
            .map(|s| EncodingKey::from_secret(&secret_bytes(s)));
        Self {
            enabled: settings.enabled(),
            hmac,
            signing,
            tokens: settings.tokens.clone(),
            jwks: settings.jwks.clone().map(Jwks::new),
        }
    }

    /// Off: every request passes.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            hmac: Vec::new(),
            signing: None,
            tokens: Vec::new(),
            jwks: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The JWKS cache, for the caller to run.
    pub fn jwks(&self) -> Option<Arc<Jwks>> {
        self.jwks.clone()
    }

    /// An HS256 token for `client` and `sdk_keys`, valid for `ttl`.
    pub fn issue(&self, client: &str, sdk_keys: &[String], ttl: Duration) -> Option<String> {
        let signing = self.signing.as_ref()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: Some(ISSUER.into()),
            sub: Some(client.into()),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            sdk_keys: Some(sdk_keys.to_vec()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, signing).ok()
    }

    /// Checks the request's token against `access`; `default_key` is the SDK key of the
    /// project a request without one is served.
    pub async fn authorize<B>(
        &self,
        req: &Request<B>,
        access: Access,
        default_key: Option<&str>,
    ) -> Result<(), AuthError> {
        let Access::Token(from) = access else {
            return Ok(());
        };
        if !self.enabled {
            return Ok(());
        }
        let token = bearer(req).ok_or(AuthError::Missing)?;
        let scope = self.verify(token).await?;
        if let Scope::Keys(keys) = scope {
            let key = from.key(req).or_else(|| default_key.map(str::to_string));
            match key {
                // A secure environment's `sdkKey:datafileAccessToken` is scoped by its key.
                Some(k) if keys.iter().any(|s| s == k.split(':').next().unwrap_or(&k)) => {}
                Some(_) => {
                    return Err(AuthError::Forbidden(
                        "the token is not allowed to use this SDK key".into(),
                    ))
                }
                None => {
                    return Err(AuthError::Forbidden(
                        "the token is scoped to SDK keys; name one with X-Optimizely-SDK-Key"
                            .into(),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn verify(&self, token: &str) -> Result<Scope, AuthError> {
        if let Some(scope) = self.static_token(token) {
            return Ok(scope);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("not a JWT or known API token".into()))?;
        let claims = match header.alg {
            Algorithm::HS256 => self.verify_hmac(token)?,
            Algorithm::HS384 | Algorithm::HS512 => {
                return Err(AuthError::Invalid(format!(
                    "{:?} is not accepted",
                    header.alg
                )))
            }
            alg => self.verify_jwks(token, alg, header.kid.as_deref()).await?,
        };
        match claims.sdk_keys {
            Some(keys) => Ok(Scope::Keys(keys)),
            None => Err(AuthError::Invalid("the sdk_keys claim is missing".into())),
        }
    }

    fn static_token(&self, token: &str) -> Option<Scope> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, so the time taken does not tell which one matched.
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.sha256.ct_eq(&digest)) && found.is_none() {
                found = Some(if t.sdk_keys.is_empty() {
                    Scope::Any
                } else {
                    Scope::Keys(t.sdk_keys.clone())
                });
            }
        }
        found
    }

    fn verify_hmac(&self, token: &str) -> Result<Claims, AuthError> {
        if self.hmac.is_empty() {
            return Err(AuthError::Invalid("HS256 tokens are not accepted".into()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_LEEWAY_SECS;
        validation.validate_aud = false;
        let mut last = AuthError::Invalid("bad signature".into());
        for key in &self.hmac {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = jwt_error(e),
            }
        }
        Err(last)
    }

    async fn verify_jwks(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Claims, AuthError> {
        let Some(jwks) = &self.jwks else {
            return Err(AuthError::Invalid(format!(
                "{alg:?} tokens are not accepted (no jwks_url)"
            )));
        };
        let kid = kid.ok_or_else(|| AuthError::Invalid("the token has no kid".into()))?;
        let key = jwks
            .key(kid)
            .await
            .ok_or_else(|| AuthError::Invalid("unknown signing key (kid)".into()))?;
        if key.alg.is_some_and(|a| a != alg) {
            return Err(AuthError::Invalid(
                "the token's alg does not match its key".into(),
            ));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = CLOCK_LEEWAY_SECS;
        let settings = jwks.settings();
        match &settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
        }
        jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map(|d| d.claims)
            .map_err(jwt_error)
    }
}

fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    AuthError::Invalid(
        match e.kind() {
            ErrorKind::ExpiredSignature => "expired",
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::ImmatureSignature => "not valid yet",
            ErrorKind::InvalidAudience => "wrong audience",
            ErrorKind::InvalidIssuer => "wrong issuer",
            ErrorKind::InvalidAlgorithm => "algorithm does not match the key",
            ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
            _ => "malformed",
        }
        .into(),
    )
}

/// The bearer token of the request.
fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_needs_a_token() {
        let req = |v: &str| {
            Request::builder()
                .header(AUTHORIZATION, v)
                .body(())
                .unwrap()
        };
        assert_eq!(bearer(&req("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&req("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&req("Bearer ")), None);
    }

    #[tokio::test]
    async fn a_secure_environment_key_is_scoped_by_its_sdk_key() {
        let settings = AuthSettings {
            hmac_secrets: Vec::new(),
            ttl: Duration::from_secs(60),
            clients: Vec::new(),
            jwks: None,
            tokens: vec![crate::config::StaticToken {
                sha256: Sha256::digest(b"tok").into(),
                sdk_keys: vec!["k1".into()],
            }],
            max_concurrent_secret_checks: 1,
        };
        let auth = Authenticator::new(&settings);
        let req = |key: &str| {
            Request::builder()
                .header(AUTHORIZATION, "Bearer tok")
                .header("x-optimizely-sdk-key", key)
                .body(())
                .unwrap()
        };
        let access = Access::Token(KeyFrom::Header);
        assert!(auth.authorize(&req("k1"), access, None).await.is_ok());
        assert!(auth
            .authorize(&req("k1:datafile-token"), access, None)
            .await
            .is_ok());
        assert!(matches!(
            auth.authorize(&req("k2:datafile-token"), access, None)
                .await,
            Err(AuthError::Forbidden(_))
        ));
    }

    #[test]
    fn the_datafile_path_names_its_key() {
        let req = Request::builder()
            .uri("/datafiles/Key_1.json")
            .body(())
            .unwrap();
        assert_eq!(KeyFrom::DatafilePath.key(&req).as_deref(), Some("Key_1"));
    }
}
