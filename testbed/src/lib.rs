//! The local multi-cluster testbed. Today it provides real Kubernetes control planes
//! for tests and for the testbed: one etcd and one kube-apiserver per simulated
//! cluster, built from Go modules by `tools/build-kube-bins.sh`, each with its own
//! service CIDR, serving certificate (IP SAN 127.0.0.1), admin identity
//! (`system:masters` client certificate), service-account signing key and RBAC, and a
//! kubeconfig per cluster. Every process is stopped when its [`ControlPlane`] is
//! dropped (panics included) and killed by the kernel if the owning thread dies.
//!
//! [`netns`] gives tests separate hosts: network namespaces joined by veth pairs.
//!
//! The mesh on top (discovery, gateways, sample workloads) joins this crate with the
//! federation and testbed work.

pub mod apply;
mod bins;
mod control_plane;
pub mod netns;
mod pki;
mod process;
mod responder;

pub use bins::{KubeBins, jaeger, workspace_root};
pub use control_plane::{ControlPlane, ControlPlaneOptions, start_control_planes};
pub use process::{Process, is_alive};
pub use responder::http_responder;
