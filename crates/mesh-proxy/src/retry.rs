//! Retries as Istio configures them: `attempts`, `perTryTimeout` and `retryOn`
//! (5xx, gateway-error, connect-failure, reset, refused-stream,
//! retriable-status-codes with the codes listed beside them, and the gRPC statuses
//! cancelled, deadline-exceeded, internal, resource-exhausted, unavailable). Without a
//! `retries` block Istio's default applies: 2 attempts on connect-failure,
//! refused-stream, unavailable, cancelled and 503.

use std::time::Duration;

use mesh_api::networking::HttpRetry;

use crate::error::ResponseFlag;

/// A compiled retry policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try.
    pub per_try_timeout: Option<Duration>,
    on_5xx: bool,
    on_gateway_error: bool,
    on_connect_failure: bool,
    on_reset: bool,
    codes: Vec<u16>,
    grpc: Vec<u32>,
}

impl RetryPolicy {
    /// From a route's `retries`, or Istio's default when absent.
    pub fn compile(retries: Option<&HttpRetry>) -> Self {
        let default = HttpRetry {
            attempts: 2,
            ..Default::default()
        };
        let r = retries.unwrap_or(&default);
        let mut p = Self {
            attempts: r.attempts.max(0) as u32,
            per_try_timeout: r
                .per_try_timeout
                .filter(|t| !t.is_zero())
                .map(|t| t.as_std()),
            ..Default::default()
        };
        let mut retriable_codes = false;
        for cond in r.effective_retry_on().split(',').map(str::trim) {
            match cond {
                "5xx" => p.on_5xx = true,
                "gateway-error" => p.on_gateway_error = true,
                "connect-failure" => p.on_connect_failure = true,
                "reset" | "reset-before-request" | "refused-stream" => p.on_reset = true,
                "retriable-status-codes" => retriable_codes = true,
                "cancelled" => p.grpc.push(1),
                "deadline-exceeded" => p.grpc.push(4),
                "resource-exhausted" => p.grpc.push(8),
                "internal" => p.grpc.push(13),
                "unavailable" => p.grpc.push(14),
                other => {
                    if let Ok(code) = other.parse::<u16>() {
                        p.codes.push(code);
                    }
                }
            }
        }
        if retriable_codes && p.codes.is_empty() && retries.is_none() {
            p.codes.push(503);
        }
        if !retriable_codes && retries.is_some() {
            // Bare status codes in retryOn count only with retriable-status-codes;
            // Istio adds it when codes are given, and so does this.
            retriable_codes = !p.codes.is_empty();
        }
        if !retriable_codes {
            p.codes.clear();
        }
        p
    }

    /// Whether a response with this status (and gRPC status) is worth another try.
    pub fn retry_response(&self, status: u16, grpc_status: Option<u32>) -> bool {
        (self.on_5xx && status >= 500)
            || (self.on_gateway_error && matches!(status, 502..=504))
            || self.codes.contains(&status)
            || grpc_status.is_some_and(|g| self.grpc.contains(&g))
    }

    /// Whether a failure to get a response is worth another try.
    pub fn retry_failure(&self, flag: ResponseFlag) -> bool {
        match flag {
            ResponseFlag::UpstreamConnectionFailure => {
                self.on_connect_failure || self.on_5xx || self.on_gateway_error
            }
            ResponseFlag::UpstreamReset => self.on_reset || self.on_5xx,
            ResponseFlag::UpstreamTimeout => self.on_5xx || self.on_gateway_error,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_default_retries_503_and_connect_failures_twice() {
        let p = RetryPolicy::compile(None);
        assert_eq!(p.attempts, 2);
        assert!(p.retry_response(503, None));
        assert!(!p.retry_response(500, None));
        assert!(p.retry_failure(ResponseFlag::UpstreamConnectionFailure));
        assert!(p.retry_response(200, Some(14)), "gRPC unavailable");
    }

    #[test]
    fn explicit_conditions() {
        let r = HttpRetry {
            attempts: 3,
            retry_on: Some("gateway-error,retriable-status-codes,409".into()),
            ..Default::default()
        };
        let p = RetryPolicy::compile(Some(&r));
        assert!(p.retry_response(502, None) && p.retry_response(409, None));
        assert!(!p.retry_response(500, None));
        let none = RetryPolicy::compile(Some(&HttpRetry {
            attempts: 0,
            ..Default::default()
        }));
        assert_eq!(none.attempts, 0);
    }
}
