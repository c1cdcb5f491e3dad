//! Players archived per second and restore latency, against the MongoDB-wire server the tests
//! use (SecantusDB's `secantusd-py` by default; `COLONY_TEST_MONGODB_URI` for another, e.g.
//! `secantusd-rs` or a real MongoDB). The baseline, measured in the same run against the same
//! server, is inserting the same documents with `insert_many` and no Redis at all.
//!
//! Run: `cargo bench -p colony-archiver --bench archive_throughput [-- --players N]`.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use colony::{Access, IdempotencyKey, Name, Operation, PlayerId, Store, Transaction, Visibility};
use colony_archiver::document::{to_document, DocState, Snapshot};
use colony_archiver::worker::now;
use colony_archiver::Archiver;
use colony_testkit::{config_for, MongoServer, RedisServer};
use mongodb::bson::DateTime;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let mut players = 5_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--players" {
            players = args
                .next()
                .and_then(|s| s.parse().ok())
                .expect("--players N");
        }
    }
    let redis = RedisServer::start().unwrap();
    let mongo = MongoServer::start().unwrap();
    let server = std::env::var("COLONY_TEST_MONGODB_URI")
        .map(|_| "the MongoDB at COLONY_TEST_MONGODB_URI".to_string())
        .unwrap_or_else(|_| "SecantusDB secantusd-py (in-memory)".to_string());
    let mut config = config_for(&[&redis]);
    config.archive.mongodb_uris = vec![mongo.uri().to_string()];
    config.archive.inactive_after_secs = 0;
    config.archive.batch_size = 500;
    let store = Store::new(&config).unwrap();

    // Players of about 1 KiB: a 768-byte private field, a 200-byte public one, a counter.
    let private = vec![b'p'; 768];
    let public = vec![b'u'; 200];
    for chunk in (0..players).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|&i| {
                Transaction::owner(
                    PlayerId::new(format!("bench-{i}")).unwrap(),
                    Some(IdempotencyKey::new("bench", i as u64).unwrap()),
                )
                .with(Operation::SetField {
                    name: Name::new("save").unwrap(),
                    value: private.clone(),
                    visibility: Visibility::Private,
                })
                .with(Operation::SetField {
                    name: Name::new("profile").unwrap(),
                    value: public.clone(),
                    visibility: Visibility::Public,
                })
                .with(Operation::IncrementCounter {
                    name: Name::new("gold").unwrap(),
                    delta: 100,
                    min: None,
                    max: None,
                    visibility: Visibility::Private,
                })
            })
            .collect();
        assert!(store
            .execute_batch(batch)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok));
    }

    // Baseline: the same documents straight into another collection.
    let client = mongodb::Client::with_uri_str(mongo.uri()).await.unwrap();
    let baseline = client
        .database("colony_bench")
        .collection::<mongodb::bson::Document>("baseline");
    let documents: Vec<_> = (0..players)
        .map(|i| {
            to_document(
                &Snapshot {
                    player: format!("bench-{i}"),
                    version: 1,
                    public: vec![(b"f:profile".to_vec(), public.clone())],
                    private: vec![
                        (b"f:save".to_vec(), private.clone()),
                        (b"c:gold".to_vec(), b"100".to_vec()),
                    ],
                    clients: vec![],
                },
                DateTime::now(),
                DocState::Archived,
            )
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    for chunk in documents.chunks(500) {
        baseline.insert_many(chunk.to_vec()).await.unwrap();
    }
    let baseline_rate = players as f64 / started.elapsed().as_secs_f64();

    let archiver = Arc::new(Archiver::new(&config).await.unwrap());
    let started = Instant::now();
    let report = archiver.archive_pass(now() + 1000, false).await.unwrap();
    let archive_rate = report.archived as f64 / started.elapsed().as_secs_f64();
    assert_eq!(report.archived as usize, players, "{report:?}");

    // Restore latency, one at a time: the archiver's own restore, then a login through the
    // store (queue, archiver, retry), which is what a player waits for.
    let sample = players.min(500);
    let mut direct = Vec::new();
    for i in 0..sample / 2 {
        let player = PlayerId::new(format!("bench-{i}")).unwrap();
        let t = Instant::now();
        archiver.restore(&player, true).await.unwrap();
        direct.push(t.elapsed());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = archiver.clone();
    tokio::spawn(async move { serving.serve_restore_queues(stopped).await });
    let mut login = Vec::new();
    for i in sample / 2..sample {
        let player = PlayerId::new(format!("bench-{i}")).unwrap();
        let t = Instant::now();
        store.get_player(player, Access::Owner).await.unwrap();
        login.push(t.elapsed());
    }
    let _ = stop.send(true);
    direct.sort();
    login.sort();
    println!("archiver against {server}, {players} players of ~1 KiB, one Redis shard\n");
    println!("baseline insert_many of the same documents: {baseline_rate:>8.0} documents/s");
    println!("archive pass (snapshot; majority insert, upsert where a document exists; compare-on-version removal; pipelined): {archive_rate:>8.0} players/s ({:.2}x baseline; target >= 5000/s against secantusd-rs)", archive_rate / baseline_rate);
    println!(
        "restore by the archiver:    p50 {:?}, p99 {:?}",
        percentile(&direct, 0.5),
        percentile(&direct, 0.99)
    );
    println!("login of an archived player: p50 {:?}, p99 {:?} (target p99 <= 20 ms against secantusd-rs)", percentile(&login, 0.5), percentile(&login, 0.99));
}
