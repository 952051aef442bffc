//! ServiceEntry compiled into services the data path routes to as it routes to
//! Kubernetes Services: one service per host, with the entry's ports, virtual IPs and
//! STATIC endpoints, so that VirtualServices and DestinationRules apply to its hosts
//! unchanged. `location: MESH_INTERNAL` endpoints run sidecars and are reached over
//! mesh mTLS; `MESH_EXTERNAL` ones (Istio's default) at their own address and port, in
//! the clear, as the application would reach them.
//!
//! A host is keyed as the other config kinds resolve it ([`resolve_host`]: `api.example`
//! written in a VirtualService means the same key as in the ServiceEntry), while the
//! host as written is its name, the name requests give and the authority they carry.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_api::networking::{ServiceEntryLocation, ServiceEntrySpec};

use crate::config::INBOUND_PORT;
use crate::model::{Endpoint, Location, Protocol, Service, ServicePort, resolve_host};

/// Why a ServiceEntry cannot be taken: the field path (under `spec.`) and the reason.
pub(super) type Refusals = Vec<String>;

/// The services `spec` (in `namespace`) defines, one per host, or every reason it
/// cannot be honoured.
pub(super) fn compile(spec: &ServiceEntrySpec, namespace: &str) -> Result<Vec<Service>, Refusals> {
    // Resolution, selectors, SANs and wildcards are refused by the API's validation
    // (`mesh_api`), which every reader shares; what is left here cannot fail there.
    let mut errors = Vec::new();
    let location = match spec.location {
        Some(ServiceEntryLocation::MeshInternal) => Location::Mesh,
        Some(ServiceEntryLocation::MeshExternal) | None => Location::External,
    };
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        match a.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => errors.push(format!("addresses[{i}]: {a:?} is not an IP address")),
        }
    }
    let mut endpoints = Vec::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        let Ok(ip) = e.address.parse::<IpAddr>() else {
            errors.push(format!(
                "endpoints[{i}].address: {:?} is not an IP address",
                e.address
            ));
            continue;
        };
        let ports: BTreeMap<String, u16> = e
            .ports
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), u16::try_from(*p).ok()?)))
            .collect();
        endpoints.push((ip, ports, e));
    }
    let mut services = Vec::new();
    for written in &spec.hosts {
        let written = written.trim_end_matches('.').to_ascii_lowercase();
        let host = resolve_host(&written, namespace);
        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .filter_map(|p| {
                let port = u16::try_from(p.number).ok()?;
                let name = if p.name.is_empty() {
                    format!("{}-{port}", p.protocol.to_ascii_lowercase())
                } else {
                    p.name.clone()
                };
                Some(ServicePort {
                    protocol: Protocol::from_port(&name, Some(&p.protocol)),
                    name,
                    port,
                    target_port: p
                        .target_port
                        .and_then(|t| u16::try_from(t).ok())
                        .unwrap_or(port),
                    sni: Arc::from(crate::sni::outbound_sni(port, "", &host)),
                    authority: format!("{written}:{port}").parse().ok(),
                })
            })
            .collect();
        let first_port = ports.first().map_or(0, |p| p.target_port);
        let endpoints = endpoints
            .iter()
            .map(|(ip, own_ports, e)| {
                // A mesh endpoint is its sidecar; an external one is the endpoint itself
                // (at its first port here; each request goes to the port it asks for).
                let inbound = match location {
                    Location::Mesh => SocketAddr::new(*ip, INBOUND_PORT),
                    Location::External => SocketAddr::new(
                        *ip,
                        ports
                            .first()
                            .and_then(|p| own_ports.get(&p.name).copied())
                            .unwrap_or(first_port),
                    ),
                };
                Arc::new(Endpoint {
                    inbound,
                    labels: e.labels.clone(),
                    service_account: e.service_account.clone(),
                    cluster: String::new(),
                    network: e.network.clone().unwrap_or_default(),
                    locality: e.locality.clone().unwrap_or_default(),
                    weight: e.weight.unwrap_or(1),
                    ready: true,
                    quic: false,
                    stale: false,
                    ports: own_ports.clone(),
                    source_labels: std::sync::OnceLock::new(),
                })
            })
            .collect();
        services.push(Service {
            host,
            name: written,
            namespace: namespace.to_owned(),
            addresses: addresses.clone(),
            ports,
            endpoints,
            location,
            source_labels: std::sync::OnceLock::new(),
        });
    }
    if errors.is_empty() {
        Ok(services)
    } else {
        Err(errors)
    }
}
