//! The TLS listener of port 15012 and the gRPC server on it: the config stream (which
//! requires a workload certificate) and the CA (which callers reach with a token before
//! they have one), so the client certificate is optional at the TLS layer and each
//! service checks what it needs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use mesh_identity::{Identity, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Who is on the other end of a connection, as the TLS handshake established.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Remote address.
    pub address: SocketAddr,
    /// The SPIFFE ID of the client certificate, if one was presented.
    pub id: Option<SpiffeId>,
    /// Its expiry.
    pub cert_expiry: Option<SystemTime>,
}

/// An accepted TLS connection with its peer information, for tonic.
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections on `listener` and completes their TLS handshakes concurrently;
/// failed handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    identity: &Identity,
) -> ReceiverStream<Result<TlsConn, std::io::Error>> {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config_optional_client(&[b"h2"])));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // The server is gone: close the listener.
                () = tx.closed() => return,
            };
            let (tcp, address) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %address, reason = %mesh_identity::explain(&e), "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(peer = %address, "TLS handshake timed out");
                        return;
                    }
                };
                let certs = tls.get_ref().1.peer_certificates();
                let (id, cert_expiry) = match certs.and_then(<[_]>::first) {
                    Some(leaf) => {
                        let origin = format!("client {address}");
                        match mesh_identity::cert::CertInfo::parse(leaf, &origin) {
                            Ok(info) => (info.spiffe_id(&origin).ok(), Some(info.not_after)),
                            Err(_) => (None, None),
                        }
                    }
                    None => (None, None),
                };
                let conn = TlsConn {
                    inner: tls,
                    info: PeerInfo {
                        address,
                        id,
                        cert_expiry,
                    },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
