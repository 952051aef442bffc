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

#[cfg(test)]
mod tests {
    use super::*;

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
