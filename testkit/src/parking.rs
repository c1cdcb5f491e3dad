//! A slot move's park of one player, made by hand on one Redis server: every key of the
//! player dumped with its time to live and deleted, and the move's tombstone (`m`) left on its
//! meta — what `docs/design/resharding.md` step 3 does, so that tests can check every script
//! refuses a parked player without running a move. [`Parked::put_back`] restores the keys (meta
//! last, replacing the tombstone), as the move's restore does.

use redis::Commands;

/// A player's keys as the park took them: name, `DUMP` value, remaining time to live in ms
/// (-1: none).
pub struct Parked {
    keys: Vec<(Vec<u8>, Vec<u8>, i64)>,
}

/// Parks player `id` on the Redis at `url`.
pub fn park_by_hand(url: &str, id: &str) -> redis::RedisResult<Parked> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let names: Vec<Vec<u8>> = conn.keys(format!("{{{id}}}*"))?;
    let mut keys = Vec::new();
    for name in names {
        // A key may vanish after the listing (a detached task forgetting a decision record).
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(&name).query(&mut conn)?;
        let Some(dump) = dump else { continue };
        let ttl: i64 = conn.pttl(&name)?;
        let _: () = conn.del(&name)?;
        keys.push((name, dump, ttl));
    }
    let _: () = conn.hset(format!("{{{id}}}:meta"), "m", 1)?;
    Ok(Parked { keys })
}

impl Parked {
    /// How many keys the player had.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the player had no key at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Restores the keys on the Redis at `url`, meta last.
    pub fn put_back(mut self, url: &str) -> redis::RedisResult<()> {
        let mut conn = redis::Client::open(url)?.get_connection()?;
        self.keys
            .sort_by_key(|(name, _, _)| name.ends_with(b":meta"));
        for (name, dump, ttl) in self.keys {
            let _: () = redis::cmd("RESTORE")
                .arg(&name)
                .arg(ttl.max(0))
                .arg(dump)
                .arg("REPLACE")
                .query(&mut conn)?;
        }
        Ok(())
    }
}
