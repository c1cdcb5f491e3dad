//! Real `redis-sentinel` processes, and a shard the production way: a master, replicas and
//! three Sentinels. Where the master is comes from the store's own Sentinel query
//! (`colony::store::sentinel`), so the harness and the store cannot disagree on how to ask.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use colony::config::Config;
use colony::store::sentinel::{self, SentinelView};

use crate::redis_server::{free_port, ping, Profile, RedisServer, START_DEADLINE};
use crate::wait::wait_until_blocking;

/// A `redis-sentinel` child process, killed when dropped.
pub struct SentinelServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelServer {
    /// Starts a Sentinel from `deploy/redis/sentinel.conf` monitoring `master_name` at
    /// `127.0.0.1:master_port`.
    pub fn start(master_name: &str, master_port: u16) -> std::io::Result<SentinelServer> {
        let template = include_str!("../../deploy/redis/sentinel.conf");
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let dir = tempfile::tempdir()?;
            let rendered = template
                .replace("{{PORT}}", &port.to_string())
                .replace("{{DIR}}", &dir.path().display().to_string())
                .replace("{{MASTER_NAME}}", master_name)
                .replace("{{MASTER_HOST}}", "127.0.0.1")
                .replace("{{MASTER_PORT}}", &master_port.to_string());
            let file = dir.path().join("sentinel.conf");
            std::fs::write(&file, rendered)?;
            let child = Command::new("redis-sentinel")
                .arg(&file)
                .arg("--logfile")
                .arg(dir.path().join("sentinel.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let mut sentinel = SentinelServer {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if sentinel.child.try_wait()?.is_some() {
                    last_error = Some(std::io::Error::other("redis-sentinel exited"));
                    break;
                }
                if ping(port).is_ok() {
                    return Ok(sentinel);
                }
                if Instant::now() > deadline {
                    last_error = Some(std::io::Error::other("redis-sentinel did not answer"));
                    break;
                }
                // Polling interval while waiting for the PING condition above.
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = sentinel.child.kill();
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("redis-sentinel did not start")))
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the Sentinel (SIGKILL).
    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
            self.child.wait()?;
        }
        Ok(())
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://{}/", self.address()))?
            .get_connection_with_timeout(Duration::from_secs(1))
    }

    /// The master's port as this Sentinel reports it.
    pub fn master_port(&self, master_name: &str) -> Option<u16> {
        let mut conn = self.connection().ok()?;
        let (address, details): (Option<Vec<String>>, Vec<String>) =
            sentinel::master_query(master_name).query(&mut conn).ok()?;
        let view = SentinelView::from_replies(address.as_deref(), &details).ok()?;
        view.address.rsplit_once(':')?.1.parse().ok()
    }

    /// True when this Sentinel sees enough Sentinels to authorize a failover.
    pub fn quorum_ok(&self, master_name: &str) -> bool {
        self.connection()
            .and_then(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("ckquorum")
                    .arg(master_name)
                    .query::<String>(&mut c)
            })
            .is_ok()
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// One shard the production way: a master and a replica from a shipped profile, watched by
/// three Sentinels (quorum 2) from `deploy/redis/sentinel.conf`.
pub struct SentinelShard {
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    /// The servers; which one is the master changes with failovers.
    pub servers: Vec<RedisServer>,
    /// The Sentinels.
    pub sentinels: Vec<SentinelServer>,
}

impl SentinelShard {
    /// Starts the shard with `replicas` replicas and waits until they are in sync and every
    /// Sentinel sees a quorum.
    pub fn start(
        master_name: &str,
        profile: Profile,
        replicas: usize,
    ) -> std::io::Result<SentinelShard> {
        SentinelShard::start_with(master_name, profile, replicas, |_, _| Vec::new())
    }

    /// [`SentinelShard::start`], with `extra(i, master_port)` as more arguments of server `i`
    /// (0 is the first master), after the shard's own: Redis reads its arguments as
    /// configuration lines in order, so a later `--replicaof` overrides the one given.
    pub fn start_with(
        master_name: &str,
        profile: Profile,
        replicas: usize,
        extra: impl Fn(usize, u16) -> Vec<String>,
    ) -> std::io::Result<SentinelShard> {
        let args = |i: usize, master_port: u16, own: &[&str]| {
            let mut args: Vec<String> = own.iter().map(|s| s.to_string()).collect();
            args.extend(extra(i, master_port));
            args
        };
        let start = |args: Vec<String>| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            RedisServer::start_profile(profile, &args)
        };
        let master = start(args(0, 0, &[]))?;
        let master_port = master.port();
        let port = master_port.to_string();
        let mut servers = vec![master];
        for i in 1..=replicas {
            servers.push(start(args(
                i,
                master_port,
                &["--replicaof", "127.0.0.1", &port],
            ))?);
        }
        let shard = SentinelShard {
            master_name: master_name.to_string(),
            sentinels: (0..3)
                .map(|_| SentinelServer::start(master_name, servers[0].port()))
                .collect::<std::io::Result<_>>()?,
            servers,
        };
        if !wait_until_blocking(START_DEADLINE, || shard.replicas_online(0) >= replicas) {
            return Err(std::io::Error::other("the replicas did not sync"));
        }
        if !wait_until_blocking(START_DEADLINE * 2, || {
            shard.sentinels.iter().all(|s| s.quorum_ok(master_name))
        }) {
            return Err(std::io::Error::other(
                "the Sentinels did not reach a quorum",
            ));
        }
        Ok(shard)
    }

    /// Replicas the server at `index` reports as online (0 when it is unreachable).
    pub fn replicas_online(&self, index: usize) -> usize {
        self.servers[index].replicas_online()
    }

    /// Index into `servers` of the master the Sentinels report.
    pub fn master_index(&self) -> Option<usize> {
        let port = self
            .sentinels
            .iter()
            .find_map(|s| s.master_port(&self.master_name))?;
        self.servers.iter().position(|s| s.port() == port)
    }

    /// Sentinel addresses.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels.iter().map(SentinelServer::address).collect()
    }

    /// A configuration with this one shard found through the Sentinels.
    pub fn config(&self) -> Config {
        let addresses: Vec<String> = self
            .sentinel_addresses()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        let text = format!(
            "[[shards]]\nname = \"{name}\"\nsentinel = {{ master_name = \"{name}\", addresses = [{}] }}\n",
            addresses.join(", "),
            name = self.master_name,
        );
        match Config::from_toml(&text, []) {
            Ok(config) => config,
            Err(e) => panic!("test configuration is invalid: {e}"),
        }
    }
}
