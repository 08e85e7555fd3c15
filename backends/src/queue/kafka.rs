//! The Kafka event queue: records go to one topic (key = visitor id, so a visitor's events stay
//! in one partition and in order); the flusher reads them back in a consumer group.
//!
//! Built on `rdkafka` (librdkafka). The producer is idempotent with `acks=all`, so a publish
//! that returned is on every in-sync replica, and librdkafka's retries do not duplicate. The
//! consumer is created on the first `receive`: a daemon that only produces never joins the
//! group. Offsets are committed by hand: per partition, only the contiguous prefix of acked
//! records (committed as offset + 1), so an ack out of order never lets an unacked record be
//! skipped. Everything received and not acked is redelivered after a restart or when a
//! rebalance moves its partition to another member.
//!
//! `release` does not seek: the released records are kept in memory (a copy of every record
//! in flight is kept for this) and handed out again by the next `receive`; their offsets stay
//! uncommitted, so a restart also redelivers them.
//!
//! Files: `config` (settings and librdkafka client configs), `state` (what this member tracks
//! of the records it received), `context` (librdkafka callbacks: logs and rebalances), `error`
//! (librdkafka error classification), `queue` (the [`KafkaQueue`] and its broker calls).

mod config;
mod context;
mod error;
mod queue;
mod state;

pub use config::{
    KafkaConfig, DEFAULT_GROUP_ID, DEFAULT_PARTITIONS, DEFAULT_REPLICATION_FACTOR, DEFAULT_TOPIC,
};
pub use queue::KafkaQueue;

const BACKEND: &str = "kafka";

/// Header carrying why a dead-lettered record was rejected.
pub const REASON_HEADER: &str = "bucketd-reason";
