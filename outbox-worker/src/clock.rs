//! [`TokioClock`]: wall-clock timestamps that follow tokio's (pausable) time.

use chrono::{DateTime, Utc};
use outbox_core::clock::{add, to_micros};
use outbox_core::{Clock, SystemClock};
use tokio::time::Instant;

/// A clock that reads tokio's time: `start + (tokio now − creation)`.
///
/// In a test under `#[tokio::test(start_paused = true)]`, `tokio::time::advance` moves this
/// clock and every worker timer together, so one call drives both the stored timestamps
/// (`next_attempt_at`, leases) and the worker's sleeps.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start: DateTime<Utc>,
    origin: Instant,
}

impl TokioClock {
    /// A clock reading `start` now.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self {
            start: to_micros(start),
            origin: Instant::now(),
        }
    }

    /// A clock reading the system time now.
    pub fn new() -> Self {
        Self::starting_at(SystemClock.now())
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        to_micros(add(
            self.start,
            Instant::now().saturating_duration_since(self.origin),
        ))
    }
}
