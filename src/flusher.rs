//! The flusher: drains the event queue into bulk Optimizely v1 requests.
//!
//! It collects up to `batch_size` records or until `flush_interval`, groups them by context
//! (account, project, revision, anonymize_ip, region), renders each group as ONE payload with
//! many visitors (split to stay under `max_request_bytes`), and POSTs them reusing connections.
//! Records are acknowledged only after a 2xx (at-least-once; every event carries its uuid).
//! 5xx, timeouts and connection errors are retried with exponential backoff and jitter, never
//! acknowledged. A 4xx splits the batch to isolate the events the endpoint rejects; those go to
//! the dead letter file (counted, logged at ERROR) and the rest are delivered.

use crate::config::FlusherSettings;
use crate::core::events::UserEvent;
use crate::core::payload::{endpoint_for_region, render, Client};
use crate::metrics::Metrics;
use crate::service::events::from_record;
use backends::queue::AckToken;
use backends::EventQueue;
use std::io::Write;
use std::path::PathBuf;
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

/// Appends rejected events to a JSON-lines file.
pub struct DeadLetter {
    path: PathBuf,
}

impl DeadLetter {
    /// A dead letter at `path` (created on first use).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn write(&self, events: &[&UserEvent], reason: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut buf = Vec::new();
        for e in events {
            serde_json::to_writer(&mut buf, &serde_json::json!({"reason": reason, "event": e}))
                .map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        f.write_all(&buf)?;
        f.sync_data()
    }
}

/// The flusher worker.
pub struct Flusher {
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
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| FlusherError(e.to_string()))?;
        let dead_letter = DeadLetter::new(settings.dead_letter_path.clone());
        Ok(Self {
            queue,
            settings,
            endpoint,
            http,
            metrics,
            dead_letter,
        })
    }

    /// Runs until cancelled; a batch in flight is finished (delivered or released) first.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failures = 0u32;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let batch = match self.collect(&cancel).await {
                Ok(b) => b,
                Err(e) => {
                    failures += 1;
                    let wait = self.backoff(failures);
                    tracing::warn!(backend = self.queue.backend(), error = %e, ?wait, "cannot receive from the event queue");
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(wait) => {} }
                    continue;
                }
            };
            failures = 0;
            if batch.is_empty() {
                continue;
            }
            self.flush_batch(batch, &cancel).await;
            if let Ok(Some(depth)) = self.queue.depth().await {
                self.metrics.queue_depth.set(depth as i64);
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
            match from_record(&d.record) {
                Ok(e) => {
                    events.push(e);
                    tokens.push(d.token);
                }
                Err(e) => poison.push((d, e)),
            }
        }
        if !poison.is_empty() {
            tracing::error!(count = poison.len(), error = %poison[0].1, "undecodable queue records moved to the dead letter");
            let lines: Vec<String> = poison
                .iter()
                .map(|(d, _)| String::from_utf8_lossy(&d.record.value).into_owned())
                .collect();
            let path = self
                .settings
                .dead_letter_path
                .with_extension("undecodable.jsonl");
            if let Err(e) = append_lines(&path, &lines) {
                tracing::error!(error = %e, "cannot write the dead letter; leaving records in the queue");
                let t: Vec<AckToken> = poison.iter().map(|(d, _)| d.token.clone()).collect();
                let _ = self.queue.release(&t).await;
            } else {
                self.metrics
                    .flusher_dead_lettered
                    .inc_by(poison.len() as u64);
                let t: Vec<AckToken> = poison.iter().map(|(d, _)| d.token.clone()).collect();
                let _ = self.queue.ack(&t).await;
            }
        }
        let version = env!("CARGO_PKG_VERSION");
        let client = Client {
            name: CLIENT_NAME,
            version,
        };
        let mut done: Vec<usize> = Vec::with_capacity(events.len());
        let mut undelivered: Vec<usize> = Vec::new();
        for group in render(&events, &client) {
            let indexes = group.events.clone();
            match self.deliver_group(&events, &indexes, &client, cancel).await {
                true => done.extend(indexes),
                false => undelivered.extend(indexes),
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

    /// Delivers the events at `indexes` (one context): returns true when every event was either
    /// accepted or dead-lettered, false when shutting down first.
    async fn deliver_group(
        &self,
        events: &[UserEvent],
        indexes: &[usize],
        client: &Client<'_>,
        cancel: &CancellationToken,
    ) -> bool {
        let mut stack: Vec<Vec<usize>> = vec![indexes.to_vec()];
        while let Some(part) = stack.pop() {
            let subset: Vec<UserEvent> = part.iter().map(|&i| events[i].clone()).collect();
            let rendered = render(&subset, client);
            let Some(batch) = rendered.first() else {
                continue;
            };
            let body = match serde_json::to_vec(&batch.batch) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot render a payload");
                    continue;
                }
            };
            if body.len() > self.settings.max_request_bytes && part.len() > 1 {
                let (a, b) = part.split_at(part.len() / 2);
                stack.push(b.to_vec());
                stack.push(a.to_vec());
                continue;
            }
            let url = match &self.endpoint {
                Some(u) => u.to_string(),
                None => endpoint_for_region(&batch.context.region).to_string(),
            };
            match self.post(&url, body, part.len(), cancel).await {
                Outcome::Delivered => {}
                Outcome::Cancelled => return false,
                Outcome::Rejected { status, body } => {
                    if part.len() > 1 {
                        let (a, b) = part.split_at(part.len() / 2);
                        stack.push(b.to_vec());
                        stack.push(a.to_vec());
                    } else {
                        let bad: Vec<&UserEvent> = part.iter().map(|&i| &events[i]).collect();
                        let reason = format!(
                            "HTTP {status}: {}",
                            body.chars().take(500).collect::<String>()
                        );
                        tracing::error!(status, uuid = %bad[0].uuid, "event rejected by the endpoint; dead-lettered");
                        if let Err(e) = self.dead_letter.write(&bad, &reason) {
                            tracing::error!(error = %e, "cannot write the dead letter; the event stays queued");
                            return false;
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
        true
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
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

fn append_lines(path: &std::path::Path, lines: &[String]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for l in lines {
        f.write_all(l.as_bytes())?;
        f.write_all(b"\n")?;
    }
    f.sync_data()
}
