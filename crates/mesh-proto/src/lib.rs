//! Wire contracts between Isthmus components: the proxy config stream (discovery →
//! sidecar/gateway), discovery ⇄ discovery peering, and certificate signing (workload →
//! discovery CA), as `.proto` files with tonic/prost code generated at build time.
//!
//! Not built yet: this crate is an empty skeleton. The config stream and CSR service
//! arrive with the discovery control plane, peering with multi-cluster federation.
