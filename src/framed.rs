//! Frames on a byte stream, moved the same way by the client and the gateway.
//!
//! - Reading grows the buffer by what the frame being read still needs, at most
//!   [`READ_CHUNK_BYTES`] per read: memory follows the bytes that arrive, never a length a
//!   peer claims. A buffer grown for one large frame is given back once that frame is taken.
//! - Writing coalesces what is queued into one write of about [`COALESCE_BYTES`] at most
//!   ([`WriteBatch`]): many small answers cost one syscall, and one slow peer holds a bounded
//!   buffer. A buffer grown for a large frame is given back after its write.
//!
//! [`crate::frame`] is the pure codec underneath; this module is its IO.

use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, FrameError};

/// The most one read adds to a read buffer.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A write batch takes no more frames once it holds this many bytes.
pub const COALESCE_BYTES: usize = 256 * 1024;

/// Buffers that grew past this for one large frame are replaced by small ones.
const KEEP_CAPACITY: usize = 1024 * 1024;

/// Why [`read_frame`] stopped.
#[derive(Debug)]
pub enum ReadFrameError {
    /// The bytes are not a valid frame.
    Frame(FrameError),
    /// The stream failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ReadFrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFrameError::Frame(e) => write!(f, "bad frame: {e}"),
            ReadFrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// How many bytes to read next into `buf`: what the frame being read still needs (its prefix
/// first), at most [`READ_CHUNK_BYTES`].
pub fn next_read(buf: &BytesMut) -> usize {
    frame::bytes_wanted(buf, READ_CHUNK_BYTES)
}

/// Reads the next chunk (see [`next_read`]) into `buf`; `Ok(0)` when the peer closed.
/// Cancel-safe: bytes read stay in `buf`.
pub async fn read_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    buf.reserve(next_read(buf));
    reader.read_buf(buf).await
}

/// Gives back a read buffer that grew past what a connection should keep, once the large
/// frame it held was taken (what is left of later frames is kept).
pub fn shrink_read_buffer(buf: &mut BytesMut) {
    if buf.capacity() > 2 * READ_CHUNK_BYTES && buf.len() <= READ_CHUNK_BYTES {
        *buf = BytesMut::from(&buf[..]);
    }
}

/// Reads until one whole frame of at most `max` bytes decodes; `Ok(None)` when the peer
/// closed first. Cancel-safe: bytes read stay in `buf` for the next call.
pub async fn read_frame<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<M>, ReadFrameError> {
    loop {
        if let Some(message) = frame::decode(buf, max).map_err(ReadFrameError::Frame)? {
            shrink_read_buffer(buf);
            return Ok(Some(message));
        }
        if read_chunk(reader, buf).await.map_err(ReadFrameError::Io)? == 0 {
            return Ok(None);
        }
    }
}

/// Frames encoded for one write.
#[derive(Debug, Default)]
pub struct WriteBatch {
    out: Vec<u8>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch {
            out: Vec::with_capacity(16 * 1024),
        }
    }

    /// Adds `frame` (at most `max` bytes); a frame that does not fit changes nothing.
    pub fn push<M: Message>(&mut self, frame: &M, max: usize) -> Result<(), FrameError> {
        frame::encode(frame, &mut self.out, max)
    }

    /// Whether another queued frame should join this write.
    pub fn has_room(&self) -> bool {
        self.out.len() < COALESCE_BYTES
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Writes everything batched, then empties the batch (giving back a buffer grown for a
    /// large frame). On an error the batch is emptied too: the stream is no longer usable.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> std::io::Result<()> {
        let written = writer.write_all(&self.out).await;
        self.out.clear();
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::with_capacity(16 * 1024);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pb;

    fn ping(nonce: u64) -> pb::ClientFrame {
        pb::ClientFrame {
            request_id: nonce,
            body: Some(pb::client_frame::Body::Ping(pb::Ping { nonce })),
        }
    }

    #[tokio::test]
    async fn frames_written_in_one_batch_are_read_back_one_by_one() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            let mut batch = WriteBatch::new();
            for n in 0..100 {
                batch.push(&ping(n), 1024).expect("fits");
            }
            assert!(batch.has_room());
            batch.write_to(&mut near).await.expect("writes");
            assert!(batch.is_empty());
        });
        let mut buf = BytesMut::new();
        for n in 0..100 {
            let frame: pb::ClientFrame = read_frame(&mut far, &mut buf, 1024)
                .await
                .expect("reads")
                .expect("a frame");
            assert_eq!(frame, ping(n));
        }
        writer.await.expect("writer");
        let end: Option<pb::ClientFrame> =
            read_frame(&mut far, &mut buf, 1024).await.expect("reads");
        assert_eq!(end, None, "a closed peer ends the stream");
    }

    #[tokio::test]
    async fn a_claimed_length_over_the_maximum_is_refused_before_its_body_arrives() {
        let (mut near, mut far) = tokio::io::duplex(64);
        near.write_all(&(1_000_000u32).to_be_bytes())
            .await
            .expect("writes");
        let mut buf = BytesMut::new();
        let read: Result<Option<pb::ClientFrame>, _> = read_frame(&mut far, &mut buf, 1024).await;
        assert!(matches!(read, Err(ReadFrameError::Frame(_))), "{read:?}");
        assert!(
            buf.capacity() <= READ_CHUNK_BYTES,
            "the claim did not allocate"
        );
    }

    #[test]
    fn a_batch_stops_taking_frames_past_its_size_and_refuses_frames_over_the_maximum() {
        let mut batch = WriteBatch::new();
        let big = pb::ClientFrame {
            request_id: 1,
            body: Some(pb::client_frame::Body::Hello(pb::Hello {
                token: "x".repeat(100_000),
                ..Default::default()
            })),
        };
        assert!(batch.push(&big, 1024).is_err());
        assert!(batch.is_empty(), "a refused frame leaves nothing behind");
        for _ in 0..3 {
            batch.push(&big, usize::MAX).expect("fits");
        }
        assert!(!batch.has_room());
        assert!(batch.len() > COALESCE_BYTES);
    }

    #[test]
    fn a_grown_read_buffer_is_given_back() {
        let mut buf = BytesMut::with_capacity(4 * READ_CHUNK_BYTES);
        buf.extend_from_slice(b"rest");
        shrink_read_buffer(&mut buf);
        assert!(buf.capacity() < 2 * READ_CHUNK_BYTES);
        assert_eq!(&buf[..], b"rest");
    }
}
