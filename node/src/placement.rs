//! Which partition a key lives in.
//!
//! The keyspace is cut into a fixed number of partitions, chosen when the cluster's data
//! is created and recorded in the store so it cannot silently change. Everything that
//! moves or compares data (rebalance, anti-entropy, WAN shipping, SCAN cursors) works a
//! partition at a time. Owners of a partition are assigned in a later layer.

use xxhash_rust::xxh3::xxh3_64;

/// A partition number, `0..partitions`.
pub type Partition = u16;

/// The most partitions a cluster can have (the number is encoded as `u16`).
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// The partition of `key`. Stable across processes, versions and platforms: it is part of
/// the on-disk layout.
pub fn partition_of(key: &[u8], partitions: u16) -> Partition {
    debug_assert!(partitions > 0);
    (xxh3_64(key) % u64::from(partitions)) as Partition
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_stable() {
        // Fixed expectations: a change here would strand data written by earlier builds.
        assert_eq!(xxh3_64(b"hello"), 0x9555_e855_5c62_dcfd);
        assert_eq!(partition_of(b"hello", 1024), 0x0fd);
    }

    #[test]
    fn spreads_keys_evenly() {
        let partitions = 64u16;
        let mut counts = vec![0u32; partitions as usize];
        for i in 0..64_000 {
            counts[partition_of(format!("key:{i}").as_bytes(), partitions) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "uneven: min {min} max {max}");
    }
}
