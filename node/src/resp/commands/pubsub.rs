//! Pub/sub across the datacenter: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE,
//! PUBLISH and PUBSUB. Subscriptions live on the node the client is connected to; a
//! message published through any node is delivered by every node to its own subscribers
//! (`cluster::near`). Delivery is at most once, as in Redis.

use bytes::Bytes;

use super::{CmdError, CmdResult, Ctx, Flow, upper};
use crate::resp::codec::{self, Protocol};

/// The reply to each (un)subscription: `kind name count`, a push in RESP3.
fn confirm(ctx: &mut Ctx<'_>, kind: &[u8], name: Option<&[u8]>, count: usize) {
    let out = &mut *ctx.out;
    match ctx.session.protocol {
        Protocol::Resp3 => codec::write_push_len(out, 3),
        Protocol::Resp2 => codec::write_array_len(out, 3),
    }
    codec::write_bulk(out, kind);
    match name {
        Some(n) => codec::write_bulk(out, n),
        None => codec::write_null(out, ctx.session.protocol),
    }
    codec::write_integer(out, count as i64);
}

pub(super) fn subscribe(ctx: &mut Ctx<'_>, args: &[Bytes], pattern: bool) -> CmdResult {
    let kind: &[u8] = if pattern { b"psubscribe" } else { b"subscribe" };
    for name in &args[1..] {
        let count = ctx.state.hub.subscribe(ctx.session.id, name, pattern);
        ctx.session.subscriptions = count;
        confirm(ctx, kind, Some(name), count);
    }
    Ok(Flow::Continue)
}

pub(super) fn unsubscribe(ctx: &mut Ctx<'_>, args: &[Bytes], pattern: bool) -> CmdResult {
    let kind: &[u8] = if pattern { b"punsubscribe" } else { b"unsubscribe" };
    let names: Vec<Bytes> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        // All of this connection's channels (or patterns).
        let mine = ctx.state.hub.names_of(ctx.session.id, pattern);
        if mine.is_empty() {
            confirm(ctx, kind, None, ctx.session.subscriptions);
            return Ok(Flow::Continue);
        }
        mine
    };
    for name in &names {
        let count = ctx.state.hub.unsubscribe(ctx.session.id, name, pattern);
        ctx.session.subscriptions = count;
        confirm(ctx, kind, Some(name), count);
    }
    Ok(Flow::Continue)
}

pub(super) async fn publish(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let received = ctx.state.cluster.publish(&args[1], &args[2]).await;
    ctx.int(received as i64)
}

pub(super) async fn pubsub(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let sub = upper(&args[1]);
    let cluster = &ctx.state.cluster;
    match sub.as_slice() {
        b"CHANNELS" if args.len() <= 3 => {
            let (channels, _) = cluster.channels(args.get(2)).await;
            codec::write_array_len(ctx.out, channels.len());
            for (c, _) in channels {
                codec::write_bulk(ctx.out, &c);
            }
            Ok(Flow::Continue)
        }
        b"NUMSUB" => {
            let (channels, _) = cluster.channels(None).await;
            // A flat array in both protocols, as Redis answers.
            codec::write_array_len(ctx.out, 2 * (args.len() - 2));
            for name in &args[2..] {
                let n = channels.iter().find(|(c, _)| c == name).map_or(0, |(_, n)| *n);
                codec::write_bulk(ctx.out, name);
                codec::write_integer(ctx.out, n as i64);
            }
            Ok(Flow::Continue)
        }
        b"NUMPAT" if args.len() == 2 => {
            let (_, patterns) = cluster.channels(Some(&Bytes::from_static(b"\x00none"))).await;
            ctx.int(patterns as i64)
        }
        b"CHANNELS" | b"NUMPAT" => {
            Err(CmdError::arity(&format!("pubsub|{}", String::from_utf8_lossy(&sub).to_lowercase())))
        }
        _ => {
            let sub = String::from_utf8_lossy(&args[1]);
            Err(CmdError::new("syntax", format!("ERR unknown subcommand '{sub}'. Try PUBSUB HELP.")))
        }
    }
}
