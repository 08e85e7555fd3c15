//! The flusher: drains the event queue into bulk Optimizely v1 requests.
//!
//! It collects up to `batch_size` records or until `flush_interval`, groups them by context
//! (account, project, revision, anonymize_ip, region), renders each group as ONE payload with
//! many visitors (split to stay under `max_request_bytes`), and POSTs them reusing connections.
//! Visitors relayed from SDKs (`POST /v1/events`) share the queue and this loop; they are
//! grouped by their payload's envelope too and rendered verbatim (see [`crate::core::payload`]).
//! Records are acknowledged only after a 2xx (at-least-once; every event carries its uuid).
//! 5xx, timeouts and connection errors are retried with exponential backoff and jitter, never
//! acknowledged. A 4xx splits the batch to isolate the events the endpoint rejects; those go to
//! the queue's dead-letter topic/queue when one is configured (Kafka `dead_letter_topic`, SQS
//! `dead_letter_queue`), else to the dead-letter file (counted, logged at ERROR either way),
//! and the rest are delivered. SQS records in flight have their visibility extended for as
//! long as their delivery takes.

use super::dead_letter::DeadLetter;
use super::record;
use crate::config::FlusherSettings;
use crate::core::events::UserEvent;
use crate::core::payload::{endpoint_for_region, render, Client, RenderedBatch};
use crate::metrics::Metrics;
use backends::queue::AckToken;
use backends::EventQueue;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The `client_name` bucketd puts in payloads.
pub const CLIENT_NAME: &str = "bucketd";

/// What happened to one POST.
enum Outcome {
    Delivered,
    /// The endpoint refused this payload (4xx): splitting may isolate the bad events.
    Rejected {
        status: u16,
        body: String,
    },
    /// Shutting down with the batch undelivered.
    Cancelled,
}

/// The flusher worker.
pub struct Flusher {
    inner: Arc<Inner>,
}

/// What the receiving loop and the delivering tasks share.
struct Inner {
    queue: Arc<dyn EventQueue>,
    settings: FlusherSettings,
    endpoint: Option<url::Url>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    dead_letter: DeadLetter,
}

/// Why the flusher could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct FlusherError(String);

/// How often the queue depth gauge is refreshed (asking Kafka costs round trips).
const DEPTH_INTERVAL: Duration = Duration::from_secs(5);

impl Flusher {
    /// A flusher over `queue`, posting to `endpoint` (or each event's regional endpoint).
    pub fn new(
        queue: Arc<dyn EventQueue>,
        settings: FlusherSettings,
        endpoint: Option<url::Url>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FlusherError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(settings.concurrency.max(1) * 2)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| FlusherError(e.to_string()))?;
        let dead_letter = DeadLetter::new(settings.dead_letter_path.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                settings,
                endpoint,
                http,
                metrics,
                dead_letter,
            }),
        })
    }

    /// Runs until cancelled. Up to `concurrency` batches are delivered at once while the next
    /// one is received; on cancel, batches in flight are finished (delivered or released).
    pub async fn run(self, cancel: CancellationToken) {
        let inner = self.inner;
        let depth = tokio::spawn(Inner::watch_depth(Arc::clone(&inner), cancel.clone()));
        let hold = tokio::spawn(Inner::keep_held(Arc::clone(&inner), cancel.clone()));
        let mut in_flight = tokio::task::JoinSet::new();
        let mut failures = 0u32;
        loop {
            while in_flight.try_join_next().is_some() {}
            while in_flight.len() >= inner.settings.concurrency {
                in_flight.join_next().await;
            }
            if cancel.is_cancelled() {
                break;
            }
            let batch = match inner.collect(&cancel).await {
                Ok(b) => b,
                Err(e) => {
                    failures += 1;
                    let wait = inner.backoff(failures);
                    tracing::warn!(backend = inner.queue.backend(), error = %e, ?wait, "cannot receive from the event queue");
                    tokio::select! { _ = cancel.cancelled() => break, _ = tokio::time::sleep(wait) => {} }
                    continue;
                }
            };
            failures = 0;
            if batch.is_empty() {
                continue;
            }
            let task = Arc::clone(&inner);
            let task_cancel = cancel.clone();
            in_flight.spawn(async move { task.flush_batch(batch, &task_cancel).await });
        }
        while in_flight.join_next().await.is_some() {}
        let _ = depth.await;
        let _ = hold.await;
    }
}

impl Inner {
    /// Refreshes the queue depth gauge every [`DEPTH_INTERVAL`] until cancelled.
    async fn watch_depth(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            if let Ok(Some(depth)) = self.queue.depth().await {
                self.metrics
                    .queue_depth
                    .set(i64::try_from(depth).unwrap_or(i64::MAX));
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(DEPTH_INTERVAL) => {}
            }
        }
    }

    /// Keeps the records in flight held (SQS: visibility extended) for as long as they take,
    /// so a long outage of the endpoint does not hand them to another flusher meanwhile.
    async fn keep_held(self: Arc<Self>, cancel: CancellationToken) {
        let Some(every) = self.queue.hold_interval() else {
            return;
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.queue.keep_held().await {
                tracing::warn!(backend = self.queue.backend(), error = %e, "cannot extend the hold on records in flight; they may be delivered twice");
            }
        }
    }

    /// Receives until `batch_size` records or `flush_interval` elapsed.
    async fn collect(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<backends::Delivery>, backends::BackendError> {
        let started = Instant::now();
        let mut batch = Vec::new();
        while batch.len() < self.settings.batch_size {
            let left = self
                .settings
                .flush_interval
                .saturating_sub(started.elapsed());
            if left.is_zero() && !batch.is_empty() {
                break;
            }
            let wait = if batch.is_empty() {
                self.settings.flush_interval
            } else {
                left
            };
            let got = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.queue.receive(self.settings.batch_size - batch.len(), wait) => r?,
            };
            if got.is_empty() {
                break;
            }
            batch.extend(got);
        }
        Ok(batch)
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = Duration::from_millis(100).saturating_mul(1u32 << failures.min(16));
        let capped = base.min(self.settings.max_backoff);
        // Full jitter between half and all of the delay, so many flushers do not retry in step.
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    async fn flush_batch(&self, batch: Vec<backends::Delivery>, cancel: &CancellationToken) {
        let mut events = Vec::with_capacity(batch.len());
        let mut tokens = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for d in batch {
            match record::decode(&d.record) {
                Ok(e) => {
                    events.push(e);
                    tokens.push(d.token);
                }
                Err(e) => poison.push((d, e)),
            }
        }
        if !poison.is_empty() {
            self.dead_letter_undecodable(poison).await;
        }
        let client = Client {
            name: CLIENT_NAME,
            version: env!("CARGO_PKG_VERSION"),
        };
        let mut done: Vec<usize> = Vec::with_capacity(events.len());
        let mut undelivered: Vec<usize> = Vec::new();
        for group in render(&events, &client) {
            let delivered = self.deliver_group(&events, group, &client, cancel).await;
            match delivered {
                Ok(indexes) => done.extend(indexes),
                Err(indexes) => undelivered.extend(indexes),
            }
        }
        let ack: Vec<AckToken> = done.iter().map(|&i| tokens[i].clone()).collect();
        if !ack.is_empty() {
            if let Err(e) = self.queue.ack(&ack).await {
                tracing::warn!(error = %e, "ack failed; the events may be delivered again (they carry their uuid)");
            }
        }
        if !undelivered.is_empty() {
            let release: Vec<AckToken> = undelivered.iter().map(|&i| tokens[i].clone()).collect();
            let _ = self.queue.release(&release).await;
        }
    }

    /// Events the endpoint refused go to the queue's dead-letter topic/queue when it has one,
    /// else to the dead-letter file.
    async fn store_rejected(&self, events: &[&UserEvent], reason: &str) -> Result<(), String> {
        if !self.queue.has_dead_letter() {
            return self
                .dead_letter
                .write(events, reason)
                .map_err(|e| e.to_string());
        }
        let records = events
            .iter()
            .map(|e| record::encode(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        self.queue
            .dead_letter(&records, reason)
            .await
            .map_err(|e| e.to_string())
    }

    /// Records that are not events at all go, as they are, to the queue's dead letter when it
    /// has one, else to `<dead letter>.undecodable.jsonl`.
    async fn dead_letter_undecodable(&self, poison: Vec<(backends::Delivery, serde_json::Error)>) {
        tracing::error!(count = poison.len(), error = %poison[0].1, "undecodable queue records moved to the dead letter");
        let reason = format!("undecodable record: {}", poison[0].1);
        let stored = if self.queue.has_dead_letter() {
            let records: Vec<backends::Record> =
                poison.iter().map(|(d, _)| d.record.clone()).collect();
            self.queue
                .dead_letter(&records, &reason)
                .await
                .map_err(|e| e.to_string())
        } else {
            let records: Vec<&backends::Record> = poison.iter().map(|(d, _)| &d.record).collect();
            self.dead_letter
                .write_undecodable(&records)
                .map_err(|e| e.to_string())
        };
        let tokens: Vec<AckToken> = poison.into_iter().map(|(d, _)| d.token).collect();
        if let Err(e) = stored {
            tracing::error!(error = %e, "cannot write the dead letter; leaving records in the queue");
            let _ = self.queue.release(&tokens).await;
        } else {
            self.metrics
                .flusher_dead_lettered
                .inc_by(tokens.len() as u64);
            let _ = self.queue.ack(&tokens).await;
        }
    }

    /// Delivers one rendered group (one context). `Ok` with the indexes of `events` that were
    /// accepted or dead-lettered; `Err` with all of the group's indexes when shutting down first.
    async fn deliver_group(
        &self,
        events: &[UserEvent],
        group: RenderedBatch<'_>,
        client: &Client<'_>,
        cancel: &CancellationToken,
    ) -> Result<Vec<usize>, Vec<usize>> {
        let url = match &self.endpoint {
            Some(u) => u.to_string(),
            None => endpoint_for_region(&group.context.region).to_string(),
        };
        // The whole group is rendered once; only a payload over the size cap or one the
        // endpoint rejects is split (into halves, rendered again from the shared events).
        let first = serde_json::to_vec(&group.batch);
        let all = group.events;
        let mut stack: Vec<(Vec<usize>, Option<Vec<u8>>)> = vec![(all.clone(), first.ok())];
        while let Some((part, body)) = stack.pop() {
            let body = match body {
                Some(b) => b,
                None => {
                    let rendered = render(part.iter().map(|&i| &events[i]), client);
                    let Some(batch) = rendered.first() else {
                        continue;
                    };
                    match serde_json::to_vec(&batch.batch) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot render a payload");
                            continue;
                        }
                    }
                }
            };
            if body.len() > self.settings.max_request_bytes && part.len() > 1 {
                let (a, b) = part.split_at(part.len() / 2);
                stack.push((b.to_vec(), None));
                stack.push((a.to_vec(), None));
                continue;
            }
            match self.post(&url, body.into(), part.len(), cancel).await {
                Outcome::Delivered => {}
                Outcome::Cancelled => return Err(all),
                Outcome::Rejected { status, body } => {
                    if part.len() > 1 {
                        let (a, b) = part.split_at(part.len() / 2);
                        stack.push((b.to_vec(), None));
                        stack.push((a.to_vec(), None));
                    } else {
                        let bad: Vec<&UserEvent> = part.iter().map(|&i| &events[i]).collect();
                        let reason = format!(
                            "HTTP {status}: {}",
                            body.chars().take(500).collect::<String>()
                        );
                        tracing::error!(status, uuid = %bad[0].uuid, "event rejected by the endpoint; dead-lettered");
                        if let Err(e) = self.store_rejected(&bad, &reason).await {
                            tracing::error!(error = %e, "cannot write the dead letter; the event stays queued");
                            return Err(all);
                        }
                        self.metrics.flusher_dead_lettered.inc();
                        self.metrics
                            .flusher_events
                            .with_label_values(&["dead_lettered"])
                            .inc();
                    }
                }
            }
        }
        Ok(all)
    }

    async fn post(
        &self,
        url: &str,
        body: bytes::Bytes,
        count: usize,
        cancel: &CancellationToken,
    ) -> Outcome {
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let result = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let elapsed = started.elapsed().as_secs_f64();
            let retry_reason = match result {
                Ok(resp) if resp.status().is_success() => {
                    self.metrics
                        .flusher_request_latency
                        .with_label_values(&["ok"])
                        .observe(elapsed);
                    self.metrics
                        .flusher_batches
                        .with_label_values(&["delivered"])
                        .inc();
                    self.metrics
                        .flusher_events
                        .with_label_values(&["delivered"])
                        .inc_by(count as u64);
                    return Outcome::Delivered;
                }
                Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 429 => {
                    self.metrics
                        .flusher_request_latency
                        .with_label_values(&["rejected"])
                        .observe(elapsed);
                    self.metrics
                        .flusher_batches
                        .with_label_values(&["rejected"])
                        .inc();
                    let status = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    return Outcome::Rejected { status, body };
                }
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => e.to_string(),
            };
            self.metrics
                .flusher_request_latency
                .with_label_values(&["retry"])
                .observe(elapsed);
            self.metrics.flusher_retries.inc();
            attempt += 1;
            let wait = self.backoff(attempt);
            tracing::warn!(url, error = %retry_reason, attempt, ?wait, "event endpoint unavailable; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return Outcome::Cancelled,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
