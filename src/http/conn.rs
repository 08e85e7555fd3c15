//! One connection's lifetime: how long it may stay without a request, and what counts as busy.
//!
//! Every connection gets a [`Conn`] that the service updates (a request started, a response —
//! its streamed body included — finished) and a watchdog ([`Conn::watch`]) that closes it:
//!
//! - before its first complete request head, once `first_request` passed since the accept,
//!   whatever the protocol: the silent connection, the byte-a-second HTTP/1 head and the
//!   byte-a-second HTTP/2 preface alike (hyper-util's protocol detection and the HTTP/2
//!   handshake have no deadline of their own);
//! - between requests, once `idle` passed with nothing in flight (HTTP/2; an idle HTTP/1
//!   keep-alive connection is closed earlier by hyper's `header_read_timeout`, which runs
//!   whenever the connection waits for a request head);
//! - when the listener evicts it to make room (see [`super::listener`]).

use super::response::{Body, Resp};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No complete request within `first_request`.
    NoRequest,
    /// Nothing in flight for `idle`.
    Idle,
    /// Evicted by the listener to make room for a new connection.
    Evicted,
}

impl Closed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoRequest => "no_request",
            Self::Idle => "idle",
            Self::Evicted => "evicted",
        }
    }
}

/// What the service and the watchdog of one connection share.
pub struct Conn {
    opened: Instant,
    /// A request head was complete at least once.
    served: AtomicBool,
    /// Requests (and streamed response bodies) in flight.
    active: AtomicUsize,
    /// Milliseconds from `opened` to the last time something finished.
    last_done_ms: AtomicU64,
    evict: CancellationToken,
}

impl Conn {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            served: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            evict: CancellationToken::new(),
        })
    }

    /// Whether it has sent a complete request head yet.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// Asks the watchdog to close it.
    pub fn evict(&self) {
        self.evict.cancel();
    }

    /// Whether it was asked to close (or is closed).
    pub fn evicted(&self) -> bool {
        self.evict.is_cancelled()
    }

    /// A request head arrived: call from the service, before the handler runs. The
    /// connection stays busy while the returned guard lives (a handler dropped half-way, an
    /// HTTP/2 stream reset, releases it too).
    pub fn request_started(self: &Arc<Self>) -> Busy {
        self.served.store(true, Ordering::Release);
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// The handler answered: a whole body ends the request now, a streamed one when it ends
    /// (or is dropped), so a long event stream never counts as idle.
    pub fn request_answered(resp: Resp, busy: Busy) -> Resp {
        let (parts, body) = resp.into_parts();
        let body = match body {
            full @ Body::Full(_) => full,
            stream @ Body::Stream(_) => Body::stream(Tracked {
                inner: stream,
                _busy: busy,
            }),
        };
        Resp::from_parts(parts, body)
    }

    fn finished(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_done_ms.fetch_max(ms, Ordering::AcqRel);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves when the connection must close, with why.
    pub async fn watch(&self, first_request: Duration, idle: Duration) -> Closed {
        loop {
            let deadline = if !self.served() {
                self.opened + first_request
            } else if self.active.load(Ordering::Acquire) > 0 {
                // Busy: look again after one idle period.
                Instant::now() + idle
            } else {
                let last = Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
                self.opened + last + idle
            };
            if Instant::now() >= deadline {
                return if self.served() {
                    Closed::Idle
                } else {
                    Closed::NoRequest
                };
            }
            tokio::select! {
                () = self.evict.cancelled() => return Closed::Evicted,
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// Marks its connection busy until dropped.
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// A streamed body that keeps its connection busy while it streams.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = super::response::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_closes_after_the_first_request_deadline() {
        let c = Conn::new();
        let started = Instant::now();
        let why = c
            .watch(Duration::from_secs(2), Duration::from_secs(60))
            .await;
        assert_eq!(why, Closed::NoRequest);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_served_connection_closes_once_idle_and_never_while_busy() {
        let c = Conn::new();
        let request = c.request_started();
        let busy = tokio::time::timeout(
            Duration::from_secs(30),
            c.watch(Duration::from_secs(1), Duration::from_secs(5)),
        )
        .await;
        assert!(busy.is_err(), "a request in flight keeps it open");
        drop(request);
        let started = Instant::now();
        let why = c
            .watch(Duration::from_secs(1), Duration::from_secs(5))
            .await;
        assert_eq!(why, Closed::Idle);
        assert!(started.elapsed() <= Duration::from_secs(5));
    }
}
