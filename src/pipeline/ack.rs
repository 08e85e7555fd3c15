//! Durable acknowledgement: what a request that recorded events waits for before it answers.
//!
//! With `events.ack = "durable"` (the default) every submission to the producer carries a
//! oneshot notifier; the producer resolves the notifiers of a whole batch once that batch is
//! durable (the disk queue's fsynced commit, the spool's, or the Kafka broker's / SQS's
//! acknowledgement). Concurrent requests therefore share one fsync or one publish: group
//! commit. With `"fast"` nothing waits (the behaviour before durable acknowledgement: a
//! `kill -9` loses the events of the last few milliseconds).
//!
//! A request whose events could not be made durable (channel full by count or bytes, queue
//! full or failing, shutting down, or no confirmation within `events.ack_timeout`) is noted in
//! a task-local set around each HTTP request ([`track`]); the HTTP layer then answers 503 with
//! `Retry-After` instead of the decision, so in durable mode a 2xx always means "recorded".

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;
use tokio::sync::oneshot;

/// When a request that records events is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Once the events are durable (fsynced, or acknowledged by the broker).
    Durable,
    /// At once; the events follow (lost on a crash within the producer's few milliseconds).
    Fast,
}

/// Why a request's events were not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotRecorded {
    /// Dropped before or at the queue, with the `bucketd_events_dropped_total` reason.
    #[error("events not recorded ({0})")]
    Dropped(&'static str),
    /// Not confirmed within `events.ack_timeout`; they may still be recorded later.
    #[error("events not confirmed within {0:?}")]
    Timeout(Duration),
}

/// What the producer reports for a batch: durable, or dropped with a reason.
pub(super) type Outcome = Result<(), &'static str>;

/// The notifier a submission carries (durable mode only).
pub(super) type Notifier = oneshot::Sender<Outcome>;

/// What [`super::EventSender::send`] hands back: await [`Ack::wait`] before answering.
#[must_use = "a durable acknowledgement must be awaited before the response is sent"]
pub struct Ack {
    state: State,
}

enum State {
    Settled(Result<(), NotRecorded>),
    Waiting {
        rx: oneshot::Receiver<Outcome>,
        timeout: Duration,
    },
}

impl Ack {
    /// Nothing to wait for (fast mode, or nothing to record).
    pub(super) fn settled() -> Self {
        Self {
            state: State::Settled(Ok(())),
        }
    }

    /// Refused at once (durable mode).
    pub(super) fn refused(reason: &'static str) -> Self {
        Self {
            state: State::Settled(Err(NotRecorded::Dropped(reason))),
        }
    }

    pub(super) fn waiting(rx: oneshot::Receiver<Outcome>, timeout: Duration) -> Self {
        Self {
            state: State::Waiting { rx, timeout },
        }
    }

    /// Waits until the events are durable, or settles why not. A failure is also noted for
    /// the HTTP request this runs in (see [`track`]), which then answers 503.
    pub async fn wait(self) -> Result<(), NotRecorded> {
        let result = match self.state {
            State::Settled(r) => r,
            State::Waiting { rx, timeout } => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(reason))) => Err(NotRecorded::Dropped(reason)),
                // The producer ended without settling (it only does so when shutting down).
                Ok(Err(_)) => Err(NotRecorded::Dropped("shutting_down")),
                Err(_) => Err(NotRecorded::Timeout(timeout)),
            },
        };
        if let Err(why) = result {
            // Outside an HTTP request (a unit test calling the service) there is nothing to
            // note.
            let _ = UNRECORDED.try_with(|cell| cell.set(Some(why)));
        }
        result
    }
}

tokio::task_local! {
    static UNRECORDED: Cell<Option<NotRecorded>>;
}

/// Runs one request's handler, and reports whether any of its events could not be made
/// durable.
pub async fn track<F: Future>(handler: F) -> (F::Output, Option<NotRecorded>) {
    UNRECORDED
        .scope(Cell::new(None), async move {
            let out = handler.await;
            let why = UNRECORDED.try_with(Cell::get).ok().flatten();
            (out, why)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_ack_is_noted_for_the_request() {
        let ((), why) = track(async {
            let _ = Ack::refused("channel_full").wait().await;
        })
        .await;
        assert_eq!(why, Some(NotRecorded::Dropped("channel_full")));
        let ((), why) = track(async {
            let _ = Ack::settled().wait().await;
        })
        .await;
        assert_eq!(why, None);
    }

    #[tokio::test]
    async fn an_unconfirmed_ack_times_out() {
        let (_tx, rx) = oneshot::channel();
        let got = Ack::waiting(rx, Duration::from_millis(10)).wait().await;
        assert_eq!(got, Err(NotRecorded::Timeout(Duration::from_millis(10))));
    }
}
