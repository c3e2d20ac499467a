//! Several node processes joined into one datacenter cluster on loopback, and the checks
//! cluster tests share: every node placed, and every acknowledged write readable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::node::{Node, NodeOpts};
use crate::resp::{RawConn, Reply};
use crate::wait::wait_until;

/// How long a new cluster may take to converge (membership and placement).
pub const CONVERGE: Duration = Duration::from_secs(30);

/// How long a silent member stays suspect before it is declared down, in cluster tests:
/// longer than the default (1s) because these tests run dozens of nodes on two busy
/// cores, where a node that is alive but starved of CPU for a second must not be declared
/// down in the middle of a check. Tests of failure detection set their own.
pub const TEST_SUSPICION: &str = "3s";

/// Options for node `name` joining `seed` (or starting the cluster when `None`).
pub fn member_opts(name: &str, seed: Option<&Node>, extra: &[&str]) -> NodeOpts {
    let mut opts = NodeOpts::new().args(&["--node-name", name]).args(extra);
    if !extra.contains(&"--gossip-suspicion-timeout") {
        opts = opts.args(&["--gossip-suspicion-timeout", TEST_SUSPICION]);
    }
    if let Some(seed) = seed {
        opts = opts.args(&["--join", &seed.gossip_addr().to_string()]);
    }
    opts
}

/// `(name, state)` of every member `node` lists in `/v1/members`, sorted.
pub fn member_states(node: &Node) -> Vec<(String, String)> {
    let members = node.admin_json("/v1/members");
    let mut out: Vec<(String, String)> = members
        .as_array()
        .unwrap_or_else(|| panic!("/v1/members is not a list: {members}"))
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until `node`'s store holds at least `n` keys (a load has made progress).
pub fn wait_for_stored_keys(node: &Node, n: u64) -> bool {
    wait_until(CONVERGE, || node.admin_json("/v1/status")["store"]["keys"].as_u64().is_some_and(|k| k >= n))
}

/// How many data nodes `node`'s placement spreads partitions over.
pub fn placed_nodes(node: &Node) -> u64 {
    node.admin_json("/v1/status")["placement"]["nodes"].as_u64().unwrap_or(0)
}

/// Waits until every node in `nodes` places partitions on exactly `n` nodes.
pub fn wait_placed(nodes: &[&Node], n: u64) {
    for node in nodes {
        assert!(
            wait_until(CONVERGE, || placed_nodes(node) == n),
            "placement never reached {n} nodes: {}\n{}",
            node.admin_json("/v1/status")["placement"],
            node.admin_json("/v1/members")
        );
    }
}

/// Starts `n` nodes named n1..nN, each joining n1, with `extra` flags, and waits until
/// every one of them places partitions on all of them.
pub fn start_cluster(n: usize, extra: &[&str]) -> Vec<Node> {
    let first = Node::start(member_opts("n1", None, extra));
    let mut nodes = vec![first];
    for i in 2..=n {
        let node = Node::start(member_opts(&format!("n{i}"), Some(&nodes[0]), extra));
        nodes.push(node);
    }
    wait_placed(&nodes.iter().collect::<Vec<_>>(), n as u64);
    nodes
}

/// Writes acknowledged by the cluster: key -> value. Keys are distinct, so last-writer-
/// wins can never hide a lost write.
pub type Acked = BTreeMap<String, String>;

/// Checks that every acknowledged key reads back with its value through `node`; returns
/// a description of every lost or wrong key.
pub fn missing_through(node: &Node, acked: &Acked) -> Vec<String> {
    let mut conn = node.raw();
    let mut bad = Vec::new();
    let keys: Vec<&String> = acked.keys().collect();
    for chunk in keys.chunks(200) {
        let mut args = vec!["MGET".to_string()];
        args.extend(chunk.iter().map(|k| k.to_string()));
        let reply = conn.cmd(&args);
        match &reply {
            Reply::Array(values) => {
                for (key, value) in chunk.iter().zip(values) {
                    let want = &acked[*key];
                    match value {
                        Reply::Bulk(got) if got == want.as_bytes() => {}
                        other => bad.push(format!("{key}: want {want:?}, got {other:?}")),
                    }
                }
            }
            other => bad.push(format!("MGET failed: {other:?}")),
        }
    }
    bad
}

/// A steady load of SETs with distinct keys through several nodes, one thread each,
/// remembering what was acknowledged and counting what failed; optionally each SET is
/// followed by a GET of a key the same writer had acknowledged earlier.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadReport>>,
}

/// What a [`Load`] saw.
#[derive(Default)]
pub struct LoadReport {
    /// Every acknowledged write.
    pub acked: Acked,
    /// Every write or read refused with an error reply (or answered with something else
    /// than OK), as `<key>: <reply>`: the client was told. The key names its writer
    /// (`<prefix>-<writer>-<n>`).
    pub errors: Vec<String>,
    /// Every write or read whose connection failed, as `<key>: <I/O error>`: the client
    /// was told, by the connection.
    pub broken: Vec<String>,
    /// Keys whose write failed (an error reply or a lost connection): they may or may not
    /// have been stored.
    pub failed_writes: Vec<String>,
    /// Reads of an acknowledged key that answered something else than its value: the
    /// client was not told. Always a bug.
    pub wrong_reads: Vec<String>,
    /// Reads that answered the acknowledged value.
    pub reads: u64,
}

impl LoadReport {
    /// Adds what another load saw.
    pub fn extend(&mut self, other: LoadReport) {
        self.acked.extend(other.acked);
        self.errors.extend(other.errors);
        self.broken.extend(other.broken);
        self.failed_writes.extend(other.failed_writes);
        self.wrong_reads.extend(other.wrong_reads);
        self.reads += other.reads;
    }
}

impl Load {
    /// One writer per client address, keys `<prefix>-<writer>-<n>`.
    pub fn start(prefix: &str, clients: &[std::net::SocketAddr]) -> Load {
        Load::spawn(prefix, clients, false)
    }

    /// Like [`Load::start`], and each acknowledged SET is followed by a GET, through the
    /// same node, of a key this writer had acknowledged earlier (spread over its history).
    pub fn start_with_reads(prefix: &str, clients: &[std::net::SocketAddr]) -> Load {
        Load::spawn(prefix, clients, true)
    }

    fn spawn(prefix: &str, clients: &[std::net::SocketAddr], reads: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = clients
            .iter()
            .enumerate()
            .map(|(w, &addr)| {
                let (stop, prefix) = (stop.clone(), prefix.to_string());
                std::thread::spawn(move || {
                    let mut report = LoadReport::default();
                    // Acknowledged keys in order, to pick earlier ones to read back.
                    let mut history: Vec<String> = Vec::new();
                    let mut conn = RawConn::connect(addr).ok();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let (key, value) = (format!("{prefix}-{w}-{n}"), format!("v{n}"));
                        let Some(c) = conn.as_mut() else {
                            report.broken.push(format!("{key}: not connected"));
                            std::thread::sleep(Duration::from_millis(20));
                            conn = RawConn::connect(addr).ok();
                            continue;
                        };
                        match c.try_cmd(&["SET", &key, &value]) {
                            Ok(Reply::Simple(ok)) if ok == "OK" => {
                                report.acked.insert(key.clone(), value);
                                history.push(key);
                            }
                            Ok(other) => {
                                report.errors.push(format!("{key}: {other:?}"));
                                report.failed_writes.push(key);
                                continue;
                            }
                            Err(e) => {
                                report.broken.push(format!("{key}: {e}"));
                                report.failed_writes.push(key);
                                conn = None;
                                continue;
                            }
                        }
                        if !reads {
                            continue;
                        }
                        // Alternately the newest key and the one halfway through the history.
                        let i = if n.is_multiple_of(2) { history.len() - 1 } else { history.len() / 2 };
                        let earlier = &history[i];
                        let want = &report.acked[earlier];
                        match c.try_cmd(&["GET", earlier]) {
                            Ok(Reply::Bulk(got)) if got == want.as_bytes() => report.reads += 1,
                            Ok(Reply::Error(e)) => report.errors.push(format!("GET {earlier}: {e}")),
                            Ok(other) => report
                                .wrong_reads
                                .push(format!("GET {earlier}: want {want:?}, got {other:?}")),
                            Err(e) => {
                                report.broken.push(format!("GET {earlier}: {e}"));
                                conn = None;
                            }
                        }
                    }
                    report
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the writers; returns every acknowledged write and every error, refused or
    /// broken (panics on a wrong read).
    pub fn finish(self) -> (Acked, Vec<String>) {
        let mut report = self.report();
        assert!(report.wrong_reads.is_empty(), "wrong reads: {:?}", report.wrong_reads);
        report.errors.extend(report.broken);
        (report.acked, report.errors)
    }

    /// Stops the writers; returns everything they saw.
    pub fn report(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for t in self.threads {
            report.extend(t.join().expect("writer thread"));
        }
        report
    }
}

/// Stops `node` with SIGSTOP and waits until every one of its threads is stopped (a
/// signal is delivered to each thread when it next runs; on a busy machine that can be
/// after the next request arrives).
pub fn pause(node: &Node) {
    let pid = node.pid();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                    .unwrap_or(true)
            })
        })
    };
    assert!(wait_until(Duration::from_secs(10), all_stopped), "node {pid} did not stop");
}

/// Lets a node stopped by [`pause`] run again (SIGCONT).
pub fn resume(node: &Node) {
    let pid = node.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
}

/// A worker's entry (`rebalance`, `handoff`) in `node`'s `/v1/status`.
pub fn worker(node: &Node, name: &str) -> serde_json::Value {
    let status = node.admin_json("/v1/status");
    status["workers"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} worker in /v1/status: {status}"))
}

/// Keys `node` holds in its own store (`store.keys` in `/v1/status`).
pub fn local_key_count(node: &Node) -> u64 {
    node.admin_json("/v1/status")["store"]["keys"].as_u64().unwrap_or(0)
}
