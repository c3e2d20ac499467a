//! Keyspace commands and expiry: DEL, UNLINK, EXISTS, the EXPIRE family with NX/XX/GT/LT,
//! TTL/PTTL, PERSIST, TYPE, KEYS globs, SCAN (every key is visited), DBSIZE, FLUSHDB,
//! and keys whose TTL runs out (gone at once, even before any background purge).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use opencluster_tests::{
    Node, NodeOpts, RawConn, Reply, bulk, err, int, nil, ok, unix_ms, wait_past, wait_until,
};

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

fn conn() -> (Node, RawConn) {
    let node = Node::start_default();
    let c = node.raw();
    (node, c)
}

fn set_keys(c: &mut RawConn, keys: &[&str]) {
    for k in keys {
        assert_eq!(c.cmd(&["SET", k, "v"]), ok());
    }
}

fn sorted_texts(r: &Reply) -> Vec<String> {
    let mut v: Vec<String> = r.array().iter().map(Reply::text).collect();
    v.sort();
    v
}

#[test]
fn del_and_unlink_count_the_keys_they_removed() {
    let (_node, mut c) = conn();
    set_keys(&mut c, &["a", "b", "c", "d"]);
    assert_eq!(c.cmd(&["DEL", "a", "missing", "b", "a"]), int(2), "duplicates and missing keys don't count");
    assert_eq!(c.cmd(&["MGET", "a", "b", "c"]), Reply::Array(vec![nil(), nil(), bulk("v")]));
    assert_eq!(c.cmd(&["UNLINK", "c", "d", "missing"]), int(2));
    assert_eq!(c.cmd(&["DEL", "c"]), int(0));
    assert_eq!(c.cmd(&["DBSIZE"]), int(0));
    assert_eq!(c.cmd(&["UNLINK"]), err("ERR wrong number of arguments for 'unlink' command"));
}

#[test]
fn exists_counts_duplicates() {
    let (_node, mut c) = conn();
    set_keys(&mut c, &["a", "b"]);
    assert_eq!(c.cmd(&["EXISTS", "a"]), int(1));
    assert_eq!(c.cmd(&["EXISTS", "missing"]), int(0));
    assert_eq!(c.cmd(&["EXISTS", "a", "a", "a", "b", "missing"]), int(4));
}

#[test]
fn expire_pexpire_expireat_pexpireat_set_the_ttl() {
    let (_node, mut c) = conn();
    set_keys(&mut c, &["a", "b", "c", "d"]);
    assert_eq!(c.cmd(&["EXPIRE", "a", "100"]), int(1));
    assert_eq!(c.cmd(&["PEXPIRE", "b", "200000"]), int(1));
    assert_eq!(c.cmd(&["EXPIREAT", "c", &(unix_ms() / 1000 + 300).to_string()]), int(1));
    assert_eq!(c.cmd(&["PEXPIREAT", "d", &(unix_ms() + 400_000).to_string()]), int(1));
    let ttl = |c: &mut RawConn, k: &str| c.cmd(&["TTL", k]).int();
    let pttl = |c: &mut RawConn, k: &str| c.cmd(&["PTTL", k]).int();
    assert!((99..=100).contains(&ttl(&mut c, "a")));
    assert!((198_000..=200_000).contains(&pttl(&mut c, "b")));
    assert!((298..=300).contains(&ttl(&mut c, "c")));
    assert!((398_000..=400_000).contains(&pttl(&mut c, "d")));
    assert!((98_000..=100_000).contains(&pttl(&mut c, "a")), "PTTL of a key set with EXPIRE");
    for cmd in ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"] {
        assert_eq!(c.cmd(&[cmd, "missing", "100"]), int(0), "{cmd} on a missing key");
    }
    assert_eq!(c.cmd(&["EXISTS", "missing"]), int(0));
}

#[test]
fn expire_in_the_past_deletes_the_key() {
    let (_node, mut c) = conn();
    set_keys(&mut c, &["a", "b", "c", "d", "e"]);
    assert_eq!(c.cmd(&["EXPIRE", "a", "0"]), int(1));
    assert_eq!(c.cmd(&["EXPIRE", "b", "-5"]), int(1));
    assert_eq!(c.cmd(&["PEXPIRE", "c", "-1"]), int(1));
    assert_eq!(c.cmd(&["EXPIREAT", "d", "1"]), int(1));
    assert_eq!(c.cmd(&["PEXPIREAT", "e", &(unix_ms() - 1000).to_string()]), int(1));
    for k in ["a", "b", "c", "d", "e"] {
        assert_eq!(c.cmd(&["GET", k]), nil(), "{k}");
        assert_eq!(c.cmd(&["TTL", k]), int(-2), "{k}");
    }
    assert_eq!(c.cmd(&["DBSIZE"]), int(0));
}

#[test]
fn expire_nx_xx_gt_lt() {
    let (_node, mut c) = conn();
    set_keys(&mut c, &["k"]);
    // No TTL yet: XX and GT fail (no TTL counts as infinite), NX and LT apply.
    assert_eq!(c.cmd(&["EXPIRE", "k", "100", "XX"]), int(0));
    assert_eq!(c.cmd(&["EXPIRE", "k", "100", "GT"]), int(0));
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1));
    assert_eq!(c.cmd(&["EXPIRE", "k", "100", "NX"]), int(1));
    assert_eq!(c.cmd(&["EXPIRE", "k", "200", "NX"]), int(0), "NX: already has a TTL");
    assert_eq!(c.cmd(&["EXPIRE", "k", "200", "XX"]), int(1));
    assert!((199..=200).contains(&c.cmd(&["TTL", "k"]).int()));
    assert_eq!(c.cmd(&["EXPIRE", "k", "100", "GT"]), int(0), "100 is not greater than 200");
    assert_eq!(c.cmd(&["EXPIRE", "k", "300", "GT"]), int(1));
    assert_eq!(c.cmd(&["EXPIRE", "k", "400", "LT"]), int(0), "400 is not less than 300");
    assert_eq!(c.cmd(&["EXPIRE", "k", "50", "LT"]), int(1));
    assert!((49..=50).contains(&c.cmd(&["TTL", "k"]).int()));
    assert_eq!(c.cmd(&["PEXPIRE", "k", "60000", "GT", "XX"]), int(1), "GT combines with XX");
    assert!((59_000..=60_000).contains(&c.cmd(&["PTTL", "k"]).int()));

    set_keys(&mut c, &["persistent"]);
    assert_eq!(c.cmd(&["EXPIRE", "persistent", "100", "LT"]), int(1), "LT applies to a key without TTL");
    assert_eq!(c.cmd(&["EXPIREAT", "k", &(unix_ms() / 1000 + 1000).to_string(), "LT"]), int(0));
    assert_eq!(c.cmd(&["PEXPIREAT", "k", &(unix_ms() + 1_000_000).to_string(), "GT"]), int(1));
}

#[test]
fn expire_rejects_bad_arguments() {
    let (_node, mut c) = conn();
    set_keys(&mut c, &["k"]);
    assert_eq!(c.cmd(&["EXPIRE", "k", "abc"]), err(NOT_INTEGER));
    assert_eq!(c.cmd(&["EXPIRE", "k", "1.5"]), err(NOT_INTEGER));
    assert_eq!(c.cmd(&["EXPIRE", "k", "10", "FOO"]), err("ERR Unsupported option FOO"));
    assert_eq!(
        c.cmd(&["EXPIRE", "k", "10", "NX", "XX"]),
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        c.cmd(&["EXPIRE", "k", "10", "NX", "GT"]),
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        c.cmd(&["EXPIRE", "k", "10", "GT", "LT"]),
        err("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(
        c.cmd(&["EXPIRE", "k", "9223372036854775807"]),
        err("ERR invalid expire time in 'expire' command")
    );
    assert_eq!(
        c.cmd(&["PEXPIRE", "k", "9223372036854775807"]),
        err("ERR invalid expire time in 'pexpire' command")
    );
    assert_eq!(
        c.cmd(&["EXPIREAT", "k", "9223372036854775807"]),
        err("ERR invalid expire time in 'expireat' command")
    );
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1), "no rejected EXPIRE set a TTL");
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v"));
}

#[test]
fn ttl_pttl_and_persist() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["TTL", "missing"]), int(-2));
    assert_eq!(c.cmd(&["PTTL", "missing"]), int(-2));
    set_keys(&mut c, &["k"]);
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1));
    assert_eq!(c.cmd(&["PTTL", "k"]), int(-1));
    assert_eq!(c.cmd(&["PERSIST", "k"]), int(0), "nothing to remove");
    assert_eq!(c.cmd(&["PERSIST", "missing"]), int(0));
    assert_eq!(c.cmd(&["EXPIRE", "k", "100"]), int(1));
    assert_eq!(c.cmd(&["PERSIST", "k"]), int(1));
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1));
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v"));
}

#[test]
fn type_of_strings_and_missing_keys() {
    let (_node, mut c) = conn();
    set_keys(&mut c, &["k"]);
    assert_eq!(c.cmd(&["TYPE", "k"]), Reply::Simple("string".into()));
    assert_eq!(c.cmd(&["TYPE", "missing"]), Reply::Simple("none".into()));
}

#[test]
fn keys_with_glob_patterns() {
    let (_node, mut c) = conn();
    set_keys(
        &mut c,
        &[
            "hello", "hallo", "hxllo", "hllo", "heeello", "h*llo", "h?llo", "h[x]llo", "a1", "b1", "c1",
            "d1", "x1",
        ],
    );
    let keys = |c: &mut RawConn, p: &str| sorted_texts(&c.cmd(&["KEYS", p]));
    assert_eq!(keys(&mut c, "*").len(), 13);
    assert_eq!(keys(&mut c, "h?llo"), ["h*llo", "h?llo", "hallo", "hello", "hxllo"]);
    assert_eq!(
        keys(&mut c, "h*llo"),
        ["h*llo", "h?llo", "h[x]llo", "hallo", "heeello", "hello", "hllo", "hxllo"]
    );
    assert_eq!(keys(&mut c, "h[ae]llo"), ["hallo", "hello"]);
    assert_eq!(keys(&mut c, "h[^e]llo"), ["h*llo", "h?llo", "hallo", "hxllo"]);
    assert_eq!(keys(&mut c, "[a-c]1"), ["a1", "b1", "c1"]);
    assert_eq!(keys(&mut c, "[^a-c]1"), ["d1", "x1"]);
    assert_eq!(keys(&mut c, "h\\*llo"), ["h*llo"]);
    assert_eq!(keys(&mut c, "h\\?llo"), ["h?llo"]);
    assert_eq!(keys(&mut c, "h\\[x\\]llo"), ["h[x]llo"]);
    assert_eq!(keys(&mut c, "hello"), ["hello"]);
    assert_eq!(keys(&mut c, "nomatch*"), Vec::<String>::new());
    assert_eq!(c.cmd(&["KEYS", "nomatch*"]), Reply::Array(vec![]));
}

/// Iterates SCAN to cursor 0 and returns every key seen (with how many calls it took).
fn scan_all(c: &mut RawConn, extra: &[&str]) -> (Vec<String>, usize) {
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    let mut calls = 0;
    loop {
        let mut args = vec!["SCAN", &cursor];
        args.extend_from_slice(extra);
        let r = c.cmd(&args);
        let parts = r.array();
        assert_eq!(parts.len(), 2, "SCAN answers [cursor, keys]: {r:?}");
        seen.extend(parts[1].array().iter().map(Reply::text));
        cursor = parts[0].text();
        calls += 1;
        assert!(calls < 100_000, "SCAN does not terminate");
        if cursor == "0" {
            return (seen, calls);
        }
    }
}

#[test]
fn scan_visits_every_key() {
    let node = Node::start_default();
    let mut con = node.client();
    let mut expected = BTreeSet::new();
    for chunk in 0..10 {
        let mut mset = redis::cmd("MSET");
        for i in 0..100 {
            let k = format!("key:{}", chunk * 100 + i);
            mset.arg(&k).arg(i);
            expected.insert(k);
        }
        mset.exec(&mut con).unwrap();
    }
    let mut c = node.raw();
    let (seen, calls) = scan_all(&mut c, &["COUNT", "10"]);
    let union: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(union.len(), expected.len(), "SCAN missed or invented keys");
    assert_eq!(union, expected);
    assert!(calls > 10, "COUNT 10 over 1000 keys takes many calls, took {calls}");

    let (seen, _) = scan_all(&mut c, &[]);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected, "SCAN with the default COUNT");
}

#[test]
fn scan_with_match_returns_only_matching_keys() {
    let (_node, mut c) = conn();
    let mut users = BTreeSet::new();
    for i in 0..300 {
        let u = format!("user:{i}");
        assert_eq!(c.cmd(&["SET", &u, "x"]), ok());
        users.insert(u);
        assert_eq!(c.cmd(&["SET", &format!("order:{i}"), "x"]), ok());
    }
    let (seen, _) = scan_all(&mut c, &["MATCH", "user:*", "COUNT", "7"]);
    assert!(seen.iter().all(|k| k.starts_with("user:")), "non-matching keys returned");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), users);
    let (seen, _) = scan_all(&mut c, &["MATCH", "user:1?", "COUNT", "1000"]);
    let want: BTreeSet<String> = (10..20).map(|i| format!("user:{i}")).collect();
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), want);
    let (seen, _) = scan_all(&mut c, &["MATCH", "nothing:*"]);
    assert!(seen.is_empty());
}

#[test]
fn scan_on_an_empty_database_and_bad_arguments() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SCAN", "0"]), Reply::Array(vec![bulk("0"), Reply::Array(vec![])]));
    assert_eq!(c.cmd(&["SCAN", "abc"]), err("ERR invalid cursor"));
    assert_eq!(c.cmd(&["SCAN", "0", "COUNT", "0"]), err("ERR syntax error"));
    assert_eq!(c.cmd(&["SCAN", "0", "COUNT", "abc"]), err(NOT_INTEGER));
    assert_eq!(c.cmd(&["SCAN", "0", "MATCH"]), err("ERR syntax error"));
    assert_eq!(c.cmd(&["SCAN", "0", "FOO", "bar"]), err("ERR syntax error"));
}

#[test]
fn scan_skips_keys_deleted_during_the_scan_and_keeps_the_others() {
    let (_node, mut c) = conn();
    let all: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    for k in &all {
        assert_eq!(c.cmd(&["SET", k, "v"]), ok());
    }
    // Delete the odd keys after the first SCAN call; the even ones must all be seen.
    let first = c.cmd(&["SCAN", "0", "COUNT", "20"]);
    let mut seen: BTreeSet<String> = first.array()[1].array().iter().map(Reply::text).collect();
    for k in all.iter().skip(1).step_by(2) {
        assert_eq!(c.cmd(&["DEL", k]), int(1));
    }
    let mut cursor = first.array()[0].text();
    while cursor != "0" {
        let r = c.cmd(&["SCAN", &cursor, "COUNT", "20"]);
        seen.extend(r.array()[1].array().iter().map(Reply::text));
        cursor = r.array()[0].text();
    }
    for k in all.iter().step_by(2) {
        assert!(seen.contains(k), "SCAN missed {k}, which existed for the whole scan");
    }
}

#[test]
fn dbsize_counts_keys() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["DBSIZE"]), int(0));
    set_keys(&mut c, &["a", "b", "c"]);
    assert_eq!(c.cmd(&["DBSIZE"]), int(3));
    assert_eq!(c.cmd(&["SET", "a", "again"]), ok());
    assert_eq!(c.cmd(&["DBSIZE"]), int(3), "overwriting does not add a key");
    assert_eq!(c.cmd(&["DEL", "a"]), int(1));
    assert_eq!(c.cmd(&["DBSIZE"]), int(2));
}

#[test]
fn flushdb_empties_the_database_when_allowed() {
    let node = Node::start(NodeOpts::new().allow_flushdb());
    let mut c = node.raw();
    set_keys(&mut c, &["a", "b", "c"]);
    assert_eq!(c.cmd(&["EXPIRE", "c", "100"]), int(1));
    assert_eq!(c.cmd(&["FLUSHDB"]), ok());
    assert_eq!(c.cmd(&["DBSIZE"]), int(0));
    assert_eq!(c.cmd(&["GET", "a"]), nil());
    assert_eq!(c.cmd(&["KEYS", "*"]), Reply::Array(vec![]));
    assert_eq!(c.cmd(&["SET", "a", "new"]), ok(), "usable after the flush");
    assert_eq!(c.cmd(&["TTL", "a"]), int(-1));
    assert_eq!(c.cmd(&["DBSIZE"]), int(1));
}

#[test]
fn a_key_with_px_200_disappears() {
    let (_node, mut c) = conn();
    let before_set = Instant::now();
    assert_eq!(c.cmd(&["SET", "short", "v", "PX", "200"]), ok());
    assert_eq!(c.cmd(&["SET", "long", "v", "EX", "1000"]), ok());
    let gone = wait_until(Duration::from_secs(5), || c.cmd(&["GET", "short"]) == nil());
    assert!(gone, "a key with PX 200 is still there after 5 s");
    let elapsed = before_set.elapsed();
    // Expiry times are whole milliseconds of the server's clock, so the key may go up to
    // 1 ms early as measured here.
    assert!(elapsed >= Duration::from_millis(199), "the key vanished after {elapsed:?}, before its TTL");
    assert_eq!(c.cmd(&["EXISTS", "short"]), int(0));
    assert_eq!(c.cmd(&["TTL", "short"]), int(-2));
    assert_eq!(c.cmd(&["GET", "long"]), bulk("v"), "a key with a long TTL stays");
}

#[test]
fn an_expired_key_is_never_returned_even_before_it_is_purged() {
    let (_node, mut c) = conn();
    let keys: Vec<String> = (0..300).map(|i| format!("exp:{i}")).collect();
    for k in &keys {
        assert_eq!(c.cmd(&["SET", k, "v", "PX", "300"]), ok());
    }
    // Every deadline is at most 300 ms after the last acknowledgement.
    let last_acked = Instant::now();
    assert_eq!(c.cmd(&["SET", "keeper", "v"]), ok());
    // The condition is time itself: wait until every TTL has run out, then look at
    // once, before a background purge could have removed them all.
    wait_past(last_acked + Duration::from_millis(310));
    let mut get_args = vec!["MGET".to_string()];
    get_args.extend(keys.iter().cloned());
    let mget = c.cmd(&get_args);
    assert!(mget.array().iter().all(Reply::is_null), "MGET returned expired keys: {mget:?}");
    assert_eq!(c.cmd(&["KEYS", "exp:*"]), Reply::Array(vec![]));
    let mut exists_args = vec!["EXISTS".to_string()];
    exists_args.extend(keys.iter().cloned());
    assert_eq!(c.cmd(&exists_args), int(0));
    for k in keys.iter().take(50) {
        assert_eq!(c.cmd(&["GET", k]), nil(), "{k}");
        assert_eq!(c.cmd(&["TTL", k]), int(-2), "{k}");
        assert_eq!(c.cmd(&["STRLEN", k]), int(0), "{k}");
        assert_eq!(c.cmd(&["INCR", k]), int(1), "INCR on an expired key starts from 0: {k}");
    }
    let (seen, _) = scan_all(&mut c, &["MATCH", "exp:*"]);
    let live: BTreeSet<String> = keys.iter().take(50).cloned().collect();
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), live, "SCAN shows only the re-created keys");
    assert_eq!(c.cmd(&["GET", "keeper"]), bulk("v"));
}
