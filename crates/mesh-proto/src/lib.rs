//! Wire contracts between Isthmus components, as `.proto` files (under `proto/`) with
//! tonic/prost code generated at build time:
//!
//! - [`config`]: the proxy config stream (discovery → sidecar/gateway), incremental and
//!   acknowledged;
//! - [`ca`]: workload certificate signing (workload → discovery's CA);
//! - [`peering`]: discovery ⇄ discovery, what a linked cluster exports;
//! - [`edges`]: the mesh graph's edges (proxy → discovery → linked discoveries);
//! - [`model`]: the services, endpoints and node identity those streams carry.

pub mod model;

/// The proxy config stream (`isthmus.config.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod config {
    tonic::include_proto!("isthmus.config.v1");
}

/// Workload certificate signing (`isthmus.ca.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod ca {
    tonic::include_proto!("isthmus.ca.v1");
}

/// Discovery ⇄ discovery peering (`isthmus.peering.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod peering {
    tonic::include_proto!("isthmus.peering.v1");
}

/// The mesh graph's edges (`isthmus.edges.v1`), reported by proxies and exchanged
/// over peering.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod edges {
    tonic::include_proto!("isthmus.edges.v1");
}

/// The port discovery serves the config stream and the CA on.
pub const DISCOVERY_PORT: u16 = 15012;
