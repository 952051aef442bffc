//! `meshctl install` and `meshctl verify-install`: the control plane of one cluster
//! (discovery with its CA and injector, the east-west gateway), least-privilege RBAC,
//! the CRDs, the injection and validation webhooks, rendered from a few values and applied with
//! server-side apply (or printed with `--dry-run`).

use std::path::PathBuf;

use anyhow::Context as _;

/// The values an install is rendered from (the Helm chart's `values.yaml` has the same).
#[derive(Debug, Clone)]
pub(crate) struct Values {
    pub(crate) cluster_name: String,
    pub(crate) network: String,
    pub(crate) mesh_id: String,
    pub(crate) trust_domain: String,
    pub(crate) namespace: String,
    pub(crate) image: String,
    pub(crate) outbound_traffic_policy: String,
}

/// `meshctl install` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// This cluster's name (a DNS-1123 label).
    #[arg(long)]
    cluster_name: String,
    /// This cluster's network.
    #[arg(long)]
    network: String,
    /// The mesh's name (the same in every cluster).
    #[arg(long, default_value = "mesh1")]
    mesh_id: String,
    /// The mesh's trust domain (that of the federated root).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace of the control plane.
    #[arg(long, default_value = discovery::NAMESPACE)]
    namespace: String,
    /// Image with the discovery, sidecar and east-west-gateway binaries.
    #[arg(long, default_value = concat!("ghcr.io/isthmus-mesh/isthmus:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// What sidecars do with captured connections to addresses no service has (Istio's
    /// meshConfig outboundTrafficPolicy.mode): ALLOW_ANY or REGISTRY_ONLY.
    #[arg(long, default_value = "ALLOW_ANY", value_parser = ["ALLOW_ANY", "REGISTRY_ONLY"])]
    outbound_traffic_policy: String,
    /// Print the manifests instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// The cluster to install into.
    #[arg(long, required_unless_present = "dry_run")]
    kubeconfig: Option<PathBuf>,
}

/// `meshctl verify-install` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The cluster to check.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Namespace of the control plane.
    #[arg(long, default_value = discovery::NAMESPACE)]
    namespace: String,
}

/// The rest of a gateway pod's container and its volumes (the east-west and the
/// ingress gateway alike): readiness on 15021, a locked-down container, the CA token
/// and the mesh root.
const GATEWAY_POD: &str = "        readinessProbe:
          httpGet: {path: /healthz/ready, port: 15021}
          periodSeconds: 2
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: isthmus-token, mountPath: /var/run/secrets/tokens, readOnly: true}
        - {name: isthmus-root, mountPath: /var/run/secrets/isthmus, readOnly: true}
      volumes:
      - name: isthmus-token
        projected:
          sources: [{serviceAccountToken: {audience: isthmus-ca, expirationSeconds: 43200, path: isthmus-token}}]
      - name: isthmus-root
        configMap: {name: istio-ca-root-cert}
";

/// The control-plane manifests (CRDs excluded; see `meshctl crds`).
pub(crate) fn render(v: &Values) -> String {
    let Values {
        cluster_name,
        network,
        mesh_id,
        trust_domain,
        namespace: ns,
        image,
        outbound_traffic_policy,
    } = v;
    let istio_groups = "\"networking.istio.io\", \"security.istio.io\"";
    let gateway_pod = GATEWAY_POD;
    let validator = discovery::validate::WEBHOOK_CONFIG;
    let validating = discovery::validate::webhook_configuration(&format!(
        "{{service: {{name: isthmus-discovery, namespace: {ns}, path: /validate, port: 443}}}}"
    ));
    format!(
        r#"# Isthmus control plane for cluster {cluster_name} (network {network}, mesh {mesh_id}).
# Rendered by `meshctl install`; the Helm chart in deploy/helm/isthmus renders the same.
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
  labels: {{topology.istio.io/network: "{network}"}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: isthmus-discovery, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: isthmus-eastwest-gateway, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: isthmus-ingressgateway, namespace: {ns}}}
---
# Discovery reads the registry, checks workload tokens, keeps the webhooks' caBundle
# and publishes the root ConfigMap; nothing else.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: isthmus-discovery}}
rules:
- apiGroups: [""]
  resources: [services, pods, nodes, namespaces]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [{istio_groups}]
  resources: ["*"]
  verbs: [get, list, watch]
# The Multi-Cluster Services API: which Services this cluster exports, and the
# clusterset IPs of the services it imports.
- apiGroups: [multicluster.x-k8s.io]
  resources: [serviceexports, serviceimports]
  verbs: [get, list, watch]
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [admissionregistration.k8s.io]
  resources: [mutatingwebhookconfigurations]
  resourceNames: [isthmus-sidecar-injector]
  verbs: [get, update, patch]
- apiGroups: [admissionregistration.k8s.io]
  resources: [validatingwebhookconfigurations]
  resourceNames: [{validator}]
  verbs: [get, update, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, update, patch]
# Certificates a Gateway's or a DestinationRule's credentialName names: only
# kubernetes.io/tls Secrets are watched, and only the named ones are sent, to proxies
# of their own namespace.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: isthmus-discovery}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: isthmus-discovery}}
subjects: [{{kind: ServiceAccount, name: isthmus-discovery, namespace: {ns}}}]
---
# Link Secrets and cacerts live in the control-plane namespace only.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: isthmus-discovery, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: isthmus-discovery, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: isthmus-discovery}}
subjects: [{{kind: ServiceAccount, name: isthmus-discovery, namespace: {ns}}}]
---
apiVersion: v1
kind: Service
metadata:
  name: isthmus-discovery
  namespace: {ns}
  labels: {{app: isthmus-discovery}}
spec:
  selector: {{app: isthmus-discovery}}
  ports:
  - {{name: grpc-xds, port: 15012, protocol: TCP}}
  - {{name: http-monitoring, port: 15014, protocol: TCP}}
  - {{name: https-webhook, port: 443, targetPort: 15017, protocol: TCP}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: isthmus-discovery
  namespace: {ns}
  labels: {{app: isthmus-discovery}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: isthmus-discovery}}}}
  template:
    metadata:
      labels: {{app: isthmus-discovery, sidecar.istio.io/inject: "false"}}
    spec:
      serviceAccountName: isthmus-discovery
      securityContext: {{runAsNonRoot: true, runAsUser: 1337, runAsGroup: 1337}}
      containers:
      - name: discovery
        image: {image}
        command: [/usr/local/bin/discovery]
        args:
        - --cluster={cluster_name}
        - --network={network}
        - --outbound-traffic-policy={outbound_traffic_policy}
        - --namespace={ns}
        - --cacerts-secret=cacerts
        - --injector-listen=0.0.0.0:15017
        - --proxy-image={image}
        - --json-logs
        ports:
        - {{name: grpc-xds, containerPort: 15012}}
        - {{name: http-monitoring, containerPort: 15014}}
        - {{name: https-webhook, containerPort: 15017}}
        readinessProbe:
          httpGet: {{path: /ready, port: 15014}}
          periodSeconds: 2
        resources:
          requests: {{cpu: 100m, memory: 128Mi}}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {{drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata:
  name: isthmus-eastwestgateway
  namespace: {ns}
  labels: {{app: isthmus-eastwestgateway, topology.istio.io/network: "{network}"}}
spec:
  type: LoadBalancer
  selector: {{app: isthmus-eastwestgateway}}
  ports:
  - {{name: tls, port: 15443, protocol: TCP}}
  - {{name: quic, port: 15443, protocol: UDP}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: isthmus-eastwestgateway
  namespace: {ns}
  labels: {{app: isthmus-eastwestgateway}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: isthmus-eastwestgateway}}}}
  template:
    metadata:
      labels: {{app: isthmus-eastwestgateway, sidecar.istio.io/inject: "false", topology.istio.io/network: "{network}"}}
    spec:
      serviceAccountName: isthmus-eastwest-gateway
      securityContext: {{runAsNonRoot: true, runAsUser: 1337, runAsGroup: 1337}}
      containers:
      - name: gateway
        image: {image}
        command: [/usr/local/bin/east-west-gateway]
        args:
        - --discovery=isthmus-discovery.{ns}.svc:15012
        - --token-file=/var/run/secrets/tokens/isthmus-token
        - --root-cert=/var/run/secrets/isthmus/root-cert.pem
        - --trust-domain={trust_domain}
        - --json-logs
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        ports:
        - {{name: tls, containerPort: 15443, protocol: TCP}}
        - {{name: quic, containerPort: 15443, protocol: UDP}}
        - {{name: status-port, containerPort: 15021}}
{gateway_pod}---
# The ingress gateway: the sidecar binary as a router. It serves the Gateways that
# select `istio: ingressgateway` (as the Istio samples do); server port 80 is bound
# on 8080 (the gateway runs without privileges) and the Service maps it back.
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: {ns}
  labels: {{app: istio-ingressgateway, istio: ingressgateway}}
spec:
  type: LoadBalancer
  selector: {{app: istio-ingressgateway, istio: ingressgateway}}
  ports:
  - {{name: http2, port: 80, targetPort: 8080, protocol: TCP}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: istio-ingressgateway
  namespace: {ns}
  labels: {{app: istio-ingressgateway, istio: ingressgateway}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: istio-ingressgateway, istio: ingressgateway}}}}
  template:
    metadata:
      labels: {{app: istio-ingressgateway, istio: ingressgateway, sidecar.istio.io/inject: "false"}}
    spec:
      serviceAccountName: isthmus-ingressgateway
      securityContext: {{runAsNonRoot: true, runAsUser: 1337, runAsGroup: 1337}}
      containers:
      - name: ingressgateway
        image: {image}
        command: [/usr/local/bin/sidecar]
        args:
        - --ingress
        - --port=80=8080
        - --discovery=isthmus-discovery.{ns}.svc:15012
        - --token-file=/var/run/secrets/tokens/isthmus-token
        - --root-cert=/var/run/secrets/isthmus/root-cert.pem
        - --trust-domain={trust_domain}
        - --admin=0.0.0.0:15021
        - --admin=0.0.0.0:15090
        - --json-logs
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        - {{name: INSTANCE_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: SERVICE_ACCOUNT, valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}}}
        ports:
        - {{name: http2, containerPort: 8080}}
        - {{name: status-port, containerPort: 15021}}
        - {{name: http-envoy-prom, containerPort: 15090}}
{gateway_pod}---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: isthmus-sidecar-injector}}
webhooks:
- name: sidecar-injector.isthmus.dev
  clientConfig:
    service: {{name: isthmus-discovery, namespace: {ns}, path: /inject, port: 443}}
  rules: [{{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}]
  namespaceSelector: {{matchLabels: {{istio-injection: enabled}}}}
  objectSelector:
    matchExpressions: [{{key: sidecar.istio.io/inject, operator: NotIn, values: ["false"]}}]
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Fail
  timeoutSeconds: 10
---
# Istio objects are validated when applied: kubectl apply of an invalid one fails
# with the message `meshctl analyze` prints. Discovery makes it fail closed
# (failurePolicy: Fail) when it writes the caBundle.
{validating}"#
    )
}

fn client(
    kubeconfig: &std::path::Path,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<kube::Client> {
    rt.block_on(discovery::kube_client(kubeconfig))
}

/// Runs `meshctl install`.
pub(crate) fn install(args: InstallArgs) -> anyhow::Result<()> {
    discovery::links::check_cluster_name(&args.cluster_name).map_err(anyhow::Error::msg)?;
    let v = Values {
        cluster_name: args.cluster_name,
        network: args.network,
        mesh_id: args.mesh_id,
        trust_domain: args.trust_domain,
        namespace: args.namespace,
        image: args.image,
        outbound_traffic_policy: args.outbound_traffic_policy,
    };
    let manifests = render(&v);
    if args.dry_run {
        print!("{}---\n{manifests}", mesh_api::crd::render_yaml());
        return Ok(());
    }
    let kubeconfig = args
        .kubeconfig
        .context("--kubeconfig is needed without --dry-run")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = client(&kubeconfig, &rt)?;
    rt.block_on(async {
        testbed::apply::apply_crds(&client).await?;
        let done = testbed::apply::apply_yaml(
            &client,
            &manifests,
            &v.namespace,
            testbed::apply::Mode::Apply,
        )
        .await?;
        for d in done {
            println!("  ✔ {d}");
        }
        anyhow::Ok(())
    })?;
    println!(
        "Installed. Give discovery its cluster CA (`meshctl ca intermediate --secret-namespace {}`), then link clusters with `meshctl remote-secret`.",
        v.namespace
    );
    Ok(())
}

/// Runs `meshctl verify-install`: every object present, the CRDs established, the
/// webhook's caBundle written by discovery, the deployments' readiness.
pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = client(&args.kubeconfig, &rt)?;
    let mut problems = Vec::new();
    rt.block_on(async {
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
        for crd in mesh_api::crd::crds() {
            let name = crd.metadata.name.unwrap_or_default();
            match crds.get_opt(&name).await? {
                Some(c) if c.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
                    cs.iter().any(|c| c.type_ == "Established" && c.status == "True")
                }) => println!("  ✔ CRD {name}"),
                Some(_) => problems.push(format!("CRD {name} is not Established")),
                None => problems.push(format!("CRD {name} is missing; run `meshctl install`")),
            }
        }
        let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &args.namespace);
        for name in ["isthmus-discovery", "isthmus-eastwestgateway", "istio-ingressgateway"] {
            match deployments.get_opt(name).await? {
                Some(d) => {
                    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                    if ready > 0 {
                        println!("  ✔ Deployment {}/{name}: {ready} ready", args.namespace);
                    } else {
                        problems.push(format!("Deployment {}/{name} has no ready replica (see `kubectl -n {} describe deploy {name}`)", args.namespace, args.namespace));
                    }
                }
                None => problems.push(format!("Deployment {}/{name} is missing; run `meshctl install`", args.namespace)),
            }
        }
        let mwcs: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(client.clone());
        match mwcs.get_opt("isthmus-sidecar-injector").await? {
            Some(m) if m.webhooks.iter().flatten().all(|w| w.client_config.ca_bundle.is_some()) => {
                println!("  ✔ MutatingWebhookConfiguration isthmus-sidecar-injector (caBundle set)")
            }
            Some(_) => problems.push("the injection webhook has no caBundle yet: discovery writes it when it runs".into()),
            None => problems.push("MutatingWebhookConfiguration isthmus-sidecar-injector is missing".into()),
        }
        let validator = discovery::validate::WEBHOOK_CONFIG;
        let vwcs: kube::Api<ValidatingWebhookConfiguration> = kube::Api::all(client.clone());
        match vwcs.get_opt(validator).await? {
            Some(v) if v.webhooks.iter().flatten().all(|w| w.client_config.ca_bundle.is_some()) => {
                println!("  ✔ ValidatingWebhookConfiguration {validator} (caBundle set)")
            }
            Some(_) => problems.push("the validating webhook has no caBundle yet: discovery writes it when it runs (until then Istio objects are stored unchecked)".into()),
            None => problems.push(format!("ValidatingWebhookConfiguration {validator} is missing; run `meshctl install`")),
        }
        anyhow::Ok(())
    })?;
    for p in &problems {
        println!("  ✘ {p}");
    }
    anyhow::ensure!(problems.is_empty(), "{} problem(s)", problems.len());
    println!("The installation is complete.");
    Ok(())
}

/// The Helm chart's values, as template expressions: the chart's template is the
/// install rendering with these in place of the values.
fn helm_values() -> Values {
    Values {
        cluster_name: "{{ .Values.clusterName }}".into(),
        network: "{{ .Values.network }}".into(),
        mesh_id: "{{ .Values.meshID }}".into(),
        trust_domain: "{{ .Values.trustDomain }}".into(),
        namespace: "{{ .Values.namespace }}".into(),
        image: "{{ .Values.image }}".into(),
        outbound_traffic_policy: "{{ .Values.outboundTrafficPolicy }}".into(),
    }
}

/// The chart's files: (path in the chart, content).
pub(crate) fn chart_files() -> Vec<(&'static str, String)> {
    vec![
        (
            "Chart.yaml",
            format!(
                "apiVersion: v2\nname: isthmus\ndescription: Isthmus control plane for one cluster (discovery, east-west gateway, injection)\ntype: application\nversion: {v}\nappVersion: \"{v}\"\n",
                v = env!("CARGO_PKG_VERSION")
            ),
        ),
        (
            "values.yaml",
            format!(
                "# This cluster's name (a DNS-1123 label) and network.\nclusterName: cluster1\nnetwork: network1\n# The mesh's name, the same in every cluster.\nmeshID: mesh1\n# The trust domain of the federated root.\ntrustDomain: cluster.local\n# Namespace of the control plane.\nnamespace: istio-system\n# Image with the discovery, sidecar and east-west-gateway binaries.\nimage: ghcr.io/isthmus-mesh/isthmus:{}\n# What sidecars do with captured connections to addresses no service has (Istio's\n# meshConfig outboundTrafficPolicy.mode): ALLOW_ANY or REGISTRY_ONLY.\noutboundTrafficPolicy: ALLOW_ANY\n",
                env!("CARGO_PKG_VERSION")
            ),
        ),
        (
            "templates/isthmus.yaml",
            format!(
                "# Generated by `meshctl write-chart` from the source of `meshctl install`; do not edit.\n{}",
                render(&helm_values())
            ),
        ),
        ("crds/istio-crds.yaml", mesh_api::crd::render_yaml()),
    ]
}

/// Writes the chart into `dir`.
pub(crate) fn write_chart(dir: &std::path::Path) -> anyhow::Result<()> {
    for (path, content) in chart_files() {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap_or(dir))?;
        std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
