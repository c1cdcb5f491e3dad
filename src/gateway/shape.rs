//! The shape of a `ClientFrame`, read from its protobuf bytes before it is decoded: how many
//! transactions, operations and names it holds, and how much memory decoding it would take.
//!
//! Decoding protobuf amplifies: an empty `Operation` is two bytes on the wire and a structure
//! of about a hundred bytes in memory, so a 4 MiB frame of them would decode into hundreds of
//! MiB before any limit is looked at. The gateway therefore walks the frame's bytes first
//! (no allocation), refuses a frame over the count limits or whose decoded size would pass
//! [`DECODE_FACTOR`] times its length plus [`DECODE_SLACK_BYTES`], and decodes only what
//! passed. The walk follows the wire format only as far as the counted fields; everything
//! else is skipped by its length, as the decoder would.
//!
//! Pure: bytes in, numbers out. Fuzzed through [`super::untrusted::inspect`].

use std::mem::size_of;

use crate::error::Error;
use crate::model::{Limits, RESULT_OVERHEAD_BYTES};
use crate::wire::pb;

/// Decoding a frame that passed [`check`] holds at most this many times the frame's length...
pub const DECODE_FACTOR: usize = 32;
/// ...plus this many bytes.
pub const DECODE_SLACK_BYTES: usize = 256 * 1024;

/// What [`scan`] found in one frame's body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The frame's `request_id` (the last one, as protobuf's "last value wins").
    pub request_id: u64,
    /// The field number of its body (2 hello, 3 batch, 4 get_player, 5 login, 6 ping), the
    /// last one seen; 0 when it has none.
    pub body: u64,
    /// `ReadFields` operations in it.
    pub reads: usize,
    /// Transactions in its batch (summed over repeated `batch` fields, which protobuf merges):
    /// its `transactions` and its `items`, a multi-player transaction counting as one.
    pub transactions: usize,
    /// Participants of its multi-player transactions, all together.
    pub participants: usize,
    /// Most participants in one multi-player transaction.
    pub max_participants: usize,
    /// Most operations in one transaction.
    pub max_operations: usize,
    /// Most names in one `ReadFields`.
    pub max_names: usize,
    /// An upper estimate of the memory decoding takes, in bytes: every structure at its size,
    /// every repeated field at twice its elements (vectors grow by doubling), every string and
    /// bytes field at its length.
    pub decoded_bytes: usize,
}

impl Shape {
    /// The most the answer to this frame can take: a result's overhead per transaction, and
    /// the request's whole read budget when anything in it reads.
    pub fn answer_bytes(&self, limits: &Limits) -> usize {
        let results = RESULT_OVERHEAD_BYTES.saturating_mul(
            self.transactions
                .saturating_add(self.participants)
                .saturating_add(1),
        );
        let reads_player = matches!(self.body, 4 | 5) || self.reads > 0;
        if reads_player {
            results.saturating_add(limits.max_answer_bytes)
        } else {
            results
        }
    }

    /// Refuses a frame whose counts are over `limits`, or whose decoding would amplify past
    /// [`DECODE_FACTOR`]; `body_len` is the length of the frame's body.
    pub fn check(&self, body_len: usize, limits: &Limits) -> Result<(), Error> {
        limits.check_batch(self.transactions)?;
        // One multi-player transaction over `limits.max_participants` is refused on its own
        // (TOO_LARGE in its result, by `MultiTransaction::validate`): one entry's failure
        // never affects another's. The frame as a whole is refused only past what a full
        // batch of the largest transactions could carry.
        let participants_allowed = limits
            .max_transactions_per_batch
            .saturating_mul(limits.max_participants);
        if self.participants > participants_allowed {
            return Err(Error::TooLarge(format!(
                "the batch's multi-player transactions have {} participants, more than {}",
                self.participants, participants_allowed
            )));
        }
        if self.max_operations > limits.max_operations_per_transaction {
            return Err(Error::TooLarge(format!(
                "a transaction has {} operations, more than {}",
                self.max_operations, limits.max_operations_per_transaction
            )));
        }
        if self.max_names > limits.max_operations_per_transaction {
            return Err(Error::TooLarge(format!(
                "a read lists {} names, more than {}",
                self.max_names, limits.max_operations_per_transaction
            )));
        }
        let allowed = body_len
            .saturating_mul(DECODE_FACTOR)
            .saturating_add(DECODE_SLACK_BYTES);
        if self.decoded_bytes > allowed {
            return Err(Error::TooLarge(format!(
                "a frame of {body_len} bytes would decode into about {} bytes, more than \
                 {DECODE_FACTOR} times its length",
                self.decoded_bytes
            )));
        }
        Ok(())
    }
}

/// Why a frame's bytes are not protobuf at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame does not decode: {0}")]
pub struct Malformed(&'static str);

/// The messages whose fields are counted; everything else is skipped by length.
#[derive(Clone, Copy)]
enum Kind {
    ClientFrame,
    Batch,
    BatchItem,
    Transaction,
    MultiTransaction,
    Participant,
    Operation,
    ReadFields,
}

/// Walks `body`, the bytes of one `ClientFrame`.
pub fn scan(body: &[u8]) -> Result<Shape, Malformed> {
    let mut shape = Shape {
        decoded_bytes: size_of::<pb::ClientFrame>(),
        ..Shape::default()
    };
    walk(body, Kind::ClientFrame, &mut shape)?;
    Ok(shape)
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(Malformed("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed("varint longer than ten bytes"))
}

/// Walks one message of `kind`; returns the count of its counted repeated field.
fn walk(bytes: &[u8], kind: Kind, shape: &mut Shape) -> Result<usize, Malformed> {
    let mut at = 0;
    let mut count = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let field = key >> 3;
        if field == 0 {
            return Err(Malformed("field number 0"));
        }
        match key & 7 {
            0 => {
                let value = varint(bytes, &mut at)?;
                if matches!(kind, Kind::ClientFrame) && field == 1 {
                    shape.request_id = value;
                }
            }
            1 => at = skip(bytes, at, 8)?,
            5 => at = skip(bytes, at, 4)?,
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?)
                    .map_err(|_| Malformed("length too large"))?;
                let end = skip(bytes, at, len)?;
                let inner = &bytes[at..end];
                at = end;
                let add = |shape: &mut Shape, n: usize| {
                    shape.decoded_bytes = shape.decoded_bytes.saturating_add(n);
                };
                if matches!(kind, Kind::ClientFrame) && (2..=6).contains(&field) {
                    shape.body = field;
                }
                match (kind, field) {
                    (Kind::ClientFrame, 3) => {
                        shape.transactions += walk(inner, Kind::Batch, shape)?;
                    }
                    (Kind::Batch, 1) | (Kind::BatchItem, 1) => {
                        add(shape, 2 * size_of::<pb::Transaction>());
                        let operations = walk(inner, Kind::Transaction, shape)?;
                        shape.max_operations = shape.max_operations.max(operations);
                        count += 1;
                    }
                    (Kind::Batch, 2) => {
                        add(shape, 2 * size_of::<pb::BatchItem>());
                        // An item holding both kinds (a repeated oneof) counts both.
                        walk(inner, Kind::BatchItem, shape)?;
                        count += 1;
                    }
                    (Kind::BatchItem, 2) => {
                        add(shape, size_of::<pb::MultiTransaction>());
                        let participants = walk(inner, Kind::MultiTransaction, shape)?;
                        shape.participants = shape.participants.saturating_add(participants);
                        shape.max_participants = shape.max_participants.max(participants);
                    }
                    (Kind::MultiTransaction, 2) => {
                        add(shape, 2 * size_of::<pb::Participant>());
                        let operations = walk(inner, Kind::Participant, shape)?;
                        shape.max_operations = shape.max_operations.max(operations);
                        count += 1;
                    }
                    (Kind::Participant, 3) => {
                        add(shape, 2 * size_of::<pb::Operation>());
                        walk(inner, Kind::Operation, shape)?;
                        count += 1;
                    }
                    (Kind::Transaction, 4) => {
                        add(shape, 2 * size_of::<pb::Operation>());
                        walk(inner, Kind::Operation, shape)?;
                        count += 1;
                    }
                    (Kind::Operation, 1) => {
                        shape.reads += 1;
                        let names = walk(inner, Kind::ReadFields, shape)?;
                        shape.max_names = shape.max_names.max(names);
                    }
                    (Kind::ReadFields, 1) => {
                        add(shape, 2 * size_of::<String>() + len);
                        count += 1;
                    }
                    // Strings, bytes, small messages and unknown fields: at most their length.
                    _ => add(shape, len),
                }
            }
            _ => return Err(Malformed("unsupported wire type")),
        }
    }
    Ok(count)
}

fn skip(bytes: &[u8], at: usize, len: usize) -> Result<usize, Malformed> {
    let end = at.checked_add(len).ok_or(Malformed("length too large"))?;
    if end > bytes.len() {
        return Err(Malformed("field runs past the end"));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn batch(transactions: Vec<pb::Transaction>) -> Vec<u8> {
        pb::ClientFrame {
            request_id: 77,
            body: Some(pb::client_frame::Body::Batch(pb::Batch {
                transactions,
                items: Vec::new(),
            })),
        }
        .encode_to_vec()
    }

    fn read(names: usize) -> pb::Operation {
        pb::Operation {
            op: Some(pb::operation::Op::Read(pb::ReadFields {
                names: (0..names).map(|i| format!("n{i}")).collect(),
            })),
        }
    }

    #[test]
    fn counts_transactions_operations_and_names() {
        let txn = |ops: Vec<pb::Operation>| pb::Transaction {
            player_id: "p".into(),
            operations: ops,
            ..pb::Transaction::default()
        };
        let body = batch(vec![
            txn(vec![read(3), read(5)]),
            txn(vec![read(0), read(0), read(0)]),
        ]);
        let shape = scan(&body).expect("valid protobuf");
        assert_eq!(shape.request_id, 77);
        assert_eq!(shape.body, 3);
        assert_eq!(shape.reads, 5);
        assert_eq!(shape.transactions, 2);
        assert_eq!(shape.max_operations, 3);
        assert_eq!(shape.max_names, 5);
        assert_eq!(shape.check(body.len(), &Limits::default()), Ok(()));
        let tight = Limits {
            max_operations_per_transaction: 2,
            ..Limits::default()
        };
        assert!(matches!(
            shape.check(body.len(), &tight),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn a_frame_of_empty_operations_is_refused_before_it_is_decoded() {
        // One transaction per 64 empty operations, as many as fit in 4 MiB: within the count
        // limits only if the batch limit is raised, and then refused for amplification.
        let txn = pb::Transaction {
            operations: vec![pb::Operation::default(); 64],
            ..pb::Transaction::default()
        };
        // Sized from one chunk's bytes and built once (growing it chunk by chunk, encoding
        // the whole batch each time, took seconds).
        let chunk = batch(vec![txn.clone(); 1024]).len();
        let chunks = (4 * 1024 * 1024usize).div_ceil(chunk);
        let body = batch(vec![txn; 1024 * chunks]);
        assert!(body.len() >= 4 * 1024 * 1024, "{} bytes", body.len());
        let shape = scan(&body).expect("valid protobuf");
        let generous = Limits {
            max_transactions_per_batch: 100_000,
            ..Limits::default()
        };
        let refused = shape.check(body.len(), &generous);
        assert!(
            matches!(&refused, Err(Error::TooLarge(m)) if m.contains("decode")),
            "{refused:?}"
        );
        // The estimate is not too low: what prost really builds is within it.
        let decoded = pb::ClientFrame::decode(body.as_slice()).expect("decodes");
        let Some(pb::client_frame::Body::Batch(b)) = decoded.body else {
            panic!("a batch")
        };
        let real = b.transactions.capacity() * size_of::<pb::Transaction>()
            + b.transactions
                .iter()
                .map(|t| t.operations.capacity())
                .sum::<usize>()
                * size_of::<pb::Operation>();
        assert!(
            shape.decoded_bytes >= real,
            "{} < {real}",
            shape.decoded_bytes
        );
    }

    #[test]
    fn the_densest_legitimate_batches_pass() {
        // A full batch of version checks on one-letter players, and one of reads of one-letter
        // names: the smallest wire bytes per structure a real client sends.
        let check = pb::Transaction {
            player_id: "p".into(),
            access: pb::Access::Public.into(),
            operations: vec![pb::Operation {
                op: Some(pb::operation::Op::CheckVersion(pb::CheckVersion {
                    expected: 1,
                })),
            }],
            ..pb::Transaction::default()
        };
        let reads = pb::Transaction {
            player_id: "p".into(),
            access: pb::Access::Public.into(),
            operations: vec![
                pb::Operation {
                    op: Some(pb::operation::Op::Read(pb::ReadFields {
                        names: (0..64)
                            .map(|i| ((b'a' + i % 26) as char).to_string())
                            .collect(),
                    })),
                };
                64
            ],
            ..pb::Transaction::default()
        };
        for txn in [check, reads] {
            let body = batch(vec![txn; 1024]);
            let shape = scan(&body).expect("valid protobuf");
            assert_eq!(shape.check(body.len(), &Limits::default()), Ok(()));
        }
    }

    #[test]
    fn repeated_batch_fields_are_summed_as_protobuf_merges_them() {
        let one = batch(vec![pb::Transaction::default(); 3]);
        let mut twice = one.clone();
        twice.extend_from_slice(&one);
        let shape = scan(&twice).expect("valid protobuf");
        assert_eq!(shape.transactions, 6);
        let decoded = pb::ClientFrame::decode(twice.as_slice()).expect("decodes");
        let Some(pb::client_frame::Body::Batch(b)) = decoded.body else {
            panic!("a batch")
        };
        assert_eq!(b.transactions.len(), 6);
    }

    #[test]
    fn malformed_bytes_are_refused_not_panicked_on() {
        for bytes in [
            &[0x1a, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
            &[0x1a, 0x05, 0x0a][..],
            &[0x0b][..],
            &[0x00, 0x01][..],
            &[
                0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ][..],
            &[0x1a, 0x80][..],
        ] {
            assert!(scan(bytes).is_err(), "{bytes:?}");
            // And prost agrees that they are not a frame.
            assert!(pb::ClientFrame::decode(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn counts_items_and_the_participants_of_multi_player_transactions() {
        let participant = |ops: usize| pb::Participant {
            player_id: "p".into(),
            access: pb::Access::Owner.into(),
            operations: (0..ops).map(|_| read(2)).collect(),
        };
        let multi = |participants: Vec<pb::Participant>| pb::BatchItem {
            item: Some(pb::batch_item::Item::Multi(pb::MultiTransaction {
                participants,
                ..Default::default()
            })),
        };
        let single = pb::BatchItem {
            item: Some(pb::batch_item::Item::Transaction(pb::Transaction {
                player_id: "q".into(),
                operations: vec![read(1)],
                ..Default::default()
            })),
        };
        let body = pb::ClientFrame {
            request_id: 5,
            body: Some(pb::client_frame::Body::Batch(pb::Batch {
                transactions: Vec::new(),
                items: vec![
                    multi(vec![participant(2), participant(4)]),
                    single,
                    multi((0..3).map(|_| participant(1)).collect()),
                ],
            })),
        }
        .encode_to_vec();
        let shape = scan(&body).expect("valid protobuf");
        assert_eq!(shape.transactions, 3);
        assert_eq!((shape.participants, shape.max_participants), (5, 3));
        assert_eq!(shape.max_operations, 4);
        assert_eq!(shape.reads, 10);
        assert_eq!(shape.check(body.len(), &Limits::default()), Ok(()));
        // One transaction over the participant limit is its own entry's refusal, not the
        // frame's; only more participants than a whole batch could carry refuse the frame.
        let two = Limits {
            max_participants: 2,
            ..Limits::default()
        };
        assert_eq!(shape.check(body.len(), &two), Ok(()));
        let tiny = Limits {
            max_participants: 1,
            max_transactions_per_batch: 3,
            ..Limits::default()
        };
        assert!(matches!(
            shape.check(body.len(), &tiny),
            Err(Error::TooLarge(m)) if m.contains("participants")
        ));
        // Every participant is owed a result's overhead in the answer.
        let limits = Limits::default();
        assert!(shape.answer_bytes(&limits) >= RESULT_OVERHEAD_BYTES * 8);
    }
}
