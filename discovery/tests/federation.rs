//! Two discovery services linked by link Secrets (file mode): each streams what it
//! exports to the other over mTLS; services merge by namespace sameness, a service
//! only in the other cluster resolves, endpoints on another network go through that
//! network's gateway, cluster-local and hidden services stay home; a deleted link
//! withdraws the peer's endpoints, an expired lease turns them stale, and they are
//! withdrawn once the peer's gateway fails its health checks.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);
const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const RATINGS: &str = "ratings.shop.svc.cluster.local";

const EAST: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 10.1.0.1, labels: {app: reviews, version: v1}, serviceAccount: reviews, locality: eu/a}
";

const WEST: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: shop}
spec: {address: 10.2.0.1, labels: {app: reviews, version: v2}, serviceAccount: reviews, locality: us/b}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2b, namespace: shop}
spec: {address: 10.2.0.2, labels: {app: reviews, version: v2}, serviceAccount: reviews, locality: us/b, weight: 3}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: shop}
spec: {address: 10.2.0.9, labels: {app: ratings}, serviceAccount: ratings}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {selector: {app: dns}, ports: [{name: dns, port: 53}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: dns-1, namespace: kube-system}
spec: {address: 10.2.0.53, labels: {app: dns}}
---
apiVersion: v1
kind: Service
metadata:
  name: private
  namespace: shop
  annotations: {networking.istio.io/exportTo: \"~\"}
spec: {selector: {app: private}, ports: [{name: http, port: 80}]}
";

/// East and west (file registries with EAST and WEST, one root, a lease of 2 s, east
/// probing a stale peer's gateway every 200 ms), not linked yet.
struct Pair {
    east_pki: Pki,
    west_pki: Pki,
    root_pem: String,
    east_dir: tempfile::TempDir,
    west_dir: tempfile::TempDir,
    east: discovery::Discovery,
    west: discovery::Discovery,
}

async fn pair() -> Pair {
    // One federated root, one intermediate per cluster.
    let east_pki = Pki::new("east");
    let west_pki = east_pki.sibling("west");
    let root_pem = east_pki.root.cert_pem().to_owned();
    let east_dir = tempfile::tempdir().unwrap();
    let west_dir = tempfile::tempdir().unwrap();
    write(east_dir.path(), "shop.yaml", EAST);
    write(west_dir.path(), "shop.yaml", WEST);
    let start = |name: &str, dir: &tempfile::TempDir, pki: &Pki| {
        let mut o = options(name, discovery::Source::Files(dir.path().to_owned()), pki);
        o.lease = Duration::from_secs(2);
        o.links.probe_interval = Duration::from_millis(200);
        discovery::start(o)
    };
    let east = start("east", &east_dir, &east_pki).await.unwrap();
    let west = start("west", &west_dir, &west_pki).await.unwrap();
    Pair {
        east_pki,
        west_pki,
        root_pem,
        east_dir,
        west_dir,
        east,
        west,
    }
}

/// [`pair`], linked both ways.
async fn linked_pair() -> Pair {
    let p = pair().await;
    link_both(&p.east_dir, &p.west_dir, &p.east, &p.west, &p.root_pem);
    p
}

/// Links east and west to each other (their gateways are addresses on their
/// networks where nothing listens).
fn link_both(
    east_dir: &tempfile::TempDir,
    west_dir: &tempfile::TempDir,
    east: &discovery::Discovery,
    west: &discovery::Discovery,
    root_pem: &str,
) {
    write(
        east_dir.path(),
        "link-west.yaml",
        &link_secret("west", west.grpc_addr, "127.0.0.1:25443", root_pem, false),
    );
    write(
        west_dir.path(),
        "link-east.yaml",
        &link_secret("east", east.grpc_addr, "127.0.0.1:15443", root_pem, false),
    );
}

fn endpoint_summary(store: &mesh_proxy::StateStore, host: &str) -> Vec<String> {
    let state = store.snapshot();
    let mut v: Vec<String> = state
        .services
        .get(host)
        .map(|s| {
            s.endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{} {} w{} {}",
                        e.inbound,
                        e.cluster,
                        e.weight,
                        e.labels.get("version").cloned().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_clusters_exchange_exported_endpoints_and_withdraw_them() {
    let Pair {
        east_pki,
        west_pki,
        root_pem,
        east_dir,
        west_dir,
        east,
        west,
    } = pair().await;

    // Link each to the other (the gateways are addresses on their networks).
    link_both(&east_dir, &west_dir, &east, &west, &root_pem);
    // A link to oneself is ignored with a reason.
    write(
        east_dir.path(),
        "link-self.yaml",
        &link_secret("east", east.grpc_addr, "127.0.0.1:15443", &root_pem, false),
    );

    let proxy = connect(east.grpc_addr, &east_pki, "frontend-1", "shop", "frontend");
    // reviews merges: the local endpoint, and west's two v2 endpoints through west's
    // gateway, as one gateway endpoint whose weight sums theirs (WorkloadEntry weight
    // 1 and 3).
    eventually("merged reviews", T, || {
        endpoint_summary(&proxy.store, REVIEWS)
            == ["10.1.0.1:15006 east w1 v1", "127.0.0.1:25443 west w4 v2"]
    })
    .await;
    let state = proxy.store.snapshot();
    let gw = state.services[REVIEWS]
        .endpoints
        .iter()
        .find(|e| e.cluster == "west")
        .unwrap();
    assert_eq!(gw.network, "net-west");
    assert_eq!(gw.locality, "us/b");
    assert_eq!(gw.service_account.as_deref(), Some("reviews"));
    // ratings exists only in west and still resolves, with no stub Service in east.
    assert_eq!(
        endpoint_summary(&proxy.store, RATINGS),
        ["127.0.0.1:25443 west w1 "]
    );
    // Cluster-local (kube-system) and exportTo "~" services stay in west.
    assert!(
        !state
            .services
            .contains_key("kube-dns.kube-system.svc.cluster.local")
    );
    assert!(
        !state
            .services
            .contains_key("private.shop.svc.cluster.local")
    );
    // And the other way: west's proxies see east's reviews-v1 through east's gateway.
    let west_proxy = connect(west.grpc_addr, &west_pki, "ratings-1", "shop", "ratings");
    eventually("west sees east", T, || {
        endpoint_summary(&west_proxy.store, REVIEWS)
            .contains(&"127.0.0.1:15443 east w1 v1".to_owned())
    })
    .await;

    let links = east.links.list();
    assert_eq!(links.len(), 1, "the self link is not used: {links:?}");
    assert_eq!(links[0].state, "connected");
    assert_eq!((links[0].services, links[0].endpoints), (2, 3));
    assert_eq!(links[0].trust_bundle_match, Some(true));
    // The self link was written last: it may take one more poll of the directory.
    eventually("the self link is refused with a reason", T, || {
        east.registry
            .errors()
            .iter()
            .any(|e| e.object.contains("link-self") || e.reason.contains("which is this cluster"))
    })
    .await;

    // An endpoint change in west arrives in east's proxies.
    write(
        west_dir.path(),
        "more.yaml",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: ratings-2, namespace: shop}\nspec: {address: 10.2.0.10, labels: {app: ratings}, serviceAccount: ratings}\n",
    );
    eventually("incremental update from west", T, || {
        endpoint_summary(&proxy.store, RATINGS) == ["127.0.0.1:25443 west w2 "]
    })
    .await;

    // Deleting the link withdraws west's endpoints at once.
    std::fs::remove_file(east_dir.path().join("link-west.yaml")).unwrap();
    eventually("link deleted", T, || {
        endpoint_summary(&proxy.store, REVIEWS) == ["10.1.0.1:15006 east w1 v1"]
            && !proxy.store.snapshot().services.contains_key(RATINGS)
    })
    .await;
    write(
        east_dir.path(),
        "link-west.yaml",
        &link_secret("west", west.grpc_addr, "127.0.0.1:25443", &root_pem, false),
    );
    eventually("link back", T, || {
        endpoint_summary(&proxy.store, REVIEWS).len() == 2
    })
    .await;

    // West goes silent: its endpoints stay until the lease (2 s) runs out.
    let stopped = std::time::Instant::now();
    drop(west);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        endpoint_summary(&proxy.store, REVIEWS).len(),
        2,
        "kept within the lease"
    );
    // At lease expiry the endpoints turn stale (kept, marked), not withdrawn ...
    let stale = |store: &mesh_proxy::StateStore| {
        store
            .snapshot()
            .services
            .get(REVIEWS)
            .is_some_and(|s| s.endpoints.iter().any(|e| e.cluster == "west" && e.stale))
    };
    eventually("lease expired: west's endpoints stale", T, || {
        stale(&proxy.store)
    })
    .await;
    // The lease counts from west's last message, heartbeats come every third of it.
    assert!(
        stopped.elapsed() >= Duration::from_millis(1300),
        "stale before the lease ran out"
    );
    // ... and since west's gateway (nothing listens at 127.0.0.1:25443) fails its
    // health probes, they are withdrawn after three failures in a row.
    eventually("withdrawn after the gateway failed its checks", T, || {
        endpoint_summary(&proxy.store, REVIEWS) == ["10.1.0.1:15006 east w1 v1"]
    })
    .await;
    let link = east.links.list().remove(0);
    assert_eq!(link.state, "withdrawn", "{link:?}");
    assert!(
        link.last_error
            .contains("gateway failed 3 health checks in a row"),
        "{link:?}"
    );
    assert!(link.gateway_probe_failures >= 3, "{link:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_a_bounded_time_for_an_unreachable_link() {
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "shop.yaml", EAST);
    // A link to a cluster whose discovery nobody answers for.
    let nobody: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    write(
        dir.path(),
        "link-ghost.yaml",
        &link_secret(
            "ghost",
            nobody,
            "127.0.0.1:15443",
            pki.root.cert_pem(),
            false,
        ),
    );
    let mut opts = options(
        "east",
        discovery::Source::Files(dir.path().to_owned()),
        &pki,
    );
    opts.link_sync_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let east = discovery::start(opts).await.unwrap();
    let monitor = east.monitor_addr.unwrap();
    let ready = || async {
        mesh_net::http::get(monitor, "/ready")
            .await
            .map(|(s, _)| s.as_u16())
            .unwrap_or(0)
    };
    eventually("the link is known", T, || !east.links.list().is_empty()).await;
    assert_eq!(
        ready().await,
        503,
        "not ready while the link may still sync"
    );
    let start = std::time::Instant::now();
    while ready().await != 200 {
        assert!(start.elapsed() < T, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    let links = east.links.list();
    assert_eq!(links[0].state, "timed out", "{links:?}");
    assert!(!links[0].last_error.is_empty(), "{links:?}");
}

/// Subscribes to the peering service at `addr` as `cluster`, presenting `identity`
/// and verifying the server with `server_trust`: the first update, or the refusal.
async fn subscribe_as(
    addr: std::net::SocketAddr,
    identity: &mesh_identity::Identity,
    server_trust: mesh_identity::TrustConfig,
    cluster: &str,
) -> Result<(), String> {
    discovery::link_client::try_subscribe(addr, identity, server_trust, cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peering_is_authorized_by_the_identity_the_link_names() {
    let west_pki = Pki::new("west");
    let east_pki = west_pki.sibling("east");
    // A cluster of another mesh (its own trust domain and root), linked to west too.
    let north_td: mesh_identity::TrustDomain = "north.example".parse().unwrap();
    let north_root =
        mesh_identity::RootCa::generate(&north_td, mesh_identity::ca::ROOT_VALIDITY).unwrap();
    let north_ca = north_root
        .intermediate("north", mesh_identity::ca::INTERMEDIATE_VALIDITY)
        .unwrap();
    let north_identity = |ns: &str| {
        let id = mesh_identity::SpiffeId::new(north_td.clone(), ns, "isthmus-discovery").unwrap();
        let cert = north_ca
            .issue_workload(&id, Duration::from_secs(3600))
            .unwrap()
            .load("north")
            .unwrap();
        let bundle = mesh_identity::TrustBundle::from_pem(
            north_td.clone(),
            north_root.cert_pem().as_bytes(),
            "north root",
        )
        .unwrap();
        mesh_identity::Identity::new(
            cert,
            mesh_identity::TrustConfig::new(north_td.clone(), bundle),
        )
        .unwrap()
    };

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "shop.yaml", WEST);
    let west = start_files("west", dir.path(), &west_pki).await;
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    write(
        dir.path(),
        "link-east.yaml",
        &link_secret(
            "east",
            nowhere,
            "127.0.0.1:15443",
            west_pki.root.cert_pem(),
            false,
        ),
    );
    let north_link = link_secret(
        "north",
        nowhere,
        "127.0.0.1:15443",
        north_root.cert_pem(),
        false,
    )
    .replace(TD, "north.example");
    write(dir.path(), "link-north.yaml", &north_link);
    eventually("both links held", T, || west.registry.links().len() == 2).await;
    // West trusts north's root once the link is in.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let trust = west_pki.trust();
    let discovery_id = |ns: &str| east_pki.identity(ns, "isthmus-discovery");
    // The identity east's link names: served.
    subscribe_as(
        west.grpc_addr,
        &discovery_id("istio-system"),
        trust.clone(),
        "east",
    )
    .await
    .expect("east's discovery is refused");
    // The right service account in another namespace: refused.
    let err = subscribe_as(
        west.grpc_addr,
        &discovery_id("default"),
        trust.clone(),
        "east",
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("may not subscribe as cluster \"east\"")
            && err.contains("names spiffe://mesh.example/ns/istio-system/sa/isthmus-discovery"),
        "{err}"
    );
    // A cluster not linked here (yet) is served only with this mesh's discovery
    // identity: another namespace or trust domain is refused, saying what to do.
    subscribe_as(
        west.grpc_addr,
        &discovery_id("istio-system"),
        trust.clone(),
        "ghost",
    )
    .await
    .expect("a cluster of this trust domain whose link is on its way is refused");
    let err = subscribe_as(
        west.grpc_addr,
        &discovery_id("default"),
        trust.clone(),
        "ghost",
    )
    .await
    .unwrap_err();
    assert!(err.contains("\"ghost\" is not linked to this one"), "{err}");
    let err = subscribe_as(
        west.grpc_addr,
        &north_identity("istio-system"),
        trust.clone(),
        "ghost",
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("is not this mesh's discovery identity"),
        "{err}"
    );
    // Another trust domain claiming to be east (its root is trusted here, for north):
    // refused; as north it is served.
    let err = subscribe_as(
        west.grpc_addr,
        &north_identity("istio-system"),
        trust.clone(),
        "east",
    )
    .await
    .unwrap_err();
    assert!(err.contains("spiffe://north.example/ns/istio-system/sa/isthmus-discovery may not subscribe as cluster \"east\""), "{err}");
    subscribe_as(
        west.grpc_addr,
        &north_identity("istio-system"),
        trust,
        "north",
    )
    .await
    .expect("north's discovery is refused");
    // Each refusal is kept, with its reason, for `meshctl multicluster status`.
    let refusals = west.links.refusals();
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    assert!(
        refusals.iter().any(|r| r.cluster == "east"
            && r.identity == "spiffe://north.example/ns/istio-system/sa/isthmus-discovery"
            && r.reason.contains("may not subscribe as cluster \"east\"")),
        "{refusals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_rotated_twice_then_deleted_stays_gone_and_its_roots_untrusted() {
    // Every field bound: the directories must live as long as the test.
    let Pair {
        east_pki,
        west_pki: _west_pki,
        root_pem,
        east_dir,
        west_dir: _west_dir,
        east,
        west,
    } = pair().await;
    let link = |discovery: std::net::SocketAddr, gateway: &str| {
        link_secret("west", discovery, gateway, &root_pem, false)
    };
    write(
        east_dir.path(),
        "link-west.yaml",
        &link(west.grpc_addr, "127.0.0.1:25443"),
    );
    // A peer of another trust domain, linked too: its roots are trusted while linked.
    let north_td: mesh_identity::TrustDomain = "north.example".parse().unwrap();
    let north_root =
        mesh_identity::RootCa::generate(&north_td, mesh_identity::ca::ROOT_VALIDITY).unwrap();
    let north_ca = north_root
        .intermediate("north", mesh_identity::ca::INTERMEDIATE_VALIDITY)
        .unwrap();
    let north_id =
        mesh_identity::SpiffeId::new(north_td.clone(), "istio-system", "isthmus-discovery")
            .unwrap();
    let north = mesh_identity::Identity::new(
        north_ca
            .issue_workload(&north_id, Duration::from_secs(3600))
            .unwrap()
            .load("north")
            .unwrap(),
        mesh_identity::TrustConfig::new(
            north_td.clone(),
            mesh_identity::TrustBundle::from_pem(
                north_td.clone(),
                north_root.cert_pem().as_bytes(),
                "north root",
            )
            .unwrap(),
        ),
    )
    .unwrap();
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let north_link = |gateway: &str| {
        link_secret("north", nowhere, gateway, north_root.cert_pem(), false)
            .replace(TD, "north.example")
    };
    write(
        east_dir.path(),
        "link-north.yaml",
        &north_link("127.0.0.1:35443"),
    );
    eventually("west synced", T, || {
        east.registry.remote_counts("west") == (2, 3)
    })
    .await;
    eventually("north's roots trusted", T, || {
        east.identity.trust().federated.contains(&north_td)
    })
    .await;
    subscribe_as(east.grpc_addr, &north, east_pki.trust(), "north")
        .await
        .expect("north's discovery is refused while linked");
    assert_eq!(
        handshake_refusal(east.grpc_addr, &north, east_pki.trust()).await,
        "accepted"
    );

    // Rotation 1: a version that cannot sync (nothing answers at its address). The
    // version in force keeps serving meanwhile (make before break).
    write(
        east_dir.path(),
        "link-west.yaml",
        &link(nowhere, "127.0.0.1:25443"),
    );
    write(
        east_dir.path(),
        "link-north.yaml",
        &north_link("127.0.0.1:35444"),
    );
    eventually("rotation 1 seen", T, || {
        east.links
            .list()
            .iter()
            .any(|l| l.link.cluster == "west" && l.link.discovery_address == nowhere.to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        east.registry.remote_counts("west"),
        (2, 3),
        "the previous version stopped serving before the new one synced"
    );
    // Rotation 2: a version that syncs, with a new gateway address.
    write(
        east_dir.path(),
        "link-west.yaml",
        &link(west.grpc_addr, "127.0.0.1:25444"),
    );
    write(
        east_dir.path(),
        "link-north.yaml",
        &north_link("127.0.0.1:35445"),
    );
    let proxy = connect(east.grpc_addr, &east_pki, "frontend-1", "shop", "frontend");
    eventually("rotation 2 in force: the new gateway", T, || {
        endpoint_summary(&proxy.store, RATINGS) == ["127.0.0.1:25444 west w1 "]
    })
    .await;

    // Deleted: withdrawn at once, and nothing of the earlier versions brings the
    // endpoints back (heartbeats come every 0.7 s, reconnects within a second).
    std::fs::remove_file(east_dir.path().join("link-west.yaml")).unwrap();
    std::fs::remove_file(east_dir.path().join("link-north.yaml")).unwrap();
    eventually("withdrawn", T, || {
        east.registry.remote_counts("west") == (0, 0)
            && !proxy.store.snapshot().services.contains_key(RATINGS)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        east.registry.remote_counts("west"),
        (0, 0),
        "an earlier version of the deleted link brought its endpoints back"
    );
    assert!(!proxy.store.snapshot().services.contains_key(RATINGS));
    assert!(east.links.list().is_empty(), "{:?}", east.links.list());
    // North's roots are no longer trusted: its discovery cannot even complete a
    // handshake (not merely be refused as unlinked).
    assert!(!east.identity.trust().federated.contains(&north_td));
    assert!(east.identity.trust().bundle.roots(&north_td).is_empty());
    let err = subscribe_as(east.grpc_addr, &north, east_pki.trust(), "north")
        .await
        .unwrap_err();
    assert!(!err.contains("is not linked"), "{err}");
    let refused = handshake_refusal(east.grpc_addr, &north, east_pki.trust()).await;
    assert!(
        refused.contains("alert") || refused.contains("certificate"),
        "north's certificate was accepted at the handshake: {refused}"
    );
}

/// Completes a TLS handshake to `addr` as `identity` and reads: what the server said
/// (a fatal alert when it refuses the certificate), or `accepted`.
async fn handshake_refusal(
    addr: std::net::SocketAddr,
    identity: &mesh_identity::Identity,
    server_trust: mesh_identity::TrustConfig,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = identity.client_config_with_trust(server_trust, vec![], &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("discovery").unwrap();
    let mut stream = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    // HTTP/2 preface: a server that accepted the certificate answers with SETTINGS.
    let _ = stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => "accepted".into(),
        Ok(Ok(_)) => "closed without an alert".into(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer".into(),
    }
}

const CLUSTERSET_REVIEWS: &str = "reviews.shop.svc.clusterset.local";

fn service_export(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {{name: {name}, namespace: {ns}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusterset_service_holds_the_endpoints_of_the_clusters_that_export_it() {
    let Pair {
        east_pki,
        root_pem: _root_pem,
        east_dir,
        west_dir,
        east,
        west: _west,
        ..
    } = linked_pair().await;
    let proxy = connect(east.grpc_addr, &east_pki, "frontend-1", "shop", "frontend");
    eventually("linked", T, || {
        endpoint_summary(&proxy.store, REVIEWS).len() == 2
    })
    .await;
    // No ServiceExport anywhere: no clusterset name.
    assert!(
        !proxy
            .store
            .snapshot()
            .services
            .contains_key(CLUSTERSET_REVIEWS)
    );

    // West exports reviews: the clusterset name holds west's endpoints only (through
    // its gateway), while the cluster.local name keeps both clusters'.
    write(
        west_dir.path(),
        "export.yaml",
        &service_export("shop", "reviews"),
    );
    eventually("exported by west", T, || {
        endpoint_summary(&proxy.store, CLUSTERSET_REVIEWS) == ["127.0.0.1:25443 west w4 v2"]
    })
    .await;
    assert_eq!(endpoint_summary(&proxy.store, REVIEWS).len(), 2);
    // A ServiceImport's IPs are the clusterset service's virtual IPs.
    write(
        east_dir.path(),
        "import.yaml",
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: reviews, namespace: shop}\nspec: {type: ClusterSetIP, ips: [242.0.0.7], ports: [{port: 9080, protocol: TCP}]}\n",
    );
    eventually("the ServiceImport's IP", T, || {
        proxy
            .store
            .snapshot()
            .services
            .get(CLUSTERSET_REVIEWS)
            .is_some_and(|s| s.addresses == ["242.0.0.7".parse::<std::net::IpAddr>().unwrap()])
    })
    .await;
    // East exports it too: its own endpoint joins.
    write(
        east_dir.path(),
        "export.yaml",
        &service_export("shop", "reviews"),
    );
    eventually("exported by both", T, || {
        endpoint_summary(&proxy.store, CLUSTERSET_REVIEWS)
            == ["10.1.0.1:15006 east w1 v1", "127.0.0.1:25443 west w4 v2"]
    })
    .await;
    // A VirtualService and a DestinationRule target the clusterset host like any
    // other: a subset by cluster label holds west's endpoint only.
    write(
        east_dir.path(),
        "mcs-routing.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-set, namespace: shop}\nspec:\n  host: reviews.shop.svc.clusterset.local\n  subsets: [{name: west, labels: {topology.istio.io/cluster: west}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews-set, namespace: shop}\nspec:\n  hosts: [reviews.shop.svc.clusterset.local]\n  http: [{route: [{destination: {host: reviews.shop.svc.clusterset.local, subset: west}}]}]\n",
    );
    eventually(
        "routed by a VirtualService and a DestinationRule",
        T,
        || {
            let state = proxy.store.snapshot();
            let (Some(svc), Some(policy)) = (
                state.services.get(CLUSTERSET_REVIEWS),
                state.policies.get(CLUSTERSET_REVIEWS),
            ) else {
                return false;
            };
            let west: Vec<String> =
                mesh_proxy::policy::DestinationPolicy::select(Some(policy), svc, "west")
                    .map(|eps| eps.iter().map(|e| e.cluster.clone()).collect())
                    .unwrap_or_default();
            state.routes.contains_key(CLUSTERSET_REVIEWS) && west == ["west"]
        },
    )
    .await;
    // An import whose IP is not one is refused, naming the field; the last good one
    // stays in force.
    write(
        east_dir.path(),
        "import.yaml",
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: reviews, namespace: shop}\nspec: {ips: [not-an-ip]}\n",
    );
    eventually("bad import refused", T, || {
        east.registry.errors().iter().any(|e| {
            e.object == "ServiceImport/shop/reviews"
                && e.reason.contains("spec.ips[0]")
                && e.last_good_in_force
        })
    })
    .await;
    assert_eq!(
        proxy.store.snapshot().services[CLUSTERSET_REVIEWS].addresses,
        ["242.0.0.7".parse::<std::net::IpAddr>().unwrap()]
    );
    // What is not built is refused too (a headless clusterset service), and the
    // ports it takes from the exported Services are reported as without effect.
    write(
        east_dir.path(),
        "import.yaml",
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: reviews, namespace: shop}\nspec: {type: Headless}\n",
    );
    eventually("headless import refused", T, || {
        east.registry.errors().iter().any(|e| {
            e.object == "ServiceImport/shop/reviews" && e.reason.contains("spec.type \"Headless\"")
        })
    })
    .await;
    write(
        east_dir.path(),
        "import.yaml",
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: reviews, namespace: shop}\nspec: {type: ClusterSetIP, ips: [242.0.0.7], ports: [{port: 9080, protocol: TCP}]}\n",
    );
    eventually("ports warned", T, || {
        east.registry
            .errors()
            .iter()
            .all(|e| e.object != "ServiceImport/shop/reviews")
            && east.registry.input_health().1 == 1
    })
    .await;
    // West withdraws its export: only east's endpoint is left.
    std::fs::remove_file(west_dir.path().join("export.yaml")).unwrap();
    eventually("withdrawn by west", T, || {
        endpoint_summary(&proxy.store, CLUSTERSET_REVIEWS) == ["10.1.0.1:15006 east w1 v1"]
    })
    .await;
}

const DB: &str = "db.shop.internal";

/// A ServiceEntry selecting the workloads labelled `app: db` in namespace shop.
const DB_ENTRY: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp-db, protocol: TCP}]
  workloadSelector: {labels: {app: db}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_entry_selecting_workloads_is_served_and_exported_like_a_service() {
    let Pair {
        east_pki,
        west_pki,
        root_pem,
        east_dir,
        west_dir,
        east,
        west,
    } = pair().await;
    link_both(&east_dir, &west_dir, &east, &west, &root_pem);
    // West: the entry (workloadSelector app: db), a ready pod and a WorkloadEntry it
    // selects, a pod that is not ready, and a pod it does not select.
    let pod = |name: &str, ip: &str, app: &str, ready: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{serviceAccountName: db, containers: [{{name: db, image: db}}]}}\nstatus: {{podIP: {ip}, conditions: [{{type: Ready, status: \"{}\"}}]}}\n",
            if ready { "True" } else { "False" }
        )
    };
    write(
        west_dir.path(),
        "db.yaml",
        &[
            DB_ENTRY.to_owned(),
            pod("db-0", "10.2.5.1", "db", true),
            pod("db-1", "10.2.5.2", "db", false),
            pod("cache-0", "10.2.5.3", "cache", true),
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db-vm, namespace: shop}\nspec: {address: 10.2.5.9, labels: {app: db}, serviceAccount: db}\n".to_owned(),
        ]
        .join("---\n"),
    );
    // West's own proxies reach the selected workloads at their sidecars.
    let west_proxy = connect(west.grpc_addr, &west_pki, "ratings-1", "shop", "ratings");
    eventually("west's selected workloads", T, || {
        endpoint_summary(&west_proxy.store, DB)
            == [
                "10.2.5.1:15006 west w1 ",
                "10.2.5.2:15006 west w1 ",
                "10.2.5.9:15006 west w1 ",
            ]
    })
    .await;
    let state = west_proxy.store.snapshot();
    let db = &state.services[DB];
    assert_eq!(db.ports[0].port, 5432);
    assert!(
        !db.endpoints
            .iter()
            .any(|e| e.inbound.ip().to_string() == "10.2.5.2" && e.ready)
    );
    assert!(
        db.endpoints
            .iter()
            .all(|e| e.service_account.as_deref() == Some("db"))
    );
    // East has no ServiceEntry for the host, yet reaches west's two ready workloads
    // through west's gateway, as for a Service only west has.
    let proxy = connect(east.grpc_addr, &east_pki, "frontend-1", "shop", "frontend");
    eventually("exported to east", T, || {
        endpoint_summary(&proxy.store, DB) == ["127.0.0.1:25443 west w2 "]
    })
    .await;
    // A workload that starts to match joins, in both clusters.
    write(
        west_dir.path(),
        "db-2.yaml",
        &pod("db-2", "10.2.5.4", "db", true),
    );
    eventually("a new selected pod", T, || {
        endpoint_summary(&proxy.store, DB) == ["127.0.0.1:25443 west w3 "]
    })
    .await;
    // East applies the same entry and has a workload of its own: both merge.
    write(
        east_dir.path(),
        "db.yaml",
        &[
            DB_ENTRY.to_owned(),
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db-east, namespace: shop}\nspec: {address: 10.1.5.1, labels: {app: db}, serviceAccount: db}\n".to_owned(),
        ]
        .join("---\n"),
    );
    eventually("merged", T, || {
        endpoint_summary(&proxy.store, DB)
            == ["10.1.5.1:15006 east w1 ", "127.0.0.1:25443 west w3 "]
    })
    .await;
    // West deletes its entry: its workloads are withdrawn.
    write(
        west_dir.path(),
        "db.yaml",
        &[
            pod("db-0", "10.2.5.1", "db", true),
            pod("db-1", "10.2.5.2", "db", false),
        ]
        .join("---\n"),
    );
    eventually("withdrawn by west", T, || {
        endpoint_summary(&proxy.store, DB) == ["10.1.5.1:15006 east w1 "]
    })
    .await;
    // An entry that selects workloads must be MESH_INTERNAL: refused, named.
    write(
        east_dir.path(),
        "db.yaml",
        &DB_ENTRY.replace("MESH_INTERNAL", "MESH_EXTERNAL"),
    );
    eventually("refused", T, || {
        east.registry.errors().iter().any(|e| {
            e.object == "ServiceEntry/shop/db"
                && e.reason.contains("location")
                && e.reason.contains("MESH_INTERNAL")
                && e.last_good_in_force
        })
    })
    .await;
}

/// The graph's edges: a proxy's report counts for calls from its own namespace only,
/// and reaches the linked cluster's discovery over peering, where the whole mesh is
/// drawn (east's edge, said by east, with its rate and gateway hop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_reported_in_one_cluster_are_drawn_by_the_linked_one() {
    use mesh_proto::config::config_discovery_client::ConfigDiscoveryClient;
    let Pair {
        east_pki,
        root_pem: _root_pem,
        east_dir: _east_dir,
        west_dir: _west_dir,
        east,
        west,
        ..
    } = linked_pair().await;

    let identity = east_pki.identity("shop", "frontend");
    let discovery_id =
        mesh_identity::SpiffeId::new(TD.parse().unwrap(), "istio-system", "isthmus-discovery")
            .unwrap();
    let channel = mesh_net::channel::channel(east.grpc_addr, &identity, vec![discovery_id])
        .await
        .unwrap();
    let mut client = ConfigDiscoveryClient::new(channel);
    let edge = |ns: &str, app: &str| mesh_proto::edges::Edge {
        source_cluster: "somewhere-else".into(),
        source_namespace: ns.into(),
        source_app: app.into(),
        destination_service: REVIEWS.into(),
        destination_cluster: "west".into(),
        destination_namespace: "shop".into(),
        destination_app: "reviews".into(),
        destination_version: "v2".into(),
        protocol: "http".into(),
        mtls: true,
        via_gateway: true,
        requests: 40,
        errors: 2,
        latency: vec![40],
        window_ms: 2000,
        ..Default::default()
    };
    client
        .report_edges(mesh_proto::config::ProxyEdges {
            proxy: "frontend-1".into(),
            // The second claims calls from another namespace's workload.
            edges: vec![edge("shop", "frontend"), edge("payments", "billing")],
        })
        .await
        .unwrap();

    let graph = |addr| async move {
        let (status, body) = mesh_net::http::get(addr, "/dashboard/api/graph")
            .await
            .unwrap();
        assert!(status.is_success(), "{status} {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let seen_in_west = {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let g = graph(west.monitor_addr.unwrap()).await;
            let edges = g["edges"].as_array().cloned().unwrap_or_default();
            if !edges.is_empty() {
                break g;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "east's edges never reached west: {g}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let edges = seen_in_west["edges"].as_array().unwrap();
    assert_eq!(
        edges.len(),
        1,
        "only the proxy's own namespace: {seen_in_west}"
    );
    let e = &edges[0];
    assert_eq!(e["source"]["app"], "frontend");
    // The cluster is the reporting discovery's, whatever the proxy wrote.
    assert_eq!(e["source"]["cluster"], "east");
    assert_eq!(e["reportedBy"], "east");
    assert_eq!(
        (e["requests"].as_u64(), e["errors"].as_u64()),
        (Some(40), Some(2))
    );
    assert!(e["rps"].as_f64().unwrap() > 0.0, "{e}");
    assert_eq!(e["viaGateway"], true);
    let clusters: Vec<&str> = seen_in_west["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["west", "east"], "{seen_in_west}");

    // East draws the same edge from its own book.
    let in_east = graph(east.monitor_addr.unwrap()).await;
    assert_eq!(in_east["edges"][0]["reportedBy"], "east", "{in_east}");
    assert_eq!(in_east["edges"].as_array().unwrap().len(), 1, "{in_east}");
}
