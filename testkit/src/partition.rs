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
//! - **a replica and its master**: replica `i` follows its master as the user `link-<i>`,
//!   known on every server, so the cut turns that user off on the master and closes its
//!   connection. The replica retries and is refused until healed, and the master counts it
//!   gone, as it counts a replica it cannot reach.
//!
//! The store logs in as `colony` and the test's own checks do too, so no cut touches them.

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
        let shard = SentinelShard::start_with(master_name, profile, replicas, |i| {
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
            args
        })?;
        let proxies = shard
            .sentinel_addresses()
            .iter()
            .map(|a| LinkProxy::start(a))
            .collect::<std::io::Result<_>>()?;
        Ok(PartitionableShard { shard, proxies })
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

    /// Cuts replica `replica` off from server `master` (or joins it back): `master` refuses
    /// its replication user.
    pub fn cut_replica(&self, master: usize, replica: usize, cut: bool) -> redis::RedisResult<()> {
        self.switch_user(master, &link_user(replica), !cut)
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

    /// Shard server `i`.
    pub fn server(&self, i: usize) -> &RedisServer {
        &self.shard.servers[i]
    }
}
