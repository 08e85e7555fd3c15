//! ODP on the Agent API: `POST /v1/send-odp-event` (queues an event for the datafile's ODP
//! integration; `{"success": true}`), and [`qualify`], decide's `fetchSegments` /
//! `fetchSegmentsOptions` (the user's qualified segments, fetched before deciding).
//!
//! Statuses and wording are the Agent's: a body that does not parse is 400 `error parsing
//! request body`, a missing action or identifiers 400, data not valid (a nested value) and ODP
//! not enabled / not integrated 500 (the Agent's acceptance suite asserts these), a failed
//! segment fetch 500 `failed to fetch qualified segments`. A full event queue is bucketd's own
//! 503.

use crate::core::UserContext;
use crate::http::error::ApiError;
use crate::http::response::{json_line, ErrorBody, Resp};
use crate::http::HttpState;
use crate::service::odp::{OdpError, OdpEvent, SegmentOptions};
use crate::service::PinnedProject;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Sent {
    success: bool,
}

/// An error answer with the Agent's status and exact wording (no `internal error:` prefix).
fn answer(status: StatusCode, message: &str) -> Resp {
    json_line(status, &ErrorBody { error: message })
}

/// `POST /v1/send-odp-event`.
pub async fn send_odp_event(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    super::answer(send(state, req).await)
}

async fn send(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let pin = super::pin(state, &req)?;
    let bytes = state.limits.read_body(req).await?;
    let Ok(event) = serde_json::from_slice::<OdpEvent>(&bytes) else {
        return Err(ApiError::BadRequest("error parsing request body".into()));
    };
    match state.service.send_odp_event(&pin, event) {
        Ok(()) => Ok(json_line(StatusCode::OK, &Sent { success: true })),
        Err(e @ (OdpError::MissingAction | OdpError::MissingIdentifiers)) => {
            Err(ApiError::BadRequest(e.to_string()))
        }
        Err(e @ OdpError::QueueFull) => Err(ApiError::Unavailable(e.to_string())),
        Err(e) => Ok(answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

/// Decide's `fetchSegments`: sets the user's qualified segments from ODP (or the cache, as
/// `options` say); `Err` is the answer to send instead of decisions.
pub async fn qualify(
    state: &HttpState,
    pin: &PinnedProject,
    user: &mut UserContext,
    options: &[String],
) -> Result<(), Resp> {
    let options = SegmentOptions::parse(options.iter().map(String::as_str));
    match state
        .service
        .qualified_segments(pin, &user.user_id, options)
        .await
    {
        Ok(segments) => {
            user.qualified_segments = Some(segments);
            Ok(())
        }
        Err(e) => {
            tracing::debug!(error = %e, "segment fetch failed");
            Err(answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to fetch qualified segments",
            ))
        }
    }
}
