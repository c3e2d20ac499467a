//! The table of commands: name, arity, flags and key positions, as Redis's COMMAND
//! reports them. Dispatch, arity checks, COMMAND replies and per-command metrics all
//! read this one table.

use std::collections::HashMap;
use std::sync::LazyLock;

/// Which handler runs a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cmd {
    // Connection and server.
    Ping,
    Echo,
    Hello,
    Auth,
    Select,
    Quit,
    Command,
    Info,
    Client,
    Config,
    Time,
    Dbsize,
    Flushdb,
    // Strings.
    Get,
    Set,
    Setnx,
    Setex,
    Psetex,
    Getset,
    Getdel,
    Getex,
    Mget,
    Mset,
    Msetnx,
    Incr,
    Decr,
    Incrby,
    Decrby,
    Incrbyfloat,
    Append,
    Strlen,
    Getrange,
    Setrange,
    // Keys.
    Del,
    Exists,
    Expire,
    Pexpire,
    Expireat,
    Pexpireat,
    Ttl,
    Pttl,
    Persist,
    Type,
    Keys,
    Scan,
}

pub struct Spec {
    pub name: &'static str,
    pub cmd: Cmd,
    /// Redis convention: `n` exactly n words (name included), `-n` at least n.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const NOAUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];

const fn spec(
    name: &'static str,
    cmd: Cmd,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
) -> Spec {
    Spec { name, cmd, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2 }
}

const NO_KEYS: (i32, i32, i32) = (0, 0, 0);
const ONE_KEY: (i32, i32, i32) = (1, 1, 1);
const ALL_KEYS: (i32, i32, i32) = (1, -1, 1);
const KEY_VALUE_PAIRS: (i32, i32, i32) = (1, -1, 2);

pub const COMMANDS: &[Spec] = &[
    spec("ping", Cmd::Ping, -1, CONN, NO_KEYS),
    spec("echo", Cmd::Echo, 2, CONN, NO_KEYS),
    spec("hello", Cmd::Hello, -1, NOAUTH, NO_KEYS),
    spec("auth", Cmd::Auth, -2, NOAUTH, NO_KEYS),
    spec("select", Cmd::Select, 2, CONN, NO_KEYS),
    spec("quit", Cmd::Quit, -1, NOAUTH, NO_KEYS),
    spec("command", Cmd::Command, -1, &["loading", "stale"], NO_KEYS),
    spec("info", Cmd::Info, -1, &["loading", "stale"], NO_KEYS),
    spec("client", Cmd::Client, -2, &["loading", "stale"], NO_KEYS),
    spec("config", Cmd::Config, -2, &["admin", "loading", "stale"], NO_KEYS),
    spec("time", Cmd::Time, 1, &["loading", "stale", "fast"], NO_KEYS),
    spec("dbsize", Cmd::Dbsize, 1, RF, NO_KEYS),
    spec("flushdb", Cmd::Flushdb, -1, &["write"], NO_KEYS),
    spec("get", Cmd::Get, 2, RF, ONE_KEY),
    spec("set", Cmd::Set, -3, W, ONE_KEY),
    spec("setnx", Cmd::Setnx, 3, WF, ONE_KEY),
    spec("setex", Cmd::Setex, 4, W, ONE_KEY),
    spec("psetex", Cmd::Psetex, 4, W, ONE_KEY),
    spec("getset", Cmd::Getset, 3, WF, ONE_KEY),
    spec("getdel", Cmd::Getdel, 2, &["write", "fast"], ONE_KEY),
    spec("getex", Cmd::Getex, -2, &["write", "fast"], ONE_KEY),
    spec("mget", Cmd::Mget, -2, RF, ALL_KEYS),
    spec("mset", Cmd::Mset, -3, W, KEY_VALUE_PAIRS),
    spec("msetnx", Cmd::Msetnx, -3, W, KEY_VALUE_PAIRS),
    spec("incr", Cmd::Incr, 2, WF, ONE_KEY),
    spec("decr", Cmd::Decr, 2, WF, ONE_KEY),
    spec("incrby", Cmd::Incrby, 3, WF, ONE_KEY),
    spec("decrby", Cmd::Decrby, 3, WF, ONE_KEY),
    spec("incrbyfloat", Cmd::Incrbyfloat, 3, WF, ONE_KEY),
    spec("append", Cmd::Append, 3, WF, ONE_KEY),
    spec("strlen", Cmd::Strlen, 2, RF, ONE_KEY),
    spec("getrange", Cmd::Getrange, 4, R, ONE_KEY),
    spec("substr", Cmd::Getrange, 4, R, ONE_KEY),
    spec("setrange", Cmd::Setrange, 4, W, ONE_KEY),
    spec("del", Cmd::Del, -2, &["write"], ALL_KEYS),
    spec("unlink", Cmd::Del, -2, &["write", "fast"], ALL_KEYS),
    spec("exists", Cmd::Exists, -2, RF, ALL_KEYS),
    spec("expire", Cmd::Expire, -3, &["write", "fast"], ONE_KEY),
    spec("pexpire", Cmd::Pexpire, -3, &["write", "fast"], ONE_KEY),
    spec("expireat", Cmd::Expireat, -3, &["write", "fast"], ONE_KEY),
    spec("pexpireat", Cmd::Pexpireat, -3, &["write", "fast"], ONE_KEY),
    spec("ttl", Cmd::Ttl, 2, RF, ONE_KEY),
    spec("pttl", Cmd::Pttl, 2, RF, ONE_KEY),
    spec("persist", Cmd::Persist, 2, &["write", "fast"], ONE_KEY),
    spec("type", Cmd::Type, 2, RF, ONE_KEY),
    spec("keys", Cmd::Keys, 2, &["readonly"], NO_KEYS),
    spec("scan", Cmd::Scan, -2, &["readonly"], NO_KEYS),
];

static BY_NAME: LazyLock<HashMap<&'static [u8], usize>> =
    LazyLock::new(|| COMMANDS.iter().enumerate().map(|(i, s)| (s.name.as_bytes(), i)).collect());

/// The index in [`COMMANDS`] of a command name, in any letter case.
pub fn lookup(name: &[u8]) -> Option<usize> {
    const MAX: usize = 16;
    if name.len() > MAX {
        return None;
    }
    let mut lower = [0u8; MAX];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    BY_NAME.get(&*lower).copied()
}

impl Spec {
    pub fn arity_ok(&self, words: usize) -> bool {
        let words = words as i32;
        if self.arity >= 0 { words == self.arity } else { words >= -self.arity }
    }

    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_rejects_unknown_names() {
        assert_eq!(COMMANDS[lookup(b"GeT").unwrap()].cmd, Cmd::Get);
        assert_eq!(COMMANDS[lookup(b"INCRBYFLOAT").unwrap()].cmd, Cmd::Incrbyfloat);
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"a-name-longer-than-sixteen-bytes").is_none());
    }

    #[test]
    fn names_are_unique_and_lower_case() {
        let mut names: Vec<_> = COMMANDS.iter().map(|s| s.name).collect();
        assert!(names.iter().all(|n| n.len() <= 16 && *n == n.to_ascii_lowercase()));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
    }

    #[test]
    fn arity_follows_the_redis_convention() {
        let get = &COMMANDS[lookup(b"get").unwrap()];
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let del = &COMMANDS[lookup(b"del").unwrap()];
        assert!(del.arity_ok(2) && del.arity_ok(10) && !del.arity_ok(1));
    }
}
