//! The event pipeline: everything between a decision's events and the event endpoint.
//!
//! A request hands its events to the [`EventSender`] and, in durable mode, waits for its
//! [`ack::Ack`] (the batch holding them fsynced or acknowledged by the broker); the [`producer`] task
//! encodes them into queue records ([`record`]) and publishes them to the configured queue, or,
//! while a remote queue is down, to the local disk [`spool`] that a forwarder drains. The
//! [`Flusher`] reads the records back, decodes them, and posts them in bulk; what the endpoint
//! rejects goes to the [`dead_letter`].
//!
//! Names: an *event* is the core's value ([`crate::core::UserEvent`]); a *record* is its
//! encoded form in a queue ([`backends::Record`]).

pub mod ack;
pub mod dead_letter;
pub mod flusher;
pub mod producer;
pub mod record;
pub mod spool;

pub use ack::{Ack, AckMode, NotRecorded};
pub use flusher::{Flusher, FlusherError, CLIENT_NAME};
pub use producer::{producer, ChannelSettings, EventSender};

use backends::{BackendError, EventQueue, Record};
use std::time::Duration;

/// Longest wait for a remote queue to accept a batch before it counts as down.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// One publish to a remote queue, bounded by `PUBLISH_TIMEOUT` (a timeout is a retryable
/// [`BackendError::Timeout`]). Shared by the producer and the spool's forwarder.
async fn publish_within(queue: &dyn EventQueue, records: &[Record]) -> Result<(), BackendError> {
    tokio::time::timeout(PUBLISH_TIMEOUT, queue.publish(records))
        .await
        .unwrap_or_else(|_| {
            Err(BackendError::Timeout {
                backend: queue.backend(),
                millis: PUBLISH_TIMEOUT.as_millis() as u64,
            })
        })
}
