//! A small circuit breaker: after `threshold` consecutive failures the store is skipped for
//! `cooldown`; then one probe is let through, and a success closes the breaker again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Breaker state shared by all requests.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Milliseconds since `epoch` when the breaker may next let a probe through (0 = closed).
    open_until: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: go ahead.
    Allowed,
    /// The single probe after a cooldown.
    Probe,
    /// Open: skip the store.
    Rejected,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go to the store.
    pub fn permit(&self) -> Permit {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Allowed;
        }
        if self.now_ms() < until {
            return Permit::Rejected;
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Permit::Probe
        } else {
            Permit::Rejected
        }
    }

    /// Records a success (closes the breaker).
    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure (opens the breaker at the threshold, or re-opens after a failed probe).
    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold || self.probing.load(Ordering::Acquire) {
            let until = self.now_ms() + self.cooldown.as_millis() as u64;
            self.open_until.store(until.max(1), Ordering::Release);
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Whether the breaker is open (the store is being skipped).
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            b.failure();
        }
        assert_eq!(b.permit(), Permit::Allowed);
        b.failure();
        assert_eq!(b.permit(), Permit::Rejected);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Rejected, "only one probe at a time");
        b.failure();
        assert_eq!(b.permit(), Permit::Rejected, "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.permit(), Permit::Probe);
        b.success();
        assert_eq!(b.permit(), Permit::Allowed);
        assert!(!b.is_open());
    }
}
