//! Lean mode under a real memory limit: a node started inside a cgroup limited to 64 MiB
//! (made by the test, removed after it; needs root, else the test skips itself) sizes
//! itself from the limit, takes a write load of twice the limit and reads it all
//! back: no OOM kill, every acknowledged write is there, and its anonymous RSS (RSS less
//! the file pages it maps: LMDB maps its data file, and those pages are page cache the
//! kernel reclaims) stays within the budget (48 MiB, the limit minus a quarter) with 10%
//! slack, sampled every 20 ms. The peak of the whole RSS is printed beside it.
//!
//! `OPENCLUSTER_TEST_LEAN_MB` sets the data written (default 128 MiB of 1 KiB values: twice the limit).
//!
//! sled is not run here: its memory is not bounded by its cache, and a lean sled node in
//! this test was OOM-killed while the writes were read back (anonymous RSS at the budget,
//! page cache on top; `docs/storage-study.md`). It stays selectable for standard mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opencluster_tests::cgroup::{Cgroup, status_bytes};
use opencluster_tests::{Node, NodeOpts, node_only};

const LIMIT: u64 = 64 << 20;
const BUDGET: u64 = 48 << 20;
const VALUE_BYTES: usize = 1024;
const WRITERS: usize = 4;

fn lean_node_keeps_every_write_within_its_budget(engine: &str) {
    node_only!("lean mode and cgroups are the node's");
    let cgroup = match Cgroup::create(engine, LIMIT) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipping: no cgroup for the test ({why})");
            return;
        }
    };
    let mut node =
        Node::start(NodeOpts::new().args(&["--mode", "lean", "--store-engine", engine]).in_cgroup(&cgroup));
    let status = node.admin_json("/v1/status");
    let memory = &status["memory"];
    assert_eq!(memory["cgroup_limit_bytes"], LIMIT, "{memory}");
    assert_eq!(memory["budget_bytes"], BUDGET, "{memory}");
    assert_eq!(memory["budget_source"], "cgroup", "{memory}");
    assert_eq!(status["store"]["engine"], engine);

    let total_mb: u64 =
        std::env::var("OPENCLUSTER_TEST_LEAN_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    let keys = (total_mb << 20) / VALUE_BYTES as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let (peak, peak_all) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (stop, peak, peak_all, pid) = (stop.clone(), peak.clone(), peak_all.clone(), node.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(anon) = status_bytes(pid, "RssAnon") {
                    peak.fetch_max(anon, Ordering::Relaxed);
                }
                if let Some(rss) = status_bytes(pid, "VmRSS") {
                    peak_all.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let value = |i: u64| format!("{i:016}").repeat(VALUE_BYTES / 16);
    let writers: Vec<_> = (0..WRITERS as u64)
        .map(|w| {
            let mut con = node.client();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = w;
                while i < keys {
                    let batch: Vec<u64> =
                        (0..64).map(|n| i + n * WRITERS as u64).filter(|k| *k < keys).collect();
                    let mut pipe = redis::pipe();
                    for k in &batch {
                        pipe.cmd("SET").arg(format!("lean:{k}")).arg(value(*k));
                    }
                    // Each reply is its write's acknowledgement; a failed write is not counted.
                    let replies: Vec<redis::Value> = pipe.query(&mut con).expect("the node answers");
                    for (k, r) in batch.iter().zip(replies) {
                        if matches!(r, redis::Value::Okay) {
                            acked.push(*k);
                        }
                    }
                    i += 64 * WRITERS as u64;
                }
                acked
            })
        })
        .collect();
    let acked: Vec<u64> = writers.into_iter().flat_map(|w| w.join().expect("writer")).collect();
    assert!(node.is_running(), "the node died under the write load");
    assert_eq!(acked.len() as u64, keys, "writes refused");
    let mut con = node.client();
    for chunk in acked.chunks(256) {
        let names: Vec<String> = chunk.iter().map(|k| format!("lean:{k}")).collect();
        let got: Vec<Option<String>> = redis::cmd("MGET").arg(&names).query(&mut con).unwrap();
        for (k, v) in chunk.iter().zip(got) {
            assert_eq!(v.as_deref(), Some(value(*k).as_str()), "acknowledged lean:{k} lost");
        }
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let status = node.admin_json("/v1/status");
    eprintln!(
        "{engine}: {total_mb} MiB written in {keys} keys under a {} MiB limit; peak anonymous RSS {:.1} MiB of a {} MiB budget (whole RSS {:.1} MiB); \
         cgroup peak (RSS + page cache) {:?} MiB; page cache now {} MiB; pressure events {}",
        LIMIT >> 20,
        peak as f64 / 1048576.0,
        BUDGET >> 20,
        peak_all.load(Ordering::Relaxed) as f64 / 1048576.0,
        cgroup.max_usage().map(|b| b >> 20),
        status["memory"]["page_cache_bytes"].as_u64().unwrap_or(0) >> 20,
        status["memory"]["pressure_events"],
    );
    assert!(node.is_running(), "the node died while the writes were read back");
    assert_eq!(cgroup.oom_kills(), 0, "the OOM killer ran in the node's cgroup");
    assert!(
        peak <= BUDGET + BUDGET / 10,
        "peak anonymous RSS {peak} over the budget {BUDGET} by more than 10%"
    );
    drop(node);
}

#[test]
fn lean_redb_keeps_every_write_within_its_budget() {
    lean_node_keeps_every_write_within_its_budget("redb")
}

#[test]
fn lean_fjall_keeps_every_write_within_its_budget() {
    lean_node_keeps_every_write_within_its_budget("fjall")
}

#[test]
fn lean_lmdb_keeps_every_write_within_its_budget() {
    lean_node_keeps_every_write_within_its_budget("lmdb")
}
