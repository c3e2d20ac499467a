//! The near cache on a real cluster of node processes: a non-owner serves a hot key
//! from its cache, drops it when its owners say it changed, and never serves it past
//! its lease, after a missed invalidation, or once an owner is gone.

use std::time::{Duration, Instant};

use opencluster_tests::cluster::{member_opts, start_cluster, wait_placed};
use opencluster_tests::{Node, Reply, bulk, int, node_only, ok, wait_until};

/// Three nodes, two owners per partition: each key has a node that does not own it.
fn cluster(extra: &[&str]) -> Vec<Node> {
    let mut args = vec!["--cluster-replicas", "2"];
    args.extend_from_slice(extra);
    start_cluster(3, &args)
}

fn owners(node: &Node, key: &str) -> Vec<String> {
    node.admin_json(&format!("/v1/placement?key={key}"))["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect()
}

fn partition(node: &Node, key: &str) -> u64 {
    node.admin_json(&format!("/v1/placement?key={key}"))["partition"].as_u64().unwrap()
}

/// Keys (`prefix` + number) not owned by `name`, as `node` places them.
fn keys_not_owned_by(node: &Node, name: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..500)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| !owners(node, k).contains(&name.to_string()))
        .take(n)
        .collect()
}

fn counter(node: &Node, name: &str) -> u64 {
    node.metric(name).parse().unwrap()
}

/// Leased reads the owners answered, over all of `nodes`.
fn leased_reads_served(nodes: &[&Node]) -> u64 {
    nodes
        .iter()
        .map(|n| {
            let (_, text) = n.admin_get("/metrics");
            text.lines()
                .find(|l| l.starts_with("opencluster_rpc_served_total{kind=\"leased_read\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .map_or(0, |v| v.parse().unwrap())
        })
        .sum()
}

/// Three nodes whose owners number their invalidations but never send them (a test hook).
fn dropping_invalidations(extra: &[&str]) -> Vec<Node> {
    let opts = |name: &str, seed: Option<&Node>| {
        member_opts(name, seed, extra).env("OPENCLUSTER_TEST_DROP_INVALIDATIONS", "1")
    };
    let first = Node::start(opts("n1", None));
    let mut nodes = vec![first];
    for i in 2..=3 {
        let node = Node::start(opts(&format!("n{i}"), Some(&nodes[0])));
        nodes.push(node);
    }
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 3);
    nodes
}

fn get(node: &Node, key: &str) -> Reply {
    node.raw().cmd(&["GET", key])
}

#[test]
fn a_hot_key_is_served_from_the_cache_and_a_write_anywhere_reaches_it() {
    node_only!("the near cache");
    let nodes = cluster(&[]);
    let [n1, n2, n3] = [&nodes[0], &nodes[1], &nodes[2]];
    let key = &keys_not_owned_by(n1, "n3", "hot", 1)[0];
    assert_eq!(n1.raw().cmd(&["SET", key, "v1"]), ok());

    let served = leased_reads_served(&[n1, n2]);
    let hits = counter(n3, "opencluster_cache_hits_total");
    assert_eq!(get(n3, key), bulk("v1"));
    let after_first = leased_reads_served(&[n1, n2]);
    assert!(after_first > served, "the first read asked the owners");
    assert_eq!(get(n3, key), bulk("v1"));
    assert_eq!(counter(n3, "opencluster_cache_hits_total"), hits + 1, "the second read is a hit");
    assert_eq!(leased_reads_served(&[n1, n2]), after_first, "the owners saw no second read");

    // A write through another node: the owners invalidate n3's entry.
    let written = Instant::now();
    assert_eq!(n2.raw().cmd(&["SET", key, "v2"]), ok());
    assert!(
        wait_until(Duration::from_secs(5), || get(n3, key) == bulk("v2")),
        "n3 kept serving the old value: {}",
        n3.admin_json("/v1/status")["cache"]
    );
    let lag = written.elapsed();
    assert!(lag < Duration::from_secs(15), "took {lag:?}: as long as half a lease, not an invalidation");
    assert!(counter(n3, "opencluster_cache_invalidations_received_total") >= 1);

    // A write through the caching node itself is read back at once (read your writes).
    assert_eq!(get(n3, key), bulk("v2"));
    assert_eq!(n3.raw().cmd(&["SET", key, "v3"]), ok());
    assert_eq!(get(n3, key), bulk("v3"));
    // Deletes reach it too, and an absent key is cached as absent.
    assert_eq!(n1.raw().cmd(&["DEL", key]), int(1));
    assert!(wait_until(Duration::from_secs(5), || get(n3, key).is_null()));
    let status = n3.admin_json("/v1/status")["cache"].clone();
    assert!(status["hit_ratio"].as_f64().unwrap() > 0.0, "{status}");
}

#[test]
fn with_invalidations_lost_no_entry_outlives_its_lease() {
    node_only!("the near cache");
    let nodes = dropping_invalidations(&[
        "--cluster-replicas",
        "2",
        "--cache-lease",
        "2s",
        "--cache-invalidation-grace",
        "1s",
    ]);
    let [n1, _, n3] = [&nodes[0], &nodes[1], &nodes[2]];
    let key = &keys_not_owned_by(n1, "n3", "lease", 1)[0];
    n1.raw().cmd(&["SET", key, "old"]);
    let filled = Instant::now();
    assert_eq!(get(n3, key), bulk("old"));
    n1.raw().cmd(&["SET", key, "new"]);
    // Stale while the entry's lease lasts (nothing tells n3), never after it.
    let mut stale_reads = 0;
    loop {
        let reply = get(n3, key);
        if reply == bulk("new") {
            break;
        }
        assert_eq!(reply, bulk("old"));
        stale_reads += 1;
        assert!(filled.elapsed() < Duration::from_secs(2), "served stale past its 2s lease");
    }
    assert!(stale_reads > 0, "with invalidations dropped the cached value must have been served stale");
}

#[test]
fn a_missed_invalidation_drops_the_partition_within_the_grace() {
    node_only!("the near cache");
    // Few partitions, so keys share them; a long lease, so only the gap can drop them.
    let extra = [
        "--cluster-replicas",
        "2",
        "--store-partitions",
        "4",
        "--cache-lease",
        "60s",
        "--cache-invalidation-grace",
        "300ms",
    ];
    let nodes = dropping_invalidations(&extra);
    let [n1, _, n3] = [&nodes[0], &nodes[1], &nodes[2]];
    let candidates = keys_not_owned_by(n1, "n3", "gap", 40);
    let p = partition(n1, &candidates[0]);
    let same: Vec<&String> = candidates.iter().filter(|k| partition(n1, k) == p).take(2).collect();
    assert_eq!(same.len(), 2, "two keys of one partition");
    let (a, b) = (same[0], same[1]);
    n1.raw().cmd(&["SET", a, "old"]);
    assert_eq!(get(n3, a), bulk("old"));
    // The owners number an invalidation of `a` for n3 and (by the hook) lose it.
    n1.raw().cmd(&["SET", a, "new"]);
    assert_eq!(get(n3, a), bulk("old"), "the lost invalidation leaves the entry");
    // A read of another key of the partition brings a grant that announces it: once the
    // grace is over without it, the partition's entries go.
    let missed = counter(n3, "opencluster_cache_invalidations_missed_total");
    let _ = get(n3, b);
    let announced = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || get(n3, a) == bulk("new")));
    assert!(announced.elapsed() < Duration::from_secs(30), "dropped by the gap, not by the 60s lease");
    assert!(counter(n3, "opencluster_cache_invalidations_missed_total") > missed);
}

#[test]
fn the_entries_an_owner_backed_go_when_it_is_killed() {
    node_only!("the near cache");
    let mut nodes = cluster(&[]);
    let key = keys_not_owned_by(&nodes[0], "n3", "owner", 1).remove(0);
    nodes[0].raw().cmd(&["SET", &key, "v"]);
    assert_eq!(get(&nodes[2], &key), bulk("v"));
    let hits = counter(&nodes[2], "opencluster_cache_hits_total");
    assert_eq!(get(&nodes[2], &key), bulk("v"));
    assert_eq!(counter(&nodes[2], "opencluster_cache_hits_total"), hits + 1);
    let dropped = counter(&nodes[2], "opencluster_cache_dropped_partitions_total");
    let owner = owners(&nodes[0], &key)[0].clone();
    let index = nodes.iter().position(|n| n.admin_json("/v1/status")["node"] == owner.as_str()).unwrap();
    nodes[index].kill9();
    let n3 = &nodes[2];
    assert!(
        wait_until(Duration::from_secs(30), || counter(n3, "opencluster_cache_dropped_partitions_total")
            > dropped),
        "n3 never dropped what the killed owner backed"
    );
    // The next read is not a hit.
    let hits = counter(n3, "opencluster_cache_hits_total");
    let _ = get(n3, &key);
    assert_eq!(counter(n3, "opencluster_cache_hits_total"), hits);
}
