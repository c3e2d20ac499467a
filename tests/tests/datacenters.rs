//! Two datacenters, each with its nodes and one connector, the WAN between the connectors
//! through a relay that adds delay and loss and can cut the link: writes in each appear in
//! the other, a cut heals into one state, a connector killed mid-stream loses nothing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opencluster_tests::cluster::{Acked, missing_through};
use opencluster_tests::connector::{Connector, free_udp_port, start_datacenter};
use opencluster_tests::pki::customer_keys;
use opencluster_tests::relay::{Relay, Wan};
use opencluster_tests::{Node, Reply, wait_until};

/// How long replication may take to deliver everything once the link is up.
const CONVERGE: Duration = Duration::from_secs(60);

struct Pair {
    _keys: tempfile::TempDir,
    dc1: Vec<Node>,
    dc2: Vec<Node>,
    c1: Connector,
    c2: Connector,
    wan: Arc<Wan>,
    _relays: [Relay; 2],
}

/// dc1 and dc2 of cluster "acme" with `nodes` nodes each (started with `extra` flags) and
/// one connector each, linked through relays with `delay` one way.
fn start_pair(nodes: usize, delay: Duration, extra: &[&str]) -> Pair {
    let keys = tempfile::tempdir().unwrap();
    let tls1 = customer_keys(keys.path(), "dc1");
    let tls2 = customer_keys(keys.path(), "dc2");
    let dc1 = start_datacenter("dc1", &tls1, nodes, extra);
    let dc2 = start_datacenter("dc2", &tls2, nodes, extra);
    let wan = Wan::new();
    wan.set_delay(delay);
    let (w1, w2) = (free_udp_port(), free_udp_port());
    let w1 = std::net::SocketAddr::from(([127, 0, 0, 1], w1));
    let w2 = std::net::SocketAddr::from(([127, 0, 0, 1], w2));
    let to_c1 = Relay::start(w1, wan.clone());
    let to_c2 = Relay::start(w2, wan.clone());
    let c1 = Connector::start("dc1", &tls1, &dc1[0], w1, &[format!("dc2={}", to_c2.addr())]);
    let c2 = Connector::start("dc2", &tls2, &dc2[0], w2, &[format!("dc1={}", to_c1.addr())]);
    Pair { _keys: keys, dc1, dc2, c1, c2, wan, _relays: [to_c1, to_c2] }
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
    let link = pair.c1.link("dc2");
    assert_eq!(link["link"], "up", "{link}");
    assert!(link["shipped_records"].as_u64().unwrap() >= 300, "{link}");
    assert!(link["applied_records"].as_u64().unwrap() >= 300, "{link}");
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

#[test]
fn a_connector_killed_mid_stream_and_restarted_loses_nothing() {
    let mut pair = start_pair(2, Duration::from_millis(10), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // A steady stream of writes in dc1 while its connector is killed and restarted.
    let writer = {
        let stop = stop.clone();
        let addrs: Vec<_> = pair.dc1.iter().map(|n| n.client_addr()).collect();
        std::thread::spawn(move || {
            let mut acked = Acked::new();
            let mut conns: Vec<_> =
                addrs.iter().map(|a| opencluster_tests::RawConn::connect(*a).expect("connect")).collect();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("k-{i}"), format!("v-{i}"));
                let n = conns.len();
                if matches!(conns[i % n].cmd(&["SET", &key, &value]), Reply::Simple(s) if s == "OK") {
                    acked.insert(key, value);
                }
                i += 1;
            }
            acked
        })
    };
    // Kill it once it has shipped some of the stream.
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["shipped_records"].as_u64().unwrap_or(0) >= 200));
    pair.c1.kill9();
    let dead_for = std::time::Instant::now() + Duration::from_millis(1500);
    opencluster_tests::wait_past(dead_for);
    pair.c1.restart();
    assert!(wait_until(CONVERGE, || pair.c1.link("dc2")["shipped_records"].as_u64().unwrap_or(0) >= 100));
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().unwrap();
    assert!(acked.len() >= 300, "only {} writes acknowledged", acked.len());
    assert_arrives(&pair.dc2, &acked, "dc1's stream in dc2 after a connector kill -9", &pair);
    cursors_exist(&pair.c1.data_dir());
}

fn cursors_exist(dir: &Path) {
    assert!(dir.join("cursors-dc2.json").is_file(), "no cursor file in {}", dir.display());
}

#[test]
fn a_node_killed_in_the_sending_datacenter_while_it_ships_loses_nothing() {
    // Three nodes in dc1, so writes keep their quorum (2 of 3) while one is down; a lossy WAN.
    let mut pair = start_pair(3, Duration::from_millis(5), &[]);
    pair.wan.set_loss(0.02);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        // Through the two nodes that stay up.
        let addrs: Vec<_> = pair.dc1[..2].iter().map(|n| n.client_addr()).collect();
        std::thread::spawn(move || {
            let mut acked = Acked::new();
            let mut conns: Vec<_> =
                addrs.iter().map(|a| opencluster_tests::RawConn::connect(*a).expect("connect")).collect();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("n-{i}"), format!("v-{i}"));
                let n = conns.len();
                if matches!(conns[i % n].cmd(&["SET", &key, &value]), Reply::Simple(s) if s == "OK") {
                    acked.insert(key, value);
                }
                i += 1;
            }
            acked
        })
    };
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
