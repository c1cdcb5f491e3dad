//! Everything the gateway does with a client's bytes before anything reaches storage, as one
//! pure function: frame decoding, the frame's shape (`shape`), protobuf decoding, conversion to the model, validation and
//! authorization. The fuzz target (`fuzz/`) drives it with arbitrary bytes, and an ordinary
//! test replays the saved corpus, so CI on stable Rust covers the same paths.

use bytes::BytesMut;

use crate::auth::Role;
use crate::frame::{self, FrameError};
use crate::model::Limits;
use crate::wire::{self, pb};

/// What one run over untrusted bytes saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Frames that decoded.
    pub frames: usize,
    /// Transactions that passed validation and authorization for the game role.
    pub accepted: usize,
    /// Transactions rejected with a typed error.
    pub rejected: usize,
    /// Frames refused from their shape (counts or decoded size over the limits).
    pub refused_frames: usize,
    /// Why decoding stopped, if it did before the input ended.
    pub stopped: Option<FrameError>,
}

/// Runs `data` through the gateway's decoding and checking, and checks that every accepted
/// transaction survives an encode/decode round trip unchanged. Panics only on a bug, which is
/// what the fuzzer looks for.
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
        // As the gateway does: the shape first, from the bytes; decoding only what passed.
        let shape = match super::shape::scan(&body) {
            Ok(shape) => shape,
            Err(e) => {
                seen.stopped = Some(FrameError::Invalid(e.to_string()));
                break;
            }
        };
        if shape.check(body.len(), limits).is_err() {
            seen.refused_frames += 1;
            continue;
        }
        let frame = match frame::decode_body::<pb::ClientFrame>(body) {
            Ok(frame) => frame,
            Err(e) => {
                seen.stopped = Some(e);
                break;
            }
        };
        seen.frames += 1;
        if let Some(pb::client_frame::Body::Batch(batch)) = &frame.body {
            // The shape's counts are upper bounds of what was decoded (a body field repeated
            // after another kind of body counts twice in the shape, once in the decoding).
            assert!(
                batch.transactions.len() + batch.items.len() <= shape.transactions,
                "shape counted fewer transactions than were decoded"
            );
        }
        let (transactions, items) = match frame.body {
            Some(pb::client_frame::Body::Batch(batch)) => (batch.transactions, batch.items),
            _ => continue,
        };
        for item in items {
            let checked = wire::item_from_pb(item).and_then(|item| {
                match &item {
                    wire::Item::Single(envelope) => {
                        envelope.transaction.validate(limits)?;
                        super::authorize::authorize_envelope(Role::Game, envelope)?;
                    }
                    wire::Item::Multi(envelope) => {
                        envelope.transaction.validate(limits)?;
                        super::authorize::authorize_multi(Role::Game, envelope)?;
                    }
                }
                Ok(item)
            });
            match checked {
                Ok(item) => {
                    let again = wire::item_from_pb(wire::item_to_pb(&item));
                    assert_eq!(again.as_ref(), Ok(&item), "round trip changed an item");
                    seen.accepted += 1;
                }
                Err(_) => seen.rejected += 1,
            }
        }
        for t in transactions {
            let checked = wire::envelope_from_pb(t).and_then(|envelope| {
                envelope.transaction.validate(limits)?;
                super::authorize::authorize_envelope(Role::Game, &envelope)?;
                Ok(envelope)
            });
            match checked {
                Ok(envelope) => {
                    let again = wire::envelope_from_pb(wire::envelope_to_pb(&envelope));
                    assert_eq!(
                        again.as_ref(),
                        Ok(&envelope),
                        "round trip changed a transaction"
                    );
                    seen.accepted += 1;
                }
                Err(_) => seen.rejected += 1,
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
