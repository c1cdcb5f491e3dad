//! The transaction Lua script and its calling convention: how a [`Transaction`] becomes
//! `EVALSHA` keys and arguments, and how the script's reply becomes a result.
//!
//! Pure: encoding and decoding do no IO, so they are unit-tested without Redis. The script
//! itself (`transaction.lua`) documents its arguments and reply.

use std::sync::LazyLock;

use redis::Value as RedisValue;

use crate::error::Error;
use crate::keys::{self, PlayerKeys, SlotKeys};
use crate::model::{
    Access, Committed, Entry, IdempotencyKey, MultiTransaction, Name, Operation, Participant,
    PlayerId, ReadResult, Transaction, Value, Visibility,
};
use crate::slot::Slot;

/// Index (from 0) of the script's first operation argument when no packed replies come before
/// the operations (every call but a trade's commit); the ones before it are the player,
/// access, idempotency key, window, bounds and the trade's fields.
pub const FIRST_OPERATION: usize = 18;

/// Source of the transaction script: the idempotency window's functions (`window.lua`), then
/// the script itself.
pub const SOURCE: &str = concat!(include_str!("window.lua"), include_str!("transaction.lua"));

/// The script, with its SHA1 computed once.
pub static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SOURCE));

/// Keys and arguments for one `EVALSHA` of the transaction script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The keys the script declares: nine, and a trade's commit three more.
    pub keys: Vec<Vec<u8>>,
    /// The script's arguments.
    pub args: Vec<Vec<u8>>,
}

impl Invocation {
    /// Appends this invocation as `EVALSHA sha 6 keys.. args..` to `pipe`.
    pub fn add_to(&self, pipe: &mut redis::Pipeline) {
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(SCRIPT.get_hash())
            .arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
    }
}

fn vis_arg(v: Visibility) -> &'static [u8] {
    match v {
        Visibility::Public => b"u",
        Visibility::Private => b"r",
    }
}

/// The idempotency window's settings, as the script takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Remembered requests older than this (ms) are forgotten.
    pub age_ms: u64,
    /// Most requests remembered per client and player.
    pub length: usize,
    /// A client without a write to the player for this long (ms) is forgotten.
    pub client_ttl_ms: u64,
    /// Most clients a player keeps windows for; a new client past it is refused.
    pub max_clients: usize,
}

impl Window {
    /// The window `config` sets.
    pub fn of(config: &crate::config::RedisSettings) -> Window {
        Window {
            age_ms: config.idempotency_window_secs.saturating_mul(1000),
            length: config.idempotency_window_requests,
            client_ttl_ms: config.idempotency_ttl_secs.saturating_mul(1000),
            max_clients: config.idempotency_max_clients,
        }
    }
}

/// The bounds the script enforces on one call, and what it keeps besides the player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Whether a write adds the player to its slot's set of players changed since their last
    /// checkpoint (only when the archiver takes checkpoints: otherwise nothing reads the set,
    /// and it would grow with every player ever written).
    pub track_changes: bool,
    /// The idempotency window.
    pub window: Window,
    /// Most bytes the transaction's reads may return (names, values, and
    /// [`ENTRY_OVERHEAD_BYTES`](crate::model::ENTRY_OVERHEAD_BYTES) per entry).
    pub read_budget: usize,
    /// Most bytes of entries a write may leave the player with.
    pub max_player_bytes: usize,
    /// Most entries a write may leave the player with.
    pub max_player_entries: usize,
}

/// Encodes a validated transaction, to run within `bounds`; `slot` is its player's slot
/// ([`keys::player_slot`]), found once by the caller, who routes by it too.
pub fn encode(txn: &Transaction, slot: Slot, bounds: &Bounds) -> Invocation {
    let operations = operation_args(&txn.operations);
    let key = txn.idempotency_key.as_ref().map(|key| {
        let print = fingerprint(
            txn.player.as_str().as_bytes(),
            access_arg(txn.access),
            &operations,
        );
        (key, print)
    });
    encode_call(
        &txn.player,
        slot,
        txn.access,
        key,
        operations,
        bounds,
        Trade::Alone,
    )
}

/// What a participant's prepare call carries besides the participant.
#[derive(Debug, Clone, Copy)]
pub struct Prepare<'a> {
    /// The attempt's id.
    pub attempt: &'a str,
    /// The primary participant.
    pub primary: &'a PlayerId,
    /// How long the intent holds the player, in ms.
    pub lease_ms: u64,
}

/// Encodes the prepare of one participant of a validated multi-player transaction other than
/// its primary; `slot` is the participant's slot, found once per call by the caller.
pub fn encode_prepare(
    participant: &Participant,
    slot: Slot,
    prepare: &Prepare<'_>,
    bounds: &Bounds,
) -> Invocation {
    let operations = operation_args(&participant.operations);
    encode_call(
        &participant.player,
        slot,
        participant.access,
        None,
        operations,
        bounds,
        Trade::Prepare(prepare),
    )
}

/// What the primary's commit call carries besides the primary participant.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The attempt's id.
    pub attempt: &'a str,
    /// The transaction's key.
    pub key: &'a IdempotencyKey,
    /// The transaction's fingerprint ([`multi_fingerprint`]).
    pub fingerprint: &'a str,
    /// Every participant, in order (the primary first).
    pub participants: &'a [PlayerId],
    /// Every other participant's packed reply, in order, as its prepare answered it.
    pub replies: &'a [Vec<u8>],
    /// The commit's deadline, in ms since the Unix epoch by the coordinator's clock: the
    /// primary refuses the commit (`TOO_LATE`) once its own clock is past it (the fence,
    /// `docs/design/trades.md`).
    pub deadline_ms: u64,
}

/// Encodes the commit of a validated multi-player transaction on its primary (`primary`, in
/// `slot`): the primary's operations, the decision and the primary's apply in one call.
pub fn encode_commit(
    primary: &Participant,
    slot: Slot,
    commit: &Commit<'_>,
    bounds: &Bounds,
) -> Invocation {
    let operations = operation_args(&primary.operations);
    let mut invocation = encode_call(
        &primary.player,
        slot,
        primary.access,
        Some((commit.key, commit.fingerprint.to_string())),
        operations,
        bounds,
        Trade::Commit(commit),
    );
    invocation
        .keys
        .push(keys::decision_key(&primary.player, commit.attempt));
    invocation
        .keys
        .push(SlotKeys::new(slot).decisions.into_bytes());
    invocation
}

/// The part a call plays in a multi-player transaction.
#[derive(Clone, Copy)]
enum Trade<'a> {
    /// A transaction on its own.
    Alone,
    Prepare(&'a Prepare<'a>),
    Commit(&'a Commit<'a>),
}

/// Participants as a commit lists them: each `<length>:<player id>`.
pub fn listed(participants: &[PlayerId]) -> String {
    let mut listed = String::new();
    for p in participants {
        listed.push_str(&format!("{}:{}", p.as_str().len(), p.as_str()));
    }
    listed
}

fn access_arg(access: Access) -> &'static [u8] {
    match access {
        Access::Owner => b"o",
        Access::Public => b"p",
    }
}

fn encode_call(
    player: &PlayerId,
    slot: Slot,
    access: Access,
    key: Option<(&IdempotencyKey, String)>,
    operations: Vec<Vec<u8>>,
    bounds: &Bounds,
    trade: Trade<'_>,
) -> Invocation {
    let keys_of = PlayerKeys::new(player);
    let legacy_record = match (&key, trade) {
        (Some((key, _)), Trade::Alone) => keys::legacy_idempotency_key(player, key),
        _ => keys_of.meta.clone(),
    };
    let mut args: Vec<Vec<u8>> = Vec::with_capacity(FIRST_OPERATION + operations.len());
    args.push(player.as_str().as_bytes().to_vec());
    args.push(access_arg(access).to_vec());
    match key {
        Some((key, print)) => {
            args.push(key.client_id().as_bytes().to_vec());
            args.push(key.request_id().to_string().into_bytes());
            args.push(print.into_bytes());
        }
        None => {
            args.push(Vec::new());
            args.push(Vec::new());
            args.push(Vec::new());
        }
    }
    args.push(bounds.window.age_ms.to_string().into_bytes());
    args.push(bounds.window.length.to_string().into_bytes());
    args.push(bounds.window.client_ttl_ms.to_string().into_bytes());
    args.push(bounds.read_budget.to_string().into_bytes());
    args.push(bounds.max_player_bytes.to_string().into_bytes());
    args.push(bounds.max_player_entries.to_string().into_bytes());
    args.push(if bounds.track_changes {
        b"1".to_vec()
    } else {
        b"0".to_vec()
    });
    args.push(bounds.window.max_clients.to_string().into_bytes());
    match trade {
        Trade::Alone => {
            args.extend([
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                b"0".to_vec(),
            ]);
        }
        Trade::Prepare(prepare) => {
            args.push(prepare.attempt.as_bytes().to_vec());
            args.push(b"P".to_vec());
            args.push(prepare.primary.as_str().as_bytes().to_vec());
            args.push(prepare.lease_ms.to_string().into_bytes());
            args.push(b"0".to_vec());
        }
        Trade::Commit(commit) => {
            args.push(commit.attempt.as_bytes().to_vec());
            args.push(b"C".to_vec());
            args.push(listed(commit.participants).into_bytes());
            args.push(commit.deadline_ms.to_string().into_bytes());
            args.push(commit.replies.len().to_string().into_bytes());
            args.extend(commit.replies.iter().cloned());
        }
    }
    args.extend(operations);
    let slot_keys = SlotKeys::new(slot);
    Invocation {
        keys: vec![
            keys_of.meta,
            keys_of.public,
            keys_of.private,
            slot_keys.active.into_bytes(),
            slot_keys.dirty.into_bytes(),
            keys_of.clients,
            legacy_record,
            keys_of.intent,
            slot_keys.intents.into_bytes(),
        ],
        args,
    }
}

/// The fingerprint of a multi-player transaction, by which its key is recognised in the
/// primary's window: SHA-1 over every participant's player, access and operation arguments,
/// length-prefixed, after a marker no transaction on its own starts with.
pub fn multi_fingerprint(txn: &MultiTransaction) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(b"multi");
    for p in &txn.participants {
        let print = fingerprint(
            p.player.as_str().as_bytes(),
            access_arg(p.access),
            &operation_args(&p.operations),
        );
        sha.update(b"|");
        sha.update(print.as_bytes());
    }
    sha.digest().to_string()
}

/// Operations as script arguments.
fn operation_args(operations: &[Operation]) -> Vec<Vec<u8>> {
    let mut args: Vec<Vec<u8>> = Vec::with_capacity(operations.len() * 4);
    let name = |n: &Name| n.as_str().as_bytes().to_vec();
    let int = |v: i64| v.to_string().into_bytes();
    let bound = |v: Option<i64>| v.map(int).unwrap_or_default();
    for op in operations {
        match op {
            Operation::Read { names } => {
                args.push(b"R".to_vec());
                args.push(names.len().to_string().into_bytes());
                args.extend(names.iter().map(name));
            }
            Operation::SetField {
                name: n,
                value,
                visibility,
            } => {
                args.push(b"S".to_vec());
                args.push(name(n));
                args.push(vis_arg(*visibility).to_vec());
                args.push(value.clone());
            }
            Operation::DeleteField { name: n } => {
                args.push(b"D".to_vec());
                args.push(name(n));
            }
            Operation::IncrementCounter {
                name: n,
                delta,
                min,
                max,
                visibility,
            } => {
                args.push(b"I".to_vec());
                args.push(name(n));
                args.push(vis_arg(*visibility).to_vec());
                args.push(int(*delta));
                args.push(bound(*min));
                args.push(bound(*max));
            }
            Operation::DeleteCounter { name: n } => {
                args.push(b"X".to_vec());
                args.push(name(n));
            }
            Operation::CheckVersion { expected } => {
                args.push(b"V".to_vec());
                args.push(expected.to_string().into_bytes());
            }
            Operation::CheckField { name: n, expected } => {
                args.push(b"F".to_vec());
                args.push(name(n));
                match expected {
                    Some(value) => {
                        args.push(b"1".to_vec());
                        args.push(value.clone());
                    }
                    None => {
                        args.push(b"0".to_vec());
                        args.push(Vec::new());
                    }
                }
            }
        }
    }
    args
}

/// The fingerprint a remembered request is recognised by: SHA-1, in hex, over the player,
/// the access and every operation argument, each length-prefixed so that different argument
/// lists never concatenate alike. Computed here rather than in the script, where building
/// and hashing the string cost more Redis time than the rest of the window; the formula is
/// the one the previous version's script used, so its records still compare.
fn fingerprint(player: &[u8], access: &[u8], operations: &[Vec<u8>]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(player.len().to_string().as_bytes());
    sha.update(b":");
    sha.update(player);
    sha.update(b"|");
    sha.update(access);
    for arg in operations {
        sha.update(b"|");
        sha.update(arg.len().to_string().as_bytes());
        sha.update(b":");
        sha.update(arg);
    }
    sha.digest().to_string()
}

fn bad(what: &str) -> Error {
    Error::Internal(format!(
        "unexpected reply from the transaction script: {what}"
    ))
}

fn as_int(v: &RedisValue) -> Result<i64, Error> {
    match v {
        RedisValue::Int(n) => Ok(*n),
        _ => Err(bad("expected an integer")),
    }
}

fn as_bytes(v: &RedisValue) -> Result<&[u8], Error> {
    match v {
        RedisValue::BulkString(b) => Ok(b),
        RedisValue::SimpleString(s) => Ok(s.as_bytes()),
        _ => Err(bad("expected a string")),
    }
}

/// An intent a call met: the attempt holding the player, its primary participant, and
/// whether its lease had passed by the shard's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRef {
    /// The attempt's id.
    pub attempt: String,
    /// The attempt's primary participant (its shard holds the decision).
    pub primary: String,
    /// Whether the lease had passed: then whoever meets the intent resolves it.
    pub expired: bool,
    /// The player's committed version when the intent was met (for logs), when known: a
    /// script's answer carries it, the sweep reads it from the intent.
    pub version: Option<u64>,
}

/// What the script answered a transaction on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or read).
    Done(Committed),
    /// A write to a player holding an intent: nothing applied.
    Locked(IntentRef),
    /// A transaction that wrote nothing, on a player holding an intent: its answer (a read of
    /// the last applied state, or a refusal judged against it), to be returned unless the
    /// intent's decision is a commit still to be applied.
    AnsweredWithIntent(Result<Committed, Error>, IntentRef),
}

/// What a script answered a call of a trade's step on one participant: a prepare, the
/// primary's judge or its commit. A refusal is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TradeReply {
    /// Prepared: the intent is in place, with the participant's result once applied, and
    /// that result as the script packed it (for the primary's window).
    Staged {
        /// The result the participant will have.
        committed: Committed,
        /// The same, packed by the script.
        packed: Vec<u8>,
    },
    /// The primary's judge found the key new: nothing of it applied there
    /// (`multi/judge.lua`).
    New,
    /// Committed, the primary applied with the commit: its result.
    Committed(Committed),
    /// The attempt was decided before the commit script ran: commit (`true`) or abort.
    Decided(bool),
    /// The primary's clock was past the commit's deadline: nothing written.
    TooLate,
    /// Another attempt's intent holds the player.
    Locked(IntentRef),
    /// The key was applied before: every participant's stored result.
    Replay(Vec<Committed>),
}

fn intent_ref(items: &[RedisValue], version: u64) -> Result<IntentRef, Error> {
    let [attempt, primary, expired] = items else {
        return Err(bad("short intent header"));
    };
    Ok(IntentRef {
        attempt: String::from_utf8_lossy(as_bytes(attempt)?).into_owned(),
        primary: String::from_utf8_lossy(as_bytes(primary)?).into_owned(),
        expired: as_int(expired)? != 0,
        version: Some(version),
    })
}

/// The error a status other than OK stands for.
fn status_error(status: &[u8], version: u64, operation_index: u32) -> Error {
    match status {
        b"CONFLICT" => Error::Conflict {
            version,
            operation_index,
        },
        b"OUT_OF_BOUNDS" => Error::OutOfBounds {
            version,
            operation_index,
        },
        b"PLAYER_TOO_LARGE" => Error::PlayerTooLarge {
            version,
            operation_index,
        },
        b"TOO_LARGE_CLIENTS" => Error::TooLarge(
            "the player already keeps idempotency windows for \
             redis.idempotency_max_clients clients; nothing was applied (a client of this \
             player frees its place after redis.idempotency_ttl_secs without writing)"
                .into(),
        ),
        b"TOO_LARGE" => Error::TooLarge(format!(
            "operation {operation_index} read past the transaction's read budget \
             (limits.max_answer_bytes, shared evenly by the request's transactions that \
             read); nothing was applied"
        )),
        b"IDEMPOTENCY_MISMATCH" => Error::IdempotencyMismatch { version },
        b"REQUEST_TOO_OLD" => Error::RequestTooOld { version },
        b"ARCHIVED" => Error::Archived { version },
        // A prepare on a player a transaction on its own waits to write: retried like LOCKED.
        b"WRITER_WAITING" => Error::Locked {
            player: String::new(),
            reason: "a transaction on its own is waiting to write the player".into(),
        },
        b"INVALID" => Error::Invalid(format!("the script refused operation {operation_index}")),
        _ => bad("unknown status"),
    }
}

/// A reply's header (status, version, replayed, failed operation index) and what follows.
struct Header<'a> {
    status: &'a [u8],
    version: u64,
    replayed: bool,
    operation_index: u32,
    rest: &'a [RedisValue],
}

/// Splits a reply into its header and the rest.
fn header(reply: &RedisValue) -> Result<Header<'_>, Error> {
    let items = match reply {
        RedisValue::Array(items) => items.as_slice(),
        _ => return Err(bad("not an array")),
    };
    let [status, version, replayed, failed, rest @ ..] = items else {
        return Err(bad("short header"));
    };
    let version = u64::try_from(as_int(version)?).map_err(|_| bad("negative version"))?;
    let operation_index = u32::try_from(as_int(failed)?).map_err(|_| bad("bad operation index"))?;
    Ok(Header {
        status: as_bytes(status)?,
        version,
        replayed: as_int(replayed)? != 0,
        operation_index,
        rest,
    })
}

/// Decodes the script's reply to `txn`.
pub fn decode(txn: &Transaction, reply: &RedisValue) -> Result<Outcome, Error> {
    let Header {
        status,
        version,
        replayed,
        operation_index,
        rest,
    } = header(reply)?;
    let committed = |rest: &[RedisValue]| -> Result<Committed, Error> {
        Ok(Committed {
            version,
            reads: decode_reads(&txn.operations, rest)?,
            replayed,
        })
    };
    match status {
        b"OK" => Ok(Outcome::Done(committed(rest)?)),
        b"LOCKED" => Ok(Outcome::Locked(intent_ref(rest, version)?)),
        b"OK_INTENT" if rest.len() >= 3 => Ok(Outcome::AnsweredWithIntent(
            Ok(committed(&rest[3..])?),
            intent_ref(&rest[..3], version)?,
        )),
        // A refusal on a player holding an intent names the intent after its header.
        status if rest.len() >= 3 => Ok(Outcome::AnsweredWithIntent(
            Err(status_error(status, version, operation_index)),
            intent_ref(&rest[..3], version)?,
        )),
        status => Err(status_error(status, version, operation_index)),
    }
}

/// Decodes a script's reply to a trade's call on a participant with `operations`.
pub fn decode_trade(
    operations: &[Operation],
    participants: &[Participant],
    reply: &RedisValue,
) -> Result<TradeReply, Error> {
    let Header {
        status,
        version,
        operation_index,
        rest,
        ..
    } = header(reply)?;
    match status {
        b"PREPARED" => {
            let [packed, reads @ ..] = rest else {
                return Err(bad("prepared without its packed reply"));
            };
            Ok(TradeReply::Staged {
                committed: Committed {
                    version,
                    reads: decode_reads(operations, reads)?,
                    replayed: false,
                },
                packed: as_bytes(packed)?.to_vec(),
            })
        }
        b"COMMITTED" => {
            let [_packed, reads @ ..] = rest else {
                return Err(bad("committed without its packed reply"));
            };
            Ok(TradeReply::Committed(Committed {
                version,
                reads: decode_reads(operations, reads)?,
                replayed: false,
            }))
        }
        b"TOO_LATE" => Ok(TradeReply::TooLate),
        b"DECIDED" => match rest {
            [held] => Ok(TradeReply::Decided(as_bytes(held)? == b"C")),
            _ => Err(bad("decided without the decision")),
        },
        b"LOCKED" => Ok(TradeReply::Locked(intent_ref(rest, version)?)),
        b"REPLAY" => {
            if rest.len() != participants.len() {
                return Err(bad("a replay of another number of participants"));
            }
            let mut results = Vec::with_capacity(rest.len());
            for (participant, stored) in participants.iter().zip(rest) {
                let stored = header(stored)?;
                results.push(Committed {
                    version: stored.version,
                    reads: decode_reads(&participant.operations, stored.rest)?,
                    replayed: true,
                });
            }
            Ok(TradeReply::Replay(results))
        }
        status => Err(status_error(status, version, operation_index)),
    }
}

/// The reads after a reply's header: per read, its operation index, its entry count, then
/// (name, tag, value) per entry.
fn decode_reads(operations: &[Operation], rest: &[RedisValue]) -> Result<Vec<ReadResult>, Error> {
    let mut reads = Vec::new();
    let mut rest = rest;
    while let [index, count, tail @ ..] = rest {
        let operation_index = u32::try_from(as_int(index)?).map_err(|_| bad("read index"))?;
        let count = usize::try_from(as_int(count)?).map_err(|_| bad("read count"))?;
        let needed = count.checked_mul(3).ok_or_else(|| bad("read count"))?;
        if tail.len() < needed {
            return Err(bad("truncated read"));
        }
        let mut entries = Vec::with_capacity(count);
        for triple in tail[..needed].chunks_exact(3) {
            let name = String::from_utf8(as_bytes(&triple[0])?.to_vec())
                .ok()
                .and_then(|n| Name::new(n).ok())
                .ok_or_else(|| bad("entry name"))?;
            let (value, visibility) = match as_bytes(&triple[1])? {
                b"fu" => (
                    Value::Bytes(as_bytes(&triple[2])?.to_vec()),
                    Visibility::Public,
                ),
                b"fr" => (
                    Value::Bytes(as_bytes(&triple[2])?.to_vec()),
                    Visibility::Private,
                ),
                b"cu" => (Value::Counter(as_int(&triple[2])?), Visibility::Public),
                b"cr" => (Value::Counter(as_int(&triple[2])?), Visibility::Private),
                _ => return Err(bad("entry tag")),
            };
            entries.push(Entry {
                name,
                visibility,
                value,
            });
        }
        // A read of everything comes back in hash order; sort it bytewise here rather than in
        // Lua, whose string comparison follows the server's locale.
        let read_all = matches!(
            operations.get(operation_index as usize),
            Some(Operation::Read { names }) if names.is_empty()
        );
        if read_all {
            entries.sort_by(|a, b| {
                a.name
                    .cmp(&b.name)
                    .then_with(|| is_counter(a).cmp(&is_counter(b)))
            });
        }
        reads.push(ReadResult {
            operation_index,
            entries,
        });
        rest = &tail[needed..];
    }
    if !rest.is_empty() {
        return Err(bad("trailing items"));
    }
    Ok(reads)
}

fn is_counter(e: &Entry) -> bool {
    matches!(e.value, Value::Counter(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IdempotencyKey, PlayerId};

    fn bulk(s: &str) -> RedisValue {
        RedisValue::BulkString(s.as_bytes().to_vec())
    }

    fn read_all_txn() -> Transaction {
        Transaction::owner(PlayerId::new("p").expect("valid"), None)
            .with(Operation::Read { names: vec![] })
    }

    #[test]
    fn encodes_keys_and_operations() {
        let key = IdempotencyKey::new("c", 9).expect("valid");
        let txn = Transaction::owner(PlayerId::new("p").expect("valid"), Some(key))
            .with(Operation::IncrementCounter {
                name: Name::new("gold").expect("valid"),
                delta: -5,
                min: Some(0),
                max: None,
                visibility: Visibility::Private,
            })
            .with(Operation::CheckField {
                name: Name::new("x").expect("valid"),
                expected: None,
            });
        let bounds = Bounds {
            track_changes: true,
            window: Window {
                age_ms: 1000,
                length: 3,
                client_ttl_ms: 2000,
                max_clients: 5,
            },
            read_budget: 5000,
            max_player_bytes: 600,
            max_player_entries: 7,
        };
        let inv = encode(&txn, keys::player_slot(&txn.player), &bounds);
        assert_eq!(inv.keys.len(), 9);
        assert_eq!(inv.keys[5], b"{p}:clients");
        assert_eq!(inv.keys[6], b"{p}:idem:c:9");
        assert_eq!(inv.keys[7], b"{p}:intent");
        let args: Vec<&[u8]> = inv.args.iter().map(Vec::as_slice).collect();
        assert_eq!(args[FIRST_OPERATION], b"I");
        assert_eq!(
            args,
            vec![
                &b"p"[..],
                b"o",
                b"c",
                b"9",
                fingerprint(b"p", b"o", &inv.args[FIRST_OPERATION..]).as_bytes(),
                b"1000",
                b"3",
                b"2000",
                b"5000",
                b"600",
                b"7",
                b"1",
                b"5",
                b"",
                b"",
                b"",
                b"",
                b"0",
                b"I",
                b"gold",
                b"r",
                b"-5",
                b"0",
                b"",
                b"F",
                b"x",
                b"0",
                b""
            ]
        );
    }

    #[test]
    fn decodes_reads_and_sorts_a_read_of_everything() {
        let reply = RedisValue::Array(vec![
            bulk("OK"),
            RedisValue::Int(4),
            RedisValue::Int(0),
            RedisValue::Int(0),
            RedisValue::Int(0),
            RedisValue::Int(3),
            bulk("b"),
            bulk("fu"),
            bulk("x"),
            bulk("a"),
            bulk("cr"),
            RedisValue::Int(-7),
            bulk("a"),
            bulk("fr"),
            bulk(""),
        ]);
        let Outcome::Done(committed) = decode(&read_all_txn(), &reply).expect("decodes") else {
            panic!("not done");
        };
        assert_eq!(committed.version, 4);
        let entries = &committed.reads[0].entries;
        let names: Vec<(&str, bool)> = entries
            .iter()
            .map(|e| (e.name.as_str(), is_counter(e)))
            .collect();
        assert_eq!(names, vec![("a", false), ("a", true), ("b", false)]);
        assert_eq!(entries[1].value, Value::Counter(-7));
        assert_eq!(entries[1].visibility, Visibility::Private);
    }

    #[test]
    fn failures_map_to_typed_errors() {
        let reply = |status: &str| {
            RedisValue::Array(vec![
                bulk(status),
                RedisValue::Int(3),
                RedisValue::Int(0),
                RedisValue::Int(1),
            ])
        };
        let txn = read_all_txn();
        assert_eq!(
            decode(&txn, &reply("CONFLICT")),
            Err(Error::Conflict {
                version: 3,
                operation_index: 1
            })
        );
        assert!(matches!(
            decode(&txn, &reply("OUT_OF_BOUNDS")),
            Err(Error::OutOfBounds { .. })
        ));
        assert_eq!(
            decode(&txn, &reply("PLAYER_TOO_LARGE")),
            Err(Error::PlayerTooLarge {
                version: 3,
                operation_index: 1
            })
        );
        assert!(matches!(
            decode(&txn, &reply("TOO_LARGE")),
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(
            decode(&txn, &reply("IDEMPOTENCY_MISMATCH")),
            Err(Error::IdempotencyMismatch { version: 3 })
        ));
        assert!(matches!(
            decode(&txn, &reply("REQUEST_TOO_OLD")),
            Err(Error::RequestTooOld { version: 3 })
        ));
    }

    #[test]
    fn intents_met_are_named_in_the_outcome() {
        let txn = read_all_txn();
        let locked = RedisValue::Array(vec![
            bulk("LOCKED"),
            RedisValue::Int(3),
            RedisValue::Int(0),
            RedisValue::Int(0),
            bulk("a1"),
            bulk("prim"),
            RedisValue::Int(1),
        ]);
        let intent = IntentRef {
            attempt: "a1".into(),
            primary: "prim".into(),
            expired: true,
            version: Some(3),
        };
        assert_eq!(decode(&txn, &locked), Ok(Outcome::Locked(intent.clone())));
        let read = RedisValue::Array(vec![
            bulk("OK_INTENT"),
            RedisValue::Int(3),
            RedisValue::Int(0),
            RedisValue::Int(0),
            bulk("a1"),
            bulk("prim"),
            RedisValue::Int(1),
            RedisValue::Int(0),
            RedisValue::Int(0),
        ]);
        let Ok(Outcome::AnsweredWithIntent(Ok(committed), met)) = decode(&txn, &read) else {
            panic!("not a read with an intent");
        };
        assert_eq!((committed.version, met), (3, intent));
        assert_eq!(committed.reads.len(), 1);
    }

    #[test]
    fn malformed_replies_are_internal_errors_not_panics() {
        let txn = read_all_txn();
        let cases = vec![
            RedisValue::Nil,
            RedisValue::Array(vec![]),
            RedisValue::Array(vec![
                bulk("OK"),
                RedisValue::Int(-1),
                RedisValue::Int(0),
                RedisValue::Int(0),
            ]),
            RedisValue::Array(vec![
                bulk("WHAT"),
                RedisValue::Int(1),
                RedisValue::Int(0),
                RedisValue::Int(0),
            ]),
            RedisValue::Array(vec![
                bulk("OK"),
                RedisValue::Int(1),
                RedisValue::Int(0),
                RedisValue::Int(0),
                RedisValue::Int(0),
                RedisValue::Int(i64::MAX),
            ]),
            RedisValue::Array(vec![
                bulk("OK"),
                RedisValue::Int(1),
                RedisValue::Int(0),
                RedisValue::Int(0),
                RedisValue::Int(0),
                RedisValue::Int(1),
                bulk("bad name!"),
                bulk("fu"),
                bulk("v"),
            ]),
        ];
        for reply in cases {
            assert!(
                matches!(decode(&txn, &reply), Err(Error::Internal(_))),
                "{reply:?}"
            );
        }
    }
}
