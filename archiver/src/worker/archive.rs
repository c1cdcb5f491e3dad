//! The archive pass: snapshots, one MongoDB command per batch, compare-on-version removals;
//! shards concurrently and apart.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mongodb::bson::{doc, DateTime};
use redis::Value as RedisValue;

use colony::keys::{PlayerKeys, SlotKeys};
use colony::shard_map::ShardIndex;
use colony::PlayerId;

use super::*;
use crate::document::{to_document, ClientFloor, DocState, Snapshot};
use crate::metrics::PassReport;

/// MongoDB's error code for a duplicate key.
const DUPLICATE_KEY: i32 = 11000;

/// A batch snapshotted and waiting for MongoDB.
pub(super) struct Snapshotted {
    ids: Vec<String>,
    snapshots: Vec<Result<Option<Snapshot>, ArchiveError>>,
}

/// A batch written to MongoDB and waiting for its removals: the outcome of each player known
/// so far, and the players (by position) to remove at the version written.
pub(super) struct Written {
    ids: Vec<String>,
    outcomes: Vec<Option<Result<Removal, ArchiveError>>>,
    removals: Vec<(usize, u64)>,
}

/// A player's meta as a drain's count looks at it: version, archived-at version, and the
/// slot move's tombstone.
type MetaLook = (Option<u64>, Option<u64>, Option<Vec<u8>>);

/// What one write of a write command did.
enum WriteOutcome {
    Written,
    /// A document with that `_id` exists (and, for an upsert, at a version at least as new).
    Duplicate,
    Failed(ArchiveError),
}

impl Archiver {
    /// Reads a player from Redis; `None` when it is already archived or does not exist. The
    /// call is acknowledged like a write (`snapshot.lua`): a snapshot whose state the replicas
    /// did not acknowledge is an error (UNKNOWN), never handed to MongoDB.
    pub async fn snapshot(
        &self,
        shard: ShardIndex,
        player: &PlayerId,
    ) -> Result<Option<Snapshot>, ArchiveError> {
        async {
            let keys = PlayerKeys::new(player);
            // A write, acknowledged: see snapshot.lua.
            let snapshot = Command::script(&SNAPSHOT, Effect::Writes)
                .key(&keys.meta)
                .key(&keys.public)
                .key(&keys.private)
                .key(&keys.clients);
            let reply: RedisValue = self.store.call(shard, snapshot).await?;
            let bad = || ArchiveError::UnexpectedReply("a snapshot that is not a list".into());
            let RedisValue::Array(items) = reply else {
                return Err(bad());
            };
            let [RedisValue::Int(version), RedisValue::Int(archived), public, private, windows] =
                items.as_slice()
            else {
                return Err(bad());
            };
            if *archived >= 0 || *version <= 0 {
                return Ok(None);
            }
            let flat = |v: &RedisValue| -> Result<Pairs, ArchiveError> {
                let RedisValue::Array(items) = v else {
                    return Err(bad());
                };
                items
                    .chunks_exact(2)
                    .map(|pair| match pair {
                        [RedisValue::BulkString(k), RedisValue::BulkString(v)] => {
                            Ok((k.clone(), v.clone()))
                        }
                        _ => Err(bad()),
                    })
                    .collect()
            };
            let mut clients = Vec::new();
            for (client, state) in flat(windows)? {
                let client = String::from_utf8_lossy(&client);
                let state = String::from_utf8_lossy(&state);
                match ClientFloor::from_window_state(&client, &state) {
                    Some(floor) => clients.push(floor),
                    None => {
                        tracing::warn!(player = %player.as_str(), %client, %state, "unreadable idempotency window left out of the snapshot")
                    }
                }
            }
            Ok(Some(Snapshot {
                player: player.as_str().to_string(),
                version: *version as u64,
                public: flat(public)?,
                private: flat(private)?,
                clients,
            }))
        }
        .await
        .map_err(self.on(shard))
    }

    /// Removes a player from Redis if it is still at `version` and still inactive.
    pub async fn remove(
        &self,
        shard: ShardIndex,
        player: &PlayerId,
        version: u64,
        cutoff: u64,
    ) -> Result<Removal, ArchiveError> {
        async {
            let keys = PlayerKeys::new(player);
            let archive = Command::script(&ARCHIVE, Effect::Writes)
                .key(&keys.meta)
                .key(&keys.public)
                .key(&keys.private)
                .key(SlotKeys::of_player(player).active)
                .key(&keys.clients)
                .arg(player.as_str())
                .arg(version)
                .arg(cutoff);
            let outcome: String = self.store.call(shard, archive).await?;
            match outcome.as_str() {
                "ARCHIVED" => Ok(Removal::Archived),
                "ALREADY" => Ok(Removal::Already),
                "CHANGED" => Ok(Removal::Changed),
                "ACTIVE" => Ok(Removal::Active),
                "LOCKED" => Ok(Removal::Locked),
                other => Err(ArchiveError::UnexpectedReply(format!(
                    "archive script answered {other:?}"
                ))),
            }
        }
        .await
        .map_err(self.on(shard))
    }

    /// Writes many snapshots to MongoDB (write concern majority, unordered), never over a
    /// newer version: an archive also rewrites the same version (same content, now marked
    /// archived), a checkpoint only replaces older ones. One result per snapshot, in order;
    /// an archive that meets a newer version is [`ArchiveError::NewerDocument`] (the player
    /// must stay in Redis), a checkpoint that does is done.
    ///
    /// An archive first inserts the whole batch (`insert`), which is all a player archived
    /// for the first time needs; only the players that already have a document (a duplicate
    /// key: archived before, or checkpointed) go through the compare-on-version upsert
    /// (`update`). A checkpoint mostly replaces documents it wrote before, so it goes straight
    /// to the upsert. Either way a document is written only where none exists or an older
    /// version does, so the two commands cannot lose a newer version.
    pub async fn write_documents(
        &self,
        shard: ShardIndex,
        snapshots: &[Snapshot],
        state: DocState,
    ) -> Vec<Result<(), ArchiveError>> {
        self.write_documents_unnamed(snapshots, state)
            .await
            .into_iter()
            .map(|result| result.map_err(self.on(shard)))
            .collect()
    }

    async fn write_documents_unnamed(
        &self,
        snapshots: &[Snapshot],
        state: DocState,
    ) -> Vec<Result<(), ArchiveError>> {
        let mut results: Vec<Result<(), ArchiveError>> = Vec::with_capacity(snapshots.len());
        let mut documents = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            match to_document(snapshot, DateTime::now(), state) {
                Ok(document) => {
                    results.push(Ok(()));
                    documents.push((results.len() - 1, document));
                }
                Err(e) => results.push(Err(e.into())),
            }
        }
        let upserts = if state == DocState::Archived {
            let inserts: Vec<Document> = documents.iter().map(|(_, d)| d.clone()).collect();
            let inserted = self.run_writes("insert", "documents", inserts).await;
            let mut duplicates = Vec::new();
            for ((position, document), outcome) in documents.into_iter().zip(inserted) {
                match outcome {
                    WriteOutcome::Written => {}
                    WriteOutcome::Duplicate => duplicates.push((position, document)),
                    WriteOutcome::Failed(e) => results[position] = Err(e),
                }
            }
            duplicates
        } else {
            documents
        };
        if upserts.is_empty() {
            return results;
        }
        let newer_than = if state == DocState::Archived {
            "$lte"
        } else {
            "$lt"
        };
        let (positions, updates): (Vec<usize>, Vec<Document>) = upserts
            .into_iter()
            .map(|(position, document)| {
                let version = document.get_i64("v").unwrap_or(0);
                let update = doc! {
                    "q": { "_id": document.get_str("_id").unwrap_or_default(), "v": { newer_than: version } },
                    "u": document,
                    "upsert": true,
                };
                (position, update)
            })
            .unzip();
        let updated = self.run_writes("update", "updates", updates).await;
        for (position, outcome) in positions.into_iter().zip(updated) {
            match outcome {
                WriteOutcome::Written => {}
                // The filter missed because a newer version is stored (an archive's `$lte`
                // matches the same version), and the upsert's insert then collided with it.
                // A checkpoint: the archive has this state or a later one. An archive: the
                // shard holds an older player than MongoDB, so it lost writes MongoDB has;
                // removing it would leave a marker no document matches, a player never
                // restored. It stays in Redis.
                WriteOutcome::Duplicate if state == DocState::Archived => {
                    results[position] = Err(ArchiveError::NewerDocument {
                        player: snapshots[position].player.clone(),
                        version: snapshots[position].version,
                    });
                }
                WriteOutcome::Duplicate => {}
                WriteOutcome::Failed(e) => results[position] = Err(e),
            }
        }
        results
    }

    /// Runs unordered write commands (`insert` or `update`) with write concern majority over
    /// `items` (its `field`), one command per MongoDB the items' players are placed in, run
    /// concurrently; says what happened to each item, in order. An item is placed by its
    /// document's `_id` (an `update`'s `q._id`), the player id.
    async fn run_writes(
        &self,
        command: &str,
        field: &str,
        items: Vec<Document>,
    ) -> Vec<WriteOutcome> {
        let mut groups: Vec<(usize, Vec<usize>, Vec<Document>)> = Vec::new();
        for (position, item) in items.into_iter().enumerate() {
            let id = item
                .get_str("_id")
                .or_else(|_| item.get_document("q").and_then(|q| q.get_str("_id")))
                .unwrap_or_default();
            let placed = self.placement(id);
            match groups.iter_mut().find(|(p, _, _)| *p == placed) {
                Some((_, positions, documents)) => {
                    positions.push(position);
                    documents.push(item);
                }
                None => groups.push((placed, vec![position], vec![item])),
            }
        }
        let count = groups.iter().map(|(_, p, _)| p.len()).sum();
        let replies = join_all(groups.into_iter().map(
            |(placed, positions, documents)| async move {
                let outcomes = self
                    .run_writes_on(&self.collections[placed], command, field, documents)
                    .await;
                (positions, outcomes)
            },
        ))
        .await;
        let mut outcomes: Vec<Option<WriteOutcome>> = (0..count).map(|_| None).collect();
        for (positions, replies) in replies {
            for (position, outcome) in positions.into_iter().zip(replies) {
                outcomes[position] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    WriteOutcome::Failed(ArchiveError::MongoReply("no write result".into()))
                })
            })
            .collect()
    }

    /// One unordered write command on `collection`; what happened to each item, in order.
    async fn run_writes_on(
        &self,
        collection: &Collection<Document>,
        command: &str,
        field: &str,
        items: Vec<Document>,
    ) -> Vec<WriteOutcome> {
        let count = items.len();
        let failed_all = |reason: String| {
            (0..count)
                .map(|_| WriteOutcome::Failed(ArchiveError::MongoReply(reason.clone())))
                .collect::<Vec<_>>()
        };
        let reply = collection
            .client()
            .database(collection.namespace().db.as_str())
            .run_command(doc! {
                command: collection.name(),
                field: items,
                "ordered": false,
                "writeConcern": { "w": "majority" },
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return failed_all(e.to_string()),
        };
        if let Ok(concern) = reply.get_document("writeConcernError") {
            return failed_all(format!("write concern not met: {concern}"));
        }
        let mut outcomes: Vec<WriteOutcome> = (0..count).map(|_| WriteOutcome::Written).collect();
        if let Ok(errors) = reply.get_array("writeErrors") {
            for error in errors.iter().filter_map(|e| e.as_document()) {
                let index = error.get_i32("index").unwrap_or(-1);
                let code = error.get_i32("code").unwrap_or(0);
                if let Some(outcome) = usize::try_from(index)
                    .ok()
                    .and_then(|i| outcomes.get_mut(i))
                {
                    *outcome = if code == DUPLICATE_KEY {
                        WriteOutcome::Duplicate
                    } else {
                        WriteOutcome::Failed(ArchiveError::MongoWrite {
                            code,
                            message: error.get_str("errmsg").unwrap_or("").to_string(),
                        })
                    };
                }
            }
        }
        outcomes
    }

    /// Snapshots a batch of one shard's players (step 2 of the move), concurrently on the
    /// shard's multiplexed connections. One result per id, in order: `None` when the player
    /// is archived already or gone.
    pub(super) async fn snapshot_batch(
        &self,
        shard: ShardIndex,
        ids: &[String],
    ) -> Vec<Result<Option<Snapshot>, ArchiveError>> {
        join_all(ids.iter().map(|id| async move {
            match PlayerId::new(id.clone()) {
                Ok(player) => self.snapshot(shard, &player).await,
                Err(e) => {
                    Err(ArchiveError::BadPlayerId(e.to_string()).on_shard(&self.shard_name(shard)))
                }
            }
        }))
        .await
    }

    /// Writes a snapshotted batch to MongoDB in one go (step 3 of the move).
    pub(super) async fn write_batch(&self, shard: ShardIndex, batch: Snapshotted) -> Written {
        let to_write: Vec<Snapshot> = batch
            .snapshots
            .iter()
            .filter_map(|s| s.as_ref().ok().and_then(Clone::clone))
            .collect();
        let mut written = self
            .write_documents(shard, &to_write, DocState::Archived)
            .await
            .into_iter();
        let mut outcomes = Vec::with_capacity(batch.ids.len());
        let mut removals = Vec::new();
        for (i, snapshot) in batch.snapshots.into_iter().enumerate() {
            match snapshot {
                Err(e) => outcomes.push(Some(Err(e))),
                Ok(None) => outcomes.push(Some(Ok(Removal::Already))),
                Ok(Some(snapshot)) => match written.next() {
                    Some(Ok(())) => {
                        outcomes.push(None);
                        removals.push((i, snapshot.version));
                    }
                    Some(Err(e)) => outcomes.push(Some(Err(e))),
                    None => outcomes.push(Some(Err(ArchiveError::MongoReply(
                        "no write result".into(),
                    )))),
                },
            }
        }
        Written {
            ids: batch.ids,
            outcomes,
            removals,
        }
    }

    /// Removes the players of a written batch that MongoDB acknowledged, each only if still at
    /// the version written and still inactive (step 4 of the move). One outcome per player of
    /// the batch, in order.
    pub(super) async fn remove_batch(
        &self,
        shard: ShardIndex,
        batch: Written,
        cutoff: u64,
    ) -> (Vec<String>, Vec<Result<Removal, ArchiveError>>) {
        let Written {
            ids,
            mut outcomes,
            removals,
        } = batch;
        let removed = join_all(removals.iter().map(|&(i, version)| {
            let id = &ids[i];
            async move {
                match PlayerId::new(id.clone()) {
                    Ok(player) => self.remove(shard, &player, version, cutoff).await,
                    Err(e) => Err(ArchiveError::BadPlayerId(e.to_string())),
                }
            }
        }))
        .await;
        for ((i, version), outcome) in removals.iter().zip(removed) {
            // A line per player whose move ended, with the version written to MongoDB.
            match &outcome {
                Ok(Removal::Archived) => {
                    tracing::debug!(shard = %self.shard_name(shard), player = %ids[*i], version, "archived")
                }
                Ok(kept @ (Removal::Changed | Removal::Active | Removal::Locked)) => {
                    tracing::debug!(shard = %self.shard_name(shard), player = %ids[*i], version, reason = ?kept, "kept in Redis")
                }
                Ok(Removal::Already) => {}
                Err(e) => {
                    tracing::warn!(shard = %self.shard_name(shard), player = %ids[*i], version, error = %e, "removal after the archive write failed; the player stays in Redis")
                }
            }
            outcomes[*i] = Some(outcome);
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(ArchiveError::UnexpectedReply("no outcome".into()))))
            .collect();
        (ids, outcomes)
    }

    /// One pass over every shard: up to `batch_size` inactive players per shard per round,
    /// rounds until none are left (or `dry_run`, which only counts candidates).
    pub async fn archive_pass(&self, now: u64, dry_run: bool) -> Result<PassReport, ArchiveError> {
        self.archive_pass_reporting(now, dry_run, |_| {}).await
    }

    /// [`Archiver::archive_pass`], calling `progress` with the running totals after each batch.
    ///
    /// Shards run concurrently and apart: a shard that fails (unreachable, failing over) is
    /// logged, counted in `colony_archiver_shard_failures_total` and named in
    /// [`PassReport::failed_shards`], and the others finish their pass.
    pub async fn archive_pass_reporting(
        &self,
        now: u64,
        dry_run: bool,
        progress: impl Fn(&PassReport),
    ) -> Result<PassReport, ArchiveError> {
        self.archive_pass_below(self.cutoff(now), dry_run, &progress)
            .await
    }

    /// Drains every shard: every live player, however recently active, is archived, so that
    /// the topology can be left (see "A way off a fixed topology" in the resharding design).
    /// Gateways must be stopped first: a player restored meanwhile is counted as left.
    ///
    /// Each round sweeps the intents of unfinished trades (a player holding one is never
    /// archived), then runs an archive pass with no inactivity cutoff, then counts the live
    /// players left. It ends when none is left, or when rounds have archived nothing for
    /// `patience` (intents whose lease has not passed, MongoDB refusing): the report then
    /// names how many players each shard still holds. `progress` gets each pass's totals.
    pub async fn drain(
        &self,
        patience: Duration,
        progress: impl Fn(&PassReport),
    ) -> Result<DrainReport, ArchiveError> {
        let mut report = DrainReport::default();
        let mut last_progress = Instant::now();
        loop {
            report.rounds += 1;
            let finished = self.sweep_pass().await;
            report.intents_finished += finished;
            let pass = self.archive_pass_below(u64::MAX, false, &progress).await?;
            report.archived += pass.archived;
            if pass.archived > 0 || finished > 0 {
                last_progress = Instant::now();
            }
            let counts = join_all(self.shards().map(|shard| async move {
                (self.shard_name(shard), self.left_after_drain(shard).await)
            }))
            .await;
            report.left.clear();
            report.failed_shards = pass.failed_shards;
            for (name, count) in counts {
                match count {
                    Ok(0) => {}
                    Ok(n) => report.left.push((name, n)),
                    Err(e) => {
                        tracing::warn!(shard = %name, error = %e, "could not count the players left");
                        if !report.failed_shards.contains(&name) {
                            report.failed_shards.push(name);
                        }
                    }
                }
            }
            if report.is_complete() || last_progress.elapsed() >= patience {
                return Ok(report);
            }
            if pass.archived == 0 {
                // Waiting for intents' leases to pass (or MongoDB to come back): a round
                // costs a walk over every slot, so not in a tight loop.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// What keeps `shard` from being left, as a drain's last look counts it: live players
    /// (each member of the slots' activity sets read, so that a stale entry of an archived
    /// player does not count), intents of unfinished trades (a participant that never
    /// existed is live only through its intent), and members of the previous layout's
    /// per-shard activity set not yet moved into the slot sets.
    pub(super) async fn left_after_drain(&self, shard: ShardIndex) -> Result<u64, String> {
        let mut left = 0;
        if !self.store.is_cluster() {
            let mut legacy = redis::cmd("ZCARD");
            legacy.arg(colony::keys::LEGACY_ACTIVE_SET);
            let legacy: u64 = self
                .store
                .call(shard, Command::read(legacy))
                .await
                .map_err(|e| e.to_string())?;
            left += legacy;
        }
        for slots in self.slots_of(shard).chunks(SLOTS_PER_ROUND_TRIP) {
            let counts = slots
                .iter()
                .flat_map(|&slot| {
                    let keys = SlotKeys::new(slot);
                    [keys.active, keys.intents].map(|key| {
                        let mut count = redis::cmd("ZCARD");
                        count.arg(key);
                        Command::read(count)
                    })
                })
                .collect();
            let counts: Vec<u64> = self
                .store
                .call_all(shard, counts)
                .await
                .map_err(|e| e.to_string())?;
            for (&slot, pair) in slots.iter().zip(counts.chunks_exact(2)) {
                left += pair[1];
                if pair[0] == 0 {
                    continue;
                }
                let mut members = redis::cmd("ZRANGE");
                members.arg(SlotKeys::new(slot).active).arg(0).arg(-1);
                let ids: Vec<String> = self
                    .store
                    .call(shard, Command::read(members))
                    .await
                    .map_err(|e| e.to_string())?;
                // A look at each one's meta, not a snapshot: the snapshot is a write that
                // waits for the replicas, and a count needs neither.
                for chunk in ids.chunks(self.config.batch_size) {
                    let mut looks = Vec::with_capacity(chunk.len());
                    for id in chunk {
                        let player = PlayerId::new(id.clone()).map_err(|e| {
                            ArchiveError::BadPlayerId(e.to_string())
                                .on_shard(&self.shard_name(shard))
                                .to_string()
                        })?;
                        let mut look = redis::cmd("HMGET");
                        look.arg(PlayerKeys::new(&player).meta)
                            .arg("v")
                            .arg("a")
                            .arg("m");
                        looks.push(Command::read(look));
                    }
                    let looks: Vec<MetaLook> = self
                        .store
                        .call_all(shard, looks)
                        .await
                        .map_err(|e| e.to_string())?;
                    for (id, (version, archived, parked)) in chunk.iter().zip(looks) {
                        if parked.is_some() {
                            return Err(format!("player {id:?} is being moved to another node"));
                        }
                        if version.unwrap_or(0) > 0 && archived.is_none() {
                            left += 1;
                        }
                    }
                }
            }
        }
        Ok(left)
    }

    /// An archive pass over every shard for players last active at or before `cutoff`.
    async fn archive_pass_below(
        &self,
        cutoff: u64,
        dry_run: bool,
        progress: &impl Fn(&PassReport),
    ) -> Result<PassReport, ArchiveError> {
        let now = now_ms();
        let totals = std::sync::Mutex::new(PassReport::default());
        // The shards of one map for the whole pass: a cluster's map may change meanwhile.
        let shards: Vec<ShardIndex> = self.shards().collect();
        let outcomes = join_all(
            shards
                .iter()
                .map(|&shard| self.archive_shard(shard, cutoff, dry_run, &totals, progress)),
        )
        .await;
        let mut report = totals.into_inner().unwrap_or_else(|p| p.into_inner());
        for (&shard, outcome) in shards.iter().zip(outcomes) {
            if let Err(e) = outcome {
                let name = self.shard_name(shard);
                tracing::warn!(shard = %name, error = %e.cause(), "archive pass failed on this shard; the other shards went on");
                self.metrics.shard_failure(&name, "archive");
                report.failed_shards.push(name);
            }
        }
        if !dry_run {
            self.metrics.pass(&report, now / 1000);
        }
        Ok(report)
    }

    /// One shard's part of an archive pass, adding its counts to `totals` after each batch.
    ///
    /// Batches are pipelined in three stages: while one batch's players are removed, the
    /// next is written to MongoDB and the one after is found and snapshotted. Each player
    /// still goes snapshot, write, acknowledged, removal, in that order; batches in flight
    /// never share a player (they are skipped when looking for the next, and slots are read
    /// deep enough that the skipped players cannot hide the others).
    pub(super) async fn archive_shard(
        &self,
        shard: ShardIndex,
        cutoff: u64,
        dry_run: bool,
        totals: &std::sync::Mutex<PassReport>,
        progress: &impl Fn(&PassReport),
    ) -> Result<(), ArchiveError> {
        async {
            let add = |f: &dyn Fn(&mut PassReport)| {
                let mut totals = totals.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut totals);
                progress(&totals);
            };
            if !dry_run {
                let moved = self.drain_legacy_sets(shard).await?;
                if moved > 0 {
                    tracing::info!(
                        shard = %self.shard_name(shard),
                        moved,
                        "moved legacy bookkeeping into slot sets"
                    );
                }
            }
            let slots = self.slots_of(shard);
            if dry_run {
                let found = self
                    .candidates_from(shard, &slots, 0, cutoff, self.config.batch_size, &Default::default(), 0)
                    .await?;
                add(&|t| t.candidates += found.ids.len() as u64);
                return Ok(());
            }
            // The configured rate is for the whole archiver; the shards that own slots run
            // concurrently (a cluster's map keeps a shard that was emptied, with no slots).
            let map = self.store.shard_map();
            let shards = map
                .indices()
                .filter(|&s| !map.slots_of(s).is_empty())
                .count()
                .max(1) as f64;
            let mut next_slot = 0;
            // Players this pass must not pick again: kept or failed ones (they wait for the
            // next pass) and the batch in flight.
            let mut skip = std::collections::HashSet::new();
            // The batch snapshotted and waiting for MongoDB, and the one written and waiting
            // for its removals.
            let mut snapshotted: Option<Snapshotted> = None;
            let mut written: Option<Written> = None;
            let mut walk_error = None;
            loop {
                let started = Instant::now();
                // Look for the next batch unless stopping or the walk is over.
                let look = !self.stopping() && next_slot < slots.len();
                let to_write = snapshotted.take();
                let to_remove = written.take();
                let in_flight = to_write.as_ref().map_or(0, |b| b.ids.len())
                    + to_remove.as_ref().map_or(0, |b| b.ids.len());
                let skip_now = &skip;
                let slots_now = &slots;
                let next = async move {
                    if !look {
                        return Ok(None);
                    }
                    let found = self
                        .candidates_from(
                            shard,
                            slots_now,
                            next_slot,
                            cutoff,
                            self.config.batch_size,
                            skip_now,
                            in_flight,
                        )
                        .await?;
                    let snapshots = if found.ids.is_empty() {
                        Vec::new()
                    } else {
                        self.snapshot_batch(shard, &found.ids).await
                    };
                    Ok::<_, ArchiveError>(Some((found, snapshots)))
                };
                let write = async {
                    match to_write {
                        Some(batch) => Some(self.write_batch(shard, batch).await),
                        None => None,
                    }
                };
                let remove = async {
                    match to_remove {
                        Some(batch) => Some(self.remove_batch(shard, batch, cutoff).await),
                        None => None,
                    }
                };
                let (next, wrote, removed) = tokio::join!(next, write, remove);
                written = wrote;
                let mut stalled = false;
                if let Some((ids, outcomes)) = removed {
                    let (mut archived, mut kept, mut failed, mut progressed) = (0, 0, 0, false);
                    for (id, outcome) in ids.iter().zip(outcomes) {
                        match outcome {
                            Ok(Removal::Archived) => {
                                archived += 1;
                                progressed = true;
                                skip.remove(id);
                            }
                            // Skipped for the rest of the pass, as kept and failed players are
                            // (until the next pass): a stale entry of the active set left
                            // behind is not met again and again.
                            Ok(Removal::Already) => progressed = true,
                            Ok(Removal::Changed | Removal::Active | Removal::Locked) => kept += 1,
                            Err(e) => {
                                tracing::warn!(player = %id, error = %e, "archiving failed; the player stays in Redis");
                                failed += 1;
                            }
                        }
                    }
                    add(&|t| {
                        t.candidates += ids.len() as u64;
                        t.archived += archived;
                        t.kept += kept;
                        t.failed += failed;
                    });
                    stalled = failed > 0 && !progressed;
                    if self.config.max_players_per_sec > 0 {
                        let budget = Duration::from_secs_f64(
                            ids.len() as f64 * shards / self.config.max_players_per_sec as f64,
                        );
                        if let Some(rest) = budget.checked_sub(started.elapsed()) {
                            tokio::time::sleep(rest).await;
                        }
                    }
                }
                match next {
                    Ok(Some((found, snapshots))) => {
                        next_slot = found.resume;
                        if !found.ids.is_empty() {
                            skip.extend(found.ids.iter().cloned());
                            snapshotted = Some(Snapshotted {
                                ids: found.ids,
                                snapshots,
                            });
                        }
                    }
                    Ok(None) => {}
                    // The walk stops; the batches in hand are still finished, then the
                    // shard's pass reports the error.
                    Err(e) => {
                        walk_error.get_or_insert(e);
                        next_slot = slots.len();
                    }
                }
                // A batch that failed entirely (MongoDB down, say) ends the shard's walk; the
                // batches in hand are still finished.
                if stalled {
                    next_slot = slots.len();
                }
                let idle = snapshotted.is_none() && written.is_none();
                if idle && (next_slot >= slots.len() || self.stopping()) {
                    break;
                }
            }
            match walk_error {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        .await
        .map_err(self.on(shard))
    }
}

/// What a drain did ([`Archiver::drain`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DrainReport {
    /// Rounds run (a sweep, an archive pass, a count).
    pub rounds: u32,
    /// Players archived.
    pub archived: u64,
    /// Intents of unfinished trades the sweeps finished.
    pub intents_finished: u64,
    /// Shards still holding live players, intents or unmoved entries of the previous
    /// layout's activity set after the last round, with how many
    /// ([`Archiver::left_after_drain`]).
    pub left: Vec<(String, u64)>,
    /// Shards the last round could not finish or count.
    pub failed_shards: Vec<String>,
}

impl DrainReport {
    /// Whether every shard is empty of live players, as counted after the last round.
    pub fn is_complete(&self) -> bool {
        self.left.is_empty() && self.failed_shards.is_empty()
    }
}
