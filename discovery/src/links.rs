//! Cluster links: the Secret `meshctl remote-secret` prints. Applied in cluster A (or
//! dropped into A's registry directory), it links A to cluster B: B's name and
//! network, B's discovery and gateway addresses, and the trust bundle B's discovery
//! certificate chains to. No API-server credential and no bearer token: the discovery
//! services authenticate each other with certificates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use mesh_identity::TrustDomain;
use serde::Serialize;

/// Label that marks a Secret as a cluster link (Istio's remote-secret label).
pub const LINK_LABEL: &str = "istio/multiCluster";
/// Annotation with the linked cluster's name (Istio's).
pub const CLUSTER_ANNOTATION: &str = "networking.istio.io/cluster";

/// Keys of the link Secret.
pub mod keys {
    /// Linked cluster name.
    pub const CLUSTER: &str = "cluster";
    /// Its network.
    pub const NETWORK: &str = "network";
    /// Its discovery (peering) address, `host:port`.
    pub const DISCOVERY: &str = "discoveryAddress";
    /// Its east-west gateway, `host:port`.
    pub const GATEWAY: &str = "gatewayAddress";
    /// What the gateway accepts on that port: `tcp`, or `tcp,quic` (UDP too).
    pub const GATEWAY_PROTOCOLS: &str = "gatewayProtocols";
    /// Roots its discovery certificate chains to (PEM).
    pub const TRUST_BUNDLE: &str = "trustBundle";
    /// The trust domain of those roots.
    pub const TRUST_DOMAIN: &str = "trustDomain";
}

/// A link to another cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    /// The Secret it came from, `namespace/name`.
    pub secret: String,
    /// Linked cluster.
    pub cluster: String,
    /// Its network.
    pub network: String,
    /// Its discovery address.
    pub discovery_address: String,
    /// Its east-west gateway.
    pub gateway_address: String,
    /// Whether the gateway accepts QUIC tunnels (UDP, same port).
    pub gateway_quic: bool,
    /// Roots (PEM).
    #[serde(skip)]
    pub trust_bundle: String,
    /// Trust domain of the roots.
    pub trust_domain: String,
}

/// Checks a cluster name: a DNS-1123 label (lowercase letters, digits, `-`; at most 63;
/// starting and ending with a letter or digit).
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {name:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)"
        ))
    }
}

/// Checks a `host:port` address; loopback hosts are refused unless `allow_loopback`.
pub fn check_address(what: &str, address: &str, allow_loopback: bool) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{what} {address:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what} {address:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{what} {address:?} has no host"));
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback && !allow_loopback {
        return Err(format!(
            "{what} {address:?} is a loopback address, which the other cluster cannot reach; give an address it can, or --allow-loopback for clusters on one machine"
        ));
    }
    Ok(())
}

/// The trust domain of the first root in `pem` (its SPIFFE URI SAN), checking that
/// every certificate parses and is a CA.
pub fn bundle_trust_domain(pem: &str, origin: &str) -> Result<TrustDomain, String> {
    let certs =
        mesh_identity::cert::parse_certs(pem.as_bytes(), origin).map_err(|e| e.to_string())?;
    let mut td = None;
    for der in &certs {
        let info = mesh_identity::cert::CertInfo::parse(der, origin).map_err(|e| e.to_string())?;
        let this = info.ca_trust_domain().ok_or_else(|| {
            format!("{origin}: a certificate is not a SPIFFE CA (no spiffe:// URI SAN)")
        })?;
        td.get_or_insert(this);
    }
    td.ok_or_else(|| format!("{origin}: no certificate"))
}

impl Link {
    /// Reads a link Secret; `Ok(None)` when the Secret is not labelled as a link.
    pub fn from_secret(secret: &Secret) -> Result<Option<Self>, String> {
        let labelled = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LINK_LABEL))
            .is_some_and(|v| v == "true");
        if !labelled {
            return Ok(None);
        }
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let origin = format!("Secret {ns}/{name}");
        let mut data: BTreeMap<String, String> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        data.extend(secret.string_data.clone().unwrap_or_default());
        let get = |k: &str| {
            data.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!(
                        "{origin}: key {k} is missing; regenerate it with `meshctl remote-secret`"
                    )
                })
        };
        let cluster = get(keys::CLUSTER)?;
        check_cluster_name(&cluster).map_err(|e| format!("{origin}: {e}"))?;
        let discovery_address = get(keys::DISCOVERY)?;
        check_address(keys::DISCOVERY, &discovery_address, true)
            .map_err(|e| format!("{origin}: {e}"))?;
        let gateway_address = get(keys::GATEWAY)?;
        check_address(keys::GATEWAY, &gateway_address, true)
            .map_err(|e| format!("{origin}: {e}"))?;
        let trust_bundle = get(keys::TRUST_BUNDLE)?;
        let td = bundle_trust_domain(
            &trust_bundle,
            &format!("{origin} key {}", keys::TRUST_BUNDLE),
        )?;
        Ok(Some(Self {
            secret: format!("{ns}/{name}"),
            cluster,
            network: data.get(keys::NETWORK).cloned().unwrap_or_default(),
            discovery_address,
            gateway_address,
            gateway_quic: data
                .get(keys::GATEWAY_PROTOCOLS)
                .is_some_and(|p| p.split(',').any(|x| x.trim() == "quic")),
            trust_bundle,
            trust_domain: td.to_string(),
        }))
    }
}

/// The link Secret for `link`, as YAML (what `meshctl remote-secret` prints).
pub fn render_secret(link: &Link, namespace: &str) -> String {
    let indent = |pem: &str| {
        pem.trim_end()
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "# Links the cluster this is applied in to cluster {cluster}. Apply it in every
# other cluster of the mesh (or drop it into their registry directory).
apiVersion: v1
kind: Secret
metadata:
  name: isthmus-remote-secret-{cluster}
  namespace: {namespace}
  labels:
    {LINK_LABEL}: \"true\"
  annotations:
    {CLUSTER_ANNOTATION}: {cluster}
type: Opaque
stringData:
  {}: {cluster}
  {}: \"{network}\"
  {}: \"{discovery}\"
  {}: \"{gateway}\"
  {}: \"{protocols}\"
  {}: {td}
  {}: |
{bundle}
",
        keys::CLUSTER,
        keys::NETWORK,
        keys::DISCOVERY,
        keys::GATEWAY,
        keys::GATEWAY_PROTOCOLS,
        keys::TRUST_DOMAIN,
        keys::TRUST_BUNDLE,
        cluster = link.cluster,
        network = link.network,
        discovery = link.discovery_address,
        gateway = link.gateway_address,
        protocols = if link.gateway_quic { "tcp,quic" } else { "tcp" },
        td = link.trust_domain,
        bundle = indent(&link.trust_bundle),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_checked() {
        assert!(check_cluster_name("west-2").is_ok());
        for bad in ["", "West", "-a", "a-", "a_b", &"x".repeat(64)] {
            assert!(check_cluster_name(bad).is_err(), "{bad}");
        }
        assert!(check_address("a", "10.0.0.1:15012", false).is_ok());
        assert!(check_address("a", "discovery.example:15012", false).is_ok());
        let err = check_address("a", "127.0.0.1:15012", false).unwrap_err();
        assert!(err.contains("--allow-loopback"), "{err}");
        assert!(check_address("a", "[::1]:15012", false).is_err());
        assert!(check_address("a", "localhost:1", false).is_err());
        assert!(check_address("a", "127.0.0.1:15012", true).is_ok());
        assert!(check_address("a", "10.0.0.1", false).is_err());
        assert!(check_address("a", "10.0.0.1:0", false).is_err());
    }
}
