//! The Isthmus discovery service (control plane): Kubernetes and file registries, per
//! proxy config push over gRPC/mTLS on 15012, the workload CA, sidecar injection, and
//! peering with the discovery services of linked clusters.
//!
//! Not built yet: this binary only says so and exits with a failure status.

fn main() -> std::process::ExitCode {
    eprintln!("isthmus discovery: not available in this build");
    std::process::ExitCode::FAILURE
}
