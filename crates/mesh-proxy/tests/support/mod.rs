//! Shared helpers: a mesh root with one cluster CA, workload identities, and an HTTP
//! backend that reports what it received.

#![allow(dead_code, unreachable_pub)]

use base64::Engine as _;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use mesh_identity::{ClusterCa, Identity, RootCa, SpiffeId, TrustBundle, TrustConfig};
use mesh_proxy::SidecarOptions;
use tokio::net::TcpListener;

pub struct Mesh {
    pub root: RootCa,
    pub east: ClusterCa,
}

impl Mesh {
    pub fn new() -> Self {
        let root = RootCa::generate(&"mesh.example".parse().unwrap(), ROOT_VALIDITY).unwrap();
        let east = root.intermediate("east", INTERMEDIATE_VALIDITY).unwrap();
        Self { root, east }
    }

    pub fn identity(&self, ns: &str, sa: &str) -> Identity {
        let id = SpiffeId::new("mesh.example".parse().unwrap(), ns, sa).unwrap();
        let cert = self
            .east
            .issue_workload(&id, Duration::from_secs(3600))
            .unwrap()
            .load("test")
            .unwrap();
        let td = "mesh.example".parse().unwrap();
        let bundle = TrustBundle::from_pem(td, self.root.cert_pem().as_bytes(), "root").unwrap();
        Identity::new(
            cert,
            TrustConfig::new("mesh.example".parse().unwrap(), bundle),
        )
        .unwrap()
    }
}

/// Serves HTTP/1.1 on `listener` for the rest of the test, each request answered by
/// `respond` after `delay`.
fn serve<F>(listener: TcpListener, delay: Duration, respond: F)
where
    F: Fn(&http::Request<Incoming>) -> http::Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let respond = respond.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let resp = respond(&req);
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

/// A header of `req` as text, `-` when absent.
fn header(req: &http::Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// A backend that answers `NAME path=… x-user=… xfcc=…`, optionally after a delay.
pub async fn backend(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, delay, move |req| {
        http::Response::new(Full::new(Bytes::from(format!(
            "{name} path={} x-user={} xfcc={}",
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
            header(req, "x-user"),
            header(req, "x-forwarded-client-cert")
        ))))
    });
    addr
}

pub fn opts() -> SidecarOptions {
    SidecarOptions {
        outbound: "127.0.0.1:0".parse().unwrap(),
        inbound: "127.0.0.1:0".parse().unwrap(),
        app_ip: "127.0.0.1".parse().unwrap(),
        connect_timeout: Duration::from_secs(1),
        admin: vec!["127.0.0.1:0".parse().unwrap()],
        tracing: mesh_telemetry::trace::Tracing::disabled(),
        requests: Default::default(),
        dns: None,
    }
}

/// A backend answering `NAME` with a status that the test can change at any time.
pub async fn switchable_backend(
    name: &'static str,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU16>) {
    use std::sync::atomic::{AtomicU16, Ordering};
    let status = std::sync::Arc::new(AtomicU16::new(200));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = status.clone();
    serve(listener, Duration::ZERO, move |_| {
        let mut resp = http::Response::new(Full::new(Bytes::from(name)));
        *resp.status_mut() = http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
        resp
    });
    (addr, status)
}

/// A sidecar for `ns/sa` of `mesh` running `config` (a ProxyConfig and Istio YAML),
/// with the test listener options.
pub async fn sidecar(mesh: &Mesh, config: &str, ns: &str, sa: &str) -> mesh_proxy::Sidecar {
    let store = std::sync::Arc::new(mesh_proxy::StateStore::default());
    store.apply_yaml(config, "test").unwrap();
    mesh_proxy::Sidecar::start(store, mesh.identity(ns, sa), opts())
        .await
        .unwrap()
}

/// What the test's DNS server answers to an A query: this address (TTL 1 s), or
/// SERVFAIL when `None`.
pub type Answer = std::sync::Arc<std::sync::Mutex<Option<std::net::Ipv4Addr>>>;

/// The reply to one DNS query: every A query answered with `ip` (TTL 1 s), AAAA
/// queries with no records, everything SERVFAIL when `ip` is `None`.
fn dns_reply(query: &[u8], ip: Option<std::net::Ipv4Addr>) -> Option<Vec<u8>> {
    // The question: labels up to the zero byte, then type and class.
    let end = query
        .get(12..)?
        .iter()
        .position(|b| *b == 0)
        .map(|p| 12 + p + 5)?;
    let qtype = u16::from_be_bytes([*query.get(end - 4)?, *query.get(end - 3)?]);
    let mut out = Vec::from(query.get(..2)?); // id
    let (flags, count): (u16, u16) = match (ip, qtype) {
        (None, _) => (0x8182, 0), // SERVFAIL
        (Some(_), 1) => (0x8180, 1),
        (Some(_), _) => (0x8180, 0),
    };
    out.extend(flags.to_be_bytes());
    out.extend([0, 1]); // one question
    out.extend(count.to_be_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(query.get(12..end)?);
    if let (Some(ip), 1) = (ip, count) {
        // The name by pointer to the question, A, IN, TTL 1 s, four bytes.
        out.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        out.extend(ip.octets());
    }
    Some(out)
}

/// A DNS server on loopback, UDP and TCP on one port, answering as [`dns_reply`] with
/// the current `answer`.
pub async fn dns_server(answer: Answer) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A UDP port whose TCP twin is free too (another test may hold it).
    let (socket, tcp, addr) = loop {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (socket, tcp, addr);
        }
    };
    let for_udp = answer.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let ip = *for_udp.lock().unwrap();
            if let Some(out) = dns_reply(&buf[..n], ip) {
                let _ = socket.send_to(&out, from).await;
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                while let Ok(len) = stream.read_u16().await {
                    let mut query = vec![0u8; usize::from(len)];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let ip = *answer.lock().unwrap();
                    let Some(out) = dns_reply(&query, ip) else {
                        return;
                    };
                    let _ = stream.write_u16(out.len() as u16).await;
                    let _ = stream.write_all(&out).await;
                }
            });
        }
    });
    addr
}

/// Sends a GET through a sidecar's outbound listener, as an application in explicit
/// mode does: `authority` in the Host header, then `headers`.
pub async fn get(
    sidecar: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(sidecar).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A backend on `addr` answering `NAME h=VALUE ...` for each of `headers` (`-` when the
/// request has none): what reached the application.
pub async fn header_echo(
    name: &'static str,
    addr: SocketAddr,
    headers: &'static [&'static str],
) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, Duration::ZERO, move |req| {
        let mut body = name.to_owned();
        for h in headers {
            body.push_str(&format!(" {h}={}", header(req, h)));
        }
        http::Response::new(Full::new(Bytes::from(body)))
    });
    addr
}

/// A backend answering every request with the current `body`, or 503 while it is
/// `None`.
pub async fn text_server(body: std::sync::Arc<std::sync::Mutex<Option<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, Duration::ZERO, move |_| {
        match body.lock().unwrap().clone() {
            Some(text) => http::Response::new(Full::new(Bytes::from(text))),
            None => {
                let mut r = http::Response::new(Full::new(Bytes::new()));
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                r
            }
        }
    });
    addr
}

/// The issuer of the test's tokens.
pub const ISSUER: &str = "https://issuer.example";

/// A signing key and its public JWK (`kid`).
pub struct Key {
    pub kid: &'static str,
    pub pair: rcgen::KeyPair,
}

impl Key {
    pub fn new(kid: &'static str) -> Self {
        Self {
            kid,
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    pub fn jwk(&self) -> serde_json::Value {
        let raw = self.pair.public_key_raw(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": self.kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
    }

    /// A token with these claims (plus `iss` unless given, `exp` an hour ahead).
    pub fn sign(&self, claims: serde_json::Value) -> String {
        let mut c = serde_json::json!({"iss": ISSUER, "aud": "reviews",
            "exp": jsonwebtoken::get_current_timestamp() + 3600});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.into());
        jsonwebtoken::encode(
            &header,
            &c,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pair.serialize_der()),
        )
        .unwrap()
    }
}

/// A CA, and leaf certificates it signs.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `dns` names (a server), or with `client` as its common name.
    pub fn leaf(&self, dns: &[&str], client: Option<&str>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(cn) = client {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// One HTTPS GET over a fresh TLS connection to `addr`, sending `sni`, trusting
/// `ca_pem`, presenting `client` (certificate and key PEM) when given: the status and
/// body, or why the exchange failed.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca_pem));
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

/// A server answering each path of `pages` with its body (the `{addr}` in a body
/// replaced by the server's own address), 404 otherwise.
pub async fn pages(pages: Vec<(&'static str, String)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pages: Vec<(&'static str, String)> = pages
        .into_iter()
        .map(|(p, body)| (p, body.replace("{addr}", &addr.to_string())))
        .collect();
    serve(listener, Duration::ZERO, move |req| {
        match pages.iter().find(|(p, _)| *p == req.uri().path()) {
            Some((_, body)) => http::Response::new(Full::new(Bytes::from(body.clone()))),
            None => {
                let mut r = http::Response::new(Full::new(Bytes::new()));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                r
            }
        }
    });
    addr
}

/// The certificates of `ca_pem` as trust anchors.
pub fn roots(ca_pem: &str) -> tokio_rustls::rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}
