//! The envelope of peer RPC: one typed request per stream, answered by the response type
//! its [`Message`] impl names.
//!
//! On the wire a request is `[protocol version][message kind][postcard body]` and the
//! answer is the postcard encoding of `Result<Response, Refusal>`. A peer that speaks
//! another protocol version is refused with a [`Refusal`] that says which versions each
//! side speaks.
//!
//! The transport defines only the envelope, its typed refusals and its own liveness check
//! ([`Ping`]); each layer above defines its own messages (the cluster's are in
//! `cluster::messages`) and claims their kind numbers in [`Kind`], the one list that
//! keeps two layers from using the same byte.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The version of every layer's messages. Bumped when a message changes shape; a node
/// answers requests of its own version only.
pub const PROTOCOL_VERSION: u8 = 2;

/// A request type and the response it gets.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// The kind byte that tells the receiver which message follows.
    const KIND: Kind;
    type Response: Serialize + DeserializeOwned + Send + 'static;
    /// The receiver may hold the request before it answers (a long poll): it travels on a
    /// stream of its own, never in a batch, so requests queued beside it are not held too.
    const HELD: bool = false;
}

/// Every request type of every layer, by its wire byte: `Ping` and `Batch` are the
/// transport's, the others the cluster's (`cluster::messages`).
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
    LeasedRead = 11,
    Invalidate = 12,
    WatchPrefixes = 13,
    Publish = 14,
    Channels = 15,
    /// The connector's: where each partition's change sequence stands at a node.
    Heads = 16,
    /// The connector's: a partition's changes after a cursor.
    Changes = 17,
    /// Between connectors of two datacenters (the WAN): records to apply.
    Ship = 18,
    /// The connector's: a remote datacenter acknowledged a node's changes up to positions.
    Acknowledge = 19,
    /// The connector's: [`Kind::Heads`] with where one remote datacenter stands in them.
    Positions = 20,
    /// Between connectors: a `Ship` whose records are compressed (a connector that
    /// predates it refuses the kind, and the sender falls back to `Ship`).
    ShipPacked = 21,
    /// Between connectors of two datacenters: partitions' digests to compare (the
    /// backstop behind the cursors).
    Compare = 22,
    /// The connector's: the changes of many partitions after their cursors in one request,
    /// held until one of them moves (a node that predates it refuses the kind, and the
    /// connector falls back to `Positions` and `Changes`).
    Follow = 23,
    /// A chunk of a partition after a position of the source's change sequence, for
    /// rebalance (a node that predates it refuses the kind, and the copy falls back to
    /// `Pull`).
    PullAfter = 24,
    /// A client's write command on a key of another datacenter's `home` keyspace, on its
    /// way to that datacenter (node -> connector -> WAN -> connector -> node), run there.
    HomeCommand = 30,
    /// A read of home keys from another datacenter, with a lease: the home datacenter
    /// tells the reader's datacenter when the keys change.
    HomeRead = 31,
    /// Home keys that changed, on their way to a datacenter that holds leases on them.
    HomeInvalidate = 32,
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
            11 => Kind::LeasedRead,
            12 => Kind::Invalidate,
            13 => Kind::WatchPrefixes,
            14 => Kind::Publish,
            15 => Kind::Channels,
            16 => Kind::Heads,
            17 => Kind::Changes,
            18 => Kind::Ship,
            19 => Kind::Acknowledge,
            20 => Kind::Positions,
            21 => Kind::ShipPacked,
            22 => Kind::Compare,
            23 => Kind::Follow,
            24 => Kind::PullAfter,
            30 => Kind::HomeCommand,
            31 => Kind::HomeRead,
            32 => Kind::HomeInvalidate,
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
            Kind::LeasedRead => "leased_read",
            Kind::Invalidate => "invalidate",
            Kind::WatchPrefixes => "watch_prefixes",
            Kind::Publish => "publish",
            Kind::Channels => "channels",
            Kind::Heads => "heads",
            Kind::Changes => "changes",
            Kind::Ship => "ship",
            Kind::Acknowledge => "acknowledge",
            Kind::Positions => "positions",
            Kind::ShipPacked => "ship_packed",
            Kind::Compare => "compare",
            Kind::Follow => "follow",
            Kind::PullAfter => "pull_after",
            Kind::HomeCommand => "home_command",
            Kind::HomeRead => "home_read",
            Kind::HomeInvalidate => "home_invalidate",
        }
    }

    pub const ALL: [Kind; 27] = [
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
        Kind::LeasedRead,
        Kind::Invalidate,
        Kind::WatchPrefixes,
        Kind::Publish,
        Kind::Channels,
        Kind::Heads,
        Kind::Changes,
        Kind::Ship,
        Kind::Acknowledge,
        Kind::Positions,
        Kind::ShipPacked,
        Kind::Compare,
        Kind::Follow,
        Kind::PullAfter,
        Kind::HomeCommand,
        Kind::HomeRead,
        Kind::HomeInvalidate,
    ];
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

    #[test]
    fn requests_round_trip_and_other_versions_are_refused() {
        let bytes = encode_request(&Ping).unwrap();
        assert_eq!(bytes, [PROTOCOL_VERSION, Kind::Ping as u8]);
        let (kind, body) = decode_header(&bytes).unwrap();
        assert_eq!(kind, Kind::Ping);
        let _: Ping = postcard::from_bytes(body).unwrap();

        let mut other = bytes.clone();
        other[0] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode_header(&other).unwrap_err(),
            Refusal::Version { ours: PROTOCOL_VERSION, theirs: PROTOCOL_VERSION + 1 }
        );
        assert_eq!(decode_header(&[PROTOCOL_VERSION, 200]).unwrap_err(), Refusal::UnknownKind(200));
        assert_eq!(decode_header(&[]).unwrap_err(), Refusal::Malformed("empty request".into()));
        for kind in Kind::ALL {
            assert_eq!(Kind::from_byte(kind as u8), Some(kind));
        }
        // The kind numbers are the wire format: they never change.
        let numbers: Vec<u8> = Kind::ALL.iter().map(|&k| k as u8).collect();
        assert_eq!(numbers, (1..=24).chain(30..=32).collect::<Vec<u8>>());
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
}
