//! Anti-entropy between the owners of each partition: replicas that diverged converge
//! without hinted handoff, purged tombstones and expired values are never copied back, and
//! a node removes the partitions it lost once their owners hold them.

use std::time::Duration;

use opencluster_tests::cluster::{
    Load, local_key_count, member_opts, missing_through, pause, resume, start_cluster, wait_placed, worker,
};
use opencluster_tests::{Node, bulk, nil, node_only, ok, wait_until};

/// `/v1/ready` of `node`: the status code and the reasons it gives for waiting.
fn readiness(node: &Node) -> (u16, Vec<String>) {
    let (status, body) = node.admin_get("/v1/ready");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let waiting =
        body["waiting_for"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
    (status, waiting)
}

#[test]
fn a_restarted_node_is_ready_only_once_it_holds_what_it_owns() {
    node_only!("clustering is the node's");
    // Two nodes, two replicas: each owns every partition. The throttle makes the copy
    // after the restart take seconds, long enough to be seen.
    let mut nodes = start_cluster(
        2,
        &["--cluster-replicas", "2", "--rebalance-max-bytes-per-sec", "512KiB", "--repair-interval", "1h"],
    );
    let value = "v".repeat(2000);
    let mut n1 = nodes[0].raw();
    for i in 0..1000 {
        assert_eq!(n1.cmd(&["SET", &format!("before{i}"), &value]), ok());
    }
    assert!(
        wait_until(Duration::from_secs(30), || readiness(&nodes[1]).0 == 200),
        "{:?}",
        readiness(&nodes[1])
    );
    assert_eq!(local_key_count(&nodes[1]), 1000);

    let status = nodes[1].sigterm_and_wait();
    assert!(status.success(), "n2 exited with {status}");
    assert!(wait_until(Duration::from_secs(10), || !nodes[0]
        .admin_json("/v1/members")
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "n2" && m["state"] == "alive")));
    for i in 0..1000 {
        assert_eq!(n1.cmd(&["SET", &format!("while-away{i}"), &value]), ok());
    }

    nodes[1].restart();
    let mut reasons_seen = Vec::new();
    let ready = wait_until(Duration::from_secs(60), || {
        let (status, waiting) = readiness(&nodes[1]);
        reasons_seen.extend(waiting);
        status == 200
    });
    let held = local_key_count(&nodes[1]);
    assert!(ready, "n2 not ready after 60s; it said: {reasons_seen:?}");
    assert_eq!(held, 2000, "n2 said it was ready holding {held} of 2000 keys");
    assert_eq!(nodes[1].admin_json("/v1/status")["ready"]["ready"], true);
    assert!(
        reasons_seen.iter().any(|r| r.starts_with("rebalance:")),
        "n2 was never seen copying partitions: {reasons_seen:?}"
    );
    let mut n2 = nodes[1].raw();
    for i in 0..1000 {
        assert_eq!(n2.cmd(&["GET", &format!("while-away{i}")]), bulk(&value));
    }
}

fn store(node: &Node, field: &str) -> u64 {
    node.admin_json("/v1/status")["store"][field].as_u64().unwrap()
}

fn repair_moved(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .map(|n| {
            let w = worker(n, "repair");
            w["keys_fetched"].as_u64().unwrap() + w["keys_pushed"].as_u64().unwrap()
        })
        .sum()
}

#[test]
fn replicas_that_missed_writes_converge_without_hints() {
    node_only!("clustering is the node's");
    // n3 stays a member (long suspicion) but misses writes while paused; no hint can be
    // kept (a 1-byte budget), so only anti-entropy can bring its copy up to date.
    let nodes = start_cluster(
        3,
        &[
            "--gossip-suspicion-timeout",
            "30s",
            "--cluster-request-timeout",
            "500ms",
            "--cluster-max-hint-bytes",
            "1",
            "--repair-interval",
            "2s",
        ],
    );
    // Each node's first copy of the partitions it gained has finished: from here on only
    // anti-entropy copies records between them.
    assert!(wait_until(Duration::from_secs(30), || nodes
        .iter()
        .all(|n| worker(n, "rebalance")["state"] == "idle")));
    pause(&nodes[2]);
    let mut n1 = nodes[0].raw();
    let mut acked = Vec::new();
    for i in 0..60 {
        let key = format!("k{i}");
        // Keys whose primary is n3 get CLUSTERDOWN; the others reach n1 and n2.
        if n1.cmd(&["SET", &key, &format!("v{i}")]) == ok() {
            acked.push(key);
        }
    }
    assert!(!acked.is_empty());
    let dropped: u64 =
        nodes[..2].iter().map(|n| worker(n, "handoff")["records_dropped"].as_u64().unwrap()).sum();
    assert!(dropped > 0, "a copy for n3 was kept as a hint; this test needs none");
    resume(&nodes[2]);
    // n3's own store ends up holding every acknowledged key, like n1's and n2's: by
    // anti-entropy, or, when n3 on waking declared the others down before hearing from
    // them, by copying its partitions again; some copies also land late from its socket
    // buffers. Which path did it varies from run to run; no hint did.
    let converged = wait_until(Duration::from_secs(30), || {
        let keys: Vec<u64> = nodes.iter().map(|n| store(n, "keys")).collect();
        keys.iter().all(|&k| k == keys[0]) && keys[0] >= acked.len() as u64
    });
    let keys: Vec<u64> = nodes.iter().map(|n| store(n, "keys")).collect();
    let workers: Vec<_> = nodes.iter().map(|n| n.admin_json("/v1/status")["workers"].clone()).collect();
    assert!(converged, "stored keys per node: {keys:?}, acknowledged {}; {workers:#?}", acked.len());
    let mut n3 = nodes[2].raw();
    for key in &acked {
        let i = &key[1..];
        assert_eq!(n3.cmd(&["GET", key]), bulk(format!("v{i}")), "{key}");
    }
}

#[test]
fn purged_tombstones_and_expired_values_are_never_copied_back() {
    node_only!("clustering is the node's");
    let nodes = start_cluster(3, &["--store-tombstone-grace", "3s", "--repair-interval", "1s"]);
    let mut n1 = nodes[0].raw();
    let mut n2 = nodes[1].raw();
    for i in 0..100 {
        assert_eq!(n1.cmd(&["SET", &format!("k{i}"), "v"]), ok());
    }
    for i in 0..20 {
        assert_eq!(n1.cmd(&["SET", &format!("e{i}"), "v", "PX", "300"]), ok());
    }
    for i in 0..50 {
        assert_eq!(n2.cmd(&["DEL", &format!("k{i}")]), opencluster_tests::int(1));
    }
    // Every replica has every copy (the third copy of each write lands asynchronously).
    assert!(wait_until(Duration::from_secs(10), || nodes.iter().all(|n| store(n, "tombstones") == 50)));
    let moved_before = repair_moved(&nodes);
    // Each node purges on its own: tombstones after the 3 s grace, values once expired.
    let purged = wait_until(Duration::from_secs(20), || {
        nodes.iter().all(|n| store(n, "tombstones") == 0 && store(n, "keys") == 50)
    });
    assert!(
        purged,
        "tombstones and keys per node: {:?}",
        nodes.iter().map(|n| (store(n, "tombstones"), store(n, "keys"))).collect::<Vec<_>>()
    );
    // Two more full rounds everywhere after the purge: nothing comes back, nothing moves.
    let rounds: Vec<u64> = nodes.iter().map(|n| worker(n, "repair")["rounds"].as_u64().unwrap()).collect();
    assert!(wait_until(Duration::from_secs(20), || nodes.iter().zip(&rounds).all(|(n, &r)| worker(
        n, "repair"
    )["rounds"]
        .as_u64()
        .unwrap()
        >= r + 2)));
    for node in &nodes {
        assert_eq!((store(node, "keys"), store(node, "tombstones")), (50, 0));
        let mut c = node.raw();
        assert_eq!(c.cmd(&["GET", "k0"]), nil());
        assert_eq!(c.cmd(&["GET", "e0"]), nil());
        assert_eq!(c.cmd(&["GET", "k50"]), bulk("v"));
        assert_eq!(c.cmd(&["DBSIZE"]), opencluster_tests::int(50));
    }
    assert_eq!(
        repair_moved(&nodes),
        moved_before,
        "anti-entropy copied records between replicas that agreed"
    );
}

#[test]
fn a_node_removes_the_partitions_it_lost_once_their_owners_hold_them() {
    node_only!("clustering is the node's");
    // Three replicas on three nodes, then a fourth: each old node loses about a quarter of
    // what it held, and must keep it until the new owners confirm they hold it.
    let opts = ["--repair-interval", "1s"];
    let mut nodes = start_cluster(3, &opts);
    let mut n1 = nodes[0].raw();
    let mut acked = opencluster_tests::cluster::Acked::new();
    for i in 0..600 {
        let (key, value) = (format!("before{i}"), format!("v{i}"));
        assert_eq!(n1.cmd(&["SET", &key, &value]), ok());
        acked.insert(key, value);
    }
    assert!(wait_until(Duration::from_secs(20), || nodes.iter().map(local_key_count).sum::<u64>() == 1800));
    // Writes go on through the old nodes while the fourth joins and the others hand over.
    let clients: Vec<_> = nodes.iter().map(|n| n.client_addr()).collect();
    let load = Load::start("during", &clients);
    nodes.push(Node::start(member_opts("n4", Some(&nodes[0]), &opts)));
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 4);
    assert!(wait_until(Duration::from_secs(60), || nodes[..3]
        .iter()
        .all(|n| worker(n, "repair")["partitions_handed_over"].as_u64().unwrap() > 0)));
    let (during, errors) = load.finish();
    assert!(errors.is_empty(), "client errors while a node joined: {errors:?}");
    assert!(!during.is_empty());
    acked.extend(during);
    // Every key on exactly its three owners: nothing lost, no copy left behind.
    let settled = wait_until(Duration::from_secs(60), || {
        nodes.iter().map(local_key_count).sum::<u64>() == 3 * acked.len() as u64
            && nodes[..3].iter().all(|n| worker(n, "repair")["not_owned_partitions_held"] == 0)
    });
    let counts: Vec<u64> = nodes.iter().map(local_key_count).collect();
    let repair: Vec<_> = nodes.iter().map(|n| worker(n, "repair")).collect();
    assert!(settled, "keys per node {counts:?} for {} acknowledged x 3 replicas; {repair:#?}", acked.len());
    let removed: u64 = repair.iter().map(|w| w["keys_removed"].as_u64().unwrap()).sum();
    assert!(removed > 0, "{repair:#?}");
    for (i, node) in nodes.iter().enumerate() {
        let missing = missing_through(node, &acked);
        assert!(missing.is_empty(), "through n{}: {missing:?}", i + 1);
    }
}
