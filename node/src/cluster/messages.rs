//! What the nodes of a datacenter say to each other about data: the cluster's requests
//! and their responses, carried by the peer transport ([`crate::peer`]) as typed
//! [`Message`]s under the kind numbers [`Kind`] lists for them.
//!
//! Records travel in their own versioned storage encoding ([`WireRecord`]), so a record
//! means the same bytes on disk and between nodes. The encoding of every message here is
//! the wire format of `PROTOCOL_VERSION` ([`crate::peer::messages::PROTOCOL_VERSION`]):
//! changing a message's shape means bumping it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Horizon;
use crate::hlc::Hlc;
use crate::peer::messages::{Kind, Message};
use crate::placement::Partition;
use crate::record::{DecodeError, Record};

/// A record in its storage encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord(pub Bytes);

impl WireRecord {
    pub fn new(record: &Record) -> Self {
        WireRecord(Bytes::from(record.encode()))
    }

    pub fn decode(&self) -> Result<Record, DecodeError> {
        Record::decode(&self.0, |dc| std::sync::Arc::from(dc))
    }
}

/// The stored records of `keys` (tombstones and expired values included).
#[derive(Debug, Serialize, Deserialize)]
pub struct Read {
    pub keys: Vec<Bytes>,
}

impl Message for Read {
    const KIND: Kind = Kind::Read;
    type Response = Vec<Option<WireRecord>>;
}

/// What a write does to one key, decided by the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Nothing: the key was read to decide, and must still be as it was.
    Keep,
    Put {
        value: Bytes,
        expires_at_ms: Option<u64>,
    },
    Delete,
}

/// One key of a [`Write`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub key: Bytes,
    /// `Some(x)`: apply only if the key's stored record has HLC `x` (`None`: no record),
    /// i.e. nothing changed since the coordinator read it. `None`: apply whatever is stored.
    pub expect: Option<Option<Hlc>>,
    pub change: Change,
    /// The newest record the coordinator found at a quorum of owners, when the primary
    /// did not hold it: the primary applies it first (last-writer-wins), so a primary that
    /// missed writes (it just joined, or was down) decides on the acknowledged state.
    pub seen: Option<WireRecord>,
}

/// Sent to a partition's primary owner: check every op's expectation, and if all hold,
/// stamp and apply the changes atomically, then replicate them to the other owners and
/// answer once `quorum` owners have them (itself included).
#[derive(Debug, Serialize, Deserialize)]
pub struct Write {
    pub ops: Vec<Op>,
    /// Acknowledgements needed, the primary's own included.
    pub quorum: u32,
    /// How long the primary may wait for replicas, in milliseconds: less than the
    /// coordinator's own deadline, so that a missed quorum is reported as such.
    pub budget_ms: u32,
}

/// The outcome of a [`Write`].
#[derive(Debug, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Applied: how many records were written and how many owners have them (the
    /// coordinator needs the counts, not the values back).
    Written { written: u32, acks: u32 },
    /// An expectation failed: nothing was written; here is what is stored now, per op.
    Conflict { current: Vec<Option<WireRecord>> },
}

impl Message for Write {
    const KIND: Kind = Kind::Write;
    type Response = WriteOutcome;
}

/// Records to apply by last-writer-wins (a replica's copy of a write). Answers once they
/// are as durable as the receiver's fsync policy promises.
#[derive(Debug, Serialize, Deserialize)]
pub struct Replicate {
    pub records: Vec<(Bytes, WireRecord)>,
}

impl Message for Replicate {
    const KIND: Kind = Kind::Replicate;
    type Response = ();
}

/// Live keys of a partition at `now_ms` matching a glob pattern (`None`: all).
#[derive(Debug, Serialize, Deserialize)]
pub struct Keys {
    pub partition: Partition,
    pub pattern: Option<Bytes>,
    pub now_ms: u64,
}

impl Message for Keys {
    const KIND: Kind = Kind::Keys;
    type Response = Vec<Bytes>;
}

/// How many live keys these partitions hold at `now_ms`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Count {
    pub partitions: Vec<Partition>,
    pub now_ms: u64,
}

impl Message for Count {
    const KIND: Kind = Kind::Count;
    type Response = u64;
}

/// A partition's records (tombstones included) with an HLC of at least `from`, in HLC
/// order, at most `limit` of them and about `max_bytes` of keys and values: how a new
/// owner copies a partition, chunk by chunk, resuming where the last chunk said.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pull {
    pub partition: Partition,
    pub from: Hlc,
    pub limit: u32,
    pub max_bytes: u32,
}

impl Message for Pull {
    const KIND: Kind = Kind::Pull;
    type Response = PullChunk;
}

/// One chunk of a partition: its records, and where the next chunk starts (`from` of the
/// next [`Pull`]), or `None` when this was the last.
#[derive(Debug, Serialize, Deserialize)]
pub struct PullChunk {
    pub records: Vec<(Bytes, WireRecord)>,
    pub next: Option<Hlc>,
}

/// A partition's records (tombstones included) after position `after` of the source's
/// change sequence ([`crate::store::Store::changes_after`]: each key once, with its current
/// record, in the order of its last change), at most `limit` of them and about
/// `max_bytes` of keys and values: how a new owner copies a partition, chunk by chunk,
/// resuming after the last chunk's `upto`. Positions are the source's own, so a copy
/// that moves to another source starts that one at 0. (A node that predates it refuses
/// the kind, and the copy falls back to [`Pull`].)
#[derive(Debug, Serialize, Deserialize)]
pub struct PullAfter {
    pub partition: Partition,
    pub after: u64,
    pub limit: u32,
    pub max_bytes: u32,
}

impl Message for PullAfter {
    const KIND: Kind = Kind::PullAfter;
    type Response = PulledAfter;
}

/// One chunk of a [`PullAfter`]: its records, the position it covers up to, and whether a
/// limit stopped it (`false`: this was the last).
#[derive(Debug, Serialize, Deserialize)]
pub struct PulledAfter {
    pub records: Vec<(Bytes, WireRecord)>,
    pub upto: u64,
    pub more: bool,
}

/// Anti-entropy: the bucket hashes of a partition's records that count at `horizon`
/// (see `cluster::repair`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Digest {
    pub partition: Partition,
    pub horizon: Horizon,
}

impl Message for Digest {
    const KIND: Kind = Kind::Digest;
    type Response = DigestAnswer;
}

/// A peer's bucket hashes, or none while it is still copying partitions it gained (its
/// copy is incomplete by design; comparing now would repeat the copy unthrottled).
#[derive(Debug, Serialize, Deserialize)]
pub enum DigestAnswer {
    Buckets(Vec<u64>),
    Copying,
}

/// Anti-entropy: the keys and HLCs of a partition's records in `buckets` that count at
/// `horizon`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Versions {
    pub partition: Partition,
    pub buckets: Vec<u8>,
    pub horizon: Horizon,
}

impl Message for Versions {
    const KIND: Kind = Kind::Versions;
    type Response = Vec<(Bytes, Hlc)>;
}

/// A [`Read`] that also asks each owner for an interest lease on the keys for `holder`,
/// which caches them (see `cache::interest`).
#[derive(Debug, Serialize, Deserialize)]
pub struct LeasedRead {
    pub keys: Vec<Bytes>,
    pub holder: u64,
    pub lease_ms: u32,
}

/// The records of a [`LeasedRead`], who granted the leases (the owner's incarnation: it
/// changes when the owner restarts and forgets them), and per key where the holder's count
/// of the partition's invalidations stands.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeasedAnswer {
    pub records: Vec<Option<WireRecord>>,
    pub incarnation: u64,
    pub seqs: Vec<u64>,
}

impl Message for LeasedRead {
    const KIND: Kind = Kind::LeasedRead;
    type Response = LeasedAnswer;
}

/// Keys that changed at `owner`, for a node holding leases on them: each with its
/// partition, its new HLC, when it was applied, and its number in the count of that
/// partition's invalidations to this holder.
#[derive(Debug, Serialize, Deserialize)]
pub struct Invalidate {
    pub owner: u64,
    pub incarnation: u64,
    pub keys: Vec<Invalidated>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidated {
    pub key: Bytes,
    pub partition: Partition,
    pub hlc: Hlc,
    pub seq: u64,
    /// When the owner applied the change (its wall clock, ms): the start of the
    /// invalidation lag the holder measures.
    pub applied_ms: u64,
}

impl Message for Invalidate {
    const KIND: Kind = Kind::Invalidate;
    type Response = ();
}

/// `holder` wants to hear of every change to keys with these prefixes for `lease_ms`
/// (its clients track them in broadcast mode). Replaces what it asked before.
#[derive(Debug, Serialize, Deserialize)]
pub struct WatchPrefixes {
    pub holder: u64,
    pub prefixes: Vec<Bytes>,
    pub lease_ms: u32,
}

impl Message for WatchPrefixes {
    const KIND: Kind = Kind::WatchPrefixes;
    type Response = ();
}

/// A pub/sub message for the receiver's own subscribers; answers how many got it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Publish {
    pub channel: Bytes,
    pub message: Bytes,
}

impl Message for Publish {
    const KIND: Kind = Kind::Publish;
    type Response = u64;
}

/// The receiver's channels with subscribers (matching `pattern`, all when `None`), with
/// their counts, and its number of pattern subscriptions (PUBSUB).
#[derive(Debug, Serialize, Deserialize)]
pub struct Channels {
    pub pattern: Option<Bytes>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelCounts {
    pub channels: Vec<(Bytes, u64)>,
    pub patterns: u64,
}

impl Message for Channels {
    const KIND: Kind = Kind::Channels;
    type Response = ChannelCounts;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::messages::{decode_header, encode_request};
    use crate::record::Origin;

    #[test]
    fn writes_round_trip_and_other_versions_are_refused() {
        let write = Write {
            ops: vec![Op {
                key: Bytes::from_static(b"k"),
                expect: Some(Some(Hlc::new(5, 1))),
                change: Change::Put { value: Bytes::from_static(b"v"), expires_at_ms: Some(9) },
                seen: None,
            }],
            quorum: 2,
            budget_ms: 1500,
        };
        let bytes = encode_request(&write).unwrap();
        let (kind, body) = decode_header(&bytes).unwrap();
        assert_eq!(kind, Kind::Write);
        let back: Write = postcard::from_bytes(body).unwrap();
        assert_eq!(back.ops, write.ops);
        assert_eq!((back.quorum, back.budget_ms), (2, 1500));
        // Versions and kinds of the header: peer::messages's tests.
    }

    /// The bytes of protocol version 2, from before the cluster's messages left `peer`:
    /// the encoding must not change without a new version.
    #[test]
    fn requests_keep_their_version_2_bytes() {
        let write = Write {
            ops: vec![Op {
                key: Bytes::from_static(b"k"),
                expect: Some(Some(Hlc::new(5, 1))),
                change: Change::Put { value: Bytes::from_static(b"v"), expires_at_ms: Some(9) },
                seen: Some(WireRecord(Bytes::from_static(b"rec"))),
            }],
            quorum: 2,
            budget_ms: 1500,
        };
        assert_eq!(
            encode_request(&write).unwrap(),
            [2, 3, 1, 1, 107, 1, 1, 129, 128, 20, 1, 1, 118, 1, 9, 1, 3, 114, 101, 99, 2, 220, 11]
        );
        let digest = Digest { partition: 17, horizon: Horizon { now_ms: 1000, tombstones_from_ms: 10 } };
        assert_eq!(encode_request(&digest).unwrap(), [2, 9, 17, 232, 7, 10]);
        let pull = Pull { partition: 3, from: Hlc::new(7, 2), limit: 1000, max_bytes: 65536 };
        assert_eq!(encode_request(&pull).unwrap(), [2, 8, 3, 130, 128, 28, 232, 7, 128, 128, 4]);
        let pull_after = PullAfter { partition: 3, after: 300, limit: 1000, max_bytes: 65536 };
        assert_eq!(encode_request(&pull_after).unwrap(), [2, 24, 3, 172, 2, 232, 7, 128, 128, 4]);
        // The connector's cursor messages, since they came.
        let positions = Positions { remote: "dc2".into() };
        assert_eq!(encode_request(&positions).unwrap(), [2, 20, 3, 100, 99, 50]);
        let ack = Acknowledge { remote: "dc2".into(), positions: vec![(7, 300)] };
        assert_eq!(encode_request(&ack).unwrap(), [2, 19, 3, 100, 99, 50, 1, 7, 172, 2]);
    }

    #[test]
    fn records_travel_in_their_storage_encoding() {
        let record = Record {
            value: Some(Bytes::from_static(b"value")),
            hlc: Hlc::new(1_700_000_000_000, 3),
            origin: Origin { datacenter: "dc1".into(), node: 42 },
            expires_at_ms: None,
        };
        let wire = WireRecord::new(&record);
        assert_eq!(&wire.0[..], &record.encode()[..]);
        assert_eq!(wire.decode().unwrap(), record);
        let truncated = WireRecord(wire.0.slice(..4));
        assert!(truncated.decode().is_err());
    }
}

/// For a connector: the last number of every partition's local change sequence at this
/// node (index = partition), so that it asks for changes only where there are some.
/// Superseded by [`Positions`] (the same with one remote's cursors); still answered for a
/// connector of the previous version. Its shape stays as it was: changing it would need a
/// new `PROTOCOL_VERSION` for every message.
#[derive(Debug, Serialize, Deserialize)]
pub struct Heads;

impl Message for Heads {
    const KIND: Kind = Kind::Heads;
    type Response = Vec<u64>;
}

/// For a connector: the partition's changes after position `after` of this node's local
/// change sequence whose origin is datacenter `origin` (the others are passed over, never
/// sent), at most `limit` records and about `max_bytes` of keys and values.
#[derive(Debug, Serialize, Deserialize)]
pub struct Changes {
    pub partition: Partition,
    pub after: u64,
    pub origin: String,
    pub limit: u32,
    pub max_bytes: u32,
}

/// The records of a [`Changes`] with their change numbers, and `upto`: the position the
/// cursor may move to once they are shipped (past records of other origins too).
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangesChunk {
    pub records: Vec<(u64, Bytes, WireRecord)>,
    pub upto: u64,
    /// A limit stopped the chunk: more changes follow `upto`.
    pub more: bool,
}

impl Message for Changes {
    const KIND: Kind = Kind::Changes;
    type Response = ChangesChunk;
}

/// For a connector: the remote datacenter `remote` acknowledged this node's changes of
/// each listed partition up to the position given (applied at a quorum there), so the
/// node keeps these as that remote's cursors (see `cluster::outbound`). A position only
/// ever moves forward: an older one than the node holds changes nothing.
#[derive(Debug, Serialize, Deserialize)]
pub struct Acknowledge {
    pub remote: String,
    pub positions: Vec<(Partition, u64)>,
}

impl Message for Acknowledge {
    const KIND: Kind = Kind::Acknowledge;
    type Response = ();
}

/// For a connector: this node's [`Heads`] and, per partition, where the remote datacenter
/// `remote` stands in them (its cursors, as acknowledged). Supersedes [`Heads`], which a
/// node still answers for a connector of the previous version.
#[derive(Debug, Serialize, Deserialize)]
pub struct Positions {
    pub remote: String,
}

/// The answer to [`Positions`]: both indexed by partition. `acked[p] <= heads[p]`: a
/// cursor past the head means the node's sequence started over (its store was lost), and
/// the node drops it before answering.
#[derive(Debug, Serialize, Deserialize)]
pub struct PositionsAnswer {
    pub heads: Vec<u64>,
    pub acked: Vec<u64>,
}

impl Message for Positions {
    const KIND: Kind = Kind::Positions;
    type Response = PositionsAnswer;
}

/// A client's write command on keys whose home is datacenter `home`, sent by a node of
/// datacenter `from`: its connector passes it to a connector of `home`, which has a node
/// there run it as if a client of its own had sent it (see `cluster::home`).
#[derive(Debug, Serialize, Deserialize)]
pub struct HomeCommand {
    pub home: String,
    pub from: String,
    /// Whether the client speaks RESP3 (the reply is encoded for it).
    pub resp3: bool,
    /// The command and its arguments, as the client sent them.
    pub args: Vec<Bytes>,
}

/// The reply to a [`HomeCommand`], in RESP, as the client is to receive it.
#[derive(Debug, Serialize, Deserialize)]
pub struct HomeReply {
    pub reply: Bytes,
}

impl Message for HomeCommand {
    const KIND: Kind = Kind::HomeCommand;
    type Response = HomeReply;
}

/// A read of keys whose home is datacenter `home`, for datacenter `from`, which caches
/// them for `lease_ms` and is to be told of their next change.
#[derive(Debug, Serialize, Deserialize)]
pub struct HomeRead {
    pub home: String,
    pub from: String,
    pub keys: Vec<Bytes>,
    pub lease_ms: u32,
}

/// The records of a [`HomeRead`], and whether the home promised to report their next
/// change (else the reader must not cache them).
#[derive(Debug, Serialize, Deserialize)]
pub struct HomeRecords {
    pub records: Vec<Option<WireRecord>>,
    pub leased: bool,
}

impl Message for HomeRead {
    const KIND: Kind = Kind::HomeRead;
    type Response = HomeRecords;
}

/// Keys of datacenter `home` that changed, for datacenter `to`, which holds leases on
/// them: from the owner to its connector, over the WAN, and to every node of `to`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HomeInvalidate {
    pub home: String,
    pub to: String,
    pub keys: Vec<Bytes>,
}

impl Message for HomeInvalidate {
    const KIND: Kind = Kind::HomeInvalidate;
    type Response = ();
}

/// The connector's long poll: the changes of `origin` in many partitions after their
/// cursors, in one request. The node answers at once when one of the partitions has a
/// number past its cursor, else when one appears, else after `wait_ms` with nothing. It
/// reads the partitions in the order given until `limit` records or `max_bytes` (one
/// larger record still comes alone); the connector rotates the order so that under a
/// steady load no partition waits behind the others. A node that predates it refuses the
/// kind: the connector then reads with [`Positions`] and [`Changes`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Follow {
    pub origin: String,
    /// (partition, cursor) of each partition followed.
    pub after: Vec<(Partition, u64)>,
    pub limit: u32,
    pub max_bytes: u32,
    pub wait_ms: u32,
}

/// What a [`Follow`] found: the head of every partition asked (in the order asked), and
/// a chunk of each partition read, in the order read.
#[derive(Debug, Serialize, Deserialize)]
pub struct Followed {
    pub heads: Vec<u64>,
    pub chunks: Vec<FollowedChunk>,
}

/// A [`ChangesChunk`] of one partition: `upto` covers every number up to it, and the
/// head when `more` is false.
#[derive(Debug, Serialize, Deserialize)]
pub struct FollowedChunk {
    pub partition: Partition,
    pub records: Vec<(u64, Bytes, WireRecord)>,
    pub upto: u64,
    pub more: bool,
}

impl Message for Follow {
    const KIND: Kind = Kind::Follow;
    type Response = Followed;
    const HELD: bool = true;
}
