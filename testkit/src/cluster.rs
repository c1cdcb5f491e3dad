//! A real Redis Cluster on free loopback ports: `redis-server --cluster-enabled yes` nodes,
//! joined, given their slots and replicas the way `redis-cli --cluster create` does, but
//! command by command (no fixed waits: every step waits for its condition with a deadline).
//! A slot can be moved by hand ([`RedisCluster::move_slot`]), with Redis Cluster's own
//! protocol, for tests of a map that goes stale.

use std::time::{Duration, Instant};

use crate::redis_server::{free_port, Profile, RedisServer};
use colony::config::Config;

/// How long a cluster may take to agree on its configuration.
const FORM_DEADLINE: Duration = Duration::from_secs(30);

/// A running Redis Cluster: `masters` masters, each with `replicas` replicas; node `i` of
/// [`RedisCluster::nodes`] is master `i` for `i < masters`, and the replicas of master `m`
/// follow, in order.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Each node's cluster bus port.
    buses: Vec<u16>,
    masters: usize,
    replicas: usize,
}

impl RedisCluster {
    /// A fresh cluster-enabled node with this harness's settings, knowing no other node: what
    /// `colony-admin add-node` takes in.
    pub fn fresh_node(profile: Profile) -> std::io::Result<RedisServer> {
        let bus = free_port()?.to_string();
        RedisServer::start_profile(
            profile,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-require-full-coverage",
                "no",
            ],
        )
    }

    /// Starts `masters` × (1 + `replicas`) nodes from `profile` with `extra` arguments,
    /// splits the slots evenly over the masters (in order), and waits until every node says
    /// the cluster is ok, agrees on every slot's owner and every replica is in sync.
    pub fn start(
        masters: usize,
        replicas: usize,
        profile: Profile,
        extra: &[&str],
    ) -> std::io::Result<RedisCluster> {
        let count = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        let mut buses = Vec::with_capacity(count);
        for _ in 0..count {
            let port = free_port()?;
            buses.push(port);
            let bus = port.to_string();
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                "nodes.conf",
                // Failover within about 3 s of a master's death, as in `deploy/redis/`.
                "--cluster-node-timeout",
                "2000",
                // One master's failure stops only that master's slots (Colony requires it).
                "--cluster-require-full-coverage",
                "no",
            ];
            args.extend_from_slice(extra);
            nodes.push(RedisServer::start_profile(profile, &args)?);
        }
        let cluster = RedisCluster {
            nodes,
            buses,
            masters,
            replicas,
        };
        cluster.form()?;
        Ok(cluster)
    }

    fn form(&self) -> std::io::Result<()> {
        // Distinct configuration epochs before the nodes meet, so that no collision needs
        // resolving (what `redis-cli --cluster create` does).
        for (i, node) in self.nodes.iter().enumerate() {
            query::<()>(
                node,
                redis::cmd("CLUSTER")
                    .arg("SET-CONFIG-EPOCH")
                    .arg(i as u64 + 1),
            )?;
        }
        let (first, first_bus) = (&self.nodes[0], self.buses[0]);
        for node in &self.nodes[1..] {
            query::<()>(
                node,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(first.port())
                    .arg(first_bus),
            )?;
        }
        for (m, node) in self.nodes[..self.masters].iter().enumerate() {
            let (start, end) = even_range(m, self.masters);
            query::<()>(
                node,
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(start)
                    .arg(end),
            )?;
        }
        let count = self.nodes.len();
        self.wait("every node knows every other", || {
            self.nodes
                .iter()
                .all(|n| cluster_nodes(n).is_ok_and(|text| text.lines().count() == count))
        })?;
        for m in 0..self.masters {
            let id = self.id(m)?;
            for r in 0..self.replicas {
                let replica = &self.nodes[self.masters + m * self.replicas + r];
                // A node learns of the master through gossip; until then it refuses.
                self.wait("a replica may follow its master", || {
                    query::<()>(replica, redis::cmd("CLUSTER").arg("REPLICATE").arg(&id)).is_ok()
                })?;
            }
        }
        self.wait("every master has its replicas in sync", || {
            self.nodes[..self.masters]
                .iter()
                .all(|m| m.replicas_online() >= self.replicas)
        })?;
        self.wait_agreed()
    }

    /// Waits until every live node says `cluster_state:ok`, every node lists the same
    /// master for every slot, and every master has its replicas online.
    pub fn wait_agreed(&self) -> std::io::Result<()> {
        self.wait("the cluster agrees and its replicas are in sync", || {
            let mut maps = Vec::new();
            for node in &self.nodes {
                let Ok(info) = query::<String>(node, redis::cmd("CLUSTER").arg("INFO")) else {
                    return false;
                };
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let Ok(text) = cluster_nodes(node) else {
                    return false;
                };
                // Every node knows every master and no other node as one (a replica's new
                // role reaches the others by gossip).
                let masters = text.lines().filter(|l| {
                    l.split_whitespace()
                        .nth(2)
                        .is_some_and(|f| f.contains("master") && !f.contains("fail"))
                });
                if masters.count() != self.masters {
                    return false;
                }
                maps.push(slot_owners(&text));
            }
            maps.windows(2).all(|w| w[0] == w[1])
                && self
                    .master_nodes()
                    .iter()
                    .all(|m| m.replicas_online() >= self.replicas_of(m).len())
        })
    }

    fn wait(&self, what: &str, mut done: impl FnMut() -> bool) -> std::io::Result<()> {
        let deadline = Instant::now() + FORM_DEADLINE;
        while !done() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "the cluster did not get there in time: {what}"
                )));
            }
            // Polling interval while waiting for the condition above.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Every node, masters first (see the type's docs).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`, mutably (to kill, pause or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The nodes that are masters now (asking each; a dead node is none).
    pub fn master_nodes(&self) -> Vec<&RedisServer> {
        self.nodes.iter().filter(|n| n.is_master()).collect()
    }

    /// The nodes that replicate `master` now.
    pub fn replicas_of(&self, master: &RedisServer) -> Vec<&RedisServer> {
        let Ok(id) = node_id(master) else {
            return Vec::new();
        };
        let Ok(text) = cluster_nodes(master) else {
            return Vec::new();
        };
        let ports: Vec<u16> = text
            .lines()
            .filter(|l| l.split_whitespace().nth(3) == Some(id.as_str()))
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(1)?
                    .split('@')
                    .next()?
                    .rsplit_once(':')?
                    .1
                    .parse()
                    .ok()
            })
            .collect();
        self.nodes
            .iter()
            .filter(|n| ports.contains(&n.port()))
            .collect()
    }

    /// Whether the node at `port` serves any slot, as node `asked` says.
    pub fn serves_slots(&self, port: u16, asked: usize) -> bool {
        cluster_nodes(&self.nodes[asked])
            .map(|text| slot_owners(&text).iter().any(|(_, _, p)| *p == port))
            .unwrap_or(false)
    }

    /// Whether node `asked` flags the node at `port` as failed (`fail`: the cluster agreed;
    /// `fail?`, one node's suspicion, is not enough).
    pub fn flagged_failed(&self, port: u16, asked: usize) -> bool {
        cluster_nodes(&self.nodes[asked]).is_ok_and(|text| {
            text.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 2
                    && fields[1].starts_with(&format!("127.0.0.1:{port}@"))
                    && fields[2].split(',').any(|flag| flag == "fail")
            })
        })
    }

    /// The node id of node `i`.
    pub fn id(&self, i: usize) -> std::io::Result<String> {
        node_id(&self.nodes[i])
    }

    /// The node that serves `slot` now, as node `asked` says.
    pub fn owner_of(&self, slot: u16, asked: usize) -> std::io::Result<&RedisServer> {
        let text = cluster_nodes(&self.nodes[asked])?;
        let owners = slot_owners(&text);
        let port = owners
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, port)| *port)
            .ok_or_else(|| std::io::Error::other(format!("slot {slot} has no owner")))?;
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .ok_or_else(|| std::io::Error::other(format!("slot {slot}: unknown port {port}")))
    }

    /// Moves `slot` to master `to` by Redis Cluster's protocol: the target imports, the
    /// source migrates, every key moves with `MIGRATE`, then every master is told the new
    /// owner. Returns the keys moved.
    pub fn move_slot(&self, slot: u16, to: &RedisServer) -> std::io::Result<usize> {
        let moved = self.start_move(slot, to)?;
        self.finish_move(slot, to)?;
        Ok(moved)
    }

    /// The first half of [`RedisCluster::move_slot`]: the target imports, the source
    /// migrates, and every key moves, but the slot stays the source's (`ASK` for keys it no
    /// longer holds) until [`RedisCluster::finish_move`]. Returns the keys moved.
    pub fn start_move(&self, slot: u16, to: &RedisServer) -> std::io::Result<usize> {
        let from = self.owner_of(slot, 0)?;
        if from.port() == to.port() {
            return Err(std::io::Error::other("the slot is already there"));
        }
        let (from_id, to_id) = (node_id(from)?, node_id(to)?);
        setslot(to, slot, "IMPORTING", &from_id)?;
        setslot(from, slot, "MIGRATING", &to_id)?;
        let mut moved = 0;
        loop {
            let keys: Vec<Vec<u8>> = query(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )?;
            if keys.is_empty() {
                break;
            }
            moved += keys.len();
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to.port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(keys);
            query::<()>(from, &migrate)?;
        }
        Ok(moved)
    }

    /// The second half of [`RedisCluster::move_slot`]: every master is told that `to` owns
    /// `slot` (the target first, then the source, as Redis's own tool does).
    pub fn finish_move(&self, slot: u16, to: &RedisServer) -> std::io::Result<()> {
        let from = self.owner_of(slot, 0)?;
        let to_id = node_id(to)?;
        setslot(to, slot, "NODE", &to_id)?;
        setslot(from, slot, "NODE", &to_id)?;
        for master in self.master_nodes() {
            if master.port() != to.port() && master.port() != from.port() {
                setslot(master, slot, "NODE", &to_id)?;
            }
        }
        Ok(())
    }

    /// A configuration whose `[cluster]` names the first node as its only seed.
    pub fn config(&self) -> Config {
        let text = format!("[cluster]\nseeds = [\"{}\"]\n", self.nodes[0].address());
        match Config::from_toml(&text, []) {
            Ok(config) => config,
            Err(e) => panic!("test configuration is invalid: {e}"),
        }
    }
}

/// Master `m` of `masters`'s even share of the slots, as `ShardMap` splits them.
fn even_range(m: usize, masters: usize) -> (usize, usize) {
    let start = (m * 16384).div_ceil(masters);
    let end = ((m + 1) * 16384).div_ceil(masters) - 1;
    (start, end)
}

fn setslot(node: &RedisServer, slot: u16, what: &str, id: &str) -> std::io::Result<()> {
    query::<()>(
        node,
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(what)
            .arg(id),
    )
}

fn query<T: redis::FromRedisValue>(node: &RedisServer, cmd: &redis::Cmd) -> std::io::Result<T> {
    let mut conn = redis::Client::open(node.url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .map_err(std::io::Error::other)?;
    cmd.query(&mut conn).map_err(std::io::Error::other)
}

fn cluster_nodes(node: &RedisServer) -> std::io::Result<String> {
    query(node, redis::cmd("CLUSTER").arg("NODES"))
}

fn node_id(node: &RedisServer) -> std::io::Result<String> {
    query(node, redis::cmd("CLUSTER").arg("MYID"))
}

/// Each served slot range and its master's port, from a `CLUSTER NODES` reply, sorted.
fn slot_owners(text: &str) -> Vec<(u16, u16, u16)> {
    let mut owners = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let Some(port) = fields[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
        else {
            continue;
        };
        for range in &fields[8..] {
            if range.starts_with('[') {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                owners.push((a, b, port));
            }
        }
    }
    owners.sort();
    owners
}
