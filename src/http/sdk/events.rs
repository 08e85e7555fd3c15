//! `POST /v1/events`: the event relay. SDKs post here the v1 payloads they would send to
//! Optimizely's event endpoint; each visitor becomes one queue record (kept byte for byte, see
//! [`crate::core::relay`]) in the same queue as the daemon's own events, and the flusher sends
//! them on in bulk with everyone else's. The answer is `204 No Content` once the records are
//! durable (in the default `events.ack = "durable"`; 503 + `Retry-After` when they cannot be
//! made so, turned by [`crate::http::handle`] like any request whose events were not recorded);
//! a malformed payload is a 400, one over `events.relay.max_body_bytes` a 413 and one with more
//! than `events.relay.max_visitors` visitors a 422, each with a JSON error.

use crate::core::relay::{self, RelayError};
use crate::http::error::ApiError;
use crate::http::response::{empty, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

/// The region whose Optimizely endpoint relayed events go to when `events.endpoint` is unset
/// (a v1 payload does not say its region).
const RELAY_REGION: &str = "US";

/// The handler.
pub async fn events(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let body = state
        .limits
        .read_body_up_to(req, state.relay.max_body_bytes)
        .await
        .inspect_err(|e| {
            if matches!(e, ApiError::PayloadTooLarge(_)) {
                rejected(state, "too_large");
            }
        })?;
    let events = match relay::parse(&body, state.relay.max_visitors, RELAY_REGION) {
        Ok(events) => events,
        Err(e @ RelayError::Malformed(_)) => {
            rejected(state, "malformed");
            return Err(ApiError::BadRequest(e.to_string()));
        }
        Err(e @ RelayError::TooManyVisitors { .. }) => {
            rejected(state, "too_many_visitors");
            return Err(ApiError::Unprocessable(e.to_string()));
        }
    };
    state
        .metrics
        .events_received
        .with_label_values(&["relay"])
        .inc_by(events.len() as u64);
    // A failure is noted for this request by the ack itself; `handle` then answers 503 with
    // `Retry-After` instead of this 204.
    if let Err(why) = state.service.events.send(events).wait().await {
        tracing::debug!(%why, "relayed events not recorded");
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

fn rejected(state: &HttpState, reason: &str) {
    state
        .metrics
        .relay_rejected
        .with_label_values(&[reason])
        .inc();
}
