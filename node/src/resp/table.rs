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
    Reset,
    // Pub/sub.
    Subscribe,
    Unsubscribe,
    Psubscribe,
    Punsubscribe,
    Publish,
    Pubsub,
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
    /// The Redis command group (string, generic, connection, server), for COMMAND DOCS.
    pub group: &'static str,
    pub summary: &'static str,
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
    group: &'static str,
    summary: &'static str,
) -> Spec {
    Spec { name, cmd, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2, group, summary }
}

const NO_KEYS: (i32, i32, i32) = (0, 0, 0);
const ONE_KEY: (i32, i32, i32) = (1, 1, 1);
const ALL_KEYS: (i32, i32, i32) = (1, -1, 1);
const KEY_VALUE_PAIRS: (i32, i32, i32) = (1, -1, 2);

const PUBSUB: &[&str] = &["pubsub", "noscript", "loading", "stale"];

pub const COMMANDS: &[Spec] = &[
    spec(
        "reset",
        Cmd::Reset,
        1,
        NOAUTH,
        NO_KEYS,
        "connection",
        "Resets the connection: protocol, name, subscriptions, tracking",
    ),
    spec(
        "subscribe",
        Cmd::Subscribe,
        -2,
        PUBSUB,
        NO_KEYS,
        "pubsub",
        "Listens for messages published to channels",
    ),
    spec("unsubscribe", Cmd::Unsubscribe, -1, PUBSUB, NO_KEYS, "pubsub", "Stops listening to channels"),
    spec(
        "psubscribe",
        Cmd::Psubscribe,
        -2,
        PUBSUB,
        NO_KEYS,
        "pubsub",
        "Listens for messages published to channels matching patterns",
    ),
    spec("punsubscribe", Cmd::Punsubscribe, -1, PUBSUB, NO_KEYS, "pubsub", "Stops listening to patterns"),
    spec(
        "publish",
        Cmd::Publish,
        3,
        &["pubsub", "loading", "stale", "fast"],
        NO_KEYS,
        "pubsub",
        "Posts a message to a channel on every node of the datacenter; returns how many received it",
    ),
    spec(
        "pubsub",
        Cmd::Pubsub,
        -2,
        PUBSUB,
        NO_KEYS,
        "pubsub",
        "Lists channels (CHANNELS), counts subscribers (NUMSUB, NUMPAT)",
    ),
    spec("ping", Cmd::Ping, -1, CONN, NO_KEYS, "connection", "Returns PONG, or the argument"),
    spec("echo", Cmd::Echo, 2, CONN, NO_KEYS, "connection", "Returns the argument"),
    spec(
        "hello",
        Cmd::Hello,
        -1,
        NOAUTH,
        NO_KEYS,
        "connection",
        "Handshakes: protocol version, authentication, client name",
    ),
    spec("auth", Cmd::Auth, -2, NOAUTH, NO_KEYS, "connection", "Authenticates the connection"),
    spec("select", Cmd::Select, 2, CONN, NO_KEYS, "connection", "Selects database 0 (the only one)"),
    spec("quit", Cmd::Quit, -1, NOAUTH, NO_KEYS, "connection", "Closes the connection"),
    spec("command", Cmd::Command, -1, &["loading", "stale"], NO_KEYS, "server", "Describes the commands"),
    spec(
        "info",
        Cmd::Info,
        -1,
        &["loading", "stale"],
        NO_KEYS,
        "server",
        "Returns information and statistics about the node",
    ),
    spec(
        "client",
        Cmd::Client,
        -2,
        &["loading", "stale"],
        NO_KEYS,
        "connection",
        "Manages the connection: ID, SETNAME, GETNAME, SETINFO, INFO, TRACKING, CACHING, TRACKINGINFO, GETREDIR",
    ),
    spec(
        "config",
        Cmd::Config,
        -2,
        &["admin", "loading", "stale"],
        NO_KEYS,
        "server",
        "Reads configuration parameters (CONFIG GET)",
    ),
    spec("time", Cmd::Time, 1, &["loading", "stale", "fast"], NO_KEYS, "server", "Returns the node's time"),
    spec("dbsize", Cmd::Dbsize, 1, RF, NO_KEYS, "server", "Returns the number of keys"),
    spec(
        "flushdb",
        Cmd::Flushdb,
        -1,
        &["write"],
        NO_KEYS,
        "server",
        "Deletes every key (only when allow_flushdb is set)",
    ),
    spec("get", Cmd::Get, 2, RF, ONE_KEY, "string", "Returns the value of a key"),
    spec(
        "set",
        Cmd::Set,
        -3,
        W,
        ONE_KEY,
        "string",
        "Sets the value of a key, with optional expiry and conditions",
    ),
    spec("setnx", Cmd::Setnx, 3, WF, ONE_KEY, "string", "Sets a key only if it does not exist"),
    spec("setex", Cmd::Setex, 4, W, ONE_KEY, "string", "Sets a key with an expiry in seconds"),
    spec("psetex", Cmd::Psetex, 4, W, ONE_KEY, "string", "Sets a key with an expiry in milliseconds"),
    spec("getset", Cmd::Getset, 3, WF, ONE_KEY, "string", "Sets a key and returns its old value"),
    spec(
        "getdel",
        Cmd::Getdel,
        2,
        &["write", "fast"],
        ONE_KEY,
        "string",
        "Returns a key's value and deletes it",
    ),
    spec(
        "getex",
        Cmd::Getex,
        -2,
        &["write", "fast"],
        ONE_KEY,
        "string",
        "Returns a key's value and changes its expiry",
    ),
    spec("mget", Cmd::Mget, -2, RF, ALL_KEYS, "string", "Returns the values of several keys"),
    spec("mset", Cmd::Mset, -3, W, KEY_VALUE_PAIRS, "string", "Sets several keys atomically"),
    spec(
        "msetnx",
        Cmd::Msetnx,
        -3,
        W,
        KEY_VALUE_PAIRS,
        "string",
        "Sets several keys atomically only if none exists",
    ),
    spec("incr", Cmd::Incr, 2, WF, ONE_KEY, "string", "Increments an integer value by one"),
    spec("decr", Cmd::Decr, 2, WF, ONE_KEY, "string", "Decrements an integer value by one"),
    spec("incrby", Cmd::Incrby, 3, WF, ONE_KEY, "string", "Increments an integer value"),
    spec("decrby", Cmd::Decrby, 3, WF, ONE_KEY, "string", "Decrements an integer value"),
    spec("incrbyfloat", Cmd::Incrbyfloat, 3, WF, ONE_KEY, "string", "Increments a floating-point value"),
    spec("append", Cmd::Append, 3, WF, ONE_KEY, "string", "Appends to a value"),
    spec("strlen", Cmd::Strlen, 2, RF, ONE_KEY, "string", "Returns the length of a value"),
    spec("getrange", Cmd::Getrange, 4, R, ONE_KEY, "string", "Returns part of a value"),
    spec("substr", Cmd::Getrange, 4, R, ONE_KEY, "string", "Returns part of a value (old name of GETRANGE)"),
    spec("setrange", Cmd::Setrange, 4, W, ONE_KEY, "string", "Overwrites part of a value"),
    spec("del", Cmd::Del, -2, &["write"], ALL_KEYS, "generic", "Deletes keys"),
    spec("unlink", Cmd::Del, -2, &["write", "fast"], ALL_KEYS, "generic", "Deletes keys"),
    spec("exists", Cmd::Exists, -2, RF, ALL_KEYS, "generic", "Counts the given keys that exist"),
    spec("expire", Cmd::Expire, -3, &["write", "fast"], ONE_KEY, "generic", "Sets a key's expiry in seconds"),
    spec(
        "pexpire",
        Cmd::Pexpire,
        -3,
        &["write", "fast"],
        ONE_KEY,
        "generic",
        "Sets a key's expiry in milliseconds",
    ),
    spec(
        "expireat",
        Cmd::Expireat,
        -3,
        &["write", "fast"],
        ONE_KEY,
        "generic",
        "Sets a key's expiry as a Unix time in seconds",
    ),
    spec(
        "pexpireat",
        Cmd::Pexpireat,
        -3,
        &["write", "fast"],
        ONE_KEY,
        "generic",
        "Sets a key's expiry as a Unix time in milliseconds",
    ),
    spec("ttl", Cmd::Ttl, 2, RF, ONE_KEY, "generic", "Returns a key's remaining time to live in seconds"),
    spec(
        "pttl",
        Cmd::Pttl,
        2,
        RF,
        ONE_KEY,
        "generic",
        "Returns a key's remaining time to live in milliseconds",
    ),
    spec("persist", Cmd::Persist, 2, &["write", "fast"], ONE_KEY, "generic", "Removes a key's expiry"),
    spec("type", Cmd::Type, 2, RF, ONE_KEY, "generic", "Returns the type of a key's value"),
    spec("keys", Cmd::Keys, 2, &["readonly"], NO_KEYS, "generic", "Returns the keys matching a pattern"),
    spec("scan", Cmd::Scan, -2, &["readonly"], NO_KEYS, "generic", "Iterates over the keys"),
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

    /// The positions of the key arguments in a command of `words` words (name included).
    pub fn key_positions(&self, words: usize) -> impl Iterator<Item = usize> + use<> {
        let (first, step) = (self.first_key, self.step.max(1));
        let last = if self.last_key < 0 { words as i32 + self.last_key } else { self.last_key };
        let last = last.min(words as i32 - 1);
        (first.max(1)..=last).step_by(step as usize).filter(move |_| first > 0).map(|i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_positions_follow_first_last_and_step() {
        let spec = |name| &COMMANDS[lookup(name).unwrap()];
        assert_eq!(spec(b"get").key_positions(2).collect::<Vec<_>>(), vec![1]);
        assert_eq!(spec(b"mget").key_positions(4).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(spec(b"mset").key_positions(5).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(spec(b"ping").key_positions(2).count(), 0);
        // A command cut short (arity is checked elsewhere) yields only the keys present.
        assert_eq!(spec(b"get").key_positions(1).count(), 0);
    }

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
