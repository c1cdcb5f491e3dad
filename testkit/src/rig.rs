//! Watched shards on either topology, for fault tests that must hold on both: Sentinel shards
//! (each a master, its replicas and three Sentinels), or a Redis Cluster of three masters
//! with the same replicas each. A fault test kills, pauses and restarts shard `g`'s servers by
//! index and asks which one is its master, the same way on both; on a cluster the masters it
//! does not touch keep serving their players meanwhile.
//!
//! Shard `g` is the store's shard `g` on both: Sentinel shards are listed in order, and a
//! cluster's shards are numbered by their lowest slot, which is master `g`'s even share.

use colony::config::Config;

use crate::cluster::RedisCluster;
use crate::redis_server::{Profile, RedisServer};
use crate::sentinel::SentinelShard;

/// Which topology a fault test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Sentinel shards.
    Sentinel,
    /// A Redis Cluster of three masters.
    Cluster,
}

/// Masters a cluster rig has, whatever number of shards a test watches.
const CLUSTER_MASTERS: usize = 3;

/// The shards of a fault test.
pub enum Rig {
    /// Sentinel shards, in the configuration's order.
    Sentinel(Vec<SentinelShard>),
    /// A Redis Cluster and how many replicas each of its masters has.
    Cluster(RedisCluster, usize),
}

impl Rig {
    /// Starts `shards` shards of `topology` from `profile` with `replicas` replicas each
    /// (on a cluster, always three masters: at most three shards to watch). Sentinel shards
    /// are named `<tag>-<g>`.
    pub fn start(
        topology: Topology,
        tag: &str,
        profile: Profile,
        replicas: usize,
        shards: usize,
    ) -> std::io::Result<Rig> {
        match topology {
            Topology::Sentinel => Ok(Rig::Sentinel(
                (0..shards)
                    .map(|g| SentinelShard::start(&format!("{tag}-{g}"), profile, replicas))
                    .collect::<std::io::Result<_>>()?,
            )),
            Topology::Cluster => {
                if shards > CLUSTER_MASTERS {
                    return Err(std::io::Error::other("a cluster rig has three masters"));
                }
                Ok(Rig::Cluster(
                    RedisCluster::start(CLUSTER_MASTERS, replicas, profile, &[])?,
                    replicas,
                ))
            }
        }
    }

    /// A configuration for the whole topology.
    pub fn config(&self) -> Config {
        match self {
            Rig::Sentinel(shards) => {
                let mut text = String::new();
                for shard in shards {
                    let addresses: Vec<String> = shard
                        .sentinel_addresses()
                        .iter()
                        .map(|a| format!("\"{a}\""))
                        .collect();
                    text.push_str(&format!(
                        "[[shards]]\nname = \"{name}\"\nsentinel = {{ master_name = \"{name}\", addresses = [{}] }}\n",
                        addresses.join(", "),
                        name = shard.master_name,
                    ));
                }
                match Config::from_toml(&text, []) {
                    Ok(config) => config,
                    Err(e) => panic!("test configuration is invalid: {e}"),
                }
            }
            Rig::Cluster(cluster, _) => cluster.config(),
        }
    }

    /// How many servers shard `g` has.
    pub fn len(&self, g: usize) -> usize {
        match self {
            Rig::Sentinel(shards) => shards[g].servers.len(),
            Rig::Cluster(_, replicas) => 1 + replicas,
        }
    }

    /// The index into the cluster's nodes of shard `g`'s server `i`: its first master, then
    /// its replicas, as the cluster was formed.
    fn node(replicas: usize, g: usize, i: usize) -> usize {
        if i == 0 {
            g
        } else {
            CLUSTER_MASTERS + g * replicas + (i - 1)
        }
    }

    /// Shard `g`'s server `i`.
    pub fn server(&self, g: usize, i: usize) -> &RedisServer {
        match self {
            Rig::Sentinel(shards) => &shards[g].servers[i],
            Rig::Cluster(cluster, replicas) => &cluster.nodes()[Rig::node(*replicas, g, i)],
        }
    }

    /// Shard `g`'s server `i`, to kill, pause or restart.
    pub fn server_mut(&mut self, g: usize, i: usize) -> &mut RedisServer {
        match self {
            Rig::Sentinel(shards) => &mut shards[g].servers[i],
            Rig::Cluster(cluster, replicas) => cluster.node_mut(Rig::node(*replicas, g, i)),
        }
    }

    /// Which of shard `g`'s servers is its master now: as the Sentinels report it, or as the
    /// cluster does (the one that answers as a master and serves slots, asked of a master of
    /// another shard).
    pub fn master_index(&self, g: usize) -> Option<usize> {
        match self {
            Rig::Sentinel(shards) => shards[g].master_index(),
            Rig::Cluster(cluster, replicas) => {
                let members: Vec<usize> = (0..=*replicas)
                    .map(|i| Rig::node(*replicas, g, i))
                    .collect();
                let asked = (0..cluster.nodes().len())
                    .find(|i| !members.contains(i) && cluster.nodes()[*i].is_master())?;
                (0..members.len()).find(|&i| {
                    let node = &cluster.nodes()[members[i]];
                    node.is_master() && cluster.serves_slots(node.port(), asked)
                })
            }
        }
    }

    /// Starts shard `g`'s server `i` again after a kill, as a replica of its server `master`
    /// (on a cluster it rejoins by itself, from its `nodes.conf`).
    pub fn restart_as_replica(&mut self, g: usize, i: usize, master: usize) -> std::io::Result<()> {
        match self {
            Rig::Sentinel(shards) => {
                let port = shards[g].servers[master].port().to_string();
                shards[g].servers[i].start_again(&["--replicaof", "127.0.0.1", &port])
            }
            Rig::Cluster(cluster, replicas) => cluster
                .node_mut(Rig::node(*replicas, g, i))
                .start_again(&[]),
        }
    }

    /// Lets a failover of shard `g` follow soon after another (Sentinel: `failover-timeout`
    /// 3 s instead of the shipped 10 s, after which a Sentinel may fail the same master over
    /// again only at twice that; a cluster's election has no such pause).
    pub fn allow_quick_failovers(&self, g: usize) {
        let Rig::Sentinel(shards) = self else {
            return;
        };
        let shard = &shards[g];
        for address in shard.sentinel_addresses() {
            let mut sentinel = redis::Client::open(format!("redis://{address}"))
                .and_then(|c| c.get_connection_with_timeout(std::time::Duration::from_secs(2)))
                .expect("the Sentinel answers");
            let _: () = redis::cmd("SENTINEL")
                .arg("SET")
                .arg(&shard.master_name)
                .arg("failover-timeout")
                .arg(3000)
                .query(&mut sentinel)
                .expect("SENTINEL SET");
        }
    }
}
