//! The archiver's work: archive passes (Redis to MongoDB), restores (MongoDB to Redis), and
//! the loop that runs them.
//!
//! ## The move, and why a crash at any step is safe
//!
//! 1. Take the inactive players of a shard from its slots' `colony:{<slot tag>}:active` sets
//!    (score below the cutoff), walking the shard's slots in order.
//! 2. Snapshot each (a read-only script: version and both hashes).
//! 3. Write the document to MongoDB with write concern `majority`, as an upsert that only
//!    replaces an older version (`v < version`); a duplicate-key error means a version at
//!    least as new is already stored, which is success.
//! 4. Only then, a script removes the player from Redis — if its version is still the one
//!    written and it has not become active again (by `{id}:meta` `t`, whatever the set's
//!    score says) — and leaves the marker `a = version`.
//!
//! ## Work per pass
//!
//! A pass visits each slot of each shard at most once, [`SLOTS_PER_ROUND_TRIP`] slots per
//! pipelined round trip, and archives at most `archive.batch_size` players per batch; a slot
//! that fills a batch is visited again before the pass moves on, unless everything it
//! returned was already kept or failed in this pass (those wait for the next pass). So a pass
//! costs round trips in proportion to the shard's slots and its inactive players, never to
//! its active ones. Checkpoint passes walk the slots' `dirty` sets the same way. Each pass
//! also moves a bounded batch of what the legacy per-shard sets (`colony:active`,
//! `colony:dirty`) still hold into the slot sets, so a cluster upgraded in place loses no
//! bookkeeping.
//!
//! A crash before 4 leaves the player in Redis (and maybe a document in MongoDB, overwritten by
//! the next pass); a crash after 4 leaves it archived. At every instant the player is live in
//! Redis or durable in MongoDB, and Redis is never cleared without MongoDB's acknowledgement.
//!
//! ## Restores
//!
//! The store queues `f:<id>` (everything, for the owner) or `p:<id>` (the public part) in the
//! shard's `colony:restores` sorted set (by request time; a request already waiting is not
//! queued twice, and the set holds at most `redis.max_restore_requests`) when a transaction
//! meets an archived player, and retries the transaction. The archiver takes the oldest with
//! `BZPOPMIN` on a connection of its own per shard (after anything left in the previous
//! version's `colony:restore` list),
//! reads the document and runs the restore script, which only acts on a player still marked
//! archived at the document's version: concurrent and repeated restores are harmless.
//!
//! ## Worker contract
//!
//! On shutdown (SIGTERM, Ctrl-C) the archiver takes no new batch of candidates and no new
//! restore request; the batch in hand is finished — its documents written and its players
//! removed or left in Redis — and so is a restore in progress. Interrupting it anywhere
//! (SIGKILL) is still safe by the argument above; finishing only saves redoing the work.
//! MongoDB or Redis down: the pass fails, the players stay in Redis, and the next pass (every
//! `scan_interval_secs`) tries again; restore queues reconnect after a second.
//!
//! **Shards are apart.** Archive and checkpoint passes run every shard concurrently; a shard
//! that fails is logged by name, counted (`colony_archiver_shard_failures_total`) and named
//! in the pass report, and the other shards finish. Each shard has its own restore loop. The
//! status page asks the shards concurrently and waits at most [`SHARD_QUESTION_TIMEOUT`] for
//! each.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::{CollectionOptions, WriteConcern};
use mongodb::Collection;
use redis::Value as RedisValue;
use tokio::sync::watch;

use colony::config::ArchiveConfig;
use colony::keys::{
    PlayerKeys, SlotKeys, LEGACY_ACTIVE_SET, LEGACY_DIRTY_SET, LEGACY_RESTORE_QUEUE, RESTORE_QUEUE,
};
use colony::shard_map::ShardIndex;
use colony::slot::Slot;
use colony::{Config, PlayerId, Store};

use crate::document::{
    document_state, from_document, to_document, ClientFloor, DocState, Pairs, Snapshot,
};

/// Slots asked about in one pipelined round trip when a pass walks a shard's slots.
pub const SLOTS_PER_ROUND_TRIP: usize = 512;

/// How long the status page and the backlog gauge wait for one shard: a shard that is down
/// is reported as not answering rather than holding the page.
pub const SHARD_QUESTION_TIMEOUT: Duration = Duration::from_secs(2);

/// Most members moved from each legacy per-shard set into the slot sets per pass.
pub const LEGACY_MOVES_PER_PASS: usize = 1000;

/// Pause before reading a shard's restore queue again after it failed.
pub const RESTORE_QUEUE_PAUSE: Duration = Duration::from_millis(250);

static SNAPSHOT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("snapshot.lua")));
static ARCHIVE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("archive.lua")));
static RESTORE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(concat!(
        include_str!("write_back.lua"),
        include_str!("restore.lua")
    ))
});
static REBUILD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(concat!(
        include_str!("write_back.lua"),
        include_str!("rebuild.lua")
    ))
});
static CHECKPOINTED: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("checkpointed.lua")));

/// Everything that can stop a step of the archiver.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Configuration is missing or wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// Redis failed or could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// MongoDB failed or could not be reached.
    #[error("mongodb: {0}")]
    Mongo(String),
    /// A stored document cannot be read.
    #[error(transparent)]
    Document(#[from] crate::document::DocumentError),
    /// The player is marked archived but no document exists.
    #[error("player {0:?} is marked archived but has no document")]
    MissingDocument(String),
}

impl From<colony::Error> for ArchiveError {
    fn from(e: colony::Error) -> Self {
        ArchiveError::Redis(e.to_string())
    }
}

impl From<redis::RedisError> for ArchiveError {
    fn from(e: redis::RedisError) -> Self {
        ArchiveError::Redis(e.to_string())
    }
}

impl From<mongodb::error::Error> for ArchiveError {
    fn from(e: mongodb::error::Error) -> Self {
        ArchiveError::Mongo(e.to_string())
    }
}

/// What removing one player from Redis found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed; the marker is in place.
    Archived,
    /// It was archived already.
    Already,
    /// It changed after the snapshot: it stays in Redis.
    Changed,
    /// It became active after the snapshot: it stays in Redis.
    Active,
}

/// What a restore found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restoral {
    /// Everything is back.
    Restored,
    /// The public part is back.
    PublicRestored,
    /// The player was not archived (already restored by someone else).
    NotArchived,
}

/// Counts of one archive pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Inactive players looked at.
    pub candidates: u64,
    /// Players moved to MongoDB and removed from Redis.
    pub archived: u64,
    /// Players that changed or became active during the move and stayed.
    pub kept: u64,
    /// Players that failed (and stayed in Redis).
    pub failed: u64,
    /// Shards whose pass stopped on an error (by name); the other shards went on.
    pub failed_shards: Vec<String>,
}

/// The archiver: the store's shards, and one MongoDB collection per shard.
pub struct Archiver {
    store: Store,
    config: ArchiveConfig,
    collections: Vec<Collection<Document>>,
    metrics: crate::metrics::ArchiverMetrics,
    /// Set on shutdown: passes take no new batch after it.
    stopping: std::sync::atomic::AtomicBool,
}

/// An invocation of a script loaded with `write_back.lua` in front (restore, rebuild): the
/// player's keys, then player id, version, `mode`, the numbers of public pairs and client
/// floors, the pairs, and the floors.
fn write_back<'a>(
    script: &'a redis::Script,
    player: &PlayerId,
    snapshot: &Snapshot,
    mode: &str,
) -> redis::ScriptInvocation<'a> {
    let keys = PlayerKeys::new(player);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&keys.meta)
        .key(&keys.public)
        .key(&keys.private)
        .key(SlotKeys::of_player(player).active)
        .key(&keys.clients)
        .arg(player.as_str())
        .arg(snapshot.version)
        .arg(mode)
        .arg(snapshot.public.len())
        .arg(snapshot.clients.len());
    for (field, value) in snapshot.public.iter().chain(&snapshot.private) {
        invocation.arg(field.as_slice()).arg(value.as_slice());
    }
    for floor in &snapshot.clients {
        invocation
            .arg(&floor.client)
            .arg(floor.floor)
            .arg(floor.last_write_ms);
    }
    invocation
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}

impl Archiver {
    /// Builds the store and the MongoDB clients from `config`. Connections open lazily.
    pub async fn new(config: &Config) -> Result<Archiver, ArchiveError> {
        let archive = config.archive.clone();
        if archive.mongodb_uris.is_empty() {
            return Err(ArchiveError::Config("archive.mongodb_uris is empty".into()));
        }
        let store = Store::new(config).map_err(|e| ArchiveError::Config(e.to_string()))?;
        let shards = store.shard_map().shards().len();
        let mut clients = Vec::new();
        for uri in &archive.mongodb_uris {
            let mut options = mongodb::options::ClientOptions::parse(uri).await?;
            options.server_selection_timeout = Some(Duration::from_secs(5));
            options.connect_timeout = Some(Duration::from_secs(2));
            options.app_name = Some("colony-archiver".into());
            clients.push(mongodb::Client::with_options(options)?);
        }
        let write_concern = WriteConcern::majority();
        let collections = (0..shards)
            .map(|shard| {
                let client = &clients[if clients.len() == 1 { 0 } else { shard }];
                client
                    .database(&archive.database)
                    .collection_with_options::<Document>(
                        &archive.collection,
                        CollectionOptions::builder()
                            .write_concern(write_concern.clone())
                            .build(),
                    )
            })
            .collect();
        Ok(Archiver {
            store,
            config: archive,
            collections,
            metrics: crate::metrics::ArchiverMetrics::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Asks running passes to finish the batch in hand and take no new one.
    pub fn stop_passes(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The archiver's metrics.
    pub fn metrics(&self) -> &crate::metrics::ArchiverMetrics {
        &self.metrics
    }

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
    async fn count_inactive(&self, shard: ShardIndex, cutoff: u64) -> Result<u64, String> {
        let mut conn = self
            .store
            .master_connection(shard)
            .await
            .map_err(|e| e.to_string())?;
        let mut total = 0;
        for slots in self.slots_of(shard).chunks(SLOTS_PER_ROUND_TRIP) {
            let mut pipe = redis::pipe();
            for &slot in slots {
                pipe.cmd("ZCOUNT")
                    .arg(SlotKeys::new(slot).active)
                    .arg("-inf")
                    .arg(cutoff);
            }
            let counts: Vec<u64> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            total += counts.iter().sum::<u64>();
        }
        Ok(total)
    }

    /// The store the archiver works on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn shards(&self) -> impl Iterator<Item = ShardIndex> {
        (0..self.collections.len()).map(ShardIndex)
    }

    /// The slots `shard` owns, in order.
    pub fn slots_of(&self, shard: ShardIndex) -> Vec<Slot> {
        self.store
            .shard_map()
            .ranges()
            .into_iter()
            .filter(|&(_, _, owner)| owner == shard)
            .flat_map(|(start, end, _)| (start..=end).filter_map(Slot::new))
            .collect()
    }

    /// Moves up to [`LEGACY_MOVES_PER_PASS`] members of each legacy per-shard set into
    /// their slots' sets (activity with `ZADD GT`, so a newer score is never lowered), then
    /// removes them from the legacy set. Returns how many were moved. Gateways of the
    /// previous layout still running may add members again; the next pass moves those.
    pub async fn drain_legacy_sets(&self, shard: ShardIndex) -> Result<u64, ArchiveError> {
        let mut conn = self.store.master_connection(shard).await?;
        let active: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(LEGACY_ACTIVE_SET)
            .arg(0)
            .arg(LEGACY_MOVES_PER_PASS - 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let dirty: Vec<String> = redis::cmd("SRANDMEMBER")
            .arg(LEGACY_DIRTY_SET)
            .arg(LEGACY_MOVES_PER_PASS)
            .query_async(&mut conn)
            .await?;
        if active.is_empty() && dirty.is_empty() {
            return Ok(0);
        }
        let slot_keys = |id: &str| SlotKeys::new(colony::keys::id_slot(id));
        let mut pipe = redis::pipe();
        for (id, score) in &active {
            pipe.cmd("ZADD")
                .arg(slot_keys(id).active)
                .arg("GT")
                .arg(*score)
                .arg(id)
                .ignore()
                .cmd("ZREM")
                .arg(LEGACY_ACTIVE_SET)
                .arg(id)
                .ignore();
        }
        for id in &dirty {
            pipe.cmd("SADD")
                .arg(slot_keys(id).dirty)
                .arg(id)
                .ignore()
                .cmd("SREM")
                .arg(LEGACY_DIRTY_SET)
                .arg(id)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        Ok((active.len() + dirty.len()) as u64)
    }

    /// The last-active time below which players are archived, for `now` (ms).
    pub fn cutoff(&self, now: u64) -> u64 {
        now.saturating_sub(self.config.inactive_after_secs.saturating_mul(1000))
    }

    /// Inactive players of `shard` (last active at or before `cutoff`), at most `limit`,
    /// from its slots in order.
    pub async fn candidates(
        &self,
        shard: ShardIndex,
        cutoff: u64,
        limit: usize,
    ) -> Result<Vec<String>, ArchiveError> {
        let slots = self.slots_of(shard);
        let (ids, _) = self
            .candidates_from(shard, &slots, 0, cutoff, limit, &Default::default())
            .await?;
        Ok(ids)
    }

    /// Inactive players of `slots[from..]`, at most `limit`, leaving out `skip`. Returns them
    /// and where to go on: the index of a slot that may hold more (it filled the batch with
    /// players not skipped), or past the last slot visited.
    async fn candidates_from(
        &self,
        shard: ShardIndex,
        slots: &[Slot],
        from: usize,
        cutoff: u64,
        limit: usize,
        skip: &std::collections::HashSet<String>,
    ) -> Result<(Vec<String>, usize), ArchiveError> {
        let mut conn = self.store.master_connection(shard).await?;
        let mut out = Vec::new();
        let mut at = from;
        while at < slots.len() {
            let chunk = &slots[at..(at + SLOTS_PER_ROUND_TRIP).min(slots.len())];
            let mut pipe = redis::pipe();
            for &slot in chunk {
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(SlotKeys::new(slot).active)
                    .arg("-inf")
                    .arg(cutoff)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
            }
            let replies: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
            for ids in replies {
                let fresh: Vec<String> = ids
                    .iter()
                    .filter(|id| !skip.contains(*id))
                    .cloned()
                    .collect();
                let room = limit - out.len();
                let more_here = fresh.len() > room || (ids.len() == limit && !fresh.is_empty());
                out.extend(fresh.into_iter().take(room));
                if more_here {
                    return Ok((out, at));
                }
                at += 1;
                if out.len() == limit {
                    return Ok((out, at));
                }
            }
        }
        Ok((out, at))
    }

    /// Reads a player from Redis; `None` when it is already archived or does not exist.
    pub async fn snapshot(
        &self,
        shard: ShardIndex,
        player: &PlayerId,
    ) -> Result<Option<Snapshot>, ArchiveError> {
        let keys = PlayerKeys::new(player);
        let mut conn = self.store.master_connection(shard).await?;
        let reply: RedisValue = SNAPSHOT
            .key(&keys.meta)
            .key(&keys.public)
            .key(&keys.private)
            .key(&keys.clients)
            .invoke_async(&mut conn)
            .await?;
        let bad = || ArchiveError::Redis("unexpected snapshot reply".into());
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

    /// Writes `snapshot` to MongoDB as an archive, with write concern majority, never over a
    /// newer version (the same version is rewritten: same content, now marked archived).
    pub async fn write_document(
        &self,
        shard: ShardIndex,
        snapshot: &Snapshot,
    ) -> Result<(), ArchiveError> {
        let document = to_document(snapshot, DateTime::now(), DocState::Archived)?;
        let filter =
            doc! { "_id": &snapshot.player, "v": { "$lte": document.get_i64("v").unwrap_or(0) } };
        let written = self.collections[shard.0]
            .replace_one(filter, document)
            .upsert(true)
            .await;
        match written {
            Ok(_) => Ok(()),
            // The filter missed because a version at least as new is stored, and the upsert's
            // insert then collided with it: the archive already has this state or a later one.
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a player from Redis if it is still at `version` and still inactive.
    pub async fn remove(
        &self,
        shard: ShardIndex,
        player: &PlayerId,
        version: u64,
        cutoff: u64,
    ) -> Result<Removal, ArchiveError> {
        let keys = PlayerKeys::new(player);
        let mut conn = self.store.master_connection(shard).await?;
        let outcome: String = ARCHIVE
            .key(&keys.meta)
            .key(&keys.public)
            .key(&keys.private)
            .key(SlotKeys::of_player(player).active)
            .key(&keys.clients)
            .arg(player.as_str())
            .arg(version)
            .arg(cutoff)
            .invoke_async(&mut conn)
            .await?;
        match outcome.as_str() {
            "ARCHIVED" => Ok(Removal::Archived),
            "ALREADY" => Ok(Removal::Already),
            "CHANGED" => Ok(Removal::Changed),
            "ACTIVE" => Ok(Removal::Active),
            other => Err(ArchiveError::Redis(format!(
                "unexpected archive reply {other:?}"
            ))),
        }
    }

    /// Writes many snapshots in one `update` command (unordered, write concern majority),
    /// never over a newer version: an archive also rewrites the same version (same content,
    /// now marked archived), a checkpoint only replaces older ones. One result per snapshot,
    /// in order.
    pub async fn write_documents(
        &self,
        shard: ShardIndex,
        snapshots: &[Snapshot],
        state: DocState,
    ) -> Vec<Result<(), ArchiveError>> {
        let newer_than = if state == DocState::Archived {
            "$lte"
        } else {
            "$lt"
        };
        let collection = &self.collections[shard.0];
        let mut updates = Vec::with_capacity(snapshots.len());
        let mut results: Vec<Result<(), ArchiveError>> = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots {
            match to_document(snapshot, DateTime::now(), state) {
                Ok(document) => {
                    let version = document.get_i64("v").unwrap_or(0);
                    updates.push(doc! {
                        "q": { "_id": &snapshot.player, "v": { newer_than: version } },
                        "u": document,
                        "upsert": true,
                    });
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e.into())),
            }
        }
        if updates.is_empty() {
            return results;
        }
        // Positions in `results` of the updates actually sent, in the order sent.
        let sent: Vec<usize> = (0..results.len()).filter(|&i| results[i].is_ok()).collect();
        let reply = collection
            .client()
            .database(collection.namespace().db.as_str())
            .run_command(doc! {
                "update": collection.name(),
                "updates": updates,
                "ordered": false,
                "writeConcern": { "w": "majority" },
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                let reason = e.to_string();
                for &i in &sent {
                    results[i] = Err(ArchiveError::Mongo(reason.clone()));
                }
                return results;
            }
        };
        if let Ok(concern) = reply.get_document("writeConcernError") {
            for &i in &sent {
                results[i] = Err(ArchiveError::Mongo(format!(
                    "write concern not met: {concern}"
                )));
            }
            return results;
        }
        if let Ok(errors) = reply.get_array("writeErrors") {
            for error in errors.iter().filter_map(|e| e.as_document()) {
                let index = error.get_i32("index").unwrap_or(-1);
                let code = error.get_i32("code").unwrap_or(0);
                // Duplicate key: a version at least as new is stored, which is success.
                if code == 11000 {
                    continue;
                }
                if let Some(&i) = usize::try_from(index).ok().and_then(|k| sent.get(k)) {
                    results[i] = Err(ArchiveError::Mongo(format!(
                        "write error {code}: {}",
                        error.get_str("errmsg").unwrap_or("")
                    )));
                }
            }
        }
        results
    }

    /// Moves a batch of one shard's players: snapshots, one MongoDB command, then removals.
    async fn archive_batch(
        &self,
        shard: ShardIndex,
        ids: &[String],
        cutoff: u64,
    ) -> Vec<Result<Removal, ArchiveError>> {
        let players: Vec<Result<PlayerId, String>> = ids
            .iter()
            .map(|id| PlayerId::new(id.clone()).map_err(|e| e.to_string()))
            .collect();
        let snapshots = join_all(players.iter().map(|p| async move {
            match p {
                Ok(player) => self.snapshot(shard, player).await,
                Err(e) => Err(ArchiveError::Redis(e.clone())),
            }
        }))
        .await;
        let to_write: Vec<Snapshot> = snapshots
            .iter()
            .filter_map(|s| s.as_ref().ok().and_then(Clone::clone))
            .collect();
        let mut written = self
            .write_documents(shard, &to_write, DocState::Archived)
            .await
            .into_iter();
        let mut outcomes: Vec<Option<Result<Removal, ArchiveError>>> =
            Vec::with_capacity(ids.len());
        let mut removals = Vec::new();
        for (i, snapshot) in snapshots.into_iter().enumerate() {
            match snapshot {
                Err(e) => outcomes.push(Some(Err(e))),
                Ok(None) => outcomes.push(Some(Ok(Removal::Already))),
                Ok(Some(snapshot)) => match written.next() {
                    Some(Ok(())) => {
                        outcomes.push(None);
                        removals.push((i, snapshot.version));
                    }
                    Some(Err(e)) => outcomes.push(Some(Err(e))),
                    None => outcomes.push(Some(Err(ArchiveError::Mongo("no write result".into())))),
                },
            }
        }
        let removed = join_all(removals.iter().map(|&(i, version)| {
            let player = &players[i];
            async move {
                match player {
                    Ok(player) => self.remove(shard, player, version, cutoff).await,
                    Err(e) => Err(ArchiveError::Redis(e.clone())),
                }
            }
        }))
        .await;
        for ((i, _), outcome) in removals.iter().zip(removed) {
            outcomes[*i] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(ArchiveError::Redis("no outcome".into()))))
            .collect()
    }

    /// Moves one player: snapshot, MongoDB, then Redis.
    pub async fn archive_player(
        &self,
        shard: ShardIndex,
        player: &PlayerId,
        cutoff: u64,
    ) -> Result<Removal, ArchiveError> {
        let Some(snapshot) = self.snapshot(shard, player).await? else {
            return Ok(Removal::Already);
        };
        self.write_document(shard, &snapshot).await?;
        self.remove(shard, player, snapshot.version, cutoff).await
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
        let cutoff = self.cutoff(now);
        let totals = std::sync::Mutex::new(PassReport::default());
        let outcomes = join_all(
            self.shards()
                .map(|shard| self.archive_shard(shard, cutoff, dry_run, &totals, &progress)),
        )
        .await;
        let mut report = totals.into_inner().unwrap_or_else(|p| p.into_inner());
        for (shard, outcome) in self.shards().zip(outcomes) {
            if let Err(e) = outcome {
                let name = self.shard_name(shard);
                tracing::warn!(shard = %name, error = %e, "archive pass failed on this shard; the other shards went on");
                self.metrics.shard_failure(&name, "archive");
                report.failed_shards.push(name);
            }
        }
        if !dry_run {
            self.metrics.pass(&report, now_ms() / 1000);
        }
        Ok(report)
    }

    /// The name `shard` has in the configuration.
    pub fn shard_name(&self, shard: ShardIndex) -> String {
        self.store.shard_map().shard(shard).name.clone()
    }

    /// One shard's part of an archive pass, adding its counts to `totals` after each batch.
    async fn archive_shard(
        &self,
        shard: ShardIndex,
        cutoff: u64,
        dry_run: bool,
        totals: &std::sync::Mutex<PassReport>,
        progress: &impl Fn(&PassReport),
    ) -> Result<(), ArchiveError> {
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
        // The configured rate is for the whole archiver; shards run concurrently.
        let shards = self.collections.len().max(1) as f64;
        let slots = self.slots_of(shard);
        let mut next_slot = 0;
        let mut failed_before = std::collections::HashSet::new();
        while !self.stopping() && next_slot < slots.len() {
            let (ids, resume) = self
                .candidates_from(
                    shard,
                    &slots,
                    next_slot,
                    cutoff,
                    self.config.batch_size,
                    &failed_before,
                )
                .await?;
            next_slot = resume;
            if ids.is_empty() {
                break;
            }
            if dry_run {
                add(&|t| t.candidates += ids.len() as u64);
                break;
            }
            let started = Instant::now();
            let (mut archived, mut kept, mut failed, mut progressed) = (0, 0, 0, false);
            for (id, outcome) in ids
                .iter()
                .zip(self.archive_batch(shard, &ids, cutoff).await)
            {
                match outcome {
                    Ok(Removal::Archived) => {
                        archived += 1;
                        progressed = true;
                    }
                    Ok(Removal::Already) => progressed = true,
                    Ok(Removal::Changed | Removal::Active) => {
                        kept += 1;
                        failed_before.insert(id.clone());
                    }
                    Err(e) => {
                        tracing::warn!(player = %id, error = %e, "archiving failed; the player stays in Redis");
                        failed += 1;
                        failed_before.insert(id.clone());
                    }
                }
            }
            add(&|t| {
                t.candidates += ids.len() as u64;
                t.archived += archived;
                t.kept += kept;
                t.failed += failed;
            });
            if failed > 0 && !progressed {
                break;
            }
            if self.config.max_players_per_sec > 0 {
                let budget = Duration::from_secs_f64(
                    ids.len() as f64 * shards / self.config.max_players_per_sec as f64,
                );
                if let Some(rest) = budget.checked_sub(started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        }
        Ok(())
    }

    /// Restores a player from MongoDB: everything when `full`, else the public part.
    pub async fn restore(
        &self,
        shard: ShardIndex,
        player: &PlayerId,
        full: bool,
    ) -> Result<Restoral, ArchiveError> {
        let document = self.collections[shard.0]
            .find_one(doc! { "_id": player.as_str() })
            .await?
            .ok_or_else(|| ArchiveError::MissingDocument(player.as_str().to_string()))?;
        let snapshot = from_document(&document)?;
        let invocation = write_back(&RESTORE, player, &snapshot, if full { "1" } else { "0" });
        let mut conn = self.store.master_connection(shard).await?;
        let outcome: String = invocation.invoke_async(&mut conn).await?;
        match outcome.as_str() {
            "RESTORED" => Ok(Restoral::Restored),
            "PUBLIC_RESTORED" => Ok(Restoral::PublicRestored),
            "NOT_ARCHIVED" => Ok(Restoral::NotArchived),
            "VERSION_MISMATCH" => Err(ArchiveError::Document(crate::document::DocumentError {
                player: player.as_str().to_string(),
                reason: "the document's version is not the one Redis archived".into(),
            })),
            other => Err(ArchiveError::Redis(format!(
                "unexpected restore reply {other:?}"
            ))),
        }
    }

    /// Copies the players of every shard that changed since their last checkpoint to MongoDB,
    /// leaving them in Redis. Returns how many were copied. Shards run concurrently and apart:
    /// one that fails is logged and counted (`colony_archiver_shard_failures_total`), and the
    /// others finish.
    pub async fn checkpoint_pass(&self) -> Result<u64, ArchiveError> {
        let outcomes = join_all(self.shards().map(|shard| self.checkpoint_shard(shard))).await;
        let mut copied = 0;
        for (shard, outcome) in self.shards().zip(outcomes) {
            match outcome {
                Ok(n) => copied += n,
                Err(e) => {
                    let name = self.shard_name(shard);
                    tracing::warn!(shard = %name, error = %e, "checkpoint failed on this shard; the other shards went on");
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
    async fn checkpoint_shard(&self, shard: ShardIndex) -> Result<u64, ArchiveError> {
        let batch = self.config.batch_size;
        let mut copied = 0;
        let mut conn = self.store.master_connection(shard).await?;
        // One round over the players dirty now, slot by slot; those that change meanwhile
        // wait for the next pass (or are met again by the scan: a second copy is harmless).
        let mut pending: Vec<String> = Vec::with_capacity(batch * 2);
        for slots in self.slots_of(shard).chunks(SLOTS_PER_ROUND_TRIP) {
            let mut pipe = redis::pipe();
            for &slot in slots {
                pipe.cmd("SCARD").arg(SlotKeys::new(slot).dirty);
            }
            let sizes: Vec<u64> = pipe.query_async(&mut conn).await?;
            for (&slot, size) in slots.iter().zip(sizes) {
                if size == 0 {
                    continue;
                }
                let key = SlotKeys::new(slot).dirty;
                let mut cursor = 0u64;
                loop {
                    let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(batch)
                        .query_async(&mut conn)
                        .await?;
                    pending.extend(ids);
                    while pending.len() >= batch {
                        let chunk: Vec<String> = pending.drain(..batch).collect();
                        copied += self.checkpoint_batch(shard, &mut conn, &chunk).await?;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        if !pending.is_empty() {
            copied += self.checkpoint_batch(shard, &mut conn, &pending).await?;
        }
        Ok(copied)
    }

    /// Checkpoints one batch of a shard's dirty players; returns how many were copied.
    async fn checkpoint_batch(
        &self,
        shard: ShardIndex,
        conn: &mut redis::aio::MultiplexedConnection,
        chunk: &[String],
    ) -> Result<u64, ArchiveError> {
        // Every snapshot of the batch is sent at once on the shared connection (one round
        // trip, not one per player), and so are the flags cleared after MongoDB's answer.
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
        for (player, taken) in players.iter().zip(taken) {
            match taken? {
                Some(snapshot) => snapshots.push(snapshot),
                // Archived since (its archive is newer than any checkpoint) or gone.
                None => gone.push(player.as_str().to_string()),
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
                    tracing::warn!(player = %snapshot.player, error = %e, "checkpoint failed; it stays dirty")
                }
            }
        }
        let cleared = join_all(clears.iter().map(|snapshot| {
            let mut conn = conn.clone();
            async move {
                let player = PlayerId::new(snapshot.player.clone())
                    .map_err(|e| ArchiveError::Redis(e.to_string()))?;
                let keys = PlayerKeys::new(&player);
                let _: i64 = CHECKPOINTED
                    .key(&keys.meta)
                    .key(SlotKeys::of_player(&player).dirty)
                    .arg(&snapshot.player)
                    .arg(snapshot.version)
                    .invoke_async(&mut conn)
                    .await?;
                Ok::<(), ArchiveError>(())
            }
        }))
        .await;
        let mut copied = 0;
        for outcome in cleared {
            outcome?;
            copied += 1;
        }
        if !gone.is_empty() {
            let mut pipe = redis::pipe();
            for id in &gone {
                let dirty = SlotKeys::new(colony::keys::id_slot(id)).dirty;
                pipe.cmd("SREM").arg(dirty).arg(id).ignore();
            }
            let () = pipe.query_async(conn).await?;
        }
        Ok(copied)
    }

    /// Refills `shard` from MongoDB after its Redis data was lost: every archived player gets
    /// its marker back, every checkpointed player comes back live. Players present in Redis
    /// are left alone. Returns (marked, live).
    pub async fn rebuild(&self, shard: ShardIndex) -> Result<(u64, u64), ArchiveError> {
        use futures_util::TryStreamExt;
        let map = self.store.shard_map().clone();
        let mut cursor = self.collections[shard.0].find(doc! {}).await?;
        let mut conn = self.store.master_connection(shard).await?;
        let (mut marked, mut live) = (0, 0);
        while let Some(document) = cursor.try_next().await? {
            let snapshot = from_document(&document)?;
            let state = document_state(&document)?;
            let Ok(player) = PlayerId::new(snapshot.player.clone()) else {
                continue;
            };
            // With one MongoDB for every shard the collection holds all of them.
            if map.shard_for_player(&player) != shard {
                continue;
            }
            let mode = if state == DocState::Archived {
                "a"
            } else {
                "c"
            };
            let invocation = write_back(&REBUILD, &player, &snapshot, mode);
            let outcome: String = invocation.invoke_async(&mut conn).await?;
            match outcome.as_str() {
                "MARKED" => marked += 1,
                "LIVE" => live += 1,
                _ => {}
            }
        }
        Ok((marked, live))
    }

    /// Serves one shard's restore requests until `stop` turns true. After a failure of the
    /// queue it reconnects after [`RESTORE_QUEUE_PAUSE`].
    pub async fn serve_restores(&self, shard: ShardIndex, mut stop: watch::Receiver<bool>) {
        let mut conn = None;
        while !*stop.borrow() {
            if conn.is_none() {
                match self.store.dedicated_connection(shard).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(shard = shard.0, error = %e, "restore queue unreachable");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            // The oldest request first; what a gateway of the previous version pushed to the
            // legacy list is served too, ahead of waiting.
            let popped: Result<Option<String>, redis::RedisError> = async {
                let legacy: Option<String> = redis::cmd("RPOP")
                    .arg(LEGACY_RESTORE_QUEUE)
                    .query_async(c)
                    .await?;
                if legacy.is_some() {
                    return Ok(legacy);
                }
                let mut pop = redis::cmd("BZPOPMIN");
                pop.arg(RESTORE_QUEUE).arg(1);
                let popped: Option<(String, String, f64)> = tokio::select! {
                    popped = pop.query_async(c) => popped?,
                    _ = stop.changed() => None,
                };
                Ok(popped.map(|(_, request, _)| request))
            }
            .await;
            if *stop.borrow() {
                break;
            }
            let request = match popped {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(e) => {
                    // NOREPLICAS (the pops write), READONLY after a failover, a lost connection:
                    // reconnect (the master may have moved), but pause first. Retrying at once
                    // opened a connection per attempt, thousands a second, and the load kept
                    // the master's replicas from counting as good: NOREPLICAS for everyone.
                    tracing::warn!(shard = shard.0, error = %e, "restore queue failed");
                    conn = None;
                    tokio::select! {
                        _ = tokio::time::sleep(RESTORE_QUEUE_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            };
            let (full, id) = match request.split_once(':') {
                Some(("f", id)) => (true, id),
                Some(("p", id)) => (false, id),
                _ => {
                    tracing::warn!(%request, "malformed restore request dropped");
                    continue;
                }
            };
            let Ok(player) = PlayerId::new(id) else {
                tracing::warn!(%request, "restore request with an invalid player id dropped");
                continue;
            };
            let started = Instant::now();
            let restored = self.restore(shard, &player, full).await;
            let outcome = match &restored {
                Ok(Restoral::NotArchived) => "already",
                Ok(_) => "restored",
                Err(_) => "error",
            };
            self.metrics.restore(full, outcome, started.elapsed());
            match restored {
                Ok(outcome) => {
                    tracing::debug!(player = %id, ?outcome, elapsed = ?started.elapsed(), "restore")
                }
                Err(e) => tracing::warn!(player = %id, error = %e, "restore failed"),
            }
        }
    }

    /// Runs until `stop` turns true: every shard's restore queue, and an archive pass every
    /// `scan_interval_secs`.
    pub async fn run(&self, stop: watch::Receiver<bool>) {
        let restores = self
            .shards()
            .map(|shard| self.serve_restores(shard, stop.clone()));
        let stopper = async {
            let mut stop = stop.clone();
            let _ = stop.wait_for(|stopped| *stopped).await;
            self.stop_passes();
        };
        let passes = async {
            let mut stop = stop.clone();
            let mut last_checkpoint = Instant::now();
            while !*stop.borrow() {
                match self.archive_pass(now_ms(), false).await {
                    Ok(report) => {
                        self.backlog().await;
                        tracing::info!(?report, "archive pass");
                    }
                    Err(e) => tracing::warn!(error = %e, "archive pass failed; retrying next time"),
                }
                let every = self.config.checkpoint_interval_secs;
                if every > 0 && last_checkpoint.elapsed() >= Duration::from_secs(every) {
                    last_checkpoint = Instant::now();
                    match self.checkpoint_pass().await {
                        Ok(copied) => {
                            self.metrics.checkpointed.inc_by(copied);
                            tracing::info!(copied, "checkpoint");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "checkpoint failed; retrying next time")
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(self.config.scan_interval_secs)) => {}
                    _ = stop.changed() => {}
                }
            }
        };
        tokio::join!(join_all(restores), passes, stopper);
    }
}

/// Milliseconds since the epoch, by this machine's clock (the cutoff for a pass).
pub fn now() -> u64 {
    now_ms()
}
