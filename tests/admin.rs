//! The admin HTTP endpoint of a real gateway: health, readiness with a dead shard, metrics
//! and status.

mod common;

use common::{get_admin, request};

use std::time::Duration;

use colony_testkit::{
    free_port, gateway_config, wait_for, RedisServer, TestGateway, ADMIN_TOKEN, GAME_TOKEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain HTTP/1.1 GET without credentials; returns the status code and body.
async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = request(address, path, None).await;
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

    let (status, body) = get_admin(gw.admin_address, "/admin/status").await;
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
    let (_, body) = get_admin(gw.admin_address, "/admin/status").await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["shards"][0]["reachable"], true);
    assert_eq!(json["shards"][1]["reachable"], false);
}

#[tokio::test]
async fn everything_but_health_and_metrics_answers_only_to_the_admin_token() {
    use base64::Engine;
    let server = RedisServer::start().expect("starts");
    let gw = TestGateway::start(&gateway_config(&[&server]))
        .await
        .expect("starts");
    let at = gw.admin_address;
    // Open: what scrapers and orchestrators call.
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(request(at, open, None).await.0, 200, "{open}");
    }
    // Without a token, or with a wrong one: 401 and a challenge a browser answers.
    for refused in [
        None,
        Some("Bearer wrong-token-for-tests-0001".to_string()),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Token {ADMIN_TOKEN}")),
        Some("Basic %%%".to_string()),
    ] {
        let (status, head, body) = request(at, "/admin/status", refused.as_deref()).await;
        assert_eq!(status, 401, "{refused:?}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: basic realm=\"colony admin\""),
            "{head}"
        );
        assert!(!body.contains("shards"), "{body}");
    }
    // A game server's token is known but not enough.
    let (status, _, body) =
        request(at, "/admin/status", Some(&format!("Bearer {GAME_TOKEN}"))).await;
    assert_eq!(status, 403);
    assert!(!body.contains("shards"), "{body}");
    // The admin token, as Bearer or as a Basic password (what a browser sends).
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{ADMIN_TOKEN}"));
    for accepted in [format!("Bearer {ADMIN_TOKEN}"), format!("Basic {basic}")] {
        let (status, _, body) = request(at, "/admin/status", Some(&accepted)).await;
        assert_eq!(status, 200, "{accepted}");
        assert!(body.contains("shards"), "{body}");
    }
    // An unknown admin path is not found, with or without a token.
    assert_eq!(request(at, "/admin/nope", None).await.0, 404);
}

/// Reads until the peer closes; the bytes read, or None if it stays open past `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut bytes)).await {
        Ok(_) => Some(bytes),
        Err(_) => None,
    }
}

#[tokio::test]
async fn stalled_admin_clients_are_capped_and_timed_out() {
    let servers = common::servers(1);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = gateway_config(&refs);
    config.gateway.admin_max_connections = 2;
    config.gateway.admin_request_timeout_ms = 300;
    let gw = TestGateway::start(&config).await.expect("starts");

    // Two clients send half a request and stall.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.admin_address)
            .await
            .expect("connects");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("sends");
        stalled.push(s);
    }
    // The cap holds: a third connection is closed without an answer (it may take a moment
    // for the first two to be accepted, so retry until one is refused).
    wait_for(Duration::from_secs(10), || async {
        let mut third = TcpStream::connect(gw.admin_address)
            .await
            .expect("connects");
        let _ = third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let answer = closed_within(&mut third, Duration::from_secs(5))
            .await
            .expect("the third connection is closed");
        answer.is_empty().then_some(())
    })
    .await
    .expect("the cap applies: a third connection is closed without an answer");
    // The stalled ones are closed once the header timeout passes...
    for s in &mut stalled {
        assert!(
            closed_within(s, Duration::from_secs(5)).await.is_some(),
            "a stalled admin connection stayed open"
        );
    }
    // ...and the endpoint answers again.
    let (status, body) = get(gw.admin_address, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn the_player_lookup_shows_a_player_as_stored_and_changes_nothing() {
    use colony::{Operation, Transaction, Visibility};
    let servers = common::servers(2);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let gw = TestGateway::start(&gateway_config(&refs))
        .await
        .expect("starts");
    let store = gw.gateway.store().clone();
    let ann = common::pid("ann");
    store
        .execute(
            Transaction::owner(ann.clone(), common::key(1))
                .with(Operation::SetField {
                    name: common::name("nick"),
                    value: b"Ann".to_vec(),
                    visibility: Visibility::Public,
                })
                .with(Operation::SetField {
                    name: common::name("blob"),
                    value: vec![0xff, 0x00, 0xfe],
                    visibility: Visibility::Private,
                })
                .with(Operation::IncrementCounter {
                    name: common::name("gold"),
                    delta: 50,
                    min: None,
                    max: None,
                    visibility: Visibility::Private,
                }),
        )
        .await
        .expect("creates");
    let shard = store.shard_map().shard_for_player(&ann).get();
    let before = common::digest(&servers[shard]).await;
    let (status, body) = get_admin(gw.admin_address, "/admin/player?id=ann").await;
    assert_eq!(status, 200, "{body}");
    let player: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(player["version"], 1);
    assert_eq!(player["shard"], format!("shard-{shard}"));
    assert_eq!(player["master"], servers[shard].address());
    assert_eq!(player["archived"], false);
    assert_eq!(player["public"][0]["name"], "nick");
    assert_eq!(player["public"][0]["value"], "Ann");
    assert_eq!(player["private"][0]["name"], "blob");
    assert_eq!(player["private"][0]["base64"], "/wD+");
    assert_eq!(player["private"][1]["kind"], "counter");
    assert_eq!(player["private"][1]["value"], "50");
    // A lookup is not activity: nothing stored changed, not even the last-active time.
    assert_eq!(common::digest(&servers[shard]).await, before);

    assert_eq!(
        get_admin(gw.admin_address, "/admin/player?id=nobody")
            .await
            .0,
        404
    );
    for bad in [
        "/admin/player",
        "/admin/player?id=",
        "/admin/player?id=%7Dbad",
    ] {
        assert_eq!(get_admin(gw.admin_address, bad).await.0, 400, "{bad}");
    }
    assert_eq!(
        request(gw.admin_address, "/admin/player?id=ann", None)
            .await
            .0,
        401
    );
    let game = format!("Bearer {GAME_TOKEN}");
    assert_eq!(
        request(gw.admin_address, "/admin/player?id=ann", Some(&game))
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn the_console_is_one_offline_page_behind_the_admin_token() {
    let server = RedisServer::start().expect("starts");
    let gw = TestGateway::start(&gateway_config(&[&server]))
        .await
        .expect("starts");
    let (status, head, body) = request(
        gw.admin_address,
        "/admin/console",
        Some(&format!("Bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("<title>Colony console</title>"));
    // Nothing is fetched from elsewhere: the page works offline.
    for external in ["http://", "https://", "//cdn", "<link ", "src=\""] {
        assert!(!body.contains(external), "the page refers to {external}");
    }
    assert_eq!(
        request(gw.admin_address, "/admin/console", None).await.0,
        401
    );
    // The status it reads has each shard's replication, and no archiver unless configured.
    let (_, status) = get_admin(gw.admin_address, "/admin/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["shards"][0]["replicas_connected"], 0);
    assert_eq!(status["shards"][0]["replicas_in_sync"], 0);
    assert!(status["archiver"].is_null());
}
