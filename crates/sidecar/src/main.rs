//! The Isthmus sidecar proxy: a thin binary over `mesh-proxy`.
//!
//! Not built yet: the data plane is an empty skeleton, so this binary only says so and
//! exits with a failure status rather than pretending to proxy traffic.

fn main() -> std::process::ExitCode {
    eprintln!("isthmus sidecar: the data plane is not available in this build");
    std::process::ExitCode::FAILURE
}
