//! One way to keep a long-lived stream up (the proxy's config stream, discovery's
//! peering subscriptions): run an attempt until it ends, report why it ended, wait out
//! the backoff, and start again, for as long as the task lives.

use std::future::Future;
use std::time::Instant;

use crate::backoff::Backoff;

/// Runs `attempt` again and again, each ended attempt's error going to `closed`
/// before the backoff's wait. An attempt that ends without an error (the server
/// closed a stream cleanly) is retried the same way. `state` is what outlives one
/// attempt (the resources a proxy holds, a link's context): each attempt owns it
/// while it runs and hands it back when it ends, so the future stays `Send` without
/// locks. Never returns: the caller aborts the task to stop it.
pub async fn reconnecting<S, E, Fut>(
    mut backoff: Backoff,
    mut state: S,
    mut attempt: impl FnMut(S) -> Fut,
    mut closed: impl FnMut(&S, Option<E>),
) where
    Fut: Future<Output = (S, Result<(), E>)>,
{
    loop {
        let started = Instant::now();
        let (back, result) = attempt(state).await;
        state = back;
        closed(&state, result.err());
        backoff.wait(started).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_ended_attempt_is_reported_and_retried_after_the_backoff() {
        let attempts = Arc::new(AtomicU32::new(0));
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let attempts = attempts.clone();
            let reports = reports.clone();
            reconnecting(
                Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
                0u32,
                move |ended: u32| {
                    let n = attempts.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let result = if n.is_multiple_of(2) {
                            Err(format!("attempt {n} failed"))
                        } else {
                            Ok(())
                        };
                        (ended + 1, result)
                    }
                },
                move |ended, e| reports.lock().unwrap().push((*ended, e)),
            )
        });
        // Waits of about 1 s, 2 s, 4 s, 4 s (±20 %): four attempts end within 12 s,
        // a fifth starts only after the fourth wait.
        tokio::time::sleep(Duration::from_secs(9)).await;
        let n = attempts.load(Ordering::SeqCst);
        assert!((3..=4).contains(&n), "{n} attempts in 9 s");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(attempts.load(Ordering::SeqCst) >= 8);
        task.abort();
        let reports = reports.lock().unwrap();
        assert_eq!(reports[0], (1, Some("attempt 0 failed".to_owned())));
        assert_eq!(reports[1], (2, None), "a clean end is reported as such");
        assert_eq!(reports[2], (3, Some("attempt 2 failed".to_owned())));
    }
}
