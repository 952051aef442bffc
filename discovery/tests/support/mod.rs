//! Shared helpers: a mesh root with one cluster CA on disk, a discovery service on
//! loopback, and proxies connected to it through the real config-stream client.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use discovery::{CaAuth, CaCerts, Discovery, Options, Source};
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use mesh_identity::{ClusterCa, Identity, RootCa, SpiffeId, TrustBundle, TrustConfig};
use mesh_proto::config::Node as WireNode;
use mesh_proxy::StateStore;
use mesh_proxy::discovery_client::{DiscoveryClientOptions, StreamStatus};

pub const TD: &str = "mesh.example";

pub struct Pki {
    pub root: Arc<RootCa>,
    pub ca: ClusterCa,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(cluster: &str) -> Self {
        let root = RootCa::generate(&TD.parse().unwrap(), ROOT_VALIDITY).unwrap();
        Self::under(Arc::new(root), cluster)
    }

    /// Another cluster's intermediate under the same root.
    pub fn sibling(&self, cluster: &str) -> Self {
        Self::under(self.root.clone(), cluster)
    }

    fn under(root: Arc<RootCa>, cluster: &str) -> Self {
        let ca = root.intermediate(cluster, INTERMEDIATE_VALIDITY).unwrap();
        let dir = tempfile::tempdir().unwrap();
        ca.write(dir.path()).unwrap();
        Self { root, ca, dir }
    }

    pub fn cacerts(&self) -> CaCerts {
        CaCerts::Dir(self.dir.path().to_owned())
    }

    pub fn trust(&self) -> TrustConfig {
        let bundle =
            TrustBundle::from_pem(TD.parse().unwrap(), self.root.cert_pem().as_bytes(), "root")
                .unwrap();
        TrustConfig::new(TD.parse().unwrap(), bundle)
    }

    pub fn identity(&self, ns: &str, sa: &str) -> Identity {
        let id = SpiffeId::new(TD.parse().unwrap(), ns, sa).unwrap();
        let cert = self
            .ca
            .issue_workload(&id, Duration::from_secs(3600))
            .unwrap()
            .load("test")
            .unwrap();
        Identity::new(cert, self.trust()).unwrap()
    }
}

/// Options for a discovery on loopback with a short debounce.
pub fn options(cluster: &str, source: Source, pki: &Pki) -> Options {
    let mut o = Options::new(cluster, &format!("net-{cluster}"), source, pki.cacerts());
    o.grpc = "127.0.0.1:0".parse().unwrap();
    o.monitor = Some("127.0.0.1:0".parse().unwrap());
    o.debounce = discovery::push::Debounce {
        after: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    o.file_poll = Duration::from_millis(50);
    o.ca_auth = CaAuth::Disabled;
    o
}

pub async fn start_files(cluster: &str, dir: &Path, pki: &Pki) -> Discovery {
    discovery::start(options(cluster, Source::Files(dir.to_owned()), pki))
        .await
        .unwrap()
}

/// A proxy connected to discovery: its live state and its stream status.
pub struct Proxy {
    pub store: Arc<StateStore>,
    pub status: Arc<ArcSwap<StreamStatus>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn connect(
    discovery_addr: std::net::SocketAddr,
    pki: &Pki,
    name: &str,
    ns: &str,
    sa: &str,
) -> Proxy {
    connect_as(discovery_addr, pki.identity(ns, sa), name, "sidecar")
}

/// A proxy of `kind` (`sidecar`, `gateway`) with `identity`.
pub fn connect_as(
    discovery_addr: std::net::SocketAddr,
    identity: Identity,
    name: &str,
    kind: &str,
) -> Proxy {
    let ns = identity.cert().id().namespace().to_owned();
    let store = Arc::new(StateStore::default());
    let status = Arc::new(ArcSwap::from_pointee(StreamStatus::default()));
    let node = WireNode {
        name: name.into(),
        namespace: ns,
        kind: kind.into(),
        ..Default::default()
    };
    let discovery_id =
        SpiffeId::new(TD.parse().unwrap(), "istio-system", "isthmus-discovery").unwrap();
    let mut options = DiscoveryClientOptions::new(discovery_addr, discovery_id, node);
    options.initial_backoff = Duration::from_millis(50);
    options.max_backoff = Duration::from_millis(200);
    let task = tokio::spawn(mesh_proxy::discovery_client::run(
        options,
        identity,
        store.clone(),
        status.clone(),
    ));
    Proxy {
        store,
        status,
        task,
    }
}

/// Waits until `f` holds, or fails the test with `what`.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Endpoint IPs of `host` in the proxy's live state.
pub fn endpoints(store: &StateStore, host: &str) -> Vec<String> {
    let state = store.snapshot();
    let mut ips: Vec<String> = state
        .services
        .get(host)
        .map(|s| {
            s.endpoints
                .iter()
                .map(|e| e.inbound.ip().to_string())
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips
}

/// An HTTP/1.1 app on `addr` answering `NAME`.
pub async fn app(addr: std::net::SocketAddr, name: &'static str) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(name)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

/// One GET through a sidecar's outbound listener: (status, body).
pub async fn get(
    outbound: std::net::SocketAddr,
    authority: &str,
    path: &str,
) -> Result<(u16, String), String> {
    mesh_net::http::request(outbound, authority, path, &[])
        .await
        .map(|(s, b)| (s.as_u16(), b))
        .map_err(String::from)
}

/// Writes a file the way a config manager would (write, then rename), so a half
/// written file is never read.
pub fn write(dir: &std::path::Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// A sidecar whose config comes from discovery, serving `ns/sa` as workload `name`.
pub struct MeshSidecar {
    pub sidecar: mesh_proxy::Sidecar,
    pub proxy: Proxy,
}

pub async fn sidecar(
    discovery_addr: std::net::SocketAddr,
    pki: &Pki,
    name: &str,
    ns: &str,
    sa: &str,
    ip: std::net::IpAddr,
) -> MeshSidecar {
    sidecar_as(discovery_addr, pki.identity(ns, sa), name, ip).await
}

/// As [`sidecar`], with `identity` (a certificate from discovery's CA, say).
pub async fn sidecar_as(
    discovery_addr: std::net::SocketAddr,
    identity: Identity,
    name: &str,
    ip: std::net::IpAddr,
) -> MeshSidecar {
    let proxy = connect_as(discovery_addr, identity.clone(), name, "sidecar");
    let options = mesh_proxy::SidecarOptions {
        outbound: std::net::SocketAddr::new(ip, 0),
        inbound: std::net::SocketAddr::new(ip, 0),
        app_ip: ip,
        connect_timeout: Duration::from_secs(1),
        admin: vec![],
        tracing: mesh_telemetry::trace::Tracing::disabled(),
        requests: Default::default(),
        dns: None,
    };
    let sidecar = mesh_proxy::Sidecar::start(proxy.store.clone(), identity, options)
        .await
        .unwrap();
    MeshSidecar { sidecar, proxy }
}

/// The link Secret (as `meshctl remote-secret` prints it) for `cluster`, whose network
/// is `net-CLUSTER`, under this test mesh's trust domain.
pub fn link_secret(
    cluster: &str,
    discovery: std::net::SocketAddr,
    gateway: impl std::fmt::Display,
    root_pem: &str,
    gateway_quic: bool,
) -> String {
    discovery::links::render_secret(
        &discovery::links::Link {
            secret: String::new(),
            cluster: cluster.into(),
            network: format!("net-{cluster}"),
            discovery_address: discovery.to_string(),
            gateway_address: gateway.to_string(),
            gateway_quic,
            trust_bundle: root_pem.into(),
            trust_domain: TD.into(),
        },
        "istio-system",
    )
}
