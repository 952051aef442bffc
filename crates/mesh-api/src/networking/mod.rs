//! `networking.istio.io`: traffic routing kinds.

mod destination_rule;
mod gateway;
mod service_entry;
pub mod sidecar;
mod virtual_service;

pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;
