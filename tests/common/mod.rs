//! Helpers shared by the integration tests: a store over real servers, and a digest of a
//! server's whole dataset to prove that rejected input changed nothing.

#![allow(dead_code)]

pub mod legacy;

use colony::{IdempotencyKey, Name, PlayerId, Store};
use colony_testkit::{config_for, RedisServer};

/// Starts `n` redis-server processes.
pub fn servers(n: usize) -> Vec<RedisServer> {
    (0..n)
        .map(|_| RedisServer::start().expect("redis-server starts"))
        .collect()
}

/// A store whose shards are `servers`.
pub fn store(servers: &[RedisServer]) -> Store {
    let refs: Vec<&RedisServer> = servers.iter().collect();
    Store::new(&config_for(&refs)).expect("store builds")
}

/// A plain connection to `server`, for looking at what is stored.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects")
}

/// `DEBUG DIGEST`: changes whenever any key or value in the dataset changes.
pub async fn digest(server: &RedisServer) -> String {
    let mut conn = raw(server).await;
    redis::cmd("DEBUG")
        .arg("DIGEST")
        .query_async(&mut conn)
        .await
        .expect("digest")
}

pub fn pid(s: &str) -> PlayerId {
    PlayerId::new(s).expect("valid player id")
}

pub fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

/// A bounded increment of the private counter `gold` (never below 0): the currency of the
/// trade and cluster tests.
pub fn gold(delta: i64) -> colony::Operation {
    colony::Operation::IncrementCounter {
        name: name("gold"),
        delta,
        min: Some(0),
        max: None,
        visibility: colony::Visibility::Private,
    }
}

/// A GET of an admin endpoint with the admin token: the status code and the body.
pub async fn get_admin(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let authorization = format!("Bearer {}", colony_testkit::ADMIN_TOKEN);
    let (status, _, body) = request(address, path, Some(&authorization)).await;
    (status, body)
}

/// A plain HTTP/1.1 GET with an optional `Authorization` value; returns the status code, the
/// head and the body.
pub async fn request(
    address: std::net::SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let authorization = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{authorization}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("answers in time")
    .expect("reads");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

pub fn key(request_id: u64) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::new("test-client", request_id).expect("valid key"))
}

/// The tally `{id}:meta` holds (b bytes, n entries), if any, and the size of the player's
/// entries as stored.
pub async fn size_tally(
    conn: &mut redis::aio::MultiplexedConnection,
    player: &str,
) -> (Option<(i64, i64)>, (i64, i64)) {
    let tally: (Option<i64>, Option<i64>) = redis::cmd("HMGET")
        .arg(format!("{{{player}}}:meta"))
        .arg("b")
        .arg("n")
        .query_async(conn)
        .await
        .expect("meta");
    let mut real = (0i64, 0i64);
    for hash in ["pub", "priv"] {
        let flat: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(format!("{{{player}}}:{hash}"))
            .query_async(conn)
            .await
            .expect("hash");
        for (entry, value) in flat {
            real.0 += (entry.len() - 2 + value.len()) as i64;
            real.1 += 1;
        }
    }
    (tally.0.zip(tally.1), real)
}

/// The gateway binary as its own process (its memory is its own; it can be killed, or stop at
/// a failpoint), with the configuration `config` writes for its listen and admin ports and
/// the environment `env`. It listens once `start` returns and is killed when dropped.
pub struct GatewayBinary {
    pub child: std::process::Child,
    pub address: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl GatewayBinary {
    pub async fn start(
        config: impl FnOnce(u16, u16) -> String,
        env: &[(&str, &str)],
    ) -> GatewayBinary {
        use std::time::Duration;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = colony_testkit::free_port().expect("free port");
        let admin = colony_testkit::free_port().expect("free port");
        let path = dir.path().join("colony.toml");
        std::fs::write(&path, config(port, admin)).expect("writes the config");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_colony-gateway"))
            .arg("--config")
            .arg(&path)
            .arg("--log")
            .arg("error")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the gateway starts");
        let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        colony_testkit::wait_for(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(address).await.ok()
        })
        .await
        .expect("the gateway listens");
        GatewayBinary {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for GatewayBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
