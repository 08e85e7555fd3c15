//! The datafile mirror: `GET /datafiles/{sdk_key}.json` (the CDN's path) and
//! `GET /datafiles/auth/{sdk_key}.json` (the secure environments' path), so an SDK's datafile
//! URL template changes only its host.
//!
//! The body is the datafile byte for byte as bucketd received it, with a strong `ETag`
//! computed once per installed datafile, `Last-Modified` (when it was installed) and the
//! source's `Cache-Control` (or [`DEFAULT_CACHE_CONTROL`]); `If-None-Match` /
//! `If-Modified-Since` that still hold get `304`. A secure environment's datafile is served only
//! to a request bearing its access token (`Authorization: Bearer`): none → 401, another → 403.
//! Configured and on-demand projects both; an on-demand key is loaded on first request.

use crate::http::error::ApiError;
use crate::http::response::{empty, raw_json, Resp};
use crate::http::HttpState;
use crate::service::{MirrorRefusal, ServiceError};
use crate::source::LoadedDatafile;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use std::time::SystemTime;

/// `Cache-Control` of a datafile whose source sent none (a file, an admin push): caches may
/// keep it but must revalidate, which costs a `304`.
pub const DEFAULT_CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";

/// The handler.
pub async fn datafile<B>(state: &HttpState, req: Request<B>) -> Result<Resp, ApiError> {
    let path = req.uri().path();
    let rest = path.strip_prefix("/datafiles/").unwrap_or_default();
    let (authenticated, file) = match rest.strip_prefix("auth/") {
        Some(file) => (true, file),
        None => (false, rest),
    };
    let sdk_key = file.strip_suffix(".json").ok_or_else(|| {
        ApiError::NotFound(format!(
            "no route for {path} (expected /datafiles/<sdk_key>.json)"
        ))
    })?;
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let datafile = state
        .service
        .mirrored_datafile(sdk_key, bearer, authenticated)
        .await
        .map_err(|e| match e {
            MirrorRefusal::TokenMissing => ApiError::Unauthorized(e.to_string()),
            MirrorRefusal::TokenWrong => ApiError::Forbidden(e.to_string()),
            MirrorRefusal::Service(ServiceError::UnknownProject(_)) => {
                ApiError::NotFound("no datafile for this SDK key".into())
            }
            MirrorRefusal::Service(e) => e.into(),
        })?;
    let mut resp = if still_fresh(&req, &datafile) {
        empty(StatusCode::NOT_MODIFIED)
    } else {
        raw_json(datafile.bytes.clone())
    };
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&datafile.etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(datafile.loaded_at)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    let cache_control = datafile
        .cache_control
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static(DEFAULT_CACHE_CONTROL));
    headers.insert(header::CACHE_CONTROL, cache_control);
    Ok(resp)
}

/// Whether the client's copy is current: `If-None-Match` names the ETag (or `*`); without it,
/// `If-Modified-Since` is not before the install time (HTTP dates have whole seconds).
fn still_fresh<B>(req: &Request<B>, datafile: &LoadedDatafile) -> bool {
    let headers = req.headers();
    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else {
            return false;
        };
        return inm.split(',').map(str::trim).any(|tag| {
            tag == "*" || tag == datafile.etag || tag.strip_prefix("W/") == Some(&datafile.etag)
        });
    }
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let installed = datafile
        .loaded_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    installed <= since
}
