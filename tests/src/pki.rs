//! Customer keys for tests, made with the real `opencluster-pki` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::node::pki_binary;

/// Runs `opencluster-pki` and panics with its stderr if it fails.
pub fn pki(args: &[&str]) {
    let out = Command::new(pki_binary()).args(args).output().expect("run opencluster-pki");
    assert!(out.status.success(), "opencluster-pki {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The tls dir of datacenter `dc` of cluster "acme" under `dir` (the root CA in `dir/ca`
/// is made on first use and shared by later datacenters).
pub fn customer_keys(dir: &Path, dc: &str) -> PathBuf {
    let ca = dir.join("ca");
    let tls = dir.join(format!("tls-{dc}"));
    if !ca.exists() {
        pki(&["init", "--cluster", "acme", "--out", ca.to_str().unwrap()]);
    }
    pki(&["datacenter", "--ca", ca.to_str().unwrap(), "--dc", dc, "--out", tls.to_str().unwrap()]);
    tls
}
