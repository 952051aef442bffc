//! Validation at apply time: a validating admission webhook (`/validate`, on the same
//! HTTPS port as the injector) that refuses an Istio object discovery would refuse,
//! so `kubectl apply` fails with the message `meshctl analyze` prints instead of the
//! object being stored and then ignored. Fields accepted without effect (the coverage
//! contract's *warned* fields) are allowed and returned as admission warnings, which
//! `kubectl` prints as `Warning: ...`.
//!
//! Only creates and updates are checked; a delete is always allowed, so a user can
//! remove an object that an older version accepted.

use serde_json::{Value, json};

use crate::metrics::Metrics;

/// Name of the ValidatingWebhookConfiguration whose caBundle discovery keeps.
pub const WEBHOOK_CONFIG: &str = "isthmus-validator";
/// Name of its one webhook.
pub const WEBHOOK_NAME: &str = "validation.isthmus.dev";
/// The resources it validates (group, plural): every Istio kind the CRDs install.
pub const RESOURCES: &[(&str, &str)] = &[
    ("networking.istio.io", "virtualservices"),
    ("networking.istio.io", "destinationrules"),
    ("networking.istio.io", "gateways"),
    ("networking.istio.io", "serviceentries"),
    ("security.istio.io", "peerauthentications"),
    ("security.istio.io", "authorizationpolicies"),
    ("security.istio.io", "requestauthentications"),
];

/// What the webhook decided about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, with the warnings to show (fields without effect).
    Allowed(Vec<String>),
    /// Refused, with the analyzer's text.
    Refused(String),
}

/// Validates one object as the API server sends it (full object, with metadata).
pub fn verdict(object: Value) -> Verdict {
    match mesh_api::from_value_with_warnings(object) {
        Ok((resource, warnings)) => {
            let name = format!("{} {}", resource.kind(), resource.key());
            Verdict::Allowed(warnings.iter().map(|w| w.report(&name)).collect())
        }
        Err(e) => Verdict::Refused(e.report()),
    }
}

/// Answers one AdmissionReview (`admission.k8s.io/v1`).
pub fn review(body: &[u8], metrics: &Metrics) -> Result<Value, String> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request = &review["request"];
    let uid = request["uid"].clone();
    let operation = request["operation"].as_str().unwrap_or_default();
    let mut response = json!({"uid": uid, "allowed": true});
    if matches!(operation, "CREATE" | "UPDATE") {
        let mut object = request["object"].clone();
        // The API server sends the object's namespace in the request when the object
        // itself leaves it out (a namespaced create).
        if object["metadata"]["namespace"].is_null()
            && let Some(ns) = request["namespace"].as_str()
            && let Some(meta) = object["metadata"].as_object_mut()
        {
            meta.insert("namespace".into(), ns.into());
        }
        let kind = request["kind"]["kind"]
            .as_str()
            .unwrap_or("object")
            .to_owned();
        match verdict(object) {
            Verdict::Allowed(warnings) => {
                metrics.validation_passed.inc();
                if !warnings.is_empty() {
                    response["warnings"] = json!(warnings);
                }
            }
            Verdict::Refused(report) => {
                metrics.validation_failed.inc();
                tracing::info!(kind = %kind, object = %request["name"].as_str().unwrap_or_default(), "apply refused by validation");
                response["allowed"] = false.into();
                response["status"] = json!({
                    "code": 400,
                    "reason": "Invalid",
                    "message": format!("configuration is invalid:\n{report}"),
                });
            }
        }
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// The ValidatingWebhookConfiguration for a webhook reached at `client_config`
/// (YAML flow mapping, e.g. `{url: "https://127.0.0.1:15017/validate"}`). It starts
/// with `failurePolicy: Ignore`, so Istio objects can be applied before discovery
/// runs; discovery turns it to `Fail` when it writes its caBundle, as istiod does.
pub fn webhook_configuration(client_config: &str) -> String {
    let mut rules = String::new();
    for group in ["networking.istio.io", "security.istio.io"] {
        let plurals: Vec<&str> = RESOURCES
            .iter()
            .filter(|(g, _)| *g == group)
            .map(|(_, p)| *p)
            .collect();
        rules.push_str(&format!(
            "  - {{operations: [CREATE, UPDATE], apiGroups: [{group}], apiVersions: [\"*\"], resources: [{}]}}\n",
            plurals.join(", ")
        ));
    }
    format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: {WEBHOOK_CONFIG}}}
webhooks:
- name: {WEBHOOK_NAME}
  clientConfig: {client_config}
  rules:
{rules}  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Ignore
  timeoutSeconds: 10
"
    )
}

/// Writes `ca_pem` into the `caBundle` of every webhook of the
/// ValidatingWebhookConfiguration `name` and makes it fail closed: from then on an
/// object that cannot be validated is not stored.
pub async fn patch_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let bundle = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
    crate::inject::edit_cluster_object(client, name, |vwc: &mut ValidatingWebhookConfiguration| {
        for w in vwc.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(bundle.clone());
            w.failure_policy = Some("Fail".into());
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": operation, "namespace": "shop", "name": "r",
                "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
                "object": object},
        }))
        .unwrap()
    }

    fn vs(spec: Value) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r"}, "spec": spec})
    }

    #[test]
    fn an_invalid_object_is_refused_with_the_analyzer_text() {
        let metrics = Metrics::default();
        let bad = vs(
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": -1}]}]}),
        );
        let out = review(&request("CREATE", bad.clone()), &metrics).unwrap();
        let response = &out["response"];
        assert_eq!(response["uid"], "u-1");
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        // The namespace comes from the request when the object leaves it out.
        let mut named = bad;
        named["metadata"]["namespace"] = "shop".into();
        let analyzer = mesh_api::from_value(named).unwrap_err().report();
        assert!(message.ends_with(&analyzer), "{message}");
        assert!(
            message.contains("(VirtualService shop/r) spec.http[0].route[0].weight"),
            "{message}"
        );
        assert_eq!(metrics.validation_failed.get(), 1);

        // An update is checked the same way; a delete never is.
        let bad = vs(json!({"hosts": []}));
        let out = review(&request("UPDATE", bad.clone()), &metrics).unwrap();
        assert_eq!(out["response"]["allowed"], false);
        let out = review(&request("DELETE", bad), &metrics).unwrap();
        assert_eq!(out["response"]["allowed"], true);
    }

    #[test]
    fn a_valid_object_is_allowed_with_warnings_for_fields_without_effect() {
        let metrics = Metrics::default();
        let good = vs(
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        );
        let out = review(&request("CREATE", good), &metrics).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("warnings").is_none(), "{out}");

        let dr = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"host": "reviews", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 3, "interval": "5s"}}}});
        let out = review(&request("CREATE", dr), &metrics).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        let warnings = out["response"]["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].as_str().unwrap().starts_with(
                "[ISM0001] (DestinationRule shop/r) spec.trafficPolicy.outlierDetection.interval:"
            ),
            "{warnings:?}"
        );
        assert_eq!(metrics.validation_passed.get(), 2);
    }

    #[test]
    fn a_gateway_server_isthmus_cannot_serve_is_refused_at_apply_with_the_reason() {
        let gw = json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "ingress", "namespace": "shop"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                {"port": {"number": 27017, "name": "mongo", "protocol": "MONGO"}, "hosts": ["*"]}]}});
        let Verdict::Refused(report) = verdict(gw.clone()) else {
            panic!("a MONGO Gateway server is allowed")
        };
        assert!(report.contains("(Gateway shop/ingress)"), "{report}");
        assert!(
            report.contains("spec.servers[0].port.protocol: MONGO servers are not served"),
            "{report}"
        );
        let mut http = gw;
        http["spec"]["servers"][0]["port"] =
            json!({"number": 80, "name": "http", "protocol": "HTTP"});
        assert!(
            matches!(verdict(http), Verdict::Allowed(_)),
            "an HTTP server is served"
        );
    }

    #[test]
    fn not_an_admission_review_is_a_bad_request() {
        assert!(review(b"{", &Metrics::default()).is_err());
    }
}
