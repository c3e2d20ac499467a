//! String commands: GET/SET and every SET option, SETNX/SETEX/PSETEX, GETSET, GETDEL,
//! GETEX, MGET/MSET/MSETNX, the INCR family, INCRBYFLOAT, APPEND, STRLEN, GETRANGE and
//! SETRANGE, with their edge cases and the exact errors Redis 7 gives.

use opencluster_tests::{Node, RawConn, Reply, bulk, err, int, nil, ok, unix_ms};

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";
const NOT_FLOAT: &str = "ERR value is not a valid float";

fn conn() -> (Node, RawConn) {
    let node = Node::start_default();
    let c = node.raw();
    (node, c)
}

/// TTL in seconds, asserting it lies in `lo..=hi`.
fn assert_ttl(c: &mut RawConn, key: &str, lo: i64, hi: i64) {
    let ttl = c.cmd(&["TTL", key]).int();
    assert!(lo <= ttl && ttl <= hi, "TTL {key} = {ttl}, expected {lo}..={hi}");
}

fn assert_pttl(c: &mut RawConn, key: &str, lo: i64, hi: i64) {
    let pttl = c.cmd(&["PTTL", key]).int();
    assert!(lo <= pttl && pttl <= hi, "PTTL {key} = {pttl}, expected {lo}..={hi}");
}

#[test]
fn get_and_set_round_trip_binary_values() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["GET", "k"]), nil());
    assert_eq!(c.cmd(&["SET", "k", "v1"]), ok());
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v1"));
    assert_eq!(c.cmd(&["SET", "k", "v2"]), ok(), "SET overwrites");
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v2"));
    let binary: Vec<u8> = (0..=255u8).collect();
    assert_eq!(c.cmd(&[&b"SET"[..], b"bin\x00key\r\n", &binary]), ok());
    assert_eq!(c.cmd(&[&b"GET"[..], b"bin\x00key\r\n"]), bulk(&binary));
    assert_eq!(c.cmd(&["SET", "", "empty key"]), ok());
    assert_eq!(c.cmd(&["GET", ""]), bulk("empty key"));
    assert_eq!(c.cmd(&["SET", "e", ""]), ok());
    assert_eq!(c.cmd(&["GET", "e"]), bulk(""));
    assert_eq!(c.cmd(&["EXISTS", "e"]), int(1), "an empty value is still a key");
}

#[test]
fn set_with_ex_px_exat_pxat() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "ex", "v", "EX", "100"]), ok());
    assert_ttl(&mut c, "ex", 99, 100);
    assert_eq!(c.cmd(&["SET", "px", "v", "PX", "100000"]), ok());
    assert_pttl(&mut c, "px", 98_000, 100_000);
    let now_s = unix_ms() / 1000;
    assert_eq!(c.cmd(&["SET", "exat", "v", "EXAT", &(now_s + 100).to_string()]), ok());
    assert_ttl(&mut c, "exat", 98, 100);
    assert_eq!(c.cmd(&["SET", "pxat", "v", "PXAT", &(unix_ms() + 100_000).to_string()]), ok());
    assert_pttl(&mut c, "pxat", 98_000, 100_000);
    assert_eq!(c.cmd(&["set", "lower", "v", "ex", "50"]), ok(), "options are case-insensitive");
    assert_ttl(&mut c, "lower", 49, 50);
    for k in ["ex", "px", "exat", "pxat"] {
        assert_eq!(c.cmd(&["GET", k]), bulk("v"));
    }
}

#[test]
fn set_with_exat_or_pxat_in_the_past_deletes_the_key() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "k", "old"]), ok());
    assert_eq!(c.cmd(&["SET", "k", "v", "PXAT", &(unix_ms() - 10_000).to_string()]), ok());
    assert_eq!(c.cmd(&["GET", "k"]), nil());
    assert_eq!(c.cmd(&["EXISTS", "k"]), int(0));
    assert_eq!(c.cmd(&["SET", "k2", "v", "EXAT", "1"]), ok());
    assert_eq!(c.cmd(&["GET", "k2"]), nil());
}

#[test]
fn plain_set_clears_the_ttl_and_keepttl_keeps_it() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "k", "v", "EX", "100"]), ok());
    assert_eq!(c.cmd(&["SET", "k", "v2", "KEEPTTL"]), ok());
    assert_ttl(&mut c, "k", 99, 100);
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v2"));
    assert_eq!(c.cmd(&["SET", "k", "v3"]), ok());
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1), "SET without KEEPTTL drops the TTL");
    assert_eq!(c.cmd(&["SET", "fresh", "v", "KEEPTTL"]), ok());
    assert_eq!(c.cmd(&["TTL", "fresh"]), int(-1));
}

#[test]
fn set_nx_and_xx() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "k", "v1", "XX"]), nil(), "XX on a missing key does nothing");
    assert_eq!(c.cmd(&["GET", "k"]), nil());
    assert_eq!(c.cmd(&["SET", "k", "v1", "NX"]), ok());
    assert_eq!(c.cmd(&["SET", "k", "v2", "NX"]), nil(), "NX on an existing key does nothing");
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v1"));
    assert_eq!(c.cmd(&["SET", "k", "v3", "XX", "EX", "100"]), ok());
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v3"));
    assert_ttl(&mut c, "k", 99, 100);
}

#[test]
fn set_get_returns_the_old_value() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "k", "v1", "GET"]), nil());
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v1"), "SET GET on a missing key still sets");
    assert_eq!(c.cmd(&["SET", "k", "v2", "GET"]), bulk("v1"));
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v2"));
    // Since Redis 7.0, GET combines with NX and XX.
    assert_eq!(c.cmd(&["SET", "k", "v3", "NX", "GET"]), bulk("v2"));
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v2"), "NX GET does not overwrite");
    assert_eq!(c.cmd(&["SET", "missing", "v", "XX", "GET"]), nil());
    assert_eq!(c.cmd(&["EXISTS", "missing"]), int(0));
    assert_eq!(c.cmd(&["SET", "k", "v4", "XX", "GET", "PX", "100000"]), bulk("v2"));
    assert_pttl(&mut c, "k", 98_000, 100_000);
}

#[test]
fn set_rejects_invalid_option_combinations() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "k", "orig"]), ok());
    let syntax_errors: &[&[&str]] = &[
        &["SET", "k", "v", "NX", "XX"],
        &["SET", "k", "v", "EX", "10", "PX", "100"],
        &["SET", "k", "v", "EX", "10", "EXAT", "99999999999"],
        &["SET", "k", "v", "PX", "10", "PXAT", "99999999999"],
        &["SET", "k", "v", "EX", "10", "KEEPTTL"],
        &["SET", "k", "v", "KEEPTTL", "PX", "100"],
        &["SET", "k", "v", "EX"],
        &["SET", "k", "v", "BOGUS"],
        &["SET", "k", "v", "NX", "NX", "XX"],
        &["SET", "k", "v", "GET", "10"],
    ];
    for args in syntax_errors {
        assert_eq!(c.cmd(args), err(SYNTAX), "{args:?}");
    }
    let invalid_expire: &[&[&str]] = &[
        &["SET", "k", "v", "EX", "0"],
        &["SET", "k", "v", "EX", "-1"],
        &["SET", "k", "v", "PX", "0"],
        &["SET", "k", "v", "PX", "-100"],
        &["SET", "k", "v", "EXAT", "0"],
        &["SET", "k", "v", "PXAT", "0"],
        &["SET", "k", "v", "EX", "9999999999999999"],
    ];
    for args in invalid_expire {
        assert_eq!(c.cmd(args), err("ERR invalid expire time in 'set' command"), "{args:?}");
    }
    for args in [["SET", "k", "v", "EX", "abc"], ["SET", "k", "v", "PX", "1.5"]] {
        assert_eq!(c.cmd(&args), err(NOT_INTEGER), "{args:?}");
    }
    assert_eq!(c.cmd(&["GET", "k"]), bulk("orig"), "no rejected SET changed the value");
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1));
}

#[test]
fn setnx_setex_psetex() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SETNX", "k", "1"]), int(1));
    assert_eq!(c.cmd(&["SETNX", "k", "2"]), int(0));
    assert_eq!(c.cmd(&["GET", "k"]), bulk("1"));

    assert_eq!(c.cmd(&["SETEX", "s", "100", "v"]), ok());
    assert_eq!(c.cmd(&["GET", "s"]), bulk("v"));
    assert_ttl(&mut c, "s", 99, 100);
    assert_eq!(c.cmd(&["SETEX", "s", "0", "v"]), err("ERR invalid expire time in 'setex' command"));
    assert_eq!(c.cmd(&["SETEX", "s", "-1", "v"]), err("ERR invalid expire time in 'setex' command"));
    assert_eq!(c.cmd(&["SETEX", "s", "abc", "v"]), err(NOT_INTEGER));

    assert_eq!(c.cmd(&["PSETEX", "p", "100000", "v"]), ok());
    assert_eq!(c.cmd(&["GET", "p"]), bulk("v"));
    assert_pttl(&mut c, "p", 98_000, 100_000);
    assert_eq!(c.cmd(&["PSETEX", "p", "0", "v"]), err("ERR invalid expire time in 'psetex' command"));
    assert_eq!(c.cmd(&["SETEX", "s"]), err("ERR wrong number of arguments for 'setex' command"));
}

#[test]
fn getset_and_getdel() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["GETSET", "k", "v1"]), nil());
    assert_eq!(c.cmd(&["GETSET", "k", "v2"]), bulk("v1"));
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v2"));
    assert_eq!(c.cmd(&["SET", "t", "v", "EX", "100"]), ok());
    assert_eq!(c.cmd(&["GETSET", "t", "w"]), bulk("v"));
    assert_eq!(c.cmd(&["TTL", "t"]), int(-1), "GETSET drops the TTL");

    assert_eq!(c.cmd(&["GETDEL", "k"]), bulk("v2"));
    assert_eq!(c.cmd(&["GETDEL", "k"]), nil());
    assert_eq!(c.cmd(&["EXISTS", "k"]), int(0));
}

#[test]
fn getex_sets_or_removes_the_ttl() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    assert_eq!(c.cmd(&["GETEX", "k"]), bulk("v"));
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1), "GETEX without options leaves the TTL alone");
    assert_eq!(c.cmd(&["GETEX", "k", "EX", "100"]), bulk("v"));
    assert_ttl(&mut c, "k", 99, 100);
    assert_eq!(c.cmd(&["GETEX", "k", "PX", "200000"]), bulk("v"));
    assert_pttl(&mut c, "k", 198_000, 200_000);
    assert_eq!(c.cmd(&["GETEX", "k", "EXAT", &(unix_ms() / 1000 + 300).to_string()]), bulk("v"));
    assert_ttl(&mut c, "k", 298, 300);
    assert_eq!(c.cmd(&["GETEX", "k", "PXAT", &(unix_ms() + 400_000).to_string()]), bulk("v"));
    assert_pttl(&mut c, "k", 398_000, 400_000);
    assert_eq!(c.cmd(&["GETEX", "k", "PERSIST"]), bulk("v"));
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1));

    assert_eq!(c.cmd(&["GETEX", "missing", "EX", "10"]), nil());
    assert_eq!(c.cmd(&["EXISTS", "missing"]), int(0));

    assert_eq!(c.cmd(&["GETEX", "k", "EX", "0"]), err("ERR invalid expire time in 'getex' command"));
    assert_eq!(c.cmd(&["GETEX", "k", "PX", "-5"]), err("ERR invalid expire time in 'getex' command"));
    assert_eq!(c.cmd(&["GETEX", "k", "EX", "abc"]), err(NOT_INTEGER));
    assert_eq!(c.cmd(&["GETEX", "k", "PERSIST", "EX", "10"]), err(SYNTAX));
    assert_eq!(c.cmd(&["GETEX", "k", "EX", "10", "PX", "100"]), err(SYNTAX));
    assert_eq!(c.cmd(&["GETEX", "k", "BOGUS"]), err(SYNTAX));
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1), "rejected GETEX left the TTL alone");

    // An absolute time in the past returns the value and deletes the key.
    assert_eq!(c.cmd(&["GETEX", "k", "EXAT", "1"]), bulk("v"));
    assert_eq!(c.cmd(&["GET", "k"]), nil());
}

#[test]
fn mget_mset_msetnx() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["MSET", "a", "1", "b", "2", "c", "3"]), ok());
    assert_eq!(
        c.cmd(&["MGET", "a", "missing", "c", "b", "a"]),
        Reply::Array(vec![bulk("1"), nil(), bulk("3"), bulk("2"), bulk("1")])
    );
    assert_eq!(c.cmd(&["MSET", "a", "x", "a", "y"]), ok());
    assert_eq!(c.cmd(&["GET", "a"]), bulk("y"), "the last pair wins");
    assert_eq!(c.cmd(&["MSET", "a"]), err("ERR wrong number of arguments for 'mset' command"));
    assert_eq!(c.cmd(&["MSET", "a", "1", "b"]), err("ERR wrong number of arguments for 'mset' command"));
    assert_eq!(c.cmd(&["GET", "a"]), bulk("y"), "a rejected MSET wrote nothing");
    assert_eq!(c.cmd(&["GET", "b"]), bulk("2"));

    assert_eq!(c.cmd(&["SET", "t", "v", "EX", "100"]), ok());
    assert_eq!(c.cmd(&["MSET", "t", "w"]), ok());
    assert_eq!(c.cmd(&["TTL", "t"]), int(-1), "MSET drops TTLs like SET");

    assert_eq!(c.cmd(&["MSETNX", "n1", "1", "n2", "2"]), int(1));
    assert_eq!(c.cmd(&["MSETNX", "n2", "x", "n3", "3"]), int(0), "one existing key blocks all");
    assert_eq!(c.cmd(&["MGET", "n1", "n2", "n3"]), Reply::Array(vec![bulk("1"), bulk("2"), nil()]));
    assert_eq!(c.cmd(&["MSETNX", "n4"]), err("ERR wrong number of arguments for 'msetnx' command"));
    assert_eq!(
        c.cmd(&["MSETNX", "n4", "1", "n5"]),
        err("ERR wrong number of arguments for 'msetnx' command")
    );
}

#[test]
fn incr_decr_incrby_decrby() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["INCR", "n"]), int(1), "a missing key counts as 0");
    assert_eq!(c.cmd(&["INCR", "n"]), int(2));
    assert_eq!(c.cmd(&["DECR", "n"]), int(1));
    assert_eq!(c.cmd(&["INCRBY", "n", "10"]), int(11));
    assert_eq!(c.cmd(&["INCRBY", "n", "-20"]), int(-9));
    assert_eq!(c.cmd(&["DECRBY", "n", "5"]), int(-14));
    assert_eq!(c.cmd(&["DECRBY", "n", "-14"]), int(0));
    assert_eq!(c.cmd(&["GET", "n"]), bulk("0"), "stored as the decimal string");
    assert_eq!(c.cmd(&["DECR", "fresh"]), int(-1));

    assert_eq!(c.cmd(&["SET", "t", "5", "EX", "100"]), ok());
    assert_eq!(c.cmd(&["INCR", "t"]), int(6));
    assert_ttl(&mut c, "t", 99, 100);
}

#[test]
fn incr_on_values_that_are_not_integers() {
    let (_node, mut c) = conn();
    for v in ["abc", " 12", "12 ", "1.5", "12345678901234567890", "", "+5", "0x10"] {
        assert_eq!(c.cmd(&["SET", "k", v]), ok());
        assert_eq!(c.cmd(&["INCR", "k"]), err(NOT_INTEGER), "INCR on {v:?}");
        assert_eq!(c.cmd(&["GET", "k"]), bulk(v), "the value is unchanged");
    }
    assert_eq!(c.cmd(&["SET", "k", "-7"]), ok());
    assert_eq!(c.cmd(&["INCR", "k"]), int(-6));
    assert_eq!(c.cmd(&["INCRBY", "k", "abc"]), err(NOT_INTEGER));
    assert_eq!(c.cmd(&["INCRBY", "k", "1.0"]), err(NOT_INTEGER));
    assert_eq!(c.cmd(&["DECRBY", "k", "99999999999999999999"]), err(NOT_INTEGER));
}

#[test]
fn incr_overflow_is_an_error() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "max", "9223372036854775807"]), ok());
    assert_eq!(c.cmd(&["INCR", "max"]), err("ERR increment or decrement would overflow"));
    assert_eq!(c.cmd(&["INCRBY", "max", "1"]), err("ERR increment or decrement would overflow"));
    assert_eq!(c.cmd(&["GET", "max"]), bulk("9223372036854775807"));
    assert_eq!(c.cmd(&["SET", "min", "-9223372036854775808"]), ok());
    assert_eq!(c.cmd(&["DECR", "min"]), err("ERR increment or decrement would overflow"));
    assert_eq!(c.cmd(&["DECRBY", "min", "1"]), err("ERR increment or decrement would overflow"));
    assert_eq!(c.cmd(&["INCRBY", "min", "-1"]), err("ERR increment or decrement would overflow"));
    assert_eq!(c.cmd(&["DECRBY", "zero", "-9223372036854775808"]), err("ERR decrement would overflow"));
    assert_eq!(c.cmd(&["INCRBY", "min", "9223372036854775807"]), int(-1));
}

#[test]
fn incrbyfloat_formats_like_redis() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "f", "10.50"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "f", "0.1"]), bulk("10.6"));
    assert_eq!(c.cmd(&["GET", "f"]), bulk("10.6"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "f", "-5"]), bulk("5.6"));
    assert_eq!(c.cmd(&["SET", "e", "5.0e3"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "e", "2.0e2"]), bulk("5200"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "new", "5.0e3"]), bulk("5000"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "new2", "3"]), bulk("3"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "new2", "-3"]), bulk("0"));
    assert_eq!(c.cmd(&["SET", "i", "7"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "i", "1.25"]), bulk("8.25"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "i", "-10"]), bulk("-1.75"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "h", "0.5"]), bulk("0.5"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "h", "1e-3"]), bulk("0.501"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "x1", "1.23e+2"]), bulk("123"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "x2", ".5"]), bulk("0.5"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "x3", "5."]), bulk("5"));
    assert_eq!(c.cmd(&["SET", "x4", "1e20"]), ok());
    assert_eq!(
        c.cmd(&["INCRBYFLOAT", "x4", "1"]),
        bulk("100000000000000000000"),
        "no exponent in the output"
    );
    assert_eq!(c.cmd(&["SET", "x5", "3.0"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "x5", "1"]), bulk("4"));
}

/// Redis adds in x87 `long double` (64-bit significand) and prints `%.17Lf`: integers
/// up to 2^64 stay exact, wider values round to 64 bits, fractions to 17 digits.
#[test]
fn incrbyfloat_keeps_long_double_precision() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "max", "9223372036854775807"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "max", "0"]), bulk("9223372036854775807"));
    assert_eq!(c.cmd(&["DECR", "max"]), int(9223372036854775806), "still an integer after INCRBYFLOAT");
    assert_eq!(c.cmd(&["SET", "min", "-9223372036854775808"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "min", "0"]), bulk("-9223372036854775808"));
    assert_eq!(c.cmd(&["INCR", "min"]), int(-9223372036854775807));
    assert_eq!(c.cmd(&["SET", "big", "9007199254740993"]), ok(), "2^53 + 1, not an f64");
    assert_eq!(c.cmd(&["INCRBYFLOAT", "big", "1"]), bulk("9007199254740994"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "big", "0.5"]), bulk("9007199254740994.5"));
    assert_eq!(c.cmd(&["SET", "u64", "18446744073709551614"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "u64", "1"]), bulk("18446744073709551615"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "u64", "2"]), bulk("18446744073709551616"), "past 64 bits, rounded");
    assert_eq!(c.cmd(&["SET", "wide", "123456789012345678901234567890"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "wide", "0"]), bulk("123456789012345678899921813504"));
    assert_eq!(c.cmd(&["SET", "e20", "1e20"]), ok());
    assert_eq!(
        c.cmd(&["INCRBYFLOAT", "e20", "0.1"]),
        bulk("100000000000000000000"),
        "0.1 is below the last bit"
    );
    assert_eq!(c.cmd(&["INCRBYFLOAT", "tenths", "0.1"]), bulk("0.1"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "tenths", "0.2"]), bulk("0.3"));
    assert_eq!(
        c.cmd(&["INCRBYFLOAT", "tie", "0.000003814697265625"]),
        bulk("0.00000381469726562"),
        "ties to even"
    );
    assert_eq!(c.cmd(&["INCRBYFLOAT", "tiny", "-6e-18"]), bulk("-0.00000000000000001"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "tinier", "-1e-18"]), bulk("0"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "hex", "0x1p-3"]), bulk("0.125"), "strtold reads hex floats");
    assert_eq!(c.cmd(&["INCRBYFLOAT", "hex", "0x10"]), bulk("16.125"));
    assert_eq!(c.cmd(&["SET", "huge", "1e4932"]), ok(), "past f64, within long double");
    assert_eq!(c.cmd(&["INCRBYFLOAT", "huge", "1e4932"]), err("ERR increment would produce NaN or Infinity"));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "huge", "1e5000"]), err(NOT_FLOAT), "past long double");
    assert_eq!(c.cmd(&["INCRBYFLOAT", "huge", "1e-5000"]), err(NOT_FLOAT), "underflows to zero");
    let Reply::Bulk(e400) = c.cmd(&["INCRBYFLOAT", "e400", "1e400"]) else {
        panic!("INCRBYFLOAT e400 1e400")
    };
    assert_eq!((e400.len(), &e400[..30]), (401, &b"100000000000000000002818806839"[..]), "1e400 to 64 bits");
}

#[test]
fn incrbyfloat_rejects_invalid_floats_nan_and_infinity() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "f", "1.5"]), ok());
    for bad in ["abc", "1.5x", "", "nan", " 1"] {
        assert_eq!(c.cmd(&["INCRBYFLOAT", "f", bad]), err(NOT_FLOAT), "increment {bad:?}");
    }
    for inf in ["inf", "-inf", "+inf"] {
        assert_eq!(
            c.cmd(&["INCRBYFLOAT", "f", inf]),
            err("ERR increment would produce NaN or Infinity"),
            "increment {inf:?}"
        );
    }
    assert_eq!(c.cmd(&["GET", "f"]), bulk("1.5"), "unchanged by the errors");
    assert_eq!(c.cmd(&["SET", "s", "hello"]), ok());
    assert_eq!(c.cmd(&["INCRBYFLOAT", "s", "1"]), err(NOT_FLOAT));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "f"]), err("ERR wrong number of arguments for 'incrbyfloat' command"));
}

#[test]
fn append_and_strlen() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["STRLEN", "k"]), int(0));
    assert_eq!(c.cmd(&["APPEND", "k", "Hello"]), int(5), "APPEND creates the key");
    assert_eq!(c.cmd(&["APPEND", "k", " World"]), int(11));
    assert_eq!(c.cmd(&["GET", "k"]), bulk("Hello World"));
    assert_eq!(c.cmd(&["STRLEN", "k"]), int(11));
    assert_eq!(c.cmd(&["APPEND", "k", ""]), int(11));
    assert_eq!(c.cmd(&[&b"APPEND"[..], b"k", b"\x00\xff"]), int(13));
    assert_eq!(c.cmd(&["STRLEN", "k"]), int(13));
    assert_eq!(c.cmd(&["SET", "t", "a", "EX", "100"]), ok());
    assert_eq!(c.cmd(&["APPEND", "t", "b"]), int(2));
    assert_ttl(&mut c, "t", 99, 100);
    assert_eq!(c.cmd(&["SET", "n", "10"]), ok());
    assert_eq!(c.cmd(&["APPEND", "n", "5"]), int(3));
    assert_eq!(c.cmd(&["INCR", "n"]), int(106));
}

#[test]
fn getrange_with_positive_and_negative_indexes() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "k", "This is a string"]), ok());
    let cases = [
        ("0", "3", "This"),
        ("-3", "-1", "ing"),
        ("0", "-1", "This is a string"),
        ("10", "100", "string"),
        ("5", "3", ""),
        ("-100", "3", "This"),
        ("16", "20", ""),
        ("15", "15", "g"),
        ("-1", "-1", "g"),
        ("0", "0", "T"),
    ];
    // ("-100", "-50") is left out on purpose: Redis 7.0 answers "T", later versions "".
    for (start, end, want) in cases {
        assert_eq!(c.cmd(&["GETRANGE", "k", start, end]), bulk(want), "GETRANGE k {start} {end}");
    }
    assert_eq!(c.cmd(&["GETRANGE", "missing", "0", "-1"]), bulk(""));
    assert_eq!(c.cmd(&["GETRANGE", "k", "a", "1"]), err(NOT_INTEGER));
}

#[test]
fn setrange_pads_with_zero_bytes() {
    let (_node, mut c) = conn();
    assert_eq!(c.cmd(&["SET", "k", "Hello World"]), ok());
    assert_eq!(c.cmd(&["SETRANGE", "k", "6", "Redis"]), int(11));
    assert_eq!(c.cmd(&["GET", "k"]), bulk("Hello Redis"));
    assert_eq!(c.cmd(&["SETRANGE", "k", "6", "Opencluster"]), int(17), "writing past the end grows it");
    assert_eq!(c.cmd(&["GET", "k"]), bulk("Hello Opencluster"));

    assert_eq!(c.cmd(&["SETRANGE", "z", "5", "hi"]), int(7));
    assert_eq!(c.cmd(&["GET", "z"]), bulk(b"\x00\x00\x00\x00\x00hi"));
    assert_eq!(c.cmd(&["SETRANGE", "k", "20", "!"]), int(21));
    assert_eq!(c.cmd(&["GET", "k"]), bulk(b"Hello Opencluster\x00\x00\x00!"));

    assert_eq!(c.cmd(&["SETRANGE", "k", "0", ""]), int(21), "an empty value changes nothing");
    assert_eq!(c.cmd(&["SETRANGE", "none", "3", ""]), int(0));
    assert_eq!(c.cmd(&["EXISTS", "none"]), int(0), "an empty SETRANGE does not create the key");

    assert_eq!(c.cmd(&["SETRANGE", "k", "-1", "x"]), err("ERR offset is out of range"));
    assert_eq!(c.cmd(&["SETRANGE", "k", "abc", "x"]), err(NOT_INTEGER));
    assert_eq!(c.cmd(&["STRLEN", "k"]), int(21));
}
