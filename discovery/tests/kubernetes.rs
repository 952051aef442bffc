//! Discovery against a real kube-apiserver: Services, EndpointSlices, Pods and Nodes
//! created, changed and deleted reach a connected proxy; a malformed VirtualService is
//! refused alone; the CA authenticates workloads by TokenReview and refuses a CSR for
//! another identity.

mod support;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use mesh_identity::SpiffeId;
use support::*;
use testbed::apply::{Mode, apply_yaml};

const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const RATINGS: &str = "ratings.shop.svc.cluster.local";
const T: Duration = Duration::from_secs(15);

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: frontend, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reviews, namespace: shop}
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {topology.kubernetes.io/region: eu-west, topology.kubernetes.io/zone: zone-a}
---
apiVersion: v1
kind: Node
metadata:
  name: node-b
  labels: {topology.kubernetes.io/region: eu-west, topology.kubernetes.io/zone: zone-b}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend-1, namespace: shop, labels: {app: frontend}}
spec:
  nodeName: node-b
  serviceAccountName: frontend
  containers: [{name: app, image: frontend}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
spec:
  nodeName: node-a
  serviceAccountName: reviews
  containers: [{name: app, image: reviews}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: http-app}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
"#;

fn slice(addresses: &[&str]) -> String {
    let endpoints: Vec<String> = addresses
        .iter()
        .map(|a| {
            format!(
                "- addresses: [{a}]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: reviews-v1, namespace: shop}}"
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-abc
  namespace: shop
  labels: {{kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{}
",
        endpoints.join("\n")
    )
}

fn vs(name: &str, host: &str, regex: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{host}]
  http:
  - match: [{{uri: {{regex: \"{regex}\"}}}}]
    route: [{{destination: {{host: {host}}}}}]
"
    )
}

async fn token(client: &kube::Client, sa: &str, audience: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "shop");
    let issued: TokenRequest = sas
        .create_subresource(
            "token",
            sa,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![audience.into()],
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    issued.status.unwrap().token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_registry_reaches_proxies_and_the_ca_checks_tokens() {
    let bins = testbed::KubeBins::locate().unwrap();
    let cps = testbed::start_control_planes(&bins, &["east"])
        .await
        .unwrap();
    let client = cps[0].client().await.unwrap();
    testbed::apply::apply_crds(&client).await.unwrap();
    apply_yaml(&client, BASE, "shop", Mode::Apply)
        .await
        .unwrap();
    apply_yaml(&client, &slice(&["10.1.0.1"]), "shop", Mode::Apply)
        .await
        .unwrap();
    apply_yaml(
        &client,
        &vs("reviews", "reviews", "^/v1/.*"),
        "shop",
        Mode::Apply,
    )
    .await
    .unwrap();
    apply_yaml(
        &client,
        &vs("ratings", "ratings", "^/r/.*"),
        "shop",
        Mode::Apply,
    )
    .await
    .unwrap();

    let pki = Pki::new("east");
    let mut options = options("east", discovery::Source::Kubernetes(client.clone()), &pki);
    options.ca_auth = discovery::CaAuth::TokenReview;
    let discovery = discovery::start(options).await.unwrap();
    eventually("registry synced", T, || discovery.registry.is_synced()).await;

    let proxy = connect(discovery.grpc_addr, &pki, "frontend-1", "shop", "frontend");
    eventually("reviews endpoint", T, || {
        endpoints(&proxy.store, REVIEWS) == ["10.1.0.1"]
    })
    .await;
    // A kubernetes.io/tls Secret a DestinationRule names (credentialName) reaches the
    // sidecars of its namespace over the stream.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["partner.example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let indent = |pem: &str| pem.trim().replace('\n', "\n    ");
    let secret = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: partner-cert, namespace: shop}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
    {}
  tls.key: |
    {}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: partner, namespace: shop}}
spec:
  host: partner.example.com
  trafficPolicy: {{tls: {{mode: MUTUAL, credentialName: partner-cert}}}}
",
        indent(&cert.pem()),
        indent(&key.serialize_pem())
    );
    apply_yaml(&client, &secret, "shop", Mode::Apply)
        .await
        .unwrap();
    eventually(
        "the DestinationRule's Secret reaches the sidecar",
        T,
        || proxy.store.snapshot().credentials == ["shop/partner-cert"],
    )
    .await;

    let state = proxy.store.snapshot();
    // Node from the Pod and its Node's topology labels.
    assert_eq!(state.node.locality, "eu-west/zone-b");
    assert_eq!(state.node.labels["app"], "frontend");
    let reviews = &state.services[REVIEWS];
    // The ClusterIP from this cluster's service CIDR, the named target port resolved
    // through the EndpointSlice, the endpoint's labels and locality from its Pod.
    assert!(
        reviews.addresses[0].to_string().starts_with("10.96."),
        "{:?}",
        reviews.addresses
    );
    assert_eq!(reviews.ports[0].target_port, 8080);
    let ep = &reviews.endpoints[0];
    assert_eq!(ep.labels["version"], "v1");
    assert_eq!(ep.locality, "eu-west/zone-a");
    assert_eq!(ep.service_account.as_deref(), Some("reviews"));
    assert_eq!(ep.cluster, "east");

    // EndpointSlice change, then deletion; Service deletion.
    apply_yaml(
        &client,
        &slice(&["10.1.0.1", "10.1.0.2"]),
        "shop",
        Mode::Apply,
    )
    .await
    .unwrap();
    eventually("second endpoint", T, || {
        endpoints(&proxy.store, REVIEWS) == ["10.1.0.1", "10.1.0.2"]
    })
    .await;
    // A Pod label change reaches the endpoints it backs.
    apply_yaml(
        &client,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1, canary: 'yes'}}\nspec: {nodeName: node-a, serviceAccountName: reviews, containers: [{name: app, image: reviews}]}\n",
        "shop",
        Mode::Apply,
    )
    .await
    .unwrap();
    eventually("pod label on endpoints", T, || {
        proxy.store.snapshot().services[REVIEWS]
            .endpoints
            .iter()
            .all(|e| e.labels.get("canary").map(String::as_str) == Some("yes"))
    })
    .await;

    // A malformed VirtualService update (the API server accepts it; the schema does not
    // check regexes) is refused by discovery alone: its last good version stays, and the
    // other VirtualService keeps working.
    apply_yaml(
        &client,
        &vs("reviews", "reviews", "^/v1/(unclosed"),
        "shop",
        Mode::Apply,
    )
    .await
    .unwrap();
    eventually("refusal reported", T, || {
        discovery.registry.errors().iter().any(|e| {
            e.object == "VirtualService/shop/reviews"
                && e.reason.contains("spec.http[0].match[0].uri.regex")
                && e.last_good_in_force
        })
    })
    .await;
    let state = proxy.store.snapshot();
    assert!(state.routes[REVIEWS][0].name.starts_with("shop/reviews"));
    assert!(state.routes[RATINGS][0].name.starts_with("shop/ratings"));

    // A newer VirtualService for the same host whose name sorts first does not take
    // the host over: the API server's creationTimestamp decides, as in Istio.
    // (Timestamps have one-second resolution.)
    apply_yaml(
        &client,
        &vs("reviews", "reviews", "^/v1/.*"),
        "shop",
        Mode::Apply,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // It also routes a host nobody else names, to see when the proxy holds it.
    let newer = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a-newer, namespace: shop}\nspec: {hosts: [reviews, newer-only], http: [{route: [{destination: {host: ratings}}]}]}\n";
    apply_yaml(&client, newer, "shop", Mode::Apply)
        .await
        .unwrap();
    eventually("the newer VirtualService reaches the proxy", T, || {
        proxy
            .store
            .snapshot()
            .routes
            .contains_key("newer-only.shop.svc.cluster.local")
    })
    .await;
    assert!(
        proxy.store.snapshot().routes[REVIEWS][0]
            .name
            .starts_with("shop/reviews"),
        "{:?}",
        proxy.store.snapshot().routes[REVIEWS][0].name
    );
    apply_yaml(&client, &vs("a-newer", "reviews", ""), "shop", Mode::Delete)
        .await
        .unwrap();
    // Other changes still flow.
    apply_yaml(&client, &slice(&["10.1.0.3"]), "shop", Mode::Apply)
        .await
        .unwrap();
    eventually("endpoint change after the refusal", T, || {
        endpoints(&proxy.store, REVIEWS) == ["10.1.0.3"]
    })
    .await;
    apply_yaml(&client, &slice(&[]), "shop", Mode::Delete)
        .await
        .unwrap();
    eventually("slice deleted", T, || {
        endpoints(&proxy.store, REVIEWS).is_empty()
    })
    .await;
    apply_yaml(
        &client,
        "apiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: shop}\n",
        "shop",
        Mode::Delete,
    )
    .await
    .unwrap();
    eventually("service deleted", T, || {
        !proxy.store.snapshot().services.contains_key(RATINGS)
    })
    .await;

    // The CA: a token for shop/reviews with the CA's audience gets a certificate for
    // exactly that identity.
    let ca_client = |token: String, dir: &tempfile::TempDir| {
        let file = dir.path().join("token");
        std::fs::write(&file, token).unwrap();
        mesh_proxy::ca_client::CaClient {
            address: discovery.grpc_addr,
            bootstrap_trust: pki.trust(),
            discovery_id: discovery.spiffe_id(),
            token_file: file,
            ttl: Duration::from_secs(3600),
        }
    };
    let reviews_id = SpiffeId::new(TD.parse().unwrap(), "shop", "reviews").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let good = ca_client(
        token(&client, "reviews", discovery::ca::TOKEN_AUDIENCE).await,
        &tmp,
    );
    let issued = good.request(&reviews_id).await.unwrap();
    assert_eq!(issued.cert.id(), &reviews_id);
    assert!(
        issued
            .trust
            .bundle
            .trust_domains()
            .any(|td| td.as_str() == TD)
    );
    // ... and nothing else: a CSR for another identity is refused.
    let admin_id = SpiffeId::new(TD.parse().unwrap(), "shop", "admin").unwrap();
    let err = good.request(&admin_id).await.unwrap_err();
    assert!(
        err.contains("authenticated as spiffe://mesh.example/ns/shop/sa/reviews"),
        "{err}"
    );
    // A token minted for another audience is refused.
    let tmp2 = tempfile::tempdir().unwrap();
    let wrong = ca_client(token(&client, "reviews", "some-other-service").await, &tmp2);
    let err = wrong.request(&reviews_id).await.unwrap_err();
    assert!(
        err.contains("not authenticated") || err.contains("audience"),
        "{err}"
    );
    assert_eq!(discovery.metrics.csr_signed.get(), 1);
    assert_eq!(discovery.metrics.csr_refused.get(), 2);
}

const INJECT_BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: mesh}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: plain}
"#;

/// The webhook server on loopback, keeping the caBundle of the named configurations.
fn webhooks(mutating: Option<&str>, validating: Option<&str>) -> discovery::inject::InjectOptions {
    discovery::inject::InjectOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        config: discovery::inject::InjectConfig {
            image: "isthmus/proxy:test".into(),
            discovery_address: "isthmus-discovery.istio-system.svc:15012".into(),
            trust_domain: String::new(),
            cluster: String::new(),
        },
        webhook_config: mutating.map(str::to_owned),
        validating_config: validating.map(str::to_owned),
        dns_names: vec!["isthmus-discovery.istio-system.svc".into()],
    }
}

fn webhook_config(addr: std::net::SocketAddr) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: isthmus-sidecar-injector}}
webhooks:
- name: sidecar-injector.isthmus.dev
  clientConfig: {{url: "https://{addr}/inject"}}
  rules: [{{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}]
  namespaceSelector: {{matchLabels: {{istio-injection: enabled}}}}
  objectSelector:
    matchExpressions: [{{key: sidecar.istio.io/inject, operator: NotIn, values: ["false"]}}]
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Fail
  timeoutSeconds: 10
"#
    )
}

fn pod(ns: &str, name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{{annotations}}}}}\nspec: {{containers: [{{name: app, image: app}}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_injects_pods_in_labelled_namespaces_only() {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    let bins = testbed::KubeBins::locate().unwrap();
    let cps = testbed::start_control_planes(&bins, &["east"])
        .await
        .unwrap();
    let client = cps[0].client().await.unwrap();
    apply_yaml(&client, INJECT_BASE, "default", Mode::Apply)
        .await
        .unwrap();

    let pki = Pki::new("east");
    let mut options = options("east", discovery::Source::Kubernetes(client.clone()), &pki);
    options.inject = Some(webhooks(Some("isthmus-sidecar-injector"), None));
    // The CRDs are not installed here; the Istio watchers retry in the background.
    let discovery = discovery::start(options).await.unwrap();
    let (addr, ca_pem) = discovery.webhook.clone().unwrap();
    apply_yaml(&client, &webhook_config(addr), "default", Mode::Apply)
        .await
        .unwrap();
    // Discovery writes its CA into the caBundle.
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let start = std::time::Instant::now();
    loop {
        let mwc = mwcs.get("isthmus-sidecar-injector").await.unwrap();
        let bundle = mwc.webhooks.unwrap()[0].client_config.ca_bundle.clone();
        if bundle.is_some_and(|b| b.0 == ca_pem.as_bytes()) {
            break;
        }
        assert!(start.elapsed() < T, "caBundle never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    apply_yaml(&client, &pod("mesh", "web", ""), "mesh", Mode::Apply)
        .await
        .unwrap();
    apply_yaml(&client, &pod("plain", "web", ""), "plain", Mode::Apply)
        .await
        .unwrap();
    apply_yaml(
        &client,
        &pod("mesh", "opted-out", "sidecar.istio.io/inject: \"false\""),
        "mesh",
        Mode::Apply,
    )
    .await
    .unwrap();
    let names = |p: &Pod, init: bool| -> Vec<String> {
        let spec = p.spec.clone().unwrap();
        let list = if init {
            spec.init_containers.unwrap_or_default()
        } else {
            spec.containers
        };
        list.into_iter().map(|c| c.name).collect()
    };
    let mesh: Api<Pod> = Api::namespaced(client.clone(), "mesh");
    let injected = mesh.get("web").await.unwrap();
    assert_eq!(names(&injected, false), ["app", "isthmus-proxy"]);
    assert_eq!(names(&injected, true), ["isthmus-init"]);
    let proxy = &injected.spec.clone().unwrap().containers[1];
    let args = proxy.args.clone().unwrap();
    assert!(
        args.contains(&"isthmus-discovery.istio-system.svc:15012".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&TD.to_owned()),
        "the trust domain comes from the CA: {args:?}"
    );
    let volumes: Vec<String> = injected
        .spec
        .clone()
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert!(volumes.contains(&"isthmus-token".to_owned()), "{volumes:?}");
    assert_eq!(
        injected.metadata.annotations.unwrap()["sidecar.istio.io/status"],
        "injected"
    );
    assert_eq!(names(&mesh.get("opted-out").await.unwrap(), false), ["app"]);
    let plain: Api<Pod> = Api::namespaced(client.clone(), "plain");
    assert_eq!(names(&plain.get("web").await.unwrap(), false), ["app"]);

    // The mesh root is published for injected sidecars in every namespace.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "mesh");
    let start = std::time::Instant::now();
    loop {
        if let Ok(cm) = cms.get("istio-ca-root-cert").await {
            assert_eq!(cm.data.unwrap()["root-cert.pem"], pki.ca.root_pem());
            break;
        }
        assert!(start.elapsed() < T, "root ConfigMap never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const VALIDATE_BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
"#;

const GOOD_VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
"#;

/// The same object with two refused fields: a weight below zero and an edit of
/// headers per destination.
const BAD_VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: -5
      headers: {request: {set: {x-a: b}}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_an_invalid_object_fails_with_the_analyzer_message() {
    let bins = testbed::KubeBins::locate().unwrap();
    let cps = testbed::start_control_planes(&bins, &["east"])
        .await
        .unwrap();
    let client = cps[0].client().await.unwrap();
    testbed::apply::apply_crds(&client).await.unwrap();
    apply_yaml(&client, VALIDATE_BASE, "default", Mode::Apply)
        .await
        .unwrap();

    let pki = Pki::new("east");
    let mut options = options("east", discovery::Source::Kubernetes(client.clone()), &pki);
    options.inject = Some(webhooks(None, Some(discovery::validate::WEBHOOK_CONFIG)));
    let discovery = discovery::start(options).await.unwrap();
    let (addr, ca_pem) = discovery.webhook.clone().unwrap();
    let vwc = discovery::validate::webhook_configuration(&format!(
        "{{url: \"https://{addr}/validate\"}}"
    ));
    apply_yaml(&client, &vwc, "default", Mode::Apply)
        .await
        .unwrap();
    // Discovery writes its CA and turns the webhook fail-closed.
    let vwcs: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(client.clone());
    let start = std::time::Instant::now();
    loop {
        let hook = vwcs.get(discovery::validate::WEBHOOK_CONFIG).await.unwrap();
        let hook = hook.webhooks.unwrap().remove(0);
        if hook
            .client_config
            .ca_bundle
            .is_some_and(|b| b.0 == ca_pem.as_bytes())
        {
            assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
            break;
        }
        assert!(start.elapsed() < T, "caBundle never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API server may take a moment to use the new caBundle: a valid object is
    // stored once the webhook answers.
    let start = std::time::Instant::now();
    while let Err(e) = apply_yaml(&client, GOOD_VS, "shop", Mode::Apply).await {
        assert!(
            start.elapsed() < T,
            "a valid VirtualService is refused: {e:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An invalid update is refused with the analyzer's text, and the stored object
    // keeps its last good spec.
    let analyzer = mesh_api::parse_resource(BAD_VS).unwrap_err().report();
    assert_eq!(analyzer.matches("Error [IST0106]").count(), 2, "{analyzer}");
    for mode in [Mode::DryRun, Mode::Apply] {
        let err = apply_yaml(&client, BAD_VS, "shop", mode)
            .await
            .expect_err("an invalid VirtualService is stored");
        let text = format!("{err:#}");
        assert!(
            text.contains("admission webhook \"validation.isthmus.dev\" denied the request"),
            "{text}"
        );
        assert!(
            text.contains(&analyzer),
            "{mode:?}: {text}\nwant:\n{analyzer}"
        );
    }
    let stored: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
            "virtualservices",
        ),
    );
    let vs = stored.get("reviews").await.unwrap();
    assert!(
        vs.data["spec"]["http"][0]["route"][0]
            .get("weight")
            .is_none(),
        "{:?}",
        vs.data
    );

    // A value Isthmus cannot serve is refused at apply with its reason.
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: shop}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 27017, name: mongo, protocol: MONGO}, hosts: ['*']}]}\n";
    let err = apply_yaml(&client, gateway, "shop", Mode::Apply)
        .await
        .expect_err("a MONGO Gateway server is stored");
    assert!(
        format!("{err:#}").contains(
            "(Gateway shop/ingress) spec.servers[0].port.protocol: MONGO servers are not served"
        ),
        "{err:#}"
    );

    // Deleting is never refused.
    apply_yaml(&client, GOOD_VS, "shop", Mode::Delete)
        .await
        .unwrap();
    assert!(stored.get_opt("reviews").await.unwrap().is_none());

    // The webhook counts what it decided.
    let metrics = discovery.metrics.encode();
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("isthmus_discovery_{name}_total ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(count("validation_failed") >= 3.0, "{metrics}");
    assert!(count("validation_passed") >= 1.0, "{metrics}");
}
