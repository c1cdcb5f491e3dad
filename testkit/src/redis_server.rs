//! Real `redis-server` processes on free loopback ports.
//!
//! [`RedisServer::start`] launches `redis-server` in a temporary directory, waits until it
//! answers `PING` (with a deadline, never a fixed sleep), and kills it on drop. Shipped
//! profiles (`deploy/redis/`) start it the way production does. Nothing here is a mock.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(15);

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
                "/../deploy/redis/redis-safe.conf"
            )),
            Profile::Naive => Some(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/redis/redis-naive.conf"
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

    /// `CONFIG SET name value` on the running server (a setting a test changes mid-run).
    pub fn config_set(&self, name: &str, value: &str) -> redis::RedisResult<()> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut conn)
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

    /// Whether replicas are attached and every one has acknowledged this master's whole
    /// replication stream (false when it is unreachable).
    pub fn replicas_caught_up(&self) -> bool {
        let Some(info) = self.replication_info() else {
            return false;
        };
        let field = |line: &str, name: &str| -> Option<u64> {
            line.split([',', ':'])
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.trim().parse().ok())
        };
        let mut offset = None;
        let mut acked = Vec::new();
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("master_repl_offset:") {
                offset = v.trim().parse::<u64>().ok();
            } else if line.starts_with("slave") && line.contains("ip=") {
                acked.push(field(line, "offset"));
            }
        }
        offset.is_some() && !acked.is_empty() && acked.iter().all(|a| *a == offset)
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
pub(crate) fn ping(port: u16) -> std::io::Result<()> {
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
