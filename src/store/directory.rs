//! A Redis Cluster's map as the store follows it: asked of the cluster's own nodes with
//! `CLUSTER NODES`, read by [`crate::cluster_view`], and read again — one read at a time,
//! shared by everyone who asks meanwhile — when a node redirects a command (`MOVED`), when a
//! shard's connections are opened again (its master may have failed over), and every
//! `cluster.refresh_interval_ms` otherwise.
//!
//! Only the map lives here; the connections per shard are `links`, and `topology` pairs the
//! two.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use tokio::time::Instant;

use crate::cluster_view::{parse_nodes, ClusterNode, ClusterView};
use crate::config::{ClusterConfig, RedisSettings};
use crate::shard_map::ShardIndex;

use super::connect::{tcp_info, ConnectError};

/// A read of the map asked for within this long of the last one is served by that one: a
/// burst of redirects or reconnects makes one read, not one each.
pub(super) const REFRESH_MIN_GAP: Duration = Duration::from_millis(100);

/// How many nodes are asked at once for the map.
const ASKED_AT_ONCE: usize = 3;

/// How long the other nodes of a round are given once one has answered: a node that is down
/// but not yet flagged must not hold every read of the map for its whole timeout.
const ANSWER_GRACE: Duration = Duration::from_millis(50);

/// The cluster's map, and how to read it again.
pub(super) struct ClusterDirectory {
    seeds: Vec<String>,
    redis_info: RedisConnectionInfo,
    connection_config: AsyncConnectionConfig,
    ask_timeout: Duration,
    /// How often the map is read when nothing asked for it sooner.
    pub(super) refresh_interval: Duration,
    view: RwLock<Arc<ClusterView>>,
    /// When the last read began. Held while a read runs, so concurrent callers wait for it
    /// and are served by it.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
}

impl ClusterDirectory {
    /// Reads the first map from the seeds of `config`.
    pub(super) async fn discover(
        config: &ClusterConfig,
        settings: &RedisSettings,
    ) -> Result<ClusterDirectory, ConnectError> {
        let redis_info = credentials_of(config);
        let ask_timeout = settings.connect_timeout() + settings.command_timeout();
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout()))
            .set_response_timeout(Some(settings.command_timeout()));
        let started = Instant::now();
        let view = fetch(
            &config.seeds,
            &redis_info,
            &connection_config,
            ask_timeout,
            None,
        )
        .await?;
        tracing::info!(
            source = %view.source(),
            shards = view.groups().len(),
            epoch = view.epoch(),
            "read the cluster's map"
        );
        Ok(ClusterDirectory {
            seeds: config.seeds.clone(),
            redis_info,
            connection_config,
            ask_timeout,
            refresh_interval: config.refresh_interval(),
            view: RwLock::new(Arc::new(view)),
            refreshing: tokio::sync::Mutex::new(Some(started)),
            refreshes: AtomicU64::new(1),
            refresh_failures: AtomicU64::new(0),
        })
    }

    /// The map as last read.
    pub(super) fn view(&self) -> Arc<ClusterView> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads of the map so far, and how many failed.
    pub(super) fn refresh_counts(&self) -> (u64, u64) {
        (
            self.refreshes.load(Ordering::Relaxed),
            self.refresh_failures.load(Ordering::Relaxed),
        )
    }

    /// Reads the map again, unless a read began at or after `since` (then that read serves:
    /// a caller that arrives while one runs waits for it). Asks the masters of the current
    /// map first, then the other nodes and the seeds, a few at once.
    pub(super) async fn refresh_since(&self, since: Instant) -> Result<(), ConnectError> {
        let mut last = self.refreshing.lock().await;
        if last.is_some_and(|began| began >= since) {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let current = self.view();
        let mut addresses = current.addresses();
        for seed in &self.seeds {
            if !addresses.contains(seed) {
                addresses.push(seed.clone());
            }
        }
        match fetch(
            &addresses,
            &self.redis_info,
            &self.connection_config,
            self.ask_timeout,
            Some(&current),
        )
        .await
        {
            Ok(view) if !view.serves_slots() => {
                // A node whose cluster was reset: it would send every shard nowhere.
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %view.source(), "ignored a cluster map serving no slot");
                Err(ConnectError::BadClusterMap {
                    address: view.source().to_string(),
                    reason: "no master serves a slot".into(),
                })
            }
            Ok(view) => {
                if view.map() != current.map() {
                    tracing::info!(
                        source = %view.source(),
                        epoch = view.epoch(),
                        was = current.epoch(),
                        "the cluster's map changed"
                    );
                }
                *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
                Ok(())
            }
            Err(e) => {
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot read the cluster's map");
                Err(e)
            }
        }
    }

    /// Reads the map again unless it was read within [`REFRESH_MIN_GAP`].
    pub(super) async fn refresh_if_old(&self) -> Result<(), ConnectError> {
        let now = Instant::now();
        self.refresh_since(now.checked_sub(REFRESH_MIN_GAP).unwrap_or(now))
            .await
    }

    /// Where shard `group`'s master is, after reading the map again (unless it was read just
    /// now): asked when the shard's connections are opened, which happens after a failure
    /// that may mean the master changed.
    pub(super) async fn master_of(
        &self,
        group: ShardIndex,
        name: &str,
    ) -> Result<String, ConnectError> {
        if let Err(e) = self.refresh_if_old().await {
            // The map as last read may still be right; connecting will tell.
            tracing::debug!(error = %e, "using the cluster's map as last read");
        }
        let view = self.view();
        match view.group(group).and_then(|g| g.master.as_ref()) {
            Some(master) if !master.failing => Ok(master.address.clone()),
            _ => Err(ConnectError::NoClusterMaster {
                shard: name.to_string(),
            }),
        }
    }
}

/// What Colony needs of a cluster, checked once at start ([`ClusterDirectory::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Checked {
    /// Problems that do not stop Colony, one line each (logged).
    pub(super) warnings: Vec<String>,
}

/// Fewest masters a cluster may have: a failover needs a majority of masters to vote.
pub(super) const MIN_MASTERS: usize = 3;

impl ClusterDirectory {
    /// Checks, on every master of the map, what Colony relies on, and fails with one line
    /// naming the first thing missing:
    /// - at least [`MIN_MASTERS`] masters (fewer cannot elect a replacement);
    /// - `cluster-require-full-coverage no` (with `yes`, one master's failure stops every
    ///   master); a `CONFIG GET` refused (a managed service) is a warning saying what to set;
    /// - in the replicated profile, at least `replicas_to_wait` replicas per master;
    /// - the commands the store sends: `EVALSHA`, `WAIT`, `CLUSTER NODES` (a refusal such as
    ///   `NOPERM` or an unknown command is an error naming the command).
    pub(super) async fn check(
        &self,
        replicated: bool,
        replicas_to_wait: u32,
    ) -> Result<Checked, String> {
        let view = self.view();
        let masters: Vec<(&str, &crate::cluster_view::Group)> = view
            .groups()
            .iter()
            .filter_map(|g| g.master.as_ref().map(|m| (m.address.as_str(), g)))
            .collect();
        if masters.len() < MIN_MASTERS {
            return Err(format!(
                "the cluster has {} master(s); at least {MIN_MASTERS} are needed, or no replica \
                 can be elected when one fails",
                masters.len()
            ));
        }
        let mut warnings = Vec::new();
        for (address, group) in masters {
            if replicated && group.replicas_online() < replicas_to_wait as usize {
                return Err(format!(
                    "master {address} ({}) has {} replica(s) online; redis.acknowledge = \
                     \"replicated\" waits for {replicas_to_wait}",
                    group.name,
                    group.replicas_online()
                ));
            }
            let failed = |e: redis::RedisError| format!("master {address}: {e}");
            let client = redis::Client::open(
                tcp_info(address, self.redis_info.clone()).map_err(|e| e.to_string())?,
            )
            .map_err(failed)?;
            let mut conn = tokio::time::timeout(
                self.ask_timeout,
                client.get_multiplexed_async_connection_with_config(&self.connection_config),
            )
            .await
            .map_err(|_| format!("master {address}: no answer in time"))?
            .map_err(failed)?;
            // Each command Colony needs, asked so that it runs and changes nothing: a script
            // that is not loaded answers NOSCRIPT, which means EVALSHA itself is allowed.
            let needed = [
                (
                    "EVALSHA",
                    redis::cmd("EVALSHA").arg("0".repeat(40)).arg(0).clone(),
                ),
                ("WAIT", redis::cmd("WAIT").arg(0).arg(1).clone()),
                ("CLUSTER NODES", redis::cmd("CLUSTER").arg("NODES").clone()),
            ];
            for (name, cmd) in needed {
                match cmd.query_async::<redis::Value>(&mut conn).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some("NOSCRIPT") => {}
                    Err(e) => {
                        return Err(format!(
                            "master {address} refuses {name}, which Colony needs: {e}"
                        ))
                    }
                }
            }
            let coverage: Result<Vec<String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("cluster-require-full-coverage")
                .query_async(&mut conn)
                .await;
            match coverage.as_deref() {
                Ok([_, value]) if value == "no" => {}
                Ok([_, value]) => {
                    return Err(format!(
                        "master {address} has cluster-require-full-coverage {value}: one \
                         master's failure would stop every master; set it to no on every node"
                    ))
                }
                Ok(_) | Err(_) => warnings.push(format!(
                    "master {address}: CONFIG GET cluster-require-full-coverage refused (a \
                     managed service?); make sure it is no, or one master's failure stops \
                     every master"
                )),
            }
        }
        warnings.dedup();
        Ok(Checked { warnings })
    }
}

/// Asks `addresses`, [`ASKED_AT_ONCE`] at a time, until some answer; of one round's answers
/// the one listing the highest configuration epoch wins (the newest news of the cluster).
async fn fetch(
    addresses: &[String],
    redis_info: &RedisConnectionInfo,
    connection_config: &AsyncConnectionConfig,
    timeout: Duration,
    previous: Option<&ClusterView>,
) -> Result<ClusterView, ConnectError> {
    let mut failures = Vec::new();
    let known = previous.map_or(0, ClusterView::epoch);
    let epoch = |nodes: &[ClusterNode]| nodes.iter().map(|n| n.config_epoch).max().unwrap_or(0);
    // The best answer older than the known map, kept in case no node gives a newer one.
    let mut older: Option<(&String, Vec<ClusterNode>)> = None;
    for round in addresses.chunks(ASKED_AT_ONCE) {
        let mut asked: FuturesUnordered<_> = round
            .iter()
            .map(|address| async move {
                let answer = tokio::time::timeout(
                    timeout,
                    ask(address, redis_info.clone(), connection_config),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectError::Timeout {
                        step: "CLUSTER NODES on",
                        address: address.clone(),
                    })
                });
                (address, answer)
            })
            .collect();
        let mut best: Option<(&String, Vec<ClusterNode>)> = None;
        let mut grace: Option<Instant> = None;
        loop {
            let next = match grace {
                None => asked.next().await,
                Some(until) => match tokio::time::timeout_at(until, asked.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((address, answer)) = next else {
                break;
            };
            match answer {
                Ok(nodes) => {
                    if best.as_ref().is_none_or(|(_, b)| epoch(&nodes) > epoch(b)) {
                        best = Some((address, nodes));
                    }
                    grace.get_or_insert_with(|| Instant::now() + ANSWER_GRACE);
                }
                Err(e) => failures.push((address.clone(), e)),
            }
        }
        if let Some((address, nodes)) = best {
            if epoch(&nodes) < known {
                // A node with an old configuration (cut off in a minority, restarted from
                // an old nodes.conf): ask the next ones before believing it.
                if older.as_ref().is_none_or(|(_, o)| epoch(&nodes) > epoch(o)) {
                    older = Some((address, nodes));
                }
                continue;
            }
            let view = match previous {
                Some(previous) => previous.next(address, &nodes),
                None => ClusterView::first(address, &nodes),
            };
            return view.map_err(|reason| ConnectError::BadClusterMap {
                address: address.clone(),
                reason,
            });
        }
    }
    // Every node asked answered, each with an older configuration than the known one: the
    // cluster really went back (a node forgotten, the cluster re-created). Believing it is
    // the only way on; refusing it forever would wedge the store on a map nobody holds. If
    // some node did not answer, the older answers may be a minority cut off from it: keep
    // the known map.
    if let (Some((address, nodes)), Some(previous), true) = (older, previous, failures.is_empty()) {
        tracing::warn!(
            source = %address,
            epoch = epoch(&nodes),
            known,
            "every node lists an older configuration than the known map; taking it"
        );
        return previous
            .next(address, &nodes)
            .map_err(|reason| ConnectError::BadClusterMap {
                address: address.clone(),
                reason,
            });
    }
    Err(ConnectError::NoClusterMap { answers: failures })
}

/// A connection of its own to the node at `address`, with `cluster`'s credentials, each
/// command answered within `timeout`: for tools that operate a cluster from outside
/// (`colony-admin`), never for the store's own calls (they take the road).
pub async fn node_connection(
    address: &str,
    cluster: &ClusterConfig,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, ConnectError> {
    let failed = |e| ConnectError::redis("connect to", address, e);
    let client =
        redis::Client::open(tcp_info(address, credentials_of(cluster))?).map_err(failed)?;
    let connection_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&connection_config)
        .await
        .map_err(failed)
}

/// One node's `CLUSTER NODES` (at `address`, with `cluster`'s credentials), parsed, within
/// `timeout`: for tools that watch a cluster from outside (the load test's chaos mode,
/// `colony-admin`).
pub async fn cluster_nodes(
    address: &str,
    cluster: &ClusterConfig,
    timeout: Duration,
) -> Result<Vec<ClusterNode>, ConnectError> {
    let redis_info = credentials_of(cluster);
    let connection_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    tokio::time::timeout(timeout, ask(address, redis_info, &connection_config))
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                step: "CLUSTER NODES on",
                address: address.to_string(),
            })
        })
}

/// The user and password `cluster` names, for every connection to its nodes.
fn credentials_of(cluster: &ClusterConfig) -> RedisConnectionInfo {
    let mut redis_info = RedisConnectionInfo::default();
    if let Some(user) = &cluster.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(password) = &cluster.password {
        redis_info = redis_info.set_password(password);
    }
    redis_info
}

/// One node's `CLUSTER NODES`, parsed.
async fn ask(
    address: &str,
    redis_info: RedisConnectionInfo,
    connection_config: &AsyncConnectionConfig,
) -> Result<Vec<ClusterNode>, ConnectError> {
    let failed = |e| ConnectError::redis("CLUSTER NODES on", address, e);
    let client = redis::Client::open(tcp_info(address, redis_info)?).map_err(failed)?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(connection_config)
        .await
        .map_err(failed)?;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .map_err(failed)?;
    parse_nodes(&text).map_err(|e| ConnectError::BadClusterMap {
        address: address.to_string(),
        reason: e.to_string(),
    })
}
