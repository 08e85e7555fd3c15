//! Settings of the SQS queue.

use serde::Deserialize;
use std::time::Duration;

/// Default region.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Default visibility timeout: how long a received message stays hidden from other receivers.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default (and largest) long-poll wait of one `ReceiveMessage`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);

fn default_region() -> String {
    DEFAULT_REGION.to_owned()
}
fn default_true() -> bool {
    true
}
fn default_visibility_timeout() -> Duration {
    DEFAULT_VISIBILITY_TIMEOUT
}
fn default_wait() -> Duration {
    DEFAULT_WAIT
}

/// Settings of the SQS queue (`type = "sqs"`). Credentials come from the standard AWS chain
/// (environment, profile, web identity, ECS/EC2 metadata).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// Queue name; looked up (or created, with `create`) at start. Ignored when `queue_url`
    /// is set.
    #[serde(default)]
    pub queue_name: Option<String>,
    /// Queue URL; takes precedence over `queue_name`.
    #[serde(default)]
    pub queue_url: Option<String>,
    /// Endpoint override (an SQS-compatible server, a VPC endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// AWS region of the queue.
    #[serde(default = "default_region")]
    pub region: String,
    /// Create the queue when only `queue_name` is given and it does not exist.
    #[serde(default = "default_true")]
    pub create: bool,
    /// How long received records stay invisible to other receivers; records neither acked
    /// nor released within it are delivered again. At most 12 h.
    #[serde(default = "default_visibility_timeout", with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// Longest long poll of one `ReceiveMessage` (at most 20 s).
    #[serde(default = "default_wait", with = "humantime_serde")]
    pub wait: Duration,
    /// Queue (a name, created when `create`, or a URL) for events the endpoint rejects; unset:
    /// the flusher's dead-letter file. Messages use the same packed body; the reason is the
    /// `bucketd-reason` message attribute.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
}

impl SqsConfig {
    /// A config for the queue named `queue_name` with the defaults.
    pub fn named(queue_name: impl Into<String>) -> Self {
        Self {
            queue_name: Some(queue_name.into()),
            queue_url: None,
            endpoint_url: None,
            region: default_region(),
            create: true,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            wait: DEFAULT_WAIT,
            dead_letter_queue: None,
        }
    }
}
