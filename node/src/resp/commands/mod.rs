//! Executing client commands: checks common to every command (known name, arity,
//! authentication, size limits), then the handler, then metrics.
//!
//! Handlers write their success reply straight into the connection's output buffer and
//! return a [`CmdError`] for an error reply; errors are worded as Redis words them so
//! that clients and their tests see no difference.

mod connection;
mod keys;
mod long_double;
mod pubsub;
mod server;
mod strings;

use std::borrow::Cow;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::codec::{self, Protocol, Request};
use super::server::ServerState;
use super::table::{COMMANDS, Cmd, lookup};
use crate::cluster::{Cluster, DataError};
use crate::hlc::unix_ms;
use crate::record::Record;

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Write what is buffered, then close (QUIT).
    Close,
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub protocol: Protocol,
    pub authenticated: bool,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_version: Option<Bytes>,
    pub peer: String,
    pub connected_at: Instant,
    /// Where pub/sub messages and invalidations for this connection are queued.
    pub outbox: std::sync::Arc<crate::resp::outbox::Outbox>,
    /// Channels and patterns subscribed to (RESP2 connections are in pub/sub mode while
    /// it is not zero).
    pub subscriptions: usize,
    /// How this connection tracks keys (`CLIENT TRACKING`), if it does.
    pub tracking: Option<crate::resp::tracking::Options>,
    /// `CLIENT CACHING yes|no`: applies to the next command only.
    pub caching: Option<bool>,
}

impl Session {
    /// Whether the keys a read-only command reads now are remembered for this client.
    fn tracks_this_read(&self) -> bool {
        match &self.tracking {
            None => false,
            Some(o) if o.bcast => false,
            Some(o) if o.optin => self.caching == Some(true),
            Some(o) if o.optout => self.caching != Some(false),
            Some(_) => true,
        }
    }
}

/// An error reply: the full text Redis would send (with its prefix, e.g. `ERR`), and a
/// short kind for the error metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    pub kind: &'static str,
    pub message: Cow<'static, str>,
}

pub type CmdResult = Result<Flow, CmdError>;

impl CmdError {
    pub fn new(kind: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        CmdError { kind, message: message.into() }
    }
    pub fn syntax() -> Self {
        Self::new("syntax", "ERR syntax error")
    }
    pub fn not_integer() -> Self {
        Self::new("value", "ERR value is not an integer or out of range")
    }
    pub fn not_float() -> Self {
        Self::new("value", "ERR value is not a valid float")
    }
    pub fn invalid_expire(command: &str) -> Self {
        Self::new("value", format!("ERR invalid expire time in '{command}' command"))
    }
    pub fn arity(command: &str) -> Self {
        Self::new("arity", format!("ERR wrong number of arguments for '{command}' command"))
    }
    pub fn too_large(what: &str, len: usize, setting: &str, limit: usize) -> Self {
        Self::new("limit", format!("ERR {what} too large ({len} bytes; {setting} is {limit})"))
    }
}

impl From<DataError> for CmdError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Store(_) => CmdError::new("store", format!("ERR {e}")),
            DataError::NotDurable(_) => CmdError::new("durability", format!("ERR {e}")),
            DataError::Unavailable(_) | DataError::QuorumMissed { .. } => {
                CmdError::new("cluster", format!("CLUSTERDOWN {e}"))
            }
            DataError::HomeUnavailable(_) => CmdError::new("home", format!("TRYAGAIN {e}")),
        }
    }
}

/// Everything a handler needs: the node, the session, where to write, and the time the
/// command started (one clock reading per command, so expiry checks agree).
pub struct Ctx<'a> {
    pub state: &'a ServerState,
    pub session: &'a mut Session,
    pub out: &'a mut BytesMut,
    pub now_ms: u64,
    pub command: &'static str,
}

impl Ctx<'_> {
    fn cluster(&self) -> &Cluster {
        &self.state.cluster
    }
    fn proto(&self) -> Protocol {
        self.session.protocol
    }
    fn ok(&mut self) -> CmdResult {
        codec::write_simple(self.out, "OK");
        Ok(Flow::Continue)
    }
    fn null(&mut self) -> CmdResult {
        codec::write_null(self.out, self.session.protocol);
        Ok(Flow::Continue)
    }
    fn int(&mut self, n: i64) -> CmdResult {
        codec::write_integer(self.out, n);
        Ok(Flow::Continue)
    }
    fn bulk(&mut self, b: &[u8]) -> CmdResult {
        codec::write_bulk(self.out, b);
        Ok(Flow::Continue)
    }
    fn bulk_or_null(&mut self, b: Option<&[u8]>) -> CmdResult {
        match b {
            Some(b) => self.bulk(b),
            None => self.null(),
        }
    }
    /// The live value of a stored record, at this command's time.
    fn live<'r>(&self, r: &'r Option<Record>) -> Option<&'r Bytes> {
        r.as_ref().and_then(|r| r.live_value(self.now_ms))
    }
    /// A value argument, checked against `limits.max_value_bytes`.
    fn value(&self, arg: &Bytes) -> Result<Bytes, CmdError> {
        self.state.check_value_len(arg.len())?;
        Ok(arg.clone())
    }
}

/// Runs one request and appends its reply to `out`.
pub async fn execute(state: &ServerState, session: &mut Session, req: Request, out: &mut BytesMut) -> Flow {
    let args = req.args;
    let Some(name) = args.first() else { return Flow::Continue };
    let Some(index) = lookup(name) else {
        state.metrics.error("unknown_command");
        codec::write_error(out, &unknown_command(&args));
        return Flow::Continue;
    };
    let spec = &COMMANDS[index];
    let checked = if !spec.arity_ok(args.len()) {
        Err(CmdError::arity(spec.name))
    } else if !session.authenticated && !spec.flags.contains(&"no_auth") {
        Err(CmdError::new("auth", "NOAUTH Authentication required."))
    } else if let Some(len) = req.oversized {
        Err(CmdError::too_large("value", len, "limits.max_value_bytes", state.limits.max_value_bytes))
    } else {
        state.check_key_lens(spec, &args)
    };
    let checked = checked.and_then(|()| pubsub_context_allows(session, spec));
    let metrics = &state.command_metrics[index];
    let started = Instant::now();
    let result = match checked {
        Err(e) => Err(e),
        Ok(()) => {
            let id = session.id;
            let home = home_of_write(state, spec, &args);
            let mut ctx = Ctx { state, session, out, now_ms: unix_ms(), command: spec.name };
            let result = match home {
                Ok(None) => crate::cache::WRITER.scope(id, run(&mut ctx, spec.cmd, &args)).await,
                Ok(Some(home)) => {
                    crate::cache::WRITER.scope(id, forward_home(&mut ctx, spec, &home, &args)).await
                }
                Err(e) => Err(e),
            };
            if result.is_ok()
                && spec.first_key > 0
                && spec.flags.contains(&"readonly")
                && session.tracks_this_read()
            {
                let keys: Vec<Bytes> = spec.key_positions(args.len()).map(|i| args[i].clone()).collect();
                state.hub.tracked_read(id, &keys);
            }
            if spec.cmd != Cmd::Client {
                session.caching = None;
            }
            result
        }
    };
    metrics.calls.inc();
    metrics.duration.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(flow) => flow,
        Err(e) => {
            state.metrics.error(e.kind);
            codec::write_error(out, &e.message);
            Flow::Continue
        }
    }
}

async fn run(ctx: &mut Ctx<'_>, cmd: Cmd, args: &[Bytes]) -> CmdResult {
    match cmd {
        Cmd::Ping => connection::ping(ctx, args),
        Cmd::Echo => ctx.bulk(&args[1]),
        Cmd::Hello => connection::hello(ctx, args),
        Cmd::Auth => connection::auth(ctx, args),
        Cmd::Select => connection::select(ctx, args),
        Cmd::Quit => {
            ctx.ok()?;
            Ok(Flow::Close)
        }
        Cmd::Client => connection::client(ctx, args),
        Cmd::Command => server::command(ctx, args),
        Cmd::Info => server::info(ctx, args),
        Cmd::Config => server::config(ctx, args),
        Cmd::Time => server::time(ctx),
        Cmd::Reset => connection::reset(ctx),
        Cmd::Subscribe => pubsub::subscribe(ctx, args, false),
        Cmd::Psubscribe => pubsub::subscribe(ctx, args, true),
        Cmd::Unsubscribe => pubsub::unsubscribe(ctx, args, false),
        Cmd::Punsubscribe => pubsub::unsubscribe(ctx, args, true),
        Cmd::Publish => pubsub::publish(ctx, args).await,
        Cmd::Pubsub => pubsub::pubsub(ctx, args).await,
        Cmd::Dbsize => server::dbsize(ctx).await,
        Cmd::Flushdb => server::flushdb(ctx, args).await,
        Cmd::Get => strings::get(ctx, args).await,
        Cmd::Set => strings::set(ctx, args).await,
        Cmd::Setnx => strings::setnx(ctx, args).await,
        Cmd::Setex => strings::setex(ctx, args, 1000).await,
        Cmd::Psetex => strings::setex(ctx, args, 1).await,
        Cmd::Getset => strings::getset(ctx, args).await,
        Cmd::Getdel => strings::getdel(ctx, args).await,
        Cmd::Getex => strings::getex(ctx, args).await,
        Cmd::Mget => strings::mget(ctx, args).await,
        Cmd::Mset => strings::mset(ctx, args, false).await,
        Cmd::Msetnx => strings::mset(ctx, args, true).await,
        Cmd::Incr => strings::incr_by(ctx, &args[1], 1).await,
        Cmd::Decr => strings::incr_by(ctx, &args[1], -1).await,
        Cmd::Incrby => strings::incr_by(ctx, &args[1], parse_i64(&args[2])?).await,
        Cmd::Decrby => {
            let by = parse_i64(&args[2])?;
            let by =
                by.checked_neg().ok_or_else(|| CmdError::new("value", "ERR decrement would overflow"))?;
            strings::incr_by(ctx, &args[1], by).await
        }
        Cmd::Incrbyfloat => strings::incrbyfloat(ctx, args).await,
        Cmd::Append => strings::append(ctx, args).await,
        Cmd::Strlen => strings::strlen(ctx, args).await,
        Cmd::Getrange => strings::getrange(ctx, args).await,
        Cmd::Setrange => strings::setrange(ctx, args).await,
        Cmd::Del => keys::del(ctx, args).await,
        Cmd::Exists => keys::exists(ctx, args).await,
        Cmd::Expire => keys::expire(ctx, args, 1000, false).await,
        Cmd::Pexpire => keys::expire(ctx, args, 1, false).await,
        Cmd::Expireat => keys::expire(ctx, args, 1000, true).await,
        Cmd::Pexpireat => keys::expire(ctx, args, 1, true).await,
        Cmd::Ttl => keys::ttl(ctx, args, 1000).await,
        Cmd::Pttl => keys::ttl(ctx, args, 1).await,
        Cmd::Persist => keys::persist(ctx, args).await,
        Cmd::Type => keys::type_of(ctx, args).await,
        Cmd::Keys => keys::keys(ctx, args).await,
        Cmd::Scan => keys::scan(ctx, args).await,
    }
}

/// The datacenter a write command must run in when its keys' home is another one
/// (`keyspaces.home`); `None` for reads and for keys that live here.
fn home_of_write(
    state: &ServerState,
    spec: &crate::resp::table::Spec,
    args: &[Bytes],
) -> Result<Option<std::sync::Arc<str>>, CmdError> {
    if spec.first_key <= 0 || !spec.flags.contains(&"write") {
        return Ok(None);
    }
    state
        .cluster
        .home_route(spec.key_positions(args.len()).map(|i| &args[i][..]))
        .map_err(|e| CmdError::new("home", e.0))
}

/// Runs a write command in its keys' home datacenter and passes its reply on.
async fn forward_home(
    ctx: &mut Ctx<'_>,
    spec: &crate::resp::table::Spec,
    home: &str,
    args: &[Bytes],
) -> CmdResult {
    let keys: Vec<&[u8]> = spec.key_positions(args.len()).map(|i| &args[i][..]).collect();
    let resp3 = ctx.proto() == Protocol::Resp3;
    let reply = ctx.cluster().forward_home_command(home, resp3, args.to_vec(), &keys).await?;
    ctx.out.extend_from_slice(&reply);
    Ok(Flow::Continue)
}

/// Runs write commands forwarded from other datacenters for keys whose home is this one,
/// as a client of this node would (`cluster::home`).
pub struct HomeRunner {
    state: std::sync::Weak<ServerState>,
}

impl HomeRunner {
    pub fn new(state: &std::sync::Arc<ServerState>) -> Self {
        // Weak: the cluster holds the runner, and the state holds the cluster.
        HomeRunner { state: std::sync::Arc::downgrade(state) }
    }

    async fn run_one(&self, resp3: bool, args: Vec<Bytes>) -> Bytes {
        let mut out = BytesMut::new();
        let Some(state) = self.state.upgrade() else {
            codec::write_error(&mut out, "TRYAGAIN the node is shutting down");
            return out.freeze();
        };
        // Only what a node forwards: write commands on keys (anything else is a bug or a
        // mismatch of versions, refused rather than run on the other side's behalf).
        let spec = args.first().and_then(|n| lookup(n)).map(|i| &COMMANDS[i]);
        if !spec.is_some_and(|s| s.first_key > 0 && s.flags.contains(&"write")) {
            codec::write_error(&mut out, "ERR only write commands on keys are run for another datacenter");
            return out.freeze();
        }
        // A key this datacenter thinks lives elsewhere would go back the way it came.
        if let Some(spec) = spec
            && !matches!(home_of_write(&state, spec, &args), Ok(None))
        {
            codec::write_error(
                &mut out,
                "ERR a key of this command is not in this datacenter's home keyspace here: keyspaces.home differs between datacenters",
            );
            return out.freeze();
        }
        let outbox = std::sync::Arc::new(crate::resp::outbox::Outbox::new(
            0,
            crate::resp::outbox::OutputLimits {
                hard_bytes: 0,
                soft_bytes: 0,
                soft_time: std::time::Duration::ZERO,
            },
        ));
        let mut session = Session {
            id: 0,
            protocol: if resp3 { Protocol::Resp3 } else { Protocol::Resp2 },
            authenticated: true,
            name: None,
            lib_name: None,
            lib_version: None,
            peer: "another datacenter".into(),
            connected_at: Instant::now(),
            outbox,
            subscriptions: 0,
            tracking: None,
            caching: None,
        };
        execute(&state, &mut session, Request { args, oversized: None }, &mut out).await;
        out.freeze()
    }
}

impl crate::cluster::home::HomeCommands for HomeRunner {
    fn run(&self, resp3: bool, args: Vec<Bytes>) -> crate::peer::BoxFuture<'_, Bytes> {
        Box::pin(self.run_one(resp3, args))
    }
}

/// A RESP2 connection with subscriptions may only (un)subscribe, PING, QUIT and RESET.
fn pubsub_context_allows(session: &Session, spec: &crate::resp::table::Spec) -> Result<(), CmdError> {
    let allowed = matches!(
        spec.cmd,
        Cmd::Subscribe
            | Cmd::Unsubscribe
            | Cmd::Psubscribe
            | Cmd::Punsubscribe
            | Cmd::Ping
            | Cmd::Quit
            | Cmd::Reset
    );
    if session.subscriptions > 0 && session.protocol == Protocol::Resp2 && !allowed {
        return Err(CmdError::new(
            "syntax",
            format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                spec.name
            ),
        ));
    }
    Ok(())
}

/// Redis's reply to an unknown command, quoting its first arguments.
fn unknown_command(args: &[Bytes]) -> String {
    let name = String::from_utf8_lossy(&args[0]);
    let mut quoted = String::new();
    for a in &args[1..] {
        if quoted.len() >= 128 {
            break;
        }
        let a = String::from_utf8_lossy(a);
        let room = 128 - quoted.len();
        let a: String = a.chars().take(room).collect();
        quoted.push_str(&format!("'{a}' "));
    }
    let name: String = name.chars().take(128).collect();
    format!("ERR unknown command '{name}', with args beginning with: {quoted}")
}

/// Parses an integer exactly as Redis does: optional `-`, no leading zeros, no `+`, no
/// spaces, within `i64`.
pub fn parse_i64(b: &[u8]) -> Result<i64, CmdError> {
    strict_i64(b).ok_or_else(CmdError::not_integer)
}

fn strict_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    if b == b"0" {
        return Some(0);
    }
    let (negative, digits) = match b[0] {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || !(b'1'..=b'9').contains(&digits[0]) {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if negative { n.checked_sub(d)? } else { n.checked_add(d)? };
    }
    Some(n)
}

/// An upper-cased copy of an option word, for matching.
fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_like_redis() {
        for (input, want) in [
            (&b"0"[..], Some(0)),
            (b"-1", Some(-1)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"007", None),
            (b"-0", None),
            (b"+1", None),
            (b" 1", None),
            (b"1.0", None),
            (b"", None),
            (b"-", None),
        ] {
            assert_eq!(strict_i64(input), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn unknown_commands_quote_their_arguments() {
        let args = vec![Bytes::from_static(b"foo"), Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        assert_eq!(unknown_command(&args), "ERR unknown command 'foo', with args beginning with: 'a' 'b' ");
        assert_eq!(unknown_command(&args[..1]), "ERR unknown command 'foo', with args beginning with: ");
    }
}
