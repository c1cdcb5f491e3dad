//! A proxy in front of the MongoDB-wire server that sees every write command and, on demand,
//! answers them as a replica set does when a write reached its primary but not a majority:
//! the write is applied, and the reply carries a `writeConcernError` (RELIABILITY.md: Redis
//! is cleared only after MongoDB acknowledged with majority).
//!
//! Messages are forwarded whole (MongoDB's wire messages start with their length). A client's
//! `OP_MSG` whose command is `insert` or `update` is remembered by its request id, with the
//! write concern it asked for; while [`WriteConcernFault::fail`] is on, the server's reply to
//! one of them gets a `writeConcernError` added to its body. Everything else passes unchanged.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::proxy::Listening;

/// `OP_MSG`'s op code.
const OP_MSG: i32 = 2013;
/// The largest message MongoDB sends (48 MB), so a corrupt length cannot make it allocate more.
const MAX_MESSAGE: usize = 48_000_000;

#[derive(Default)]
struct Seen {
    /// Write commands waiting for their reply, by request id.
    pending: HashMap<i32, String>,
    /// Every write command's name and the write concern it asked for (`None`: none given).
    writes: Vec<(String, Option<bson::Document>)>,
    /// Replies given a `writeConcernError`.
    failed: usize,
}

/// A proxy to one MongoDB-wire server; see the module's documentation.
pub struct WriteConcernFault {
    listening: Listening,
    fail: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
}

impl WriteConcernFault {
    /// Starts the proxy on a free loopback port, forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> std::io::Result<WriteConcernFault> {
        let fail = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (upstream, f, k) = (upstream.to_string(), fail.clone(), seen.clone());
        let listening = Listening::start(move |client, sockets| {
            let Ok(server) = TcpStream::connect(&upstream) else {
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            sockets.keep(&server);
            let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let (back, fail) = (k.clone(), f.clone());
            thread::spawn(move || replies(server_in, client, &back, &fail));
            requests(client_in, server, &k);
        })?;
        Ok(WriteConcernFault {
            listening,
            fail,
            seen,
        })
    }

    /// A `mongodb://` URI to this proxy.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true",
            self.listening.port()
        )
    }

    /// Whether write replies get a `writeConcernError` from now on.
    pub fn fail(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }

    /// Every write command seen so far: its name and the write concern it asked for.
    pub fn writes(&self) -> Vec<(String, Option<bson::Document>)> {
        self.lock().writes.clone()
    }

    /// How many replies were given a `writeConcernError`.
    pub fn failed(&self) -> usize {
        self.lock().failed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One whole wire message (its length prefix included), or `None` at the end of the stream.
fn read_message(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).ok()?;
    let total = usize::try_from(i32::from_le_bytes(length)).ok()?;
    if !(16..=MAX_MESSAGE).contains(&total) {
        return None;
    }
    let mut message = vec![0u8; total];
    message[..4].copy_from_slice(&length);
    from.read_exact(&mut message[4..]).ok()?;
    Some(message)
}

fn header(message: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([
        message[at],
        message[at + 1],
        message[at + 2],
        message[at + 3],
    ])
}

/// The body (section kind 0) of an `OP_MSG` without a checksum, and where it ends.
fn body(message: &[u8]) -> Option<(bson::Document, usize)> {
    if header(message, 12) != OP_MSG || message.len() < 26 {
        return None;
    }
    let flags = header(message, 16);
    // checksumPresent: the message would have to be signed again; not used by the driver.
    if flags & 1 != 0 || message[20] != 0 {
        return None;
    }
    let start = 21;
    let length = usize::try_from(header(message, start)).ok()?;
    let end = start.checked_add(length)?;
    let document = bson::Document::from_reader(message.get(start..end)?).ok()?;
    Some((document, end))
}

/// Client to server: forwards every message, remembering write commands.
fn requests(mut from: TcpStream, mut to: TcpStream, seen: &Mutex<Seen>) {
    while let Some(message) = read_message(&mut from) {
        if let Some((command, _)) = body(&message) {
            let name = command.keys().next().cloned().unwrap_or_default();
            if name == "insert" || name == "update" {
                let concern = command.get_document("writeConcern").ok().cloned();
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.pending.insert(header(&message, 4), name.clone());
                seen.writes.push((name, concern));
            }
        }
        if to.write_all(&message).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// Server to client: forwards every message, adding a `writeConcernError` to the replies of
/// write commands while `fail` is on.
fn replies(mut from: TcpStream, mut to: TcpStream, seen: &Mutex<Seen>, fail: &AtomicBool) {
    while let Some(mut message) = read_message(&mut from) {
        let write = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .remove(&header(&message, 8))
            .is_some();
        if write && fail.load(Ordering::SeqCst) {
            if let Some(changed) = with_write_concern_error(&message) {
                message = changed;
                seen.lock().unwrap_or_else(|p| p.into_inner()).failed += 1;
            }
        }
        if to.write_all(&message).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// `message` with `writeConcernError` (code 64, `WriteConcernFailed`, as a replica set
/// answers when `wtimeout` passed) added to its body, its length written again.
fn with_write_concern_error(message: &[u8]) -> Option<Vec<u8>> {
    let (mut document, end) = body(message)?;
    document.insert(
        "writeConcernError",
        bson::doc! {
            "code": 64,
            "codeName": "WriteConcernFailed",
            "errmsg": "waiting for replication timed out",
        },
    );
    let mut encoded = Vec::new();
    document.to_writer(&mut encoded).ok()?;
    let mut changed = message[..21].to_vec();
    changed.extend_from_slice(&encoded);
    changed.extend_from_slice(&message[end..]);
    let length = i32::try_from(changed.len()).ok()?;
    changed[..4].copy_from_slice(&length.to_le_bytes());
    Some(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `OP_MSG` of one body.
    fn op_msg(request: i32, response_to: i32, document: &bson::Document) -> Vec<u8> {
        let mut encoded = Vec::new();
        document.to_writer(&mut encoded).expect("encodes");
        let mut message = Vec::new();
        let length = i32::try_from(16 + 4 + 1 + encoded.len()).expect("small");
        for field in [length, request, response_to, OP_MSG, 0] {
            message.extend_from_slice(&field.to_le_bytes());
        }
        message.push(0);
        message.extend_from_slice(&encoded);
        message
    }

    #[test]
    fn a_reply_gets_a_write_concern_error_and_keeps_the_rest() {
        let reply = op_msg(9, 7, &bson::doc! { "n": 2, "ok": 1.0 });
        let changed = with_write_concern_error(&reply).expect("an OP_MSG");
        assert_eq!(header(&changed, 0) as usize, changed.len());
        assert_eq!(header(&changed, 8), 7, "still the reply to request 7");
        let (document, end) = body(&changed).expect("a body");
        assert_eq!(end, changed.len());
        assert_eq!(document.get_i32("n").ok(), Some(2));
        assert_eq!(
            document
                .get_document("writeConcernError")
                .and_then(|e| e.get_i32("code"))
                .ok(),
            Some(64)
        );
    }

    #[test]
    fn what_is_not_a_plain_op_msg_is_left_alone() {
        let mut legacy = op_msg(1, 0, &bson::doc! { "isMaster": 1 });
        legacy[12..16].copy_from_slice(&2004i32.to_le_bytes());
        assert!(body(&legacy).is_none());
        let mut signed = op_msg(1, 0, &bson::doc! { "ping": 1 });
        signed[16] = 1;
        assert!(with_write_concern_error(&signed).is_none());
        assert!(body(&[0u8; 16]).is_none());
    }
}
