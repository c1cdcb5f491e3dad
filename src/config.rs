//! Colony's configuration: a typed struct loaded once, from a TOML file plus environment
//! overrides, and validated before anything connects or binds.
//!
//! Environment overrides name a path into the TOML document with double underscores after the
//! `COLONY__` prefix: `COLONY__REDIS__CONNECTIONS_PER_SHARD=4` sets `redis.connections_per_shard`, and
//! `COLONY__SHARDS__0__MASTER=10.0.0.5:6379` sets the master of the first shard. The value is
//! read as a TOML value when it parses as one (`32`, `true`, `["a"]`) and as a string
//! otherwise. Callers pass the variables in, so tests never touch the process environment.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::model::Limits;

/// Largest frame the gateway accepts by default: 4 MiB (`gateway.max_frame_bytes`).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
use crate::shard_map::{Endpoint, Shard, ShardMap};

/// Prefix of environment variables that override configuration values.
pub const ENV_PREFIX: &str = "COLONY__";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped fields.
    #[error("config is not valid: {0}")]
    Parse(String),
    /// An environment override names a path that does not fit the document.
    #[error("environment override {var}: {reason}")]
    Override {
        /// The variable.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The values parse but do not make sense together.
    #[error("config is not valid: {0}")]
    Invalid(String),
}

/// The whole configuration. Every field has a default except `shards`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The shards, each a Redis master with its replicas. At least one.
    pub shards: Vec<ShardConfig>,
    /// Slot ranges and the shard that owns each. When empty (the default), the 16384 slots
    /// are split evenly across `shards` in the order listed.
    #[serde(default)]
    pub slots: Vec<SlotRangeConfig>,
    /// Epoch of the slot map: raise it whenever `slots` change, so components can tell two
    /// maps apart. Default 1.
    #[serde(default = "default_epoch")]
    pub epoch: u64,
    /// Connection and storage settings.
    #[serde(default)]
    pub redis: RedisSettings,
    /// Size and count limits on requests.
    #[serde(default)]
    pub limits: Limits,
    /// The gateway: listeners, timeouts, caps and tokens.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The archiver: MongoDB and when players move there.
    #[serde(default)]
    pub archive: ArchiveConfig,
}

/// The archiver's settings (`[archive]`). Only the archiver reads them; the gateway shares the
/// file so that both use the same slot map.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// MongoDB URIs (`mongodb://...`, a replica set or a mongos): one per shard, in shard
    /// order, so that the slot map decides a player's archive shard too; or a single one for
    /// every shard. Default none (the archiver refuses to start).
    pub mongodb_uris: Vec<String>,
    /// Database name. Default `colony`.
    pub database: String,
    /// Collection of archived players. Default `players`.
    pub collection: String,
    /// Players inactive this long move to MongoDB, in seconds. Default 5184000 (60 days).
    pub inactive_after_secs: u64,
    /// Players moved per batch. Default 500.
    pub batch_size: usize,
    /// Most players moved per second, 0 for no limit. Default 0.
    pub max_players_per_sec: u64,
    /// Time between archive passes, in seconds. Default 60.
    pub scan_interval_secs: u64,
    /// Time between checkpoints (changed live players copied to MongoDB without leaving
    /// Redis), in seconds; a lost shard can be rebuilt up to this long ago. 0 turns
    /// checkpoints off, and then the store (gateways included) keeps no set of changed
    /// players either, so gateways and archiver must agree on it. Default 300.
    pub checkpoint_interval_secs: u64,
    /// Address of the archiver's admin HTTP listener (`/metrics`, `/healthz`,
    /// `/admin/status`). Default `127.0.0.1:7402`.
    pub admin_listen: String,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            mongodb_uris: Vec::new(),
            database: "colony".into(),
            collection: "players".into(),
            inactive_after_secs: 60 * 24 * 3600,
            batch_size: 500,
            max_players_per_sec: 0,
            scan_interval_secs: 60,
            checkpoint_interval_secs: 300,
            admin_listen: "127.0.0.1:7402".into(),
        }
    }
}

/// A role a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A game server: each transaction acts for one player; it writes only that player and
    /// reads other players' public entries only.
    Game,
    /// Everything.
    Admin,
}

/// One accepted authentication token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name for logs and metrics (never the token itself).
    pub name: String,
    /// The secret a client presents in its Hello, at least 16 bytes.
    pub token: String,
    /// What the token may do.
    pub role: Role,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The gateway's settings (`[gateway]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address of the protobuf TCP listener. Default `127.0.0.1:7400`.
    pub listen: String,
    /// Address of the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`,
    /// `/admin/status`). Keep it on a private network. Default `127.0.0.1:7401`.
    pub admin_listen: String,
    /// Largest frame body accepted or sent, in bytes. Default 4194304 (4 MiB).
    pub max_frame_bytes: usize,
    /// Most requests in flight on one connection; the gateway stops reading from a connection
    /// at this many (backpressure). Default 256.
    pub max_in_flight_per_connection: usize,
    /// Most open client connections; further ones are closed at once. Default 10000.
    pub max_connections: usize,
    /// Time a new connection has to send its Hello, in milliseconds. Default 5000.
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing for this long, with nothing in flight, is closed, in
    /// milliseconds. Default 300000 (five minutes).
    pub idle_timeout_ms: u64,
    /// On shutdown, time allowed for requests in flight to finish, in milliseconds.
    /// Default 10000.
    pub shutdown_grace_ms: u64,
    /// Most connections that have not yet completed their Hello (or TLS handshake); further
    /// ones are closed at once. Before Hello a connection may send one frame of at most
    /// [`PRE_AUTH_MAX_FRAME_BYTES`]. Default 1000, at most `max_connections`.
    pub max_unauthenticated_connections: usize,
    /// Bytes one connection may hold in requests in flight: a frame holds its body as it
    /// arrives, then what its decoded structures take and the most its answer can take, until
    /// its answer was written (what the answer did not use is given back once it is built).
    /// At this many the gateway stops reading from the connection (backpressure), which also
    /// bounds the Redis work one connection can have queued. A request that could never fit
    /// is refused with TOO_LARGE. Default 33554432 (32 MiB), at least twice
    /// `max_frame_bytes`.
    pub max_bytes_in_flight_per_connection: usize,
    /// The same over all connections together: the bound on the gateway's request and answer
    /// memory. A connection that cannot get its share waits before reading more; a request
    /// that cannot get its share within `io_timeout_ms` is answered UNAVAILABLE. Default
    /// 536870912 (512 MiB), at least `max_bytes_in_flight_per_connection`.
    pub max_bytes_in_flight: usize,
    /// Once a frame has begun, the rest of it must arrive within this long; an answer must be
    /// taken off the socket within this long. Otherwise the connection is closed, so a client
    /// that trickles bytes or stops reading cannot hold the gateway's memory. In
    /// milliseconds. Default 30000.
    pub io_timeout_ms: u64,
    /// Most open connections to the admin HTTP listener; further ones are closed at once.
    /// Default 64.
    pub admin_max_connections: usize,
    /// Time an admin HTTP client has to send its request headers, and time allowed for the
    /// answer, in milliseconds. Each admin connection serves one request. Default 5000.
    pub admin_request_timeout_ms: u64,
    /// Accepted tokens. Default none: every Hello is refused until one is configured.
    pub tokens: Vec<TokenConfig>,
    /// TLS on the protobuf listener. Default none: plain TCP.
    pub tls: Option<TlsConfig>,
}

/// Certificate and key files for TLS on the gateway's protobuf listener (`[gateway.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub certificate: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:7400".into(),
            admin_listen: "127.0.0.1:7401".into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_in_flight_per_connection: 256,
            max_connections: 10_000,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 300_000,
            shutdown_grace_ms: 10_000,
            max_unauthenticated_connections: 1_000,
            max_bytes_in_flight_per_connection: 32 * 1024 * 1024,
            max_bytes_in_flight: 512 * 1024 * 1024,
            io_timeout_ms: 30_000,
            admin_max_connections: 64,
            admin_request_timeout_ms: 5_000,
            tokens: Vec::new(),
            tls: None,
        }
    }
}

impl GatewayConfig {
    /// Checks values serde cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (what, address) in [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
        ] {
            if address.parse::<std::net::SocketAddr>().is_err() {
                return invalid(format!("gateway.{what} {address:?} is not ip:port"));
            }
        }
        within(
            "gateway.max_frame_bytes",
            self.max_frame_bytes,
            1024,
            MAX_FRAME_BYTES_LIMIT,
        )?;
        within(
            "gateway.max_in_flight_per_connection",
            self.max_in_flight_per_connection,
            1,
            65_536,
        )?;
        within(
            "gateway.max_connections",
            self.max_connections,
            1,
            1_000_000,
        )?;
        within(
            "gateway.max_unauthenticated_connections",
            self.max_unauthenticated_connections,
            1,
            self.max_connections,
        )?;
        within(
            "gateway.max_bytes_in_flight_per_connection",
            self.max_bytes_in_flight_per_connection,
            self.max_frame_bytes.saturating_mul(2),
            1 << 30,
        )?;
        within(
            "gateway.max_bytes_in_flight",
            self.max_bytes_in_flight,
            self.max_bytes_in_flight_per_connection,
            1 << 40,
        )?;
        within(
            "gateway.handshake_timeout_ms",
            self.handshake_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within(
            "gateway.idle_timeout_ms",
            self.idle_timeout_ms,
            1,
            86_400_000,
        )?;
        within(
            "gateway.io_timeout_ms",
            self.io_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within(
            "gateway.shutdown_grace_ms",
            self.shutdown_grace_ms,
            0,
            MAX_TIMEOUT_MS,
        )?;
        within(
            "gateway.admin_max_connections",
            self.admin_max_connections,
            1,
            10_000,
        )?;
        within(
            "gateway.admin_request_timeout_ms",
            self.admin_request_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        let mut names = std::collections::HashSet::new();
        let mut secrets = std::collections::HashMap::new();
        for token in &self.tokens {
            crate::model::Name::new(token.name.clone())
                .map_err(|e| ConfigError::Invalid(format!("gateway token name: {e}")))?;
            if !names.insert(token.name.as_str()) {
                return invalid(format!("gateway token {:?} is listed twice", token.name));
            }
            if token.token.len() < 16 || token.token.len() > 1024 {
                return invalid(format!(
                    "gateway token {:?} must be 16..=1024 bytes long",
                    token.name
                ));
            }
            // One secret under two names (and perhaps two roles) would leave the role of a
            // connection to the order of the list.
            if let Some(first) = secrets.insert(token.token.as_str(), token.name.as_str()) {
                return invalid(format!(
                    "gateway tokens {first:?} and {:?} have the same secret",
                    token.name
                ));
            }
        }
        Ok(())
    }

    /// `handshake_timeout_ms` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// `shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// `io_timeout_ms` as a duration.
    pub fn io_timeout(&self) -> Duration {
        Duration::from_millis(self.io_timeout_ms)
    }

    /// `admin_request_timeout_ms` as a duration.
    pub fn admin_request_timeout(&self) -> Duration {
        Duration::from_millis(self.admin_request_timeout_ms)
    }
}

/// Largest frame a connection may send before its Hello was accepted, in bytes: a Hello
/// needs far less, and a connection that has not authenticated gets no more memory than this.
pub const PRE_AUTH_MAX_FRAME_BYTES: usize = 4096;

/// Upper bound of every timeout in milliseconds that has no tighter one (ten minutes):
/// longer values are typos, and would overflow nothing but hold resources for hours.
const MAX_TIMEOUT_MS: u64 = 600_000;

/// Upper bound of `gateway.max_frame_bytes` (256 MiB).
const MAX_FRAME_BYTES_LIMIT: usize = 256 * 1024 * 1024;

/// Fails unless `low <= value <= high`, naming the field and its range.
fn within<T>(field: &str, value: T, low: T, high: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < low || value > high {
        return Err(ConfigError::Invalid(format!(
            "{field} = {value} is outside {low}..={high}"
        )));
    }
    Ok(())
}

fn default_epoch() -> u64 {
    1
}

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
    /// Replicas `WAIT` asks for in `replicated` mode. Default 1.
    pub replicas_to_wait: u32,
    /// How long `WAIT` may block, in milliseconds. Default 500.
    pub replication_timeout_ms: u64,
    /// Time within which the store retries a transaction that failed retryably (shard
    /// unreachable, outcome unknown), with capped exponential backoff and jitter, in
    /// milliseconds. 0 disables retries. Default 3000.
    pub retry_deadline_ms: u64,
    /// Most restore requests a shard's queue holds. A request already waiting is not queued
    /// again; past the cap new requests are not queued (their transactions keep retrying,
    /// and end UNAVAILABLE at the retry deadline if the archiver does not catch up).
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
        }
    }
}

impl RedisSettings {
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

impl Config {
    /// Reads `path`, applies the `COLONY__` overrides found in `env`, and validates.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, env)
    }

    /// Parses `text`, applies the `COLONY__` overrides found in `env`, and validates.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Sorted so that the result never depends on the environment's iteration order.
        overrides.sort();
        for (var, value) in overrides {
            apply_override(&mut doc, &var, &value)?;
        }
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: non-empty shard list, unique names, addresses, slot
    /// coverage, and sane settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let r = &self.redis;
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
            "redis.breaker_cooldown_ms",
            r.breaker_cooldown_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        self.limits.validate().map_err(ConfigError::Invalid)?;
        // An answer must fit in a frame: the read budget of a request, plus what each
        // transaction's result costs besides its entries.
        let frame_needed = self
            .limits
            .max_answer_bytes
            .saturating_add(
                self.limits
                    .max_transactions_per_batch
                    .saturating_mul(crate::model::RESULT_OVERHEAD_BYTES),
            )
            .saturating_add(crate::model::RESULT_OVERHEAD_BYTES);
        if self.gateway.max_frame_bytes < frame_needed {
            return invalid(format!(
                "gateway.max_frame_bytes = {} cannot carry an answer of limits.max_answer_bytes \
                 ({}) for limits.max_transactions_per_batch ({}) transactions: it must be at \
                 least {frame_needed}",
                self.gateway.max_frame_bytes,
                self.limits.max_answer_bytes,
                self.limits.max_transactions_per_batch,
            ));
        }
        for shard in &self.shards {
            match (&shard.master, &shard.sentinel) {
                (Some(master), None) => parse_address(master).map(|_| ()).map_err(|e| {
                    ConfigError::Invalid(format!("shard {}: master {e}", shard.name))
                })?,
                (None, Some(sentinel)) => {
                    if sentinel.master_name.is_empty() {
                        return invalid(format!(
                            "shard {}: sentinel.master_name is empty",
                            shard.name
                        ));
                    }
                    if sentinel.addresses.is_empty() {
                        return invalid(format!(
                            "shard {}: sentinel.addresses is empty",
                            shard.name
                        ));
                    }
                    for address in &sentinel.addresses {
                        parse_address(address).map_err(|e| {
                            ConfigError::Invalid(format!("shard {}: sentinel {e}", shard.name))
                        })?;
                    }
                }
                _ => {
                    return invalid(format!(
                        "shard {}: set exactly one of master and sentinel",
                        shard.name
                    ))
                }
            }
            for replica in &shard.replicas {
                parse_address(replica).map_err(|e| {
                    ConfigError::Invalid(format!("shard {}: replica {e}", shard.name))
                })?;
            }
        }
        self.gateway.validate()?;
        let archive = &self.archive;
        if !archive.mongodb_uris.is_empty()
            && archive.mongodb_uris.len() != 1
            && archive.mongodb_uris.len() != self.shards.len()
        {
            return invalid(format!(
                "archive.mongodb_uris has {} entries: give one, or one per shard ({})",
                archive.mongodb_uris.len(),
                self.shards.len()
            ));
        }
        for uri in &archive.mongodb_uris {
            if !uri.starts_with("mongodb://") {
                return invalid(format!(
                    "archive.mongodb_uris: {uri:?} is not a mongodb:// URI (mongodb+srv:// needs \
                     a DNS resolver this build leaves out)"
                ));
            }
        }
        within("archive.batch_size", archive.batch_size, 1, 100_000)?;
        within(
            "archive.scan_interval_secs",
            archive.scan_interval_secs,
            1,
            86_400,
        )?;
        within(
            "archive.checkpoint_interval_secs",
            archive.checkpoint_interval_secs,
            0,
            86_400,
        )?;
        within(
            "archive.inactive_after_secs",
            archive.inactive_after_secs,
            0,
            10 * 365 * 86_400,
        )?;
        within(
            "archive.max_players_per_sec",
            archive.max_players_per_sec,
            0,
            1_000_000,
        )?;
        if archive
            .admin_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return invalid(format!(
                "archive.admin_listen {:?} is not ip:port",
                archive.admin_listen
            ));
        }
        if archive.database.is_empty() || archive.collection.is_empty() {
            return invalid("archive.database and archive.collection must not be empty".into());
        }
        // Building the map checks names, uniqueness and slot coverage.
        self.shard_map().map(|_| ())
    }

    /// The slot map this configuration describes: its shards, in order, and its slot ranges
    /// (an even split when there are none).
    pub fn shard_map(&self) -> Result<ShardMap, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let mut shards = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let endpoint = match (&s.master, &s.sentinel) {
                (Some(master), None) => Endpoint::Fixed(master.clone()),
                (None, Some(sentinel)) => Endpoint::Sentinel {
                    master_name: sentinel.master_name.clone(),
                    sentinels: sentinel.addresses.clone(),
                },
                _ => {
                    return Err(invalid(format!(
                        "shard {}: set exactly one of master and sentinel",
                        s.name
                    )))
                }
            };
            shards.push(Shard {
                name: s.name.clone(),
                endpoint,
                replicas: s.replicas.clone(),
            });
        }
        let ranges: Vec<(String, String)> = self
            .slots
            .iter()
            .map(|r| (r.range.clone(), r.shard.clone()))
            .collect();
        ShardMap::new(self.epoch, shards, &ranges).map_err(|e| invalid(e.0))
    }
}

/// Sets the value at the path named by `var` (after the prefix) in `doc`.
fn apply_override(doc: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::Override {
        var: var.to_string(),
        reason,
    };
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(err("empty path segment".into()));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = path.split_last().ok_or_else(|| err("empty path".into()))?;
    let mut node = toml::Value::Table(std::mem::take(doc));
    let result = (|| {
        let mut cursor = &mut node;
        for segment in parents {
            cursor = step(cursor, segment, true).map_err(err)?;
        }
        match cursor {
            toml::Value::Table(t) => {
                t.insert(last.clone(), value);
                Ok(())
            }
            toml::Value::Array(a) => {
                let index: usize = last
                    .parse()
                    .map_err(|_| err(format!("{last:?} is not an array index")))?;
                let slot = a
                    .get_mut(index)
                    .ok_or_else(|| err(format!("index {index} is past the array's end")))?;
                *slot = value;
                Ok(())
            }
            _ => Err(err(format!("cannot set {last:?} inside a plain value"))),
        }
    })();
    if let toml::Value::Table(t) = node {
        *doc = t;
    }
    result
}

/// Walks one path segment down from `node`, creating tables on the way when `create`.
fn step<'a>(
    node: &'a mut toml::Value,
    segment: &str,
    create: bool,
) -> Result<&'a mut toml::Value, String> {
    match node {
        toml::Value::Table(t) => {
            if create && !t.contains_key(segment) {
                t.insert(segment.to_string(), toml::Value::Table(toml::Table::new()));
            }
            t.get_mut(segment)
                .ok_or_else(|| format!("no key {segment:?}"))
        }
        toml::Value::Array(a) => {
            let index: usize = segment
                .parse()
                .map_err(|_| format!("{segment:?} is not an array index"))?;
            a.get_mut(index)
                .ok_or_else(|| format!("index {index} is past the array's end"))
        }
        _ => Err(format!("cannot descend into a plain value at {segment:?}")),
    }
}

/// Splits `host:port`, rejecting empty hosts and port 0. IPv6 literals go in brackets.
pub fn parse_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{address:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_string(), p)),
        _ => Err(format!("{address:?} has no valid port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SHARDS: &str = r#"
        [[shards]]
        name = "a"
        master = "127.0.0.1:7000"
        replicas = ["127.0.0.1:7001"]

        [[shards]]
        name = "b"
        master = "127.0.0.1:7002"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_fill_everything_but_shards() {
        let config = Config::from_toml(TWO_SHARDS, []).expect("valid");
        assert_eq!(config.redis, RedisSettings::default());
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.epoch, 1);
        assert_eq!(config.shards[0].replicas, vec!["127.0.0.1:7001"]);
    }

    #[test]
    fn environment_overrides_scalars_and_array_items() {
        let config = Config::from_toml(
            TWO_SHARDS,
            env(&[
                ("COLONY__REDIS__CONNECTIONS_PER_SHARD", "3"),
                ("COLONY__SHARDS__1__MASTER", "10.1.2.3:6390"),
                ("COLONY__LIMITS__MAX_VALUE_BYTES", "100"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.redis.connections_per_shard, 3);
        assert_eq!(config.shards[1].master.as_deref(), Some("10.1.2.3:6390"));
        assert_eq!(config.limits.max_value_bytes, 100);
    }

    #[test]
    fn bad_overrides_are_named() {
        for (var, value) in [
            ("COLONY__SHARDS__9__MASTER", "x:1"),
            ("COLONY__REDIS__CONNECTIONS_PER_SHARD", "many"),
            ("COLONY__REDIS__NOT_A_FIELD", "1"),
            ("COLONY____X", "1"),
        ] {
            let err = Config::from_toml(TWO_SHARDS, env(&[(var, value)]))
                .expect_err("override must be rejected");
            let text = err.to_string();
            assert!(!text.is_empty(), "{var}: {text}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let cases = [
            "[[shards]]\nname = \"a\"\nmaster = \"h:1\"\ncolour = \"red\"",
            "[[shards]]\nname = \"a\"",
            "[[shards]]\nname = \"a\"\nmaster = \"h:1\"\nsentinel = { master_name = \"m\", addresses = [\"h:2\"] }",
            "[[shards]]\nname = \"a\"\nsentinel = { master_name = \"m\", addresses = [] }",
            "[[shards]]\nname = \"a\"\nsentinel = { master_name = \"m\", addresses = [\"nope\"] }",
            "[redis]\nacknowledge = \"eventually\"\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            "[archive]\nmongodb_uris = [\"mongodb+srv://x\"]\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            "[archive]\nmongodb_uris = [\"mongodb://a\", \"mongodb://b\"]\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            "[[shards]]\nname = \"a\"\nmaster = \"nohostport\"",
            "[[shards]]\nname = \"a\"\nmaster = \"h:0\"",
            "[[shards]]\nname = \"a\"\nmaster = \":80\"",
            "[[shards]]\nname = \"a\"\nmaster = \"h:1\"\nreplicas = [\"h:99999\"]",
            "shards = []",
            "[redis]\nconnections_per_shard = 0\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            "[gateway]\nlisten = \"nowhere\"\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            "[gateway]\nmax_frame_bytes = 10\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            "[[gateway.tokens]]\nname = \"t\"\ntoken = \"short\"\nrole = \"game\"\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            "[[gateway.tokens]]\nname = \"t\"\ntoken = \"long-enough-token-1\"\nrole = \"root\"\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            "not toml at all [",
        ];
        for text in cases {
            assert!(Config::from_toml(text, []).is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn values_out_of_range_and_shared_secrets_are_refused_naming_the_field() {
        let shard = "[[shards]]\nname = \"a\"\nmaster = \"h:1\"\n";
        let cases = [
            ("[gateway]\nmax_connections = 1000000000000\n", "gateway.max_connections"),
            (
                "[gateway]\nhandshake_timeout_ms = 9223372036854775807\n",
                "gateway.handshake_timeout_ms",
            ),
            ("[gateway]\nidle_timeout_ms = 0\n", "gateway.idle_timeout_ms"),
            (
                "[gateway]\nmax_unauthenticated_connections = 20000\n",
                "gateway.max_unauthenticated_connections",
            ),
            (
                "[gateway]\nmax_bytes_in_flight = 1024\n",
                "gateway.max_bytes_in_flight",
            ),
            (
                "[redis]\ncommand_timeout_ms = 9223372036854775807\n",
                "redis.command_timeout_ms",
            ),
            (
                "[redis]\nretry_deadline_ms = 86400000\n",
                "redis.retry_deadline_ms",
            ),
            ("[limits]\nmax_player_entries = 0\n", "limits.max_player_entries"),
            ("[limits]\nmax_answer_bytes = 1000\n", "limits.max_answer_bytes"),
            (
                "[limits]\nmax_transactions_per_batch = 100000\n",
                "gateway.max_frame_bytes",
            ),
            ("[archive]\nbatch_size = 100000000\n", "archive.batch_size"),
            (
                "[[gateway.tokens]]\nname = \"a\"\ntoken = \"same-secret-0000000\"\nrole = \"game\"\n\
                 [[gateway.tokens]]\nname = \"b\"\ntoken = \"same-secret-0000000\"\nrole = \"admin\"\n",
                "same secret",
            ),
        ];
        for (text, field) in cases {
            let err = Config::from_toml(&format!("{text}{shard}"), [])
                .expect_err("must be refused")
                .to_string();
            assert!(err.contains(field), "{text:?}: {err}");
            assert!(!err.contains("same-secret"), "the secret leaked: {err}");
        }
    }

    #[test]
    fn the_shipped_example_parses_and_states_the_defaults() {
        let text = include_str!("../deploy/colony.example.toml");
        let config = Config::from_toml(text, []).expect("example is valid");
        assert_eq!(config.redis, RedisSettings::default());
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.shards.len(), 2);
        let gateway = GatewayConfig {
            tokens: Vec::new(),
            ..config.gateway.clone()
        };
        assert_eq!(gateway, GatewayConfig::default());
        assert_eq!(config.gateway.tokens.len(), 2);
        let archive = ArchiveConfig {
            mongodb_uris: Vec::new(),
            ..config.archive.clone()
        };
        assert_eq!(archive, ArchiveConfig::default());
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("[::1]:6379"), Ok(("::1".into(), 6379)));
        assert_eq!(
            parse_address("redis-0.svc:6379"),
            Ok(("redis-0.svc".into(), 6379))
        );
        assert!(parse_address("h:-1").is_err());
    }
}
