//! librdkafka callbacks: log lines to `tracing`, and the group consumer's rebalance hooks that
//! keep the tracker in step with the assignment.

use super::state::{lock, Tracker};
use super::BACKEND;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};

/// Sends librdkafka's log lines to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports transient trouble (a broker down) here and recovers by itself.
        tracing::warn!(backend = BACKEND, %error, reason, "librdkafka error");
    }
}

/// The probe consumer never subscribes, so it never rebalances.
impl ConsumerContext for LogContext {}

fn log_line(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(backend = BACKEND, fac, message, "librdkafka"),
        RDKafkaLogLevel::Warning => tracing::warn!(backend = BACKEND, fac, message, "librdkafka"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(backend = BACKEND, fac, message, "librdkafka")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(backend = BACKEND, fac, message, "librdkafka"),
    }
}

/// The group consumer's context: keeps the tracker in step with the assignment.
pub(super) struct TrackingContext {
    pub(super) topic: String,
    pub(super) tracker: Arc<Mutex<Tracker>>,
}

impl ClientContext for TrackingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(backend = BACKEND, %error, reason, "librdkafka error");
    }
}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        // The revoked partitions go to another member, which starts at the committed offsets:
        // commit what is acked, forget the rest (it is redelivered there).
        let mut final_commit = TopicPartitionList::new();
        {
            let mut t = lock(&self.tracker);
            for elem in tpl.elements_for_topic(&self.topic) {
                let p = elem.partition();
                if let Some(track) = t.partitions.remove(&p) {
                    if let Some(off) = track.ack_through.filter(|&o| Some(o) > track.committed) {
                        // Cannot fail: the partition is a plain non-negative offset.
                        let _ =
                            final_commit.add_partition_offset(&self.topic, p, Offset::Offset(off));
                    }
                }
                t.redeliver.retain(|(rp, _)| *rp != p);
            }
        }
        tracing::info!(
            backend = BACKEND,
            partitions = tpl.count(),
            "kafka partitions revoked"
        );
        if final_commit.count() > 0 {
            // Async: this runs inside a poll on a runtime thread and must not block.
            if let Err(error) = consumer.commit(&final_commit, CommitMode::Async) {
                tracing::warn!(backend = BACKEND, %error, "commit of revoked partitions failed");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut t = lock(&self.tracker);
                for elem in tpl.elements_for_topic(&self.topic) {
                    t.partitions.entry(elem.partition()).or_default();
                }
                tracing::info!(
                    backend = BACKEND,
                    partitions = tpl.count(),
                    "kafka partitions assigned"
                );
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(backend = BACKEND, %error, "kafka rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(backend = BACKEND, %error, "kafka offset commit failed");
        }
    }
}
