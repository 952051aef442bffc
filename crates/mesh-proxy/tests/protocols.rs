//! HTTP/2 and gRPC through two sidecars: streamed frames in both directions and the
//! trailers (`grpc-status`) arrive intact.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::Mesh;
use tokio::net::{TcpListener, TcpStream};

type Frames = StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

fn frames(data: &[&str], trailers: Option<HeaderMap>) -> Frames {
    let mut v: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = data
        .iter()
        .map(|d| Ok(Frame::data(Bytes::from(d.to_string()))))
        .collect();
    if let Some(t) = trailers {
        v.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures::stream::iter(v))
}

/// An h2c "gRPC" server: echoes how many request frames and bytes it got, in three
/// response frames, then `grpc-status: 0` and a custom trailer.
async fn grpc_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    assert_eq!(
                        req.version(),
                        http::Version::HTTP_2,
                        "gRPC reaches the app over HTTP/2"
                    );
                    let content_type = req.headers().get("content-type").cloned();
                    let mut body = req.into_body();
                    let (mut count, mut bytes) = (0, 0);
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.unwrap().into_data()
                            && !data.is_empty()
                        {
                            count += 1;
                            bytes += data.len();
                        }
                    }
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("x-frames-seen", count.to_string().parse().unwrap());
                    let mut resp = http::Response::new(frames(
                        &["one;", "two;", &format!("bytes={bytes}")],
                        Some(trailers),
                    ));
                    if let Some(ct) = content_type {
                        resp.headers_mut().insert("content-type", ct);
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn grpc_streams_and_trailers_cross_two_sidecars_intact() {
    let mesh = Mesh::new();
    let app = grpc_backend().await;
    let server = support::sidecar(
        &mesh,
        &format!(
            "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: ratings-1, namespace: shop, serviceAccount: ratings}}
services:
- {{name: ratings, namespace: shop, ports: [{{name: grpc, port: 7070, targetPort: {app}}}]}}
"
        ),
        "shop",
        "ratings",
    )
    .await;
    let client = support::sidecar(
        &mesh,
        &format!(
            "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: reviews-1, namespace: shop, serviceAccount: reviews}}
services:
- name: ratings
  namespace: shop
  ports: [{{name: grpc, port: 7070}}]
  endpoints: [{{address: 127.0.0.1, inboundPort: {}}}]
",
            server.inbound_addr.port()
        ),
        "shop",
        "reviews",
    )
    .await;

    // The application speaks h2c to its sidecar, as gRPC clients do.
    let tcp = TcpStream::connect(client.outbound_addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://ratings.shop:7070/ratings.Ratings/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frames(&["a", "bb", "ccc", "dddd"], None))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    // HTTP/2 hops may split or join DATA frames (gRPC messages carry their own
    // length), but a stream must stay a stream: a proxy that buffered it would
    // deliver one frame, and a bidirectional call would hang.
    let frames_seen: u32 = trailers["x-frames-seen"].to_str().unwrap().parse().unwrap();
    assert!(
        frames_seen > 1,
        "the request arrived as {frames_seen} frame(s)"
    );
    assert_eq!(collected.to_bytes(), Bytes::from("one;two;bytes=10"));
}

/// A stand-in for a server sidecar: mTLS with the mesh identity of shop/reviews,
/// answering each request with the ALPN protocol its connection negotiated, the HTTP
/// version the request arrived in and the connection's number.
async fn protocol_echo(mesh: &Mesh) -> u16 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let identity = mesh.identity("shop", "reviews");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config(&[b"h2", b"http/1.1"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, connections) = (acceptor.clone(), connections.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let n = connections.fetch_add(1, Ordering::SeqCst) + 1;
                let alpn = String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap_or(b"-"))
                    .into_owned();
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let body = format!("alpn={alpn} version={:?} conn={n}", req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

/// A GET through the sidecar's outbound listener over HTTP/1.1 or h2c.
async fn get_as(outbound: std::net::SocketAddr, host: &str, h2: bool) -> String {
    let tcp = TcpStream::connect(outbound).await.unwrap();
    let empty = || http_body_util::Empty::<Bytes>::new();
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{host}/"))
            .body(empty())
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", host)
            .body(empty())
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn http1_stays_http1_between_sidecars_unless_upgraded_and_its_connections_are_reused() {
    let mesh = Mesh::new();
    let port = protocol_echo(&mesh).await;
    let service = |name: &str, port_name: &str| {
        format!(
            "- name: {name}
  namespace: shop
  ports: [{{name: {port_name}, port: 9080}}]
  endpoints: [{{address: 127.0.0.1, inboundPort: {port}, serviceAccount: reviews}}]
"
        )
    };
    let config = format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: productpage-1, namespace: shop, serviceAccount: productpage}}
services:
{}{}{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: shop}}
spec:
  host: ratings
  trafficPolicy: {{connectionPool: {{http: {{h2UpgradePolicy: UPGRADE}}}}}}
",
        service("reviews", "http"),
        service("ratings", "http"),
        service("details", "http2"),
    );
    let client = support::sidecar(&mesh, &config, "shop", "productpage").await;
    let out = client.outbound_addr;

    // HTTP/1.1 from the app stays HTTP/1.1 between the sidecars (Istio's default
    // h2UpgradePolicy), and sequential requests share one pooled connection.
    let first = get_as(out, "reviews:9080", false).await;
    assert!(
        first.starts_with("alpn=http/1.1 version=HTTP/1.1 conn="),
        "{first}"
    );
    let conn = first.rsplit('=').next().unwrap().to_owned();
    for _ in 0..5 {
        let again = get_as(out, "reviews:9080", false).await;
        assert!(
            again.ends_with(&format!("conn={conn}")),
            "a pooled HTTP/1.1 connection is reused: {again} after {first}"
        );
    }
    // h2UpgradePolicy: UPGRADE, an HTTP/2 client and an http2 port: HTTP/2.
    let upgraded = get_as(out, "ratings:9080", false).await;
    assert!(
        upgraded.starts_with("alpn=h2 version=HTTP/2.0"),
        "{upgraded}"
    );
    let h2 = get_as(out, "reviews:9080", true).await;
    assert!(h2.starts_with("alpn=h2 version=HTTP/2.0"), "{h2}");
    let declared = get_as(out, "details:9080", false).await;
    assert!(
        declared.starts_with("alpn=h2 version=HTTP/2.0"),
        "{declared}"
    );
}
