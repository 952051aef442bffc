//! Two real, independent Kubernetes control planes (etcd + kube-apiserver each), driven
//! with the `kube` crate: core objects, a service-account token checked by TokenReview,
//! the generated Istio CRDs, and one VirtualService per cluster read back.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use mesh_api::networking::VirtualService;
use testbed::{KubeBins, is_alive, start_control_planes};

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_saphyr::from_str(text).unwrap()
}

async fn exercise_cluster(client: kube::Client, cluster: &str, subset: &str) {
    let ns = "shop";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc: Service = yaml(
        "metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]",
    );
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();

    // Loopback is refused by API validation; endpoint data uses 10.x addresses.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let slice: EndpointSlice = yaml(&format!(
        "metadata:
  name: reviews-{cluster}
  labels: {{kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{{name: http, port: 9080, protocol: TCP}}]
endpoints:
- addresses: [10.10.0.7]
  conditions: {{ready: true}}
  zone: {cluster}-a"
    ));
    slices.create(&PostParams::default(), &slice).await.unwrap();

    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some("reviews".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let token_request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["isthmus-ca".into()],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued: TokenRequest = sas
        .create_subresource("token", "reviews", &PostParams::default(), &token_request)
        .await
        .unwrap();
    let token = issued.status.unwrap().token;

    // The token is accepted by this cluster's TokenReview for its audience.
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = reviews
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(vec!["isthmus-ca".into()]),
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let status = review.status.unwrap();
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.unwrap().username.unwrap(),
        "system:serviceaccount:shop:reviews"
    );

    testbed::apply::apply_crds(&client).await.unwrap();
    let vs = match mesh_api::parse_resource(&format!(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: reviews, namespace: {ns}}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {subset}}}
      weight: 100
    timeout: 3s"
    ))
    .unwrap()
    {
        mesh_api::Resource::VirtualService(vs) => *vs,
        other => panic!("{other:?}"),
    };
    let vss: Api<VirtualService> = Api::namespaced(client.clone(), ns);
    vss.create(&PostParams::default(), &vs).await.unwrap();

    // Read everything back.
    let back = vss.get("reviews").await.unwrap();
    assert_eq!(
        back.spec.http[0].route[0].destination.subset.as_deref(),
        Some(subset)
    );
    assert_eq!(
        back.spec.http[0].timeout.unwrap().as_std(),
        Duration::from_secs(3)
    );
    // The same object, fetched untyped and read by mesh-api as discovery will.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::erase::<VirtualService>(&()),
    );
    let dynamic = raw.get("reviews").await.unwrap();
    let reread = mesh_api::from_value(serde_json::to_value(&dynamic).unwrap()).unwrap();
    assert_eq!(reread.key(), "shop/reviews");

    // The cacerts Secret that `meshctl ca intermediate --secret-namespace` writes is
    // accepted as is (server-side dry run).
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some("istio-system".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let root = mesh_identity::RootCa::generate(
        &"mesh.example".parse().unwrap(),
        mesh_identity::ca::ROOT_VALIDITY,
    )
    .unwrap();
    let cacerts = root
        .intermediate(cluster, mesh_identity::ca::INTERMEDIATE_VALIDITY)
        .unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = yaml(&cacerts.secret_manifest("istio-system"));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "istio-system");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = secrets.create(&dry, &secret).await.unwrap();
    assert_eq!(created.data.unwrap().len(), 4);
    assert!(
        secrets.get_opt("cacerts").await.unwrap().is_none(),
        "a dry run stores nothing"
    );

    // The CRD schema refuses a misspelled field under strict validation, as
    // `kubectl apply` does by default.
    let typo = serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "typo", "namespace": ns},
        "spec": {"hosts": ["reviews"], "http": [{"rout": [{"destination": {"host": "reviews"}}]}]}
    });
    let err = raw
        .patch(
            "typo",
            &PatchParams::apply("isthmus-test").validation_strict(),
            &Patch::Apply(&typo),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(".spec.http[0].rout: field not declared in schema"),
        "{err}"
    );

    let slice = slices.get(&format!("reviews-{cluster}")).await.unwrap();
    assert_eq!(slice.endpoints[0].addresses, ["10.10.0.7"]);
    assert_eq!(
        services
            .get("reviews")
            .await
            .unwrap()
            .spec
            .unwrap()
            .cluster_ip
            .unwrap(),
        cluster_ip
    );
    assert!(sas.get("reviews").await.is_ok());
}

#[tokio::test]
async fn two_independent_control_planes_serve_real_objects() {
    let bins = KubeBins::locate().unwrap();
    let planes = start_control_planes(&bins, &["east", "west"])
        .await
        .unwrap();
    let (east, west) = (&planes[0], &planes[1]);
    assert_ne!(east.server(), west.server());
    assert_ne!(east.service_cidr(), west.service_cidr());

    let (ec, wc) = (east.client().await.unwrap(), west.client().await.unwrap());
    tokio::join!(
        exercise_cluster(ec.clone(), "east", "v1"),
        exercise_cluster(wc.clone(), "west", "v2")
    );

    // Independent: each cluster's ClusterIP comes from its own CIDR, each holds only
    // its own slice, and each VirtualService kept its own subset.
    let ip = |svc: Service| svc.spec.unwrap().cluster_ip.unwrap();
    let e_ip = ip(Api::<Service>::namespaced(ec.clone(), "shop")
        .get("reviews")
        .await
        .unwrap());
    let w_ip = ip(Api::<Service>::namespaced(wc.clone(), "shop")
        .get("reviews")
        .await
        .unwrap());
    assert!(e_ip.starts_with("10.96."), "{e_ip}");
    assert!(w_ip.starts_with("10.97."), "{w_ip}");
    let names = |c: kube::Client| async move {
        Api::<EndpointSlice>::namespaced(c, "shop")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|s| s.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(ec.clone()).await, ["reviews-east"]);
    assert_eq!(names(wc.clone()).await, ["reviews-west"]);
    let subset = |c: kube::Client| async move {
        Api::<VirtualService>::namespaced(c, "shop")
            .get("reviews")
            .await
            .unwrap()
            .spec
            .http[0]
            .route[0]
            .destination
            .subset
            .clone()
            .unwrap()
    };
    assert_eq!(subset(ec).await, "v1");
    assert_eq!(subset(wc).await, "v2");

    // RBAC is on: an anonymous client may not list Secrets.
    let anon = {
        let kc = kube::config::Kubeconfig::read_from(east.kubeconfig()).unwrap();
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        cfg.auth_info = Default::default();
        kube::Client::try_from(cfg).unwrap()
    };
    let err = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(anon, "shop")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("forbidden") || err.to_string().contains("Forbidden"),
        "{err}"
    );

    let pids: Vec<u32> = planes.iter().flat_map(|p| p.pids()).collect();
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| is_alive(*p)));
    drop(planes);
    assert!(
        pids.iter().all(|p| !is_alive(*p)),
        "every etcd and apiserver stopped"
    );
}

#[test]
fn a_panicking_test_leaves_no_process_behind() {
    let bins = KubeBins::locate().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let planes = start_control_planes(&bins, &["doomed"]).await.unwrap();
            tx.send(planes[0].pids()).unwrap();
            panic!("the test fails while its control plane runs");
        })
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let pids = rx.recv().unwrap();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} survived the panic");
    }
}
