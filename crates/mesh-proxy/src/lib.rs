//! The Isthmus data plane library: routing by the Istio API over sidecar-to-sidecar
//! mTLS. The sidecar binary, the east-west gateway and discovery's test clients are
//! built on it.
//!
//! - [`config`]: what a proxy is told (node, services, endpoints, Istio resources),
//!   from a YAML file today and from discovery's stream later.
//! - [`state`]: the compiled state, swapped atomically; a rejected update keeps the
//!   last good state.
//! - [`routes`]: VirtualService HTTP routes compiled for this proxy.
//! - [`outbound`], [`inbound`], [`pool`]: the data path (explicit outbound mode,
//!   STRICT mTLS inbound, HTTP/2 multiplexed upstream connections with Istio's SNI).
//!
//! Built so far: HTTP/1.1 and h2c from the application, HTTP/2 over mTLS between
//! sidecars, VirtualService matches/weights/rewrites/redirects/direct responses/
//! header edits/timeouts, DestinationRule subsets with round-robin and random
//! balancing, Envoy-style response flags and a JSON access log.

pub mod admin;
pub mod authz;
pub mod bootstrap;
pub mod ca_client;
pub mod capture;
pub mod config;
pub mod discovery_client;
pub mod dns;
pub mod dns_proxy;
pub mod error;
pub mod fetched;
pub mod http_util;
pub mod inbound;
pub mod ingress;
pub mod intake;
pub mod jwks;
pub mod jwt;
pub mod lb;
pub mod model;
pub mod origination;
pub mod outbound;
pub mod outbound_tcp;
pub mod path;
pub mod peer;
pub mod peer_authn;
pub mod plan;
pub mod policy;
pub mod pool;
pub mod retry;
pub mod routes;
pub mod sidecar;
pub mod sni;
pub mod state;
pub mod tunnel;

pub use config::{ConfigBundle, ProxyConfig};
pub use error::{ConfigError, ResponseFlag};
pub use sidecar::{Sidecar, SidecarOptions};
pub use state::{ProxyState, StateStore};
