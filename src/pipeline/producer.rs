//! The event producer: requests hand events to a bounded in-process channel; one task batches
//! them into queue records and publishes them to the configured [`EventQueue`], retrying with
//! backoff while the queue is unavailable.
//!
//! Each request's events travel as one submission, encoded on the request's thread (so the
//! channel can be bounded by bytes as well as by count: `events.channel_capacity` events and
//! `events.channel_max_bytes` record bytes, whichever comes first). In durable mode
//! ([`AckMode::Durable`]) a submission carries a oneshot notifier that the producer resolves
//! once the batch holding it is durable, so every request waiting at the same time shares one
//! fsync / one publish (group commit); see [`super::ack`]. In fast mode nothing waits, and
//! under load the producer lingers `LINGER` (2 ms) for a fuller batch.
//!
//! When the queue is a remote backend (Kafka, SQS), batches that cannot be published go to the
//! local disk spool instead (see [`super::spool`]): spooled counts as durable.
//!
//! Nothing is dropped silently: a full channel, a full queue or an event that cannot be
//! serialized each have a reason label on `bucketd_events_dropped_total` and an ERROR log.

use super::ack::{Ack, AckMode, Notifier, Outcome};
use super::record;
use super::spool::{forward_spool, publish_or_spool};
use crate::core::UserEvent;
use crate::metrics::Metrics;
use backends::{EventQueue, Record};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most submissions (requests) gathered into one queue write.
const BATCH: usize = 1000;
/// How long the producer lets events gather before writing a batch that is not full (fast
/// mode only: in durable mode requests wait, and the batch is whatever gathered during the
/// previous write).
const LINGER: Duration = Duration::from_millis(2);
/// Durable mode: most scheduler yields the producer spends letting requests that are already
/// running hand in their events before it cuts a batch (it stops at the first yield that brought
/// nothing new), so requests still being parsed when the previous commit ended can join this
/// batch instead of waiting a whole further fsync. Its effect was below the noise of the shared
/// test machine's fsync latency (README, Performance).
const GATHER_YIELDS: usize = 8;
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What travels from a request to the producer: the request's events, encoded, and (durable
/// mode) the notifier the producer resolves once their batch is durable.
struct Submission {
    records: Vec<Record>,
    bytes: usize,
    done: Option<Notifier>,
}

/// How the channel between requests and the producer is bounded and acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct ChannelSettings {
    /// Events waiting for the producer (or being written) before new ones are refused.
    pub capacity: usize,
    /// Record bytes waiting for the producer (or being written) before new ones are refused.
    pub max_bytes: usize,
    pub ack: AckMode,
    /// Longest wait of a request for its events to be durable (durable mode).
    pub ack_timeout: Duration,
}

/// What is queued between requests and the queue: events and their record bytes.
struct Budget {
    events: AtomicUsize,
    bytes: AtomicUsize,
    max_events: usize,
    max_bytes: usize,
}

impl Budget {
    /// Reserves room for `events` events of `bytes` bytes, or says which bound is reached.
    fn take(&self, events: usize, bytes: usize) -> Result<(), &'static str> {
        let before = self.events.fetch_add(events, Ordering::AcqRel);
        if before + events > self.max_events {
            self.events.fetch_sub(events, Ordering::AcqRel);
            return Err("channel_full");
        }
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        // One submission larger than the whole bound is let through when nothing else waits,
        // so a bound set below one event's size cannot refuse everything.
        if before + bytes > self.max_bytes && before > 0 {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.events.fetch_sub(events, Ordering::AcqRel);
            return Err("channel_bytes_full");
        }
        Ok(())
    }

    fn give_back(&self, events: usize, bytes: usize) {
        self.events.fetch_sub(events, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The request side: hands events to the producer.
pub struct EventSender {
    tx: mpsc::UnboundedSender<Submission>,
    budget: Arc<Budget>,
    ack: AckMode,
    ack_timeout: Duration,
    metrics: Arc<Metrics>,
    last_log: AtomicU64,
    started: Instant,
}

impl EventSender {
    /// Queues one request's events for the producer. Await the returned [`Ack`] before
    /// answering: in durable mode it resolves once the events are durable (or says why they
    /// are not); in fast mode at once. A full channel drops them (counted, logged).
    pub fn send(&self, events: Vec<UserEvent>) -> Ack {
        let mut records = Vec::with_capacity(events.len());
        let mut unserializable = false;
        for event in &events {
            match record::encode(event) {
                Ok(r) => records.push(r),
                Err(err) => {
                    unserializable = true;
                    self.dropped("unserializable", 1);
                    tracing::error!(error = %err, "event dropped: cannot serialize");
                }
            }
        }
        if records.is_empty() {
            return self.refused(if unserializable { "unserializable" } else { "" });
        }
        let count = records.len();
        let bytes: usize = records.iter().map(|r| r.key.len() + r.value.len()).sum();
        if let Err(reason) = self.budget.take(count, bytes) {
            self.dropped(reason, count);
            return self.refused(reason);
        }
        let (done, rx) = match self.ack {
            AckMode::Durable => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            AckMode::Fast => (None, None),
        };
        let submission = Submission {
            records,
            bytes,
            done,
        };
        if self.tx.send(submission).is_err() {
            self.budget.give_back(count, bytes);
            self.dropped("shutting_down", count);
            return self.refused("shutting_down");
        }
        self.metrics.events_enqueued.inc_by(count as u64);
        match rx {
            Some(rx) if !unserializable => Ack::waiting(rx, self.ack_timeout),
            _ if unserializable => self.refused("unserializable"),
            _ => Ack::settled(),
        }
    }

    /// The ack of events that never reached the channel (`""`: there were none).
    fn refused(&self, reason: &'static str) -> Ack {
        match self.ack {
            AckMode::Durable if !reason.is_empty() => Ack::refused(reason),
            _ => Ack::settled(),
        }
    }

    fn dropped(&self, reason: &'static str, count: usize) {
        self.metrics
            .events_dropped
            .with_label_values(&[reason])
            .inc_by(count as u64);
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
    channel: ChannelSettings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> (Arc<EventSender>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Budget {
        events: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        max_events: channel.capacity.max(1),
        max_bytes: channel.max_bytes.max(1),
    });
    let sender = Arc::new(EventSender {
        tx,
        budget: budget.clone(),
        ack: channel.ack,
        ack_timeout: channel.ack_timeout,
        metrics: metrics.clone(),
        last_log: AtomicU64::new(0),
        started: Instant::now(),
    });
    let linger = channel.ack == AckMode::Fast;
    (
        sender,
        run(queue, spool, rx, budget, linger, metrics, cancel),
    )
}

async fn run(
    queue: Arc<dyn EventQueue>,
    spool: Option<Arc<dyn EventQueue>>,
    mut rx: mpsc::UnboundedReceiver<Submission>,
    budget: Arc<Budget>,
    linger: bool,
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
        // Fast mode under load: wait a moment for more, for fewer, larger queue writes (each one
        // an fsync for the disk queue). Durable mode needs no linger: what arrives while one
        // batch is written forms the next (group commit). Shutdown skips it.
        if linger && buf.len() < BATCH && !cancel.is_cancelled() {
            tokio::time::sleep(LINGER).await;
            drain_ready(&mut rx, &mut buf);
        } else if !linger {
            for _ in 0..GATHER_YIELDS {
                if buf.len() >= BATCH || cancel.is_cancelled() {
                    break;
                }
                tokio::task::yield_now().await;
                if drain_ready(&mut rx, &mut buf) == 0 {
                    break;
                }
            }
        }
        let mut records = Vec::new();
        let mut notifiers = Vec::new();
        let mut bytes = 0;
        for s in buf.drain(..) {
            records.extend(s.records);
            bytes += s.bytes;
            notifiers.extend(s.done);
        }
        let count = records.len();
        let outcome: Outcome = match &spool {
            None => {
                let r = publish_with_retry(&*queue, &records, &metrics, &cancel).await;
                if r.is_ok() {
                    metrics
                        .events_published
                        .with_label_values(&[backend])
                        .inc_by(count as u64);
                }
                r
            }
            Some(spool) => {
                publish_or_spool(&*queue, &**spool, &records, &metrics, &queue_down).await
            }
        };
        budget.give_back(count, bytes);
        for n in notifiers {
            // The request may have timed out and gone: nothing to tell.
            let _ = n.send(outcome);
        }
    }
    if let Some(f) = forwarder {
        let _ = f.await;
    }
}

/// Moves what is already in the channel into `buf` (up to [`BATCH`]); how many were moved.
fn drain_ready(rx: &mut mpsc::UnboundedReceiver<Submission>, buf: &mut Vec<Submission>) -> usize {
    let before = buf.len();
    while buf.len() < BATCH {
        match rx.try_recv() {
            Ok(e) => buf.push(e),
            Err(_) => break,
        }
    }
    buf.len() - before
}

/// Publishes until accepted. Retryable failures back off (the channel absorbs new events
/// meanwhile); a full queue or a fatal error drops the batch with a reason.
async fn publish_with_retry(
    queue: &dyn EventQueue,
    records: &[Record],
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Outcome {
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        match queue.publish(records).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && !(cancel.is_cancelled() && attempts >= 3) => {
                attempts += 1;
                tracing::warn!(backend = queue.backend(), error = %e, attempts, "event queue unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                let reason = e.full_reason("queue_full").unwrap_or("queue_error");
                metrics
                    .events_dropped
                    .with_label_values(&[reason])
                    .inc_by(records.len() as u64);
                tracing::error!(backend = queue.backend(), error = %e, events = records.len(), reason, "events dropped: the queue refused them");
                return Err(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::{
        DecisionMetadata, EventContext, EventKind, ImpressionDecision, UserEvent,
    };
    use backends::{BackendError, Delivery};
    use tokio::sync::Notify;

    /// A queue whose publishes wait until the test lets them through.
    struct Stalled {
        open: Notify,
    }

    #[async_trait::async_trait]
    impl EventQueue for Stalled {
        fn backend(&self) -> &'static str {
            "stalled"
        }
        async fn publish(&self, _records: &[Record]) -> Result<(), BackendError> {
            self.open.notified().await;
            Ok(())
        }
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, BackendError> {
            Ok(Vec::new())
        }
        async fn ack(&self, _: &[backends::queue::AckToken]) -> Result<(), BackendError> {
            Ok(())
        }
        async fn release(&self, _: &[backends::queue::AckToken]) -> Result<(), BackendError> {
            Ok(())
        }
        async fn depth(&self) -> Result<Option<u64>, BackendError> {
            Ok(None)
        }
        async fn health(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn event(visitor: &str, padding: usize) -> UserEvent {
        UserEvent {
            context: Arc::new(EventContext {
                account_id: "1".into(),
                project_id: "2".into(),
                revision: "3".into(),
                anonymize_ip: true,
                region: "US".into(),
            }),
            visitor_id: visitor.into(),
            attributes: vec![],
            uuid: "x".repeat(padding),
            timestamp: 7,
            event: EventKind::Impression(ImpressionDecision {
                campaign_id: "10".into(),
                experiment_id: "11".into(),
                variation_id: Some("12".into()),
                metadata: DecisionMetadata {
                    flag_key: "".into(),
                    rule_key: "e".into(),
                    rule_type: "experiment".into(),
                    variation_key: "v".into(),
                    enabled: true,
                    cmab_uuid: None,
                },
            }),
        }
    }

    #[tokio::test]
    async fn the_channel_is_bounded_by_bytes_and_the_drops_are_counted() {
        let queue = Arc::new(Stalled {
            open: Notify::new(),
        });
        let metrics = Arc::new(Metrics::new());
        let cancel = CancellationToken::new();
        let (sender, run) = producer(
            queue.clone(),
            None,
            ChannelSettings {
                capacity: 1000,
                max_bytes: 10_000,
                ack: AckMode::Durable,
                ack_timeout: Duration::from_secs(5),
            },
            metrics.clone(),
            cancel.clone(),
        );
        let running = tokio::spawn(run);
        // 4 KiB events: two fit under 10 000 bytes, the third does not (count is far from
        // its bound).
        let first = sender.send(vec![event("a", 4096)]);
        let second = sender.send(vec![event("b", 4096)]);
        let third = sender.send(vec![event("c", 4096)]);
        assert_eq!(
            third.wait().await,
            Err(super::super::NotRecorded::Dropped("channel_bytes_full"))
        );
        let dropped = metrics
            .events_dropped
            .with_label_values(&["channel_bytes_full"])
            .get();
        assert_eq!(dropped, 1);
        // Let the stalled publishes through: the admitted ones are durable.
        let opener = tokio::spawn({
            let queue = queue.clone();
            async move {
                loop {
                    queue.open.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        assert_eq!(first.wait().await, Ok(()));
        assert_eq!(second.wait().await, Ok(()));
        cancel.cancel();
        running.await.unwrap();
        opener.abort();
    }
}
