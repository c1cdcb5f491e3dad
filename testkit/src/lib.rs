//! The test harness of Colony's tests, benchmarks and load test: real processes, never mocks.
//!
//! - [`RedisServer`] and [`SentinelShard`]: `redis-server` and `redis-sentinel` on free
//!   loopback ports, from the shipped profiles (`deploy/redis/`), killed on drop; kill,
//!   restart as a replica, pause and resume for fault tests.
//! - [`RedisCluster`]: a Redis Cluster of such servers, formed command by command, with a
//!   slot moved by hand for tests of a stale map.
//! - [`Rig`]: one watched shard on either topology (Sentinel or cluster), so that a fault
//!   test is written once and run on both.
//! - [`PartitionableShard`] and [`LinkProxy`]: a Sentinel shard whose links a test cuts and
//!   heals, for partitions.
//! - [`ScriptWatch`]: `MONITOR` on a server, checking that every key a script touched is
//!   declared in its `KEYS`, all in one slot.
//! - [`MongoServer`]: the MongoDB-wire server (or `COLONY_TEST_MONGODB_URI`); and
//!   [`WriteConcernFault`], a proxy in front of it that answers writes as a replica set
//!   whose majority did not confirm them.
//! - [`TestGateway`]: the real gateway in process, on port 0, with the test tokens.
//! - [`wait_until`] (async) and [`wait_until_blocking`]: conditions with deadlines.
//! - [`Ledger`] and [`History`]: the one record of acknowledged, unknown and failed
//!   increments and the check against stored values, shared with the load test;
//!   [`IncrementWriters`] produce one under faults, and [`fill_replication_link`] puts
//!   writes on a master alone.
//!
//! It is a crate of its own so that none of this is part of the library's public API.

pub mod cluster;
pub mod gateway;
pub mod ledger;
pub mod mongo;
pub mod mongo_fault;
pub mod parking;
pub mod partition;
pub mod proxy;
pub mod redis_server;
pub mod rig;
pub mod script_watch;
pub mod seed;
pub mod sentinel;
pub mod wait;
pub mod writers;

pub use cluster::RedisCluster;
pub use gateway::{
    config_for, gateway_config, with_test_gateway, TestGateway, ADMIN_TOKEN, GAME_TOKEN,
};
pub use ledger::{Findings, History, Ledger, TransferOutcome};
pub use mongo::MongoServer;
pub use mongo_fault::WriteConcernFault;
pub use parking::{park_by_hand, Parked};
pub use partition::PartitionableShard;
pub use proxy::LinkProxy;
pub use redis_server::{free_port, Profile, RedisServer};
pub use rig::{Rig, Topology};
pub use script_watch::{ScriptReport, ScriptWatch};
pub use seed::{seed_from_env, Seeded};
pub use sentinel::{SentinelServer, SentinelShard};
pub use wait::{wait_for, wait_until, wait_until_blocking};
pub use writers::{fill_replication_link, final_counters, IncrementWriters, Target};
