//! The dead-letter file: events the endpoint rejected (and records that are not events), for
//! queues without a dead letter of their own. JSON lines, appended and synced.

use crate::core::UserEvent;
use backends::Record;
use std::io::Write;
use std::path::PathBuf;

/// Appends rejected events to a JSON-lines file.
pub struct DeadLetter {
    path: PathBuf,
}

impl DeadLetter {
    /// A dead letter at `path` (created on first use).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Appends rejected events, one `{"reason", "event"}` line each.
    pub fn write(&self, events: &[&UserEvent], reason: &str) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in events {
            serde_json::to_writer(&mut buf, &serde_json::json!({"reason": reason, "event": e}))
                .map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        append(&self.path, &buf)
    }

    /// Appends records that are not events at all, as they are, to
    /// `<dead letter>.undecodable.jsonl`.
    pub fn write_undecodable(&self, records: &[&Record]) -> std::io::Result<()> {
        let mut lines = Vec::new();
        for r in records {
            lines.extend_from_slice(String::from_utf8_lossy(&r.value).as_bytes());
            lines.push(b'\n');
        }
        append(&self.path.with_extension("undecodable.jsonl"), &lines)
    }
}

/// Appends `bytes` (whole lines) to the file at `path` in ONE write and syncs it: batches
/// delivered concurrently may dead-letter at the same time, and their lines must not interleave.
fn append(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}
