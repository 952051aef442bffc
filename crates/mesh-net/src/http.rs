//! The body type every Isthmus HTTP server and client shares, and the helpers of the
//! small endpoints (admin, debug, monitoring, webhooks) and of their clients.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// The error type carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type of the data path and the admin endpoints.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Any hyper body, boxed.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Serves small HTTP endpoints (admin, debug, monitoring) on `listener`, answering each
/// request with `handle`, until dropped.
pub async fn serve_endpoints<F>(listener: tokio::net::TcpListener, handle: F)
where
    F: Fn(&http::Request<hyper::body::Incoming>) -> http::Response<Body>
        + Clone
        + Send
        + Sync
        + 'static,
{
    serve_endpoints_async(listener, move |req| {
        let resp = handle(&req);
        async move { resp }
    })
    .await;
}

/// As [`serve_endpoints`], with answers that take their time (a page that asks
/// another server).
pub async fn serve_endpoints_async<F, Fut>(listener: tokio::net::TcpListener, handle: F)
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Body>> + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = handle(req);
                async move { Ok::<_, std::convert::Infallible>(resp.await) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
        });
    }
}

/// A response with `status`, a content type and a text body.
pub fn text_response(
    status: http::StatusCode,
    content_type: &str,
    body: String,
) -> http::Response<Body> {
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// Why a plain GET to an admin or debug endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// No connection.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The request could not be made (an invalid path or header).
    #[error("GET {path}: {source}")]
    Request {
        /// The path asked for.
        path: String,
        /// Why.
        source: http::Error,
    },
    /// The connection failed during the exchange.
    #[error("GET http://{authority}{path} via {addr}: {source}")]
    Exchange {
        /// Where.
        addr: std::net::SocketAddr,
        /// The Host asked for.
        authority: String,
        /// The path asked for.
        path: String,
        /// Why.
        source: hyper::Error,
    },
}

impl From<GetError> for String {
    fn from(e: GetError) -> Self {
        e.to_string()
    }
}

/// One plain-HTTP GET (admin and debug endpoints): status and body.
pub async fn get(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(http::StatusCode, String), GetError> {
    request(addr, &addr.to_string(), path, &[]).await
}

/// One plain-HTTP/1.1 GET to `addr` with `authority` as Host (a sidecar's outbound
/// listener names the service that way) and extra `headers`: status and body.
pub async fn request(
    addr: std::net::SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, http::HeaderValue)],
) -> Result<(http::StatusCode, String), GetError> {
    let exchange = |source| GetError::Exchange {
        addr,
        authority: authority.to_owned(),
        path: path.to_owned(),
        source,
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| GetError::Connect { addr, source })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(exchange)?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|source| GetError::Request {
            path: path.to_owned(),
            source,
        })?;
    for (k, v) in headers {
        if let Ok(name) = http::HeaderName::from_bytes(k.as_bytes()) {
            req.headers_mut().insert(name, v.clone());
        }
    }
    let resp = send.send_request(req).await.map_err(exchange)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(exchange)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
