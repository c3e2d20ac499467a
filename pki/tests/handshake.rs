//! Real QUIC handshakes between two quinn endpoints on loopback: who is accepted, who is
//! refused, and whether the error says why. Plus the same chains through `openssl verify`.

mod common;

use std::time::SystemTime;

use common::*;
use opencluster_pki::ca::Validity;
use opencluster_pki::peer::PeerError;
use opencluster_pki::verify::verify_chain;
use opencluster_pki::{Identity, Role};

fn err(r: &Result<opencluster_pki::PeerIdentity, PeerError>) -> String {
    match r {
        Ok(p) => panic!("expected a refusal, got {}", p.identity),
        Err(e) => {
            eprintln!("refusal: {e}");
            e.to_string()
        }
    }
}

#[tokio::test]
async fn nodes_of_one_datacenter_accept_each_other() {
    setup();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let a = creds(&dc1, Role::Node, "node-a");
    let b = creds(&dc1, Role::Node, "node-b");
    let out =
        handshake(&mtls(&root, &a), node_policy("acme", "dc1"), &mtls(&root, &b), node_policy("acme", "dc1"))
            .await;
    let seen_by_server = out.server.unwrap();
    let seen_by_client = out.client.unwrap();
    assert_eq!(seen_by_server.identity, Identity::new("acme", "dc1", Role::Node, "node-b").unwrap());
    assert_eq!(seen_by_client.identity, Identity::new("acme", "dc1", Role::Node, "node-a").unwrap());
    assert_eq!(seen_by_server.fingerprint, b.info.fingerprint);
}

#[tokio::test]
async fn a_node_accepts_a_connector_of_its_datacenter() {
    setup();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let node = creds(&dc1, Role::Node, "node-a");
    let connector = creds(&dc1, Role::Connector, "conn-1");
    let out = handshake(
        &mtls(&root, &node),
        node_policy("acme", "dc1"),
        &mtls(&root, &connector),
        node_policy("acme", "dc1"),
    )
    .await;
    assert_eq!(out.server.unwrap().identity.role(), Role::Connector);
    assert_eq!(out.client.unwrap().identity.role(), Role::Node);
}

#[tokio::test]
async fn connectors_of_different_datacenters_accept_each_other() {
    setup();
    let root = root("acme");
    let c1 = creds(&dc(&root, "dc1"), Role::Connector, "conn-1");
    let c2 = creds(&dc(&root, "dc2"), Role::Connector, "conn-2");
    let out = handshake(
        &mtls(&root, &c1),
        connector_policy("acme", "dc1"),
        &mtls(&root, &c2),
        connector_policy("acme", "dc2"),
    )
    .await;
    assert_eq!(out.server.unwrap().identity.datacenter(), "dc2");
    assert_eq!(out.client.unwrap().identity.datacenter(), "dc1");
}

#[tokio::test]
async fn a_certificate_from_another_root_is_refused_by_the_handshake() {
    setup();
    let root = root("acme");
    // Same cluster name, different key: an impostor root.
    let impostor = common::root("acme");
    let server = creds(&dc(&root, "dc1"), Role::Node, "node-a");
    let client = creds(&dc(&impostor, "dc1"), Role::Node, "node-x");
    // The client trusts our root so that the server side is the one refusing.
    let out = handshake(
        &mtls(&root, &server),
        node_policy("acme", "dc1"),
        &opencluster_pki::MutualTls::new(root.cert_der(), &client).unwrap(),
        node_policy("acme", "dc1"),
    )
    .await;
    let e = err(&out.server);
    assert!(
        e.contains("handshake failed here") && e.contains("does not chain to this cluster's root CA"),
        "{e}"
    );
    let e = err(&out.client);
    assert!(e.contains("closed by peer") && e.contains("does not chain to this cluster's root CA"), "{e}");
}

#[tokio::test]
async fn a_certificate_of_another_cluster_is_refused_by_the_handshake() {
    setup();
    let root = root("acme");
    let other = common::root("zeta");
    let server = creds(&dc(&root, "dc1"), Role::Node, "node-a");
    let client = creds(&dc(&other, "dc1"), Role::Node, "node-z");
    // Each side trusts its own root: the client refuses the server's certificate first.
    let out = handshake(
        &mtls(&root, &server),
        node_policy("acme", "dc1"),
        &mtls(&other, &client),
        node_policy("zeta", "dc1"),
    )
    .await;
    let e = err(&out.client);
    assert!(
        e.contains("handshake failed here") && e.contains("does not chain to this cluster's root CA"),
        "{e}"
    );
    let e = err(&out.server);
    assert!(e.contains("UnknownIssuer") && e.contains("does not chain to this cluster's root CA"), "{e}");
}

#[tokio::test]
async fn a_node_of_another_datacenter_is_refused_by_policy() {
    setup();
    let root = root("acme");
    let server = creds(&dc(&root, "dc1"), Role::Node, "node-a");
    let client = creds(&dc(&root, "dc2"), Role::Node, "node-b");
    let out = handshake(
        &mtls(&root, &server),
        node_policy("acme", "dc1"),
        &mtls(&root, &client),
        node_policy("acme", "dc2"),
    )
    .await;
    // Both sides refuse; whichever closes first, each error names the datacenter.
    let e = err(&out.server);
    assert!(e.contains("wrong datacenter \"dc2\"") || e.contains("wrong datacenter \"dc1\""), "{e}");
    let e = err(&out.client);
    assert!(e.contains("wrong datacenter"), "{e}");
}

#[tokio::test]
async fn a_connector_refuses_connectors_of_its_own_datacenter() {
    setup();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let server = creds(&dc1, Role::Connector, "conn-1");
    let client = creds(&dc1, Role::Connector, "conn-1b");
    let out = handshake(
        &mtls(&root, &server),
        connector_policy("acme", "dc1"),
        // The client's own policy would accept the server, so only the server refuses.
        &mtls(&root, &client),
        node_policy("acme", "dc1"),
    )
    .await;
    let e = err(&out.server);
    assert!(e.contains("wrong datacenter \"dc1\", it is this connector's own"), "{e}");
    let e = err(&out.client);
    assert!(e.starts_with("refused by peer: ") && e.contains("it is this connector's own"), "{e}");
}

#[tokio::test]
async fn the_wrong_role_is_refused_by_policy() {
    setup();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let dc2 = dc(&root, "dc2");

    // A client certificate dialling a node.
    let node = creds(&dc1, Role::Node, "node-a");
    let app = creds(&dc1, Role::Client, "app");
    let out = handshake(
        &mtls(&root, &node),
        node_policy("acme", "dc1"),
        &mtls(&root, &app),
        node_policy("acme", "dc1"),
    )
    .await;
    let e = err(&out.server);
    assert!(e.contains("wrong role client, only node or connector accepted"), "{e}");
    let e = err(&out.client);
    assert!(e.starts_with("refused by peer: ") && e.contains("wrong role client"), "{e}");

    // A node of another datacenter dialling a connector's WAN side.
    let connector = creds(&dc1, Role::Connector, "conn-1");
    let stranger = creds(&dc2, Role::Node, "node-b");
    let out = handshake(
        &mtls(&root, &connector),
        connector_policy("acme", "dc1"),
        &mtls(&root, &stranger),
        connector_policy("acme", "dc2"),
    )
    .await;
    let e = err(&out.server);
    assert!(e.contains("wrong role node, only connector accepted"), "{e}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused_by_the_handshake() {
    setup();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let server = creds(&dc1, Role::Node, "node-a");
    let past = Validity { not_before: SystemTime::now() - 10 * DAY, not_after: SystemTime::now() - DAY };
    let expired = creds_valid(&dc1, Role::Node, "node-old", past);

    // Expired client certificate: the server refuses it.
    let out = handshake(
        &mtls(&root, &server),
        node_policy("acme", "dc1"),
        &mtls(&root, &expired),
        node_policy("acme", "dc1"),
    )
    .await;
    let e = err(&out.server);
    assert!(e.contains("certificate expired"), "{e}");
    let e = err(&out.client);
    assert!(e.contains("closed by peer") && e.contains("certificate expired"), "{e}");

    // Expired server certificate: the dialling client refuses it.
    let out = handshake(
        &mtls(&root, &expired),
        node_policy("acme", "dc1"),
        &mtls(&root, &server),
        node_policy("acme", "dc1"),
    )
    .await;
    let e = err(&out.client);
    assert!(e.contains("handshake failed here") && e.contains("certificate expired"), "{e}");
}

#[tokio::test]
async fn rotation_changes_the_certificate_of_new_handshakes() {
    setup();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let server_tls = mtls(&root, &creds(&dc1, Role::Node, "node-a"));
    let client = creds(&dc1, Role::Node, "node-b");
    let client_tls = mtls(&root, &client);
    let first =
        handshake(&server_tls, node_policy("acme", "dc1"), &client_tls, node_policy("acme", "dc1")).await;
    assert_eq!(first.server.unwrap().fingerprint, client.info.fingerprint);

    let renewed = creds(&dc1, Role::Node, "node-b");
    client_tls.rotate(&renewed).unwrap();
    let second =
        handshake(&server_tls, node_policy("acme", "dc1"), &client_tls, node_policy("acme", "dc1")).await;
    assert_eq!(second.server.unwrap().fingerprint, renewed.info.fingerprint);
}

#[test]
fn chains_verify_with_rustls_and_openssl() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    for role in Role::ALL {
        let c = creds(&dc1, role, "host-1");
        let id = verify_chain(root.cert_der(), &c.chain, SystemTime::now()).unwrap();
        assert_eq!(id.role(), role);
        if let Some(result) = openssl_verify(dir.path(), &root.cert_pem(), &c.chain) {
            result.unwrap();
        }
    }
    // openssl agrees on refusals too: another root, and an expired leaf.
    let other = common::root("acme");
    let c = creds(&dc1, Role::Node, "host-1");
    if let Some(result) = openssl_verify(dir.path(), &other.cert_pem(), &c.chain) {
        assert!(result.is_err());
    }
    let past = Validity { not_before: SystemTime::now() - 10 * DAY, not_after: SystemTime::now() - DAY };
    let old = creds_valid(&dc1, Role::Node, "host-1", past);
    if let Some(result) = openssl_verify(dir.path(), &root.cert_pem(), &old.chain) {
        let e = result.unwrap_err();
        assert!(e.contains("expired"), "{e}");
    }
}

#[tokio::test]
async fn a_leaf_minted_for_another_datacenter_is_refused_by_the_handshake() {
    setup();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let server = creds(&dc1, Role::Node, "node-a");
    // Someone holding dc1's intermediate key (it is in dc1's images) mints a dc2 identity.
    let forged = forge(&dc1, "spiffe://acme/dc/dc2/connector/evil");
    let out = handshake(
        &mtls(&root, &server),
        connector_policy("acme", "dc1"),
        &mtls(&root, &forged),
        node_policy("acme", "dc1"),
    )
    .await;
    let e = err(&out.server);
    assert!(e.contains("claims datacenter \"dc2\" but was issued by the CA of acme/dc1"), "{e}");
    let e = err(&out.client);
    assert!(e.contains("closed by peer") && e.contains("claims datacenter \"dc2\""), "{e}");
}

fn forge(dc: &opencluster_pki::ca::DatacenterCa, uri: &str) -> opencluster_pki::Credentials {
    let issuer_key = rcgen::KeyPair::from_pem(&dc.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(dc.cert_der(), issuer_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(uri.to_string().try_into().unwrap()));
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = (SystemTime::now() - DAY).into();
    params.not_after = (SystemTime::now() + DAY).into();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap().der().clone();
    let info = opencluster_pki::cert::CertInfo::parse(&leaf).unwrap();
    opencluster_pki::Credentials {
        identity: Identity::parse_uri(uri).unwrap(),
        chain: vec![leaf, dc.cert_der().clone()],
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        info,
        origin: opencluster_pki::tls::Origin::SelfIssued,
    }
}

#[tokio::test]
async fn renewal_keeps_open_connections_and_new_handshakes_use_the_new_certificate() {
    setup();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let policy = node_policy("acme", "dc1");
    let server_tls = mtls(&root, &creds(&dc1, Role::Node, "node-a"));
    let old = creds(&dc1, Role::Node, "node-b");
    let client_tls = mtls(&root, &old);

    let server =
        quinn::Endpoint::server(server_tls.quic_server_config().unwrap(), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let addr = server.local_addr().unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    // Built once, like a process does; the resolver inside follows rotations.
    client.set_default_client_config(client_tls.quic_client_config().unwrap());

    // The server echoes on every stream of every connection and reports each peer.
    let (peers_tx, mut peers) = tokio::sync::mpsc::channel(4);
    let accept_policy = policy.clone();
    let acceptor = tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let conn = incoming.await.unwrap();
            peers_tx.send(opencluster_pki::authorize(&conn, &accept_policy).unwrap()).await.unwrap();
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let data = recv.read_to_end(64).await.unwrap();
                    send.write_all(&data).await.unwrap();
                    send.finish().unwrap();
                }
            });
        }
    });
    let echo = |conn: quinn::Connection| async move {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        send.finish().unwrap();
        recv.read_to_end(64).await.unwrap()
    };

    let first = client.connect(addr, "node-a").unwrap().await.unwrap();
    assert_eq!(peers.recv().await.unwrap().fingerprint, old.info.fingerprint);
    assert_eq!(echo(first.clone()).await, b"hello");

    let renewed = creds(&dc1, Role::Node, "node-b");
    client_tls.rotate(&renewed).unwrap();

    // The open connection carries on...
    assert_eq!(echo(first.clone()).await, b"hello");
    // ...and the next handshake presents the renewed certificate.
    let second = client.connect(addr, "node-a").unwrap().await.unwrap();
    assert_eq!(peers.recv().await.unwrap().fingerprint, renewed.info.fingerprint);
    assert_eq!(echo(second.clone()).await, b"hello");
    assert_eq!(echo(first.clone()).await, b"hello");

    first.close(0u32.into(), b"");
    second.close(0u32.into(), b"");
    client.wait_idle().await;
    acceptor.abort();
}
