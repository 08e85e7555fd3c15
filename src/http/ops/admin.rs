//! `PUT /admin/datafile` (bearer `admin.token`): installs a pushed datafile into the project the
//! SDK key selects; an invalid one → 422 and the current one stays. Without a token the admin
//! API does not exist (404).

use crate::http::error::ApiError;
use crate::http::params::sdk_key;
use crate::http::response::{json, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

/// What a push installed.
#[derive(Debug, Serialize)]
struct Pushed {
    project: String,
    revision: Option<String>,
}

/// Whether the request's bearer token is `token`, compared by digest so the time taken does
/// not depend on where the strings differ.
fn bearer_matches<B>(req: &Request<B>, token: &str) -> bool {
    use hmac::digest::Digest;
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    sha1::Sha1::digest(presented.as_bytes()) == sha1::Sha1::digest(token.as_bytes())
}

/// The handler.
pub async fn push_datafile(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::NotFound(
            "the admin API is disabled (admin.token is not set)".into(),
        ));
    };
    if !bearer_matches(&req, token.expose()) {
        return Err(ApiError::Unauthorized(
            "invalid or missing bearer token".into(),
        ));
    }
    let project = state.service.project_id(sdk_key(&req).as_deref())?;
    let body = state.limits.read_datafile(req).await?;
    let installed = state
        .service
        .install_datafile(project, body.to_vec(), "admin")
        .await?;
    Ok(json(
        StatusCode::OK,
        &Pushed {
            project: installed.project,
            revision: installed.revision,
        },
    ))
}
