//! One watched shard on either topology, for fault tests that must hold on both: a Sentinel
//! shard (a master, its replicas, three Sentinels), or a Redis Cluster of three masters each
//! with the same replicas, watching the shard that serves a given player. A fault test kills,
//! pauses and restarts the watched shard's servers by index and asks which one is master, the
//! same way on both; the rest of the cluster keeps serving its players meanwhile.

use colony::config::Config;
use colony::model::PlayerId;

use crate::cluster::RedisCluster;
use crate::redis_server::{Profile, RedisServer};
use crate::sentinel::SentinelShard;

/// Which topology a fault test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One shard watched by three Sentinels.
    Sentinel,
    /// A Redis Cluster of three masters.
    Cluster,
}

/// The servers of one watched shard, and the rest of its topology.
pub enum Rig {
    /// A Sentinel shard: every server is the watched shard's.
    Sentinel(SentinelShard),
    /// A Redis Cluster, and the indices (into its nodes) of the watched shard's servers.
    Cluster {
        /// The whole cluster.
        cluster: RedisCluster,
        /// The watched shard's nodes: its first master, then its replicas.
        watched: Vec<usize>,
    },
}

impl Rig {
    /// Starts `topology` from `profile` with `replicas` replicas per master, watching the
    /// shard that serves `player` (on Sentinel, the one shard, named `tag`).
    pub fn start(
        topology: Topology,
        tag: &str,
        profile: Profile,
        replicas: usize,
        player: &PlayerId,
    ) -> std::io::Result<Rig> {
        match topology {
            Topology::Sentinel => Ok(Rig::Sentinel(SentinelShard::start(tag, profile, replicas)?)),
            Topology::Cluster => {
                let cluster = RedisCluster::start(3, replicas, profile, &[])?;
                let slot = colony::keys::player_slot(player).get();
                let master = cluster.owner_of(slot, 0)?.port();
                let first = cluster
                    .nodes()
                    .iter()
                    .position(|n| n.port() == master)
                    .ok_or_else(|| std::io::Error::other("the owner is not a node"))?;
                let mut watched = vec![first];
                for replica in cluster.replicas_of(&cluster.nodes()[first]) {
                    if let Some(i) = cluster
                        .nodes()
                        .iter()
                        .position(|n| n.port() == replica.port())
                    {
                        watched.push(i);
                    }
                }
                if watched.len() != 1 + replicas {
                    return Err(std::io::Error::other(format!(
                        "the watched master has {} replicas, not {replicas}",
                        watched.len() - 1
                    )));
                }
                Ok(Rig::Cluster { cluster, watched })
            }
        }
    }

    /// A configuration for the whole topology.
    pub fn config(&self) -> Config {
        match self {
            Rig::Sentinel(shard) => shard.config(),
            Rig::Cluster { cluster, .. } => cluster.config(),
        }
    }

    /// How many servers the watched shard has.
    pub fn len(&self) -> usize {
        match self {
            Rig::Sentinel(shard) => shard.servers.len(),
            Rig::Cluster { watched, .. } => watched.len(),
        }
    }

    /// Whether the watched shard has no servers (never, once started).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The watched shard's server `i`.
    pub fn server(&self, i: usize) -> &RedisServer {
        match self {
            Rig::Sentinel(shard) => &shard.servers[i],
            Rig::Cluster { cluster, watched } => &cluster.nodes()[watched[i]],
        }
    }

    /// The watched shard's server `i`, to kill, pause or restart.
    pub fn server_mut(&mut self, i: usize) -> &mut RedisServer {
        match self {
            Rig::Sentinel(shard) => &mut shard.servers[i],
            Rig::Cluster { cluster, watched } => cluster.node_mut(watched[i]),
        }
    }

    /// Which of the watched shard's servers is its master now: as the Sentinels report it,
    /// or as the cluster does (the one that answers as a master and serves slots).
    pub fn master_index(&self) -> Option<usize> {
        match self {
            Rig::Sentinel(shard) => shard.master_index(),
            Rig::Cluster { cluster, watched } => {
                let serving: Vec<u16> = cluster.master_nodes().iter().map(|n| n.port()).collect();
                let asked = (0..cluster.nodes().len())
                    .find(|&i| !watched.contains(&i) && cluster.nodes()[i].is_master())?;
                (0..watched.len()).find(|&i| {
                    let port = cluster.nodes()[watched[i]].port();
                    serving.contains(&port) && cluster.serves_slots(port, asked)
                })
            }
        }
    }

    /// Starts the watched shard's server `i` again after a kill, as a replica of the master
    /// at `master` (on a cluster it rejoins by itself, from its `nodes.conf`).
    pub fn restart_as_replica(&mut self, i: usize, master: usize) -> std::io::Result<()> {
        match self {
            Rig::Sentinel(shard) => {
                let port = shard.servers[master].port().to_string();
                shard.servers[i].start_again(&["--replicaof", "127.0.0.1", &port])
            }
            Rig::Cluster { cluster, watched } => cluster.node_mut(watched[i]).start_again(&[]),
        }
    }
}
