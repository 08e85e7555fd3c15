//! The [`KafkaQueue`]: the producer, the lazily created group consumer, topic creation, and
//! the [`EventQueue`] implementation over the member's [`Tracker`].

use super::config::KafkaConfig;
use super::context::{LogContext, TrackingContext};
use super::error::{classify, kafka_err};
use super::state::{lock, Pending, Tracker};
use super::{BACKEND, REASON_HEADER};
use crate::queue::{AckToken, Delivery, EventQueue, Record};
use crate::BackendError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OnceCell};

/// Deadline of one metadata, watermark, offset or admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a created topic may take to show up in metadata.
const TOPIC_VISIBLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The Kafka-backed queue.
pub struct KafkaQueue {
    config: KafkaConfig,
    producer: FutureProducer<LogContext>,
    /// Created by the first `receive`.
    consumer: OnceCell<Arc<StreamConsumer<TrackingContext>>>,
    /// A consumer that never subscribes, for `depth` (committed offsets, watermarks).
    probe: OnceCell<Arc<BaseConsumer<LogContext>>>,
    tracker: Arc<Mutex<Tracker>>,
    /// Woken by `release`, so a waiting `receive` hands the released records out.
    released: Notify,
    /// Commits go out one at a time, in the order their positions were computed, so a slow
    /// commit can never land after (and undo) a later one.
    commit_order: tokio::sync::Mutex<()>,
}

impl KafkaQueue {
    /// Produces `records` to `topic` (with a `bucketd-reason` header when given) and waits
    /// until every one is acknowledged by all in-sync replicas.
    async fn produce(
        &self,
        topic: &str,
        records: &[Record],
        reason: Option<&str>,
    ) -> Result<(), BackendError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for r in records {
            let mut rec = FutureRecord::to(topic)
                .key(r.key.as_str())
                .payload(r.value.as_slice());
            if let Some(reason) = reason {
                rec = rec.headers(OwnedHeaders::new().insert(Header {
                    key: REASON_HEADER,
                    value: Some(reason),
                }));
            }
            loop {
                match self.producer.send_result(rec) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's local queue is full: let deliveries drain it.
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => return Err(kafka_err(e)),
                }
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(kafka_err(e)),
                Err(_) => return Err(BackendError::unavailable(BACKEND, "producer closed")),
            }
        }
        Ok(())
    }

    /// Builds the producer, creates the topic when `config.create` (an existing topic is fine)
    /// and checks that the topic exists.
    pub async fn connect(config: &KafkaConfig) -> Result<Self, BackendError> {
        if config.partitions < 1 {
            return Err(BackendError::fatal(
                BACKEND,
                "partitions must be at least 1",
            ));
        }
        let producer: FutureProducer<LogContext> = config
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "lz4"),
                ("linger.ms", "5"),
                // Bounds how long a publish may wait for a broker before it reports failure.
                ("message.timeout.ms", "30000"),
            ])
            .create_with_context(LogContext)
            .map_err(|e| BackendError::fatal(BACKEND, format!("producer config: {e}")))?;

        let topics = std::iter::once(&config.topic).chain(&config.dead_letter_topic);
        if config.create {
            for topic in topics.clone() {
                create_topic(config, topic).await?;
            }
        }
        let mut partitions = 0;
        for topic in topics {
            partitions = partitions.max(wait_for_topic(config, topic, producer.clone()).await?);
        }
        tracing::info!(backend = BACKEND, topic = %config.topic, partitions, "kafka queue connected");

        Ok(Self {
            config: config.clone(),
            producer,
            consumer: OnceCell::new(),
            probe: OnceCell::new(),
            tracker: Arc::default(),
            released: Notify::new(),
            commit_order: tokio::sync::Mutex::new(()),
        })
    }

    async fn consumer(&self) -> Result<&Arc<StreamConsumer<TrackingContext>>, BackendError> {
        self.consumer
            .get_or_try_init(|| async {
                let ctx = TrackingContext {
                    topic: self.config.topic.clone(),
                    tracker: Arc::clone(&self.tracker),
                };
                let consumer: StreamConsumer<TrackingContext> = self
                    .config
                    .client_config(&[
                        ("group.id", &self.config.group_id),
                        ("enable.auto.commit", "false"),
                        ("enable.auto.offset.store", "false"),
                        ("auto.offset.reset", "earliest"),
                    ])
                    .create_with_context(ctx)
                    .map_err(|e| BackendError::fatal(BACKEND, format!("consumer config: {e}")))?;
                consumer
                    .subscribe(&[&self.config.topic])
                    .map_err(kafka_err)?;
                tracing::info!(
                    backend = BACKEND,
                    group = %self.config.group_id,
                    topic = %self.config.topic,
                    "kafka consumer joining its group"
                );
                Ok(Arc::new(consumer))
            })
            .await
    }

    async fn probe(&self) -> Result<Arc<BaseConsumer<LogContext>>, BackendError> {
        self.probe
            .get_or_try_init(|| async {
                let c: BaseConsumer<LogContext> = self
                    .config
                    .client_config(&[
                        ("group.id", &self.config.group_id),
                        ("enable.auto.commit", "false"),
                    ])
                    .create_with_context(LogContext)
                    .map_err(|e| BackendError::fatal(BACKEND, format!("consumer config: {e}")))?;
                Ok(Arc::new(c))
            })
            .await
            .cloned()
    }

    /// Takes released records still unacked, up to `max`.
    fn take_redeliveries(&self, max: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut t = lock(&self.tracker);
        while out.len() < max {
            let Some((p, off)) = t.redeliver.pop_front() else {
                break;
            };
            let pending = t
                .partitions
                .get_mut(&p)
                .and_then(|track| track.pending.get_mut(&off));
            if let Some(pending) = pending {
                pending.released = false;
                if let Some(record) = &pending.record {
                    out.push(Delivery {
                        record: record.clone(),
                        token: token(p, off),
                    });
                }
            }
        }
        out
    }

    /// Commits every partition whose acked prefix moved past its committed offset.
    async fn commit_acked(&self) -> Result<(), BackendError> {
        let Some(consumer) = self.consumer.get() else {
            return Ok(());
        };
        let _order = self.commit_order.lock().await;
        let mut tpl = TopicPartitionList::new();
        let mut positions = Vec::new();
        {
            let t = lock(&self.tracker);
            for (&p, track) in &t.partitions {
                if let Some(off) = track.ack_through.filter(|&o| Some(o) > track.committed) {
                    tpl.add_partition_offset(&self.config.topic, p, Offset::Offset(off))
                        .map_err(kafka_err)?;
                    positions.push((p, off));
                }
            }
        }
        if positions.is_empty() {
            return Ok(());
        }
        let consumer = Arc::clone(consumer);
        blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await?
            .map_err(kafka_err)?;
        let mut t = lock(&self.tracker);
        for (p, off) in positions {
            if let Some(track) = t.partitions.get_mut(&p) {
                track.committed = Some(off);
            }
        }
        Ok(())
    }
}

impl Drop for KafkaQueue {
    fn drop(&mut self) {
        // Closing a group consumer leaves the group, a blocking round trip: not on a runtime
        // thread.
        let consumer = self.consumer.take();
        let probe = self.probe.take();
        if consumer.is_none() && probe.is_none() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || drop((consumer, probe)));
            }
            Err(_) => drop((consumer, probe)),
        }
    }
}

async fn create_topic(config: &KafkaConfig, topic: &str) -> Result<(), BackendError> {
    let admin: AdminClient<LogContext> = config
        .client_config(&[])
        .create_with_context(LogContext)
        .map_err(|e| BackendError::fatal(BACKEND, format!("admin client config: {e}")))?;
    let topic = NewTopic::new(
        topic,
        config.partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let result =
        tokio::time::timeout(REQUEST_TIMEOUT * 2, admin.create_topics([&topic], &opts)).await;
    // The admin client joins its thread when dropped.
    tokio::task::spawn_blocking(move || drop(admin));
    let results = result
        .map_err(|_| BackendError::Timeout {
            backend: BACKEND,
            millis: (REQUEST_TIMEOUT * 2).as_millis() as u64,
        })?
        .map_err(kafka_err)?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(backend = BACKEND, topic = %name, "kafka topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(classify(
                    code,
                    format!("cannot create topic {name}: {code}"),
                ));
            }
        }
    }
    Ok(())
}

/// Waits until the topic shows up in metadata with partitions; returns how many.
async fn wait_for_topic(
    config: &KafkaConfig,
    topic: &str,
    producer: FutureProducer<LogContext>,
) -> Result<usize, BackendError> {
    let topic = topic.to_owned();
    let create = config.create;
    blocking(move || {
        use rdkafka::producer::Producer;
        let deadline = std::time::Instant::now() + TOPIC_VISIBLE_TIMEOUT;
        loop {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(kafka_err)?;
            let t = md.topics().iter().find(|t| t.name() == topic);
            let error = t.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
            let partitions = t.map_or(0, |t| t.partitions().len());
            match error {
                None if partitions > 0 => return Ok(partitions),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) | None if !create => {
                    return Err(BackendError::fatal(
                        BACKEND,
                        format!("topic {topic} does not exist (and create = false)"),
                    ));
                }
                Some(code) if !create => {
                    return Err(classify(code, format!("topic {topic}: {code}")));
                }
                _ if std::time::Instant::now() >= deadline => {
                    return Err(BackendError::unavailable(
                        BACKEND,
                        format!("topic {topic} not visible in metadata after creation ({error:?})"),
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
    .await?
}

/// Runs a blocking librdkafka call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::fatal(BACKEND, format!("blocking task failed: {e}")))
}

fn token(partition: i32, offset: i64) -> AckToken {
    AckToken::Kafka { partition, offset }
}

fn parse_token(t: &AckToken) -> Result<(i32, i64), BackendError> {
    match *t {
        AckToken::Kafka { partition, offset } => Ok((partition, offset)),
        _ => Err(t.foreign(BACKEND)),
    }
}

#[async_trait::async_trait]
impl EventQueue for KafkaQueue {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn publish(&self, records: &[Record]) -> Result<(), BackendError> {
        self.produce(&self.config.topic, records, None).await
    }

    fn has_dead_letter(&self) -> bool {
        self.config.dead_letter_topic.is_some()
    }

    async fn dead_letter(&self, records: &[Record], reason: &str) -> Result<(), BackendError> {
        let Some(topic) = &self.config.dead_letter_topic else {
            return Err(BackendError::fatal(
                BACKEND,
                "no dead_letter_topic configured",
            ));
        };
        self.produce(topic, records, Some(reason)).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let consumer = Arc::clone(self.consumer().await?);
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            out.extend(self.take_redeliveries(max - out.len()));
            if out.len() >= max {
                return Ok(out);
            }
            // Wait for the first record only; after that take what is already fetched.
            let until = if out.is_empty() {
                deadline
            } else {
                tokio::time::Instant::now()
            };
            let msg = tokio::select! {
                m = tokio::time::timeout_at(until, consumer.recv()) => m,
                () = &mut released, if out.is_empty() => continue,
            };
            let msg = match msg {
                Err(_elapsed) => return Ok(out),
                Ok(Err(e)) if out.is_empty() => return Err(kafka_err(e)),
                Ok(Err(e)) => {
                    tracing::warn!(backend = BACKEND, error = %e, "kafka receive error");
                    return Ok(out);
                }
                Ok(Ok(m)) => m,
            };
            let (p, off) = (msg.partition(), msg.offset());
            let record = Record {
                key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
                value: msg.payload().unwrap_or_default().to_vec(),
            };
            drop(msg);
            {
                let mut t = lock(&self.tracker);
                // The assignment callback registers a partition before any of its records is
                // fetched. A record of a partition revoked meanwhile (another task's receive
                // ran the rebalance) belongs to the new owner: tracking it here could commit
                // over that owner's offsets, so it is dropped and the owner delivers it.
                let Some(track) = t.partitions.get_mut(&p) else {
                    tracing::debug!(
                        backend = BACKEND,
                        partition = p,
                        "record of a revoked partition dropped"
                    );
                    continue;
                };
                track.pending.insert(
                    off,
                    Pending {
                        record: Some(record.clone()),
                        released: false,
                    },
                );
            }
            out.push(Delivery {
                record,
                token: token(p, off),
            });
        }
    }

    async fn ack(&self, tokens: &[AckToken]) -> Result<(), BackendError> {
        let parsed = tokens
            .iter()
            .map(parse_token)
            .collect::<Result<Vec<_>, _>>()?;
        {
            let mut t = lock(&self.tracker);
            for (p, off) in parsed {
                // Unknown: the partition was revoked (the record goes to its new owner) or the
                // ack is a repeat.
                if let Some(track) = t.partitions.get_mut(&p) {
                    if let Some(pending) = track.pending.get_mut(&off) {
                        pending.record = None;
                    }
                    track.advance();
                }
            }
        }
        self.commit_acked().await
    }

    async fn release(&self, tokens: &[AckToken]) -> Result<(), BackendError> {
        let parsed = tokens
            .iter()
            .map(parse_token)
            .collect::<Result<Vec<_>, _>>()?;
        {
            let mut t = lock(&self.tracker);
            let mut again = Vec::new();
            for (p, off) in parsed {
                let pending = t
                    .partitions
                    .get_mut(&p)
                    .and_then(|track| track.pending.get_mut(&off));
                if let Some(pending) = pending {
                    if pending.record.is_some() && !pending.released {
                        pending.released = true;
                        again.push((p, off));
                    }
                }
            }
            t.redeliver.extend(again);
        }
        self.released.notify_waiters();
        Ok(())
    }

    /// Records not yet committed by the group: the sum over partitions of high watermark minus
    /// committed offset (or minus the low watermark where the group has committed nothing).
    /// Brokers whose high watermark counts record batches instead of records (tansu 0.6)
    /// make this a count of batches.
    async fn depth(&self) -> Result<Option<u64>, BackendError> {
        let probe = self.probe().await?;
        let topic = self.config.topic.clone();
        blocking(move || {
            let md = probe
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(kafka_err)?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Ok(None);
            };
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition(&topic, p.id());
            }
            let committed = probe
                .committed_offsets(tpl, REQUEST_TIMEOUT)
                .map_err(kafka_err)?;
            let mut depth = 0u64;
            for elem in committed.elements_for_topic(&topic) {
                let (low, high) = probe
                    .fetch_watermarks(&topic, elem.partition(), REQUEST_TIMEOUT)
                    .map_err(kafka_err)?;
                let from = match elem.offset() {
                    Offset::Offset(o) => o.max(low),
                    _ => low,
                };
                depth += u64::try_from(high - from).unwrap_or(0);
            }
            Ok(Some(depth))
        })
        .await?
    }

    async fn health(&self) -> Result<(), BackendError> {
        let producer = self.producer.clone();
        let topic = self.config.topic.clone();
        blocking(move || {
            use rdkafka::producer::Producer;
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(kafka_err)?;
            match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                Some(t) => Err(BackendError::unavailable(
                    BACKEND,
                    format!("topic {topic}: {:?}", t.error().map(RDKafkaErrorCode::from)),
                )),
                None => Err(BackendError::unavailable(
                    BACKEND,
                    format!("topic {topic} not in metadata"),
                )),
            }
        })
        .await?
    }
}
