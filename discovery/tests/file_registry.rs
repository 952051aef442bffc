//! Discovery with the file registry, pushing to proxies over the real mTLS config
//! stream: updates arrive incrementally, a bad resource is refused alone with its last
//! good version in force, DestinationRules for one host merge, visibility follows
//! `exportTo` (the gateway view goes to the gateway's identity only), and proxies keep their last good config while discovery is away.

mod support;

use std::time::Duration;

use support::*;

const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const T: Duration = Duration::from_secs(10);

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 10.1.0.1, labels: {app: reviews, version: v1}, serviceAccount: reviews, locality: eu/a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: frontend-1, namespace: shop}
spec: {address: 10.1.0.9, labels: {app: frontend}, serviceAccount: frontend, locality: eu/b}
---
apiVersion: v1
kind: Service
metadata:
  name: internal
  namespace: other
  annotations: {networking.istio.io/exportTo: "."}
spec:
  selector: {app: internal}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: public, namespace: other}
spec:
  selector: {app: public}
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: other}
spec:
  hosts: [private.other.example]
  exportTo: ["."]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.9.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shared, namespace: other}
spec:
  hosts: [shared.other.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.9.0.2}]
"#;

fn vs(regex: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{regex: "{regex}"}}}}]
    {extra}route: [{{destination: {{host: reviews}}}}]
"#
    )
}

fn dr(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{host: reviews, subsets: [{{name: v1, labels: {{version: v1}}}}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_registry_pushes_incrementally_and_refuses_bad_resources_alone() {
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", SERVICES);
    write(dir.path(), "routes.yaml", &vs("^/v1/.*", ""));
    let discovery = start_files("east", dir.path(), &pki).await;
    let proxy = connect(discovery.grpc_addr, &pki, "frontend-1", "shop", "frontend");

    eventually("first push", T, || proxy.store.is_ready()).await;
    eventually("reviews endpoints", T, || {
        endpoints(&proxy.store, REVIEWS) == ["10.1.0.1"]
    })
    .await;
    // ServiceEntries may come in a later push than the Services.
    eventually("the visible ServiceEntry", T, || {
        proxy
            .store
            .snapshot()
            .services
            .contains_key("shared.other.example")
    })
    .await;
    let state = proxy.store.snapshot();
    // The node comes from the registry (the WorkloadEntry), not from the proxy.
    assert_eq!(state.node.locality, "eu/b");
    assert_eq!(state.node.cluster, "east");
    assert_eq!(state.node.network, "net-east");
    assert_eq!(state.node.labels["app"], "frontend");
    let reviews = &state.services[REVIEWS];
    assert_eq!(reviews.ports[0].target_port, 8080);
    assert_eq!(reviews.endpoints[0].labels["version"], "v1");
    assert_eq!(reviews.endpoints[0].locality, "eu/a");
    assert!(state.routes[REVIEWS][0].name.starts_with("shop/reviews"));
    // exportTo: "." keeps other/internal from the shop proxy; other/public is visible.
    assert!(
        !state
            .services
            .contains_key("internal.other.svc.cluster.local")
    );
    assert!(
        state
            .services
            .contains_key("public.other.svc.cluster.local")
    );
    // The same for ServiceEntries: exportTo "." keeps other/private from shop, while
    // other/shared (pushed with it) is visible.
    assert!(!state.services.contains_key("private.other.example"));

    // The gateway view (everything the cluster exports, exportTo bypassed) goes to the
    // gateway's identity only: a sidecar claiming `kind: gateway` gets its own view.
    let gateway = connect_as(
        discovery.grpc_addr,
        pki.identity("istio-system", "isthmus-eastwest-gateway"),
        "eastwest-gateway",
        "gateway",
    );
    let liar = connect_as(
        discovery.grpc_addr,
        pki.identity("shop", "frontend"),
        "frontend-2",
        "gateway",
    );
    const INTERNAL: &str = "internal.other.svc.cluster.local";
    eventually("both have their config", T, || {
        gateway.store.is_ready()
            && liar.store.is_ready()
            && liar.store.snapshot().services.contains_key(REVIEWS)
    })
    .await;
    assert!(gateway.store.snapshot().services.contains_key(INTERNAL));
    assert!(
        !liar.store.snapshot().services.contains_key(INTERNAL),
        "a sidecar claiming to be a gateway sees a service exported to its namespace only"
    );
    let kinds: Vec<(String, String)> = discovery
        .statuses
        .list()
        .into_iter()
        .map(|s| (s.proxy, s.kind))
        .collect();
    assert!(
        kinds.contains(&("frontend-2.shop".into(), "sidecar (claimed gateway)".into())),
        "{kinds:?}"
    );
    drop((gateway, liar));

    // A new endpoint arrives as a small incremental push.
    let before = discovery.metrics.pushed_resources.get();
    write(
        dir.path(),
        "v2.yaml",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reviews-v2, namespace: shop}\nspec: {address: 10.1.0.2, labels: {app: reviews, version: v2}}\n",
    );
    eventually("second endpoint", T, || {
        endpoints(&proxy.store, REVIEWS) == ["10.1.0.1", "10.1.0.2"]
    })
    .await;
    let sent = discovery.metrics.pushed_resources.get() - before;
    assert_eq!(sent, 1, "only the reviews service is re-sent");

    // A VirtualService discovery cannot read (unknown field) is refused by discovery;
    // its last good version stays in force and the error says which field.
    write(dir.path(), "routes.yaml", &vs("^/v1/.*", "rout: []\n    "));
    eventually("discovery reports the bad field", T, || {
        discovery.registry.errors().iter().any(|e| {
            e.object == "VirtualService/shop/reviews"
                && e.reason.contains("rout")
                && e.last_good_in_force
        })
    })
    .await;
    assert!(
        proxy.store.snapshot().routes[REVIEWS][0]
            .name
            .starts_with("shop/reviews")
    );

    // A second DestinationRule for the same host is merged into the first, as Istio
    // merges them: its new subset is added, the subset both define keeps the first
    // rule's labels, and an endpoint change pushed with it is applied too.
    write(dir.path(), "routes.yaml", &vs("^/v1/.*", ""));
    write(dir.path(), "dr.yaml", &dr("reviews"));
    eventually("first DestinationRule", T, || {
        proxy.store.snapshot().policies.contains_key(REVIEWS)
    })
    .await;
    write(
        dir.path(),
        "dr-more.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-more, namespace: shop}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: other}}, {name: v2, labels: {version: v2}}]}\n",
    );
    std::fs::remove_file(dir.path().join("v2.yaml")).unwrap();
    eventually("endpoint removal applied", T, || {
        endpoints(&proxy.store, REVIEWS) == ["10.1.0.1"]
    })
    .await;
    eventually("the rules are merged", T, || {
        proxy.store.snapshot().policies[REVIEWS].rule == "shop/reviews, shop/reviews-more"
    })
    .await;
    let state = proxy.store.snapshot();
    let subsets = &state.policies[REVIEWS].subsets;
    assert_eq!(subsets.keys().collect::<Vec<_>>(), ["v1", "v2"]);
    assert_eq!(subsets["v1"]["version"], "v1", "the first rule keeps v1");
    eventually("the proxy is in sync, nothing refused", T, || {
        discovery
            .statuses
            .list()
            .iter()
            .any(|s| s.proxy == "frontend-1.shop" && s.state() == "SYNCED")
    })
    .await;
    assert!(proxy.status.load().rejected.is_empty());

    // Removing the second rule leaves the first alone in force.
    std::fs::remove_file(dir.path().join("dr-more.yaml")).unwrap();
    eventually("one rule again", T, || {
        proxy.store.snapshot().policies[REVIEWS].rule == "shop/reviews"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_their_config_while_discovery_is_down_and_resync_without_a_full_resend() {
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", SERVICES);
    let first = start_files("east", dir.path(), &pki).await;
    let addr = first.grpc_addr;
    let proxy = connect(addr, &pki, "frontend-1", "shop", "frontend");
    eventually("first push", T, || {
        endpoints(&proxy.store, REVIEWS) == ["10.1.0.1"]
    })
    .await;

    drop(first);
    eventually("stream closed", T, || !proxy.status.load().connected).await;
    // Static stability: still ready, still the same config.
    assert!(proxy.store.is_ready());
    assert_eq!(endpoints(&proxy.store, REVIEWS), ["10.1.0.1"]);

    // While discovery is away an endpoint is added; a new discovery on the same
    // address brings it, sending only what the proxy does not hold.
    write(
        dir.path(),
        "v2.yaml",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reviews-v2, namespace: shop}\nspec: {address: 10.1.0.2, labels: {app: reviews, version: v2}}\n",
    );
    let mut options = options(
        "east",
        discovery::Source::Files(dir.path().to_owned()),
        &pki,
    );
    options.grpc = addr;
    let mut second = None;
    for _ in 0..50 {
        match discovery::start(options.clone()).await {
            Ok(d) => {
                second = Some(d);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let second = second.expect("discovery restarts on the same address");
    eventually("resync", T, || {
        endpoints(&proxy.store, REVIEWS) == ["10.1.0.1", "10.1.0.2"]
    })
    .await;
    eventually("registry synced before the resync is counted", T, || {
        second.metrics.pushed_resources.get() > 0
    })
    .await;
    // Services: reviews, other/public (other/internal is not visible) + node. Only
    // reviews changed, so at most that one resource is resent.
    assert!(
        second.metrics.pushed_resources.get() <= 2,
        "resent {} resources",
        second.metrics.pushed_resources.get()
    );
}

/// A Secret's certificate reaches, over the config stream, the ingress gateway whose
/// Gateway names it in `credentialName`, and nothing else: not a sidecar of the same
/// namespace, not a Secret no Gateway names. A Secret that loses its key is refused
/// with the reason and the last good material stays; a Secret deleted while its
/// Gateway still names it is refused by the gateway, which keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_secret_reaches_the_gateway_that_names_it_only() {
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let indent = |pem: &str| pem.trim().replace('\n', "\n    ");
    let secret = |name: &str, with_key: bool| {
        format!(
            "---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
    {}
{}",
            indent(&cert.pem()),
            if with_key {
                format!("  tls.key: |\n    {}\n", indent(&key.serialize_pem()))
            } else {
                String::new()
            }
        )
    };
    let gateway = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingressgateway-1, namespace: istio-system}
spec: {address: 10.1.0.50, labels: {istio: ingressgateway}, serviceAccount: isthmus-ingressgateway}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
";
    // The Gateway first: its server waits for the Secret, which comes later.
    write(dir.path(), "services.yaml", SERVICES);
    write(dir.path(), "gateway.yaml", gateway);
    let discovery = start_files("east", dir.path(), &pki).await;
    let ingress = connect_as(
        discovery.grpc_addr,
        pki.identity("istio-system", "isthmus-ingressgateway"),
        "ingressgateway-1",
        "ingress",
    );
    let neighbour = connect_as(
        discovery.grpc_addr,
        pki.identity("istio-system", "tools"),
        "tools-1",
        "sidecar",
    );
    eventually("the gateway's server waits for its Secret", T, || {
        ingress.store.snapshot().ingress.as_ref().is_some_and(|i| {
            i.waiting
                .iter()
                .any(|w| w.contains("no Secret istio-system/shop-cert with a certificate yet"))
        })
    })
    .await;
    let both = format!(
        "{}{}",
        secret("shop-cert", true),
        secret("unused-cert", true)
    );
    write(dir.path(), "secrets.yaml", &both);
    let serves_tls = |p: &Proxy| {
        p.store.snapshot().ingress.as_ref().is_some_and(|i| {
            i.listeners
                .get(&443)
                .is_some_and(|l| l.servers.iter().any(|s| s.tls.is_some()))
        })
    };
    eventually(
        "the gateway serves 443 with the Secret's certificate",
        T,
        || serves_tls(&ingress),
    )
    .await;
    assert_eq!(
        ingress.store.snapshot().credentials,
        ["istio-system/shop-cert"],
        "only the Secret a Gateway names"
    );
    // A DestinationRule's credentialName: the Secret of its namespace reaches the
    // sidecars there, and not the gateway of istio-system.
    write(
        dir.path(),
        "partner.yaml",
        &format!(
            "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: partner, namespace: shop}}
spec:
  host: partner.example.com
  trafficPolicy: {{tls: {{mode: MUTUAL, credentialName: partner-cert}}}}
",
            secret("partner-cert", true).replace("namespace: istio-system", "namespace: shop")
        ),
    );
    let frontend = connect(discovery.grpc_addr, &pki, "frontend-1", "shop", "frontend");
    eventually(
        "the shop sidecar holds the DestinationRule's Secret",
        T,
        || frontend.store.snapshot().credentials == ["shop/partner-cert"],
    )
    .await;
    assert_eq!(
        ingress.store.snapshot().credentials,
        ["istio-system/shop-cert"]
    );
    eventually("the neighbour has its config", T, || {
        neighbour.store.is_ready()
    })
    .await;
    assert!(
        neighbour.store.snapshot().credentials.is_empty(),
        "a sidecar of the same namespace gets no certificate"
    );

    // The Secret loses its key: discovery refuses it, the gateway keeps the material.
    write(
        dir.path(),
        "secrets.yaml",
        &format!(
            "{}{}",
            secret("shop-cert", false),
            secret("unused-cert", true)
        ),
    );
    eventually("discovery refuses the Secret", T, || {
        discovery.registry.errors().iter().any(|e| {
            e.object == "Secret/istio-system/shop-cert"
                && e.reason.contains("has a certificate but no private key")
        })
    })
    .await;
    assert!(serves_tls(&ingress));
    assert_eq!(
        ingress.store.snapshot().credentials,
        ["istio-system/shop-cert"]
    );

    // Deleted while the Gateway still names it: the gateway refuses the removal and
    // keeps serving with the last good certificate.
    write(dir.path(), "secrets.yaml", &secret("unused-cert", true));
    eventually("the gateway refuses the removal", T, || {
        ingress.status.load().rejected.iter().any(|e| {
            e.starts_with(
                "Credential/istio-system/shop-cert: cannot be removed: Gateway shop/shop names it",
            )
        })
    })
    .await;
    assert!(serves_tls(&ingress));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_resource_scopes_what_discovery_sends_each_proxy() {
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    let service = |ns: &str, name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 80}}]}}\n"
        )
    };
    write(
        dir.path(),
        "services.yaml",
        &[
            service("shop", "a"),
            service("shop", "b"),
            service("other", "c"),
            service("other", "d"),
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: frontend-1, namespace: shop}\nspec: {address: 10.1.0.9, labels: {app: frontend}, serviceAccount: frontend}\n".to_owned(),
        ]
        .join("---\n"),
    );
    let discovery = start_files("east", dir.path(), &pki).await;
    let proxy = connect(discovery.grpc_addr, &pki, "frontend-1", "shop", "frontend");
    let services = |p: &Proxy| {
        let mut v: Vec<String> = p.store.snapshot().services.keys().cloned().collect();
        v.sort();
        v
    };
    let held = |p: &Proxy| p.status.load().held;
    // No Sidecar: the four services and the node.
    eventually("every service", T, || {
        services(&proxy).len() == 4 && held(&proxy) == 5
    })
    .await;

    // The namespace's Sidecar admits its own namespace: the two other services are
    // removed from the proxy, not only hidden by it (the Sidecar, the node and two
    // services are held).
    write(
        dir.path(),
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec: {egress: [{hosts: [\"./*\"]}]}\n",
    );
    eventually("scoped to shop", T, || {
        services(&proxy) == ["a.shop.svc.cluster.local", "b.shop.svc.cluster.local"]
            && held(&proxy) == 4
    })
    .await;
    // A Sidecar selecting the workload wins over the namespace's: what it admits is
    // sent, what it does not is removed.
    write(
        dir.path(),
        "sidecar-frontend.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: frontend, namespace: shop}\nspec: {workloadSelector: {labels: {app: frontend}}, egress: [{hosts: [\"other/c.other.svc.cluster.local\"]}]}\n",
    );
    eventually("the workload's Sidecar", T, || {
        services(&proxy) == ["c.other.svc.cluster.local"] && held(&proxy) == 4
    })
    .await;
    // A service created later is sent only when admitted.
    write(
        dir.path(),
        "more.yaml",
        &[service("other", "e"), service("shop", "f")].join("---\n"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(held(&proxy), 4, "{:?}", services(&proxy));
    // Without Sidecars, everything again.
    std::fs::remove_file(dir.path().join("sidecar.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("sidecar-frontend.yaml")).unwrap();
    eventually("unscoped", T, || {
        services(&proxy).len() == 6 && held(&proxy) == 7
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_service_resolves_to_its_endpoints_in_the_proxy() {
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "db.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {clusterIP: None, selector: {app: db}, ports: [{name: tcp, port: 5432}]}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db-0, namespace: shop}\nspec: {address: 10.1.7.1, labels: {app: db}, serviceAccount: db}\n",
    );
    let discovery = start_files("east", dir.path(), &pki).await;
    let proxy = connect(discovery.grpc_addr, &pki, "frontend-1", "shop", "frontend");
    eventually("the headless service", T, || {
        let state = proxy.store.snapshot();
        state.dns_addresses("db.shop.svc.cluster.local") == Some(&["10.1.7.1".parse().unwrap()][..])
            && state
                .service_for_ip("10.1.7.1".parse().unwrap())
                .is_some_and(|s| s.headless && s.endpoints.len() == 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_answers_as_the_destination_workload_would() {
    let pki = Pki::new("east");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "policy.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: shop}\nspec: {selector: {matchLabels: {app: reviews}}, action: DENY, rules: [{to: [{operation: {paths: [/admin/*]}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let discovery = start_files("east", dir.path(), &pki).await;
    let monitor = discovery.monitor_addr.unwrap();
    let ask = |query: &str| {
        let path = format!("/debug/authorize?{query}");
        async move {
            let (status, body) = mesh_net::http::get(monitor, &path).await.unwrap();
            assert!(status.is_success(), "{status}: {body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    eventually("the policies are read", T, || {
        discovery.registry.all().updated.len() >= 2
    })
    .await;
    // The path is normalized first, as the sidecar does: `/x/../admin/` is `/admin/`.
    let denied = ask("namespace=shop&labels=app=reviews,version=v1&principal=spiffe://td/ns/shop/sa/web&port=9080&path=/x/../admin/users").await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert!(
        denied["reason"].as_str().unwrap().contains("shop/no-admin"),
        "{denied}"
    );
    assert_eq!(denied["mtls"], "STRICT");
    let allowed = ask("namespace=shop&labels=app=reviews&port=9080&path=/reviews/1").await;
    assert_eq!(allowed["allowed"], true, "{allowed}");
    // A workload the policy does not select is not denied.
    let other = ask("namespace=shop&labels=app=ratings&port=9080&path=/admin/users").await;
    assert_eq!(other["allowed"], true, "{other}");
    // No PeerAuthentication anywhere for a namespace: Istio's PERMISSIVE.
    let elsewhere = ask("namespace=other&labels=app=x&port=80").await;
    assert_eq!(elsewhere["mtls"], "PERMISSIVE", "{elsewhere}");

    // Tokens: checked before the policies, as the sidecar does. In `signed`, inline
    // keys and a policy that wants a request principal; in `remote`, keys by jwksUri.
    write(
        dir.path(),
        "jwt.yaml",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: inline, namespace: signed}\nspec: {jwtRules: [{issuer: https://issuer.example, jwks: '{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"alg\": \"ES256\", \"x\": \"CV-ReB6hX0MPpejCzDg2p60vfdsMD89N6IdnpyTkCLE\", \"y\": \"7fHqgBq1FPDGhV7KibukZRoStKN9OT3RLgS_uVJSxIo\"}]}'}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: signed-in, namespace: signed}\nspec: {rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: remote, namespace: remote}\nspec: {jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/keys}]}\n",
    );
    eventually("the token rules are read", T, || {
        discovery.registry.all().updated.len() >= 5
    })
    .await;
    // No token: the policy's 403.
    let anonymous = ask("namespace=signed&labels=app=a&port=80&path=/").await;
    assert_eq!(anonymous["allowed"], false, "{anonymous}");
    assert!(
        anonymous["reason"]
            .as_str()
            .unwrap()
            .contains("rbac_access_denied"),
        "{anonymous}"
    );
    // A token that is not a JWT: 401 before any policy.
    let garbled =
        ask("namespace=signed&labels=app=a&port=80&path=/&header=authorization:Bearer%20abc").await;
    assert_eq!(garbled["allowed"], false, "{garbled}");
    assert_eq!(
        garbled["reason"], "the token: Jwt is not in the form of Header.Payload.Signature (401)",
        "{garbled}"
    );
    assert_eq!(garbled["jwtRules"], true);
    // Keys only the sidecar fetches: the answer says it cannot decide.
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIn0.c2ln";
    let remote = ask(&format!(
        "namespace=remote&labels=app=a&port=80&path=/&header=authorization:Bearer%20{token}"
    ))
    .await;
    assert!(remote["allowed"].is_null(), "{remote}");
    assert!(
        remote["undecided"]
            .as_str()
            .unwrap()
            .contains("https://issuer.example/keys"),
        "{remote}"
    );
}
