//! Connection commands: PING, HELLO, AUTH, SELECT, CLIENT.

use bytes::Bytes;

use super::{CmdError, CmdResult, Ctx, Flow, upper};
use crate::resp::codec::{self, Protocol};
use crate::resp::tracking::Options;

pub(super) fn ping(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    if ctx.session.subscriptions > 0 && ctx.session.protocol == Protocol::Resp2 {
        // In pub/sub mode a RESP2 reply must look like a message.
        if args.len() > 2 {
            return Err(CmdError::arity("ping"));
        }
        codec::write_array_len(ctx.out, 2);
        codec::write_bulk(ctx.out, b"pong");
        codec::write_bulk(ctx.out, args.get(1).map_or(&b""[..], |a| &a[..]));
        return Ok(Flow::Continue);
    }
    match args.len() {
        1 => {
            codec::write_simple(ctx.out, "PONG");
            Ok(Flow::Continue)
        }
        2 => ctx.bulk(&args[1]),
        _ => Err(CmdError::arity("ping")),
    }
}

/// Checks a password against `client_password` and marks the session authenticated.
fn authenticate(ctx: &mut Ctx<'_>, user: Option<&[u8]>, password: &[u8]) -> Result<(), CmdError> {
    let Some(expected) = ctx.state.password.as_deref() else {
        return Err(CmdError::new(
            "auth",
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        ));
    };
    let user_ok = user.is_none_or(|u| u == b"default");
    if user_ok && constant_time_eq(expected.as_bytes(), password) {
        ctx.session.authenticated = true;
        Ok(())
    } else {
        Err(CmdError::new("auth", "WRONGPASS invalid username-password pair or user is disabled."))
    }
}

/// Compares without an early exit, so response time does not leak how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn auth(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    match args.len() {
        2 => authenticate(ctx, None, &args[1])?,
        3 => authenticate(ctx, Some(&args[1]), &args[2])?,
        _ => return Err(CmdError::syntax()),
    }
    ctx.ok()
}

pub(super) fn hello(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let mut protocol = ctx.session.protocol;
    let mut name = None;
    if let Some(v) = args.get(1) {
        let v = super::strict_i64(v).ok_or_else(|| {
            CmdError::new("value", "ERR Protocol version is not an integer or out of range")
        })?;
        protocol = match v {
            2 => Protocol::Resp2,
            3 => Protocol::Resp3,
            _ => return Err(CmdError::new("noproto", "NOPROTO unsupported protocol version")),
        };
    }
    let mut i = 2;
    while i < args.len() {
        match upper(&args[i]).as_slice() {
            b"AUTH" if i + 2 < args.len() => {
                authenticate(ctx, Some(&args[i + 1]), &args[i + 2])?;
                i += 3;
            }
            b"SETNAME" if i + 1 < args.len() => {
                name = Some(valid_client_name(&args[i + 1])?);
                i += 2;
            }
            _ => {
                let opt = String::from_utf8_lossy(&args[i]);
                return Err(CmdError::new("syntax", format!("ERR Syntax error in HELLO option '{opt}'")));
            }
        }
    }
    if !ctx.session.authenticated {
        return Err(CmdError::new(
            "auth",
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time",
        ));
    }
    if let Some(name) = name {
        ctx.session.name = name;
    }
    ctx.session.protocol = protocol;
    ctx.session.outbox.set_protocol(protocol);
    let p = protocol;
    let out = &mut *ctx.out;
    codec::write_map_len(out, p, 8);
    codec::write_bulk(out, b"server");
    codec::write_bulk(out, b"redis");
    codec::write_bulk(out, b"version");
    codec::write_bulk(out, crate::REDIS_COMPAT_VERSION.as_bytes());
    codec::write_bulk(out, b"proto");
    codec::write_integer(out, if p == Protocol::Resp3 { 3 } else { 2 });
    codec::write_bulk(out, b"id");
    codec::write_integer(out, ctx.session.id as i64);
    codec::write_bulk(out, b"mode");
    codec::write_bulk(out, b"standalone");
    codec::write_bulk(out, b"role");
    codec::write_bulk(out, b"master");
    codec::write_bulk(out, b"modules");
    codec::write_array_len(out, 0);
    codec::write_bulk(out, b"opencluster_version");
    codec::write_bulk(out, crate::VERSION.as_bytes());
    Ok(Flow::Continue)
}

pub(super) fn select(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    match super::parse_i64(&args[1])? {
        0 => ctx.ok(),
        _ => Err(CmdError::new("value", "ERR DB index is out of range")),
    }
}

/// A client name may not contain spaces, newlines or other special characters; empty
/// clears it.
fn valid_client_name(name: &Bytes) -> Result<Option<Bytes>, CmdError> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(CmdError::new(
            "value",
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok((!name.is_empty()).then(|| name.clone()))
}

pub(super) fn client(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let sub = upper(&args[1]);
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(CmdError::arity(&format!("client|{}", String::from_utf8_lossy(&sub).to_lowercase())))
        }
    };
    match sub.as_slice() {
        b"ID" => {
            arity(2)?;
            ctx.int(ctx.session.id as i64)
        }
        b"GETNAME" => {
            arity(2)?;
            let name = ctx.session.name.clone();
            ctx.bulk_or_null(name.as_deref())
        }
        b"SETNAME" => {
            arity(3)?;
            ctx.session.name = valid_client_name(&args[2])?;
            ctx.ok()
        }
        b"SETINFO" => {
            arity(4)?;
            let value = Some(args[3].clone());
            match upper(&args[2]).as_slice() {
                b"LIB-NAME" => ctx.session.lib_name = value,
                b"LIB-VER" => ctx.session.lib_version = value,
                _ => {
                    let attr = String::from_utf8_lossy(&args[2]);
                    return Err(CmdError::new("syntax", format!("ERR Unrecognized option '{attr}'")));
                }
            }
            ctx.ok()
        }
        b"INFO" => {
            arity(2)?;
            let line = client_info_line(ctx);
            codec::write_verbatim(ctx.out, ctx.session.protocol, "txt", line.as_bytes());
            Ok(Flow::Continue)
        }
        b"TRACKING" => tracking(ctx, args),
        b"CACHING" => {
            arity(3)?;
            caching(ctx, &args[2])
        }
        b"TRACKINGINFO" => {
            arity(2)?;
            tracking_info(ctx)
        }
        b"GETREDIR" => {
            arity(2)?;
            let redirect = match &ctx.session.tracking {
                None => -1,
                Some(o) => o.redirect.map_or(0, |id| id as i64),
            };
            ctx.int(redirect)
        }
        b"NO-EVICT" | b"NO-TOUCH" => {
            arity(3)?;
            ctx.ok()
        }
        _ => {
            let sub = String::from_utf8_lossy(&args[1]);
            Err(CmdError::new("syntax", format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP.")))
        }
    }
}

fn client_info_line(ctx: &Ctx<'_>) -> String {
    let s = &*ctx.session;
    let text = |b: &Option<Bytes>| b.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
    format!(
        "id={} addr={} name={} age={} db=0 resp={} lib-name={} lib-ver={}\n",
        s.id,
        s.peer,
        text(&s.name),
        s.connected_at.elapsed().as_secs(),
        if s.protocol == Protocol::Resp3 { 3 } else { 2 },
        text(&s.lib_name),
        text(&s.lib_version),
    )
}

/// `CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP]`.
fn tracking(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    if args.len() < 3 {
        return Err(CmdError::arity("client|tracking"));
    }
    let on = match upper(&args[2]).as_slice() {
        b"ON" => true,
        b"OFF" => false,
        _ => return Err(CmdError::syntax()),
    };
    let mut o = Options::default();
    let mut i = 3;
    while i < args.len() {
        match upper(&args[i]).as_slice() {
            b"REDIRECT" if i + 1 < args.len() => {
                let id = super::strict_i64(&args[i + 1])
                    .filter(|&id| id > 0)
                    .ok_or_else(|| CmdError::new("value", "ERR Invalid client ID"))?;
                o.redirect = Some(id as u64);
                i += 2;
            }
            b"PREFIX" if i + 1 < args.len() => {
                o.prefixes.push(args[i + 1].clone());
                i += 2;
            }
            b"BCAST" => {
                o.bcast = true;
                i += 1;
            }
            b"OPTIN" => {
                o.optin = true;
                i += 1;
            }
            b"OPTOUT" => {
                o.optout = true;
                i += 1;
            }
            b"NOLOOP" => {
                o.noloop = true;
                i += 1;
            }
            _ => return Err(CmdError::syntax()),
        }
    }
    if !on {
        ctx.state.hub.set_tracking(ctx.session.id, None);
        ctx.session.tracking = None;
        ctx.session.caching = None;
        return ctx.ok();
    }
    if !o.prefixes.is_empty() && !o.bcast {
        return Err(CmdError::new("syntax", "ERR PREFIX option requires BCAST mode to be enabled"));
    }
    if o.bcast && (o.optin || o.optout) {
        return Err(CmdError::new("syntax", "ERR OPTIN and OPTOUT are not compatible with BCAST"));
    }
    if o.optin && o.optout {
        return Err(CmdError::new("syntax", "ERR You can't use both OPTIN and OPTOUT"));
    }
    if let Some(old) = &ctx.session.tracking
        && (old.optin != o.optin || old.optout != o.optout || old.bcast != o.bcast)
    {
        return Err(CmdError::new(
            "syntax",
            "ERR You can't switch BCAST mode on/off or OPTIN/OPTOUT mode before disabling tracking for this \
             client, and then re-enabling it with a different mode.",
        ));
    }
    if let Some((a, b)) = o.overlapping_prefixes() {
        return Err(CmdError::new(
            "syntax",
            format!(
                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b)
            ),
        ));
    }
    if let Some(id) = o.redirect
        && id != ctx.session.id
        && !ctx.state.hub.is_connected(id)
    {
        return Err(CmdError::new("value", "ERR The client ID you want redirect to does not exist"));
    }
    ctx.state.hub.set_tracking(ctx.session.id, Some(o.clone()));
    ctx.session.tracking = Some(o);
    ctx.ok()
}

/// `CLIENT CACHING YES|NO`: whether the next command's reads are tracked (OPTIN, OPTOUT).
fn caching(ctx: &mut Ctx<'_>, arg: &Bytes) -> CmdResult {
    let yes = match upper(arg).as_slice() {
        b"YES" => true,
        b"NO" => false,
        _ => return Err(CmdError::syntax()),
    };
    match &ctx.session.tracking {
        Some(o) if o.optin && yes => {}
        Some(o) if o.optout && !yes => {}
        Some(o) if o.optin => {
            return Err(CmdError::new(
                "syntax",
                "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            ));
        }
        Some(o) if o.optout => {
            return Err(CmdError::new(
                "syntax",
                "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            ));
        }
        _ => {
            return Err(CmdError::new(
                "syntax",
                "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
            ));
        }
    }
    ctx.session.caching = Some(yes);
    ctx.ok()
}

/// `CLIENT TRACKINGINFO`: flags, redirect and prefixes, as Redis reports them.
fn tracking_info(ctx: &mut Ctx<'_>) -> CmdResult {
    let p = ctx.session.protocol;
    let mut flags: Vec<&str> = Vec::new();
    let (redirect, prefixes) = match &ctx.session.tracking {
        None => {
            flags.push("off");
            (-1, Vec::new())
        }
        Some(o) => {
            flags.push("on");
            for (set, name) in
                [(o.bcast, "bcast"), (o.optin, "optin"), (o.optout, "optout"), (o.noloop, "noloop")]
            {
                if set {
                    flags.push(name);
                }
            }
            match ctx.session.caching {
                Some(true) => flags.push("caching-yes"),
                Some(false) => flags.push("caching-no"),
                None => {}
            }
            if let Some(id) = o.redirect
                && id != ctx.session.id
                && !ctx.state.hub.is_connected(id)
            {
                flags.push("broken_redirect");
            }
            (o.redirect.map_or(0, |id| id as i64), o.prefixes.clone())
        }
    };
    let out = &mut *ctx.out;
    codec::write_map_len(out, p, 3);
    codec::write_bulk(out, b"flags");
    codec::write_set_len(out, p, flags.len());
    for f in flags {
        codec::write_bulk(out, f.as_bytes());
    }
    codec::write_bulk(out, b"redirect");
    codec::write_integer(out, redirect);
    codec::write_bulk(out, b"prefixes");
    codec::write_array_len(out, prefixes.len());
    for prefix in prefixes {
        codec::write_bulk(out, &prefix);
    }
    Ok(Flow::Continue)
}

/// RESET: back to a fresh connection's state (RESP2, no name, no subscriptions, no
/// tracking; authenticated again only where no password is needed).
pub(super) fn reset(ctx: &mut Ctx<'_>) -> CmdResult {
    let s = &mut *ctx.session;
    let hub = &ctx.state.hub;
    for pattern in [false, true] {
        for name in hub.names_of(s.id, pattern) {
            hub.unsubscribe(s.id, &name, pattern);
        }
    }
    hub.set_tracking(s.id, None);
    s.subscriptions = 0;
    s.tracking = None;
    s.caching = None;
    s.name = None;
    s.protocol = Protocol::Resp2;
    s.outbox.set_protocol(Protocol::Resp2);
    s.authenticated = s.authenticated && (s.peer == "unix" || ctx.state.password.is_none());
    codec::write_simple(ctx.out, "RESET");
    Ok(Flow::Continue)
}
