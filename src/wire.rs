//! The protobuf contract (`proto/colony/v1/colony.proto`) and its conversion to and from the
//! model.
//!
//! Only this module converts between prost types and the model (transactions and their
//! envelopes, whole-player reads, logins, results, errors, roles): the gateway and the client
//! only build and match frames. Decoding validates everything protobuf cannot express
//! (names, lengths, unspecified enums), so what leaves here is a well-formed model value or a
//! typed error; limits that depend on configuration are checked by
//! [`Transaction::validate`](crate::model::Transaction::validate).

use crate::auth::Role;
use crate::error::{Code, Error};
use crate::model::{
    Access, Committed, Entry, IdempotencyKey, MultiCommitted, MultiTransaction, Name, Operation,
    Participant, PlayerId, ReadResult, Transaction, Value, Visibility,
};

/// The protocol version of the contract in `proto/`, sent in Hello.
pub const PROTOCOL_VERSION: u32 = 1;

/// Generated protobuf types of package `colony.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/colony.v1.rs"));

    /// The contract's `FileDescriptorSet`, encoded: for reflection, e.g. converting frames to
    /// and from the canonical protobuf JSON (the shared test vectors in `proto/testdata/`).
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/colony.v1.descriptors.bin"));
}

fn visibility_from(v: i32, at: &str) -> Result<Visibility, Error> {
    match pb::Visibility::try_from(v) {
        Ok(pb::Visibility::Public) => Ok(Visibility::Public),
        Ok(pb::Visibility::Private) => Ok(Visibility::Private),
        _ => Err(Error::Invalid(format!(
            "{at}: visibility must be PUBLIC or PRIVATE"
        ))),
    }
}

fn visibility_to(v: Visibility) -> pb::Visibility {
    match v {
        Visibility::Public => pb::Visibility::Public,
        Visibility::Private => pb::Visibility::Private,
    }
}

fn name_from(name: String, at: &str) -> Result<Name, Error> {
    Name::new(name).map_err(|e| Error::Invalid(format!("{at}: {e}")))
}

/// A transaction as a caller sends it to the gateway: the domain transaction, plus the player a
/// game server acts for. Acting is the gateway's notion (its roles decide what a game server
/// may do for whom); the store never sees it.
///
/// `T` is a [`Transaction`] (on one player) or a [`MultiTransaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<T = Transaction> {
    /// The player the caller acts for; required for the game role, ignored for the admin role.
    pub acting_player: Option<PlayerId>,
    /// What to run.
    pub transaction: T,
}

impl<T> Envelope<T> {
    /// `transaction`, sent by a game server acting for `player`.
    pub fn acting_for(player: PlayerId, transaction: T) -> Envelope<T> {
        Envelope {
            acting_player: Some(player),
            transaction,
        }
    }
}

impl From<Transaction> for Envelope {
    /// A transaction sent without an acting player (what the admin role sends).
    fn from(transaction: Transaction) -> Envelope {
        Envelope {
            acting_player: None,
            transaction,
        }
    }
}

impl From<MultiTransaction> for Envelope<MultiTransaction> {
    /// A multi-player transaction sent without an acting player (what the admin role sends).
    fn from(transaction: MultiTransaction) -> Envelope<MultiTransaction> {
        Envelope {
            acting_player: None,
            transaction,
        }
    }
}

/// One entry of a batch: a transaction on one player, or a multi-player transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// On one player.
    Single(Envelope),
    /// On several players.
    Multi(Envelope<MultiTransaction>),
}

impl From<Envelope> for Item {
    fn from(envelope: Envelope) -> Item {
        Item::Single(envelope)
    }
}

impl From<Transaction> for Item {
    fn from(transaction: Transaction) -> Item {
        Item::Single(transaction.into())
    }
}

impl From<Envelope<MultiTransaction>> for Item {
    fn from(envelope: Envelope<MultiTransaction>) -> Item {
        Item::Multi(envelope)
    }
}

impl From<MultiTransaction> for Item {
    fn from(transaction: MultiTransaction) -> Item {
        Item::Multi(transaction.into())
    }
}

/// The result of one batch entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Of a transaction on one player.
    Single(Result<Committed, Error>),
    /// Of a multi-player transaction.
    Multi(Result<MultiCommitted, Error>),
}

/// A whole-player read as a caller sends it (`GetPlayer`): whose, with which access, and the
/// player a game server acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerRead {
    /// The player to read.
    pub player: PlayerId,
    /// Everything (owner) or public entries only.
    pub access: Access,
    /// The player the caller acts for (required for the game role).
    pub acting_player: Option<PlayerId>,
}

fn access_from(access: i32) -> Result<Access, Error> {
    match pb::Access::try_from(access) {
        Ok(pb::Access::Owner) => Ok(Access::Owner),
        Ok(pb::Access::Public) => Ok(Access::Public),
        _ => Err(Error::Invalid("access must be OWNER or PUBLIC".into())),
    }
}

fn access_to(access: Access) -> pb::Access {
    match access {
        Access::Owner => pb::Access::Owner,
        Access::Public => pb::Access::Public,
    }
}

/// A player id from the wire; `field` names it in the error.
fn player_from(id: String, field: &str) -> Result<PlayerId, Error> {
    PlayerId::new(id).map_err(|e| Error::Invalid(format!("{field}: {e}")))
}

/// An optional player id from the wire: empty means none.
fn acting_from(id: String) -> Result<Option<PlayerId>, Error> {
    if id.is_empty() {
        Ok(None)
    } else {
        player_from(id, "acting_player_id").map(Some)
    }
}

/// Converts a wire `GetPlayer` to the model, rejecting anything malformed.
pub fn player_read_from_pb(get: pb::GetPlayer) -> Result<PlayerRead, Error> {
    Ok(PlayerRead {
        player: player_from(get.player_id, "player_id")?,
        access: access_from(get.access)?,
        acting_player: acting_from(get.acting_player_id)?,
    })
}

/// Converts a whole-player read to the wire.
pub fn player_read_to_pb(read: &PlayerRead) -> pb::GetPlayer {
    pb::GetPlayer {
        player_id: read.player.as_str().to_string(),
        access: access_to(read.access).into(),
        acting_player_id: read
            .acting_player
            .as_ref()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
    }
}

/// The player a wire `Login` names.
pub fn login_from_pb(login: pb::Login) -> Result<PlayerId, Error> {
    player_from(login.player_id, "player_id")
}

/// A `Login` of `player` for the wire.
pub fn login_to_pb(player: &PlayerId) -> pb::Login {
    pb::Login {
        player_id: player.as_str().to_string(),
    }
}

/// A token's role for the wire (in `HelloResult`).
pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Game => pb::Role::Game,
        Role::Admin => pb::Role::Admin,
    }
}

/// A request-level error for the wire.
pub fn error_to_pb(e: &Error) -> pb::RequestError {
    pb::RequestError {
        code: code_to_pb(e.code()).into(),
        message: message_of(e),
    }
}

/// A request-level error (or a GoAway's code and reason) from the wire.
pub fn error_from_pb(e: pb::RequestError) -> Error {
    result_from_pb(pb::TransactionResult {
        code: e.code,
        message: e.message,
        ..Default::default()
    })
    .err()
    .unwrap_or_else(|| Error::Internal("error reply with code OK".into()))
}

/// Converts wire operations to the model, rejecting anything malformed.
fn operations_from_pb(ops: Vec<pb::Operation>) -> Result<Vec<Operation>, Error> {
    let mut operations = Vec::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        let at = format!("operation {index}");
        use pb::operation::Op;
        let op = match op.op {
            None => return Err(Error::Invalid(format!("{at}: no operation set"))),
            Some(Op::Read(r)) => Operation::Read {
                names: r
                    .names
                    .into_iter()
                    .map(|n| name_from(n, &at))
                    .collect::<Result<_, _>>()?,
            },
            Some(Op::SetField(s)) => Operation::SetField {
                name: name_from(s.name, &at)?,
                value: s.value,
                visibility: visibility_from(s.visibility, &at)?,
            },
            Some(Op::DeleteField(d)) => Operation::DeleteField {
                name: name_from(d.name, &at)?,
            },
            Some(Op::IncrementCounter(i)) => Operation::IncrementCounter {
                name: name_from(i.name, &at)?,
                delta: i.delta,
                min: i.min,
                max: i.max,
                visibility: visibility_from(i.visibility, &at)?,
            },
            Some(Op::DeleteCounter(d)) => Operation::DeleteCounter {
                name: name_from(d.name, &at)?,
            },
            Some(Op::CheckVersion(c)) => Operation::CheckVersion {
                expected: c.expected,
            },
            Some(Op::CheckField(c)) => Operation::CheckField {
                name: name_from(c.name, &at)?,
                expected: c.expected,
            },
        };
        operations.push(op);
    }
    Ok(operations)
}

/// Converts a wire transaction to the model, rejecting anything malformed.
pub fn envelope_from_pb(t: pb::Transaction) -> Result<Envelope, Error> {
    let player = PlayerId::new(t.player_id)?;
    let access = access_from(t.access)?;
    let idempotency_key = t
        .idempotency_key
        .map(|k| IdempotencyKey::new(k.client_id, k.request_id))
        .transpose()?;
    let operations = operations_from_pb(t.operations)?;
    let acting_player = acting_from(t.acting_player_id)?;
    Ok(Envelope {
        acting_player,
        transaction: Transaction {
            player,
            access,
            idempotency_key,
            operations,
        },
    })
}

/// Converts a transaction and its envelope to the wire.
pub fn envelope_to_pb(envelope: &Envelope) -> pb::Transaction {
    let t = &envelope.transaction;
    pb::Transaction {
        player_id: t.player.as_str().to_string(),
        access: access_to(t.access).into(),
        idempotency_key: t.idempotency_key.as_ref().map(key_to_pb),
        operations: operations_to_pb(&t.operations),
        acting_player_id: acting_to(envelope.acting_player.as_ref()),
    }
}

fn key_to_pb(k: &IdempotencyKey) -> pb::IdempotencyKey {
    pb::IdempotencyKey {
        client_id: k.client_id().to_string(),
        request_id: k.request_id(),
    }
}

fn acting_to(acting: Option<&PlayerId>) -> String {
    acting.map(|p| p.as_str().to_string()).unwrap_or_default()
}

/// Converts model operations to the wire.
fn operations_to_pb(operations: &[Operation]) -> Vec<pb::Operation> {
    use pb::operation::Op;
    let name = |n: &Name| n.as_str().to_string();
    operations
        .iter()
        .map(|op| {
            let op = match op {
                Operation::Read { names } => Op::Read(pb::ReadFields {
                    names: names.iter().map(name).collect(),
                }),
                Operation::SetField {
                    name: n,
                    value,
                    visibility,
                } => Op::SetField(pb::SetField {
                    name: name(n),
                    value: value.clone(),
                    visibility: visibility_to(*visibility).into(),
                }),
                Operation::DeleteField { name: n } => {
                    Op::DeleteField(pb::DeleteField { name: name(n) })
                }
                Operation::IncrementCounter {
                    name: n,
                    delta,
                    min,
                    max,
                    visibility,
                } => Op::IncrementCounter(pb::IncrementCounter {
                    name: name(n),
                    delta: *delta,
                    min: *min,
                    max: *max,
                    visibility: visibility_to(*visibility).into(),
                }),
                Operation::DeleteCounter { name: n } => {
                    Op::DeleteCounter(pb::DeleteCounter { name: name(n) })
                }
                Operation::CheckVersion { expected } => Op::CheckVersion(pb::CheckVersion {
                    expected: *expected,
                }),
                Operation::CheckField { name: n, expected } => Op::CheckField(pb::CheckField {
                    name: name(n),
                    expected: expected.clone(),
                }),
            };
            pb::Operation { op: Some(op) }
        })
        .collect()
}

/// Converts a wire multi-player transaction to the model, rejecting anything malformed
/// (limits are checked by [`MultiTransaction::validate`]).
pub fn multi_from_pb(t: pb::MultiTransaction) -> Result<Envelope<MultiTransaction>, Error> {
    let key = t.idempotency_key.ok_or_else(|| {
        Error::Invalid("a multi-player transaction needs an idempotency key".into())
    })?;
    let mut participants = Vec::with_capacity(t.participants.len());
    for (index, p) in t.participants.into_iter().enumerate() {
        let in_participant = |error: Error| Error::InParticipant {
            participant: index as u32,
            error: Box::new(error),
        };
        participants.push(Participant {
            player: player_from(p.player_id, "player_id").map_err(in_participant)?,
            access: access_from(p.access).map_err(in_participant)?,
            operations: operations_from_pb(p.operations).map_err(in_participant)?,
        });
    }
    Ok(Envelope {
        acting_player: acting_from(t.acting_player_id)?,
        transaction: MultiTransaction {
            idempotency_key: IdempotencyKey::new(key.client_id, key.request_id)?,
            participants,
        },
    })
}

/// Converts a multi-player transaction and its envelope to the wire.
pub fn multi_to_pb(envelope: &Envelope<MultiTransaction>) -> pb::MultiTransaction {
    let t = &envelope.transaction;
    pb::MultiTransaction {
        idempotency_key: Some(key_to_pb(&t.idempotency_key)),
        participants: t
            .participants
            .iter()
            .map(|p| pb::Participant {
                player_id: p.player.as_str().to_string(),
                access: access_to(p.access).into(),
                operations: operations_to_pb(&p.operations),
            })
            .collect(),
        acting_player_id: acting_to(envelope.acting_player.as_ref()),
    }
}

/// Converts a batch entry to the wire.
pub fn item_to_pb(item: &Item) -> pb::BatchItem {
    pb::BatchItem {
        item: Some(match item {
            Item::Single(envelope) => pb::batch_item::Item::Transaction(envelope_to_pb(envelope)),
            Item::Multi(envelope) => pb::batch_item::Item::Multi(multi_to_pb(envelope)),
        }),
    }
}

/// Converts a wire batch entry to the model.
pub fn item_from_pb(item: pb::BatchItem) -> Result<Item, Error> {
    match item.item {
        Some(pb::batch_item::Item::Transaction(t)) => envelope_from_pb(t).map(Item::Single),
        Some(pb::batch_item::Item::Multi(t)) => multi_from_pb(t).map(Item::Multi),
        None => Err(Error::Invalid("a batch item holds no transaction".into())),
    }
}

/// Converts a multi-player transaction's outcome to the wire.
pub fn multi_result_to_pb(result: &Result<MultiCommitted, Error>) -> pb::MultiTransactionResult {
    match result {
        Ok(done) => pb::MultiTransactionResult {
            code: pb::Code::Ok.into(),
            message: String::new(),
            participants: done
                .participants
                .iter()
                .map(|c| {
                    let single = result_to_pb(&Ok(c.clone()));
                    pb::ParticipantResult {
                        version: single.version,
                        reads: single.reads,
                    }
                })
                .collect(),
            replayed: done.replayed,
            failed_participant: 0,
            version: 0,
            failed_operation: 0,
        },
        Err(Error::InParticipant { participant, error }) => {
            let inner = result_to_pb(&Err((**error).clone()));
            pb::MultiTransactionResult {
                code: inner.code,
                message: message_of(&Error::InParticipant {
                    participant: *participant,
                    error: error.clone(),
                }),
                participants: Vec::new(),
                replayed: false,
                failed_participant: participant.saturating_add(1),
                version: inner.version,
                failed_operation: inner.failed_operation,
            }
        }
        Err(e) => pb::MultiTransactionResult {
            code: code_to_pb(e.code()).into(),
            message: message_of(e),
            participants: Vec::new(),
            replayed: false,
            failed_participant: 0,
            version: 0,
            failed_operation: 0,
        },
    }
}

/// Converts a wire multi-player result back to the model (for clients).
pub fn multi_result_from_pb(r: pb::MultiTransactionResult) -> Result<MultiCommitted, Error> {
    if r.code == i32::from(pb::Code::Ok) {
        let participants = r
            .participants
            .into_iter()
            .map(|p| {
                result_from_pb(pb::TransactionResult {
                    code: pb::Code::Ok.into(),
                    version: p.version,
                    reads: p.reads,
                    replayed: r.replayed,
                    ..Default::default()
                })
            })
            .collect::<Result<_, Error>>()?;
        return Ok(MultiCommitted {
            participants,
            replayed: r.replayed,
        });
    }
    let error = result_from_pb(pb::TransactionResult {
        code: r.code,
        message: r.message,
        version: r.version,
        failed_operation: r.failed_operation,
        ..Default::default()
    })
    .err()
    .unwrap_or_else(|| Error::Internal("an error result with code OK".into()));
    match r.failed_participant.checked_sub(1) {
        Some(participant) => Err(Error::InParticipant {
            participant,
            error: Box::new(error),
        }),
        None => Err(error),
    }
}

/// Converts a batch entry's result to the wire.
pub fn item_result_to_pb(result: &ItemResult) -> pb::BatchItemResult {
    pb::BatchItemResult {
        item: Some(match result {
            ItemResult::Single(r) => pb::batch_item_result::Item::Transaction(result_to_pb(r)),
            ItemResult::Multi(r) => pb::batch_item_result::Item::Multi(multi_result_to_pb(r)),
        }),
    }
}

/// Converts a wire batch entry's result back to the model (for clients).
pub fn item_result_from_pb(result: pb::BatchItemResult) -> ItemResult {
    match result.item {
        Some(pb::batch_item_result::Item::Transaction(r)) => ItemResult::Single(result_from_pb(r)),
        Some(pb::batch_item_result::Item::Multi(r)) => ItemResult::Multi(multi_result_from_pb(r)),
        None => ItemResult::Single(Err(Error::Internal("an empty batch item result".into()))),
    }
}

/// The wire code for a model code.
pub fn code_to_pb(code: Code) -> pb::Code {
    match code {
        Code::Ok => pb::Code::Ok,
        Code::Conflict => pb::Code::Conflict,
        Code::NotFound => pb::Code::NotFound,
        Code::OutOfBounds => pb::Code::OutOfBounds,
        Code::PlayerTooLarge => pb::Code::PlayerTooLarge,
        Code::Invalid => pb::Code::Invalid,
        Code::Unauthenticated => pb::Code::Unauthenticated,
        Code::Forbidden => pb::Code::Forbidden,
        Code::TooLarge => pb::Code::TooLarge,
        Code::Unavailable => pb::Code::Unavailable,
        Code::Timeout => pb::Code::Timeout,
        Code::Unknown => pb::Code::Unknown,
        Code::IdempotencyMismatch => pb::Code::IdempotencyMismatch,
        Code::RequestTooOld => pb::Code::RequestTooOld,
        Code::Locked => pb::Code::Locked,
        Code::Internal => pb::Code::Internal,
    }
}

fn entry_to_pb(e: &Entry) -> pb::Entry {
    pb::Entry {
        name: e.name.as_str().to_string(),
        visibility: visibility_to(e.visibility).into(),
        value: Some(match &e.value {
            Value::Bytes(b) => pb::entry::Value::Bytes(b.clone()),
            Value::Counter(c) => pb::entry::Value::Counter(*c),
        }),
    }
}

/// Longest message a result or error carries, in bytes: longer ones are cut (at a character
/// boundary), so what a result costs in an answer stays within
/// [`RESULT_OVERHEAD_BYTES`](crate::model::RESULT_OVERHEAD_BYTES).
pub const MAX_MESSAGE_BYTES: usize = 256;

/// `e`'s message for the wire, cut to [`MAX_MESSAGE_BYTES`].
pub fn message_of(e: &Error) -> String {
    let mut message = e.to_string();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// Converts one transaction's outcome to the wire.
pub fn result_to_pb(result: &Result<Committed, Error>) -> pb::TransactionResult {
    match result {
        Ok(c) => pb::TransactionResult {
            code: pb::Code::Ok.into(),
            message: String::new(),
            version: c.version,
            reads: c
                .reads
                .iter()
                .map(|r| pb::ReadResult {
                    operation_index: r.operation_index,
                    entries: r.entries.iter().map(entry_to_pb).collect(),
                })
                .collect(),
            replayed: c.replayed,
            failed_operation: 0,
        },
        Err(e) => {
            let (version, failed_operation) = match e {
                Error::Conflict {
                    version,
                    operation_index,
                }
                | Error::OutOfBounds {
                    version,
                    operation_index,
                }
                | Error::PlayerTooLarge {
                    version,
                    operation_index,
                } => (*version, *operation_index),
                Error::IdempotencyMismatch { version } => (*version, 0),
                Error::RequestTooOld { version } => (*version, 0),
                _ => (0, 0),
            };
            pb::TransactionResult {
                code: code_to_pb(e.code()).into(),
                message: message_of(e),
                version,
                reads: Vec::new(),
                replayed: false,
                failed_operation,
            }
        }
    }
}

fn entry_from_pb(e: pb::Entry) -> Result<Entry, Error> {
    Ok(Entry {
        name: name_from(e.name, "entry")?,
        visibility: visibility_from(e.visibility, "entry")?,
        value: match e.value {
            Some(pb::entry::Value::Bytes(b)) => Value::Bytes(b),
            Some(pb::entry::Value::Counter(c)) => Value::Counter(c),
            None => return Err(Error::Invalid("entry without a value".into())),
        },
    })
}

/// Converts a wire result back to the model (for clients). Error codes become [`Error`]s,
/// carrying the message for codes that have no structured fields.
pub fn result_from_pb(r: pb::TransactionResult) -> Result<Committed, Error> {
    let version = r.version;
    let operation_index = r.failed_operation;
    let message = r.message;
    match pb::Code::try_from(r.code) {
        Ok(pb::Code::Ok) => Ok(Committed {
            version,
            reads: r
                .reads
                .into_iter()
                .map(|rr| {
                    Ok(ReadResult {
                        operation_index: rr.operation_index,
                        entries: rr
                            .entries
                            .into_iter()
                            .map(entry_from_pb)
                            .collect::<Result<_, Error>>()?,
                    })
                })
                .collect::<Result<_, Error>>()?,
            replayed: r.replayed,
        }),
        Ok(pb::Code::Conflict) => Err(Error::Conflict {
            version,
            operation_index,
        }),
        Ok(pb::Code::OutOfBounds) => Err(Error::OutOfBounds {
            version,
            operation_index,
        }),
        Ok(pb::Code::PlayerTooLarge) => Err(Error::PlayerTooLarge {
            version,
            operation_index,
        }),
        Ok(pb::Code::IdempotencyMismatch) => Err(Error::IdempotencyMismatch { version }),
        Ok(pb::Code::RequestTooOld) => Err(Error::RequestTooOld { version }),
        Ok(pb::Code::NotFound) => Err(Error::NotFound),
        Ok(pb::Code::Invalid) => Err(Error::Invalid(message)),
        Ok(pb::Code::TooLarge) => Err(Error::TooLarge(message)),
        Ok(pb::Code::Forbidden) => Err(Error::Forbidden(message)),
        Ok(pb::Code::Unauthenticated) => Err(Error::Unauthenticated(message)),
        Ok(pb::Code::Unavailable) => Err(Error::Unavailable {
            shard: None,
            reason: message,
        }),
        Ok(pb::Code::Timeout) => Err(Error::Timeout { shard: None }),
        Ok(pb::Code::Unknown) => Err(Error::Unknown {
            shard: None,
            reason: message,
        }),
        Ok(pb::Code::Locked) => Err(Error::Locked {
            player: String::new(),
            reason: message,
        }),
        Ok(pb::Code::Internal) | Err(_) => Err(Error::Internal(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> Envelope {
        let name = |s: &str| Name::new(s).expect("valid");
        let transaction = Transaction {
            player: PlayerId::new("p-1").expect("valid"),
            access: Access::Owner,
            idempotency_key: Some(IdempotencyKey::new("c", u64::MAX).expect("valid")),
            operations: vec![
                Operation::Read {
                    names: vec![name("a")],
                },
                Operation::SetField {
                    name: name("a"),
                    value: vec![0, 255],
                    visibility: Visibility::Private,
                },
                Operation::DeleteField { name: name("b") },
                Operation::IncrementCounter {
                    name: name("gold"),
                    delta: -3,
                    min: Some(0),
                    max: None,
                    visibility: Visibility::Public,
                },
                Operation::DeleteCounter { name: name("x") },
                Operation::CheckVersion { expected: 9 },
                Operation::CheckField {
                    name: name("a"),
                    expected: None,
                },
            ],
        };
        Envelope::acting_for(PlayerId::new("p-2").expect("valid"), transaction)
    }

    #[test]
    fn transactions_round_trip_through_bytes() {
        let txn = sample();
        let bytes = envelope_to_pb(&txn).encode_to_vec();
        let decoded = pb::Transaction::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(envelope_from_pb(decoded).expect("valid"), txn);
    }

    #[test]
    fn unspecified_and_malformed_fields_are_invalid() {
        let mut t = envelope_to_pb(&sample());
        t.access = 0;
        assert!(matches!(envelope_from_pb(t), Err(Error::Invalid(_))));

        let mut t = envelope_to_pb(&sample());
        t.operations.push(pb::Operation { op: None });
        assert!(matches!(envelope_from_pb(t), Err(Error::Invalid(_))));

        let mut t = envelope_to_pb(&sample());
        if let Some(pb::operation::Op::SetField(s)) = &mut t.operations[1].op {
            s.visibility = 0;
        }
        assert!(matches!(envelope_from_pb(t), Err(Error::Invalid(_))));

        let mut t = envelope_to_pb(&sample());
        t.player_id = String::new();
        assert!(matches!(envelope_from_pb(t), Err(Error::Invalid(_))));

        let mut t = envelope_to_pb(&sample());
        if let Some(pb::operation::Op::Read(r)) = &mut t.operations[0].op {
            r.names.push("bad name".into());
        }
        assert!(matches!(envelope_from_pb(t), Err(Error::Invalid(_))));

        let mut t = envelope_to_pb(&sample());
        t.access = 77;
        assert!(matches!(envelope_from_pb(t), Err(Error::Invalid(_))));

        let mut t = envelope_to_pb(&sample());
        t.acting_player_id = "}p".into();
        assert!(matches!(envelope_from_pb(t), Err(Error::Invalid(_))));
    }

    #[test]
    fn player_reads_and_logins_round_trip_and_reject_what_is_malformed() {
        let read = PlayerRead {
            player: PlayerId::new("p-1").expect("valid"),
            access: Access::Public,
            acting_player: Some(PlayerId::new("p-2").expect("valid")),
        };
        let bytes = player_read_to_pb(&read).encode_to_vec();
        let decoded = pb::GetPlayer::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(player_read_from_pb(decoded).expect("valid"), read);

        let mut get = player_read_to_pb(&read);
        get.access = 0;
        assert!(matches!(player_read_from_pb(get), Err(Error::Invalid(m)) if m.contains("access")));
        let mut get = player_read_to_pb(&read);
        get.player_id = String::new();
        assert!(
            matches!(player_read_from_pb(get), Err(Error::Invalid(m)) if m.contains("player_id"))
        );
        let mut get = player_read_to_pb(&read);
        get.acting_player_id = "}x".into();
        assert!(
            matches!(player_read_from_pb(get), Err(Error::Invalid(m)) if m.contains("acting_player_id"))
        );

        let player = PlayerId::new("p-3").expect("valid");
        assert_eq!(login_from_pb(login_to_pb(&player)).expect("valid"), player);
        assert!(matches!(
            login_from_pb(pb::Login::default()),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn request_errors_round_trip_by_code() {
        for e in [
            Error::Forbidden("no".into()),
            Error::Unauthenticated("who".into()),
            Error::TooLarge("big".into()),
            Error::NotFound,
        ] {
            let back = error_from_pb(error_to_pb(&e));
            assert_eq!(back.code(), e.code(), "{e:?} came back as {back:?}");
        }
    }

    #[test]
    fn an_empty_acting_player_means_none() {
        let envelope = Envelope::from(sample().transaction);
        let t = envelope_to_pb(&envelope);
        assert_eq!(t.acting_player_id, "");
        assert_eq!(envelope_from_pb(t).expect("valid"), envelope);
    }

    #[test]
    fn results_round_trip() {
        let ok: Result<Committed, Error> = Ok(Committed {
            version: 5,
            reads: vec![ReadResult {
                operation_index: 0,
                entries: vec![Entry {
                    name: Name::new("gold").expect("valid"),
                    visibility: Visibility::Private,
                    value: Value::Counter(-4),
                }],
            }],
            replayed: true,
        });
        assert_eq!(result_from_pb(result_to_pb(&ok)), ok);
        let conflict: Result<Committed, Error> = Err(Error::Conflict {
            version: 3,
            operation_index: 2,
        });
        assert_eq!(result_from_pb(result_to_pb(&conflict)), conflict);
    }

    #[test]
    fn garbage_bytes_do_not_decode_into_a_transaction() {
        for bytes in [
            &b"\xff\xff\xff\xff"[..],
            b"\x0a\x05ab",
            b"\x22\x80\x80\x80\x80\x10",
        ] {
            let decoded = pb::Transaction::decode(bytes);
            assert!(decoded.is_err() || envelope_from_pb(decoded.expect("checked")).is_err());
        }
    }
}
