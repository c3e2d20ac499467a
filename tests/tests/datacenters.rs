//! Two datacenters, each with its nodes and one connector (or two: twins), the WAN between
//! the connectors through a relay that adds delay and loss and can cut the link: writes in
//! each appear in the other, a cut heals into one state, a connector killed mid-stream
//! loses nothing, a twin takes a killed connector's share over, a new connector resumes
//! from the cursors the nodes keep, and local keyspaces stay home.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opencluster_tests::cluster::worker;
use opencluster_tests::cluster::{Acked, missing_through};
use opencluster_tests::connector::{
    Connector, free_udp_port, grow_datacenter, start_datacenter, start_datacenter_with_env,
};
use opencluster_tests::pki::customer_keys;
use opencluster_tests::relay::{Relay, Wan};
use opencluster_tests::{Node, Reply, wait_until};

/// How long replication may take to deliver everything once the link is up.
const CONVERGE: Duration = Duration::from_secs(60);

struct Pair {
    _keys: tempfile::TempDir,
    /// dc1's and dc2's keys.
    tls1: std::path::PathBuf,
    tls2: std::path::PathBuf,
    dc1: Vec<Node>,
    dc2: Vec<Node>,
    c1: Connector,
    c2: Connector,
    wan: Arc<Wan>,
    /// In front of c1 and c2.
    relays: [Relay; 2],
}

/// dc1 and dc2 of cluster "acme" with `nodes` nodes each (started with `extra` flags) and
/// one connector each, linked through relays with `delay` one way.
fn start_pair(nodes: usize, delay: Duration, extra: &[&str]) -> Pair {
    start_pair_with(nodes, delay, extra, &[])
}

/// [`start_pair`] with `connector_extra` flags for both connectors.
fn start_pair_with(nodes: usize, delay: Duration, extra: &[&str], connector_extra: &[&str]) -> Pair {
    start_pair_env(nodes, delay, extra, connector_extra, &[])
}

/// [`start_pair_with`] with environment variables for dc1's nodes (test hooks).
fn start_pair_env(
    nodes: usize,
    delay: Duration,
    extra: &[&str],
    connector_extra: &[&str],
    dc1_env: &[(&str, &str)],
) -> Pair {
    let keys = tempfile::tempdir().unwrap();
    let tls1 = customer_keys(keys.path(), "dc1");
    let tls2 = customer_keys(keys.path(), "dc2");
    let dc1 = start_datacenter_with_env("dc1", &tls1, nodes, extra, dc1_env);
    let dc2 = start_datacenter("dc2", &tls2, nodes, extra);
    let wan = Wan::new();
    wan.set_delay(delay);
    let (w1, w2) = (free_udp_port(), free_udp_port());
    let w1 = std::net::SocketAddr::from(([127, 0, 0, 1], w1));
    let w2 = std::net::SocketAddr::from(([127, 0, 0, 1], w2));
    let to_c1 = Relay::start(w1, wan.clone());
    let to_c2 = Relay::start(w2, wan.clone());
    let ce = connector_extra;
    let c1 = Connector::start_as(
        "connector-dc1",
        "dc1",
        &tls1,
        &dc1[0],
        w1,
        &[format!("dc2={}", to_c2.addr())],
        ce,
    );
    let c2 = Connector::start_as(
        "connector-dc2",
        "dc2",
        &tls2,
        &dc2[0],
        w2,
        &[format!("dc1={}", to_c1.addr())],
        ce,
    );
    Pair { _keys: keys, tls1, tls2, dc1, dc2, c1, c2, wan, relays: [to_c1, to_c2] }
}

fn set(node: &Node, key: &str, value: &str) -> bool {
    matches!(node.raw().cmd(&["SET", key, value]), Reply::Simple(s) if s == "OK")
}

/// Writes `n` distinct keys `<prefix>-<i>` through the nodes in turn; returns them.
fn write_keys(nodes: &[Node], prefix: &str, n: usize) -> Acked {
    let mut conns: Vec<_> = nodes.iter().map(|n| n.raw()).collect();
    let mut acked = Acked::new();
    for i in 0..n {
        let (key, value) = (format!("{prefix}-{i}"), format!("v-{prefix}-{i}"));
        let conn = &mut conns[i % nodes.len()];
        let reply = conn.cmd(&["SET", &key, &value]);
        assert!(matches!(&reply, Reply::Simple(s) if s == "OK"), "SET {key}: {reply:?}");
        acked.insert(key, value);
    }
    acked
}

/// Waits until every key of `acked` reads back through every node of `nodes`.
fn assert_arrives(nodes: &[Node], acked: &Acked, what: &str, pair: &Pair) {
    for node in nodes {
        let mut missing = Vec::new();
        let arrived = wait_until(CONVERGE, || {
            missing = missing_through(node, acked);
            missing.is_empty()
        });
        assert!(
            arrived,
            "{what}: {} of {} keys missing, e.g. {:?}\nc1: {}\nc2: {}\n{}\n{}",
            missing.len(),
            acked.len(),
            missing.iter().take(3).collect::<Vec<_>>(),
            pair.c1.status(),
            pair.c2.status(),
            pair.c1.log().lines().rev().take(30).collect::<Vec<_>>().join("\n"),
            pair.c2.log().lines().rev().take(30).collect::<Vec<_>>().join("\n"),
        );
    }
}

/// Writes distinct keys `<prefix>-<i>` through `nodes` in turn until `stop`; returns the
/// acknowledged ones.
fn stream_writes(nodes: &[Node], prefix: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Acked> {
    let addrs: Vec<_> = nodes.iter().map(|n| n.client_addr()).collect();
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        let mut acked = Acked::new();
        let mut conns: Vec<_> =
            addrs.iter().map(|a| opencluster_tests::RawConn::connect(*a).expect("connect")).collect();
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let (key, value) = (format!("{prefix}-{i}"), format!("v-{i}"));
            let n = conns.len();
            if matches!(conns[i % n].cmd(&["SET", &key, &value]), Reply::Simple(s) if s == "OK") {
                acked.insert(key, value);
            }
            i += 1;
        }
        acked
    })
}

/// Waits until the stream of [`stream_writes`] with `prefix` has written its key number
/// `i` (reads through dc1's first node), so a test keeps streaming for long enough
/// however fast the connectors ship.
fn wait_streamed(nodes: &[Node], prefix: &str, i: usize) {
    let key = format!("{prefix}-{i}");
    let mut conn = nodes[0].raw();
    assert!(
        wait_until(CONVERGE, || matches!(conn.cmd(&["GET", &key]), Reply::Bulk(_))),
        "the stream never wrote {key}"
    );
}

fn shipped(c: &Connector, remote: &str) -> u64 {
    c.link(remote)["shipped_records"].as_u64().unwrap_or(0)
}

fn get(node: &Node, key: &str) -> Reply {
    node.raw().cmd(&["GET", key])
}

#[test]
fn writes_cross_both_ways_and_a_cut_link_converges_after_it_heals() {
    let pair = start_pair(2, Duration::from_millis(5), &[]);

    // Writes in each datacenter appear in the other.
    let from1 = write_keys(&pair.dc1, "a", 300);
    let from2 = write_keys(&pair.dc2, "b", 300);
    assert_arrives(&pair.dc2, &from1, "dc1's writes in dc2", &pair);
    assert_arrives(&pair.dc1, &from2, "dc2's writes in dc1", &pair);
    // And stay where they were written.
    assert!(missing_through(&pair.dc1[0], &from1).is_empty());
    assert!(missing_through(&pair.dc2[0], &from2).is_empty());
    // Batches are counted a moment after their keys are readable: waited for.
    let counted = || {
        let link = pair.c1.link("dc2");
        link["shipped_records"].as_u64() >= Some(300) && link["applied_records"].as_u64() >= Some(300)
    };
    assert!(wait_until(CONVERGE, counted), "{}", pair.c1.link("dc2"));
    let link = pair.c1.link("dc2");
    assert_eq!(link["link"], "up", "{link}");
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["lag_records"] == 0), "{}", pair.c1.link("dc2"));
    let metrics = pair.c1.metrics();
    for name in [
        "opencluster_connector_lag_seconds{remote=\"dc2\"}",
        "opencluster_connector_link_up{remote=\"dc2\"} 1",
        "opencluster_connector_rtt_seconds{remote=\"dc2\"}",
        "opencluster_connector_sent_bytes_total{remote=\"dc2\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // Deletes cross as tombstones.
    let mut conn = pair.dc1[1].raw();
    for i in 0..20 {
        assert_eq!(conn.cmd(&["DEL", &format!("a-{i}")]), Reply::Int(1));
    }
    for i in 0..20 {
        let key = format!("a-{i}");
        assert!(
            wait_until(CONVERGE, || get(&pair.dc2[i % 2], &key) == Reply::NullBulk),
            "{key} still in dc2 after its delete in dc1"
        );
    }

    // Cut the link; write on both sides, some keys on both sides with different values.
    let sent_before = pair.c1.link("dc2")["sent_bytes"].as_u64().unwrap();
    pair.wan.cut();
    let cut1 = write_keys(&pair.dc1, "cut-a", 200);
    let cut2 = write_keys(&pair.dc2, "cut-b", 200);
    for i in 0..50 {
        let key = format!("both-{i}");
        assert!(set(&pair.dc1[i % 2], &key, &format!("from-dc1-{i}")));
        assert!(set(&pair.dc2[i % 2], &key, &format!("from-dc2-{i}")));
    }
    assert!(
        wait_until(Duration::from_secs(20), || pair.c1.link("dc2")["link"] == "down"),
        "the link never showed down: {}",
        pair.c1.link("dc2")
    );
    assert!(pair.c1.link("dc2")["last_error"]["error"].is_string());
    // Nothing written during the cut crossed it.
    assert_eq!(get(&pair.dc2[0], "cut-a-0"), Reply::NullBulk);

    pair.wan.heal();
    assert_arrives(&pair.dc2, &cut1, "dc1's writes during the cut, in dc2", &pair);
    assert_arrives(&pair.dc1, &cut2, "dc2's writes during the cut, in dc1", &pair);
    // Conflicting keys end with the same value in both datacenters (last writer wins).
    for i in 0..50 {
        let key = format!("both-{i}");
        let mut last = (Reply::NullBulk, Reply::NullBulk);
        let agree = wait_until(CONVERGE, || {
            last = (get(&pair.dc1[0], &key), get(&pair.dc2[1], &key));
            last.0 == last.1
        });
        assert!(agree, "{key} differs: dc1 {:?}, dc2 {:?}", last.0, last.1);
        assert!(matches!(&last.0, Reply::Bulk(v) if v.starts_with(b"from-dc")), "{key}: {:?}", last.0);
    }
    assert_eq!(pair.c2.link("dc1")["link"], "up");
    // What the catch-up cost: bytes shipped by dc1 since the cut (keys and encoded records,
    // with their HLC and origin) against the keys and values written in dc1 during it.
    let sent = pair.c1.link("dc2")["sent_bytes"].as_u64().unwrap() - sent_before;
    let changed: usize = cut1.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + (0..50).map(|i| format!("both-{i}").len() + format!("from-dc1-{i}").len()).sum::<usize>();
    println!(
        "catch-up after the cut: {sent} bytes shipped for {changed} bytes of keys and values written ({:.2}x)",
        sent as f64 / changed as f64
    );
    assert!(sent as f64 <= 4.0 * changed as f64, "{sent} bytes shipped for {changed} written");
}

/// A counter of every node of `nodes` summed, from `/metrics`.
fn summed(nodes: &[Node], metric: &str) -> u64 {
    nodes.iter().map(|n| n.metric(metric).parse::<u64>().unwrap_or(0)).sum()
}

#[test]
fn deletes_made_during_an_outage_longer_than_the_tombstone_grace_still_arrive() {
    // Tombstones are due for purging one second after the delete: the outage outlasts that.
    let grace = ["--store-tombstone-grace", "1s", "--store-purge-interval", "50ms"];
    let pair = start_pair(2, Duration::from_millis(5), &grace);
    let written = write_keys(&pair.dc1, "d", 100);
    assert_arrives(&pair.dc2, &written, "dc1's writes in dc2", &pair);

    pair.wan.cut();
    let mut conns: Vec<_> = pair.dc1.iter().map(|n| n.raw()).collect();
    for i in 0..100 {
        assert_eq!(conns[i % 2].cmd(&["DEL", &format!("d-{i}")]), Reply::Int(1), "DEL d-{i}");
    }
    // Every tombstone is past its grace, and its purge was put off because dc2 has not got
    // it (each is held at every owner; 100 holds is at least one look at each).
    let held = "opencluster_tombstones_held_total";
    assert!(
        wait_until(CONVERGE, || summed(&pair.dc1, held) >= 100),
        "tombstones held: {}",
        summed(&pair.dc1, held)
    );
    assert_eq!(get(&pair.dc2[0], "d-0"), Reply::Bulk(b"v-d-0".to_vec()), "a delete crossed the cut");

    pair.wan.heal();
    for i in 0..100 {
        let key = format!("d-{i}");
        assert!(
            wait_until(CONVERGE, || get(&pair.dc2[i % 2], &key) == Reply::NullBulk),
            "{key} still in dc2 after its delete in dc1 during an outage longer than the grace"
        );
    }
    // Once shipped, the tombstones go (the next look at a held one is within 10 s).
    assert!(
        wait_until(CONVERGE, || summed(&pair.dc1, "opencluster_tombstones") == 0),
        "tombstones left in dc1: {}",
        summed(&pair.dc1, "opencluster_tombstones")
    );
    assert_eq!(summed(&pair.dc1, "opencluster_tombstones_unshipped_purged_total"), 0);
}

#[test]
fn a_rebalance_in_either_datacenter_while_it_ships_loses_nothing() {
    let mut pair = start_pair(2, Duration::from_millis(5), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // Both datacenters write all along; each grows by a node meanwhile, so partitions
    // move to a new owner whose sequences number the records it receives anew.
    let writer1 = stream_writes(&pair.dc1, "r1", stop.clone());
    let writer2 = stream_writes(&pair.dc2, "r2", stop.clone());
    assert!(wait_until(CONVERGE, || shipped(&pair.c1, "dc2") >= 200 && shipped(&pair.c2, "dc1") >= 200));
    let (tls1, tls2) = (pair.tls1.clone(), pair.tls2.clone());
    grow_datacenter("dc1", &tls1, &mut pair.dc1, &[]);
    grow_datacenter("dc2", &tls2, &mut pair.dc2, &[]);
    let rebalanced = |nodes: &[Node]| nodes.iter().all(|n| worker(n, "rebalance")["state"] == "idle");
    assert!(
        wait_until(CONVERGE, || rebalanced(&pair.dc1) && rebalanced(&pair.dc2)),
        "rebalance still running: {} / {}",
        worker(&pair.dc1[2], "rebalance"),
        worker(&pair.dc2[2], "rebalance")
    );
    let moved = |n: &Node| worker(n, "rebalance")["keys_moved"].as_u64().unwrap_or(0);
    assert!(moved(&pair.dc1[2]) > 0 && moved(&pair.dc2[2]) > 0, "no keys moved to the new nodes");
    // Writes go on through the new owners too.
    let late1 = write_keys(&pair.dc1, "late1", 100);
    let late2 = write_keys(&pair.dc2, "late2", 100);
    stop.store(true, Ordering::SeqCst);
    let (acked1, acked2) = (writer1.join().unwrap(), writer2.join().unwrap());
    assert!(
        acked1.len() >= 300 && acked2.len() >= 300,
        "{} and {} writes acknowledged",
        acked1.len(),
        acked2.len()
    );
    assert_arrives(&pair.dc2, &acked1, "dc1's stream in dc2 across rebalances", &pair);
    assert_arrives(&pair.dc1, &acked2, "dc2's stream in dc1 across rebalances", &pair);
    assert_arrives(&pair.dc2, &late1, "dc1's writes after its rebalance", &pair);
    assert_arrives(&pair.dc1, &late2, "dc2's writes after its rebalance", &pair);
}

#[test]
fn a_connector_killed_mid_stream_and_restarted_loses_nothing() {
    let mut pair = start_pair(2, Duration::from_millis(10), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // A steady stream of writes in dc1 while its connector is killed and restarted.
    let writer = stream_writes(&pair.dc1, "k", stop.clone());
    // Kill it once it has shipped some of the stream.
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["shipped_records"].as_u64().unwrap_or(0) >= 200));
    pair.c1.kill9();
    let dead_for = std::time::Instant::now() + Duration::from_millis(1500);
    opencluster_tests::wait_past(dead_for);
    pair.c1.restart();
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["shipped_records"].as_u64().unwrap_or(0) >= 100));
    wait_streamed(&pair.dc1, "k", 400);
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().unwrap();
    assert!(acked.len() >= 300, "only {} writes acknowledged", acked.len());
    assert_arrives(&pair.dc2, &acked, "dc1's stream in dc2 after a connector kill -9", &pair);
    // The cursors are kept at the nodes, not in the connector.
    for node in &pair.dc1 {
        cursors_exist(&node.data_dir());
    }
    assert!(!pair.c1.data_dir().join("cursors-dc2.json").exists());
}

/// Many small batches in flight at once, acknowledged out of order and some refused (the
/// receiving connector's test hook holds every third batch back and refuses every fifth):
/// the sender moves the nodes' cursors only past batches acknowledged in sending order, so
/// a kill -9 of the sender mid-stream and a restart from those cursors lose nothing.
#[test]
fn pipelined_batches_acknowledged_out_of_order_lose_nothing_across_a_kill() {
    let mut pair = start_pair(2, Duration::from_millis(10), &[]);
    pair.c2.restart_with_env(&[("OPENCLUSTER_TEST_WAN_DISORDER", "1")]);
    pair.c1.restart_with_env(&[
        ("OPENCLUSTER_CONNECTOR_BATCH_RECORDS", "8"),
        ("OPENCLUSTER_CONNECTOR_BATCHES_IN_FLIGHT", "16"),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = stream_writes(&pair.dc1, "p", stop.clone());
    assert!(wait_until(CONVERGE, || shipped(&pair.c1, "dc2") >= 300), "{}", pair.c1.link("dc2"));
    // The receiver refused some batches: they were sent again while later ones went on.
    assert!(pair.c1.link("dc2")["errors"].as_u64().unwrap_or(0) > 0, "{}", pair.c1.link("dc2"));
    pair.c1.kill9();
    pair.c1.restart();
    assert!(wait_until(CONVERGE, || shipped(&pair.c1, "dc2") >= 200), "{}", pair.c1.link("dc2"));
    wait_streamed(&pair.dc1, "p", 600);
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().unwrap();
    assert!(acked.len() >= 500, "only {} writes acknowledged", acked.len());
    assert_arrives(&pair.dc2, &acked, "dc1's stream in dc2 with batches acknowledged out of order", &pair);
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["lag_records"] == 0), "{}", pair.c1.link("dc2"));
}

/// dc1's nodes refuse the long poll (`Follow`) as nodes of an older version do: the
/// connector reads them with `Positions` and `Changes` instead, and everything arrives.
#[test]
fn nodes_without_long_polls_are_still_read() {
    let pair =
        start_pair_env(2, Duration::from_millis(5), &[], &[], &[("OPENCLUSTER_TEST_REFUSE_KINDS", "follow")]);
    let acked = write_keys(&pair.dc1, "old-node", 300);
    assert_arrives(&pair.dc2, &acked, "writes of nodes without long polls in dc2", &pair);
    let log = pair.c1.log();
    assert!(log.contains("the node does not take long polls"), "{log}");
    // And the other way, from nodes that take them.
    let back = write_keys(&pair.dc2, "new-node", 100);
    assert_arrives(&pair.dc1, &back, "dc2's writes in dc1", &pair);
    assert!(!pair.c2.log().contains("the node does not take long polls"));
}

fn cursors_exist(dir: &Path) {
    let path = dir.join("connector-cursors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains("\"dc2\""), "no cursor of dc2 in {}: {text}", path.display());
}

#[test]
fn a_node_killed_in_the_sending_datacenter_while_it_ships_loses_nothing() {
    // Three nodes in dc1, so writes keep their quorum (2 of 3) while one is down; a lossy WAN.
    let mut pair = start_pair(3, Duration::from_millis(5), &[]);
    pair.wan.set_loss(0.02);
    let stop = Arc::new(AtomicBool::new(false));
    // Through the two nodes that stay up.
    let writer = stream_writes(&pair.dc1[..2], "n", stop.clone());
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["shipped_records"].as_u64().unwrap_or(0) >= 200));
    // Killed while the connector reads its change sequences; what it held is on the other
    // owners, and what it misses meanwhile reaches it late (handoff, repair) under new
    // numbers of its sequence.
    pair.dc1[2].kill9();
    let down_until = std::time::Instant::now() + Duration::from_secs(2);
    opencluster_tests::wait_past(down_until);
    pair.dc1[2].restart();
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["shipped_records"].as_u64().unwrap_or(0) >= 400));
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().unwrap();
    // Writes to partitions the dead node was primary of fail until it is declared down.
    assert!(acked.len() >= 100, "only {} writes acknowledged", acked.len());
    assert_arrives(&pair.dc2, &acked, "dc1's stream in dc2 with a dc1 node killed", &pair);
    assert_arrives(&pair.dc1, &acked, "dc1's stream in dc1", &pair);
}

/// Replication lag over a WAN with 20 ms one-way delay, with the nodes' default settings:
/// from a write acknowledged in dc1 to the key readable in dc2, one write at a time.
/// Printed; bounded loosely (two busy cores run eight processes here), the figure is what
/// matters (tests/bench/replication-lag.sh measures it against Redis replication).
#[test]
fn replication_lag_over_a_20ms_wan() {
    let pair = start_pair(2, Duration::from_millis(20), &[]);
    let mut writer = pair.dc1[0].raw();
    let mut reader = pair.dc2[1].raw();
    // Warm the link up (connection, first batches).
    assert!(set(&pair.dc1[0], "warm", "up"));
    assert!(wait_until(CONVERGE, || reader.cmd(&["GET", "warm"]) == Reply::Bulk(b"up".to_vec())));
    let mut lags = Vec::new();
    for i in 0..100 {
        let key = format!("lag-{i}");
        assert_eq!(writer.cmd(&["SET", &key, "x"]), Reply::Simple("OK".into()));
        let acked = std::time::Instant::now();
        assert!(wait_until(CONVERGE, || reader.cmd(&["GET", &key]) == Reply::Bulk(b"x".to_vec())));
        lags.push(acked.elapsed());
    }
    lags.sort();
    let (p50, p99) = (lags[49], lags[98]);
    println!("replication lag over a 20 ms one-way WAN: p50 {p50:?}, p99 {p99:?} (100 sequential writes)");
    assert!(p99 < Duration::from_secs(5), "p50 {p50:?} p99 {p99:?}");
}

/// A write is shipped once it is in its node's write buffer, not once the buffer applies
/// it to the storage engine: with an apply delay of an hour, every write still reaches
/// dc2 while dc1's buffers hold them all.
#[test]
fn writes_are_shipped_before_their_node_applies_them() {
    let pair = start_pair(2, Duration::from_millis(5), &["--store-apply-delay", "3600s"]);
    let acked = write_keys(&pair.dc1, "buffered", 200);
    assert_arrives(&pair.dc2, &acked, "dc1's buffered writes in dc2", &pair);
    for node in &pair.dc1 {
        let status = node.admin_json("/v1/status");
        let buffer = &status["store"]["write_buffer"];
        assert_eq!(buffer["applied_total"], 0, "{}: {buffer}", node.client_addr());
        assert!(buffer["records"].as_u64().unwrap() >= 200, "{}: {buffer}", node.client_addr());
    }
}

/// The backstop ships what the cursors missed: dc1's connector passes over the keys
/// with prefix `missed-` as if they were shipped (a test hook, standing in for a lost
/// cursor). The periodic comparison of each partition with dc2 finds them and ships them,
/// and dc2's own backstop never sends dc1's records back.
#[test]
fn the_backstop_ships_what_the_cursors_missed() {
    let keys = tempfile::tempdir().unwrap();
    let tls1 = customer_keys(keys.path(), "dc1");
    let tls2 = customer_keys(keys.path(), "dc2");
    // 64 partitions: a debug build on two busy cores compares only tens a second.
    let dc1 = start_datacenter("dc1", &tls1, 2, &["--store-partitions", "64"]);
    let dc2 = start_datacenter("dc2", &tls2, 2, &["--store-partitions", "64"]);
    let wan = Wan::new();
    wan.set_delay(Duration::from_millis(5));
    let (w1, w2) = (free_udp_port(), free_udp_port());
    let w1 = std::net::SocketAddr::from(([127, 0, 0, 1], w1));
    let w2 = std::net::SocketAddr::from(([127, 0, 0, 1], w2));
    let (to_c1, to_c2) = (Relay::start(w1, wan.clone()), Relay::start(w2, wan.clone()));
    let interval = ("OPENCLUSTER_CONNECTOR_BACKSTOP_INTERVAL", "2s");
    let partitions = ("OPENCLUSTER_STORE_PARTITIONS", "64");
    let c1 = Connector::start_with_env(
        "dc1",
        &tls1,
        &dc1[0],
        w1,
        &[format!("dc2={}", to_c2.addr())],
        &[interval, partitions, ("OPENCLUSTER_TEST_SHIP_SKIP_PREFIX", "missed-")],
    );
    let c2 = Connector::start_with_env(
        "dc2",
        &tls2,
        &dc2[0],
        w2,
        &[format!("dc1={}", to_c1.addr())],
        &[interval, partitions],
    );
    let missed = write_keys(&dc1, "missed", 100);
    let shipped = write_keys(&dc1, "shipped", 100);
    for node in &dc2 {
        let mut missing = Vec::new();
        let arrived = wait_until(CONVERGE, || {
            missing =
                missing_through(node, &missed).into_iter().chain(missing_through(node, &shipped)).collect();
            missing.is_empty()
        });
        assert!(
            arrived,
            "{} keys missing in dc2, e.g. {:?}\nc1: {}",
            missing.len(),
            missing.first(),
            c1.status()
        );
    }
    let link = c1.link("dc2");
    assert!(link["backstop_shipped_records"].as_u64().unwrap() >= 100, "{link}");
    assert!(link["backstop_comparisons"].as_u64().unwrap() > 0, "{link}");
    // dc2 holds dc1's records only: its backstop has nothing of its own to ship.
    assert_eq!(c2.link("dc1")["backstop_shipped_records"], 0, "{}", c2.status());
    drop((to_c1, to_c2));
}

/// Three datacenters in a full mesh: each one's writes reach both others straight from
/// its own connector; nobody forwards what it received.
#[test]
fn three_datacenters_in_a_full_mesh_never_forward() {
    let keys = tempfile::tempdir().unwrap();
    let names = ["dc1", "dc2", "dc3"];
    let tls: Vec<_> = names.iter().map(|dc| customer_keys(keys.path(), dc)).collect();
    let dcs: Vec<Vec<Node>> =
        names.iter().zip(&tls).map(|(dc, tls)| start_datacenter(dc, tls, 2, &[])).collect();
    let wan = Wan::new();
    wan.set_delay(Duration::from_millis(5));
    let wan_addrs: Vec<std::net::SocketAddr> =
        names.iter().map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], free_udp_port()))).collect();
    // One relay in front of each connector, shared by the two others.
    let relays: Vec<Relay> = wan_addrs.iter().map(|a| Relay::start(*a, wan.clone())).collect();
    let connectors: Vec<Connector> = (0..3)
        .map(|i| {
            let peers: Vec<String> =
                (0..3).filter(|&j| j != i).map(|j| format!("{}={}", names[j], relays[j].addr())).collect();
            Connector::start(names[i], &tls[i], &dcs[i][0], wan_addrs[i], &peers)
        })
        .collect();
    let written: Vec<Acked> = (0..3).map(|i| write_keys(&dcs[i], &format!("m{}", i + 1), 100)).collect();
    for (i, acked) in written.iter().enumerate() {
        for (j, nodes) in dcs.iter().enumerate() {
            for node in nodes {
                let mut missing = Vec::new();
                let arrived = wait_until(CONVERGE, || {
                    missing = missing_through(node, acked);
                    missing.is_empty()
                });
                assert!(
                    arrived,
                    "{}'s writes in {}: {} missing, e.g. {:?}\n{}",
                    names[i],
                    names[j],
                    missing.len(),
                    missing.first(),
                    connectors.iter().map(|c| c.status().to_string()).collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
    // Each connector applied exactly what its peers originated: 100 records from each,
    // never a copy relayed by a third datacenter (duplicates would only add to these).
    for (i, c) in connectors.iter().enumerate() {
        for j in (0..3).filter(|&j| j != i) {
            // Counted a moment after the keys are readable: waited for, then exact.
            let counted = || {
                let link = c.link(names[j]);
                link["applied_records"].as_u64() >= Some(100) && link["shipped_records"].as_u64() >= Some(100)
            };
            assert!(wait_until(CONVERGE, counted), "{}", c.link(names[j]));
            let link = c.link(names[j]);
            assert_eq!(link["applied_records"], 100, "{} from {}: {link}", names[i], names[j]);
            assert_eq!(link["shipped_records"], 100, "{} to {}: {link}", names[i], names[j]);
        }
    }
}

#[test]
fn a_connector_refuses_bad_peers_naming_the_setting() {
    let bin = opencluster_tests::connector::connector_binary();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases: [(&[&str], &str); 2] =
        [(&["--peer", "dc2"], "connector.peers"), (&["--peer", "dc1=127.0.0.1:7948"], "own datacenter")];
    for (args, expected) in cases {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["--dev", "--data-dir", data.to_str().unwrap(), "--admin-addr", "127.0.0.1:0"])
            .args(["--gossip-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0", "--wan-addr", "127.0.0.1:0"])
            .args(args);
        let out = opencluster_tests::run_with_deadline(cmd, Duration::from_secs(20)).expect("exits");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Partitions of the test clusters (`store.partitions`' default).
const PARTITIONS: u64 = 1024;

/// Two connectors in dc1 share its partitions; one is killed with `kill -9` under a steady
/// stream of writes through every dc1 node: the twin takes its share over from the cursors
/// at the nodes, and every acknowledged write reaches dc2. dc2's connector names both dc1
/// connectors and moves on to the survivor for its own batches.
#[test]
fn a_twin_takes_over_the_share_of_a_connector_killed_mid_stream() {
    let keys = tempfile::tempdir().unwrap();
    let tls1 = customer_keys(keys.path(), "dc1");
    let tls2 = customer_keys(keys.path(), "dc2");
    let dc1 = start_datacenter("dc1", &tls1, 2, &[]);
    let dc2 = start_datacenter("dc2", &tls2, 2, &[]);
    let wan = Wan::new();
    wan.set_delay(Duration::from_millis(5));
    let addrs: Vec<std::net::SocketAddr> =
        (0..3).map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], free_udp_port()))).collect();
    let relays: Vec<Relay> = addrs.iter().map(|a| Relay::start(*a, wan.clone())).collect();
    let to_dc2 = [format!("dc2={}", relays[2].addr())];
    let mut a = Connector::start_as("connector-a", "dc1", &tls1, &dc1[0], addrs[0], &to_dc2, &[]);
    let b = Connector::start_as("connector-b", "dc1", &tls1, &dc1[1], addrs[1], &to_dc2, &[]);
    let to_dc1 = [format!("dc1={}", relays[0].addr()), format!("dc1={}", relays[1].addr())];
    let c2 = Connector::start_as("connector-dc2", "dc2", &tls2, &dc2[0], addrs[2], &to_dc1, &[]);

    // The twins split the partitions between them.
    let mut shares = ((0, 0), (0, 0));
    let split = wait_until(CONVERGE, || {
        shares = (a.share(), b.share());
        shares.0.1 == 2 && shares.1.1 == 2 && shares.0.0 + shares.1.0 == PARTITIONS
    });
    assert!(split, "the twins never split the partitions: a {:?}, b {:?}", shares.0, shares.1);
    assert!(shares.0.0 > 0 && shares.1.0 > 0, "{shares:?}");
    println!("twins' shares: a {} partitions, b {}", shares.0.0, shares.1.0);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = stream_writes(&dc1, "t", stop.clone());
    let both_ship = wait_until(CONVERGE, || shipped(&a, "dc2") >= 100 && shipped(&b, "dc2") >= 100);
    assert!(both_ship, "a: {}\nb: {}", a.link("dc2"), b.link("dc2"));
    a.kill9();
    let killed = std::time::Instant::now();
    let took_over = wait_until(CONVERGE, || b.share() == (PARTITIONS, 1));
    assert!(took_over, "b never took the whole share over: {:?}\n{}", b.share(), b.log());
    println!("the twin ships every partition {:?} after the kill", killed.elapsed());
    let before = shipped(&b, "dc2");
    assert!(wait_until(CONVERGE, || shipped(&b, "dc2") >= before + 200), "{}", b.link("dc2"));
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().unwrap();
    assert!(acked.len() >= 300, "only {} writes acknowledged", acked.len());
    for node in &dc2 {
        let mut missing = Vec::new();
        let arrived = wait_until(CONVERGE, || {
            missing = missing_through(node, &acked);
            missing.is_empty()
        });
        assert!(
            arrived,
            "{} of {} keys missing in dc2, e.g. {:?}\nb: {}\nc2: {}",
            missing.len(),
            acked.len(),
            missing.first(),
            b.status(),
            c2.status()
        );
    }

    // dc2's writes reach dc1 through the surviving twin.
    let from2 = write_keys(&dc2, "back", 50);
    for node in &dc1 {
        assert!(wait_until(CONVERGE, || missing_through(node, &from2).is_empty()), "{}", c2.link("dc1"));
    }
    // Links are per remote datacenter: what b applied from dc2 shows on its link to dc2. The
    // keys are readable as soon as the owners have them, a moment before the connectors
    // count the batch: waited for.
    let applied = || b.link("dc2")["applied_records"].as_u64().unwrap_or(0);
    assert!(wait_until(CONVERGE, || applied() >= 50), "{}", b.link("dc2"));
    let to = relays[1].addr().to_string();
    assert!(wait_until(CONVERGE, || c2.link("dc1")["shipping_to"] == to), "{}", c2.link("dc1"));
}

/// A connector is killed and a new one with an empty data directory starts in its place:
/// it resumes from the cursors kept at the nodes, sending only what was not acknowledged
/// yet, not the whole data set again.
#[test]
fn a_new_connector_on_an_empty_volume_resumes_from_the_nodes_cursors() {
    let mut pair = start_pair(2, Duration::from_millis(5), &[]);
    let first = write_keys(&pair.dc1, "old", 1000);
    assert_arrives(&pair.dc2, &first, "dc1's first writes in dc2", &pair);
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["lag_records"] == 0), "{}", pair.c1.link("dc2"));
    pair.c1.kill9();
    let peers = [format!("dc2={}", pair.relays[1].addr())];
    let fresh = Connector::start_as(
        "connector-dc1-new",
        "dc1",
        &pair.tls1,
        &pair.dc1[0],
        pair.c1.wan_addr,
        &peers,
        &[],
    );
    pair.c1 = fresh;
    let second = write_keys(&pair.dc1, "new", 100);
    assert_arrives(&pair.dc2, &second, "dc1's writes after the replacement in dc2", &pair);
    assert_arrives(&pair.dc2, &first, "dc1's first writes in dc2, still", &pair);
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["lag_records"] == 0), "{}", pair.c1.link("dc2"));
    assert!(wait_until(CONVERGE, || shipped(&pair.c1, "dc2") >= 100), "{}", pair.c1.link("dc2"));
    let sent = shipped(&pair.c1, "dc2");
    println!("the new connector shipped {sent} records; the data set holds {}", first.len() + second.len());
    assert!(sent >= 100, "{}", pair.c1.link("dc2"));
    assert!(sent < 300, "the new connector started over: {sent} records shipped for 100 new writes");
}

/// Keys of a local keyspace never leave their datacenter, while replicated keys written
/// after them do; the nodes pass them over, so they are not even shipped.
#[test]
fn local_keys_never_leave_their_datacenter() {
    let local = ["--keyspaces-local", "session:,tmp:"];
    let pair = start_pair_with(2, Duration::from_millis(5), &local, &local);
    let mut sessions = Acked::new();
    let mut conns: Vec<_> = pair.dc1.iter().map(|n| n.raw()).collect();
    for i in 0..100 {
        let key = format!("session:{i}");
        assert!(matches!(conns[i % 2].cmd(&["SET", &key, "here"]), Reply::Simple(s) if s == "OK"));
        sessions.insert(key, "here".into());
    }
    let replicated = write_keys(&pair.dc1, "shared", 100);
    assert_arrives(&pair.dc2, &replicated, "replicated keys in dc2", &pair);
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["lag_records"] == 0), "{}", pair.c1.link("dc2"));
    for node in &pair.dc2 {
        let leaked = sessions.keys().filter(|k| get(node, k) != Reply::NullBulk).count();
        assert_eq!(leaked, 0, "local keys found in dc2");
    }
    // Still readable at home.
    assert!(missing_through(&pair.dc1[1], &sessions).is_empty());
    // Counted a moment after the keys are readable: waited for, then exact.
    assert!(wait_until(CONVERGE, || shipped(&pair.c1, "dc2") >= 100), "{}", pair.c1.link("dc2"));
    assert_eq!(shipped(&pair.c1, "dc2"), 100, "{}", pair.c1.link("dc2"));
}

#[test]
fn bad_local_keyspaces_are_refused_naming_the_setting() {
    let bin = opencluster_tests::connector::connector_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["--dev", "--data-dir", dir.path().join("d").to_str().unwrap(), "--admin-addr", "127.0.0.1:0"])
        .args(["--gossip-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0", "--wan-addr", "127.0.0.1:0"])
        .args(["--keyspaces-local", "a:,a:"]);
    let out = opencluster_tests::run_with_deadline(cmd, Duration::from_secs(20)).expect("exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("keyspaces.local"), "{stderr}");
}

/// Flags for `acct:` keys living in dc1, on every node of both datacenters (a lease of
/// 3 s), and on their connectors.
const HOME: [&str; 4] = ["--keyspaces-home", "acct:=dc1", "--keyspaces-home-lease", "3s"];
const HOME_CONNECTOR: [&str; 2] = ["--keyspaces-home", "acct:=dc1"];

/// The pair of [`start_pair_with`] with [`HOME`], once every dc2 node knows a connector
/// (until then its home reads and writes get `-TRYAGAIN`).
fn start_home_pair() -> Pair {
    let pair = start_pair_with(2, Duration::from_millis(5), &HOME, &HOME_CONNECTOR);
    for node in &pair.dc2 {
        let mut c = node.raw();
        assert!(
            wait_until(CONVERGE, || !c.cmd(&["GET", "acct:probe"]).is_error()),
            "dc2 never reached dc1 for home keys: {:?}",
            c.cmd(&["GET", "acct:probe"])
        );
    }
    pair
}

fn counter(node: &Node, name: &str) -> u64 {
    node.metric(name).parse::<f64>().unwrap_or_else(|e| panic!("{name}: {e}")) as u64
}

/// Writes to home keys made in dc2 are applied in dc1 before dc2 answers, so both read
/// them at once; dc1 ships none of them (dc2 holds no copy, only cached reads).
#[test]
fn home_key_writes_in_another_datacenter_land_in_the_home_and_are_never_shipped() {
    let pair = start_home_pair();
    let mut acked = Acked::new();
    let mut conns: Vec<_> = pair.dc2.iter().map(|n| n.raw()).collect();
    for i in 0..50 {
        let (key, value) = (format!("acct:{i}"), format!("v{i}"));
        let reply = conns[i % 2].cmd(&["SET", &key, &value]);
        assert_eq!(reply, Reply::Simple("OK".into()), "SET {key} in dc2");
        acked.insert(key, value);
    }
    // Synchronous: no waiting for replication.
    for node in pair.dc1.iter().chain(&pair.dc2) {
        assert!(missing_through(node, &acked).is_empty(), "a home write is missing");
    }
    // Every write command goes home: DEL, INCR, EXPIRE, APPEND, GETDEL.
    let mut c = pair.dc2[0].raw();
    assert_eq!(c.cmd(&["DEL", "acct:0"]), Reply::Int(1));
    assert_eq!(get(&pair.dc1[0], "acct:0"), Reply::NullBulk);
    assert_eq!(c.cmd(&["INCRBY", "acct:n", "5"]), Reply::Int(5));
    assert_eq!(c.cmd(&["APPEND", "acct:1", "x"]), Reply::Int(3));
    assert_eq!(c.cmd(&["EXPIRE", "acct:2", "1000"]), Reply::Int(1));
    assert_eq!(pair.dc1[1].raw().cmd(&["TTL", "acct:2"]), Reply::Int(1000));
    assert_eq!(get(&pair.dc1[1], "acct:1"), Reply::Bulk(b"v1x".to_vec()));
    assert_eq!(c.cmd(&["GETDEL", "acct:3"]), Reply::Bulk(b"v3".to_vec()));
    assert_eq!(get(&pair.dc1[0], "acct:3"), Reply::NullBulk);
    // Keys of two modes in one command cannot be run together.
    let mixed = c.cmd(&["MSET", "acct:4", "a", "plain", "b"]);
    assert!(mixed.is_error() && mixed.error().contains("keyspaces.home"), "{mixed:?}");
    assert_eq!(get(&pair.dc1[0], "acct:4"), Reply::Bulk(b"v4".to_vec()), "nothing of it applied");
    // Not shipped: a replicated write after them arrives, and the link shipped only it.
    let plain = write_keys(&pair.dc1, "plain", 1);
    assert_arrives(&pair.dc2, &plain, "a replicated key", &pair);
    assert!(wait_until(CONVERGE, || shipped(&pair.c1, "dc2") >= 1), "{}", pair.c1.link("dc2"));
    assert_eq!(shipped(&pair.c1, "dc2"), 1, "home keys were shipped: {}", pair.c1.link("dc2"));
    // dc2's own stores hold no copy (DBSIZE counts this datacenter's keys).
    assert_eq!(pair.dc2[0].raw().cmd(&["DBSIZE"]), Reply::Int(1));
}

/// INCR on one home key from both datacenters at once ends with the exact sum: every
/// increment is applied at the key's primary in dc1.
#[test]
fn incr_on_a_home_key_from_both_datacenters_keeps_every_increment() {
    let pair = start_home_pair();
    const EACH: i64 = 100;
    let addrs: Vec<_> = pair.dc1.iter().chain(&pair.dc2).map(|n| n.client_addr()).collect();
    let threads: Vec<_> = addrs
        .into_iter()
        .map(|addr| {
            std::thread::spawn(move || {
                let mut c = opencluster_tests::RawConn::connect(addr).expect("connect");
                let mut last = 0;
                for _ in 0..EACH {
                    match c.cmd(&["INCR", "acct:counter"]) {
                        Reply::Int(n) => {
                            assert!(n > last, "INCR went back from {last} to {n}");
                            last = n;
                        }
                        other => panic!("INCR: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("an INCR thread failed");
    }
    let total = 4 * EACH;
    for node in pair.dc1.iter().chain(&pair.dc2) {
        assert_eq!(get(node, "acct:counter"), Reply::Bulk(total.to_string().into_bytes()));
    }
}

/// A read in dc2 is kept for its lease (a second read does not cross the WAN), and when
/// dc1 changes the key, dc2 drops its copy and its tracking clients hear of it.
#[test]
fn a_home_key_read_elsewhere_is_cached_and_invalidated_when_its_home_changes_it() {
    let pair = start_home_pair();
    assert_eq!(pair.dc1[0].raw().cmd(&["SET", "acct:k", "one"]), Reply::Simple("OK".into()));
    let reader = &pair.dc2[0];
    let mut tracking = reader.raw();
    assert!(!tracking.cmd(&["HELLO", "3"]).is_error());
    assert_eq!(tracking.cmd(&["CLIENT", "TRACKING", "ON"]), Reply::Simple("OK".into()));
    let (reads, hits) = (
        counter(reader, "opencluster_home_reads_total"),
        counter(reader, "opencluster_home_cache_hits_total"),
    );
    assert_eq!(tracking.cmd(&["GET", "acct:k"]), Reply::Bulk(b"one".to_vec()));
    assert_eq!(reader.raw().cmd(&["GET", "acct:k"]), Reply::Bulk(b"one".to_vec()));
    assert_eq!(counter(reader, "opencluster_home_reads_total"), reads + 1, "the second read crossed the WAN");
    assert_eq!(counter(reader, "opencluster_home_cache_hits_total"), hits + 1);

    // The home changes it: the tracking client is told, and dc2 reads the new value.
    assert_eq!(pair.dc1[1].raw().cmd(&["SET", "acct:k", "two"]), Reply::Simple("OK".into()));
    let push = tracking.read_reply().expect("an invalidation within the read timeout");
    assert_eq!(
        push,
        Reply::Push(vec![
            Reply::Bulk(b"invalidate".to_vec()),
            Reply::Array(vec![Reply::Bulk(b"acct:k".to_vec())])
        ])
    );
    assert!(counter(reader, "opencluster_home_invalidations_received_total") >= 1);
    assert_eq!(reader.raw().cmd(&["GET", "acct:k"]), Reply::Bulk(b"two".to_vec()));
    // The other dc2 node was told too (it held no copy; it reads the new value).
    assert_eq!(get(&pair.dc2[1], "acct:k"), Reply::Bulk(b"two".to_vec()));
    assert!(
        counter(&pair.dc1[0], "opencluster_home_invalidations_sent_total")
            + counter(&pair.dc1[1], "opencluster_home_invalidations_sent_total")
            >= 1
    );
}

/// With the WAN cut, a home write in dc2 gets an error and is not applied anywhere; a
/// cached read is served at most until its lease lapses, then reads fail too; after the
/// heal everything works again.
#[test]
fn with_the_wan_cut_home_writes_fail_cached_reads_last_one_lease_and_all_heals() {
    let pair = start_home_pair();
    assert_eq!(pair.dc2[0].raw().cmd(&["SET", "acct:a", "before"]), Reply::Simple("OK".into()));
    let reader = &pair.dc2[1];
    assert_eq!(get(reader, "acct:a"), Reply::Bulk(b"before".to_vec()));
    let cached_at = std::time::Instant::now();
    pair.wan.cut();

    let mut c = pair.dc2[0].raw();
    let reply = c.cmd(&["SET", "acct:b", "during"]);
    assert!(reply.is_error() && reply.error().starts_with("TRYAGAIN"), "{reply:?}");
    let reply = c.cmd(&["INCR", "acct:n"]);
    assert!(reply.is_error() && reply.error().starts_with("TRYAGAIN"), "{reply:?}");
    // Read through dc1: nothing was applied.
    assert_eq!(get(&pair.dc1[0], "acct:b"), Reply::NullBulk);
    assert_eq!(get(&pair.dc1[0], "acct:n"), Reply::NullBulk);

    // The cached copy is served only while its 3 s lease lasts, never later.
    let mut served_after = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let r = get(reader, "acct:a");
            if r == Reply::Bulk(b"before".to_vec()) {
                served_after = Some(cached_at.elapsed());
                false
            } else {
                assert!(r.is_error() && r.error().starts_with("TRYAGAIN"), "{r:?}");
                true
            }
        }),
        "the cached value outlived the cut"
    );
    if let Some(after) = served_after {
        assert!(after < Duration::from_secs(4), "served {after:?} after the read, past its 3 s lease");
    }

    pair.wan.heal();
    let mut healed = false;
    assert!(
        wait_until(CONVERGE, || {
            healed = c.cmd(&["SET", "acct:b", "after"]) == Reply::Simple("OK".into());
            healed
        }),
        "home writes still fail after the heal"
    );
    assert_eq!(get(&pair.dc1[1], "acct:b"), Reply::Bulk(b"after".to_vec()));
    assert_eq!(get(reader, "acct:a"), Reply::Bulk(b"before".to_vec()));
}

/// The leases live at a key's primary in its home: when a node joins the home and takes
/// some partitions over (one owner per partition here), the old primary reports the
/// leased keys it no longer answers for, so the other datacenter reads them again from the
/// new primary instead of serving its copy for the rest of a long lease.
#[test]
fn a_home_key_whose_primary_moves_is_invalidated_before_its_lease_ends() {
    let flags =
        ["--keyspaces-home", "acct:=dc1", "--keyspaces-home-lease", "120s", "--cluster-replicas", "1"];
    let pair = start_pair_with(2, Duration::from_millis(5), &flags, &HOME_CONNECTOR);
    let keys: Vec<String> = (0..60).map(|i| format!("acct:m{i}")).collect();
    let mut home = pair.dc1[0].raw();
    for k in &keys {
        assert_eq!(home.cmd(&["SET", k, "old"]), Reply::Simple("OK".into()));
    }
    let reader = &pair.dc2[0];
    let mut c = reader.raw();
    assert!(wait_until(CONVERGE, || !c.cmd(&["GET", "acct:probe"]).is_error()), "dc2 never reached dc1");
    for k in &keys {
        assert_eq!(c.cmd(&["GET", k]), Reply::Bulk(b"old".to_vec()));
    }
    let reads = counter(reader, "opencluster_home_reads_total");
    for k in &keys {
        assert_eq!(c.cmd(&["GET", k]), Reply::Bulk(b"old".to_vec()));
    }
    assert_eq!(counter(reader, "opencluster_home_reads_total"), reads, "every key is cached");

    let tls = pair.tls1.to_str().unwrap().to_string();
    let mut extra = vec!["--datacenter", "dc1", "--tls-dir", &tls];
    extra.extend_from_slice(&flags);
    let third = Node::start(opencluster_tests::cluster::member_opts("dc1-n3", Some(&pair.dc1[0]), &extra));
    opencluster_tests::cluster::wait_placed(&[&pair.dc1[0], &pair.dc1[1], &third], 3);
    for k in &keys {
        assert_eq!(home.cmd(&["SET", k, "new"]), Reply::Simple("OK".into()));
    }
    // Far less than the 120 s lease: reported by the old primaries at the move, or by the
    // primaries that kept their partitions at the write.
    let mut stale = Vec::new();
    let fresh = wait_until(Duration::from_secs(20), || {
        stale = keys.iter().filter(|k| c.cmd(&["GET", k]) != Reply::Bulk(b"new".to_vec())).cloned().collect();
        stale.is_empty()
    });
    assert!(fresh, "dc2 still serves the old value of {} keys, e.g. {:?}", stale.len(), stale.first());
}

#[test]
fn a_home_datacenter_the_connector_does_not_know_is_refused_naming_the_setting() {
    let bin = opencluster_tests::connector::connector_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["--dev", "--data-dir", dir.path().join("d").to_str().unwrap(), "--admin-addr", "127.0.0.1:0"])
        .args(["--gossip-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0", "--wan-addr", "127.0.0.1:0"])
        .args(["--peer", "dc2=127.0.0.1:1", "--keyspaces-home", "acct:=dc9"]);
    let out = opencluster_tests::run_with_deadline(cmd, Duration::from_secs(20)).expect("exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("keyspaces.home") && stderr.contains("dc9"), "{stderr}");
}
