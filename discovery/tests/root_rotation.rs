//! A root rotation A → A+B → B under traffic, with sidecars whose certificates come
//! from discovery's CA: discovery follows its `cacerts` without a restart, its CA
//! hands out the full trust bundle, and renewals adopt it. No request fails, and every
//! sidecar ends on a certificate signed under B, trusting B alone.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use discovery::CaAuth;
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use mesh_identity::{ClusterCa, Identity, RootCa, SpiffeId, TrustBundle, TrustConfig};
use mesh_proxy::ca_client::CaClient;
use support::*;

const T: Duration = Duration::from_secs(20);

/// Writes a `cacerts` directory: `ca`'s intermediate, key and chain, and `roots` as
/// root-cert.pem.
fn write_cacerts(dir: &std::path::Path, ca: &ClusterCa, roots: &str) {
    let staging = tempfile::tempdir().unwrap();
    ca.write(staging.path()).unwrap();
    std::fs::write(staging.path().join("root-cert.pem"), roots).unwrap();
    for f in [
        "ca-key.pem",
        "ca-cert.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        write(
            dir,
            f,
            &std::fs::read_to_string(staging.path().join(f)).unwrap(),
        );
    }
}

fn trust_of(root: &RootCa) -> TrustConfig {
    TrustConfig::new(
        TD.parse().unwrap(),
        TrustBundle::from_pem(TD.parse().unwrap(), root.cert_pem().as_bytes(), "root").unwrap(),
    )
}

/// Whether `identity`'s certificate verifies under `trust`.
fn signed_under(identity: &Identity, trust: &TrustConfig) -> bool {
    let cert = identity.cert();
    let chain = cert.chain();
    trust
        .verify(
            &chain[0],
            &chain[1..],
            std::time::SystemTime::now(),
            mesh_identity::Usage::Client,
            "test",
        )
        .is_ok()
}

/// The roots `identity` trusts for the mesh's trust domain.
fn roots(identity: &Identity) -> usize {
    identity.trust().bundle.roots(&TD.parse().unwrap()).len()
}

struct CaSidecar {
    sidecar: mesh_proxy::Sidecar,
    identity: Identity,
    _proxy: Proxy,
    _renewal: tokio::task::JoinHandle<()>,
}

async fn ca_sidecar(
    discovery_addr: std::net::SocketAddr,
    bootstrap: TrustConfig,
    token_file: std::path::PathBuf,
    name: &str,
    sa: &str,
    ip: IpAddr,
) -> CaSidecar {
    let ca = CaClient {
        address: discovery_addr,
        bootstrap_trust: bootstrap,
        discovery_id: SpiffeId::new(TD.parse().unwrap(), "istio-system", "isthmus-discovery")
            .unwrap(),
        token_file,
        // Renewed every 2 s or so: the rotation reaches every sidecar in seconds.
        ttl: Duration::from_secs(4),
    };
    let id = SpiffeId::new(TD.parse().unwrap(), "shop", sa).unwrap();
    let issued = ca.request(&id).await.unwrap();
    let identity = Identity::new(issued.cert, issued.trust).unwrap();
    let renewal = tokio::spawn(mesh_identity::rotation::run_renewal(identity.clone(), ca));
    let MeshSidecar { sidecar, proxy } =
        sidecar_as(discovery_addr, identity.clone(), name, ip).await;
    CaSidecar {
        sidecar,
        identity,
        _proxy: proxy,
        _renewal: renewal,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_under_traffic_fails_no_request_and_ends_on_the_new_root() {
    let net = 20 + (std::process::id() % 200) as u8;
    let ip = |host: u8| IpAddr::from([127, net, 77, host]);
    let td = TD.parse().unwrap();
    let root_a = RootCa::generate(&td, ROOT_VALIDITY).unwrap();
    let root_b = RootCa::generate(&td, ROOT_VALIDITY).unwrap();
    let ca_a = root_a.intermediate("east", INTERMEDIATE_VALIDITY).unwrap();
    let ca_b = root_b.intermediate("east", INTERMEDIATE_VALIDITY).unwrap();
    let both = format!("{}{}", root_a.cert_pem(), root_b.cert_pem());

    let cacerts = tempfile::tempdir().unwrap();
    write_cacerts(cacerts.path(), &ca_a, root_a.cert_pem());
    let work = tempfile::tempdir().unwrap();
    write(
        work.path(),
        "tokens",
        "tok-frontend shop/frontend\ntok-reviews shop/reviews\n",
    );
    write(work.path(), "frontend.token", "tok-frontend");
    write(work.path(), "reviews.token", "tok-reviews");
    let registry = tempfile::tempdir().unwrap();
    write(
        registry.path(),
        "reviews.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
",
    );
    let pki = Pki::new("east");
    let mut opts = options(
        "east",
        discovery::Source::Files(registry.path().to_owned()),
        &pki,
    );
    opts.cacerts = discovery::CaCerts::Dir(cacerts.path().to_owned());
    opts.ca_auth = CaAuth::TokenFile(work.path().join("tokens"));
    opts.cacerts_poll = Duration::from_millis(100);
    let discovery = discovery::start(opts).await.unwrap();
    let addr = discovery.grpc_addr;

    app((ip(2), 8080).into(), "reviews").await;
    let reviews = ca_sidecar(
        addr,
        trust_of(&root_a),
        work.path().join("reviews.token"),
        "reviews-1",
        "reviews",
        ip(2),
    )
    .await;
    write(
        registry.path(),
        "entries.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-1
  namespace: shop
  annotations: {{isthmus.dev/inbound-port: \"{}\"}}
spec: {{address: {}, labels: {{app: reviews}}, serviceAccount: reviews}}
",
            reviews.sidecar.inbound_addr.port(),
            ip(2)
        ),
    );
    let frontend = ca_sidecar(
        addr,
        trust_of(&root_a),
        work.path().join("frontend.token"),
        "frontend-1",
        "frontend",
        ip(9),
    )
    .await;
    let sidecars = [&frontend.identity, &reviews.identity];
    let outbound = frontend.sidecar.outbound_addr;
    let start = std::time::Instant::now();
    while get(outbound, "reviews:9080", "/")
        .await
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(
            start.elapsed() < T,
            "no request went through before the rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Steady load through both sidecars for the whole rotation.
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = get(outbound, "reviews:9080", "/").await;
                sent.fetch_add(1, Ordering::SeqCst);
                if !matches!(&r, Ok((200, body)) if body == "reviews") {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("failed: {r:?}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // 1. root-cert.pem holds A and B; the intermediate is still A's.
    write_cacerts(cacerts.path(), &ca_a, &both);
    eventually("every sidecar trusts A and B", T, || {
        sidecars.iter().all(|i| roots(i) == 2) && roots(&discovery.identity) == 2
    })
    .await;
    // 2. The intermediate moves to B (roots still A and B).
    write_cacerts(cacerts.path(), &ca_b, &both);
    let trust_b = trust_of(&root_b);
    eventually("every sidecar holds a B-signed certificate", T, || {
        sidecars.iter().all(|i| signed_under(i, &trust_b))
            && signed_under(&discovery.identity, &trust_b)
    })
    .await;
    // 3. A is retired.
    write_cacerts(cacerts.path(), &ca_b, root_b.cert_pem());
    eventually("every sidecar trusts B alone", T, || {
        sidecars.iter().all(|i| roots(i) == 1) && roots(&discovery.identity) == 1
    })
    .await;
    // A few more renewals under B alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("root rotation A → A+B → B: {sent} requests, {failed} failed");
    assert!(sent > 100, "too little load to prove anything: {sent}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the rotation"
    );
    for i in sidecars {
        assert!(signed_under(i, &trust_b), "{:?}", i.cert());
        assert!(
            !signed_under(i, &trust_of(&root_a)),
            "still on an A certificate"
        );
        assert_eq!(roots(i), 1);
    }
    // Discovery no longer accepts a certificate under A.
    let id = SpiffeId::new(TD.parse().unwrap(), "shop", "frontend").unwrap();
    let a_signed = ca_a
        .issue_workload(&id, Duration::from_secs(60))
        .unwrap()
        .load("A")
        .unwrap();
    let a_identity = Identity::new(a_signed, trust_of(&root_a)).unwrap();
    assert!(!signed_under(&a_identity, &discovery.identity.trust()));
    let reloaded = discovery.metrics.encode();
    assert!(
        reloaded.contains("isthmus_discovery_cacerts_reloaded_total 3"),
        "{}",
        reloaded
            .lines()
            .filter(|l| l.contains("cacerts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
