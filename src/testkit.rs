//! Real `redis-server` processes for tests and benchmarks (feature `testkit`).
//!
//! [`RedisServer::start`] launches `redis-server` on a free loopback port in a temporary
//! directory, waits until it answers `PING` (with a deadline, never a fixed sleep), and kills
//! it on drop. Nothing here is a mock: tests talk to the real server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Config;

/// How long a server may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// A `redis-server` child process, killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    profile: Profile,
    extra: Vec<String>,
}

/// Which shipped configuration a server starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// No configuration file: the test defaults only (no persistence).
    Plain,
    /// `deploy/redis/redis-safe.conf`.
    Safe,
    /// `deploy/redis/redis-naive.conf`.
    Naive,
}

impl Profile {
    fn file(self) -> Option<&'static str> {
        match self {
            Profile::Plain => None,
            Profile::Safe => Some(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/redis/redis-safe.conf"
            )),
            Profile::Naive => Some(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/redis/redis-naive.conf"
            )),
        }
    }
}

impl RedisServer {
    /// Starts a standalone server with no persistence.
    pub fn start() -> std::io::Result<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with(extra: &[&str]) -> std::io::Result<RedisServer> {
        RedisServer::start_profile(Profile::Plain, extra)
    }

    /// Starts a server from a shipped profile, with extra arguments after it.
    pub fn start_profile(profile: Profile, extra: &[&str]) -> std::io::Result<RedisServer> {
        let mut last_error = None;
        // A port found free can be taken by someone else before redis binds it: try again.
        for _ in 0..5 {
            match RedisServer::try_start(profile, extra) {
                Ok(server) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    fn try_start(profile: Profile, extra: &[&str]) -> std::io::Result<RedisServer> {
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(port, dir.path(), profile, &extra)?;
        let mut server = RedisServer {
            child,
            port,
            dir,
            profile,
            extra,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Kills the server (SIGKILL) and starts a new one on the same port and directory.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill()?;
        self.start_again(&[])
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
            self.child.wait()?;
        }
        Ok(())
    }

    /// Starts a killed server again on its port and directory, with `more` arguments after
    /// the original ones (e.g. `--replicaof host port`).
    pub fn start_again(&mut self, more: &[&str]) -> std::io::Result<()> {
        let mut extra = self.extra.clone();
        extra.extend(more.iter().map(|s| s.to_string()));
        self.child = spawn(self.port, self.dir.path(), self.profile, &extra)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "redis-server exited with {status}: {log}"
                )));
            }
            if ping(self.port).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(
                    "redis-server did not answer PING in time",
                ));
            }
            // Polling interval while waiting for the PING condition above.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `INFO replication`, or `None` when the server does not answer within a second.
    fn replication_info(&self) -> Option<String> {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
            .ok()
    }

    /// Replicas this server reports as online (0 when it is unreachable).
    pub fn replicas_online(&self) -> usize {
        self.replication_info().map_or(0, |i| {
            i.lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count()
        })
    }

    /// Whether the server answers as a master (false when it is unreachable).
    pub fn is_master(&self) -> bool {
        self.replication_info()
            .is_some_and(|i| i.lines().any(|l| l.trim_end() == "role:master"))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` on `port` with its files in `dir`.
fn spawn(port: u16, dir: &Path, profile: Profile, extra: &[String]) -> std::io::Result<Child> {
    let mut command = Command::new("redis-server");
    // A configuration file must come first; the options after it override it. It is a copy:
    // Sentinel rewrites the file of a server whose replication it reconfigures.
    if let Some(file) = profile.file() {
        let copy = dir.join("redis.conf");
        if !copy.exists() {
            std::fs::copy(file, &copy)?;
        }
        command.arg(copy);
    }
    command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--protected-mode", "no"])
        .args(["--daemonize", "no"])
        // Tests compare `DEBUG DIGEST` before and after rejected input.
        .args(["--enable-debug-command", "local"])
        // Replicas sync at once instead of waiting for others to share the transfer.
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if profile == Profile::Plain {
        command.args(["--appendonly", "no"]);
    }
    command.spawn().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot run redis-server (is it installed? `bash .ci/setup`): {e}"),
        )
    })
}

/// Sends an inline `PING` and expects `+PONG`.
fn ping(port: u16) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf)?;
    if &buf == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected PING reply"))
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A configuration whose shards are `servers`, in order, with default settings.
pub fn config_for(servers: &[&RedisServer]) -> Config {
    let mut text = String::new();
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "[[shards]]\nname = \"shard-{i}\"\nmaster = \"{}\"\n",
            server.address()
        ));
    }
    match Config::from_toml(&text, []) {
        Ok(config) => config,
        Err(e) => panic!("test configuration is invalid: {e}"),
    }
}

/// Token of the `game` role in [`gateway_config`].
pub const GAME_TOKEN: &str = "game-token-for-tests-0001";
/// Token of the `admin` role in [`gateway_config`].
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";

/// A configuration for `servers` with a game and an admin token, listening on free ports.
pub fn gateway_config(servers: &[&RedisServer]) -> Config {
    with_test_gateway(config_for(servers))
}

/// `config` with the game and admin test tokens, listening on free loopback ports.
pub fn with_test_gateway(mut config: Config) -> Config {
    config.gateway.listen = "127.0.0.1:0".into();
    config.gateway.admin_listen = "127.0.0.1:0".into();
    config.gateway.tokens = vec![
        crate::config::TokenConfig {
            name: "game".into(),
            token: GAME_TOKEN.into(),
            role: crate::config::Role::Game,
        },
        crate::config::TokenConfig {
            name: "admin".into(),
            token: ADMIN_TOKEN.into(),
            role: crate::config::Role::Admin,
        },
    ];
    config
}

/// A real gateway, in process, serving TCP and admin HTTP on free loopback ports.
pub struct TestGateway {
    /// The protobuf listener's address.
    pub address: std::net::SocketAddr,
    /// The admin HTTP listener's address.
    pub admin_address: std::net::SocketAddr,
    /// The gateway (store, metrics).
    pub gateway: crate::gateway::Gateway,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway for `config` (whose listen addresses should use port 0).
    pub async fn start(config: &Config) -> std::io::Result<TestGateway> {
        let gateway = crate::gateway::Gateway::new(config)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(&config.gateway.listen).await?;
        let admin = tokio::net::TcpListener::bind(&config.gateway.admin_listen).await?;
        let address = listener.local_addr()?;
        let admin_address = admin.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let served = gateway.clone();
        let task = tokio::spawn(async move {
            let admin_task = tokio::spawn(crate::gateway::admin::serve(
                admin,
                served.clone(),
                async move {
                    let _ = admin_stopped.await;
                },
            ));
            crate::gateway::run(listener, served, async move {
                let _ = stopped.await;
            })
            .await;
            let _ = admin_stop.send(());
            let _ = admin_task.await;
        });
        Ok(TestGateway {
            address,
            admin_address,
            gateway,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Signals shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits until every connection has drained.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

impl RedisServer {
    /// Suspends the server (SIGSTOP): it keeps its connections but answers nothing.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal("-STOP")
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> std::io::Result<()> {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill {signal} failed")))
        }
    }
}

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
        let template = include_str!("../deploy/redis/sentinel.conf");
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
            crate::store::sentinel::master_query(master_name)
                .query(&mut conn)
                .ok()?;
        let view = crate::store::sentinel::SentinelView::from_replies(address.as_deref(), &details)
            .ok()?;
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

/// Waits for `condition` with a deadline, polling every 10 ms without blocking the runtime:
/// for conditions that tasks on the same runtime must bring about (a gateway in the test's own
/// runtime, say). Returns whether it held.
pub async fn wait_for(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        // Polling interval of a condition wait with a deadline.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for `condition` with a deadline, polling every 20 ms and blocking the thread (for
/// conditions outside the runtime: processes, servers). Returns whether it held.
pub fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        // Polling interval of a condition wait with a deadline.
        std::thread::sleep(Duration::from_millis(20));
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
        let master = RedisServer::start_profile(profile, &[])?;
        let port = master.port().to_string();
        let mut servers = vec![master];
        for _ in 0..replicas {
            servers.push(RedisServer::start_profile(
                profile,
                &["--replicaof", "127.0.0.1", &port],
            )?);
        }
        let shard = SentinelShard {
            master_name: master_name.to_string(),
            sentinels: (0..3)
                .map(|_| SentinelServer::start(master_name, servers[0].port()))
                .collect::<std::io::Result<_>>()?,
            servers,
        };
        if !wait_until(START_DEADLINE, || shard.replicas_online(0) >= replicas) {
            return Err(std::io::Error::other("the replicas did not sync"));
        }
        if !wait_until(START_DEADLINE * 2, || {
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

/// A record of counter increments, for checking after a fault that nothing acknowledged was
/// lost and nothing was applied twice.
///
/// Each request is one increment of one counter by one, sent until it settles (retries keep
/// its idempotency key). A request ends acknowledged (OK), failed (definitely not applied), or
/// unknown (it may have applied). With `acknowledged` and `unknown` per counter, a final value
/// `v` is correct when `acknowledged <= v <= acknowledged + unknown`.
#[derive(Debug, Default, Clone)]
pub struct History {
    counters: std::collections::BTreeMap<String, CounterHistory>,
    /// When each acknowledgement arrived, in order.
    pub ack_times: Vec<Instant>,
    /// Faults injected, with when they happened, in the same timeline.
    pub faults: Vec<(Instant, String)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct CounterHistory {
    acknowledged: u64,
    unknown: u64,
    failed: u64,
}

/// What the checker found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Increments acknowledged.
    pub acknowledged: u64,
    /// Increments whose outcome stayed unknown.
    pub unknown: u64,
    /// Increments that definitely failed.
    pub failed: u64,
    /// Acknowledged increments missing from the final values.
    pub lost: u64,
    /// Increments applied beyond what was acknowledged or unknown.
    pub extra: u64,
}

impl Verdict {
    /// Panics, naming `context` (the seed, say), unless nothing acknowledged was lost and
    /// nothing was applied twice.
    pub fn assert_exact(&self, context: &str) {
        assert_eq!(
            self.lost, 0,
            "{context}: acknowledged increments lost: {self:?}"
        );
        assert_eq!(
            self.extra, 0,
            "{context}: increments applied twice: {self:?}"
        );
    }
}

impl History {
    /// Records an acknowledged increment of `counter`.
    pub fn acknowledged(&mut self, counter: &str) {
        self.counters
            .entry(counter.to_string())
            .or_default()
            .acknowledged += 1;
        self.ack_times.push(Instant::now());
    }

    /// Records an increment whose outcome is unknown.
    pub fn unknown(&mut self, counter: &str) {
        self.counters
            .entry(counter.to_string())
            .or_default()
            .unknown += 1;
    }

    /// Records an increment that was definitely not applied.
    pub fn failed(&mut self, counter: &str) {
        self.counters.entry(counter.to_string()).or_default().failed += 1;
    }

    /// Records a fault.
    pub fn fault(&mut self, what: impl Into<String>) {
        self.faults.push((Instant::now(), what.into()));
    }

    /// The counters that were written.
    pub fn counters(&self) -> Vec<String> {
        self.counters.keys().cloned().collect()
    }

    /// Checks final values (`final_value(counter)`) against the history.
    pub fn check(&self, mut final_value: impl FnMut(&str) -> u64) -> Verdict {
        let mut verdict = Verdict::default();
        for (counter, h) in &self.counters {
            let value = final_value(counter);
            verdict.acknowledged += h.acknowledged;
            verdict.unknown += h.unknown;
            verdict.failed += h.failed;
            verdict.lost += h.acknowledged.saturating_sub(value);
            verdict.extra += value.saturating_sub(h.acknowledged + h.unknown);
        }
        verdict
    }

    /// The longest time without an acknowledgement after `since`.
    pub fn longest_gap_after(&self, since: Instant) -> Option<Duration> {
        let mut previous = since;
        let mut longest = None;
        for &t in self.ack_times.iter().filter(|t| **t > since) {
            let gap = t.duration_since(previous);
            if longest.is_none_or(|l| gap > l) {
                longest = Some(gap);
            }
            previous = t;
        }
        longest
    }
}

/// The seeded generator of fault schedules ([`crate::seeded::SplitMix64`]).
pub use crate::seeded::SplitMix64 as Seeded;

impl Seeded {
    /// A seed from the environment variable `COLONY_FAULT_SEED`, or from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("COLONY_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_finds_planted_loss_and_double_applies() {
        let mut h = History::default();
        for _ in 0..5 {
            h.acknowledged("a");
        }
        h.unknown("a");
        h.acknowledged("b");
        h.failed("b");
        let fine = h.check(|c| if c == "a" { 6 } else { 1 });
        assert_eq!((fine.lost, fine.extra), (0, 0));
        let also_fine = h.check(|c| if c == "a" { 5 } else { 1 });
        assert_eq!((also_fine.lost, also_fine.extra), (0, 0));
        let lost = h.check(|c| if c == "a" { 3 } else { 0 });
        assert_eq!((lost.lost, lost.extra), (3, 0));
        let doubled = h.check(|c| if c == "a" { 8 } else { 2 });
        assert_eq!((doubled.lost, doubled.extra), (0, 3));
        assert_eq!(doubled.acknowledged, 6);
        assert_eq!(doubled.failed, 1);
    }

    #[test]
    fn seeded_schedules_repeat() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut s = Seeded::new(7);
                move |_| s.range(10, 20)
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut s = Seeded::new(7);
                move |_| s.range(10, 20)
            })
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (10..20).contains(v)));
    }
}

/// Where a fault scenario's writes go: the library, or the gateway through the Rust client.
#[derive(Clone)]
pub enum Target {
    /// Straight to the store.
    Store(crate::store::Store),
    /// Through a gateway.
    Client(crate::client::Client),
}

impl Target {
    async fn execute(
        &self,
        txn: crate::model::Transaction,
    ) -> Result<crate::model::Committed, crate::error::Error> {
        match self {
            Target::Store(store) => store.execute(txn).await,
            Target::Client(client) => client.execute(txn).await,
        }
    }
}

/// Writers that increment counters until stopped, recording every outcome in a [`History`].
///
/// Each request increments one counter by one and is sent until it settles: retries keep its
/// idempotency key, so it applies at most once. Writer `w` uses counters chosen by a seeded
/// generator among `counters` names `<prefix>-<n>`.
pub struct IncrementWriters {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    history: std::sync::Arc<std::sync::Mutex<History>>,
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicU64>,
    attempts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IncrementWriters {
    /// Starts `writers` writers against `target`.
    pub fn start(
        target: Target,
        writers: u64,
        prefix: &str,
        counters: u64,
        seed: u64,
    ) -> IncrementWriters {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        // A writer that panicked cannot leave the History half-written: locks are taken
        // through poisoning below.
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let attempts = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|w| {
                let (target, stop, history, acknowledged, attempts) = (
                    target.clone(),
                    stop.clone(),
                    history.clone(),
                    acknowledged.clone(),
                    attempts.clone(),
                );
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut random = Seeded::new(seed.wrapping_add(w));
                    let mut request = 0u64;
                    'requests: while !stop.load(Ordering::Relaxed) {
                        request += 1;
                        let counter = format!("{prefix}-{}", random.range(0, counters));
                        let (Ok(player), Ok(key), Ok(name)) = (
                            crate::model::PlayerId::new(counter.clone()),
                            crate::model::IdempotencyKey::new(format!("writer-{w}"), request),
                            crate::model::Name::new("n"),
                        ) else {
                            return;
                        };
                        let txn = crate::model::Transaction::owner(player, Some(key)).with(
                            crate::model::Operation::IncrementCounter {
                                name,
                                delta: 1,
                                min: None,
                                max: None,
                                visibility: crate::model::Visibility::Private,
                            },
                        );
                        let mut maybe_applied = false;
                        loop {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            match target.execute(txn.clone()).await {
                                Ok(_) => {
                                    history
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .acknowledged(&counter);
                                    acknowledged.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                Err(e) if e.is_retryable() => {
                                    maybe_applied |= e.code() == crate::error::Code::Unknown;
                                    if stop.load(Ordering::Relaxed) {
                                        let mut h =
                                            history.lock().unwrap_or_else(|p| p.into_inner());
                                        if maybe_applied {
                                            h.unknown(&counter);
                                        } else {
                                            h.failed(&counter);
                                        }
                                        break 'requests;
                                    }
                                    // A client's pause between attempts (the store fails fast
                                    // while a breaker is open), not a wait for a condition.
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                Err(e) => panic!("unexpected error {e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        IncrementWriters {
            stop,
            history,
            acknowledged,
            attempts,
            tasks,
        }
    }

    /// Increments acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Attempts sent so far, retries included.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a fault in the history's timeline.
    pub fn fault(&self, what: impl Into<String>) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fault(what);
    }

    /// Stops the writers, waits for them, and returns the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        std::mem::take(&mut *self.history.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The final value of every counter in `history`, read as the owner through `target`.
pub async fn final_counters(target: &Target, history: &History) -> Vec<(String, u64)> {
    let mut values = Vec::new();
    for counter in history.counters() {
        let Ok(player) = crate::model::PlayerId::new(counter.clone()) else {
            continue;
        };
        let read = crate::model::Transaction::owner(player, None)
            .with(crate::model::Operation::Read { names: Vec::new() });
        let value = match target.execute(read).await {
            Ok(c) => match c
                .reads
                .first()
                .and_then(|r| r.entries.first())
                .map(|e| &e.value)
            {
                Some(crate::model::Value::Counter(v)) => *v as u64,
                _ => 0,
            },
            Err(e) => panic!("final read of {counter}: {e}"),
        };
        values.push((counter, value));
    }
    values
}

impl History {
    /// Checks the history against the final counters read through `target`.
    pub async fn check_against(&self, target: &Target) -> Verdict {
        let values = final_counters(target, self).await;
        self.check(|c| values.iter().find(|(n, _)| n == c).map_or(0, |(_, v)| *v))
    }
}

/// A MongoDB-wire server for tests: SecantusDB (`secantusd-py`, installed by `.ci/setup`) on a
/// free loopback port with an in-memory store, killed on drop. When `COLONY_TEST_MONGODB_URI`
/// is set, that server (a real MongoDB, say) is used instead and nothing is started.
pub struct MongoServer {
    child: Option<Child>,
    uri: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl MongoServer {
    /// Starts SecantusDB, or uses `COLONY_TEST_MONGODB_URI`.
    pub fn start() -> std::io::Result<MongoServer> {
        if let Ok(uri) = std::env::var("COLONY_TEST_MONGODB_URI") {
            return Ok(MongoServer {
                child: None,
                uri,
                port: 0,
                _dir: tempfile::tempdir()?,
            });
        }
        let binary = secantusd_path();
        let mut last_error = None;
        // A port found free can be taken before the server binds it: try again.
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let port = free_port()?;
            let log = std::fs::File::create(dir.path().join("secantusd.log"))?;
            let child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--storage-path", ":memory:", "--log-level", "WARNING"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot run {} (run `bash .ci/setup`): {e}",
                            binary.display()
                        ),
                    )
                })?;
            let mut server = MongoServer {
                child: Some(child),
                uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
                port,
                _dir: dir,
            };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("secantusd did not start")))
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + START_DEADLINE * 2;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(std::io::Error::other(format!(
                        "secantusd exited with {status}"
                    )));
                }
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("secantusd did not listen in time"));
            }
            // Polling interval while waiting for the listener above.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Kills the server (SIGKILL): MongoDB is down from now on.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait()?.is_none() {
                child.kill()?;
                child.wait()?;
            }
        }
        Ok(())
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Where `.ci/setup` installs SecantusDB, unless `COLONY_SECANTUSD` names the binary.
fn secantusd_path() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("COLONY_SECANTUSD") {
        return path.into();
    }
    let tools = std::env::var("COLONY_TOOLS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/colony")
        });
    tools.join("secantus/bin/secantusd-py")
}
