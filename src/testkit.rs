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
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone server with no persistence.
    pub fn start() -> std::io::Result<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with(extra: &[&str]) -> std::io::Result<RedisServer> {
        let mut last_error = None;
        // A port found free can be taken by someone else before redis binds it: try again.
        for _ in 0..5 {
            match RedisServer::try_start(extra) {
                Ok(server) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    fn try_start(extra: &[&str]) -> std::io::Result<RedisServer> {
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(port, dir.path(), &extra)?;
        let mut server = RedisServer {
            child,
            port,
            dir,
            extra,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Kills the server (SIGKILL) and starts a new one on the same port and directory.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.child = spawn(self.port, self.dir.path(), &self.extra)?;
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
fn spawn(port: u16, dir: &Path, extra: &[String]) -> std::io::Result<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--protected-mode", "no"])
        .args(["--daemonize", "no"])
        // Tests compare `DEBUG DIGEST` before and after rejected input.
        .args(["--enable-debug-command", "local"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
