//! The `opencluster-pki` binary, run for real in a temp dir: init -> datacenter -> issue ->
//! inspect -> verify, gossip keyring editing, bake, and how failures are reported.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use opencluster_pki::files::TlsDir;
use opencluster_pki::keyring::Keyring;

fn pki(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opencluster-pki")).args(args).current_dir(cwd).output().unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let out = pki(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "opencluster-pki {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with status 1 and one line on stderr; returns that line.
fn fails(args: &[&str], cwd: &Path) -> String {
    let out = pki(args, cwd);
    assert_eq!(out.status.code(), Some(1), "opencluster-pki {args:?}: {out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr.trim_end().to_string()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// `init` + `datacenter` in `tmp`: ca/ and dc1/.
fn make_pki(tmp: &Path) {
    ok(&["init", "--cluster", "acme", "--out", "ca"], tmp);
    ok(&["datacenter", "--ca", "ca", "--dc", "dc1", "--out", "dc1"], tmp);
}

#[test]
fn init_datacenter_issue_inspect_verify_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = ok(&["init", "--cluster", "acme", "--out", "ca"], t);
    assert!(out.contains("root CA of cluster acme"), "{out}");
    assert_eq!(mode(&t.join("ca")), 0o700);
    assert_eq!(mode(&t.join("ca/root.key")), 0o600);
    assert_eq!(mode(&t.join("ca/root.crt")), 0o644);

    ok(&["datacenter", "--ca", "ca", "--dc", "dc1", "--out", "dc1"], t);
    for (f, m) in [("root.crt", 0o644), ("dc.crt", 0o644), ("dc.key", 0o600), ("gossip.keyring", 0o600)] {
        assert_eq!(mode(&t.join("dc1").join(f)), m, "{f}");
    }
    let tls = TlsDir::load(&t.join("dc1")).unwrap();
    assert_eq!((tls.cluster.as_str(), tls.datacenter.as_str()), ("acme", "dc1"));

    let out = ok(
        &[
            "issue",
            "--ca",
            "dc1",
            "--role",
            "node",
            "--name",
            "host-1",
            "--san",
            "10.0.0.5",
            "--san",
            "host-1.lan",
            "--out",
            "host-1",
            "--days",
            "30",
        ],
        t,
    );
    assert!(out.contains("spiffe://acme/dc/dc1/node/host-1 valid until"), "{out}");
    for (f, m) in [("node.crt", 0o644), ("node.key", 0o600), ("root.crt", 0o644), ("gossip.keyring", 0o600)] {
        assert_eq!(mode(&t.join("host-1").join(f)), m, "{f}");
    }
    // The issued dir is a complete tls dir without the intermediate key.
    let leaf_dir = TlsDir::load(&t.join("host-1")).unwrap();
    assert!(leaf_dir.intermediate.is_none() && leaf_dir.leaf.is_some() && leaf_dir.keyring.is_some());

    let out = ok(&["inspect", "host-1/node.crt"], t);
    for needle in [
        "certificate 1 of 2",
        "kind         leaf",
        "URI:spiffe://acme/dc/dc1/node/host-1, DNS:host-1, DNS:host-1.lan, IP:10.0.0.5",
        "cluster      acme",
        "datacenter   dc1",
        "role         node",
        "name         host-1",
        "usage        server auth, client auth",
        "status       valid, expires in 30 days",
        "fingerprint  SHA256:",
        "certificate 2 of 2",
        "kind         datacenter intermediate CA",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    // Our fingerprint is openssl's.
    if let Ok(o) = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", "ca/root.crt"])
        .current_dir(t)
        .output()
    {
        let theirs = String::from_utf8_lossy(&o.stdout);
        let hex = theirs.trim().rsplit('=').next().unwrap().to_string();
        assert!(ok(&["inspect", "ca/root.crt"], t).contains(&format!("SHA256:{hex}")), "{theirs}");
    }

    let out = ok(&["verify", "--ca", "ca/root.crt", "host-1/node.crt", "--role", "node"], t);
    assert_eq!(out.trim(), "host-1/node.crt: OK, spiffe://acme/dc/dc1/node/host-1");
    ok(&["verify", "--ca", "dc1", "host-1/node.crt"], t);
    let e = fails(&["verify", "--ca", "ca/root.crt", "host-1/node.crt", "--role", "connector"], t);
    assert_eq!(
        e,
        "opencluster-pki: host-1/node.crt: certificate spiffe://acme/dc/dc1/node/host-1 has role node, expected connector"
    );

    // openssl agrees that the chain is good.
    let status = Command::new("openssl")
        .args(["verify", "-CAfile", "ca/root.crt", "-untrusted", "dc1/dc.crt", "host-1/node.crt"])
        .current_dir(t)
        .output();
    match status {
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout)),
        Err(_) => eprintln!("NOTICE: openssl binary not found, skipping the openssl verify check"),
    }

    // Issued into the tls dir itself: the identical root.crt and keyring stay as they are.
    ok(&["issue", "--ca", "dc1", "--role", "connector", "--name", "conn-1", "--out", "dc1"], t);
    let both = TlsDir::load(&t.join("dc1")).unwrap();
    assert!(both.intermediate.is_some() && both.leaf.is_some());
    let e = fails(&["issue", "--ca", "dc1", "--role", "node", "--name", "n9", "--out", "dc1"], t);
    assert!(e.ends_with("dc1/node.crt already exists; refusing to overwrite it without --force"), "{e}");

    // A client certificate does not get the gossip keyring.
    ok(&["issue", "--ca", "dc1", "--role", "client", "--name", "app", "--out", "app"], t);
    assert!(t.join("app/node.crt").exists() && !t.join("app/gossip.keyring").exists());
}

#[test]
fn verify_refuses_another_root_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    make_pki(t);
    ok(&["init", "--cluster", "other", "--out", "other"], t);
    ok(&["issue", "--ca", "dc1", "--role", "node", "--name", "n1", "--out", "n1"], t);
    let e = fails(&["verify", "--ca", "other/root.crt", "n1/node.crt"], t);
    assert!(e.contains("n1/node.crt: certificate rejected: unknown issuer"), "{e}");
    // Only the leaf, without the intermediate: no chain to the root.
    let leaf_only: String = fs::read_to_string(t.join("n1/node.crt"))
        .unwrap()
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    fs::write(t.join("leaf.crt"), leaf_only).unwrap();
    let e = fails(&["verify", "--ca", "ca/root.crt", "leaf.crt"], t);
    assert!(e.contains("unknown issuer"), "{e}");
}

#[test]
fn errors_are_one_line_naming_the_file_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    make_pki(t);

    let e = fails(&["init", "--cluster", "acme", "--out", "ca"], t);
    assert_eq!(e, "opencluster-pki: ca/root.crt already exists; refusing to overwrite it without --force");
    ok(&["init", "--cluster", "acme", "--out", "ca", "--force"], t);

    let e = fails(&["datacenter", "--ca", "nowhere", "--dc", "dc2", "--out", "dc2"], t);
    assert_eq!(
        e,
        "opencluster-pki: nowhere/root.crt: file not found; expected a CA dir made by `opencluster-pki init`"
    );
    let e = fails(&["init", "--cluster", "Acme", "--out", "x"], t);
    assert!(e.starts_with("opencluster-pki: invalid cluster name \"Acme\""), "{e}");

    fs::write(t.join("garbage.crt"), "hello\n").unwrap();
    let e = fails(&["inspect", "garbage.crt"], t);
    assert_eq!(e, "opencluster-pki: garbage.crt: no PEM certificate (-----BEGIN CERTIFICATE-----) found");
    let e = fails(&["inspect", "missing.crt"], t);
    assert_eq!(e, "opencluster-pki: missing.crt: file not found");

    fs::set_permissions(t.join("dc1/dc.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let e = fails(&["issue", "--ca", "dc1", "--role", "node", "--name", "n1", "--out", "n1"], t);
    assert_eq!(
        e,
        "opencluster-pki: key file dc1/dc.key is readable by group or others (mode 0644): chmod 600 dc1/dc.key"
    );

    for args in
        [&["issue", "--ca", "dc1", "--role", "admin", "--name", "n", "--out", "o"][..], &["bogus"], &["init"]]
    {
        let out = pki(args, t);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    let help = ok(&["bake", "--help"], t);
    assert!(help.contains("--tls-dir") && help.contains("10001:10001"), "{help}");
}

#[test]
fn gossip_keyring_rotation_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let new_key = ok(&["gossip-key"], t).trim().to_string();
    assert_eq!(new_key.len(), 44, "{new_key}");
    assert_ne!(ok(&["gossip-key"], t).trim(), new_key);

    let first = ok(&["gossip-key"], t).trim().to_string();
    ok(&["gossip-key", "--keyring", "ring", "--install", &first], t);
    assert_eq!(mode(&t.join("ring")), 0o600);

    // Rotation: install, use, remove the old one.
    let e = fails(&["gossip-key", "--keyring", "ring", "--use", &new_key], t);
    assert!(e.contains("is not installed in the keyring"), "{e}");
    ok(&["gossip-key", "--keyring", "ring", "--install", &new_key], t);
    let e = fails(&["gossip-key", "--keyring", "ring", "--remove", &first], t);
    assert!(e.contains("is the primary key and cannot be removed"), "{e}");
    ok(&["gossip-key", "--keyring", "ring", "--use", &new_key], t);
    ok(&["gossip-key", "--keyring", "ring", "--remove", &first], t);
    let ring = Keyring::from_toml(&fs::read_to_string(t.join("ring")).unwrap()).unwrap();
    assert_eq!(ring.primary().to_base64(), new_key);
    assert_eq!(ring.keys().len(), 1);
    assert_eq!(mode(&t.join("ring")), 0o600);
    let listing = ok(&["gossip-key", "--keyring", "ring"], t);
    assert!(listing.contains("primary") && !listing.contains(&new_key), "{listing}");

    let e = fails(&["gossip-key", "--keyring", "ring", "--install", "short"], t);
    assert!(e.contains("invalid gossip key"), "{e}");
    let out = pki(&["gossip-key", "--install", &first], t);
    assert_eq!(out.status.code(), Some(2), "--install needs --keyring");
    let out = pki(&["gossip-key", "--keyring", "ring", "--install", &first, "--use", &first], t);
    assert_eq!(out.status.code(), Some(2), "one action at a time");
}

#[test]
fn bake_writes_a_complete_build_context() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    make_pki(t);
    fs::write(t.join("site.toml"), "datacenter = \"dc1\"\n").unwrap();
    let out = ok(
        &[
            "bake",
            "--tls-dir",
            "dc1",
            "--from",
            "opencluster/node:0.1.0",
            "--tag",
            "acme/node:dc1",
            "--out",
            "ctx",
            "--config",
            "site.toml",
        ],
        t,
    );
    assert!(out.contains("next: docker build -t acme/node:dc1 ctx"), "{out}");
    let ctx = t.join("ctx");
    let dockerfile = fs::read_to_string(ctx.join("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "FROM opencluster/node:0.1.0",
            "COPY --chown=10001:10001 tls/root.crt tls/dc.crt /etc/opencluster/tls/",
            "COPY --chown=10001:10001 tls/dc.key tls/gossip.keyring /etc/opencluster/tls/",
            "COPY --chown=10001:10001 conf.d/site.toml /etc/opencluster/conf.d/",
            "ENV OPENCLUSTER_TLS_DIR=/etc/opencluster/tls",
            lines[5],
        ]
    );
    assert!(lines[5].starts_with("LABEL io.opencluster.cluster=\"acme\" io.opencluster.datacenter=\"dc1\""));
    // Every COPY source exists, with the mode it must have in the image.
    for (f, m) in [
        ("tls/root.crt", 0o644),
        ("tls/dc.crt", 0o644),
        ("tls/dc.key", 0o600),
        ("tls/gossip.keyring", 0o600),
        ("conf.d/site.toml", 0o600),
        ("Dockerfile", 0o644),
        ("README.md", 0o644),
    ] {
        assert_eq!(mode(&ctx.join(f)), m, "{f}");
    }
    assert_eq!(mode(&ctx), 0o700);
    assert_eq!(mode(&ctx.join("tls")), 0o700);
    for f in ["root.crt", "dc.crt", "dc.key", "gossip.keyring"] {
        assert_eq!(
            fs::read(ctx.join("tls").join(f)).unwrap(),
            fs::read(t.join("dc1").join(f)).unwrap(),
            "{f}"
        );
    }
    let readme = fs::read_to_string(ctx.join("README.md")).unwrap();
    assert!(
        readme.contains("This directory contains secrets")
            && readme.contains("docker build -t acme/node:dc1")
    );

    // Refusals.
    let e = fails(&["bake", "--tls-dir", "dc1", "--from", "x", "--tag", "y", "--out", "ctx"], t);
    assert!(e.contains("already exists; refusing to overwrite it without --force"), "{e}");
    let e = fails(&["bake", "--tls-dir", "dc1", "--from", "x", "--tag", "y z", "--out", "c2"], t);
    assert!(e.contains("invalid image name \"y z\" for --tag"), "{e}");
    fs::write(t.join("notes.txt"), "x").unwrap();
    let e = fails(
        &["bake", "--tls-dir", "dc1", "--from", "x", "--tag", "y", "--out", "c3", "--config", "notes.txt"],
        t,
    );
    assert_eq!(e, "opencluster-pki: config file notes.txt: the node reads only *.toml files from conf.d/");

    // The default keys are never baked.
    let defaults = t.join("defaults");
    fs::create_dir(&defaults).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/default-keys");
    for (f, from) in [
        ("root.crt", repo.join("root.crt")),
        ("dc.crt", repo.join("dc2/dc.crt")),
        ("dc.key", repo.join("dc2/dc.key")),
        ("gossip.keyring", repo.join("dc2/gossip.keyring")),
    ] {
        let text = fs::read(from).unwrap();
        opencluster_pki::files::write_file(&defaults.join(f), &text, 0o600, false).unwrap();
    }
    let e = fails(&["bake", "--tls-dir", "defaults", "--from", "x", "--tag", "y", "--out", "c4"], t);
    assert!(e.contains("INSECURE default keys"), "{e}");
}

#[test]
fn bake_build_produces_an_image_with_the_keys() {
    let docker_up = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    if !docker_up {
        eprintln!("NOTICE: no docker daemon, skipping the image build");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    make_pki(t);
    let tag = format!("opencluster-pki-bake-test:{}", std::process::id());
    ok(&["bake", "--tls-dir", "dc1", "--from", "scratch", "--tag", &tag, "--out", "ctx", "--build"], t);
    let archive = t.join("image.tar");
    let saved = Command::new("docker").args(["save", "-o"]).arg(&archive).arg(&tag).status().unwrap();
    let removed = Command::new("docker").args(["rmi", "-f", &tag]).output().unwrap();
    assert!(saved.success() && removed.status.success());
    // List every layer's files with owner and mode.
    let unpacked = t.join("image");
    fs::create_dir(&unpacked).unwrap();
    assert!(
        Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&unpacked).status().unwrap().success()
    );
    let mut listing = String::new();
    for entry in walk(&unpacked) {
        if let Ok(o) = Command::new("tar").arg("-tvf").arg(&entry).output()
            && o.status.success()
        {
            listing.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    for (mode, file) in [
        ("-rw-r--r-- 10001/10001", "etc/opencluster/tls/root.crt"),
        ("-rw-r--r-- 10001/10001", "etc/opencluster/tls/dc.crt"),
        ("-rw------- 10001/10001", "etc/opencluster/tls/dc.key"),
        ("-rw------- 10001/10001", "etc/opencluster/tls/gossip.keyring"),
    ] {
        assert!(
            listing.lines().any(|l| l.starts_with(mode) && l.ends_with(file)),
            "{mode} {file} in\n{listing}"
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
