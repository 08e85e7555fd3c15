//! Replicas in step (`datafile.fanout = "redis://..."`): a daemon that installs a new datafile
//! from anywhere but another replica (webhook-triggered fetch, admin push, poll, file) publishes
//! it on a Redis pub/sub channel; every other replica subscribed to it installs it at once.
//!
//! A message is JSON: the sender (a random id per process, so a daemon ignores its own), the
//! project ([`crate::source::Project::fanout_id`], a digest: no SDK key token travels), the
//! revision and, up to [`INLINE_MAX_BYTES`], the datafile itself. Sending the bytes makes
//! every replica serve exactly the revision the sender got, within one Redis round trip, even
//! an admin push that no source has and a CDN edge that still serves the old one; a larger
//! datafile is announced without them and the replicas refresh from their source. Pub/sub
//! keeps nothing: a replica that was disconnected catches up at its next poll. With Redis down
//! every replica keeps serving and polling; publish and subscribe errors are logged and
//! retried with backoff.

use super::dynamic::DynamicProjects;
use crate::config::FanoutSettings;
use crate::metrics::Metrics;
use crate::source::{Project, Published, FANOUT_ORIGIN};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest datafile sent inside the message; larger ones are announced by revision only.
pub const INLINE_MAX_BYTES: usize = 1 << 20;

/// Announcements waiting for the publisher; more are dropped (and counted).
const QUEUE: usize = 64;

/// Longest wait for Redis to connect or answer a PUBLISH.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why fanout could not start.
#[derive(Debug, thiserror::Error)]
#[error("datafile.fanout: {0}")]
pub struct FanoutError(String);

/// One announcement on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    sender: String,
    project: String,
    revision: String,
    #[serde(default)]
    datafile: Option<String>,
    #[serde(default)]
    cache_control: Option<String>,
}

/// The projects a message may be for.
#[derive(Clone)]
pub struct Targets {
    pub configured: Vec<Arc<Project>>,
    pub dynamic: Option<Arc<DynamicProjects>>,
}

impl Targets {
    fn find(&self, id: &str) -> Option<Arc<Project>> {
        let dynamic = self
            .dynamic
            .as_ref()
            .map(|d| d.loaded())
            .unwrap_or_default();
        self.configured
            .iter()
            .chain(dynamic.iter())
            .find(|p| p.fanout_id() == id)
            .cloned()
    }
}

/// Starts the publisher and the subscriber on `workers`; every target project (and every
/// on-demand project loaded later) announces its new datafiles.
pub fn start(
    settings: &FanoutSettings,
    targets: Targets,
    metrics: Arc<Metrics>,
    workers: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), FanoutError> {
    let client =
        redis::Client::open(settings.redis_url.as_str()).map_err(|e| FanoutError(e.to_string()))?;
    let sender = uuid::Uuid::new_v4().to_string();
    let (tx, rx) = mpsc::channel(QUEUE);
    for p in &targets.configured {
        p.publish_to(tx.clone());
    }
    if let Some(d) = &targets.dynamic {
        d.publish_to(tx.clone());
    }
    let publisher = Publisher {
        client: client.clone(),
        channel: settings.channel.clone(),
        sender: sender.clone(),
        metrics: metrics.clone(),
    };
    workers.spawn(publisher.run(rx, cancel.clone()));
    let subscriber = Subscriber {
        client,
        channel: settings.channel.clone(),
        sender,
        targets,
        metrics,
    };
    workers.spawn(subscriber.run(cancel));
    Ok(())
}

/// Exponential backoff from 500 ms, capped at 30 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64 << failures.min(6)).min(Duration::from_secs(30))
}

struct Publisher {
    client: redis::Client,
    channel: String,
    sender: String,
    metrics: Arc<Metrics>,
}

impl Publisher {
    async fn run(self, mut rx: mpsc::Receiver<Published>, cancel: CancellationToken) {
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        let mut failures = 0u32;
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let published = tokio::select! {
                () = cancel.cancelled() => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            if conn.is_none() && tokio::time::Instant::now() < retry_at {
                self.count("skipped_redis_down");
                continue;
            }
            let message = Message {
                sender: self.sender.clone(),
                project: published.project,
                revision: published.revision,
                datafile: (published.datafile.len() <= INLINE_MAX_BYTES)
                    .then(|| published.datafile.to_string()),
                cache_control: published.cache_control,
            };
            let Ok(text) = serde_json::to_string(&message) else {
                continue;
            };
            match self.publish(&mut conn, text).await {
                Ok(()) => {
                    failures = 0;
                    self.count("published");
                    tracing::debug!(revision = %message.revision, "fanout: datafile published");
                }
                Err(e) => {
                    conn = None;
                    failures = failures.saturating_add(1);
                    retry_at = tokio::time::Instant::now() + backoff(failures);
                    self.count("error");
                    tracing::warn!(error = %e, failures, "fanout: cannot publish; replicas catch up at their next poll");
                }
            }
        }
    }

    async fn publish(
        &self,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
        text: String,
    ) -> Result<(), String> {
        let c = match conn {
            Some(c) => c,
            None => {
                let fresh = tokio::time::timeout(
                    REDIS_TIMEOUT,
                    self.client.get_multiplexed_async_connection(),
                )
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
                conn.insert(fresh)
            }
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.channel).arg(text);
        let publish = cmd.query_async::<i64>(c);
        tokio::time::timeout(REDIS_TIMEOUT, publish)
            .await
            .map_err(|_| "PUBLISH timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .fanout_messages
            .with_label_values(&["out", outcome])
            .inc();
    }
}

struct Subscriber {
    client: redis::Client,
    channel: String,
    sender: String,
    targets: Targets,
    metrics: Arc<Metrics>,
}

impl Subscriber {
    async fn run(self, cancel: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let (subscribed, why) = tokio::select! {
                () = cancel.cancelled() => return,
                ended = self.session() => ended,
            };
            failures = if subscribed {
                1
            } else {
                failures.saturating_add(1)
            };
            tracing::warn!(error = %why, failures, "fanout: subscription lost; retrying");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff(failures)) => {}
            }
        }
    }

    /// One subscription until it ends: whether it was established, and why it ended.
    async fn session(&self) -> (bool, String) {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return (false, e.to_string()),
            Err(_) => return (false, "connect timed out".into()),
        };
        tracing::info!(channel = %self.channel, "fanout: subscribed");
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Ok(text) = msg.get_payload::<String>() else {
                self.count("malformed");
                continue;
            };
            self.handle(&text).await;
        }
        (true, "connection closed".into())
    }

    async fn handle(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Message>(text) else {
            self.count("malformed");
            return;
        };
        if message.sender == self.sender {
            return;
        }
        let Some(project) = self.targets.find(&message.project) else {
            self.count("not_here");
            return;
        };
        match message.datafile {
            Some(datafile) => {
                match project
                    .accept_with(
                        datafile.into_bytes(),
                        FANOUT_ORIGIN.into(),
                        message.cache_control,
                    )
                    .await
                {
                    Ok(()) => self.count("installed"),
                    Err(e) => {
                        self.count("invalid");
                        tracing::warn!(project = %project.settings.name, error = %e, "fanout: datafile refused");
                    }
                }
            }
            None => {
                self.count("refresh");
                project.request_refresh();
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .fanout_messages
            .with_label_values(&["in", outcome])
            .inc();
    }
}
