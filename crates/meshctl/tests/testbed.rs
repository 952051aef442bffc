//! `meshctl testbed` as a newcomer runs it: up with two clusters (a kube-apiserver
//! each when the Kubernetes binaries are there), a request across clusters, the
//! trace of the chain across clusters in the shared Jaeger, the failover scenario with
//! no failed request, the canary split and strict mTLS, and down leaving no process or
//! file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meshctl"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The binaries the testbed starts, built when only this package is being tested.
fn ensure_binaries() {
    let missing = ["discovery", "sidecar", "east-west-gateway"]
        .iter()
        .any(|b| !bin_dir().join(b).exists());
    if missing {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "discovery",
                "-p",
                "sidecar",
                "-p",
                "east-west-gateway",
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn meshctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env("ISTHMUS_TESTBED_DIR", dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Stops the testbed even when an assertion fails.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = meshctl(&self.0, &["testbed", "down"]);
    }
}

#[test]
fn testbed_up_crosses_clusters_fails_over_and_goes_down_clean() {
    ensure_binaries();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bed");
    let _down = Down(dir.clone());
    let up = meshctl(&dir, &["testbed", "up"]);
    let out = text(&up);
    assert!(
        up.status.success(),
        "{out}\n{}",
        std::fs::read_to_string(dir.join("supervisor.log")).unwrap_or_default()
    );
    assert!(out.contains("Ready in"), "{out}");
    assert!(
        out.contains("frontpage v1 (east) → reviews v1 (west) → ratings v1 (east)"),
        "{out}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let kube = std::env::var_os("ISTHMUS_KUBE_BIN_DIR").is_some();
    if kube {
        assert_eq!(state["registry"], "kubernetes", "{state}");
    }
    let children: Vec<u32> = state["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    let supervisor = state["pid"].as_u64().unwrap() as u32;
    assert!(children.len() >= 11, "{children:?}");

    // A request from east reaches v2 in west when asked for by cluster.
    let hello = meshctl(
        &dir,
        &[
            "testbed",
            "curl",
            "--cluster",
            "west",
            "http://helloworld:5000/hello",
        ],
    );
    assert!(
        text(&hello).contains("Hello version: v2, instance: helloworld-v2, cluster: west"),
        "{}",
        text(&hello)
    );

    // Shared tracing: front page (east) → reviews (west) → ratings (east) is one trace
    // in Jaeger with spans from sidecars of both clusters.
    if std::env::var_os("ISTHMUS_JAEGER_BIN").is_some() {
        let chain = meshctl(&dir, &["testbed", "curl", "http://frontpage:9080/"]);
        assert!(chain.status.success(), "{}", text(&chain));
        let start = std::time::Instant::now();
        loop {
            let trace = meshctl(&dir, &["trace", "--last", "--service", "frontpage.sample"]);
            let out = text(&trace);
            if trace.status.success()
                && out.contains("across 2 cluster(s): east, west")
                && out.contains("ratings.sample")
                && out.contains("reviews.sample")
            {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "no cross-cluster trace in Jaeger: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        // The gateway hop: a span per tunnelled connection, tagged with its cluster.
        let start = std::time::Instant::now();
        loop {
            let trace = meshctl(
                &dir,
                &[
                    "trace",
                    "--last",
                    "--service",
                    "isthmus-eastwestgateway.istio-system",
                ],
            );
            let out = text(&trace);
            if trace.status.success() && out.contains("isthmus-eastwestgateway.istio-system: gatew")
            {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "no gateway span in Jaeger: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    // The chain crossed west's gateway in a QUIC tunnel (the links advertise QUIC).
    let chain = meshctl(&dir, &["testbed", "curl", "http://frontpage:9080/"]);
    assert!(chain.status.success(), "{}", text(&chain));
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.241.0.2:15021").unwrap();
        write!(
            s,
            "GET /stats/prometheus HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let quic: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("isthmus_gateway_quic_streams_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(quic >= 1, "no QUIC stream at west's gateway:\n{metrics}");

    // Failover: v1 fails, traffic moves to west, no request fails.
    let failover = meshctl(&dir, &["testbed", "scenario", "failover"]);
    let out = text(&failover);
    assert!(failover.status.success(), "{out}");
    assert!(out.contains(", 0 failed") && out.contains("PASS"), "{out}");

    // Canary: the observed split follows 80/20; strict mTLS: plaintext refused.
    let canary = meshctl(&dir, &["testbed", "scenario", "canary"]);
    assert!(
        canary.status.success() && text(&canary).contains("PASS"),
        "{}",
        text(&canary)
    );
    let strict = meshctl(&dir, &["testbed", "scenario", "strict-mtls"]);
    let out = text(&strict);
    assert!(
        strict.status.success() && out.contains("plaintext to") && out.contains("refused"),
        "{out}"
    );

    let status = meshctl(&dir, &["testbed", "status"]);
    assert!(
        text(&status).contains("east-west gateway"),
        "{}",
        text(&status)
    );

    // Down: every process gone, the directory removed; a second down is harmless.
    let down = meshctl(&dir, &["testbed", "down"]);
    assert!(down.status.success(), "{}", text(&down));
    for pid in children.iter().chain([&supervisor]) {
        assert!(
            !testbed::is_alive(*pid),
            "process {pid} survived testbed down"
        );
    }
    assert!(!dir.exists());
    let again = meshctl(&dir, &["testbed", "down"]);
    assert!(again.status.success() && text(&again).contains("Nothing to stop"));
}
