//! Discovery's trust, composed from its sources on every change: the roots of this
//! cluster's `cacerts` (`root-cert.pem`, two roots while a root rotates A → A+B → B)
//! and the roots each link names for its peer. Composed anew rather than added to, so
//! that a deleted link's roots stop being trusted and a rotated link's old roots go
//! once the new link has synced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use mesh_identity::{Identity, TrustBundle, TrustConfig, TrustDomain, WorkloadCert};

/// Roots named by one link: trust domain, PEM, where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRoots {
    /// The peer's trust domain.
    pub trust_domain: String,
    /// Its roots (PEM).
    pub pem: String,
    /// The link Secret, for errors.
    pub origin: String,
}

#[derive(Debug)]
struct Sources {
    local: TrustDomain,
    local_roots: String,
    /// By cluster: the roots of its current link and of versions being replaced.
    links: BTreeMap<String, Vec<LinkRoots>>,
}

/// The sources of discovery's trust, and the identity they are installed into.
#[derive(Debug)]
pub struct TrustSources {
    identity: Identity,
    sources: Mutex<Sources>,
}

impl TrustSources {
    /// Starts from the local roots (`root-cert.pem`) of `local`.
    pub fn new(identity: Identity, local: TrustDomain, local_roots: &str) -> Self {
        Self {
            identity,
            sources: Mutex::new(Sources {
                local,
                local_roots: local_roots.to_owned(),
                links: BTreeMap::new(),
            }),
        }
    }

    /// The identity this trust is installed into.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Sets the roots the links of `cluster` name (empty when its link is deleted)
    /// and installs the result.
    pub fn set_link(&self, cluster: &str, roots: Vec<LinkRoots>) {
        let mut s = self.lock();
        if roots.is_empty() {
            if s.links.remove(cluster).is_none() {
                return;
            }
        } else if s.links.get(cluster) == Some(&roots) {
            return;
        } else {
            s.links.insert(cluster.to_owned(), roots);
        }
        if let Err(e) = install(&self.identity, &s, None) {
            tracing::warn!(peer = %cluster, error = %e, "the linked cluster's roots are not installed");
        }
    }

    /// Adopts new local roots (a reloaded `cacerts`) with discovery's own certificate
    /// issued under them. Nothing changes if the certificate does not verify under
    /// the new trust.
    pub fn set_local(&self, local_roots: &str, cert: WorkloadCert) -> Result<(), String> {
        let mut s = self.lock();
        let previous = std::mem::replace(&mut s.local_roots, local_roots.to_owned());
        if let Err(e) = install(&self.identity, &s, Some(cert)) {
            s.local_roots = previous;
            return Err(e);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Composes the trust of `s`; installs it (with `cert` when given) unless it is what
/// the identity already holds.
fn install(identity: &Identity, s: &Sources, cert: Option<WorkloadCert>) -> Result<(), String> {
    let mut bundle =
        TrustBundle::from_pem(s.local.clone(), s.local_roots.as_bytes(), "cacerts root")
            .map_err(|e| e.to_string())?;
    let mut federated = BTreeSet::new();
    for (cluster, roots) in &s.links {
        for r in roots {
            let Ok(td) = r.trust_domain.parse::<TrustDomain>() else {
                continue;
            };
            if let Err(e) = bundle.add_pem(td.clone(), r.pem.as_bytes(), &r.origin) {
                tracing::warn!(peer = %cluster, error = %e, "a linked cluster's roots are not trusted");
                continue;
            }
            if td != s.local {
                federated.insert(td);
            }
        }
    }
    let mut trust = TrustConfig::new(s.local.clone(), bundle);
    trust.federated = federated;
    match cert {
        Some(cert) => identity.replace(cert, trust).map_err(|e| e.to_string()),
        None => {
            let current = identity.trust();
            if current.bundle.same_roots(&trust.bundle) && current.federated == trust.federated {
                return Ok(());
            }
            identity.update_trust(trust).map_err(|e| e.to_string())
        }
    }
}
