//! `POST /oauth/token`: the OAuth 2 client-credentials grant of the Optimizely Agent's API.
//!
//! The body is `application/x-www-form-urlencoded` with `grant_type=client_credentials`,
//! `client_id` and `client_secret` (the base64 text of the secret's bytes); the secret is
//! checked against the client's `secret_hash` (base64 of a bcrypt hash of those bytes, as the
//! Agent's `secretHash`). The answer is `{"access_token", "token_type": "bearer",
//! "expires_in"}` with an HS256 JWT carrying the client's `sdk_keys`; failures are OAuth
//! errors `{"error": "invalid_client", "error_description": "..."}` (400 / 401 / 415).
//!
//! bcrypt is slow on purpose, so checks run on the blocking pool, at most
//! `max_concurrent_secret_checks` at once (more: 503 with `Retry-After`); an unknown client id
//! costs the same check as a known one, so timing does not reveal which ids exist.

use crate::config::{AuthSettings, OAuthClient};
use crate::http::error::ApiError;
use crate::http::response::{json, Resp};
use crate::http::HttpState;
use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The token endpoint's clients and bounds.
pub struct TokenIssuer {
    clients: Vec<OAuthClient>,
    ttl: Duration,
    checks: Arc<Semaphore>,
    /// A hash of a random secret at the clients' cost, checked for unknown client ids.
    dummy_hash: String,
}

impl TokenIssuer {
    pub fn new(settings: &AuthSettings) -> Self {
        let cost = settings
            .clients
            .first()
            .and_then(|c| c.secret_hash.parse::<bcrypt::HashParts>().ok())
            .map_or(bcrypt::DEFAULT_COST, |h| h.get_cost());
        let dummy_hash = if settings.clients.is_empty() {
            String::new()
        } else {
            bcrypt::hash(uuid::Uuid::new_v4().as_bytes(), cost).unwrap_or_default()
        };
        Self {
            clients: settings.clients.clone(),
            ttl: settings.ttl,
            checks: Arc::new(Semaphore::new(settings.max_concurrent_secret_checks)),
            dummy_hash,
        }
    }
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

#[derive(Serialize)]
struct OAuthError<'a> {
    error: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error_description: &'a str,
}

fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Resp {
    let mut resp = json(
        status,
        &OAuthError {
            error,
            error_description: description,
        },
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn invalid_client(description: &str) -> Resp {
    oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", description)
}

/// The handler.
pub async fn token(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let form_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Ok(oauth_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "Content-Type header value must be application/x-www-form-urlencoded",
        ));
    }
    let body = state.limits.read_body(req).await?;
    let (mut grant, mut id, mut secret) = (None, None, None);
    for (k, v) in form_urlencoded::parse(&body) {
        match &*k {
            "grant_type" => grant = Some(v.into_owned()),
            "client_id" => id = Some(v.into_owned()),
            "client_secret" => secret = Some(v.into_owned()),
            _ => {}
        }
    }
    match grant.as_deref() {
        None | Some("") => {
            return Ok(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type missing from request body",
            ))
        }
        Some("client_credentials") => {}
        Some(_) => {
            return Ok(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "",
            ))
        }
    }
    let Some(id) = id.filter(|s| !s.is_empty()) else {
        return Ok(invalid_client("client_id missing from request body"));
    };
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Ok(invalid_client("client_secret missing from request body"));
    };
    let issuer = &state.token_issuer;
    let client = issuer.clients.iter().find(|c| c.id == id);
    let hash = client
        .map_or(issuer.dummy_hash.as_str(), |c| c.secret_hash.as_str())
        .to_string();
    let Ok(permit) = issuer.checks.clone().try_acquire_owned() else {
        let mut resp = oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "too many token requests at once; retry later",
        );
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(resp);
    };
    let matches = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(secret.trim()) else {
            // Still spend the time, so a malformed secret is not told apart by timing.
            let _ = bcrypt::verify(b"", &hash);
            return false;
        };
        bcrypt::verify(bytes, &hash).unwrap_or(false)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("secret check: {e}")))?;
    let Some(client) = client.filter(|_| matches) else {
        return Ok(invalid_client("invalid client_id or client_secret"));
    };
    let Some(access_token) = state.auth.issue(&client.id, &client.sdk_keys, issuer.ttl) else {
        return Err(ApiError::Internal("no HMAC secret to sign tokens".into()));
    };
    let mut resp = json(
        StatusCode::OK,
        &TokenResponse {
            access_token: &access_token,
            token_type: "bearer",
            expires_in: issuer.ttl.as_secs(),
        },
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
