//! Guarded reads of a player's keys: every read the store makes of a player's keys outside
//! its transaction script (the decision a reader peeks at, whether a participant still holds
//! an intent, the sweep's look at an intent or a commit record, `inspect`) is one call of
//! `look.lua`, which declares the player's meta and refuses with `MOVING` while a slot move
//! has the player parked (`docs/design/resharding.md`). A plain `HGET` would read a parked
//! player's keys as absent — a decision record "missing", an intent "gone" — and act on it.

use std::sync::LazyLock;

use redis::Value as RedisValue;

use crate::error::Error;
use crate::shard_map::ShardIndex;

use super::road::{Command, Effect, LuaScript};
use super::Store;

/// The read script.
static LOOK: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(include_str!("../look.lua")));

/// How `look.lua` reads each key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// `HGET key field`.
    Field,
    /// `HMGET key fields…`.
    Fields,
    /// `HGETALL key`.
    All,
}

impl Read {
    fn command(self) -> &'static str {
        match self {
            Read::Field => "HGET",
            Read::Fields => "HMGET",
            Read::All => "HGETALL",
        }
    }
}

impl Store {
    /// Reads `keys` (each with `read` and `fields`) on `shard`, unless the player whose meta
    /// is `meta` is parked by a slot move (then `Error::Unavailable` with `MOVING`: retryable,
    /// nothing read). One reply per key, in order.
    pub(super) async fn look(
        &self,
        shard: ShardIndex,
        meta: &[u8],
        keys: &[&[u8]],
        read: Read,
        fields: &[&str],
    ) -> Result<Vec<RedisValue>, Error> {
        let mut command = Command::script(&LOOK, Effect::Reads).key(meta);
        for key in keys {
            command = command.key(*key);
        }
        command = command.arg(read.command());
        for field in fields {
            command = command.arg(*field);
        }
        match self.call::<RedisValue>(shard, command).await? {
            RedisValue::Array(replies) if replies.len() == keys.len() => Ok(replies),
            other => Err(Error::Internal(format!(
                "look.lua answered {other:?} for {} keys",
                keys.len()
            ))),
        }
    }
}
