//! Federated mTLS between clusters over real sockets: identities seen on both sides,
//! foreign roots refused, root rotation and certificate renewal without dropping
//! connections.

mod support;

use std::time::Duration;

use mesh_identity::{Identity, TrustBundle, TrustConfig};
use support::*;

#[tokio::test]
async fn east_and_west_workloads_complete_mtls_and_see_each_others_ids() {
    let mesh = Mesh::new(TD);
    let frontend = Identity::new(workload(&mesh.east, "shop", "frontend"), mesh.trust()).unwrap();
    let reviews = Identity::new(workload(&mesh.west, "shop", "reviews"), mesh.trust()).unwrap();

    let server = echo_server(&reviews).await;
    let mut conn = connect(&frontend, server.addr).await.unwrap();
    assert_eq!(
        conn.seen_by_server,
        "spiffe://mesh.example/ns/shop/sa/frontend"
    );
    assert_eq!(
        conn.server_id.to_string(),
        "spiffe://mesh.example/ns/shop/sa/reviews"
    );
    conn.echo("hello west").await.unwrap();
}

#[tokio::test]
async fn workload_under_another_root_is_refused_with_the_reason() {
    let mesh = Mesh::new(TD);
    let rogue = Mesh::new(TD); // same trust domain name, different root
    let server_id = Identity::new(workload(&mesh.west, "shop", "reviews"), mesh.trust()).unwrap();
    let intruder = Identity::new(workload(&rogue.east, "shop", "frontend"), rogue.trust()).unwrap();

    let mut server = echo_server(&server_id).await;
    // The intruder trusts nothing of ours either, so it refuses our server first.
    let err = connect(&intruder, server.addr)
        .await
        .err()
        .expect("refused");
    assert!(err.contains("does not reach a trusted root"), "{err}");

    // An intruder that accepts any server is still refused by our server.
    let mut lenient = rogue.trust();
    lenient.bundle.merge(&mesh.trust().bundle);
    let lenient_intruder =
        Identity::new(workload(&rogue.east, "shop", "frontend"), rogue.trust()).unwrap();
    lenient_intruder.update_trust(lenient).unwrap();
    assert!(connect(&lenient_intruder, server.addr).await.is_err());
    let reason = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = server.errors.recv().await.unwrap();
            if e.contains("trusted root") {
                return e;
            }
        }
    })
    .await
    .expect("server reports why it refused");
    assert!(reason.contains("issuer unknown"), "{reason}");
}

#[tokio::test]
async fn client_can_require_a_specific_server_identity() {
    let mesh = Mesh::new(TD);
    let client = Identity::new(workload(&mesh.east, "shop", "frontend"), mesh.trust()).unwrap();
    let server = Identity::new(workload(&mesh.west, "shop", "ratings"), mesh.trust()).unwrap();
    let s = echo_server(&server).await;
    let err = connect_expecting(&client, s.addr, vec![id(TD, "shop", "reviews")])
        .await
        .err()
        .expect("wrong identity refused");
    assert!(
        err.contains("is not the expected spiffe://mesh.example/ns/shop/sa/reviews"),
        "{err}"
    );
    connect_expecting(&client, s.addr, vec![id(TD, "shop", "ratings")])
        .await
        .unwrap();
}

#[tokio::test]
async fn root_rotation_a_to_ab_to_b_keeps_connections_working() {
    let a = Mesh::new(TD);
    let b = Mesh::new(TD);
    let client =
        Identity::new(workload(&a.east, "shop", "frontend"), trust_of(&[&a.root])).unwrap();
    let server = Identity::new(workload(&a.west, "shop", "reviews"), trust_of(&[&a.root])).unwrap();
    let s = echo_server(&server).await;

    // Step 1: everyone on A.
    let mut open_a = connect(&client, s.addr).await.unwrap();

    // Step 2: bundles become A+B; certificates still from A.
    client.update_trust(trust_of(&[&a.root, &b.root])).unwrap();
    server.update_trust(trust_of(&[&a.root, &b.root])).unwrap();
    open_a.echo("after A+B").await.unwrap();
    connect(&client, s.addr).await.unwrap();

    // Step 3: certificates move to B one side at a time; both roots still trusted.
    server
        .rotate_cert(workload(&b.west, "shop", "reviews"))
        .unwrap();
    let mut mixed = connect(&client, s.addr).await.unwrap();
    client
        .rotate_cert(workload(&b.east, "shop", "frontend"))
        .unwrap();
    let mut open_b = connect(&client, s.addr).await.unwrap();
    assert_eq!(
        open_b.seen_by_server,
        "spiffe://mesh.example/ns/shop/sa/frontend"
    );

    // A bundle of B alone is refused while a workload still holds an A certificate…
    let stale = Identity::new(
        workload(&a.east, "shop", "legacy"),
        trust_of(&[&a.root, &b.root]),
    )
    .unwrap();
    let err = stale
        .update_trust(trust_of(&[&b.root]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not trust this workload's own certificate"),
        "{err}"
    );

    // Step 4: bundles become B alone.
    client.update_trust(trust_of(&[&b.root])).unwrap();
    server.update_trust(trust_of(&[&b.root])).unwrap();
    connect(&client, s.addr).await.unwrap();

    // Every connection opened along the way still works.
    open_a.echo("still here").await.unwrap();
    mixed.echo("still here").await.unwrap();
    open_b.echo("still here").await.unwrap();

    // And a workload left on A is now refused.
    assert!(connect(&stale, s.addr).await.is_err());
}

#[tokio::test]
async fn renewal_under_an_open_connection_keeps_it_open() {
    let mesh = Mesh::new(TD);
    let client = Identity::new(workload(&mesh.east, "shop", "frontend"), mesh.trust()).unwrap();
    let server = Identity::new(workload(&mesh.west, "shop", "reviews"), mesh.trust()).unwrap();
    let s = echo_server(&server).await;

    let mut open = connect(&client, s.addr).await.unwrap();
    let before = open.server_serial.clone();
    server
        .rotate_cert(workload(&mesh.west, "shop", "reviews"))
        .unwrap();
    client
        .rotate_cert(workload(&mesh.east, "shop", "frontend"))
        .unwrap();

    open.echo("across renewal").await.unwrap();
    let fresh = connect(&client, s.addr).await.unwrap();
    assert_ne!(
        fresh.server_serial, before,
        "new handshakes present the renewed certificate"
    );
    assert_eq!(server.cert().info().serial, fresh.server_serial);
}

#[tokio::test]
async fn renewal_of_another_identity_is_refused_and_the_current_one_stays() {
    let mesh = Mesh::new(TD);
    let server = Identity::new(workload(&mesh.west, "shop", "reviews"), mesh.trust()).unwrap();
    let serial = server.cert().info().serial.clone();
    let err = server
        .rotate_cert(workload(&mesh.west, "shop", "ratings"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not the expected spiffe://mesh.example/ns/shop/sa/reviews"),
        "{err}"
    );
    assert_eq!(server.cert().info().serial, serial);
}

#[tokio::test]
async fn trust_domain_alias_is_accepted_and_mapped_to_the_local_domain() {
    // The mesh was renamed from old.example to mesh.example; workloads still holding
    // old.example identities (under the same root) keep working.
    let old = Mesh::new("old.example");
    let td_new: mesh_identity::TrustDomain = "mesh.example".parse().unwrap();
    let mut bundle = TrustBundle::new();
    bundle
        .add_pem(td_new.clone(), old.root.cert_pem().as_bytes(), "root")
        .unwrap();
    let with_alias =
        TrustConfig::new(td_new.clone(), bundle).with_alias("old.example".parse().unwrap());

    let server = Identity::new(workload(&old.west, "shop", "reviews"), with_alias.clone()).unwrap();
    let client =
        Identity::new(workload(&old.east, "shop", "frontend"), with_alias.clone()).unwrap();
    let s = echo_server(&server).await;
    let conn = connect_expecting(&client, s.addr, vec![id("mesh.example", "shop", "reviews")])
        .await
        .unwrap();
    assert_eq!(
        conn.seen_by_server,
        "spiffe://old.example/ns/shop/sa/frontend"
    );
    assert_eq!(
        with_alias.canonical(&conn.server_id).to_string(),
        "spiffe://mesh.example/ns/shop/sa/reviews"
    );
}

#[tokio::test]
async fn federation_with_another_trust_domain_through_a_spiffe_bundle() {
    let ours = Mesh::new("mesh.example");
    let theirs = Mesh::new("partner.example");
    let partner_td: mesh_identity::TrustDomain = "partner.example".parse().unwrap();

    // They publish their bundle document; we import it.
    let their_bundle = theirs.trust().bundle;
    let doc = their_bundle.to_spiffe_json(&partner_td, 1, 300).unwrap();
    let imported =
        TrustBundle::from_spiffe_json(partner_td.clone(), &doc, "partner-bundle.json").unwrap();
    assert_eq!(imported.roots(&partner_td), their_bundle.roots(&partner_td));

    let server = Identity::new(workload(&ours.west, "shop", "reviews"), ours.trust()).unwrap();
    let partner = Identity::new(workload(&theirs.east, "b2b", "client"), theirs.trust()).unwrap();
    let mut partner_trust = theirs
        .trust()
        .with_federated("mesh.example".parse().unwrap());
    partner_trust.bundle.merge(&ours.trust().bundle);
    partner.update_trust(partner_trust).unwrap();
    let mut s = echo_server(&server).await;

    // Not federated yet: the unknown trust domain is refused, and the server says so.
    assert!(connect(&partner, s.addr).await.is_err());
    let reason = s.errors.recv().await.unwrap();
    assert!(
        reason.contains("trust domain \"partner.example\" is not accepted here"),
        "{reason}"
    );

    // Federated: accepted, identity seen with its own trust domain.
    let mut federated = ours.trust().with_federated(partner_td.clone());
    federated.bundle.merge(&imported);
    server.update_trust(federated).unwrap();
    let conn = connect(&partner, s.addr).await.unwrap();
    assert_eq!(
        conn.seen_by_server,
        "spiffe://partner.example/ns/b2b/sa/client"
    );
}

struct LocalCa(mesh_identity::ClusterCa);

impl mesh_identity::rotation::CertificateSource for LocalCa {
    async fn fetch(
        &self,
        identity: &Identity,
    ) -> mesh_identity::Result<mesh_identity::rotation::Renewed> {
        let id = identity.cert().id().clone();
        Ok(self
            .0
            .issue_workload(&id, Duration::from_secs(3600))?
            .load("renewed")?
            .into())
    }
}

#[tokio::test(start_paused = true)]
async fn renewal_task_replaces_the_certificate_at_half_life() {
    let mesh = Mesh::new(TD);
    let wid = id(TD, "shop", "frontend");
    // A 20 s certificate (backdated by the CA by 5 min, which does not count): renewed
    // at 10 s ± 1 s. Renewed ones live 1 h, so they are due 1800 s ± 180 s after they
    // arrive.
    let first = mesh
        .east
        .issue_workload(&wid, Duration::from_secs(20))
        .unwrap()
        .load("first")
        .unwrap();
    let serial0 = first.info().serial.clone();
    let identity = Identity::new(first, mesh.trust()).unwrap();
    let task = tokio::spawn(mesh_identity::rotation::run_renewal(
        identity.clone(),
        LocalCa(mesh.east),
    ));

    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        identity.cert().info().serial,
        serial0,
        "renewed before half of the time it had left"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let serial1 = identity.cert().info().serial.clone();
    assert_ne!(serial1, serial0, "not renewed at half of its 20 s");

    // Not renewed again before its half life…
    tokio::time::sleep(Duration::from_secs(1600)).await;
    assert_eq!(identity.cert().info().serial, serial1);
    // …and renewed once it has passed.
    tokio::time::sleep(Duration::from_secs(500)).await;
    assert_ne!(identity.cert().info().serial, serial1);
    task.abort();
}
