//! TLS origination (DestinationRule `tls` SIMPLE and MUTUAL) against a real TLS server,
//! nginx from the distribution's packages: the app sends plain HTTP to its sidecar,
//! the sidecar opens TLS to nginx. A wrong CA, a wrong subject name and a missing
//! client certificate are each refused, and a DestinationRule naming a file that does
//! not exist is refused with the last good one kept.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Ca, Mesh};

/// nginx, from the distribution; `None` (with a note) when missing outside CI.
fn nginx() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nginx is missing: install it (Debian: apt-get install nginx); tools/test.sh does"
        );
        eprintln!("nginx is missing; skipping (install nginx to run this test)");
    }
    found
}

/// nginx serving TLS on two free loopback ports (the second requires a client
/// certificate of `client_ca`), stopped when dropped.
struct Nginx {
    child: Child,
    simple: SocketAddr,
    mutual: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_nginx(bin: &Path, dir: &Path, server: &(String, String), client_ca: &Ca) -> Nginx {
    let (simple, mutual) = (free_port(), free_port());
    std::fs::write(dir.join("server.pem"), &server.0).unwrap();
    std::fs::write(dir.join("server.key"), &server.1).unwrap();
    std::fs::write(dir.join("client-ca.pem"), client_ca.cert.pem()).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  ssl_certificate {d}/server.pem;
  ssl_certificate_key {d}/server.key;
  server {{
    listen {simple} ssl;
    location / {{ return 200 \"nginx tls ok host=$host\\n\"; }}
  }}
  server {{
    listen {mutual} ssl;
    ssl_client_certificate {d}/client-ca.pem;
    ssl_verify_client on;
    location / {{ return 200 \"nginx mtls ok client=$ssl_client_s_dn\\n\"; }}
  }}
}}
"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nginx = Nginx {
        child,
        simple,
        mutual,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(mutual).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nginx
}

/// The client sidecar's config: `secure.example.test` outside the mesh at nginx's
/// port `port`, and its DestinationRule `tls`.
fn config(port: u16, tls: &str) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: app-1, namespace: shop, serviceAccount: app}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.example.test]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure, namespace: shop}}
spec:
  host: secure.example.test
  trafficPolicy:
    tls: {tls}
"
    )
}

#[tokio::test]
async fn tls_origination_verifies_the_server_and_presents_the_client_certificate() {
    let Some(bin) = nginx() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (server_ca, client_ca, stranger) = (
        Ca::new("server CA"),
        Ca::new("client CA"),
        Ca::new("stranger CA"),
    );
    let server = server_ca.leaf(&["secure.example.test"], None);
    let client = client_ca.leaf(&[], Some("app-1"));
    let nginx = start_nginx(&bin, dir, &server, &client_ca);
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca = file("ca.pem", &server_ca.cert.pem());
    let wrong_ca = file("wrong-ca.pem", &stranger.cert.pem());
    let (cert, key) = (file("client.pem", &client.0), file("client.key", &client.1));

    let mesh = Mesh::new();
    let simple = format!("{{mode: SIMPLE, caCertificates: {ca}}}");
    let app = support::sidecar(&mesh, &config(nginx.simple.port(), &simple), "shop", "app").await;
    let get = || support::get(app.outbound_addr, "secure.example.test", "/", &[]);

    // SIMPLE with the right CA: the app's plain HTTP reaches nginx over TLS, the
    // server checked for the host's name.
    let (status, body) = get().await;
    assert_eq!(
        (status, body.as_str()),
        (200, "nginx tls ok host=secure.example.test\n")
    );

    // A CA that did not sign the server's certificate: refused, UF, with the reason.
    let apply = |port: u16, tls: &str| app.store.apply_yaml(&config(port, tls), "test");
    apply(
        nginx.simple.port(),
        &format!("{{mode: SIMPLE, caCertificates: {wrong_ca}}}"),
    )
    .unwrap();
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("TLS error") && body.contains("UnknownIssuer"),
        "{body}"
    );

    // The right CA, but the certificate must name another host: refused.
    apply(
        nginx.simple.port(),
        &format!("{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [other.example.test]}}"),
    )
    .unwrap();
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("certificate not valid for name \"other.example.test\""),
        "{body}"
    );
    // With `sni` and subjectAltNames that the certificate has, it passes.
    apply(
        nginx.simple.port(),
        &format!("{{mode: SIMPLE, caCertificates: {ca}, sni: secure.example.test, subjectAltNames: [secure.example.test]}}"),
    )
    .unwrap();
    assert_eq!(get().await.0, 200);

    // The server that requires a client certificate: without one, nginx refuses;
    // MUTUAL presents it.
    apply(nginx.mutual.port(), &simple).unwrap();
    let (status, body) = get().await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("No required SSL certificate was sent"),
        "{body}"
    );
    let mutual = format!(
        "{{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {cert}, privateKey: {key}}}"
    );
    apply(nginx.mutual.port(), &mutual).unwrap();
    let (status, body) = get().await;
    assert_eq!(
        (status, body.as_str()),
        (200, "nginx mtls ok client=CN=app-1\n")
    );

    // A client key that is not there refuses the rule, naming it; the last good one
    // keeps serving. MUTUAL without a certificate is refused too.
    let err = apply(
        nginx.mutual.port(),
        &mutual.replace(&key, &format!("{}/missing.key", dir.display())),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("DestinationRule shop/secure")
            && err.contains("privateKey")
            && err.contains("missing.key"),
        "{err}"
    );
    let err = apply(
        nginx.mutual.port(),
        &format!("{{mode: MUTUAL, caCertificates: {ca}}}"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("MUTUAL needs clientCertificate and privateKey"),
        "{err}"
    );
    assert_eq!(get().await.0, 200, "the last good rule stays in force");

    // MUTUAL from a Secret of the workload's namespace (credentialName): until the
    // Secret arrives every request fails closed with the reason; then the client
    // certificate and the CA come from it.
    let indent = |pem: &str| pem.trim().replace('\n', "\n      ");
    let secret = format!(
        "---
apiVersion: v1
kind: Secret
metadata: {{name: partner-cert, namespace: shop}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
      {}
  tls.key: |
      {}
  ca.crt: |
      {}
",
        indent(&client.0),
        indent(&client.1),
        indent(&server_ca.cert.pem())
    );
    let by_secret = config(
        nginx.mutual.port(),
        "{mode: MUTUAL, credentialName: partner-cert}",
    );
    let mut intake = mesh_proxy::intake::ResourceSet::default();
    let applied = intake.apply_file(&by_secret, "test", &app.store);
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no Secret shop/partner-cert"), "{body}");
    let applied = intake.apply_file(&format!("{by_secret}{secret}"), "test", &app.store);
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    let (status, body) = get().await;
    assert_eq!(
        (status, body.as_str()),
        (200, "nginx mtls ok client=CN=app-1\n")
    );

    // insecureSkipVerify: any server certificate is taken.
    apply(
        nginx.simple.port(),
        &format!("{{mode: SIMPLE, caCertificates: {wrong_ca}, insecureSkipVerify: true}}"),
    )
    .unwrap();
    assert_eq!(get().await.0, 200);
}
