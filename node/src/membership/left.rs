//! Telling a graceful leave from a crash.
//!
//! foca's `leave_cluster` gossips that the leaving member is down: the same state a crash
//! ends in, so on its own the cluster cannot tell "stopped on purpose" from "died". A
//! stopping node therefore first adds a small **left notice** to foca's custom broadcasts
//! (sent in the same leave packets and passed on by every member that has not seen it
//! yet). Members remember, per node id, the newest process generation that left; the
//! member table shows a `down` member whose identity is that generation or older as `left`.
//! A restarted process has a later `started_ms`, so it is alive (and later, if it crashes,
//! `down`), never `left` because of its previous self.
//!
//! # Wire format, version 1
//!
//! One custom-broadcast item of 21 bytes (foca frames each item with its length):
//!
//! ```text
//! offset  size  field
//!      0     1  item type = 1 (left notice, version 1)
//!      1     8  node id, u64 big-endian
//!      9     8  started_ms of the leaving process, u64 big-endian
//!     17     4  renewals of its identity, u32 big-endian
//! ```
//!
//! Items of another type are ignored and not passed on, so later versions can add types.
//!
//! `receive_item` answers `None` for a notice already known (or older than one known): foca
//! stops disseminating what every member returns `None` for, so a notice travels a bounded
//! number of times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};

use super::identity::NodeIdentity;

/// The item type byte of a version-1 left notice.
pub const LEFT_V1: u8 = 1;
/// Length of a version-1 left notice.
pub const NOTICE_LEN: usize = 21;
/// Most node ids whose last leave is remembered; past it the oldest leave is forgotten.
pub const MAX_REMEMBERED: usize = 4096;

/// A process generation: `(started_ms, renewals)`, ordered as identities are.
type Generation = (u64, u32);

/// One member's leave: which node, and which process of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeftNotice {
    pub id: u64,
    pub started_ms: u64,
    pub renewals: u32,
}

impl LeftNotice {
    /// The notice for `identity` leaving.
    pub fn of(identity: &NodeIdentity) -> Self {
        LeftNotice { id: identity.id, started_ms: identity.started_ms, renewals: identity.renewals }
    }

    fn generation(&self) -> Generation {
        (self.started_ms, self.renewals)
    }

    /// The version-1 encoding.
    pub fn encode(&self) -> [u8; NOTICE_LEN] {
        let mut out = [0u8; NOTICE_LEN];
        out[0] = LEFT_V1;
        out[1..9].copy_from_slice(&self.id.to_be_bytes());
        out[9..17].copy_from_slice(&self.started_ms.to_be_bytes());
        out[17..21].copy_from_slice(&self.renewals.to_be_bytes());
        out
    }

    /// Decodes a custom-broadcast item: `Ok(None)` for an item of another type.
    pub fn decode(item: &[u8]) -> Result<Option<Self>, NoticeError> {
        match item.first() {
            Some(&LEFT_V1) => {}
            Some(_) => return Ok(None),
            None => return Err(NoticeError::Length(0)),
        }
        let bytes: &[u8; NOTICE_LEN] = item.try_into().map_err(|_| NoticeError::Length(item.len()))?;
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap_or_default());
        let renewals = u32::from_be_bytes(bytes[17..21].try_into().unwrap_or_default());
        Ok(Some(LeftNotice { id: u64_at(1), started_ms: u64_at(9), renewals }))
    }
}

/// A custom-broadcast item that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    #[error("left notice of {0} bytes instead of {NOTICE_LEN}")]
    Length(usize),
}

/// What foca keeps in its dissemination backlog: a newer leave of the same node replaces
/// an older one still being sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoticeKey(LeftNotice);

impl Invalidates for NoticeKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0.id == other.0.id && self.0.generation() >= other.0.generation()
    }
}

/// The leaves this node knows of, shared by foca's broadcast handler (the writer) and the
/// membership task (which reads it to label members). Both run on the owner task; the
/// mutex only makes the handler `Send`.
#[derive(Clone, Debug, Default)]
pub struct LeftNotices {
    known: Arc<Mutex<HashMap<u64, Generation>>>,
}

impl LeftNotices {
    /// Whether `identity` (this process of that node, or an older one) left on purpose.
    pub fn has_left(&self, identity: &NodeIdentity) -> bool {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(&identity.id).is_some_and(|left| *left >= (identity.started_ms, identity.renewals))
    }

    /// Records `notice`; false when it tells nothing new.
    fn record(&self, notice: LeftNotice) -> bool {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.get(&notice.id).is_some_and(|left| *left >= notice.generation()) {
            return false;
        }
        if known.len() >= MAX_REMEMBERED && !known.contains_key(&notice.id) {
            let oldest = known.iter().min_by_key(|(_, generation)| **generation).map(|(id, _)| *id);
            if let Some(id) = oldest {
                known.remove(&id);
            }
        }
        known.insert(notice.id, notice.generation());
        true
    }

    /// How many nodes' leaves are remembered.
    pub fn len(&self) -> usize {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no leave is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BroadcastHandler<NodeIdentity> for LeftNotices {
    type Key = NoticeKey;
    type Error = NoticeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<NoticeKey>, NoticeError> {
        let Some(notice) = LeftNotice::decode(data)? else {
            tracing::debug!(item_type = data.first().copied(), "unknown gossip broadcast item ignored");
            return Ok(None);
        };
        Ok(self.record(notice).then_some(NoticeKey(notice)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::identity::tests::identity;

    #[test]
    fn a_notice_round_trips_and_matches_its_fixture() {
        let notice = LeftNotice { id: 0x0102030405060708, started_ms: 1_700_000_000_000, renewals: 2 };
        let bytes = notice.encode();
        assert_eq!(
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "0101020304050607080000018bcfe5680000000002"
        );
        assert_eq!(LeftNotice::decode(&bytes), Ok(Some(notice)));
        assert_eq!(LeftNotice::decode(&bytes[..20]), Err(NoticeError::Length(20)));
        assert_eq!(LeftNotice::decode(&[]), Err(NoticeError::Length(0)));
        assert_eq!(LeftNotice::decode(&[9, 1, 2]), Ok(None));
    }

    #[test]
    fn duplicates_and_stale_notices_are_not_passed_on() {
        let mut handler = LeftNotices::default();
        let old = LeftNotice::of(&identity(1, 7001, 1_000));
        let new = LeftNotice::of(&identity(1, 7001, 2_000));
        assert_eq!(handler.receive_item(&new.encode(), None), Ok(Some(NoticeKey(new))));
        assert_eq!(handler.receive_item(&new.encode(), None), Ok(None));
        assert_eq!(handler.receive_item(&old.encode(), None), Ok(None));
        assert_eq!(handler.receive_item(&[7; 21], None), Ok(None));
        assert!(handler.receive_item(&[LEFT_V1; 3], None).is_err());
        assert_eq!(handler.len(), 1);
        assert!(NoticeKey(new).invalidates(&NoticeKey(old)));
        assert!(!NoticeKey(old).invalidates(&NoticeKey(new)));
        let other = LeftNotice::of(&identity(2, 7002, 5_000));
        assert!(!NoticeKey(other).invalidates(&NoticeKey(old)));
    }

    #[test]
    fn a_restarted_process_has_not_left() {
        let handler = LeftNotices::default();
        let before = identity(1, 7001, 1_000);
        assert!(!handler.has_left(&before));
        assert!(handler.record(LeftNotice::of(&before)));
        assert!(handler.has_left(&before));
        assert!(!handler.has_left(&identity(1, 7001, 2_000)));
        assert!(!handler.has_left(&identity(2, 7001, 1_000)));
    }

    #[test]
    fn memory_is_bounded() {
        let handler = LeftNotices::default();
        for id in 0..(MAX_REMEMBERED as u64 + 10) {
            handler.record(LeftNotice { id, started_ms: id, renewals: 0 });
        }
        assert_eq!(handler.len(), MAX_REMEMBERED);
        assert!(!handler.has_left(&identity(0, 7000, 0)));
        assert!(handler.has_left(&identity(MAX_REMEMBERED as u64 + 9, 7000, MAX_REMEMBERED as u64 + 9)));
    }
}
