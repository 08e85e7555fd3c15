//! Event queues: where recorded events wait until the flusher delivers them.
//!
//! Records are opaque (a key — the visitor id — and bytes). Delivery is at-least-once: a record
//! received but not acknowledged is delivered again (after a restart, a visibility timeout or a
//! consumer-group rebalance). `ack` is called only after the event endpoint accepted the events.
//! A bounded queue that has no room refuses a publish with [`BackendError::Full`].

use crate::BackendError;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// One queued event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Partitioning / grouping key (the visitor id).
    pub key: String,
    pub value: Vec<u8>,
}

/// Identifies a received record for `ack` / `release`: a typed position, one variant per
/// backend, so no backend formats or parses strings. A queue refuses a token of another
/// backend's kind; a token of its kind it no longer knows (acked, redelivered elsewhere) is
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AckToken {
    /// A disk-queue record: its batch and its index in the batch.
    Disk { batch: u64, index: u32 },
    /// A Kafka record: its partition and offset.
    Kafka { partition: i32, offset: i64 },
    /// A record unpacked from an SQS message: the receiver's number for the message and the
    /// record's index in it.
    Sqs { message: u64, index: usize },
}

impl AckToken {
    /// The error of a queue handed a token of another kind.
    #[cfg(any(feature = "disk", feature = "kafka", feature = "sqs"))]
    pub(crate) fn foreign(&self, backend: &'static str) -> BackendError {
        BackendError::fatal(backend, format!("not a {backend} queue token: {self:?}"))
    }
}

/// A received record and its acknowledgement token.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub record: Record,
    pub token: AckToken,
}

/// A durable queue of event records.
#[async_trait::async_trait]
pub trait EventQueue: Send + Sync + 'static {
    /// A short backend name for metrics and logs (`disk`, `kafka`, `sqs`).
    fn backend(&self) -> &'static str;
    /// Enqueues records durably; returns once the backend has accepted all of them.
    async fn publish(&self, records: &[Record]) -> Result<(), BackendError>;
    /// Receives up to `max` records, waiting up to `wait` for the first one.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError>;
    /// Removes delivered records for good.
    async fn ack(&self, tokens: &[AckToken]) -> Result<(), BackendError>;
    /// Gives received records back for redelivery (e.g. on shutdown with a batch in flight).
    async fn release(&self, tokens: &[AckToken]) -> Result<(), BackendError>;
    /// How often a receiver must call [`EventQueue::keep_held`] so the records it holds
    /// (received, neither acked nor released) are not handed to another receiver; `None` when
    /// holding never expires (disk: one process; Kafka: the consumer group's assignment).
    fn hold_interval(&self) -> Option<Duration> {
        None
    }
    /// Extends the hold on every record this receiver holds (SQS: their messages' visibility
    /// timeout), so a batch that takes long to deliver (an endpoint outage) is not redelivered
    /// elsewhere meanwhile.
    async fn keep_held(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Whether this queue has a dead letter of its own (a Kafka topic, an SQS queue) for
    /// records the event endpoint rejects; without one the flusher writes a dead-letter file.
    fn has_dead_letter(&self) -> bool {
        false
    }
    /// Stores rejected records durably in this backend's dead letter, with why.
    async fn dead_letter(&self, records: &[Record], reason: &str) -> Result<(), BackendError> {
        let _ = (records, reason);
        Err(BackendError::fatal(
            self.backend(),
            "no dead-letter topic or queue configured",
        ))
    }
    /// Records waiting to be delivered, when the backend can tell.
    async fn depth(&self) -> Result<Option<u64>, BackendError>;
    /// Checks the queue answers.
    async fn health(&self) -> Result<(), BackendError>;
}

/// Which queue to use, with its settings (the `events.queue` section, validated).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum EventQueueConfig {
    #[cfg(feature = "disk")]
    Disk(disk::DiskConfig),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaConfig),
    #[cfg(feature = "sqs")]
    Sqs(sqs::SqsConfig),
}

impl EventQueueConfig {
    /// Opens / connects the queue (creating the topic or queue when configured to).
    pub async fn build(&self) -> Result<Arc<dyn EventQueue>, BackendError> {
        #[cfg(not(any(feature = "disk", feature = "kafka", feature = "sqs")))]
        match *self {}
        #[cfg(any(feature = "disk", feature = "kafka", feature = "sqs"))]
        Ok(match self {
            #[cfg(feature = "disk")]
            Self::Disk(c) => Arc::new(disk::DiskQueue::open(c)?),
            #[cfg(feature = "kafka")]
            Self::Kafka(c) => Arc::new(kafka::KafkaQueue::connect(c).await?),
            #[cfg(feature = "sqs")]
            Self::Sqs(c) => Arc::new(sqs::SqsQueue::connect(c).await?),
        })
    }
}

#[cfg(feature = "disk")]
pub mod disk;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "sqs")]
pub mod sqs;
