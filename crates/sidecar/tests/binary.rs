//! Two real sidecar processes: a request crosses them over mTLS, a broken config file
//! is refused while traffic keeps flowing, a file is taken document by document (a
//! wrong document is refused alone), and SIGTERM stops the process cleanly.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_identity::ca::{INTERMEDIATE_VALIDITY, ROOT_VALIDITY};
use mesh_identity::{ClusterCa, RootCa, SpiffeId};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_certs(ca: &ClusterCa, sa: &str, dir: &Path) {
    let id = SpiffeId::new(ca.trust_domain().clone(), "shop", sa).unwrap();
    ca.issue_workload(&id, Duration::from_secs(3600))
        .unwrap()
        .write(dir)
        .unwrap();
    std::fs::write(dir.join("root-cert.pem"), ca.root_pem()).unwrap();
}

/// An HTTP/1.1 backend answering `backend says hi` to every request.
fn backend() -> u16 {
    testbed::http_responder("127.0.0.1:0".parse().unwrap(), "backend says hi").port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sidecar(config: &Path, certs: &Path, outbound: u16, inbound: u16, log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_sidecar"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "--cert-dir",
                certs.to_str().unwrap(),
            ])
            .args([
                "--outbound",
                &format!("127.0.0.1:{outbound}"),
                "--inbound",
                &format!("127.0.0.1:{inbound}"),
                "--admin",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// GET through the client sidecar; `None` while it is not listening yet.
fn get(port: u16) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: reviews:9080\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    ))
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn two_sidecar_processes_carry_a_request_and_survive_a_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(&"mesh.example".parse().unwrap(), ROOT_VALIDITY).unwrap();
    let ca = root.intermediate("east", INTERMEDIATE_VALIDITY).unwrap();
    write_certs(&ca, "productpage", &tmp.path().join("client-certs"));
    write_certs(&ca, "reviews", &tmp.path().join("server-certs"));

    let app = backend();
    let (c_out, c_in, s_out, s_in) = (free_port(), free_port(), free_port(), free_port());
    let server_cfg = tmp.path().join("server.yaml");
    std::fs::write(
        &server_cfg,
        format!(
            "apiVersion: isthmus.dev/v1alpha1\nkind: ProxyConfig\nversion: s1\nnode: {{name: reviews-1, namespace: shop, serviceAccount: reviews}}\nservices:\n- {{name: reviews, namespace: shop, ports: [{{name: http, port: 9080, targetPort: {app}}}]}}\n"
        ),
    )
    .unwrap();
    let client_cfg = tmp.path().join("client.yaml");
    let good = format!(
        "apiVersion: isthmus.dev/v1alpha1\nkind: ProxyConfig\nversion: c1\nnode: {{name: pp-1, namespace: shop, serviceAccount: productpage}}\nservices:\n- name: reviews\n  namespace: shop\n  ports: [{{name: http, port: 9080}}]\n  endpoints: [{{address: 127.0.0.1, inboundPort: {s_in}}}]\n"
    );
    std::fs::write(&client_cfg, &good).unwrap();

    let client_log = tmp.path().join("client.log");
    let _server = sidecar(
        &server_cfg,
        &tmp.path().join("server-certs"),
        s_out,
        s_in,
        &tmp.path().join("server.log"),
    );
    let mut client = sidecar(
        &client_cfg,
        &tmp.path().join("client-certs"),
        c_out,
        c_in,
        &client_log,
    );
    wait_for(
        || get(c_out).is_some_and(|(s, _)| s == 200),
        "the first request to succeed",
    );
    assert_eq!(get(c_out).unwrap(), (200, "backend says hi".to_owned()));

    // A broken edit of the config file is refused; traffic keeps flowing.
    std::fs::write(&client_cfg, good.replace("port: 9080}]", "port: nine}]")).unwrap();
    wait_for(
        || {
            std::fs::read_to_string(&client_log)
                .unwrap()
                .contains("config rejected")
        },
        "the rejection to be logged",
    );
    for _ in 0..20 {
        assert_eq!(get(c_out).unwrap().0, 200);
    }

    // An edit with a good VirtualService (an abort for every request) and a broken one
    // for another host: the good one is in force, the broken one refused by name.
    let abort = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec: {hosts: [reviews], http: [{fault: {abort: {httpStatus: 418, percentage: {value: 100}}}, route: [{destination: {host: reviews}}]}]}\n";
    let broken = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: other, namespace: shop}\nspec: {hosts: [other], http: [{match: [{uri: {regex: '(unclosed'}}], route: [{destination: {host: other}}]}]}\n";
    std::fs::write(&client_cfg, format!("{good}{abort}{broken}")).unwrap();
    wait_for(
        || get(c_out).is_some_and(|(s, _)| s == 418),
        "the good VirtualService of the edit to be in force",
    );
    let log = std::fs::read_to_string(&client_log).unwrap();
    assert!(log.contains("VirtualService/shop/other"), "{log}");

    // SIGTERM: the process stops by itself.
    nix_kill_term(client.0.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = client.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "sidecar did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn a_sidecar_does_not_start_on_a_file_with_a_wrong_document() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(&"mesh.example".parse().unwrap(), ROOT_VALIDITY).unwrap();
    let ca = root.intermediate("east", INTERMEDIATE_VALIDITY).unwrap();
    write_certs(&ca, "productpage", &tmp.path().join("certs"));
    let cfg = tmp.path().join("client.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: isthmus.dev/v1alpha1\nkind: ProxyConfig\nnode: {name: pp-1, namespace: shop, serviceAccount: productpage}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec: {host: reviews, trafficPolicy: {loadBalancer: {simple: SOMETIMES}}}\n",
    )
    .unwrap();
    let log = tmp.path().join("sidecar.log");
    let mut proc = sidecar(
        &cfg,
        &tmp.path().join("certs"),
        free_port(),
        free_port(),
        &log,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar started on a wrong file"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("DestinationRule/shop/reviews"), "{log}");
    assert!(log.contains("SOMETIMES"), "{log}");
}

fn nix_kill_term(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}
