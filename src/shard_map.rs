//! The slot map: which shard owns each of the 16384 slots, and which shard a player lives on.
//!
//! Pure: built from validated configuration, then only looked up. Connecting to the shards is
//! the store's business.

use std::fmt;

use crate::keys;
use crate::model::PlayerId;
use crate::slot::{Slot, SLOT_COUNT};

/// Index of a shard in [`ShardMap::shards`]. Only a [`ShardMap`] makes one ([`ShardMap::index`],
/// [`ShardMap::indices`], the lookups), so an index always names a shard of the map it came
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardIndex(usize);

impl ShardIndex {
    /// The index as a number, from 0, in the order of [`ShardMap::shards`].
    pub fn get(self) -> usize {
        self.0
    }
}

impl fmt::Display for ShardIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a shard's master is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A fixed address, `host:port`.
    Fixed(String),
    /// Whatever the Sentinels say the master of `master_name` is.
    Sentinel {
        /// The monitored master's name.
        master_name: String,
        /// Sentinel addresses, `host:port`.
        sentinels: Vec<String>,
    },
    /// A Redis Cluster shard (a master and its replicas): its master as the cluster's map
    /// last said, if any master serves it. The store follows the map, not this field.
    Cluster {
        /// The master's address, `host:port`.
        master: Option<String>,
    },
}

/// A shard's identity and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Unique name.
    pub name: String,
    /// How to find its master.
    pub endpoint: Endpoint,
    /// Replicas, `host:port`, as configured.
    pub replicas: Vec<String>,
}

/// Why a shard map cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShardMapError(pub String);

/// Slots to shards, with an epoch.
///
/// Invariant: every slot has exactly one owner, and owners index into `shards`.
#[derive(Clone, PartialEq, Eq)]
pub struct ShardMap {
    epoch: u64,
    shards: Vec<Shard>,
    owner: Vec<u16>,
}

impl fmt::Debug for ShardMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardMap")
            .field("epoch", &self.epoch)
            .field("shards", &self.shards)
            .field("ranges", &self.ranges())
            .finish()
    }
}

impl ShardMap {
    /// Builds the map of `shards` (in index order) and slot `ranges` — (`"start-end"` or
    /// `"n"`, shard name) — rejecting duplicate or malformed shard names, unknown shards in
    /// slot ranges, malformed ranges, overlaps and gaps. Without ranges the slots are split
    /// evenly, in shard order. (`Config::shard_map` builds it from a configuration.)
    pub fn new(
        epoch: u64,
        shards: Vec<Shard>,
        ranges: &[(String, String)],
    ) -> Result<ShardMap, ShardMapError> {
        let invalid = ShardMapError;
        if shards.is_empty() {
            return Err(invalid("at least one shard is required".into()));
        }
        if shards.len() > usize::from(SLOT_COUNT) {
            return Err(invalid(format!(
                "{} shards is more than there are slots",
                shards.len()
            )));
        }
        for (i, s) in shards.iter().enumerate() {
            crate::model::Name::new(s.name.clone())
                .map_err(|e| invalid(format!("shard name {:?}: {e}", s.name)))?;
            if shards[..i].iter().any(|x| x.name == s.name) {
                return Err(invalid(format!("shard {:?} is listed twice", s.name)));
            }
        }
        const UNOWNED: u16 = u16::MAX;
        let mut owner = vec![UNOWNED; usize::from(SLOT_COUNT)];
        if ranges.is_empty() {
            // Even split: shard i owns a contiguous block, earlier shards take the remainder.
            for (n, o) in (0..SLOT_COUNT).zip(owner.iter_mut()) {
                let slot = Slot::new(n).expect("below SLOT_COUNT");
                *o = slot.even_block(shards.len()) as u16;
            }
        } else {
            for (range, shard) in ranges {
                let index = shards
                    .iter()
                    .position(|s| &s.name == shard)
                    .ok_or_else(|| {
                        invalid(format!("slot range {range} names unknown shard {shard:?}"))
                    })?;
                let (start, end) = parse_range(range).map_err(invalid)?;
                for slot in start..=end {
                    let o = &mut owner[usize::from(slot)];
                    if *o != UNOWNED {
                        return Err(invalid(format!(
                            "slot {slot} is assigned to both {:?} and {:?}",
                            shards[usize::from(*o)].name,
                            shard
                        )));
                    }
                    *o = index as u16;
                }
            }
            if let Some(gap) = owner.iter().position(|&o| o == UNOWNED) {
                let end = owner[gap..]
                    .iter()
                    .position(|&o| o != UNOWNED)
                    .map_or(usize::from(SLOT_COUNT) - 1, |len| gap + len - 1);
                return Err(invalid(format!("slots {gap}-{end} have no shard")));
            }
        }
        Ok(ShardMap {
            epoch,
            shards,
            owner,
        })
    }

    /// The map of `shards` where slot `s` belongs to `shards[owner[s]]`: how a Redis
    /// Cluster's own map is read (`cluster_view`). Every slot must have an owner.
    pub(crate) fn from_owners(
        epoch: u64,
        shards: Vec<Shard>,
        owner: Vec<u16>,
    ) -> Result<ShardMap, ShardMapError> {
        if shards.is_empty() || shards.len() > usize::from(SLOT_COUNT) {
            return Err(ShardMapError(format!("{} shards", shards.len())));
        }
        if owner.len() != usize::from(SLOT_COUNT)
            || owner.iter().any(|&o| usize::from(o) >= shards.len())
        {
            return Err(ShardMapError("a slot has no shard".into()));
        }
        Ok(ShardMap {
            epoch,
            shards,
            owner,
        })
    }

    /// The map's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// All shards, indexed by [`ShardIndex`].
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The shard at `index`.
    pub fn shard(&self, index: ShardIndex) -> &Shard {
        &self.shards[index.0]
    }

    /// The index of the `n`th shard (from 0), if the map has that many.
    pub fn index(&self, n: usize) -> Option<ShardIndex> {
        (n < self.shards.len()).then_some(ShardIndex(n))
    }

    /// Every shard's index, in order.
    pub fn indices(&self) -> impl Iterator<Item = ShardIndex> {
        (0..self.shards.len()).map(ShardIndex)
    }

    /// The index of the shard named `name`, if there is one.
    pub fn index_of(&self, name: &str) -> Option<ShardIndex> {
        self.shards
            .iter()
            .position(|s| s.name == name)
            .map(ShardIndex)
    }

    /// The shard that owns `slot`.
    pub fn shard_for_slot(&self, slot: Slot) -> ShardIndex {
        ShardIndex(usize::from(self.owner[usize::from(slot.get())]))
    }

    /// The shard a player lives on.
    pub fn shard_for_player(&self, player: &PlayerId) -> ShardIndex {
        self.shard_for_slot(keys::player_slot(player))
    }

    /// The slots `shard` owns, in order.
    pub fn slots_of(&self, shard: ShardIndex) -> Vec<Slot> {
        self.ranges()
            .into_iter()
            .filter(|&(_, _, owner)| owner == shard)
            .flat_map(|(start, end, _)| (start..=end).filter_map(Slot::new))
            .collect()
    }

    /// Contiguous ranges as `(start, end inclusive, shard)`, in slot order.
    pub fn ranges(&self) -> Vec<(u16, u16, ShardIndex)> {
        let mut out: Vec<(u16, u16, ShardIndex)> = Vec::new();
        for (slot, &o) in self.owner.iter().enumerate() {
            let slot = slot as u16;
            match out.last_mut() {
                Some((_, end, shard)) if shard.0 == usize::from(o) && *end + 1 == slot => {
                    *end = slot
                }
                _ => out.push((slot, slot, ShardIndex(usize::from(o)))),
            }
        }
        out
    }
}

/// Parses `"start-end"` or `"n"` into an inclusive range of valid slots.
fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("slot range {text:?} is not \"start-end\" within 0-16383");
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let start: u16 = a.trim().parse().map_err(|_| bad())?;
    let end: u16 = b.trim().parse().map_err(|_| bad())?;
    if start > end || end >= SLOT_COUNT {
        return Err(bad());
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(names: &[&str]) -> Vec<Shard> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Shard {
                name: name.to_string(),
                endpoint: Endpoint::Fixed(format!("h:{i}")),
                replicas: vec![],
            })
            .collect()
    }

    fn map(ranges: &[(&str, &str)]) -> Result<ShardMap, ShardMapError> {
        let ranges: Vec<(String, String)> = ranges
            .iter()
            .map(|(r, s)| (r.to_string(), s.to_string()))
            .collect();
        ShardMap::new(1, shards(&["a", "b"]), &ranges)
    }

    #[test]
    fn even_split_covers_every_slot() {
        let map = map(&[]).expect("valid");
        assert_eq!(
            map.ranges(),
            vec![(0, 8191, ShardIndex(0)), (8192, 16383, ShardIndex(1))]
        );
    }

    #[test]
    fn explicit_ranges() {
        let map = map(&[("0-99", "b"), ("100-16383", "a")]).expect("valid");
        assert_eq!(
            map.shard_for_slot(Slot::new(99).expect("slot")),
            ShardIndex(1)
        );
        assert_eq!(
            map.shard_for_slot(Slot::new(100).expect("slot")),
            ShardIndex(0)
        );
    }

    #[test]
    fn gaps_overlaps_unknown_shards_and_bad_ranges_are_rejected() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[("0-100", "a"), ("102-16383", "b")],
                "slots 101-101 have no shard",
            ),
            (
                &[("0-100", "a"), ("100-16383", "b")],
                "slot 100 is assigned to both",
            ),
            (&[("0-16383", "c")], "unknown shard"),
            (&[("0-16384", "a")], "not \"start-end\""),
            (&[("10-5", "a")], "not \"start-end\""),
            (&[("0-16000", "a")], "slots 16001-16383 have no shard"),
        ];
        for (pairs, expected) in cases {
            let err = map(pairs).expect_err("must be rejected").to_string();
            assert!(err.contains(expected), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn duplicate_and_malformed_shard_names_are_rejected() {
        assert!(ShardMap::new(1, shards(&["a", "a"]), &[]).is_err());
        assert!(ShardMap::new(1, shards(&["a b"]), &[]).is_err());
        assert!(ShardMap::new(1, vec![], &[]).is_err());
    }
}
