//! The event producer: requests hand events to a bounded in-process channel (never waiting);
//! one task batches them into queue records and publishes them to the configured
//! [`EventQueue`], retrying with backoff while the queue is unavailable.
//!
//! When the queue is a remote backend (Kafka, SQS), batches that cannot be published go to the
//! local disk spool instead (see [`super::spool`]). Under load the producer waits `LINGER`
//! (2 ms) for a fuller batch.
//!
//! Nothing is dropped silently: a full channel, a full queue or an event that cannot be
//! serialized each have a reason label on `bucketd_events_dropped_total` and an ERROR log.

use super::record;
use super::spool::{forward_spool, publish_or_spool};
use crate::core::UserEvent;
use crate::metrics::Metrics;
use backends::{EventQueue, Record};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BATCH: usize = 1000;
/// How long the producer lets events gather before writing a batch that is not full.
const LINGER: Duration = Duration::from_millis(2);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What travels from a request to the producer: one event, and (when durable acknowledgement
/// comes) the optional notifier the producer resolves once the event's batch is fsynced or
/// acknowledged by the broker — acknowledgement as a value, as vector's finalizers are.
struct Submission {
    event: UserEvent,
}

/// The request side: hands events to the producer without waiting.
pub struct EventSender {
    tx: mpsc::Sender<Submission>,
    metrics: Arc<Metrics>,
    last_log: AtomicU64,
    started: Instant,
}

impl EventSender {
    /// Queues events for the producer; a full channel drops them (counted, logged).
    pub fn send(&self, events: Vec<UserEvent>) {
        for event in events {
            match self.tx.try_send(Submission { event }) {
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

/// Creates the sender and the producer loop (to be spawned); the loop ends once the channel is
/// closed by `cancel` and everything queued has been published, spooled, or dropped with a
/// reason. `spool` is the local disk spool for remote queues.
pub fn producer(
    queue: Arc<dyn EventQueue>,
    spool: Option<Arc<dyn EventQueue>>,
    capacity: usize,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> (Arc<EventSender>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(capacity);
    let sender = Arc::new(EventSender {
        tx,
        metrics: metrics.clone(),
        last_log: AtomicU64::new(0),
        started: Instant::now(),
    });
    (sender, run(queue, spool, rx, metrics, cancel))
}

async fn run(
    queue: Arc<dyn EventQueue>,
    spool: Option<Arc<dyn EventQueue>>,
    mut rx: mpsc::Receiver<Submission>,
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
        for Submission { event } in buf.drain(..) {
            match record::encode(&event) {
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
                let reason = if e.is_full() {
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
