//! `POST /v1/track?eventKey=...`: records a conversion. As in the Agent, an event the datafile
//! does not declare is not a failure of the request: 200 with an `error` field, nothing sent.

use super::{answer, body, pin, UserBody};
use crate::http::error::ApiError;
use crate::http::params::Query;
use crate::http::response::{json_line, Resp};
use crate::http::HttpState;
use crate::service::ServiceError;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

/// An Agent `Track` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Tracked<'a> {
    user_id: &'a str,
    event_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The handler.
pub async fn track(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    answer(track_event(state, req).await)
}

async fn track_event(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let event_key = q.get("eventKey").unwrap_or_default().to_string();
    let pin = pin(state, &req)?;
    let b: UserBody = body(state, req).await?;
    if event_key.is_empty() {
        return Err(ApiError::BadRequest(
            "missing required path parameter: eventKey".into(),
        ));
    }
    let user = b.user(state)?;
    let sent = state
        .service
        .track(
            &pin,
            &event_key,
            &user.user_id,
            &user.attributes,
            b.event_tags.as_ref(),
        )
        .await;
    let error = match sent {
        Ok(_) => None,
        Err(ServiceError::UnknownEvent(k)) => Some(format!("event with key {k:?} not found")),
        Err(e) => return Err(e.into()),
    };
    Ok(json_line(
        StatusCode::OK,
        &Tracked {
            user_id: &user.user_id,
            event_key: &event_key,
            error,
        },
    ))
}
