//! `meshctl` as a user runs it: the ca commands build a working federated root, bad
//! arguments get clear errors, and the quickstart completes its mTLS call.

use std::path::Path;
use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = meshctl(args);
    assert!(
        out.status.success(),
        "meshctl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = meshctl(args);
    assert!(!out.status.success(), "meshctl {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn ca_commands_build_a_federated_root_usable_by_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, east, west, wl) = (
        tmp.path().join("root"),
        tmp.path().join("east"),
        tmp.path().join("west"),
        tmp.path().join("wl"),
    );

    let out = ok(&[
        "ca",
        "init",
        "--trust-domain",
        "mesh.example",
        "--out",
        p(&root),
    ]);
    assert!(
        out.contains("root CA for trust domain mesh.example"),
        "{out}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(root.join("root-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the root key is private");

    ok(&[
        "ca",
        "intermediate",
        "--root",
        p(&root),
        "--cluster",
        "east",
        "--out",
        p(&east),
        "--secret-namespace",
        "istio-system",
    ]);
    ok(&[
        "ca",
        "intermediate",
        "--root",
        p(&root),
        "--cluster",
        "west",
        "--out",
        p(&west),
    ]);
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        assert!(east.join(f).is_file(), "{f}");
    }
    let secret = std::fs::read_to_string(east.join("cacerts-secret.yaml")).unwrap();
    assert!(
        secret.contains("name: cacerts") && secret.contains("namespace: istio-system"),
        "{secret}"
    );
    assert!(secret.contains("cert-chain.pem:"), "{secret}");

    ok(&[
        "ca",
        "workload",
        "--ca",
        p(&east),
        "--namespace",
        "shop",
        "--service-account",
        "frontend",
        "--out",
        p(&wl),
    ]);
    let cert =
        mesh_identity::WorkloadCert::load(&wl.join("cert-chain.pem"), &wl.join("key.pem")).unwrap();
    assert_eq!(
        cert.id().to_string(),
        "spiffe://mesh.example/ns/shop/sa/frontend"
    );

    // The workload verifies against the root exported as a SPIFFE bundle and imported.
    let bundle_json = tmp.path().join("bundle.json");
    ok(&[
        "ca",
        "bundle",
        "export",
        "--trust-domain",
        "mesh.example",
        "--roots",
        p(&root.join("root-cert.pem")),
        "--out",
        p(&bundle_json),
    ]);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle_json).unwrap()).unwrap();
    assert_eq!(doc["keys"][0]["use"], "x509-svid");
    assert_eq!(doc["keys"][0]["crv"], "P-256");
    let imported = tmp.path().join("imported.pem");
    ok(&[
        "ca",
        "bundle",
        "import",
        "--trust-domain",
        "mesh.example",
        p(&bundle_json),
        "--out",
        p(&imported),
    ]);
    let td: mesh_identity::TrustDomain = "mesh.example".parse().unwrap();
    let bundle = mesh_identity::TrustBundle::from_pem(
        td.clone(),
        &std::fs::read(&imported).unwrap(),
        "imported",
    )
    .unwrap();
    mesh_identity::Identity::new(cert, mesh_identity::TrustConfig::new(td, bundle)).unwrap();

    // Merging two roots (rotation) keeps each once.
    let root_b = tmp.path().join("root-b");
    ok(&[
        "ca",
        "init",
        "--trust-domain",
        "mesh.example",
        "--out",
        p(&root_b),
    ]);
    let merged = tmp.path().join("both.pem");
    let out = ok(&[
        "ca",
        "bundle",
        "merge",
        "--trust-domain",
        "mesh.example",
        "--out",
        p(&merged),
        p(&root.join("root-cert.pem")),
        p(&root_b.join("root-cert.pem")),
        p(&root.join("root-cert.pem")),
    ]);
    assert!(out.starts_with("2 distinct root(s)"), "{out}");
}

#[test]
fn bad_arguments_get_clear_errors_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let err = fails(&[
        "ca",
        "init",
        "--trust-domain",
        "Mesh_Example!",
        "--out",
        p(&root),
    ]);
    assert!(
        err.contains("--trust-domain") && err.contains("lowercase letters"),
        "{err}"
    );

    ok(&[
        "ca",
        "init",
        "--trust-domain",
        "mesh.example",
        "--out",
        p(&root),
    ]);
    let before = std::fs::read(root.join("root-key.pem")).unwrap();
    let err = fails(&[
        "ca",
        "init",
        "--trust-domain",
        "mesh.example",
        "--out",
        p(&root),
    ]);
    assert!(err.contains("already exists; pass --force"), "{err}");
    assert_eq!(
        std::fs::read(root.join("root-key.pem")).unwrap(),
        before,
        "the root survived"
    );

    let err = fails(&[
        "ca",
        "intermediate",
        "--root",
        p(&root),
        "--cluster",
        "East_1",
        "--out",
        p(&tmp.path().join("x")),
    ]);
    assert!(err.contains("not a DNS-1123 label"), "{err}");

    let err = fails(&[
        "ca",
        "intermediate",
        "--root",
        p(&tmp.path().join("nowhere")),
        "--cluster",
        "east",
        "--out",
        p(&tmp.path().join("x")),
    ]);
    assert!(
        err.contains("loading the root") && err.contains("root-cert.pem"),
        "{err}"
    );
}

#[test]
fn crds_command_prints_what_is_checked_in() {
    let out = ok(&["crds"]);
    let checked_in =
        std::fs::read_to_string(testbed::workspace_root().join("deploy/crds/istio-crds.yaml"))
            .unwrap();
    assert_eq!(out, checked_in);
}

#[test]
fn quickstart_shows_both_identities_and_refuses_the_foreign_root() {
    let out = ok(&["quickstart"]);
    assert!(
        out.contains("east sees server  spiffe://isthmus.local/ns/shop/sa/reviews"),
        "{out}"
    );
    assert!(
        out.contains("west sees client  spiffe://isthmus.local/ns/shop/sa/frontend"),
        "{out}"
    );
    assert!(
        out.contains("foreign root refused") && out.contains("does not reach a trusted root"),
        "{out}"
    );
}

#[test]
fn remote_secret_prints_a_link_that_discovery_reads_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    ok(&[
        "ca",
        "init",
        "--trust-domain",
        "mesh.example",
        "--out",
        p(&root),
    ]);
    let bundle = root.join("root-cert.pem");
    let args = |discovery: &str, name: &str| {
        vec![
            "remote-secret".to_owned(),
            "--name".into(),
            name.into(),
            "--network".into(),
            "net-west".into(),
            "--discovery-address".into(),
            discovery.into(),
            "--gateway-address".into(),
            "10.0.2.1:15443".into(),
            "--trust-bundle".into(),
            p(&bundle).into(),
        ]
    };
    let yaml = ok(&strs(&args("10.0.2.1:15012", "west")));
    assert!(yaml.contains("istio/multiCluster: \"true\""), "{yaml}");
    assert!(yaml.contains("networking.istio.io/cluster: west"), "{yaml}");
    assert!(yaml.contains("BEGIN CERTIFICATE"), "{yaml}");
    assert!(
        !yaml.to_lowercase().contains("token"),
        "no bearer token: {yaml}"
    );
    // What it prints is a link discovery accepts.
    let doc = mesh_api::split_documents(&yaml).unwrap().remove(0);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(doc).unwrap();
    let link = discovery::links::Link::from_secret(&secret)
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            link.cluster.as_str(),
            link.network.as_str(),
            link.discovery_address.as_str(),
            link.trust_domain.as_str()
        ),
        ("west", "net-west", "10.0.2.1:15012", "mesh.example")
    );

    let err = fails(&strs(&args("127.0.0.1:15012", "west")));
    assert!(
        err.contains("loopback") && err.contains("--allow-loopback"),
        "{err}"
    );
    let mut loopback = args("127.0.0.1:15012", "west");
    loopback.push("--allow-loopback".into());
    ok(&strs(&loopback));
    let err = fails(&strs(&args("10.0.2.1:15012", "West_1")));
    assert!(err.contains("DNS-1123"), "{err}");
    let err = fails(&strs(&args("10.0.2.1", "west")));
    assert!(err.contains("HOST:PORT"), "{err}");
}

#[test]
fn testbed_pods_without_iptables_says_what_to_install() {
    // A PATH with `ip` but no `iptables`.
    let bin = tempfile::tempdir().unwrap();
    let ip = bin.path().join("ip");
    std::fs::write(&ip, "#!/bin/sh\nexit 0\n").unwrap();
    let mut perms = std::fs::metadata(&ip).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&ip, perms).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["testbed", "up", "--workloads", "pods", "--dir"])
        .arg(dir.path())
        .env("PATH", bin.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    if nix::unistd::geteuid().is_root() {
        assert!(
            err.contains("`iptables` is not installed; install it with `apt-get install iptables`"),
            "{err}"
        );
    } else {
        assert!(err.contains("not running as root"), "{err}");
    }
}
