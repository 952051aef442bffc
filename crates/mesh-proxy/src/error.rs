//! Errors of the data plane, classified once at the edge: each failure maps to an
//! HTTP status and an Envoy-style response flag for the access log and metrics.

use std::fmt;

/// Why a config update was rejected. The last good state stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where the config came from (file path, stream).
    pub origin: String,
    /// Every reason, one per problem.
    pub reasons: Vec<String>,
}

impl ConfigError {
    pub(crate) fn new(origin: &str, reason: impl Into<String>) -> Self {
        Self {
            origin: origin.to_owned(),
            reasons: vec![reason.into()],
        }
    }

    pub(crate) fn many(origin: &str, reasons: Vec<String>) -> Self {
        Self {
            origin: origin.to_owned(),
            reasons,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config from {} rejected: {}",
            self.origin,
            self.reasons.join("; ")
        )
    }
}

/// Envoy's response flags, as Istio's access logs and metrics show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// No route matched (404).
    NoRoute,
    /// No healthy upstream (503).
    NoHealthyUpstream,
    /// Upstream connection failure (503).
    UpstreamConnectionFailure,
    /// Upstream reset or protocol error (503).
    UpstreamReset,
    /// Upstream request timeout (504).
    UpstreamTimeout,
    /// Retries exhausted; the last failure is returned.
    UpstreamRetryLimitExceeded,
    /// The destination's connection pool is full (circuit breaking).
    UpstreamOverflow,
    /// Downstream connection closed mid-request.
    DownstreamConnectionTermination,
    /// Request refused by authorization (403).
    Unauthorized,
    /// Fault injection aborted the request.
    FaultInjected,
    /// Fault injection delayed the request.
    DelayInjected,
}

impl ResponseFlag {
    /// The short code, e.g. `NR`, `UH`, `UF`.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoRoute => "NR",
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamReset => "UR",
            Self::UpstreamTimeout => "UT",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::UpstreamOverflow => "UO",
            Self::DownstreamConnectionTermination => "DC",
            Self::Unauthorized => "UAEX",
            Self::FaultInjected => "FI",
            Self::DelayInjected => "DI",
        }
    }

    /// The status a proxy answers with when this flag ends a request.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::NoRoute => S::NOT_FOUND,
            Self::NoHealthyUpstream
            | Self::UpstreamConnectionFailure
            | Self::UpstreamReset
            | Self::UpstreamRetryLimitExceeded
            | Self::UpstreamOverflow => S::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => S::GATEWAY_TIMEOUT,
            Self::DownstreamConnectionTermination => S::BAD_REQUEST,
            Self::Unauthorized => S::FORBIDDEN,
            Self::FaultInjected => S::SERVICE_UNAVAILABLE,
            Self::DelayInjected => S::OK,
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
