//! ServiceEntry compiled into services the data path routes to as it routes to
//! Kubernetes Services: one service per host, with the entry's ports, virtual IPs and
//! endpoints, so that VirtualServices and DestinationRules apply to its hosts
//! unchanged. STATIC endpoints are addresses; with DNS (and DNS_ROUND_ROBIN) an
//! endpoint may be a name, and with no endpoints listed the host itself is: names are
//! resolved in the background ([`crate::dns`]) and their addresses become endpoints. `location: MESH_INTERNAL` endpoints run sidecars and are reached over
//! mesh mTLS; `MESH_EXTERNAL` ones (Istio's default) at their own address and port, in
//! the clear, as the application would reach them.
//!
//! A host is keyed as the other config kinds resolve it ([`resolve_host`]: `api.example`
//! written in a VirtualService means the same key as in the ServiceEntry), while the
//! host as written is its name, the name requests give and the authority they carry.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_api::networking::{
    ServiceEntryLocation, ServiceEntryResolution, ServiceEntrySpec, WorkloadEntrySpec,
};

use crate::config::INBOUND_PORT;
use crate::model::{
    DnsEndpoints, Endpoint, Location, Protocol, Service, ServicePort, resolve_host,
};

/// Why a ServiceEntry cannot be taken: the field path (under `spec.`) and the reason.
pub(super) type Refusals = Vec<String>;

/// The services `spec` (in `namespace`) defines, one per host, or every reason it
/// cannot be honoured.
pub(super) fn compile(spec: &ServiceEntrySpec, namespace: &str) -> Result<Vec<Service>, Refusals> {
    // NONE without addresses, SANs and wildcards are refused by the API's validation
    // (`mesh_api`), which every reader shares; what is left here cannot fail there.
    let mut errors = Vec::new();
    // Discovery resolves a selector into the workloads it selects and sends the
    // service it defines in place of the entry; only a config file brings one here.
    if spec.workload_selector.is_some() {
        errors.push(
            "workloadSelector: selecting workloads needs discovery, which knows them; in a \
             config file list the workloads under endpoints"
                .to_owned(),
        );
    }
    let dns = matches!(
        spec.resolution,
        Some(ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin)
    );
    let passthrough = matches!(spec.resolution, None | Some(ServiceEntryResolution::None))
        && spec.workload_selector.is_none();
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
    let mut services = Vec::new();
    for written in &spec.hosts {
        let written = written.trim_end_matches('.').to_ascii_lowercase();
        let host = resolve_host(&written, namespace);
        let ports = service_ports(spec, &host, &written);
        // Where endpoints come from: each one listed (an address, or with DNS a name);
        // with DNS and none listed, the host itself.
        let listed: Vec<(&str, Option<&WorkloadEntrySpec>)> = if dns && spec.endpoints.is_empty() {
            vec![(written.as_str(), None)]
        } else if passthrough {
            // NONE: each address is its own endpoint, a connection to it goes to it.
            spec.addresses.iter().map(|a| (a.as_str(), None)).collect()
        } else {
            spec.endpoints
                .iter()
                .map(|e| (e.address.as_str(), Some(e)))
                .collect()
        };
        let (mut fixed, mut names) = (Vec::new(), Vec::new());
        for (i, (address, e)) in listed.into_iter().enumerate() {
            match address.parse::<IpAddr>() {
                Ok(ip) => fixed.push(Arc::new(endpoint(location, ip, &ports, e))),
                Err(_) if dns => names.push((
                    address.trim_end_matches('.').to_ascii_lowercase(),
                    Arc::new(endpoint(location, IpAddr::from([0, 0, 0, 0]), &ports, e)),
                )),
                Err(_) => errors.push(format!(
                    "endpoints[{i}].address: {address:?} is not an IP address"
                )),
            }
        }
        let dns = (!names.is_empty()).then(|| {
            Arc::new(DnsEndpoints {
                first_only: spec.resolution == Some(ServiceEntryResolution::DnsRoundRobin),
                fixed: fixed.clone(),
                names,
            })
        });
        services.push(Service {
            host,
            name: written,
            namespace: namespace.to_owned(),
            addresses: addresses.clone(),
            ports,
            endpoints: fixed,
            location,
            dns,
            headless: passthrough,
            subject_alt_names: if location == Location::Mesh {
                spec.subject_alt_names.clone()
            } else {
                vec![]
            },
            source_labels: std::sync::OnceLock::new(),
        });
    }
    if errors.is_empty() {
        Ok(services)
    } else {
        Err(errors)
    }
}

/// The entry's ports for one host (`written` as the entry lists it, `host` its key).
fn service_ports(spec: &ServiceEntrySpec, host: &str, written: &str) -> Vec<ServicePort> {
    spec.ports
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
                sni: Arc::from(crate::sni::outbound_sni(port, "", host)),
                authority: format!("{written}:{port}").parse().ok(),
            })
        })
        .collect()
}

/// One endpoint at `ip`: a mesh endpoint is its sidecar; an external one is the
/// endpoint itself (at its port for the entry's first port here; each request goes to
/// the port it asks for).
fn endpoint(
    location: Location,
    ip: IpAddr,
    ports: &[ServicePort],
    e: Option<&WorkloadEntrySpec>,
) -> Endpoint {
    let own_ports: BTreeMap<String, u16> = e
        .map(|e| {
            e.ports
                .iter()
                .filter_map(|(name, p)| Some((name.clone(), u16::try_from(*p).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut endpoint = Endpoint {
        inbound: SocketAddr::new(ip, INBOUND_PORT),
        labels: e.map(|e| e.labels.clone()).unwrap_or_default(),
        service_account: e.and_then(|e| e.service_account.clone()),
        cluster: String::new(),
        network: e.and_then(|e| e.network.clone()).unwrap_or_default(),
        locality: e.and_then(|e| e.locality.clone()).unwrap_or_default(),
        weight: e.and_then(|e| e.weight).unwrap_or(1),
        ready: true,
        quic: false,
        stale: false,
        ports: own_ports,
        source_labels: std::sync::OnceLock::new(),
    };
    if location == Location::External {
        let port = ports.first().map_or(0, |p| endpoint.port_for(p));
        endpoint.inbound.set_port(port);
    }
    endpoint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_selector_without_discovery_is_refused_not_ignored() {
        let se = mesh_api::parse_resource(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: shop}\nspec: {hosts: [db.shop.internal], location: MESH_INTERNAL, resolution: STATIC, ports: [{number: 5432, name: tcp, protocol: TCP}], workloadSelector: {labels: {app: db}}}\n",
        )
        .unwrap();
        let mesh_api::Resource::ServiceEntry(se) = se else {
            panic!("a ServiceEntry")
        };
        let refused = compile(&se.spec, "shop").unwrap_err();
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with("workloadSelector: selecting workloads needs discovery")),
            "{refused:?}"
        );
    }
}
