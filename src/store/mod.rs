//! The player store: shared connections per shard, and transactions executed on real Redis.
//!
//! A batch is validated, grouped by shard, pipelined per shard, and the shards run
//! concurrently; results come back in request order and one player's failure touches no other.
//! Every Redis error is classified here into the typed [`Error`], so nobody above parses
//! messages.

pub mod breaker;
pub mod inspect;
mod links;
pub mod multi;
pub mod road;
pub mod sentinel;
mod wait;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

// Tokio's clock, so that deadlines, backoff and the breaker's cooldown follow paused time in
// tests.
use tokio::time::Instant;

use futures_util::future::join_all;

use crate::backoff::Backoff;
use crate::config::{Config, RedisSettings};
use crate::error::{Error, StartupError};
use crate::model::{
    Access, Committed, Limits, MultiCommitted, MultiTransaction, Operation, PlayerId, Transaction,
};
use crate::script::{self, Invocation, Outcome};
use crate::shard_map::{ShardIndex, ShardMap};

use breaker::BreakerState;
pub use links::ConnectionStats;
use links::ShardLinks;
use road::{Command, Effect, LuaScript};

/// Told about what the store does with each shard, for metrics. Every method but
/// `pipeline` has an empty default.
pub trait ShardObserver: Send + Sync {
    /// A pipeline (or connection attempt) on `shard` finished after `elapsed`; `error` is the
    /// first failure of the storage itself (unreachable, unknown outcome, internal), if any.
    fn pipeline(&self, shard: &str, elapsed: Duration, error: Option<&Error>);

    /// The shard's master is now `new` (it was `old`, if known).
    fn master_changed(&self, _shard: &str, _old: Option<&str>, _new: &str) {}

    /// `count` transactions on `shard` are being retried.
    fn retried(&self, _shard: &str, _count: u64) {}

    /// The shard's breaker changed state.
    fn breaker_changed(&self, _shard: &str, _state: BreakerState) {}
}

/// Keeps player state on the shards of a [`ShardMap`].
///
/// Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    map: ShardMap,
    shards: Vec<Arc<ShardLinks>>,
    settings: RedisSettings,
    limits: Limits,
    /// Whether writes are recorded for the archiver's checkpoints
    /// (`archive.checkpoint_interval_secs` > 0).
    track_changes: bool,
    observer: Option<Arc<dyn ShardObserver>>,
    retries: AtomicU64,
    /// Permits of the detached tasks that forget decision records (`multi.rs`).
    forgetting: Arc<tokio::sync::Semaphore>,
}

impl Store {
    /// Prepares connections for every shard of `config`. They open lazily, on first use.
    ///
    /// `config` is validated first, as [`Config::from_toml`] does: a configuration built or
    /// changed by hand cannot bring a zero limit or an overflowing timeout into the store.
    pub fn new(config: &Config) -> Result<Store, StartupError> {
        config
            .validate()
            .map_err(|e| StartupError::Config(e.to_string()))?;
        let map = config
            .shard_map()
            .map_err(|e| StartupError::Config(e.to_string()))?;
        let settings = config.redis.clone();
        let shards = map
            .shards()
            .iter()
            .zip(&config.shards)
            .map(|(shard, shard_config)| Arc::new(ShardLinks::new(shard, shard_config, &settings)))
            .collect();
        Ok(Store {
            inner: Arc::new(StoreInner {
                map,
                shards,
                settings,
                limits: config.limits.clone(),
                track_changes: config.archive.checkpoint_interval_secs > 0,
                observer: None,
                retries: AtomicU64::new(0),
                forgetting: Arc::new(tokio::sync::Semaphore::new(multi::FORGETTING_AT_ONCE)),
            }),
        })
    }

    /// Like [`Store::new`], reporting to `observer`.
    pub fn with_observer(
        config: &Config,
        observer: Arc<dyn ShardObserver>,
    ) -> Result<Store, StartupError> {
        let store = Store::new(config)?;
        let mut inner = Arc::try_unwrap(store.inner)
            .map_err(|_| StartupError::Config("store shared before it was built".into()))?;
        for links in &inner.shards {
            let observer = observer.clone();
            links.set_failover_hook(Arc::new(move |shard, old, new| {
                observer.master_changed(shard, old, new)
            }));
        }
        inner.observer = Some(observer);
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Transactions retried since start (each retry of each transaction counts).
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Each shard's breaker state, in shard order.
    pub fn breaker_states(&self) -> Vec<BreakerState> {
        self.inner
            .shards
            .iter()
            .map(|s| s.breaker.state())
            .collect()
    }

    /// The slot map this store routes by.
    pub fn shard_map(&self) -> &ShardMap {
        &self.inner.map
    }

    /// The Redis settings in force.
    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Connection statistics per shard, in shard order.
    pub fn connection_stats(&self) -> Vec<ConnectionStats> {
        self.inner.shards.iter().map(|s| s.stats()).collect()
    }

    /// Executes one transaction.
    pub async fn execute(&self, txn: Transaction) -> Result<Committed, Error> {
        let mut results = self.execute_batch(vec![txn]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("empty batch result".into())))
    }

    /// Reads a player: everything as the owner, public entries otherwise. Never marks the
    /// player active for a public read. `NotFound` when the player has no version.
    pub async fn get_player(&self, player: PlayerId, access: Access) -> Result<Committed, Error> {
        let txn = Transaction {
            player,
            access,
            idempotency_key: None,
            operations: vec![Operation::Read { names: Vec::new() }],
        };
        let committed = self.execute(txn).await?;
        if committed.version == 0 {
            return Err(Error::NotFound);
        }
        Ok(committed)
    }

    /// Executes transactions for many players: grouped per shard, pipelined, shards run
    /// concurrently. Transactions that fail retryably (shard unreachable, outcome unknown) are
    /// sent again, unchanged, with capped exponential backoff and jitter until
    /// `redis.retry_deadline_ms` has passed: a write carries its idempotency key, so a retry
    /// applies it at most once and settles an unknown outcome. The outer error is for the
    /// batch as a whole (too many transactions); each transaction has its own result, in
    /// request order.
    pub async fn execute_batch(
        &self,
        txns: Vec<Transaction>,
    ) -> Result<Vec<Result<Committed, Error>>, Error> {
        self.execute_batch_sharing(txns, 0).await
    }

    /// Runs a batch that mixes transactions on one player with multi-player transactions:
    /// the first through [`Store::execute_batch`], each of the others through
    /// [`Store::execute_multi`], all concurrently, every one that reads taking an even share
    /// of the request's read budget. The outer error is for the batch as a whole (too many
    /// entries); each entry has its own result, in order per kind.
    pub async fn execute_mixed(
        &self,
        singles: Vec<Transaction>,
        multis: Vec<MultiTransaction>,
    ) -> Result<
        (
            Vec<Result<Committed, Error>>,
            Vec<Result<MultiCommitted, Error>>,
        ),
        Error,
    > {
        let limits = &self.inner.limits;
        let entries = singles.len() + multis.len();
        if entries > limits.max_transactions_per_batch {
            return Err(Error::TooLarge(format!(
                "batch has {entries} transactions, more than {}",
                limits.max_transactions_per_batch
            )));
        }
        let multi_readers = multis.iter().filter(|m| m.reads()).count();
        let readers = singles.iter().filter(|t| t.reads()).count() + multi_readers;
        let runs = multis
            .into_iter()
            .map(|m| self.execute_multi_sharing(m, readers));
        let (singles, multis) = tokio::join!(
            self.execute_batch_sharing(singles, multi_readers),
            join_all(runs)
        );
        Ok((singles?, multis))
    }

    /// [`Store::execute_batch`], with `other_readers` more entries of the same request
    /// sharing the read budget.
    async fn execute_batch_sharing(
        &self,
        txns: Vec<Transaction>,
        other_readers: usize,
    ) -> Result<Vec<Result<Committed, Error>>, Error> {
        let limits = &self.inner.limits;
        if txns.len() > limits.max_transactions_per_batch {
            return Err(Error::TooLarge(format!(
                "batch has {} transactions, more than {}",
                txns.len(),
                limits.max_transactions_per_batch
            )));
        }
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.retry_deadline();
        let mut results: Vec<Option<Result<Committed, Error>>> = vec![None; txns.len()];
        let mut pending = Vec::with_capacity(txns.len());
        for (position, txn) in txns.iter().enumerate() {
            match txn.validate(limits) {
                Ok(()) => pending.push(position),
                Err(e) => results[position] = Some(Err(e)),
            }
        }
        let mut attempt = 0u32;
        // Restore requests go out on the first ARCHIVED answer, then again only now and then
        // (in case the archiver lost one), not on every poll.
        let mut restore_requested: Option<Instant> = None;
        while !pending.is_empty() {
            let mut again = Vec::new();
            let answered = self.run_once(&txns, &pending, other_readers).await;
            let answered = self.settle_intents(&txns, answered).await;
            for (position, outcome) in answered {
                // No retry into an open breaker: it would fail the same way until the cooldown
                // ends, and it would hold back the rest of the batch meanwhile.
                if matches!(&outcome, Err(e) if e.is_retryable())
                    && !self.breaker_open(&txns[position])
                {
                    again.push(position);
                }
                results[position] =
                    Some(Error::after_attempts(outcome, results[position].as_ref()));
            }
            if restore_requested.is_none_or(|at| at.elapsed() >= RESTORE_REQUEST_AGAIN)
                && self.request_restores(&txns, &again, &results).await
            {
                restore_requested = Some(Instant::now());
            }
            let now = Instant::now();
            if again.is_empty() || now >= deadline {
                break;
            }
            self.count_retries(&txns, &again);
            // A restore takes the archiver about a millisecond: poll for it briskly rather
            // than backing off as from a failing shard.
            let only_restores = again
                .iter()
                .all(|&p| matches!(results[p], Some(Err(Error::Archived { .. }))));
            let pause = if only_restores {
                RESTORE_POLL
            } else {
                RETRY_BACKOFF.delay(attempt)
            };
            tokio::time::sleep(pause.min(deadline - now)).await;
            attempt += 1;
            pending = again;
        }
        Ok(results
            .into_iter()
            .map(|r| match r {
                Some(Err(Error::Archived { version })) => Err(Error::Unavailable {
                    shard: String::new(),
                    reason: format!(
                        "the player is archived (version {version}) and the archiver did not \
                         restore it in time"
                    ),
                }),
                Some(r) => r,
                None => Err(Error::Internal("transaction not run".into())),
            })
            .collect())
    }

    /// Asks the archiver to restore the archived players among `positions`: everything for
    /// owner access, the public part otherwise. Returns whether there were any.
    async fn request_restores(
        &self,
        txns: &[Transaction],
        positions: &[usize],
        results: &[Option<Result<Committed, Error>>],
    ) -> bool {
        let mut requests: BTreeMap<ShardIndex, std::collections::BTreeSet<String>> =
            BTreeMap::new();
        for &p in positions {
            if let Some(Err(Error::Archived { .. })) = &results[p] {
                let txn = &txns[p];
                requests
                    .entry(self.inner.map.shard_for_player(&txn.player))
                    .or_default()
                    .insert(crate::keys::restore_request(
                        &txn.player,
                        txn.access == Access::Owner,
                    ));
            }
        }
        if requests.is_empty() {
            return false;
        }
        let pushes = requests.into_iter().map(|(shard, requests)| async move {
            let name = &self.inner.shards[shard.0].name;
            // A request lost in a failover is sent again (RESTORE_REQUEST_AGAIN): not waited.
            let mut push = Command::script(&RESTORE_REQUEST, Effect::Housekeeping)
                .key(crate::keys::RESTORE_QUEUE)
                .arg(self.inner.settings.max_restore_requests);
            for request in requests {
                push = push.arg(request);
            }
            let pushed = self.send(shard, vec![push]).await.into_acknowledged_reply();
            match pushed.and_then(|reply| {
                redis::from_redis_value::<(u64, u64, u64)>(reply)
                    .map_err(|e| Error::Internal(e.to_string()))
            }) {
                Err(e) => {
                    tracing::warn!(shard = %name, error = %e, "cannot request a restore")
                }
                Ok((_, _, refused)) if refused > 0 => tracing::warn!(
                    shard = %name,
                    refused,
                    cap = self.inner.settings.max_restore_requests,
                    "restore queue full; requests not queued"
                ),
                Ok(_) => {}
            }
        });
        join_all(pushes).await;
        true
    }

    fn breaker_open(&self, txn: &Transaction) -> bool {
        let shard = self.inner.map.shard_for_player(&txn.player);
        self.inner.shards[shard.0].breaker.state() == BreakerState::Open
    }

    fn count_retries(&self, txns: &[Transaction], positions: &[usize]) {
        self.inner
            .retries
            .fetch_add(positions.len() as u64, Ordering::Relaxed);
        if let Some(observer) = &self.inner.observer {
            let mut per_shard: BTreeMap<ShardIndex, u64> = BTreeMap::new();
            for &p in positions {
                *per_shard
                    .entry(self.inner.map.shard_for_player(&txns[p].player))
                    .or_default() += 1;
            }
            for (shard, count) in per_shard {
                observer.retried(&self.inner.shards[shard.0].name, count);
            }
        }
    }

    /// One attempt at `positions` of `txns`: grouped by shard, shards concurrently.
    async fn run_once(
        &self,
        txns: &[Transaction],
        positions: &[usize],
        other_readers: usize,
    ) -> Vec<(usize, Result<Outcome, Error>)> {
        let limits = &self.inner.limits;
        // The request's read budget is shared evenly by the transactions that read, counted
        // over the whole batch, so that a retry of some of them runs with the same budget
        // (and a replayed result fits as the first one did).
        let reading = txns.iter().filter(|t| t.reads()).count() + other_readers;
        let bounds = script::Bounds {
            track_changes: self.inner.track_changes,
            window: script::Window::of(&self.inner.settings),
            read_budget: limits.read_budget(reading),
            max_player_bytes: limits.max_player_bytes,
            max_player_entries: limits.max_player_entries,
        };
        let bounds = &bounds;
        let mut plan: BTreeMap<ShardIndex, Vec<usize>> = BTreeMap::new();
        for &p in positions {
            plan.entry(self.inner.map.shard_for_player(&txns[p].player))
                .or_default()
                .push(p);
        }
        let runs = plan.into_iter().map(|(shard, positions)| async move {
            let batch: Vec<(&Transaction, Invocation)> = positions
                .iter()
                .map(|&p| (&txns[p], script::encode(&txns[p], bounds)))
                .collect();
            let outcomes = self.run_on_shard(shard, &batch).await;
            positions.into_iter().zip(outcomes)
        });
        join_all(runs).await.into_iter().flatten().collect()
    }

    /// Runs one shard's part of a batch as one call on the road (one pipeline, with `WAIT`
    /// on the same link in replicated mode, the script reloaded if the server lost it, the
    /// breaker and the shard's metrics): a committed write (or replay) is OK only once the
    /// replicas acknowledged the link's writes.
    async fn run_on_shard(
        &self,
        shard: ShardIndex,
        batch: &[(&Transaction, Invocation)],
    ) -> Vec<Result<Outcome, Error>> {
        let commands = batch
            .iter()
            .map(|(txn, invocation)| {
                let effect = if txn.is_write() {
                    Effect::Writes
                } else {
                    Effect::Reads
                };
                invocation.command(effect)
            })
            .collect();
        let answer = self.send(shard, commands).await;
        let acknowledged = answer.acknowledgement();
        batch
            .iter()
            .zip(answer.replies)
            .map(|((txn, _), reply)| {
                let outcome = script::decode(txn, &reply?)?;
                match outcome {
                    Outcome::Done(committed) if txn.is_write() => {
                        acknowledged.clone().map(|()| Outcome::Done(committed))
                    }
                    other => Ok(other),
                }
            })
            .collect()
    }

    /// A new connection to `shard`'s master for one user, e.g. for `BLPOP`.
    pub async fn dedicated_connection(
        &self,
        shard: ShardIndex,
    ) -> Result<redis::aio::MultiplexedConnection, Error> {
        self.inner.shards[shard.0].dedicated().await
    }

    /// Sends `PING` to every shard's master; one result per shard, in shard order.
    pub async fn ping_shards(&self, timeout: Duration) -> Vec<Result<(), Error>> {
        let pings = self
            .inner
            .shards
            .iter()
            .enumerate()
            .map(|(i, links)| async move {
                let ping = self.send(ShardIndex(i), vec![Command::read(redis::cmd("PING"))]);
                match tokio::time::timeout(timeout, ping).await {
                    Ok(answer) => answer.into_acknowledged_reply().map(|_| ()),
                    Err(_) => Err(Error::Unavailable {
                        shard: links.name.clone(),
                        reason: "ping timed out".into(),
                    }),
                }
            });
        join_all(pings).await
    }
}

/// How often a transaction waiting for a restore is tried again.
const RESTORE_POLL: Duration = Duration::from_millis(2);

/// How long a restore request is given before it is sent again.
const RESTORE_REQUEST_AGAIN: Duration = Duration::from_millis(250);

/// Queues restore requests on a shard: no duplicates, at most `redis.max_restore_requests`.
static RESTORE_REQUEST: std::sync::LazyLock<LuaScript> =
    std::sync::LazyLock::new(|| LuaScript::new(include_str!("../restore_request.lua")));

/// How the store waits between attempts at a failing shard: up to 10 ms, doubling to at most
/// 500 ms, with full jitter, so that callers failed by the same fault spread out.
const RETRY_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(10),
    max: Duration::from_millis(500),
};
