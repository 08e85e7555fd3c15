//! What handlers answer with: [`Resp`], whose [`Body`] is either a whole buffer (every endpoint
//! today) or a stream of frames (for server-sent events and large mirrors later), and the
//! helpers that build JSON, text and empty responses.

use super::error::ApiError;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The error a streamed body can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: one buffer, or frames produced as the client reads.
pub enum Body {
    /// The whole body at once (its length is known, so it is sent with `Content-Length`).
    Full(Full<Bytes>),
    /// Frames as they come (sent chunked on HTTP/1.1).
    Stream(UnsyncBoxBody<Bytes, BodyError>),
}

impl Body {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Full::new(bytes.into()))
    }

    /// A body that forwards the frames of `body` as it produces them.
    pub fn stream<B>(body: B) -> Self
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        Self::Stream(body.map_err(Into::into).boxed_unsync())
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Full(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            Self::Stream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_end_stream(),
            Self::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => b.size_hint(),
            Self::Stream(b) => b.size_hint(),
        }
    }
}

/// The response type of every handler.
pub type Resp = Response<Body>;

/// `{"error": "..."}`, the body of every error response.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
}

/// A response with a body and its content type.
pub fn with_type(status: StatusCode, body: Body, content_type: &'static str) -> Resp {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Resp {
    match serde_json::to_vec(body) {
        Ok(bytes) => with_type(status, Body::full(bytes), "application/json"),
        Err(e) => error_response(&ApiError::Internal(e.to_string())),
    }
}

/// A JSON response ending in a newline, as the Optimizely Agent writes every body of `/v1/*`
/// (clients and the Agent's own tests compare the exact text).
pub fn json_line<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Resp {
    match serde_json::to_vec(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            with_type(status, Body::full(bytes), "application/json")
        }
        Err(e) => error_line(&ApiError::Internal(e.to_string())),
    }
}

/// [`error_response`] ending in a newline, for `/v1/*`.
pub fn error_line(e: &ApiError) -> Resp {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(error = %e, %status, "request failed");
    }
    let message = e.to_string();
    let mut bytes = serde_json::to_vec(&ErrorBody { error: &message })
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
    bytes.push(b'\n');
    with_type(status, Body::full(bytes), "application/json")
}

/// Bytes that already are JSON (a datafile as received), sent as they are.
pub fn raw_json(bytes: impl Into<Bytes>) -> Resp {
    with_type(StatusCode::OK, Body::full(bytes), "application/json")
}

/// The Prometheus text exposition format.
pub fn prometheus(text: String) -> Resp {
    with_type(
        StatusCode::OK,
        Body::full(text),
        "text/plain; version=0.0.4",
    )
}

/// An empty response with a status.
pub fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Body::full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// `{"error": "..."}` with the error's status; 5xx are logged here, once.
pub fn error_response(e: &ApiError) -> Resp {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(error = %e, %status, "request failed");
    }
    let message = e.to_string();
    let bytes = serde_json::to_vec(&ErrorBody { error: &message })
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
    with_type(status, Body::full(bytes), "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A body that hands out its chunks one poll at a time.
    struct Chunks(VecDeque<&'static str>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from(c)))))
        }
    }

    async fn frames(mut body: Body) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                out.push(data);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_streamed_body_forwards_each_frame() {
        let body = Body::stream(Chunks(VecDeque::from(["data: 1\n\n", "data: 2\n\n"])));
        assert!(body.size_hint().exact().is_none(), "a stream has no length");
        assert_eq!(frames(body).await, vec!["data: 1\n\n", "data: 2\n\n"]);
    }

    #[tokio::test]
    async fn a_full_body_is_one_frame_of_known_length() {
        let body = Body::full("{}");
        assert_eq!(body.size_hint().exact(), Some(2));
        assert_eq!(frames(body).await, vec!["{}"]);
    }

    #[tokio::test]
    async fn errors_render_as_an_error_object() {
        let r = error_response(&ApiError::NotFound("no route for /x".into()));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            frames(r.into_body()).await,
            vec![r#"{"error":"no route for /x"}"#]
        );
    }
}
