//! Logging and tracing setup shared by every Isthmus binary: one call at start-up
//! installs a `tracing` subscriber that writes human-readable or JSON lines to stderr,
//! filtered by `RUST_LOG` (default `info`); [`metrics`] holds Istio's standard
//! metrics in a Prometheus registry; [`edges`] the calls a proxy made, for the mesh
//! graph; [`trace`] continues W3C/B3 traces across hops
//! and exports spans over OTLP.

pub mod edges;
pub mod metrics;
pub mod trace;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Compact text for terminals.
    #[default]
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

impl LogFormat {
    /// JSON when `json` (a binary's `--json-logs`), else text.
    pub fn json(json: bool) -> Self {
        if json { Self::Json } else { Self::Text }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
/// Calling it twice is harmless (the second call does nothing).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.compact().try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
