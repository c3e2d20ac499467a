//! The tls dir on disk: writing it safely, loading it, refusing bad input with an error that
//! names the file, and the identity a process gets from it at boot and keeps renewing.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use opencluster_pki::boot::{self, BootError, BootRequest, Renewal, TokioClock};
use opencluster_pki::ca::{LeafRequest, Validity};
use opencluster_pki::files::{self, TlsDir};
use opencluster_pki::keyring::Keyring;
use opencluster_pki::tls::Origin;
use opencluster_pki::{MutualTls, Role};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tls dir for cluster acme, datacenter dc1, in a temp dir. Returns (tempdir, tls path, root).
fn tls_dir() -> (tempfile::TempDir, std::path::PathBuf, opencluster_pki::ca::RootCa) {
    setup();
    let tmp = tempfile::tempdir().unwrap();
    let root = root("acme");
    let dc1 = dc(&root, "dc1");
    let path = tmp.path().join("tls");
    files::write_datacenter(&path, &root.cert_pem(), &dc1, &Keyring::generate().unwrap(), false).unwrap();
    (tmp, path, root)
}

fn load_err(dir: &Path) -> String {
    let e = TlsDir::load(dir).unwrap_err().to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn a_written_tls_dir_loads_with_the_right_modes() {
    let (_tmp, dir, root) = tls_dir();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("root.crt")), 0o644);
    assert_eq!(mode(&dir.join("dc.crt")), 0o644);
    assert_eq!(mode(&dir.join("dc.key")), 0o600);
    assert_eq!(mode(&dir.join("gossip.keyring")), 0o600);
    let tls = TlsDir::load(&dir).unwrap();
    assert_eq!((tls.cluster.as_str(), tls.datacenter.as_str()), ("acme", "dc1"));
    assert_eq!(&tls.root, root.cert_der());
    assert!(tls.intermediate.is_some() && tls.keyring.is_some() && tls.leaf.is_none());
    assert!(!opencluster_pki::is_default(&tls));
}

#[test]
fn nothing_is_overwritten_without_force_and_force_fixes_the_mode() {
    let (_tmp, dir, root) = tls_dir();
    let dc1 = dc(&root, "dc1");
    let ring = Keyring::generate().unwrap();
    let before = fs::read_to_string(dir.join("dc.key")).unwrap();
    let e = files::write_datacenter(&dir, &root.cert_pem(), &dc1, &ring, false).unwrap_err().to_string();
    assert!(e.ends_with("/tls/root.crt already exists; refusing to overwrite it without --force"), "{e}");
    assert_eq!(fs::read_to_string(dir.join("dc.key")).unwrap(), before);

    set_mode(&dir.join("dc.key"), 0o644);
    files::write_datacenter(&dir, &root.cert_pem(), &dc1, &ring, true).unwrap();
    assert_ne!(fs::read_to_string(dir.join("dc.key")).unwrap(), before);
    assert_eq!(mode(&dir.join("dc.key")), 0o600);
    TlsDir::load(&dir).unwrap();
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let (_tmp, dir, _root) = tls_dir();
    let key = dir.join("dc.key");
    set_mode(&key, 0o644);
    let k = key.display();
    assert_eq!(
        load_err(&dir),
        format!("key file {k} is readable by group or others (mode 0644): chmod 600 {k}")
    );
    set_mode(&key, 0o600);
    set_mode(&dir.join("gossip.keyring"), 0o604);
    assert!(load_err(&dir).contains("gossip.keyring is readable by group or others (mode 0604)"));
}

#[test]
fn a_group_readable_key_is_accepted_only_when_root_owns_it() {
    let (_tmp, dir, _root) = tls_dir();
    let key = dir.join("dc.key");
    set_mode(&key, 0o640);
    let me = fs::metadata(&key).unwrap().uid();
    if me != 0 {
        // Not root: the file is ours, and group access is refused.
        assert!(load_err(&dir).contains("(mode 0640): chmod 600"));
        return;
    }
    // Root owns it: the Kubernetes fsGroup case, accepted.
    TlsDir::load(&dir).unwrap();
    // Owned by someone else: refused.
    std::os::unix::fs::chown(&key, Some(12345), None).unwrap();
    assert!(load_err(&dir).contains("dc.key is readable by group or others (mode 0640)"));
}

#[test]
fn bad_input_names_the_file() {
    let (_tmp, dir, root) = tls_dir();
    let path = |n: &str| dir.join(n).display().to_string();
    let backup = |n: &str| fs::read_to_string(dir.join(n)).unwrap();
    let restore =
        |n: &str, text: &str| files::write_file(&dir.join(n), text.as_bytes(), 0o600, true).unwrap();
    let (root_crt, dc_crt, dc_key, keyring) =
        (backup("root.crt"), backup("dc.crt"), backup("dc.key"), backup("gossip.keyring"));

    // Missing files.
    fs::remove_file(dir.join("root.crt")).unwrap();
    assert!(load_err(&dir).starts_with(&format!("{}: file not found", path("root.crt"))));
    restore("root.crt", &root_crt);
    fs::remove_file(dir.join("dc.key")).unwrap();
    assert_eq!(
        load_err(&dir),
        format!("{}: file not found; dc.crt is present but its key is not", path("dc.key"))
    );
    restore("dc.key", &dc_key);
    let e = TlsDir::load(&dir.join("nope")).unwrap_err().to_string();
    assert!(e.contains("/tls/nope: file not found"), "{e}");

    // Garbage PEM.
    restore("dc.crt", "this is not a certificate\n");
    let e = load_err(&dir);
    assert_eq!(e, format!("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found", path("dc.crt")));
    restore("dc.crt", &dc_crt);
    restore("dc.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let e = load_err(&dir);
    assert!(e.starts_with(&format!("{}: not a valid PKCS#8 private key", path("dc.key"))), "{e}");
    restore("root.crt", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let e = load_err(&dir);
    assert!(e.starts_with(&format!("{}: not a valid X.509 certificate", path("root.crt"))), "{e}");
    restore("root.crt", &root_crt);

    // A key that belongs to another certificate.
    let other = dc(&root, "dc1");
    restore("dc.key", &other.key_pem());
    assert_eq!(
        load_err(&dir),
        format!("{} does not match the certificate in {}", path("dc.key"), path("dc.crt"))
    );
    restore("dc.key", &dc_key);

    // A CA certificate without the CA flag: a leaf where the intermediate belongs, and as root.
    let dc1 = dc(&root, "dc1");
    let leaf = dc1
        .issue(&LeafRequest {
            role: Role::Node,
            name: "n1".into(),
            sans: vec![],
            validity: Validity::days(SystemTime::now(), 1),
        })
        .unwrap();
    restore("dc.crt", &leaf.chain_pem());
    restore("dc.key", &leaf.key_pem());
    let e = load_err(&dir);
    assert!(e.starts_with(&format!("{}: certificate ", path("dc.crt"))), "{e}");
    assert!(e.ends_with("is not a CA certificate (its basic constraints lack the CA flag)"), "{e}");
    restore("dc.crt", &dc_crt);
    restore("dc.key", &dc_key);
    restore("root.crt", &leaf.chain_pem());
    let e = load_err(&dir);
    assert!(
        e.starts_with(&format!("{}: certificate ", path("root.crt"))) && e.contains("is not a CA"),
        "{e}"
    );
    restore("root.crt", &root_crt);

    // An intermediate of another root.
    let stranger = common::root("acme");
    let foreign = dc(&stranger, "dc1");
    restore("dc.crt", &foreign.cert_pem());
    restore("dc.key", &foreign.key_pem());
    assert!(load_err(&dir).starts_with(&format!("{}: was not issued by the root in", path("dc.crt"))));
    restore("dc.crt", &dc_crt);
    restore("dc.key", &dc_key);

    // A broken keyring.
    restore("gossip.keyring", "version = 1\n");
    assert!(load_err(&dir).starts_with(&format!("{}: invalid keyring", path("gossip.keyring"))));
    restore("gossip.keyring", &keyring);

    // A hand-issued leaf whose key is not its own.
    files::write_leaf(&dir, &leaf, false).unwrap();
    TlsDir::load(&dir).unwrap();
    restore("node.key", &dc_key);
    assert_eq!(
        load_err(&dir),
        format!("{} does not match the certificate in {}", path("node.key"), path("node.crt"))
    );
}

#[test]
fn the_root_ca_dir_round_trips() {
    setup();
    let tmp = tempfile::tempdir().unwrap();
    let root = root("acme");
    let written = files::write_root(tmp.path(), &root, false).unwrap();
    assert_eq!(written.len(), 2);
    assert_eq!(mode(&tmp.path().join("root.key")), 0o600);
    let again = files::load_root(tmp.path()).unwrap();
    assert_eq!(again.cert_der(), root.cert_der());
    let e = files::load_root(&tmp.path().join("missing")).unwrap_err().to_string();
    assert!(e.ends_with("root.crt: file not found; expected a CA dir made by `opencluster-pki init`"), "{e}");
}

#[test]
fn the_repository_default_keys_are_the_embedded_ones() {
    setup();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(opencluster_pki::DEFAULT_KEYS_DIR);
    let on_disk = fs::read_to_string(repo.join("root.crt")).unwrap();
    for dc in opencluster_pki::default_keys::DEFAULT_DATACENTERS {
        let keys = opencluster_pki::default_keys(dc).unwrap();
        assert!(opencluster_pki::is_default(&keys));
        assert!(on_disk.contains(&keys.root_pem()));
        let dc_on_disk = fs::read_to_string(repo.join(dc).join("dc.crt")).unwrap();
        assert!(dc_on_disk.contains(&keys.intermediate.as_ref().unwrap().cert_pem()), "{dc}");
        // A process issues itself a certificate from them like from any tls dir.
        let creds =
            boot::boot_identity(&keys, &BootRequest::new("dev", Role::Node, vec![]), SystemTime::now())
                .unwrap();
        assert_eq!(creds.identity.uri(), format!("spiffe://opencluster-demo/dc/{dc}/node/dev"));
    }
    // There is no demo root key, so no fourth datacenter.
    assert!(!repo.join("root.key").exists());
}

#[test]
fn boot_self_issues_from_the_intermediate() {
    let (_tmp, dir, root) = tls_dir();
    let tls = TlsDir::load(&dir).unwrap();
    let now = SystemTime::now();
    let request = BootRequest::new("node-7", Role::Node, vec!["10.1.2.3".into(), "node-7.internal".into()]);
    let creds = boot::boot_identity(&tls, &request, now).unwrap();
    assert_eq!(creds.origin, Origin::SelfIssued);
    assert_eq!(creds.identity.uri(), "spiffe://acme/dc/dc1/node/node-7");
    assert_eq!(creds.info.dns_names, vec!["node-7".to_string(), "node-7.internal".to_string()]);
    assert_eq!(creds.info.ips, vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]);
    let lifetime = creds.not_after().duration_since(now).unwrap();
    assert!(lifetime <= 7 * DAY && lifetime > 7 * DAY - Duration::from_secs(60), "{lifetime:?}");
    opencluster_pki::verify::verify_chain(root.cert_der(), &creds.chain, now).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    if let Some(r) = openssl_verify(tmp.path(), &root.cert_pem(), &creds.chain) {
        r.unwrap();
    }
    let e = boot::boot_identity(&tls, &BootRequest::new("Bad_Name", Role::Node, vec![]), now).unwrap_err();
    assert!(matches!(e, BootError::Name(_)), "{e}");
}

#[test]
fn boot_uses_a_valid_hand_issued_leaf_and_replaces_a_wrong_one() {
    let (_tmp, dir, _root) = tls_dir();
    let tls = TlsDir::load(&dir).unwrap();
    let now = SystemTime::now();
    let dc1 = tls.intermediate.as_ref().unwrap();
    let issue = |name: &str, validity| {
        dc1.issue(&LeafRequest { role: Role::Node, name: name.into(), sans: vec![], validity }).unwrap()
    };
    files::write_leaf(&dir, &issue("node-1", Validity::days(now, 30)), false).unwrap();
    let tls = TlsDir::load(&dir).unwrap();
    let creds = boot::boot_identity(&tls, &BootRequest::new("node-1", Role::Node, vec![]), now).unwrap();
    assert_eq!(creds.origin, Origin::Provided);

    // For another name (or role): the process issues its own instead.
    let creds = boot::boot_identity(&tls, &BootRequest::new("node-2", Role::Node, vec![]), now).unwrap();
    assert_eq!((creds.origin, creds.identity.name()), (Origin::SelfIssued, "node-2"));
    let creds = boot::boot_identity(&tls, &BootRequest::new("node-1", Role::Connector, vec![]), now).unwrap();
    assert_eq!(creds.origin, Origin::SelfIssued);

    // Without dc.key, an expired leaf is an error that says why.
    let past = Validity { not_before: now - 10 * DAY, not_after: now - DAY };
    files::write_leaf(&dir, &issue("node-1", past), true).unwrap();
    fs::remove_file(dir.join("dc.key")).unwrap();
    fs::remove_file(dir.join("dc.crt")).unwrap();
    let tls = TlsDir::load(&dir).unwrap();
    assert!(tls.intermediate.is_none());
    let e = boot::boot_identity(&tls, &BootRequest::new("node-1", Role::Node, vec![]), now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("node.crt: certificate rejected: certificate expired"), "{e}");
    assert!(e.ends_with("and no dc.key to issue one"), "{e}");
}

#[test]
fn renewal_is_due_at_two_thirds_of_the_lifetime() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    assert_eq!(boot::renew_at(start, start + 3 * DAY), start + 2 * DAY);
    assert_eq!(boot::renew_at(start, start + Duration::from_secs(90)), start + Duration::from_secs(60));
    assert_eq!(boot::renew_at(start, start - DAY), start);
}

#[tokio::test(start_paused = true)]
async fn renewal_reissues_before_expiry_under_virtual_time() {
    let (_tmp, dir, root) = tls_dir();
    let tls_dir = Arc::new(TlsDir::load(&dir).unwrap());
    let clock = TokioClock::new();
    let request = BootRequest::new("node-1", Role::Node, vec!["10.0.0.1".into()]);
    let first =
        Arc::new(boot::boot_identity(&tls_dir, &request, opencluster_pki::boot::Clock::now(&clock)).unwrap());
    let tls = MutualTls::new(&tls_dir.root, &first).unwrap();
    let renewal = Renewal::new(tls_dir.clone(), request, tls.clone(), first.clone()).with_clock(clock);
    let mut updates = renewal.subscribe();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(renewal.run(shutdown.clone()));

    let started = tokio::time::Instant::now();
    let mut previous = first.clone();
    for round in 1..=3u32 {
        updates.changed().await.unwrap();
        let fresh = updates.borrow_and_update().clone();
        let waited = started.elapsed();
        // Each renewal comes at two thirds of the previous leaf's lifetime.
        let due = boot::renew_at(previous.not_before(), previous.not_after());
        // The clock started at the first leaf's not_before plus the skew allowance (less
        // the sub-second part certificates drop).
        let clock_start = first.not_before() + opencluster_pki::ca::CLOCK_SKEW_ALLOWANCE;
        let expected = due.duration_since(clock_start).unwrap_or_default();
        let diff = waited.abs_diff(expected);
        assert!(
            diff <= Duration::from_secs(2),
            "round {round}: renewed after {waited:?}, expected {expected:?}"
        );
        assert_eq!(fresh.identity, first.identity);
        assert_ne!(fresh.info.fingerprint, previous.info.fingerprint);
        assert!(fresh.not_after() > previous.not_after());
        // The TLS configs present the new leaf from now on.
        assert_eq!(tls.current_chain()[0], fresh.chain[0]);
        opencluster_pki::verify::verify_chain(root.cert_der(), &fresh.chain, fresh.not_before() + DAY)
            .unwrap();
        previous = fresh;
    }
    // Virtual time: three renewals of 7-day leaves took no real time.
    assert!(started.elapsed() > 3 * 4 * DAY);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn renewal_never_outlives_the_intermediate() {
    setup();
    let tmp = tempfile::tempdir().unwrap();
    let root = root("acme");
    // An intermediate with one day left.
    let dc1 = root.create_datacenter("dc1", Validity::days(SystemTime::now() - 300 * DAY, 301)).unwrap();
    let dc_end = dc1.info().not_after;
    let dir = tmp.path().join("tls");
    files::write_datacenter(&dir, &root.cert_pem(), &dc1, &Keyring::generate().unwrap(), false).unwrap();
    let tls_dir = Arc::new(TlsDir::load(&dir).unwrap());
    let clock = TokioClock::new();
    let request = BootRequest::new("node-1", Role::Node, vec![]);
    let first = Arc::new(boot::boot_identity(&tls_dir, &request, boot::Clock::now(&clock)).unwrap());
    assert_eq!(first.not_after(), dc_end);

    let tls = MutualTls::new(&tls_dir.root, &first).unwrap();
    let renewal = Renewal::new(tls_dir.clone(), request, tls, first.clone()).with_clock(clock);
    let mut updates = renewal.subscribe();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(renewal.run(shutdown.clone()));
    let started = tokio::time::Instant::now();
    updates.changed().await.unwrap();
    let fresh = updates.borrow_and_update().clone();
    // Renewed at two thirds of the cut-short life (about 16 hours), again cut to the intermediate.
    let waited = started.elapsed();
    assert!(waited > Duration::from_secs(15 * 3600) && waited < Duration::from_secs(17 * 3600), "{waited:?}");
    assert_eq!(fresh.not_after(), dc_end);
    assert_ne!(fresh.info.fingerprint, first.info.fingerprint);
    shutdown.cancel();
    task.await.unwrap();
}
