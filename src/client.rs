//! A Rust client for the gateway: connects, authenticates, pipelines many requests on one
//! connection, reconnects after a failure, and retries what may be retried — with the same
//! idempotency keys, so a retried write applies at most once — within a deadline.
//!
//! Retry rules (see `proto/PROTOCOL.md`): UNAVAILABLE, TIMEOUT and UNKNOWN are retried with
//! capped exponential backoff and full jitter until the request deadline; everything else is
//! final. A connection lost after a request was sent makes that request's outcome UNKNOWN,
//! which the retry settles.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so that deadlines and backoff follow paused time in tests.
use tokio::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Role;
use crate::backoff::Backoff;
use crate::config::{parse_address, within, ConfigError, MAX_TIMEOUT_MS};
use crate::error::Error;
use crate::frame;
use crate::framed::{self, ReadFrameError, WriteBatch};
use crate::model::{Access, Committed, IdempotencyKey, MultiCommitted, MultiTransaction, PlayerId};
use crate::wire::PROTOCOL_VERSION;
use crate::wire::{self, pb, Envelope, Item, ItemResult};

/// How to reach and talk to a gateway.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway, `host:port`.
    pub address: String,
    /// The token to present.
    pub token: String,
    /// Shown in the gateway's logs.
    pub client_name: String,
    /// Client id of the idempotency keys [`Client::next_key`] makes: unique per process.
    pub client_id: String,
    /// Time allowed to connect and authenticate.
    pub connect_timeout: Duration,
    /// Time allowed for one call, retries, reconnections and waiting for answers included:
    /// a call never takes longer.
    pub request_deadline: Duration,
    /// First retry delay; doubles per attempt up to `backoff_max`, with full jitter.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Largest frame accepted from the gateway.
    pub max_frame_bytes: usize,
    /// TLS to the gateway; `None` for plain TCP.
    pub tls: Option<ClientTls>,
}

/// What the gateway said about this connection when it accepted the client's Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The role the token was granted.
    pub role: Role,
    /// The gateway's largest frame, in bytes.
    pub max_frame_bytes: u32,
    /// Requests the gateway lets one connection have in flight.
    pub max_in_flight: u32,
    /// Transactions (and multi-player transactions) one batch may carry.
    pub max_transactions_per_batch: u32,
    /// The gateway's version.
    pub server_version: String,
}

impl Session {
    fn from_pb(hello: pb::HelloResult) -> Result<Session, Error> {
        let role = match pb::Role::try_from(hello.role) {
            Ok(pb::Role::Game) => Role::Game,
            Ok(pb::Role::Admin) => Role::Admin,
            _ => {
                return Err(Error::Internal(format!(
                    "the gateway granted an unknown role {}",
                    hello.role
                )))
            }
        };
        Ok(Session {
            role,
            max_frame_bytes: hello.max_frame_bytes,
            max_in_flight: hello.max_in_flight,
            max_transactions_per_batch: hello.max_transactions_per_batch,
            server_version: hello.server_version,
        })
    }
}

/// How the client checks a TLS gateway.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// PEM text of the certificates to trust (the gateway's CA, or its self-signed
    /// certificate).
    pub ca_certificates_pem: Vec<u8>,
    /// The name the gateway's certificate must carry, e.g. `gateway.example.org`.
    pub server_name: String,
}

impl ClientConfig {
    /// Defaults for everything but where and who.
    pub fn new(address: impl Into<String>, token: impl Into<String>) -> ClientConfig {
        let unique = RandomState::new().hash_one(std::process::id());
        ClientConfig {
            address: address.into(),
            token: token.into(),
            client_name: "colony-rust-client".into(),
            client_id: format!("rs-{}-{unique:016x}", std::process::id()),
            connect_timeout: Duration::from_secs(2),
            request_deadline: Duration::from_secs(5),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            tls: None,
        }
    }

    /// Checks every field as [`Config`](crate::Config) checks the gateway's: the message
    /// names the field. [`Client::connect`] refuses a configuration that fails it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if let Err(e) = parse_address(&self.address) {
            return invalid(format!("client.address: {e}"));
        }
        if self.token.is_empty() {
            return invalid("client.token is empty".into());
        }
        if let Err(e) = IdempotencyKey::new(self.client_id.clone(), 0) {
            return invalid(format!("client.client_id: {e}"));
        }
        let max = Duration::from_millis(MAX_TIMEOUT_MS);
        for (field, value) in [
            ("client.connect_timeout", self.connect_timeout),
            ("client.request_deadline", self.request_deadline),
            ("client.backoff_base", self.backoff_base),
            ("client.backoff_max", self.backoff_max),
        ] {
            if value.is_zero() || value > max {
                return invalid(format!("{field} = {value:?} is outside 1ms..={max:?}"));
            }
        }
        if self.backoff_base > self.backoff_max {
            return invalid(format!(
                "client.backoff_base ({:?}) is longer than client.backoff_max ({:?})",
                self.backoff_base, self.backoff_max
            ));
        }
        within(
            "client.max_frame_bytes",
            self.max_frame_bytes,
            frame::PRE_AUTH_MAX_FRAME_BYTES,
            frame::MAX_FRAME_BYTES_LIMIT,
        )?;
        if let Some(tls) = &self.tls {
            if tls.server_name.is_empty() {
                return invalid("client.tls.server_name is empty".into());
            }
            if tls.ca_certificates_pem.is_empty() {
                return invalid("client.tls.ca_certificates_pem is empty".into());
            }
        }
        Ok(())
    }
}

type Reply = Result<pb::ServerFrame, Error>;

/// One live, authenticated connection.
struct Connection {
    frames: mpsc::Sender<pb::ClientFrame>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    closed: Arc<AtomicBool>,
    /// Tells the reader and the writer to stop: [`Client::close`].
    shutdown: tokio::sync::watch::Sender<bool>,
    session: Session,
}

/// A gateway client. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    config: ClientConfig,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    next_request_id: AtomicU64,
    next_key: AtomicU64,
    /// An idempotency key with the configured (validated) client id.
    key_prototype: IdempotencyKey,
    /// Set by [`Client::close`]: no new connection is opened after it.
    closed_by_caller: AtomicBool,
}

/// Why a call's transport failed.
fn lost(reason: &str) -> Error {
    Error::Unknown {
        shard: None,
        reason: format!("connection to the gateway lost: {reason}"),
    }
}

impl Client {
    /// Connects and authenticates.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        config
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let key_prototype = IdempotencyKey::new(config.client_id.clone(), 0)?;
        let client = Client {
            inner: Arc::new(ClientInner {
                config,
                connection: tokio::sync::Mutex::new(None),
                next_request_id: AtomicU64::new(1),
                next_key: AtomicU64::new(1),
                key_prototype,
                closed_by_caller: AtomicBool::new(false),
            }),
        };
        let deadline = Instant::now() + client.inner.config.connect_timeout;
        client.connection(deadline).await?;
        Ok(client)
    }

    /// Closes the connection: requests in flight end at once (writes among them UNKNOWN, as
    /// for any lost connection, and are not retried), and later calls fail UNAVAILABLE at once,
    /// without connecting again.
    pub async fn close(&self) {
        self.inner.closed_by_caller.store(true, Ordering::SeqCst);
        if let Some(conn) = self.inner.connection.lock().await.take() {
            conn.closed.store(true, Ordering::SeqCst);
            let _ = conn.shutdown.send(true);
        }
    }

    /// True once [`Client::close`] was called: nothing is retried after it.
    fn closed_by_caller(&self) -> bool {
        self.inner.closed_by_caller.load(Ordering::SeqCst)
    }

    /// A fresh idempotency key: this client's id and the next request number.
    pub fn next_key(&self) -> IdempotencyKey {
        let n = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        self.inner.key_prototype.with_request_id(n)
    }

    /// The gateway's answer to Hello (role and limits) on the current connection.
    pub async fn session(&self) -> Result<Session, Error> {
        let deadline = Instant::now() + self.inner.config.connect_timeout;
        Ok(self.connection(deadline).await?.session.clone())
    }

    /// The live connection, opening one if there is none, by `deadline` at the latest (and
    /// within `connect_timeout`).
    async fn connection(&self, deadline: Instant) -> Result<Arc<Connection>, Error> {
        if self.inner.closed_by_caller.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                shard: None,
                reason: "the client was closed".into(),
            });
        }
        let mut slot = self.inner.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.closed.load(Ordering::Relaxed) {
                return Ok(conn.clone());
            }
        }
        *slot = None;
        let config = &self.inner.config;
        let until = deadline.min(Instant::now() + config.connect_timeout);
        let conn = tokio::time::timeout_at(until, open(config))
            .await
            .map_err(|_| Error::Unavailable {
                shard: None,
                reason: format!("connecting to {} timed out", config.address),
            })??;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends one request and waits for its answer until `deadline` (no retry).
    async fn call(
        &self,
        body: pb::client_frame::Body,
        deadline: Instant,
    ) -> Result<pb::server_frame::Body, Error> {
        if Instant::now() >= deadline {
            return Err(Error::Timeout { shard: None });
        }
        let conn = self.connection(deadline).await?;
        let request_id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(request_id, tx);
        // The reader marks the connection closed before it fails what is pending; a request
        // registered after that must not wait for an answer that cannot come.
        if conn.closed.load(Ordering::SeqCst) {
            lock(&conn.pending).remove(&request_id);
            return Err(Error::Unavailable {
                shard: None,
                reason: "connection closed before sending".into(),
            });
        }
        let frame = pb::ClientFrame {
            request_id,
            body: Some(body),
        };
        if conn.frames.send(frame).await.is_err() {
            lock(&conn.pending).remove(&request_id);
            conn.closed.store(true, Ordering::Relaxed);
            return Err(Error::Unavailable {
                shard: None,
                reason: "connection closed before sending".into(),
            });
        }
        let reply = match tokio::time::timeout_at(deadline, rx).await {
            Ok(reply) => reply.unwrap_or_else(|_| Err(lost("no reply")))?,
            Err(_) => {
                lock(&conn.pending).remove(&request_id);
                return Err(Error::Unknown {
                    shard: None,
                    reason: "no answer from the gateway in time".into(),
                });
            }
        };
        match reply.body {
            Some(pb::server_frame::Body::Error(e)) => Err(wire::error_from_pb(e)),
            Some(body) => Ok(body),
            None => Err(Error::Internal("empty reply".into())),
        }
    }

    /// The wait before retry `attempt`, never past `deadline`.
    fn backoff(&self, attempt: u32, deadline: Instant) -> Duration {
        let c = &self.inner.config;
        Backoff {
            base: c.backoff_base,
            max: c.backoff_max,
        }
        .delay_within(attempt, deadline.saturating_duration_since(Instant::now()))
    }

    /// Runs transactions through the gateway, retrying the retryable ones with their own
    /// idempotency keys until they settle or the deadline passes. One result per
    /// transaction, in order.
    ///
    /// A [`Transaction`] converts into an [`Envelope`] without an acting player (what the admin
    /// role sends); a game server sends `Envelope::acting_for(player, transaction)`.
    pub async fn execute_batch<T: Into<Envelope>>(
        &self,
        transactions: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Result<Committed, Error>>, Error> {
        let items: Vec<Item> = transactions
            .into_iter()
            .map(|t| Item::Single(t.into()))
            .collect();
        let results = self.run_batch(items, false).await?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                ItemResult::Single(r) => r,
                ItemResult::Multi(_) => {
                    Err(Error::Internal("a multi result for a transaction".into()))
                }
            })
            .collect())
    }

    /// Runs a batch that may mix transactions on one player and multi-player transactions
    /// ([`Item`]), retrying each retryable one as [`Client::execute_batch`] does. One result
    /// per item, in order.
    pub async fn execute_items<T: Into<Item>>(
        &self,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<ItemResult>, Error> {
        self.run_batch(items.into_iter().map(Into::into).collect(), true)
            .await
    }

    /// Runs one multi-player transaction: every participant's operations apply, or none do.
    /// A [`MultiTransaction`] converts into an envelope without an acting player (admin); a
    /// game server sends `Envelope::acting_for(player, transaction)`.
    pub async fn execute_multi(
        &self,
        transaction: impl Into<Envelope<MultiTransaction>>,
    ) -> Result<MultiCommitted, Error> {
        match self
            .run_batch(vec![Item::Multi(transaction.into())], true)
            .await?
            .pop()
        {
            Some(ItemResult::Multi(r)) => r,
            _ => Err(Error::Internal("no result".into())),
        }
    }

    /// The batch loop: sends what is pending (as `Batch.items` when `as_items`, else as
    /// `Batch.transactions`), keeps each item's latest outcome, retries the retryable ones.
    async fn run_batch(&self, items: Vec<Item>, as_items: bool) -> Result<Vec<ItemResult>, Error> {
        let deadline = Instant::now() + self.inner.config.request_deadline;
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let batch = if as_items {
                pb::Batch {
                    transactions: Vec::new(),
                    items: pending
                        .iter()
                        .map(|&i| wire::item_to_pb(&items[i]))
                        .collect(),
                }
            } else {
                pb::Batch {
                    transactions: pending
                        .iter()
                        .filter_map(|&i| match &items[i] {
                            Item::Single(envelope) => Some(wire::envelope_to_pb(envelope)),
                            Item::Multi(_) => None,
                        })
                        .collect(),
                    items: Vec::new(),
                }
            };
            let outcome = self
                .call(pb::client_frame::Body::Batch(batch), deadline)
                .await;
            let per_item: Vec<ItemResult> = match outcome {
                Ok(pb::server_frame::Body::Batch(b))
                    if as_items && b.items.len() == pending.len() =>
                {
                    b.items.into_iter().map(wire::item_result_from_pb).collect()
                }
                Ok(pb::server_frame::Body::Batch(b))
                    if !as_items && b.results.len() == pending.len() =>
                {
                    b.results
                        .into_iter()
                        .map(|r| ItemResult::Single(wire::result_from_pb(r)))
                        .collect()
                }
                Ok(_) if attempt == 0 => {
                    return Err(Error::Internal("unexpected reply to a batch".into()))
                }
                Err(e) if attempt == 0 && !e.is_retryable() => return Err(e),
                // After a first attempt, the batch is no longer the unit: each transaction
                // keeps what earlier attempts said (an unknown outcome stays unknown).
                Ok(_) => pending
                    .iter()
                    .map(|&i| {
                        for_item(
                            &Error::Internal("unexpected reply to a batch".into()),
                            &items[i],
                        )
                    })
                    .collect(),
                Err(e) => pending.iter().map(|&i| for_item(&e, &items[i])).collect(),
            };
            let mut again = Vec::new();
            for (&i, r) in pending.iter().zip(per_item) {
                let r = after_attempts(r, results[i].as_ref());
                let retry = match &r {
                    ItemResult::Single(Err(e)) | ItemResult::Multi(Err(e)) => e.is_retryable(),
                    _ => false,
                };
                results[i] = Some(r);
                if retry && Instant::now() < deadline && !self.closed_by_caller() {
                    again.push(i);
                }
            }
            pending = again;
            if !pending.is_empty() {
                let pause = self.backoff(attempt, deadline);
                tokio::time::sleep(pause).await;
                attempt += 1;
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| ItemResult::Single(Err(Error::Internal("no result".into()))))
            })
            .collect())
    }

    /// Runs one transaction (see [`Client::execute_batch`]).
    pub async fn execute(&self, transaction: impl Into<Envelope>) -> Result<Committed, Error> {
        self.execute_batch(vec![transaction])
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("no result".into())))
    }

    /// Runs a player read, retrying while it fails retryably and time is left.
    async fn read_with_retries(&self, body: pb::client_frame::Body) -> Result<Committed, Error> {
        let deadline = Instant::now() + self.inner.config.request_deadline;
        let mut attempt = 0;
        loop {
            let result = match self.call(body.clone(), deadline).await {
                Ok(pb::server_frame::Body::Player(r)) => wire::result_from_pb(r),
                Ok(_) => Err(Error::Internal(
                    "unexpected reply to a player request".into(),
                )),
                Err(e) => Err(e),
            };
            match result {
                Err(e)
                    if e.is_retryable()
                        && Instant::now() < deadline
                        && !self.closed_by_caller() =>
                {
                    let pause = self.backoff(attempt, deadline);
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                }
                result => return result,
            }
        }
    }

    /// Reads a whole player, as its owner or as the public; `acting` names the player the
    /// caller acts for (required for the game role).
    pub async fn get_player(
        &self,
        player: &PlayerId,
        access: Access,
        acting: Option<&PlayerId>,
    ) -> Result<Committed, Error> {
        let body = pb::client_frame::Body::GetPlayer(wire::player_read_to_pb(&wire::PlayerRead {
            player: player.clone(),
            access,
            acting_player: acting.cloned(),
        }));
        self.read_with_retries(body).await
    }

    /// Logs a player in: marks it active and returns everything it owns.
    pub async fn login(&self, player: &PlayerId) -> Result<Committed, Error> {
        let body = pb::client_frame::Body::Login(wire::login_to_pb(player));
        self.read_with_retries(body).await
    }

    /// Round trip to the gateway, within `request_deadline`.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        let nonce = RandomState::new().hash_one(started);
        match self
            .call(
                pb::client_frame::Body::Ping(pb::Ping { nonce }),
                started + self.inner.config.request_deadline,
            )
            .await?
        {
            pb::server_frame::Body::Pong(p) if p.nonce == nonce => Ok(started.elapsed()),
            _ => Err(Error::Internal("unexpected reply to a ping".into())),
        }
    }
}

/// A whole-call failure as seen by one item: a lost connection leaves a transaction that only
/// reads merely unavailable, but writes unknown.
fn for_item(e: &Error, item: &Item) -> ItemResult {
    match item {
        Item::Single(envelope) => ItemResult::Single(Err(match e {
            Error::Unknown { shard, reason } if !envelope.transaction.is_write() => {
                Error::Unavailable {
                    shard: shard.clone(),
                    reason: reason.clone(),
                }
            }
            e => e.clone(),
        })),
        Item::Multi(_) => ItemResult::Multi(Err(e.clone())),
    }
}

/// An item's outcome over its attempts (see [`Error::after_attempts`]).
fn after_attempts(latest: ItemResult, earlier: Option<&ItemResult>) -> ItemResult {
    match (latest, earlier) {
        (ItemResult::Single(r), Some(ItemResult::Single(e))) => {
            ItemResult::Single(Error::after_attempts(r, Some(e)))
        }
        (ItemResult::Multi(r), Some(ItemResult::Multi(e))) => {
            ItemResult::Multi(Error::after_attempts(r, Some(e)))
        }
        (latest, _) => latest,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent: take it anyway.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Connects, says Hello, and starts the reader and writer tasks.
async fn open(config: &ClientConfig) -> Result<Connection, Error> {
    let unavailable = |reason: String| Error::Unavailable {
        shard: None,
        reason,
    };
    let stream = TcpStream::connect(&config.address)
        .await
        .map_err(|e| unavailable(format!("cannot connect to {}: {e}", config.address)))?;
    let _ = stream.set_nodelay(true);
    type Reader = Box<dyn AsyncRead + Send + Unpin>;
    type Writer = Box<dyn AsyncWrite + Send + Unpin>;
    let (mut reader, mut writer): (Reader, Writer) = match &config.tls {
        None => {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        Some(tls) => {
            let (connector, name) =
                crate::tls::connector(&tls.ca_certificates_pem, &tls.server_name)
                    .map_err(|e| Error::Invalid(format!("client configuration: {e}")))?;
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| unavailable(format!("TLS handshake with {}: {e}", config.address)))?;
            let (r, w) = tokio::io::split(stream);
            (Box::new(r), Box::new(w))
        }
    };
    let hello = pb::ClientFrame {
        request_id: 0,
        body: Some(pb::client_frame::Body::Hello(pb::Hello {
            token: config.token.clone(),
            client_name: config.client_name.clone(),
            protocol_version: PROTOCOL_VERSION,
        })),
    };
    let mut batch = WriteBatch::new();
    batch
        .push(&hello, config.max_frame_bytes)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    batch
        .write_to(&mut writer)
        .await
        .map_err(|e| unavailable(format!("sending Hello: {e}")))?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let answer: pb::ServerFrame =
        match framed::read_frame(&mut reader, &mut buf, config.max_frame_bytes).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(ReadFrameError::Io(_)) => {
                return Err(unavailable(
                    "gateway closed the connection during Hello".into(),
                ))
            }
            Err(e) => return Err(Error::Internal(format!("from the gateway: {e}"))),
        };
    let session = match answer.body {
        Some(pb::server_frame::Body::Hello(h)) => Session::from_pb(h)?,
        Some(pb::server_frame::Body::GoAway(g)) => {
            let e = wire::error_from_pb(pb::RequestError {
                code: g.code,
                message: g.reason,
            });
            return Err(e);
        }
        _ => return Err(Error::Internal("unexpected answer to Hello".into())),
    };

    let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>> = Arc::default();
    let closed = Arc::new(AtomicBool::new(false));
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let (frames_tx, mut frames_rx) = mpsc::channel::<pb::ClientFrame>(1024);
    let max = config.max_frame_bytes;

    // Writer: coalesces queued frames into one write; on close, shuts the socket down.
    {
        let closed = closed.clone();
        let pending = pending.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut batch = WriteBatch::new();
            loop {
                let first = tokio::select! {
                    first = frames_rx.recv() => first,
                    _ = shutdown.wait_for(|stop| *stop) => None,
                };
                let Some(first) = first else {
                    let _ = writer.shutdown().await;
                    return;
                };
                let mut next = Some(first);
                while let Some(f) = next {
                    let id = f.request_id;
                    if let Err(e) = batch.push(&f, max) {
                        if let Some(tx) = lock(&pending).remove(&id) {
                            let _ = tx.send(Err(Error::TooLarge(format!("request {e}"))));
                        }
                    }
                    next = if batch.has_room() {
                        frames_rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                if batch.write_to(&mut writer).await.is_err() {
                    closed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        });
    }
    // Reader: hands each answer to its caller; on any end, fails everything pending.
    {
        let closed = closed.clone();
        let pending = pending.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let reason = loop {
                // `read_frame` is cancel-safe: a frame half read when the client closes is
                // simply dropped with the connection.
                let read = tokio::select! {
                    read = framed::read_frame::<pb::ServerFrame, _>(&mut reader, &mut buf, max) => read,
                    _ = shutdown.wait_for(|stop| *stop) => break "closed by the client".to_string(),
                };
                let f = match read {
                    Ok(Some(f)) => f,
                    Ok(None) => break "closed by the gateway".to_string(),
                    Err(e) => break format!("from the gateway: {e}"),
                };
                if let Some(pb::server_frame::Body::GoAway(g)) = &f.body {
                    // No new requests go here; answers to sent ones may still come.
                    closed.store(true, Ordering::Relaxed);
                    tracing::debug!(reason = %g.reason, "gateway said GoAway");
                    continue;
                }
                if let Some(tx) = lock(&pending).remove(&f.request_id) {
                    let _ = tx.send(Ok(f));
                }
            };
            closed.store(true, Ordering::SeqCst);
            for (_, tx) in lock(&pending).drain() {
                let _ = tx.send(Err(lost(&reason)));
            }
        });
    }
    Ok(Connection {
        frames: frames_tx,
        pending,
        closed,
        shutdown,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_configuration_is_checked_field_by_field() {
        let good = ClientConfig::new("127.0.0.1:7400", "game-secret-0123456789");
        assert!(good.validate().is_ok());
        let refused = |change: &dyn Fn(&mut ClientConfig), field: &str| {
            let mut config = good.clone();
            change(&mut config);
            let message = config.validate().expect_err(field).to_string();
            assert!(message.contains(field), "{field}: {message}");
        };
        refused(&|c| c.address = "no-port".into(), "client.address");
        refused(&|c| c.token.clear(), "client.token");
        refused(&|c| c.client_id = "bad id\n".into(), "client.client_id");
        refused(
            &|c| c.connect_timeout = Duration::ZERO,
            "client.connect_timeout",
        );
        refused(
            &|c| c.request_deadline = Duration::from_secs(3600),
            "client.request_deadline",
        );
        refused(
            &|c| c.backoff_base = Duration::from_secs(2),
            "client.backoff_base",
        );
        refused(&|c| c.max_frame_bytes = 10, "client.max_frame_bytes");
        refused(
            &|c| {
                c.tls = Some(ClientTls {
                    ca_certificates_pem: b"pem".to_vec(),
                    server_name: String::new(),
                })
            },
            "client.tls.server_name",
        );
    }
}
