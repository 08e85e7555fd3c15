//! Settings of the disk queue.

use serde::Deserialize;
use std::path::PathBuf;

/// Default bound of the queue: 1 GiB of record bytes.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// File name of the database inside [`DiskConfig::path`].
pub const FILE_NAME: &str = "queue.redb";

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

/// Settings of the disk queue (`type = "disk"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Directory holding the queue file (the daemon passes `<state_dir>/events`); created if
    /// missing.
    pub path: PathBuf,
    /// Bound on the queued bytes (key + value + 8 bytes per record, 12 per published batch).
    /// At the bound, `publish` fails with [`crate::BackendError::Full`]; a batch
    /// frees its bytes once every record of it is acked. The file itself is larger than the
    /// records it holds (B-tree pages, free pages kept for reuse): allow about twice this on
    /// disk.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

impl DiskConfig {
    /// A config for a queue in `path` with the default bound.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}
