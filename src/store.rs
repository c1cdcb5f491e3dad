//! The player store: connection pools per shard, and transactions executed on real Redis.
//!
//! A batch is validated, grouped by shard, pipelined per shard, and the shards run
//! concurrently; results come back in request order and one player's failure touches no other.
//! Every Redis error is classified here into the typed [`Error`], so nobody above parses
//! messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, Pool, RecycleResult};
use deadpool::Runtime;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use redis::{ServerErrorKind, Value as RedisValue};

use crate::config::{parse_address, Config, RedisSettings};
use crate::error::Error;
use crate::model::{Access, Committed, Limits, Operation, PlayerId, Transaction};
use crate::script::{self, Invocation, SCRIPT};
use crate::shard_map::{ShardIndex, ShardMap};

/// Creates Redis connections for one shard's pool.
///
/// Recycling is free: a multiplexed connection that broke is taken out of the pool by the
/// code that saw the error ([`Object::take`]), so checking out a connection costs no PING
/// round trip.
struct ShardConnector {
    inner: deadpool_redis::Manager,
}

impl managed::Manager for ShardConnector {
    type Type = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        self.inner.create().await
    }

    async fn recycle(
        &self,
        _conn: &mut MultiplexedConnection,
        _metrics: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        Ok(())
    }
}

/// Pool statistics of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open.
    pub size: usize,
    /// Connections idle in the pool.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

struct ShardConn {
    name: String,
    pool: Pool<ShardConnector>,
}

/// Keeps player state on the shards of a [`ShardMap`].
///
/// Cloning is cheap and shares the pools.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    map: ShardMap,
    shards: Vec<ShardConn>,
    settings: RedisSettings,
    limits: Limits,
}

impl Store {
    /// Builds pools for every shard of `config`. Connections open lazily, on first use.
    pub fn new(config: &Config) -> Result<Store, Error> {
        let map = ShardMap::from_config(config).map_err(|e| Error::Invalid(e.to_string()))?;
        let settings = config.redis.clone();
        let mut shards = Vec::with_capacity(map.shards().len());
        for (shard, shard_config) in map.shards().iter().zip(&config.shards) {
            let (host, port) = parse_address(&shard.master).map_err(Error::Invalid)?;
            let mut redis_info = RedisConnectionInfo::default();
            if let Some(user) = &shard_config.username {
                redis_info = redis_info.set_username(user);
            }
            if let Some(password) = &shard_config.password {
                redis_info = redis_info.set_password(password);
            }
            let info = ConnectionAddr::Tcp(host, port)
                .into_connection_info()
                .map_err(|e| Error::Invalid(format!("shard {}: {e}", shard.name)))?
                .set_redis_settings(redis_info);
            let connection_config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout()))
                .set_response_timeout(Some(settings.command_timeout()));
            let inner = deadpool_redis::Manager::new_with_config(info, connection_config)
                .map_err(|e| Error::Invalid(format!("shard {}: {e}", shard.name)))?;
            let pool = Pool::builder(ShardConnector { inner })
                .max_size(settings.pool_size)
                .wait_timeout(Some(settings.connect_timeout()))
                .create_timeout(Some(settings.connect_timeout()))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| Error::Invalid(format!("shard {}: {e}", shard.name)))?;
            shards.push(ShardConn {
                name: shard.name.clone(),
                pool,
            });
        }
        Ok(Store {
            inner: Arc::new(StoreInner {
                map,
                shards,
                settings,
                limits: config.limits.clone(),
            }),
        })
    }

    /// The slot map this store routes by.
    pub fn shard_map(&self) -> &ShardMap {
        &self.inner.map
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Pool statistics per shard, in shard order.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.inner
            .shards
            .iter()
            .map(|s| {
                let status = s.pool.status();
                PoolStats {
                    size: status.size,
                    available: status.available,
                    waiting: status.waiting,
                }
            })
            .collect()
    }

    /// Executes one transaction.
    pub async fn execute(&self, txn: Transaction) -> Result<Committed, Error> {
        let mut results = self.execute_batch(vec![txn]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("empty batch result".into())))
    }

    /// Reads a player: everything as the owner, public entries otherwise. Never marks the
    /// player active for a public read. `NotFound` when the player has no version.
    pub async fn get_player(&self, player: PlayerId, access: Access) -> Result<Committed, Error> {
        let txn = Transaction {
            player,
            access,
            idempotency_key: None,
            operations: vec![Operation::Read { names: Vec::new() }],
        };
        let committed = self.execute(txn).await?;
        if committed.version == 0 {
            return Err(Error::NotFound);
        }
        Ok(committed)
    }

    /// Executes transactions for many players: grouped per shard, pipelined, shards run
    /// concurrently. The outer error is for the batch as a whole (too many transactions);
    /// each transaction has its own result, in request order.
    pub async fn execute_batch(
        &self,
        txns: Vec<Transaction>,
    ) -> Result<Vec<Result<Committed, Error>>, Error> {
        let limits = &self.inner.limits;
        if txns.len() > limits.max_transactions_per_batch {
            return Err(Error::TooLarge(format!(
                "batch has {} transactions, more than {}",
                txns.len(),
                limits.max_transactions_per_batch
            )));
        }
        let ttl_ms = self
            .inner
            .settings
            .idempotency_ttl_secs
            .saturating_mul(1000);
        let mut results: Vec<Option<Result<Committed, Error>>> = vec![None; txns.len()];
        let mut plan: BTreeMap<ShardIndex, Vec<usize>> = BTreeMap::new();
        for (position, txn) in txns.iter().enumerate() {
            match txn.validate(limits) {
                Ok(()) => plan
                    .entry(self.inner.map.shard_for_player(&txn.player))
                    .or_default()
                    .push(position),
                Err(e) => results[position] = Some(Err(e)),
            }
        }
        let txns = &txns;
        let runs = plan.into_iter().map(|(shard, positions)| async move {
            let batch: Vec<(&Transaction, Invocation)> = positions
                .iter()
                .map(|&p| (&txns[p], script::encode(&txns[p], ttl_ms)))
                .collect();
            let outcomes = self.run_on_shard(shard, &batch).await;
            positions.into_iter().zip(outcomes)
        });
        for (position, outcome) in join_all(runs).await.into_iter().flatten() {
            results[position] = Some(outcome);
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("transaction not run".into()))))
            .collect())
    }

    /// Runs one shard's part of a batch as one pipeline, reloading the script once if the
    /// server has lost it (after a restart or `SCRIPT FLUSH`).
    async fn run_on_shard(
        &self,
        shard: ShardIndex,
        batch: &[(&Transaction, Invocation)],
    ) -> Vec<Result<Committed, Error>> {
        let shard_conn = &self.inner.shards[shard.0];
        let name = &shard_conn.name;
        let mut conn = match shard_conn.pool.get().await {
            Ok(conn) => conn,
            Err(e) => {
                let reason = format!("no connection: {e}");
                tracing::warn!(shard = %name, %reason, "shard unavailable");
                return batch
                    .iter()
                    .map(|_| {
                        Err(Error::Unavailable {
                            shard: name.clone(),
                            reason: reason.clone(),
                        })
                    })
                    .collect();
            }
        };
        let mut outcomes: Vec<Option<Result<Committed, Error>>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &pending {
                batch[i].1.add_to(&mut pipe);
            }
            let replies: Result<Vec<RedisValue>, redis::RedisError> =
                pipe.query_async(&mut *conn).await;
            let replies = match replies {
                Ok(replies) if replies.len() == pending.len() => replies,
                Ok(_) => {
                    let e = Error::Internal("pipeline reply count mismatch".into());
                    for &i in &pending {
                        outcomes[i] = Some(Err(e.clone()));
                    }
                    drop(Object::take(conn));
                    break;
                }
                Err(e) => {
                    tracing::warn!(shard = %name, error = %e, "pipeline failed");
                    for &i in &pending {
                        outcomes[i] = Some(Err(transport_error(name, batch[i].0, &e)));
                    }
                    // The connection may be half-read or closed; never hand it out again.
                    drop(Object::take(conn));
                    break;
                }
            };
            let mut lost_script = Vec::new();
            for (&i, reply) in pending.iter().zip(&replies) {
                match reply {
                    RedisValue::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                        lost_script.push(i)
                    }
                    RedisValue::ServerError(e) => {
                        outcomes[i] = Some(Err(server_error(name, e)));
                    }
                    reply => outcomes[i] = Some(script::decode(batch[i].0, reply)),
                }
            }
            if lost_script.is_empty() {
                break;
            }
            // NOSCRIPT means the script did not run, so sending those again is safe.
            let loaded: Result<String, redis::RedisError> = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script::SOURCE)
                .query_async(&mut *conn)
                .await;
            match loaded {
                Ok(sha) if sha == SCRIPT.get_hash() && attempt == 0 => pending = lost_script,
                Ok(_) | Err(_) => {
                    for i in lost_script {
                        outcomes[i] = Some(Err(Error::Unavailable {
                            shard: name.clone(),
                            reason: "could not load the transaction script".into(),
                        }));
                    }
                    break;
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::Internal("no reply".into()))))
            .collect()
    }

    /// Sends `PING` to every shard's master; one result per shard, in shard order.
    pub async fn ping_shards(&self, timeout: Duration) -> Vec<Result<(), Error>> {
        let pings = self.inner.shards.iter().map(|shard| async move {
            let unavailable = |reason: String| Error::Unavailable {
                shard: shard.name.clone(),
                reason,
            };
            let work = async {
                let mut conn = shard
                    .pool
                    .get()
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut *conn).await;
                match pong {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        drop(Object::take(conn));
                        Err(unavailable(e.to_string()))
                    }
                }
            };
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| Err(unavailable("ping timed out".into())))
        });
        join_all(pings).await
    }
}

/// Classifies a connection-level failure of a pipeline that was (or may have been) sent.
fn transport_error(shard: &str, txn: &Transaction, e: &redis::RedisError) -> Error {
    if txn.is_write() {
        // The script may have run before the connection failed: only a retry with the same
        // idempotency key can tell.
        Error::Unknown {
            shard: shard.to_string(),
            reason: e.to_string(),
        }
    } else {
        Error::Unavailable {
            shard: shard.to_string(),
            reason: e.to_string(),
        }
    }
}

/// Classifies an error reply to one script call. Redis refuses these before the script runs
/// (READONLY, OOM, BUSY, LOADING, MASTERDOWN, NOREPLICAS...), so nothing was applied and a
/// retry is safe; anything else is a failure inside the script, which is a bug.
fn server_error(shard: &str, e: &redis::ServerError) -> Error {
    let code = e.code();
    let refused = matches!(
        code,
        "READONLY"
            | "OOM"
            | "BUSY"
            | "LOADING"
            | "MASTERDOWN"
            | "NOREPLICAS"
            | "TRYAGAIN"
            | "CLUSTERDOWN"
    );
    if refused {
        Error::Unavailable {
            shard: shard.to_string(),
            reason: e.to_string(),
        }
    } else {
        tracing::error!(shard, error = %e, "transaction script failed");
        Error::Internal(format!("shard {shard}: {e}"))
    }
}
