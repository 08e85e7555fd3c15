//! The [`SqsQueue`]: connecting, the batch calls (send, delete, change visibility) and the
//! [`EventQueue`] implementation over the received-message [`State`].

use super::body::{pack, unpack, MAX_BODY_BYTES};
use super::config::{SqsConfig, DEFAULT_WAIT};
use super::error::sdk_err;
use super::state::{Message, Resolution, Slot, State};
use super::{BACKEND, REASON_ATTRIBUTE};
use crate::queue::{AckToken, Delivery, EventQueue, Record};
use crate::BackendError;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// SQS limit on the entries of one batch call, and on the messages one receive returns.
const MAX_BATCH_ENTRIES: usize = 10;
/// Tries of one batch call's failed entries (the SDK already retries whole requests).
const ENTRY_ATTEMPTS: u32 = 3;
/// Bound on opening a connection to SQS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one SQS request beyond its long-poll wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// SQS limit on the visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// The SQS-backed queue.
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letter_url: Option<String>,
    visibility_secs: i32,
    max_wait: Duration,
    state: Mutex<State>,
}

/// The URL of the queue named `name`, creating it when `create`.
async fn queue_url_of(
    client: &Client,
    name: &str,
    create: bool,
    visibility_secs: i32,
) -> Result<String, BackendError> {
    if create {
        return create_queue(client, name, visibility_secs).await;
    }
    match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => Ok(out.queue_url().map(str::to_owned).unwrap_or_default()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_queue_does_not_exist()) =>
        {
            Err(BackendError::fatal(
                BACKEND,
                format!("queue {name} does not exist (and create = false)"),
            ))
        }
        Err(e) => Err(sdk_err("GetQueueUrl", e)),
    }
}

impl SqsQueue {
    /// Connects with the standard AWS configuration chain and `config.region`.
    pub async fn connect(config: &SqsConfig) -> Result<Self, BackendError> {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .load()
            .await;
        Self::connect_with(config, &sdk).await
    }

    /// Connects with a ready AWS configuration (tests pass static credentials this way);
    /// `config.endpoint_url` still applies.
    pub async fn connect_with(
        config: &SqsConfig,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, BackendError> {
        if config.wait > DEFAULT_WAIT {
            return Err(BackendError::fatal(BACKEND, "wait must be at most 20s"));
        }
        if config.visibility_timeout > MAX_VISIBILITY {
            return Err(BackendError::fatal(
                BACKEND,
                "visibility_timeout must be at most 12h",
            ));
        }
        let visibility_secs = i32::try_from(config.visibility_timeout.as_secs())
            .map_err(|_| BackendError::fatal(BACKEND, "visibility_timeout too large"))?;
        // Without a bound, a request to an endpoint that stopped answering (a dropped network
        // path) would wait forever; a long poll may take `wait`, so attempts get that and more.
        let timeouts = aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(config.wait + REQUEST_TIMEOUT)
            .build();
        let mut builder = aws_sdk_sqs::config::Builder::from(sdk).timeout_config(timeouts);
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let client = Client::from_conf(builder.build());

        let queue_url = match (&config.queue_url, &config.queue_name) {
            (Some(url), _) => url.clone(),
            (None, Some(name)) => {
                queue_url_of(&client, name, config.create, visibility_secs).await?
            }
            (None, None) => {
                return Err(BackendError::fatal(BACKEND, "set queue_name or queue_url"));
            }
        };
        let dead_letter_url = match &config.dead_letter_queue {
            Some(q) if q.starts_with("https://") || q.starts_with("http://") => Some(q.clone()),
            Some(name) => Some(queue_url_of(&client, name, config.create, visibility_secs).await?),
            None => None,
        };
        if queue_url.is_empty() {
            return Err(BackendError::fatal(BACKEND, "SQS returned no queue URL"));
        }
        let queue = Self {
            client,
            queue_url,
            dead_letter_url,
            visibility_secs,
            max_wait: config.wait,
            state: Mutex::default(),
        };
        queue.health().await?;
        tracing::info!(backend = BACKEND, queue_url = %queue.queue_url, "sqs queue connected");
        Ok(queue)
    }

    /// The URL of the queue in use.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every method leaves the state consistent between statements; a panic elsewhere at
        // worst makes a message be delivered twice.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends packed bodies, at most 10 and 256 KiB per call.
    async fn send_bodies(
        &self,
        queue_url: &str,
        bodies: Vec<String>,
        reason: Option<&str>,
    ) -> Result<(), BackendError> {
        let mut call: Vec<String> = Vec::new();
        let mut call_bytes = 0;
        for body in bodies {
            if !call.is_empty()
                && (call.len() == MAX_BATCH_ENTRIES || call_bytes + body.len() > MAX_BODY_BYTES)
            {
                self.send_batch(queue_url, std::mem::take(&mut call), reason)
                    .await?;
                call_bytes = 0;
            }
            call_bytes += body.len();
            call.push(body);
        }
        if !call.is_empty() {
            self.send_batch(queue_url, call, reason).await?;
        }
        Ok(())
    }

    /// One `SendMessageBatch`, retrying the entries that failed on the server's side.
    async fn send_batch(
        &self,
        queue_url: &str,
        bodies: Vec<String>,
        reason: Option<&str>,
    ) -> Result<(), BackendError> {
        let reason = reason
            .map(|r| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(r)
                    .build()
            })
            .transpose()
            .map_err(|e| BackendError::fatal(BACKEND, e))?;
        let mut pending: Vec<(String, String)> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, b)| (i.to_string(), b))
            .collect();
        for attempt in 1..=ENTRY_ATTEMPTS {
            let entries = pending
                .iter()
                .map(|(id, body)| {
                    let entry = SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(body);
                    match &reason {
                        Some(r) => entry.message_attributes(REASON_ATTRIBUTE, r.clone()),
                        None => entry,
                    }
                    .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BackendError::fatal(BACKEND, e))?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_err("SendMessageBatch", e))?;
            let failed = out.failed();
            if failed.is_empty() {
                return Ok(());
            }
            if let Some(f) = failed.iter().find(|f| f.sender_fault()) {
                return Err(BackendError::fatal(
                    BACKEND,
                    format!(
                        "SendMessageBatch refused a message: {} {}",
                        f.code(),
                        f.message().unwrap_or("")
                    ),
                ));
            }
            tracing::warn!(
                backend = BACKEND,
                failed = failed.len(),
                attempt,
                "SendMessageBatch entries failed"
            );
            if attempt == ENTRY_ATTEMPTS {
                let f = &failed[0];
                return Err(BackendError::unavailable(
                    BACKEND,
                    format!(
                        "SendMessageBatch: {} entries failed: {} {}",
                        failed.len(),
                        f.code(),
                        f.message().unwrap_or("")
                    ),
                ));
            }
            let failed_ids: Vec<&str> = failed.iter().map(|f| f.id()).collect();
            pending.retain(|(id, _)| failed_ids.contains(&id.as_str()));
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        Ok(())
    }

    /// `DeleteMessageBatch` over any number of receipts, retrying failed entries. A receipt
    /// SQS calls invalid (the message was received again elsewhere) is only logged: the message
    /// is someone else's now.
    async fn delete(&self, receipts: Vec<String>) -> Result<(), BackendError> {
        for chunk in receipts.chunks(MAX_BATCH_ENTRIES) {
            let mut pending: Vec<(String, &String)> = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| (i.to_string(), r))
                .collect();
            for attempt in 1..=ENTRY_ATTEMPTS {
                let entries = pending
                    .iter()
                    .map(|(id, r)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(id)
                            .receipt_handle(*r)
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| BackendError::fatal(BACKEND, e))?;
                let out = self
                    .client
                    .delete_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sdk_err("DeleteMessageBatch", e))?;
                let retry: Vec<&str> = out
                    .failed()
                    .iter()
                    .filter(|f| {
                        if f.sender_fault() {
                            tracing::warn!(
                                backend = BACKEND,
                                code = f.code(),
                                "message not deleted"
                            );
                        }
                        !f.sender_fault()
                    })
                    .map(|f| f.id())
                    .collect();
                if retry.is_empty() {
                    break;
                }
                if attempt == ENTRY_ATTEMPTS {
                    return Err(BackendError::unavailable(
                        BACKEND,
                        format!("DeleteMessageBatch: {} entries failed", retry.len()),
                    ));
                }
                pending.retain(|(id, _)| retry.contains(&id.as_str()));
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
        Ok(())
    }

    /// Makes messages visible again at once.
    async fn reappear(&self, receipts: Vec<String>) -> Result<(), BackendError> {
        self.set_visibility(receipts, 0).await
    }

    /// Sets the visibility timeout of received messages to `secs` from now.
    async fn set_visibility(&self, receipts: Vec<String>, secs: i32) -> Result<(), BackendError> {
        for chunk in receipts.chunks(MAX_BATCH_ENTRIES) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(secs)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BackendError::fatal(BACKEND, e))?;
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_err("ChangeMessageVisibilityBatch", e))?;
            if !out.failed().is_empty() {
                // Made visible: they come back after the visibility timeout instead. Extended:
                // another receiver may get them (delivered twice, never lost).
                tracing::warn!(
                    backend = BACKEND,
                    failed = out.failed().len(),
                    visibility_secs = secs,
                    "message visibility not changed"
                );
            }
        }
        Ok(())
    }

    /// Carries out what `ack` / `release` settled. Every resolution is attempted; the first
    /// error is returned.
    async fn resolve(&self, resolutions: Vec<Resolution>) -> Result<(), BackendError> {
        let mut delete = Vec::new();
        let mut reappear = Vec::new();
        let mut first_err = None;
        for r in resolutions {
            match r {
                Resolution::Delete { receipt } => delete.push(receipt),
                Resolution::Reappear { receipt } => reappear.push(receipt),
                Resolution::Resend { receipt, records } => match pack(&records) {
                    Ok(bodies) => match self.send_bodies(&self.queue_url, bodies, None).await {
                        Ok(()) => delete.push(receipt),
                        // The old message comes back after the visibility timeout, acked
                        // records included: a duplicate, never a loss.
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    },
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                },
            }
        }
        if let Err(e) = self.reappear(reappear).await {
            first_err.get_or_insert(e);
        }
        if let Err(e) = self.delete(delete).await {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Hands out buffered records, up to `max`.
    fn take_buffered(&self, max: usize) -> Vec<Delivery> {
        let mut st = self.state();
        let mut out = Vec::new();
        while out.len() < max {
            let Some((id, idx)) = st.buffered.pop_front() else {
                break;
            };
            let Some(msg) = st.messages.get_mut(&id) else {
                continue;
            };
            let Some((record, slot)) = msg.records.get_mut(idx) else {
                continue;
            };
            *slot = Slot::Out;
            out.push(Delivery {
                record: record.clone(),
                token: token(id, idx),
            });
        }
        out
    }
}

async fn create_queue(
    client: &Client,
    name: &str,
    visibility_secs: i32,
) -> Result<String, BackendError> {
    let created = client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .send()
        .await;
    match created {
        Ok(out) => Ok(out.queue_url().map(str::to_owned).unwrap_or_default()),
        // It exists with other attributes: use it as it is (receive sets its own visibility).
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_queue_name_exists()) =>
        {
            tracing::info!(
                backend = BACKEND,
                queue = name,
                "sqs queue exists with other attributes"
            );
            let out = client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| sdk_err("GetQueueUrl", e))?;
            Ok(out.queue_url().map(str::to_owned).unwrap_or_default())
        }
        Err(e) => Err(sdk_err("CreateQueue", e)),
    }
}

fn token(message: u64, index: usize) -> AckToken {
    AckToken::Sqs { message, index }
}

fn parse_token(t: &AckToken) -> Result<(u64, usize), BackendError> {
    match *t {
        AckToken::Sqs { message, index } => Ok((message, index)),
        _ => Err(t.foreign(BACKEND)),
    }
}

#[async_trait::async_trait]
impl EventQueue for SqsQueue {
    fn hold_interval(&self) -> Option<Duration> {
        // A third of the visibility timeout: two extensions may fail before a message shows.
        let secs = u64::try_from(self.visibility_secs).unwrap_or(0).max(3);
        Some(Duration::from_secs(secs) / 3)
    }

    async fn keep_held(&self) -> Result<(), BackendError> {
        let receipts: Vec<String> = self
            .state()
            .messages
            .values()
            .map(|m| m.receipt.clone())
            .collect();
        if receipts.is_empty() {
            return Ok(());
        }
        self.set_visibility(receipts, self.visibility_secs).await
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn publish(&self, records: &[Record]) -> Result<(), BackendError> {
        if records.is_empty() {
            return Ok(());
        }
        self.send_bodies(&self.queue_url, pack(records)?, None)
            .await
    }

    fn has_dead_letter(&self) -> bool {
        self.dead_letter_url.is_some()
    }

    async fn dead_letter(&self, records: &[Record], reason: &str) -> Result<(), BackendError> {
        let Some(url) = &self.dead_letter_url else {
            return Err(BackendError::fatal(
                BACKEND,
                "no dead_letter_queue configured",
            ));
        };
        // An SQS message attribute value is at most 256 KiB with the body; keep it short.
        let reason: String = reason.chars().take(1000).collect();
        self.send_bodies(url, pack(records)?, Some(&reason)).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let out = self.take_buffered(max);
            if !out.is_empty() {
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait_secs = left.min(self.max_wait).as_secs() as i32;
            let got = self
                .client
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(max.min(MAX_BATCH_ENTRIES) as i32)
                .wait_time_seconds(wait_secs)
                .visibility_timeout(self.visibility_secs)
                .send()
                .await
                .map_err(|e| sdk_err("ReceiveMessage", e))?;
            let mut empty = Vec::new();
            {
                let mut st = self.state();
                for m in got.messages() {
                    let Some(receipt) = m.receipt_handle() else {
                        continue;
                    };
                    let records = match unpack(m.body().unwrap_or_default()) {
                        Ok(r) => r,
                        Err(why) => {
                            // Left alone: it comes back after the visibility timeout, and a
                            // redrive policy moves it to a dead-letter queue.
                            tracing::error!(
                                backend = BACKEND,
                                message_id = m.message_id().unwrap_or_default(),
                                why,
                                "undecodable sqs message"
                            );
                            continue;
                        }
                    };
                    if records.is_empty() {
                        empty.push(receipt.to_owned());
                        continue;
                    }
                    let id = st.next_id;
                    st.next_id += 1;
                    st.buffered.extend((0..records.len()).map(|i| (id, i)));
                    st.messages.insert(
                        id,
                        Message {
                            receipt: receipt.to_owned(),
                            records: records.into_iter().map(|r| (r, Slot::Buffered)).collect(),
                        },
                    );
                }
            }
            if !empty.is_empty() {
                self.delete(empty).await?;
            }
            if !got.messages().is_empty() {
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            if wait_secs == 0 {
                // Less than a second left: short polls, not a busy loop.
                tokio::time::sleep(left.min(Duration::from_millis(200))).await;
            }
        }
    }

    async fn ack(&self, tokens: &[AckToken]) -> Result<(), BackendError> {
        let parsed = tokens
            .iter()
            .map(parse_token)
            .collect::<Result<Vec<_>, _>>()?;
        let resolutions = {
            let mut st = self.state();
            let mut touched = Vec::new();
            for (id, idx) in parsed {
                // Unknown: already deleted or given back; an ack repeat.
                if let Some((_, slot)) = st
                    .messages
                    .get_mut(&id)
                    .and_then(|m| m.records.get_mut(idx))
                {
                    *slot = Slot::Acked;
                    touched.push(id);
                }
            }
            touched.dedup();
            st.settle(touched)
        };
        self.resolve(resolutions).await
    }

    async fn release(&self, tokens: &[AckToken]) -> Result<(), BackendError> {
        let parsed = tokens
            .iter()
            .map(parse_token)
            .collect::<Result<Vec<_>, _>>()?;
        let resolutions = {
            let mut st = self.state();
            let mut touched = Vec::new();
            for (id, idx) in parsed {
                if let Some((_, slot)) = st
                    .messages
                    .get_mut(&id)
                    .and_then(|m| m.records.get_mut(idx))
                {
                    if *slot == Slot::Out {
                        *slot = Slot::Released;
                        touched.push(id);
                    }
                }
            }
            touched.dedup();
            st.settle(touched)
        };
        self.resolve(resolutions).await
    }

    /// `ApproximateNumberOfMessages`: SQS messages waiting, not records (a message holds
    /// many records), and approximate, as SQS says.
    async fn depth(&self) -> Result<Option<u64>, BackendError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| sdk_err("GetQueueAttributes", e))?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok()))
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| sdk_err("GetQueueAttributes", e))?;
        Ok(())
    }
}
