//! Istio's SNI for mesh traffic: `outbound_.PORT_.SUBSET_.HOST`, where SUBSET is empty
//! when none is chosen. The east-west gateway routes on it without decrypting.

/// Builds the SNI for a service port and subset.
pub fn outbound_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The parts of an outbound SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundSni<'a> {
    /// Service port.
    pub port: u16,
    /// Subset ("" for none).
    pub subset: &'a str,
    /// Fully qualified host.
    pub host: &'a str,
}

/// Parses `outbound_.PORT_.SUBSET_.HOST`.
pub fn parse_outbound_sni(sni: &str) -> Option<OutboundSni<'_>> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (port, rest) = rest.split_once("_.")?;
    let (subset, host) = rest.split_once("_.")?;
    Some(OutboundSni {
        port: port.parse().ok()?,
        subset,
        host,
    })
}

/// Largest ClientHello read while looking for the SNI (TLS allows 2^24, real ones are
/// a few hundred bytes to a few KiB).
const MAX_HELLO: usize = 64 * 1024;

/// Reads a TLS ClientHello from `stream` without terminating TLS: returns every byte
/// read (to be forwarded unchanged) and the server name, if the hello carries one.
/// Errors when the bytes are not a TLS handshake.
pub async fn read_client_hello<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
) -> std::io::Result<(Vec<u8>, Option<String>)> {
    use tokio::io::AsyncReadExt;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let mut raw = Vec::new();
    let mut handshake = Vec::new();
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await?;
        raw.extend_from_slice(&header);
        if header[0] != 0x16 {
            return Err(bad("not a TLS handshake record"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let start = raw.len();
        raw.resize(start + len, 0);
        stream.read_exact(&mut raw[start..]).await?;
        handshake.extend_from_slice(&raw[start..]);
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Err(bad("the first handshake message is not a ClientHello"));
            }
            let body = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if handshake.len() >= 4 + body {
                return Ok((raw, client_hello_sni(&handshake[4..4 + body])));
            }
        }
        if raw.len() > MAX_HELLO {
            return Err(bad("ClientHello too large"));
        }
    }
}

/// The `server_name` of a ClientHello body (after the 4-byte handshake header).
pub fn client_hello_sni(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.skip(2 + 32)?; // legacy_version, random
    let sid = r.u8()?;
    r.skip(usize::from(sid))?;
    let suites = r.u16()?;
    r.skip(usize::from(suites))?;
    let compression = r.u8()?;
    r.skip(usize::from(compression))?;
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(usize::from(ext_len))?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(usize::from(len))?;
        if kind == 0 {
            let mut names = Reader(data);
            let list = names.u16()?;
            let mut list = Reader(names.take(usize::from(list))?);
            while !list.0.is_empty() {
                let name_type = list.u8()?;
                let n = list.u16()?;
                let name = list.take(usize::from(n))?;
                if name_type == 0 {
                    return String::from_utf8(name.to_vec()).ok();
                }
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_the_sni_of_a_real_client_hello_and_returns_every_byte() {
        use std::sync::Arc;
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let roots = tokio_rustls::rustls::RootCertStore::empty();
        let cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let sni = outbound_sni(9080, "v2", "reviews.shop.svc.cluster.local");
        let name = rustls_pki_types::ServerName::try_from(sni.clone()).unwrap();
        tokio::spawn(async move {
            let _ = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, client)
                .await;
        });
        let (raw, got) = read_client_hello(&mut server).await.unwrap();
        assert_eq!(got.as_deref(), Some(sni.as_str()));
        assert_eq!(raw[0], 0x16);
        let record = usize::from(u16::from_be_bytes([raw[3], raw[4]]));
        assert_eq!(raw.len(), 5 + record);
        let parsed = parse_outbound_sni(got.as_deref().unwrap()).unwrap();
        assert_eq!((parsed.port, parsed.subset), (9080, "v2"));
    }

    #[tokio::test]
    async fn plaintext_is_not_a_client_hello() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(read_client_hello(&mut input).await.is_err());
    }

    #[test]
    fn round_trips_istio_examples() {
        let s = outbound_sni(5000, "", "helloworld.sample.svc.cluster.local");
        assert_eq!(s, "outbound_.5000_._.helloworld.sample.svc.cluster.local");
        let p =
            parse_outbound_sni("outbound_.5000_.v1_.helloworld.sample.svc.cluster.local").unwrap();
        assert_eq!(
            (p.port, p.subset, p.host),
            (5000, "v1", "helloworld.sample.svc.cluster.local")
        );
        assert!(parse_outbound_sni("inbound_.5000_._.x").is_none());
        assert!(parse_outbound_sni("outbound_.x_._.h").is_none());
    }
}
