//! The error every backend returns, classified so callers know whether to retry.

/// A backend failure.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Worth retrying with backoff: the server is down, slow, overloaded, or the network failed.
    #[error("{backend}: temporarily unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    /// Retrying will not help: bad configuration, bad credentials, corrupt data, missing queue.
    #[error("{backend}: {message}")]
    Fatal {
        backend: &'static str,
        message: String,
    },
    /// A bounded queue (the disk queue at `max_bytes`) has no room for the records. Not
    /// retryable at once: the caller should shed or spool the records and try again only after
    /// the flusher drained some.
    #[error("{backend}: queue full: {message}")]
    Full {
        backend: &'static str,
        message: String,
    },
    /// The file system holding a local queue (disk queue, spool) is full. Not retryable at
    /// once, like [`Self::Full`]; publishes succeed again once space is freed.
    #[error("{backend}: no space left on the file system: {message}")]
    NoSpace {
        backend: &'static str,
        message: String,
    },
    /// The operation did not finish within its deadline (retryable).
    #[error("{backend}: timed out after {millis} ms")]
    Timeout { backend: &'static str, millis: u64 },
}

impl BackendError {
    /// Whether the operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Fatal { .. } | Self::Full { .. } | Self::NoSpace { .. }
        )
    }

    /// Whether a bounded queue refused records for lack of room (its bound, or the disk).
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full { .. } | Self::NoSpace { .. })
    }

    /// The low-cardinality reason a refused publish is counted under, or `None` if it is not
    /// a refusal for lack of room: `disk_full` or `<prefix>_full` (`queue_full`, `spool_full`).
    pub fn full_reason(&self, bounded: &'static str) -> Option<&'static str> {
        match self {
            Self::NoSpace { .. } => Some("disk_full"),
            Self::Full { .. } => Some(bounded),
            _ => None,
        }
    }

    /// A retryable error.
    pub fn unavailable(backend: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            backend,
            message: message.to_string(),
        }
    }

    /// A non-retryable error.
    pub fn fatal(backend: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Fatal {
            backend,
            message: message.to_string(),
        }
    }
}
