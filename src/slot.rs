//! Redis Cluster's key-to-slot function: CRC16/XMODEM of the key (or of its hash tag) mod 16384.
//!
//! This is pure: no IO, no configuration. The slot map (`shard_map`) turns a slot into a shard.

use std::fmt;

/// Number of hash slots, as in Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;

/// A hash slot.
///
/// Invariant: the value is always below [`SLOT_COUNT`]; [`Slot::new`] and [`key_slot`] are the
/// only ways to build one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u16);

impl Slot {
    /// Returns the slot numbered `n`, or `None` when `n >= 16384`.
    pub fn new(n: u16) -> Option<Slot> {
        (n < SLOT_COUNT).then_some(Slot(n))
    }

    /// The slot number, in `0..16384`.
    pub fn get(self) -> u16 {
        self.0
    }

    /// Which of `blocks` even contiguous blocks of the 16384 slots holds this one, in
    /// `0..blocks` (earlier blocks take the remainder). The shard map splits slots over
    /// `[[shards]]` this way when no `[[slots]]` are given, and the archive splits them over
    /// its MongoDBs this way whatever the topology. `blocks` of 0 is taken as 1.
    pub fn even_block(self, blocks: usize) -> usize {
        usize::from(self.0) * blocks.max(1) / usize::from(SLOT_COUNT)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The part of `key` that Redis hashes: the bytes between the first `{` and the first `}`
/// after it, when that span is non-empty; otherwise the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The slot Redis Cluster assigns to `key` (`CLUSTER KEYSLOT`).
pub fn key_slot(key: &[u8]) -> Slot {
    let crc = crc16::State::<crc16::XMODEM>::calculate(hash_tag(key));
    Slot(crc % SLOT_COUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_blocks_are_contiguous_cover_every_block_and_differ_by_at_most_one_slot() {
        for blocks in [1usize, 2, 3, 5, 7, 16, 1000, 16384] {
            let mut sizes = vec![0usize; blocks];
            let mut last = 0;
            for n in 0..SLOT_COUNT {
                let block = Slot(n).even_block(blocks);
                assert!(block >= last && block <= last + 1, "{blocks}: slot {n}");
                last = block;
                sizes[block] += 1;
            }
            let (min, max) = (
                sizes.iter().min().expect("blocks"),
                sizes.iter().max().expect("blocks"),
            );
            assert!(max - min <= 1, "{blocks}: sizes {min}..{max}");
        }
        assert_eq!(Slot(16383).even_block(0), 0);
        assert_eq!(Slot(5461).even_block(3), 0);
        assert_eq!(Slot(5462).even_block(3), 1);
    }

    #[test]
    fn reference_values_from_the_redis_cluster_spec() {
        // The spec's check value for CRC16/XMODEM: "123456789" -> 0x31C3.
        assert_eq!(key_slot(b"123456789").get(), 0x31C3 % SLOT_COUNT);
        assert_eq!(key_slot(b"").get(), 0);
    }

    #[test]
    fn hash_tags_follow_the_first_brace_pair() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"no braces"), b"no braces");
        assert_eq!(hash_tag(b"open{only"), b"open{only");
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
    }

    #[test]
    fn slot_new_rejects_out_of_range() {
        assert!(Slot::new(16383).is_some());
        assert!(Slot::new(16384).is_none());
    }
}
