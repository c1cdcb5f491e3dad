//! Looking at a player and a shard without touching them, for operators: the admin port's
//! player lookup and the console's replication column. Nothing here writes — a lookup does
//! not mark a player active (which would delay its archiving) and does not restore an
//! archived one (the transaction script would); it reads the player's hashes as they are.

use std::time::Duration;

use super::look::Read;
use super::road::Command;
use super::Store;
use crate::error::Error;
use crate::keys::PlayerKeys;
use crate::model::PlayerId;

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedEntry {
    /// The entry's name.
    pub name: String,
    /// `field` (bytes) or `counter`.
    pub kind: &'static str,
    /// The bytes of a field; a counter's decimal value.
    pub value: Vec<u8>,
}

/// What a player's keys hold right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedPlayer {
    /// The shard that owns the player's slot, by name.
    pub shard: String,
    /// The player's slot.
    pub slot: u16,
    /// The version (0 for a player never written).
    pub version: u64,
    /// Last activity, Unix milliseconds, if recorded.
    pub last_active_ms: Option<u64>,
    /// The version archived to MongoDB, if the player is archived (its entries are there).
    pub archived_at_version: Option<u64>,
    /// True when an archived player's public part is back in Redis.
    pub public_restored: bool,
    /// The attempt id of a multi-player transaction holding an intent on the player.
    pub intent: Option<String>,
    /// Public entries, by name.
    pub public: Vec<InspectedEntry>,
    /// Private entries, by name.
    pub private: Vec<InspectedEntry>,
}

/// A shard's replication as its master reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// Replicas connected to the master.
    pub connected: u32,
    /// Connected replicas whose link is `online` and at most one second behind.
    pub in_sync: u32,
}

impl Store {
    /// Reads `player`'s keys on its shard's master, changing nothing. `Error::NotFound` when
    /// the player has no key at all.
    pub async fn inspect_player(&self, player: &PlayerId) -> Result<InspectedPlayer, Error> {
        let map = self.shard_map();
        let shard = map.shard_for_player(player);
        let name = map.shard(shard).name.clone();
        let keys = PlayerKeys::new(player);
        type Hash = Vec<(Vec<u8>, Vec<u8>)>;
        // One guarded read: a player parked by a slot move answers MOVING, not "not found".
        let replies = self
            .look(
                shard,
                &keys.meta,
                &[&keys.meta, &keys.public, &keys.private],
                Read::All,
                &[],
            )
            .await?;
        let mut hashes = Vec::with_capacity(3);
        for reply in replies {
            let hash: Hash = redis::from_redis_value(reply).map_err(|e| Error::Unavailable {
                shard: Some(name.clone()),
                reason: e.to_string(),
            })?;
            hashes.push(hash);
        }
        let [meta, public, private]: [Hash; 3] = hashes
            .try_into()
            .map_err(|_| Error::Internal("a look answered too few hashes".into()))?;
        if meta.is_empty() && public.is_empty() && private.is_empty() {
            return Err(Error::NotFound);
        }
        let field = |f: &str| -> Option<&[u8]> {
            meta.iter()
                .find(|(k, _)| k.as_slice() == f.as_bytes())
                .map(|(_, v)| v.as_slice())
        };
        let number = |f: &str| {
            field(f)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        Ok(InspectedPlayer {
            shard: name,
            slot: crate::slot::key_slot(player.as_str().as_bytes()).get(),
            version: number("v").unwrap_or(0),
            last_active_ms: number("t"),
            archived_at_version: number("a"),
            public_restored: field("p") == Some(b"1"),
            intent: field("x").map(|v| String::from_utf8_lossy(v).into_owned()),
            public: entries(public),
            private: entries(private),
        })
    }

    /// Each shard's replication from `INFO replication` on its master, within `timeout`; one
    /// result per shard, in shard order.
    pub async fn replication(&self, timeout: Duration) -> Vec<Result<Replication, Error>> {
        let shards = self.shard_map().indices().map(|shard| async move {
            let name = self.shard_name(shard).to_string();
            let work = async {
                let mut info = redis::cmd("INFO");
                info.arg("replication");
                let reply = self
                    .send(shard, vec![Command::read(info)])
                    .await
                    .into_acknowledged_reply()?;
                let info: String =
                    redis::from_redis_value(reply).map_err(|e| Error::Unavailable {
                        shard: Some(name.clone()),
                        reason: e.to_string(),
                    })?;
                Ok(parse_replication(&info))
            };
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Unavailable {
                        shard: Some(name.clone()),
                        reason: "INFO replication timed out".into(),
                    })
                })
        });
        futures_util::future::join_all(shards).await
    }
}

/// A hash of entries (`f:<name>` fields, `c:<name>` counters), sorted by name.
fn entries(hash: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<InspectedEntry> {
    let mut out: Vec<InspectedEntry> = hash
        .into_iter()
        .filter_map(|(key, value)| {
            let (kind, name) = match key.get(..2) {
                Some(b"f:") => ("field", &key[2..]),
                Some(b"c:") => ("counter", &key[2..]),
                _ => return None,
            };
            Some(InspectedEntry {
                name: String::from_utf8_lossy(name).into_owned(),
                kind,
                value,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Counts replicas in `INFO replication` (`slaveN:ip=…,state=online,offset=…,lag=0`).
fn parse_replication(info: &str) -> Replication {
    let mut replication = Replication {
        connected: 0,
        in_sync: 0,
    };
    for line in info.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        if !key.starts_with("slave")
            || key == "slave_read_only"
            || !key[5..].chars().all(|c| c.is_ascii_digit())
        {
            continue;
        }
        replication.connected += 1;
        let field = |name: &str| {
            value
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let online = field("state") == Some("online");
        let lag = field("lag").and_then(|l| l.parse::<u64>().ok());
        if online && lag.is_some_and(|l| l <= 1) {
            replication.in_sync += 1;
        }
    }
    replication
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_counted_and_judged_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:3\r\n\
            slave0:ip=127.0.0.1,port=7001,state=online,offset=100,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n\
            slave2:ip=127.0.0.1,port=7003,state=online,offset=90,lag=5\r\n\
            master_failover_state:no-failover\r\nslave_read_only:1\r\n";
        assert_eq!(
            parse_replication(info),
            Replication {
                connected: 3,
                in_sync: 1
            }
        );
        assert_eq!(
            parse_replication("role:master\r\nconnected_slaves:0\r\n").connected,
            0
        );
    }

    #[test]
    fn entries_are_decoded_by_their_prefix() {
        let hash = vec![
            (b"f:nick".to_vec(), b"ann".to_vec()),
            (b"c:gold".to_vec(), b"50".to_vec()),
            (b"junk".to_vec(), b"x".to_vec()),
        ];
        let decoded = entries(hash);
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].name, "gold");
        assert_eq!(decoded[0].kind, "counter");
        assert_eq!(decoded[1].value, b"ann");
    }
}
