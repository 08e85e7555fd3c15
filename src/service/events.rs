//! The event producer: requests hand events to a bounded in-process channel (never waiting);
//! one task batches them into queue records and publishes them to the configured
//! [`EventQueue`], retrying with backoff while the queue is unavailable.
//!
//! When the queue is a remote backend (Kafka, SQS) and a publish fails or does not finish within
//! `PUBLISH_TIMEOUT` (3 s), the queue counts as down: that batch and the following ones go to a
//! local disk spool without trying the queue (so a hung broker never stalls the producer while
//! the channel fills), and a forwarder moves them to the queue; its first success marks the
//! queue up again. Under load the producer waits `LINGER` (2 ms) for a fuller batch.
//!
//! Nothing is dropped silently: a full channel, a full queue or an event that cannot be
//! serialized each have a reason label on `bucketd_events_dropped_total` and an ERROR log.

use crate::core::UserEvent;
use crate::metrics::Metrics;
use backends::queue::is_queue_full;
use backends::{BackendError, EventQueue, Record};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BATCH: usize = 1000;
/// Longest wait for a remote queue to accept a batch before it counts as down.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the producer lets events gather before writing a batch that is not full.
const LINGER: Duration = Duration::from_millis(2);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Serializes an event into the queue record the flusher reads back.
pub fn to_record(event: &UserEvent) -> Result<Record, serde_json::Error> {
    Ok(Record {
        key: event.visitor_id.clone(),
        value: serde_json::to_vec(event)?,
    })
}

/// Reads a queue record back into an event.
pub fn from_record(record: &Record) -> Result<UserEvent, serde_json::Error> {
    serde_json::from_slice(&record.value)
}

/// The request side: hands events to the producer without waiting.
pub struct EventSink {
    tx: mpsc::Sender<UserEvent>,
    metrics: Arc<Metrics>,
    last_log: AtomicU64,
    started: Instant,
}

impl EventSink {
    /// Queues events for the producer; a full channel drops them (counted, logged).
    pub fn send(&self, events: Vec<UserEvent>) {
        for e in events {
            match self.tx.try_send(e) {
                Ok(()) => self.metrics.events_enqueued.inc(),
                Err(mpsc::error::TrySendError::Full(_)) => self.dropped("channel_full"),
                Err(mpsc::error::TrySendError::Closed(_)) => self.dropped("shutting_down"),
            }
        }
    }

    fn dropped(&self, reason: &'static str) {
        self.metrics
            .events_dropped
            .with_label_values(&[reason])
            .inc();
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(
                reason,
                "event dropped (see bucketd_events_dropped_total; logged at most every 10s)"
            );
        }
    }
}

/// Creates the sink and the producer loop (to be spawned); the loop ends once the channel is
/// closed by `cancel` and everything queued has been published, spooled, or dropped with a
/// reason. `spool` is the local disk spool for remote queues.
pub fn producer(
    queue: Arc<dyn EventQueue>,
    spool: Option<Arc<dyn EventQueue>>,
    capacity: usize,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> (Arc<EventSink>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(capacity);
    let sink = Arc::new(EventSink {
        tx,
        metrics: metrics.clone(),
        last_log: AtomicU64::new(0),
        started: Instant::now(),
    });
    (sink, run(queue, spool, rx, metrics, cancel))
}

async fn run(
    queue: Arc<dyn EventQueue>,
    spool: Option<Arc<dyn EventQueue>>,
    mut rx: mpsc::Receiver<UserEvent>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    // Set when the remote queue failed or hung: batches go straight to the spool (no request
    // waits on a dead broker) until the forwarder gets spooled records through again.
    let queue_down = Arc::new(AtomicBool::new(false));
    let forwarder = spool.clone().map(|s| {
        let (q, m, c, d) = (
            queue.clone(),
            metrics.clone(),
            cancel.clone(),
            queue_down.clone(),
        );
        tokio::spawn(forward_spool(s, q, m, c, d))
    });
    let backend = queue.backend();
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut buf, BATCH) => n,
            _ = cancel.cancelled() => {
                rx.close();
                rx.recv_many(&mut buf, BATCH).await
            }
        };
        if n == 0 {
            break;
        }
        // Under load, wait a moment for more: fewer, larger queue writes (each one an fsync for
        // the disk queue). Requests never wait for this; shutdown skips it.
        if buf.len() < BATCH && !cancel.is_cancelled() {
            tokio::time::sleep(LINGER).await;
            while buf.len() < BATCH {
                match rx.try_recv() {
                    Ok(e) => buf.push(e),
                    Err(_) => break,
                }
            }
        }
        let mut records = Vec::with_capacity(buf.len());
        for e in buf.drain(..) {
            match to_record(&e) {
                Ok(r) => records.push(r),
                Err(err) => {
                    metrics
                        .events_dropped
                        .with_label_values(&["unserializable"])
                        .inc();
                    tracing::error!(error = %err, "event dropped: cannot serialize");
                }
            }
        }
        match &spool {
            None => {
                if publish_with_retry(&*queue, &records, &metrics, &cancel).await {
                    metrics
                        .events_published
                        .with_label_values(&[backend])
                        .inc_by(records.len() as u64);
                }
            }
            Some(spool) => {
                publish_or_spool(&*queue, &**spool, &records, &metrics, &queue_down).await
            }
        }
    }
    if let Some(f) = forwarder {
        let _ = f.await;
    }
}

/// One publish to a remote queue, bounded by `PUBLISH_TIMEOUT` (a timeout is a retryable
/// [`BackendError::Timeout`]).
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

/// Tries the queue once, for at most `PUBLISH_TIMEOUT` (3 s), unless it is known to be down; on a
/// retryable failure or a timeout the batch goes to the spool and the queue counts as down, so
/// the producer never stalls behind a dead or hung broker while the channel fills.
async fn publish_or_spool(
    queue: &dyn EventQueue,
    spool: &dyn EventQueue,
    records: &[Record],
    metrics: &Metrics,
    queue_down: &AtomicBool,
) {
    if !queue_down.load(Ordering::Acquire) {
        match publish_within(queue, records).await {
            Ok(()) => {
                metrics
                    .events_published
                    .with_label_values(&[queue.backend()])
                    .inc_by(records.len() as u64);
                return;
            }
            Err(e) if !e.is_retryable() => {
                metrics
                    .events_dropped
                    .with_label_values(&["queue_error"])
                    .inc_by(records.len() as u64);
                tracing::error!(backend = queue.backend(), error = %e, events = records.len(), "events dropped: the queue refused them");
                return;
            }
            Err(e) => {
                queue_down.store(true, Ordering::Release);
                tracing::warn!(backend = queue.backend(), error = %e, events = records.len(), "event queue unavailable; spooling to disk until it answers");
            }
        }
    }
    match spool.publish(records).await {
        Ok(()) => metrics.events_spooled.inc_by(records.len() as u64),
        Err(e) => {
            let reason = if is_queue_full(&e) {
                "spool_full"
            } else {
                "spool_error"
            };
            metrics
                .events_dropped
                .with_label_values(&[reason])
                .inc_by(records.len() as u64);
            tracing::error!(error = %e, events = records.len(), reason, "events dropped: neither the queue nor the spool took them");
        }
    }
}

/// Moves spooled records to the queue whenever it answers; runs until cancelled.
async fn forward_spool(
    spool: Arc<dyn EventQueue>,
    queue: Arc<dyn EventQueue>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    queue_down: Arc<AtomicBool>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        let got = tokio::select! {
            _ = cancel.cancelled() => return,
            r = spool.receive(BATCH, Duration::from_secs(1)) => r,
        };
        let deliveries = match got {
            Ok(d) if d.is_empty() => continue,
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event spool");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let records: Vec<Record> = deliveries.iter().map(|d| d.record.clone()).collect();
        let tokens: Vec<_> = deliveries.into_iter().map(|d| d.token).collect();
        match publish_within(queue.as_ref(), &records).await {
            Ok(()) => {
                metrics
                    .events_published
                    .with_label_values(&[queue.backend()])
                    .inc_by(records.len() as u64);
                if let Err(e) = spool.ack(&tokens).await {
                    tracing::warn!(error = %e, "spooled events forwarded but not removed; they may be sent twice");
                }
                if queue_down.swap(false, Ordering::AcqRel) {
                    tracing::info!(backend = queue.backend(), "event queue answers again");
                }
                delay = Duration::from_millis(200);
            }
            Err(e) => {
                let _ = spool.release(&tokens).await;
                tracing::debug!(error = %e, ?delay, "queue still unavailable; spool kept");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes until accepted. Retryable failures back off (the channel absorbs new events
/// meanwhile); a full queue or a fatal error drops the batch with a reason.
async fn publish_with_retry(
    queue: &dyn EventQueue,
    records: &[Record],
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        match queue.publish(records).await {
            Ok(()) => return true,
            Err(e) if e.is_retryable() && !(cancel.is_cancelled() && attempts >= 3) => {
                attempts += 1;
                tracing::warn!(backend = queue.backend(), error = %e, attempts, "event queue unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                let reason = if is_queue_full(&e) {
                    "queue_full"
                } else {
                    "queue_error"
                };
                metrics
                    .events_dropped
                    .with_label_values(&[reason])
                    .inc_by(records.len() as u64);
                tracing::error!(backend = queue.backend(), error = %e, events = records.len(), reason, "events dropped: the queue refused them");
                return false;
            }
        }
    }
}
