//! Colony: a sharded player-state store for game backends, on Redis.
//!
//! The library keeps each player's state on one Redis shard (chosen by the slot of the
//! player's id) and applies transactions to it all-or-nothing in one round trip, with a Lua
//! script. Layers, bottom up (ARCHITECTURE.md states them as rules, and `tests/tidy.rs`
//! checks every import against them):
//!
//! - pure logic: [`slot`], [`error`], [`backoff`], [`seeded`], [`auth`], [`model`], [`keys`],
//!   [`shard_map`], [`frame`] (limits; the codec with `client`), [`config`], [`script`]
//!   (encoding and decoding the script's calls);
//! - IO: [`store`] (connections, the one road to Redis, transactions and trades on real
//!   Redis);
//! - the boundary: [`wire`] (the protobuf contract in `proto/`, converted to and from the
//!   model), [`framed`], [`tls`], [`client`];
//! - the service: [`gateway`] (protobuf over TCP, authorization), [`admin_http`],
//!   [`process`].
//!
//! Cargo features: `client` (the Rust client: the frame codec, [`framed`], [`wire`],
//! [`tls`], [`client`]) and `gateway` (the gateway, [`admin_http`], [`process`]; on by
//! default). With `default-features = false` a game server embeds the store alone.

#![forbid(unsafe_code)]

#[cfg(feature = "gateway")]
pub mod admin_http;
pub mod auth;
pub mod backoff;
#[cfg(feature = "client")]
pub mod client;
pub mod cluster_view;
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
