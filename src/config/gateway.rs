//! `[gateway]`: listeners, tokens and roles, TLS, and the bounds of what a connection may hold.

use std::time::Duration;

use serde::Deserialize;

use super::{within, ConfigError, MAX_TIMEOUT_MS};
use crate::auth::TokenConfig;
use crate::frame::{DEFAULT_MAX_FRAME_BYTES, MAX_FRAME_BYTES_LIMIT};

/// The gateway's settings (`[gateway]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address of the protobuf TCP listener. Default `127.0.0.1:7400`.
    pub listen: String,
    /// Address of the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`,
    /// `/admin/status`, which needs an admin token). Keep it on a private network. Default `127.0.0.1:7401`.
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
    /// On shutdown, time allowed for requests in flight to finish, in milliseconds; then as
    /// long again, at most, for the store's detached work (the last applies of trades
    /// answered just before). Default 10000.
    pub shutdown_grace_ms: u64,
    /// Most connections that have not yet completed their Hello (or TLS handshake); further
    /// ones are closed at once. Before Hello a connection may send one frame of at most
    /// [`PRE_AUTH_MAX_FRAME_BYTES`](crate::frame::PRE_AUTH_MAX_FRAME_BYTES). Default 1000, at most `max_connections`.
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
    /// Players whose highest acknowledged version the gateway remembers for the rollback
    /// alarm (`colony_version_rollbacks_total`); the oldest is forgotten first. Each costs its
    /// id and a version (about 200 bytes with the map's overhead). 0 turns the alarm off.
    /// Default 65536.
    pub rollback_watch_players: usize,
    /// The archiver's admin address (`host:port`), so `/admin/status` and the console show
    /// its backlog and last pass (asked with the first admin token). Default none.
    pub archiver_admin: Option<String>,
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
            rollback_watch_players: 65_536,
            archiver_admin: None,
            admin_request_timeout_ms: 5_000,
            tokens: Vec::new(),
            tls: None,
        }
    }
}

impl GatewayConfig {
    /// Checks values serde cannot.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
            "gateway.rollback_watch_players",
            self.rollback_watch_players,
            0,
            10_000_000,
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
