//! `GET /v1/notifications/event-stream?filter=decision,track&raw`: the project's decision and
//! conversion notifications as Server-Sent Events (`data: {...}` and a blank line each), or as
//! JSON lines with `raw`. Off unless `api.notifications.enabled` (403, as in the Agent); at most
//! `api.notifications.max_subscribers` clients at once (more: 503).
//!
//! `filter` (repeatable, comma-separated) keeps the kinds named; unknown names are ignored, and
//! no filter means every kind.
//!
//! `project_config_update` notifications (`{"Type": "project_config_update", "Revision": …}`,
//! as the Go SDK's config manager sends them) come from the stream itself: while a client
//! wants them, its stream checks the project's datafile every [`CONFIG_CHECK`] and sends one
//! when the revision in use has changed.

use crate::http::error::ApiError;
use crate::http::params::Query;
use crate::http::response::{with_type, Body, Resp};
use crate::http::HttpState;
use crate::notify::{Kind, NotifyError};
use crate::service::{ProjectNotifications, Service};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Frames waiting for a slow reader before the forwarder waits too.
const QUEUED_FRAMES: usize = 16;

/// How often a stream that wants `project_config_update` looks at the project's revision.
pub const CONFIG_CHECK: Duration = Duration::from_millis(200);

/// What a stream needs to notice a new datafile: the service, the key its project was chosen
/// by, and the revision it last reported.
struct ConfigWatch {
    service: Arc<Service>,
    sdk_key: Option<String>,
    revision: String,
}

impl ConfigWatch {
    /// The notification of a revision that differs from the last one reported, if any.
    fn changed(&mut self) -> Option<Value> {
        let pin = self.service.pin(self.sdk_key.as_deref()).ok()?;
        let revision = &pin.config().revision;
        if *revision == self.revision {
            return None;
        }
        self.revision = revision.clone();
        Some(json!({"Type": "project_config_update", "Revision": revision}))
    }
}

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
async fn forward(
    mut from: ProjectNotifications,
    to: mpsc::Sender<Bytes>,
    raw: bool,
    mut watch: Option<ConfigWatch>,
) {
    let mut ticks = tokio::time::interval(CONFIG_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = to.closed() => return,
            n = from.next() => match n {
                Some(n) => n.message.clone(),
                None => return,
            },
            _ = ticks.tick(), if watch.is_some() => {
                match watch.as_mut().and_then(ConfigWatch::changed) {
                    Some(m) => m,
                    None => continue,
                }
            }
        };
        let Ok(text) = serde_json::to_string(&message) else {
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
    super::answer(open_stream(state, req))
}

fn open_stream(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let raw = q.get("raw").is_some();
    let pin = super::pin(state, &req)?;
    let kinds = kinds(&q);
    let watch = kinds
        .contains(&Kind::ProjectConfigUpdate)
        .then(|| ConfigWatch {
            service: state.service.clone(),
            sdk_key: super::sdk_key_of(&req).ok().flatten(),
            revision: pin.config().revision.clone(),
        });
    let subscription = state
        .service
        .subscribe_notifications(&pin, kinds)
        .map_err(|e| match e {
            NotifyError::Disabled => ApiError::Forbidden(e.to_string()),
            NotifyError::Full(_) => ApiError::Unavailable(e.to_string()),
        })?;
    let (tx, rx) = mpsc::channel(QUEUED_FRAMES);
    tokio::spawn(forward(subscription, tx, raw, watch));
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
