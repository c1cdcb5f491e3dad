//! Walking a shard's slots: inactive players by slot, the backlog, and moving what the
//! legacy per-shard sets still hold into the slot sets.

use futures_util::future::join_all;

use colony::keys::{SlotKeys, LEGACY_ACTIVE_SET, LEGACY_DIRTY_SET};
use colony::shard_map::ShardIndex;
use colony::slot::Slot;

use super::*;

impl Archiver {
    /// Inactive players still in Redis per shard (name, count), by this machine's clock; a
    /// shard that fails or does not answer within [`SHARD_QUESTION_TIMEOUT`] is reported with
    /// its error, asked concurrently with the others. Also sets the backlog gauge.
    pub async fn backlog(&self) -> Vec<(String, Result<u64, String>)> {
        let cutoff = self.cutoff(now_ms());
        let counts = join_all(self.shards().map(|shard| async move {
            let counted =
                tokio::time::timeout(SHARD_QUESTION_TIMEOUT, self.count_inactive(shard, cutoff))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "no answer within {} ms",
                            SHARD_QUESTION_TIMEOUT.as_millis()
                        ))
                    });
            (self.shard_name(shard), counted)
        }))
        .await;
        for (name, count) in &counts {
            if let Ok(count) = count {
                self.metrics
                    .backlog
                    .get_or_create(&crate::metrics::ShardLabels {
                        shard: name.clone(),
                    })
                    .set(*count as i64);
            }
        }
        counts
    }

    /// Players of `shard` last active at or before `cutoff`, over all its slots.
    pub(super) async fn count_inactive(
        &self,
        shard: ShardIndex,
        cutoff: u64,
    ) -> Result<u64, String> {
        let mut total = 0;
        for slots in self.slots_of(shard).chunks(SLOTS_PER_ROUND_TRIP) {
            let counts = slots
                .iter()
                .map(|&slot| {
                    let mut count = redis::cmd("ZCOUNT");
                    count
                        .arg(SlotKeys::new(slot).active)
                        .arg("-inf")
                        .arg(cutoff);
                    Command::read(count)
                })
                .collect();
            let counts: Vec<u64> = self
                .store
                .call_all(shard, counts)
                .await
                .map_err(|e| e.to_string())?;
            total += counts.iter().sum::<u64>();
        }
        Ok(total)
    }

    /// The slots `shard` owns, in order.
    pub fn slots_of(&self, shard: ShardIndex) -> Vec<Slot> {
        self.store.shard_map().slots_of(shard)
    }

    /// Moves up to [`LEGACY_MOVES_PER_PASS`] members of each legacy per-shard set into
    /// their slots' sets (activity with `ZADD GT`, so a newer score is never lowered), then
    /// removes them from the legacy set. Returns how many were moved. Gateways of the
    /// previous layout still running may add members again; the next pass moves those.
    /// Nothing on a Redis Cluster.
    pub async fn drain_legacy_sets(&self, shard: ShardIndex) -> Result<u64, ArchiveError> {
        if self.store.is_cluster() {
            // Colony's cluster mode came after the slot sets: no gateway ever wrote the
            // per-shard sets there (and a key without a tag lives on one master only).
            return Ok(0);
        }
        async {
            let mut range = redis::cmd("ZRANGE");
            range
                .arg(LEGACY_ACTIVE_SET)
                .arg(0)
                .arg(LEGACY_MOVES_PER_PASS - 1)
                .arg("WITHSCORES");
            let active: Vec<(String, f64)> = self.store.call(shard, Command::read(range)).await?;
            let mut sample = redis::cmd("SRANDMEMBER");
            sample.arg(LEGACY_DIRTY_SET).arg(LEGACY_MOVES_PER_PASS);
            let dirty: Vec<String> = self.store.call(shard, Command::read(sample)).await?;
            if active.is_empty() && dirty.is_empty() {
                return Ok(0);
            }
            let slot_keys = |id: &str| SlotKeys::new(colony::keys::id_slot(id));
            // Bookkeeping that a failover may undo is moved again by the next pass: not waited.
            let mut moves = Vec::new();
            let plain = |cmd: &mut redis::Cmd| Command::plain(cmd.clone(), Effect::Housekeeping);
            for (id, score) in &active {
                moves.push(plain(
                    redis::cmd("ZADD")
                        .arg(slot_keys(id).active)
                        .arg("GT")
                        .arg(*score)
                        .arg(id),
                ));
                moves.push(plain(redis::cmd("ZREM").arg(LEGACY_ACTIVE_SET).arg(id)));
            }
            for id in &dirty {
                moves.push(plain(redis::cmd("SADD").arg(slot_keys(id).dirty).arg(id)));
                moves.push(plain(redis::cmd("SREM").arg(LEGACY_DIRTY_SET).arg(id)));
            }
            let _: Vec<redis::Value> = self.store.call_all(shard, moves).await?;
            Ok((active.len() + dirty.len()) as u64)
        }
        .await
        .map_err(self.on(shard))
    }

    /// Inactive players of `shard` (last active at or before `cutoff`), at most `limit`,
    /// from its slots in order.
    pub async fn candidates(
        &self,
        shard: ShardIndex,
        cutoff: u64,
        limit: usize,
    ) -> Result<Vec<String>, ArchiveError> {
        async {
            let slots = self.slots_of(shard);
            let found = self
                .candidates_from(shard, &slots, 0, cutoff, limit, &Default::default(), 0)
                .await?;
            Ok(found.ids)
        }
        .await
        .map_err(self.on(shard))
    }

    /// Inactive players of `slots[from..]`, at most `limit`, leaving out `skip`, and where to
    /// go on (see [`Candidates`]). Each slot is read `limit + in_flight` deep, so that
    /// `in_flight` skipped players (a batch still being moved) cannot hide the rest of a slot.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn candidates_from(
        &self,
        shard: ShardIndex,
        slots: &[Slot],
        from: usize,
        cutoff: u64,
        limit: usize,
        skip: &std::collections::HashSet<String>,
        in_flight: usize,
    ) -> Result<Candidates, ArchiveError> {
        let depth = limit + in_flight;
        let mut out = Vec::new();
        let mut at = from;
        while at < slots.len() {
            let chunk = &slots[at..(at + SLOTS_PER_ROUND_TRIP).min(slots.len())];
            let ranges = chunk
                .iter()
                .map(|&slot| {
                    let mut range = redis::cmd("ZRANGEBYSCORE");
                    range
                        .arg(SlotKeys::new(slot).active)
                        .arg("-inf")
                        .arg(cutoff)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(depth);
                    Command::read(range)
                })
                .collect();
            let replies: Vec<Vec<String>> = self.store.call_all(shard, ranges).await?;
            for ids in replies {
                let fresh: Vec<String> = ids
                    .iter()
                    .filter(|id| !skip.contains(*id))
                    .cloned()
                    .collect();
                let room = limit - out.len();
                let more_here = fresh.len() > room || (ids.len() == depth && !fresh.is_empty());
                out.extend(fresh.into_iter().take(room));
                if more_here {
                    return Ok(Candidates {
                        ids: out,
                        resume: at,
                    });
                }
                at += 1;
                if out.len() == limit {
                    return Ok(Candidates {
                        ids: out,
                        resume: at,
                    });
                }
            }
        }
        Ok(Candidates {
            ids: out,
            resume: at,
        })
    }
}

/// A batch of inactive players from a walk over a shard's slots.
#[derive(Debug, Default)]
pub(super) struct Candidates {
    /// The players, at most the limit asked for.
    pub(super) ids: Vec<String>,
    /// Where the walk goes on: a slot that may hold more (read again from its start, so
    /// its players already taken must be skipped), or the first slot not visited yet.
    pub(super) resume: usize,
}
