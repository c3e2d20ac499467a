//! Shared helpers of the integration tests: a small PKI in memory, real QUIC endpoints on
//! 127.0.0.1:0, and `openssl verify` as an independent second opinion.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use opencluster_pki::ca::{DatacenterCa, LeafRequest, RootCa, Validity};
use opencluster_pki::peer::{self, PeerError, PeerIdentity, Policy};
use opencluster_pki::{Credentials, MutualTls, Role};

pub const DAY: Duration = Duration::from_secs(24 * 3600);

pub fn setup() {
    opencluster_pki::install_crypto_provider();
}

/// A root valid from 30 days ago for a year, so certificates can be issued in the past.
pub fn root(cluster: &str) -> RootCa {
    RootCa::create(cluster, Validity::days(SystemTime::now() - 30 * DAY, 365)).unwrap()
}

pub fn dc(root: &RootCa, name: &str) -> DatacenterCa {
    root.create_datacenter(name, Validity::days(SystemTime::now() - 30 * DAY, 365)).unwrap()
}

pub fn creds(dc: &DatacenterCa, role: Role, name: &str) -> Credentials {
    creds_valid(dc, role, name, Validity::days(SystemTime::now(), 7))
}

pub fn creds_valid(dc: &DatacenterCa, role: Role, name: &str, validity: Validity) -> Credentials {
    let leaf = dc
        .issue(&LeafRequest { role, name: name.to_string(), sans: vec!["127.0.0.1".to_string()], validity })
        .unwrap();
    Credentials::self_issued(leaf)
}

pub fn mtls(root: &RootCa, creds: &Credentials) -> MutualTls {
    MutualTls::new(root.cert_der(), creds).unwrap()
}

pub fn node_policy(cluster: &str, dc: &str) -> Policy {
    Policy::NodeOrConnectorOfDatacenter { cluster: cluster.to_string(), dc: dc.to_string() }
}

pub fn connector_policy(cluster: &str, own_dc: &str) -> Policy {
    Policy::ConnectorOfOtherDatacenter { cluster: cluster.to_string(), own_dc: own_dc.to_string() }
}

/// What each side of one connection attempt concluded.
#[derive(Debug)]
pub struct Outcome {
    pub server: Result<PeerIdentity, PeerError>,
    pub client: Result<PeerIdentity, PeerError>,
}

/// A real QUIC connection between two endpoints on loopback: the client dials, both sides
/// check the other against their policy, then exchange one request and response. Each
/// side reports the peer it accepted or why it failed.
pub async fn handshake(
    server: &MutualTls,
    server_policy: Policy,
    client: &MutualTls,
    client_policy: Policy,
) -> Outcome {
    let endpoint =
        quinn::Endpoint::server(server.quic_server_config().unwrap(), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let client_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let client_config = client.quic_client_config().unwrap();

    let server_side = async {
        let incoming = endpoint.accept().await.expect("an incoming connection");
        let conn = incoming.await.map_err(|e| peer::connection_error(&e))?;
        let peer = peer::authorize(&conn, &server_policy)?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| peer::connection_error(&e))?;
        let request = recv.read_to_end(64).await.map_err(|e| PeerError::Connection(e.to_string()))?;
        assert_eq!(request, b"ping");
        send.write_all(b"pong").await.map_err(|e| PeerError::Connection(e.to_string()))?;
        send.finish().map_err(|e| PeerError::Connection(e.to_string()))?;
        // Wait for the client to close after reading the answer.
        conn.closed().await;
        Ok(peer)
    };
    let client_side = async {
        let connecting = client_endpoint.connect_with(client_config, addr, "opencluster").unwrap();
        let conn = connecting.await.map_err(|e| peer::connection_error(&e))?;
        let peer = peer::authorize(&conn, &client_policy)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| peer::connection_error(&e))?;
        let result = async {
            send.write_all(b"ping").await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            recv.read_to_end(64).await.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(answer) => {
                assert_eq!(answer, b"pong");
                conn.close(0u32.into(), b"done");
                Ok(peer)
            }
            // The stream error only says "connection lost": ask the connection why.
            Err(_) => Err(peer::connection_error(&conn.closed().await)),
        }
    };
    let both = async { tokio::join!(server_side, client_side) };
    let (server, client) =
        tokio::time::timeout(Duration::from_secs(20), both).await.expect("handshake timed out");
    endpoint.close(0u32.into(), b"");
    client_endpoint.close(0u32.into(), b"");
    Outcome { server, client }
}

/// `openssl verify -CAfile root -untrusted intermediate leaf`; None when openssl is missing.
pub fn openssl_verify(
    dir: &Path,
    root_pem: &str,
    chain: &[rustls_pki_types::CertificateDer<'_>],
) -> Option<Result<(), String>> {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("NOTICE: openssl binary not found, skipping the openssl verify check");
        return None;
    }
    let pem = |c: &rustls_pki_types::CertificateDer<'_>| {
        opencluster_pki::cert::certs_to_pem(std::slice::from_ref(c))
    };
    std::fs::write(dir.join("ossl-root.pem"), root_pem).unwrap();
    std::fs::write(dir.join("ossl-leaf.pem"), pem(&chain[0])).unwrap();
    let intermediates: String = chain[1..].iter().map(pem).collect();
    std::fs::write(dir.join("ossl-untrusted.pem"), intermediates).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.join("ossl-root.pem"))
        .arg("-untrusted")
        .arg(dir.join("ossl-untrusted.pem"))
        .arg(dir.join("ossl-leaf.pem"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(if out.status.success() { Ok(()) } else { Err(text) })
}
