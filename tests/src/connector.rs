//! `opencluster-connector` processes for tests, and datacenters made of nodes and a
//! connector on loopback, linked through [`crate::relay`]s.

use std::fs::{self, File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cluster::{member_opts, wait_placed};
use crate::node::{Node, free_port, send_signal};
use crate::wait::wait_until;

/// How long a connector may take to start answering its admin API.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The connector binary (env `OPENCLUSTER_CONNECTOR_BIN`, else beside the test executable).
pub fn connector_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENCLUSTER_CONNECTOR_BIN") {
        return PathBuf::from(p);
    }
    let node = crate::node::node_binary();
    let bin = node.with_file_name("opencluster-connector");
    assert!(bin.exists(), "{} not found: run `cargo build --workspace` first", bin.display());
    bin
}

/// A free UDP port on loopback (bound and released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One connector process.
pub struct Connector {
    pub datacenter: String,
    root: TempDir,
    args: Vec<String>,
    admin_port: u16,
    pub wan_addr: SocketAddr,
    /// `OPENCLUSTER_*` settings and test hooks for the process.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Connector {
    /// Starts a connector of `datacenter` with keys `tls`, joining `seed`, listening for
    /// the WAN on `wan_addr`, shipping to `peers` (`DC=HOST:PORT`).
    pub fn start(
        datacenter: &str,
        tls: &Path,
        seed: &Node,
        wan_addr: SocketAddr,
        peers: &[String],
    ) -> Connector {
        Self::start_as(&format!("connector-{datacenter}"), datacenter, tls, seed, wan_addr, peers, &[])
    }

    /// [`Connector::start`] with its name (unique in its datacenter: twins need their own)
    /// and `extra` flags, on a new empty data directory.
    pub fn start_as(
        name: &str,
        datacenter: &str,
        tls: &Path,
        seed: &Node,
        wan_addr: SocketAddr,
        peers: &[String],
        extra: &[&str],
    ) -> Connector {
        let mut c = Self::prepare(name, datacenter, tls, seed, wan_addr, peers, extra);
        c.spawn_and_wait();
        c
    }

    /// [`Connector::start`] with environment variables (settings without a flag, test
    /// hooks).
    pub fn start_with_env(
        datacenter: &str,
        tls: &Path,
        seed: &Node,
        wan_addr: SocketAddr,
        peers: &[String],
        env: &[(&str, &str)],
    ) -> Connector {
        let mut c =
            Self::prepare(&format!("connector-{datacenter}"), datacenter, tls, seed, wan_addr, peers, &[]);
        c.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        c.spawn_and_wait();
        c
    }

    /// A connector's command line and data directory, not started yet.
    fn prepare(
        name: &str,
        datacenter: &str,
        tls: &Path,
        seed: &Node,
        wan_addr: SocketAddr,
        peers: &[String],
        extra: &[&str],
    ) -> Connector {
        let root = tempfile::Builder::new().prefix("oc-conn-").tempdir().expect("temp dir");
        let admin_port = free_port();
        let mut args: Vec<String> = [
            "--node-name",
            name,
            "--datacenter",
            datacenter,
            "--tls-dir",
            tls.to_str().unwrap(),
            "--data-dir",
            root.path().join("data").to_str().unwrap(),
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
            "--gossip-addr",
            "127.0.0.1:0",
            "--rpc-addr",
            "127.0.0.1:0",
            "--wan-addr",
            &wan_addr.to_string(),
            "--join",
            &seed.gossip_addr().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        Connector {
            datacenter: datacenter.into(),
            root,
            args,
            admin_port,
            wan_addr,
            env: Vec::new(),
            child: None,
        }
    }

    fn spawn_and_wait(&mut self) {
        let mut cmd = Command::new(connector_binary());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OPENCLUSTER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("OPENCLUSTER_GOSSIP_SUSPICION_TIMEOUT", crate::cluster::TEST_SUSPICION);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let append = |name: &str| -> File {
            OpenOptions::new().create(true).append(true).open(self.root.path().join(name)).expect("log file")
        };
        cmd.args(&self.args).stdin(Stdio::null()).stdout(append("stdout.log")).stderr(append("stderr.log"));
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                self.child = None;
                panic!("connector exited with {status} before it was ready\n{}", self.log());
            }
            if crate::http::get(self.admin_addr(), "/v1/health").is_ok_and(|(code, _)| code == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "connector not ready in {START_DEADLINE:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = crate::http::get(self.admin_addr(), "/v1/status").expect("GET /v1/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    pub fn metrics(&self) -> String {
        crate::http::get(self.admin_addr(), "/metrics").expect("GET /metrics").1
    }

    /// The status of the link to `remote`.
    pub fn link(&self, remote: &str) -> serde_json::Value {
        let s = self.status();
        s["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["remote"] == remote).cloned())
            .unwrap_or_else(|| panic!("no link to {remote}: {s}"))
    }

    /// This connector's share of the partitions, from its status: (partitions it ships, live
    /// connectors of its datacenter).
    pub fn share(&self) -> (u64, usize) {
        let s = self.status();
        let owned = s["share"]["partitions_owned"].as_u64().expect("share in status");
        (owned, s["share"]["connectors"].as_array().map_or(0, |c| c.len()))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // fails only if it already exited
            c.wait().expect("reap");
        }
    }

    /// Starts it again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// Starts it again on the same data dir and ports with `env` added to its environment
    /// (kept for later restarts).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.stop();
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.spawn_and_wait();
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(c.id(), libc::SIGTERM);
            let exited = wait_until(Duration::from_secs(20), || c.try_wait().expect("try_wait").is_some());
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
                panic!("connector did not stop on SIGTERM\n{}", self.log());
            }
        }
    }

    pub fn log(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.root.path().join(n)).unwrap_or_default();
        format!(
            "--- connector {} ---\n{}{}--- end ---",
            self.datacenter,
            read("stdout.log"),
            read("stderr.log")
        )
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // best effort on the way out
            let _ = c.wait();
        }
    }
}

/// A datacenter of `n` nodes with the keys of `dc` in `tls` (made by
/// [`crate::pki::customer_keys`]) and `more` flags, waiting until each places on all of them.
/// Adds node `<dc>-n<len+1>` to the datacenter of `nodes` (started by [`start_datacenter`]
/// with the same `more` flags), joining its first node, and waits until every node places
/// partitions on all of them: the rebalance towards it has begun.
pub fn grow_datacenter(dc: &str, tls: &Path, nodes: &mut Vec<Node>, more: &[&str]) {
    let mut extra = vec!["--datacenter", dc, "--tls-dir", tls.to_str().unwrap()];
    extra.extend_from_slice(more);
    let name = format!("{dc}-n{}", nodes.len() + 1);
    let node = Node::start(member_opts(&name, Some(&nodes[0]), &extra));
    nodes.push(node);
    wait_placed(&nodes.iter().collect::<Vec<_>>(), nodes.len() as u64);
}

pub fn start_datacenter(dc: &str, tls: &Path, n: usize, more: &[&str]) -> Vec<Node> {
    start_datacenter_with_env(dc, tls, n, more, &[])
}

/// [`start_datacenter`] with environment variables for every node (test hooks).
pub fn start_datacenter_with_env(
    dc: &str,
    tls: &Path,
    n: usize,
    more: &[&str],
    env: &[(&str, &str)],
) -> Vec<Node> {
    let mut extra = vec!["--datacenter", dc, "--tls-dir", tls.to_str().unwrap()];
    extra.extend_from_slice(more);
    let opts = |name: String, seed: Option<&Node>| {
        env.iter().fold(member_opts(&name, seed, &extra), |o, (k, v)| o.env(k, v))
    };
    let first = Node::start(opts(format!("{dc}-n1"), None));
    let mut nodes = vec![first];
    for i in 2..=n {
        let node = Node::start(opts(format!("{dc}-n{i}"), Some(&nodes[0])));
        nodes.push(node);
    }
    wait_placed(&nodes.iter().collect::<Vec<_>>(), n as u64);
    nodes
}
