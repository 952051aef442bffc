//! Errors of the identity crate. Each names the file or peer concerned and what is wrong.

use std::path::PathBuf;

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// PEM text could not be read as what it should hold.
    #[error("{origin}: malformed PEM: {reason}")]
    Pem {
        /// File or peer the PEM came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate is past its `notAfter`.
    #[error("{origin}: certificate expired at {not_after} (now {now}); renew it")]
    Expired {
        /// File or peer.
        origin: String,
        /// When it expired (RFC 3339).
        not_after: String,
        /// The time checked against.
        now: String,
    },
    /// A certificate's `notBefore` is in the future.
    #[error("{origin}: certificate is not valid before {not_before} (now {now}); check the clocks")]
    NotYetValid {
        /// File or peer.
        origin: String,
        /// When it becomes valid.
        not_before: String,
        /// The time checked against.
        now: String,
    },
    /// The private key does not belong to the certificate.
    #[error("{origin}: the private key does not match the certificate's public key")]
    KeyMismatch {
        /// Key file (or pair of files).
        origin: String,
    },
    /// The certificate chain does not lead to a root of the trust bundle.
    #[error("{origin}: certificate chain does not reach a trusted root: {reason}")]
    UntrustedChain {
        /// File or peer.
        origin: String,
        /// What the path builder found.
        reason: String,
    },
    /// The certificate carries no usable SPIFFE ID.
    #[error("{origin}: {reason}")]
    NotSpiffe {
        /// File or peer.
        origin: String,
        /// What was found instead.
        reason: String,
    },
    /// A SPIFFE ID or trust domain is malformed.
    #[error("invalid SPIFFE ID {input:?}: {reason}")]
    InvalidSpiffeId {
        /// The text.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The peer belongs to a trust domain that is not accepted here.
    #[error("{origin}: trust domain {trust_domain:?} is not accepted here (accepted: {accepted})")]
    UnknownTrustDomain {
        /// File or peer.
        origin: String,
        /// The peer's trust domain.
        trust_domain: String,
        /// The accepted trust domains.
        accepted: String,
    },
    /// The peer is authenticated but is not one of the identities expected.
    #[error("{origin}: identity {actual} is not the expected {expected}")]
    UnexpectedIdentity {
        /// Peer.
        origin: String,
        /// Who it is.
        actual: String,
        /// Who it should be.
        expected: String,
    },
    /// A certificate signing request is malformed or asks for something not allowed.
    #[error("certificate signing request refused: {reason}")]
    CsrRefused {
        /// Why.
        reason: String,
    },
    /// A trust bundle document is malformed.
    #[error("{origin}: invalid trust bundle: {reason}")]
    Bundle {
        /// File.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Result alias of this crate.
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.into();
    move |source| IdentityError::Io { path, source }
}
