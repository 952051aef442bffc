//! gRPC channels over mTLS: the config stream and the CA (proxy → discovery) and
//! peering (discovery → discovery). Every connection carries the proxy mark, so that
//! in a captured pod it never loops back through the sidecar (which may not be
//! listening yet).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_identity::{Identity, SpiffeId};

/// How long a connection may take before the attempt fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive of channels that do not choose their own.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Opens a channel to discovery at `address` with the workload `identity`, accepting
/// only a server that proves one of `expected`.
pub async fn channel(
    address: SocketAddr,
    identity: &Identity,
    expected: Vec<SpiffeId>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let tls = Arc::new(identity.client_config(expected, &[b"h2"]));
    tls_channel(address, tls).await
}

/// Opens a channel over TLS with the given client config.
pub async fn tls_channel(
    address: SocketAddr,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tls_channel_from(address, None, DEFAULT_KEEP_ALIVE, tls).await
}

/// As [`tls_channel`], its connections leaving from the local address `source` when
/// given, pinging every `keep_alive` (and giving up after half of it more without an
/// answer) so that a path that went dark is noticed.
pub async fn tls_channel_from(
    address: SocketAddr,
    source: Option<std::net::IpAddr>,
    keep_alive: Duration,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_uri: ::http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = crate::socket::connect_marked_from(address, source).await?;
            let name = rustls_pki_types::ServerName::IpAddress(address.ip().into());
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address is a valid URI")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(keep_alive)
        .keep_alive_timeout(keep_alive / 2)
        .connect_with_connector(connector)
        .await
}

/// An error and its sources, joined: tonic's transport errors say little on their own.
pub fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn source_chain_names_every_cause_once() {
        let e = Layer(
            "transport error",
            Some(Box::new(Layer(
                "connection refused",
                Some(Box::new(Layer("refused", None))),
            ))),
        );
        // "refused" is already part of "connection refused": not repeated.
        assert_eq!(source_chain(&e), "transport error: connection refused");
    }
}
