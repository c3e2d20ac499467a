//! The node's keys: on the built-in default keys it says so (log, /v1/health, metric),
//! and they cover datacenters dc1 to dc3 of the demo cluster only;
//! with a customer's keys from `opencluster-pki` it issues itself a certificate of that
//! cluster; keys for another datacenter, or a private key others can read, stop it from
//! starting with an error that says why.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use opencluster_tests::pki::customer_keys;
use opencluster_tests::{Node, NodeOpts, node_command, node_only, run_with_deadline};

#[test]
fn on_the_default_keys_the_node_says_it_is_insecure() {
    node_only!("keys are the node's");
    let node = Node::start_default();
    let health = node.admin_json("/v1/health");
    assert_eq!(health["insecure_default_keys"], true);
    assert_eq!(node.metric("opencluster_insecure_default_keys"), "1");
    let status = node.admin_json("/v1/status");
    let name = health["node"].as_str().unwrap();
    assert_eq!(status["security"]["identity"], format!("spiffe://opencluster-demo/dc/dc1/node/{name}"));
    assert_eq!(status["security"]["certificate"], "self-issued");
    assert!(node.log().contains("INSECURE"), "no INSECURE warning in the log:\n{}", node.log());
}

#[test]
fn the_default_keys_cover_dc3_and_refuse_other_datacenters_naming_opencluster_pki() {
    node_only!("keys are the node's");
    let node = Node::start(NodeOpts::new().args(&["--datacenter", "dc3"]));
    let health = node.admin_json("/v1/health");
    assert_eq!(health["insecure_default_keys"], true);
    assert_eq!(node.metric("opencluster_insecure_default_keys"), "1");
    let status = node.admin_json("/v1/status");
    let name = health["node"].as_str().unwrap();
    assert_eq!(status["security"]["identity"], format!("spiffe://opencluster-demo/dc/dc3/node/{name}"));
    assert!(node.log().contains("INSECURE"), "no INSECURE warning in the log:\n{}", node.log());

    let data = tempfile::tempdir().unwrap();
    let mut cmd = node_command();
    cmd.args(["--dev", "--client-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--datacenter", "dc4"])
        .args(["--data-dir", data.path().to_str().unwrap()]);
    let out = run_with_deadline(cmd, Duration::from_secs(15)).expect("the node refused to start, and exited");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {err}");
    assert!(err.contains("invalid setting `datacenter` (tls_dir unset)"), "{err}");
    assert!(err.contains("no built-in demo keys for datacenter \"dc4\" (only for dc1, dc2, dc3)"), "{err}");
    assert!(err.contains("opencluster-pki datacenter --ca ca --dc dc4"), "{err}");
}

#[test]
fn with_customer_keys_the_node_has_its_own_identity() {
    node_only!("keys are the node's");
    let dir = tempfile::tempdir().unwrap();
    let tls = customer_keys(dir.path(), "dc1");
    let node = Node::start(NodeOpts::new().args(&["--tls-dir", tls.to_str().unwrap()]));
    let health = node.admin_json("/v1/health");
    assert_eq!(health["insecure_default_keys"], false);
    assert_eq!(node.metric("opencluster_insecure_default_keys"), "0");
    let status = node.admin_json("/v1/status");
    let name = health["node"].as_str().unwrap();
    assert_eq!(status["security"]["identity"], format!("spiffe://acme/dc/dc1/node/{name}"));
    assert_eq!(status["security"]["cluster"], "acme");
    assert!(!node.log().contains("INSECURE"), "warned about default keys:\n{}", node.log());
}

/// Runs a node that must refuse to start; returns its stderr.
fn refused(tls: &str, datacenter: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = node_command();
    cmd.args(["--dev", "--client-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"]).args([
        "--data-dir",
        data.path().to_str().unwrap(),
        "--tls-dir",
        tls,
        "--datacenter",
        datacenter,
    ]);
    let out = run_with_deadline(cmd, Duration::from_secs(15)).expect("the node refused to start, and exited");
    assert_eq!(out.status.code(), Some(2), "exit status");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn keys_of_another_datacenter_are_refused() {
    node_only!("keys are the node's");
    let dir = tempfile::tempdir().unwrap();
    let tls = customer_keys(dir.path(), "dc2");
    let err = refused(tls.to_str().unwrap(), "dc1");
    assert!(err.contains("`datacenter`") && err.contains("\"dc2\""), "{err}");
}

#[test]
fn a_private_key_readable_by_others_is_refused_naming_the_file() {
    node_only!("keys are the node's");
    let dir = tempfile::tempdir().unwrap();
    let tls = customer_keys(dir.path(), "dc1");
    let key = tls.join("dc.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused(tls.to_str().unwrap(), "dc1");
    assert!(err.contains(key.to_str().unwrap()) && err.contains("chmod 600"), "{err}");
}
