//! Colony's archiver: moves players who have been inactive for a while from Redis to
//! MongoDB (sharded by the same slot map), and brings them back when they are accessed. It is
//! the only component that writes to MongoDB.
//!
//! - [`document`]: the archived document, its schema version, and conversion (pure).
//! - [`worker`]: archive passes, restores, checkpoints, rebuilds and the run loop; the module
//!   docs state why a crash at any step loses nothing, and what shutdown finishes.
//! - [`metrics`]: the archiver's Prometheus metrics and admin endpoint.

pub mod document;
pub mod metrics;
pub mod worker;

pub use worker::{ArchiveError, Archiver, PassReport, Removal, Restoral};
