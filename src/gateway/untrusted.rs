//! Everything the gateway does with a client's bytes before anything reaches storage, as pure
//! functions the connection and request handlers call: judging a frame by its shape before
//! decoding it ([`judge`], with `shape`), decoding it ([`decode`]), and turning a batch's
//! entries into the model, validated and authorized one by one ([`admit_batch`]).
//! [`inspect`] runs the same functions over arbitrary bytes: the fuzz target (`fuzz/`) drives
//! it, and an ordinary test replays the saved corpus, so CI on stable Rust covers the paths
//! the gateway runs.

use bytes::{Bytes, BytesMut};

use crate::auth::Role;
use crate::error::Error;
use crate::frame::{self, FrameError};
use crate::model::{Limits, MultiTransaction, Transaction};
use crate::wire::{self, pb, Envelope, Item};

use super::authorize::{authorize_envelope, authorize_multi};
use super::shape::{self, Shape};

/// Why a frame that was read is not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its bytes are not a `ClientFrame`: the connection closes with this reason.
    Close(String),
    /// It is over a limit: it is answered with `error` and the connection goes on.
    Answer {
        /// The frame's request id, from its bytes.
        request_id: u64,
        /// Why.
        error: Error,
    },
}

/// A frame's shape, judged: what decoding it and answering it will hold in the gateway.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The counts and bounds read from the bytes.
    pub shape: Shape,
    /// Bytes decoding the frame and answering it may take.
    pub holds: usize,
    /// `holds` plus the body itself.
    pub with_body: usize,
}

/// Judges a frame's body from its bytes alone, before anything is decoded: its counts
/// against `limits`, and what it would hold against the connection's cap `cap`.
pub fn judge(body: &[u8], limits: &Limits, cap: usize) -> Result<Judged, Refusal> {
    let shape = shape::scan(body).map_err(|e| Refusal::Close(e.to_string()))?;
    let holds = shape
        .decoded_bytes
        .saturating_add(shape.answer_bytes(limits));
    let with_body = holds.saturating_add(body.len());
    let refused = shape.check(body.len(), limits).err().or_else(|| {
        (with_body > cap).then(|| {
            Error::TooLarge(format!(
                "the request would hold {with_body} bytes in the gateway, more than \
                 gateway.max_bytes_in_flight_per_connection ({cap})"
            ))
        })
    });
    match refused {
        Some(error) => Err(Refusal::Answer {
            request_id: shape.request_id,
            error,
        }),
        None => Ok(Judged {
            shape,
            holds,
            with_body,
        }),
    }
}

/// Decodes a judged frame's body.
pub fn decode(body: Bytes) -> Result<pb::ClientFrame, Refusal> {
    frame::decode_body::<pb::ClientFrame>(body).map_err(|e| Refusal::Close(e.to_string()))
}

/// One entry of a batch after the gateway's checks, in the batch's order: what the store
/// runs, or why the entry was refused (its own error; the others go on).
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// A transaction on one player.
    Single(Result<Transaction, Error>),
    /// A multi-player transaction.
    Multi(Result<MultiTransaction, Error>),
}

/// How a batch listed its entries, which decides how its results are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchForm {
    /// `transactions`: transactions on one player only, answered in `results`.
    Transactions,
    /// `items`: transactions on one player and multi-player transactions, answered in
    /// `items`.
    Items,
}

/// Turns a batch's entries into the model, each authorized for `role` on its own (and a
/// multi-player one validated against `limits`; the store validates the others). The outer
/// error refuses the batch as a whole (both forms at once, or more entries than
/// `limits.max_transactions_per_batch`), before anything is decoded.
pub fn admit_batch(
    role: Role,
    batch: pb::Batch,
    limits: &Limits,
) -> Result<(BatchForm, Vec<Admitted>), Error> {
    // A transaction on one player is authorized here and validated by the store, which
    // answers an invalid one in its place — after counting it among the request's readers, so
    // the read budget is shared as it always was. A multi-player transaction is validated
    // here: the store's batch never sees a refused one.
    let single = |envelope: Envelope| -> Result<Transaction, Error> {
        authorize_envelope(role, &envelope)?;
        Ok(envelope.transaction)
    };
    if batch.items.is_empty() {
        limits.check_batch(batch.transactions.len())?;
        let admitted = batch
            .transactions
            .into_iter()
            .map(|t| Admitted::Single(wire::envelope_from_pb(t).and_then(single)))
            .collect();
        return Ok((BatchForm::Transactions, admitted));
    }
    if !batch.transactions.is_empty() {
        return Err(Error::Invalid(
            "a batch lists its transactions in `transactions` or in `items`, not both".into(),
        ));
    }
    limits.check_batch(batch.items.len())?;
    let admitted = batch
        .items
        .into_iter()
        .map(|item| {
            let multi = matches!(item.item, Some(pb::batch_item::Item::Multi(_)));
            match wire::item_from_pb(item) {
                Ok(Item::Single(envelope)) => Admitted::Single(single(envelope)),
                Ok(Item::Multi(envelope)) => Admitted::Multi(
                    authorize_multi(role, &envelope)
                        .and_then(|()| envelope.transaction.validate(limits))
                        .map(|()| envelope.transaction),
                ),
                // A malformed item answers in its own kind, so the client can tell.
                Err(e) if multi => Admitted::Multi(Err(e)),
                Err(e) => Admitted::Single(Err(e)),
            }
        })
        .collect();
    Ok((BatchForm::Items, admitted))
}

/// What one run over untrusted bytes saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Frames that decoded.
    pub frames: usize,
    /// Transactions that passed validation and authorization for the game role.
    pub accepted: usize,
    /// Transactions rejected with a typed error.
    pub rejected: usize,
    /// Frames (or whole batches) refused from their shape or size.
    pub refused_frames: usize,
    /// Why decoding stopped, if it did before the input ended.
    pub stopped: Option<FrameError>,
}

/// Runs `data` through the functions the gateway runs on a connection's bytes ([`judge`],
/// [`decode`], [`admit_batch`] for the game role), and checks that every accepted
/// transaction survives an encode/decode round trip unchanged. Panics only on a bug, which
/// is what the fuzzer looks for.
pub fn inspect(data: &[u8], max_frame_bytes: usize, limits: &Limits) -> Inspection {
    let mut buf = BytesMut::from(data);
    let mut seen = Inspection::default();
    loop {
        let body = match frame::take_body(&mut buf, max_frame_bytes) {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(e) => {
                seen.stopped = Some(e);
                break;
            }
        };
        let judged = match judge(&body, limits, usize::MAX) {
            Ok(judged) => judged,
            Err(Refusal::Answer { .. }) => {
                seen.refused_frames += 1;
                continue;
            }
            Err(Refusal::Close(reason)) => {
                seen.stopped = Some(FrameError::Invalid(reason));
                break;
            }
        };
        let frame = match decode(body) {
            Ok(frame) => frame,
            Err(refusal) => {
                seen.stopped = Some(FrameError::Invalid(format!("{refusal:?}")));
                break;
            }
        };
        seen.frames += 1;
        let Some(pb::client_frame::Body::Batch(batch)) = frame.body else {
            continue;
        };
        // The shape's counts are upper bounds of what was decoded (a body field repeated
        // after another kind of body counts twice in the shape, once in the decoding).
        assert!(
            batch.transactions.len() + batch.items.len() <= judged.shape.transactions,
            "shape counted fewer transactions than were decoded"
        );
        let Ok((_, admitted)) = admit_batch(Role::Game, batch, limits) else {
            seen.refused_frames += 1;
            continue;
        };
        for entry in admitted {
            match entry {
                Admitted::Single(Ok(txn)) if txn.validate(limits).is_err() => seen.rejected += 1,
                Admitted::Single(Ok(txn)) => {
                    let envelope = Envelope {
                        acting_player: Some(txn.player.clone()),
                        transaction: txn,
                    };
                    let again = wire::envelope_from_pb(wire::envelope_to_pb(&envelope));
                    assert_eq!(
                        again.map(|e| e.transaction).as_ref(),
                        Ok(&envelope.transaction),
                        "round trip changed a transaction"
                    );
                    seen.accepted += 1;
                }
                Admitted::Multi(Ok(txn)) => {
                    let item = Item::Multi(Envelope {
                        acting_player: txn.participants.first().map(|p| p.player.clone()),
                        transaction: txn,
                    });
                    let again = wire::item_from_pb(wire::item_to_pb(&item));
                    assert_eq!(again.as_ref(), Ok(&item), "round trip changed an item");
                    seen.accepted += 1;
                }
                Admitted::Single(Err(_)) | Admitted::Multi(Err(_)) => seen.rejected += 1,
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IdempotencyKey, Name, Operation, PlayerId, Transaction, Visibility};
    use crate::wire::Envelope;

    #[test]
    fn a_valid_batch_is_accepted_and_garbage_stops_decoding() {
        let me = PlayerId::new("me").expect("valid");
        let txn = Envelope::acting_for(
            me.clone(),
            Transaction::owner(me, IdempotencyKey::new("c", 1).ok()).with(Operation::SetField {
                name: Name::new("a").expect("valid"),
                value: b"x".to_vec(),
                visibility: Visibility::Public,
            }),
        );
        let frame = pb::ClientFrame {
            request_id: 1,
            body: Some(pb::client_frame::Body::Batch(pb::Batch {
                transactions: vec![wire::envelope_to_pb(&txn), pb::Transaction::default()],
                items: Vec::new(),
            })),
        };
        let mut bytes = Vec::new();
        frame::encode(&frame, &mut bytes, usize::MAX).expect("encodes");
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        let seen = inspect(&bytes, 1024, &Limits::default());
        assert_eq!(seen.frames, 1);
        assert_eq!(seen.accepted, 1);
        assert_eq!(seen.rejected, 1);
        assert!(matches!(seen.stopped, Some(FrameError::TooLarge { .. })));
    }
}
