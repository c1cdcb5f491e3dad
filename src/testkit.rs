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

/// Token of the `game` role in [`gateway_config`].
pub const GAME_TOKEN: &str = "game-token-for-tests-0001";
/// Token of the `admin` role in [`gateway_config`].
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";

/// A configuration for `servers` with a game and an admin token, listening on free ports.
pub fn gateway_config(servers: &[&RedisServer]) -> Config {
    let mut config = config_for(servers);
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
