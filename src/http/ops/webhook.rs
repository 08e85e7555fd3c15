//! `POST /webhooks/optimizely`: Optimizely's datafile-updated notification. A body signed (HMAC
//! SHA-1, `X-Hub-Signature: sha1=<hex>`) with a project's webhook secret refreshes that project
//! → 204; a bad or missing signature → 401; signed but for no known project id → 404.

use crate::http::error::ApiError;
use crate::http::response::{empty, Resp};
use crate::http::HttpState;
use crate::service::WebhookOutcome;
use hmac::{Hmac, Mac};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::Value;
use sha1::Sha1;

/// Whether `signature` (`sha1=<hex>`) is the HMAC-SHA1 of `body` under `secret`, compared in
/// constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("sha1=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The handler.
pub async fn webhook(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let signature = req
        .headers()
        .get("x-hub-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Unauthorized("missing X-Hub-Signature".into()))?;
    let body = state.limits.read_body(req).await?;
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let project_id = payload.get("project_id").map(|p| match p {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let outcome = state
        .service
        .refresh_from_webhook(project_id.as_deref(), |secret| {
            signature_valid(secret, &body, &signature)
        });
    match outcome {
        WebhookOutcome::Unverified => {
            Err(ApiError::Unauthorized("invalid webhook signature".into()))
        }
        WebhookOutcome::Refreshing(0) => Err(ApiError::NotFound(format!(
            "no project with id {} uses this webhook secret",
            project_id.unwrap_or_default()
        ))),
        WebhookOutcome::Refreshing(_) => Ok(empty(StatusCode::NO_CONTENT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signatures() {
        let body = br#"{"project_id":1,"event":"project.datafile_updated"}"#;
        let mut mac = Hmac::<Sha1>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let good = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_valid(b"s3cret", body, &good));
        assert!(!signature_valid(b"other", body, &good));
        assert!(!signature_valid(b"s3cret", b"tampered", &good));
        assert!(!signature_valid(b"s3cret", body, "sha1=zz"));
        assert!(!signature_valid(b"s3cret", body, "md5=00"));
    }
}
