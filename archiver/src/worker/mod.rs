//! The archiver's work: archive passes (Redis to MongoDB), restores (MongoDB to Redis), and
//! the loop that runs them.
//!
//! ## The move, and why a crash at any step is safe
//!
//! 1. Take the inactive players of a shard from its slots' `colony:{<slot tag>}:active` sets
//!    (score below the cutoff), walking the shard's slots in order.
//! 2. Snapshot each (version, both hashes, the windows' floors), acknowledged as a write: the
//!    script writes the version again as it is, so in `replicated` mode what MongoDB is given
//!    is on the replicas a failover could promote (`snapshot.lua` says why).
//! 3. Write the document to MongoDB with write concern `majority`: inserted when the player
//!    has no document, else as an upsert that replaces the same or an older version
//!    (`v <= version`); a duplicate-key error of that upsert means a newer version is
//!    stored: the shard lost writes MongoDB has, and the player stays in Redis
//!    ([`ArchiveError::NewerDocument`]; removing it would leave a marker that no document
//!    matches, a player never restored).
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
//! The store queues `f:<id>` (everything, for the owner) or `p:<id>` (the public part) in
//! one of 16 restore queues (`colony:{<slot tag>}:restores`, each serving the players of a
//! range of 1,024 slots and living in a slot of that range: [`colony::keys::RestoreQueue`]),
//! a sorted set by request time (a request already waiting is not queued twice, and the set
//! holds at most `redis.max_restore_requests`), when a transaction meets an archived player,
//! and retries the transaction. The archiver takes the oldest with `BZPOPMIN` on a
//! connection of its own per queue, on whichever master owns the queue's slot now (following
//! `MOVED` when the slot moves), reads the document and runs the restore script on the
//! player's own shard, which only acts on a player still marked archived at the document's
//! version: concurrent and repeated restores are harmless. On `[[shards]]` it also serves
//! what gateways of previous versions left in each shard's own queues (`colony:restore`,
//! `colony:restores`).
//!
//! ## On a Redis Cluster
//!
//! A pass takes its shards from the store's map when it begins, and each shard's slots
//! when that shard's part begins; a slot that moves meanwhile answers `MOVED` (nothing
//! applied) and that shard's pass ends with an error, to be done again by the next pass —
//! the move's order above keeps a player live in Redis or durable in MongoDB whichever step
//! is refused. The slot sets move with their slots, so a later pass finds each player on its
//! new master. The legacy per-shard sets and queues never existed on a cluster and are not
//! read there.
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
//! in the pass report, and the other shards finish. Each restore queue has its own loop. The
//! status page asks the shards concurrently and waits at most [`SHARD_QUESTION_TIMEOUT`] for
//! each.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mongodb::bson::Document;
use mongodb::options::{CollectionOptions, WriteConcern};
use mongodb::Collection;
use tokio::sync::watch;

use colony::config::ArchiveConfig;
use colony::keys::{PlayerKeys, SlotKeys};
use colony::shard_map::ShardIndex;
use colony::store::road::{Command, Effect, LuaScript};
use colony::{Config, PlayerId, Store};

use crate::document::{Pairs, Snapshot};

mod archive;
mod checkpoint;

pub use archive::DrainReport;
pub use checkpoint::RebuildReport;
mod restore;
mod slots;

/// Slots asked about in one pipelined round trip when a pass walks a shard's slots.
pub const SLOTS_PER_ROUND_TRIP: usize = 512;

/// How long the status page and the backlog gauge wait for one shard: a shard that is down
/// is reported as not answering rather than holding the page.
pub const SHARD_QUESTION_TIMEOUT: Duration = Duration::from_secs(2);

/// Most members moved from each legacy per-shard set into the slot sets per pass.
pub const LEGACY_MOVES_PER_PASS: usize = 1000;

/// Pause before reading a restore queue again after it failed (the first of a backoff), and
/// between looks at a queue whose slot is moving.
pub const RESTORE_QUEUE_PAUSE: Duration = Duration::from_millis(250);

/// The longest pause of a restore queue's backoff after failures in a row.
pub const RESTORE_QUEUE_MAX_PAUSE: Duration = Duration::from_secs(5);

/// How often, on `[[shards]]`, a shard's legacy restore queues are looked at while empty.
pub const LEGACY_RESTORE_POLL: Duration = Duration::from_secs(1);

// The archiver's scripts run on the store's one road (`Store::call`): the store's links, its
// breaker and metrics, NOSCRIPT reload, and in replicated mode `WAIT` on the link that wrote.
static SNAPSHOT: std::sync::LazyLock<LuaScript> =
    std::sync::LazyLock::new(|| LuaScript::new(include_str!("../snapshot.lua")));
static ARCHIVE: std::sync::LazyLock<LuaScript> =
    std::sync::LazyLock::new(|| LuaScript::new(include_str!("../archive.lua")));
static RESTORE: std::sync::LazyLock<LuaScript> = std::sync::LazyLock::new(|| {
    LuaScript::new(concat!(
        include_str!("../write_back.lua"),
        include_str!("../restore.lua")
    ))
});
static REBUILD: std::sync::LazyLock<LuaScript> = std::sync::LazyLock::new(|| {
    LuaScript::new(concat!(
        include_str!("../write_back.lua"),
        include_str!("../rebuild.lua")
    ))
});
static CHECKPOINTED: std::sync::LazyLock<LuaScript> =
    std::sync::LazyLock::new(|| LuaScript::new(include_str!("../checkpointed.lua")));

/// Everything that can stop a step of the archiver. Each variant keeps its cause, and
/// [`ArchiveError::is_retryable`] says whether the same step may succeed later.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Configuration is missing or wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The store refused or failed a call; its error says whether a retry may help.
    #[error("redis: {0}")]
    Store(#[from] colony::Error),
    /// The archiver's own Redis connection (the restore queue's blocking pop) failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A script or Redis answered what the archiver does not understand.
    #[error("redis: unexpected reply: {0}")]
    UnexpectedReply(String),
    /// A set of players named an id that is not a valid player id.
    #[error("redis: a stored player id is not valid: {0}")]
    BadPlayerId(String),
    /// MongoDB failed or could not be reached.
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// MongoDB refused one document of a batched write.
    #[error("mongodb: write error {code}: {message}")]
    MongoWrite {
        /// MongoDB's error code.
        code: i32,
        /// MongoDB's message.
        message: String,
    },
    /// A batched write answered without a result for a document.
    #[error("mongodb: {0}")]
    MongoReply(String),
    /// A stored document cannot be read.
    #[error(transparent)]
    Document(#[from] crate::document::DocumentError),
    /// An archive met a document of the player newer than its version in Redis: the shard
    /// lost writes that MongoDB has (a restore from an old backup, a failover in `local`
    /// mode), or another archiver's checkpoint stored a newer version meanwhile (a one-off
    /// pass beside the daemon). Either way the player stays in Redis, served from there; the
    /// first is for an operator to look at, the second passes with the next pass.
    #[error(
        "player {player:?}: MongoDB holds a version newer than {version}, the one in Redis; \
         it stays in Redis (the shard lost writes that MongoDB has, or another pass stored a \
         newer version meanwhile)"
    )]
    NewerDocument {
        /// The player.
        player: String,
        /// Its version in Redis, the one the archive tried to store.
        version: u64,
    },
    /// The player is marked archived but no document exists.
    #[error("player {0:?} is marked archived but has no document")]
    MissingDocument(String),
    /// What went wrong on one shard: every error of a shard's work names its shard.
    #[error("shard {shard}: {source}")]
    OnShard {
        /// The shard's configured name.
        shard: String,
        /// What went wrong there.
        source: Box<ArchiveError>,
    },
}

impl ArchiveError {
    /// Whether the same step may succeed if tried again later: a shard or MongoDB that is
    /// unreachable or failing over may come back; a bad document, a bad id or a wrong
    /// configuration will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ArchiveError::Store(e) => e.is_retryable(),
            ArchiveError::Redis(_) | ArchiveError::Mongo(_) | ArchiveError::MongoReply(_) => true,
            ArchiveError::MongoWrite { .. }
            | ArchiveError::Config(_)
            | ArchiveError::UnexpectedReply(_)
            | ArchiveError::BadPlayerId(_)
            | ArchiveError::Document(_)
            | ArchiveError::NewerDocument { .. }
            | ArchiveError::MissingDocument(_) => false,
            ArchiveError::OnShard { source, .. } => source.is_retryable(),
        }
    }

    /// This error, naming `shard` (an error that names one already keeps it).
    pub fn on_shard(self, shard: &str) -> ArchiveError {
        match self {
            e @ ArchiveError::OnShard { .. } => e,
            e => ArchiveError::OnShard {
                shard: shard.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// The shard the error happened on, when it names one.
    pub fn shard(&self) -> Option<&str> {
        match self {
            ArchiveError::OnShard { shard, .. } => Some(shard),
            _ => None,
        }
    }

    /// The error itself, without the shard it happened on.
    pub fn cause(&self) -> &ArchiveError {
        match self {
            ArchiveError::OnShard { source, .. } => source.cause(),
            e => e,
        }
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
    /// It holds a multi-player transaction's intent: it stays in Redis.
    Locked,
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

/// The archiver: the store's shards, and the MongoDB collections players are archived to.
pub struct Archiver {
    store: Store,
    config: ArchiveConfig,
    /// One per `archive.mongodb_uris` entry, in order (see [`Archiver::placement`]).
    collections: Vec<Collection<Document>>,
    metrics: crate::metrics::ArchiverMetrics,
    /// Set on shutdown: passes take no new batch after it.
    stopping: std::sync::atomic::AtomicBool,
}

/// An invocation of a script loaded with `write_back.lua` in front (restore, rebuild): the
/// player's keys, then player id, version, `mode`, the numbers of public pairs and client
/// floors, the pairs, and the floors.
fn write_back(
    script: &'static LuaScript,
    player: &PlayerId,
    snapshot: &Snapshot,
    mode: &str,
) -> Command {
    let keys = PlayerKeys::new(player);
    let mut command = Command::script(script, Effect::Writes)
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
        command = command.arg(field.as_slice()).arg(value.as_slice());
    }
    for floor in &snapshot.clients {
        command = command
            .arg(&floor.client)
            .arg(floor.floor)
            .arg(floor.last_write_ms);
    }
    command
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Archiver {
    /// Builds the store and the MongoDB clients from `config`. Connections open lazily.
    pub async fn new(config: &Config) -> Result<Archiver, ArchiveError> {
        let archive = config.archive.clone();
        if archive.mongodb_uris.is_empty() {
            return Err(ArchiveError::Config("archive.mongodb_uris is empty".into()));
        }
        let store = Store::connect(config)
            .await
            .map_err(|e| ArchiveError::Config(e.to_string()))?;
        let shard_names: Vec<String> = store
            .shard_map()
            .shards()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let mut clients = Vec::new();
        for uri in &archive.mongodb_uris {
            let mut options = mongodb::options::ClientOptions::parse(uri).await?;
            options.server_selection_timeout = Some(Duration::from_secs(5));
            options.connect_timeout = Some(Duration::from_secs(2));
            options.app_name = Some("colony-archiver".into());
            clients.push(mongodb::Client::with_options(options)?);
        }
        let write_concern = WriteConcern::majority();
        let collections = clients
            .iter()
            .map(|client| {
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
            metrics: crate::metrics::ArchiverMetrics::new().with_shards(&shard_names),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The sweep of multi-player transactions on every shard, concurrently and apart:
    /// intents whose lease passed are applied or rolled back by their decision, and commit
    /// records of finished transactions are forgotten. Returns how many intents it finished.
    pub async fn sweep_pass(&self) -> u64 {
        let sweeps = self
            .shards()
            .map(|shard| async move { (shard, self.store.sweep(shard).await) });
        let mut resolved = 0;
        for (shard, outcome) in join_all(sweeps).await {
            let name = self.shard_name(shard);
            match outcome {
                Ok(swept) => {
                    resolved += swept.finished;
                    self.metrics.intents_unresolved(&name, swept.unresolved);
                }
                Err(e) => {
                    tracing::warn!(shard = %name, error = %e, "sweep failed on this shard; the other shards went on");
                    self.metrics.shard_failure(&name, "sweep");
                }
            }
        }
        self.metrics.intents_resolved.inc_by(resolved);
        resolved
    }

    /// Asks running passes to finish the batch in hand and take no new one.
    pub fn stop_passes(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The archiver's metrics.
    pub fn metrics(&self) -> &crate::metrics::ArchiverMetrics {
        &self.metrics
    }

    /// The store the archiver works on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every shard of the store's map now (a cluster's map follows the cluster).
    pub(super) fn shards(&self) -> impl Iterator<Item = ShardIndex> + '_ {
        self.store.shard_map().indices()
    }

    /// Which of `archive.mongodb_uris` holds the document of the player `id`: the one whose
    /// even block of slots holds the player's slot. Nothing of Redis enters it, so no slot
    /// move and no change of topology moves a document.
    pub fn placement(&self, id: &str) -> usize {
        colony::keys::id_slot(id).even_block(self.collections.len())
    }

    /// The collection the player `id`'s document lives in ([`Archiver::placement`]).
    pub(super) fn collection_of(&self, id: &str) -> &Collection<Document> {
        &self.collections[self.placement(id)]
    }

    /// Names `shard` in an error (for `map_err`).
    pub(super) fn on(&self, shard: ShardIndex) -> impl Fn(ArchiveError) -> ArchiveError + '_ {
        move |e| e.on_shard(&self.shard_name(shard))
    }

    /// The name `shard` has in the configuration.
    pub fn shard_name(&self, shard: ShardIndex) -> String {
        self.store.shard_map().shard(shard).name.clone()
    }

    /// The last-active time below which players are archived, for `now` (ms).
    pub fn cutoff(&self, now: u64) -> u64 {
        now.saturating_sub(self.config.inactive_after_secs.saturating_mul(1000))
    }

    /// Runs until `stop` turns true: every shard's restore queue, and an archive pass every
    /// `scan_interval_secs`.
    pub async fn run(&self, stop: watch::Receiver<bool>) {
        let restores = self.serve_restore_queues(stop.clone());
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
                let resolved = self.sweep_pass().await;
                if resolved > 0 {
                    tracing::info!(
                        resolved,
                        "sweep finished intents left by stopped coordinators"
                    );
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
        tokio::join!(restores, passes, stopper);
    }
}

/// Milliseconds since the epoch, by this machine's clock (the cutoff for a pass).
pub fn now() -> u64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_shard_once() {
        let e = ArchiveError::MongoReply("no write result".into()).on_shard("eu-1");
        assert_eq!(e.shard(), Some("eu-1"));
        assert_eq!(e.to_string(), "shard eu-1: mongodb: no write result");
        let again = e.on_shard("eu-2");
        assert_eq!(again.shard(), Some("eu-1"), "the first shard named stays");
        assert!(matches!(again.cause(), ArchiveError::MongoReply(m) if m == "no write result"));
        assert!(again.is_retryable());
        assert!(!ArchiveError::BadPlayerId("x".into())
            .on_shard("eu-1")
            .is_retryable());
        let unavailable = colony::Error::Unavailable {
            shard: Some("eu-1".into()),
            reason: "down".into(),
        };
        assert!(ArchiveError::from(unavailable).is_retryable());
        assert!(!ArchiveError::from(colony::Error::NotFound).is_retryable());
        assert_eq!(ArchiveError::Config("x".into()).shard(), None);
    }
}
