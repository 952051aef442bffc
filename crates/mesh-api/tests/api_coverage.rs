//! The coverage contract holds: every field is classified, every enforced field
//! names tests that exist and mention it, refused fields are refused where they
//! appear, and docs/api-coverage.md is what the table generates.

use mesh_api::coverage::{self, Support};
use testbed::workspace_root;

#[test]
fn every_field_of_every_kind_is_classified() {
    let mut missing = Vec::new();
    let mut reachable = std::collections::BTreeSet::new();
    for (kind, schema) in coverage::kinds() {
        if coverage::kind_refused(kind).is_some() {
            continue;
        }
        for f in coverage::reachable_fields(&schema) {
            if coverage::lookup(&f.ty, &f.field).is_none() {
                missing.push(format!("{kind}: {}.{}", f.ty, f.field));
            }
            reachable.insert((f.ty, f.field));
        }
    }
    assert!(
        missing.is_empty(),
        "classify these fields in crates/mesh-api/src/coverage_table.rs (enforced with tests, refused or warned):\n{}",
        missing.join("\n")
    );
    let stale: Vec<_> = coverage::all()
        .iter()
        .filter(|f| !reachable.contains(&(f.ty.to_owned(), f.field.to_owned())))
        .map(|f| format!("{}.{}", f.ty, f.field))
        .collect();
    assert!(
        stale.is_empty(),
        "entries for fields no kind reaches: {stale:?}"
    );
}

/// The body of `fn NAME` in `text`: up to the closing brace at the indentation of
/// its `fn` line, so that a later test's text never counts for this one.
fn body<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let at = text.find(&format!("fn {name}("))?;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent: String = text[line_start..]
        .chars()
        .take_while(|c| *c == ' ')
        .collect();
    let rest = &text[at..];
    let end = rest.find(&format!("\n{indent}}}\n")).unwrap_or(rest.len());
    Some(&rest[..end])
}

#[test]
fn enforced_fields_name_tests_that_exist_and_mention_them() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for f in coverage::all() {
        match f.support {
            Support::Enforced if f.tests.is_empty() => {
                problems.push(format!("{}.{}: enforced without a test", f.ty, f.field));
            }
            Support::Refused | Support::Warned if f.note.is_empty() => {
                problems.push(format!(
                    "{}.{}: {} without a reason",
                    f.ty,
                    f.field,
                    f.support.as_str()
                ));
            }
            _ => {}
        }
        for t in f.tests {
            let (file, func) = t.split_once("::").expect("FILE::FUNCTION");
            let path = root.join(format!("{file}.rs"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                problems.push(format!(
                    "{}.{}: {} does not exist",
                    f.ty,
                    f.field,
                    path.display()
                ));
                continue;
            };
            match body(&text, func) {
                None => problems.push(format!("{}.{}: no fn {func} in {file}.rs", f.ty, f.field)),
                Some(b) if !b.contains(f.field) => problems.push(format!(
                    "{}.{}: {file}.rs::{func} does not mention `{}`",
                    f.ty, f.field, f.field
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn api_coverage_doc_is_current() {
    let path = workspace_root().join(coverage::DOC_FILE);
    let generated = coverage::markdown();
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is stale; regenerate it with `{}`",
        coverage::DOC_FILE,
        coverage::REGENERATE
    );
    assert!(!generated.contains("unclassified"));
}

#[test]
fn refused_fields_are_refused_where_they_appear_and_warned_ones_reported() {
    let err = mesh_api::parse_resource(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
  - corsPolicy: {allowOrigins: [{exact: 'https://a.example'}]}
    route: [{destination: {host: reviews}, headers: {request: {set: {x-a: b}}}}]
",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("VirtualService shop/reviews"), "{err}");
    assert!(
        err.contains("spec.http[1].corsPolicy: is not supported: CORS"),
        "{err}"
    );
    assert!(
        err.contains("spec.http[1].route[0].headers: is not supported"),
        "{err}"
    );

    let spec = serde_json::json!({
        "host": "reviews",
        "trafficPolicy": {"outlierDetection": {"interval": "5s"}, "portLevelSettings": [
            {"port": {"number": 9080}, "connectionPool": {"tcp": {"tcpKeepalive": {"time": "7200s"}}}}
        ]},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer": {"warmupDurationSecs": "10s"}}}]
    });
    let (refused, warned) = coverage::check("DestinationRule", &spec);
    assert!(refused.is_empty(), "{refused:?}");
    let paths: Vec<_> = warned.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.subsets[0].trafficPolicy.loadBalancer.warmupDurationSecs",
            "spec.trafficPolicy.outlierDetection.interval",
            "spec.trafficPolicy.portLevelSettings[0].connectionPool.tcp.tcpKeepalive",
            "spec.trafficPolicy.portLevelSettings[0].connectionPool.tcp.tcpKeepalive.time",
        ]
    );

    // Gateway servers Isthmus does not serve yet are refused by value.
    let err = mesh_api::parse_resource(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x, namespace: shop}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 27017, name: mongo, protocol: MONGO}, hosts: ['*']}]}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.servers[0].port.protocol: MONGO"),
        "{err}"
    );
    // Refused fields of kinds that are enforced otherwise.
    let err = mesh_api::parse_resource(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: x, namespace: shop}\nspec: {targetRef: {kind: Service, name: reviews}, jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/keys}]}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("spec.targetRef: is not supported"), "{err}");
    let err = mesh_api::parse_resource(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x, namespace: shop}\nspec: {host: reviews, workloadSelector: {matchLabels: {app: vm}}}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.workloadSelector: is not supported"),
        "{err}"
    );
    // A ServiceEntry's workloadSelector selects mesh workloads: MESH_EXTERNAL (the
    // default) is refused, naming the field to set.
    let err = mesh_api::parse_resource(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, workloadSelector: {labels: {app: vm}}}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "spec.location: a workloadSelector selects mesh workloads; set location: MESH_INTERNAL"
        ),
        "{err}"
    );
    let err = mesh_api::parse_resource(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: shop}\nspec: {jwtRules: [{issuer: a}]}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.jwtRules[0].issuer: \"a\" is not an http(s) URL"),
        "{err}"
    );
}

#[test]
fn values_isthmus_cannot_honour_are_refused() {
    for (yaml, part) in [
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x, namespace: shop}\nspec: {host: x, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, sni: x.example}}}\n",
            "spec.trafficPolicy.tls.sni: applies to TLS this proxy opens",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x, namespace: shop}\nspec: {host: x, subsets: [{name: v1, labels: {v: '1'}, trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: MUTUAL}}]}}]}\n",
            "spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.mode: MUTUAL needs clientCertificate and privateKey",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [x], gateways: [a/b/c], http: [{route: [{destination: {host: x}}]}]}\n",
            "spec.gateways[0]: gateway \"a/b/c\" is not `mesh`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [x], http: [{match: [{gateways: [Ingress]}], route: [{destination: {host: x}}]}]}\n",
            "spec.http[0].match[0].gateways[0]",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [x], tls: [{match: [{sniHosts: [x], gateways: [In/gress]}], route: [{destination: {host: x}}]}]}\n",
            "spec.tls[0].match[0].gateways[0]",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [x], tcp: [{match: [{port: 5432, gateways: [a/b/c]}], route: [{destination: {host: x}}]}]}\n",
            "spec.tcp[0].match[0].gateways[0]",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], resolution: NONE}\n",
            "spec.resolution: NONE (also when unset) needs the entry's `addresses`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}]}\n",
            "spec.resolution: NONE (also when unset) needs the entry's `addresses`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 10.0.0.1}], subjectAltNames: [spiffe://td/ns/a/sa/b]}\n",
            "spec.subjectAltNames: they are checked against mesh endpoints' certificates (location: MESH_INTERNAL)",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [a.example.com], location: MESH_INTERNAL, ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 10.0.0.1}], subjectAltNames: [db.example.com]}\n",
            "spec.subjectAltNames[0]: \"db.example.com\" is not a SPIFFE ID",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x, namespace: shop}\nspec: {hosts: ['*.example.com'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 10.0.0.1}]}\n",
            "spec.hosts[0]: wildcard host",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x, namespace: shop}\nspec: {hosts: [a.example.com], addresses: [10.0.0.0/24], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 10.0.0.1}]}\n",
            "spec.addresses[0]",
        ),
    ] {
        let err = mesh_api::parse_resource(yaml).unwrap_err().to_string();
        assert!(err.contains(part), "{err}");
    }
    for gateways in ["[mesh]", "[ingress, shop/ingress, mesh]"] {
        mesh_api::parse_resource(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: x, namespace: shop}}\nspec: {{hosts: [x], gateways: {gateways}, http: [{{route: [{{destination: {{host: x}}}}]}}]}}\n"
        ))
        .unwrap();
    }
}
