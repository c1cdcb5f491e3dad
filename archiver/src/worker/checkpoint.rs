//! Checkpoints (changed live players copied to MongoDB) and rebuilding a lost shard from
//! MongoDB.

use futures_util::future::join_all;
use mongodb::bson::doc;

use colony::keys::{PlayerKeys, SlotKeys};
use colony::shard_map::ShardIndex;
use colony::PlayerId;

use super::*;
use crate::document::{document_state, from_document, DocState};

impl Archiver {
    /// Copies the players of every shard that changed since their last checkpoint to MongoDB,
    /// leaving them in Redis. Returns how many were copied. Shards run concurrently and apart:
    /// one that fails is logged and counted (`colony_archiver_shard_failures_total`), and the
    /// others finish.
    pub async fn checkpoint_pass(&self) -> Result<u64, ArchiveError> {
        // The shards of one map for the whole pass: a cluster's map may change meanwhile.
        let shards: Vec<ShardIndex> = self.shards().collect();
        let outcomes = join_all(shards.iter().map(|&shard| self.checkpoint_shard(shard))).await;
        let mut copied = 0;
        for (&shard, outcome) in shards.iter().zip(outcomes) {
            match outcome {
                Ok(n) => copied += n,
                Err(e) => {
                    let name = self.shard_name(shard);
                    tracing::warn!(shard = %name, error = %e.cause(), "checkpoint failed on this shard; the other shards went on");
                    self.metrics.shard_failure(&name, "checkpoint");
                }
            }
        }
        Ok(copied)
    }

    /// One shard's checkpoints: its slots' dirty sets, read in bounded chunks — sizes for
    /// [`SLOTS_PER_ROUND_TRIP`] slots at a time, then `SSCAN` pages of `batch_size` — and
    /// checkpointed `batch_size` players at a time, so memory stays bounded however many
    /// players changed.
    pub(super) async fn checkpoint_shard(&self, shard: ShardIndex) -> Result<u64, ArchiveError> {
        async {
            let batch = self.config.batch_size;
            let mut copied = 0;
            // One round over the players dirty now, slot by slot; those that change meanwhile
            // wait for the next pass (or are met again by the scan: a second copy is harmless).
            let mut pending: Vec<String> = Vec::with_capacity(batch * 2);
            for slots in self.slots_of(shard).chunks(SLOTS_PER_ROUND_TRIP) {
                let sizes = slots
                    .iter()
                    .map(|&slot| {
                        let mut size = redis::cmd("SCARD");
                        size.arg(SlotKeys::new(slot).dirty);
                        Command::read(size)
                    })
                    .collect();
                let sizes: Vec<u64> = self.store.call_all(shard, sizes).await?;
                for (&slot, size) in slots.iter().zip(sizes) {
                    if size == 0 {
                        continue;
                    }
                    let key = SlotKeys::new(slot).dirty;
                    let mut cursor = 0u64;
                    loop {
                        let mut scan = redis::cmd("SSCAN");
                        scan.arg(&key).arg(cursor).arg("COUNT").arg(batch);
                        let (next, ids): (u64, Vec<String>) =
                            self.store.call(shard, Command::read(scan)).await?;
                        pending.extend(ids);
                        while pending.len() >= batch {
                            let chunk: Vec<String> = pending.drain(..batch).collect();
                            copied += self.checkpoint_batch(shard, &chunk).await?;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
            if !pending.is_empty() {
                copied += self.checkpoint_batch(shard, &pending).await?;
            }
            Ok(copied)
        }
        .await
        .map_err(self.on(shard))
    }

    /// Checkpoints one batch of a shard's dirty players; returns how many were copied.
    pub(super) async fn checkpoint_batch(
        &self,
        shard: ShardIndex,
        chunk: &[String],
    ) -> Result<u64, ArchiveError> {
        // Every snapshot of the batch is sent at once on the store's shared links (pipelined,
        // not a round trip per player), and so are the flags cleared after MongoDB's answer.
        let mut gone = Vec::new();
        let mut players = Vec::with_capacity(chunk.len());
        for id in chunk {
            match PlayerId::new(id.clone()) {
                Ok(player) => players.push(player),
                // Not a valid id: nothing can checkpoint it; drop it from its slot's set.
                Err(_) => gone.push(id.clone()),
            }
        }
        let taken = join_all(players.iter().map(|p| self.snapshot(shard, p))).await;
        let mut snapshots = Vec::with_capacity(players.len());
        // A player whose snapshot failed stays dirty and the batch goes on: one player that
        // cannot be read now (parked by a slot move, its snapshot not acknowledged) must not
        // hold back the rest of the shard, pass after pass. When every snapshot failed, the
        // shard itself is failing, and the batch fails with the first error.
        let (mut failed, mut first_error) = (0, None);
        for (player, taken) in players.iter().zip(taken) {
            match taken {
                Ok(Some(snapshot)) => snapshots.push(snapshot),
                // Archived since (its archive is newer than any checkpoint) or gone.
                Ok(None) => gone.push(player.as_str().to_string()),
                Err(e) => {
                    tracing::warn!(player = %player.as_str(), error = %e, "checkpoint snapshot failed; it stays dirty");
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if failed == players.len() {
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        let written = self
            .write_documents(shard, &snapshots, DocState::Checkpoint)
            .await;
        let mut clears = Vec::new();
        for (snapshot, result) in snapshots.iter().zip(written) {
            match result {
                Ok(()) => clears.push(snapshot),
                Err(e) => {
                    tracing::warn!(player = %snapshot.player, version = snapshot.version, error = %e, "checkpoint failed; it stays dirty")
                }
            }
        }
        // A flag cleared and then undone by a failover only makes the player copied again:
        // housekeeping, not waited for.
        let cleared = join_all(clears.iter().map(|snapshot| async move {
            let player = PlayerId::new(snapshot.player.clone())
                .map_err(|e| ArchiveError::BadPlayerId(e.to_string()))?;
            let keys = PlayerKeys::new(&player);
            let clear = Command::script(&CHECKPOINTED, Effect::Housekeeping)
                .key(&keys.meta)
                .key(SlotKeys::of_player(&player).dirty)
                .arg(&snapshot.player)
                .arg(snapshot.version);
            let _: i64 = self.store.call(shard, clear).await?;
            Ok::<(), ArchiveError>(())
        }))
        .await;
        let mut copied = 0;
        for outcome in cleared {
            outcome?;
            copied += 1;
        }
        if !gone.is_empty() {
            let drops = gone
                .iter()
                .map(|id| {
                    let mut drop = redis::cmd("SREM");
                    drop.arg(SlotKeys::new(colony::keys::id_slot(id)).dirty)
                        .arg(id);
                    Command::plain(drop, Effect::Housekeeping)
                })
                .collect();
            let _: Vec<redis::Value> = self.store.call_all(shard, drops).await?;
        }
        Ok(copied)
    }

    /// Refills `shard` from MongoDB after its Redis data was lost: every archived player gets
    /// its marker back, every checkpointed player comes back live. Players present in Redis
    /// are left alone. Returns (marked, live).
    pub async fn rebuild(&self, shard: ShardIndex) -> Result<(u64, u64), ArchiveError> {
        let report = self.rebuild_shards(&[shard], |_| {}).await?;
        if report.misplaced > 0 {
            return Err(ArchiveError::Config(format!(
                "{} documents are outside the MongoDB their slot names (was archive.mongodb_uris changed?); they were not marked",
                report.misplaced
            ))
            .on_shard(&self.shard_name(shard)));
        }
        Ok((report.marked, report.live))
    }

    /// Refills every shard of the map from MongoDB, each MongoDB read once: the last step of
    /// leaving a topology (the drain archived every player on the old one; this gives each
    /// its marker on the new one), or a cluster that lost everything. Players present in
    /// Redis are left alone, so it can be run again. `progress` gets the running totals.
    pub async fn rebuild_all(
        &self,
        progress: impl Fn(&RebuildReport),
    ) -> Result<RebuildReport, ArchiveError> {
        let shards: Vec<ShardIndex> = self.shards().collect();
        self.rebuild_shards(&shards, progress).await
    }

    /// Refills `shards` from the MongoDBs that can hold their players: documents are read
    /// in `batch_size` chunks and written back concurrently, each on the shard the store's
    /// map names for its player now.
    async fn rebuild_shards(
        &self,
        shards: &[ShardIndex],
        progress: impl Fn(&RebuildReport),
    ) -> Result<RebuildReport, ArchiveError> {
        use futures_util::TryStreamExt;
        let map = self.store.shard_map().clone();
        let count = self.collections.len();
        // Only the MongoDBs whose block of slots meets a slot of these shards.
        let mut wanted = vec![false; count];
        for &shard in shards {
            for slot in map.slots_of(shard) {
                wanted[slot.even_block(count)] = true;
            }
        }
        let mut report = RebuildReport::default();
        for (placed, collection) in self.collections.iter().enumerate() {
            if !wanted[placed] {
                continue;
            }
            let mut cursor = collection.find(doc! {}).await?;
            let mut batch = Vec::with_capacity(self.config.batch_size);
            loop {
                let document = cursor.try_next().await?;
                let end = document.is_none();
                if let Some(document) = document {
                    let snapshot = from_document(&document)?;
                    let state = document_state(&document)?;
                    let Ok(player) = PlayerId::new(snapshot.player.clone()) else {
                        report.skipped += 1;
                        continue;
                    };
                    // A document its slot places in another MongoDB (the list was changed,
                    // or an older rule put it here): a restore would not look for it here,
                    // so a marker would make its player unavailable.
                    if self.placement(player.as_str()) != placed {
                        tracing::warn!(player = %player.as_str(), mongodb = placed, placed_in = self.placement(player.as_str()), "document outside its placement; not marked");
                        report.misplaced += 1;
                        continue;
                    }
                    let shard = map.shard_for_player(&player);
                    if shards.contains(&shard) {
                        batch.push((shard, player, snapshot, state));
                    }
                }
                if batch.len() >= self.config.batch_size || (end && !batch.is_empty()) {
                    let written = join_all(batch.drain(..).map(
                        |(shard, player, snapshot, state)| async move {
                            let mode = if state == DocState::Archived {
                                "a"
                            } else {
                                "c"
                            };
                            let command = write_back(&REBUILD, &player, &snapshot, mode);
                            let outcome: Result<String, ArchiveError> =
                                self.store.call(shard, command).await.map_err(Into::into);
                            outcome.map_err(self.on(shard))
                        },
                    ))
                    .await;
                    for outcome in written {
                        match outcome?.as_str() {
                            "MARKED" => report.marked += 1,
                            "LIVE" => report.live += 1,
                            _ => report.present += 1,
                        }
                    }
                    progress(&report);
                }
                if end {
                    break;
                }
            }
        }
        Ok(report)
    }
}

/// What a rebuild did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    /// Archived players given their marker.
    pub marked: u64,
    /// Checkpointed players brought back live.
    pub live: u64,
    /// Players already in Redis, left alone.
    pub present: u64,
    /// Documents whose `_id` is not a valid player id, left alone.
    pub skipped: u64,
    /// Documents in a MongoDB other than the one their slot's block names
    /// ([`Archiver::placement`]): not marked, since a restore would not find them.
    pub misplaced: u64,
}
