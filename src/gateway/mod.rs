//! The gateway: protobuf over TCP in front of the [`Store`], for game servers in any language.
//!
//! Shape (after mini-redis): [`run`] takes a bound listener, a [`Gateway`] and a shutdown
//! future. It accepts connections up to `gateway.max_connections` and gives each its own task.
//! A connection must authenticate with its first frame; after that it may have up to
//! `gateway.max_in_flight_per_connection` requests in flight, answered in any order and matched
//! by request id. At that many the gateway stops reading from the connection until one
//! finishes, so a fast client is slowed down rather than buffered without bound. Every queue
//! is bounded. On shutdown the gateway stops accepting, stops reading, lets requests in flight
//! finish (up to `gateway.shutdown_grace_ms`), says GoAway, and closes; then it waits (up to
//! the grace again) for the store's detached work, the last applies of trades it answered.
//!
//! The frame format and every message are described in `proto/PROTOCOL.md`.
//!
//! This file holds the [`Gateway`] and the accept loop; `connection.rs` serves one
//! connection (handshake, reader, writer, drain), `requests.rs` answers its requests.

pub mod admin;
pub mod authorize;
pub mod budget;
pub mod metrics;
pub mod rollback;
pub mod shape;
pub mod untrusted;

mod connection;
mod requests;

use connection::{go_away, serve_connection};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::config::{Config, GatewayConfig};
use crate::error::{Code, StartupError};
use crate::frame;
use crate::model::Limits;
use crate::store::Store;

use crate::auth::Tokens;
use metrics::Metrics;

/// The protocol version this gateway speaks.
pub use crate::wire::PROTOCOL_VERSION;

/// Why the gateway closed a connection: the `reason` label of
/// `colony_connections_closed_total`, one value per way a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Refused: `gateway.max_connections` were open.
    ConnectionLimit,
    /// Refused: `gateway.max_unauthenticated_connections` were waiting for their Hello.
    UnauthenticatedLimit,
    /// The TLS handshake failed.
    TlsHandshake,
    /// No TLS handshake or Hello in time.
    HandshakeTimeout,
    /// A bug in the gateway.
    Internal,
    /// The gateway is shutting down.
    Shutdown,
    /// An answer could not be written.
    WriteFailed,
    /// Nothing arrived for `gateway.idle_timeout_ms`.
    Idle,
    /// A frame began but did not complete within `gateway.io_timeout_ms`.
    Stalled,
    /// The client closed the connection.
    ClientClosed,
    /// A frame's length prefix passed the limit.
    FrameTooLarge,
    /// A frame could not be decoded.
    InvalidFrame,
    /// No Hello first, or an unknown token.
    Unauthenticated,
    /// A protocol version this gateway does not speak.
    BadVersion,
}

impl CloseReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ConnectionLimit => "connection_limit",
            CloseReason::UnauthenticatedLimit => "unauthenticated_limit",
            CloseReason::TlsHandshake => "tls_handshake",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Internal => "internal",
            CloseReason::Shutdown => "shutdown",
            CloseReason::WriteFailed => "write_failed",
            CloseReason::Idle => "idle",
            CloseReason::Stalled => "stalled",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::InvalidFrame => "invalid_frame",
            CloseReason::Unauthenticated => "unauthenticated",
            CloseReason::BadVersion => "bad_version",
        }
    }
}

/// Everything a gateway process shares between connections and the admin endpoint. Cloning
/// is cheap.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

struct GatewayInner {
    store: Store,
    config: GatewayConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    tokens: Tokens,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Bytes of requests and answers all connections hold (`gateway.max_bytes_in_flight`).
    bytes_in_flight: Arc<Semaphore>,
    /// The rollback alarm's memory (`gateway.rollback_watch_players`).
    acknowledged: rollback::AcknowledgedVersions,
}

impl Gateway {
    /// Builds the store and everything else from a validated configuration with
    /// `[[shards]]`. Opens no socket. (A `[cluster]` needs [`Gateway::connect`].)
    pub fn new(config: &Config) -> Result<Gateway, StartupError> {
        let metrics =
            Arc::new(Metrics::new().with_shards(config.shards.iter().map(|s| s.name.as_str())));
        let store = Store::with_observer(config, metrics.clone())?;
        Gateway::of(config, store, metrics)
    }

    /// [`Gateway::new`] for either topology: for a `[cluster]`, reads the cluster's map first
    /// (see [`Store::connect`]). Opens no client socket.
    pub async fn connect(config: &Config) -> Result<Gateway, StartupError> {
        if config.cluster.is_none() {
            return Gateway::new(config);
        }
        let metrics = Arc::new(Metrics::new().with_cluster());
        let store = Store::connect_with_observer(config, metrics.clone()).await?;
        metrics.register_shards(store.shard_map().shards().iter().map(|s| s.name.as_str()));
        Gateway::of(config, store, metrics)
    }

    fn of(config: &Config, store: Store, metrics: Arc<Metrics>) -> Result<Gateway, StartupError> {
        let tls = config
            .gateway
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()?;
        Ok(Gateway {
            inner: Arc::new(GatewayInner {
                store,
                config: config.gateway.clone(),
                tls,
                limits: config.limits.clone(),
                tokens: Tokens::new(config.gateway.tokens.clone()),
                metrics,
                started: Instant::now(),
                bytes_in_flight: Arc::new(Semaphore::new(config.gateway.max_bytes_in_flight)),
                acknowledged: rollback::AcknowledgedVersions::new(
                    config.gateway.rollback_watch_players,
                ),
            }),
        })
    }

    /// The store requests go to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Time since the gateway was built.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The gateway settings in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// The accepted tokens (the protobuf listener's Hello and the admin routes).
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }
}

/// Why [`serve`] could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store or the TLS acceptor could not be built from the configuration.
    #[error("building the gateway: {0}")]
    Build(#[from] StartupError),
    /// A listener could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address in the configuration.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The admin endpoint failed.
    #[error("admin endpoint: {0}")]
    Admin(std::io::Error),
}

async fn bind(address: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind {
            address: address.to_string(),
            source,
        })
}

/// The gateway process once its configuration is loaded: builds the gateway, binds the
/// protobuf listener (`gateway.listen`) and the admin endpoint (`gateway.admin_listen`),
/// serves both until `stop` completes, then drains (see [`run`]) and returns.
pub async fn serve(
    config: &Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let gateway = Gateway::connect(config).await?;
    let listener = bind(&config.gateway.listen).await?;
    let admin = bind(&config.gateway.admin_listen).await?;
    tracing::info!(
        listen = ?listener.local_addr().ok(),
        admin = ?admin.local_addr().ok(),
        shards = gateway.store().shard_map().shards().len(),
        tokens = config.gateway.tokens.len(),
        "colony gateway started"
    );
    if config.gateway.tokens.is_empty() {
        tracing::warn!("no tokens configured: every client will be refused");
    }
    // The admin endpoint stops when draining starts: a draining gateway is not ready.
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(admin, gateway.clone(), async move {
        let _ = stopping_rx.wait_for(|stopping| *stopping).await;
    }));
    run(listener, gateway, async move {
        stop.await;
        let _ = stopping_tx.send(true);
    })
    .await;
    match admin_task.await {
        Ok(result) => result.map_err(ServeError::Admin),
        Err(e) => Err(ServeError::Admin(std::io::Error::other(e))),
    }
}

/// Serves `listener` until `shutdown` completes, then drains and returns.
pub async fn run(listener: TcpListener, gateway: Gateway, shutdown: impl Future<Output = ()>) {
    let (stop, _) = broadcast::channel::<()>(1);
    // Each connection task holds a clone of `done_tx`; when all are gone, all have finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let config = &gateway.inner.config;
    let connection_slots = Arc::new(Semaphore::new(config.max_connections));
    let unauthenticated = Arc::new(Semaphore::new(config.max_unauthenticated_connections));
    let accept = async {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = &gateway.inner.metrics;
            metrics.connections_accepted.inc();
            let Ok(slot) = connection_slots.clone().try_acquire_owned() else {
                metrics.closed(CloseReason::ConnectionLimit);
                refuse(&gateway, stream, "too many connections");
                continue;
            };
            let Ok(pre_auth) = unauthenticated.clone().try_acquire_owned() else {
                metrics.closed(CloseReason::UnauthenticatedLimit);
                refuse(
                    &gateway,
                    stream,
                    "too many connections waiting to authenticate",
                );
                continue;
            };
            let gateway = gateway.clone();
            let stop = stop.subscribe();
            let done = done_tx.clone();
            tokio::spawn(async move {
                gateway.inner.metrics.connections.inc();
                let _ = stream.set_nodelay(true);
                let reason = match gateway.inner.tls.clone() {
                    None => serve_connection(stream, &gateway, stop, pre_auth).await,
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            gateway.inner.config.handshake_timeout(),
                            acceptor.accept(stream),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(tls)) => serve_connection(tls, &gateway, stop, pre_auth).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                CloseReason::TlsHandshake
                            }
                            Err(_) => CloseReason::HandshakeTimeout,
                        }
                    }
                };
                gateway.inner.metrics.connections.dec();
                gateway.inner.metrics.closed(reason);
                tracing::debug!(%peer, reason = reason.as_str(), "connection closed");
                drop(slot);
                drop(done);
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => tracing::info!("gateway shutting down"),
    }
    drop(listener);
    let _ = stop.send(());
    drop(done_tx);
    let _ = done_rx.recv().await;
    // Trades answered just before: their other participants are applied before the gateway
    // goes, within the grace (past it, whoever meets their intents applies them).
    let detached = gateway.inner.store.wait_detached();
    if tokio::time::timeout(gateway.inner.config.shutdown_grace(), detached)
        .await
        .is_err()
    {
        tracing::warn!("trades' last applies left to resolvers: the shutdown grace passed");
    }
}

/// Tells a connection over a limit why it is closed, if its socket takes the few bytes at
/// once, and closes it: no task and no waiting per refused connection. (A TLS client could
/// not read a plain GoAway: it is just closed.)
fn refuse(gateway: &Gateway, stream: TcpStream, reason: &str) {
    if gateway.inner.tls.is_some() {
        return;
    }
    let mut out = Vec::new();
    if frame::encode(&go_away(Code::Unavailable, reason), &mut out, usize::MAX).is_ok() {
        let _ = stream.try_write(&out);
    }
}
