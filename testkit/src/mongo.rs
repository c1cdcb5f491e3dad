//! A MongoDB-wire server for tests.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{free_port, START_DEADLINE};

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

    /// `host:port` of the server: the first host its URI names.
    pub fn address(&self) -> String {
        let rest = self
            .uri
            .split_once("://")
            .map_or(self.uri.as_str(), |(_, r)| r);
        let hosts = rest.split(['/', '?']).next().unwrap_or_default();
        let hosts = hosts.rsplit_once('@').map_or(hosts, |(_, h)| h);
        hosts.split(',').next().unwrap_or_default().to_string()
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
