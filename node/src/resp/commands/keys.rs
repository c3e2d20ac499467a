//! Key commands: DEL, EXISTS, expiry (EXPIRE family, TTL, PERSIST), TYPE, KEYS, SCAN.

use std::collections::HashSet;

use bytes::Bytes;

use super::strings::Expiry;
use super::{CmdError, CmdResult, Ctx, Flow, parse_i64, upper};
use crate::placement::Partition;
use crate::resp::codec;
use crate::store::Write;

pub(super) async fn del(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let keys: Vec<&[u8]> = args[1..].iter().map(|k| &k[..]).collect();
    let now = ctx.now_ms;
    let mut deleted = 0;
    ctx.cluster()
        .update(&keys, |cur, stamp| {
            let mut seen = HashSet::new();
            cur.iter()
                .zip(&keys)
                .map(|(r, k)| {
                    let first = seen.insert(*k);
                    let live = r.as_ref().filter(|r| r.is_live(now));
                    if first && live.is_some() {
                        deleted += 1;
                    }
                    if first { stamp.delete(r.as_ref()) } else { Write::Keep }
                })
                .collect()
        })
        .await?;
    ctx.int(deleted)
}

pub(super) async fn exists(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let mut n = 0;
    for key in &args[1..] {
        let r = ctx.cluster().get(key).await?;
        n += i64::from(ctx.live(&r).is_some());
    }
    ctx.int(n)
}

#[derive(Default)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

/// EXPIRE, PEXPIRE (relative) and EXPIREAT, PEXPIREAT (absolute), with NX/XX/GT/LT.
pub(super) async fn expire(ctx: &mut Ctx<'_>, args: &[Bytes], unit_ms: i64, absolute: bool) -> CmdResult {
    let mut f = ExpireFlags::default();
    for opt in &args[3..] {
        match upper(opt).as_slice() {
            b"NX" => f.nx = true,
            b"XX" => f.xx = true,
            b"GT" => f.gt = true,
            b"LT" => f.lt = true,
            _ => {
                let opt = String::from_utf8_lossy(opt);
                return Err(CmdError::new("syntax", format!("ERR Unsupported option {opt}")));
            }
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        return Err(CmdError::new(
            "syntax",
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if f.gt && f.lt {
        return Err(CmdError::new("syntax", "ERR GT and LT options at the same time are not compatible"));
    }
    let n = parse_i64(&args[2])?;
    let invalid = || CmdError::invalid_expire(ctx.command);
    let mut at = n.checked_mul(unit_ms).ok_or_else(invalid)?;
    if !absolute {
        at = at.checked_add(ctx.now_ms as i64).ok_or_else(invalid)?;
    }
    let now = ctx.now_ms;
    let mut changed = 0;
    ctx.cluster()
        .update(&[&args[1]], |cur, stamp| {
            let Some(r) = cur[0].as_ref().filter(|r| r.is_live(now)) else { return vec![Write::Keep] };
            let current = r.expires_at_ms.map(|c| c as i64);
            let allowed = !(f.nx && current.is_some()
                || f.xx && current.is_none()
                || f.gt && current.is_none_or(|c| at <= c)
                || f.lt && current.is_some_and(|c| at >= c));
            if !allowed {
                return vec![Write::Keep];
            }
            changed = 1;
            if at <= now as i64 {
                vec![stamp.delete(Some(r))]
            } else {
                vec![stamp.put(Some(r), r.value.clone().expect("live"), Some(at as u64))]
            }
        })
        .await?;
    ctx.int(changed)
}

/// TTL (unit 1000 ms, rounded) and PTTL (unit 1 ms).
pub(super) async fn ttl(ctx: &mut Ctx<'_>, args: &[Bytes], unit_ms: u64) -> CmdResult {
    let r = ctx.cluster().get(&args[1]).await?;
    let now = ctx.now_ms;
    let reply = match r.as_ref().filter(|r| r.is_live(now)) {
        None => -2,
        Some(r) => match r.expires_at_ms {
            None => -1,
            Some(at) => {
                let left = at.saturating_sub(now);
                ((left + unit_ms / 2) / unit_ms) as i64
            }
        },
    };
    ctx.int(reply)
}

pub(super) async fn persist(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let now = ctx.now_ms;
    let written = ctx
        .cluster()
        .update(&[&args[1]], |cur, stamp| match cur[0].as_ref().filter(|r| r.is_live(now)) {
            Some(r) if r.expires_at_ms.is_some() => {
                vec![stamp.put(Some(r), r.value.clone().expect("live"), Expiry::Clear.resolve(Some(r)))]
            }
            _ => vec![Write::Keep],
        })
        .await?;
    ctx.int(written as i64)
}

pub(super) async fn type_of(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let r = ctx.cluster().get(&args[1]).await?;
    let name = if ctx.live(&r).is_some() { "string" } else { "none" };
    codec::write_simple(ctx.out, name);
    Ok(Flow::Continue)
}

/// Live keys of one partition that match `pattern`, from an owner of the partition.
async fn partition_keys(
    ctx: &Ctx<'_>,
    p: Partition,
    pattern: Option<&[u8]>,
    into: &mut Vec<Bytes>,
) -> Result<(), CmdError> {
    into.extend(ctx.cluster().keys(p, pattern, ctx.now_ms).await?);
    Ok(())
}

fn write_keys(ctx: &mut Ctx<'_>, keys: &[Bytes]) {
    codec::write_array_len(ctx.out, keys.len());
    for k in keys {
        codec::write_bulk(ctx.out, k);
    }
}

pub(super) async fn keys(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let pattern = (&args[1][..] != b"*").then_some(&args[1][..]);
    let mut found = Vec::new();
    for p in 0..ctx.cluster().partitions() {
        partition_keys(ctx, p, pattern, &mut found).await?;
    }
    write_keys(ctx, &found);
    Ok(Flow::Continue)
}

/// SCAN walks whole partitions: the cursor is the next partition to read, so every key
/// present for the whole iteration is returned (a key may come twice only if it moves,
/// which keys never do within one node).
pub(super) async fn scan(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let cursor: u64 = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CmdError::new("value", "ERR invalid cursor"))?;
    let (mut pattern, mut count, mut type_filter) = (None, 10usize, None);
    let mut i = 2;
    while i < args.len() {
        let Some(arg) = args.get(i + 1) else { return Err(CmdError::syntax()) };
        match upper(&args[i]).as_slice() {
            b"MATCH" => pattern = Some(&arg[..]),
            b"COUNT" => {
                count =
                    usize::try_from(parse_i64(arg)?).ok().filter(|&c| c >= 1).ok_or_else(CmdError::syntax)?;
            }
            b"TYPE" => type_filter = Some(arg.to_ascii_lowercase()),
            _ => return Err(CmdError::syntax()),
        }
        i += 2;
    }
    let partitions = u64::from(ctx.cluster().partitions());
    let mut found = Vec::new();
    let mut next = cursor;
    while next < partitions && found.len() < count {
        partition_keys(ctx, next as Partition, pattern.filter(|p| *p != b"*"), &mut found).await?;
        next += 1;
    }
    if type_filter.as_deref().is_some_and(|t| t != b"string") {
        found.clear();
    }
    let next = if next >= partitions { 0 } else { next };
    codec::write_array_len(ctx.out, 2);
    codec::write_bulk(ctx.out, next.to_string().as_bytes());
    write_keys(ctx, &found);
    Ok(Flow::Continue)
}
