//! Istio documents as users write them in the Istio tutorials (Bookinfo traffic
//! shifting, request routing, circuit breaking, mTLS migration, authorization), read
//! unchanged, and bad documents refused with the object, the field and the reason.

use std::time::Duration;

use mesh_api::networking::{ClientTlsMode, SimpleLb};
use mesh_api::security::{AuthorizationAction, MtlsMode};
use mesh_api::{Resource, parse_resource, parse_resources};

#[test]
fn canary_weights_90_10_on_subsets() {
    let r = parse_resource(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v3
      weight: 10
"#,
    )
    .unwrap();
    let Resource::VirtualService(vs) = r else {
        panic!("not a VirtualService")
    };
    assert_eq!(vs.metadata.namespace.as_deref(), Some("bookinfo"));
    assert_eq!(vs.spec.hosts, ["reviews"]);
    let route = &vs.spec.http[0].route;
    assert_eq!(route[0].destination.subset.as_deref(), Some("v1"));
    assert_eq!(route[0].weight, Some(90));
    assert_eq!(route[1].destination.subset.as_deref(), Some("v3"));
    assert_eq!(route[1].weight, Some(10));
    let weights: Vec<_> = route.iter().map(|d| d.weight).collect();
    assert_eq!(mesh_api::networking::effective_weights(&weights), [90, 10]);
}

#[test]
fn header_match_uri_prefix_rewrite_timeout_retries_fault() {
    let r = parse_resource(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - mesh
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    - uri:
        prefix: /api/v1/products
      queryParams:
        debug:
          regex: "^(1|true)$"
      method:
        exact: GET
    rewrite:
      uri: /products
      authority: productpage.internal
    route:
    - destination:
        host: productpage
        port:
          number: 9080
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: 5xx,gateway-error,connect-failure,reset,503
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
      abort:
        percentage:
          value: 0.1
        httpStatus: 500
    mirror:
      host: productpage-shadow
    mirrorPercentage:
      value: 50.0
    headers:
      request:
        set:
          x-mesh: isthmus
      response:
        remove: [server]
"#,
    )
    .unwrap();
    let Resource::VirtualService(vs) = r else {
        panic!()
    };
    let http = &vs.spec.http[0];
    assert_eq!(http.matches.len(), 2);
    assert_eq!(
        http.matches[0].headers["end-user"].exact.as_deref(),
        Some("jason")
    );
    assert_eq!(
        http.matches[1].uri.as_ref().unwrap().prefix.as_deref(),
        Some("/api/v1/products")
    );
    assert_eq!(
        http.rewrite.as_ref().unwrap().uri.as_deref(),
        Some("/products")
    );
    assert_eq!(http.route[0].destination.port.unwrap().number, 9080);
    assert_eq!(http.timeout.unwrap().as_std(), Duration::from_secs(10));
    let retries = http.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 3);
    assert_eq!(
        retries.per_try_timeout.unwrap().as_std(),
        Duration::from_secs(2)
    );
    let fault = http.fault.as_ref().unwrap();
    assert_eq!(
        fault.delay.as_ref().unwrap().fixed_delay.unwrap().as_std(),
        Duration::from_secs(7)
    );
    assert_eq!(fault.abort.as_ref().unwrap().http_status, Some(500));
    assert!((fault.abort.as_ref().unwrap().percentage.unwrap().value - 0.1).abs() < 1e-9);
    assert_eq!(http.mirror_percentage.unwrap().value, 50.0);
    assert_eq!(
        http.headers.as_ref().unwrap().request.as_ref().unwrap().set["x-mesh"],
        "isthmus"
    );
}

#[test]
fn destination_rule_least_request_connection_pool_outlier_detection() {
    let r = parse_resource(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bookinfo
spec:
  host: reviews.bookinfo.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
      localityLbSetting:
        enabled: true
        failoverPriority:
        - topology.istio.io/network
        - topology.istio.io/cluster
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
      http:
        http1MaxPendingRequests: 1
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        idleTimeout: 90s
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 100
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
  - name: west
    labels:
      topology.istio.io/cluster: west
"#,
    )
    .unwrap();
    let Resource::DestinationRule(dr) = r else {
        panic!()
    };
    let tp = dr.spec.traffic_policy.as_ref().unwrap();
    let lb = tp.load_balancer.as_ref().unwrap();
    assert_eq!(lb.simple, Some(SimpleLb::LeastRequest));
    assert_eq!(
        lb.locality_lb_setting.as_ref().unwrap().failover_priority,
        ["topology.istio.io/network", "topology.istio.io/cluster"]
    );
    let pool = tp.connection_pool.as_ref().unwrap();
    assert_eq!(pool.tcp.as_ref().unwrap().max_connections, Some(100));
    assert_eq!(
        pool.tcp.as_ref().unwrap().connect_timeout.unwrap().as_std(),
        Duration::from_millis(30)
    );
    assert_eq!(
        pool.http.as_ref().unwrap().http1_max_pending_requests,
        Some(1)
    );
    let od = tp.outlier_detection.as_ref().unwrap();
    assert_eq!(od.effective_consecutive_5xx(), 7);
    assert_eq!(od.effective_interval().as_std(), Duration::from_secs(300));
    assert_eq!(
        od.effective_base_ejection_time().as_std(),
        Duration::from_secs(900)
    );
    assert_eq!(od.effective_max_ejection_percent(), 100);
    assert_eq!(
        tp.tls.as_ref().unwrap().mode,
        Some(ClientTlsMode::IstioMutual)
    );
    assert_eq!(dr.spec.subsets.len(), 3);
    assert_eq!(
        dr.spec.subsets[2].labels["topology.istio.io/cluster"],
        "west"
    );
}

#[test]
fn outlier_detection_defaults_are_istios() {
    let od = mesh_api::networking::OutlierDetection::default();
    assert_eq!(od.effective_consecutive_5xx(), 5);
    assert_eq!(od.effective_interval().as_std(), Duration::from_secs(10));
    assert_eq!(
        od.effective_base_ejection_time().as_std(),
        Duration::from_secs(30)
    );
    assert_eq!(od.effective_max_ejection_percent(), 10);
    assert_eq!(od.effective_min_health_percent(), 0);
}

#[test]
fn peer_authentication_strict_and_port_override() {
    let docs = parse_resources(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: legacy-port
  namespace: foo
spec:
  selector:
    matchLabels:
      app: legacy
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
"#,
    )
    .unwrap();
    let [
        Ok(Resource::PeerAuthentication(mesh)),
        Ok(Resource::PeerAuthentication(port)),
    ] = &docs[..]
    else {
        panic!("{docs:?}")
    };
    assert_eq!(mesh.spec.mtls.unwrap().mode, MtlsMode::Strict);
    assert_eq!(port.spec.port_level_mtls[&8080].mode, MtlsMode::Disable);
}

#[test]
fn authorization_policy_with_principals_and_methods() {
    let docs = parse_resources(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-viewer
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/bookinfo/sa/bookinfo-productpage"]
        namespaces: ["bookinfo"]
        ipBlocks: ["10.1.0.0/16"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/reviews/*"]
        ports: ["9080"]
    when:
    - key: request.headers[version]
      values: ["v1", "v2"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: bookinfo
spec: {}
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
spec:
  ports: [{port: 9080}]
"#,
    )
    .unwrap();
    assert_eq!(
        docs.len(),
        2,
        "the Service is not an Istio kind and is left out"
    );
    let Ok(Resource::AuthorizationPolicy(viewer)) = &docs[0] else {
        panic!("{docs:?}")
    };
    assert_eq!(viewer.spec.effective_action(), AuthorizationAction::Allow);
    let rule = &viewer.spec.rules[0];
    assert_eq!(
        rule.from[0].source.principals,
        ["cluster.local/ns/bookinfo/sa/bookinfo-productpage"]
    );
    assert_eq!(rule.to[0].operation.methods, ["GET"]);
    assert_eq!(rule.when[0].values, ["v1", "v2"]);
    let Ok(Resource::AuthorizationPolicy(nothing)) = &docs[1] else {
        panic!()
    };
    assert!(
        nothing.spec.rules.is_empty(),
        "an empty ALLOW policy has no rules (denies all)"
    );
}

#[test]
fn json_documents_as_the_api_server_returns_them() {
    let r = parse_resource(
        r#"{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule",
            "metadata":{"name":"reviews","namespace":"shop"},
            "spec":{"host":"reviews","subsets":[{"name":"v1","labels":{"version":"v1"}}]}}"#,
    )
    .unwrap();
    let Resource::DestinationRule(dr) = r else {
        panic!()
    };
    assert_eq!(dr.spec.subsets[0].name, "v1");
}

/// Kinds Isthmus does not enforce yet are refused whole, with the reason, as users
/// of Istio's multi-cluster guide would write them.
#[test]
fn gateway_is_refused_and_a_static_service_entry_read() {
    let err = parse_resource(
        r#"{"apiVersion":"networking.istio.io/v1","kind":"Gateway",
            "metadata":{"name":"cross-network-gateway","namespace":"istio-system"},
            "spec":{"selector":{"istio":"eastwestgateway"},
                    "servers":[{"port":{"number":15443,"name":"tls","protocol":"TLS"},
                                "tls":{"mode":"AUTO_PASSTHROUGH"},"hosts":["*.local"]}]}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("Gateway istio-system/cross-network-gateway"),
        "{err}"
    );
    assert!(
        err.contains("east-west gateway is configured by discovery"),
        "{err}"
    );
    // A STATIC ServiceEntry is read (and enforced by the proxies); with NONE resolution
    // it needs addresses and takes no endpoints, refused with the reasons.
    let entry = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc, namespace: default}
spec:
  hosts: [api.example.internal]
  location: MESH_INTERNAL
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 192.0.2.10
    labels: {version: v1}
"#;
    parse_resource(entry).unwrap();
    let err = parse_resource(&entry.replace("resolution: STATIC", "resolution: NONE"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ServiceEntry default/external-svc"), "{err}");
    assert!(
        err.contains("spec.resolution: NONE (also when unset) needs the entry's `addresses`")
            && err.contains("spec.endpoints: resolution NONE takes no endpoints"),
        "{err}"
    );
}

/// Asserts that `yaml` is refused and that the message names every `expected` part.
fn refused(yaml: &str, expected: &[&str]) {
    let err = parse_resource(yaml).expect_err("document should be refused");
    let msg = err.to_string();
    for part in expected {
        assert!(
            msg.contains(part),
            "message {msg:?} should contain {part:?}"
        );
    }
}

#[test]
fn unknown_field_names_object_path_and_known_fields() {
    refused(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - routes:
    - destination: {host: reviews}
"#,
        &[
            "VirtualService bookinfo/reviews",
            "spec.http[0]",
            "unknown field `routes`",
            "`route`",
        ],
    );
}

#[test]
fn wrong_type_names_the_field() {
    refused(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: ninety
"#,
        &[
            "VirtualService bookinfo/reviews",
            "spec.http[0].route[0].weight",
            "invalid type",
        ],
    );
}

#[test]
fn bad_duration_names_the_field_and_the_format() {
    refused(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection:
      interval: 5 minutes
"#,
        &[
            "DestinationRule bookinfo/reviews",
            "spec.trafficPolicy.outlierDetection.interval",
            "invalid duration",
            "1m30s",
        ],
    );
}

#[test]
fn bad_regex_names_the_field_and_the_pattern() {
    refused(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri:
        regex: "/api/(v1|v2"
    route:
    - destination: {host: reviews}
"#,
        &[
            "VirtualService bookinfo/reviews",
            "spec.http[0].match[0].uri.regex",
            "invalid regular expression",
        ],
    );
}

#[test]
fn header_names_that_are_not_http_tokens_are_refused_where_they_appear() {
    let err = parse_resource(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {"end user": {exact: jason}}
      withoutHeaders: {"x:debug": {exact: "1"}}
    headers:
      request: {set: {x-ok: "1", "bad header": "2"}, remove: ["a b"]}
    route:
    - destination: {host: reviews}
"#,
    )
    .expect_err("invalid header names are stored");
    let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            r#"spec.http[0].match[0].headers["end user"]"#,
            r#"spec.http[0].match[0].withoutHeaders["x:debug"]"#,
            r#"spec.http[0].headers.request.set["bad header"]"#,
            "spec.http[0].headers.request.remove[0]",
        ],
        "{err}"
    );
    assert!(err.errors[0].reason.contains("is not an HTTP header name"));

    // Routing on JWT claims on sidecars (the `mesh` gateway only) is refused with its
    // own reason; bound to a Gateway it is read, and a malformed claim name is refused.
    refused(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {"@request.auth.claims.groups": {exact: admin}}}]
    route: [{destination: {host: reviews}}]
"#,
        &[
            r#"spec.http[0].match[0].headers["@request.auth.claims.groups"]"#,
            "JWT claims are matched at the ingress gateway only",
        ],
    );
    let bound = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  gateways: [bookinfo-gateway]
  http:
  - match: [{headers: {"@request.auth.claims.groups": {exact: admin}, "@request.auth.claims[org][team]": {prefix: a}}}]
    route: [{destination: {host: reviews}}]
"#;
    parse_resource(bound).unwrap();
    refused(
        &bound.replace("claims[org][team]", "claims[]"),
        &[
            r#"spec.http[0].match[0].headers["@request.auth.claims[]"]"#,
            "names no claim",
        ],
    );
}

#[test]
fn unknown_enum_value_lists_the_choices() {
    refused(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls: {mode: STRICTER}
"#,
        &[
            "PeerAuthentication foo/default",
            "spec.mtls.mode",
            "STRICTER",
            "STRICT",
        ],
    );
}

#[test]
fn every_error_of_a_document_is_reported() {
    let err = parse_resource(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /a, exact: /b}
    route:
    - destination: {host: reviews}
    retries: {attempts: 2, retryOn: "5xx,sometimes"}
    fault: {abort: {httpStatus: 700}}
"#,
    )
    .unwrap_err();
    let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.http[0].match[0].uri",
            "spec.http[0].retries.retryOn",
            "spec.http[0].fault.abort.httpStatus"
        ],
        "{err}"
    );
}

#[test]
fn unserved_api_version_says_which_to_use() {
    refused(
        r#"
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec: {hosts: [reviews]}
"#,
        &[
            "VirtualService bookinfo/reviews",
            "apiVersion",
            "networking.istio.io/v1",
        ],
    );
}

#[test]
fn one_bad_document_does_not_hide_the_good_ones() {
    let docs = parse_resources(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: good, namespace: default}
spec:
  hosts: [good]
  http: [{route: [{destination: {host: good}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: default}
spec:
  hosts: [bad]
  http: [{route: [{destination: {host: bad}}], timeout: forever}]
"#,
    )
    .unwrap();
    assert!(docs[0].is_ok());
    let err = docs[1].as_ref().unwrap_err();
    assert_eq!(err.object(), "VirtualService default/bad");
}

#[test]
fn yaml_syntax_error_is_reported() {
    let err = parse_resources("kind: [unclosed").unwrap_err();
    assert!(err.to_string().contains("(yaml)"), "{err}");
}

#[test]
fn documents_round_trip_through_serialization() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
    timeout: 1m30s
"#;
    let Resource::VirtualService(vs) = parse_resource(text).unwrap() else {
        panic!()
    };
    let json = serde_json::to_value(&vs).unwrap();
    assert_eq!(json["apiVersion"], "networking.istio.io/v1");
    assert_eq!(json["spec"]["http"][0]["timeout"], "1m30s");
    assert!(
        json["spec"].get("tcp").is_none(),
        "empty lists are not written out"
    );
    let again = mesh_api::from_value(json).unwrap();
    assert_eq!(again, Resource::VirtualService(vs));
}

/// AuthorizationPolicy shapes the proxy could not evaluate are refused with the
/// field and the reason, never accepted to match nothing (or everything).
#[test]
fn authorization_policy_fields_that_cannot_be_enforced_are_refused() {
    let policy = |spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {spec}\n"
        )
    };
    for (spec, parts) in [
        (
            "{action: CUSTOM, provider: {name: opa}, rules: [{}]}",
            &[
                "AuthorizationPolicy shop/p",
                "spec.action",
                "CUSTOM is not supported",
                "ALLOW or DENY",
            ][..],
        ),
        (
            "{targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}}",
            &["spec.targetRef", "selector.matchLabels"],
        ),
        (
            "{action: DENY, rules: [{when: [{key: 'request.auth.claims[]', values: [x]}]}]}",
            &["spec.rules[0].when[0].key", "request.auth.claims[NAME]"],
        ),
        (
            "{rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: [x]}]}]}",
            &["when[0].key", "could never be evaluated"],
        ),
        (
            "{rules: [{when: [{key: 'request.header[x]', values: [x]}]}]}",
            &["when[0].key", "unknown attribute"],
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [shop/*]}}]}]}",
            &["source.serviceAccounts[0]", "NAMESPACE/NAME"],
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [shop/a], principals: ['*']}}]}]}",
            &["source.serviceAccounts", "cannot be set with principals"],
        ),
        (
            "{rules: [{to: [{operation: {paths: ['/api/{**}/x']}}]}]}",
            &["operation.paths[0]", "last segment"],
        ),
        (
            "{rules: [{to: [{operation: {paths: ['/api/v{*}']}}]}]}",
            &["operation.paths[0]", "whole segments"],
        ),
        (
            "{rules: [{when: [{key: destination.port, values: [http]}]}]}",
            &["when[0].values", "not a port number"],
        ),
        (
            "{rules: [{when: [{key: destination.ip, values: [10.0.0.0/40]}]}]}",
            &["when[0].values[0]", "not an IP address or CIDR"],
        ),
    ] {
        refused(&policy(spec), parts);
    }
    // What Istio documents and the proxy enforces is accepted.
    parse_resource(&policy(
        "{action: DENY, rules: [{from: [{source: {serviceAccounts: [shop/a], remoteIpBlocks: [192.0.2.0/24]}}], \
         to: [{operation: {paths: ['/api/{*}/admin/{**}']}}], \
         when: [{key: connection.sni, values: ['*.shop.svc.cluster.local']}, {key: destination.port, values: ['9080']}]}]}",
    ))
    .unwrap();
}
