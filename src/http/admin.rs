//! Operations endpoints: Optimizely's datafile webhook, admin datafile push, health, readiness
//! and Prometheus metrics.

use super::error::ApiError;
use super::{empty, json, read_body, sdk_key, App, Resp};
use crate::service::profiles::StoreHealth;
use hmac::{Hmac, Mac};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
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

/// `POST /webhooks/optimizely`: a verified datafile-updated notification refreshes the
/// project(s) whose secret signed it → 204; a bad or missing signature → 401.
pub async fn webhook(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let signature = req
        .headers()
        .get("x-hub-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Unauthorized("missing X-Hub-Signature".into()))?;
    let body = read_body(req, app.config.max_body_bytes).await?;
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let project_id = payload.get("project_id").map(|p| match p {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let mut refreshed = 0;
    let mut verified = false;
    for p in &app.service.projects {
        let Some(secret) = &p.settings.webhook_secret else {
            continue;
        };
        if !signature_valid(secret.expose().as_bytes(), &body, &signature) {
            continue;
        }
        verified = true;
        let same_project = match (&project_id, p.current()) {
            (Some(id), Some(d)) => d.config.project_id == *id,
            _ => true,
        };
        if same_project {
            tracing::info!(project = %p.settings.name, "webhook: refreshing datafile");
            p.request_refresh();
            refreshed += 1;
        }
    }
    if !verified {
        return Err(ApiError::Unauthorized("invalid webhook signature".into()));
    }
    if refreshed == 0 {
        return Err(ApiError::NotFound(format!(
            "no project with id {} uses this webhook secret",
            project_id.unwrap_or_default()
        )));
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `PUT /admin/datafile` (bearer `admin.token`): installs a datafile; invalid → 422 and the
/// current one stays.
pub async fn push_datafile(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let Some(token) = &app.config.admin_token else {
        return Err(ApiError::NotFound(
            "the admin API is disabled (admin.token is not set)".into(),
        ));
    };
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches = {
        use hmac::digest::Digest;
        // Compare digests so the comparison time does not depend on where the strings differ.
        sha1::Sha1::digest(presented.as_bytes()) == sha1::Sha1::digest(token.expose().as_bytes())
    };
    if !matches {
        return Err(ApiError::Unauthorized(
            "invalid or missing bearer token".into(),
        ));
    }
    let (_, project) = app.service.project(sdk_key(&req).as_deref())?;
    let body = read_body(req, app.config.max_body_bytes).await?;
    project
        .accept(body.to_vec(), "admin".into())
        .await
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let revision = project.current().map(|d| d.config.revision.clone());
    Ok(json(
        StatusCode::OK,
        &json!({"project": project.settings.name, "revision": revision}),
    ))
}

/// `GET /health`: alive, with the profile store's state.
pub async fn health(app: &App) -> Result<Resp, ApiError> {
    let store = match app.service.profiles.health() {
        StoreHealth::None => "none",
        StoreHealth::Ok => "ok",
        StoreHealth::Degraded => "degraded",
    };
    let projects: Vec<Value> = app
        .service
        .projects
        .iter()
        .map(|p| {
            let d = p.current();
            json!({
                "name": p.settings.name,
                "revision": d.as_ref().map(|d| d.config.revision.clone()),
                "source": d.as_ref().map(|d| d.origin.clone()),
            })
        })
        .collect();
    let status = if store == "degraded" {
        "degraded"
    } else {
        "ok"
    };
    Ok(json(
        StatusCode::OK,
        &json!({"status": status, "profile_store": {"backend": app.service.profiles.backend(), "state": store}, "projects": projects}),
    ))
}

/// `GET /ready`: 200 once every project has a datafile, else 503.
pub async fn ready(app: &App) -> Result<Resp, ApiError> {
    if app.service.ready() {
        Ok(json(StatusCode::OK, &json!({"ready": true})))
    } else {
        Err(ApiError::Unavailable(
            "not every project has a datafile yet".into(),
        ))
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(app: &App) -> Result<Resp, ApiError> {
    let text = app.service.metrics.render();
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
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
