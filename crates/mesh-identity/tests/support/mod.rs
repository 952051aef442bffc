//! Shared helpers: a federated root with two cluster intermediates, workloads with
//! certificates issued from CSRs, and an mTLS echo server on a real socket.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use mesh_identity::{
    ClusterCa, Identity, RootCa, SpiffeId, TrustBundle, TrustConfig, WorkloadCert,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

pub const TD: &str = "mesh.example";

pub struct Mesh {
    pub root: RootCa,
    pub east: ClusterCa,
    pub west: ClusterCa,
}

impl Mesh {
    pub fn new(td: &str) -> Self {
        let root = RootCa::generate(&td.parse().unwrap(), ROOT_VALIDITY).unwrap();
        let east = root.intermediate("east", INTERMEDIATE_VALIDITY).unwrap();
        let west = root.intermediate("west", INTERMEDIATE_VALIDITY).unwrap();
        Self { root, east, west }
    }

    pub fn trust(&self) -> TrustConfig {
        trust_of(&[&self.root])
    }
}

/// Trust in the given roots, all for the roots' own trust domain.
pub fn trust_of(roots: &[&RootCa]) -> TrustConfig {
    let td = roots[0].trust_domain().clone();
    let mut bundle = TrustBundle::new();
    for r in roots {
        bundle
            .add_pem(td.clone(), r.cert_pem().as_bytes(), "root")
            .unwrap();
    }
    TrustConfig::new(td, bundle)
}

pub fn id(td: &str, ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td.parse().unwrap(), ns, sa).unwrap()
}

/// A workload certificate: key and CSR made locally, signed by the cluster CA.
pub fn workload(ca: &ClusterCa, ns: &str, sa: &str) -> WorkloadCert {
    let wid = SpiffeId::new(ca.trust_domain().clone(), ns, sa).unwrap();
    ca.issue_workload(&wid, Duration::from_secs(3600))
        .unwrap()
        .load("test")
        .unwrap()
}

/// An mTLS server: for each connection it writes the client's SPIFFE ID on a line,
/// then echoes. Handshake failures are reported on `errors`.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub errors: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn echo_server(identity: &Identity) -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // One config for the server's life: rotation must not need a new one.
    let acceptor = TlsAcceptor::from(Arc::new(identity.server_config(&[])));
    let (tx, errors) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(mesh_identity::explain(&e));
                        return;
                    }
                };
                let peer = mesh_identity::peer_id(tls.get_ref().1.peer_certificates(), "client")
                    .map(|id| id.to_string())
                    .unwrap_or_else(|e| e.to_string());
                if tls.write_all(format!("{peer}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    EchoServer { addr, errors, task }
}

/// A client connection: what the server saw of us, and who the server is.
pub struct Conn {
    pub stream: BufReader<TlsStream<TcpStream>>,
    pub seen_by_server: String,
    pub server_id: SpiffeId,
    pub server_serial: String,
}

impl Conn {
    /// Sends a line and checks that it comes back.
    pub async fn echo(&mut self, msg: &str) -> std::io::Result<()> {
        self.stream
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        if line.trim_end() == msg {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("echo mismatch: {line:?}")))
        }
    }
}

pub async fn connect(identity: &Identity, addr: SocketAddr) -> Result<Conn, String> {
    connect_expecting(identity, addr, vec![]).await
}

pub async fn connect_expecting(
    identity: &Identity,
    addr: SocketAddr,
    expected: Vec<SpiffeId>,
) -> Result<Conn, String> {
    let connector = TlsConnector::from(Arc::new(identity.client_config(expected, &[])));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = "outbound_.8080_._.echo.default.svc.cluster.local"
        .try_into()
        .unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| mesh_identity::explain(&e))?;
    let (_, conn) = tls.get_ref();
    let server_id =
        mesh_identity::peer_id(conn.peer_certificates(), "server").map_err(|e| e.to_string())?;
    let server_serial =
        mesh_identity::cert::CertInfo::parse(&conn.peer_certificates().unwrap()[0], "server")
            .unwrap()
            .serial;
    let mut stream = BufReader::new(tls);
    let mut seen = String::new();
    // With TLS 1.3 the server's verdict on our certificate arrives after the client's
    // handshake completes: a refusal shows up here, as an alert on the first read.
    match tokio::time::timeout(Duration::from_secs(5), stream.read_line(&mut seen)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => return Err("server closed the connection".into()),
        Ok(Err(e)) => return Err(mesh_identity::explain(&e)),
        Err(_) => return Err("timed out".into()),
    }
    Ok(Conn {
        stream,
        seen_by_server: seen.trim_end().to_owned(),
        server_id,
        server_serial,
    })
}
