//! The record codec: how an event is stored in a queue and read back (JSON, keyed by the
//! visitor id so a visitor's events stay in one partition and in order).

use crate::core::UserEvent;
use backends::Record;

/// Room reserved for an encoded event beyond its visitor id, uuid and attributes, so a typical
/// impression is written into one allocation (`serde_json::to_vec` starts at 128 bytes and
/// regrows by doubling).
const ENCODED_FIXED: usize = 512;

/// Encodes an event into the queue record the flusher reads back.
pub fn encode(event: &UserEvent) -> Result<Record, serde_json::Error> {
    let guess =
        ENCODED_FIXED + event.visitor_id.len() + event.uuid.len() + event.attributes.len() * 64;
    let mut value = Vec::with_capacity(guess);
    serde_json::to_writer(&mut value, event)?;
    Ok(Record {
        key: event.visitor_id.clone(),
        value,
    })
}

/// Decodes a queue record back into an event.
pub fn decode(record: &Record) -> Result<UserEvent, serde_json::Error> {
    serde_json::from_slice(&record.value)
}
