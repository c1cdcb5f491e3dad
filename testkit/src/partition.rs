//! A Sentinel shard that a fault test can partition (RELIABILITY.md scenario 4): any of its
//! servers cut off from the Sentinels, any replica cut off from the master, and the store cut
//! off from the Sentinels, in any combination, then healed.
//!
//! Every process here shares one loopback interface, so the links are cut where each one
//! starts:
//!
//! - **the store and the Sentinels**: the store reaches each Sentinel through a
//!   [`LinkProxy`], which a cut turns into a black hole;
//! - **a server and the Sentinels**: Sentinels log in as Redis's `default` user, which
//!   nothing else here uses, so the cut turns `default` off on that server and closes its
//!   connections. What a Sentinel sees is a server that answers every command with
//!   `NOAUTH`: not a valid reply, so it is flagged down after `down-after`, as an
//!   unreachable one is;
//! - **a replica and its first master**: each replica follows the first master through a
//!   [`LinkProxy`] of its own, which a cut turns into a black hole. Both ends keep the link
//!   and hear nothing, as in a real partition: the master keeps the replica attached and the
//!   replica keeps its link up until `repl-timeout` (no reset tells either side at once).
//!   Replica `i` logs in as the user `link-<i>`, known on every server, so that cutting a
//!   server off from the Sentinels leaves its replication alone.
//!
//! The store logs in as `colony` and the test's own checks do too, so no cut touches them.
//! Once the Sentinels move a replica to another master it follows that one directly.

use std::time::Duration;

use colony::config::Config;

use crate::proxy::LinkProxy;
use crate::redis_server::{Profile, RedisServer};
use crate::sentinel::SentinelShard;

/// The user the store and the test log in as on every server.
pub const STORE_USER: &str = "colony";
/// That user's password.
pub const STORE_PASSWORD: &str = "colony-partition-test";
/// The password of every replica's replication user.
const LINK_PASSWORD: &str = "link-partition-test";

/// The replication user of server `i` (used while it is a replica).
fn link_user(i: usize) -> String {
    format!("link-{i}")
}

/// A Sentinel shard whose links can be cut (see the module's documentation).
pub struct PartitionableShard {
    /// The shard: its servers, in start order, and its Sentinels.
    pub shard: SentinelShard,
    /// One proxy per Sentinel, in the same order: the store's way to them.
    proxies: Vec<LinkProxy>,
    /// Each replica's way to the first master, by server index.
    replica_links: Vec<(usize, LinkProxy)>,
}

impl PartitionableShard {
    /// Starts a shard of `1 + replicas` servers from `profile`, every server knowing the
    /// store's user and every replica's replication user.
    pub fn start(
        master_name: &str,
        profile: Profile,
        replicas: usize,
    ) -> std::io::Result<PartitionableShard> {
        let servers = 1 + replicas;
        let replica_links = std::cell::RefCell::new(Vec::new());
        let link_error = std::cell::RefCell::new(None);
        let shard = SentinelShard::start_with(master_name, profile, replicas, |i, master_port| {
            let mut args: Vec<String> = Vec::new();
            let mut user = |name: &str, password: &str| {
                args.extend(
                    [
                        "--user",
                        name,
                        "on",
                        &format!(">{password}"),
                        "~*",
                        "&*",
                        "+@all",
                    ]
                    .map(String::from),
                );
            };
            user(STORE_USER, STORE_PASSWORD);
            for j in 0..servers {
                user(&link_user(j), LINK_PASSWORD);
            }
            args.extend(
                ["--masteruser", &link_user(i), "--masterauth", LINK_PASSWORD].map(String::from),
            );
            if i > 0 {
                match LinkProxy::start(&format!("127.0.0.1:{master_port}")) {
                    Ok(link) => {
                        let port = link.address().rsplit_once(':').map(|(_, p)| p.to_string());
                        args.extend(["--replicaof".into(), "127.0.0.1".into()]);
                        args.extend(port);
                        replica_links.borrow_mut().push((i, link));
                    }
                    Err(e) => *link_error.borrow_mut() = Some(e),
                }
            }
            args
        })?;
        if let Some(e) = link_error.into_inner() {
            return Err(e);
        }
        let proxies = shard
            .sentinel_addresses()
            .iter()
            .map(|a| LinkProxy::start(a))
            .collect::<std::io::Result<_>>()?;
        Ok(PartitionableShard {
            shard,
            proxies,
            replica_links: replica_links.into_inner(),
        })
    }

    /// A configuration with this shard found through the proxies to its Sentinels, logging
    /// in as [`STORE_USER`].
    pub fn config(&self) -> Config {
        let addresses: Vec<String> = self
            .proxies
            .iter()
            .map(|p| format!("\"{}\"", p.address()))
            .collect();
        let text = format!(
            "[[shards]]\nname = \"{name}\"\nusername = \"{STORE_USER}\"\npassword = \"{STORE_PASSWORD}\"\n\
             sentinel = {{ master_name = \"{name}\", addresses = [{}] }}\n",
            addresses.join(", "),
            name = self.shard.master_name,
        );
        match Config::from_toml(&text, []) {
            Ok(config) => config,
            Err(e) => panic!("test configuration is invalid: {e}"),
        }
    }

    /// Server `i`, logged in as [`STORE_USER`].
    pub fn connection(&self, i: usize) -> redis::RedisResult<redis::Connection> {
        let server = &self.shard.servers[i];
        redis::Client::open(format!(
            "redis://{STORE_USER}:{STORE_PASSWORD}@{}/",
            server.address()
        ))?
        .get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Turns `user` on or off on server `i`; off also closes its connections.
    fn switch_user(&self, i: usize, user: &str, on: bool) -> redis::RedisResult<()> {
        let mut conn = self.connection(i)?;
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg(if on { "on" } else { "off" })
            .query(&mut conn)?;
        if !on {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("USER")
                .arg(user)
                .query(&mut conn)?;
        }
        Ok(())
    }

    /// Cuts server `i` off from the Sentinels (or joins it back).
    pub fn cut_from_sentinels(&self, i: usize, cut: bool) -> redis::RedisResult<()> {
        self.switch_user(i, "default", !cut)
    }

    /// Cuts replica `replica` off from the first master, server 0 (or joins it back).
    pub fn cut_replica(&self, replica: usize, cut: bool) {
        for (_, link) in self.replica_links.iter().filter(|(i, _)| *i == replica) {
            if cut {
                link.cut();
            } else {
                link.heal();
            }
        }
    }

    /// Cuts the store off from every Sentinel (or joins it back).
    pub fn cut_store_from_sentinels(&self, cut: bool) {
        for proxy in &self.proxies {
            if cut {
                proxy.cut();
            } else {
                proxy.heal();
            }
        }
    }

    /// Server `i`'s role as it answers the store's user (`master`, `slave`), or `None` when
    /// it does not answer.
    pub fn role(&self, i: usize) -> Option<String> {
        let mut conn = self.connection(i).ok()?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).ok()?;
        match role.first()? {
            redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            redis::Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        }
    }

    /// Server `i`'s replication offset as `ROLE` gives it: a master's own, a replica's
    /// processed one; `None` when it does not answer.
    pub fn offset(&self, i: usize) -> Option<i64> {
        let mut conn = self.connection(i).ok()?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).ok()?;
        let at = if self.role(i)? == "master" { 1 } else { 4 };
        match role.get(at)? {
            redis::Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// Shard server `i`.
    pub fn server(&self, i: usize) -> &RedisServer {
        &self.shard.servers[i]
    }
}
