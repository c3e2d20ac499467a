//! The nemesis's checker, run once every node is up and uncut again.
//!
//! 1. Every acknowledged key must read back (`GET` through the cluster read path, in
//!    `MGET` batches) with its value through every node. Missing keys are retried until
//!    they are all found or the deadline (counted from the end of the first pass)
//!    passes: replica copies and repairs may still be on their way.
//! 2. Every acknowledged key is looked up in its owners' own stores, without the read
//!    path: `KEYS` through a node answers from its own store for the partitions it owns
//!    (see `Cluster::keys`), and `/v1/placement?key=` names a key's owners. A key that no
//!    owner holds is gone from where the cluster looks for it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::node::Node;
use crate::resp::{RawConn, Reply};

/// Connections reading through each node at once: the node answers an `MGET` key by
/// key, each a quorum read that waits on peers, so one connection leaves it mostly idle.
const READERS_PER_NODE: usize = 4;
/// Keys per `MGET`.
const BATCH: usize = 200;
/// How long a checker's request may take (`KEYS` walks every partition).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads looking up keys' owners on the admin API.
const LOOKUP_THREADS: usize = 4;
/// Wait between two rounds of reading the keys still missing.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What reading every acknowledged key through every node found.
pub struct ReadCheck {
    /// Keys still not readable with their value through some node at the deadline: for
    /// each, what each such node answered last.
    pub lost: BTreeMap<String, Vec<(usize, String)>>,
    /// How long the first pass over every key through every node took.
    pub first_pass: Duration,
    /// Keys not readable through some node after the first pass (found later or lost).
    pub missing_after_first_pass: usize,
    /// How long until everything was found (or the deadline).
    pub took: Duration,
    /// Passes over the keys still missing (the first pass included).
    pub rounds: u32,
}

/// Reads every key of `keys` (whose value is the key) through every node, over several
/// connections each, then retries the missing ones for up to `retry_for`.
pub fn read_through_all(nodes: &[Node], keys: &BTreeSet<String>, retry_for: Duration) -> ReadCheck {
    let started = Instant::now();
    // Per node: missing key -> what it answered.
    let mut missing: Vec<BTreeMap<String, String>> = nodes
        .iter()
        .map(|_| keys.iter().map(|k| (k.clone(), "not read yet".to_string())).collect())
        .collect();
    let mut rounds = 0;
    let mut first_pass = None;
    let mut missing_after_first_pass = 0;
    loop {
        rounds += 1;
        std::thread::scope(|s| {
            let mut readers = Vec::new();
            for (i, node) in nodes.iter().enumerate() {
                for mut part in split(std::mem::take(&mut missing[i]), READERS_PER_NODE) {
                    readers.push((
                        i,
                        s.spawn(move || {
                            read_round(node, &mut part);
                            part
                        }),
                    ));
                }
            }
            for (i, reader) in readers {
                missing[i].extend(reader.join().expect("reader thread"));
            }
        });
        // The retries' deadline counts from the end of the first pass, however long
        // reading every key through every node took.
        let first = *first_pass.get_or_insert_with(|| {
            missing_after_first_pass = missing.iter().flat_map(BTreeMap::keys).collect::<BTreeSet<_>>().len();
            started.elapsed()
        });
        if missing.iter().all(BTreeMap::is_empty) || started.elapsed() >= first + retry_for {
            break;
        }
        std::thread::sleep(RETRY_EVERY);
    }
    let mut lost: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for (i, missing) in missing.into_iter().enumerate() {
        for (key, got) in missing {
            lost.entry(key).or_default().push((i, got));
        }
    }
    ReadCheck {
        lost,
        first_pass: first_pass.unwrap_or_default(),
        missing_after_first_pass,
        took: started.elapsed(),
        rounds,
    }
}

/// `map` dealt into `n` maps.
fn split(map: BTreeMap<String, String>, n: usize) -> Vec<BTreeMap<String, String>> {
    let mut parts: Vec<BTreeMap<String, String>> = (0..n).map(|_| BTreeMap::new()).collect();
    for (i, (k, v)) in map.into_iter().enumerate() {
        parts[i % n].insert(k, v);
    }
    parts
}

/// One pass over `missing` through `node`: found keys leave the map, the others keep
/// what was answered.
fn read_round(node: &Node, missing: &mut BTreeMap<String, String>) {
    let mut conn = match RawConn::connect_with_timeout(node.client_addr(), CHECK_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            missing.values_mut().for_each(|got| *got = format!("connect: {e}"));
            return;
        }
    };
    let keys: Vec<String> = missing.keys().cloned().collect();
    for chunk in keys.chunks(BATCH) {
        let args: Vec<&str> = std::iter::once("MGET").chain(chunk.iter().map(String::as_str)).collect();
        match conn.try_cmd(&args) {
            Ok(Reply::Array(values)) if values.len() == chunk.len() => {
                for (key, value) in chunk.iter().zip(values) {
                    match value {
                        Reply::Bulk(v) if v == key.as_bytes() => {
                            missing.remove(key);
                        }
                        other => {
                            missing.insert(key.clone(), format!("{other:?}"));
                        }
                    }
                }
            }
            Ok(other) => chunk.iter().for_each(|k| {
                missing.insert(k.clone(), format!("MGET answered {other:?}"));
            }),
            Err(e) => {
                chunk.iter().for_each(|k| {
                    missing.insert(k.clone(), format!("MGET failed: {e}"));
                });
                return;
            }
        }
    }
}

/// What looking into the owners' own stores found.
pub struct StoreCheck {
    /// Keys that none of their owners holds: the key and its owners' names.
    pub unheld: Vec<(String, Vec<String>)>,
    /// Keys held by some but not all of their owners.
    pub under_replicated: usize,
    /// Owner lists that the owner itself disagreed with (views that differ).
    pub disputed: Vec<String>,
}

/// Looks up every key of `keys` (named `<prefix>-...`) in its owners' own stores.
pub fn owners_stores(nodes: &[Node], names: &[String], prefix: &str, keys: &BTreeSet<String>) -> StoreCheck {
    let pattern = format!("{prefix}-*");
    let held: Vec<BTreeSet<String>> = std::thread::scope(|s| {
        let threads: Vec<_> = nodes.iter().map(|n| s.spawn(|| keys_of(n, &pattern))).collect();
        threads.into_iter().map(|t| t.join().expect("KEYS thread")).collect()
    });
    // One placement lookup per key: spread over a few threads.
    let keys: Vec<&String> = keys.iter().collect();
    let owners: Vec<Vec<String>> = std::thread::scope(|s| {
        let threads: Vec<_> = keys
            .chunks(keys.len().div_ceil(LOOKUP_THREADS).max(1))
            .map(|chunk| s.spawn(|| chunk.iter().map(|k| owners_of(&nodes[0], k)).collect::<Vec<_>>()))
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("placement thread")).collect()
    });
    let index = |name: &str| names.iter().position(|n| n == name);
    let mut check = StoreCheck { unheld: Vec::new(), under_replicated: 0, disputed: Vec::new() };
    for (key, owners) in keys.into_iter().zip(owners) {
        let holding = owners.iter().filter(|o| index(o).is_some_and(|i| held[i].contains(key))).count();
        if holding == owners.len() {
            continue;
        }
        if holding > 0 {
            check.under_replicated += 1;
            continue;
        }
        // KEYS answered from an owner's store only if that owner agrees it owns the key.
        for (o, name) in owners.iter().enumerate() {
            let Some(i) = index(name) else { continue };
            let own_view = owners_of(&nodes[i], key);
            if own_view != owners {
                check
                    .disputed
                    .push(format!("{key}: n1 says owners {owners:?}, owner #{o} {name} says {own_view:?}"));
            }
        }
        check.unheld.push((key.clone(), owners));
    }
    check
}

/// The keys matching `pattern` that `KEYS` lists through `node`.
fn keys_of(node: &Node, pattern: &str) -> BTreeSet<String> {
    let mut conn = RawConn::connect_with_timeout(node.client_addr(), CHECK_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", node.client_addr()));
    match conn.try_cmd(&["KEYS", pattern]) {
        Ok(Reply::Array(keys)) => keys.iter().map(Reply::text).collect(),
        other => panic!("KEYS {pattern} through {}: {other:?}", node.client_addr()),
    }
}

/// A key's owners, primary first, by name, as `node` places it.
fn owners_of(node: &Node, key: &str) -> Vec<String> {
    let placement = node.admin_json(&format!("/v1/placement?key={key}"));
    placement["owners"]
        .as_array()
        .unwrap_or_else(|| panic!("/v1/placement?key={key}: {placement}"))
        .iter()
        .map(|o| o["name"].as_str().unwrap_or("?").to_string())
        .collect()
}
