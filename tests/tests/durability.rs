//! Persistence: a SIGTERM restart keeps all data and TTLs; after `kill -9`, every write
//! acknowledged before `store.durable_through_ms` passed it survives (fsync interval),
//! and with `--store-fsync always` every acknowledged write survives. Each write uses
//! a distinct key and each one is checked.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opencluster_tests::{
    Fsync, Node, NodeOpts, bulk, int, nil, node_only, ok, unix_ms, wait_past, wait_until,
};

/// Reads `keys` with MGET in chunks: one Option<String> per key.
fn mget_all(con: &mut redis::Connection, keys: &[String]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let vals: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(con).unwrap();
        out.extend(vals);
    }
    out
}

/// Asserts that every acknowledged (key, value) reads back, naming up to 20 that do not.
fn assert_all_kept(con: &mut redis::Connection, acked: &[(String, String)], after: &str) {
    let keys: Vec<String> = acked.iter().map(|(k, _)| k.clone()).collect();
    let got = mget_all(con, &keys);
    let lost: Vec<&str> = acked
        .iter()
        .zip(&got)
        .filter(|((_, want), got)| got.as_deref() != Some(want.as_str()))
        .map(|((k, _), _)| k.as_str())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost after {after}: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
}

#[test]
fn restart_after_sigterm_keeps_all_data_and_ttls() {
    let mut node = Node::start_default();
    let mut c = node.raw();
    for i in 0..200 {
        assert_eq!(c.cmd(&["SET", &format!("plain:{i}"), &format!("v{i}")]), ok());
    }
    for i in 0..50 {
        assert_eq!(c.cmd(&["SET", &format!("ttl:{i}"), "t", "EX", "1000"]), ok());
    }
    assert_eq!(c.cmd(&["SET", "overwritten", "old"]), ok());
    assert_eq!(c.cmd(&["SET", "overwritten", "new"]), ok());
    assert_eq!(c.cmd(&["SET", "deleted", "x"]), ok());
    assert_eq!(c.cmd(&["DEL", "deleted"]), int(1));
    assert_eq!(c.cmd(&["SET", "persisted", "p", "EX", "1000"]), ok());
    assert_eq!(c.cmd(&["PERSIST", "persisted"]), int(1));
    assert_eq!(c.cmd(&["INCRBY", "counter", "41"]), int(41));
    assert_eq!(c.cmd(&["INCR", "counter"]), int(42));
    assert_eq!(c.cmd(&["APPEND", "appended", "ab"]), int(2));
    assert_eq!(c.cmd(&["APPEND", "appended", "cd"]), int(4));
    assert_eq!(c.cmd(&[&b"SET"[..], b"binary", b"\x00\x01\xff\r\n"]), ok());
    assert_eq!(c.cmd(&["SET", "short", "s", "PX", "1500"]), ok());
    let short_acked = Instant::now(); // its deadline is at most 1500 ms after this
    drop(c);

    let status = node.sigterm_and_wait();
    assert!(status.success(), "SIGTERM exit status {status}\n{}", node.log());
    node.restart();

    let mut c = node.raw();
    for i in 0..200 {
        assert_eq!(c.cmd(&["GET", &format!("plain:{i}")]), bulk(format!("v{i}")), "plain:{i}");
        assert_eq!(c.cmd(&["TTL", &format!("plain:{i}")]), int(-1), "plain:{i} has no TTL");
    }
    for i in 0..50 {
        let k = format!("ttl:{i}");
        assert_eq!(c.cmd(&["GET", &k]), bulk("t"));
        let ttl = c.cmd(&["TTL", &k]).int();
        assert!((970..=1000).contains(&ttl), "{k}: TTL {ttl} after restart, set with EX 1000");
    }
    assert_eq!(c.cmd(&["GET", "overwritten"]), bulk("new"));
    assert_eq!(c.cmd(&["GET", "deleted"]), nil(), "a deleted key stays deleted");
    assert_eq!(c.cmd(&["TTL", "persisted"]), int(-1), "PERSIST survives the restart");
    assert_eq!(c.cmd(&["GET", "counter"]), bulk("42"));
    assert_eq!(c.cmd(&["GET", "appended"]), bulk("abcd"));
    assert_eq!(c.cmd(&["GET", "binary"]), bulk(b"\x00\x01\xff\r\n"));
    // The short TTL kept running across the restart (an absolute deadline, not reset).
    wait_past(short_acked + Duration::from_millis(1510));
    assert_eq!(c.cmd(&["GET", "short"]), nil(), "a key whose TTL ran out during/after the restart");
    // 200 plain + 50 ttl + overwritten, persisted, counter, appended, binary.
    // DBSIZE may count an expired key until it is purged (Redis does too, until the key
    // is touched), so poll: the expired key must be purged in the background.
    let purged = wait_until(Duration::from_secs(10), || c.cmd(&["DBSIZE"]) == int(255));
    assert!(purged, "DBSIZE is {:?}, not 255, 10 s after the short key expired", c.cmd(&["DBSIZE"]));
    assert_eq!(c.cmd(&["KEYS", "plain:*"]).array().len(), 200);

    // A second restart in a row changes nothing.
    node.restart();
    let mut c = node.raw();
    assert_eq!(c.cmd(&["KEYS", "*"]).array().len(), 255, "keys after the second restart");
    assert_eq!(c.cmd(&["GET", "plain:199"]), bulk("v199"));
}

/// A SIGTERM while writers keep the write buffer full: the stop lands in the middle of an
/// applier pass, and the records it had not reached yet come back from the log. (A stopped
/// pass used to cut the log as if it had finished, and lost them.)
#[test]
fn sigterm_under_a_write_load_keeps_every_acknowledged_write() {
    node_only!("the write buffer is the node's");
    let mut node = Node::start(NodeOpts::new().args(&[
        "--store-write-buffer-bytes",
        "32MiB",
        "--store-wal-segment-bytes",
        "1MiB",
    ]));
    const WRITERS: usize = 2;
    const PIPELINE: usize = 500;
    let acked: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let applied_before = applied_total(&node);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (node, acked) = (&node, &acked);
            s.spawn(move || {
                let mut con = node.client();
                for batch in 0.. {
                    let keys: Vec<String> = (0..PIPELINE).map(|i| format!("w{w}:b{batch}:k{i}")).collect();
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.cmd("SET").arg(k).arg(k).ignore();
                    }
                    if pipe.query::<()>(&mut con).is_err() {
                        return; // the node stopped: this batch was not acknowledged
                    }
                    acked.lock().unwrap().extend(keys);
                }
            });
        }
        // Several buffers written and applied: the applier runs pass after pass now.
        let busy = wait_until(Duration::from_secs(120), || applied_total(&node) >= applied_before + 100_000);
        assert!(busy, "the applier applied {} records in 120 s", applied_total(&node) - applied_before);
        node.send_sigterm();
    });
    let status = node.wait_for_exit();
    assert!(status.success(), "SIGTERM exit status {status}\n{}", node.log());
    let acked = acked.into_inner().unwrap();
    node.restart();
    let mut con = node.client();
    let acked: Vec<(String, String)> = acked.into_iter().map(|k| (k.clone(), k)).collect();
    assert_all_kept(&mut con, &acked, "a SIGTERM under load");
}

fn applied_total(node: &Node) -> u64 {
    node.admin_json("/v1/status")["store"]["write_buffer"]["applied_total"].as_u64().unwrap_or(0)
}

#[test]
fn kill9_with_fsync_always_keeps_every_acknowledged_write() {
    let mut node = Node::start(NodeOpts::new().fsync(Fsync::Always));
    const WRITERS: usize = 4;
    let acked: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let count = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (node, acked, count) = (&node, &acked, &count);
            s.spawn(move || {
                let mut con = node.client();
                for i in 0.. {
                    let key = format!("w{w}:k{i}");
                    let val = format!("value-{w}-{i}");
                    let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(&val).query(&mut con);
                    if r.is_err() {
                        return; // the server was killed: this write was not acknowledged
                    }
                    acked.lock().unwrap().push((key, val));
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let enough = wait_until(Duration::from_secs(60), || count.load(Ordering::SeqCst) >= 400);
        assert!(enough, "only {} writes acknowledged in 60 s", count.load(Ordering::SeqCst));
        // Killed while the writers are still writing.
        node.send_sigkill();
    });
    node.kill9(); // reap
    let acked = acked.into_inner().unwrap();
    node.restart();
    let mut con = node.client();
    assert_all_kept(&mut con, &acked, "kill -9");
}

fn durable_through_ms(node: &Node) -> u64 {
    let status = node.admin_json("/v1/status");
    status["store"]["durable_through_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("/v1/status has no store.durable_through_ms: {status}"))
}

#[test]
fn kill9_with_fsync_interval_keeps_writes_acknowledged_before_durable_through() {
    node_only!("store.durable_through_ms is reported by the node's /v1/status");
    let mut node = Node::start(NodeOpts::new().fsync(Fsync::Interval(Duration::from_millis(100))));
    let mut con = node.client();
    // (key, value, unix ms measured after the acknowledgement arrived)
    let mut writes: Vec<(String, String, u64)> = Vec::new();
    fn write(con: &mut redis::Connection, writes: &mut Vec<(String, String, u64)>, i: usize) {
        let (key, val) = (format!("k{i}"), format!("v{i}"));
        let () = redis::cmd("SET").arg(&key).arg(&val).query(con).unwrap();
        writes.push((key, val, unix_ms()));
    }
    for i in 0..300 {
        write(&mut con, &mut writes, i);
    }
    let last_ack = writes.last().unwrap().2;
    let first_d = durable_through_ms(&node);
    assert!(first_d <= unix_ms() + 1000, "durable_through_ms {first_d} is in the future");
    let caught_up = wait_until(Duration::from_secs(10), || durable_through_ms(&node) > last_ack);
    assert!(
        caught_up,
        "durable_through_ms never passed the last write ({last_ack}) with a 100 ms fsync interval"
    );
    for i in 300..600 {
        write(&mut con, &mut writes, i);
    }
    let d = durable_through_ms(&node);
    assert!(d >= first_d, "durable_through_ms went backwards: {first_d} then {d}");
    node.kill9();
    node.restart();

    let mut con = node.client();
    let keys: Vec<String> = writes.iter().map(|(k, _, _)| k.clone()).collect();
    let got = mget_all(&mut con, &keys);
    let mut durable = 0;
    for ((key, want, acked_at), got) in writes.iter().zip(&got) {
        if *acked_at < d {
            durable += 1;
            assert_eq!(
                got.as_deref(),
                Some(want.as_str()),
                "{key} was acknowledged at {acked_at}, before durable_through_ms {d}, and is lost"
            );
        } else if let Some(v) = got {
            assert_eq!(v, want, "{key} survived with a wrong value");
        }
    }
    assert!(durable >= 300, "only {durable} writes were before durable_through_ms");
}
