//! The discovery and sidecar binaries as a user runs them in file mode: discovery
//! reads a registry directory and signs certificates for bootstrap tokens; sidecars
//! get their certificate and config from it and carry a request over mTLS.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_identity::RootCa;
use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sidecar binary, built next to this package's binaries (built on demand when
/// only this package is tested).
fn sidecar_bin() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_discovery"))
        .parent()
        .unwrap()
        .to_owned();
    let bin = dir.join("sidecar");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "sidecar"])
            .status()
            .unwrap();
        assert!(status.success(), "building the sidecar binary");
    }
    bin
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(bin)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn wait_for<T>(what: &str, logs: &[&Path], mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > Duration::from_secs(20) {
            for log in logs {
                eprintln!(
                    "--- {}\n{}",
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            panic!("timed out: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP/1.1 app answering `reviews says hi`.
fn app(addr: SocketAddr) {
    testbed::http_responder(addr, "reviews says hi");
}

#[test]
fn discovery_and_sidecar_binaries_bootstrap_with_tokens_and_carry_a_request() {
    let net = 20 + (std::process::id() % 200) as u8;
    let reviews_ip = IpAddr::from([127, net, 1, 2]);
    let lo = IpAddr::from([127, 0, 0, 1]);
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(&"mesh.example".parse().unwrap(), ROOT_VALIDITY).unwrap();
    let ca = root.intermediate("east", INTERMEDIATE_VALIDITY).unwrap();
    let cacerts = tmp.path().join("cacerts");
    ca.write(&cacerts).unwrap();
    let root_cert = tmp.path().join("root-cert.pem");
    std::fs::write(&root_cert, root.cert_pem()).unwrap();
    std::fs::write(
        tmp.path().join("tokens"),
        "# bootstrap tokens\nfront-token shop/frontend\nreviews-token shop/reviews\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("front.token"), "front-token\n").unwrap();
    std::fs::write(tmp.path().join("reviews.token"), "reviews-token\n").unwrap();
    // A token for an identity it does not hold: the sidecar asks for shop/admin with it.
    let registry = tmp.path().join("registry");
    std::fs::create_dir(&registry).unwrap();
    let reviews_inbound = free_port(reviews_ip);
    std::fs::write(
        registry.join("shop.yaml"),
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-1
  namespace: shop
  annotations: {{isthmus.dev/inbound-port: \"{reviews_inbound}\"}}
spec: {{address: {reviews_ip}, labels: {{app: reviews}}, serviceAccount: reviews}}
"
        ),
    )
    .unwrap();
    app((reviews_ip, 8080).into());

    let grpc = SocketAddr::new(lo, free_port(lo));
    let monitor = SocketAddr::new(lo, free_port(lo));
    let s = |v: &dyn std::fmt::Display| v.to_string();
    let logs: Vec<PathBuf> = ["discovery", "reviews", "frontend"]
        .iter()
        .map(|n| tmp.path().join(format!("{n}.log")))
        .collect();
    let log_refs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    let _discovery = spawn(
        Path::new(env!("CARGO_BIN_EXE_discovery")),
        &[
            "--cluster".into(),
            "east".into(),
            "--network".into(),
            "net-east".into(),
            "--registry-dir".into(),
            s(&registry.display()),
            "--cacerts".into(),
            s(&cacerts.display()),
            "--bootstrap-tokens".into(),
            s(&tmp.path().join("tokens").display()),
            "--grpc".into(),
            s(&grpc),
            "--monitor".into(),
            s(&monitor),
            "--debounce-after".into(),
            "20ms".into(),
        ],
        &logs[0],
    );
    wait_for("discovery ready", &log_refs, || {
        http_get(monitor, "x", "/ready").filter(|(c, _)| *c == 200)
    });

    let sidecar = sidecar_bin();
    let common = |name: &str, sa: &str, ip: IpAddr, inbound: u16, outbound: u16, token: &str| {
        vec![
            "--discovery".into(),
            s(&grpc),
            "--token-file".into(),
            s(&tmp.path().join(token).display()),
            "--root-cert".into(),
            s(&root_cert.display()),
            "--trust-domain".into(),
            "mesh.example".into(),
            "--name".into(),
            name.into(),
            "--namespace".into(),
            "shop".into(),
            "--service-account".into(),
            sa.into(),
            "--inbound".into(),
            s(&SocketAddr::new(ip, inbound)),
            "--outbound".into(),
            s(&SocketAddr::new(ip, outbound)),
            "--app-ip".into(),
            s(&ip),
            "--admin".into(),
            s(&SocketAddr::new(lo, free_port(lo))),
        ]
    };
    let _reviews = spawn(
        &sidecar,
        &common(
            "reviews-1",
            "reviews",
            reviews_ip,
            reviews_inbound,
            free_port(reviews_ip),
            "reviews.token",
        ),
        &logs[1],
    );
    let outbound = free_port(lo);
    let _frontend = spawn(
        &sidecar,
        &common(
            "frontend-1",
            "frontend",
            lo,
            free_port(lo),
            outbound,
            "front.token",
        ),
        &logs[2],
    );
    let (status, body) = wait_for("a request through both sidecars", &log_refs, || {
        http_get(SocketAddr::new(lo, outbound), "reviews:9080", "/").filter(|(c, _)| *c == 200)
    });
    assert_eq!((status, body.as_str()), (200, "reviews says hi"));

    // Both proxies show in discovery's status, synced, with their certificate expiry.
    let (_, syncz) = wait_for("both proxies synced", &log_refs, || {
        http_get(monitor, "x", "/debug/syncz").filter(|(_, b)| b.matches("\"SYNCED\"").count() == 2)
    });
    assert!(
        syncz.contains("frontend-1.shop") && syncz.contains("reviews-1.shop"),
        "{syncz}"
    );
    assert!(
        syncz.contains("spiffe://mesh.example/ns/shop/sa/reviews"),
        "{syncz}"
    );
    // The per-proxy view: what frontend-1 is sent.
    let (code, view) = http_get(monitor, "x", "/debug/proxy?name=frontend-1.shop").unwrap();
    assert_eq!(code, 200, "{view}");
    assert!(view.contains("\"Service/shop/reviews\""), "{view}");
    let (_, metrics) = http_get(monitor, "x", "/metrics").unwrap();
    assert!(
        metrics.contains("isthmus_discovery_csr_signed_total 2"),
        "{metrics}"
    );

    // A sidecar claiming an identity its token does not prove gets no certificate.
    let admin_log = tmp.path().join("admin.log");
    let _admin = spawn(
        &sidecar,
        &common(
            "admin-1",
            "admin",
            lo,
            free_port(lo),
            free_port(lo),
            "front.token",
        ),
        &admin_log,
    );
    wait_for("the CA refuses the CSR", &[&admin_log], || {
        std::fs::read_to_string(&admin_log)
            .ok()
            .filter(|l| l.contains("authenticated as spiffe://mesh.example/ns/shop/sa/frontend"))
    });
}
