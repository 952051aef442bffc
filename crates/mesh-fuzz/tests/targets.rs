//! Every fuzz target on every test run: its corpus (the inputs found worth keeping,
//! and every input that once failed), then random mutations for a few seconds
//! (`ISTHMUS_FUZZ_SECONDS`, default 3), from a seed printed on failure
//! (`ISTHMUS_FUZZ_SEED` replays it).

use std::time::Duration;

fn fuzz(name: &str) {
    let (_, target) = mesh_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a target of that name");
    let corpus = mesh_fuzz::runner::inputs(name);
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
    let seconds = std::env::var("ISTHMUS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = std::env::var("ISTHMUS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let stats = mesh_fuzz::runner::run(*target, &corpus, Duration::from_secs(seconds), seed);
    if let Some((input, why)) = stats.failure {
        panic!(
            "{name} failed (ISTHMUS_FUZZ_SEED={seed}): {why}\ninput: {:?}",
            String::from_utf8_lossy(&input)
        );
    }
    assert!(stats.mutated > 0, "{name}: no mutated input ran");
}

#[test]
fn istio_yaml() {
    fuzz("istio_yaml");
}

#[test]
fn client_hello() {
    fuzz("client_hello");
}

#[test]
fn config_stream() {
    fuzz("config_stream");
}

#[test]
fn peering() {
    fuzz("peering");
}

#[test]
fn tunnel_header() {
    fuzz("tunnel_header");
}

#[test]
fn authz_path() {
    fuzz("authz_path");
}
