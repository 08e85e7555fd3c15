//! The accept side: how many connections are open, which to give up when there are too many,
//! and what to do when the process runs out of file descriptors.
//!
//! - At most `server.max_connections` are open, and never more than the descriptor limit
//!   (`RLIMIT_NOFILE`) minus `server.fd_reserve`, kept for the profile store, the queue, the
//!   datafile cache and the flusher.
//! - At the bound, the oldest connection that has not sent a complete request yet is evicted
//!   for the new one (silent connections cannot lock real clients out); when every open
//!   connection has been served, the new one is shed: it gets an HTTP/1.1 503 with
//!   `Retry-After: 1` and the JSON body `{"error":"too many connections"}`, and is closed (an
//!   HTTP/2 client, which expects a preface, sees the connection closed).
//! - `EMFILE` / `ENFILE` on accept (descriptors exhausted anyway, e.g. by other work of the
//!   process) back the accept loop off exponentially (10 ms to 1 s) instead of spinning, with
//!   a warning at most every 10 s.

use super::conn::Conn;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a shed connection reads before it is closed.
pub const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 32\r\nConnection: close\r\n\r\n{\"error\":\"too many connections\"}";

/// Open connections, and those not served yet in accept order (the eviction candidates).
pub struct Registry {
    max: usize,
    open: AtomicUsize,
    unserved: Mutex<VecDeque<Arc<Conn>>>,
}

/// What to do with a new connection.
pub enum Admission {
    /// Serve it (the slot is released when the guard drops).
    Open(Slot),
    /// Every slot holds a served connection: shed it.
    Shed,
}

/// One open connection's slot.
pub struct Slot(Arc<Registry>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Registry {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: AtomicUsize::new(0),
            unserved: Mutex::new(VecDeque::new()),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Admits `conn`, evicting the oldest unserved connection when at the bound. An evicted
    /// connection closes within a moment; until then the count may exceed the bound by the
    /// connections being evicted.
    pub fn admit(self: &Arc<Self>, conn: &Arc<Conn>) -> Admission {
        let mut unserved = self.unserved.lock().unwrap_or_else(|p| p.into_inner());
        if self.open() >= self.max {
            let victim = loop {
                match unserved.pop_front() {
                    Some(c) if !c.served() && !c.evicted() => break Some(c),
                    Some(_) => continue,
                    None => break None,
                }
            };
            match victim {
                Some(v) => v.evict(),
                None => return Admission::Shed,
            }
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        if unserved.len() >= self.max {
            unserved.retain(|c| !c.served() && !c.evicted());
        }
        unserved.push_back(Arc::clone(conn));
        Admission::Open(Slot(Arc::clone(self)))
    }
}

/// The connection bound: `configured`, lowered to fit the descriptor limit minus the reserve
/// (the reserve itself at most half the limit).
pub fn max_connections(configured: usize, fd_reserve: usize) -> usize {
    match open_files_limit() {
        Some(limit) => {
            let reserve = fd_reserve.min(limit / 2);
            configured.min(limit - reserve).max(1)
        }
        None => configured.max(1),
    }
}

/// The soft `RLIMIT_NOFILE` of this process (Linux: `/proc/self/limits`).
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(usize::MAX),
        n => n.parse().ok(),
    }
}

/// Backoff of the accept loop while descriptors are exhausted.
#[derive(Default)]
pub struct AcceptBackoff {
    delay: Duration,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    /// An accept succeeded.
    pub fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// How long to wait after a failed accept (logged at most every 10 s).
    pub fn failed(&mut self, e: &std::io::Error) -> Duration {
        // EMFILE (24) and ENFILE (23): the process or the system is out of descriptors.
        let exhausted = matches!(e.raw_os_error(), Some(23 | 24));
        self.delay = if exhausted {
            (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
        } else {
            Duration::from_millis(50)
        };
        let due = match self.last_log {
            Some(t) => t.elapsed() >= Duration::from_secs(10),
            None => true,
        };
        if due {
            self.last_log = Some(Instant::now());
            if exhausted {
                tracing::warn!(error = %e, backoff = ?self.delay, "out of file descriptors; accepting more slowly (logged at most every 10s)");
            } else {
                tracing::warn!(error = %e, "accept failed (logged at most every 10s)");
            }
        }
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_bound_the_oldest_unserved_connection_is_evicted_then_new_ones_are_shed() {
        let r = Registry::new(2);
        let (a, b, c, d) = (Conn::new(), Conn::new(), Conn::new(), Conn::new());
        let _sa = match r.admit(&a) {
            Admission::Open(s) => s,
            Admission::Shed => panic!("room for a"),
        };
        let _b = b.request_started();
        let _sb = match r.admit(&b) {
            Admission::Open(s) => s,
            Admission::Shed => panic!("room for b"),
        };
        let sc = match r.admit(&c) {
            Admission::Open(s) => s,
            Admission::Shed => panic!("a is evicted for c"),
        };
        assert!(a.evicted(), "the silent connection gave way");
        assert!(!b.evicted(), "a served connection is kept");
        let _c = c.request_started();
        // a's slot is still held until its task ends; everything left is served.
        assert!(matches!(r.admit(&d), Admission::Shed));
        drop(sc);
        assert_eq!(r.open(), 2);
    }

    #[test]
    fn the_shed_response_is_a_json_503_with_retry_after() {
        let text = std::str::from_utf8(SHED_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("HTTP/1.1 503 Service Unavailable"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("retry-after"), Some("1"));
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(
            header("content-length"),
            Some(body.len().to_string().as_str())
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too many connections");
    }

    #[test]
    fn the_descriptor_limit_caps_the_configured_bound() {
        let limit = open_files_limit().unwrap();
        assert!(max_connections(usize::MAX, 256) < limit);
        assert_eq!(max_connections(10, 256), 10.min(limit));
    }
}
