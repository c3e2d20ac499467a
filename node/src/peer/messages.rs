//! What nodes say to each other over peer RPC: one typed request per stream, answered by
//! the response type its [`Message`] impl names.
//!
//! On the wire a request is `[protocol version][message kind][postcard body]` and the
//! answer is the postcard encoding of `Result<Response, Refusal>`. Records travel in their
//! own versioned storage encoding ([`WireRecord`]), so a record means the same bytes on
//! disk and between nodes. A peer that speaks another protocol version is refused with a
//! [`Refusal`] that says which versions each side speaks.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::placement::Partition;
use crate::record::{DecodeError, Record};

/// The version of the messages below. Bumped when a message changes shape; a node answers
/// requests of its own version only.
pub const PROTOCOL_VERSION: u8 = 2;

/// A request type and the response it gets.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// The kind byte that tells the receiver which message follows.
    const KIND: Kind;
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// Every request type, by its wire byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Ping = 1,
    Read = 2,
    Write = 3,
    Replicate = 4,
    Keys = 5,
    Count = 6,
    /// Several requests on one stream (see [`crate::peer`]); not a [`Message`]: its body
    /// is the list of encoded requests, its answer the list of encoded answers.
    Batch = 7,
    Pull = 8,
    Digest = 9,
    Versions = 10,
}

impl Kind {
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Ping,
            2 => Kind::Read,
            3 => Kind::Write,
            4 => Kind::Replicate,
            5 => Kind::Keys,
            6 => Kind::Count,
            7 => Kind::Batch,
            8 => Kind::Pull,
            9 => Kind::Digest,
            10 => Kind::Versions,
            _ => return None,
        })
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Replicate => "replicate",
            Kind::Keys => "keys",
            Kind::Count => "count",
            Kind::Batch => "batch",
            Kind::Pull => "pull",
            Kind::Digest => "digest",
            Kind::Versions => "versions",
        }
    }

    pub const ALL: [Kind; 10] = [
        Kind::Ping,
        Kind::Read,
        Kind::Write,
        Kind::Replicate,
        Kind::Keys,
        Kind::Count,
        Kind::Batch,
        Kind::Pull,
        Kind::Digest,
        Kind::Versions,
    ];
}

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

/// Why a peer did not do what was asked. Not a transport failure: the peer answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("peer speaks protocol version {theirs}, this node {ours}")]
    Version { ours: u8, theirs: u8 },
    #[error("unknown request kind {0}")]
    UnknownKind(u8),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("{0}")]
    Store(String),
    /// The owners needed could not be reached (the text says which and why).
    #[error("{0}")]
    Unavailable(String),
    /// This node cannot act for its cluster yet (it reaches too few of the nodes it knows,
    /// or its placement is behind): nothing was applied; the sender may try again.
    #[error("not joined yet: {0}")]
    NotJoined(String),
    /// A write was applied here but reached only `acks` of the `required` owners in time:
    /// it is kept where it was applied and may still become visible.
    #[error("write reached {acks} of the {required} owners it needs in time")]
    QuorumMissed { acks: u32, required: u32 },
}

/// Liveness and version check; answers with the peer's node id.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ping;

impl Message for Ping {
    const KIND: Kind = Kind::Ping;
    type Response = u64;
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

/// Anti-entropy: the bucket hashes of a partition's records that count at `horizon`
/// (see `cluster::repair`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Digest {
    pub partition: Partition,
    pub horizon: crate::cluster::Horizon,
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
    pub horizon: crate::cluster::Horizon,
}

impl Message for Versions {
    const KIND: Kind = Kind::Versions;
    type Response = Vec<(Bytes, Hlc)>;
}

/// Encodes a request for the wire.
pub fn encode_request<M: Message>(msg: &M) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![PROTOCOL_VERSION, M::KIND as u8];
    postcard::to_io(msg, &mut out)?;
    Ok(out)
}

/// Splits a request into its kind and body, checking the version.
pub fn decode_header(bytes: &[u8]) -> Result<(Kind, &[u8]), Refusal> {
    match bytes {
        [PROTOCOL_VERSION, kind, body @ ..] => {
            Kind::from_byte(*kind).map(|k| (k, body)).ok_or(Refusal::UnknownKind(*kind))
        }
        [theirs, ..] => Err(Refusal::Version { ours: PROTOCOL_VERSION, theirs: *theirs }),
        [] => Err(Refusal::Malformed("empty request".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;

    #[test]
    fn requests_round_trip_and_other_versions_are_refused() {
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

        let mut other = bytes.clone();
        other[0] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode_header(&other).unwrap_err(),
            Refusal::Version { ours: PROTOCOL_VERSION, theirs: PROTOCOL_VERSION + 1 }
        );
        assert_eq!(decode_header(&[PROTOCOL_VERSION, 200]).unwrap_err(), Refusal::UnknownKind(200));
        for kind in Kind::ALL {
            assert_eq!(Kind::from_byte(kind as u8), Some(kind));
        }
    }

    #[test]
    fn every_refusal_round_trips_as_a_typed_code() {
        let refusals = [
            Refusal::Version { ours: 2, theirs: 3 },
            Refusal::UnknownKind(200),
            Refusal::Malformed("bad".into()),
            Refusal::Store("disk".into()),
            Refusal::Unavailable("gone".into()),
            Refusal::NotJoined("reaches 0 of 2".into()),
            Refusal::QuorumMissed { acks: 1, required: 3 },
        ];
        for refusal in refusals {
            let bytes = postcard::to_allocvec(&Err::<(), _>(refusal.clone())).unwrap();
            let back: Result<(), Refusal> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, Err(refusal));
        }
        // The variants keep their wire indices: new ones go at the end, so a peer of the
        // same protocol version that predates them still reads the older ones.
        let encoded = |r: Refusal| postcard::to_allocvec(&Err::<(), _>(r)).unwrap();
        assert_eq!(encoded(Refusal::Version { ours: 2, theirs: 3 }), [1, 0, 2, 3]);
        assert_eq!(encoded(Refusal::Unavailable("x".into())), [1, 4, 1, b'x']);
        assert_eq!(encoded(Refusal::NotJoined("x".into())), [1, 5, 1, b'x']);
        assert_eq!(encoded(Refusal::QuorumMissed { acks: 1, required: 3 }), [1, 6, 1, 3]);
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
