//! Encoding and decoding frames (the `client` feature: it needs `prost`).
//!
//! Pure: works on byte buffers, so the decoder is unit-tested and fuzzed without sockets.
//! "Need more bytes" (`Ok(None)`) is not an error; a length over the maximum or bytes that do
//! not decode are, and the connection that sent them is closed with the reason. The length is
//! checked before anything is allocated for the body, so a claimed length never makes memory
//! grow by itself.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use super::LENGTH_PREFIX_BYTES;

/// Why bytes could not be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix claims more than the maximum.
    #[error("frame of {length} bytes is over the maximum of {max}")]
    TooLarge {
        /// The claimed length.
        length: u64,
        /// The maximum.
        max: usize,
    },
    /// The body is not a valid protobuf message of the expected type.
    #[error("frame does not decode: {0}")]
    Invalid(String),
}

/// The body length announced at the front of `buf`, once 4 bytes are there.
pub fn peek_length(buf: &[u8]) -> Option<u64> {
    let prefix: [u8; LENGTH_PREFIX_BYTES] = buf.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
    Some(u64::from(u32::from_be_bytes(prefix)))
}

/// Takes one complete frame off the front of `buf` and decodes it.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (nothing is consumed), and an
/// error as soon as the prefix claims more than `max` bytes, before the body has arrived.
pub fn decode<M: Message + Default>(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<M>, FrameError> {
    match take_body(buf, max)? {
        Some(body) => decode_body(body).map(Some),
        None => Ok(None),
    }
}

/// Takes one complete frame's body off the front of `buf` without decoding it, with the same
/// rules as [`decode`]: `Ok(None)` until the whole frame is there, an error as soon as the
/// prefix claims more than `max` bytes.
pub fn take_body(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    let Some(length) = peek_length(buf) else {
        return Ok(None);
    };
    if length > max as u64 {
        return Err(FrameError::TooLarge { length, max });
    }
    let length = length as usize;
    if buf.len() < LENGTH_PREFIX_BYTES + length {
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(buf.split_to(length).freeze()))
}

/// Decodes a body taken by [`take_body`].
pub fn decode_body<M: Message + Default>(body: Bytes) -> Result<M, FrameError> {
    M::decode(body).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// How many more bytes the reader should make room for: the rest of the current frame, capped
/// at `chunk`, so that buffer memory follows the bytes that actually arrive, never the length
/// a peer claims.
pub fn bytes_wanted(buf: &[u8], chunk: usize) -> usize {
    match peek_length(buf) {
        Some(length) => {
            let total = LENGTH_PREFIX_BYTES as u64 + length;
            let missing = total.saturating_sub(buf.len() as u64);
            (missing.min(chunk as u64) as usize).max(1)
        }
        None => LENGTH_PREFIX_BYTES - buf.len().min(LENGTH_PREFIX_BYTES) + chunk.min(4096),
    }
}

/// Appends `message` as one frame to `out`. Fails when the encoded body exceeds `max`.
pub fn encode<M: Message>(message: &M, out: &mut Vec<u8>, max: usize) -> Result<(), FrameError> {
    let length = message.encoded_len();
    if length > max {
        return Err(FrameError::TooLarge {
            length: length as u64,
            max,
        });
    }
    out.reserve(LENGTH_PREFIX_BYTES + length);
    out.extend_from_slice(&(length as u32).to_be_bytes());
    message
        .encode(out)
        .map_err(|e| FrameError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::DEFAULT_MAX_FRAME_BYTES;
    use crate::wire::pb;

    fn ping(id: u64) -> pb::ClientFrame {
        pb::ClientFrame {
            request_id: id,
            body: Some(pb::client_frame::Body::Ping(pb::Ping {
                nonce: id.wrapping_mul(10),
            })),
        }
    }

    #[test]
    fn frames_round_trip_and_partial_input_waits() {
        let mut bytes = Vec::new();
        encode(&ping(1), &mut bytes, 1024).expect("encodes");
        encode(&ping(2), &mut bytes, 1024).expect("encodes");
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut got = Vec::new();
            while let Some(frame) = decode::<pb::ClientFrame>(&mut buf, 1024).expect("valid") {
                got.push(frame);
            }
            buf.extend_from_slice(&bytes[split..]);
            while let Some(frame) = decode::<pb::ClientFrame>(&mut buf, 1024).expect("valid") {
                got.push(frame);
            }
            assert_eq!(got, vec![ping(1), ping(2)], "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_oversized_claim_is_rejected_before_its_body_arrives() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode::<pb::ClientFrame>(&mut buf, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::TooLarge {
                length: u64::from(u32::MAX),
                max: DEFAULT_MAX_FRAME_BYTES
            })
        );
        // And the reader never asks for more than one chunk at a time.
        assert_eq!(bytes_wanted(&[0xff, 0xff, 0xff, 0xff], 65536), 65536);
        assert_eq!(bytes_wanted(&[0, 0, 0, 3, 1], 65536), 2);
    }

    #[test]
    fn garbage_bodies_are_invalid() {
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode::<pb::ClientFrame>(&mut buf, 1024),
            Err(FrameError::Invalid(_))
        ));
    }

    #[test]
    fn an_empty_frame_decodes_to_an_empty_message() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        let frame = decode::<pb::ClientFrame>(&mut buf, 1024).expect("valid");
        assert_eq!(frame, Some(pb::ClientFrame::default()));
    }

    #[test]
    fn encoding_over_the_maximum_fails() {
        let mut out = Vec::new();
        assert!(encode(&ping(u64::MAX), &mut out, 3).is_err());
        assert!(out.is_empty());
    }
}
