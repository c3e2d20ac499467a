//! Test harness for OpenCluster's end-to-end tests: it runs the real binaries.
//!
//! - `node`: start/stop/kill/restart one server process per test on free ports, with
//!   its own temp data dir; or a real `redis-server` when `OPENCLUSTER_TEST_TARGET=redis`,
//!   to check that the expected replies are what Redis 7 gives.
//! - `resp`: a raw RESP2/RESP3 client that keeps replies exactly as sent.
//! - `cluster`: several nodes joined into one cluster; steady write load; checks that
//!   every acknowledged write is readable.
//! - `nemesis`: seeded faults (kill -9, SIGSTOP, SIGTERM, network cuts) on random nodes
//!   of a cluster under writes through every node, and a checker of every acknowledged
//!   write.
//! - `cgroup`: a memory cgroup a test makes for its nodes (limits, OOM kills, RSS).
//! - `relay`, `tcp_relay`, `connector`: the WAN between datacenters (a UDP relay with
//!   delay, loss and cuts, and a TCP one with delay and cuts) and connector processes, for
//!   the multi-datacenter tests and the replication benchmark.
//! - `http`: a minimal HTTP GET for the admin API.
//! - `rng`: a cheap pseudo-random generator for the load generators.
//! - `wait`: polling with deadlines instead of sleeps.
//!
//! The tests themselves live in `tests/tests/*.rs`, one file per area.

pub mod cgroup;
pub mod cluster;
pub mod connector;
pub mod http;
pub mod nemesis;
pub mod node;
pub mod pki;
pub mod relay;
pub mod resp;
pub mod rng;
pub mod tcp_relay;
pub mod wait;

pub use node::{
    Fsync, Node, NodeOpts, Target, node_binary, node_command, pki_binary, run_with_deadline, target,
};
pub use resp::{RawConn, Reply, bulk, encode_command, err, int, nil, ok, simple};
pub use wait::{unix_ms, wait_past, wait_until};

/// Whether `redis-cli` is on PATH (the redis-cli tests skip themselves when it is not).
pub fn redis_cli_available() -> bool {
    std::process::Command::new("redis-cli")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
