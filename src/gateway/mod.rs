//! The gateway: protobuf over TCP in front of the [`Store`], for game servers in any language.
//!
//! Shape (after mini-redis): [`run`] takes a bound listener, a [`Gateway`] and a shutdown
//! future. It accepts connections up to `gateway.max_connections` and gives each its own task.
//! A connection must authenticate with its first frame; after that it may have up to
//! `gateway.max_in_flight_per_connection` requests in flight, answered in any order and matched
//! by request id. At that many the gateway stops reading from the connection until one
//! finishes, so a fast client is slowed down rather than buffered without bound. Every queue
//! is bounded. On shutdown the gateway stops accepting, stops reading, lets requests in flight
//! finish (up to `gateway.shutdown_grace_ms`), says GoAway, and closes.
//!
//! The frame format and every message are described in `proto/PROTOCOL.md`.

pub mod admin;
pub mod auth;
pub mod metrics;
pub mod untrusted;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::config::{Config, GatewayConfig, Role};
use crate::error::{Code, Error};
use crate::frame::{self, FrameError};
use crate::model::{Access, Limits, PlayerId, Transaction};
use crate::store::Store;
use crate::wire::{self, pb};

use auth::{Principal, Tokens};
use metrics::Metrics;

/// The protocol version this gateway speaks.
pub const PROTOCOL_VERSION: u32 = 1;

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
}

impl Gateway {
    /// Builds the store and everything else from a validated configuration. Opens no socket.
    pub fn new(config: &Config) -> Result<Gateway, Error> {
        let metrics = Arc::new(Metrics::new());
        let store = Store::with_observer(config, metrics.clone())?;
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
}

/// Why [`serve`] could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store or the TLS acceptor could not be built from the configuration.
    #[error("building the gateway: {0}")]
    Build(#[from] Error),
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
    let gateway = Gateway::new(config)?;
    let listener = bind(&config.gateway.listen).await?;
    let admin = bind(&config.gateway.admin_listen).await?;
    tracing::info!(
        listen = ?listener.local_addr().ok(),
        admin = ?admin.local_addr().ok(),
        shards = config.shards.len(),
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
    let connection_slots = Arc::new(Semaphore::new(gateway.inner.config.max_connections));
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
                metrics.closed("connection_limit");
                // A TLS client could not read a plain GoAway: just close.
                if gateway.inner.tls.is_none() {
                    tokio::spawn(refuse(stream));
                }
                continue;
            };
            let gateway = gateway.clone();
            let stop = stop.subscribe();
            let done = done_tx.clone();
            tokio::spawn(async move {
                gateway.inner.metrics.connections.inc();
                let _ = stream.set_nodelay(true);
                let reason = match gateway.inner.tls.clone() {
                    None => serve_connection(stream, &gateway, stop).await,
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            gateway.inner.config.handshake_timeout(),
                            acceptor.accept(stream),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(tls)) => serve_connection(tls, &gateway, stop).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                "tls_handshake"
                            }
                            Err(_) => "handshake_timeout",
                        }
                    }
                };
                gateway.inner.metrics.connections.dec();
                gateway.inner.metrics.closed(reason);
                tracing::debug!(%peer, reason, "connection closed");
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
}

/// Tells a connection over the limit why it is closed, without waiting on it for long.
async fn refuse(mut stream: TcpStream) {
    let goodbye = go_away(Code::Unavailable, "too many connections");
    let mut out = Vec::new();
    if frame::encode(&goodbye, &mut out, usize::MAX).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    }
}

fn go_away(code: Code, reason: &str) -> pb::ServerFrame {
    pb::ServerFrame {
        request_id: 0,
        body: Some(pb::server_frame::Body::GoAway(pb::GoAway {
            code: wire::code_to_pb(code).into(),
            reason: reason.to_string(),
        })),
    }
}

fn request_error(request_id: u64, e: &Error) -> pb::ServerFrame {
    pb::ServerFrame {
        request_id,
        body: Some(pb::server_frame::Body::Error(pb::RequestError {
            code: wire::code_to_pb(e.code()).into(),
            message: e.to_string(),
        })),
    }
}

/// Why reading a frame stopped.
enum ReadError {
    /// The peer closed the connection (cleanly, or mid-frame).
    Closed,
    /// The bytes are not a valid frame.
    Frame(FrameError),
}

/// Reads one whole frame. Buffer memory grows with the bytes that arrive, in chunks of at
/// most 64 KiB, never with the length a peer claims.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<pb::ClientFrame, ReadError> {
    loop {
        if let Some(frame) = frame::decode(buf, max).map_err(ReadError::Frame)? {
            return Ok(frame);
        }
        buf.reserve(frame::bytes_wanted(buf, 64 * 1024));
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

/// Writes frames from `frames` until it closes; coalesces whatever is queued into one write.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut frames: mpsc::Receiver<pb::ServerFrame>,
    max: usize,
) {
    let mut out = Vec::with_capacity(16 * 1024);
    while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        while let Some(f) = next {
            if let Err(e) = frame::encode(&f, &mut out, max) {
                // A response too large for a frame becomes an error for that request.
                let error = Error::TooLarge(format!("response {e}"));
                let _ = frame::encode(&request_error(f.request_id, &error), &mut out, max);
            }
            next = if out.len() < 256 * 1024 {
                frames.try_recv().ok()
            } else {
                None
            };
        }
        if writer.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
    let _ = writer.shutdown().await;
}

/// Serves one connection to the end; returns why it ended (a metric label).
async fn serve_connection<S>(
    stream: S,
    gateway: &Gateway,
    mut stop: broadcast::Receiver<()>,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let config = &gateway.inner.config;
    let max = config.max_frame_bytes;
    let (tx, rx) = mpsc::channel::<pb::ServerFrame>(config.max_in_flight_per_connection + 2);
    let writer_task = tokio::spawn(write_frames(writer, rx, max));
    let mut buf = BytesMut::with_capacity(4096);

    let principal = match handshake(&mut reader, &mut buf, gateway, &tx).await {
        Ok(principal) => principal,
        Err(reason) => {
            drop(tx);
            let _ = writer_task.await;
            return reason;
        }
    };

    let in_flight = Arc::new(Semaphore::new(config.max_in_flight_per_connection));
    // Set once the connection is closing and the grace period is over: requests still running
    // are abandoned (their callers see the connection close without an answer, which they
    // must treat as an unknown outcome), so that the connection closes when the docs say.
    let (abandon, abandoned) = tokio::sync::watch::channel(false);
    let reason = loop {
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break "internal",
            },
            _ = stop.recv() => break "shutdown",
        };
        let read = tokio::select! {
            read = tokio::time::timeout(config.idle_timeout(), read_frame(&mut reader, &mut buf, max)) => read,
            _ = stop.recv() => break "shutdown",
        };
        let frame = match read {
            Err(_) => {
                if in_flight.available_permits() + 1 < config.max_in_flight_per_connection {
                    // Requests are still running: the connection is not idle.
                    drop(permit);
                    continue;
                }
                let _ = tx.send(go_away(Code::Timeout, "idle for too long")).await;
                break "idle";
            }
            Ok(Err(ReadError::Closed)) => break "client_closed",
            Ok(Err(ReadError::Frame(e))) => {
                let code = match e {
                    FrameError::TooLarge { .. } => Code::TooLarge,
                    FrameError::Invalid(_) => Code::Invalid,
                };
                // Let the requests already accepted finish before saying why we close.
                let _ = tokio::time::timeout(
                    config.shutdown_grace(),
                    in_flight.acquire_many(config.max_in_flight_per_connection as u32 - 1),
                )
                .await;
                let _ = tx.send(go_away(code, &e.to_string())).await;
                break if code == Code::TooLarge {
                    "frame_too_large"
                } else {
                    "invalid_frame"
                };
            }
            Ok(Ok(frame)) => frame,
        };
        let gateway = gateway.clone();
        let principal = principal.clone();
        let tx = tx.clone();
        let mut abandoned = abandoned.clone();
        tokio::spawn(async move {
            let metrics = &gateway.inner.metrics;
            metrics.in_flight.inc();
            tokio::select! {
                response = handle_request(&gateway, &principal, frame) => {
                    let _ = tx.send(response).await;
                }
                _ = async { abandoned.wait_for(|abandoned| *abandoned).await.is_ok() } => {}
            }
            metrics.in_flight.dec();
            drop(permit);
        });
    };
    if reason == "shutdown" || reason == "client_closed" {
        let _ = tokio::time::timeout(
            config.shutdown_grace(),
            in_flight.acquire_many(config.max_in_flight_per_connection as u32),
        )
        .await;
        if reason == "shutdown" {
            let _ = tx
                .send(go_away(Code::Unavailable, "gateway shutting down"))
                .await;
        }
    }
    let _ = abandon.send(true);
    drop(tx);
    let _ = writer_task.await;
    reason
}

/// Reads and checks the Hello; answers it. On failure, queues a GoAway and returns why.
async fn handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    gateway: &Gateway,
    tx: &mpsc::Sender<pb::ServerFrame>,
) -> Result<Principal, &'static str> {
    let config = &gateway.inner.config;
    let started = Instant::now();
    let metrics = &gateway.inner.metrics;
    let refuse = |code: Code, reason: &str| {
        metrics.request("hello", code.as_str(), started.elapsed());
        go_away(code, reason)
    };
    let first = tokio::time::timeout(
        config.handshake_timeout(),
        read_frame(reader, buf, config.max_frame_bytes),
    )
    .await;
    let frame = match first {
        Err(_) => {
            let _ = tx.send(refuse(Code::Timeout, "no Hello in time")).await;
            return Err("handshake_timeout");
        }
        Ok(Err(ReadError::Closed)) => return Err("client_closed"),
        Ok(Err(ReadError::Frame(e))) => {
            let code = match e {
                FrameError::TooLarge { .. } => Code::TooLarge,
                FrameError::Invalid(_) => Code::Invalid,
            };
            let _ = tx.send(refuse(code, &e.to_string())).await;
            return Err("invalid_frame");
        }
        Ok(Ok(frame)) => frame,
    };
    let hello = match frame.body {
        Some(pb::client_frame::Body::Hello(hello)) => hello,
        _ => {
            let _ = tx
                .send(refuse(
                    Code::Unauthenticated,
                    "the first frame must be Hello",
                ))
                .await;
            return Err("unauthenticated");
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported; this gateway speaks {PROTOCOL_VERSION}",
            hello.protocol_version
        );
        let _ = tx.send(refuse(Code::Invalid, &reason)).await;
        return Err("bad_version");
    }
    let Some(principal) = gateway.inner.tokens.authenticate(&hello.token) else {
        tracing::info!(client = %truncate(&hello.client_name, 64), "authentication failed");
        let _ = tx
            .send(refuse(Code::Unauthenticated, "unknown token"))
            .await;
        return Err("unauthenticated");
    };
    tracing::debug!(token = %principal.name, client = %truncate(&hello.client_name, 64), "authenticated");
    let role = match principal.role {
        Role::Game => pb::Role::Game,
        Role::Admin => pb::Role::Admin,
    };
    let answer = pb::ServerFrame {
        request_id: frame.request_id,
        body: Some(pb::server_frame::Body::Hello(pb::HelloResult {
            role: role.into(),
            max_frame_bytes: u32::try_from(config.max_frame_bytes).unwrap_or(u32::MAX),
            max_in_flight: u32::try_from(config.max_in_flight_per_connection).unwrap_or(u32::MAX),
            max_transactions_per_batch: u32::try_from(
                gateway.inner.limits.max_transactions_per_batch,
            )
            .unwrap_or(u32::MAX),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    };
    metrics.request("hello", Code::Ok.as_str(), started.elapsed());
    if tx.send(answer).await.is_err() {
        return Err("internal");
    }
    Ok(principal)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn player_from(id: String, what: &str) -> Result<PlayerId, Error> {
    PlayerId::new(id).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// Answers one authenticated request.
async fn handle_request(
    gateway: &Gateway,
    principal: &Principal,
    frame: pb::ClientFrame,
) -> pb::ServerFrame {
    use pb::client_frame::Body;
    let started = Instant::now();
    let request_id = frame.request_id;
    let (op, result) = match frame.body {
        Some(Body::Batch(batch)) => ("batch", handle_batch(gateway, principal, batch).await),
        Some(Body::GetPlayer(get)) => ("get_player", handle_get(gateway, principal, get).await),
        Some(Body::Login(login)) => ("login", handle_login(gateway, principal, login).await),
        Some(Body::Ping(ping)) => (
            "ping",
            Ok(pb::server_frame::Body::Pong(pb::Pong { nonce: ping.nonce })),
        ),
        Some(Body::Hello(_)) => (
            "hello",
            Err(Error::Invalid(
                "the connection is already authenticated".into(),
            )),
        ),
        None => (
            "invalid",
            Err(Error::Invalid("unknown or missing request body".into())),
        ),
    };
    let (code, body) = match result {
        Ok(body) => (Code::Ok, body),
        Err(e) => (
            e.code(),
            pb::server_frame::Body::Error(pb::RequestError {
                code: wire::code_to_pb(e.code()).into(),
                message: e.to_string(),
            }),
        ),
    };
    gateway
        .inner
        .metrics
        .request(op, code.as_str(), started.elapsed());
    pb::ServerFrame {
        request_id,
        body: Some(body),
    }
}

async fn handle_batch(
    gateway: &Gateway,
    principal: &Principal,
    batch: pb::Batch,
) -> Result<pb::server_frame::Body, Error> {
    let limits = &gateway.inner.limits;
    if batch.transactions.len() > limits.max_transactions_per_batch {
        return Err(Error::TooLarge(format!(
            "batch has {} transactions, more than {}",
            batch.transactions.len(),
            limits.max_transactions_per_batch
        )));
    }
    let mut results: Vec<Option<Result<crate::model::Committed, Error>>> =
        Vec::with_capacity(batch.transactions.len());
    let mut accepted: Vec<Transaction> = Vec::with_capacity(batch.transactions.len());
    for t in batch.transactions {
        let txn = wire::transaction_from_pb(t)
            .and_then(|txn| auth::authorize_transaction(principal.role, &txn).map(|()| txn));
        match txn {
            Ok(txn) => {
                accepted.push(txn);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let mut ran = gateway
        .inner
        .store
        .execute_batch(accepted)
        .await?
        .into_iter();
    let metrics = &gateway.inner.metrics;
    let results = results
        .into_iter()
        .map(|r| {
            let r = r
                .or_else(|| ran.next())
                .unwrap_or_else(|| Err(Error::Internal("batch result missing".into())));
            let code = r.as_ref().map_or_else(Error::code, |_| Code::Ok);
            metrics
                .transactions
                .get_or_create(&metrics::CodeLabels {
                    code: code.as_str(),
                })
                .inc();
            wire::result_to_pb(&r)
        })
        .collect();
    Ok(pb::server_frame::Body::Batch(pb::BatchResult { results }))
}

async fn handle_get(
    gateway: &Gateway,
    principal: &Principal,
    get: pb::GetPlayer,
) -> Result<pb::server_frame::Body, Error> {
    let player = player_from(get.player_id, "player_id")?;
    let access = match pb::Access::try_from(get.access) {
        Ok(pb::Access::Owner) => Access::Owner,
        Ok(pb::Access::Public) => Access::Public,
        _ => return Err(Error::Invalid("access must be OWNER or PUBLIC".into())),
    };
    let acting = if get.acting_player_id.is_empty() {
        None
    } else {
        Some(player_from(get.acting_player_id, "acting_player_id")?)
    };
    auth::authorize(principal.role, &player, access, acting.as_ref())?;
    let result = gateway.inner.store.get_player(player, access).await;
    Ok(pb::server_frame::Body::Player(wire::result_to_pb(&result)))
}

async fn handle_login(
    gateway: &Gateway,
    principal: &Principal,
    login: pb::Login,
) -> Result<pb::server_frame::Body, Error> {
    let player = player_from(login.player_id, "player_id")?;
    // Logging in is the player acting for itself.
    auth::authorize(principal.role, &player, Access::Owner, Some(&player))?;
    // An owner read marks the player active (the store updates last-active for owners).
    let result = gateway.inner.store.get_player(player, Access::Owner).await;
    Ok(pb::server_frame::Body::Player(wire::result_to_pb(&result)))
}
