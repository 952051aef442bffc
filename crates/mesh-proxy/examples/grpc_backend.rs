//! A gRPC backend for `tools/bench/sidecar-hop.sh`: an h2c server on the given address
//! that answers any unary call (`…/Unary`) with one 64-byte message and any other path
//! (`…/Stream`, a server-streaming call) with `MESSAGES` such messages, each in its own
//! DATA frame, then the `grpc-status: 0` trailer. Messages are length-prefixed as gRPC
//! frames them (flag byte, 4-byte length); the payload is an opaque protobuf `bytes`
//! field, which no proxy on the path parses.
//!
//! ```text
//! cargo run --release -p mesh-proxy --example grpc_backend -- 127.0.0.1:18090 [MESSAGES]
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One gRPC message: field 1 (`bytes`) with 57 bytes, framed: 64 bytes on the wire.
fn message() -> Bytes {
    let mut m = vec![0u8, 0, 0, 0, 59, 0x0a, 57];
    m.extend(std::iter::repeat_n(b'x', 57));
    Bytes::from(m)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "127.0.0.1:18090".parse().expect("an address"));
    let streamed: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                let unary = req.uri().path().ends_with("/Unary");
                // The request is read to its end first, as a unary handler does.
                let _ = req.into_body().collect().await;
                let count = if unary { 1 } else { streamed };
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let frames = std::iter::repeat_n(message(), count)
                    .map(|m| Ok::<_, Infallible>(Frame::data(m)))
                    .chain([Ok(Frame::trailers(trailers))]);
                let body = StreamBody::new(futures::stream::iter(frames));
                let mut resp = http::Response::new(body);
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
