//! Connection-level commands: PING, ECHO, HELLO, AUTH, SELECT, QUIT, COMMAND, INFO,
//! CLIENT, TIME, and the generic errors (unknown command, wrong arity), in RESP2 and
//! RESP3, with the exact replies Redis 7 gives.

use opencluster_tests::{Node, NodeOpts, Reply, bulk, err, int, nil, node_only, ok, simple};

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const NOAUTH: &str = "NOAUTH Authentication required.";

#[test]
fn ping_with_and_without_argument() {
    let node = Node::start_default();
    let mut c = node.raw();
    assert_eq!(c.cmd(&["PING"]), simple("PONG"));
    assert_eq!(c.cmd(&["PING", "hello world"]), bulk("hello world"));
    assert_eq!(c.cmd(&["ping"]), simple("PONG"), "command names are case-insensitive");
    assert_eq!(c.cmd(&["PING", "a", "b"]), err("ERR wrong number of arguments for 'ping' command"));
}

#[test]
fn echo_returns_its_argument_byte_for_byte() {
    let node = Node::start_default();
    let mut c = node.raw();
    assert_eq!(c.cmd(&["ECHO", "hi"]), bulk("hi"));
    let binary: &[u8] = b"\x00\r\n\xffbinary";
    assert_eq!(c.cmd(&[&b"ECHO"[..], binary]), bulk(binary));
    assert_eq!(c.cmd(&["ECHO", ""]), bulk(""));
    assert_eq!(c.cmd(&["ECHO"]), err("ERR wrong number of arguments for 'echo' command"));
    assert_eq!(c.cmd(&["ECHO", "a", "b"]), err("ERR wrong number of arguments for 'echo' command"));
}

#[test]
fn hello_3_answers_a_resp3_map_with_the_server_fields() {
    let node = Node::start_default();
    let mut c = node.raw();
    let id = c.cmd(&["CLIENT", "ID"]).int();
    let hello = c.cmd(&["HELLO", "3"]);
    assert!(matches!(hello, Reply::Map(_)), "HELLO 3 must answer a RESP3 map, got {hello:?}");
    // Redis 7 sends exactly these seven, in this order; a server may add its own after them.
    let names = hello.field_names();
    assert_eq!(
        names[..names.len().min(7)],
        ["server", "version", "proto", "id", "mode", "role", "modules"],
        "HELLO 3 fields: {hello:?}"
    );
    assert_eq!(hello.field("proto"), Some(&int(3)));
    assert_eq!(hello.field("id"), Some(&int(id)), "HELLO id is the CLIENT ID");
    assert_eq!(hello.field("modules"), Some(&Reply::Array(vec![])));
    assert_eq!(hello.field("role"), Some(&bulk("master")));
    assert_eq!(hello.field("mode"), Some(&bulk("standalone")));
    for name in ["server", "version"] {
        let v = hello.field(name).unwrap().text();
        assert!(!v.is_empty(), "HELLO {name} is empty");
    }
    // The connection now speaks RESP3.
    assert_eq!(c.cmd(&["GET", "missing"]), Reply::Null);
}

#[test]
fn hello_2_answers_a_flat_array_and_plain_hello_reports_the_current_protocol() {
    let node = Node::start_default();
    let mut c = node.raw();
    let hello = c.cmd(&["HELLO"]);
    assert!(matches!(hello, Reply::Array(_)), "HELLO in RESP2 is a flat array, got {hello:?}");
    assert_eq!(hello.field("proto"), Some(&int(2)));
    let hello3 = c.cmd(&["HELLO", "3"]);
    assert_eq!(hello3.field("proto"), Some(&int(3)));
    let again = c.cmd(&["HELLO"]);
    assert!(matches!(again, Reply::Map(_)), "still RESP3: {again:?}");
    assert_eq!(again.field("proto"), Some(&int(3)));
    let hello2 = c.cmd(&["HELLO", "2"]);
    assert!(matches!(hello2, Reply::Array(_)), "back to RESP2: {hello2:?}");
    assert_eq!(hello2.field("proto"), Some(&int(2)));
    assert_eq!(c.cmd(&["GET", "missing"]), Reply::NullBulk);
}

#[test]
fn hello_with_unsupported_or_invalid_protocol_version() {
    let node = Node::start_default();
    let mut c = node.raw();
    assert_eq!(c.cmd(&["HELLO", "4"]), err("NOPROTO unsupported protocol version"));
    assert_eq!(c.cmd(&["HELLO", "1"]), err("NOPROTO unsupported protocol version"));
    assert_eq!(c.cmd(&["HELLO", "abc"]), err("ERR Protocol version is not an integer or out of range"));
    // A failed HELLO leaves the protocol as it was.
    assert_eq!(c.cmd(&["GET", "missing"]), Reply::NullBulk);
    assert_eq!(c.cmd(&["HELLO", "3", "BOGUS"]), err("ERR Syntax error in HELLO option 'BOGUS'"));
}

#[test]
fn hello_setname_sets_the_client_name() {
    let node = Node::start_default();
    let mut c = node.raw();
    let hello = c.cmd(&["HELLO", "3", "SETNAME", "alice"]);
    assert_eq!(hello.field("proto"), Some(&int(3)));
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), bulk("alice"));
    assert_eq!(
        c.cmd(&["HELLO", "3", "SETNAME", "a b"]),
        err("ERR Client names cannot contain spaces, newlines or special characters.")
    );
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), bulk("alice"));
}

#[test]
fn commands_before_auth_get_noauth_when_a_password_is_set() {
    let node = Node::start(NodeOpts::new().password("s3cret"));
    let mut c = node.raw();
    assert_eq!(c.cmd(&["GET", "k"]), err(NOAUTH));
    assert_eq!(c.cmd(&["SET", "k", "v"]), err(NOAUTH));
    assert_eq!(c.cmd(&["PING"]), err(NOAUTH));
    // Redis 7.0 and 7.2 word the rest of this message differently; the start is the same.
    let r = c.cmd(&["HELLO", "3"]);
    assert!(
        r.error().starts_with("NOAUTH HELLO must be called with the client already authenticated"),
        "{r:?}"
    );
    // Nothing was written by the refused SET.
    let mut authed = node.raw_authed();
    assert_eq!(authed.cmd(&["GET", "k"]), nil());
}

#[test]
fn auth_with_right_and_wrong_passwords() {
    let node = Node::start(NodeOpts::new().password("s3cret"));
    let mut c = node.raw();
    assert_eq!(c.cmd(&["AUTH", "wrong"]), err(WRONGPASS));
    assert_eq!(c.cmd(&["AUTH", "default", "wrong"]), err(WRONGPASS));
    assert_eq!(c.cmd(&["AUTH", "nosuchuser", "s3cret"]), err(WRONGPASS));
    assert_eq!(c.cmd(&["GET", "k"]), err(NOAUTH), "a failed AUTH does not authenticate");
    assert_eq!(c.cmd(&["AUTH", "a", "b", "c"]), err("ERR syntax error"));
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), ok());
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v"));

    let mut c2 = node.raw();
    assert_eq!(c2.cmd(&["AUTH", "default", "s3cret"]), ok());
    assert_eq!(c2.cmd(&["GET", "k"]), bulk("v"));
}

#[test]
fn hello_auth_authenticates_and_switches_protocol_at_once() {
    let node = Node::start(NodeOpts::new().password("s3cret"));
    let mut c = node.raw();
    assert_eq!(c.cmd(&["HELLO", "3", "AUTH", "default", "wrong"]), err(WRONGPASS));
    assert_eq!(c.cmd(&["GET", "k"]), err(NOAUTH));
    let hello = c.cmd(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "bob"]);
    assert_eq!(hello.field("proto"), Some(&int(3)), "{hello:?}");
    assert_eq!(c.cmd(&["GET", "k"]), Reply::Null);
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), bulk("bob"));
}

#[test]
fn redis_crate_client_authenticates_with_the_url_password() {
    let node = Node::start(NodeOpts::new().password("s3cret"));
    let mut con = node.client();
    redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
}

#[test]
fn auth_without_a_configured_password_is_an_error() {
    let node = Node::start_default();
    let mut c = node.raw();
    assert_eq!(
        c.cmd(&["AUTH", "whatever"]),
        err(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
        )
    );
    assert_eq!(c.cmd(&["PING"]), simple("PONG"));
}

#[test]
fn select_accepts_only_database_zero() {
    let node = Node::start_default();
    let mut c = node.raw();
    assert_eq!(c.cmd(&["SELECT", "0"]), ok());
    assert_eq!(c.cmd(&["SELECT", "1"]), err("ERR DB index is out of range"));
    assert_eq!(c.cmd(&["SELECT", "-1"]), err("ERR DB index is out of range"));
    assert_eq!(c.cmd(&["SELECT", "abc"]), err("ERR value is not an integer or out of range"));
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v"), "still on database 0");
}

#[test]
fn quit_answers_ok_then_closes_the_connection() {
    let node = Node::start_default();
    let mut c = node.raw();
    c.send_raw(&opencluster_tests::resp::encode_command(&["QUIT"])).unwrap();
    let replies = c.read_until_closed().expect("connection closes after QUIT");
    assert_eq!(replies, vec![ok()]);
    // The server is fine.
    assert_eq!(node.raw().cmd(&["PING"]), simple("PONG"));
}

#[test]
fn command_count_info_and_docs() {
    let node = Node::start_default();
    let mut c = node.raw();
    let count = c.cmd(&["COMMAND", "COUNT"]).int();
    assert!(count >= 40, "COMMAND COUNT = {count}: the node implements at least the tested commands");
    let all = c.cmd(&["COMMAND"]);
    assert_eq!(all.array().len() as i64, count, "COMMAND lists COMMAND COUNT entries");

    let info = c.cmd(&["COMMAND", "INFO", "get", "set", "nosuchcommand"]);
    let entries = info.array();
    assert_eq!(entries.len(), 3, "{info:?}");
    let get = entries[0].array();
    assert_eq!(get[0], bulk("get"));
    assert_eq!(get[1], int(2), "GET's arity");
    let get_flags: Vec<String> = get[2].array().iter().map(Reply::text).collect();
    assert!(get_flags.contains(&"readonly".to_string()), "GET flags {get_flags:?}");
    assert_eq!(&get[3..6], &[int(1), int(1), int(1)], "GET's first key, last key, step");
    let set = entries[1].array();
    assert_eq!(set[0], bulk("set"));
    assert_eq!(set[1], int(-3), "SET's arity");
    let set_flags: Vec<String> = set[2].array().iter().map(Reply::text).collect();
    assert!(set_flags.contains(&"write".to_string()), "SET flags {set_flags:?}");
    assert!(entries[2].is_null(), "an unknown command is a null entry: {:?}", entries[2]);

    // Every command the tests use is known to COMMAND INFO.
    for name in [
        "ping",
        "echo",
        "hello",
        "auth",
        "select",
        "quit",
        "command",
        "info",
        "client",
        "get",
        "set",
        "setnx",
        "setex",
        "psetex",
        "getset",
        "getdel",
        "getex",
        "mget",
        "mset",
        "msetnx",
        "del",
        "unlink",
        "exists",
        "incr",
        "decr",
        "incrby",
        "decrby",
        "incrbyfloat",
        "append",
        "strlen",
        "getrange",
        "setrange",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "ttl",
        "pttl",
        "persist",
        "type",
        "keys",
        "scan",
        "dbsize",
        "flushdb",
        "time",
    ] {
        let r = c.cmd(&["COMMAND", "INFO", name]);
        let entry = &r.array()[0];
        assert!(!entry.is_null(), "COMMAND INFO {name} is null");
        assert_eq!(entry.array()[0], bulk(name));
    }

    let docs = c.cmd(&["COMMAND", "DOCS", "get"]);
    let docs = docs.array();
    assert_eq!(docs.len(), 2, "COMMAND DOCS get in RESP2 is [name, doc]: {docs:?}");
    assert_eq!(docs[0], bulk("get"));
    assert!(docs[1].field("summary").is_some(), "GET docs have a summary: {:?}", docs[1]);
    assert_eq!(c.cmd(&["COMMAND", "DOCS", "nosuchcommand"]), Reply::Array(vec![]));
}

#[test]
fn info_has_the_standard_sections() {
    let node = Node::start_default();
    let mut c = node.raw();
    let info = c.cmd(&["INFO"]).text();
    for section in ["# Server", "# Clients", "# Memory", "# Stats", "# Keyspace"] {
        assert!(info.lines().any(|l| l.trim_end() == section), "INFO lacks {section}:\n{info}");
    }
    assert!(info.contains("\r\n"), "INFO lines end with CRLF");
    let clients = c.cmd(&["INFO", "clients"]).text();
    assert!(clients.starts_with("# Clients\r\n"), "{clients}");
    assert!(!clients.contains("# Server"), "INFO clients has only that section: {clients}");
    let connected = clients
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap_or_else(|| panic!("no connected_clients in {clients}"));
    assert!(connected.trim().parse::<u64>().unwrap() >= 1);
    assert_eq!(c.cmd(&["INFO", "nosuchsection"]), bulk(""), "an unknown section is empty");
    let server = c.cmd(&["INFO", "server"]).text();
    assert!(server.starts_with("# Server\r\n"), "{server}");
    assert!(
        server.lines().any(|l| l.starts_with("redis_version:")),
        "redis-cli and clients read redis_version: {server}"
    );
}

#[test]
fn info_keyspace_counts_keys_and_expires() {
    let node = Node::start_default();
    let mut c = node.raw();
    let empty = c.cmd(&["INFO", "keyspace"]).text();
    assert!(empty.starts_with("# Keyspace"), "{empty}");
    assert!(!empty.contains("db0:"), "an empty database is not listed: {empty}");
    for i in 0..3 {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), "v"]), ok());
    }
    assert_eq!(c.cmd(&["SET", "t", "v", "EX", "1000"]), ok());
    let ks = c.cmd(&["INFO", "keyspace"]).text();
    let line = ks.lines().find(|l| l.starts_with("db0:")).unwrap_or_else(|| panic!("no db0 line: {ks}"));
    assert!(line.starts_with("db0:keys=4,expires=1,"), "{line}");
}

#[test]
fn client_setname_getname_and_id() {
    let node = Node::start_default();
    let mut a = node.raw();
    let mut b = node.raw();
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), nil());
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "worker-1"]), ok());
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), bulk("worker-1"));
    assert_eq!(b.cmd(&["CLIENT", "GETNAME"]), nil(), "names are per connection");
    assert_eq!(
        a.cmd(&["CLIENT", "SETNAME", "has space"]),
        err("ERR Client names cannot contain spaces, newlines or special characters.")
    );
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), bulk("worker-1"));
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", ""]), ok(), "an empty name clears it");
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), nil());

    let id_a = a.cmd(&["CLIENT", "ID"]).int();
    let id_b = b.cmd(&["CLIENT", "ID"]).int();
    assert!(id_a > 0 && id_b > 0);
    assert!(id_b > id_a, "ids grow with each connection: {id_a} then {id_b}");
    assert_eq!(a.cmd(&["CLIENT", "ID"]).int(), id_a, "stable for a connection");
    let mut c = node.raw();
    assert!(c.cmd(&["CLIENT", "ID"]).int() > id_b);
    assert_eq!(a.cmd(&["CLIENT", "NOSUCH"]), err("ERR unknown subcommand 'NOSUCH'. Try CLIENT HELP."));
}

#[test]
fn time_is_seconds_and_microseconds_of_now() {
    let node = Node::start_default();
    let mut c = node.raw();
    let before = opencluster_tests::unix_ms() / 1000;
    let t = c.cmd(&["TIME"]);
    let after = opencluster_tests::unix_ms() / 1000;
    let parts = t.array();
    assert_eq!(parts.len(), 2, "{t:?}");
    let secs: u64 = parts[0].text().parse().expect("seconds as a bulk string");
    let micros: u64 = parts[1].text().parse().expect("microseconds as a bulk string");
    assert!(before <= secs && secs <= after, "TIME {secs} not within [{before}, {after}]");
    assert!(micros < 1_000_000);
}

#[test]
fn unknown_command_error_text() {
    let node = Node::start_default();
    let mut c = node.raw();
    assert_eq!(
        c.cmd(&["FOO", "a", "b"]),
        err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ")
    );
    assert_eq!(c.cmd(&["nosuch"]), err("ERR unknown command 'nosuch', with args beginning with: "));
    assert_eq!(c.cmd(&["PING"]), simple("PONG"), "the connection stays usable");
}

#[test]
fn wrong_arity_error_text() {
    let node = Node::start_default();
    let mut c = node.raw();
    let cases: &[&[&str]] = &[
        &["GET"],
        &["GET", "a", "b"],
        &["SET", "k"],
        &["MGET"],
        &["DEL"],
        &["EXPIRE", "k"],
        &["INCRBY", "k"],
        &["STRLEN"],
        &["GETRANGE", "k", "0"],
        &["SETRANGE", "k", "0"],
        &["TTL"],
        &["DBSIZE", "x"],
        &["EXISTS"],
        &["APPEND", "k"],
    ];
    for args in cases {
        let name = args[0].to_ascii_lowercase();
        assert_eq!(
            c.cmd(args),
            err(&format!("ERR wrong number of arguments for '{name}' command")),
            "{args:?}"
        );
    }
}

#[test]
fn resp3_after_hello_3_uses_resp3_types() {
    let node = Node::start_default();
    let mut c = node.raw();
    c.cmd(&["HELLO", "3"]);
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    assert_eq!(c.cmd(&["GET", "missing"]), Reply::Null);
    assert_eq!(c.cmd(&["MGET", "k", "missing"]), Reply::Array(vec![bulk("v"), Reply::Null]));
    assert_eq!(c.cmd(&["SET", "k", "w", "GET"]), bulk("v"));
    assert_eq!(c.cmd(&["SET", "new", "w", "GET"]), Reply::Null);
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), Reply::Null);
    assert_eq!(c.cmd(&["TTL", "k"]), int(-1));
    assert_eq!(c.cmd(&["INCRBYFLOAT", "f", "1.5"]), bulk("1.5"));
    assert_eq!(c.cmd(&["GETDEL", "missing"]), Reply::Null);
    assert_eq!(c.cmd(&["GETX"]), err("ERR unknown command 'GETX', with args beginning with: "));
}

#[test]
fn resp2_nulls_are_null_bulk_strings() {
    let node = Node::start_default();
    let mut c = node.raw();
    c.send_raw(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n").unwrap();
    assert_eq!(c.read_reply().unwrap(), Reply::NullBulk);
    assert_eq!(c.cmd(&["MGET", "missing"]), Reply::Array(vec![Reply::NullBulk]));
    assert_eq!(c.cmd(&["SET", "k", "v", "NX"]), ok());
    assert_eq!(c.cmd(&["SET", "k", "v", "NX"]), Reply::NullBulk);
}

#[test]
fn client_setname_via_redis_crate_shows_in_getname() {
    let node = Node::start_default();
    let mut con = node.client();
    redis::cmd("CLIENT").arg("SETNAME").arg("from-redis-rs").exec(&mut con).unwrap();
    let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name.as_deref(), Some("from-redis-rs"));
}

#[test]
fn flushdb_is_disabled_by_default_on_the_node() {
    node_only!("Redis always allows FLUSHDB; the node disables it unless --allow-flushdb");
    let node = Node::start_default();
    let mut c = node.raw();
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    let r = c.cmd(&["FLUSHDB"]);
    assert!(r.error().starts_with("ERR FLUSHDB is disabled"), "{r:?}");
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v"), "nothing was flushed");
}
