//! One connection, from its first byte to its close: the Hello (authentication within the
//! handshake timeout, on a connection allowed no more than a small frame until then), then
//! a reader that admits each request against the in-flight cap and the byte budgets, one
//! task per request, and a writer that coalesces answers; and the drain on shutdown.
//!
//! Invariants: a connection holds at most `max_in_flight_per_connection` requests and its
//! byte budget at once; the reader stops reading, never buffers, when either is spent; every
//! answer that was written gave its bytes back.

use std::sync::Arc;
use std::time::Duration;

// Tokio's clock: the handshake, idle and IO timers follow paused time in tests.
use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};

use crate::config::GatewayConfig;
use crate::error::{Code, Error};
use crate::frame::PRE_AUTH_MAX_FRAME_BYTES;
use crate::frame::{self, FrameError};
use crate::framed::{self, WriteBatch};
use crate::model::Limits;
use crate::wire::{self, pb};

use super::budget::{Budgets, Held};
use super::untrusted::{self, Judged, Refusal};
use super::{CloseReason, Gateway, PROTOCOL_VERSION};
use crate::auth::Principal;

use super::requests::handle_request;

pub(super) fn go_away(code: Code, reason: &str) -> pb::ServerFrame {
    pb::ServerFrame {
        request_id: 0,
        body: Some(pb::server_frame::Body::GoAway(pb::GoAway {
            code: wire::code_to_pb(code).into(),
            reason: reason.to_string(),
        })),
    }
}

pub(super) fn request_error(request_id: u64, e: &Error) -> pb::ServerFrame {
    pb::ServerFrame {
        request_id,
        body: Some(pb::server_frame::Body::Error(wire::error_to_pb(e))),
    }
}

/// Why reading a frame stopped.
enum ReadError {
    /// The peer closed the connection (cleanly, or mid-frame).
    Closed,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// A frame began but did not complete within the IO timeout.
    Stalled,
    /// The bytes are not a valid frame.
    Frame(FrameError),
}

/// Reads one whole frame body. Buffer memory grows with the bytes that arrive, in chunks of
/// at most 64 KiB, never with the length a peer claims. With `budgets`, every chunk of the
/// body takes its bytes before it is read, so what a frame holds is what really arrived: a
/// client that claims large frames and stalls holds only what it sent, and only until `io`
/// runs out. Waits up to `idle` for a frame to begin, then up to `io` for the rest of it
/// (waiting for bytes in flight included).
async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
    idle: Duration,
    io: Duration,
    budgets: Option<&Budgets>,
) -> Result<(Bytes, Option<Held>), ReadError> {
    let mut held = budgets.map(Budgets::none);
    let mut began = (!buf.is_empty()).then(Instant::now);
    loop {
        if let Some(body) = frame::take_body(buf, max).map_err(ReadError::Frame)? {
            framed::shrink_read_buffer(buf);
            return Ok((body, held));
        }
        let wanted = framed::next_read(buf);
        if let (Some(budgets), Some(held), Some(at)) = (budgets, held.as_mut(), began) {
            let more = (buf.len() + wanted).saturating_sub(held.bytes());
            tokio::time::timeout_at(at + io, held.grow(budgets, more))
                .await
                .map_err(|_| ReadError::Stalled)?;
        }
        buf.reserve(wanted);
        let read = match began {
            None => tokio::time::timeout(idle, reader.read_buf(buf))
                .await
                .map_err(|_| ReadError::Idle)?,
            Some(at) => tokio::time::timeout_at(at + io, reader.read_buf(buf))
                .await
                .map_err(|_| ReadError::Stalled)?,
        };
        match read {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {
                began.get_or_insert_with(Instant::now);
            }
        }
    }
}

/// One answer on its way to the socket, with the bytes it holds until it is written.
struct Outgoing {
    frame: pb::ServerFrame,
    held: Option<Held>,
}

impl From<pb::ServerFrame> for Outgoing {
    fn from(frame: pb::ServerFrame) -> Outgoing {
        Outgoing { frame, held: None }
    }
}

/// Writes frames from `frames` until it closes, or until a write takes longer than `io`;
/// coalesces whatever is queued into one write. Dropping the receiver on return tells the
/// connection's reader that the connection is over.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut frames: mpsc::Receiver<Outgoing>,
    max: usize,
    io: Duration,
) {
    let mut batch = WriteBatch::new();
    let mut written: Vec<Held> = Vec::new();
    while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        while let Some(Outgoing { frame: f, held }) = next {
            if let Err(e) = batch.push(&f, max) {
                // Budgets keep answers under the frame limit; should one still not fit, the
                // request may have written: say UNKNOWN, never a code that means "nothing
                // applied".
                let error = Error::Unknown {
                    shard: None,
                    reason: format!(
                        "the answer ({e}) cannot be sent; its writes may have applied: send \
                         them again with the same idempotency keys, in smaller batches"
                    ),
                };
                let _ = batch.push(&request_error(f.request_id, &error), max);
            }
            written.extend(held);
            next = if batch.has_room() {
                frames.try_recv().ok()
            } else {
                None
            };
        }
        match tokio::time::timeout(io, batch.write_to(&mut writer)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        // The answers are on the wire: their bytes go back to the budgets.
        written.clear();
    }
    let _ = tokio::time::timeout(io, writer.shutdown()).await;
}

/// Serves one connection to the end; returns why it ended (a metric label). `pre_auth` is
/// the connection's place among those not yet authenticated, given back after the Hello.
pub(super) async fn serve_connection<S>(
    stream: S,
    gateway: &Gateway,
    mut stop: broadcast::Receiver<()>,
    pre_auth: OwnedSemaphorePermit,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let config = &gateway.inner.config;
    let max = config.max_frame_bytes;
    let (tx, rx) = mpsc::channel::<Outgoing>(config.max_in_flight_per_connection + 2);
    let writer_task = tokio::spawn(write_frames(writer, rx, max, config.io_timeout()));
    let mut buf = BytesMut::new();

    let principal = match handshake(&mut reader, &mut buf, gateway, &tx).await {
        Ok(principal) => principal,
        Err(reason) => {
            drop(tx);
            let _ = writer_task.await;
            return reason;
        }
    };
    drop(pre_auth);

    let budgets = Budgets::new(
        config.max_bytes_in_flight_per_connection,
        gateway.inner.bytes_in_flight.clone(),
    );
    let limits = &gateway.inner.limits;
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight_per_connection));
    // Set once the connection is closing and the grace period is over: requests still running
    // are abandoned (their callers see the connection close without an answer, which they
    // must treat as an unknown outcome), so that the connection closes when the docs say.
    let (abandon, abandoned) = tokio::sync::watch::channel(false);
    let reason = loop {
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break CloseReason::Internal,
            },
            _ = stop.recv() => break CloseReason::Shutdown,
            _ = tx.closed() => break CloseReason::WriteFailed,
        };
        let read = tokio::select! {
            read = read_body(&mut reader, &mut buf, max, config.idle_timeout(), config.io_timeout(), Some(&budgets)) => read,
            _ = stop.recv() => break CloseReason::Shutdown,
            _ = tx.closed() => break CloseReason::WriteFailed,
        };
        let (body, held) = match read {
            Err(ReadError::Idle) => {
                if in_flight.available_permits() + 1 < config.max_in_flight_per_connection {
                    // Requests are still running: the connection is not idle.
                    drop(permit);
                    continue;
                }
                let _ = tx
                    .send(go_away(Code::Timeout, "idle for too long").into())
                    .await;
                break CloseReason::Idle;
            }
            Err(ReadError::Stalled) => {
                let _ = tx
                    .send(go_away(Code::Timeout, "a frame did not complete in time").into())
                    .await;
                break CloseReason::Stalled;
            }
            Err(ReadError::Closed) => break CloseReason::ClientClosed,
            Err(ReadError::Frame(e)) => {
                let code = match e {
                    FrameError::TooLarge { .. } => Code::TooLarge,
                    FrameError::Invalid(_) => Code::Invalid,
                };
                close_after_in_flight(&in_flight, config, &tx, go_away(code, &e.to_string())).await;
                break if code == Code::TooLarge {
                    CloseReason::FrameTooLarge
                } else {
                    CloseReason::InvalidFrame
                };
            }
            Ok(read) => read,
        };
        let admitted = admit(body, held, &budgets, limits, config.io_timeout()).await;
        let (frame, held) = match admitted {
            Ok(admitted) => admitted,
            Err(Refusal::Answer { request_id, error }) => {
                gateway
                    .inner
                    .metrics
                    .request("refused", error.code().as_str(), Duration::ZERO);
                let _ = tx.send(request_error(request_id, &error).into()).await;
                continue;
            }
            Err(Refusal::Close(reason)) => {
                close_after_in_flight(&in_flight, config, &tx, go_away(Code::Invalid, &reason))
                    .await;
                break CloseReason::InvalidFrame;
            }
        };
        let gateway = gateway.clone();
        let principal = principal.clone();
        let tx = tx.clone();
        let mut abandoned = abandoned.clone();
        tokio::spawn(async move {
            let metrics = &gateway.inner.metrics;
            metrics.in_flight.inc();
            let mut held = held;
            tokio::select! {
                response = handle_request(&gateway, &principal, frame) => {
                    // The decoded request is gone; the answer keeps only what it takes.
                    held.shrink_to(prost::Message::encoded_len(&response));
                    let _ = tx.send(Outgoing { frame: response, held: Some(held) }).await;
                }
                _ = async { abandoned.wait_for(|abandoned| *abandoned).await.is_ok() } => {}
            }
            metrics.in_flight.dec();
            drop(permit);
        });
    };
    if reason == CloseReason::Shutdown || reason == CloseReason::ClientClosed {
        let _ = tokio::time::timeout(
            config.shutdown_grace(),
            in_flight.acquire_many(config.max_in_flight_per_connection as u32),
        )
        .await;
        if reason == CloseReason::Shutdown {
            let _ = tx
                .send(go_away(Code::Unavailable, "gateway shutting down").into())
                .await;
        }
    }
    let _ = abandon.send(true);
    drop(tx);
    let _ = writer_task.await;
    reason
}

/// Turns a frame's body into a request to run: its shape from the bytes first (counts, the
/// decoded-size bound, what it will hold against the connection's cap), decoding only what
/// passed. `held` covers the body; it grows by what decoding and the answer may take (waiting
/// at most `wait`: a gateway at `gateway.max_bytes_in_flight` answers UNAVAILABLE rather than
/// queue without end) and comes back covering those two.
async fn admit(
    body: Bytes,
    held: Option<Held>,
    budgets: &Budgets,
    limits: &Limits,
    wait: Duration,
) -> Result<(pb::ClientFrame, Held), Refusal> {
    let Judged {
        shape,
        holds,
        with_body,
    } = untrusted::judge(&body, limits, budgets.cap())?;
    let answer = |error| Refusal::Answer {
        request_id: shape.request_id,
        error,
    };
    let mut held = held.unwrap_or_else(|| budgets.none());
    let more = with_body.saturating_sub(held.bytes());
    if tokio::time::timeout(wait, held.grow(budgets, more))
        .await
        .is_err()
    {
        return Err(answer(Error::Unavailable {
            shard: None,
            reason: "the gateway holds gateway.max_bytes_in_flight; nothing was run, try \
                     again later or at another gateway"
                .into(),
        }));
    }
    let frame = untrusted::decode(body)?;
    // The body is decoded and gone.
    held.shrink_to(holds);
    Ok((frame, held))
}

/// Lets the requests already accepted finish (up to the grace period), then says why the
/// connection closes.
async fn close_after_in_flight(
    in_flight: &Semaphore,
    config: &GatewayConfig,
    tx: &mpsc::Sender<Outgoing>,
    goodbye: pb::ServerFrame,
) {
    let _ = tokio::time::timeout(
        config.shutdown_grace(),
        in_flight.acquire_many(config.max_in_flight_per_connection as u32 - 1),
    )
    .await;
    let _ = tx.send(goodbye.into()).await;
}

/// Reads and checks the Hello; answers it. On failure, queues a GoAway and returns why.
/// Before the Hello is accepted a connection may send one frame of at most
/// [`PRE_AUTH_MAX_FRAME_BYTES`].
async fn handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    gateway: &Gateway,
    tx: &mpsc::Sender<Outgoing>,
) -> Result<Principal, CloseReason> {
    let config = &gateway.inner.config;
    let started = Instant::now();
    let metrics = &gateway.inner.metrics;
    let refuse = |code: Code, reason: &str| -> Outgoing {
        metrics.request("hello", code.as_str(), started.elapsed());
        go_away(code, reason).into()
    };
    let timeout = config.handshake_timeout();
    let first = tokio::time::timeout(
        timeout,
        read_body(
            reader,
            buf,
            PRE_AUTH_MAX_FRAME_BYTES,
            timeout,
            timeout,
            None,
        ),
    )
    .await;
    let body = match first {
        Err(_) | Ok(Err(ReadError::Idle | ReadError::Stalled)) => {
            let _ = tx.send(refuse(Code::Timeout, "no Hello in time")).await;
            return Err(CloseReason::HandshakeTimeout);
        }
        Ok(Err(ReadError::Closed)) => return Err(CloseReason::ClientClosed),
        Ok(Err(ReadError::Frame(e))) => {
            let (code, reason) = match e {
                FrameError::TooLarge { length, .. } => (
                    Code::TooLarge,
                    format!(
                        "a frame of {length} bytes before Hello; at most \
                         {PRE_AUTH_MAX_FRAME_BYTES} are accepted until the connection is \
                         authenticated"
                    ),
                ),
                FrameError::Invalid(_) => (Code::Invalid, e.to_string()),
            };
            let _ = tx.send(refuse(code, &reason)).await;
            return Err(CloseReason::InvalidFrame);
        }
        Ok(Ok((body, _))) => body,
    };
    let frame = match frame::decode_body::<pb::ClientFrame>(body) {
        Ok(frame) => frame,
        Err(e) => {
            let _ = tx.send(refuse(Code::Invalid, &e.to_string())).await;
            return Err(CloseReason::InvalidFrame);
        }
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
            return Err(CloseReason::Unauthenticated);
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported; this gateway speaks {PROTOCOL_VERSION}",
            hello.protocol_version
        );
        let _ = tx.send(refuse(Code::Invalid, &reason)).await;
        return Err(CloseReason::BadVersion);
    }
    let Some(principal) = gateway.inner.tokens.authenticate(&hello.token) else {
        tracing::info!(client = %truncate(&hello.client_name, 64), "authentication failed");
        let _ = tx
            .send(refuse(Code::Unauthenticated, "unknown token"))
            .await;
        return Err(CloseReason::Unauthenticated);
    };
    tracing::debug!(token = %principal.name, client = %truncate(&hello.client_name, 64), "authenticated");
    let answer = pb::ServerFrame {
        request_id: frame.request_id,
        body: Some(pb::server_frame::Body::Hello(pb::HelloResult {
            role: wire::role_to_pb(principal.role).into(),
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
    if tx.send(answer.into()).await.is_err() {
        return Err(CloseReason::Internal);
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

#[cfg(test)]
mod tests {
    //! The connection's timers on tokio's paused clock: each fires after exactly its
    //! configured time, with no real waiting. The store is never reached (its connections
    //! open lazily, and these connections never get past reading).

    use super::*;
    use crate::config::Config;
    use tokio::io::DuplexStream;

    const TOKEN: &str = "game-secret-0123456789";

    fn gateway(handshake_ms: u64, idle_ms: u64, io_ms: u64) -> Gateway {
        let toml = format!(
            "[gateway]\nhandshake_timeout_ms = {handshake_ms}\nidle_timeout_ms = {idle_ms}\n\
             io_timeout_ms = {io_ms}\n\
             [[gateway.tokens]]\nname = \"game\"\ntoken = \"{TOKEN}\"\nrole = \"game\"\n\
             [[shards]]\nname = \"a\"\nmaster = \"127.0.0.1:1\"\n"
        );
        let config = Config::from_toml(&toml, []).expect("a valid configuration");
        Gateway::new(&config).expect("a gateway")
    }

    /// Serves the server end of an in-memory connection; returns the client end and the
    /// task that answers why the connection closed and when.
    fn serve(
        gateway: &Gateway,
    ) -> (
        DuplexStream,
        tokio::task::JoinHandle<(CloseReason, Instant)>,
        broadcast::Sender<()>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (stop, stopped) = broadcast::channel(1);
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a permit");
        let gateway = gateway.clone();
        let task = tokio::spawn(async move {
            let reason = serve_connection(server, &gateway, stopped, permit).await;
            (reason, Instant::now())
        });
        (client, task, stop)
    }

    async fn say_hello(client: &mut DuplexStream) {
        let hello = pb::ClientFrame {
            request_id: 1,
            body: Some(pb::client_frame::Body::Hello(pb::Hello {
                protocol_version: PROTOCOL_VERSION,
                token: TOKEN.into(),
                client_name: "timers".into(),
            })),
        };
        let mut out = Vec::new();
        frame::encode(&hello, &mut out, usize::MAX).expect("encodes");
        client.write_all(&out).await.expect("sent");
        let mut buf = BytesMut::new();
        let answer: pb::ServerFrame = framed::read_frame(client, &mut buf, 1 << 20)
            .await
            .expect("an answer")
            .expect("a frame");
        assert!(
            matches!(answer.body, Some(pb::server_frame::Body::Hello(_))),
            "{answer:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_hello_closes_at_the_handshake_timeout() {
        let gateway = gateway(5_000, 300_000, 30_000);
        let started = Instant::now();
        let (_client, task, _stop) = serve(&gateway);
        let (reason, at) = task.await.expect("served");
        assert_eq!(reason, CloseReason::HandshakeTimeout);
        assert_eq!(at - started, Duration::from_millis(5_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_closes_at_the_idle_timeout() {
        let gateway = gateway(5_000, 300_000, 30_000);
        let (mut client, task, _stop) = serve(&gateway);
        say_hello(&mut client).await;
        let quiet_from = Instant::now();
        let (reason, at) = task.await.expect("served");
        assert_eq!(reason, CloseReason::Idle);
        assert_eq!(at - quiet_from, Duration::from_millis(300_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stalls_half_way_closes_at_the_io_timeout() {
        let gateway = gateway(5_000, 300_000, 30_000);
        let (mut client, task, _stop) = serve(&gateway);
        say_hello(&mut client).await;
        // A length prefix announcing 100 bytes, and 10 of them.
        let mut partial = 100u32.to_be_bytes().to_vec();
        partial.extend_from_slice(&[0u8; 10]);
        client.write_all(&partial).await.expect("sent");
        let stalled_from = Instant::now();
        let (reason, at) = task.await.expect("served");
        assert_eq!(reason, CloseReason::Stalled);
        assert_eq!(at - stalled_from, Duration::from_millis(30_000));
    }
}
