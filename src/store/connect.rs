//! Why a connection to a shard's master, or a question to its Sentinels, failed: the small
//! error type of the connection code ([`ConnectError`]), and the connection details of an
//! address. Below both `links` (the shard's connections) and `sentinel` (finding the master).
//!
//! The store turns a [`ConnectError`] into an UNAVAILABLE [`crate::Error`] naming the shard;
//! until then it keeps its cause (the Redis error, the Sentinels' answers) for logs and tests.

use std::sync::Arc;

use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::parse_address;

/// Why a connection could not be made or used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// An address that is not `host:port`.
    #[error("address {address:?}: {reason}")]
    Address {
        /// The address as configured or announced.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A server (a master or a Sentinel) could not be reached, or failed a command.
    #[error("{step} {address} failed: {source}")]
    Redis {
        /// What was being done: `connect to`, `ROLE on`, `WAIT on`, `ask Sentinel`...
        step: &'static str,
        /// The server's address.
        address: String,
        /// The Redis client's error.
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// A server did not answer in time.
    #[error("{step} {address}: no answer in time")]
    Timeout {
        /// What was being done.
        step: &'static str,
        /// The server's address.
        address: String,
    },
    /// The server found as the master answered `ROLE` as something else.
    #[error("{address} is not a master")]
    NotMaster {
        /// The server's address.
        address: String,
    },
    /// A Sentinel does not monitor a master of that name.
    #[error("unknown master name")]
    UnknownMaster,
    /// No Sentinel could say where the master is.
    #[error("no Sentinel knows master {master:?}: {}", list(.answers))]
    NoSentinelAnswered {
        /// The monitored master's name.
        master: String,
        /// Each Sentinel asked, and why it gave no view.
        answers: Vec<(String, ConnectError)>,
    },
    /// A Sentinel of the newest configuration is failing over the master it names.
    #[error(
        "Sentinel {sentinel} is failing over master {master:?} (flags {flags}); waiting for \
         the failover to end"
    )]
    FailingOver {
        /// The Sentinel that flags the failover.
        sentinel: String,
        /// The monitored master's name.
        master: String,
        /// Its flags for the master, comma-separated.
        flags: String,
    },
    /// The Sentinels of the newest configuration name different masters.
    #[error("the Sentinels disagree on master {master:?} at epoch {epoch} ({})", said.join(", "))]
    Disagree {
        /// The monitored master's name.
        master: String,
        /// Their configuration epoch.
        epoch: u64,
        /// `<sentinel> says <address>`, one per Sentinel.
        said: Vec<String>,
    },
    /// The Sentinels named another master while the one found was being confirmed.
    #[error(
        "the Sentinels moved master {master:?} from {from} to {to} while it was being confirmed"
    )]
    MovedWhileConfirming {
        /// The monitored master's name.
        master: String,
        /// The master that was being confirmed.
        from: String,
        /// The one they name now.
        to: String,
    },
    /// The shard's connections were made stale while this one was being opened (an error
    /// or a failover hint since), so it may lead to a master that is no longer current.
    #[error("the connections to {address} went stale while one was being opened")]
    StaleWhileConnecting {
        /// The server connected to.
        address: String,
    },
    /// No node of a Redis Cluster could say what the cluster looks like.
    #[error("no node of the cluster gave its map: {}", list(.answers))]
    NoClusterMap {
        /// Each node asked, and why it gave no map.
        answers: Vec<(String, ConnectError)>,
    },
    /// A node's `CLUSTER NODES` reply could not be read.
    #[error("cluster node {address}: {reason}")]
    BadClusterMap {
        /// The node that answered.
        address: String,
        /// What is wrong with its answer.
        reason: String,
    },
    /// The cluster's map names no master that can serve a shard now: it failed and no
    /// replica has taken over yet.
    #[error("no master serves cluster {shard} now (it failed and no replica took over yet)")]
    NoClusterMaster {
        /// The shard's name.
        shard: String,
    },
    /// A shared `WAIT` round ended without an answer (its task was dropped).
    #[error("the WAIT round was abandoned")]
    WaitAbandoned,
}

impl ConnectError {
    /// A failure of `step` on the server at `address`.
    pub(super) fn redis(step: &'static str, address: &str, source: redis::RedisError) -> Self {
        ConnectError::Redis {
            step,
            address: address.to_string(),
            source: Arc::new(source),
        }
    }
}

fn list(answers: &[(String, ConnectError)]) -> String {
    answers
        .iter()
        .map(|(sentinel, e)| format!("{sentinel}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Connection details for `address` (`host:port`) with `redis`'s credentials.
pub(super) fn tcp_info(
    address: &str,
    redis: RedisConnectionInfo,
) -> Result<redis::ConnectionInfo, ConnectError> {
    let bad = |reason: String| ConnectError::Address {
        address: address.to_string(),
        reason,
    };
    let (host, port) = parse_address(address).map_err(bad)?;
    Ok(ConnectionAddr::Tcp(host, port)
        .into_connection_info()
        .map_err(|e| bad(e.to_string()))?
        .set_redis_settings(redis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_place_and_cause() {
        let e = ConnectError::NoSentinelAnswered {
            master: "m".into(),
            answers: vec![
                ("s0:26379".into(), ConnectError::UnknownMaster),
                (
                    "s1:26379".into(),
                    ConnectError::Timeout {
                        step: "ask Sentinel",
                        address: "s1:26379".into(),
                    },
                ),
            ],
        };
        let text = e.to_string();
        assert!(text.contains("s0:26379: unknown master name"), "{text}");
        assert!(
            text.contains("s1:26379: ask Sentinel s1:26379: no answer in time"),
            "{text}"
        );
        assert!(matches!(
            tcp_info("no-port", RedisConnectionInfo::default()),
            Err(ConnectError::Address { address, .. }) if address == "no-port"
        ));
    }
}
