//! RequestAuthentication through real sidecars, with ES256 tokens signed in the test:
//! a valid token names the caller (`iss/sub`) for AuthorizationPolicy and yields the
//! rule's header outputs; forged, expired, wrong-issuer and wrong-audience tokens are
//! answered 401 before any policy; no token passes unauthenticated; a rotated key set
//! refuses the old key's tokens.

mod support;

use std::net::SocketAddr;

/// What the application reports: the token, the claim and the payload headers.
const SEEN: &[&str] = &["authorization", "x-user", "x-jwt-payload"];

async fn get(sidecar: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    support::get(sidecar, "reviews:9080", path, headers).await
}

use support::{ISSUER, Key};

/// A productpage client in shop whose reviews endpoint is `server`.
async fn client_of(mesh: &support::Mesh, server: &mesh_proxy::Sidecar) -> mesh_proxy::Sidecar {
    support::sidecar(
        mesh,
        &format!(
            "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: productpage-1, namespace: shop, serviceAccount: productpage}}
services:
- name: reviews
  namespace: shop
  ports: [{{name: http, port: 9080}}]
  endpoints: [{{address: 127.0.0.1, inboundPort: {}}}]
",
            server.inbound_addr.port()
        ),
        "shop",
        "productpage",
    )
    .await
}

/// The reviews sidecar's config for its app on `app`, with the RequestAuthentication
/// rules `rules` (the YAML after `jwtRules:`).
fn reviews_with_rules(app: u16, rules: &str) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: reviews-1, namespace: shop, serviceAccount: reviews}}
services:
- {{name: reviews, namespace: shop, ports: [{{name: http, port: 9080, targetPort: {app}}}]}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews, namespace: shop}}
spec:
  jwtRules:{rules}
"
    )
}

#[tokio::test]
async fn tokens_are_verified_before_policies_and_name_the_caller() {
    // The server sidecar's config: its app, the RequestAuthentication with `jwks`, and
    // a policy that lets only alice's token reach /admin.
    let server_config = |app: u16, jwks: &serde_json::Value| {
        format!(
            "apiVersion: isthmus.dev/v1alpha1
kind: ProxyConfig
node: {{name: reviews-1, namespace: shop, serviceAccount: reviews, labels: {{app: reviews}}}}
services:
- {{name: reviews, namespace: shop, ports: [{{name: http, port: 9080, targetPort: {app}}}]}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [reviews]
    jwks: '{jwks}'
    fromHeaders: [{{name: authorization, prefix: 'Bearer '}}, {{name: x-token}}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admin, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  rules:
  - to: [{{operation: {{notPaths: [/admin]}}}}]
  - from: [{{source: {{requestPrincipals: ['{ISSUER}/alice']}}}}]
    to: [{{operation: {{paths: [/admin]}}}}]
"
        )
    };
    let mesh = support::Mesh::new();
    let (k1, k2, stranger) = (Key::new("k1"), Key::new("k2"), Key::new("k1"));
    let app = support::header_echo("app", "127.0.0.1:0".parse().unwrap(), SEEN)
        .await
        .port();
    let jwks = |keys: &[&Key]| serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    let server =
        support::sidecar(&mesh, &server_config(app, &jwks(&[&k1])), "shop", "reviews").await;
    let client = client_of(&mesh, &server).await;
    let out = client.outbound_addr;
    let alice = k1.sign(serde_json::json!({"sub": "alice"}));
    let bearer = |t: &str| format!("Bearer {t}");

    // No token: on, unauthenticated; /admin needs alice.
    assert_eq!(
        get(out, "/", &[]).await,
        (200, "app authorization=- x-user=- x-jwt-payload=-".into())
    );
    assert_eq!(get(out, "/admin", &[]).await.0, 403);
    // A valid token: its header is removed (forwardOriginalToken false), the payload
    // and the `sub` claim are passed on, and alice reaches /admin.
    let auth = bearer(&alice);
    let (status, body) = get(out, "/", &[("authorization", &auth)]).await;
    assert_eq!(status, 200);
    let payload = alice.split('.').nth(1).unwrap();
    assert_eq!(
        body,
        format!("app authorization=- x-user=alice x-jwt-payload={payload}")
    );
    assert_eq!(get(out, "/admin", &[("authorization", &auth)]).await.0, 200);
    let bob = bearer(&k1.sign(serde_json::json!({"sub": "bob"})));
    assert_eq!(get(out, "/admin", &[("authorization", &bob)]).await.0, 403);
    // The other locations: a header without prefix, a query parameter, a cookie.
    assert_eq!(get(out, "/admin", &[("x-token", &alice)]).await.0, 200);
    assert_eq!(get(out, &format!("/admin?token={alice}"), &[]).await.0, 200);
    let cookie = format!("theme=dark; session={alice}");
    assert_eq!(get(out, "/admin", &[("cookie", &cookie)]).await.0, 200);

    // Refused tokens: 401 with Envoy's reason, before any policy (even on open paths).
    let refused = [
        (stranger.sign(serde_json::json!({"sub": "alice"})), "Jwt verification fails"),
        (
            k1.sign(serde_json::json!({"sub": "alice", "exp": jsonwebtoken::get_current_timestamp() - 3600})),
            "Jwt is expired",
        ),
        (
            k1.sign(serde_json::json!({"sub": "alice", "iss": "https://other.example"})),
            "Jwt issuer is not configured",
        ),
        (
            k1.sign(serde_json::json!({"sub": "alice", "aud": "ratings"})),
            "Audiences in Jwt are not allowed",
        ),
        ("not.a-token".to_owned(), "Jwt is not in the form of Header.Payload.Signature"),
    ];
    for (token, reason) in refused {
        let (status, body) = get(out, "/", &[("authorization", &bearer(&token))]).await;
        assert_eq!((status, body.as_str()), (401, reason), "{token}");
    }

    // The issuer rotates to k2: k1's tokens are refused, k2's accepted.
    server
        .store
        .apply_yaml(&server_config(app, &jwks(&[&k2])), "rotated")
        .unwrap();
    assert_eq!(get(out, "/", &[("authorization", &auth)]).await.0, 401);
    let rotated = bearer(&k2.sign(serde_json::json!({"sub": "alice"})));
    assert_eq!(
        get(out, "/admin", &[("authorization", &rotated)]).await.0,
        200
    );

    // A key set that does not parse is refused with its field; the last one stays.
    let err = server
        .store
        .apply_yaml(
            &server_config(app, &serde_json::json!({"keys": [{"kty": "EC"}]})),
            "broken",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.jwtRules[0].jwks"), "{err}");
    assert_eq!(
        get(out, "/admin", &[("authorization", &rotated)]).await.0,
        200
    );
}

#[tokio::test]
async fn keys_named_by_jwks_uri_are_fetched() {
    let mesh = support::Mesh::new();
    let k1 = Key::new("k1");
    let keys = std::sync::Arc::new(std::sync::Mutex::new(Some(
        serde_json::json!({"keys": [k1.jwk()]}).to_string(),
    )));
    let idp = support::text_server(keys.clone()).await;
    let app = support::header_echo("app", "127.0.0.1:0".parse().unwrap(), SEEN)
        .await
        .port();
    // Two issuers: one whose jwksUri answers, one whose does not.
    let server = support::sidecar(
        &mesh,
        &reviews_with_rules(
            app,
            &format!(
                "
  - {{issuer: {ISSUER}, jwksUri: 'http://{idp}/keys'}}
  - {{issuer: https://down.example, jwksUri: 'http://127.0.0.1:1/keys'}}"
            ),
        ),
        "shop",
        "reviews",
    )
    .await;
    let client = client_of(&mesh, &server).await;
    let out = client.outbound_addr;
    let alice = format!("Bearer {}", k1.sign(serde_json::json!({"sub": "alice"})));
    // Fetched in the background: the issuer's tokens are accepted once it has been.
    let mut status = 0;
    for _ in 0..100 {
        status = get(out, "/", &[("authorization", &alice)]).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    // The other issuer's key set cannot be fetched: its tokens are refused, and the
    // failure is reported; the fetched keys stay in use when the IdP goes away.
    let down = k1.sign(serde_json::json!({"sub": "carol", "iss": "https://down.example"}));
    let (status, body) = get(out, "/", &[("authorization", &format!("Bearer {down}"))]).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "Jwks remote fetch is failed")
    );
    *keys.lock().unwrap() = None;
    assert_eq!(get(out, "/", &[("authorization", &alice)]).await.0, 200);
    // (The failing fetch may still be on its way: it is reported when it has failed.)
    let mut report = server.store.jwks().report();
    for _ in 0..40 {
        if report.iter().any(|(_, _, error)| error.is_some()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        report = server.store.jwks().report();
    }
    assert_eq!(report.len(), 2, "{report:?}");
    let down_uri = report
        .iter()
        .find(|(uri, ..)| uri.starts_with("http://127.0.0.1:1/"));
    assert!(
        down_uri.is_some_and(|(_, held, error)| !held && error.is_some()),
        "{report:?}"
    );
    let idp_uri = report
        .iter()
        .find(|(uri, ..)| uri.ends_with(&format!("{idp}/keys")));
    assert!(idp_uri.is_some_and(|(_, held, _)| *held), "{report:?}");
}

/// A rule with neither `jwks` nor `jwksUri` finds its keys by OpenID discovery: the
/// issuer's `/.well-known/openid-configuration` names the key set.
#[tokio::test]
async fn keys_are_found_by_openid_discovery_from_the_issuer() {
    let mesh = support::Mesh::new();
    let k1 = Key::new("k1");
    let idp = support::pages(vec![
        (
            "/.well-known/openid-configuration",
            r#"{"issuer": "http://{addr}", "jwks_uri": "http://{addr}/oauth2/keys"}"#.to_owned(),
        ),
        (
            "/oauth2/keys",
            serde_json::json!({"keys": [k1.jwk()]}).to_string(),
        ),
    ])
    .await;
    let issuer = format!("http://{idp}");
    let app = support::header_echo("app", "127.0.0.1:0".parse().unwrap(), SEEN)
        .await
        .port();
    let server = support::sidecar(
        &mesh,
        &reviews_with_rules(app, &format!(" [{{issuer: '{issuer}'}}]")),
        "shop",
        "reviews",
    )
    .await;
    let client = client_of(&mesh, &server).await;
    let token = k1.sign(serde_json::json!({"sub": "alice", "iss": issuer}));
    let alice = format!("Bearer {token}");
    let mut status = 0;
    for _ in 0..100 {
        status = get(client.outbound_addr, "/", &[("authorization", &alice)])
            .await
            .0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "the issuer's keys were found and fetched");
    let report = server.store.jwks().report();
    assert!(
        report
            .iter()
            .any(|(uri, held, _)| uri.ends_with("/.well-known/openid-configuration") && *held),
        "{report:?}"
    );
    // A forged token (another key) is still refused.
    let forged = Key::new("k1").sign(serde_json::json!({"sub": "eve", "iss": issuer}));
    let (status, _) = get(
        client.outbound_addr,
        "/",
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(status, 401);
}

/// The destination's answer as `meshctl diagnose` gets it through discovery: the same
/// checks, in the same order, as a request taken in. A valid token names the request
/// principal a policy admits; a token of another issuer is 401 before any policy; no
/// token meets the policy's 403.
#[test]
fn the_destination_verdict_checks_the_token_before_the_policies() {
    let key = Key::new("k1");
    let jwks = serde_json::json!({"keys": [key.jwk()]}).to_string();
    let docs = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews, namespace: shop}}
spec:
  jwtRules: [{{issuer: {ISSUER:?}, jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: signed-in, namespace: shop}}
spec:
  rules: [{{from: [{{source: {{requestPrincipals: [\"*\"]}}}}]}}]
"
    );
    let resources: Vec<mesh_api::Resource> = mesh_api::parse_resources(&docs)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let refs: Vec<&mesh_api::Resource> = resources.iter().collect();
    let node = mesh_proto::model::Node {
        name: "reviews-1".into(),
        namespace: "shop".into(),
        ..Default::default()
    };
    let (_, authz) = mesh_proxy::state::security_for(&refs, &node);
    let specs: Vec<_> = resources
        .iter()
        .filter_map(|r| match r {
            mesh_api::Resource::RequestAuthentication(ra) => {
                Some(("shop".to_owned(), "reviews".to_owned(), &ra.spec))
            }
            _ => None,
        })
        .collect();
    let jwt = mesh_proxy::jwt::JwtAuthn::compile(&specs, &node).unwrap();
    let verdict = |token: Option<String>| {
        let mut req = http::Request::get("/reviews/1").header("host", "reviews:9080");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let parts = req.body(()).unwrap().into_parts().0;
        mesh_proxy::inbound::verdict(&jwt, &authz, &parts, "td/ns/shop/sa/productpage", 9080)
    };
    let signed = verdict(Some(key.sign(serde_json::json!({"sub": "alice"}))));
    assert_eq!(signed.refusal, None, "{signed:?}");
    assert_eq!(
        signed.request_principal.as_deref(),
        Some(format!("{ISSUER}/alice").as_str())
    );
    let stranger = verdict(Some(
        key.sign(serde_json::json!({"sub": "alice", "iss": "https://other.example"})),
    ));
    assert_eq!(
        stranger.refusal,
        Some((401, "Jwt issuer is not configured".into())),
        "{stranger:?}"
    );
    let anonymous = verdict(None);
    let (status, why) = anonymous.refusal.unwrap();
    assert_eq!(status, 403);
    assert!(why.contains("rbac_access_denied"), "{why}");
}
