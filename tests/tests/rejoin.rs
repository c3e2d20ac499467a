//! A node never acts as a smaller cluster than it knows: restarted alone, or left alone by
//! the others' crashes, it refuses writes instead of acknowledging what only it would
//! hold, and it finds its cluster again by the members it remembers, `join` or not.

use std::time::{Duration, Instant};

use opencluster_tests::cluster::{Acked, missing_through, placed_nodes, start_cluster, wait_placed};
use opencluster_tests::{Node, Reply, node_only, wait_until};

/// Writes `count` distinct keys through `node`; returns those acknowledged and the error
/// replies of the others.
fn write_through(node: &Node, prefix: &str, count: usize) -> (Acked, Vec<String>) {
    let mut conn = node.raw();
    let (mut acked, mut refused) = (Acked::new(), Vec::new());
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        match conn.cmd(&["SET", &key, &key]) {
            Reply::Simple(s) if s == "OK" => {
                acked.insert(key.clone(), key);
            }
            Reply::Error(e) => refused.push(e),
            other => panic!("SET {key}: {other:?}"),
        }
    }
    (acked, refused)
}

#[test]
fn a_restarted_first_node_rejoins_by_itself_and_never_acknowledges_alone() {
    node_only!("clustering is the node's");
    // fsync always: the test kills all three owners within about a second (n1, then n2
    // and n3 some 0.4 s after n1 is back), and `store.fsync = "interval"` keeps no
    // promise for the writes of the last interval when every owner crashes in it
    // (docs/architecture.md, what is guaranteed): those writes were lost in runs with it.
    let mut nodes = start_cluster(3, &["--store-fsync", "always"]);
    let mut acked = Acked::new();
    for (i, node) in nodes.iter().enumerate() {
        let (ok, refused) = write_through(node, &format!("before-n{}", i + 1), 100);
        assert!(refused.is_empty(), "{refused:?}");
        acked.extend(ok);
    }

    // n1 started the cluster: it has no `join`. Killed and restarted at once, before the
    // others even see it down, it must find them again by itself, and whatever it
    // acknowledges meanwhile must reach the real owners.
    nodes[0].kill9();
    nodes[0].restart();
    let restarted = Instant::now();
    let (early, refused) = write_through(&nodes[0], "restarted-n1", 200);
    for e in &refused {
        assert!(e.starts_with("CLUSTERDOWN"), "refused with {e}");
    }
    acked.extend(early);
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 3);
    let rejoined = restarted.elapsed();
    println!("n1 rejoined {rejoined:?} after its restart; {} writes refused meanwhile", refused.len());
    assert!(rejoined < Duration::from_secs(20), "n1 took {rejoined:?} to rejoin");
    assert!(nodes[0].stderr_log().contains("rejoining through the members remembered in data_dir"));

    // Alone: the others crash. n1 still knows a cluster of three and refuses writes and
    // reads with the reason, and says it is not ready.
    nodes[1].kill9();
    nodes[2].kill9();
    assert!(wait_until(Duration::from_secs(30), || placed_nodes(&nodes[0]) == 1));
    let mut conn = nodes[0].raw();
    match conn.cmd(&["SET", "alone", "alone"]) {
        Reply::Error(e) => {
            assert!(e.starts_with("CLUSTERDOWN") && e.contains("reaches 1 of the 3 nodes"), "{e}")
        }
        other => panic!("a lone node acknowledged a write: {other:?}"),
    }
    assert!(matches!(conn.cmd(&["GET", "before-n1-0"]), Reply::Error(e) if e.starts_with("CLUSTERDOWN")));
    let (code, body) = nodes[0].admin_get("/v1/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("reaches 1 of the 3 nodes"), "{body}");
    let status = nodes[0].admin_json("/v1/status")["placement"].clone();
    assert_eq!(
        (status["known_nodes"].as_u64(), status["write_quorum"].as_u64()),
        (Some(3), Some(2)),
        "{status}"
    );

    // The others come back: everything acknowledged is there, through every node.
    nodes[1].restart();
    nodes[2].restart();
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 3);
    assert!(wait_until(Duration::from_secs(30), || nodes[0].admin_get("/v1/ready").0 == 200));
    wait_until(Duration::from_secs(60), || nodes.iter().all(|n| missing_through(n, &acked).is_empty()));
    for (i, node) in nodes.iter().enumerate() {
        let missing = missing_through(node, &acked);
        assert!(missing.is_empty(), "through n{}: {missing:?}", i + 1);
    }
}

/// A node that comes back copies the partitions it owns from the others; until a
/// partition has arrived, reads through it are answered from the copy's sources too, not
/// from its own older record (tested with `cluster.read_quorum = "one"`, where the node
/// would otherwise answer alone).
#[test]
fn a_partition_still_arriving_is_read_from_its_sources_too() {
    node_only!("clustering is the node's");
    // A slow copy (the lowest throttle, 4 MB to copy) keeps most partitions arriving for
    // about a minute.
    let opts = ["--cluster-read-quorum", "one", "--rebalance-max-bytes-per-sec", "64KiB"];
    let nodes = start_cluster(3, &opts);
    // A key in one of the last partitions, which the copy reaches last.
    let key = (0..)
        .map(|i| format!("late-{i}"))
        .find(|k| nodes[0].admin_json(&format!("/v1/placement?key={k}"))["partition"].as_u64() >= Some(1000))
        .unwrap();
    let mut n1 = nodes[0].raw();
    assert_eq!(n1.cmd(&["SET", &key, "old"]), opencluster_tests::ok());
    let filler = "x".repeat(1000);
    for i in 0..4000 {
        assert_eq!(n1.cmd(&["SET", &format!("filler-{i}"), &filler]), opencluster_tests::ok());
    }
    assert!(wait_until(Duration::from_secs(30), || nodes[2].raw().cmd(&["GET", &key])
        == opencluster_tests::bulk("old")));

    // n3 is away long enough to be declared down; the key changes meanwhile.
    opencluster_tests::cluster::pause(&nodes[2]);
    wait_placed(&[&nodes[0], &nodes[1]], 2);
    assert_eq!(n1.cmd(&["SET", &key, "new"]), opencluster_tests::ok());
    opencluster_tests::cluster::resume(&nodes[2]);
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 3);

    let rebalance = opencluster_tests::cluster::worker(&nodes[2], "rebalance");
    assert_eq!(rebalance["state"], "running", "the copy must still be running: {rebalance}");
    assert_eq!(nodes[2].raw().cmd(&["GET", &key]), opencluster_tests::bulk("new"));
}
