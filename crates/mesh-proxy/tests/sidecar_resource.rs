//! The `Sidecar` resource through real sidecars: its egress hosts decide which
//! services a workload can reach (the others are unknown to its proxy: 404), a
//! workload's own Sidecar wins over its namespace's and the root namespace's, its
//! `outboundTrafficPolicy` replaces the mesh's, and a wrong one is refused with the
//! last good config kept.

mod support;

use std::net::SocketAddr;

use mesh_proxy::config::OutboundTrafficPolicy;
use support::Mesh;

fn server(name: &str, ns: &str, app: u16) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: {name}-1, namespace: {ns}, serviceAccount: {name}, labels: {{app: {name}}}}}
services:
- {{name: {name}, namespace: {ns}, ports: [{{name: http, port: 9080, targetPort: {app}}}]}}
"
    )
}

/// The client in `shop` (labels app: web) with reviews (shop) and ratings (ops) as
/// services, and `istio` documents.
fn client(reviews: SocketAddr, ratings: SocketAddr, istio: &str) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: web-1, namespace: shop, serviceAccount: web, labels: {{app: web}}}}
services:
- name: reviews
  namespace: shop
  ports: [{{name: http, port: 9080}}]
  endpoints: [{{address: 127.0.0.1, inboundPort: {}, serviceAccount: reviews}}]
- name: ratings
  namespace: ops
  ports: [{{name: http, port: 9080}}]
  endpoints: [{{address: 127.0.0.1, inboundPort: {}, serviceAccount: ratings}}]
{istio}",
        reviews.port(),
        ratings.port()
    )
}

fn sidecar(name: &str, ns: &str, selector: &str, hosts: &str, policy: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {ns}}}
spec:
  {selector}
  egress: [{{hosts: {hosts}}}]
  {policy}
"
    )
}

#[tokio::test]
async fn a_sidecar_resource_scopes_what_a_workload_reaches() {
    let mesh = Mesh::new();
    let reviews_app = support::backend("reviews", std::time::Duration::ZERO).await;
    let ratings_app = support::backend("ratings", std::time::Duration::ZERO).await;
    let reviews = support::sidecar(
        &mesh,
        &server("reviews", "shop", reviews_app.port()),
        "shop",
        "reviews",
    )
    .await;
    let ratings = support::sidecar(
        &mesh,
        &server("ratings", "ops", ratings_app.port()),
        "ops",
        "ratings",
    )
    .await;
    let (r, t) = (reviews.inbound_addr, ratings.inbound_addr);

    // The root namespace's Sidecar is the mesh default: its own namespace only.
    let mesh_default = sidecar("default", "istio-system", "", "['./*']", "");
    let web = support::sidecar(&mesh, &client(r, t, &mesh_default), "shop", "web").await;
    let get = |host: &'static str| support::get(web.outbound_addr, host, "/", &[]);
    // `.` is the Sidecar's namespace (istio-system): neither service is in scope.
    assert_eq!(get("reviews.shop:9080").await.0, 404);

    // The namespace's Sidecar wins over the root's: shop's own services, and
    // REGISTRY_ONLY for the rest.
    let shop_default = sidecar(
        "default",
        "shop",
        "",
        "['./*', 'istio-system/*']",
        "outboundTrafficPolicy: {mode: REGISTRY_ONLY}",
    );
    web.store
        .apply_yaml(
            &client(r, t, &format!("{mesh_default}{shop_default}")),
            "test",
        )
        .unwrap();
    let (status, body) = get("reviews.shop:9080").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get("ratings.ops:9080").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no service named"), "{body}");
    let state = web.store.snapshot();
    assert_eq!(
        state.node.outbound_traffic_policy,
        OutboundTrafficPolicy::RegistryOnly,
        "the Sidecar's outboundTrafficPolicy replaces the mesh's"
    );
    assert_eq!(state.scope.as_ref().unwrap().sidecar, "shop/default");
    // The DNS proxy's names follow the scope too.
    assert!(
        state
            .dns_addresses("reviews.shop.svc.cluster.local")
            .is_some()
    );
    assert!(
        state
            .dns_addresses("ratings.ops.svc.cluster.local")
            .is_none()
    );

    // A workloadSelector Sidecar for app: web wins over the namespace's: ops only,
    // by name pattern.
    let for_web = sidecar(
        "web",
        "shop",
        "workloadSelector: {labels: {app: web}}",
        "['ops/ratings.ops.svc.cluster.local']",
        "",
    );
    web.store
        .apply_yaml(
            &client(r, t, &format!("{mesh_default}{shop_default}{for_web}")),
            "test",
        )
        .unwrap();
    assert_eq!(get("ratings.ops:9080").await.0, 200);
    assert_eq!(get("reviews.shop:9080").await.0, 404);

    // A host without its namespace is refused; the last good Sidecar stays.
    let bad = for_web.replace(
        "'ops/ratings.ops.svc.cluster.local'",
        "'ratings.ops.svc.cluster.local'",
    );
    let err = web
        .store
        .apply_yaml(
            &client(r, t, &format!("{mesh_default}{shop_default}{bad}")),
            "test",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.egress[0].hosts[0]") && err.contains("namespace/dnsName"),
        "{err}"
    );
    assert_eq!(get("ratings.ops:9080").await.0, 200);
}

#[tokio::test]
async fn sidecar_ingress_listeners_forward_to_the_default_endpoint() {
    let mesh = Mesh::new();
    let app = support::backend("reviews", std::time::Duration::ZERO).await;
    // The workload port the Service targets: free, nothing listens there.
    let workload_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ingress = format!(
        "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews, namespace: shop}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  ingress:
  - port: {{number: {workload_port}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{}
",
        app.port()
    );
    let reviews = support::sidecar(
        &mesh,
        &server("reviews", "shop", workload_port),
        "shop",
        "reviews",
    )
    .await;
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let web = support::sidecar(
        &mesh,
        &client(reviews.inbound_addr, unused, ""),
        "shop",
        "web",
    )
    .await;
    let get = || support::get(web.outbound_addr, "reviews.shop:9080", "/", &[]);
    // Without the listener the workload port has no application behind it.
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    // The ingress listener takes the workload port and forwards to the application's
    // defaultEndpoint.
    reviews
        .store
        .apply_yaml(
            &format!("{}{ingress}", server("reviews", "shop", workload_port)),
            "test",
        )
        .unwrap();
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("reviews"), "{body}");
    // A defaultEndpoint that is not the workload itself is refused, naming the
    // field, and the listener in force stays.
    let refused = reviews
        .store
        .apply_yaml(
            &format!(
                "{}{}",
                server("reviews", "shop", workload_port),
                ingress.replace("127.0.0.1:", "10.1.2.3:")
            ),
            "test",
        )
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("spec.ingress[0].defaultEndpoint")
            && refused.contains("the endpoint is the workload itself"),
        "{refused}"
    );
    assert_eq!(get().await.0, 200);
}
