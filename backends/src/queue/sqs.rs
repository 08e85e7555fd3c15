//! The SQS event queue: many records packed into each SQS message.
//!
//! An SQS request carries at most 10 messages and 256 KiB, and SQS bills per request (per
//! 64 KiB chunk), so one message per event would be slow and dear. A publish packs its records
//! into as few messages as fit (each body at most 256 KiB) and sends them with
//! `SendMessageBatch` (at most 10 messages and 256 KiB per call), checking every entry of the
//! answer and retrying the ones that failed on the server's side.
//!
//! Body format (text, as SQS bodies must be): standard base64 of `[version = 1]` followed by
//! the records in the shared frame format (see `body.rs`).
//!
//! A received message is unpacked into deliveries; records beyond the caller's `max` wait in
//! memory for the next `receive`. The message is deleted only once every record from it is
//! acked. `release` gives a message back when none of its records is still with the caller:
//! `ChangeMessageVisibility` to 0 when none of it was acked, otherwise the unacked records are
//! sent again as a new message and the old one deleted (so acked events are not sent twice).
//! A message neither acked nor released (a crash) comes back after the visibility timeout.
//!
//! Files: `config` (settings), `state` (received messages and their records' fate), `body`
//! (packing records into message bodies), `error` (SDK error classification), `queue` (the
//! [`SqsQueue`] and its SQS calls).

mod body;
mod config;
mod error;
mod queue;
mod state;

pub use config::{SqsConfig, DEFAULT_REGION, DEFAULT_VISIBILITY_TIMEOUT, DEFAULT_WAIT};
pub use queue::SqsQueue;

const BACKEND: &str = "sqs";

/// Message attribute carrying why dead-lettered records were rejected.
pub const REASON_ATTRIBUTE: &str = "bucketd-reason";
