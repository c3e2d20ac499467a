//! The sealed gossip envelope: every UDP gossip packet is encrypted and authenticated
//! under the cluster's gossip keyring, bound to the cluster name, and numbered so that
//! replays are dropped.
//!
//! Pure code without I/O or clocks: [`Sealer::seal`] and [`open`] turn plaintext into
//! packets and back; [`ReplayFilter`] decides, per sender, whether an authenticated packet
//! was already seen. The membership task drives them and counts every rejection by its
//! [`OpenError::reason`] or [`ReplayError::reason`].
//!
//! # Wire format, version 1
//!
//! ```text
//! offset  size  field
//!      0     1  version = 1
//!      1     4  key id: the first 4 bytes of SHA-256(gossip key), the same id that
//!               `GossipKey::id()` prints in hex
//!      5     8  sender: u64 big-endian, the sending process's identity (renewed at restart)
//!     13     8  counter: u64 big-endian, 0, 1, 2, ... per sender
//!     21     n  ciphertext of the n-byte plaintext (ChaCha20-Poly1305)
//!   21+n    16  Poly1305 tag
//! ```
//!
//! The overhead is [`OVERHEAD`] = 37 bytes per packet: a 1400-byte datagram carries up to
//! 1363 bytes of gossip.
//!
//! - **Key**: the AEAD key is derived per sender,
//!   `HKDF-SHA256(salt = "opencluster gossip seal v1", ikm = gossip key, info = sender)`,
//!   and the nonce is `[0; 4] ++ counter` (big-endian). Every (key, sender, counter) is
//!   therefore used once, with no nonce on the wire and no random generator; a random or
//!   hashed 96-bit nonce would instead risk birthday collisions across the whole cluster.
//!   The price is that a sender id must never be reused with the same key by two
//!   [`Sealer`]s: the node draws a fresh random identity at every start (which the
//!   [`ReplayFilter`] needs anyway, since a restarted sender's counter starts again at 0).
//! - **Associated data**: the 21-byte header followed by SHA-256 of the cluster name, so
//!   a packet from another cluster that happens to use the same key fails authentication,
//!   and so does any change to the header.
//! - **Keys**: a packet names its key by id; [`open`] tries every installed key with that
//!   id (a 32-bit id can collide, which costs one more AEAD attempt, never a wrong
//!   result). No installed key with the id is [`OpenError::UnknownKey`].
//! - **Versions**: a packet whose first byte is not 1 is [`OpenError::UnknownVersion`]
//!   whatever its length, so a later version may change everything after that byte.
//!
//! ChaCha20-Poly1305 rather than AES-256-GCM: it is constant-time and fast in software on
//! every CPU the node image runs on (small ARM hosts without AES instructions included),
//! and at gossip's packet sizes and rates AES-GCM's hardware speed-up buys nothing.
//! WireGuard seals its UDP packets the same way, for the same reasons.
//!
//! # Replay
//!
//! [`ReplayFilter`] keeps, per sender, the highest counter accepted and a 128-bit bitmap of
//! the counters just below it (the IPsec/WireGuard sliding window): a counter is accepted
//! once, and one [`REPLAY_WINDOW`] (128) or more below the highest is [`ReplayError::Stale`].
//! Memory is bounded: senders not heard from for the idle timeout are forgotten, and at
//! most `max_senders` are tracked (the least recently heard is forgotten first). A
//! forgotten sender's old packets would be accepted again, which is why the idle timeout
//! should outlast the time foca remembers a member that went down.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use opencluster_pki::{GossipKey, Keyring};
use ring::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, Tag, UnboundKey};
use ring::{digest, hkdf};

/// The envelope version written by this code.
pub const VERSION: u8 = 1;
/// Length of the key id on the wire.
pub const KEY_ID_LEN: usize = 4;
/// Length of the header (version, key id, sender, counter), authenticated but not encrypted.
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN + 8 + 8;
/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds to its plaintext: the header and the AEAD tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// How many counters below the highest one seen a [`ReplayFilter`] still accepts.
pub const REPLAY_WINDOW: u64 = 128;
/// Default cap on the senders a [`ReplayFilter`] tracks (about 64 bytes each).
pub const DEFAULT_MAX_SENDERS: usize = 4096;
/// Default time after which a silent sender is forgotten by a [`ReplayFilter`].
pub const DEFAULT_SENDER_IDLE: Duration = Duration::from_secs(600);

/// HKDF salt for per-sender keys; a later envelope version changes it.
const KDF_SALT: &[u8] = b"opencluster gossip seal v1";

/// The short, non-secret id of a gossip key as carried in packets: the first 4 bytes of
/// SHA-256 of the key. Displays as the same 8 hex digits as `GossipKey::id()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &GossipKey) -> KeyId {
        let digest = digest::digest(&digest::SHA256, key.as_bytes());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Why a packet could not be sealed. Neither happens in practice; they are returned
/// rather than panicking because a packet that is not sealed is not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The sender used every counter value; it needs a new sender id.
    #[error("gossip sender {sender:016x} has used all 2^64 packet counters; restart with a new identity")]
    CounterExhausted {
        /// The sender id.
        sender: u64,
    },
    /// The AEAD refused the plaintext (only past ChaCha20-Poly1305's 256 GiB limit).
    #[error("ChaCha20-Poly1305 refused to seal a {len}-byte gossip packet")]
    Aead {
        /// Plaintext length.
        len: usize,
    },
}

/// Why a received packet was dropped before its content was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than the envelope itself.
    #[error("gossip packet of {len} bytes is shorter than the {OVERHEAD}-byte sealed envelope")]
    Truncated {
        /// The packet's length.
        len: usize,
    },
    /// An envelope version this build does not read.
    #[error("gossip packet has envelope version {0}; this build reads version {VERSION}")]
    UnknownVersion(u8),
    /// Sealed with a key that is not installed in the keyring.
    #[error("gossip packet is sealed with key {key_id}, which is not installed in the gossip keyring")]
    UnknownKey {
        /// The id the packet names.
        key_id: KeyId,
    },
    /// The key id matched but the packet did not authenticate.
    #[error(
        "gossip packet failed authentication: sealed with a different key that has the same id, \
         for another cluster, or altered on the way"
    )]
    Authentication,
}

impl OpenError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Truncated { .. } => "truncated",
            OpenError::UnknownVersion(_) => "unknown_version",
            OpenError::UnknownKey { .. } => "unknown_key",
            OpenError::Authentication => "authentication",
        }
    }
}

/// An authenticated packet. It is not yet known to be fresh: pass `sender` and `counter`
/// to [`ReplayFilter::check`] before acting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The sending process's identity.
    pub sender: u64,
    /// The packet's number from that sender.
    pub counter: u64,
    /// The key it was sealed with (to see when an old key has stopped being used).
    pub key_id: KeyId,
    /// The gossip payload.
    pub plaintext: Vec<u8>,
}

/// The fixed-size header, as fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    key_id: KeyId,
    sender: u64,
    counter: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1..5].copy_from_slice(&self.key_id.0);
        out[5..13].copy_from_slice(&self.sender.to_be_bytes());
        out[13..21].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    /// Reads the fields after the version byte; `None` when `bytes` is too short.
    fn decode(bytes: &[u8]) -> Option<Header> {
        let key_id = KeyId(bytes.get(1..5)?.try_into().ok()?);
        let sender = u64::from_be_bytes(bytes.get(5..13)?.try_into().ok()?);
        let counter = u64::from_be_bytes(bytes.get(13..21)?.try_into().ok()?);
        Some(Header { key_id, sender, counter })
    }
}

/// The AEAD key for one sender under one gossip key. Cannot fail for a 32-byte output; a
/// `None` is treated as a key that does not open the packet.
fn sender_key(key: &GossipKey, sender: u64) -> Option<LessSafeKey> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KDF_SALT).extract(key.as_bytes());
    let sender = sender.to_be_bytes();
    let info: [&[u8]; 1] = [&sender];
    let okm = prk.expand(&info, &aead::CHACHA20_POLY1305).ok()?;
    Some(LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn cluster_hash(cluster: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, cluster.as_bytes()).as_ref());
    out
}

/// Associated data: the header as sent, then the hash of the cluster name.
fn associated_data(header: &[u8; HEADER_LEN], cluster_hash: &[u8; 32]) -> [u8; HEADER_LEN + 32] {
    let mut aad = [0u8; HEADER_LEN + 32];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..].copy_from_slice(cluster_hash);
    aad
}

/// Seals this process's outgoing gossip packets with the keyring's primary key.
pub struct Sealer {
    keyring: Keyring,
    cluster: String,
    cluster_hash: [u8; 32],
    sender: u64,
    /// The counter of the next packet.
    counter: u64,
    /// The primary key's id and this sender's AEAD key under it, derived at the first
    /// packet after a keyring change.
    primary: Option<(KeyId, LessSafeKey)>,
}

impl Sealer {
    /// A sealer for `sender` in `cluster`. `sender` must not have been used with these keys
    /// by another sealer (a fresh random id at every start; see the module header).
    pub fn new(keyring: Keyring, cluster: &str, sender: u64) -> Sealer {
        Sealer {
            keyring,
            cluster: cluster.to_string(),
            cluster_hash: cluster_hash(cluster),
            sender,
            counter: 0,
            primary: None,
        }
    }

    /// Replaces the keyring: the next packet is sealed with its primary key. Counters go
    /// on from where they were.
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = keyring;
        self.primary = None;
    }

    /// The installed keys; [`open`] incoming packets with it.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The cluster name packets are bound to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// This process's sender id.
    pub fn sender(&self) -> u64 {
        self.sender
    }

    /// The counter the next packet will carry.
    pub fn next_counter(&self) -> u64 {
        self.counter
    }

    /// Seals `plaintext` into `out`, which is cleared first and then holds the whole
    /// packet (`plaintext.len() + OVERHEAD` bytes).
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        out.clear();
        let counter = self.counter;
        // The counter moves before sealing, so no failure can ever lead to a nonce reuse.
        self.counter = counter.checked_add(1).ok_or(SealError::CounterExhausted { sender: self.sender })?;
        let (key_id, key) = match &mut self.primary {
            Some(primary) => primary,
            slot @ None => {
                let primary = self.keyring.primary();
                let key = sender_key(primary, self.sender).ok_or(SealError::Aead { len: plaintext.len() })?;
                slot.insert((KeyId::of(primary), key))
            }
        };
        let header = Header { key_id: *key_id, sender: self.sender, counter }.encode();
        let aad = associated_data(&header, &self.cluster_hash);
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&header);
        out.extend_from_slice(plaintext);
        match key.seal_in_place_separate_tag(nonce(counter), Aad::from(aad), &mut out[HEADER_LEN..]) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                out.clear();
                Err(SealError::Aead { len: plaintext.len() })
            }
        }
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keyring", &self.keyring)
            .field("cluster", &self.cluster)
            .field("sender", &format_args!("{:016x}", self.sender))
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Checks and decrypts a packet sealed by a [`Sealer`] of `cluster` with any key installed
/// in `keyring`. Allocates only the plaintext, never more than the packet's length.
pub fn open(keyring: &Keyring, cluster: &str, packet: &[u8]) -> Result<Opened, OpenError> {
    let truncated = OpenError::Truncated { len: packet.len() };
    let Some(&version) = packet.first() else {
        return Err(truncated);
    };
    if version != VERSION {
        return Err(OpenError::UnknownVersion(version));
    }
    if packet.len() < OVERHEAD {
        return Err(truncated);
    }
    let (header_bytes, sealed) = packet.split_at(HEADER_LEN);
    let header_bytes: &[u8; HEADER_LEN] = header_bytes.try_into().map_err(|_| truncated.clone())?;
    let header = Header::decode(header_bytes).ok_or_else(|| truncated.clone())?;
    let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    let tag = Tag::try_from(tag).map_err(|_| truncated)?;

    let mut candidates = keyring.keys().iter().filter(|k| KeyId::of(k) == header.key_id).peekable();
    if candidates.peek().is_none() {
        return Err(OpenError::UnknownKey { key_id: header.key_id });
    }
    let aad = associated_data(header_bytes, &cluster_hash(cluster));
    let mut plaintext = Vec::with_capacity(ciphertext.len());
    for key in candidates {
        let Some(key) = sender_key(key, header.sender) else { continue };
        plaintext.clear();
        plaintext.extend_from_slice(ciphertext);
        let opened =
            key.open_in_place_separate_tag(nonce(header.counter), Aad::from(aad), tag, &mut plaintext, 0..);
        if opened.is_ok() {
            return Ok(Opened {
                sender: header.sender,
                counter: header.counter,
                key_id: header.key_id,
                plaintext,
            });
        }
    }
    Err(OpenError::Authentication)
}

/// Why an authenticated packet was dropped as not fresh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Older than the window: it cannot be told apart from a replay.
    #[error(
        "gossip packet {counter} from sender {sender:016x} is older than the replay window \
         (newest accepted {highest}, window {REPLAY_WINDOW})"
    )]
    Stale {
        /// The sender id.
        sender: u64,
        /// The packet's counter.
        counter: u64,
        /// The highest counter accepted from that sender.
        highest: u64,
    },
    /// Already accepted once.
    #[error(
        "gossip packet {counter} from sender {sender:016x} was already received (replayed or duplicated)"
    )]
    Replayed {
        /// The sender id.
        sender: u64,
        /// The packet's counter.
        counter: u64,
    },
}

impl ReplayError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReplayError::Stale { .. } => "stale",
            ReplayError::Replayed { .. } => "replayed",
        }
    }
}

/// One sender's sliding window.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// The highest counter accepted.
    highest: u64,
    /// Bit `i` is set when `highest - i` was accepted.
    seen: u128,
    last_heard: Instant,
}

/// Why [`Window::admit`] refused a counter.
enum Refusal {
    Stale,
    Replayed,
}

impl Window {
    fn new(counter: u64, now: Instant) -> Window {
        Window { highest: counter, seen: 1, last_heard: now }
    }

    fn admit(&mut self, counter: u64) -> Result<(), Refusal> {
        if counter > self.highest {
            let shift = u32::try_from(counter - self.highest).unwrap_or(u32::MAX);
            self.seen = self.seen.checked_shl(shift).unwrap_or(0) | 1;
            self.highest = counter;
            return Ok(());
        }
        let age = self.highest - counter;
        if age >= REPLAY_WINDOW {
            return Err(Refusal::Stale);
        }
        let bit = 1u128 << age;
        if self.seen & bit != 0 {
            return Err(Refusal::Replayed);
        }
        self.seen |= bit;
        Ok(())
    }
}

/// Accepts each (sender, counter) once, within a sliding window per sender, with bounded
/// memory. Feed it only packets that [`open`] authenticated: a forged counter must not move
/// a window.
#[derive(Debug)]
pub struct ReplayFilter {
    windows: HashMap<u64, Window>,
    max_senders: usize,
    idle_timeout: Duration,
    /// When the next sweep of idle senders is due; `None` before the first one.
    next_sweep: Option<Instant>,
}

impl ReplayFilter {
    /// A filter tracking at most `max_senders` senders (at least 1), forgetting those not
    /// heard from for longer than `idle_timeout`.
    pub fn new(max_senders: usize, idle_timeout: Duration) -> ReplayFilter {
        ReplayFilter {
            windows: HashMap::new(),
            max_senders: max_senders.max(1),
            idle_timeout,
            next_sweep: None,
        }
    }

    /// Accepts `counter` from `sender` at `now` if it was not accepted before and is not
    /// older than the window, and records it.
    pub fn check(&mut self, sender: u64, counter: u64, now: Instant) -> Result<(), ReplayError> {
        if let Some(window) = self.windows.get_mut(&sender) {
            let highest = window.highest;
            window.admit(counter).map_err(|refusal| match refusal {
                Refusal::Stale => ReplayError::Stale { sender, counter, highest },
                Refusal::Replayed => ReplayError::Replayed { sender, counter },
            })?;
            window.last_heard = window.last_heard.max(now);
            return Ok(());
        }
        // Memory only grows here, so this is where it is bounded: idle senders go at most
        // once per idle timeout (or whenever the table is full), then the least recently
        // heard sender if it is still full.
        let full = self.windows.len() >= self.max_senders;
        if full || self.next_sweep.is_none_or(|due| now >= due) {
            self.evict_idle(now);
        }
        if self.windows.len() >= self.max_senders {
            self.evict_least_recent();
        }
        self.windows.insert(sender, Window::new(counter, now));
        Ok(())
    }

    /// Forgets the senders not heard from for longer than the idle timeout; returns how
    /// many. [`check`](Self::check) calls it as needed; a timer may call it too.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let before = self.windows.len();
        let idle_timeout = self.idle_timeout;
        self.windows.retain(|_, w| now.saturating_duration_since(w.last_heard) <= idle_timeout);
        self.next_sweep = Some(now.checked_add(idle_timeout).unwrap_or(now));
        before - self.windows.len()
    }

    fn evict_least_recent(&mut self) {
        let oldest = self.windows.iter().min_by_key(|(_, w)| w.last_heard).map(|(sender, _)| *sender);
        if let Some(sender) = oldest {
            self.windows.remove(&sender);
        }
    }

    /// How many senders are tracked.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no sender is tracked.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether `sender` is tracked.
    pub fn tracks(&self, sender: u64) -> bool {
        self.windows.contains_key(&sender)
    }
}

impl Default for ReplayFilter {
    fn default() -> Self {
        ReplayFilter::new(DEFAULT_MAX_SENDERS, DEFAULT_SENDER_IDLE)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const CLUSTER: &str = "prod-eu";

    fn key(byte: u8) -> GossipKey {
        GossipKey::from([byte; 32])
    }

    fn seal_one(sealer: &mut Sealer, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(plaintext, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::with_primary(key(1));
        let mut sealer = Sealer::new(ring.clone(), CLUSTER, 0xabcd);
        let mut out = vec![9u8; 3]; // leftovers are cleared
        for (i, plaintext) in [&b""[..], b"x", &[7u8; 1363]].into_iter().enumerate() {
            sealer.seal(plaintext, &mut out).unwrap();
            assert_eq!(out.len(), plaintext.len() + OVERHEAD);
            assert_eq!(out[0], VERSION);
            let opened = open(&ring, CLUSTER, &out).unwrap();
            assert_eq!(
                opened,
                Opened {
                    sender: 0xabcd,
                    counter: i as u64,
                    key_id: KeyId::of(&key(1)),
                    plaintext: plaintext.to_vec()
                }
            );
        }
        assert_eq!(sealer.next_counter(), 3);
        // The same plaintext twice gives two different packets.
        assert_ne!(
            seal_one(&mut sealer, b"same")[HEADER_LEN..],
            seal_one(&mut sealer, b"same")[HEADER_LEN..]
        );
    }

    #[test]
    fn key_id_matches_the_keyring_id() {
        let k = GossipKey::generate().unwrap();
        assert_eq!(KeyId::of(&k).to_string(), k.id());
        assert_eq!(aead::CHACHA20_POLY1305.tag_len(), TAG_LEN);
        assert_eq!(OVERHEAD, 37);
    }

    /// A version-1 packet sealed by this code when the format was defined (and reproduced
    /// byte for byte with Python's `cryptography` HKDF and ChaCha20Poly1305 from the module
    /// header's description): if this test fails, the wire format changed and needs a new
    /// version byte.
    #[test]
    fn decodes_the_version_1_fixture() {
        const FIXTURE: &str = "014bb06f8e0102030405060708000000000000002a\
                               e6501623bc413aa392582f7558c11f3cc843bbd1ab";
        let packet: Vec<u8> = (0..FIXTURE.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&FIXTURE[i..i + 2], 16).unwrap())
            .collect();
        let ring = Keyring::with_primary(key(7));
        let opened = open(&ring, "fixture", &packet).unwrap();
        assert_eq!((opened.sender, opened.counter), (0x0102030405060708, 42));
        assert_eq!(opened.plaintext, b"hello");

        let mut sealer = Sealer::new(ring, "fixture", 0x0102030405060708);
        sealer.counter = 42;
        assert_eq!(seal_one(&mut sealer, b"hello"), packet);
    }

    #[test]
    fn old_installed_key_opens_and_removed_key_is_unknown() {
        let mut old_ring = Keyring::with_primary(key(1));
        let mut sealer = Sealer::new(old_ring.clone(), CLUSTER, 1);
        let packet = seal_one(&mut sealer, b"hi");

        old_ring.install(key(2));
        old_ring.use_key(&key(2)).unwrap();
        assert_eq!(open(&old_ring, CLUSTER, &packet).unwrap().plaintext, b"hi");

        old_ring.remove(&key(1)).unwrap();
        assert_eq!(
            open(&old_ring, CLUSTER, &packet),
            Err(OpenError::UnknownKey { key_id: KeyId::of(&key(1)) })
        );
    }

    #[test]
    fn another_cluster_fails_authentication() {
        let ring = Keyring::with_primary(key(1));
        let mut sealer = Sealer::new(ring.clone(), "other", 1);
        let packet = seal_one(&mut sealer, b"hi");
        assert_eq!(open(&ring, CLUSTER, &packet), Err(OpenError::Authentication));
        assert_eq!(open(&ring, "other", &packet).unwrap().plaintext, b"hi");
    }

    #[test]
    fn a_key_with_a_colliding_id_is_tried_and_fails_cleanly() {
        // Forge the header to name a key that is installed while sealed with another one:
        // what a 32-bit id collision looks like to `open`.
        let ring = Keyring::with_primary(key(1));
        let mut sealer = Sealer::new(Keyring::with_primary(key(2)), CLUSTER, 1);
        let mut packet = seal_one(&mut sealer, b"hi");
        packet[1..5].copy_from_slice(&KeyId::of(&key(1)).0);
        assert_eq!(open(&ring, CLUSTER, &packet), Err(OpenError::Authentication));
    }

    #[test]
    fn truncated_at_every_length_is_an_error() {
        let ring = Keyring::with_primary(key(1));
        let mut sealer = Sealer::new(ring.clone(), CLUSTER, 1);
        let packet = seal_one(&mut sealer, b"some gossip");
        for len in 0..packet.len() {
            let e = open(&ring, CLUSTER, &packet[..len]).unwrap_err();
            if len < OVERHEAD {
                assert_eq!(e, OpenError::Truncated { len });
            } else {
                assert_eq!(e, OpenError::Authentication, "{len}");
            }
        }
    }

    #[test]
    fn unknown_version_is_reported_whatever_the_length() {
        let ring = Keyring::with_primary(key(1));
        assert_eq!(open(&ring, CLUSTER, &[2]), Err(OpenError::UnknownVersion(2)));
        assert_eq!(open(&ring, CLUSTER, &[0; 100]), Err(OpenError::UnknownVersion(0)));
    }

    #[test]
    fn errors_say_what_happened() {
        let k = key(1);
        let cases = [
            (OpenError::Truncated { len: 3 }.to_string(), "3 bytes is shorter than the 37-byte"),
            (OpenError::UnknownVersion(9).to_string(), "version 9; this build reads version 1"),
            (OpenError::UnknownKey { key_id: KeyId::of(&k) }.to_string(), &k.id()),
            (OpenError::Authentication.to_string(), "failed authentication"),
            (
                ReplayError::Stale { sender: 0xff, counter: 1, highest: 500 }.to_string(),
                "packet 1 from sender 00000000000000ff is older than the replay window (newest accepted 500",
            ),
            (ReplayError::Replayed { sender: 1, counter: 5 }.to_string(), "already received"),
            (SealError::CounterExhausted { sender: 1 }.to_string(), "all 2^64 packet counters"),
        ];
        for (message, needle) in cases {
            assert!(message.contains(needle), "{message}");
        }
        assert_eq!(OpenError::Authentication.reason(), "authentication");
        assert_eq!(ReplayError::Replayed { sender: 1, counter: 5 }.reason(), "replayed");
    }

    #[test]
    fn exhausted_counter_refuses_to_seal() {
        let mut sealer = Sealer::new(Keyring::with_primary(key(1)), CLUSTER, 1);
        sealer.counter = u64::MAX - 1;
        let mut out = Vec::new();
        sealer.seal(b"last", &mut out).unwrap();
        assert_eq!(open(sealer.keyring(), CLUSTER, &out).unwrap().counter, u64::MAX - 1);
        assert_eq!(sealer.seal(b"one more", &mut out), Err(SealError::CounterExhausted { sender: 1 }));
        assert!(out.is_empty());
    }

    #[test]
    fn rotation_without_downtime() {
        let (old, new) = (key(1), key(2));
        let mut ring_a = Keyring::with_primary(old.clone());
        let mut ring_b = Keyring::with_primary(old.clone());
        let mut a = Sealer::new(ring_a.clone(), CLUSTER, 0xa);
        let mut filter_b = ReplayFilter::default();
        let t0 = Instant::now();

        let mut receive = |ring_b: &Keyring, packet: &[u8]| -> Result<Opened, OpenError> {
            let opened = open(ring_b, CLUSTER, packet)?;
            filter_b.check(opened.sender, opened.counter, t0).unwrap();
            Ok(opened)
        };
        let before = seal_one(&mut a, b"before");
        assert_eq!(receive(&ring_b, &before).unwrap().key_id, KeyId::of(&old));

        // Install the new key on both, then use it on A: B accepts A's packets throughout.
        ring_a.install(new.clone());
        ring_b.install(new.clone());
        a.set_keyring(ring_a.clone());
        let installed = seal_one(&mut a, b"installed");
        assert_eq!(receive(&ring_b, &installed).unwrap().key_id, KeyId::of(&old));
        ring_a.use_key(&new).unwrap();
        a.set_keyring(ring_a.clone());
        let rotated = seal_one(&mut a, b"rotated");
        let opened = receive(&ring_b, &rotated).unwrap();
        assert_eq!(
            (opened.key_id, opened.counter, &opened.plaintext[..]),
            (KeyId::of(&new), 2, &b"rotated"[..])
        );

        // A straggler sealed with the old key still opens while B has it installed...
        let mut straggler = Sealer::new(Keyring::with_primary(old.clone()), CLUSTER, 0xb);
        let late = seal_one(&mut straggler, b"late");
        assert!(open(&ring_b, CLUSTER, &late).is_ok());
        // ...and not once B removed it.
        ring_b.use_key(&new).unwrap();
        ring_b.remove(&old).unwrap();
        assert_eq!(open(&ring_b, CLUSTER, &late), Err(OpenError::UnknownKey { key_id: KeyId::of(&old) }));
        assert_eq!(open(&ring_b, CLUSTER, &before), Err(OpenError::UnknownKey { key_id: KeyId::of(&old) }));
        assert!(receive(&ring_b, &seal_one(&mut a, b"after")).is_ok());
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_rejected(
            plaintext in proptest::collection::vec(any::<u8>(), 0..200),
            position in any::<prop::sample::Index>(),
        ) {
            let ring = Keyring::with_primary(key(1));
            let mut sealer = Sealer::new(ring.clone(), CLUSTER, 77);
            let mut packet = seal_one(&mut sealer, &plaintext);
            let bit = position.index(packet.len() * 8);
            packet[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(open(&ring, CLUSTER, &packet).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ring = Keyring::with_primary(key(1));
            let _ = open(&ring, CLUSTER, &bytes);
        }

        /// Arbitrary bytes behind a valid version and key id, so they reach the AEAD.
        #[test]
        fn arbitrary_sealed_bodies_fail_authentication(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ring = Keyring::with_primary(key(1));
            let mut packet = vec![VERSION];
            packet.extend_from_slice(&KeyId::of(&key(1)).0);
            packet.extend_from_slice(&body);
            let expected = if packet.len() < OVERHEAD {
                OpenError::Truncated { len: packet.len() }
            } else {
                OpenError::Authentication
            };
            prop_assert_eq!(open(&ring, CLUSTER, &packet), Err(expected));
        }

        /// The window against a model that remembers every accepted counter.
        #[test]
        fn replay_window_matches_a_model(counters in proptest::collection::vec(0u64..400, 1..300)) {
            let mut filter = ReplayFilter::default();
            let now = Instant::now();
            let mut accepted = HashSet::new();
            let mut highest: Option<u64> = None;
            for counter in counters {
                let expected = match highest {
                    Some(h) if counter + REPLAY_WINDOW <= h => Err("stale"),
                    _ if accepted.contains(&counter) => Err("replayed"),
                    _ => Ok(()),
                };
                let got = filter.check(1, counter, now).map_err(|e| e.reason());
                prop_assert_eq!(got, expected, "counter {}", counter);
                if got.is_ok() {
                    accepted.insert(counter);
                    highest = highest.max(Some(counter));
                }
            }
        }
    }

    #[test]
    fn replay_in_order_out_of_order_duplicates_and_stale() {
        let mut f = ReplayFilter::default();
        let now = Instant::now();
        for c in 0..10 {
            f.check(1, c, now).unwrap();
        }
        // Out of order within the window.
        for c in [20, 15, 19, 11, 10] {
            f.check(1, c, now).unwrap();
        }
        for c in [0, 9, 15, 20] {
            assert_eq!(f.check(1, c, now), Err(ReplayError::Replayed { sender: 1, counter: c }));
        }
        // Edges: 127 below the highest is in the window, 128 below is not.
        f.check(1, 200, now).unwrap();
        f.check(1, 73, now).unwrap();
        assert_eq!(f.check(1, 72, now), Err(ReplayError::Stale { sender: 1, counter: 72, highest: 200 }));
        // A jump past the window forgets the bitmap but not the order.
        f.check(1, 10_000, now).unwrap();
        f.check(1, 9_999, now).unwrap();
        assert_eq!(f.check(1, 200, now).unwrap_err().reason(), "stale");
        f.check(1, u64::MAX, now).unwrap();
        assert_eq!(f.check(1, u64::MAX, now).unwrap_err().reason(), "replayed");
        // Senders have their own windows.
        f.check(2, 0, now).unwrap();
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn many_senders_stay_bounded() {
        let mut f = ReplayFilter::new(8, Duration::from_secs(60));
        let base = Instant::now();
        for sender in 0..100u64 {
            f.check(sender, 0, base + Duration::from_millis(sender)).unwrap();
            assert!(f.len() <= 8);
        }
        // The most recently heard are the ones kept.
        assert!((92..100).all(|s| f.tracks(s)));
        assert!(!f.tracks(0));
        // Hearing from one keeps it over a quieter one.
        let later = base + Duration::from_secs(1);
        f.check(92, 1, later).unwrap();
        f.check(1000, 0, later).unwrap();
        assert!(f.tracks(92));
        assert!(!f.tracks(93));
    }

    #[test]
    fn idle_senders_are_evicted() {
        let idle = Duration::from_secs(60);
        let mut f = ReplayFilter::new(100, idle);
        let base = Instant::now();
        f.check(1, 5, base).unwrap();
        f.check(2, 5, base).unwrap();
        f.check(2, 6, base + Duration::from_secs(50)).unwrap();
        // Within the timeout nothing goes, and a replay is still caught.
        assert_eq!(f.evict_idle(base + idle), 0);
        assert_eq!(f.check(1, 5, base + idle).unwrap_err().reason(), "replayed");
        // Past it, sender 1 is forgotten; sender 2 was heard more recently.
        assert_eq!(f.evict_idle(base + idle + Duration::from_secs(1)), 1);
        assert!(!f.tracks(1) && f.tracks(2));

        // New senders trigger the sweep on their own, without a timer.
        let far = base + Duration::from_secs(3600);
        f.check(3, 0, far).unwrap();
        assert!(!f.tracks(2) && f.tracks(3));
        assert_eq!(f.len(), 1);
    }
}
