//! The Isthmus data plane library: listeners and traffic capture, protocol detection,
//! routing by the Istio API, load balancing, health, retries, mTLS and tunnels. The
//! sidecar binary, the east-west gateway and discovery's test clients are built on it.
//!
//! Not built yet: this crate is an empty skeleton until the sidecar data plane lands.
