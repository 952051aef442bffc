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

#[cfg(test)]
mod tests {
    use super::*;

    /// How long one `wait` takes under a paused clock.
    async fn waited(b: &mut Backoff, started: Instant) -> Duration {
        let t = tokio::time::Instant::now();
        b.wait(started).await;
        t.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_and_restarts_after_a_healthy_connection() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let within = |d: Duration, base: u64| {
            let base = Duration::from_secs(base);
            d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2)
        };
        let now = Instant::now();
        for base in [1, 2, 4, 5, 5] {
            let d = waited(&mut b, now).await;
            assert!(within(d, base), "{d:?} is not {base} s ± 20 %");
        }
        // An attempt that began long ago lived long enough to count as healthy.
        let long_ago = now.checked_sub(HEALTHY_AFTER * 2).unwrap_or(now);
        if long_ago < now {
            let d = waited(&mut b, long_ago).await;
            assert!(within(d, 1), "after a healthy connection: {d:?}");
        }
    }
}
