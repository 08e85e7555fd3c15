//! The record codec: how an event is stored in a queue and read back (JSON, keyed by the
//! visitor id so a visitor's events stay in one partition and in order).

use crate::core::UserEvent;
use backends::Record;

/// Encodes an event into the queue record the flusher reads back.
pub fn encode(event: &UserEvent) -> Result<Record, serde_json::Error> {
    Ok(Record {
        key: event.visitor_id.clone(),
        value: serde_json::to_vec(event)?,
    })
}

/// Decodes a queue record back into an event.
pub fn decode(record: &Record) -> Result<UserEvent, serde_json::Error> {
    serde_json::from_slice(&record.value)
}
