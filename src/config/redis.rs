//! `[redis]`, `[[shards]]`, `[[slots]]` and `[cluster]`: how Colony reaches and talks to its
//! shards.

use std::time::Duration;

use serde::Deserialize;

use super::{parse_address, within, ConfigError, MAX_TIMEOUT_MS};

/// One shard: a Redis master and its replicas, given either as a fixed master address
/// (development) or as a Sentinel master name with the Sentinels to ask (production).
/// Exactly one of `master` and `sentinel` must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Unique shard name, 1..=64 bytes of `[A-Za-z0-9_.-]`; slot ranges refer to it.
    pub name: String,
    /// The master, as `host:port`, for a shard without Sentinel.
    #[serde(default)]
    pub master: Option<String>,
    /// Sentinel discovery of the master.
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// Replicas, as `host:port`, for operators' reference. Default none. Colony reads and
    /// writes the master only, so transactions stay linearizable.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Redis ACL user name. Default none.
    #[serde(default)]
    pub username: Option<String>,
    /// Redis password (`requirepass` or ACL). Default none.
    #[serde(default)]
    pub password: Option<String>,
}

impl ShardConfig {
    /// Checks values serde cannot: exactly one of master and sentinel, and addresses.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        match (&self.master, &self.sentinel) {
            (Some(master), None) => parse_address(master)
                .map(|_| ())
                .map_err(|e| ConfigError::Invalid(format!("shard {}: master {e}", self.name)))?,
            (None, Some(sentinel)) => {
                if sentinel.master_name.is_empty() {
                    return invalid(format!(
                        "shard {}: sentinel.master_name is empty",
                        self.name
                    ));
                }
                if sentinel.addresses.is_empty() {
                    return invalid(format!("shard {}: sentinel.addresses is empty", self.name));
                }
                for address in &sentinel.addresses {
                    parse_address(address).map_err(|e| {
                        ConfigError::Invalid(format!("shard {}: sentinel {e}", self.name))
                    })?;
                }
            }
            _ => {
                return invalid(format!(
                    "shard {}: set exactly one of master and sentinel",
                    self.name
                ))
            }
        }
        for replica in &self.replicas {
            parse_address(replica)
                .map_err(|e| ConfigError::Invalid(format!("shard {}: replica {e}", self.name)))?;
        }
        Ok(())
    }
}

/// A Redis Cluster to serve instead of `[[shards]]` (`[cluster]`): a few nodes to ask first;
/// the slot map, the masters and their replicas come from the cluster itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Nodes to ask for the cluster's map at start, `host:port`; any node will do, and the
    /// others are learnt from it. At least one.
    pub seeds: Vec<String>,
    /// Redis ACL user name on every node. Default none.
    #[serde(default)]
    pub username: Option<String>,
    /// Redis password on every node. Default none.
    #[serde(default)]
    pub password: Option<String>,
    /// How often the map is read again when no node has redirected a command meanwhile, in
    /// milliseconds: the longest a map can be stale without a `MOVED` saying so. Default
    /// 5000.
    #[serde(default = "default_cluster_refresh_ms")]
    pub refresh_interval_ms: u64,
}

fn default_cluster_refresh_ms() -> u64 {
    5000
}

/// Most seeds a cluster configuration may list.
const MAX_CLUSTER_SEEDS: usize = 64;

impl ClusterConfig {
    /// Checks values serde cannot: seeds given and well formed, the refresh interval sane.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.seeds.is_empty() {
            return Err(ConfigError::Invalid(
                "cluster.seeds is empty: name at least one node of the cluster".into(),
            ));
        }
        if self.seeds.len() > MAX_CLUSTER_SEEDS {
            return Err(ConfigError::Invalid(format!(
                "cluster.seeds lists {} nodes; at most {MAX_CLUSTER_SEEDS}",
                self.seeds.len()
            )));
        }
        for seed in &self.seeds {
            parse_address(seed).map_err(|e| ConfigError::Invalid(format!("cluster.seeds: {e}")))?;
        }
        within(
            "cluster.refresh_interval_ms",
            self.refresh_interval_ms,
            100,
            MAX_TIMEOUT_MS,
        )
    }

    /// `refresh_interval_ms` as a duration.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.refresh_interval_ms)
    }
}

/// Where a shard's Sentinels are and what they call its master (`[shards.sentinel]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the Sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// Sentinel addresses, `host:port`; at least one, three or more in production.
    pub addresses: Vec<String>,
    /// Password of the Sentinels (`requirepass` in sentinel.conf). Default none.
    #[serde(default)]
    pub password: Option<String>,
}

/// Slots `range` (inclusive, `"start-end"` or a single `"n"`) belong to `shard`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRangeConfig {
    /// Inclusive range, e.g. `"0-8191"`.
    pub range: String,
    /// Name of the owning shard.
    pub shard: String,
}

/// How Colony talks to Redis.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Time allowed to open a connection, in milliseconds. Default 1000.
    pub connect_timeout_ms: u64,
    /// Time allowed for one command or pipeline, in milliseconds. Default 1000. A request
    /// that times out after it was sent has an UNKNOWN outcome. Keep it plus
    /// `replication_timeout_ms` below the Sentinels' `down-after-milliseconds` (2000 in
    /// `deploy/redis/sentinel.conf`): a reply slower than that may come from a master that
    /// was frozen long enough to be replaced, and is taken as UNKNOWN instead of OK. (The
    /// store logs a warning when the Sentinels report a `down-after` the two do not fit under.)
    pub command_timeout_ms: u64,
    /// Connections per shard. Each is multiplexed: every request in flight shares it, so a
    /// few are enough; more spread a shard's load over more server-side reads. Default 2.
    pub connections_per_shard: usize,
    /// How long a client's idempotency window on a player is kept after the client's last
    /// write to it, in seconds. Until then a retry too old for the window is refused with
    /// REQUEST_TOO_OLD; after it the client is unknown to the player and its requests are
    /// new, so a client must not retry later than this. Default 86400 (one day).
    pub idempotency_ttl_secs: u64,
    /// How long an applied request is remembered for retries (answered with its first
    /// result), in seconds; older ones are forgotten and their retries refused with
    /// REQUEST_TOO_OLD. Default 300 (five minutes).
    pub idempotency_window_secs: u64,
    /// Applied requests remembered per client and player, at least; once a quarter more
    /// have gathered the oldest are forgotten together. This bounds a player's idempotency
    /// memory to clients × 1.25 × this many records. Default 32.
    pub idempotency_window_requests: usize,
    /// Most clients one player keeps idempotency windows for. A client new to a player that
    /// has this many (not counting those silent for `idempotency_ttl_secs`) is refused with
    /// TOO_LARGE, so no caller can grow a player's Redis memory by minting client ids.
    /// Default 64.
    pub idempotency_max_clients: usize,
    /// When a write counts as done: `local` (the master applied it) or `replicated` (and
    /// `WAIT` saw `replicas_to_wait` replicas acknowledge it within
    /// `replication_timeout_ms`; otherwise the write is reported UNKNOWN). Default `local`.
    pub acknowledge: Acknowledge,
    /// The fewest replicas `WAIT` asks for in `replicated` mode. A write waits for every
    /// replica that could be promoted, and at least this many: on a Redis Cluster those the
    /// map lists online or the master has attached, on Sentinel shards those the Sentinels
    /// list that are not flagged down, have a priority other than 0 and are linked to the
    /// master (read with the master and every second), and every other replica the master
    /// has attached (any of them could answer `WAIT` in place of one of those; a dead one
    /// until the master drops it, `repl-timeout`). Default 1.
    pub replicas_to_wait: u32,
    /// How long `WAIT` may block, in milliseconds. Default 500.
    pub replication_timeout_ms: u64,
    /// Time within which the store retries a transaction that failed retryably (shard
    /// unreachable, outcome unknown), with capped exponential backoff and jitter, in
    /// milliseconds. 0 disables retries. Default 3000.
    pub retry_deadline_ms: u64,
    /// Most restore requests each of the 16 restore queues holds. A request already waiting
    /// is not queued again; past the cap new requests are not queued (their transactions
    /// keep retrying, and end UNAVAILABLE at the retry deadline if the archiver does not
    /// catch up).
    /// Default 10000.
    pub max_restore_requests: usize,
    /// Consecutive failures of a shard that open its circuit breaker; while open, its players
    /// fail at once with UNAVAILABLE. Default 5.
    pub breaker_failures: u32,
    /// How long a breaker stays open before one probe request is let through, in
    /// milliseconds. Default 1000.
    pub breaker_cooldown_ms: u64,
    /// Time allowed for one Sentinel to answer, in milliseconds. Default 500.
    pub sentinel_timeout_ms: u64,
    /// How long the intent of a multi-player transaction holds a player before whoever meets
    /// it may abort the transaction, in milliseconds (judged by the player's shard's clock).
    /// Meanwhile writes to the player answer LOCKED. Default 5000; keep it well above the
    /// time a multi-player transaction takes, retries included.
    pub intent_lease_ms: u64,
}

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acknowledge {
    /// The master applied it. A master that dies before its replicas copied the write loses
    /// it, acknowledged or not.
    Local,
    /// The master applied it and `WAIT` saw the configured number of replicas acknowledge it.
    Replicated,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            connect_timeout_ms: 1000,
            command_timeout_ms: 1000,
            connections_per_shard: 2,
            idempotency_ttl_secs: 86_400,
            idempotency_window_secs: 300,
            idempotency_window_requests: 32,
            idempotency_max_clients: 64,
            acknowledge: Acknowledge::Local,
            replicas_to_wait: 1,
            replication_timeout_ms: 500,
            retry_deadline_ms: 3000,
            max_restore_requests: 10_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 1000,
            sentinel_timeout_ms: 500,
            intent_lease_ms: 5000,
        }
    }
}

impl RedisSettings {
    /// Checks values serde cannot: every setting within its range.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let r = self;
        within(
            "redis.connections_per_shard",
            r.connections_per_shard,
            1,
            1024,
        )?;
        within("redis.connect_timeout_ms", r.connect_timeout_ms, 1, 60_000)?;
        within("redis.command_timeout_ms", r.command_timeout_ms, 1, 60_000)?;
        within(
            "redis.idempotency_ttl_secs",
            r.idempotency_ttl_secs,
            1,
            30 * 86_400,
        )?;
        within(
            "redis.idempotency_window_secs",
            r.idempotency_window_secs,
            1,
            r.idempotency_ttl_secs,
        )?;
        within(
            "redis.max_restore_requests",
            r.max_restore_requests,
            1,
            10_000_000,
        )?;
        within(
            "redis.idempotency_max_clients",
            r.idempotency_max_clients,
            1,
            100_000,
        )?;
        within(
            "redis.idempotency_window_requests",
            r.idempotency_window_requests,
            1,
            10_000,
        )?;
        let fewest_replicas = u32::from(r.acknowledge == Acknowledge::Replicated);
        within(
            "redis.replicas_to_wait",
            r.replicas_to_wait,
            fewest_replicas,
            64,
        )?;
        within(
            "redis.replication_timeout_ms",
            r.replication_timeout_ms,
            1,
            60_000,
        )?;
        within(
            "redis.sentinel_timeout_ms",
            r.sentinel_timeout_ms,
            1,
            60_000,
        )?;
        within(
            "redis.retry_deadline_ms",
            r.retry_deadline_ms,
            0,
            MAX_TIMEOUT_MS,
        )?;
        within("redis.breaker_failures", r.breaker_failures, 1, 1_000_000)?;
        within(
            "redis.intent_lease_ms",
            r.intent_lease_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within(
            "redis.breaker_cooldown_ms",
            r.breaker_cooldown_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        Ok(())
    }

    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `command_timeout_ms` as a duration.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    /// `replication_timeout_ms` as a duration.
    pub fn replication_timeout(&self) -> Duration {
        Duration::from_millis(self.replication_timeout_ms)
    }

    /// `retry_deadline_ms` as a duration.
    pub fn retry_deadline(&self) -> Duration {
        Duration::from_millis(self.retry_deadline_ms)
    }

    /// `breaker_cooldown_ms` as a duration.
    pub fn breaker_cooldown(&self) -> Duration {
        Duration::from_millis(self.breaker_cooldown_ms)
    }

    /// `sentinel_timeout_ms` as a duration.
    pub fn sentinel_timeout(&self) -> Duration {
        Duration::from_millis(self.sentinel_timeout_ms)
    }
}
