//! The sidecar's DNS proxy (Istio's `ISTIO_META_DNS_CAPTURE`): with capture, the pod's
//! DNS queries (UDP and TCP port 53) reach this listener. A query for a name the mesh
//! knows is answered here, from the config in force: a Kubernetes Service's virtual
//! IP, a ServiceEntry's `addresses`, and for every host with no IPv4 address of its
//! own (a ServiceEntry without `addresses`, a service that exists only in another
//! cluster) an address allocated from 240.240.0.0/16 (as Istio's
//! `ISTIO_META_DNS_AUTO_ALLOCATE`), which captured connections are then routed by.
//! Every other query goes, unchanged, to the pod's own resolvers, and their answer
//! back: search domains and `ndots` behave as the pod's resolv.conf says, since the
//! client applies them before it asks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::state::{ProxyState, StateStore};

/// Where the DNS proxy listens and where it forwards names that are not the mesh's.
#[derive(Debug, Clone)]
pub struct DnsListen {
    /// UDP and TCP listen address (15053 in a pod).
    pub addr: SocketAddr,
    /// The pod's own resolvers (its resolv.conf's name servers).
    pub upstreams: Vec<SocketAddr>,
}

/// Starts the DNS proxy: its bound address and its two listener tasks.
pub async fn start(
    listen: &DnsListen,
    store: Arc<StateStore>,
) -> std::io::Result<(SocketAddr, [tokio::task::JoinHandle<()>; 2])> {
    // One port for both: with port 0, a UDP port whose TCP twin is free.
    let mut tries = 0;
    let (udp, tcp, addr) = loop {
        let udp = UdpSocket::bind(listen.addr).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, tcp, addr),
            Err(e) if listen.addr.port() != 0 || tries >= 16 => return Err(e),
            Err(_) => tries += 1,
        }
    };
    let upstreams: Arc<[SocketAddr]> = listen.upstreams.clone().into();
    Ok((
        addr,
        [
            tokio::spawn(serve_udp(udp, store.clone(), upstreams.clone())),
            tokio::spawn(serve_tcp(tcp, store, upstreams)),
        ],
    ))
}

/// How long a client may cache an answer for a mesh name.
const TTL: u32 = 30;
/// How long an upstream resolver has to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// The answer to `query` from the mesh's own names, or `None` when the name is not
/// one of them (the query is then forwarded). A mesh name asked for a type it has no
/// record of (AAAA of a name with IPv4 addresses only, say) gets an empty answer, so
/// the client does not ask further resolvers about it.
pub fn answer(state: &ProxyState, query: &Message) -> Option<Message> {
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let [question] = query.queries.as_slice() else {
        return None;
    };
    let name = question.name().to_ascii().to_ascii_lowercase();
    let addresses = state.dns_addresses(name.trim_end_matches('.'))?;
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    for ip in addresses {
        let data = match (ip, question.query_type()) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        response.add_answer(Record::from_rdata(question.name().clone(), TTL, data));
    }
    Some(response)
}

/// The reply to one query packet: answered from the mesh's names, else by the first
/// upstream resolver that answers (`None`: none did, the client will ask again).
async fn reply(
    state: &ProxyState,
    packet: &[u8],
    upstreams: &[SocketAddr],
    tcp: bool,
) -> Option<Vec<u8>> {
    if let Ok(query) = Message::from_vec(packet)
        && let Some(local) = answer(state, &query)
    {
        return local.to_vec().ok();
    }
    for upstream in upstreams {
        let forwarded = if tcp {
            forward_tcp(packet, *upstream).await
        } else {
            forward_udp(packet, *upstream).await
        };
        match forwarded {
            Ok(reply) => return Some(reply),
            Err(e) => tracing::debug!(%upstream, error = %e, "upstream resolver failed"),
        }
    }
    None
}

/// Sends `packet` to `upstream` over UDP from a socket of the proxy's own (marked, so
/// capture leaves it alone) and waits for its reply.
async fn forward_udp(packet: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    mesh_net::socket::mark_as_proxy(&socket);
    socket.connect(upstream).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    buf.truncate(n);
    Ok(buf)
}

/// As [`forward_udp`], over TCP (a query that came over TCP, often after a truncated
/// UDP answer).
async fn forward_tcp(packet: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = mesh_net::socket::connect_marked(upstream).await?;
        write_framed(&mut stream, packet).await?;
        read_framed(&mut stream).await
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

async fn read_framed(stream: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(
    stream: &mut (impl AsyncWriteExt + Unpin),
    packet: &[u8],
) -> std::io::Result<()> {
    let len = u16::try_from(packet.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too long"))?;
    stream.write_u16(len).await?;
    stream.write_all(packet).await
}

/// Answers queries on `socket` (UDP) until it fails.
pub async fn serve_udp(socket: UdpSocket, store: Arc<StateStore>, upstreams: Arc<[SocketAddr]>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "DNS listener failed");
                return;
            }
        };
        let packet = buf[..n].to_vec();
        let (socket, store, upstreams) = (socket.clone(), store.clone(), upstreams.clone());
        tokio::spawn(async move {
            let state = store.snapshot();
            if let Some(r) = reply(&state, &packet, &upstreams, false).await {
                let _ = socket.send_to(&r, from).await;
            }
        });
    }
}

/// Answers queries on `listener` (TCP, length-prefixed) until it fails.
pub async fn serve_tcp(
    listener: TcpListener,
    store: Arc<StateStore>,
    upstreams: Arc<[SocketAddr]>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let (store, upstreams) = (store.clone(), upstreams.clone());
        tokio::spawn(async move {
            while let Ok(packet) = read_framed(&mut stream).await {
                let state = store.snapshot();
                let Some(r) = reply(&state, &packet, &upstreams, true).await else {
                    return;
                };
                if write_framed(&mut stream, &r).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The name servers of a resolv.conf text, each on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}
