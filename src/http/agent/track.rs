//! `POST /v1/track?eventKey=...`: records a conversion for a declared event.

use super::{body, UserBody};
use crate::http::error::ApiError;
use crate::http::params::{sdk_key, Query};
use crate::http::response::{json, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

/// What a tracked conversion answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Tracked<'a> {
    user_id: &'a str,
    event_key: &'a str,
}

/// The handler.
pub async fn track(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let event_key = q
        .get("eventKey")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest("query parameter `eventKey` is required".into()))?
        .to_string();
    let key = sdk_key(&req);
    let b: UserBody = body(state, req).await?;
    let user = b.user(state)?;
    let pin = state.service.pin(key.as_deref())?;
    state
        .service
        .track(
            &pin,
            &event_key,
            &user.user_id,
            &user.attributes,
            b.event_tags.as_ref(),
        )
        .await?;
    Ok(json(
        StatusCode::OK,
        &Tracked {
            user_id: &user.user_id,
            event_key: &event_key,
        },
    ))
}
