//! Deadline awareness: stop starting new work when the Lambda's time is nearly up; the next
//! event or schedule continues where this run stopped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Time kept free at the end of an invocation for the work already started and the report.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(30);

/// When the invocation must end.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    /// From the Lambda context's deadline (milliseconds since the epoch).
    pub fn from_epoch_millis(ms: u64) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Deadline(Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms)))
    }

    /// `d` from now (manual runs, tests).
    pub fn after(d: Duration) -> Self {
        Deadline(Instant::now() + d)
    }

    /// Whether new work may still start (more than [`SAFETY_MARGIN`] left).
    pub fn may_start(&self) -> bool {
        self.0.saturating_duration_since(Instant::now()) > SAFETY_MARGIN
    }

    /// How long is left (zero once past).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether more than `d` is left.
    pub fn has_left(&self, d: Duration) -> bool {
        self.0.saturating_duration_since(Instant::now()) > d
    }
}
