//! The Redis key layout. Every key of one player starts with the hash tag `{<player id>}`, so
//! a player lives on exactly one shard and one Lua script can touch all of its keys.
//!
//! | key                                   | type   | holds                                       |
//! |---------------------------------------|--------|---------------------------------------------|
//! | `{id}:meta`                           | hash   | `v` version, `t` last-active (ms, server clock), `a` archived at version, `p` public part restored |
//! | `{id}:pub`                            | hash   | public entries: `f:<name>` bytes, `c:<name>` counter |
//! | `{id}:priv`                           | hash   | private entries, same encoding              |
//! | `{id}:idem:<client id>:<request id>`  | string | first result of an applied request, with TTL |
//! | `colony:active` (one per shard)       | zset   | player id scored by last-active ms           |
//! | `colony:restore` (one per shard)      | list   | restore requests for the archiver            |
//! | `colony:dirty` (one per shard)        | set    | players changed since their last checkpoint  |
//!
//! Routing uses the slot of the tag key `{id}` itself, computed once per player. Player ids are
//! opaque, so one containing `}` gives Redis Cluster a shorter tag than the id; Colony's shards
//! are standalone masters and route by player, so all of that player's keys still sit on one
//! shard.
//!
//! Pure: building names does no IO.

use crate::model::{IdempotencyKey, PlayerId};
use crate::slot::{key_slot, Slot};

/// Per-shard sorted set of player ids scored by last-active time in milliseconds.
pub const ACTIVE_SET: &str = "colony:active";

/// Per-shard set of players changed since the archiver last checkpointed them.
pub const DIRTY_SET: &str = "colony:dirty";

/// Per-shard list of restore requests for the archiver: [`restore_request`] entries, pushed
/// on the left, taken from the right.
pub const RESTORE_QUEUE: &str = "colony:restore";

/// A restore request: `f:<id>` (everything, for the owner) or `p:<id>` (the public part).
pub fn restore_request(player: &PlayerId, full: bool) -> String {
    format!("{}:{}", if full { 'f' } else { 'p' }, player.as_str())
}

/// Key names of one player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerKeys {
    /// Version and last-active time.
    pub meta: Vec<u8>,
    /// Public entries.
    pub public: Vec<u8>,
    /// Private entries.
    pub private: Vec<u8>,
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
        }
    }
}

/// The idempotency record of one request on one player.
pub fn idempotency_key(player: &PlayerId, key: &IdempotencyKey) -> Vec<u8> {
    tagged(
        player,
        &format!(":idem:{}:{}", key.client_id(), key.request_id()),
    )
}

/// The slot that decides a player's shard.
pub fn player_slot(player: &PlayerId) -> Slot {
    key_slot(&tagged(player, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_player_share_its_slot() {
        let player = PlayerId::new("alice").expect("valid");
        let keys = PlayerKeys::new(&player);
        let idem = idempotency_key(&player, &IdempotencyKey::new("c", 1).expect("valid"));
        for key in [&keys.meta, &keys.public, &keys.private, &idem] {
            assert_eq!(key_slot(key), player_slot(&player));
        }
        assert_eq!(keys.meta, b"{alice}:meta");
        assert_eq!(idem, b"{alice}:idem:c:1");
    }
}
