//! Length-prefixed protobuf frames: a 4-byte big-endian length, then that many bytes of one
//! message — and the limits on a frame's size, which configuration checks and the gateway
//! enforces.
//!
//! The limits are here without any feature, so configuration (always built) stands on them;
//! the codec ([`codec`], re-exported here) needs the `client` feature.

#[cfg(feature = "client")]
pub mod codec;
#[cfg(feature = "client")]
pub use codec::*;

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Largest frame the gateway accepts by default: 4 MiB (`gateway.max_frame_bytes`).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Largest frame a connection may send before its Hello was accepted, in bytes: a Hello
/// needs far less, and a connection that has not authenticated gets no more memory than this.
pub const PRE_AUTH_MAX_FRAME_BYTES: usize = 4096;

/// Upper bound of `gateway.max_frame_bytes` (256 MiB).
pub const MAX_FRAME_BYTES_LIMIT: usize = 256 * 1024 * 1024;
