//! `meshctl testbed` as a newcomer runs it: up with two clusters (a kube-apiserver
//! each when the Kubernetes binaries are there; as root, workloads in pods with
//! transparent capture), a request across clusters, the trace of the chain across
//! clusters in the shared Jaeger, the failover scenario with no failed request, the
//! canary split, strict mTLS (plaintext from outside the mesh to a workload's port:
//! served under PERMISSIVE, refused under STRICT), and down leaving no process,
//! namespace, mount or file. Then the path without root: loopback workloads in
//! explicit proxy mode.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// `meshctl testbed curl --cluster west` reaches helloworld v2 there.
fn assert_west_serves_v2(dir: &Path) {
    let hello = meshctl(
        dir,
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
}

/// One GET from the host, as `curl http://ADDR/PATH` sends it: (status, body).
fn host_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: curl/8\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// The testbed's Gateway and VirtualService (the seed tutorials': port 80, `/api`
/// split 90/10 across two subsets) through east's ingress gateway, from the host.
fn assert_ingress_splits_across_clusters(ingress: &str) {
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..100 {
        let (status, body) = host_get(ingress, "/api");
        assert_eq!(status, 200, "{body}");
        if body.contains("Hello version: v1, instance: helloworld-v1, cluster: east") {
            v1 += 1;
        } else if body.contains("Hello version: v2, instance: helloworld-v2, cluster: west") {
            v2 += 1;
        } else {
            panic!("unexpected answer through the ingress gateway: {body}");
        }
    }
    assert!(v2 >= 2 && v1 >= 70, "90/10: v1 {v1}, v2 {v2}");
    let (status, body) = host_get(ingress, "/");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("frontpage v1 (east) → reviews v1 (west) → ratings v1 (east)"),
        "{body}"
    );
}

#[test]
fn testbed_up_crosses_clusters_fails_over_and_goes_down_clean() {
    let (_tmp, _down, dir, out) = testbed_up();
    assert!(out.contains("Ready in"), "{out}");
    assert!(
        out.contains("frontpage v1 (east) → reviews v1 (west) → ratings v1 (east)"),
        "{out}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let kube = prerequisite("ISTHMUS_KUBE_BIN_DIR", "Kubernetes registry");
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
    let root = nix::unistd::geteuid().is_root();
    let pods = state["plan"]["pods"].as_bool().unwrap_or(false);
    assert_eq!(pods, root, "as root the workloads run in pods: {state}");
    assert!(
        out.contains(if pods {
            "workloads in pods"
        } else {
            "on loopback"
        }),
        "{out}"
    );
    let namespaces: Vec<String> = state["namespaces"]
        .as_array()
        .map(|a| a.iter().map(|n| n.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    if pods {
        // Two cluster networks and one namespace per workload, each pod's sidecar
        // capturing with iptables.
        assert_eq!(namespaces.len(), 2 + 7, "{namespaces:?}");
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        for ns in &namespaces {
            assert!(listed.contains(ns.as_str()), "{ns} missing: {listed}");
        }
        let rules = Command::new("ip")
            .args([
                "netns",
                "exec",
                "itb-curl-east",
                "iptables",
                "-t",
                "nat",
                "-S",
            ])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(rules.contains("--to-ports 15001"), "{rules}");
    }
    let west_gateway_admin = state["plan"]["clusters"][1]["gatewayAdmin"]
        .as_str()
        .unwrap()
        .to_owned();

    // curl in west reaches helloworld v2 there.
    assert_west_serves_v2(&dir);
    // A service only west has (no Service of that name in east) resolves and routes
    // from east: in a pod its name is answered by the sidecar's DNS proxy, with an
    // address it allocates.
    let remote = meshctl(&dir, &["testbed", "curl", "http://hello-west:5000/hello"]);
    assert!(
        text(&remote).contains("Hello version: v2, instance: helloworld-v2, cluster: west"),
        "{}",
        text(&remote)
    );
    if pods {
        let looked_up = Command::new("ip")
            .args([
                "netns",
                "exec",
                "itb-curl-east",
                "getent",
                "hosts",
                "hello-west.sample.svc.cluster.local",
            ])
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&looked_up.stdout);
        assert!(answer.starts_with("240.240."), "{answer:?}");
    }
    // A ServiceEntry of west selecting its helloworld workloads is exported like a
    // Service: east, which has no such entry, reaches them by the entry's host.
    let entry = meshctl(
        &dir,
        &["testbed", "curl", "http://hello.vm.internal:5000/hello"],
    );
    assert!(
        text(&entry).contains("Hello version: v2, instance: helloworld-v2, cluster: west"),
        "{}",
        text(&entry)
    );
    // Diagnose, from east's curl sidecar: the route used, and helloworld's endpoints,
    // east's own and west's through west's east-west gateway.
    let diagnosed = meshctl(&dir, &["diagnose", "http://helloworld:5000/hello"]);
    let explained = text(&diagnosed);
    assert!(diagnosed.status.success(), "{explained}");
    assert!(
        explained.contains("← used")
            && explained.contains("DestinationRule sample/helloworld")
            && explained.contains("cluster east locality")
            && explained.contains("through cluster west's east-west gateway")
            && explained.matches("admitted by the destination").count() == 2,
        "{explained}"
    );
    // A request the mesh refuses says why, with a failing exit status.
    let refused = meshctl(&dir, &["diagnose", "http://no-such-service:5000/"]);
    let explained = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{explained}");
    assert!(explained.contains("refused: 404 NR"), "{explained}");
    // Drift between clusters, planted in west only: `analyze --all-clusters` finds
    // it; and a DENY policy there shows in `diagnose` as the destination's refusal.
    if kube {
        let apply_in = |cluster: &str, yaml: &str, remove: bool| {
            let path = std::path::PathBuf::from(state["kubeconfigs"][cluster].as_str().unwrap());
            let yaml = yaml.to_owned();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let client = discovery::kube_client(&path).await.unwrap();
                    let mode = if remove {
                        testbed::apply::Mode::Delete
                    } else {
                        testbed::apply::Mode::Apply
                    };
                    testbed::apply::apply_yaml(&client, &yaml, "sample", mode)
                        .await
                        .unwrap();
                });
        };
        let apply = |yaml: &str, remove: bool| apply_in("west", yaml, remove);
        // Clean, with both link Secrets read and their trust checked against the
        // roots each cluster publishes.
        let clean = meshctl(&dir, &["analyze", "--all-clusters"]);
        assert!(
            clean.status.success() && text(&clean).contains(" 2 link(s) checked"),
            "{}",
            text(&clean)
        );
        let west_only = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings-west, namespace: sample}\nspec: {hosts: [ratings], http: [{route: [{destination: {host: ratings}}]}]}\n";
        apply(west_only, false);
        let drifted = meshctl(&dir, &["analyze", "--all-clusters"]);
        assert!(
            text(&drifted).contains("ISM0103")
                && text(&drifted).contains("VirtualService sample/ratings-west")
                && text(&drifted).contains("it exists in west but not in east"),
            "{}",
            text(&drifted)
        );
        apply(west_only, true);
        // A service in another namespace in each cluster: by namespace sameness, two.
        let payments = |ns: &str| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: payments, namespace: {ns}}}\nspec: {{selector: {{app: payments}}, ports: [{{name: http, port: 8080}}]}}\n"
            )
        };
        apply_in("east", &payments("sample"), false);
        apply_in("west", &payments("sample-prod"), false);
        let drifted = meshctl(&dir, &["analyze", "--all-clusters"]);
        assert!(
            text(&drifted).contains("ISM0107")
                && text(&drifted).contains("sample/payments in east; sample-prod/payments in west"),
            "{}",
            text(&drifted)
        );
        let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-hello, namespace: sample}\nspec: {selector: {matchLabels: {app: helloworld}}, action: DENY, rules: [{to: [{operation: {paths: [/hello]}}]}]}\n";
        apply(deny, false);
        let start = std::time::Instant::now();
        loop {
            let denied = meshctl(&dir, &["diagnose", "http://helloworld:5000/hello"]);
            let out = text(&denied);
            if out.contains(
                "DENIED by the destination: rbac_access_denied_matched_policy[sample/no-hello]",
            ) {
                // East's endpoint is still admitted (no such policy there).
                assert!(out.contains("admitted by the destination"), "{out}");
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        apply(deny, true);
    }
    // From the host, east's ingress gateway splits /api 90/10 over v1 (east) and v2
    // (west), and routes the rest to the front page's chain across clusters.
    let ingress = state["plan"]["clusters"][0]["ingress"].as_str().unwrap();
    assert!(out.contains(&format!("curl http://{ingress}/api")), "{out}");
    assert_ingress_splits_across_clusters(ingress);

    // Shared tracing: front page (east) → reviews (west) → ratings (east) is one trace
    // in Jaeger with spans from sidecars of both clusters.
    if prerequisite("ISTHMUS_JAEGER_BIN", "shared tracing") {
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
        // The first request opened the QUIC tunnels: its trace has a span from each
        // sidecar and from both gateways (each tagged with its cluster), and `up`
        // printed its id.
        let first_trace = state["firstTrace"].as_str().unwrap().to_owned();
        assert!(
            out.contains(&format!("meshctl trace {first_trace}")),
            "{out}"
        );
        let start = std::time::Instant::now();
        loop {
            let trace = meshctl(&dir, &["trace", &first_trace]);
            let out = text(&trace);
            let gateway_spans = out
                .lines()
                .filter(|l| l.contains("isthmus-eastwestgateway"))
                .collect::<Vec<_>>();
            if trace.status.success()
                && out.contains("8 spans across 2 cluster(s): east, west")
                && gateway_spans.iter().any(|l| l.contains(" west "))
                && gateway_spans.iter().any(|l| l.contains(" east "))
            {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "the first request's trace lacks a gateway hop: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        // Discovery too: its config pushes, certificate requests and link syncs, tagged
        // with their cluster.
        let start = std::time::Instant::now();
        loop {
            let trace = meshctl(
                &dir,
                &[
                    "trace",
                    "--last",
                    "--service",
                    "isthmus-discovery.istio-system",
                ],
            );
            let out = text(&trace);
            let ops = ["config push", "ca sign", "peering sync"];
            if trace.status.success()
                && ops
                    .iter()
                    .any(|op| out.contains(&format!("isthmus-discovery.istio-system: {op}")))
            {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "no discovery span in Jaeger: {out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    // The chain crossed west's gateway in a QUIC tunnel (the links advertise QUIC).
    let chain = meshctl(&dir, &["testbed", "curl", "http://frontpage:9080/"]);
    assert!(chain.status.success(), "{}", text(&chain));
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&west_gateway_admin).unwrap();
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

    // The same readiness, checked statically from east's discovery: helloworld has a
    // ready endpoint in west behind its gateway and outlier detection; ratings lives
    // in east only, and the command says so with exit status 1.
    let east_monitor = state["plan"]["clusters"][0]["monitor"]
        .as_str()
        .unwrap()
        .to_owned();
    let verify = |service: &str| {
        meshctl(
            &dir,
            &[
                "multicluster",
                "verify-failover",
                "--discovery",
                &east_monitor,
                "--service",
                service,
            ],
        )
    };
    let ok = verify("helloworld.sample");
    let out = text(&ok);
    assert!(ok.status.success(), "{out}");
    assert!(
        out.contains("endpoints in west: 1 ready of 1, gateway") && out.contains("PASS"),
        "{out}"
    );
    let bad = verify("ratings.sample");
    let out = text(&bad);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(
        out.contains("no ready endpoint of ratings.sample in another cluster"),
        "{out}"
    );

    // Canary: the observed split follows 80/20; strict mTLS: plaintext refused.
    let canary = meshctl(&dir, &["testbed", "scenario", "canary"]);
    assert!(
        canary.status.success() && text(&canary).contains("PASS"),
        "{}",
        text(&canary)
    );
    // The kubeconfig a user points kubectl at.
    if kube {
        let kc = meshctl(&dir, &["testbed", "kubeconfig", "west"]);
        assert!(kc.status.success(), "{}", text(&kc));
        assert_eq!(
            text(&kc).trim(),
            state["kubeconfigs"]["west"].as_str().unwrap(),
            "{}",
            text(&kc)
        );
    }
    // MCS: `helloworld.sample.svc.clusterset.local` answers from the clusters whose
    // ServiceExport exports it, and follows them as exports come and go.
    let mcs = meshctl(&dir, &["testbed", "scenario", "clusterset"]);
    let out = text(&mcs);
    assert!(mcs.status.success(), "{out}");
    assert!(
        out.contains("exported by west: answered by {\"west\"}")
            && out.contains("exported by both: answered by {\"east\", \"west\"}")
            && out.contains("withdrawn by west: answered by {\"east\"}")
            && out.contains("PASS"),
        "{out}"
    );
    // Strict mTLS, as an unmeshed client sees it: plaintext to the workload's own port
    // is served under PERMISSIVE (the control case) and refused under STRICT.
    let strict = meshctl(&dir, &["testbed", "scenario", "strict-mtls"]);
    let out = text(&strict);
    assert!(strict.status.success(), "{out}");
    for want in [
        "PERMISSIVE, plaintext: served (200 OK)",
        "STRICT, plaintext: refused",
        "STRICT, mTLS from curl-east: 200 OK",
        "PASS",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }

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
    let listed = Command::new("ip").args(["netns", "list"]).output();
    let listed = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for ns in &namespaces {
        let listed = listed.as_deref().unwrap_or_default();
        assert!(!listed.contains(ns.as_str()), "namespace {ns} survived");
        assert!(!mounts.contains(ns.as_str()), "mount of {ns} survived");
    }
    assert!(
        !Path::new("/sys/class/net/itb0").exists(),
        "host link itb0 survived"
    );
    let again = meshctl(&dir, &["testbed", "down"]);
    assert!(again.status.success() && text(&again).contains("Nothing to stop"));

    // Without root (or by choice): loopback addresses, explicit proxy mode.
    let up = meshctl(
        &dir,
        &[
            "testbed",
            "up",
            "--workloads",
            "loopback",
            "--registry",
            "files",
        ],
    );
    let out = text(&up);
    assert!(up.status.success(), "{out}");
    assert!(out.contains("on loopback (explicit proxy mode)"), "{out}");
    assert!(
        out.contains("frontpage v1 (east) → reviews v1 (west) → ratings v1 (east)"),
        "{out}"
    );
    assert_west_serves_v2(&dir);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_ingress_splits_across_clusters(
        state["plan"]["clusters"][0]["ingress"].as_str().unwrap(),
    );
    let down = meshctl(&dir, &["testbed", "down"]);
    assert!(down.status.success(), "{}", text(&down));
}
