//! The stored unit: a value or a tombstone, stamped with who wrote it and when.
//!
//! Every replica and every datacenter resolves concurrent writes the same way, by
//! last-writer-wins on `(hlc, origin datacenter, origin node)`; [`Record::wins_over`] is
//! that rule and nothing else decides it. The byte encoding starts with a version marker
//! so that records written today stay readable after the format grows.

use bytes::Bytes;
use std::cmp::Ordering;
use std::sync::Arc;

use crate::hlc::Hlc;

/// Version marker of the current encoding (the first byte of every encoded record).
pub const RECORD_V1: u8 = 1;

const FLAG_TOMBSTONE: u8 = 1 << 0;
const FLAG_EXPIRY: u8 = 1 << 1;
const FIXED_HEADER: usize = 1 + 1 + 8 + 8 + 1;

/// Where a write came from: its datacenter and the node that accepted it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub datacenter: Arc<str>,
    pub node: u64,
}

/// One version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `None` is a tombstone: the key was deleted at `hlc`.
    pub value: Option<Bytes>,
    pub hlc: Hlc,
    pub origin: Origin,
    /// Absolute expiry in Unix milliseconds.
    pub expires_at_ms: Option<u64>,
}

/// Why bytes read back from disk or the wire are not a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is empty")]
    Empty,
    #[error("record encoding version {0} is not known to this build")]
    UnknownVersion(u8),
    #[error("record is truncated")]
    Truncated,
    #[error("record origin datacenter is not UTF-8")]
    BadOrigin,
    #[error("record has a tombstone with a value")]
    TombstoneWithValue,
}

impl Record {
    /// The same record stamped with another timestamp.
    pub fn with_hlc(self, hlc: Hlc) -> Record {
        Record { hlc, ..self }
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// True when the record holds a value that has not expired at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.value.is_some() && !self.is_expired(now_ms)
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// The value, if the record is live at `now_ms`.
    pub fn live_value(&self, now_ms: u64) -> Option<&Bytes> {
        if self.is_expired(now_ms) { None } else { self.value.as_ref() }
    }

    /// Last-writer-wins order. Total: two distinct writes never compare equal, because one
    /// node never issues the same HLC twice.
    pub fn lww_cmp(&self, other: &Record) -> Ordering {
        self.hlc
            .cmp(&other.hlc)
            .then_with(|| self.origin.datacenter.cmp(&other.origin.datacenter))
            .then_with(|| self.origin.node.cmp(&other.origin.node))
    }

    /// True when applying `self` over `current` changes the stored state.
    pub fn wins_over(&self, current: Option<&Record>) -> bool {
        current.is_none_or(|c| self.lww_cmp(c) == Ordering::Greater)
    }

    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER
            + self.origin.datacenter.len().min(u8::MAX as usize)
            + if self.expires_at_ms.is_some() { 8 } else { 0 }
            + self.value.as_ref().map_or(0, |v| v.len())
    }

    /// Appends the versioned encoding to `out`.
    ///
    /// Layout v1: `[1][flags][hlc u64 BE][node u64 BE][dc len u8][dc][expiry u64 BE]?[value]`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let dc = self.origin.datacenter.as_bytes();
        let dc = &dc[..dc.len().min(u8::MAX as usize)];
        let mut flags = 0;
        if self.value.is_none() {
            flags |= FLAG_TOMBSTONE;
        }
        if self.expires_at_ms.is_some() {
            flags |= FLAG_EXPIRY;
        }
        out.reserve(self.encoded_len());
        out.push(RECORD_V1);
        out.push(flags);
        out.extend_from_slice(&self.hlc.0.to_be_bytes());
        out.extend_from_slice(&self.origin.node.to_be_bytes());
        out.push(dc.len() as u8);
        out.extend_from_slice(dc);
        if let Some(at) = self.expires_at_ms {
            out.extend_from_slice(&at.to_be_bytes());
        }
        if let Some(v) = &self.value {
            out.extend_from_slice(v);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes a record. `intern` maps the origin datacenter name to a shared string (so
    /// reading millions of records does not allocate the same name millions of times).
    pub fn decode(bytes: &[u8], intern: impl FnOnce(&str) -> Arc<str>) -> Result<Record, DecodeError> {
        Ok(RecordView::parse(bytes)?.to_record(intern))
    }
}

/// A borrowed, zero-copy view of an encoded record, for the read path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub value: Option<&'a [u8]>,
    pub hlc: Hlc,
    pub datacenter: &'a str,
    pub node: u64,
    pub expires_at_ms: Option<u64>,
}

impl<'a> RecordView<'a> {
    /// The record viewed, its value copied; `intern` as in [`Record::decode`].
    pub fn to_record(&self, intern: impl FnOnce(&str) -> Arc<str>) -> Record {
        Record {
            value: self.value.map(Bytes::copy_from_slice),
            hlc: self.hlc,
            origin: Origin { datacenter: intern(self.datacenter), node: self.node },
            expires_at_ms: self.expires_at_ms,
        }
    }

    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != RECORD_V1 {
            return Err(DecodeError::UnknownVersion(version));
        }
        if bytes.len() < FIXED_HEADER {
            return Err(DecodeError::Truncated);
        }
        let flags = rest[0];
        let hlc = Hlc(u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")));
        let node = u64::from_be_bytes(bytes[10..18].try_into().expect("8 bytes"));
        let dc_len = bytes[18] as usize;
        let mut at = FIXED_HEADER;
        let dc = bytes.get(at..at + dc_len).ok_or(DecodeError::Truncated)?;
        let datacenter = std::str::from_utf8(dc).map_err(|_| DecodeError::BadOrigin)?;
        at += dc_len;
        let expires_at_ms = if flags & FLAG_EXPIRY != 0 {
            let raw = bytes.get(at..at + 8).ok_or(DecodeError::Truncated)?;
            at += 8;
            Some(u64::from_be_bytes(raw.try_into().expect("8 bytes")))
        } else {
            None
        };
        let value = if flags & FLAG_TOMBSTONE != 0 {
            if at != bytes.len() {
                return Err(DecodeError::TombstoneWithValue);
            }
            None
        } else {
            Some(&bytes[at..])
        };
        Ok(RecordView { value, hlc, datacenter, node, expires_at_ms })
    }

    /// The value, if live at `now_ms`.
    pub fn live_value(&self, now_ms: u64) -> Option<&'a [u8]> {
        match self.expires_at_ms {
            Some(at) if at <= now_ms => None,
            _ => self.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn intern(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            any::<u64>(),
            prop_oneof!["dc1", "dc2", "[a-z]{0,12}"],
            0u64..4,
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(value, hlc, dc, node, expires_at_ms)| Record {
                value: value.map(Bytes::from),
                hlc: Hlc(hlc),
                origin: Origin { datacenter: Arc::from(dc.as_str()), node },
                expires_at_ms,
            })
    }

    /// The state after applying `r` over `state`, by the LWW rule.
    fn apply(state: Option<Record>, r: &Record) -> Option<Record> {
        if r.wins_over(state.as_ref()) { Some(r.clone()) } else { state }
    }

    /// Writes drawn from a small space of identities `(hlc, origin datacenter, origin
    /// node)`, so that ties on the HLC (broken by the origin) and exact duplicates are
    /// common. One identity is one write (a node never issues the same HLC twice), so a
    /// duplicate identity carries the same value or tombstone as its first occurrence.
    fn writes(max: usize) -> impl Strategy<Value = Vec<Record>> {
        let write = (
            0u64..4,
            prop_oneof![Just("dc1"), Just("dc2")],
            0u64..3,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4)),
        );
        proptest::collection::vec(write, 1..max).prop_map(|ws| {
            let mut first: std::collections::HashMap<(u64, &str, u64), Record> = Default::default();
            ws.into_iter()
                .map(|(hlc, dc, node, value)| {
                    let record = Record {
                        value: value.map(Bytes::from),
                        hlc: Hlc(hlc),
                        origin: Origin { datacenter: Arc::from(dc), node },
                        expires_at_ms: None,
                    };
                    first.entry((hlc, dc, node)).or_insert(record).clone()
                })
                .collect()
        })
    }

    /// Merges two replicas' states, as a replica does when it is sent the other's record.
    fn merge(a: Option<Record>, b: &Option<Record>) -> Option<Record> {
        match b {
            Some(r) => apply(a, r),
            None => a,
        }
    }

    proptest! {
        #[test]
        fn lww_merge_is_commutative(rs in writes(3)) {
            let (a, b) = (Some(rs[0].clone()), rs.get(1).cloned());
            prop_assert_eq!(merge(a.clone(), &b), merge(b, &a));
        }

        #[test]
        fn lww_merge_is_associative(rs in writes(4)) {
            let at = |i: usize| rs.get(i).cloned();
            let (a, b, c) = (at(0), at(1), at(2));
            prop_assert_eq!(merge(merge(a.clone(), &b), &c), merge(a, &merge(b, &c)));
        }

        #[test]
        fn lww_merge_is_idempotent(rs in writes(2)) {
            let a = Some(rs[0].clone());
            prop_assert_eq!(merge(a.clone(), &a), a);
        }

        #[test]
        fn lww_merge_of_any_order_is_the_greatest_write(
            (rs, shuffled) in writes(10).prop_flat_map(|rs| (Just(rs.clone()), Just(rs).prop_shuffle()))
        ) {
            let winner = rs.iter().fold(None, apply);
            prop_assert_eq!(&winner, &shuffled.iter().fold(None, apply));
            // Applying everything again (a replica sent its own records back) changes nothing.
            prop_assert_eq!(&winner, &rs.iter().fold(winner.clone(), apply));
            let greatest = rs.iter().max_by(|a, b| a.lww_cmp(b)).cloned();
            prop_assert_eq!(winner, greatest);
        }

        #[test]
        fn encoding_round_trips(r in record()) {
            let bytes = r.encode();
            prop_assert_eq!(bytes.len(), r.encoded_len());
            prop_assert_eq!(Record::decode(&bytes, intern).unwrap(), r);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = RecordView::parse(&bytes);
        }

        #[test]
        fn lww_merge_converges_in_any_order(rs in proptest::collection::vec(record(), 1..8), seed in any::<u64>()) {
            let forward = rs.iter().fold(None, apply);
            let mut shuffled = rs.clone();
            // A deterministic shuffle from the seed.
            let n = shuffled.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            let other = shuffled.iter().fold(None, apply);
            prop_assert_eq!(&forward, &other);
            // Idempotent: applying everything again changes nothing.
            let again = rs.iter().fold(forward.clone(), apply);
            prop_assert_eq!(forward, again);
        }
    }

    #[test]
    fn decodes_a_v1_fixture() {
        // Bytes written by the v1 encoder; kept literal so a format change cannot slip by.
        let fixture: &[u8] = &[
            1, 0b10, 0, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 3, b'd', b'c', b'1', 0, 0, 0, 0, 0, 0,
            0x03, 0xe8, b'h', b'i',
        ];
        let r = Record::decode(fixture, intern).unwrap();
        assert_eq!(r.value.as_deref(), Some(&b"hi"[..]));
        assert_eq!(r.hlc, Hlc((1 << 16) | 2));
        assert_eq!(&*r.origin.datacenter, "dc1");
        assert_eq!(r.origin.node, 7);
        assert_eq!(r.expires_at_ms, Some(1000));
    }

    #[test]
    fn rejects_unknown_versions_and_truncation() {
        assert_eq!(RecordView::parse(&[]), Err(DecodeError::Empty));
        assert_eq!(RecordView::parse(&[9, 0]), Err(DecodeError::UnknownVersion(9)));
        assert_eq!(RecordView::parse(&[1, 0, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn expired_values_are_not_live() {
        let r = Record {
            value: Some(Bytes::from_static(b"v")),
            hlc: Hlc(1),
            origin: Origin { datacenter: intern("dc1"), node: 1 },
            expires_at_ms: Some(100),
        };
        assert!(r.is_live(99));
        assert!(!r.is_live(100));
        assert_eq!(r.live_value(100), None);
    }
}
