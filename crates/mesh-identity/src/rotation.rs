//! Renewal of workload certificates at half of their lifetime, with jitter so that a
//! fleet started together does not renew together, and retries with backoff when the
//! CA cannot be reached (the current certificate stays in force meanwhile).

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::cert::CertInfo;
use crate::error::Result;
use crate::tls::{Identity, WorkloadCert};
use crate::verify::TrustConfig;

/// Share of the lifetime after which a certificate is renewed.
pub const RENEW_AT: f64 = 0.5;
/// Jitter around [`RENEW_AT`], as a share of the lifetime (±).
pub const JITTER: f64 = 0.05;

/// How long to wait from `now` before renewing a certificate held since `since`,
/// given a jitter sample `unit` in [-1, 1]. The lifetime counts from the later of
/// `not_before` and `since`: CAs backdate `not_before` against clock skew (this one by
/// minutes), which must not make a short-lived certificate look overdue the moment it
/// arrives. Zero when the renewal time has already passed.
pub fn renewal_delay(info: &CertInfo, since: SystemTime, now: SystemTime, unit: f64) -> Duration {
    let start = info.not_before.max(since);
    let lifetime = info
        .not_after
        .duration_since(start)
        .unwrap_or_default()
        .as_secs_f64();
    let share = RENEW_AT + JITTER * unit.clamp(-1.0, 1.0);
    let renew_at = start + Duration::from_secs_f64(lifetime * share);
    renew_at.duration_since(now).unwrap_or_default()
}

/// A renewed certificate, with the trust its CA hands out when it hands one out.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The new certificate.
    pub cert: WorkloadCert,
    /// The CA's trust bundle: adopted with the certificate, so that a root rotation
    /// (A → A+B → B) reaches every workload through its renewals.
    pub trust: Option<TrustConfig>,
}

impl From<WorkloadCert> for Renewed {
    fn from(cert: WorkloadCert) -> Self {
        Self { cert, trust: None }
    }
}

/// Where renewed certificates come from (the discovery CA, or a local CA in tests).
pub trait CertificateSource: Send + Sync {
    /// Obtains a new certificate for `identity`'s current SPIFFE ID (connecting to the
    /// CA under its current trust).
    fn fetch(&self, identity: &Identity) -> impl Future<Output = Result<Renewed>> + Send;
}

/// Keeps `identity`'s certificate fresh until the returned future is dropped.
pub async fn run_renewal<S: CertificateSource>(identity: Identity, source: S) {
    let mut backoff = Duration::from_secs(1);
    let mut held: Option<(String, SystemTime)> = None;
    loop {
        let current = identity.cert();
        let since = match &held {
            Some((serial, since)) if *serial == current.info().serial => *since,
            _ => {
                let now = SystemTime::now();
                held = Some((current.info().serial.clone(), now));
                now
            }
        };
        let wait = renewal_delay(
            current.info(),
            since,
            SystemTime::now(),
            rand::random_range(-1.0..=1.0),
        );
        tokio::time::sleep(wait).await;
        let renewed = source.fetch(&identity).await.and_then(|r| match r.trust {
            Some(trust) => identity.replace(r.cert, trust),
            None => identity.rotate_cert(r.cert),
        });
        match renewed {
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
        let at = |u| renewal_delay(&i, i.not_before, i.not_before, u).as_secs();
        assert_eq!(at(0.0), 12 * 3600);
        assert_eq!(at(-1.0), (24.0 * 3600.0 * 0.45) as u64);
        assert_eq!(at(1.0), (24.0 * 3600.0 * 0.55) as u64);
        for _ in 0..100 {
            let d = renewal_delay(
                &i,
                i.not_before,
                i.not_before,
                rand::random_range(-1.0..=1.0),
            )
            .as_secs();
            assert!((38880..=47520).contains(&d), "{d}");
        }
    }

    #[test]
    fn past_renewal_time_means_now() {
        let i = info(100);
        let late = i.not_before + Duration::from_secs(80);
        assert_eq!(renewal_delay(&i, i.not_before, late, 0.0), Duration::ZERO);
    }

    #[test]
    fn a_backdated_certificate_counts_from_when_it_arrived() {
        // 60 s of validity left, backdated by 5 min: due in 30 s, not at once.
        let now = SystemTime::now();
        let mut i = info(0);
        i.not_before = now - Duration::from_secs(300);
        i.not_after = now + Duration::from_secs(60);
        assert_eq!(renewal_delay(&i, now, now, 0.0).as_secs(), 30);
        // Held for 40 s already: overdue.
        let later = now + Duration::from_secs(40);
        assert_eq!(renewal_delay(&i, now, later, 0.0), Duration::ZERO);
    }
}
