//! Helpers shared by the integration tests: a store over real servers, and a digest of a
//! server's whole dataset to prove that rejected input changed nothing.

#![allow(dead_code)]

use colony::testkit::{config_for, RedisServer};
use colony::{IdempotencyKey, Name, PlayerId, Store};

/// Starts `n` redis-server processes.
pub fn servers(n: usize) -> Vec<RedisServer> {
    (0..n)
        .map(|_| RedisServer::start().expect("redis-server starts"))
        .collect()
}

/// A store whose shards are `servers`.
pub fn store(servers: &[RedisServer]) -> Store {
    let refs: Vec<&RedisServer> = servers.iter().collect();
    Store::new(&config_for(&refs)).expect("store builds")
}

/// A plain connection to `server`, for looking at what is stored.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects")
}

/// `DEBUG DIGEST`: changes whenever any key or value in the dataset changes.
pub async fn digest(server: &RedisServer) -> String {
    let mut conn = raw(server).await;
    redis::cmd("DEBUG")
        .arg("DIGEST")
        .query_async(&mut conn)
        .await
        .expect("digest")
}

pub fn pid(s: &str) -> PlayerId {
    PlayerId::new(s).expect("valid player id")
}

pub fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

pub fn key(request_id: u64) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::new("test-client", request_id).expect("valid key"))
}
