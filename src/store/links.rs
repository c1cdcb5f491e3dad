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
//! [`agreed_master`]), connect, confirm with `ROLE` that the server is a master, and ask the
//! Sentinels again now that it answered. A `READONLY` reply or a lost connection invalidates
//! every connection of the shard, so the next request resolves the master again. A task
//! subscribed to one Sentinel's `+switch-master` channel treats an announcement for the
//! shard's master as a hint: it invalidates the connections and closes the breaker, so the
//! next request finds the new master at once instead of after its errors.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::{parse_address, RedisSettings, ShardConfig};
use crate::error::Error;
use crate::shard_map::{Endpoint, Shard};

use super::breaker::Breaker;

/// One multiplexed connection to a shard's master.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) conn: MultiplexedConnection,
    generation: u64,
    waits: Arc<WaitRounds>,
}

impl Link {
    /// How many replicas acknowledged every write this connection had answered before the
    /// call: `WAIT`, shared with whoever else is waiting on the same connection.
    pub(super) async fn replicated(&self) -> Result<i64, String> {
        self.waits.wait().await
    }
}

/// Group commit for `WAIT`: one `WAIT` at a time per connection, covering every caller whose
/// writes were answered before it was sent.
///
/// `WAIT` blocks the connection it is sent on until the replicas answer, so a `WAIT` per
/// pipeline would serialise every caller sharing the connection behind one replica round trip
/// each. Instead a caller whose writes were answered joins the next round; a round's `WAIT` is
/// sent only after every caller in it joined, so it covers all of their writes (Redis counts
/// the writes a connection made before the `WAIT`). Rounds run in a task of their own, so a
/// caller that gives up cannot stall the others.
pub(super) struct WaitRounds {
    conn: MultiplexedConnection,
    replicas: u32,
    timeout_ms: u64,
    state: Mutex<Rounds>,
}

#[derive(Default)]
struct Rounds {
    waiting: Vec<tokio::sync::oneshot::Sender<Result<i64, String>>>,
    running: bool,
}

impl WaitRounds {
    async fn wait(self: &Arc<Self>) -> Result<i64, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut rounds = lock(&self.state);
            rounds.waiting.push(tx);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run().await });
        }
        rx.await
            .unwrap_or_else(|_| Err("the WAIT round was abandoned".into()))
    }

    async fn run(&self) {
        loop {
            let round = {
                let mut rounds = lock(&self.state);
                if rounds.waiting.is_empty() {
                    rounds.running = false;
                    return;
                }
                std::mem::take(&mut rounds.waiting)
            };
            let mut conn = self.conn.clone();
            let acked: Result<i64, String> = redis::cmd("WAIT")
                .arg(self.replicas)
                .arg(self.timeout_ms)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string());
            for waiter in round {
                let _ = waiter.send(acked.clone());
            }
        }
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
}

/// Told when a shard's master changes.
pub(super) type FailoverHook = Arc<dyn Fn(&str, Option<&str>, &str) + Send + Sync>;

/// A shard's connections, master discovery and breaker.
pub(super) struct ShardLinks {
    pub(super) name: String,
    endpoint: Endpoint,
    redis_info: RedisConnectionInfo,
    sentinel_info: RedisConnectionInfo,
    connection_config: AsyncConnectionConfig,
    connect_timeout: Duration,
    sentinel_timeout: Duration,
    replicas_to_wait: u32,
    replication_timeout_ms: u64,
    slots: Vec<tokio::sync::Mutex<Option<Link>>>,
    next: AtomicUsize,
    /// Links from an older generation are stale; raising it invalidates them all at once.
    generation: AtomicU64,
    master: Mutex<Option<String>>,
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
    /// Dropped with the links, which tells the watcher to stop.
    alive: tokio::sync::watch::Sender<()>,
}

/// `host:port`, with an IPv6 host in brackets.
fn host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn tcp_info(address: &str, redis: RedisConnectionInfo) -> Result<redis::ConnectionInfo, String> {
    let (host, port) = parse_address(address)?;
    Ok(ConnectionAddr::Tcp(host, port)
        .into_connection_info()
        .map_err(|e| e.to_string())?
        .set_redis_settings(redis))
}

impl ShardLinks {
    pub(super) fn new(shard: &Shard, config: &ShardConfig, settings: &RedisSettings) -> ShardLinks {
        let mut redis_info = RedisConnectionInfo::default();
        if let Some(user) = &config.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &config.password {
            redis_info = redis_info.set_password(password);
        }
        let mut sentinel_info = RedisConnectionInfo::default();
        if let Some(password) = config.sentinel.as_ref().and_then(|s| s.password.as_ref()) {
            sentinel_info = sentinel_info.set_password(password);
        }
        // The response timeout bounds every command and pipeline; a request that hits it after
        // being sent has an UNKNOWN outcome. WAIT may block up to its own timeout on top.
        let response_timeout = settings.command_timeout() + settings.replication_timeout();
        ShardLinks {
            name: shard.name.clone(),
            endpoint: shard.endpoint.clone(),
            redis_info,
            sentinel_info,
            connection_config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout()))
                .set_response_timeout(Some(response_timeout)),
            connect_timeout: settings.connect_timeout(),
            sentinel_timeout: settings.sentinel_timeout(),
            replicas_to_wait: settings.replicas_to_wait,
            replication_timeout_ms: settings.replication_timeout_ms,
            slots: (0..settings.connections_per_shard)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            master: Mutex::new(None),
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown()),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            on_failover: Mutex::new(None),
            watching: AtomicBool::new(false),
            response_timeout,
            warned_slow_replies: AtomicBool::new(false),
            alive: tokio::sync::watch::channel(()).0,
        }
    }

    /// Starts, once, the task that listens for `+switch-master` (Sentinel shards only).
    pub(super) fn watch_sentinels(self: &Arc<Self>) {
        if matches!(self.endpoint, Endpoint::Sentinel { .. })
            && !self.watching.swap(true, Ordering::SeqCst)
        {
            let stopped = self.alive.subscribe();
            tokio::spawn(watch_switch_master(Arc::downgrade(self), stopped));
        }
    }

    /// A Sentinel announced that the master moved to `new`.
    fn switch_hint(&self, new: &str) {
        tracing::info!(shard = %self.name, new_master = %new, "Sentinel announced +switch-master");
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.breaker.success();
    }

    pub(super) fn set_failover_hook(&self, hook: FailoverHook) {
        *lock(&self.on_failover) = Some(hook);
    }

    /// Makes every connection of the shard stale: the master may have moved.
    pub(super) fn invalidate(&self, link: &Link) {
        // Only the first caller to see a failure of this generation raises it.
        let _ = self.generation.compare_exchange(
            link.generation,
            link.generation + 1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// A current connection, opening one (and finding the master) if the chosen slot has none.
    pub(super) async fn get(&self) -> Result<Link, Error> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // Callers that pick a slot being reconnected wait for that attempt instead of
        // starting their own: a dead shard sees one connect per slot, not one per request.
        let mut slot = self.slots[index].lock().await;
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(link) = slot.as_ref() {
            if link.generation == generation {
                return Ok(link.clone());
            }
        }
        *slot = None;
        self.connects.fetch_add(1, Ordering::Relaxed);
        let conn = match tokio::time::timeout(self.connect_timeout * 2, self.connect_master()).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(reason)) => return Err(self.unavailable(reason)),
            Err(_) => {
                return Err(
                    self.unavailable("finding and connecting to the master timed out".into())
                )
            }
        };
        let waits = Arc::new(WaitRounds {
            conn: conn.clone(),
            replicas: self.replicas_to_wait,
            timeout_ms: self.replication_timeout_ms,
            state: Mutex::new(Rounds::default()),
        });
        let link = Link {
            conn,
            generation,
            waits,
        };
        *slot = Some(link.clone());
        Ok(link)
    }

    /// A new connection to the master, used by one caller only (for blocking commands).
    pub(super) async fn dedicated(&self) -> Result<MultiplexedConnection, Error> {
        match tokio::time::timeout(self.connect_timeout * 2, self.connect_master()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(reason)) => Err(self.unavailable(reason)),
            Err(_) => {
                Err(self.unavailable("finding and connecting to the master timed out".into()))
            }
        }
    }

    fn unavailable(&self, reason: String) -> Error {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(shard = %self.name, %reason, "cannot connect to shard");
        Error::Unavailable {
            shard: self.name.clone(),
            reason,
        }
    }

    /// Finds the master, connects to it and confirms its role.
    async fn connect_master(&self) -> Result<MultiplexedConnection, String> {
        let address = match &self.endpoint {
            Endpoint::Fixed(address) => address.clone(),
            Endpoint::Sentinel {
                master_name,
                sentinels,
            } => {
                let agreed = self.ask_sentinels(master_name, sentinels).await?;
                self.warn_if_replies_outlast(agreed.down_after_ms);
                agreed.address
            }
        };
        let info = tcp_info(&address, self.redis_info.clone())?;
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await
            .map_err(|e| format!("connect to {address} failed: {e}"))?;
        let role: redis::Value = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("ROLE on {address} failed: {e}"))?;
        let is_master = matches!(&role, redis::Value::Array(items)
            if matches!(items.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
        if !is_master {
            return Err(format!("{address} is not a master"));
        }
        // The Sentinels' answer may be older than the ROLE reply: a master frozen after they
        // answered replies once it wakes, possibly after a replica was promoted meanwhile.
        // Asked again now that it has replied, they have seen any failover that began while
        // it was frozen.
        if let Endpoint::Sentinel {
            master_name,
            sentinels,
        } = &self.endpoint
        {
            let now = self.ask_sentinels(master_name, sentinels).await?.address;
            if now != address {
                return Err(format!(
                    "the Sentinels moved master {master_name:?} from {address} to {now} \
                     while it was being confirmed"
                ));
            }
        }
        self.note_master(&address);
        Ok(conn)
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

    fn note_master(&self, address: &str) {
        let mut master = lock(&self.master);
        if master.as_deref() == Some(address) {
            return;
        }
        let old = master.replace(address.to_string());
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
    }

    /// Asks every Sentinel at once; those that answer in time decide (see [`agreed_master`]).
    async fn ask_sentinels(
        &self,
        master_name: &str,
        sentinels: &[String],
    ) -> Result<Agreed, String> {
        let asked = sentinels.iter().map(|sentinel| async move {
            let view = tokio::time::timeout(
                self.sentinel_timeout,
                self.ask_sentinel(sentinel, master_name),
            )
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()));
            (sentinel.clone(), view)
        });
        let answers = futures_util::future::join_all(asked).await;
        agreed_master(master_name, &answers)
    }

    /// One Sentinel's view of the master: where it is and the Sentinel's flags for it, in one
    /// round trip.
    async fn ask_sentinel(
        &self,
        sentinel: &str,
        master_name: &str,
    ) -> Result<SentinelView, String> {
        let info = tcp_info(sentinel, self.sentinel_info.clone())?;
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.sentinel_timeout))
            .set_response_timeout(Some(self.sentinel_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        // `get-master-addr-by-name` already names the promoted replica while the failover is
        // still reconfiguring the others; `MASTER` carries the flags, the epoch, and the
        // master being failed over.
        let (address, details): (Option<Vec<String>>, Vec<String>) = redis::pipe()
            .cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master_name)
            .cmd("SENTINEL")
            .arg("MASTER")
            .arg(master_name)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        SentinelView::from_replies(address.as_deref(), &details)
    }

    pub(super) fn stats(&self) -> ConnectionStats {
        let generation = self.generation.load(Ordering::SeqCst);
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
            master: lock(&self.master).clone(),
            failovers: self.failovers.load(Ordering::Relaxed),
        }
    }
}

/// Follows one Sentinel's `+switch-master` channel at a time, moving to the next Sentinel when
/// one fails, until the links are dropped.
async fn watch_switch_master(
    links: Weak<ShardLinks>,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    let mut index = 0usize;
    loop {
        let (master_name, sentinel, info, timeout) = {
            let Some(this) = links.upgrade() else { return };
            let Endpoint::Sentinel {
                master_name,
                sentinels,
            } = &this.endpoint
            else {
                return;
            };
            let sentinel = sentinels[index % sentinels.len()].clone();
            let info = tcp_info(&sentinel, this.sentinel_info.clone());
            (master_name.clone(), sentinel, info, this.sentinel_timeout)
        };
        let subscribed = async {
            let client = redis::Client::open(info?).map_err(|e| e.to_string())?;
            let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                .await
                .map_err(|_| "no answer in time".to_string())?
                .map_err(|e| e.to_string())?;
            pubsub
                .subscribe("+switch-master")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub.into_on_message())
        };
        let mut messages = tokio::select! {
            subscribed = subscribed => match subscribed {
                Ok(messages) => Some(messages),
                Err(e) => {
                    tracing::debug!(%sentinel, error = %e, "cannot follow +switch-master");
                    None
                }
            },
            _ = stopped.changed() => return,
        };
        while let Some(stream) = messages.as_mut() {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = stopped.changed() => return,
            };
            let Some(message) = message else { break };
            // "<master name> <old ip> <old port> <new ip> <new port>"
            let payload: String = message.get_payload().unwrap_or_default();
            let words: Vec<&str> = payload.split_whitespace().collect();
            if let [name, _, _, ip, port] = words.as_slice() {
                if *name == master_name {
                    let Some(this) = links.upgrade() else { return };
                    this.switch_hint(&format!("{ip}:{port}"));
                }
            }
        }
        index += 1;
        // Before asking the next Sentinel, so that a dead one is not hammered.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values behind these locks; a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one Sentinel said about a master.
#[derive(Debug, Clone, PartialEq)]
struct SentinelView {
    /// The address `get-master-addr-by-name` gave: during a failover, the promoted replica
    /// once it answers as a master.
    address: String,
    /// The address of the master the Sentinel monitors (`SENTINEL MASTER`): until a failover
    /// ends, the one being failed over.
    monitored: String,
    /// The Sentinel's flags for the master (`s_down`, `o_down`, `failover_in_progress`, ...).
    flags: Vec<String>,
    /// The epoch of the Sentinel's configuration for the master; each failover raises it.
    config_epoch: u64,
    /// How long the master may be silent before this Sentinel deems it down.
    down_after_ms: Option<u64>,
}

impl SentinelView {
    /// Reads the replies to `get-master-addr-by-name` and `SENTINEL MASTER` (a flat list of
    /// field names and values). Fields that are missing or malformed fall back to what is
    /// safest: no flags, epoch 0 (so any Sentinel with a real epoch outranks it), no
    /// `down-after`, and the named address as the monitored one (so its flags still count).
    fn from_replies(
        address: Option<&[String]>,
        details: &[String],
    ) -> Result<SentinelView, String> {
        let address = match address {
            Some([host, port]) => host_port(host, port),
            _ => return Err("unknown master name".into()),
        };
        let field = |name: &str| {
            details
                .chunks(2)
                .find(|pair| pair[0] == name)
                .and_then(|pair| pair.get(1))
        };
        let flags = field("flags")
            .map(|flags| flags.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let config_epoch = field("config-epoch")
            .and_then(|epoch| epoch.parse().ok())
            .unwrap_or(0);
        let down_after_ms = field("down-after-milliseconds").and_then(|ms| ms.parse().ok());
        let monitored = match (field("ip"), field("port")) {
            (Some(host), Some(port)) => host_port(host, port),
            _ => address.clone(),
        };
        Ok(SentinelView {
            address,
            monitored,
            flags,
            config_epoch,
            down_after_ms,
        })
    }
}

/// The master the Sentinels agreed on.
#[derive(Debug, Clone, PartialEq)]
struct Agreed {
    address: String,
    /// The shortest `down-after-milliseconds` among the Sentinels that agreed.
    down_after_ms: Option<u64>,
}

/// Whether a reply may take as long as the Sentinels' `down-after`, after which the master
/// that sends it may have been replaced.
fn replies_outlast_down_after(response_timeout: Duration, down_after_ms: u64) -> bool {
    response_timeout >= Duration::from_millis(down_after_ms)
}

/// The master the Sentinels name, if it is safe to write to.
///
/// Asking one Sentinel is not enough to keep acknowledged writes. A master that was frozen
/// past `down-after` and wakes up after a replica was promoted still believes it is the
/// master, and the other replicas are still attached to it until the failover leader
/// reconfigures them: it takes writes, and `WAIT` counts those replicas' acknowledgements. The
/// Sentinels that did not lead the failover name the old master until the leader's hello
/// reaches them (up to two seconds), and `ROLE` confirms it, so a client that believes them
/// writes into a history the failover is about to throw away. The failover leader knows
/// better throughout: it flags the master `failover_in_progress` from the moment it starts,
/// and once the promoted replica answers as a master it names that replica under a higher
/// configuration epoch than the others.
///
/// So the newest configuration wins, as it does between the Sentinels themselves: of the
/// Sentinels that answered, those at the highest configuration epoch must agree on the
/// address, and it is refused while one of them flags a failover of that very address
/// (`failover_in_progress` or `o_down` on the master it names). The promoted replica, named
/// while the leader still moves the other replicas, is the failover's outcome and is used at
/// once. Sentinels that did not answer do not count, so a shard whose Sentinels are mostly
/// down is still served by the one left (it cannot fail over without a majority anyway). The
/// caller retries a refusal like any UNAVAILABLE shard.
fn agreed_master(
    master_name: &str,
    answers: &[(String, Result<SentinelView, String>)],
) -> Result<Agreed, String> {
    let views: Vec<(&String, &SentinelView)> = answers
        .iter()
        .filter_map(|(sentinel, view)| view.as_ref().ok().map(|view| (sentinel, view)))
        .collect();
    let Some(newest) = views.iter().map(|(_, view)| view.config_epoch).max() else {
        let errors: Vec<String> = answers
            .iter()
            .filter_map(|(sentinel, view)| view.as_ref().err().map(|e| format!("{sentinel}: {e}")))
            .collect();
        return Err(format!(
            "no Sentinel knows master {master_name:?}: {}",
            errors.join("; ")
        ));
    };
    // Only the newest configuration counts: a Sentinel still at the old epoch has not heard
    // that the failover it flags (or the down master it sees) is over.
    let current: Vec<&(&String, &SentinelView)> = views
        .iter()
        .filter(|(_, view)| view.config_epoch == newest)
        .collect();
    if let Some((sentinel, view)) = current.iter().find(|(_, view)| {
        view.address == view.monitored
            && view
                .flags
                .iter()
                .any(|flag| flag == "failover_in_progress" || flag == "o_down")
    }) {
        return Err(format!(
            "Sentinel {sentinel} is failing over master {master_name:?} (flags {}); \
             waiting for the failover to end",
            view.flags.join(",")
        ));
    }
    let address = &current[0].1.address;
    if current.iter().any(|(_, view)| &view.address != address) {
        let said: Vec<String> = current
            .iter()
            .map(|(sentinel, view)| format!("{sentinel} says {}", view.address))
            .collect();
        return Err(format!(
            "the Sentinels disagree on master {master_name:?} at epoch {newest} ({})",
            said.join(", ")
        ));
    }
    Ok(Agreed {
        address: address.clone(),
        down_after_ms: current
            .iter()
            .filter_map(|(_, view)| view.down_after_ms)
            .min(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(address: &str, flags: &str) -> Result<SentinelView, String> {
        at_epoch(address, flags, 1)
    }

    fn at_epoch(address: &str, flags: &str, config_epoch: u64) -> Result<SentinelView, String> {
        Ok(SentinelView {
            address: address.to_string(),
            monitored: address.to_string(),
            flags: flags.split(',').map(str::to_string).collect(),
            config_epoch,
            down_after_ms: Some(2000),
        })
    }

    /// The failover leader once the promoted replica answers as a master.
    fn reconfiguring(promoted: &str, old: &str, config_epoch: u64) -> Result<SentinelView, String> {
        Ok(SentinelView {
            address: promoted.to_string(),
            monitored: old.to_string(),
            flags: vec!["master".into(), "failover_in_progress".into()],
            config_epoch,
            down_after_ms: Some(2000),
        })
    }

    fn agreed(address: &str) -> Agreed {
        Agreed {
            address: address.to_string(),
            down_after_ms: Some(2000),
        }
    }

    fn answers(
        views: Vec<Result<SentinelView, String>>,
    ) -> Vec<(String, Result<SentinelView, String>)> {
        views
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("s{i}:26379"), v))
            .collect()
    }

    #[test]
    fn sentinels_that_agree_name_the_master() {
        let all = answers(vec![
            view("10.0.0.1:6379", "master"),
            view("10.0.0.1:6379", "master"),
            view("10.0.0.1:6379", "master,s_down"),
        ]);
        assert_eq!(agreed_master("m", &all), Ok(agreed("10.0.0.1:6379")));
    }

    #[test]
    fn sentinels_that_do_not_answer_do_not_count() {
        let some = answers(vec![
            Err("connection refused".into()),
            view("10.0.0.1:6379", "master"),
            Err("no answer in time".into()),
        ]);
        assert_eq!(agreed_master("m", &some), Ok(agreed("10.0.0.1:6379")));
    }

    #[test]
    fn no_answer_at_all_is_an_error_naming_each_sentinel() {
        let none = answers(vec![
            Err("connection refused".into()),
            Err("unknown master name".into()),
        ]);
        let error = agreed_master("m", &none).expect_err("nobody answered");
        assert!(error.contains("s0:26379: connection refused"), "{error}");
        assert!(error.contains("s1:26379: unknown master name"), "{error}");
    }

    #[test]
    fn a_failover_of_the_named_master_refuses_it() {
        // The leader, before it saw the promoted replica answer as a master: everyone still
        // names the old one.
        let waiting_for_promotion = answers(vec![
            view("10.0.0.1:6379", "master"),
            view("10.0.0.1:6379", "master,s_down,o_down,failover_in_progress"),
            view("10.0.0.1:6379", "master"),
        ]);
        let error = agreed_master("m", &waiting_for_promotion).expect_err("a failover is running");
        assert!(error.contains("s1:26379"), "{error}");
        assert!(error.contains("failover_in_progress"), "{error}");
        // An objectively down master is being replaced even before a leader is elected.
        let down = answers(vec![view("10.0.0.1:6379", "master,s_down,o_down")]);
        assert!(agreed_master("m", &down).is_err());
    }

    #[test]
    fn the_newest_configuration_wins_once_the_failover_is_over() {
        // The leader finished the failover; the others have not had its hello yet.
        let catching_up = answers(vec![
            at_epoch("10.0.0.1:6379", "master", 3),
            at_epoch("10.0.0.2:6379", "master", 4),
            at_epoch("10.0.0.1:6379", "master", 3),
        ]);
        assert_eq!(
            agreed_master("m", &catching_up),
            Ok(agreed("10.0.0.2:6379"))
        );
        // Nor do their flags for the master they still believe in count.
        let dead_old_master = answers(vec![
            at_epoch(
                "10.0.0.1:6379",
                "master,s_down,o_down,failover_in_progress",
                3,
            ),
            at_epoch("10.0.0.2:6379", "master", 4),
        ]);
        assert_eq!(
            agreed_master("m", &dead_old_master),
            Ok(agreed("10.0.0.2:6379"))
        );
    }

    #[test]
    fn the_promoted_replica_is_used_while_the_leader_moves_the_others() {
        let promoted = answers(vec![
            at_epoch("10.0.0.1:6379", "master,s_down,o_down", 3),
            reconfiguring("10.0.0.2:6379", "10.0.0.1:6379", 4),
            at_epoch("10.0.0.1:6379", "master", 3),
        ]);
        assert_eq!(agreed_master("m", &promoted), Ok(agreed("10.0.0.2:6379")));
    }

    #[test]
    fn disagreement_at_the_same_epoch_names_no_master() {
        let split = answers(vec![
            at_epoch("10.0.0.1:6379", "master", 4),
            at_epoch("10.0.0.2:6379", "master", 4),
            at_epoch("10.0.0.3:6379", "master", 2),
        ]);
        let error = agreed_master("m", &split).expect_err("they disagree");
        assert!(error.contains("s0:26379 says 10.0.0.1:6379"), "{error}");
        assert!(error.contains("s1:26379 says 10.0.0.2:6379"), "{error}");
        assert!(
            !error.contains("s2:26379"),
            "a stale Sentinel is not quoted: {error}"
        );
    }

    #[test]
    fn replies_that_can_outlast_down_after_are_flagged() {
        // The defaults (1000 + 500 ms) against the shipped Sentinel profile (2000 ms).
        assert!(!replies_outlast_down_after(
            Duration::from_millis(1500),
            2000
        ));
        // The old default command timeout (2000 + 500 ms).
        assert!(replies_outlast_down_after(
            Duration::from_millis(2500),
            2000
        ));
        assert!(replies_outlast_down_after(
            Duration::from_millis(2000),
            2000
        ));
    }

    #[test]
    fn the_shortest_down_after_of_the_agreeing_sentinels_is_reported() {
        let mut quick = at_epoch("10.0.0.1:6379", "master", 1);
        if let Ok(view) = quick.as_mut() {
            view.down_after_ms = Some(1500);
        }
        let all = answers(vec![at_epoch("10.0.0.1:6379", "master", 1), quick]);
        let agreed = agreed_master("m", &all).expect("they agree");
        assert_eq!(agreed.down_after_ms, Some(1500));
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_sentinel_reply_is_read_field_by_field() {
        let view = SentinelView::from_replies(
            Some(&strings(&["10.0.0.2", "6379"])),
            &strings(&[
                "name",
                "m",
                "ip",
                "10.0.0.1",
                "port",
                "6379",
                "flags",
                "master,o_down",
                "config-epoch",
                "7",
                "down-after-milliseconds",
                "2000",
            ]),
        );
        assert_eq!(
            view,
            Ok(SentinelView {
                address: "10.0.0.2:6379".into(),
                monitored: "10.0.0.1:6379".into(),
                flags: strings(&["master", "o_down"]),
                config_epoch: 7,
                down_after_ms: Some(2000),
            })
        );
        let ipv6 = SentinelView::from_replies(Some(&strings(&["::1", "6379"])), &[]);
        assert_eq!(ipv6.map(|v| v.address), Ok("[::1]:6379".to_string()));
    }

    #[test]
    fn malformed_sentinel_replies_fall_back_to_the_safe_side() {
        // No address, or one of the wrong shape: the Sentinel does not count.
        assert!(SentinelView::from_replies(None, &[]).is_err());
        assert!(SentinelView::from_replies(Some(&strings(&["10.0.0.1"])), &[]).is_err());
        assert!(SentinelView::from_replies(Some(&strings(&["a", "1", "b"])), &[]).is_err());
        // A details list with an odd length, bad numbers and no ip/port.
        let view = SentinelView::from_replies(
            Some(&strings(&["10.0.0.1", "6379"])),
            &strings(&[
                "config-epoch",
                "-3",
                "down-after-milliseconds",
                "soon",
                "flags",
                "failover_in_progress",
                "port",
            ]),
        )
        .expect("the address is enough");
        assert_eq!(
            view.config_epoch, 0,
            "a bad epoch never outranks a real one"
        );
        assert_eq!(view.down_after_ms, None);
        assert_eq!(
            view.monitored, view.address,
            "so its failover flag still refuses it"
        );
        let refused = answers(vec![Ok(view)]);
        assert!(agreed_master("m", &refused).is_err());
        // A huge list is read without trouble; only the first occurrence of a field counts.
        let mut long = strings(&["flags", "master"]);
        long.extend((0..100_000).map(|i| format!("junk-{i}")));
        long.extend(strings(&["flags", "o_down"]));
        let view = SentinelView::from_replies(Some(&strings(&["h", "1"])), &long)
            .expect("the address is enough");
        assert_eq!(view.flags, strings(&["master"]));
    }
}
