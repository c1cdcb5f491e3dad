//! The gateway end to end: the real server in process on free ports, in front of real
//! redis-server processes, spoken to by the Rust client and by raw sockets sending hostile
//! bytes.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use colony::client::{Client, ClientConfig};
use colony::frame;
use colony::wire::pb;
use colony::{Access, Envelope, Error, Operation, PlayerId, Transaction, Value, Visibility};
use colony_testkit::{gateway_config, wait_for, RedisServer, TestGateway, ADMIN_TOKEN, GAME_TOKEN};
use common::{digest, name, pid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn start(servers: &[RedisServer]) -> TestGateway {
    let refs: Vec<&RedisServer> = servers.iter().collect();
    TestGateway::start(&gateway_config(&refs))
        .await
        .expect("gateway starts")
}

async fn client(gw: &TestGateway, token: &str) -> Client {
    Client::connect(ClientConfig::new(gw.address.to_string(), token))
        .await
        .expect("client connects")
}

fn acting(txn: Transaction, player: &PlayerId) -> Envelope {
    Envelope::acting_for(player.clone(), txn)
}

fn set(n: &str, v: &[u8], visibility: Visibility) -> Operation {
    Operation::SetField {
        name: name(n),
        value: v.to_vec(),
        visibility,
    }
}

/// A raw connection for sending exactly the bytes a test wants.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(gw: &TestGateway) -> Raw {
        Raw {
            stream: TcpStream::connect(gw.address).await.expect("connects"),
            buf: BytesMut::new(),
        }
    }

    async fn authenticated(gw: &TestGateway, token: &str) -> Raw {
        let mut raw = Raw::connect(gw).await;
        raw.send(&hello(token)).await;
        match raw.recv().await.and_then(|f| f.body) {
            Some(pb::server_frame::Body::Hello(_)) => raw,
            other => panic!("expected HelloResult, got {other:?}"),
        }
    }

    async fn send(&mut self, frame: &pb::ClientFrame) {
        let mut out = Vec::new();
        frame::encode(frame, &mut out, usize::MAX).expect("encodes");
        self.send_bytes(&out).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        // The server may already have closed; a failed write shows up in the next read.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame, or None once the server has closed the connection.
    async fn recv(&mut self) -> Option<pb::ServerFrame> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(f) =
                frame::decode(&mut self.buf, usize::MAX).expect("server frames are valid")
            {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("no frame and no close within {WAIT:?}"),
            }
        }
    }

    /// Expects a GoAway with `code`, then the end of the connection.
    async fn expect_go_away(&mut self, code: pb::Code) -> String {
        let reason = match self.recv().await.and_then(|f| f.body) {
            Some(pb::server_frame::Body::GoAway(g)) => {
                assert_eq!(g.code, code as i32, "GoAway {g:?}");
                g.reason
            }
            other => panic!("expected GoAway {code:?}, got {other:?}"),
        };
        assert!(
            self.recv().await.is_none(),
            "connection stays open after GoAway"
        );
        reason
    }
}

fn hello(token: &str) -> pb::ClientFrame {
    pb::ClientFrame {
        request_id: 1,
        body: Some(pb::client_frame::Body::Hello(pb::Hello {
            token: token.into(),
            client_name: "raw-test".into(),
            protocol_version: 1,
        })),
    }
}

fn ping(id: u64) -> pb::ClientFrame {
    pb::ClientFrame {
        request_id: id,
        body: Some(pb::client_frame::Body::Ping(pb::Ping { nonce: id })),
    }
}

/// Another, well-behaved connection must still be served.
async fn others_still_served(gw: &TestGateway) {
    let c = client(gw, GAME_TOKEN).await;
    c.ping().await.expect("other connections keep working");
}

#[tokio::test]
async fn game_servers_run_transactions_for_their_player() {
    let servers = common::servers(2);
    let gw = start(&servers).await;
    let game = client(&gw, GAME_TOKEN).await;
    assert_eq!(
        game.session().await.expect("hello").role,
        colony::auth::Role::Game
    );
    let me = pid("hero");
    let txn = acting(
        Transaction::owner(me.clone(), Some(game.next_key()))
            .with(Operation::CheckVersion { expected: 0 })
            .with(set("nick", b"Hero", Visibility::Public))
            .with(set("mail", b"h@example.org", Visibility::Private)),
        &me,
    );
    assert_eq!(game.execute(txn.clone()).await.expect("commits").version, 1);
    // The same request again is a replay, not a second application.
    let again = game.execute(txn).await.expect("replays");
    assert!(again.replayed);

    let owner = game.login(&me).await.expect("logs in");
    assert_eq!(owner.version, 1);
    assert_eq!(owner.reads[0].entries.len(), 2);

    let friend = pid("friend");
    let seen = game
        .get_player(&me, Access::Public, Some(&friend))
        .await
        .expect("public read");
    let names: Vec<_> = seen.reads[0]
        .entries
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, vec!["nick"]);
    assert!(matches!(
        game.login(&pid("nobody")).await,
        Err(Error::NotFound)
    ));
    game.ping().await.expect("pong");
}

#[tokio::test]
async fn a_game_server_cannot_write_or_see_the_private_part_of_another_player() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let admin = client(&gw, ADMIN_TOKEN).await;
    let victim = pid("victim");
    admin
        .execute(
            Transaction::owner(victim.clone(), Some(admin.next_key()))
                .with(set("gems", b"100", Visibility::Private))
                .with(set("nick", b"V", Visibility::Public)),
        )
        .await
        .expect("admin writes anyone");
    let before = digest(&servers[0]).await;

    let game = client(&gw, GAME_TOKEN).await;
    let attacker = pid("attacker");
    let write = acting(
        Transaction::owner(victim.clone(), Some(game.next_key())).with(set(
            "gems",
            b"0",
            Visibility::Private,
        )),
        &attacker,
    );
    let steal_read = acting(
        Transaction::owner(victim.clone(), None).with(Operation::Read { names: vec![] }),
        &attacker,
    );
    let anonymous = Transaction::owner(victim.clone(), Some(game.next_key())).with(set(
        "gems",
        b"0",
        Visibility::Private,
    ));
    let results = game
        .execute_batch(vec![write, steal_read, Envelope::from(anonymous)])
        .await
        .expect("batch answered");
    for r in &results {
        assert!(matches!(r, Err(Error::Forbidden(_))), "{r:?}");
    }
    assert!(matches!(
        game.get_player(&victim, Access::Owner, Some(&attacker))
            .await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        game.get_player(&victim, Access::Public, None).await,
        Err(Error::Forbidden(_))
    ));
    assert_eq!(
        digest(&servers[0]).await,
        before,
        "a forbidden request changed state"
    );
}

#[tokio::test]
async fn oversized_length_prefixes_are_refused_before_the_body_arrives() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let before = digest(&servers[0]).await;
    // A 4 GiB claim, before authenticating and after.
    let mut raw = Raw::connect(&gw).await;
    raw.send_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    raw.expect_go_away(pb::Code::TooLarge).await;
    let mut raw = Raw::authenticated(&gw, GAME_TOKEN).await;
    raw.send_bytes(&[0xff, 0xff, 0xff, 0xff]).await;
    raw.expect_go_away(pb::Code::TooLarge).await;
    // One byte over the configured maximum.
    let mut raw = Raw::authenticated(&gw, GAME_TOKEN).await;
    let over = (gw.gateway.config().max_frame_bytes as u32 + 1).to_be_bytes();
    raw.send_bytes(&over).await;
    raw.expect_go_away(pb::Code::TooLarge).await;
    // HTTP spoken to the gateway: "GET " read as a length is far over the maximum.
    let mut raw = Raw::connect(&gw).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.expect_go_away(pb::Code::TooLarge).await;
    others_still_served(&gw).await;
    assert_eq!(digest(&servers[0]).await, before);
}

#[tokio::test]
async fn garbage_truncation_and_bad_protobuf_close_the_connection_with_a_reason() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let before = digest(&servers[0]).await;

    // Garbage that is not a valid message, before and after authenticating.
    let mut raw = Raw::connect(&gw).await;
    raw.send_bytes(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await;
    raw.expect_go_away(pb::Code::Invalid).await;
    let mut raw = Raw::authenticated(&gw, GAME_TOKEN).await;
    raw.send_bytes(&[0, 0, 0, 3, 0x0a, 0x05, b'a']).await;
    raw.expect_go_away(pb::Code::Invalid).await;

    // A valid frame followed by garbage: the valid one is answered, then GoAway.
    let mut raw = Raw::authenticated(&gw, GAME_TOKEN).await;
    let mut bytes = Vec::new();
    frame::encode(&ping(7), &mut bytes, usize::MAX).expect("encodes");
    bytes.extend_from_slice(&[0, 0, 0, 2, 0xff, 0x01]);
    raw.send_bytes(&bytes).await;
    match raw.recv().await.and_then(|f| f.body) {
        Some(pb::server_frame::Body::Pong(p)) => assert_eq!(p.nonce, 7),
        other => panic!("expected the pong first, got {other:?}"),
    }
    raw.expect_go_away(pb::Code::Invalid).await;

    // A truncated frame, then the client closes: the server just closes too.
    let mut raw = Raw::authenticated(&gw, GAME_TOKEN).await;
    raw.send_bytes(&[0, 0, 0, 50, 1, 2, 3]).await;
    raw.stream.shutdown().await.expect("half-close");
    assert!(raw.recv().await.is_none());

    others_still_served(&gw).await;
    assert_eq!(digest(&servers[0]).await, before);
}

#[tokio::test]
async fn unknown_request_types_get_an_error_and_the_connection_stays_open() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let mut raw = Raw::authenticated(&gw, GAME_TOKEN).await;
    // Field 15 (varint) is no request type this gateway knows; request_id is field 1.
    raw.send_bytes(&[0, 0, 0, 4, 0x08, 0x09, 0x78, 0x01]).await;
    match raw.recv().await {
        Some(pb::ServerFrame {
            request_id: 9,
            body: Some(pb::server_frame::Body::Error(e)),
        }) => assert_eq!(e.code, pb::Code::Invalid as i32),
        other => panic!("expected an INVALID error for request 9, got {other:?}"),
    }
    // A second Hello is an error too, not a new identity.
    raw.send(&pb::ClientFrame {
        request_id: 10,
        ..hello(ADMIN_TOKEN)
    })
    .await;
    match raw.recv().await.and_then(|f| f.body) {
        Some(pb::server_frame::Body::Error(e)) => assert_eq!(e.code, pb::Code::Invalid as i32),
        other => panic!("expected an error, got {other:?}"),
    }
    raw.send(&ping(11)).await;
    assert!(matches!(
        raw.recv().await.and_then(|f| f.body),
        Some(pb::server_frame::Body::Pong(_))
    ));
}

#[tokio::test]
async fn requests_before_hello_and_wrong_tokens_are_refused() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let before = digest(&servers[0]).await;
    let mut raw = Raw::connect(&gw).await;
    raw.send(&ping(1)).await;
    raw.expect_go_away(pb::Code::Unauthenticated).await;

    let write = pb::ClientFrame {
        request_id: 2,
        body: Some(pb::client_frame::Body::Batch(pb::Batch {
            transactions: vec![colony::wire::envelope_to_pb(&Envelope::from(
                Transaction::owner(pid("x"), common::key(1)).with(set(
                    "a",
                    b"1",
                    Visibility::Public,
                )),
            ))],
            ..Default::default()
        })),
    };
    let mut raw = Raw::connect(&gw).await;
    raw.send(&write).await;
    raw.expect_go_away(pb::Code::Unauthenticated).await;

    for token in [
        "",
        "wrong-token-wrong-token",
        &GAME_TOKEN[..GAME_TOKEN.len() - 1],
    ] {
        let mut raw = Raw::connect(&gw).await;
        raw.send(&hello(token)).await;
        raw.expect_go_away(pb::Code::Unauthenticated).await;
    }
    let mut raw = Raw::connect(&gw).await;
    raw.send(&pb::ClientFrame {
        request_id: 1,
        body: Some(pb::client_frame::Body::Hello(pb::Hello {
            token: GAME_TOKEN.into(),
            client_name: String::new(),
            protocol_version: 99,
        })),
    })
    .await;
    raw.expect_go_away(pb::Code::Invalid).await;
    assert!(matches!(
        Client::connect(ClientConfig::new(
            gw.address.to_string(),
            "not-a-valid-token"
        ))
        .await,
        Err(Error::Unauthenticated(_))
    ));
    others_still_served(&gw).await;
    assert_eq!(digest(&servers[0]).await, before);
}

#[tokio::test]
async fn batches_over_the_limits_are_too_large_and_change_nothing() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let before = digest(&servers[0]).await;
    let admin = client(&gw, ADMIN_TOKEN).await;
    let limits = gw.gateway.store().limits().clone();
    let too_many_ops = (0..=limits.max_operations_per_transaction).fold(
        Transaction::owner(pid("p"), Some(admin.next_key())),
        |t, _| t.with(set("a", b"x", Visibility::Public)),
    );
    let result = admin.execute(too_many_ops).await;
    assert!(matches!(result, Err(Error::TooLarge(_))), "{result:?}");
    let too_many_txns: Vec<_> = (0..=limits.max_transactions_per_batch)
        .map(|i| {
            Transaction::owner(pid(&format!("p{i}")), None).with(Operation::Read { names: vec![] })
        })
        .collect();
    assert!(matches!(
        admin.execute_batch(too_many_txns).await,
        Err(Error::TooLarge(_))
    ));
    assert_eq!(digest(&servers[0]).await, before);
}

#[tokio::test]
async fn silent_connections_are_reaped_and_the_connection_limit_holds() {
    let servers = common::servers(1);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = gateway_config(&refs);
    config.gateway.handshake_timeout_ms = 200;
    config.gateway.idle_timeout_ms = 300;
    config.gateway.max_connections = 3;
    config.gateway.max_unauthenticated_connections = 3;
    let gw = TestGateway::start(&config).await.expect("starts");

    let mut silent = Raw::connect(&gw).await;
    silent.expect_go_away(pb::Code::Timeout).await;

    let mut idle = Raw::authenticated(&gw, GAME_TOKEN).await;
    idle.expect_go_away(pb::Code::Timeout).await;

    // Three connections are allowed; a fourth is told why it is closed.
    let _a = Raw::authenticated(&gw, GAME_TOKEN).await;
    let _b = Raw::authenticated(&gw, GAME_TOKEN).await;
    let _c = Raw::authenticated(&gw, GAME_TOKEN).await;
    let mut fourth = Raw::connect(&gw).await;
    let reason = fourth.expect_go_away(pb::Code::Unavailable).await;
    assert!(reason.contains("too many connections"));
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_then_says_goodbye() {
    let servers = common::servers(1);
    let mut gw = start(&servers).await;
    let mut raw = Raw::authenticated(&gw, ADMIN_TOKEN).await;
    // Pause Redis so that the next request is certainly in flight when shutdown begins.
    servers[0].pause().expect("pauses");
    raw.send(&pb::ClientFrame {
        request_id: 5,
        body: Some(pb::client_frame::Body::Batch(pb::Batch {
            transactions: vec![colony::wire::envelope_to_pb(&Envelope::from(
                Transaction::owner(pid("late"), common::key(1)).with(set(
                    "a",
                    b"1",
                    Visibility::Public,
                )),
            ))],
            ..Default::default()
        })),
    })
    .await;
    wait_for(WAIT, || async {
        (gw.gateway.metrics().in_flight.get() > 0).then_some(())
    })
    .await
    .expect("the request starts");
    gw.begin_shutdown();
    servers[0].resume().expect("resumes");
    match raw.recv().await {
        Some(pb::ServerFrame {
            request_id: 5,
            body: Some(pb::server_frame::Body::Batch(b)),
        }) => assert_eq!(b.results[0].code, pb::Code::Ok as i32),
        other => panic!("expected the batch's answer, got {other:?}"),
    }
    raw.expect_go_away(pb::Code::Unavailable).await;
    let address = gw.address;
    gw.shutdown().await;
    assert!(
        TcpStream::connect(address).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn the_client_settles_requests_across_a_lost_connection() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let admin = client(&gw, ADMIN_TOKEN).await;
    let p = pid("retry");
    let txn =
        Transaction::owner(p.clone(), Some(admin.next_key())).with(Operation::IncrementCounter {
            name: name("gold"),
            delta: 5,
            min: None,
            max: None,
            visibility: Visibility::Private,
        });
    admin.execute(txn.clone()).await.expect("commits");
    // A new gateway on the same store: the client's connection is gone and it reconnects.
    let address = gw.address;
    gw.shutdown().await;
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = gateway_config(&refs);
    config.gateway.listen = address.to_string();
    let gw = TestGateway::start(&config)
        .await
        .expect("restarts on the same port");
    let again = admin
        .execute(txn)
        .await
        .expect("retried after reconnecting");
    assert!(again.replayed, "a retried write must not apply twice");
    let state = admin
        .get_player(&p, Access::Owner, None)
        .await
        .expect("reads");
    assert_eq!(state.reads[0].entries[0].value, Value::Counter(5));
    drop(gw);
}

#[tokio::test]
async fn a_connection_at_its_in_flight_cap_is_not_read_further() {
    let servers = common::servers(1);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = gateway_config(&refs);
    config.gateway.max_in_flight_per_connection = 2;
    let gw = TestGateway::start(&config).await.expect("starts");
    let mut raw = Raw::authenticated(&gw, ADMIN_TOKEN).await;
    servers[0].pause().expect("pauses");
    for id in 10..16u64 {
        raw.send(&pb::ClientFrame {
            request_id: id,
            body: Some(pb::client_frame::Body::GetPlayer(pb::GetPlayer {
                player_id: format!("p{id}"),
                access: pb::Access::Owner as i32,
                acting_player_id: String::new(),
            })),
        })
        .await;
    }
    wait_for(WAIT, || async {
        (gw.gateway.metrics().in_flight.get() >= 2).then_some(())
    })
    .await
    .expect("two requests start");
    // Give the server every chance to read more than it may.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(gw.gateway.metrics().in_flight.get(), 2);
    servers[0].resume().expect("resumes");
    let mut answered: Vec<u64> = Vec::new();
    for _ in 10..16 {
        answered.push(raw.recv().await.expect("answer").request_id);
    }
    answered.sort_unstable();
    assert_eq!(answered, (10..16).collect::<Vec<_>>());
}

#[tokio::test]
async fn before_hello_only_small_frames_and_few_connections_are_allowed() {
    let servers = common::servers(1);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = gateway_config(&refs);
    config.gateway.max_unauthenticated_connections = 2;
    let gw = TestGateway::start(&config).await.expect("starts");

    // A frame over the pre-authentication limit is refused from its prefix.
    let mut big = Raw::connect(&gw).await;
    let claim = (colony::frame::PRE_AUTH_MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    big.send_bytes(&claim).await;
    let reason = big.expect_go_away(pb::Code::TooLarge).await;
    assert!(reason.contains("before Hello"), "{reason}");

    // Two connections may wait for their Hello; a third is refused at once.
    let mut first = Raw::connect(&gw).await;
    let _second = Raw::connect(&gw).await;
    let refused = wait_for(WAIT, || async {
        let mut third = Raw::connect(&gw).await;
        third.send(&hello(GAME_TOKEN)).await;
        match third.recv().await.and_then(|f| f.body) {
            Some(pb::server_frame::Body::GoAway(g)) => Some(g),
            // The first two may not have been accepted yet: the third took a place.
            Some(pb::server_frame::Body::Hello(_)) => None,
            other => panic!("unexpected {other:?}"),
        }
    })
    .await
    .expect("the cap applies to a third connection");
    assert_eq!(refused.code, pb::Code::Unavailable as i32);
    assert!(
        refused.reason.contains("authenticate"),
        "{}",
        refused.reason
    );
    // Once one of them authenticates, its place is free for the next.
    first.send(&hello(GAME_TOKEN)).await;
    assert!(matches!(
        first.recv().await.and_then(|f| f.body),
        Some(pb::server_frame::Body::Hello(_))
    ));
    let mut next = Raw::authenticated(&gw, GAME_TOKEN).await;
    next.send(&ping(3)).await;
    assert!(matches!(
        next.recv().await.and_then(|f| f.body),
        Some(pb::server_frame::Body::Pong(_))
    ));
}

#[tokio::test]
async fn frames_that_would_amplify_are_refused_before_decoding_and_the_connection_stays() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let before = digest(&servers[0]).await;
    let mut raw = Raw::authenticated(&gw, ADMIN_TOKEN).await;
    // 1 MiB of empty operations in transactions of 64: counts within a raised batch limit
    // would not help, the default refuses the batch by its transaction count.
    let txn = pb::Transaction {
        player_id: "p".into(),
        operations: vec![pb::Operation::default(); 64],
        ..pb::Transaction::default()
    };
    let batch = |n: usize, id: u64| pb::ClientFrame {
        request_id: id,
        body: Some(pb::client_frame::Body::Batch(pb::Batch {
            transactions: vec![txn.clone(); n],
            ..Default::default()
        })),
    };
    raw.send(&batch(8000, 11)).await;
    match raw.recv().await {
        Some(pb::ServerFrame {
            request_id: 11,
            body: Some(pb::server_frame::Body::Error(e)),
        }) => {
            assert_eq!(e.code, pb::Code::TooLarge as i32);
            assert!(e.message.contains("transactions"), "{}", e.message);
        }
        other => panic!("expected TOO_LARGE for request 11, got {other:?}"),
    }
    // A transaction with more operations than the limit, likewise.
    let mut long = txn.clone();
    long.operations = vec![pb::Operation::default(); 5000];
    raw.send(&pb::ClientFrame {
        request_id: 12,
        body: Some(pb::client_frame::Body::Batch(pb::Batch {
            transactions: vec![long],
            ..Default::default()
        })),
    })
    .await;
    match raw.recv().await {
        Some(pb::ServerFrame {
            request_id: 12,
            body: Some(pb::server_frame::Body::Error(e)),
        }) => assert_eq!(e.code, pb::Code::TooLarge as i32),
        other => panic!("expected TOO_LARGE for request 12, got {other:?}"),
    }
    raw.send(&ping(13)).await;
    assert!(matches!(
        raw.recv().await.and_then(|f| f.body),
        Some(pb::server_frame::Body::Pong(_))
    ));
    assert_eq!(
        digest(&servers[0]).await,
        before,
        "refused frames changed state"
    );
}

#[tokio::test]
async fn a_frame_that_stops_half_way_is_closed_after_the_io_timeout() {
    let servers = common::servers(1);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = gateway_config(&refs);
    config.gateway.io_timeout_ms = 200;
    let gw = TestGateway::start(&config).await.expect("starts");
    let mut raw = Raw::authenticated(&gw, GAME_TOKEN).await;
    // The prefix promises 100 bytes; 10 come, then nothing.
    raw.send_bytes(&[0, 0, 0, 100]).await;
    raw.send_bytes(&[0; 10]).await;
    let reason = raw.expect_go_away(pb::Code::Timeout).await;
    assert!(reason.contains("did not complete"), "{reason}");
    others_still_served(&gw).await;
}

#[test]
fn a_bad_config_stops_the_binary_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("colony.toml");
    std::fs::write(
        &path,
        "[gateway]\nmax_connections = 1000000000000\n[[shards]]\nname = \"a\"\nmaster = \"127.0.0.1:1\"\n",
    )
    .expect("writes");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colony-gateway"))
        .arg("--config")
        .arg(&path)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gateway.max_connections"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn the_binary_logs_one_json_object_per_line_when_asked() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("colony.toml");
    std::fs::write(
        &path,
        "[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[shards]]\nname = \"a\"\nmaster = \"127.0.0.1:1\"\n",
    )
    .expect("writes");
    // An unknown format is refused before anything starts.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_colony-gateway"))
        .args(["--log-format", "yaml", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not text or json"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_colony-gateway"))
        .args(["--log-format", "json", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    // The start-up lines: the listener addresses, then the warning that no token is set.
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .take(2)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        assert!(object["level"].is_string(), "{line}");
        assert!(object["message"].is_string(), "{line}");
        assert!(object["timestamp"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"tokens\":0")),
        "the event's fields are top-level keys: {lines:?}"
    );
}

#[tokio::test]
async fn an_answer_never_hides_a_committed_write() {
    let servers = common::servers(1);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = gateway_config(&refs);
    config.limits.max_player_bytes = 4000;
    config.limits.max_player_entries = 10;
    config.limits.max_answer_bytes = 4200;
    let gw = TestGateway::start(&config).await.expect("starts");
    let c = client(&gw, ADMIN_TOKEN).await;
    let p = pid("hoarder");
    let mut fill = Transaction::owner(p.clone(), common::key(1));
    for i in 0..8 {
        fill = fill.with(set(&format!("f{i}"), &[b'v'; 480], Visibility::Public));
    }
    c.execute(fill).await.expect("fills");
    let gold = |request| {
        Transaction::owner(p.clone(), common::key(request))
            .with(Operation::IncrementCounter {
                name: name("gold"),
                delta: 1,
                min: None,
                max: None,
                visibility: Visibility::Private,
            })
            .with(Operation::Read { names: vec![] })
    };
    // Two writes that each read the whole player cannot both be answered: each fails before
    // anything is applied, with a code that says so.
    let before = digest(&servers[0]).await;
    let results = c.execute_batch(vec![gold(2), gold(3)]).await.expect("runs");
    for r in &results {
        assert!(matches!(r, Err(Error::TooLarge(_))), "{r:?}");
    }
    assert_eq!(
        digest(&servers[0]).await,
        before,
        "TOO_LARGE followed a write"
    );
    // Alone, the same write commits and its whole answer arrives.
    let committed = c.execute(gold(4)).await.expect("commits");
    assert_eq!(committed.version, 2);
    assert_eq!(committed.reads[0].entries.len(), 9);
    // A player may not grow past its bounds through the gateway either.
    let grow = Transaction::owner(p.clone(), common::key(5)).with(set(
        "more",
        &[b'v'; 200],
        Visibility::Public,
    ));
    let refused = c.execute(grow).await;
    assert!(
        matches!(refused, Err(Error::PlayerTooLarge { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_retry_too_old_for_the_window_comes_back_as_its_own_code_and_applies_nothing() {
    let servers = common::servers(1);
    let mut config = gateway_config(&[&servers[0]]);
    config.redis.idempotency_window_requests = 1;
    let gw = TestGateway::start(&config).await.expect("gateway starts");
    let admin = client(&gw, ADMIN_TOKEN).await;
    let p = pid("late");
    let txn = |key| {
        Transaction::owner(p.clone(), Some(key)).with(Operation::IncrementCounter {
            name: name("gold"),
            delta: 1,
            min: None,
            max: None,
            visibility: Visibility::Private,
        })
    };
    let first = admin.next_key();
    admin.execute(txn(first.clone())).await.expect("applies");
    admin.execute(txn(admin.next_key())).await.expect("applies");
    let before = digest(&servers[0]).await;
    assert_eq!(
        admin.execute(txn(first)).await,
        Err(Error::RequestTooOld { version: 2 })
    );
    assert_eq!(digest(&servers[0]).await, before);
}

/// A gateway stand-in: answers Hello, then the first request with UNAVAILABLE, then nothing.
async fn gateway_that_goes_silent() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accepts");
        let mut buf = bytes::BytesMut::new();
        let mut answered = 0;
        loop {
            while let Some(f) =
                colony::frame::decode::<pb::ClientFrame>(&mut buf, 1 << 20).expect("a client frame")
            {
                let body = match f.body {
                    Some(pb::client_frame::Body::Hello(_)) => {
                        pb::server_frame::Body::Hello(pb::HelloResult {
                            role: pb::Role::Admin as i32,
                            ..Default::default()
                        })
                    }
                    _ if answered == 0 => {
                        answered += 1;
                        pb::server_frame::Body::Error(pb::RequestError {
                            code: pb::Code::Unavailable as i32,
                            message: "try again".into(),
                        })
                    }
                    _ => continue,
                };
                let mut out = Vec::new();
                colony::frame::encode(
                    &pb::ServerFrame {
                        request_id: f.request_id,
                        body: Some(body),
                    },
                    &mut out,
                    1 << 20,
                )
                .expect("encodes");
                stream.write_all(&out).await.expect("writes");
            }
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
    });
    address
}

#[tokio::test(start_paused = true)]
async fn a_call_never_outlasts_its_deadline_retries_included() {
    let address = gateway_that_goes_silent().await;
    let mut config = ClientConfig::new(address.to_string(), "any-token");
    config.request_deadline = Duration::from_secs(2);
    config.backoff_base = Duration::from_millis(300);
    let admin = Client::connect(config).await.expect("connects");
    let started = tokio::time::Instant::now();
    // The first attempt fails at once, the retry is sent and never answered: the call ends
    // at the deadline, not a whole deadline after the retry was sent.
    let result = admin
        .execute(
            Transaction::owner(pid("slow"), Some(admin.next_key()))
                .with(Operation::DeleteField { name: name("x") }),
        )
        .await;
    let took = started.elapsed();
    assert!(matches!(result, Err(Error::Unknown { .. })), "{result:?}");
    assert!(
        took <= Duration::from_secs(2) + Duration::from_millis(1),
        "the call took {took:?}"
    );
}

#[tokio::test]
async fn a_closed_client_ends_its_connection_and_refuses_further_calls() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let admin = client(&gw, ADMIN_TOKEN).await;
    admin.ping().await.expect("pong");
    admin.close().await;
    assert!(matches!(admin.ping().await, Err(Error::Unavailable { .. })));
    // Not retried until the deadline either: refused at once.
    let started = Instant::now();
    let write = Transaction::owner(pid("closed-client"), Some(admin.next_key()))
        .with(Operation::DeleteField { name: name("a") });
    assert!(matches!(
        admin.execute(write).await,
        Err(Error::Unavailable { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a closed client retried for {:?}",
        started.elapsed()
    );
    // The gateway sees the connection end (it runs on this test's runtime: the wait must not
    // block it).
    let gone = colony_testkit::wait_until(WAIT, || {
        gw.gateway
            .metrics()
            .render()
            .contains("colony_connections 0")
    })
    .await;
    assert!(gone, "{}", gw.gateway.metrics().render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batch_items_answer_in_their_own_kind_and_store_nothing() {
    let servers = common::servers(1);
    let gw = start(&servers).await;
    let before = digest(&servers[0]).await;
    let mut raw = Raw::authenticated(&gw, ADMIN_TOKEN).await;
    let participant = |id: &str| pb::Participant {
        player_id: id.into(),
        access: pb::Access::Owner.into(),
        operations: vec![pb::Operation {
            op: Some(pb::operation::Op::Read(pb::ReadFields { names: vec![] })),
        }],
    };
    let items = vec![
        // No idempotency key.
        pb::BatchItem {
            item: Some(pb::batch_item::Item::Multi(pb::MultiTransaction {
                participants: vec![participant("a"), participant("b")],
                ..Default::default()
            })),
        },
        // A player id no player may have.
        pb::BatchItem {
            item: Some(pb::batch_item::Item::Multi(pb::MultiTransaction {
                idempotency_key: Some(pb::IdempotencyKey {
                    client_id: "c".into(),
                    request_id: 1,
                }),
                participants: vec![participant("a"), participant("}b")],
                acting_player_id: String::new(),
            })),
        },
        // Neither kind.
        pb::BatchItem { item: None },
        // More participants than limits.max_participants (16): refused on its own, not the
        // whole batch.
        pb::BatchItem {
            item: Some(pb::batch_item::Item::Multi(pb::MultiTransaction {
                idempotency_key: Some(pb::IdempotencyKey {
                    client_id: "c".into(),
                    request_id: 2,
                }),
                participants: (0..17).map(|i| participant(&format!("p{i}"))).collect(),
                acting_player_id: String::new(),
            })),
        },
        // A player named twice: the transaction as a whole is refused (participant 0).
        pb::BatchItem {
            item: Some(pb::batch_item::Item::Multi(pb::MultiTransaction {
                idempotency_key: Some(pb::IdempotencyKey {
                    client_id: "c".into(),
                    request_id: 3,
                }),
                participants: vec![participant("a"), participant("b"), participant("a")],
                acting_player_id: String::new(),
            })),
        },
    ];
    raw.send(&pb::ClientFrame {
        request_id: 9,
        body: Some(pb::client_frame::Body::Batch(pb::Batch {
            items,
            ..Default::default()
        })),
    })
    .await;
    let answer = match raw.recv().await.and_then(|f| f.body) {
        Some(pb::server_frame::Body::Batch(b)) => b.items,
        other => panic!("expected a batch answer, got {other:?}"),
    };
    use pb::batch_item_result::Item as Kind;
    let invalid = pb::Code::Invalid as i32;
    assert!(
        matches!(&answer[0].item, Some(Kind::Multi(r)) if r.code == invalid && r.failed_participant == 0),
        "{answer:?}"
    );
    assert!(
        matches!(&answer[1].item, Some(Kind::Multi(r)) if r.code == invalid && r.failed_participant == 2),
        "{answer:?}"
    );
    assert!(
        matches!(&answer[2].item, Some(Kind::Transaction(r)) if r.code == invalid),
        "{answer:?}"
    );
    let too_large = pb::Code::TooLarge as i32;
    assert!(
        matches!(&answer[3].item, Some(Kind::Multi(r)) if r.code == too_large && r.failed_participant == 0),
        "{answer:?}"
    );
    assert!(
        matches!(&answer[4].item, Some(Kind::Multi(r)) if r.code == invalid && r.failed_participant == 0),
        "{answer:?}"
    );
    assert_eq!(digest(&servers[0]).await, before);
}
