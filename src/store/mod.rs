//! The player store: shared connections per shard, and transactions executed on real Redis.
//!
//! Layers, bottom up (each file calls only the ones below it, but for `batch` handing a mixed
//! request's trades to `multi`, beside it):
//!
//! - [`connect`] (the connection code's error type), [`breaker`], [`sentinel`], `links`,
//!   `wait`: a shard's connections, its master found through Sentinel, its breaker, and
//!   `WAIT` shared by the callers of one link;
//! - [`road`]: the one way any command reaches a shard — one pipeline on one link, the
//!   acknowledgement on that link, the breaker, the metrics, one Redis-error classifier;
//! - [`intents`]: a trade's decision record, finishing a participant, the one resolver of
//!   intents left behind;
//! - [`batch`] (transactions on one player, and requests mixing them with trades),
//!   [`multi`] (the trade coordinator), [`sweep`] (expired intents and old commit records),
//!   [`inspect`] (read-only views for operators).
//!
//! This file holds the [`Store`] itself, what the layers share, and nothing they call back.

pub mod batch;
pub mod breaker;
pub mod connect;
pub mod inspect;
pub mod intents;
mod links;
pub mod multi;
pub mod road;
pub mod sentinel;
pub mod sweep;
mod wait;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::backoff::Backoff;
use crate::config::{Config, RedisSettings};
use crate::error::{Error, StartupError};
use crate::model::Limits;
use crate::script;
use crate::shard_map::{ShardIndex, ShardMap};

use breaker::BreakerState;
pub use links::ConnectionStats;
use links::ShardLinks;
use road::Command;

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
    /// Permits of the detached tasks that forget decision records (`intents.rs`).
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
                forgetting: Arc::new(tokio::sync::Semaphore::new(intents::FORGETTING_AT_ONCE)),
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

    /// The name of `shard`, as the configuration and the metrics call it.
    pub fn shard_name(&self, shard: ShardIndex) -> &str {
        &self.inner.shards[shard.get()].name
    }

    /// The bounds a script call runs within, its reads sharing the request's read budget
    /// evenly with `readers - 1` other entries that read.
    fn bounds(&self, readers: usize) -> script::Bounds {
        let limits = &self.inner.limits;
        script::Bounds {
            track_changes: self.inner.track_changes,
            window: script::Window::of(&self.inner.settings),
            read_budget: limits.read_budget(readers),
            max_player_bytes: limits.max_player_bytes,
            max_player_entries: limits.max_player_entries,
        }
    }

    /// A new connection to `shard`'s master for one user, e.g. for `BLPOP`.
    pub async fn dedicated_connection(
        &self,
        shard: ShardIndex,
    ) -> Result<redis::aio::MultiplexedConnection, Error> {
        self.inner.shards[shard.get()].dedicated().await
    }

    /// Sends `PING` to every shard's master; one result per shard, in shard order.
    pub async fn ping_shards(&self, timeout: Duration) -> Vec<Result<(), Error>> {
        let pings =
            self.inner
                .map
                .indices()
                .zip(&self.inner.shards)
                .map(|(shard, links)| async move {
                    let ping = self.send(shard, vec![Command::read(redis::cmd("PING"))]);
                    match tokio::time::timeout(timeout, ping).await {
                        Ok(answer) => answer.into_acknowledged_reply().map(|_| ()),
                        Err(_) => Err(Error::Unavailable {
                            shard: Some(links.name.clone()),
                            reason: "ping timed out".into(),
                        }),
                    }
                });
        join_all(pings).await
    }
}

/// How the store waits between attempts at a failing shard: up to 10 ms, doubling to at most
/// 500 ms, with full jitter, so that callers failed by the same fault spread out.
const RETRY_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(10),
    max: Duration::from_millis(500),
};
