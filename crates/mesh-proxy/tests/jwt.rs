//! RequestAuthentication through real sidecars, with ES256 tokens signed in the test:
//! a valid token names the caller (`iss/sub`) for AuthorizationPolicy and yields the
//! rule's header outputs; forged, expired, wrong-issuer and wrong-audience tokens are
//! answered 401 before any policy; no token passes unauthenticated; a rotated key set
//! refuses the old key's tokens.

mod support;

use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::{TcpListener, TcpStream};

const ISSUER: &str = "https://issuer.example";

/// A signing key and its public JWK (`kid`).
struct Key {
    kid: &'static str,
    pair: rcgen::KeyPair,
}

impl Key {
    fn new(kid: &'static str) -> Self {
        Self {
            kid,
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let raw = self.pair.public_key_raw(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": self.kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
    }

    /// A token with these claims (plus `iss` unless given, `exp` an hour ahead).
    fn sign(&self, claims: serde_json::Value) -> String {
        let mut c = serde_json::json!({"iss": ISSUER, "aud": "reviews",
            "exp": jsonwebtoken::get_current_timestamp() + 3600});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.into());
        jsonwebtoken::encode(
            &header,
            &c,
            &EncodingKey::from_ec_der(&self.pair.serialize_der()),
        )
        .unwrap()
    }
}

/// The application: says which token, JWT payload and claim headers reached it.
async fn app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    let payload = if h("x-jwt-payload") == "-" {
                        "-"
                    } else {
                        "present"
                    };
                    let body = format!(
                        "authorization={} payload={payload} user={}",
                        h("authorization"),
                        h("x-user")
                    );
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

async fn get(sidecar: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let tcp = TcpStream::connect(sidecar).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "reviews:9080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
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
    let app = app().await;
    let jwks = |keys: &[&Key]| serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    let server =
        support::sidecar(&mesh, &server_config(app, &jwks(&[&k1])), "shop", "reviews").await;
    let client = support::sidecar(
        &mesh,
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
    .await;
    let out = client.outbound_addr;
    let alice = k1.sign(serde_json::json!({"sub": "alice"}));
    let bearer = |t: &str| format!("Bearer {t}");

    // No token: on, unauthenticated; /admin needs alice.
    assert_eq!(
        get(out, "/", &[]).await,
        (200, "authorization=- payload=- user=-".into())
    );
    assert_eq!(get(out, "/admin", &[]).await.0, 403);
    // A valid token: its header is removed (forwardOriginalToken false), the payload
    // and the `sub` claim are passed on, and alice reaches /admin.
    let auth = bearer(&alice);
    assert_eq!(
        get(out, "/", &[("authorization", &auth)]).await,
        (200, "authorization=- payload=present user=alice".into())
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
