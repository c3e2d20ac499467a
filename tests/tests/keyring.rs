//! Rotating the gossip keyring of a running cluster through the admin API: install a new
//! key everywhere, use it everywhere, remove the old one everywhere, while every member
//! stays alive and every acknowledged write stays readable; a node that only has the old
//! key cannot join afterwards; a restarted node keeps the rotated keyring; the changing
//! endpoints need the admin token.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use opencluster_tests::cluster::member_states as states;
use opencluster_tests::{Node, NodeOpts, RawConn, bulk, node_only, ok, pki_binary, wait_past, wait_until};
use serde_json::Value;

const TOKEN: &str = "test-admin-token-0123456789abcdef";
const CONVERGE: Duration = Duration::from_secs(30);

fn opts(name: &str) -> NodeOpts {
    NodeOpts::new().args(&["--node-name", name]).env("OPENCLUSTER_ADMIN_TOKEN", TOKEN)
}

fn joining(name: &str, seed: &Node) -> NodeOpts {
    opts(name).args(&["--join", &seed.gossip_addr().to_string()])
}

fn all_alive(node: &Node, names: &[&str]) -> bool {
    let states = states(node);
    states.len() == names.len() && states.iter().all(|(n, s)| names.contains(&n.as_str()) && s == "alive")
}

/// Sum of a counter's series whose labels contain `label`.
fn counter(node: &Node, name: &str, label: &str) -> u64 {
    let (_, text) = node.admin_get("/metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A new gossip key, as `opencluster-pki gossip-key` prints it.
fn new_key() -> String {
    let out =
        std::process::Command::new(pki_binary()).arg("gossip-key").output().expect("run opencluster-pki");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The primary key of the default keys' keyring of dc1, which `--dev` nodes use.
fn default_key() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/default-keys/dc1/gossip.keyring");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("primary = \"")?.strip_suffix('"').map(str::to_string))
        .unwrap_or_else(|| panic!("no primary in {text}"))
}

fn post(node: &Node, op: &str, key: &str) -> (u16, Value) {
    let (status, body) =
        node.admin_post(&format!("/v1/keyring/{op}"), Some(TOKEN), &format!("{{\"key\":\"{key}\"}}"));
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{op}: not JSON ({e}): {body}")))
}

#[test]
fn the_gossip_key_rotates_at_runtime_without_losing_a_member_or_a_write() {
    node_only!("the node's admin API");
    let n1 = Node::start(opts("n1"));
    let mut n2 = Node::start(joining("n2", &n1));
    let n3 = Node::start(joining("n3", &n1));
    let names = ["n1", "n2", "n3"];
    for node in [&n1, &n2, &n3] {
        assert!(wait_until(CONVERGE, || all_alive(node, &names)), "never converged: {:?}", states(node));
    }
    let (old, new) = (default_key(), new_key());
    let old_id = n1.admin_json("/v1/keyring")["primary"].as_str().unwrap().to_string();

    // Watch the members and write to every node while the key changes.
    let stop = Arc::new(AtomicBool::new(false));
    let admins: Vec<_> = [&n1, &n2, &n3].iter().map(|n| n.admin_addr()).collect();
    let watcher = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut seen_not_alive = Vec::new();
            let mut polls = 0;
            while !stop.load(Ordering::Relaxed) {
                for addr in &admins {
                    let (_, body) =
                        opencluster_tests::http::get(*addr, "/v1/members").expect("GET /v1/members");
                    let members: Value = serde_json::from_str(&body).expect("JSON");
                    // Suspect is allowed (a probe answered late on a loaded host); a member
                    // that could not talk any more would be down within 2.2 s.
                    for m in members.as_array().expect("list") {
                        if m["state"] != "alive" && m["state"] != "suspect" {
                            seen_not_alive.push(format!("{addr}: {m}"));
                        }
                    }
                }
                polls += 1;
                thread::sleep(Duration::from_millis(50));
            }
            (polls, seen_not_alive)
        })
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = [&n1, &n2, &n3]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (stop, acked, addr) = (stop.clone(), acked.clone(), n.client_addr());
            thread::spawn(move || {
                let mut conn = RawConn::connect(addr).expect("connect");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("rotation-{i}-{n}");
                    if conn.cmd(&["SET", &key, &format!("v{n}")]) == ok() {
                        acked.lock().unwrap().push((i, key, format!("v{n}")));
                    }
                    n += 1;
                    thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    // The three rounds, each on every node before the next; a few probe rounds in between.
    let received = |n: &Node| counter(n, "opencluster_gossip_packets_total", "direction=\"received\"");
    for (op, key) in [("install", &new), ("use", &new), ("remove", &old)] {
        for node in [&n1, &n2, &n3] {
            let (status, body) = post(node, op, key);
            assert_eq!((status, &body["changed"]), (200, &Value::Bool(true)), "{op}: {body}");
        }
        // Gossip goes on under the changed keyring: every node keeps receiving packets.
        let before: Vec<u64> = [&n1, &n2, &n3].iter().map(|n| received(n)).collect();
        for (node, before) in [&n1, &n2, &n3].iter().zip(before) {
            assert!(
                wait_until(CONVERGE, || received(node) >= before + 10),
                "no gossip after {op}: {}",
                node.admin_get("/metrics").1
            );
        }
    }
    // The watcher keeps looking for longer than failure detection takes (2.2 s): a node that
    // could no longer talk would show as down. Time itself is the condition here.
    wait_past(Instant::now() + Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let (polls, not_alive) = watcher.join().unwrap();
    writers.into_iter().for_each(|w| w.join().unwrap());
    assert!(polls > 10, "the watcher polled only {polls} times");
    assert!(not_alive.is_empty(), "members down or left during the rotation: {not_alive:#?}");

    let nodes = [&n1, &n2, &n3];
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "only {} writes acknowledged", acked.len());
    let mut readers: Vec<RawConn> = nodes.iter().map(|n| n.raw()).collect();
    for (i, key, value) in &acked {
        assert_eq!(
            readers[*i].cmd(&["GET", key]),
            bulk(value),
            "{key} acknowledged by n{} but not readable",
            i + 1
        );
    }

    let new_id = post(&n1, "install", &new).1["primary"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    for node in nodes {
        let keyring = node.admin_json("/v1/keyring");
        assert_eq!(keyring["primary"], Value::from(new_id.clone()), "{keyring}");
        assert_eq!(keyring["keys"], serde_json::json!([new_id]), "{keyring}");
        assert!(!keyring.to_string().contains(&new), "the key itself is shown: {keyring}");
        for op in ["install", "use", "remove"] {
            assert_eq!(counter(node, "opencluster_gossip_keyring_changes_total", &format!("op=\"{op}\"")), 1);
        }
    }

    // A node with only the old key (the default keys) cannot join; its packets are dropped.
    let dropped_before = counter(&n1, "opencluster_gossip_packets_dropped_total", "unknown_key");
    let intruder = Node::start(joining("old-key", &n1));
    assert!(
        wait_until(CONVERGE, || counter(&n1, "opencluster_gossip_packets_dropped_total", "unknown_key")
            >= dropped_before + 3),
        "n1 did not count the old-key node's packets as dropped:\n{}",
        n1.admin_get("/metrics").1
    );
    assert!(all_alive(&n1, &names), "{:?}", states(&n1));
    assert_eq!(states(&intruder), [("old-key".to_string(), "alive".to_string())]);

    // A restarted node comes back with the rotated keyring, saved in its data directory.
    n2.restart();
    let keyring = n2.admin_json("/v1/keyring");
    assert_eq!(keyring["primary"], Value::from(new_id.clone()), "{keyring}");
    assert!(keyring["source"].as_str().unwrap().ends_with("gossip.keyring"), "{keyring}");
    assert!(n2.stderr_log().contains("preferred over the configured keys"), "{}", n2.log());
    let n2_gossip = n2.gossip_addr().to_string();
    assert!(
        wait_until(CONVERGE, || n1
            .admin_json("/v1/members")
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "n2" && m["state"] == "alive" && m["gossip_addr"] == n2_gossip.as_str())),
        "the restarted n2 did not rejoin: {}",
        n1.admin_json("/v1/members")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(n2.data_dir().join("gossip.keyring")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn keyring_changes_need_the_admin_token() {
    node_only!("the node's admin API");
    let key = new_key();
    let body = format!("{{\"key\":\"{key}\"}}");

    let open = Node::start(NodeOpts::new());
    let (status, text) = open.admin_post("/v1/keyring/install", Some(TOKEN), &body);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("set admin_token (OPENCLUSTER_ADMIN_TOKEN)"), "{text}");
    assert_eq!(open.admin_get("/v1/keyring").0, 200, "reading stays open");

    let node = Node::start(opts("n1"));
    let (status, text) = node.admin_post("/v1/keyring/install", None, &body);
    assert_eq!(status, 401, "{text}");
    let (status, text) = node.admin_post("/v1/keyring/install", Some("wrong-token-0123456789"), &body);
    assert_eq!(status, 403, "{text}");
    let before = node.admin_json("/v1/keyring");
    assert_eq!(before["keys"].as_array().unwrap().len(), 1, "{before}");

    let (status, text) = node.admin_post("/v1/keyring/install", Some(TOKEN), "{\"key\":\"not base64!\"}");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("opencluster-pki gossip-key"), "{text}");
    let (status, text) = node.admin_post("/v1/keyring/use", Some(TOKEN), &body);
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("not installed"), "{text}");
    let (status, text) = post(&node, "remove", &default_key());
    assert_eq!(status, 409, "{text}");
    assert!(text["error"].as_str().unwrap().contains("primary key and cannot be removed"), "{text}");
    assert_eq!(node.admin_json("/v1/keyring"), before, "refused changes changed the keyring");
    assert!(!node.data_dir().join("gossip.keyring").exists(), "nothing saved without a change");
}
