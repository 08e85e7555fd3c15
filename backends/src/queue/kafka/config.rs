//! Settings of the Kafka queue, and the librdkafka client configs built from them.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::ClientConfig;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Default topic.
pub const DEFAULT_TOPIC: &str = "bucketd-events";
/// Default consumer group of the flusher.
pub const DEFAULT_GROUP_ID: &str = "bucketd-flusher";
/// Default partition count of a topic this backend creates.
pub const DEFAULT_PARTITIONS: i32 = 4;
/// Default replication factor of a topic this backend creates: the broker's default.
pub const DEFAULT_REPLICATION_FACTOR: i32 = -1;

fn default_topic() -> String {
    DEFAULT_TOPIC.to_owned()
}
fn default_group_id() -> String {
    DEFAULT_GROUP_ID.to_owned()
}
fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    DEFAULT_PARTITIONS
}
fn default_replication_factor() -> i32 {
    DEFAULT_REPLICATION_FACTOR
}

/// Settings of the Kafka queue (`type = "kafka"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Topic the events go to.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Consumer group of the flushers.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Any librdkafka property (security, timeouts, ...), applied to the producer and the
    /// consumer after this backend's own settings, so they can be overridden.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Create the topic at start if it does not exist. When false, a missing topic is a fatal
    /// error at start.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Partitions of a created topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of a created topic; -1 asks for the broker's default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Topic for events the endpoint rejects (created like `topic` when `create`); unset: the
    /// flusher's dead-letter file. Records keep their key and value; the reason is in the
    /// `bucketd-reason` header.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
}

impl KafkaConfig {
    /// A config with the defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: default_topic(),
            group_id: default_group_id(),
            properties: BTreeMap::new(),
            create: true,
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            dead_letter_topic: None,
        }
    }

    pub(super) fn client_config(&self, own: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // A typo in the topic name must not create a topic with the broker's defaults.
        c.set("allow.auto.create.topics", "false");
        for (k, v) in own {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set_log_level(RDKafkaLogLevel::Warning);
        c
    }
}
