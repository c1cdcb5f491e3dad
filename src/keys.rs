//! The Redis key layout. Every key of one player starts with the hash tag `{<player id>}`, so
//! a player lives on exactly one shard and one Lua script can touch all of its keys.
//!
//! | key                                   | type   | holds                                       |
//! |---------------------------------------|--------|---------------------------------------------|
//! | `{id}:meta`                           | hash   | `v` version, `t` last-active (ms, server clock), `a` archived at version, `p` public part restored, `b`/`n` size tally; `x` attempt of the intent held, `y` last attempt applied, `w` until when a write on its own waits for the player (no new intent before it); idempotency windows: `c:<client>` state, `r:<client>:<request>` record |
//! | `{id}:intent`                         | hash   | a multi-player transaction's intent on a participant other than the primary: `a` attempt, `p` primary, `l` lease expiry (ms, this shard's clock), `v` version, `m`/`w` staged writes, `r` prepared reply (an earlier version's primary also `c`/`q`/`f`, the key and fingerprint) |
//! | `{primary}:decision:<attempt>`        | hash   | the decision of one attempt of a multi-player transaction: `d` = `C` (commit) or `A` (abort), written once; for a commit `p` its participants (and `r` their packed results, in records of earlier versions) |
//! | `{primary}:lease:<attempt>`           | string | written by earlier versions only (their reserve of a trade's primary, expiring after the lease); this version only carries one left over along with its player in a slot move |
//! | `{id}:pub`                            | hash   | public entries: `f:<name>` bytes, `c:<name>` counter |
//! | `{id}:priv`                           | hash   | private entries, same encoding              |
//! | `{id}:clients`                        | zset   | clients with a window, scored by last write (ms) |
//! | `colony:{<slot tag>}:active` (per slot) | zset | player ids scored by last-active ms         |
//! | `colony:{<slot tag>}:dirty` (per slot)  | set  | players changed since their last checkpoint |
//! | `colony:{<slot tag>}:intents` (per slot) | zset | players holding an intent, scored by lease expiry |
//! | `colony:{<slot tag>}:decisions` (per slot) | zset | commit records of the slot's primaries, scored by when written |
//! | `colony:{<slot tag>}:restores` (16, one per range of 1,024 slots) | zset | restore requests for the archiver of the players of its range, by request time; capped, no duplicates |
//! | `{id}:idem:<client id>:<request id>`  | string | legacy idempotency record (read, never written) |
//! | `colony:active`, `colony:dirty` (per shard) | zset, set | legacy bookkeeping, drained by the archiver |
//! | `colony:restores` (per shard)         | zset   | legacy restore queue (before the 16 queues), still served by the archiver on `[[shards]]` |
//! | `colony:restore` (per shard)          | list   | older legacy restore queue, still served by the archiver on `[[shards]]` |
//!
//! Every key a script touches lies in the player's slot: the player's own keys by their tag,
//! the bookkeeping by its slot tag ([`slot_tag`]). So a slot's players are listed from the
//! slot alone, and the scripts run unchanged on Redis Cluster.
//!
//! Routing uses the slot of the tag key `{id}` itself, computed once per player. Player ids are
//! opaque, so one containing `}` gives Redis Cluster a shorter tag than the id; Colony's shards
//! are standalone masters and route by player, so all of that player's keys still sit on one
//! shard.
//!
//! Pure: building names does no IO.

use crate::model::{IdempotencyKey, PlayerId};
use crate::slot::{key_slot, Slot, SLOT_COUNT};

/// The per-shard sorted set of player ids by last-active time that this layout replaced by
/// [`SlotKeys::active`]; the archiver drains what it still holds.
pub const LEGACY_ACTIVE_SET: &str = "colony:active";

/// The per-shard set of changed players that this layout replaced by [`SlotKeys::dirty`];
/// the archiver drains what it still holds.
pub const LEGACY_DIRTY_SET: &str = "colony:dirty";

/// The per-shard sorted set of restore requests that the [`RestoreQueue`]s replaced; the
/// archiver still serves what it holds on `[[shards]]`.
pub const LEGACY_RESTORE_SET: &str = "colony:restores";

/// The per-shard list of restore requests that [`LEGACY_RESTORE_SET`] replaced; the archiver
/// still serves what it holds on `[[shards]]`.
pub const LEGACY_RESTORE_QUEUE: &str = "colony:restore";

/// How many restore queues there are: each serves the players of one range of
/// `SLOT_COUNT / RESTORE_QUEUES` slots.
pub const RESTORE_QUEUES: u16 = 16;

/// One of the [`RESTORE_QUEUES`] queues of restore requests for the archiver: a sorted set of
/// [`restore_request`] entries by request time, so a request already waiting is not queued
/// twice and the queue's length can be capped (`redis.max_restore_requests`). The archiver
/// takes the oldest first, with a blocking pop on whichever master owns the queue's slot.
///
/// Why fixed queues, each in a slot of its own: a key lives in one slot, and Redis Cluster
/// refuses a blocking pop over keys of several slots, so a queue per shard cannot exist on a
/// cluster (its shards come and go) and a queue per player's slot cannot be waited on. A
/// queue is an ordinary key of its slot: when the slot moves, the queue moves with it (the
/// archiver's pop answers `MOVED` and follows); while it moves, a request pushed for a key
/// the source no longer holds goes to the importing master (`ASK`), where the archiver
/// takes it through the store's road until the move ends, and a request refused
/// (`TRYAGAIN`) is sent again by the store (every 250 ms while its caller waits). A queue's
/// slot lies in the middle of the range it serves, so where shards own whole ranges (the
/// even split of `[[shards]]` and of `redis-cli --cluster create`) most players' requests
/// wait on their own shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RestoreQueue(u16);

impl RestoreQueue {
    /// Slots each queue serves.
    const SPAN: u16 = SLOT_COUNT / RESTORE_QUEUES;

    /// Every queue, in order.
    pub fn all() -> impl Iterator<Item = RestoreQueue> {
        (0..RESTORE_QUEUES).map(RestoreQueue)
    }

    /// The queue serving the players of `slot`.
    pub fn for_slot(slot: Slot) -> RestoreQueue {
        RestoreQueue(slot.get() / Self::SPAN)
    }

    /// The queue serving `player`.
    pub fn of_player(player: &PlayerId) -> RestoreQueue {
        RestoreQueue::for_slot(player_slot(player))
    }

    /// The queue's number, from 0.
    pub fn index(self) -> u16 {
        self.0
    }

    /// The slot the queue's key lives in: the middle of the range it serves.
    pub fn slot(self) -> Slot {
        match Slot::new(self.0 * Self::SPAN + Self::SPAN / 2) {
            Some(slot) => slot,
            // Every index below RESTORE_QUEUES gives a slot below SLOT_COUNT.
            None => unreachable!("restore queue {} outside the slots", self.0),
        }
    }

    /// The queue's key: `colony:{<slot tag>}:restores`.
    pub fn key(self) -> String {
        format!("colony:{{{}}}:restores", slot_tag(self.slot()))
    }
}

/// A restore request: `f:<id>` (everything, for the owner) or `p:<id>` (the public part).
pub fn restore_request(player: &PlayerId, full: bool) -> String {
    format!("{}:{}", if full { 'f' } else { 'p' }, player.as_str())
}

/// Key names of one player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerKeys {
    /// Version, last-active time, size tally, and the idempotency windows.
    pub meta: Vec<u8>,
    /// Public entries.
    pub public: Vec<u8>,
    /// Private entries.
    pub private: Vec<u8>,
    /// Clients with a window on this player, scored by their last write.
    pub clients: Vec<u8>,
    /// The intent of a multi-player transaction the player holds, if any.
    pub intent: Vec<u8>,
}

fn tagged(player: &PlayerId, suffix: &str) -> Vec<u8> {
    let id = player.as_str().as_bytes();
    let mut key = Vec::with_capacity(id.len() + 2 + suffix.len());
    key.push(b'{');
    key.extend_from_slice(id);
    key.push(b'}');
    key.extend_from_slice(suffix.as_bytes());
    key
}

impl PlayerKeys {
    /// The keys of `player`.
    pub fn new(player: &PlayerId) -> PlayerKeys {
        PlayerKeys {
            meta: tagged(player, ":meta"),
            public: tagged(player, ":pub"),
            private: tagged(player, ":priv"),
            clients: tagged(player, ":clients"),
            intent: tagged(player, ":intent"),
        }
    }
}

/// The decision record of attempt `attempt` of a multi-player transaction whose primary
/// participant is `primary`: in the primary's slot, so the primary's scripts can read it.
pub fn decision_key(primary: &PlayerId, attempt: &str) -> Vec<u8> {
    tagged(primary, &format!(":decision:{attempt}"))
}

/// The legacy idempotency record of one request on one player (one string key per request,
/// with a TTL), from before the per-player windows; honoured until it expires.
pub fn legacy_idempotency_key(player: &PlayerId, key: &IdempotencyKey) -> Vec<u8> {
    tagged(
        player,
        &format!(":idem:{}:{}", key.client_id(), key.request_id()),
    )
}

/// The slot that decides a player's shard.
pub fn player_slot(player: &PlayerId) -> Slot {
    id_slot(player.as_str())
}

/// The slot of the player id `id` as stored in a set (not validated): the slot of `{id}`.
pub fn id_slot(id: &str) -> Slot {
    let mut key = Vec::with_capacity(id.len() + 2);
    key.push(b'{');
    key.extend_from_slice(id.as_bytes());
    key.push(b'}');
    key_slot(&key)
}

/// Characters slot tags are made of: plain, so that tags read well in `redis-cli`.
const TAG_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The tag of every slot, found once: short strings are tried in order (length, then
/// alphabet) and each slot keeps the first one that hashes to it.
static SLOT_TAGS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    let mut tags: Vec<Option<String>> = vec![None; usize::from(SLOT_COUNT)];
    let mut missing = tags.len();
    let mut candidate: Vec<u8> = Vec::new();
    'search: for len in 1..=5 {
        candidate.clear();
        candidate.resize(len, 0);
        loop {
            let tag: Vec<u8> = candidate
                .iter()
                .map(|&d| TAG_ALPHABET[d as usize])
                .collect();
            let slot = usize::from(key_slot(&tag).get());
            if tags[slot].is_none() {
                tags[slot] = Some(String::from_utf8_lossy(&tag).into_owned());
                missing -= 1;
                if missing == 0 {
                    break 'search;
                }
            }
            // The next candidate of this length, as an odometer over the alphabet.
            let mut position = len;
            loop {
                if position == 0 {
                    continue 'search;
                }
                position -= 1;
                candidate[position] += 1;
                if usize::from(candidate[position]) < TAG_ALPHABET.len() {
                    break;
                }
                candidate[position] = 0;
            }
        }
    }
    // Five characters over 36 give 60 million candidates; every slot is covered well before
    // (a unit test checks all of them), so an empty tag here is unreachable.
    tags.into_iter().map(Option::unwrap_or_default).collect()
});

/// A short string whose own slot is `slot`: keys tagged `{<it>}` live in `slot`.
pub fn slot_tag(slot: Slot) -> &'static str {
    &SLOT_TAGS[usize::from(slot.get())]
}

/// Key names of one slot's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotKeys {
    /// Player ids of the slot by last-active time in milliseconds.
    pub active: String,
    /// Players of the slot changed since the archiver last checkpointed them.
    pub dirty: String,
    /// Players of the slot holding an intent, scored by lease expiry (ms, the shard's clock).
    pub intents: String,
    /// Commit records of the slot's primaries, scored by when they were written.
    pub decisions: String,
}

impl SlotKeys {
    /// The bookkeeping keys of `slot`.
    pub fn new(slot: Slot) -> SlotKeys {
        let tag = slot_tag(slot);
        SlotKeys {
            active: format!("colony:{{{tag}}}:active"),
            dirty: format!("colony:{{{tag}}}:dirty"),
            intents: format!("colony:{{{tag}}}:intents"),
            decisions: format!("colony:{{{tag}}}:decisions"),
        }
    }

    /// The bookkeeping keys of `player`'s slot.
    pub fn of_player(player: &PlayerId) -> SlotKeys {
        SlotKeys::new(player_slot(player))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_player_share_its_slot() {
        let player = PlayerId::new("alice").expect("valid");
        let keys = PlayerKeys::new(&player);
        let legacy = legacy_idempotency_key(&player, &IdempotencyKey::new("c", 1).expect("valid"));
        let slot = SlotKeys::of_player(&player);
        for key in [
            &keys.meta,
            &keys.public,
            &keys.private,
            &keys.clients,
            &keys.intent,
            &legacy,
            &decision_key(&player, "0123abcd"),
            slot.active.as_bytes(),
            slot.dirty.as_bytes(),
            slot.intents.as_bytes(),
            slot.decisions.as_bytes(),
        ] {
            assert_eq!(key_slot(key), player_slot(&player));
        }
        assert_eq!(keys.meta, b"{alice}:meta");
        assert_eq!(legacy, b"{alice}:idem:c:1");
    }

    #[test]
    fn restore_queues_cover_every_slot_and_live_in_their_range() {
        let mut served = vec![0u32; usize::from(RESTORE_QUEUES)];
        for n in 0..SLOT_COUNT {
            let slot = Slot::new(n).expect("in range");
            let queue = RestoreQueue::for_slot(slot);
            served[usize::from(queue.index())] += 1;
        }
        assert!(served.iter().all(|&n| n == 1024), "{served:?}");
        let keys: std::collections::BTreeSet<String> =
            RestoreQueue::all().map(|q| q.key()).collect();
        assert_eq!(keys.len(), usize::from(RESTORE_QUEUES), "distinct keys");
        for queue in RestoreQueue::all() {
            assert_eq!(key_slot(queue.key().as_bytes()), queue.slot());
            assert_eq!(
                RestoreQueue::for_slot(queue.slot()),
                queue,
                "in its own range"
            );
        }
        let player = PlayerId::new("alice").expect("valid");
        assert_eq!(
            RestoreQueue::of_player(&player),
            RestoreQueue::for_slot(player_slot(&player))
        );
        assert_eq!(
            RestoreQueue::all().last().map(|q| q.slot().get()),
            Some(15_872)
        );
    }

    #[test]
    fn every_slot_has_a_short_tag_of_its_own() {
        let mut longest = 0;
        for n in 0..SLOT_COUNT {
            let slot = Slot::new(n).expect("in range");
            let tag = slot_tag(slot);
            assert!(!tag.is_empty(), "slot {n} has no tag");
            assert_eq!(key_slot(tag.as_bytes()), slot, "tag {tag:?}");
            assert!(tag.bytes().all(|b| TAG_ALPHABET.contains(&b)));
            longest = longest.max(tag.len());
            let keys = SlotKeys::new(slot);
            assert_eq!(key_slot(keys.active.as_bytes()), slot);
            assert_eq!(key_slot(keys.dirty.as_bytes()), slot);
        }
        assert!(longest <= 4, "tags up to {longest} characters");
    }

    #[test]
    fn a_player_id_with_braces_keeps_every_key_in_its_slot() {
        for id in ["a}b", "{x}", "p{q", "}"] {
            let Ok(player) = PlayerId::new(id) else {
                continue;
            };
            let keys = PlayerKeys::new(&player);
            let slot = SlotKeys::of_player(&player);
            for key in [&keys.meta, &keys.clients, slot.active.as_bytes()] {
                assert_eq!(key_slot(key), player_slot(&player), "{id}");
            }
        }
    }
}
