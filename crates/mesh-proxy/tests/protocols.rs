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
