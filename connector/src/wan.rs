//! What connectors of two datacenters say to each other over the WAN endpoint, and how a
//! connector answers.
//!
//! The WAN uses the same transport as the peers inside a datacenter (QUIC, mutual TLS,
//! the versioned envelope of `peer::messages`), on its own endpoint whose policy accepts
//! only connectors of this cluster in another datacenter. There is one message for records,
//! in two forms: [`Ship`], records that originated in the sender's datacenter, answered once
//! they are applied at a write quorum of their owners here, and [`ShipPacked`], the same
//! records compressed (`connector.compression`); and the backstop's [`Compare`] of
//! partitions' digests.
//!
//! A packed batch has its own message kind, so a connector that predates compression
//! refuses it as an unknown kind instead of misreading it; the sender then sends that
//! batch, and every later one, plain ([`Outgoing::send`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opencluster_node::cluster::messages::WireRecord;
use opencluster_node::config::Compression;
use opencluster_node::peer::messages::{Kind, Message, Refusal};
use opencluster_node::peer::{BoxFuture, Handler, Peers, RpcError, Target, answer, refused};
use serde::{Deserialize, Serialize};

use crate::apply::Applier;
use crate::backstop::{Compare, Compared, PARTITIONS_PER_EXCHANGE, answer_compare};
use crate::link::Link;

/// Records of datacenter `from` to apply here, with their original HLC and origin.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ship {
    pub from: String,
    pub records: Vec<(Bytes, WireRecord)>,
}

/// How many records of a [`Ship`] were applied.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShipAck {
    pub applied: u32,
}

impl Message for Ship {
    const KIND: Kind = Kind::Ship;
    type Response = ShipAck;
}

/// The bytes of keys and values in a batch, as counted for bytes sent and received.
pub fn batch_bytes(records: &[(Bytes, WireRecord)]) -> usize {
    records.iter().map(|(k, r)| k.len() + r.0.len()).sum()
}

/// [`ShipPacked::codec`] of LZ4 block compression, the only codec so far.
pub const CODEC_LZ4: u8 = 1;

/// A [`Ship`] whose records are compressed.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShipPacked {
    pub from: String,
    /// How `body` is compressed ([`CODEC_LZ4`]).
    pub codec: u8,
    /// The length of the records' encoding once decompressed.
    pub raw_len: u32,
    /// The records (`Vec<(Bytes, WireRecord)>` in postcard), compressed.
    pub body: Bytes,
}

impl Message for ShipPacked {
    const KIND: Kind = Kind::ShipPacked;
    type Response = ShipAck;
}

/// Why a packed batch could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the batch is compressed with codec {0}, which this connector does not know")]
    UnknownCodec(u8),
    #[error(
        "the batch would unpack to {raw_len} bytes, more than a batch may hold ({max}, limits.max_request_bytes)"
    )]
    TooLarge { raw_len: u32, max: usize },
    #[error("the batch does not decompress: {0}")]
    Corrupt(String),
    #[error("the batch decompressed to {got} bytes, not the {expected} it announced")]
    Length { got: usize, expected: u32 },
    #[error("the decompressed batch does not decode: {0}")]
    Decode(postcard::Error),
}

impl ShipPacked {
    /// The records it carries, if it decompresses to no more than `max_bytes`.
    pub fn unpack(self, max_bytes: usize) -> Result<Ship, UnpackError> {
        if self.codec != CODEC_LZ4 {
            return Err(UnpackError::UnknownCodec(self.codec));
        }
        if self.raw_len as usize > max_bytes {
            return Err(UnpackError::TooLarge { raw_len: self.raw_len, max: max_bytes });
        }
        // Allocates at most raw_len, checked above; the decoder stops at the end of its
        // output instead of writing past it.
        let raw = lz4_flex::block::decompress(&self.body, self.raw_len as usize)
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        if raw.len() != self.raw_len as usize {
            return Err(UnpackError::Length { got: raw.len(), expected: self.raw_len });
        }
        let records = postcard::from_bytes(&raw).map_err(UnpackError::Decode)?;
        Ok(Ship { from: self.from, records })
    }
}

/// A batch as it goes to the remote: plain, or packed when that makes it smaller.
#[derive(Debug)]
pub enum Outgoing {
    Plain(Ship),
    Packed(ShipPacked),
}

impl Outgoing {
    /// The batch of `records` from datacenter `from`, compressed as `compression` says
    /// unless the remote refused packed batches before (`plain_only`) or compressing does
    /// not make it smaller (values already compressed or encrypted).
    pub fn new(
        from: String,
        records: Vec<(Bytes, WireRecord)>,
        compression: Compression,
        plain_only: bool,
    ) -> Outgoing {
        let plain = Ship { from, records };
        if compression == Compression::None || plain_only || plain.records.is_empty() {
            return Outgoing::Plain(plain);
        }
        let raw = match postcard::to_allocvec(&plain.records) {
            Ok(raw) => raw,
            // Encoding into memory fails only past u32 lengths; the plain batch is
            // encoded again by the transport, which reports it.
            Err(_) => return Outgoing::Plain(plain),
        };
        let Ok(raw_len) = u32::try_from(raw.len()) else { return Outgoing::Plain(plain) };
        let body = lz4_flex::block::compress(&raw);
        if body.len() >= batch_bytes(&plain.records) {
            return Outgoing::Plain(plain);
        }
        Outgoing::Packed(ShipPacked { from: plain.from, codec: CODEC_LZ4, raw_len, body: Bytes::from(body) })
    }

    /// The bytes counted as sent: keys and encoded records, or their compressed form.
    pub fn wire_bytes(&self) -> usize {
        match self {
            Outgoing::Plain(s) => batch_bytes(&s.records),
            Outgoing::Packed(p) => p.body.len(),
        }
    }

    /// Sends the batch once. A remote that does not know packed batches (a connector of an
    /// older version) refuses the kind: the batch is then sent plain, and `plain_only` is
    /// set so that later batches go plain from the start.
    pub async fn send(
        &mut self,
        wan: &Peers,
        to: &Target,
        timeout: Duration,
        plain_only: &std::sync::atomic::AtomicBool,
    ) -> Result<ShipAck, RpcError> {
        if let Outgoing::Packed(packed) = self {
            match wan.call(to, &*packed, timeout).await {
                Err(RpcError::Refused { refusal: Refusal::UnknownKind(k), .. })
                    if k == Kind::ShipPacked as u8 =>
                {
                    tracing::info!(remote = %to.name, "the remote connector does not take compressed batches: sending them plain");
                    plain_only.store(true, std::sync::atomic::Ordering::Relaxed);
                    let taken = std::mem::replace(
                        packed,
                        ShipPacked { from: String::new(), codec: CODEC_LZ4, raw_len: 0, body: Bytes::new() },
                    );
                    // Our own batch, made by `new`: it unpacks.
                    let plain = taken.unpack(usize::MAX).expect("a batch packed here unpacks");
                    *self = Outgoing::Plain(plain);
                }
                other => return other,
            }
        }
        match self {
            Outgoing::Plain(ship) => wan.call(to, &*ship, timeout).await,
            Outgoing::Packed(_) => unreachable!("a packed batch was sent above"),
        }
    }
}

/// Whether a batch may be applied: it comes from the datacenter its sender's certificate
/// names, and holds only records that originated there (a datacenter ships only its own
/// changes: anything else would be a loop or an impersonation).
pub fn check_batch(peer_dc: &str, m: &Ship) -> Result<(), Refusal> {
    if peer_dc != m.from {
        return Err(Refusal::Malformed(format!(
            "a connector of datacenter {peer_dc:?} cannot ship as {:?}",
            m.from
        )));
    }
    for (key, record) in &m.records {
        let decoded = record.decode().map_err(|e| Refusal::Malformed(format!("key {key:?}: {e}")))?;
        if *decoded.origin.datacenter != *m.from {
            return Err(Refusal::Malformed(format!(
                "record of key {key:?} originated in {:?}, not in the sender {:?}",
                decoded.origin.datacenter, m.from
            )));
        }
    }
    Ok(())
}

/// Test hook: with `OPENCLUSTER_TEST_WAN_DISORDER` set, this connector refuses every fifth
/// batch it receives (the sender sends it again) and holds every third back for 300 ms
/// before applying it, so that batches sent later are acknowledged first: tests show the
/// sender's cursors still move only in sending order.
async fn disorder_for_test() -> Result<(), Refusal> {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !*ON.get_or_init(|| std::env::var_os("OPENCLUSTER_TEST_WAN_DISORDER").is_some()) {
        return Ok(());
    }
    let n = RECEIVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if n % 5 == 4 {
        return Err(Refusal::Unavailable("refused for the test (OPENCLUSTER_TEST_WAN_DISORDER)".into()));
    }
    if n.is_multiple_of(3) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Answers the other datacenters' connectors.
pub struct WanService {
    pub datacenter: String,
    pub applier: Arc<Applier>,
    /// The configured remotes, by datacenter: batches from others are refused.
    pub links: HashMap<String, Arc<Link>>,
    /// The most a packed batch may unpack to (`limits.max_request_bytes`, the most a
    /// plain one may be).
    pub max_unpacked_bytes: usize,
    /// Relays home-keyspace requests (`crate::home`).
    pub home: Arc<crate::home::HomeRelay>,
}

/// A [`WanService`] answering one connection, whose certificate names `peer_dc`.
struct FromPeer {
    service: Arc<WanService>,
    peer_dc: String,
}

impl WanService {
    async fn ship_packed(&self, m: ShipPacked, peer_dc: &str) -> Result<ShipAck, Refusal> {
        if m.from != peer_dc {
            return Err(Refusal::Malformed(format!(
                "a connector of datacenter {peer_dc:?} cannot ship as {:?}",
                m.from
            )));
        }
        let bytes = m.body.len();
        let ship = m
            .unpack(self.max_unpacked_bytes)
            .map_err(|e| Refusal::Malformed(format!("compressed batch from {peer_dc}: {e}")))?;
        self.ship(ship, peer_dc, Some(bytes)).await
    }

    /// Applies a batch; `wire_bytes` is its compressed size when it came packed.
    async fn ship(&self, m: Ship, peer_dc: &str, wire_bytes: Option<usize>) -> Result<ShipAck, Refusal> {
        check_batch(peer_dc, &m)?;
        let link = self.links.get(&m.from).ok_or_else(|| {
            Refusal::Malformed(format!(
                "datacenter {:?} is not a peer of this connector (connector.peers)",
                m.from
            ))
        })?;
        let (count, bytes) = (m.records.len(), wire_bytes.unwrap_or_else(|| batch_bytes(&m.records)));
        disorder_for_test().await?;
        if let Err(e) = self.applier.apply(m.records).await {
            link.failed(format!("applying a batch from {}: {e}", m.from), false);
            return Err(Refusal::Unavailable(e.to_string()));
        }
        link.received(count, bytes);
        Ok(ShipAck { applied: count as u32 })
    }
}

impl WanService {
    async fn compare(&self, m: Compare, peer_dc: &str) -> Result<Vec<(u16, Compared)>, Refusal> {
        if peer_dc != m.from || !self.links.contains_key(&m.from) {
            return Err(Refusal::Malformed(format!(
                "a connector of datacenter {peer_dc:?} cannot compare as {:?} (connector.peers)",
                m.from
            )));
        }
        if m.partitions.len() > PARTITIONS_PER_EXCHANGE || m.partitions.iter().any(|(_, b)| b.len() > 256) {
            return Err(Refusal::Malformed(format!("a comparison of {} partitions", m.partitions.len())));
        }
        Ok(answer_compare(&self.applier, &m).await)
    }
}

impl Handler for WanService {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        Box::pin(async move {
            match kind {
                // Batches are taken only from a connection whose certificate names their
                // datacenter (the transport asks `for_peer` first).
                Kind::Ship
                | Kind::ShipPacked
                | Kind::Compare
                | Kind::HomeCommand
                | Kind::HomeRead
                | Kind::HomeInvalidate => {
                    refused(Refusal::Malformed("a batch or comparison needs a verified peer".into()))
                }
                Kind::Ping => {
                    answer(&body, |_: opencluster_node::peer::messages::Ping| async { Ok(0u64) }).await
                }
                other => refused(Refusal::UnknownKind(other as u8)),
            }
        })
    }
}

impl WanService {
    /// Shares this service with the handlers of each connection.
    pub fn shared(self) -> Arc<WanService> {
        Arc::new(self)
    }
}

/// The handler the WAN endpoint serves: every connection gets a [`FromPeer`].
pub struct WanHandler(pub Arc<WanService>);

impl Handler for WanHandler {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        self.0.handle(kind, body)
    }

    fn for_peer(&self, peer: &opencluster_pki::PeerIdentity) -> Option<Arc<dyn Handler>> {
        Some(Arc::new(FromPeer { service: self.0.clone(), peer_dc: peer.identity.datacenter().to_string() }))
    }
}

impl Handler for FromPeer {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        Box::pin(async move {
            match kind {
                Kind::Ship => answer(&body, |m: Ship| self.service.ship(m, &self.peer_dc, None)).await,
                Kind::ShipPacked => {
                    answer(&body, |m: ShipPacked| self.service.ship_packed(m, &self.peer_dc)).await
                }
                Kind::Compare => answer(&body, |m: Compare| self.service.compare(m, &self.peer_dc)).await,
                Kind::HomeCommand | Kind::HomeRead | Kind::HomeInvalidate => {
                    self.service.home.from_remote(kind, body, &self.peer_dc).await
                }
                other => self.service.handle(other, body).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencluster_node::hlc::Hlc;
    use opencluster_node::record::{Origin, Record};

    fn record(dc: &str) -> (Bytes, WireRecord) {
        let r = Record {
            value: Some(Bytes::from_static(b"v")),
            hlc: Hlc(7),
            origin: Origin { datacenter: dc.into(), node: 1 },
            expires_at_ms: None,
        };
        (Bytes::from_static(b"k"), WireRecord::new(&r))
    }

    #[test]
    fn a_batch_comes_from_its_certificate_s_datacenter_with_its_own_records_only() {
        let ok = Ship { from: "dc2".into(), records: vec![record("dc2")] };
        assert!(check_batch("dc2", &ok).is_ok());
        let e = check_batch("dc3", &ok).unwrap_err().to_string();
        assert!(e.contains("\"dc3\" cannot ship as \"dc2\""), "{e}");
        let forwarded = Ship { from: "dc2".into(), records: vec![record("dc2"), record("dc1")] };
        let e = check_batch("dc2", &forwarded).unwrap_err().to_string();
        assert!(e.contains("originated in \"dc1\""), "{e}");
    }

    fn records(n: usize, value: impl Fn(usize) -> Vec<u8>) -> Vec<(Bytes, WireRecord)> {
        (0..n)
            .map(|i| {
                let r = Record {
                    value: Some(Bytes::from(value(i))),
                    hlc: Hlc(1_000 + i as u64),
                    origin: Origin { datacenter: "dc1".into(), node: 3 },
                    expires_at_ms: None,
                };
                (Bytes::from(format!("key:{i:08}")), WireRecord::new(&r))
            })
            .collect()
    }

    /// Bytes that do not compress (xorshift).
    fn noise(seed: usize, len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed as u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn packed(o: Outgoing) -> ShipPacked {
        match o {
            Outgoing::Packed(p) => p,
            Outgoing::Plain(_) => panic!("expected a packed batch"),
        }
    }

    #[test]
    fn a_packed_batch_unpacks_to_the_same_records_and_is_smaller() {
        let recs = records(200, |i| format!("value of the {i}th key, with some repetition").into_bytes());
        let plain_bytes = batch_bytes(&recs);
        let out = Outgoing::new("dc1".into(), recs.clone(), Compression::Lz4, false);
        let sent = out.wire_bytes();
        assert!(sent * 2 < plain_bytes, "{sent} bytes packed of {plain_bytes}");
        let back = packed(out).unpack(1 << 20).unwrap();
        assert_eq!((back.from.as_str(), &back.records), ("dc1", &recs));
    }

    #[test]
    fn a_batch_goes_plain_when_compression_is_off_refused_or_useless() {
        let recs = records(10, |_| b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec());
        for (compression, plain_only) in [(Compression::None, false), (Compression::Lz4, true)] {
            let out = Outgoing::new("dc1".into(), recs.clone(), compression, plain_only);
            assert!(matches!(out, Outgoing::Plain(_)), "{compression:?} {plain_only}");
            assert_eq!(out.wire_bytes(), batch_bytes(&recs));
        }
        // Incompressible values (already compressed or encrypted) are never inflated.
        let recs = records(100, |i| noise(i, 1000));
        let out = Outgoing::new("dc1".into(), recs.clone(), Compression::Lz4, false);
        assert!(out.wire_bytes() <= batch_bytes(&recs), "{} > {}", out.wire_bytes(), batch_bytes(&recs));
        // Mostly incompressible with a little to gain: packed, and still not inflated.
        let recs = records(100, |i| [noise(i, 900), vec![0u8; 100]].concat());
        let out = Outgoing::new("dc1".into(), recs.clone(), Compression::Lz4, false);
        assert!(out.wire_bytes() < batch_bytes(&recs));
    }

    #[test]
    fn bad_packed_batches_are_refused_with_a_reason() {
        let good =
            || packed(Outgoing::new("dc1".into(), records(50, |_| vec![7; 64]), Compression::Lz4, false));
        let e = |p: ShipPacked, max: usize| p.unpack(max).unwrap_err().to_string();

        let mut p = good();
        p.codec = 9;
        assert!(e(p, 1 << 20).contains("codec 9"));
        let p = good();
        let raw_len = p.raw_len;
        assert!(e(p, raw_len as usize - 1).contains("limits.max_request_bytes"));
        // Announcing more than it holds, or less.
        let mut p = good();
        p.raw_len += 10;
        assert!(e(p, 1 << 20).contains("not the"), "too long");
        let mut p = good();
        p.raw_len -= 10;
        assert!(e(p, 1 << 20).contains("does not decompress"));
        // Truncated, garbage, and every single-byte corruption: an error, never a panic.
        let mut p = good();
        p.body = p.body.slice(..p.body.len() / 2);
        assert!(e(p, 1 << 20).contains("does not decompress"));
        let mut p = good();
        p.body = Bytes::from(noise(1, 300));
        assert!(p.unpack(1 << 20).is_err());
        let body = good().body;
        for i in 0..body.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = body.to_vec();
                b[i] ^= flip;
                let mut p = good();
                p.body = Bytes::from(b);
                // Either an error or records that decode: a flipped literal byte is
                // caught later, by the record's own decoding when applied.
                let _ = p.unpack(1 << 20);
            }
        }
        // Valid LZ4 of something that is not a list of records.
        let junk = b"\xff\xff\xff\xff\xff not records".to_vec();
        let p = ShipPacked {
            from: "dc1".into(),
            codec: CODEC_LZ4,
            raw_len: junk.len() as u32,
            body: Bytes::from(lz4_flex::block::compress(&junk)),
        };
        assert!(e(p, 1 << 20).contains("does not decode"));
    }
}
