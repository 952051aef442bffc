//! Renewal of workload certificates at half of their lifetime, with jitter so that a
//! fleet started together does not renew together, and retries with backoff when the
//! CA cannot be reached (the current certificate stays in force meanwhile).

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::cert::CertInfo;
use crate::error::Result;
use crate::tls::{Identity, WorkloadCert};

/// Share of the lifetime after which a certificate is renewed.
pub const RENEW_AT: f64 = 0.5;
/// Jitter around [`RENEW_AT`], as a share of the lifetime (±).
pub const JITTER: f64 = 0.05;

/// How long to wait from `now` before renewing a certificate, given a jitter sample
/// `unit` in [-1, 1]. Zero when the renewal time has already passed.
pub fn renewal_delay(info: &CertInfo, now: SystemTime, unit: f64) -> Duration {
    let lifetime = info.lifetime().as_secs_f64();
    let share = RENEW_AT + JITTER * unit.clamp(-1.0, 1.0);
    let renew_at = info.not_before + Duration::from_secs_f64(lifetime * share);
    renew_at.duration_since(now).unwrap_or_default()
}

/// Where renewed certificates come from (the discovery CA, or a local CA in tests).
pub trait CertificateSource: Send + Sync {
    /// Obtains a new certificate for the identity's current SPIFFE ID.
    fn fetch(&self, current: &WorkloadCert) -> impl Future<Output = Result<WorkloadCert>> + Send;
}

/// Keeps `identity`'s certificate fresh until the returned future is dropped.
pub async fn run_renewal<S: CertificateSource>(identity: Identity, source: S) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let current = identity.cert();
        let wait = renewal_delay(
            current.info(),
            SystemTime::now(),
            rand::random_range(-1.0..=1.0),
        );
        tokio::time::sleep(wait).await;
        match source
            .fetch(&current)
            .await
            .and_then(|c| identity.rotate_cert(c))
        {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                // Retry well before expiry; the current certificate stays in force.
                let left = current
                    .info()
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::warn!(id = %current.id(), error = %e, retry_in = ?backoff, expires_in = ?left, "certificate renewal failed");
                tokio::time::sleep(backoff.min(left / 4).max(Duration::from_millis(100))).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(lifetime_secs: u64) -> CertInfo {
        let now = SystemTime::now();
        CertInfo {
            not_before: now,
            not_after: now + Duration::from_secs(lifetime_secs),
            uris: vec![],
            dns_names: vec![],
            is_ca: false,
            subject: String::new(),
            serial: String::new(),
            spki: vec![],
        }
    }

    #[test]
    fn renews_at_half_life_within_the_jitter() {
        let i = info(24 * 3600);
        let at = |u| renewal_delay(&i, i.not_before, u).as_secs();
        assert_eq!(at(0.0), 12 * 3600);
        assert_eq!(at(-1.0), (24.0 * 3600.0 * 0.45) as u64);
        assert_eq!(at(1.0), (24.0 * 3600.0 * 0.55) as u64);
        for _ in 0..100 {
            let d = renewal_delay(&i, i.not_before, rand::random_range(-1.0..=1.0)).as_secs();
            assert!((38880..=47520).contains(&d), "{d}");
        }
    }

    #[test]
    fn past_renewal_time_means_now() {
        let i = info(100);
        let late = i.not_before + Duration::from_secs(80);
        assert_eq!(renewal_delay(&i, late, 0.0), Duration::ZERO);
    }
}
