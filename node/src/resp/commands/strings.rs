//! String commands: GET, SET and its variants, counters, APPEND and ranges.
//!
//! Every read-modify-write runs inside one [`Cluster::update`](crate::cluster::Cluster::update),
//! so concurrent clients never lose each other's increments or appends.

use bytes::{Bytes, BytesMut};

use super::long_double::{LongDouble, Parsed};
use super::{CmdError, CmdResult, Ctx, Flow, parse_i64, upper};
use crate::record::Record;
use crate::resp::codec;
use crate::store::Write;

/// What a write does to the key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No expiry (SET without options clears it).
    Clear,
    /// Keep the current expiry (KEEPTTL, and counters/APPEND/SETRANGE).
    Keep,
    /// Expire at this Unix-millisecond instant.
    At(u64),
}

impl Expiry {
    pub(super) fn resolve(self, current: Option<&Record>) -> Option<u64> {
        match self {
            Expiry::Clear => None,
            Expiry::Keep => current.and_then(|r| r.expires_at_ms),
            Expiry::At(at) => Some(at),
        }
    }
}

/// Parses an EX/PX/EXAT/PXAT argument into an absolute Unix-ms instant, with Redis's
/// checks: an integer, positive, and no overflow.
pub(super) fn expire_at(ctx: &Ctx<'_>, arg: &[u8], unit_ms: i64, absolute: bool) -> Result<u64, CmdError> {
    let n = parse_i64(arg)?;
    let invalid = || CmdError::invalid_expire(ctx.command);
    if n <= 0 {
        return Err(invalid());
    }
    let ms = n.checked_mul(unit_ms).ok_or_else(invalid)?;
    let at = if absolute { ms } else { ms.checked_add(ctx.now_ms as i64).ok_or_else(invalid)? };
    Ok(at as u64)
}

pub(super) async fn get(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let v = ctx.cluster().get_value(&args[1], ctx.now_ms).await?;
    ctx.bulk_or_null(v.as_deref())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Condition {
    Always,
    IfAbsent,
    IfPresent,
}

pub(super) async fn set(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let value = ctx.value(&args[2])?;
    let mut condition = Condition::Always;
    let mut expiry: Option<Expiry> = None;
    let mut return_old = false;
    let mut i = 3;
    while i < args.len() {
        let opt = upper(&args[i]);
        let next = args.get(i + 1);
        match opt.as_slice() {
            b"NX" if condition == Condition::Always => condition = Condition::IfAbsent,
            b"XX" if condition == Condition::Always => condition = Condition::IfPresent,
            b"GET" => return_old = true,
            b"KEEPTTL" if expiry.is_none() => expiry = Some(Expiry::Keep),
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if expiry.is_none() && next.is_some() => {
                let unit = if opt[0] == b'E' { 1000 } else { 1 };
                let absolute = opt.len() == 4;
                expiry = Some(Expiry::At(expire_at(ctx, next.expect("checked"), unit, absolute)?));
                i += 1;
            }
            _ => return Err(CmdError::syntax()),
        }
        i += 1;
    }
    let expiry = expiry.unwrap_or(Expiry::Clear);
    if condition == Condition::Always && !return_old && expiry != Expiry::Keep {
        let at = match expiry {
            Expiry::At(at) => Some(at),
            _ => None,
        };
        ctx.cluster().put(&args[1], value, at).await?;
        return ctx.ok();
    }
    let now = ctx.now_ms;
    let (mut applied, mut old) = (false, None);
    ctx.cluster()
        .update(&[&args[1]], |cur, stamp| {
            let current = cur[0].as_ref().filter(|r| r.is_live(now));
            old = current.and_then(|r| r.value.clone());
            applied = match condition {
                Condition::Always => true,
                Condition::IfAbsent => current.is_none(),
                Condition::IfPresent => current.is_some(),
            };
            if !applied {
                return vec![Write::Keep];
            }
            vec![stamp.put(cur[0].as_ref(), value.clone(), expiry.resolve(current))]
        })
        .await?;
    match (return_old, applied) {
        (true, _) => ctx.bulk_or_null(old.as_deref()),
        (false, true) => ctx.ok(),
        (false, false) => ctx.null(),
    }
}

pub(super) async fn setnx(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let value = ctx.value(&args[2])?;
    let now = ctx.now_ms;
    let written = ctx
        .cluster()
        .update(&[&args[1]], |cur, stamp| match &cur[0] {
            Some(r) if r.is_live(now) => vec![Write::Keep],
            other => vec![stamp.put(other.as_ref(), value.clone(), None)],
        })
        .await?;
    ctx.int(written as i64)
}

/// SETEX (unit 1000 ms) and PSETEX (unit 1 ms).
pub(super) async fn setex(ctx: &mut Ctx<'_>, args: &[Bytes], unit_ms: i64) -> CmdResult {
    let at = expire_at(ctx, &args[2], unit_ms, false)?;
    let value = ctx.value(&args[3])?;
    ctx.cluster().put(&args[1], value, Some(at)).await?;
    ctx.ok()
}

pub(super) async fn getset(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let value = ctx.value(&args[2])?;
    let now = ctx.now_ms;
    let mut old = None;
    ctx.cluster()
        .update(&[&args[1]], |cur, stamp| {
            old = cur[0].as_ref().and_then(|r| r.live_value(now)).cloned();
            vec![stamp.put(cur[0].as_ref(), value.clone(), None)]
        })
        .await?;
    ctx.bulk_or_null(old.as_deref())
}

pub(super) async fn getdel(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let now = ctx.now_ms;
    let mut old = None;
    ctx.cluster()
        .update(&[&args[1]], |cur, stamp| {
            old = cur[0].as_ref().and_then(|r| r.live_value(now)).cloned();
            vec![stamp.delete(cur[0].as_ref())]
        })
        .await?;
    ctx.bulk_or_null(old.as_deref())
}

pub(super) async fn getex(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let mut change: Option<Option<u64>> = None; // Some(None) = PERSIST, Some(Some(at)) = new expiry
    let mut i = 2;
    while i < args.len() {
        let opt = upper(&args[i]);
        let next = args.get(i + 1);
        match opt.as_slice() {
            b"PERSIST" if change.is_none() => change = Some(None),
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if change.is_none() && next.is_some() => {
                let unit = if opt[0] == b'E' { 1000 } else { 1 };
                change = Some(Some(expire_at(ctx, next.expect("checked"), unit, opt.len() == 4)?));
                i += 1;
            }
            _ => return Err(CmdError::syntax()),
        }
        i += 1;
    }
    let Some(change) = change else { return get(ctx, args).await };
    let now = ctx.now_ms;
    let mut value = None;
    ctx.cluster()
        .update(&[&args[1]], |cur, stamp| {
            let Some(r) = cur[0].as_ref().filter(|r| r.is_live(now)) else { return vec![Write::Keep] };
            value = r.value.clone();
            match change {
                None if r.expires_at_ms.is_none() => vec![Write::Keep],
                Some(at) if at <= now => vec![stamp.delete(Some(r))],
                new_expiry => vec![stamp.put(Some(r), r.value.clone().expect("live"), new_expiry)],
            }
        })
        .await?;
    ctx.bulk_or_null(value.as_deref())
}

pub(super) async fn mget(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let mut values = Vec::with_capacity(args.len() - 1);
    for key in &args[1..] {
        values.push(ctx.cluster().get_value(key, ctx.now_ms).await?);
    }
    codec::write_array_len(ctx.out, values.len());
    for v in values {
        match v {
            Some(v) => codec::write_bulk(ctx.out, &v),
            None => codec::write_null(ctx.out, ctx.proto()),
        }
    }
    Ok(Flow::Continue)
}

/// MSET, and MSETNX (`only_if_none_exist`): all keys are written in one atomic update.
pub(super) async fn mset(ctx: &mut Ctx<'_>, args: &[Bytes], only_if_none_exist: bool) -> CmdResult {
    if args.len().is_multiple_of(2) {
        return Err(CmdError::arity(ctx.command));
    }
    let pairs: Vec<(&[u8], Bytes)> = args[1..]
        .chunks(2)
        .map(|kv| Ok((&kv[0][..], ctx.value(&kv[1])?)))
        .collect::<Result<_, CmdError>>()?;
    let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| *k).collect();
    let now = ctx.now_ms;
    let written = ctx
        .cluster()
        .update(&keys, |cur, stamp| {
            if only_if_none_exist && cur.iter().any(|r| r.as_ref().is_some_and(|r| r.is_live(now))) {
                return vec![Write::Keep; cur.len()];
            }
            cur.iter().zip(&pairs).map(|(r, (_, v))| stamp.put(r.as_ref(), v.clone(), None)).collect()
        })
        .await?;
    if only_if_none_exist { ctx.int(i64::from(written > 0)) } else { ctx.ok() }
}

/// Formats an integer the way it is stored.
fn int_bytes(n: i64) -> Bytes {
    Bytes::from(n.to_string())
}

pub(super) async fn incr_by(ctx: &mut Ctx<'_>, key: &Bytes, by: i64) -> CmdResult {
    let now = ctx.now_ms;
    let mut outcome = Err(CmdError::not_integer());
    ctx.cluster()
        .update(&[key], |cur, stamp| {
            let current = cur[0].as_ref().filter(|r| r.is_live(now));
            let n = match current.and_then(|r| r.value.as_deref()) {
                Some(v) => match super::strict_i64(v) {
                    Some(n) => n,
                    None => {
                        outcome = Err(CmdError::not_integer());
                        return vec![Write::Keep];
                    }
                },
                None => 0,
            };
            let Some(next) = n.checked_add(by) else {
                outcome = Err(CmdError::new("value", "ERR increment or decrement would overflow"));
                return vec![Write::Keep];
            };
            outcome = Ok(next);
            vec![stamp.put(cur[0].as_ref(), int_bytes(next), Expiry::Keep.resolve(current))]
        })
        .await?;
    ctx.int(outcome?)
}

/// Reads an INCRBYFLOAT operand, with Redis's error for anything `string2ld` refuses.
fn parse_float(b: &[u8]) -> Result<Parsed, CmdError> {
    LongDouble::parse(b).ok_or_else(CmdError::not_float)
}

/// The sum INCRBYFLOAT stores, or Redis's error when it would not be finite.
fn float_sum(a: Parsed, b: Parsed) -> Result<LongDouble, CmdError> {
    let sum = match (a, b) {
        (Parsed::Finite(a), Parsed::Finite(b)) => a.add(b),
        _ => None,
    };
    sum.ok_or_else(|| CmdError::new("value", "ERR increment would produce NaN or Infinity"))
}

pub(super) async fn incrbyfloat(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let by = parse_float(&args[2])?;
    let now = ctx.now_ms;
    let mut outcome = Err(CmdError::not_float());
    ctx.cluster()
        .update(&[&args[1]], |cur, stamp| {
            let current = cur[0].as_ref().filter(|r| r.is_live(now));
            let n = match current.and_then(|r| r.value.as_deref()) {
                Some(v) => parse_float(v),
                None => Ok(Parsed::Finite(LongDouble::from_i64(0))),
            };
            let next = match n.and_then(|n| float_sum(n, by)) {
                Ok(next) => next,
                Err(e) => {
                    outcome = Err(e);
                    return vec![Write::Keep];
                }
            };
            let text = Bytes::from(next.to_redis_string());
            outcome = Ok(text.clone());
            vec![stamp.put(cur[0].as_ref(), text, Expiry::Keep.resolve(current))]
        })
        .await?;
    let text = outcome?;
    ctx.bulk(&text)
}

pub(super) async fn append(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let now = ctx.now_ms;
    let suffix = &args[2];
    let mut outcome = Ok(0);
    ctx.cluster()
        .update(&[&args[1]], |cur, stamp| {
            let current = cur[0].as_ref().filter(|r| r.is_live(now));
            let old = current.and_then(|r| r.value.as_deref()).unwrap_or_default();
            let len = old.len() + suffix.len();
            if let Err(e) = ctx.state.check_value_len(len) {
                outcome = Err(e);
                return vec![Write::Keep];
            }
            let mut joined = BytesMut::with_capacity(len);
            joined.extend_from_slice(old);
            joined.extend_from_slice(suffix);
            outcome = Ok(len);
            vec![stamp.put(cur[0].as_ref(), joined.freeze(), Expiry::Keep.resolve(current))]
        })
        .await?;
    ctx.int(outcome? as i64)
}

pub(super) async fn strlen(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let len = ctx.cluster().get_value(&args[1], ctx.now_ms).await?.map_or(0, |v| v.len());
    ctx.int(len as i64)
}

/// The byte range GETRANGE returns, by Redis's rules for negative and out-of-range ends.
pub(super) fn range(len: usize, start: i64, end: i64) -> Option<(usize, usize)> {
    let len = len as i64;
    if (start < 0 && end < 0 && start > end) || len == 0 {
        return None;
    }
    let start = if start < 0 { (len + start).max(0) } else { start };
    let end = if end < 0 { (len + end).max(0) } else { end.min(len - 1) };
    (start <= end).then_some((start as usize, end as usize + 1))
}

pub(super) async fn getrange(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let (start, end) = (parse_i64(&args[2])?, parse_i64(&args[3])?);
    let v = ctx.cluster().get_value(&args[1], ctx.now_ms).await?.unwrap_or_default();
    match range(v.len(), start, end) {
        Some((a, b)) => ctx.bulk(&v[a..b]),
        None => ctx.bulk(b""),
    }
}

pub(super) async fn setrange(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let offset = parse_i64(&args[2])?;
    if offset < 0 {
        return Err(CmdError::new("value", "ERR offset is out of range"));
    }
    let offset = offset as usize;
    let patch = &args[3];
    let now = ctx.now_ms;
    let mut outcome = Ok(0);
    ctx.cluster()
        .update(&[&args[1]], |cur, stamp| {
            let current = cur[0].as_ref().filter(|r| r.is_live(now));
            let old = current.and_then(|r| r.value.as_deref()).unwrap_or_default();
            if patch.is_empty() {
                outcome = Ok(old.len());
                return vec![Write::Keep];
            }
            let len = old.len().max(offset.saturating_add(patch.len()));
            if let Err(e) = ctx.state.check_value_len(len) {
                outcome = Err(e);
                return vec![Write::Keep];
            }
            let mut v = BytesMut::zeroed(len);
            v[..old.len()].copy_from_slice(old);
            v[offset..offset + patch.len()].copy_from_slice(patch);
            outcome = Ok(len);
            vec![stamp.put(cur[0].as_ref(), v.freeze(), Expiry::Keep.resolve(current))]
        })
        .await?;
    ctx.int(outcome? as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_redis() {
        // "Hello World": GETRANGE 0 3 = "Hell", -3 -1 = "rld", 0 -1 = all, 10 100 = "d".
        assert_eq!(range(11, 0, 3), Some((0, 4)));
        assert_eq!(range(11, -3, -1), Some((8, 11)));
        assert_eq!(range(11, 0, -1), Some((0, 11)));
        assert_eq!(range(11, 10, 100), Some((10, 11)));
        assert_eq!(range(11, 5, 3), None);
        assert_eq!(range(11, -1, -5), None);
        assert_eq!(range(0, 0, -1), None);
        assert_eq!(range(11, -100, 2), Some((0, 3)));
    }

    /// INCRBYFLOAT's reply for `current` (or a missing key) plus `by`.
    fn incr(current: Option<&str>, by: &str) -> Result<String, CmdError> {
        let n = current.map_or(Ok(Parsed::Finite(LongDouble::from_i64(0))), |c| parse_float(c.as_bytes()))?;
        Ok(float_sum(n, parse_float(by.as_bytes())?)?.to_redis_string())
    }

    #[test]
    fn incrbyfloat_answers_what_redis_answers() {
        // Each reply checked against redis-server 7.0 on x86-64.
        assert_eq!(incr(Some("10.50"), "0.1").unwrap(), "10.6");
        assert_eq!(incr(None, "3.0e3").unwrap(), "3000");
        assert_eq!(incr(Some("3000"), "5.0e3").unwrap(), "8000");
        assert_eq!(incr(Some("8000"), "1.1e5").unwrap(), "118000");
        assert_eq!(incr(None, "3.0e-5").unwrap(), "0.00003");
        assert_eq!(incr(Some("9223372036854775807"), "0").unwrap(), "9223372036854775807");
        assert_eq!(incr(Some("-9223372036854775808"), "0").unwrap(), "-9223372036854775808");
        assert_eq!(incr(Some("9223372036854775807"), "0.5").unwrap(), "9223372036854775807.5");
        assert_eq!(incr(Some("1e20"), "0.1").unwrap(), "100000000000000000000");
        assert_eq!(incr(None, "-0").unwrap(), "0");
        assert_eq!(incr(None, "-1e-20").unwrap(), "0");
    }

    #[test]
    fn incrbyfloat_errors_are_redis_errors() {
        let not_float = Err(CmdError::not_float());
        let not_finite = Err(CmdError::new("value", "ERR increment would produce NaN or Infinity"));
        assert_eq!(incr(Some("1.5"), "abc"), not_float);
        assert_eq!(incr(Some("abc"), "1"), not_float);
        assert_eq!(incr(Some("1.5"), "1e5000"), not_float, "overflows long double");
        assert_eq!(incr(Some("1.5"), "inf"), not_finite);
        assert_eq!(incr(Some("-inf"), "1"), not_finite);
        assert_eq!(incr(Some("1e4932"), "1e4932"), not_finite, "the sum overflows");
    }
}
