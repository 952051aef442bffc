//! The Isthmus east-west gateway: TLS passthrough on TCP 15443 routed by the SNI
//! `outbound_.PORT_.SUBSET_.HOST`, and a QUIC front on UDP 15443 that authenticates the
//! calling sidecar, never decrypting workload traffic.
//!
//! Not built yet: this binary only says so and exits with a failure status.

fn main() -> std::process::ExitCode {
    eprintln!("isthmus east-west-gateway: not available in this build");
    std::process::ExitCode::FAILURE
}
