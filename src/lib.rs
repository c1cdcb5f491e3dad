//! Colony: a sharded player-state store for game backends, on Redis.
//!
//! The library keeps each player's state on one Redis shard (chosen by the slot of the
//! player's id) and applies transactions to it all-or-nothing in one round trip, with a Lua
//! script. Layers, bottom up:
//!
//! - pure logic: [`slot`], [`model`], [`error`], [`keys`], [`shard_map`], [`config`],
//!   [`script`] (encoding and decoding the script's calls);
//! - IO: [`store`] (shared connections, pipelines, batches on real Redis), [`gateway`]
//!   (protobuf over TCP, auth, admin HTTP);
//! - the boundary: [`wire`] (the protobuf contract in `proto/`, converted to and from the
//!   model).
//!
//! See ARCHITECTURE.md for the invariants.

#![forbid(unsafe_code)]

pub mod admin_http;
pub mod client;
pub mod config;
pub mod error;
pub mod frame;
pub mod gateway;
pub mod keys;
pub mod model;
pub mod process;
pub mod script;
pub mod seeded;
pub mod shard_map;
pub mod slot;
pub mod store;
pub mod tls;
pub mod wire;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::Config;
pub use error::{Code, Error, Retry};
pub use model::{
    Access, Committed, Entry, IdempotencyKey, Limits, Name, Operation, PlayerId, ReadResult,
    Transaction, Value, Visibility,
};
pub use store::Store;
