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
//! Cargo features: `client` (the Rust client: [`frame`], [`wire`], [`tls`], [`client`]) and
//! `gateway` (the gateway, [`admin_http`], [`process`]; on by default). With
//! `default-features = false` a game server embeds the store alone.
//!
//! See ARCHITECTURE.md for the invariants.

#![forbid(unsafe_code)]

#[cfg(feature = "gateway")]
pub mod admin_http;
pub mod auth;
pub mod backoff;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod error;
pub mod frame;
#[cfg(feature = "client")]
pub mod framed;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod keys;
pub mod model;
#[cfg(feature = "gateway")]
pub mod process;
pub mod script;
pub mod seeded;
pub mod shard_map;
pub mod slot;
pub mod store;
#[cfg(feature = "client")]
pub mod tls;
#[cfg(feature = "client")]
pub mod wire;

pub use config::Config;
pub use error::{Code, Error, Retry};
pub use model::{
    Access, Committed, Entry, IdempotencyKey, Limits, MultiCommitted, MultiTransaction, Name,
    Operation, Participant, PlayerId, ReadResult, Transaction, Value, Visibility,
};
pub use store::Store;
#[cfg(feature = "client")]
pub use wire::{Envelope, Item, ItemResult};
