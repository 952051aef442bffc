//! The connections every Isthmus process makes, whatever its role: sidecars, east-west
//! gateways and discovery all dial with the proxy's socket mark, open mTLS gRPC
//! channels to discovery, back off between reconnects, probe gateways and serve small
//! admin endpoints. Living here, apart from the data plane, lets the control plane be
//! built without the proxy.
//!
//! - [`socket`]: marked connections that capture rules leave alone;
//! - [`channel`]: gRPC over mTLS to discovery (config stream, CA, peering);
//! - [`backoff`] and [`watch`]: one way to keep a long-lived stream up;
//! - [`probe`]: the east-west gateway's data-plane health check;
//! - [`http`]: the body type and the admin and debug endpoints' helpers.

pub mod backoff;
pub mod channel;
pub mod http;
pub mod probe;
pub mod socket;
pub mod watch;
