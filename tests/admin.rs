//! The admin HTTP endpoint of a real gateway: health, readiness with a dead shard, metrics
//! and status.

mod common;

use std::time::Duration;

use colony::testkit::{free_port, gateway_config, RedisServer, TestGateway, GAME_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain HTTP/1.1 GET; returns the status code and body.
async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answers in time")
        .expect("reads");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn health_readiness_metrics_and_status() {
    let servers = common::servers(2);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let gw = TestGateway::start(&gateway_config(&refs))
        .await
        .expect("starts");
    let client = colony::client::Client::connect(colony::client::ClientConfig::new(
        gw.address.to_string(),
        GAME_TOKEN,
    ))
    .await
    .expect("connects");
    client.ping().await.expect("pong");

    assert_eq!(
        get(gw.admin_address, "/healthz").await,
        (200, "ok\n".into())
    );
    assert_eq!(get(gw.admin_address, "/readyz").await.0, 200);

    let (status, metrics) = get(gw.admin_address, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("colony_requests_total{op=\"ping\",code=\"OK\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("colony_requests_total{op=\"hello\",code=\"OK\"} 1"));
    assert!(metrics.contains("colony_connections 1"));

    let (status, body) = get(gw.admin_address, "/admin/status").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    let shards = json["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    assert_eq!(shards[0]["master"], servers[0].address());
    assert_eq!(shards[0]["slots"][0], "0-8191");
    assert_eq!(shards[1]["reachable"], true);
    assert_eq!(get(gw.admin_address, "/nope").await.0, 404);
}

#[tokio::test]
async fn readiness_fails_while_a_shard_is_down() {
    let live = RedisServer::start().expect("starts");
    let mut config = gateway_config(&[&live]);
    let mut dead = config.shards[0].clone();
    dead.name = "dead".into();
    dead.master = Some(format!("127.0.0.1:{}", free_port().expect("port")));
    config.shards.push(dead);
    config.redis.connect_timeout_ms = 200;
    let gw = TestGateway::start(&config).await.expect("starts");
    let (status, body) = get(gw.admin_address, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("dead"), "{body}");
    let (_, body) = get(gw.admin_address, "/admin/status").await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["shards"][0]["reachable"], true);
    assert_eq!(json["shards"][1]["reachable"], false);
}
