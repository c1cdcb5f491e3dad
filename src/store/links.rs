//! A shard's connections and how its master is found.
//!
//! Each shard has a fixed number of multiplexed connections, used round robin and shared by
//! every caller: a multiplexed connection pipelines every request in flight on it, which is
//! what makes concurrent single transactions cheap. (A pool that lends a connection to one
//! caller at a time serialises it: measured on one shard with 64 callers, exclusive checkout
//! gave 10k transactions/s where a shared connection gave over 50k.)
//!
//! A connection is opened lazily and reopened by the next caller after anyone marks it broken.
//! Opening one finds the master first: a fixed address, or the Sentinel client rules — ask
//! the Sentinels for the master's address (all at once; those that do not answer in time do
//! not count, the newest configuration wins, and a master being failed over is refused, see
//! [`super::sentinel`]), connect, confirm with `ROLE` that the server is a master, and ask the
//! Sentinels again now that it answered. A `READONLY` reply or a lost connection invalidates
//! every connection of the shard, so the next request resolves the master again. A task
//! subscribed to one Sentinel's `+switch-master` channel treats an announcement for the
//! shard's master as a hint: it invalidates the connections and closes the breaker, so the
//! next request finds the new master at once instead of after its errors. One generation of
//! connections leads to one master: a connection that finds another master makes the others
//! stale, and one opened while they went stale is not used ([`ShardLinks::adopt`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo};

use crate::config::{RedisSettings, ShardConfig};
use crate::error::Error;
use crate::shard_map::{Endpoint, Shard, ShardIndex};

use super::breaker::Breaker;
use super::connect::{tcp_info, ConnectError};
use super::directory::ClusterDirectory;
use super::sentinel::{self, replies_outlast_down_after};
use super::wait::{Acknowledged, WaitFor, WaitRounds};

/// One multiplexed connection to a shard's master.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) conn: MultiplexedConnection,
    generation: u64,
    waits: Arc<WaitRounds>,
    /// The master it leads to.
    master: Arc<str>,
}

/// The origin of [`Link`]'s reply times.
static CLOCK_BASE: std::sync::LazyLock<tokio::time::Instant> =
    std::sync::LazyLock::new(tokio::time::Instant::now);

/// Now, in ms since [`CLOCK_BASE`].
fn clock_ms() -> u64 {
    u64::try_from(CLOCK_BASE.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Whether links whose master last answered at `last_reply_ms` must have the master found
/// again before they are used, `now_ms`, when the Sentinels replace a master unreachable for
/// `down_after_ms` (`None`: not known, or not a Sentinel shard).
///
/// A master answering now was not yet replaced when it answered, and the Sentinels replace
/// one only after it was unreachable for their `down-after`: so within that time of its
/// last reply it is still the master (its freeze, if any, began after that reply). Past it,
/// a link nobody used meanwhile may lead to a master frozen and replaced since and woken now,
/// which still answers as a master, with a history the shard is leaving.
fn idle_past_down_after(last_reply_ms: u64, now_ms: u64, down_after_ms: Option<u64>) -> bool {
    down_after_ms.is_some_and(|down_after| now_ms.saturating_sub(last_reply_ms) >= down_after)
}

impl Link {
    /// How many replicas acknowledged every write this connection had answered before the
    /// call, and how many were asked for: `WAIT`, shared with whoever else is waiting on the
    /// same connection.
    pub(super) async fn replicated(&self) -> Acknowledged {
        self.waits.wait().await
    }
}

/// Connection statistics of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Connections open and current (a connection being opened right now is not counted).
    pub open: usize,
    /// Connections the shard may have (`redis.connections_per_shard`).
    pub configured: usize,
    /// Connection attempts so far.
    pub connects: u64,
    /// Connection attempts that failed or timed out.
    pub connect_failures: u64,
    /// The master's address as last resolved, if any.
    pub master: Option<String>,
    /// Times the resolved master changed (failovers seen).
    pub failovers: u64,
    /// How many replicas a write waits for now, in replicated mode (`None` otherwise): every
    /// one that could be promoted, at least `redis.replicas_to_wait` (a Redis Cluster's
    /// shard: those its map lists online, before each round adds the attached replicas it
    /// does not list).
    pub replicas_waited_for: Option<u32>,
}

/// How long a master that answers NOREPLICAS keeps its links before they are dropped to find
/// the master again: a master short of replicas is usually still the master, and dropping
/// its links on every refusal opened a connection per retry while a shard was stalled.
pub(super) const NOREPLICAS_RECHECK: Duration = Duration::from_secs(1);

/// How often a replicated Sentinel shard asks its Sentinels which replicas they could
/// promote, besides each time it finds its master: a replica they flag down stops being
/// waited for within this of their flag, one they list anew starts being waited for.
pub(super) const ELECTABLE_REFRESH: Duration = Duration::from_secs(1);

/// Told when a shard's master changes.
pub(super) type FailoverHook = Arc<dyn Fn(&str, Option<&str>, &str) + Send + Sync>;

/// How a shard's master is found.
enum Locator {
    /// Always at this address.
    Fixed(String),
    /// Wherever the Sentinels say.
    Sentinel {
        master_name: String,
        sentinels: Vec<String>,
    },
    /// Wherever the cluster's map says shard `group`'s master is.
    Cluster {
        directory: Arc<ClusterDirectory>,
        group: ShardIndex,
    },
}

/// Who the store is to Redis (and to Sentinel).
#[derive(Debug, Clone, Default)]
pub(super) struct Credentials {
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) sentinel_password: Option<String>,
}

/// The master the current generation of a shard's links leads to, and the generations of
/// its adoption (from the one its connection began in, to the one it made).
#[derive(Debug, Default)]
struct Noted {
    address: Option<String>,
    from: u64,
    to: u64,
}

/// A shard's connections, master discovery and breaker.
pub(super) struct ShardLinks {
    pub(super) name: String,
    locator: Locator,
    redis_info: RedisConnectionInfo,
    sentinel_password: Option<String>,
    connection_config: AsyncConnectionConfig,
    connect_timeout: Duration,
    sentinel_timeout: Duration,
    /// Which replicas `WAIT` asks for (see [`WaitFor`]); a Redis Cluster's shard updates it
    /// with each view (`set_wait_for`), a Sentinel shard with each answer of its Sentinels
    /// (`ask_sentinels`).
    wait_for: Arc<Mutex<WaitFor>>,
    /// `redis.replicas_to_wait`.
    replicas_to_wait: u32,
    /// Whether writes are acknowledged by replicas (`redis.acknowledge = "replicated"`): a
    /// Sentinel shard then reads which replicas could be promoted every
    /// [`ELECTABLE_REFRESH`].
    replicated: bool,
    replication_timeout_ms: u64,
    slots: Vec<tokio::sync::Mutex<Option<Link>>>,
    next: AtomicUsize,
    /// Links from an older generation are stale; raising it invalidates them all at once.
    generation: AtomicU64,
    /// The master the current generation of links leads to (see [`ShardLinks::adopt`]).
    master: Mutex<Noted>,
    /// The Sentinels' `down-after-milliseconds` (the shortest of those that agreed), once
    /// known; 0 until then.
    down_after_ms: AtomicU64,
    /// When the master of the current generation last answered, in ms since [`CLOCK_BASE`]
    /// (one generation leads to one master, so one time serves all its links).
    last_reply_ms: AtomicU64,
    pub(super) breaker: Breaker,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    failovers: AtomicU64,
    on_failover: Mutex<Option<FailoverHook>>,
    /// Whether the `+switch-master` watcher has been started.
    watching: AtomicBool,
    /// How long a reply may take (command plus `WAIT` timeout).
    response_timeout: Duration,
    /// Whether the warning that `response_timeout` outlasts the Sentinels' `down-after` has
    /// been logged.
    warned_slow_replies: AtomicBool,
    /// When a NOREPLICAS refusal last made the links stale.
    last_recheck: Mutex<Option<tokio::time::Instant>>,
    /// Dropped with the links, which tells the watcher to stop.
    alive: tokio::sync::watch::Sender<()>,
}

impl ShardLinks {
    /// The links of a shard of the configuration (`[[shards]]`).
    pub(super) fn new(shard: &Shard, config: &ShardConfig, settings: &RedisSettings) -> ShardLinks {
        let locator = match &shard.endpoint {
            Endpoint::Fixed(address) => Locator::Fixed(address.clone()),
            Endpoint::Sentinel {
                master_name,
                sentinels,
            } => Locator::Sentinel {
                master_name: master_name.clone(),
                sentinels: sentinels.clone(),
            },
            // A cluster's shards are made by `ShardLinks::in_cluster`; a configuration cannot
            // name one, so this has no master to find.
            Endpoint::Cluster { master } => Locator::Fixed(master.clone().unwrap_or_default()),
        };
        let credentials = Credentials {
            username: config.username.clone(),
            password: config.password.clone(),
            sentinel_password: config.sentinel.as_ref().and_then(|s| s.password.clone()),
        };
        ShardLinks::with_locator(&shard.name, locator, credentials, settings)
    }

    /// The links of shard `group` of a Redis Cluster, whose master `directory` finds.
    pub(super) fn in_cluster(
        name: &str,
        directory: Arc<ClusterDirectory>,
        group: ShardIndex,
        credentials: Credentials,
        settings: &RedisSettings,
    ) -> ShardLinks {
        ShardLinks::with_locator(
            name,
            Locator::Cluster { directory, group },
            credentials,
            settings,
        )
    }

    fn with_locator(
        name: &str,
        locator: Locator,
        credentials: Credentials,
        settings: &RedisSettings,
    ) -> ShardLinks {
        let mut redis_info = RedisConnectionInfo::default();
        if let Some(user) = &credentials.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &credentials.password {
            redis_info = redis_info.set_password(password);
        }
        // The response timeout bounds every command and pipeline; a request that hits it after
        // being sent has an UNKNOWN outcome. WAIT may block up to its own timeout on top.
        let response_timeout = settings.command_timeout() + settings.replication_timeout();
        ShardLinks {
            name: name.to_string(),
            locator,
            redis_info,
            sentinel_password: credentials.sentinel_password,
            connection_config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout()))
                .set_response_timeout(Some(response_timeout)),
            connect_timeout: settings.connect_timeout(),
            sentinel_timeout: settings.sentinel_timeout(),
            wait_for: Arc::new(Mutex::new(WaitFor::Configured(settings.replicas_to_wait))),
            replicas_to_wait: settings.replicas_to_wait,
            replicated: settings.acknowledge == crate::config::Acknowledge::Replicated,
            replication_timeout_ms: settings.replication_timeout_ms,
            slots: (0..settings.connections_per_shard)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            master: Mutex::new(Noted::default()),
            down_after_ms: AtomicU64::new(0),
            last_reply_ms: AtomicU64::new(0),
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown()),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            on_failover: Mutex::new(None),
            watching: AtomicBool::new(false),
            response_timeout,
            warned_slow_replies: AtomicBool::new(false),
            last_recheck: Mutex::new(None),
            alive: tokio::sync::watch::channel(()).0,
        }
    }

    /// Starts, once, the task that listens for `+switch-master` and, when writes are
    /// replicated, the one that reads which replicas could be promoted every
    /// [`ELECTABLE_REFRESH`] (Sentinel shards only).
    pub(super) fn watch_sentinels(self: &Arc<Self>) {
        if matches!(self.locator, Locator::Sentinel { .. })
            && !self.watching.swap(true, Ordering::SeqCst)
        {
            let Locator::Sentinel {
                master_name,
                sentinels,
            } = &self.locator
            else {
                return;
            };
            if self.replicated {
                tokio::spawn(refresh_electable(
                    Arc::downgrade(self),
                    self.alive.subscribe(),
                ));
            }
            let links = Arc::downgrade(self);
            tokio::spawn(sentinel::watch_switch_master(
                master_name.clone(),
                sentinels.clone(),
                self.sentinel_timeout,
                self.sentinel_password.clone(),
                move |new| {
                    if let Some(links) = links.upgrade() {
                        links.switch_hint(new);
                    }
                },
                self.alive.subscribe(),
            ));
        }
    }

    /// A Sentinel announced that the master moved to `new`, or the cluster's map now names
    /// `new` as the master.
    pub(super) fn switch_hint(&self, new: &str) {
        tracing::info!(shard = %self.name, new_master = %new, "the master moved");
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.breaker.success();
    }

    /// Sets which replicas `WAIT` asks for from the next round on (a Redis Cluster's shard,
    /// from each new view).
    pub(super) fn set_wait_for(&self, wait_for: WaitFor) {
        *lock(&self.wait_for) = wait_for;
    }

    pub(super) fn set_failover_hook(&self, hook: FailoverHook) {
        *lock(&self.on_failover) = Some(hook);
    }

    /// Whether `link` is of the current generation (no failure, hint or new master has made
    /// the shard's links stale since it was opened).
    pub(super) fn is_current(&self, link: &Link) -> bool {
        link.generation == self.generation.load(Ordering::SeqCst)
    }

    /// Makes every connection of the shard stale: the master may have moved. Says whether
    /// this call did it (not someone before it for the same generation).
    pub(super) fn invalidate(&self, link: &Link) -> bool {
        // Only the first caller to see a failure of this generation raises it.
        self.generation
            .compare_exchange(
                link.generation,
                link.generation + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// A server refused a write because it is no longer the master, or is cut off from its
    /// replicas (`short_of_replicas`: NOREPLICAS). The first makes every link stale at once;
    /// the second at most once per [`NOREPLICAS_RECHECK`]: a master short of replicas is
    /// usually still the master (a replica stalled), and finding it again on every refusal
    /// opened a connection per retry, while a master cut off by a failover is still found
    /// again within the interval (and at once by the `+switch-master` hint).
    pub(super) fn master_may_have_moved(&self, link: &Link, short_of_replicas: bool) {
        if short_of_replicas {
            let now = tokio::time::Instant::now();
            let mut last = lock(&self.last_recheck);
            if last.is_some_and(|at| now.duration_since(at) < NOREPLICAS_RECHECK) {
                return;
            }
            // Counted only when it made the links stale: a refusal on a link already stale
            // must not mute the next one on a current link.
            if self.invalidate(link) {
                *last = Some(now);
            }
            return;
        }
        self.invalidate(link);
    }

    /// A current connection, opening one (and finding the master) if the chosen slot has none.
    pub(super) async fn get(&self) -> Result<Link, Error> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // Callers that pick a slot being reconnected wait for that attempt instead of
        // starting their own: a dead shard sees one connect per slot, not one per request.
        let mut slot = self.slots[index].lock().await;
        if let Some(link) = slot.as_ref() {
            if link.generation == self.generation.load(Ordering::SeqCst) {
                if !self.idle_too_long() {
                    return Ok(link.clone());
                }
                match self.still_the_master(link).await {
                    Ok(true) => {
                        self.heard(link);
                        return Ok(link.clone());
                    }
                    Ok(false) => {
                        tracing::info!(shard = %self.name, master = %link.master, "the shard's connections were idle past down-after and the Sentinels name another master: finding it again");
                        self.invalidate(link);
                    }
                    Err(e) => return Err(self.unavailable(e)),
                }
            }
        }
        *slot = None;
        // Read after the check above, which may have made the links stale.
        let generation = self.generation.load(Ordering::SeqCst);
        self.connects.fetch_add(1, Ordering::Relaxed);
        let (conn, address) =
            match tokio::time::timeout(self.connect_timeout * 2, self.connect_master()).await {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => return Err(self.unavailable(e)),
                Err(_) => return Err(self.unavailable(self.connect_timed_out())),
            };
        let generation = match self.adopt(&address, generation) {
            Some(generation) => generation,
            None => {
                return Err(self.unavailable(ConnectError::StaleWhileConnecting { address }));
            }
        };
        let master: Arc<str> = address.into();
        let waits = Arc::new(WaitRounds::new(
            conn.clone(),
            master.clone(),
            self.wait_for.clone(),
            self.replication_timeout_ms,
        ));
        let link = Link {
            conn,
            generation,
            waits,
            master,
        };
        // It has just answered `ROLE`.
        self.heard(&link);
        *slot = Some(link.clone());
        Ok(link)
    }

    /// A new connection to the master, used by one caller only (for blocking commands).
    pub(super) async fn dedicated(&self) -> Result<MultiplexedConnection, Error> {
        let generation = self.generation.load(Ordering::SeqCst);
        match tokio::time::timeout(self.connect_timeout * 2, self.connect_master()).await {
            // Its blocking pops take requests off a queue: taken only from the master the
            // shard's links lead to, like theirs.
            Ok(Ok((conn, address))) => match self.adopt(&address, generation) {
                Some(_) => Ok(conn),
                None => Err(self.unavailable(ConnectError::StaleWhileConnecting { address })),
            },
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(self.connect_timed_out())),
        }
    }

    fn connect_timed_out(&self) -> ConnectError {
        ConnectError::Timeout {
            step: "find and connect to the master of",
            address: self.name.clone(),
        }
    }

    fn unavailable(&self, cause: ConnectError) -> Error {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(shard = %self.name, error = %cause, "cannot connect to shard");
        Error::Unavailable {
            shard: Some(self.name.clone()),
            reason: cause.to_string(),
        }
    }

    /// Finds the master, connects to it and confirms its role: the connection and the
    /// master's address.
    async fn connect_master(&self) -> Result<(MultiplexedConnection, String), ConnectError> {
        let address = match &self.locator {
            Locator::Fixed(address) => address.clone(),
            Locator::Sentinel {
                master_name,
                sentinels,
            } => {
                let agreed = self.ask_sentinels(master_name, sentinels).await?;
                self.warn_if_replies_outlast(agreed.down_after_ms);
                if let Some(down_after) = agreed.down_after_ms {
                    self.down_after_ms.store(down_after, Ordering::Relaxed);
                }
                agreed.address
            }
            Locator::Cluster { directory, group } => {
                directory.master_of(*group, &self.name).await?
            }
        };
        let info = tcp_info(&address, self.redis_info.clone())?;
        let connect_failed = |e| ConnectError::redis("connect to", &address, e);
        let client = redis::Client::open(info).map_err(connect_failed)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await
            .map_err(connect_failed)?;
        let role: redis::Value = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| ConnectError::redis("ROLE on", &address, e))?;
        let is_master = matches!(&role, redis::Value::Array(items)
            if matches!(items.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
        if !is_master {
            return Err(ConnectError::NotMaster { address });
        }
        // The Sentinels' answer may be older than the ROLE reply: a master frozen after they
        // answered replies once it wakes, possibly after a replica was promoted meanwhile.
        // Asked again now that it has replied, they have seen any failover that began while
        // it was frozen.
        if let Locator::Sentinel {
            master_name,
            sentinels,
        } = &self.locator
        {
            let now = self.ask_sentinels(master_name, sentinels).await?.address;
            if now != address {
                return Err(ConnectError::MovedWhileConfirming {
                    master: master_name.clone(),
                    from: address,
                    to: now,
                });
            }
        }
        Ok((conn, address))
    }

    /// The master answered on `link`: what keeps the current generation's links from being
    /// checked with the Sentinels (see [`idle_past_down_after`]). A link of an older
    /// generation (an answer still arriving from a master left behind) says nothing about the
    /// current one. Stored at most every 50 ms: every caller of the shard shares it.
    pub(super) fn heard(&self, link: &Link) {
        if link.generation != self.generation.load(Ordering::SeqCst) {
            return;
        }
        let now = clock_ms();
        if now.saturating_sub(self.last_reply_ms.load(Ordering::Relaxed)) >= 50 {
            self.last_reply_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the shard's links were idle so long that their master may have been replaced
    /// meanwhile (Sentinel shards: see [`idle_past_down_after`]).
    fn idle_too_long(&self) -> bool {
        let down_after = match self.down_after_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        };
        matches!(self.locator, Locator::Sentinel { .. })
            && idle_past_down_after(
                self.last_reply_ms.load(Ordering::Relaxed),
                clock_ms(),
                down_after,
            )
    }

    /// Whether the Sentinels still name the master `link` leads to, and the links are still
    /// of its generation. The Sentinels' refusals are those of a connection being opened (a
    /// failover in progress, no Sentinel answering): the link is not used meanwhile.
    async fn still_the_master(&self, link: &Link) -> Result<bool, ConnectError> {
        let Locator::Sentinel {
            master_name,
            sentinels,
        } = &self.locator
        else {
            return Ok(true);
        };
        let agreed = self.ask_sentinels(master_name, sentinels).await?;
        if let Some(down_after) = agreed.down_after_ms {
            self.down_after_ms.store(down_after, Ordering::Relaxed);
        }
        Ok(*agreed.address == *link.master
            && link.generation == self.generation.load(Ordering::SeqCst))
    }

    /// Logs once if a reply may arrive later than the Sentinels' `down-after`: such a reply
    /// can come from a master frozen long enough to have been replaced.
    fn warn_if_replies_outlast(&self, down_after_ms: Option<u64>) {
        if let Some(down_after_ms) = down_after_ms {
            if replies_outlast_down_after(self.response_timeout, down_after_ms)
                && !self.warned_slow_replies.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    shard = %self.name,
                    reply_timeout_ms = self.response_timeout.as_millis() as u64,
                    down_after_ms,
                    "redis.command_timeout_ms + redis.replication_timeout_ms is not below the \
                     Sentinels' down-after-milliseconds: a late reply from a master that was \
                     replaced meanwhile can be taken as OK"
                );
            }
        }
    }

    /// Asks every Sentinel of the shard at once (see [`sentinel::ask_all`]).
    async fn ask_sentinels(
        &self,
        master_name: &str,
        sentinels: &[String],
    ) -> Result<sentinel::Agreed, ConnectError> {
        let agreed = sentinel::ask_all(
            master_name,
            sentinels,
            self.sentinel_timeout,
            self.sentinel_password.as_deref(),
            self.replicated,
        )
        .await?;
        // Every answer that lists replicas says which could be promoted now; one that failed
        // (no Sentinel answering, a failover in progress) or listed none keeps the last count.
        if let Some(electable) = &agreed.electable {
            // The Sentinels name another master than the links lead to: a failover the links
            // have not followed yet. Until they do, the replicas listed before are still
            // waited for too (the Sentinels that answered may list only the new master's,
            // while a replica the leader has not moved yet still follows the old one); the
            // new list alone applies once the links lead to the new master. (Read before
            // `wait_for` is locked: never both locks at once.)
            let noted = lock(&self.master).address.clone();
            let moving = noted.is_some_and(|noted| noted != agreed.address);
            let mut wait_for = lock(&self.wait_for);
            let mut listed = electable.clone();
            if moving {
                if let WaitFor::Sentinel { electable, .. } = &*wait_for {
                    for before in electable {
                        if !listed.iter().any(|now| !now.is_disjoint(before)) {
                            listed.push(before.clone());
                        }
                    }
                }
            }
            *wait_for = WaitFor::Sentinel {
                configured: self.replicas_to_wait,
                electable: listed,
            };
        }
        Ok(agreed)
    }

    /// Takes a connection just opened to the master at `address`, from links of
    /// `generation` (read before the master was looked for): the generation its link belongs
    /// to, or `None` when it must not be used.
    ///
    /// One generation of links leads to one master. A process holding current links to two
    /// servers that both answer as master — the old one woken after a failover and the
    /// promoted one — would read in one history and act in the other (`NO_INTENT`, a commit
    /// record forgotten on the strength of it). So a master other than the one noted makes
    /// every other link stale at once (a new generation, which this link belongs to) — taken
    /// only by a connection begun in the current generation, so one begun before the links
    /// went stale cannot bring back the master they led to. A connection to the noted master
    /// is taken in the generation it began in, or when the only change since was the adoption
    /// of this same master (several connections found it at once); otherwise its links went
    /// stale while it was being opened (an error, a failover hint) and it is refused: it is
    /// opened again, and the master found again.
    fn adopt(&self, address: &str, generation: u64) -> Option<u64> {
        let mut master = lock(&self.master);
        let current = self.generation.load(Ordering::SeqCst);
        if master.address.as_deref() == Some(address) {
            let taken =
                generation == current || (generation == master.from && current == master.to);
            return taken.then_some(current);
        }
        if generation != current {
            return None;
        }
        let adopted = if master.address.is_some() {
            self.generation.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            current
        };
        master.from = generation;
        master.to = adopted;
        let generation = adopted;
        let old = master.address.replace(address.to_string());
        if let Some(old) = &old {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard = %self.name, old_master = %old, new_master = %address, "failover: the shard's master changed");
        } else {
            tracing::info!(shard = %self.name, master = %address, "shard master found");
        }
        drop(master);
        if let Some(hook) = lock(&self.on_failover).clone() {
            hook(&self.name, old.as_deref(), address);
        }
        Some(generation)
    }

    pub(super) fn stats(&self) -> ConnectionStats {
        let generation = self.generation.load(Ordering::SeqCst);
        // One lock at a time (each guard dropped at the end of its statement).
        let master = lock(&self.master).address.clone();
        let replicas_waited_for = self.replicated.then(|| {
            let wait_for = lock(&self.wait_for);
            match &master {
                Some(master) => wait_for.for_master(master).asked(None),
                None => wait_for.asked(None),
            }
        });
        ConnectionStats {
            open: self
                .slots
                .iter()
                .filter(|s| {
                    s.try_lock()
                        .map(|l| l.as_ref().is_some_and(|l| l.generation == generation))
                        .unwrap_or(false)
                })
                .count(),
            configured: self.slots.len(),
            connects: self.connects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            master,
            failovers: self.failovers.load(Ordering::Relaxed),
            replicas_waited_for,
        }
    }
}

/// Asks the shard's Sentinels every [`ELECTABLE_REFRESH`] (which sets the replicas `WAIT`
/// asks for, [`ShardLinks::ask_sentinels`]) until the links are dropped.
async fn refresh_electable(
    links: std::sync::Weak<ShardLinks>,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ELECTABLE_REFRESH) => {}
            _ = stopped.changed() => return,
        }
        let Some(links) = links.upgrade() else { return };
        let Locator::Sentinel {
            master_name,
            sentinels,
        } = &links.locator
        else {
            return;
        };
        match links.ask_sentinels(master_name, sentinels).await {
            // The Sentinels agree on another master than the links lead to: a failover they
            // have not followed, perhaps because its `+switch-master` was missed (a
            // subscription on a half-open connection). The links are made stale, as that
            // announcement would have made them, so the next request finds the new master.
            Ok(agreed) => {
                let noted = lock(&links.master).address.clone();
                if noted.is_some_and(|noted| noted != agreed.address) {
                    links.switch_hint(&agreed.address);
                }
            }
            Err(e) => {
                tracing::debug!(shard = %links.name, error = %e, "the replicas to wait for were not read again");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values behind these locks; a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> ShardLinks {
        let shard = Shard {
            name: "shard-0".into(),
            endpoint: Endpoint::Fixed("127.0.0.1:1".into()),
            replicas: Vec::new(),
        };
        let config = ShardConfig {
            name: "shard-0".into(),
            master: Some("127.0.0.1:1".into()),
            sentinel: None,
            replicas: Vec::new(),
            username: None,
            password: None,
        };
        ShardLinks::new(&shard, &config, &RedisSettings::default())
    }

    #[test]
    fn one_generation_of_links_leads_to_one_master() {
        let links = links();
        // The first master found keeps the generation the connection began in.
        assert_eq!(links.adopt("m1:6379", 0), Some(0));
        assert_eq!(links.adopt("m1:6379", 0), Some(0));
        // Another master (the promoted replica) makes every link of the generation stale at
        // once: the new connection belongs to the next one, and so do the others that began
        // with it and found the same master.
        assert_eq!(links.adopt("r1:6379", 0), Some(1));
        assert_eq!(links.stats().failovers, 1);
        assert_eq!(links.adopt("r1:6379", 0), Some(1));
        assert_eq!(links.adopt("r1:6379", 1), Some(1));
        // A connection begun before that change cannot bring the old master back (woken after
        // its failover, it still answers as one); one begun since, told so by the Sentinels,
        // can.
        assert_eq!(links.adopt("m1:6379", 0), None);
        assert_eq!(links.stats().master.as_deref(), Some("r1:6379"));
        assert_eq!(links.adopt("m1:6379", 1), Some(2));
        assert_eq!(links.stats().failovers, 2);
        // Links made stale by an error while a connection was being opened: that one is
        // refused, and the next one is taken.
        links.generation.fetch_add(1, Ordering::SeqCst);
        assert_eq!(links.adopt("m1:6379", 2), None);
        assert_eq!(links.adopt("m1:6379", 3), Some(3));
    }

    #[test]
    fn a_link_idle_past_the_sentinels_down_after_finds_the_master_again() {
        // Within down-after of the master's last reply it cannot have been replaced.
        assert!(!idle_past_down_after(10_000, 11_999, Some(2_000)));
        assert!(idle_past_down_after(10_000, 12_000, Some(2_000)));
        // Not known (no Sentinel said yet), or a clock read before the reply: used as it is.
        assert!(!idle_past_down_after(10_000, 99_000, None));
        assert!(!idle_past_down_after(10_000, 9_000, Some(2_000)));
    }

    #[test]
    fn the_first_master_is_not_taken_from_a_stale_generation() {
        let links = links();
        links.generation.fetch_add(1, Ordering::SeqCst);
        assert_eq!(links.adopt("m1:6379", 0), None);
        assert_eq!(links.adopt("m1:6379", 1), Some(1));
        assert_eq!(links.stats().failovers, 0);
    }
}
