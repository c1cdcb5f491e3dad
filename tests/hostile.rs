//! The hostile-input suite: the real gateway binary, with the default configuration (only its
//! ports, shard and tokens set), attacked the ways a hostile or broken game server would —
//! connection floods before Hello, frames that claim more than they send, frames built to
//! amplify in decoding, a large player read by clients that never take their answers, and
//! request floods that never read an answer. For each attack the gateway's peak RSS (VmHWM,
//! reset between attacks through /proc/<pid>/clear_refs) stays under the bound the attack
//! states, a well-behaved client is still served while the attack is going on, and the
//! stored state is unchanged where input was refused.
//!
//! The bounds follow from the defaults: a connection before Hello holds at most one 4 KiB
//! frame; after it, what a connection holds is bounded by
//! `gateway.max_bytes_in_flight_per_connection` (32 MiB) and everything by
//! `gateway.max_bytes_in_flight` (512 MiB). The test prints the peak of each attack (run with
//! --nocapture to see them).

mod common;

use std::time::Duration;

use colony::client::{Client, ClientConfig};
use colony::frame;
use colony::wire::pb;
use colony::{Access, Error, Operation, Transaction, Visibility};
use colony_testkit::{RedisServer, ADMIN_TOKEN, GAME_TOKEN};
use common::{digest, key, name, pid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024;

/// What every attack's allowance has besides what the attack may hold: task stacks, runtime
/// threads and allocator slack, in KiB.
const SLACK: u64 = 32 * MIB;

/// The whole suite's peak RSS for the default configuration, in KiB.
const SUITE_PEAK_BOUND: u64 = 256 * MIB;

/// The gateway binary as its own process, so that its memory is its own.
type GatewayProcess = common::GatewayBinary;

impl GatewayProcess {
    /// Starts the gateway in front of `redis` with the default configuration.
    async fn with_defaults(redis: &RedisServer) -> GatewayProcess {
        GatewayProcess::start(
            |port, admin| {
                format!(
                    "[[shards]]\nname = \"s0\"\nmaster = \"{}\"\n\n[gateway]\nlisten = \
                     \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ntokens = [\n  {{ name \
                     = \"game\", token = \"{GAME_TOKEN}\", role = \"game\" }},\n  {{ name = \"admin\", \
                     token = \"{ADMIN_TOKEN}\", role = \"admin\" }},\n]\n",
                    redis.address()
                )
            },
            &[],
        )
        .await
    }

    fn status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the gateway is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a kB figure")
    }

    /// Peak resident memory since the last reset, in KiB.
    fn peak_kib(&self) -> u64 {
        self.status("VmHWM:")
    }

    /// Starts a new peak from the current resident memory; returns that, in KiB.
    fn reset_peak(&self) -> u64 {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("resets the peak");
        self.status("VmRSS:")
    }

    async fn client(&self) -> Client {
        Client::connect(ClientConfig::new(self.address.to_string(), ADMIN_TOKEN))
            .await
            .expect("a client connects")
    }

    /// A well-behaved client is served: a ping and a small transaction, each in time.
    async fn still_serves(&self, request: u64) {
        let work = async {
            let c = self.client().await;
            c.ping().await.expect("ping");
            let txn = Transaction::owner(pid("bystander"), key(request)).with(
                Operation::IncrementCounter {
                    name: name("n"),
                    delta: 1,
                    min: None,
                    max: None,
                    visibility: Visibility::Private,
                },
            );
            c.execute(txn).await.expect("a transaction");
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .expect("a well-behaved client is served during the attack");
    }
}

fn encode(frame: &pb::ClientFrame) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(frame, &mut out, usize::MAX).expect("encodes");
    out
}

fn hello() -> Vec<u8> {
    encode(&pb::ClientFrame {
        request_id: 1,
        body: Some(pb::client_frame::Body::Hello(pb::Hello {
            token: ADMIN_TOKEN.into(),
            client_name: "hostile".into(),
            protocol_version: 1,
        })),
    })
}

/// A connection that has said Hello and had it accepted.
async fn authenticated(gw: &GatewayProcess) -> TcpStream {
    let mut s = TcpStream::connect(gw.address).await.expect("connects");
    s.write_all(&hello()).await.expect("sends Hello");
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).await.expect("HelloResult");
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    s.read_exact(&mut body).await.expect("HelloResult");
    s
}

/// Records one attack's peak RSS and checks that it grew by less than `allowance_kib` over
/// `start_kib`, the RSS when the attack began (memory the allocator kept from an earlier
/// attack is not this one's).
#[allow(clippy::print_stdout)]
fn report(gw: &GatewayProcess, attack: &str, start_kib: u64, allowance_kib: u64) -> u64 {
    let peak = gw.peak_kib();
    println!(
        "hostile: {attack:<56} peak RSS {:>6.1} MiB, {:>+6.1} MiB over its start (allowed {} MiB)",
        peak as f64 / 1024.0,
        (peak as f64 - start_kib as f64) / 1024.0,
        allowance_kib / 1024
    );
    assert!(
        peak < start_kib + allowance_kib,
        "{attack}: peak RSS {peak} KiB, more than {allowance_kib} KiB over {start_kib} KiB"
    );
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_stays_bounded_and_serving_under_attack() {
    let redis = RedisServer::start().expect("redis starts");
    let gw = GatewayProcess::with_defaults(&redis).await;
    gw.still_serves(1).await;
    let mut peaks = Vec::new();

    // 1. Connections that never say Hello, each sending 4 KiB of a frame that claims more.
    let start = gw.reset_peak();
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(gw.address).await.expect("connects");
        let _ = s.write_all(&4096u32.to_be_bytes()).await;
        let _ = s.write_all(&[0x0a; 4000]).await;
        flood.push(s);
    }
    gw.still_serves(2).await;
    // Each holds at most its 4 KiB frame and its task.
    peaks.push(report(
        &gw,
        "300 connections stalled before Hello",
        start,
        SLACK + 300 * 64,
    ));
    drop(flood);

    // 2. Authenticated connections claiming 4 MiB frames and sending 1 MiB of each.
    let mut stalled = Vec::new();
    let start = gw.reset_peak();
    for _ in 0..64 {
        let mut s = authenticated(&gw).await;
        let _ = s.write_all(&(4u32 << 20).to_be_bytes()).await;
        let chunk = vec![0x0a; 64 * 1024];
        for _ in 0..16 {
            let _ = s.write_all(&chunk).await;
        }
        stalled.push(s);
    }
    gw.still_serves(3).await;
    // A stalled frame holds what it sent (1 MiB each, and the read chunk), no more: its
    // claim is not believed.
    peaks.push(report(
        &gw,
        "64 connections sending 1 MiB of 4 MiB frames, stalled",
        start,
        SLACK + 64 * (MIB + 256),
    ));
    drop(stalled);

    // 3. Frames built to amplify: 4 MiB of empty operations, again and again, on 8 connections.
    let txn = pb::Transaction {
        player_id: "p".into(),
        operations: vec![pb::Operation::default(); 64],
        ..pb::Transaction::default()
    };
    let mut transactions = Vec::new();
    let mut frame = Vec::new();
    while frame.len() < 4_000_000 {
        transactions.extend(std::iter::repeat_n(txn.clone(), 1000));
        frame = encode(&pb::ClientFrame {
            request_id: 9,
            body: Some(pb::client_frame::Body::Batch(pb::Batch {
                transactions: transactions.clone(),
                ..Default::default()
            })),
        });
    }
    let start = gw.reset_peak();
    let mut senders = Vec::new();
    for _ in 0..8 {
        let mut s = authenticated(&gw).await;
        let frame = frame.clone();
        senders.push(tokio::spawn(async move {
            for _ in 0..4 {
                if s.write_all(&frame).await.is_err() {
                    break;
                }
            }
            // Every frame is refused with an answer; read them all.
            let mut answers = 0;
            let mut buf = bytes::BytesMut::new();
            while answers < 4 {
                match frame::decode::<pb::ServerFrame>(&mut buf, usize::MAX) {
                    Ok(Some(f)) => {
                        assert!(
                            matches!(f.body, Some(pb::server_frame::Body::Error(ref e)) if e.code == pb::Code::TooLarge as i32),
                            "{f:?}"
                        );
                        answers += 1;
                    }
                    Ok(None) => {
                        if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            panic!("closed before every frame was answered");
                        }
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for s in senders {
        s.await.expect("every amplifying frame is refused");
    }
    gw.still_serves(4).await;
    // Refused from their shape: each connection holds one 4 MiB body at a time, never what
    // it would decode into (about 150 MiB each).
    peaks.push(report(
        &gw,
        "8 connections x 4 frames of 4 MiB of empty operations",
        start,
        SLACK + 8 * 8 * MIB,
    ));

    // 4. The largest player, read by connections that never take their answers.
    let client = gw.client().await;
    let big = pid("hoard");
    let mut fields = 0;
    loop {
        let set = Transaction::owner(big.clone(), key(100 + fields)).with(Operation::SetField {
            name: name(&format!("f{fields}")),
            value: vec![b'x'; 60_000],
            visibility: Visibility::Public,
        });
        match client.execute(set).await {
            Ok(_) => fields += 1,
            Err(Error::PlayerTooLarge { .. }) => break,
            Err(e) => panic!("filling: {e}"),
        }
        assert!(fields < 100, "the player bound never applied");
    }
    let before_reads = digest(&redis).await;
    let read = |id: u64| {
        encode(&pb::ClientFrame {
            request_id: id,
            body: Some(pb::client_frame::Body::GetPlayer(pb::GetPlayer {
                player_id: "hoard".into(),
                access: pb::Access::Public.into(),
                acting_player_id: String::new(),
            })),
        })
    };
    let start = gw.reset_peak();
    let mut deaf = Vec::new();
    for _ in 0..4 {
        let mut s = authenticated(&gw).await;
        let mut burst = Vec::new();
        for id in 0..256 {
            burst.extend(read(10 + id));
        }
        // The gateway stops reading when the connection's budget is spent, so this write
        // may not finish: give it a moment, then leave the rest in the socket.
        let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&burst)).await;
        deaf.push(s);
    }
    assert_eq!(
        digest(&redis).await,
        before_reads,
        "public reads changed state"
    );
    gw.still_serves(5).await;
    // Each deaf connection holds at most its 32 MiB of answers, plus what the sockets hold.
    peaks.push(report(
        &gw,
        "4 connections x 256 reads of a 1 MiB player, never read",
        start,
        SLACK + 4 * 40 * MIB,
    ));
    drop(deaf);

    // 5. A flood of pings on one connection that never reads an answer.
    let start = gw.reset_peak();
    let mut s = authenticated(&gw).await;
    let mut pings = Vec::new();
    for id in 0..100_000u64 {
        pings.extend(encode(&pb::ClientFrame {
            request_id: id,
            body: Some(pb::client_frame::Body::Ping(pb::Ping { nonce: id })),
        }));
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&pings)).await;
    gw.still_serves(6).await;
    peaks.push(report(
        &gw,
        "100000 pings on one connection, never read",
        start,
        SLACK + 16 * MIB,
    ));
    drop(s);

    let suite_peak = peaks.iter().copied().max().unwrap_or(0);
    assert!(
        suite_peak < SUITE_PEAK_BOUND,
        "the suite's peak RSS {suite_peak} KiB is over {SUITE_PEAK_BOUND} KiB"
    );

    // Nothing refused above reached storage: only the filler's writes and the well-behaved
    // client's increments changed it.
    let c = gw.client().await;
    let bystander = c
        .get_player(&pid("bystander"), Access::Owner, None)
        .await
        .expect("reads");
    assert_eq!(
        bystander.version, 6,
        "exactly the well-behaved increments applied"
    );
    let hoard = c
        .get_player(&big, Access::Public, None)
        .await
        .expect("reads");
    assert_eq!(hoard.version, fields, "exactly the filler's writes applied");
}
