//! The player store: shared connections per shard, and transactions executed on real Redis.
//!
//! Layers, bottom up (each file calls only the ones below it, but for `batch` handing a mixed
//! request's trades to `multi`, beside it):
//!
//! - [`connect`] (the connection code's error type), [`breaker`], [`sentinel`], `directory`,
//!   `links`, `wait`, `topology`: a shard's connections, its master found through Sentinel or
//!   a Redis Cluster's map, its breaker, `WAIT` shared by the callers of one link, and the
//!   routes (map and links) a call takes once;
//! - [`road`]: the one way any command reaches a shard — one pipeline on one link, the
//!   acknowledgement on that link, the breaker, the metrics, one Redis-error classifier;
//!   the calls nobody waits on coalesced per shard;
//! - `look`: reads of a player's keys that refuse a player a slot move has parked;
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
mod directory;
pub mod inspect;
pub mod intents;
mod links;
mod look;
pub mod multi;
pub mod road;
pub mod sentinel;
pub mod sweep;
mod topology;
mod wait;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::backoff::Backoff;
use crate::cluster_view::ClusterView;
use crate::config::{Config, RedisSettings};
use crate::error::{Error, StartupError};
use crate::model::Limits;
use crate::script;
use crate::shard_map::{ShardIndex, ShardMap};

use breaker::BreakerState;
pub use directory::{cluster_nodes, node_connection};
pub use links::ConnectionStats;
use links::ShardLinks;
use road::Command;
use topology::{Routes, Topology};

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
    /// The slot map and each shard's links: fixed for `[[shards]]`, following the cluster's
    /// map for a `[cluster]`.
    topology: Topology,
    settings: RedisSettings,
    limits: Limits,
    /// Whether writes are recorded for the archiver's checkpoints
    /// (`archive.checkpoint_interval_secs` > 0).
    track_changes: bool,
    observer: Option<Arc<dyn ShardObserver>>,
    retries: AtomicU64,
    /// Permits of the detached tasks that forget decision records (`intents.rs`).
    forgetting: Arc<tokio::sync::Semaphore>,
    /// Permits of the detached tasks that apply a committed trade's other participants
    /// (`multi.rs`).
    finishing: Arc<tokio::sync::Semaphore>,
    /// The attempts whose other participants a detached task is applying now, each with a
    /// receiver that sees its sender dropped when the task ends: a request of this store
    /// meeting one of those intents waits for the task (a local wait) instead of resolving
    /// the intent through the primary's shard.
    detached: intents::DetachedFinishes,
    /// The detached calls, coalesced per shard (`road.rs`).
    lanes: road::Lanes,
}

impl Store {
    /// Prepares connections for every shard of `config`'s `[[shards]]`. They open lazily, on
    /// first use. A `[cluster]` is refused: its map must be read first, by
    /// [`Store::connect`].
    ///
    /// `config` is validated first, as [`Config::from_toml`] does: a configuration built or
    /// changed by hand cannot bring a zero limit or an overflowing timeout into the store.
    pub fn new(config: &Config) -> Result<Store, StartupError> {
        config
            .validate()
            .map_err(|e| StartupError::Config(e.to_string()))?;
        if config.cluster.is_some() {
            return Err(StartupError::Config(
                "a [cluster] store is built by Store::connect, which reads the cluster's map"
                    .into(),
            ));
        }
        let map = config
            .shard_map()
            .map_err(|e| StartupError::Config(e.to_string()))?;
        let settings = config.redis.clone();
        let links = map
            .shards()
            .iter()
            .zip(&config.shards)
            .map(|(shard, shard_config)| Arc::new(ShardLinks::new(shard, shard_config, &settings)))
            .collect();
        let routes = Routes {
            map: Arc::new(map),
            links,
            view: None,
        };
        Ok(Store::of(config, Topology::Fixed(Arc::new(routes))))
    }

    /// Prepares the store for `config`'s topology: [`Store::new`] for `[[shards]]`; for a
    /// `[cluster]`, reads the cluster's map from its seeds first (failing when none of them
    /// gives it in time) and checks what Colony needs of it (at least 3 masters,
    /// `cluster-require-full-coverage no`, enough replicas for the replicated profile, the
    /// commands it sends), failing with one line naming what is missing. Connections open
    /// lazily, on first use.
    pub async fn connect(config: &Config) -> Result<Store, StartupError> {
        let Some(cluster) = &config.cluster else {
            return Store::new(config);
        };
        config
            .validate()
            .map_err(|e| StartupError::Config(e.to_string()))?;
        let directory = directory::ClusterDirectory::discover(cluster, &config.redis)
            .await
            .map_err(|e| StartupError::Cluster(e.to_string()))?;
        let replicated = config.redis.acknowledge == crate::config::Acknowledge::Replicated;
        let checked = directory
            .check(replicated, config.redis.replicas_to_wait)
            .await
            .map_err(StartupError::Cluster)?;
        for warning in checked.warnings {
            tracing::warn!("{warning}");
        }
        let credentials = links::Credentials {
            username: cluster.username.clone(),
            password: cluster.password.clone(),
            sentinel_password: None,
        };
        let topology = Topology::cluster(directory, credentials, &config.redis);
        Ok(Store::of(config, topology))
    }

    fn of(config: &Config, topology: Topology) -> Store {
        Store {
            inner: Arc::new(StoreInner {
                topology,
                settings: config.redis.clone(),
                limits: config.limits.clone(),
                track_changes: config.archive.checkpoint_interval_secs > 0,
                observer: None,
                retries: AtomicU64::new(0),
                forgetting: Arc::new(tokio::sync::Semaphore::new(intents::FORGETTING_AT_ONCE)),
                finishing: Arc::new(tokio::sync::Semaphore::new(intents::FINISHING_AT_ONCE)),
                detached: intents::DetachedFinishes::default(),
                lanes: road::Lanes::default(),
            }),
        }
    }

    /// Like [`Store::new`], reporting to `observer`.
    pub fn with_observer(
        config: &Config,
        observer: Arc<dyn ShardObserver>,
    ) -> Result<Store, StartupError> {
        Store::new(config).and_then(|store| store.observed_by(observer))
    }

    /// Like [`Store::connect`], reporting to `observer`.
    pub async fn connect_with_observer(
        config: &Config,
        observer: Arc<dyn ShardObserver>,
    ) -> Result<Store, StartupError> {
        Store::connect(config)
            .await
            .and_then(|store| store.observed_by(observer))
    }

    fn observed_by(self, observer: Arc<dyn ShardObserver>) -> Result<Store, StartupError> {
        let mut inner = Arc::try_unwrap(self.inner)
            .map_err(|_| StartupError::Config("store shared before it was built".into()))?;
        let hook = observer.clone();
        inner
            .topology
            .set_failover_hook(Arc::new(move |shard, old, new| {
                hook.master_changed(shard, old, new)
            }));
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
        self.routes()
            .links
            .iter()
            .map(|s| s.breaker.state())
            .collect()
    }

    /// Waits until every detached task of this store has ended: the other participants of
    /// the trades it answered applied, and the decision records it was forgetting forgotten.
    /// Nothing depends on it for safety (an intent left is applied by whoever meets it); a
    /// gateway calls it when it drains, so a stop leaves no work to resolvers, and tests
    /// call it before comparing what Redis holds.
    pub async fn wait_detached(&self) {
        let inner = &self.inner;
        let _finishing = inner
            .finishing
            .acquire_many(intents::FINISHING_AT_ONCE as u32)
            .await;
        let _forgetting = inner
            .forgetting
            .acquire_many(intents::FORGETTING_AT_ONCE as u32)
            .await;
    }

    /// The slot map this store routes by now. For a Redis Cluster it follows the cluster's
    /// map (read again on redirects and every `cluster.refresh_interval_ms`); an index taken
    /// from it names the same shard in every later map.
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.routes().map.clone()
    }

    /// For a Redis Cluster: its map as last read (groups, masters, replicas, epoch), and how
    /// many reads of it were made and failed. `None` for `[[shards]]`.
    pub fn cluster_view(&self) -> Option<(Arc<ClusterView>, u64, u64)> {
        self.inner.topology.directory().map(|directory| {
            let (reads, failed) = directory.refresh_counts();
            (directory.view(), reads, failed)
        })
    }

    /// The routes a call takes once and keeps.
    fn routes(&self) -> Arc<Routes> {
        self.inner.topology.routes()
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
        self.routes().links.iter().map(|s| s.stats()).collect()
    }

    /// The name of `shard`, as the configuration (or the cluster's map) and the metrics call
    /// it.
    pub fn shard_name(&self, shard: ShardIndex) -> String {
        self.routes().links(shard).name.clone()
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
        let links = self.routes().links(shard).clone();
        links.dedicated().await
    }

    /// A node answered `MOVED` on a connection of the caller's own (a blocking pop on a
    /// [`Store::dedicated_connection`]) that was opened at `since`: for a Redis Cluster,
    /// reads the map again unless a read began after `since` (one read serves every caller);
    /// nothing for `[[shards]]`, whose map never changes.
    pub async fn slot_moved(&self, since: tokio::time::Instant) {
        self.inner.topology.moved(since).await
    }

    /// Whether the store serves a Redis Cluster (its map changes) rather than `[[shards]]`.
    pub fn is_cluster(&self) -> bool {
        self.inner.topology.directory().is_some()
    }

    /// Sends `PING` to every shard's master; one result per shard, in shard order.
    pub async fn ping_shards(&self, timeout: Duration) -> Vec<Result<(), Error>> {
        let routes = self.routes();
        let pings = routes
            .map
            .indices()
            .zip(&routes.links)
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

/// How long a restore request is given before a caller still waiting for the player sends
/// it again (in case the archiver lost it): single writes and trades alike.
const RESTORE_REQUEST_AGAIN: Duration = Duration::from_millis(250);
