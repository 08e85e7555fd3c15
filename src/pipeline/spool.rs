//! The local disk spool of a remote queue: while Kafka or SQS is down, batches go here.
//!
//! When a publish to the remote queue fails or does not finish within `PUBLISH_TIMEOUT` (3 s),
//! the queue counts as down: that batch and the following ones go to the spool without trying
//! the queue (so a hung broker never stalls the producer while the channel fills), and a
//! forwarder moves them to the queue; its first success marks the queue up again.

use super::publish_within;
use crate::metrics::Metrics;
use backends::{EventQueue, Record};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Records moved from the spool to the queue per forward.
const BATCH: usize = 1000;

/// Tries the queue once, for at most `PUBLISH_TIMEOUT` (3 s), unless it is known to be down; on a
/// retryable failure or a timeout the batch goes to the spool and the queue counts as down, so
/// the producer never stalls behind a dead or hung broker while the channel fills.
pub(super) async fn publish_or_spool(
    queue: &dyn EventQueue,
    spool: &dyn EventQueue,
    records: &[Record],
    metrics: &Metrics,
    queue_down: &AtomicBool,
) -> Result<(), &'static str> {
    if !queue_down.load(Ordering::Acquire) {
        match publish_within(queue, records).await {
            Ok(()) => {
                metrics
                    .events_published
                    .with_label_values(&[queue.backend()])
                    .inc_by(records.len() as u64);
                return Ok(());
            }
            Err(e) if !e.is_retryable() => {
                metrics
                    .events_dropped
                    .with_label_values(&["queue_error"])
                    .inc_by(records.len() as u64);
                tracing::error!(backend = queue.backend(), error = %e, events = records.len(), "events dropped: the queue refused them");
                return Err("queue_error");
            }
            Err(e) => {
                queue_down.store(true, Ordering::Release);
                tracing::warn!(backend = queue.backend(), error = %e, events = records.len(), "event queue unavailable; spooling to disk until it answers");
            }
        }
    }
    match spool.publish(records).await {
        Ok(()) => {
            metrics.events_spooled.inc_by(records.len() as u64);
            Ok(())
        }
        Err(e) => {
            let reason = e.full_reason("spool_full").unwrap_or("spool_error");
            metrics
                .events_dropped
                .with_label_values(&[reason])
                .inc_by(records.len() as u64);
            tracing::error!(error = %e, events = records.len(), reason, "events dropped: neither the queue nor the spool took them");
            Err(reason)
        }
    }
}

/// Moves spooled records to the queue whenever it answers; runs until cancelled.
pub(super) async fn forward_spool(
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
