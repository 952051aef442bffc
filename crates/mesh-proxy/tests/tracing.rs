//! One trace across two sidecars: the app's traceparent is continued by the client
//! sidecar's span, then by the server sidecar's span, which the backend sees as its
//! parent; both spans carry the source and destination cluster.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_proxy::{Sidecar, StateStore};
use mesh_telemetry::trace::Tracing;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use support::{Mesh, opts};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers with the traceparent it received.
async fn trace_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let tp = req
                        .headers()
                        .get("traceparent")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        tp,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

fn attr(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_trace_continues_across_two_sidecars() {
    let mesh = Mesh::new();
    let exporter = InMemorySpanExporter::default();
    let app = trace_echo().await;

    let server_store = Arc::new(StateStore::default());
    server_store
        .apply_yaml(
            &format!(
                "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: reviews-1, namespace: shop, serviceAccount: reviews, cluster: west, labels: {{app: reviews}}}}
services:
- {{name: reviews, namespace: shop, ports: [{{name: http, port: 9080, targetPort: {app}}}]}}
"
            ),
            "server",
        )
        .unwrap();
    let mut server_opts = opts();
    server_opts.tracing = Tracing::with_exporter(exporter.clone(), "reviews.shop", vec![], false);
    let server = Sidecar::start(server_store, mesh.identity("shop", "reviews"), server_opts)
        .await
        .unwrap();

    let client_store = Arc::new(StateStore::default());
    client_store
        .apply_yaml(
            &format!(
                "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: productpage-1, namespace: shop, serviceAccount: productpage, cluster: east, labels: {{app: productpage}}}}
services:
- name: reviews
  namespace: shop
  ports: [{{name: http, port: 9080}}]
  endpoints: [{{address: 127.0.0.1, inboundPort: {}, cluster: west}}]
",
                server.inbound_addr.port()
            ),
            "client",
        )
        .unwrap();
    let mut client_opts = opts();
    client_opts.tracing =
        Tracing::with_exporter(exporter.clone(), "productpage.shop", vec![], false);
    let client = Sidecar::start(
        client_store,
        mesh.identity("shop", "productpage"),
        client_opts,
    )
    .await
    .unwrap();

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    let tcp = TcpStream::connect(client.outbound_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/reviews/1")
        .header("host", "reviews:9080")
        .header("traceparent", format!("00-{trace}-{app_span}-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let seen_by_backend = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let spans = exporter.get_finished_spans().unwrap();
    let client_span = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .expect("client span");
    let server_span = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("server span");
    assert_eq!(client_span.span_context.trace_id().to_string(), trace);
    assert_eq!(
        client_span.parent_span_id.to_string(),
        app_span,
        "the client sidecar continues the app's span"
    );
    assert_eq!(server_span.span_context.trace_id().to_string(), trace);
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id(),
        "the server sidecar continues the client's"
    );
    assert_eq!(
        seen_by_backend,
        format!("00-{trace}-{}-01", server_span.span_context.span_id()),
        "the backend's parent is the server sidecar's span"
    );
    for s in [client_span, server_span] {
        assert_eq!(attr(s, "source_cluster"), "east");
        assert_eq!(attr(s, "destination_cluster"), "west");
    }
    assert_eq!(
        attr(client_span, "upstream_cluster"),
        "outbound_.9080_._.reviews.shop.svc.cluster.local"
    );
}
