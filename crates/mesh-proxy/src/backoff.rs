//! Reconnect delays for long-lived streams (config stream, peering): exponential,
//! jittered so that many clients do not reconnect in step, and back to the start after
//! a connection that lived long enough to count as healthy.

use std::time::{Duration, Instant};

/// A connection that lasted this long resets the delay.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Exponential backoff with ±20 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// Waits before the next attempt; `started` is when the attempt that just ended
    /// began.
    pub async fn wait(&mut self, started: Instant) {
        if started.elapsed() > HEALTHY_AFTER {
            self.next = self.initial;
        }
        tokio::time::sleep(self.next.mul_f64(rand::random_range(0.8..1.2))).await;
        self.next = (self.next * 2).min(self.max);
    }
}
