//! `meshctl install` against a real kube-apiserver: every manifest it renders, and the
//! Helm chart rendered with its values, pass a server-side dry run; an install applies
//! and `verify-install` says what is not ready yet, then passes once discovery has
//! written the webhooks' caBundle and the deployments are ready. The checked-in chart
//! is current.

use std::process::{Command, Output};

use testbed::apply::{Mode, apply_yaml};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .unwrap()
}

fn chart_file(path: &str) -> String {
    std::fs::read_to_string(
        testbed::workspace_root()
            .join("deploy/helm/isthmus")
            .join(path),
    )
    .unwrap()
}

/// Renders the chart's template the way Helm does for it: the template only
/// substitutes `{{ .Values.X }}`.
fn render_chart(values: &[(&str, &str)]) -> String {
    let mut out = chart_file("templates/isthmus.yaml");
    for (k, v) in values {
        out = out.replace(&format!("{{{{ .Values.{k} }}}}"), v);
    }
    assert!(
        !out.contains("{{"),
        "unrendered template expression left:\n{out}"
    );
    out
}

#[test]
fn the_checked_in_chart_is_what_install_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let out = meshctl(&["write-chart", "--out", tmp.path().to_str().unwrap()]);
    assert!(out.status.success());
    for f in [
        "Chart.yaml",
        "values.yaml",
        "templates/isthmus.yaml",
        "crds/istio-crds.yaml",
    ] {
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(f)).unwrap(),
            chart_file(f),
            "deploy/helm/isthmus/{f} is stale: run `cargo run -p meshctl -- write-chart`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_and_chart_pass_a_server_side_dry_run_and_install() {
    let bins = testbed::KubeBins::locate().unwrap();
    let cps = testbed::start_control_planes(&bins, &["east"])
        .await
        .unwrap();
    let client = cps[0].client().await.unwrap();

    let out = tokio::task::spawn_blocking(|| {
        meshctl(&[
            "install",
            "--dry-run",
            "--cluster-name",
            "east",
            "--network",
            "net-east",
            "--trust-domain",
            "mesh.example",
        ])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    assert!(rendered.contains("kind: CustomResourceDefinition"));
    // Namespaced objects need their namespace to exist even for a dry run.
    apply_yaml(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n",
        "default",
        Mode::Apply,
    )
    .await
    .unwrap();
    let checked = apply_yaml(&client, &rendered, "istio-system", Mode::DryRun)
        .await
        .unwrap();
    for want in [
        "CustomResourceDefinition virtualservices.networking.istio.io",
        "ClusterRole isthmus-discovery",
        "Deployment istio-system/isthmus-discovery",
        "Service istio-system/isthmus-eastwestgateway",
        "Deployment istio-system/istio-ingressgateway",
        "Service istio-system/istio-ingressgateway",
        "MutatingWebhookConfiguration isthmus-sidecar-injector",
        "ValidatingWebhookConfiguration isthmus-validator",
    ] {
        assert!(
            checked.iter().any(|c| c == want),
            "{want} not in {checked:?}"
        );
    }
    // The chart, rendered with its default values and with others.
    let values: String = chart_file("values.yaml");
    let default = |k: &str| {
        values
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap()
            .to_owned()
    };
    for (cluster, network) in [
        (default("clusterName"), default("network")),
        ("west".into(), "net-west".into()),
    ] {
        let chart = render_chart(&[
            ("clusterName", &cluster),
            ("network", &network),
            ("meshID", &default("meshID")),
            ("trustDomain", &default("trustDomain")),
            ("namespace", "istio-system"),
            ("image", &default("image")),
            ("outboundTrafficPolicy", &default("outboundTrafficPolicy")),
        ]);
        apply_yaml(
            &client,
            &chart_file("crds/istio-crds.yaml"),
            "default",
            Mode::DryRun,
        )
        .await
        .unwrap();
        apply_yaml(&client, &chart, "istio-system", Mode::DryRun)
            .await
            .unwrap();
    }

    // A real install, then verify-install: everything is there, but with no nodes
    // nothing can be ready, and it says so.
    let kubeconfig = cps[0].kubeconfig().to_str().unwrap().to_owned();
    let kubeconfig_path = kubeconfig.clone();
    let kc = kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        meshctl(&[
            "install",
            "--cluster-name",
            "east",
            "--network",
            "net-east",
            "--kubeconfig",
            &kc,
        ])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::task::spawn_blocking(move || {
        meshctl(&["verify-install", "--kubeconfig", &kubeconfig])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("✔ CRD virtualservices.networking.istio.io"),
        "{text}"
    );
    assert!(
        text.contains("Deployment istio-system/isthmus-discovery has no ready replica"),
        "{text}"
    );
    assert!(text.contains("no caBundle yet"), "{text}");

    // The kind path's manifests (helloworld with injection) are accepted too.
    let kind =
        std::fs::read_to_string(testbed::workspace_root().join("testbed/kind/helloworld.yaml"))
            .unwrap();
    apply_yaml(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: sample}\n",
        "default",
        Mode::Apply,
    )
    .await
    .unwrap();
    for v in ["v1", "v2"] {
        let checked = apply_yaml(&client, &kind.replace("VERSION", v), "sample", Mode::DryRun)
            .await
            .unwrap();
        assert!(
            checked.contains(&format!("Deployment sample/helloworld-{v}")),
            "{checked:?}"
        );
    }

    // The success path (last: from here on the validating webhook fails closed, and
    // it is reached through a Service no pod backs). Discovery runs against the
    // cluster and writes both webhooks' caBundle, and both deployments report a
    // ready replica (no kubelet runs here, so their status is written as the
    // deployment controller would).
    let cacerts = tempfile::tempdir().unwrap();
    let td: mesh_identity::TrustDomain = "cluster.local".parse().unwrap();
    let day = std::time::Duration::from_secs(86400);
    mesh_identity::RootCa::generate(&td, day)
        .unwrap()
        .intermediate("east", day)
        .unwrap()
        .write(cacerts.path())
        .unwrap();
    let mut options = discovery::Options::new(
        "east",
        "net-east",
        discovery::Source::Kubernetes(client.clone()),
        discovery::CaCerts::Dir(cacerts.path().to_owned()),
    );
    options.grpc = "127.0.0.1:0".parse().unwrap();
    options.monitor = None;
    options.inject = Some(discovery::inject::InjectOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        config: discovery::inject::InjectConfig {
            image: "isthmus/proxy:test".into(),
            discovery_address: "isthmus-discovery.istio-system.svc:15012".into(),
            trust_domain: String::new(),
            cluster: String::new(),
        },
        webhook_config: Some("isthmus-sidecar-injector".into()),
        validating_config: Some(discovery::validate::WEBHOOK_CONFIG.into()),
        dns_names: vec!["isthmus-discovery.istio-system.svc".into()],
    });
    let running = discovery::start(options).await.unwrap();
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), "istio-system");
    for name in [
        "isthmus-discovery",
        "isthmus-eastwestgateway",
        "istio-ingressgateway",
    ] {
        deployments
            .patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    serde_json::json!({"status": {"replicas": 1, "readyReplicas": 1}}),
                ),
            )
            .await
            .unwrap();
    }
    let start = std::time::Instant::now();
    loop {
        let kc = kubeconfig_path.clone();
        let out =
            tokio::task::spawn_blocking(move || meshctl(&["verify-install", "--kubeconfig", &kc]))
                .await
                .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            assert!(text.contains("The installation is complete."), "{text}");
            assert!(
                text.contains("✔ ValidatingWebhookConfiguration isthmus-validator (caBundle set)"),
                "{text}"
            );
            assert!(
                text.contains("✔ Deployment istio-system/isthmus-eastwestgateway: 1 ready"),
                "{text}"
            );
            assert!(
                text.contains("✔ Deployment istio-system/istio-ingressgateway: 1 ready"),
                "{text}"
            );
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "verify-install never succeeds:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    drop(running);

    // A bad cluster name is refused before anything is rendered.
    let out = meshctl(&[
        "install",
        "--dry-run",
        "--cluster-name",
        "East_1",
        "--network",
        "n",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DNS-1123"));

    // The mesh's outbound traffic policy reaches discovery, which tells every proxy.
    let args = |policy: &str| {
        vec![
            "install",
            "--dry-run",
            "--cluster-name",
            "east",
            "--network",
            "n",
            "--outbound-traffic-policy",
            policy,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let strict = args("REGISTRY_ONLY");
    let out = meshctl(&strict.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("--outbound-traffic-policy=REGISTRY_ONLY")
    );
    let wrong = args("SOMETIMES");
    let out = meshctl(&wrong.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success(), "an unknown policy is refused");
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    let root = testbed::workspace_root().display().to_string();
    let scripts = [
        "testbed/kind/multicluster.sh",
        "tools/build-kube-bins.sh",
        "tools/test.sh",
        "tools/bench/sidecar-hop.sh",
        ".ci/run",
    ];
    let out = Command::new("shellcheck")
        .current_dir(&root)
        .args(scripts)
        .output()
        .expect("shellcheck (installed by .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
