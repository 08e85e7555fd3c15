//! `GET /v1/notifications/event-stream?filter=decision,track&raw`: the project's decision and
//! conversion notifications as Server-Sent Events (`data: {...}` and a blank line each), or as
//! JSON lines with `raw`. Off unless `api.notifications.enabled` (403, as in the Agent); at most
//! `api.notifications.max_subscribers` clients at once (more: 503).
//!
//! `filter` (repeatable, comma-separated) keeps the kinds named; unknown names are ignored, and
//! no filter means every kind.

use crate::http::error::ApiError;
use crate::http::params::Query;
use crate::http::response::{with_type, Body, Resp};
use crate::http::HttpState;
use crate::notify::{Kind, NotifyError};
use crate::service::ProjectNotifications;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Request, StatusCode};
use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Frames waiting for a slow reader before the forwarder waits too.
const QUEUED_FRAMES: usize = 16;

/// The kinds a request's `filter` parameters keep.
fn kinds(q: &Query) -> HashSet<Kind> {
    let named = q.all("filter");
    if named.is_empty() {
        return Kind::ALL.into_iter().collect();
    }
    named.into_iter().filter_map(Kind::parse).collect()
}

/// The frames of a stream, as the forwarding task hands them over.
struct Frames(mpsc::Receiver<Bytes>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(|b| Ok(Frame::data(b))))
    }
}

/// Forwards notifications to the client until it leaves (or the service goes).
async fn forward(mut from: ProjectNotifications, to: mpsc::Sender<Bytes>, raw: bool) {
    loop {
        let n = tokio::select! {
            _ = to.closed() => return,
            n = from.next() => match n {
                Some(n) => n,
                None => return,
            },
        };
        let Ok(text) = serde_json::to_string(&n.message) else {
            continue;
        };
        let frame = if raw {
            format!("{text}\n")
        } else {
            format!("data: {text}\n\n")
        };
        if to.send(Bytes::from(frame)).await.is_err() {
            return;
        }
    }
}

/// The handler.
pub async fn event_stream(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let raw = q.get("raw").is_some();
    let pin = super::pin(state, &req)?;
    let subscription = state
        .service
        .subscribe_notifications(&pin, kinds(&q))
        .map_err(|e| match e {
            NotifyError::Disabled => ApiError::Forbidden(e.to_string()),
            NotifyError::Full(_) => ApiError::Unavailable(e.to_string()),
        })?;
    let (tx, rx) = mpsc::channel(QUEUED_FRAMES);
    tokio::spawn(forward(subscription, tx, raw));
    let content_type = if raw {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    let mut resp = with_type(StatusCode::OK, Body::stream(Frames(rx)), content_type);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
