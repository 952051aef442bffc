//! The sidecar's DNS proxy, asked by a real resolver (hickory) over UDP and TCP: mesh
//! names are answered from the config (a Service's virtual IP; an address allocated
//! for a ServiceEntry host without one and for a service that exists only in another
//! cluster, which captured connections are then routed by), every other name is
//! forwarded to the pod's resolver and its answer passed back.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use mesh_proxy::dns_proxy::DnsListen;

/// A resolver that asks only `server`, over UDP or TCP.
fn resolver(server: SocketAddr, tcp: bool) -> hickory_resolver::Resolver<TokioRuntimeProvider> {
    let mut connection = if tcp {
        ConnectionConfig::tcp()
    } else {
        ConnectionConfig::udp()
    };
    connection.port = server.port();
    let config = ResolverConfig::from_parts(
        None,
        vec![],
        vec![NameServerConfig::new(server.ip(), true, vec![connection])],
    );
    let mut builder =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    // Every lookup asks the proxy: nothing is answered from a cache of the client.
    builder.options_mut().cache_size = 0;
    builder.build().unwrap()
}

async fn ipv4(
    resolver: &hickory_resolver::Resolver<TokioRuntimeProvider>,
    name: &str,
) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = resolver
        .lookup_ip(name)
        .await
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test]
async fn mesh_names_are_answered_and_the_rest_forwarded() {
    let mesh = support::Mesh::new();
    // The pod's own resolver, which knows one outside name.
    let outside = Ipv4Addr::new(203, 0, 113, 7);
    let upstream =
        support::dns_server(std::sync::Arc::new(std::sync::Mutex::new(Some(outside)))).await;
    let config = "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {name: productpage-1, namespace: shop, serviceAccount: productpage, cluster: east}
services:
- {name: reviews, namespace: shop, addresses: [10.96.0.10], ports: [{name: http, port: 9080}], endpoints: [{address: 10.1.0.5}]}
- name: ratings
  namespace: shop
  ports: [{name: http, port: 9080}]
  endpoints: [{address: 10.2.0.9, cluster: west}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.internal.example]
  ports: [{number: 5000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.20.0.7}]
";
    let store = std::sync::Arc::new(mesh_proxy::StateStore::default());
    store.apply_yaml(config, "test").unwrap();
    let mut options = support::opts();
    options.dns = Some(DnsListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        upstreams: vec![upstream],
    });
    let sidecar =
        mesh_proxy::Sidecar::start(store.clone(), mesh.identity("shop", "productpage"), options)
            .await
            .unwrap();
    let dns = sidecar.dns_addr.expect("the DNS proxy listens");

    for tcp in [false, true] {
        let r = resolver(dns, tcp);
        // A Service: its virtual IP.
        assert_eq!(
            ipv4(&r, "reviews.shop.svc.cluster.local.").await,
            [IpAddr::from([10, 96, 0, 10])],
            "tcp={tcp}"
        );
        // A service only in another cluster, and a ServiceEntry host without
        // addresses: an address allocated in 240.240.0.0/16, the same every time, and
        // captured connections to it are routed to that service.
        for (name, host) in [
            (
                "ratings.shop.svc.cluster.local.",
                "ratings.shop.svc.cluster.local",
            ),
            ("legacy.internal.example.", "legacy.internal.example"),
        ] {
            let got = ipv4(&r, name).await;
            assert_eq!(got.len(), 1, "{name}: {got:?}");
            let IpAddr::V4(v4) = got[0] else {
                panic!("{name}: {got:?}")
            };
            assert_eq!(v4.octets()[..2], [240, 240], "{name}: {got:?}");
            assert_eq!(ipv4(&r, name).await, got, "stable");
            let state = store.snapshot();
            let routed = state.service_for_ip(got[0]).map(|s| s.host.as_str());
            assert_eq!(routed, Some(host), "{name}");
        }
        // A name outside the mesh: the pod's resolver's answer.
        assert_eq!(
            ipv4(&r, "www.outside.example.").await,
            [IpAddr::from(outside)],
            "tcp={tcp}"
        );
    }

    // A name the mesh knows has no IPv6 address: an empty answer from the proxy, not
    // a question to the pod's resolver (which would answer nothing better).
    let query = {
        use hickory_resolver::proto::op::{Message, Query};
        use hickory_resolver::proto::rr::{Name, RecordType};
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("reviews.shop.svc.cluster.local.").unwrap(),
            RecordType::AAAA,
        ));
        m
    };
    let answer = mesh_proxy::dns_proxy::answer(&store.snapshot(), &query).expect("a mesh name");
    assert!(answer.answers.is_empty());
    assert!(answer.metadata.authoritative);
}
