//! Sidecar injection: a mutating admission webhook (HTTPS, `/inject`) that adds the
//! sidecar container, the capture init container and their volumes to Pods in
//! namespaces labelled `istio-injection=enabled`, unless the Pod says
//! `sidecar.istio.io/inject: "false"` (annotation or label), as Istio's injector does.
//!
//! The same HTTPS port serves the validating webhook (`/validate`, see
//! [`crate::validate`]). It serves a certificate from its own CA, made at start
//! (names: the discovery Service, `localhost`, `127.0.0.1`); with Kubernetes,
//! discovery writes that CA into the `caBundle` of its Mutating- and
//! ValidatingWebhookConfiguration so the API server trusts it, and publishes the mesh root to every namespace as ConfigMap
//! `istio-ca-root-cert` for the injected sidecars.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use http::StatusCode;
use http_body_util::BodyExt;
use mesh_net::http::{Body, text_response};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::registry::Registry;

/// Namespace label that turns injection on.
pub const NAMESPACE_LABEL: &str = "istio-injection";
/// Pod annotation or label that turns injection off.
pub const POD_OPT_OUT: &str = "sidecar.istio.io/inject";
/// Name of the injected sidecar container.
pub const PROXY_CONTAINER: &str = "isthmus-proxy";
/// Name of the injected init container.
pub const INIT_CONTAINER: &str = "isthmus-init";
/// ConfigMap holding the mesh root in each namespace (Istio's name).
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// UID the proxy runs as; its own traffic is excluded from capture by its mark.
pub const PROXY_UID: i64 = 1337;

/// What the injector adds.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// Sidecar image.
    pub image: String,
    /// Discovery's address as pods reach it (`host:port`).
    pub discovery_address: String,
    /// The mesh trust domain.
    pub trust_domain: String,
    /// Cluster name (for the sidecar's logs and spans).
    pub cluster: String,
}

/// The webhook's serving certificate and the CA that signed it.
#[derive(Debug, Clone)]
pub struct WebhookCert {
    /// The CA (PEM), for `caBundle`.
    pub ca_pem: String,
    /// Serving certificate chain (PEM).
    pub cert_pem: String,
    /// Serving key (PEM).
    pub key_pem: String,
}

impl WebhookCert {
    /// A fresh CA and a serving certificate for `dns_names`, `localhost` and 127.0.0.1.
    pub fn generate(dns_names: &[String]) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "isthmus sidecar injector CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, &ca_key);
        let mut names = dns_names.to_vec();
        names.push("localhost".into());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "isthmus sidecar injector");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn server_config(&self) -> anyhow::Result<tokio_rustls::rustls::ServerConfig> {
        let certs = mesh_identity::cert::parse_certs(self.cert_pem.as_bytes(), "webhook cert")?;
        let key = mesh_identity::cert::parse_key(self.key_pem.as_bytes(), "webhook key")?;
        let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// Why a Pod is or is not injected.
fn decision(pod: &Value, namespace_labels: Option<&Value>) -> Result<(), &'static str> {
    let opted_out = |v: &Value| v.get(POD_OPT_OUT).and_then(Value::as_str) == Some("false");
    let meta = &pod["metadata"];
    if opted_out(&meta["annotations"]) || opted_out(&meta["labels"]) {
        return Err("the pod opts out (sidecar.istio.io/inject: \"false\")");
    }
    if let Some(labels) = namespace_labels
        && labels.get(NAMESPACE_LABEL).and_then(Value::as_str) != Some("enabled")
    {
        return Err("the namespace is not labelled istio-injection=enabled");
    }
    let has = |list: &Value, name: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == name))
    };
    if has(&pod["spec"]["containers"], PROXY_CONTAINER) {
        return Err("already injected");
    }
    Ok(())
}

/// Where an injected proxy's DNS proxy listens, when the pod asks for DNS capture.
const DNS_PROXY: &str = "127.0.0.1:15053";

/// Whether `pod` asks for DNS capture as Istio pods do: `ISTIO_META_DNS_CAPTURE: "true"`
/// in the `proxyMetadata` of its `proxy.istio.io/config` annotation.
fn dns_capture(pod: &Value) -> bool {
    let Some(text) = pod["metadata"]["annotations"]["proxy.istio.io/config"].as_str() else {
        return false;
    };
    mesh_api::split_documents(text).is_ok_and(|docs| {
        docs.first().is_some_and(|d| {
            matches!(
                &d["proxyMetadata"]["ISTIO_META_DNS_CAPTURE"],
                Value::String(v) if v == "true"
            ) || d["proxyMetadata"]["ISTIO_META_DNS_CAPTURE"] == Value::Bool(true)
        })
    })
}

/// The JSON patch that injects `config` into `pod`.
pub fn patch(pod: &Value, config: &InjectConfig) -> Vec<Value> {
    let service_account = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")["valueFrom"]}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")["valueFrom"]}),
        json!({"name": "INSTANCE_IP", "valueFrom": field("status.podIP")["valueFrom"]}),
    ];
    env.push(json!({"name": "SERVICE_ACCOUNT", "value": service_account}));
    env.push(json!({"name": "ISTHMUS_CLUSTER", "value": config.cluster}));
    // The proxy runs as its own user, without the capability to mark its sockets:
    // capture leaves that user's connections alone.
    let mut init_args = vec![
        "--capture-only".to_owned(),
        "--outbound".into(),
        "0.0.0.0:15001".into(),
        "--inbound".into(),
        "0.0.0.0:15006".into(),
        "--exclude-uid".into(),
        PROXY_UID.to_string(),
    ];
    let mut proxy_args = vec![
        "--discovery".to_owned(),
        config.discovery_address.clone(),
        "--token-file".into(),
        "/var/run/secrets/tokens/isthmus-token".into(),
        "--root-cert".into(),
        "/var/run/secrets/isthmus/root-cert.pem".into(),
        "--trust-domain".into(),
        config.trust_domain.clone(),
        "--outbound".into(),
        "0.0.0.0:15001".into(),
        "--inbound".into(),
        "0.0.0.0:15006".into(),
    ];
    if dns_capture(pod) {
        for args in [&mut init_args, &mut proxy_args] {
            args.extend(["--dns-proxy".to_owned(), DNS_PROXY.to_owned()]);
        }
    }
    let proxy = json!({
        "name": PROXY_CONTAINER,
        "image": config.image,
        "args": proxy_args,
        "env": env,
        "ports": [
            {"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"},
            {"name": "status-port", "containerPort": 15021, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "periodSeconds": 2,
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "isthmus-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
            {"name": "isthmus-root", "mountPath": "/var/run/secrets/isthmus", "readOnly": true},
        ],
    });
    let init = json!({
        "name": INIT_CONTAINER,
        "image": config.image,
        "args": init_args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    });
    let volumes = [
        json!({"name": "isthmus-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": crate::ca::TOKEN_AUDIENCE, "expirationSeconds": 43200, "path": "isthmus-token"}}]}}),
        json!({"name": "isthmus-root", "configMap": {"name": ROOT_CONFIGMAP}}),
    ];
    let mut ops = Vec::new();
    if pod["spec"]["serviceAccountName"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        // The projected token needs a named service account (as the ServiceAccount
        // admission plugin would set).
        ops.push(json!({"op": "add", "path": "/spec/serviceAccountName", "value": "default"}));
    }
    let mut append = |path: &str, exists: bool, items: Vec<Value>| {
        if exists {
            for item in items {
                ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
            }
        } else {
            ops.push(json!({"op": "add", "path": path, "value": items}));
        }
    };
    append(
        "/spec/initContainers",
        pod["spec"]["initContainers"].is_array(),
        vec![init],
    );
    append(
        "/spec/containers",
        pod["spec"]["containers"].is_array(),
        vec![proxy],
    );
    append(
        "/spec/volumes",
        pod["spec"]["volumes"].is_array(),
        volumes.to_vec(),
    );
    let annotated = pod["metadata"]["annotations"].is_object();
    if annotated {
        ops.push(json!({"op": "add", "path": "/metadata/annotations/sidecar.istio.io~1status", "value": "injected"}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {"sidecar.istio.io/status": "injected"}}));
    }
    ops
}

/// Answers one AdmissionReview.
pub fn review(body: &[u8], config: &InjectConfig, registry: &Registry) -> Result<Value, String> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request = &review["request"];
    let uid = request["uid"].clone();
    let pod = &request["object"];
    let namespace = request["namespace"].as_str().unwrap_or_default();
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .or(pod["metadata"]["generateName"].as_str())
        .unwrap_or_default();
    let ns_labels = registry.namespace_labels(namespace).map(|l| json!(l));
    let mut response = json!({"uid": uid, "allowed": true});
    match decision(pod, ns_labels.as_ref()) {
        Ok(()) => {
            let ops = patch(pod, config);
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&ops).unwrap_or_default());
            response["patchType"] = "JSONPatch".into();
            response["patch"] = encoded.into();
            tracing::info!(pod = %format!("{namespace}/{pod_name}"), "sidecar injected");
        }
        Err(why) => {
            tracing::debug!(pod = %format!("{namespace}/{pod_name}"), reason = why, "not injected");
        }
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// Serves the webhook on `listener` until dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cert: WebhookCert,
    config: InjectConfig,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()?));
    let config = Arc::new(config);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let (acceptor, config, registry, metrics) = (
            acceptor.clone(),
            config.clone(),
            registry.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (config, registry, metrics) =
                        (config.clone(), registry.clone(), metrics.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handle(req, &config, &registry, &metrics).await,
                        )
                    }
                });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
        });
    }
}

async fn handle(
    req: http::Request<hyper::body::Incoming>,
    config: &InjectConfig,
    registry: &Registry,
    metrics: &Metrics,
) -> http::Response<Body> {
    let path = req.uri().path().to_owned();
    if !matches!(path.as_str(), "/inject" | "/validate") || req.method() != http::Method::POST {
        return text_response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "POST /inject or /validate\n".into(),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text_response(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let answer = if path == "/validate" {
        crate::validate::review(&body, metrics)
    } else {
        review(&body, config, registry)
    };
    match answer {
        Ok(v) => text_response(StatusCode::OK, "application/json", v.to_string()),
        Err(e) => text_response(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

/// Reads the cluster-scoped object `name`, lets `edit` change it, and writes it back
/// (the webhook configurations whose caBundle discovery keeps).
pub(crate) async fn edit_cluster_object<K>(
    client: &kube::Client,
    name: &str,
    edit: impl FnOnce(&mut K),
) -> anyhow::Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let api: kube::Api<K> = kube::Api::all(client.clone());
    let mut object = api.get(name).await?;
    edit(&mut object);
    object.meta_mut().managed_fields = None;
    api.replace(name, &Default::default(), &object).await?;
    Ok(())
}

/// Writes `ca_pem` into the `caBundle` of every webhook of the
/// MutatingWebhookConfiguration `name`.
pub async fn patch_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let bundle = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
    edit_cluster_object(client, name, |mwc: &mut MutatingWebhookConfiguration| {
        for w in mwc.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(bundle.clone());
        }
    })
    .await
}

/// Keeps ConfigMap `istio-ca-root-cert` with the CA's `root-cert.pem` in every
/// namespace the registry knows, as namespaces appear and when the roots change
/// (retrying failures every `interval`).
pub async fn publish_root(
    client: kube::Client,
    registry: Arc<Registry>,
    ca: crate::ca::SharedCa,
    interval: std::time::Duration,
) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let mut done = std::collections::BTreeSet::new();
    let mut published = String::new();
    let mut changes = registry.subscribe();
    loop {
        let root_pem = ca.load().root_pem().to_owned();
        if root_pem != published {
            done.clear();
            published = root_pem.clone();
        }
        for ns in registry.namespace_names() {
            if done.contains(&ns) {
                continue;
            }
            let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &ns);
            let cm = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CONFIGMAP, "labels": {"isthmus.dev/managed-by": "discovery"}},
                "data": {"root-cert.pem": root_pem},
            });
            let pp = kube::api::PatchParams::apply("isthmus-discovery").force();
            match api
                .patch(ROOT_CONFIGMAP, &pp, &kube::api::Patch::Apply(&cm))
                .await
            {
                Ok(_) => {
                    done.insert(ns);
                }
                Err(e) => {
                    tracing::debug!(namespace = %ns, error = %e, "cannot publish the root yet")
                }
            }
        }
        // New namespaces arrive as registry changes; failures are retried on a timer.
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// The webhook listen address and names, for [`crate::Options`].
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// HTTPS listen address (Istio's injector listens on 15017).
    pub listen: SocketAddr,
    /// What to inject.
    pub config: InjectConfig,
    /// The MutatingWebhookConfiguration whose caBundle discovery keeps (Kubernetes).
    pub webhook_config: Option<String>,
    /// The ValidatingWebhookConfiguration whose caBundle discovery keeps (Kubernetes).
    pub validating_config: Option<String>,
    /// DNS names for the serving certificate (e.g. `isthmus-discovery.istio-system.svc`).
    pub dns_names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        InjectConfig {
            image: "isthmus/proxy:test".into(),
            discovery_address: "isthmus-discovery.istio-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            cluster: "east".into(),
        }
    }

    #[test]
    fn opt_out_namespace_and_reinjection_are_respected() {
        let labelled = json!({"istio-injection": "enabled"});
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}});
        assert!(decision(&pod, Some(&labelled)).is_ok());
        assert!(decision(&pod, Some(&json!({}))).is_err());
        let out = json!({"metadata": {"annotations": {POD_OPT_OUT: "false"}}, "spec": {"containers": []}});
        assert!(decision(&out, Some(&labelled)).is_err());
        let done = json!({"metadata": {}, "spec": {"containers": [{"name": PROXY_CONTAINER}]}});
        assert!(decision(&done, Some(&labelled)).is_err());
    }

    #[test]
    fn the_patch_appends_to_existing_lists_and_creates_missing_ones() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "reviews",
            "containers": [{"name": "app"}], "volumes": [{"name": "data"}]}});
        let ops = patch(&pod, &config());
        let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/spec/initContainers",
                "/spec/containers/-",
                "/spec/volumes/-",
                "/spec/volumes/-",
                "/metadata/annotations"
            ]
        );
        let proxy = &ops[1]["value"];
        assert!(
            proxy["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "SERVICE_ACCOUNT" && e["value"] == "reviews")
        );
        assert_eq!(
            ops[2]["value"]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "isthmus-ca"
        );
        // Capture leaves the proxy's own user alone; no DNS capture unless asked.
        let init_args = ops[0]["value"][0]["args"].to_string();
        assert!(
            init_args.contains(r#""--exclude-uid","1337""#),
            "{init_args}"
        );
        assert!(!proxy["args"].to_string().contains("--dns-proxy"));
    }

    #[test]
    fn istio_dns_capture_annotation_turns_the_dns_proxy_on() {
        let pod = json!({"metadata": {"name": "p", "annotations": {"proxy.istio.io/config":
            "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n  ISTIO_META_DNS_AUTO_ALLOCATE: \"true\"\n"}},
            "spec": {"containers": [{"name": "app"}]}});
        let ops = patch(&pod, &config());
        let op = |path: &str| ops.iter().find(|o| o["path"] == path).unwrap()["value"].clone();
        let init = op("/spec/initContainers")[0]["args"].to_string();
        let proxy = op("/spec/containers/-")["args"].to_string();
        for args in [init, proxy] {
            assert!(
                args.contains(r#""--dns-proxy","127.0.0.1:15053""#),
                "{args}"
            );
        }
        let off = json!({"metadata": {"name": "p", "annotations": {"proxy.istio.io/config":
            "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}"}}, "spec": {"containers": []}});
        assert!(!dns_capture(&off));
    }
}
