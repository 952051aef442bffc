//! Connections an Isthmus process makes itself carry the socket mark [`PROXY_MARK`], so
//! that a pod's capture rules (which leave marked traffic alone) never send them back
//! through the sidecar.

use std::net::SocketAddr;
use std::os::fd::AsFd;

/// The socket mark on every connection the proxy makes itself.
pub const PROXY_MARK: u32 = 1337;

/// Marks a socket as the proxy's own so capture rules leave it alone. Needs
/// CAP_NET_ADMIN; without it the mark is skipped (fine when nothing is captured).
pub fn mark_as_proxy(socket: &impl AsFd) {
    if let Err(e) =
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Mark, &PROXY_MARK)
    {
        tracing::trace!(error = %e, "cannot set the proxy socket mark");
    }
}

/// Connects to `addr` from a socket carrying the proxy mark.
pub async fn connect_marked(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    connect_marked_from(addr, None).await
}

/// As [`connect_marked`], from the local address `source` when given (a control
/// plane whose connections must leave from the address it serves on).
pub async fn connect_marked_from(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    mark_as_proxy(&socket);
    socket.set_nodelay(true)?;
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}
