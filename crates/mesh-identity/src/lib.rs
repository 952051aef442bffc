//! Isthmus identity: the federated trust root and per-cluster intermediates (Istio's
//! `cacerts` layout), SPIFFE workload identities `spiffe://TD/ns/NS/sa/SA`, signing of
//! workload CSRs, trust bundles with several roots and trust domains (SPIFFE bundle
//! format), peer verification, and rustls mTLS configs whose certificate and trust
//! are swapped live.
//!
//! The crypto provider is ring throughout; configs are built with it explicitly, so
//! no process-wide default needs installing.

pub mod bundle;
pub mod ca;
pub mod cert;
mod error;
pub mod rotation;
pub mod spiffe;
pub mod tls;
pub mod verify;

pub use bundle::TrustBundle;
pub use ca::{ClusterCa, IssuedCert, IssuedWorkload, RootCa, WorkloadCsr};
pub use error::{IdentityError, Result};
pub use spiffe::{SpiffeId, TrustDomain};
pub use tls::{Identity, WorkloadCert};
pub use verify::{TrustConfig, Usage, explain, peer_id};
