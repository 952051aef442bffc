//! The classification of every field: see [`crate::coverage`]. Tests are named as
//! `FILE::FUNCTION` (file relative to the workspace root, without `.rs`).

use crate::coverage::{FieldSupport, Support};

const fn e(ty: &'static str, field: &'static str, tests: &'static [&'static str]) -> FieldSupport {
    FieldSupport {
        ty,
        field,
        support: Support::Enforced,
        note: "",
        tests,
    }
}

const fn en(
    ty: &'static str,
    field: &'static str,
    note: &'static str,
    tests: &'static [&'static str],
) -> FieldSupport {
    FieldSupport {
        ty,
        field,
        support: Support::Enforced,
        note,
        tests,
    }
}

const fn r(ty: &'static str, field: &'static str, note: &'static str) -> FieldSupport {
    FieldSupport {
        ty,
        field,
        support: Support::Refused,
        note,
        tests: &[],
    }
}

const fn w(ty: &'static str, field: &'static str, note: &'static str) -> FieldSupport {
    FieldSupport {
        ty,
        field,
        support: Support::Warned,
        note,
        tests: &[],
    }
}

const ROUTES_MATCH: &[&str] = &["crates/mesh-proxy/src/routes::http_match_fields_select_requests"];
const ROUTES_FIELDS: &[&str] =
    &["crates/mesh-proxy/src/routes::http_route_fields_compile_as_written"];
const AUTHZ_SA: &[&str] =
    &["crates/mesh-proxy/src/authz/mod::service_accounts_allow_only_the_named_account"];
const AUTHZ_PRINCIPAL: &[&str] = &["crates/mesh-proxy/src/authz/mod::wrong_principal_is_denied"];
const AUTHZ_WHEN: &[&str] = &["crates/mesh-proxy/src/authz/mod::connection_conditions_fire"];
const AUTHZ_FAIL_CLOSED: &[&str] = &["crates/mesh-proxy/src/authz/mod::fail_closed"];
const AUTHZ_PATHS: &[&str] = &["crates/mesh-proxy/src/authz/mod::paths_hosts_and_templates"];
const AUTHZ_E2E: &[&str] =
    &["crates/mesh-proxy/tests/http_routing::authorization_policy_allows_denies_and_deny_wins"];
const AUTHZ_TCP: &[&str] = &["crates/mesh-proxy/src/authz/mod::tcp_reads_rules_the_strict_way"];
const POLICY_LAYERS: &[&str] =
    &["crates/mesh-proxy/src/policy::traffic_policy_resolves_top_port_subset_and_subset_port"];
const OUTLIER: &[&str] = &[
    "crates/mesh-proxy/tests/resilience::outlier_detection_ejects_a_failing_endpoint_and_readmits_it",
];
const FAILOVER: &[&str] = &[
    "crates/mesh-proxy/tests/resilience::locality_failover_prefers_the_local_cluster_and_spills_over_without_errors",
];
const DISTRIBUTE: &[&str] =
    &["crates/mesh-proxy/tests/resilience::locality_distribute_splits_traffic_by_share"];
const FAULTS: &[&str] =
    &["crates/mesh-proxy/tests/http_routing::fault_injection_delays_and_aborts_by_percentage"];
const CANARY: &[&str] =
    &["crates/mesh-proxy/tests/http_routing::canary_90_10_split_holds_within_tolerance"];
const HEADER_ROUTE: &[&str] =
    &["crates/mesh-proxy/tests/http_routing::header_match_rewrite_and_edits_route_as_istio_does"];
const TLS_ROUTE: &[&str] =
    &["crates/mesh-proxy/src/routes::a_route_needs_its_port_and_one_of_its_names"];
const PEER_AUTHN: &[&str] =
    &["crates/mesh-proxy/src/peer_authn::workload_over_namespace_over_mesh_with_port_overrides"];
const FILE_REGISTRY: &[&str] = &[
    "discovery/tests/file_registry::file_registry_pushes_incrementally_and_refuses_bad_resources_alone",
];
const GATEWAY_NAMES: &[&str] = &[
    "crates/mesh-proxy/src/ingress/mod::gateways_bind_virtual_services_by_name_namespace_and_host",
    "crates/mesh-api/tests/api_coverage::values_isthmus_cannot_honour_are_refused",
];
const INGRESS: &[&str] = &[
    "crates/mesh-proxy/src/ingress/mod::gateways_bind_virtual_services_by_name_namespace_and_host",
    "crates/mesh-proxy/tests/ingress::the_ingress_gateway_serves_gateway_ports_to_mesh_services",
];
const INGRESS_PLAN: &[&str] = &[
    "crates/mesh-proxy/src/plan::a_gateway_routes_by_server_port_and_host",
    "crates/mesh-proxy/tests/ingress::the_ingress_gateway_serves_gateway_ports_to_mesh_services",
];
const GATEWAY_TLS_LATER: &str = "not applied by the ingress gateway's TLS (TLS 1.2 and 1.3 with rustls's default suites; client certificates checked against caCertificates only)";
const INGRESS_TLS: &[&str] =
    &["crates/mesh-proxy/tests/ingress::https_servers_terminate_tls_chosen_by_sni"];
const JWT_E2E: &[&str] =
    &["crates/mesh-proxy/tests/jwt::tokens_are_verified_before_policies_and_name_the_caller"];
const JWT_AUTHZ: &[&str] = &[
    "crates/mesh-proxy/src/authz/mod::request_principals_need_a_verified_token",
    "crates/mesh-proxy/tests/jwt::tokens_are_verified_before_policies_and_name_the_caller",
];
const SERVICE_ENTRY: &[&str] = &[
    "crates/mesh-proxy/tests/service_entry::a_static_entry_routes_outside_the_mesh_with_subsets_and_faults",
];
const SIDECAR: &[&str] = &[
    "crates/mesh-proxy/tests/sidecar_resource::a_sidecar_resource_scopes_what_a_workload_reaches",
];
const SIDECAR_INGRESS: &[&str] = &[
    "crates/mesh-proxy/tests/sidecar_resource::sidecar_ingress_listeners_forward_to_the_default_endpoint",
];
const FEDERATION: &[&str] =
    &["discovery/tests/federation::linked_clusters_exchange_exported_endpoints_and_withdraw_them"];

const MESH_GATEWAY_ONLY: &str = "`mesh` (the sidecars) and Gateways, as `name` (the VirtualService's namespace) or `namespace/name`, served by the Isthmus ingress gateway";
const L4_GATEWAYS: &[&str] = &[
    "crates/mesh-proxy/tests/ingress::passthrough_and_tcp_servers_route_connections_to_mesh_services",
    "crates/mesh-api/tests/api_coverage::values_isthmus_cannot_honour_are_refused",
];
const NO_ORIGINATION: &str = "certificate revocation lists are not checked";
const ORIGINATION_TEST: &str = "crates/mesh-proxy/tests/origination::tls_origination_verifies_the_server_and_presents_the_client_certificate";
const ORIGINATION: &[&str] = &[ORIGINATION_TEST];
const CONNECTION_TUNING: &str =
    "a connection tuning knob the sidecar does not apply; the default behaviour stays";

pub(crate) static KINDS_REFUSED: &[(&str, &str)] = &[];

pub(crate) static FIELDS: &[FieldSupport] = &[
    // VirtualService
    e("VirtualServiceSpec", "hosts", CANARY),
    en(
        "VirtualServiceSpec",
        "gateways",
        MESH_GATEWAY_ONLY,
        GATEWAY_NAMES,
    ),
    en(
        "VirtualServiceSpec",
        "exportTo",
        "`.`, `*` and namespace names; `~` keeps it out of every other namespace and cluster",
        FILE_REGISTRY,
    ),
    e("VirtualServiceSpec", "http", CANARY),
    e(
        "VirtualServiceSpec",
        "tls",
        &[
            "crates/mesh-proxy/tests/capture::captured_traffic_crosses_pods_over_mtls_and_the_rest_passes_through",
        ],
    ),
    e(
        "VirtualServiceSpec",
        "tcp",
        &[
            "crates/mesh-proxy/tests/capture::captured_traffic_crosses_pods_over_mtls_and_the_rest_passes_through",
        ],
    ),
    e("HttpRoute", "name", ROUTES_FIELDS),
    e("HttpRoute", "match", HEADER_ROUTE),
    e("HttpRoute", "route", CANARY),
    e("HttpRoute", "redirect", HEADER_ROUTE),
    e("HttpRoute", "directResponse", HEADER_ROUTE),
    r(
        "HttpRoute",
        "delegate",
        "VirtualService delegation is not built; merge the delegate's routes into the root VirtualService",
    ),
    e("HttpRoute", "rewrite", HEADER_ROUTE),
    e("HttpRoute", "timeout", ROUTES_FIELDS),
    e(
        "HttpRoute",
        "retries",
        &["crates/mesh-proxy/tests/http_routing::retries_hide_a_flaky_backend"],
    ),
    e("HttpRoute", "fault", FAULTS),
    e("HttpRoute", "mirror", ROUTES_FIELDS),
    e("HttpRoute", "mirrors", ROUTES_FIELDS),
    e("HttpRoute", "mirrorPercent", ROUTES_FIELDS),
    e(
        "HttpRoute",
        "mirrorPercentage",
        &[
            "crates/mesh-proxy/tests/http_routing::mirroring_copies_the_configured_share_and_answers_from_the_primary",
        ],
    ),
    r(
        "HttpRoute",
        "corsPolicy",
        "CORS is not enforced by the sidecar; answer preflights in the application",
    ),
    e("HttpRoute", "headers", HEADER_ROUTE),
    e("HttpMatchRequest", "uri", HEADER_ROUTE),
    e("HttpMatchRequest", "scheme", ROUTES_MATCH),
    e("HttpMatchRequest", "method", ROUTES_MATCH),
    e("HttpMatchRequest", "authority", ROUTES_MATCH),
    en(
        "HttpMatchRequest",
        "headers",
        "also `@request.auth.claims.NAME` (nested `.a.b` or `[a][b]`) on routes bound to a Gateway: matched against the JWT \
         the ingress gateway verified (a string claim, or any item of a list); refused on routes bound to `mesh` only, as Istio matches claims at gateways",
        &[
            "crates/mesh-proxy/tests/http_routing::header_match_rewrite_and_edits_route_as_istio_does",
            "crates/mesh-proxy/tests/ingress::the_ingress_gateway_serves_gateway_ports_to_mesh_services",
        ],
    ),
    e("HttpMatchRequest", "port", ROUTES_MATCH),
    e("HttpMatchRequest", "sourceLabels", ROUTES_MATCH),
    en(
        "HttpMatchRequest",
        "gateways",
        MESH_GATEWAY_ONLY,
        &[
            "crates/mesh-proxy/src/routes::http_match_fields_select_requests",
            "crates/mesh-api/tests/api_coverage::values_isthmus_cannot_honour_are_refused",
        ],
    ),
    e("HttpMatchRequest", "queryParams", ROUTES_MATCH),
    e("HttpMatchRequest", "ignoreUriCase", ROUTES_MATCH),
    e("HttpMatchRequest", "withoutHeaders", ROUTES_MATCH),
    e("HttpMatchRequest", "sourceNamespace", ROUTES_MATCH),
    w(
        "HttpMatchRequest",
        "name",
        "match names only label Envoy's route statistics, which Isthmus does not keep per match",
    ),
    w(
        "HttpMatchRequest",
        "statPrefix",
        "per-match statistics are not kept",
    ),
    e("StringMatch", "exact", HEADER_ROUTE),
    e("StringMatch", "prefix", HEADER_ROUTE),
    e("StringMatch", "regex", HEADER_ROUTE),
    e("HttpRouteDestination", "destination", CANARY),
    e("HttpRouteDestination", "weight", CANARY),
    r(
        "HttpRouteDestination",
        "headers",
        "header edits per destination are not applied; set `headers` on the route instead",
    ),
    e("Destination", "host", CANARY),
    e("Destination", "subset", CANARY),
    e("Destination", "port", ROUTES_FIELDS),
    e("PortSelector", "number", ROUTES_FIELDS),
    e("HttpRedirect", "uri", HEADER_ROUTE),
    e("HttpRedirect", "authority", ROUTES_FIELDS),
    e("HttpRedirect", "redirectCode", HEADER_ROUTE),
    r(
        "HttpRedirect",
        "port",
        "the redirect keeps the request's port; set it in `authority` (HOST:PORT)",
    ),
    r(
        "HttpRedirect",
        "derivePort",
        "the redirect keeps the request's port; set it in `authority` (HOST:PORT)",
    ),
    e(
        "HttpRedirect",
        "scheme",
        &["crates/mesh-proxy/src/plan::routing_decisions_as_a_table"],
    ),
    e("HttpDirectResponse", "status", HEADER_ROUTE),
    e("HttpDirectResponse", "body", HEADER_ROUTE),
    e("HttpBody", "string", HEADER_ROUTE),
    r(
        "HttpBody",
        "bytes",
        "only `body.string` is sent; write the body as a string",
    ),
    e("HttpRewrite", "uri", HEADER_ROUTE),
    e("HttpRewrite", "authority", ROUTES_FIELDS),
    r(
        "HttpRewrite",
        "uriRegexRewrite",
        "regex rewrites are not built; use `rewrite.uri` with a prefix match",
    ),
    en(
        "HttpRetry",
        "attempts",
        "",
        &["crates/mesh-proxy/tests/http_routing::retries_hide_a_flaky_backend"],
    ),
    e(
        "HttpRetry",
        "perTryTimeout",
        &["crates/mesh-proxy/tests/http_routing::retries_hide_a_flaky_backend"],
    ),
    en(
        "HttpRetry",
        "retryOn",
        "5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, retriable-status-codes, status codes and the gRPC conditions; other tokens are refused",
        &["crates/mesh-proxy/tests/http_routing::retries_hide_a_flaky_backend"],
    ),
    w(
        "HttpRetry",
        "retryRemoteLocalities",
        "retries go to any endpoint the load balancer picks, local or remote",
    ),
    e("HttpFaultInjection", "delay", FAULTS),
    e("HttpFaultInjection", "abort", FAULTS),
    e("FaultDelay", "fixedDelay", FAULTS),
    r(
        "FaultDelay",
        "exponentialDelay",
        "exponential delays are not built; use fixedDelay",
    ),
    e("FaultDelay", "percentage", FAULTS),
    en(
        "FaultDelay",
        "percent",
        "deprecated in Istio; read as `percentage`",
        &["crates/mesh-proxy/src/routes::fault_percent_and_grpc_abort"],
    ),
    e("FaultAbort", "httpStatus", FAULTS),
    e(
        "FaultAbort",
        "grpcStatus",
        &["crates/mesh-proxy/src/routes::fault_percent_and_grpc_abort"],
    ),
    r(
        "FaultAbort",
        "http2Error",
        "HTTP/2 error aborts are not built; use httpStatus or grpcStatus",
    ),
    e("FaultAbort", "percentage", FAULTS),
    e("Percent", "value", FAULTS),
    e(
        "HttpMirrorPolicy",
        "destination",
        &[
            "crates/mesh-proxy/tests/http_routing::mirroring_copies_the_configured_share_and_answers_from_the_primary",
        ],
    ),
    e("HttpMirrorPolicy", "percentage", ROUTES_FIELDS),
    e("Headers", "request", HEADER_ROUTE),
    e("Headers", "response", ROUTES_FIELDS),
    e("HeaderOperations", "set", HEADER_ROUTE),
    e("HeaderOperations", "add", ROUTES_FIELDS),
    e("HeaderOperations", "remove", ROUTES_FIELDS),
    e("TlsRoute", "match", TLS_ROUTE),
    e("TlsRoute", "route", TLS_ROUTE),
    e("TlsMatchAttributes", "sniHosts", TLS_ROUTE),
    e("TlsMatchAttributes", "port", TLS_ROUTE),
    r(
        "TlsMatchAttributes",
        "destinationSubnets",
        "tls routes match on SNI and port only",
    ),
    r(
        "TlsMatchAttributes",
        "sourceLabels",
        "tls routes match on SNI and port only",
    ),
    r(
        "TlsMatchAttributes",
        "sourceNamespace",
        "tls routes match on SNI and port only",
    ),
    en(
        "TlsMatchAttributes",
        "gateways",
        MESH_GATEWAY_ONLY,
        L4_GATEWAYS,
    ),
    e(
        "TcpRoute",
        "match",
        &["crates/mesh-proxy/src/routes::tcp_routes_match_ports"],
    ),
    e(
        "TcpRoute",
        "route",
        &["crates/mesh-proxy/src/routes::tcp_routes_match_ports"],
    ),
    e(
        "L4MatchAttributes",
        "port",
        &["crates/mesh-proxy/src/routes::tcp_routes_match_ports"],
    ),
    r(
        "L4MatchAttributes",
        "destinationSubnets",
        "tcp routes match on the destination port only",
    ),
    r(
        "L4MatchAttributes",
        "sourceLabels",
        "tcp routes match on the destination port only",
    ),
    r(
        "L4MatchAttributes",
        "sourceNamespace",
        "tcp routes match on the destination port only",
    ),
    r(
        "L4MatchAttributes",
        "sourceSubnet",
        "tcp routes match on the destination port only",
    ),
    en(
        "L4MatchAttributes",
        "gateways",
        MESH_GATEWAY_ONLY,
        L4_GATEWAYS,
    ),
    e(
        "RouteDestination",
        "destination",
        &["crates/mesh-proxy/src/routes::tcp_routes_match_ports"],
    ),
    e(
        "RouteDestination",
        "weight",
        &["crates/mesh-proxy/src/routes::tcp_routes_match_ports"],
    ),
    // DestinationRule
    e("DestinationRuleSpec", "host", CANARY),
    e("DestinationRuleSpec", "trafficPolicy", POLICY_LAYERS),
    e("DestinationRuleSpec", "subsets", POLICY_LAYERS),
    en(
        "DestinationRuleSpec",
        "exportTo",
        "as VirtualService exportTo",
        FILE_REGISTRY,
    ),
    r(
        "DestinationRuleSpec",
        "workloadSelector",
        "per-workload DestinationRules are not built; the rule would apply to every client",
    ),
    e("Subset", "name", CANARY),
    e("Subset", "labels", POLICY_LAYERS),
    e("Subset", "trafficPolicy", POLICY_LAYERS),
    e("TrafficPolicy", "loadBalancer", POLICY_LAYERS),
    e(
        "TrafficPolicy",
        "connectionPool",
        &["crates/mesh-proxy/tests/http_routing::connection_pool_limits_trip_the_circuit_breaker"],
    ),
    e("TrafficPolicy", "outlierDetection", OUTLIER),
    en(
        "TrafficPolicy",
        "tls",
        "mode ISTIO_MUTUAL and DISABLE; SIMPLE and MUTUAL are refused",
        &[
            "crates/mesh-proxy/tests/http_routing::tls_disable_sends_plain_http_to_a_workload_without_a_sidecar",
        ],
    ),
    e("TrafficPolicy", "portLevelSettings", POLICY_LAYERS),
    r(
        "TrafficPolicy",
        "tunnel",
        "HTTP CONNECT tunnels to a proxy are not built",
    ),
    r(
        "TrafficPolicy",
        "proxyProtocol",
        "the PROXY protocol header is not sent; the upstream would refuse the connection",
    ),
    e("PortTrafficPolicy", "port", POLICY_LAYERS),
    e("PortTrafficPolicy", "loadBalancer", POLICY_LAYERS),
    e("PortTrafficPolicy", "connectionPool", POLICY_LAYERS),
    e("PortTrafficPolicy", "outlierDetection", POLICY_LAYERS),
    en(
        "PortTrafficPolicy",
        "tls",
        "as trafficPolicy.tls",
        &["crates/mesh-proxy/src/policy::port_level_tls_and_http2_max_requests"],
    ),
    e("LoadBalancerSettings", "simple", POLICY_LAYERS),
    e(
        "LoadBalancerSettings",
        "consistentHash",
        &["crates/mesh-proxy/tests/http_routing::consistent_hash_keeps_a_user_on_one_endpoint"],
    ),
    e("LoadBalancerSettings", "localityLbSetting", FAILOVER),
    w(
        "LoadBalancerSettings",
        "warmupDurationSecs",
        "new endpoints get their full share at once",
    ),
    e(
        "ConsistentHashLb",
        "httpHeaderName",
        &["crates/mesh-proxy/tests/http_routing::consistent_hash_keeps_a_user_on_one_endpoint"],
    ),
    e(
        "ConsistentHashLb",
        "httpCookie",
        &[
            "crates/mesh-proxy/tests/http_routing::an_http_cookie_with_a_ttl_is_generated_and_keeps_the_client_on_one_endpoint",
        ],
    ),
    e(
        "ConsistentHashLb",
        "useSourceIp",
        &["crates/mesh-proxy/src/policy::consistent_hash_keys"],
    ),
    e(
        "ConsistentHashLb",
        "httpQueryParameterName",
        &["crates/mesh-proxy/src/policy::consistent_hash_keys"],
    ),
    w(
        "ConsistentHashLb",
        "ringHash",
        "one hash ring of fixed size is used; the ring settings do not change which keys stay together",
    ),
    w(
        "ConsistentHashLb",
        "maglev",
        "one hash ring of fixed size is used; the Maglev table settings have no effect",
    ),
    w(
        "ConsistentHashLb",
        "minimumRingSize",
        "one hash ring of fixed size is used",
    ),
    w(
        "RingHash",
        "minimumRingSize",
        "one hash ring of fixed size is used",
    ),
    w("Maglev", "tableSize", "one hash ring of fixed size is used"),
    e(
        "HttpCookie",
        "name",
        &[
            "crates/mesh-proxy/tests/http_routing::an_http_cookie_with_a_ttl_is_generated_and_keeps_the_client_on_one_endpoint",
        ],
    ),
    e(
        "HttpCookie",
        "path",
        &[
            "crates/mesh-proxy/tests/http_routing::an_http_cookie_with_a_ttl_is_generated_and_keeps_the_client_on_one_endpoint",
        ],
    ),
    e(
        "HttpCookie",
        "ttl",
        &[
            "crates/mesh-proxy/tests/http_routing::an_http_cookie_with_a_ttl_is_generated_and_keeps_the_client_on_one_endpoint",
        ],
    ),
    e("LocalityLbSetting", "distribute", DISTRIBUTE),
    e(
        "LocalityLbSetting",
        "failover",
        &["crates/mesh-proxy/src/lb::failover_follows_the_from_to_pairs"],
    ),
    e("LocalityLbSetting", "failoverPriority", FAILOVER),
    e(
        "LocalityLbSetting",
        "enabled",
        &["crates/mesh-proxy/src/lb::failover_follows_the_from_to_pairs"],
    ),
    e("LocalityDistribute", "from", DISTRIBUTE),
    e("LocalityDistribute", "to", DISTRIBUTE),
    e(
        "LocalityFailover",
        "from",
        &["crates/mesh-proxy/src/lb::failover_follows_the_from_to_pairs"],
    ),
    e(
        "LocalityFailover",
        "to",
        &["crates/mesh-proxy/src/lb::failover_follows_the_from_to_pairs"],
    ),
    e(
        "ConnectionPoolSettings",
        "tcp",
        &["crates/mesh-proxy/tests/http_routing::connection_pool_limits_trip_the_circuit_breaker"],
    ),
    e(
        "ConnectionPoolSettings",
        "http",
        &["crates/mesh-proxy/tests/http_routing::connection_pool_limits_trip_the_circuit_breaker"],
    ),
    e(
        "TcpSettings",
        "maxConnections",
        &["crates/mesh-proxy/tests/http_routing::connection_pool_limits_trip_the_circuit_breaker"],
    ),
    e("TcpSettings", "connectTimeout", POLICY_LAYERS),
    w("TcpSettings", "tcpKeepalive", CONNECTION_TUNING),
    w("TcpSettings", "maxConnectionDuration", CONNECTION_TUNING),
    e(
        "TcpSettings",
        "idleTimeout",
        &[
            "crates/mesh-proxy/tests/http_routing::max_requests_per_connection_and_idle_timeout_renew_upstream_connections",
        ],
    ),
    w("TcpKeepalive", "probes", CONNECTION_TUNING),
    w("TcpKeepalive", "time", CONNECTION_TUNING),
    w("TcpKeepalive", "interval", CONNECTION_TUNING),
    e(
        "HttpSettings",
        "http1MaxPendingRequests",
        &["crates/mesh-proxy/tests/http_routing::connection_pool_limits_trip_the_circuit_breaker"],
    ),
    e(
        "HttpSettings",
        "http2MaxRequests",
        &["crates/mesh-proxy/src/policy::port_level_tls_and_http2_max_requests"],
    ),
    e(
        "HttpSettings",
        "maxRequestsPerConnection",
        &[
            "crates/mesh-proxy/tests/http_routing::max_requests_per_connection_and_idle_timeout_renew_upstream_connections",
        ],
    ),
    w(
        "HttpSettings",
        "maxRetries",
        "concurrent retries are not limited separately; each request retries as its route says",
    ),
    e(
        "HttpSettings",
        "idleTimeout",
        &[
            "crates/mesh-proxy/tests/http_routing::max_requests_per_connection_and_idle_timeout_renew_upstream_connections",
        ],
    ),
    e(
        "HttpSettings",
        "h2UpgradePolicy",
        &[
            "crates/mesh-proxy/tests/protocols::http1_stays_http1_between_sidecars_unless_upgraded_and_its_connections_are_reused",
        ],
    ),
    w(
        "HttpSettings",
        "useClientProtocol",
        "the protocol between sidecars follows h2UpgradePolicy and the port's protocol",
    ),
    w("HttpSettings", "maxConcurrentStreams", CONNECTION_TUNING),
    e("OutlierDetection", "consecutive5xxErrors", OUTLIER),
    en(
        "OutlierDetection",
        "consecutiveErrors",
        "deprecated in Istio; read as consecutive5xxErrors",
        &["crates/mesh-proxy/src/lb::outlier_fields_compile"],
    ),
    e(
        "OutlierDetection",
        "consecutiveGatewayErrors",
        &["crates/mesh-proxy/src/lb::outlier_fields_compile"],
    ),
    e("OutlierDetection", "baseEjectionTime", OUTLIER),
    e("OutlierDetection", "maxEjectionPercent", OUTLIER),
    e(
        "OutlierDetection",
        "minHealthPercent",
        &["crates/mesh-proxy/src/lb::outlier_fields_compile"],
    ),
    w(
        "OutlierDetection",
        "interval",
        "ejections are decided at each failure, not at a scan interval",
    ),
    w(
        "OutlierDetection",
        "splitExternalLocalOriginErrors",
        "connect failures and 5xx answers count together",
    ),
    w(
        "OutlierDetection",
        "consecutiveLocalOriginFailures",
        "connect failures and 5xx answers count together",
    ),
    en(
        "ClientTlsSettings",
        "mode",
        "ISTIO_MUTUAL (mesh mTLS between sidecars), DISABLE (plain to a workload without a sidecar), \
         SIMPLE and MUTUAL (TLS this proxy opens to the destination's own address and port, HTTP and TCP)",
        &[
            "crates/mesh-proxy/tests/http_routing::tls_disable_sends_plain_http_to_a_workload_without_a_sidecar",
            ORIGINATION_TEST,
        ],
    ),
    en(
        "ClientTlsSettings",
        "clientCertificate",
        "a PEM file the proxy reads (mounted in its pod)",
        ORIGINATION,
    ),
    en(
        "ClientTlsSettings",
        "privateKey",
        "a PEM file the proxy reads (mounted in its pod)",
        ORIGINATION,
    ),
    en(
        "ClientTlsSettings",
        "caCertificates",
        "a PEM file the proxy reads; the system's roots when unset",
        ORIGINATION,
    ),
    en(
        "ClientTlsSettings",
        "credentialName",
        "a Secret of the client workload's namespace (kubernetes.io/tls `tls.crt`, `tls.key`, `ca.crt`), delivered by discovery \
         over the config stream and held in memory; until it arrives the origination fails closed (503 UF with the reason)",
        &[
            ORIGINATION_TEST,
            "discovery/tests/file_registry::a_credential_secret_reaches_the_gateway_that_names_it_only",
            "discovery/tests/kubernetes::kubernetes_registry_reaches_proxies_and_the_ca_checks_tokens",
        ],
    ),
    en(
        "ClientTlsSettings",
        "subjectAltNames",
        "DNS names and IP addresses, for TLS this proxy opens (the certificate must be valid for one); \
         refused with ISTIO_MUTUAL, where peers are verified by their SPIFFE identity",
        ORIGINATION,
    ),
    en(
        "ClientTlsSettings",
        "sni",
        "for TLS this proxy opens (the destination host when unset); refused with ISTIO_MUTUAL, whose SNI names the service and port",
        ORIGINATION,
    ),
    en(
        "ClientTlsSettings",
        "insecureSkipVerify",
        "verifies nothing; `meshctl analyze` warns (ISM0002)",
        &[
            ORIGINATION_TEST,
            "crates/meshctl/src/analyze::tls_origination_that_verifies_nothing_is_warned",
        ],
    ),
    r("ClientTlsSettings", "caCrl", NO_ORIGINATION),
    // RequestAuthentication
    e("RequestAuthenticationSpec", "selector", JWT_E2E),
    r(
        "RequestAuthenticationSpec",
        "targetRef",
        "policies attached to a Service or Gateway are not built; select workloads with `selector`",
    ),
    r(
        "RequestAuthenticationSpec",
        "targetRefs",
        "policies attached to a Service or Gateway are not built; select workloads with `selector`",
    ),
    e("RequestAuthenticationSpec", "jwtRules", JWT_E2E),
    en(
        "JwtRule",
        "issuer",
        "with neither `jwks` nor `jwksUri`, the keys are found by OpenID discovery (`ISSUER/.well-known/openid-configuration`, its `jwks_uri`)",
        &[
            "crates/mesh-proxy/tests/jwt::tokens_are_verified_before_policies_and_name_the_caller",
            "crates/mesh-proxy/tests/jwt::keys_are_found_by_openid_discovery_from_the_issuer",
        ],
    ),
    en(
        "JwtRule",
        "audiences",
        "a token must name one of them in `aud`; not checked when empty",
        JWT_E2E,
    ),
    en(
        "JwtRule",
        "jwks",
        "RSA, EC (P-256, P-384), Ed25519 and HMAC keys; at most one of `jwks` and `jwksUri` (neither: OpenID discovery from the issuer)",
        JWT_E2E,
    ),
    en(
        "JwtRule",
        "jwksUri",
        "http(s) only, fetched off the request path with the system's roots and again every 20 minutes, the last good keys kept when a fetch fails; tokens of its issuer get 401 until the first fetch",
        &["crates/mesh-proxy/tests/jwt::keys_named_by_jwks_uri_are_fetched"],
    ),
    e("JwtRule", "fromHeaders", JWT_E2E),
    e("JwtRule", "fromParams", JWT_E2E),
    e("JwtRule", "fromCookies", JWT_E2E),
    e("JwtRule", "outputPayloadToHeader", JWT_E2E),
    en(
        "JwtRule",
        "forwardOriginalToken",
        "false (the default) removes the token's header before the application",
        JWT_E2E,
    ),
    e("JwtRule", "outputClaimToHeaders", JWT_E2E),
    w(
        "JwtRule",
        "timeout",
        "the `jwksUri` fetch timeout is fixed at 5 s",
    ),
    e("JwtHeader", "name", JWT_E2E),
    e("JwtHeader", "prefix", JWT_E2E),
    e("ClaimToHeader", "header", JWT_E2E),
    e("ClaimToHeader", "claim", JWT_E2E),
    // ServiceEntry
    en(
        "ServiceEntrySpec",
        "hosts",
        "each host as written; wildcard hosts are refused",
        SERVICE_ENTRY,
    ),
    en(
        "ServiceEntrySpec",
        "addresses",
        "IP addresses (the service's virtual IPs for captured traffic); address ranges are refused",
        SERVICE_ENTRY,
    ),
    e("ServiceEntrySpec", "ports", SERVICE_ENTRY),
    en(
        "ServiceEntrySpec",
        "location",
        "MESH_EXTERNAL (the default): each endpoint at its own address and port, without mesh mTLS or mesh headers; \
         MESH_INTERNAL: over mesh mTLS to the endpoint's sidecar",
        &[
            "crates/mesh-proxy/tests/service_entry::a_static_entry_routes_outside_the_mesh_with_subsets_and_faults",
            "crates/mesh-proxy/tests/service_entry::a_mesh_internal_entry_goes_over_mtls_to_its_sidecar",
        ],
    ),
    en(
        "ServiceEntrySpec",
        "resolution",
        "STATIC, DNS and DNS_ROUND_ROBIN (names resolved off the request path, TTLs honoured, the last answer kept when a lookup fails); \
         NONE (also when unset) with `addresses`: a connection goes to the address it was sent to, a request by name to one of them; \
         NONE without addresses (every address on the ports) is refused",
        &[
            "crates/mesh-proxy/tests/service_entry::a_static_entry_routes_outside_the_mesh_with_subsets_and_faults",
            "crates/mesh-proxy/tests/service_entry::a_dns_entry_follows_its_name_and_keeps_the_last_answer",
            "crates/mesh-proxy/src/plan::a_none_entry_sends_each_connection_to_the_address_it_was_sent_to",
            "crates/mesh-api/tests/api_coverage::values_isthmus_cannot_honour_are_refused",
        ],
    ),
    e("ServiceEntrySpec", "endpoints", SERVICE_ENTRY),
    en(
        "ServiceEntrySpec",
        "workloadSelector",
        "MESH_INTERNAL with STATIC (or unset) resolution: the pods (by readiness) and WorkloadEntries of the entry's \
         namespace whose labels match are its endpoints, reached at their sidecars, and are exported to linked \
         clusters as a Service's are (a cluster without the entry still routes to them); in a sidecar's config \
         file, where no workloads are known, it is refused",
        &[
            "discovery/tests/federation::a_service_entry_selecting_workloads_is_served_and_exported_like_a_service",
        ],
    ),
    en(
        "ServiceEntrySpec",
        "exportTo",
        "`.`, `*` and namespace names, as for VirtualServices",
        FILE_REGISTRY,
    ),
    en(
        "ServiceEntrySpec",
        "subjectAltNames",
        "MESH_INTERNAL: the endpoint's mesh certificate must name one of these SPIFFE IDs, checked on every new \
         connection and again before a pooled one is reused (a narrowed list retires the others); other values, or \
         MESH_EXTERNAL (use the DestinationRule's tls.subjectAltNames), are refused",
        &[
            "crates/mesh-proxy/tests/service_entry::a_mesh_internal_entry_goes_over_mtls_to_its_sidecar",
        ],
    ),
    en(
        "Port",
        "number",
        "ServiceEntry ports and Gateway server ports",
        &[
            "crates/mesh-proxy/tests/service_entry::a_static_entry_routes_outside_the_mesh_with_subsets_and_faults",
            "crates/mesh-proxy/tests/ingress::the_ingress_gateway_serves_gateway_ports_to_mesh_services",
        ],
    ),
    en(
        "Port",
        "protocol",
        "ServiceEntry: HTTP, HTTP2 and GRPC are routed as HTTP; TCP, TLS, HTTPS and MONGO as opaque TCP. \
         Gateway servers: HTTP, HTTP2, GRPC, HTTPS, TLS (PASSTHROUGH) and TCP are served; MONGO and GRPC-WEB are refused",
        &[
            "crates/mesh-proxy/tests/service_entry::a_static_entry_routes_outside_the_mesh_with_subsets_and_faults",
            "crates/mesh-proxy/tests/ingress::the_ingress_gateway_serves_gateway_ports_to_mesh_services",
            "crates/mesh-api/tests/api_coverage::refused_fields_are_refused_where_they_appear_and_warned_ones_reported",
        ],
    ),
    e("Port", "name", SERVICE_ENTRY),
    en(
        "Port",
        "targetPort",
        "ServiceEntry ports; refused on Gateway servers (the gateway's --port flag maps a server port)",
        SERVICE_ENTRY,
    ),
    // Gateway (served by the ingress gateway)
    e("GatewaySpec", "servers", INGRESS),
    en(
        "GatewaySpec",
        "selector",
        "matches the labels of ingress gateway workloads in any namespace, as Istio's default",
        INGRESS,
    ),
    e("Server", "port", INGRESS),
    r(
        "Server",
        "bind",
        "the ingress gateway binds every server port on one address (its --address flag); remove `bind`",
    ),
    en(
        "Server",
        "hosts",
        "`host`, `*/host`, `./host` and `namespace/host`, with `*` and `*.domain` wildcards",
        INGRESS,
    ),
    en(
        "Server",
        "tls",
        "`httpsRedirect` on HTTP servers; SIMPLE and MUTUAL termination on HTTPS servers",
        INGRESS_PLAN,
    ),
    r(
        "Server",
        "defaultEndpoint",
        "on a Gateway server it has no meaning in Isthmus (Istio reads it for Sidecar ingress listeners, where Isthmus honours it); route with the VirtualServices bound to the Gateway",
    ),
    en(
        "Server",
        "name",
        "names the server in /config_dump",
        INGRESS,
    ),
    e("ServerTlsSettings", "httpsRedirect", INGRESS_PLAN),
    en(
        "ServerTlsSettings",
        "mode",
        "SIMPLE and MUTUAL on HTTPS servers, PASSTHROUGH on TLS and HTTPS servers (routed by `tls` routes); \
         ISTIO_MUTUAL and OPTIONAL_MUTUAL are refused, and AUTO_PASSTHROUGH (Istio's east-west Gateway) is refused as not needed",
        &[
            "crates/mesh-proxy/tests/ingress::https_servers_terminate_tls_chosen_by_sni",
            "crates/mesh-proxy/tests/ingress::passthrough_and_tcp_servers_route_connections_to_mesh_services",
        ],
    ),
    en(
        "ServerTlsSettings",
        "serverCertificate",
        "a PEM file the gateway reads",
        INGRESS_TLS,
    ),
    en(
        "ServerTlsSettings",
        "privateKey",
        "a PEM file the gateway reads",
        INGRESS_TLS,
    ),
    en(
        "ServerTlsSettings",
        "caCertificates",
        "a PEM file: MUTUAL requires a client certificate it signs",
        INGRESS_TLS,
    ),
    en(
        "ServerTlsSettings",
        "credentialName",
        "a Secret of the gateway's namespace (kubernetes.io/tls `tls.crt`, `tls.key`, `ca.crt`, or generic `cert`, `key`, \
         `cacert`), delivered by discovery over the config stream and held in memory; a server waits (not served) until it arrives",
        &[
            "crates/mesh-proxy/tests/ingress::https_servers_terminate_tls_chosen_by_sni",
            "discovery/tests/file_registry::a_credential_secret_reaches_the_gateway_that_names_it_only",
        ],
    ),
    r("ServerTlsSettings", "credentialNames", GATEWAY_TLS_LATER),
    r("ServerTlsSettings", "subjectAltNames", GATEWAY_TLS_LATER),
    r(
        "ServerTlsSettings",
        "verifyCertificateSpki",
        GATEWAY_TLS_LATER,
    ),
    r(
        "ServerTlsSettings",
        "verifyCertificateHash",
        GATEWAY_TLS_LATER,
    ),
    en(
        "ServerTlsSettings",
        "minProtocolVersion",
        "TLSV1_2, TLSV1_3, TLS_AUTO; TLSV1_0 and TLSV1_1 are refused (rustls serves 1.2 and 1.3 only)",
        INGRESS_TLS,
    ),
    en(
        "ServerTlsSettings",
        "maxProtocolVersion",
        "TLSV1_2, TLSV1_3, TLS_AUTO; TLSV1_0 and TLSV1_1 are refused",
        INGRESS_TLS,
    ),
    r("ServerTlsSettings", "cipherSuites", GATEWAY_TLS_LATER),
    r("ServerTlsSettings", "caCrl", GATEWAY_TLS_LATER),
    // Sidecar
    en(
        "SidecarSpec",
        "workloadSelector",
        "a workload's own Sidecar over its namespace's over the root namespace's, as in Istio",
        SIDECAR,
    ),
    e("LabelSelector", "labels", SIDECAR),
    en(
        "SidecarSpec",
        "ingress",
        "a listener per workload port: mesh and permitted plaintext traffic to that port goes to the application at \
         its `defaultEndpoint` port, handled as the listener's protocol; policies see the listener's port",
        SIDECAR_INGRESS,
    ),
    e("IstioIngressListener", "port", SIDECAR_INGRESS),
    en(
        "IstioIngressListener",
        "defaultEndpoint",
        "`127.0.0.1:PORT` or `0.0.0.0:PORT` (the workload itself); Unix sockets and other addresses are refused",
        SIDECAR_INGRESS,
    ),
    r(
        "IstioIngressListener",
        "bind",
        "the sidecar takes inbound traffic on its one inbound port; remove `bind`",
    ),
    r(
        "IstioIngressListener",
        "captureMode",
        "capture is set up by the init container for the whole pod; remove `captureMode`",
    ),
    r(
        "IstioIngressListener",
        "tls",
        "inbound traffic is mesh mTLS (PeerAuthentication decides plaintext); TLS of the application's own is not terminated here",
    ),
    r("IstioIngressListener", "connectionPool", CONNECTION_TUNING),
    en(
        "SidecarSpec",
        "egress",
        "one listener's hosts (or several, joined): services outside them are not compiled by the proxy, so they are \
         unknown to it (404, the outbound traffic policy for captured traffic, no DNS answer), and discovery does not send them",
        SIDECAR,
    ),
    e("SidecarSpec", "outboundTrafficPolicy", SIDECAR),
    r("SidecarSpec", "inboundConnectionPool", CONNECTION_TUNING),
    en(
        "IstioEgressListener",
        "hosts",
        "`namespace/dnsName` with `.`, `*` and `~`: the proxy compiles only the admitted services, and discovery sends it only those",
        &[
            "crates/mesh-proxy/tests/sidecar_resource::a_sidecar_resource_scopes_what_a_workload_reaches",
            "discovery/tests/file_registry::a_sidecar_resource_scopes_what_discovery_sends_each_proxy",
        ],
    ),
    r(
        "IstioEgressListener",
        "port",
        "egress listeners per port are not built; give one listener without a port",
    ),
    r(
        "IstioEgressListener",
        "bind",
        "the sidecar's outbound listener is not rebound per Sidecar; remove `bind`",
    ),
    r(
        "IstioEgressListener",
        "captureMode",
        "capture is set up by the init container for the whole pod; remove `captureMode`",
    ),
    e("OutboundTrafficPolicy", "mode", SIDECAR),
    r(
        "OutboundTrafficPolicy",
        "egressProxy",
        "sending unknown traffic to an egress proxy is not built; use ALLOW_ANY or REGISTRY_ONLY",
    ),
    // WorkloadEntry (also ServiceEntry endpoints)
    e("WorkloadEntrySpec", "address", FILE_REGISTRY),
    e("WorkloadEntrySpec", "ports", FILE_REGISTRY),
    e("WorkloadEntrySpec", "labels", FILE_REGISTRY),
    en(
        "WorkloadEntrySpec",
        "network",
        "endpoints on another network are reached through that network's east-west gateway",
        FEDERATION,
    ),
    e("WorkloadEntrySpec", "locality", FILE_REGISTRY),
    e("WorkloadEntrySpec", "weight", FEDERATION),
    e("WorkloadEntrySpec", "serviceAccount", FEDERATION),
    // PeerAuthentication
    e("PeerAuthenticationSpec", "selector", PEER_AUTHN),
    e("PeerAuthenticationSpec", "mtls", PEER_AUTHN),
    e("PeerAuthenticationSpec", "portLevelMtls", PEER_AUTHN),
    e("PeerMtls", "mode", PEER_AUTHN),
    e("WorkloadSelector", "matchLabels", AUTHZ_E2E),
    // AuthorizationPolicy
    e("AuthorizationPolicySpec", "selector", AUTHZ_E2E),
    r(
        "AuthorizationPolicySpec",
        "targetRef",
        "it binds a policy to a gateway or waypoint, which Isthmus does not run; select the workloads with `selector.matchLabels` instead",
    ),
    r(
        "AuthorizationPolicySpec",
        "targetRefs",
        "it binds a policy to gateways or waypoints, which Isthmus does not run; select the workloads with `selector.matchLabels` instead",
    ),
    e("AuthorizationPolicySpec", "rules", AUTHZ_E2E),
    en(
        "AuthorizationPolicySpec",
        "action",
        "ALLOW, DENY, AUDIT; CUSTOM is refused (no external authorizer)",
        AUTHZ_E2E,
    ),
    r(
        "AuthorizationPolicySpec",
        "provider",
        "it names an external authorizer for CUSTOM, which Isthmus does not have; express the policy with ALLOW or DENY rules",
    ),
    e("Rule", "from", AUTHZ_PRINCIPAL),
    e("Rule", "to", AUTHZ_PATHS),
    e("Rule", "when", AUTHZ_WHEN),
    e("RuleFrom", "source", AUTHZ_PRINCIPAL),
    e("RuleTo", "operation", AUTHZ_PATHS),
    en(
        "Source",
        "principals",
        "trust-domain aliases of the local domain match too",
        AUTHZ_PRINCIPAL,
    ),
    e("Source", "notPrincipals", AUTHZ_PRINCIPAL),
    en(
        "Source",
        "requestPrincipals",
        "`iss/sub` of the request's JWT verified by a RequestAuthentication; none without a token, and none on TCP (an ALLOW rule then misses, a DENY rule matches)",
        JWT_AUTHZ,
    ),
    e(
        "Source",
        "notRequestPrincipals",
        &["crates/mesh-proxy/src/authz/mod::request_principals_need_a_verified_token"],
    ),
    e("Source", "namespaces", AUTHZ_PRINCIPAL),
    e(
        "Source",
        "notNamespaces",
        &["crates/mesh-proxy/src/authz/mod::negated_source_fields"],
    ),
    e(
        "Source",
        "ipBlocks",
        &["crates/mesh-proxy/src/authz/mod::negated_source_fields"],
    ),
    e(
        "Source",
        "notIpBlocks",
        &["crates/mesh-proxy/src/authz/mod::negated_source_fields"],
    ),
    en(
        "Source",
        "remoteIpBlocks",
        "the client address is the peer, or the X-Forwarded-For entry left by the trusted proxies (--num-trusted-proxies)",
        AUTHZ_FAIL_CLOSED,
    ),
    e("Source", "notRemoteIpBlocks", AUTHZ_FAIL_CLOSED),
    en(
        "Source",
        "serviceAccounts",
        "NAMESPACE/NAME in any trust domain the mesh accepts; not with principals or namespaces",
        AUTHZ_SA,
    ),
    e("Source", "notServiceAccounts", AUTHZ_SA),
    en(
        "Operation",
        "hosts",
        "case-insensitive, with or without the port",
        AUTHZ_PATHS,
    ),
    e(
        "Operation",
        "notHosts",
        &["crates/mesh-proxy/src/authz/mod::negated_operation_fields"],
    ),
    e("Operation", "ports", AUTHZ_TCP),
    e(
        "Operation",
        "notPorts",
        &["crates/mesh-proxy/src/authz/mod::negated_operation_fields"],
    ),
    e("Operation", "methods", AUTHZ_E2E),
    e(
        "Operation",
        "notMethods",
        &["crates/mesh-proxy/src/authz/mod::negated_operation_fields"],
    ),
    en(
        "Operation",
        "paths",
        "matched after path normalization (--path-normalization, BASE by default); templates {*} and {**}",
        &[
            "crates/mesh-proxy/tests/http_routing::authorization_by_service_account_and_normalized_path",
        ],
    ),
    e(
        "Operation",
        "notPaths",
        &["crates/mesh-proxy/src/authz/mod::negated_operation_fields"],
    ),
    en(
        "Condition",
        "key",
        "request.headers[…], source.ip, remote.ip, source.namespace, source.principal, destination.ip, destination.port, connection.sni, \
         request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[…] (nested [a][b]; a list claim \
         matches on any item); experimental.* is refused",
        &[
            "crates/mesh-proxy/src/authz/mod::connection_conditions_fire",
            "crates/mesh-proxy/src/authz/mod::request_auth_conditions_read_the_verified_claims",
        ],
    ),
    e("Condition", "values", AUTHZ_WHEN),
    e("Condition", "notValues", AUTHZ_WHEN),
];
