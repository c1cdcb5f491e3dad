//! The player model and transactions as plain data, with the validation that protobuf cannot
//! express: lengths, character sets, ranges and limits.
//!
//! Pure logic: no IO. Every value that reaches the store has passed through here, so the store
//! and the Lua script may assume names are well-formed and sizes are bounded.

use serde::Deserialize;

use crate::error::Error;

/// Longest player id, in bytes.
pub const MAX_PLAYER_ID_BYTES: usize = 128;
/// Longest field or counter name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest idempotency client id, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 64;
/// Counters stay within +-(2^53 - 1): Redis's Lua numbers are doubles, and every integer up
/// to this magnitude is exact in a double (the same bound as JavaScript's safe integers).
pub const COUNTER_LIMIT: i64 = (1 << 53) - 1;

/// Bytes a read counts for each entry besides its name and value: what the entry costs in
/// an answer (tag, lengths, visibility), so that many tiny entries cannot make an answer larger
/// than its budget says.
pub const ENTRY_OVERHEAD_BYTES: usize = 16;

/// Bytes of an answer a transaction's result may take besides its entries (code, message,
/// version, indexes); messages are cut to fit.
pub const RESULT_OVERHEAD_BYTES: usize = 512;

/// Size and count limits. Those on requests are checked before anything is sent to Redis;
/// those on players and answers by the transaction script. Configurable under `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest value of one field, in bytes. Default 65536.
    pub max_value_bytes: usize,
    /// Most operations in one transaction, and most names one `Read` may list. Default 64,
    /// at most 1000.
    pub max_operations_per_transaction: usize,
    /// Most transactions in one batch. Default 1024.
    pub max_transactions_per_batch: usize,
    /// Largest total payload (names and values) of one transaction, in bytes. Default 1 MiB.
    pub max_transaction_bytes: usize,
    /// Largest total of one player's entries (names and values, public and private), in
    /// bytes. A write that would make the player larger than this fails with
    /// PLAYER_TOO_LARGE and applies nothing; a write that shrinks a player already over it
    /// (after the limit was lowered) is allowed. Default 1048576 (1 MiB).
    pub max_player_bytes: usize,
    /// Most entries (fields and counters) of one player, with the same rule. Default 4096.
    pub max_player_entries: usize,
    /// Most bytes of entries one request may read: names and values, plus
    /// [`ENTRY_OVERHEAD_BYTES`] per entry. A transaction alone may read this much; the
    /// transactions of a batch that read share it evenly. The script stops reading past its
    /// share and the transaction fails with TOO_LARGE, applying nothing. Default 2097152
    /// (2 MiB); at least enough to read the largest allowed player whole.
    pub max_answer_bytes: usize,
    /// Most participants of one multi-player transaction. Default 16, at most 64.
    pub max_participants: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 64 * 1024,
            max_operations_per_transaction: 64,
            max_transactions_per_batch: 1024,
            max_transaction_bytes: 1024 * 1024,
            max_player_bytes: 1024 * 1024,
            max_player_entries: 4096,
            max_answer_bytes: 2 * 1024 * 1024,
            max_participants: 16,
        }
    }
}

impl Limits {
    /// Refuses a batch of more than `max_transactions_per_batch` entries (transactions on one
    /// player and multi-player transactions alike): the one check every path that takes a
    /// batch makes.
    pub fn check_batch(&self, entries: usize) -> Result<(), Error> {
        if entries > self.max_transactions_per_batch {
            return Err(Error::TooLarge(format!(
                "batch has {entries} transactions, more than {}",
                self.max_transactions_per_batch
            )));
        }
        Ok(())
    }

    /// Checks every limit against its range, and that the largest allowed player can be read
    /// whole; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        const MIB: usize = 1024 * 1024;
        // The script unpacks a transaction's writes into one Redis call, and Lua's stack
        // holds about 8000 values: 1000 operations stay well inside it.
        let ranges = [
            ("limits.max_value_bytes", self.max_value_bytes, 1, 64 * MIB),
            (
                "limits.max_operations_per_transaction",
                self.max_operations_per_transaction,
                1,
                1000,
            ),
            (
                "limits.max_transactions_per_batch",
                self.max_transactions_per_batch,
                1,
                100_000,
            ),
            (
                "limits.max_transaction_bytes",
                self.max_transaction_bytes,
                1,
                256 * MIB,
            ),
            (
                "limits.max_player_bytes",
                self.max_player_bytes,
                1,
                256 * MIB,
            ),
            (
                "limits.max_player_entries",
                self.max_player_entries,
                1,
                1_000_000,
            ),
            (
                "limits.max_answer_bytes",
                self.max_answer_bytes,
                1,
                1024 * MIB,
            ),
            ("limits.max_participants", self.max_participants, 2, 64),
        ];
        for (field, value, low, high) in ranges {
            if value < low || value > high {
                return Err(format!("{field} = {value} is outside {low}..={high}"));
            }
        }
        let whole_player = self.whole_player_read_bytes();
        if self.max_answer_bytes < whole_player {
            return Err(format!(
                "limits.max_answer_bytes = {} cannot read a player of limits.max_player_bytes \
                 ({}) and limits.max_player_entries ({}) whole: it must be at least \
                 {whole_player}",
                self.max_answer_bytes, self.max_player_bytes, self.max_player_entries
            ));
        }
        Ok(())
    }

    /// What reading the largest allowed player whole counts against a read budget.
    pub fn whole_player_read_bytes(&self) -> usize {
        self.max_player_bytes
            .saturating_add(self.max_player_entries.saturating_mul(ENTRY_OVERHEAD_BYTES))
    }

    /// The read budget of each transaction that reads, when `reading` transactions of one
    /// request read: [`Limits::max_answer_bytes`] shared evenly.
    pub fn read_budget(&self, reading: usize) -> usize {
        self.max_answer_bytes / reading.max(1)
    }
}

/// A player id: 1..=128 bytes of UTF-8 not starting with `}`, otherwise opaque.
///
/// The first byte may not be `}`: the keys `{<id>}:...` would then have an empty hash tag,
/// Redis would hash each whole key, and one player's keys would fall in different slots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlayerId(String);

impl PlayerId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<PlayerId, Error> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::Invalid("player id is empty".into()));
        }
        if id.len() > MAX_PLAYER_ID_BYTES {
            return Err(Error::Invalid(format!(
                "player id is {} bytes, more than {MAX_PLAYER_ID_BYTES}",
                id.len()
            )));
        }
        if id.starts_with('}') {
            return Err(Error::Invalid(
                "player id starts with '}', which would spread its keys over several slots".into(),
            ));
        }
        Ok(PlayerId(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks that `s` is 1..=`max` bytes of `[A-Za-z0-9_.-]`. Names end up inside Redis keys
/// and hash fields, so a small fixed alphabet keeps the key layout unambiguous.
fn check_token(what: &str, s: &str, max: usize) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::Invalid(format!("{what} is empty")));
    }
    if s.len() > max {
        return Err(Error::Invalid(format!(
            "{what} is {} bytes, more than {max}",
            s.len()
        )));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Error::Invalid(format!(
            "{what} {s:?} contains {bad:?}; allowed are A-Z a-z 0-9 _ . -"
        )));
    }
    Ok(())
}

/// A field or counter name: 1..=64 bytes of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Name, Error> {
        let name = name.into();
        check_token("name", &name, MAX_NAME_BYTES)?;
        Ok(Name(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who may see a field or counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Visibility {
    /// Anyone who reads the player.
    Public,
    /// The owner only.
    Private,
}

/// On whose behalf a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The player's own session: reads everything, may write.
    Owner,
    /// Anyone else: reads public entries and checks the version, nothing more.
    Public,
}

/// Identifies one logical request so that retries apply it at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    client_id: String,
    request_id: u64,
}

impl IdempotencyKey {
    /// Validates `client_id` (1..=64 bytes of `[A-Za-z0-9_.-]`).
    pub fn new(client_id: impl Into<String>, request_id: u64) -> Result<IdempotencyKey, Error> {
        let client_id = client_id.into();
        check_token("client id", &client_id, MAX_CLIENT_ID_BYTES)?;
        Ok(IdempotencyKey {
            client_id,
            request_id,
        })
    }

    /// The same client id with another request id.
    pub fn with_request_id(&self, request_id: u64) -> IdempotencyKey {
        IdempotencyKey {
            client_id: self.client_id.clone(),
            request_id,
        }
    }

    /// The client's id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The request's id, unique per client.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }
}

/// One step of a transaction. Steps run in order against the transaction's own view of the
/// player; nothing is stored unless every step succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Reads the named entries (fields and counters), or everything visible when empty.
    Read {
        /// Names to read.
        names: Vec<Name>,
    },
    /// Sets a bytes field, replacing a same-named field of the other visibility.
    SetField {
        /// Field name.
        name: Name,
        /// New value.
        value: Vec<u8>,
        /// Who may see it.
        visibility: Visibility,
    },
    /// Deletes a bytes field (a no-op when absent).
    DeleteField {
        /// Field name.
        name: Name,
    },
    /// Adds `delta` to a counter (absent counters count as 0). Fails with OUT_OF_BOUNDS,
    /// applying nothing, when the result leaves `[min, max]` or +-[`COUNTER_LIMIT`].
    IncrementCounter {
        /// Counter name.
        name: Name,
        /// Amount to add; may be negative.
        delta: i64,
        /// Lowest allowed result.
        min: Option<i64>,
        /// Highest allowed result.
        max: Option<i64>,
        /// Who may see it; a same-named counter of the other visibility is moved.
        visibility: Visibility,
    },
    /// Deletes a counter (a no-op when absent).
    DeleteCounter {
        /// Counter name.
        name: Name,
    },
    /// Fails with CONFLICT unless the player is at `expected` (0: does not exist yet).
    CheckVersion {
        /// Required version.
        expected: u64,
    },
    /// Fails with CONFLICT unless the field holds `expected` (or is absent, for `None`).
    CheckField {
        /// Field name.
        name: Name,
        /// Required value, or `None` for "absent".
        expected: Option<Vec<u8>>,
    },
}

impl Operation {
    /// True for operations that change stored state.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Operation::SetField { .. }
                | Operation::DeleteField { .. }
                | Operation::IncrementCounter { .. }
                | Operation::DeleteCounter { .. }
        )
    }

    /// Bytes of names and values this operation carries, for the transaction size limit.
    fn payload_bytes(&self) -> usize {
        match self {
            Operation::Read { names } => names.iter().map(|n| n.as_str().len()).sum(),
            Operation::SetField { name, value, .. } => name.as_str().len() + value.len(),
            Operation::CheckField { name, expected } => {
                name.as_str().len() + expected.as_ref().map_or(0, Vec::len)
            }
            Operation::DeleteField { name }
            | Operation::IncrementCounter { name, .. }
            | Operation::DeleteCounter { name } => name.as_str().len(),
            Operation::CheckVersion { .. } => 0,
        }
    }
}

/// All-or-nothing operations on one player, applied by one Lua script in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The player it applies to.
    pub player: PlayerId,
    /// On whose behalf it runs.
    pub access: Access,
    /// Required when any operation writes.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The steps, in order.
    pub operations: Vec<Operation>,
}

impl Transaction {
    /// A transaction made as the player's owner.
    pub fn owner(player: PlayerId, idempotency_key: Option<IdempotencyKey>) -> Transaction {
        Transaction {
            player,
            access: Access::Owner,
            idempotency_key,
            operations: Vec::new(),
        }
    }

    /// Appends an operation (builder style).
    pub fn with(mut self, operation: Operation) -> Transaction {
        self.operations.push(operation);
        self
    }

    /// True when any operation writes.
    pub fn is_write(&self) -> bool {
        self.operations.iter().any(Operation::is_write)
    }

    /// True when any operation reads entries (and so takes a share of the read budget).
    pub fn reads(&self) -> bool {
        self.operations
            .iter()
            .any(|op| matches!(op, Operation::Read { .. }))
    }

    /// Checks everything the types do not: limits, bounds, and what the access mode allows.
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        if self.operations.is_empty() {
            return Err(Error::Invalid("transaction has no operations".into()));
        }
        if self.operations.len() > limits.max_operations_per_transaction {
            return Err(Error::TooLarge(format!(
                "transaction has {} operations, more than {}",
                self.operations.len(),
                limits.max_operations_per_transaction
            )));
        }
        let mut payload = 0usize;
        for (index, op) in self.operations.iter().enumerate() {
            payload = payload.saturating_add(op.payload_bytes());
            validate_operation(index, op, limits)?;
            if self.access == Access::Public
                && !matches!(op, Operation::Read { .. } | Operation::CheckVersion { .. })
            {
                return Err(Error::Forbidden(format!(
                    "operation {index}: public access may only read and check the version"
                )));
            }
        }
        if payload > limits.max_transaction_bytes {
            return Err(Error::TooLarge(format!(
                "transaction carries {payload} bytes, more than {}",
                limits.max_transaction_bytes
            )));
        }
        if self.is_write() && self.idempotency_key.is_none() {
            return Err(Error::Invalid(
                "a transaction that writes needs an idempotency key".into(),
            ));
        }
        Ok(())
    }
}

fn validate_operation(index: usize, op: &Operation, limits: &Limits) -> Result<(), Error> {
    let counter_ok = |v: i64| (-COUNTER_LIMIT..=COUNTER_LIMIT).contains(&v);
    match op {
        Operation::SetField { value, .. } if value.len() > limits.max_value_bytes => {
            Err(Error::TooLarge(format!(
                "operation {index}: value is {} bytes, more than {}",
                value.len(),
                limits.max_value_bytes
            )))
        }
        Operation::CheckField {
            expected: Some(value),
            ..
        } if value.len() > limits.max_value_bytes => Err(Error::TooLarge(format!(
            "operation {index}: expected value is {} bytes, more than {}",
            value.len(),
            limits.max_value_bytes
        ))),
        Operation::Read { names } if names.len() > limits.max_operations_per_transaction => {
            Err(Error::TooLarge(format!(
                "operation {index}: reads {} names, more than {}",
                names.len(),
                limits.max_operations_per_transaction
            )))
        }
        Operation::IncrementCounter {
            delta, min, max, ..
        } => {
            for (what, v) in [("delta", Some(*delta)), ("min", *min), ("max", *max)] {
                if let Some(v) = v {
                    if !counter_ok(v) {
                        return Err(Error::Invalid(format!(
                            "operation {index}: {what} {v} is beyond +-{COUNTER_LIMIT}"
                        )));
                    }
                }
            }
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    return Err(Error::Invalid(format!(
                        "operation {index}: min {lo} is above max {hi}"
                    )));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A bytes field.
    Bytes(Vec<u8>),
    /// A counter.
    Counter(i64),
}

/// One field or counter as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: Name,
    /// Who may see it.
    pub visibility: Visibility,
    /// Its value.
    pub value: Value,
}

/// What one `Read` operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Index of the `Read` in the transaction.
    pub operation_index: u32,
    /// Entries found: for named reads in the order asked (a field before a same-named
    /// counter); for a read of everything, sorted by name, fields before counters.
    pub entries: Vec<Entry>,
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The player's version after the transaction. Transactions that only read leave the
    /// version as it was.
    pub version: u64,
    /// One result per `Read` operation, in order.
    pub reads: Vec<ReadResult>,
    /// True when this is the stored result of an earlier attempt with the same idempotency key.
    pub replayed: bool,
}

/// One player's part of a multi-player transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// The player.
    pub player: PlayerId,
    /// What its reads and checks see: everything (owner) or public entries only, a private
    /// entry then looking absent. Unlike a transaction on its own, writes are allowed under
    /// either: who may write whom is the gateway's role rules' business.
    pub access: Access,
    /// The steps, in order, as a transaction on its own has them.
    pub operations: Vec<Operation>,
}

impl Participant {
    /// A participant using owner access.
    pub fn owner(player: PlayerId) -> Participant {
        Participant {
            player,
            access: Access::Owner,
            operations: Vec::new(),
        }
    }

    /// Appends an operation (builder style).
    pub fn with(mut self, operation: Operation) -> Participant {
        self.operations.push(operation);
        self
    }
}

/// All-or-nothing operations on several players, usually on different shards: a trade, a
/// gift. Every participant's operations apply, or none do (`docs/design/trades.md`). The
/// first participant is the primary: its shard holds the decision, and
/// its idempotency window remembers the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiTransaction {
    /// Required: a retry with the same key applies at most once and answers as the first.
    pub idempotency_key: IdempotencyKey,
    /// 2..=`limits.max_participants` distinct players.
    pub participants: Vec<Participant>,
}

impl MultiTransaction {
    /// A transaction with no participants yet.
    pub fn new(idempotency_key: IdempotencyKey) -> MultiTransaction {
        MultiTransaction {
            idempotency_key,
            participants: Vec::new(),
        }
    }

    /// Appends a participant (builder style).
    pub fn with(mut self, participant: Participant) -> MultiTransaction {
        self.participants.push(participant);
        self
    }

    /// Checks everything the types do not: the number of participants, that no player is
    /// named twice, and each participant's operations as a transaction's (limits, bounds);
    /// the payload limit counts all participants together. Errors about one participant
    /// name it ([`Error::InParticipant`]).
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        let count = self.participants.len();
        if count < 2 {
            return Err(Error::Invalid(format!(
                "a multi-player transaction needs at least 2 participants, not {count}"
            )));
        }
        if count > limits.max_participants {
            return Err(Error::TooLarge(format!(
                "{count} participants, more than limits.max_participants ({})",
                limits.max_participants
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut payload = 0usize;
        for (index, participant) in self.participants.iter().enumerate() {
            let in_participant = |error: Error| Error::InParticipant {
                participant: index as u32,
                error: Box::new(error),
            };
            if !seen.insert(&participant.player) {
                // A refusal of the transaction as a whole (PROTOCOL.md: failed_participant 0),
                // not of one participant.
                return Err(Error::Invalid(format!(
                    "player {:?} is named twice",
                    participant.player.as_str()
                )));
            }
            let operations = &participant.operations;
            if operations.is_empty() {
                return Err(in_participant(Error::Invalid("no operations".into())));
            }
            if operations.len() > limits.max_operations_per_transaction {
                return Err(in_participant(Error::TooLarge(format!(
                    "{} operations, more than {}",
                    operations.len(),
                    limits.max_operations_per_transaction
                ))));
            }
            for (op_index, op) in operations.iter().enumerate() {
                payload = payload.saturating_add(op.payload_bytes());
                validate_operation(op_index, op, limits).map_err(in_participant)?;
            }
        }
        if payload > limits.max_transaction_bytes {
            return Err(Error::TooLarge(format!(
                "the transaction carries {payload} bytes, more than {}",
                limits.max_transaction_bytes
            )));
        }
        Ok(())
    }

    /// True when any participant reads entries (and so takes a share of the read budget).
    pub fn reads(&self) -> bool {
        self.participants.iter().any(|p| {
            p.operations
                .iter()
                .any(|op| matches!(op, Operation::Read { .. }))
        })
    }
}

/// A committed multi-player transaction: one result per participant, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiCommitted {
    /// Each participant's version after the transaction and its reads.
    pub participants: Vec<Committed>,
    /// True when this is the stored result of an earlier attempt with the same key.
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Option<IdempotencyKey> {
        IdempotencyKey::new("client-1", 7).ok()
    }

    fn name(s: &str) -> Name {
        Name::new(s).expect("valid name")
    }

    #[test]
    fn multi_player_transactions_name_2_to_max_distinct_players_with_valid_operations() {
        let limits = Limits::default();
        let gift = |players: &[&str]| {
            let mut txn = MultiTransaction::new(IdempotencyKey::new("c", 1).expect("valid"));
            for p in players {
                txn = txn.with(Participant::owner(PlayerId::new(*p).expect("valid")).with(
                    Operation::IncrementCounter {
                        name: name("gold"),
                        delta: 1,
                        min: None,
                        max: None,
                        visibility: Visibility::Private,
                    },
                ));
            }
            txn
        };
        assert!(gift(&["a", "b"]).validate(&limits).is_ok());
        assert!(matches!(
            gift(&["a"]).validate(&limits),
            Err(Error::Invalid(_))
        ));
        let many: Vec<String> = (0..17).map(|i| format!("p{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            gift(&many).validate(&limits),
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(
            gift(&["a", "b", "a"]).validate(&limits),
            Err(Error::Invalid(_))
        ));
        let mut empty = gift(&["a", "b"]);
        empty.participants[1].operations.clear();
        assert!(matches!(
            empty.validate(&limits),
            Err(Error::InParticipant { participant: 1, ref error }) if matches!(**error, Error::Invalid(_))
        ));
        let mut unbounded = gift(&["a", "b"]);
        unbounded.participants[0].operations[0] = Operation::IncrementCounter {
            name: name("gold"),
            delta: COUNTER_LIMIT + 1,
            min: None,
            max: None,
            visibility: Visibility::Private,
        };
        assert_eq!(
            unbounded.validate(&limits).map_err(|e| e.code()),
            Err(crate::error::Code::Invalid)
        );
        // Public access may write in a multi-player transaction (the roles decide who).
        let mut public = gift(&["a", "b"]);
        public.participants[1].access = Access::Public;
        assert!(public.validate(&limits).is_ok());
    }

    #[test]
    fn player_ids_are_1_to_128_bytes_of_anything_but_a_leading_closing_brace() {
        let invalid = |r: Result<PlayerId, Error>| matches!(r, Err(Error::Invalid(_)));
        assert!(invalid(PlayerId::new("")));
        assert!(invalid(PlayerId::new("}a")));
        assert!(PlayerId::new("a}").is_ok());
        assert!(PlayerId::new("é".repeat(64)).is_ok()); // 128 bytes
        assert!(invalid(PlayerId::new("é".repeat(64) + "x")));
        assert!(PlayerId::new("{weird} id\n\0").is_ok());
    }

    #[test]
    fn names_use_a_small_alphabet() {
        assert!(Name::new("gold.coins-2_x").is_ok());
        for bad in ["", "a:b", "a b", "ü", "a{b}", &"n".repeat(65)] {
            assert!(
                matches!(Name::new(bad), Err(Error::Invalid(_))),
                "{bad:?} should be rejected as INVALID"
            );
        }
        assert!(matches!(
            IdempotencyKey::new("c:1", 1),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn writes_need_an_idempotency_key() {
        let limits = Limits::default();
        let player = PlayerId::new("p").expect("valid id");
        let set = Operation::SetField {
            name: name("a"),
            value: b"1".to_vec(),
            visibility: Visibility::Public,
        };
        let txn = Transaction::owner(player.clone(), None).with(set.clone());
        assert!(matches!(txn.validate(&limits), Err(Error::Invalid(_))));
        let txn = Transaction::owner(player.clone(), key()).with(set);
        assert!(txn.validate(&limits).is_ok());
        let read_only = Transaction::owner(player, None).with(Operation::Read { names: vec![] });
        assert!(read_only.validate(&limits).is_ok());
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_value_bytes: 4,
            max_operations_per_transaction: 2,
            max_transactions_per_batch: 1,
            max_transaction_bytes: 9,
            ..Limits::default()
        };
        let player = PlayerId::new("p").expect("valid id");
        let set = |v: &[u8]| Operation::SetField {
            name: name("a"),
            value: v.to_vec(),
            visibility: Visibility::Private,
        };
        let too_big = Transaction::owner(player.clone(), key()).with(set(b"12345"));
        assert!(matches!(too_big.validate(&limits), Err(Error::TooLarge(_))));
        let too_many = Transaction::owner(player.clone(), key())
            .with(set(b"1"))
            .with(set(b"1"))
            .with(set(b"1"));
        assert!(matches!(
            too_many.validate(&limits),
            Err(Error::TooLarge(_))
        ));
        let empty = Transaction::owner(player.clone(), key());
        assert!(matches!(empty.validate(&limits), Err(Error::Invalid(_))));
        let total = Transaction::owner(player, key())
            .with(set(b"1234"))
            .with(set(b"1234"));
        assert!(matches!(total.validate(&limits), Err(Error::TooLarge(_))));
    }

    #[test]
    fn limits_are_checked_against_their_ranges_and_each_other() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let huge = Limits {
            max_operations_per_transaction: 1001,
            ..Limits::default()
        };
        let message = huge.validate().expect_err("over the range");
        assert!(
            message.contains("limits.max_operations_per_transaction"),
            "{message}"
        );
        let unreadable = Limits {
            max_answer_bytes: Limits::default().whole_player_read_bytes() - 1,
            ..Limits::default()
        };
        let message = unreadable
            .validate()
            .expect_err("a player cannot be read whole");
        assert!(message.contains("limits.max_answer_bytes"), "{message}");
        assert_eq!(Limits::default().read_budget(0), 2 * 1024 * 1024);
        assert_eq!(Limits::default().read_budget(4), 512 * 1024);
    }

    #[test]
    fn counter_arguments_stay_in_the_exact_range() {
        let limits = Limits::default();
        let player = PlayerId::new("p").expect("valid id");
        let incr = |delta, min, max| {
            Transaction::owner(player.clone(), key()).with(Operation::IncrementCounter {
                name: name("gold"),
                delta,
                min,
                max,
                visibility: Visibility::Private,
            })
        };
        assert!(incr(COUNTER_LIMIT, None, None).validate(&limits).is_ok());
        for bad in [
            incr(COUNTER_LIMIT + 1, None, None),
            incr(i64::MIN, None, None),
            incr(1, Some(5), Some(4)),
            incr(1, Some(0), Some(i64::MAX)),
        ] {
            assert!(
                matches!(bad.validate(&limits), Err(Error::Invalid(_))),
                "{bad:?} must be INVALID"
            );
        }
    }

    #[test]
    fn public_access_only_reads() {
        let limits = Limits::default();
        let player = PlayerId::new("p").expect("valid id");
        let mut txn =
            Transaction::owner(player, key()).with(Operation::DeleteField { name: name("a") });
        txn.access = Access::Public;
        assert!(matches!(txn.validate(&limits), Err(Error::Forbidden(_))));
        txn.operations = vec![
            Operation::Read { names: vec![] },
            Operation::CheckVersion { expected: 1 },
        ];
        assert!(txn.validate(&limits).is_ok());
    }
}
