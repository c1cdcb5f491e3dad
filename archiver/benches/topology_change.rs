//! Leaving a topology through the archive, for N players (10,000 by default), going from two
//! Sentinel shards to three — each a master and a replica in the safe profile, found through
//! three Sentinels, writes acknowledged by the replica ("A way off a fixed topology" in
//! docs/design/resharding.md; `--plain` for lone masters instead): the downtime
//! (the drain on the old topology plus the marking on the new one), and the degraded window
//! after it (every player's first access waits for its restore; the whole population
//! logging in at once, 32 at a time). Baselines, measured in the same run on the same
//! servers: inserting the same documents with `insert_many` and no Redis (for the drain),
//! and a second read of every player once it is back (for the first access).
//!
//! Run: `cargo bench -p colony-archiver --bench topology_change [-- --players N]`.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use colony::Config;
use colony::{Access, IdempotencyKey, Name, Operation, PlayerId, Store, Transaction, Visibility};
use colony_archiver::document::{to_document, DocState, Snapshot};
use colony_archiver::Archiver;
use colony_testkit::{config_for, MongoServer, Profile, RedisServer, SentinelShard};
use futures_util::StreamExt;
use mongodb::bson::DateTime;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Reads every player as its owner, `concurrency` at a time; the time of each read, sorted,
/// and the time of all.
async fn read_all(store: &Store, players: usize, concurrency: usize) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut times: Vec<Duration> = futures_util::stream::iter(0..players)
        .map(|i| async move {
            let t = Instant::now();
            store
                .get_player(PlayerId::new(format!("bench-{i}")).unwrap(), Access::Owner)
                .await
                .unwrap();
            t.elapsed()
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    times.sort();
    (times, started.elapsed())
}

/// `shards` found through their Sentinels, writes waiting for one replica.
fn sentinel_config(shards: &[SentinelShard]) -> Config {
    let mut text = String::from("[redis]\nacknowledge = \"replicated\"\nreplicas_to_wait = 1\n");
    for shard in shards {
        let addresses: Vec<String> = shard
            .sentinel_addresses()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        text.push_str(&format!(
            "[[shards]]\nname = \"{name}\"\nsentinel = {{ master_name = \"{name}\", addresses = [{}] }}\n",
            addresses.join(", "),
            name = shard.master_name,
        ));
    }
    Config::from_toml(&text, []).unwrap()
}

#[tokio::main]
async fn main() {
    let mut players = 10_000usize;
    let mut plain = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--players" {
            players = args
                .next()
                .and_then(|s| s.parse().ok())
                .expect("--players N");
        } else if arg == "--plain" {
            plain = true;
        }
    }
    let mongo = MongoServer::start().unwrap();
    // The two topologies, as configurations (the servers live until the end of the run).
    let mut servers: Vec<RedisServer> = Vec::new();
    let mut shards: Vec<SentinelShard> = Vec::new();
    let (old_base, new_base, shape) = if plain {
        servers = (0..5).map(|_| RedisServer::start().unwrap()).collect();
        (
            config_for(&[&servers[0], &servers[1]]),
            config_for(&[&servers[2], &servers[3], &servers[4]]),
            "lone masters",
        )
    } else {
        shards = (0..5)
            .map(|i| SentinelShard::start(&format!("shard-{i}"), Profile::Safe, 1).unwrap())
            .collect();
        (
            sentinel_config(&shards[..2]),
            sentinel_config(&shards[2..]),
            "Sentinel shards of a master and a replica, safe profile, replicated acknowledgements",
        )
    };
    let server = std::env::var("COLONY_TEST_MONGODB_URI")
        .map(|_| "the MongoDB at COLONY_TEST_MONGODB_URI".to_string())
        .unwrap_or_else(|_| "SecantusDB secantusd-py (in-memory)".to_string());
    let configure = |base: &Config| {
        let mut config = base.clone();
        config.archive.mongodb_uris = vec![mongo.uri().to_string()];
        config.archive.database = "colony_topology_bench".into();
        config.archive.batch_size = 500;
        config
    };
    let old_config = configure(&old_base);
    let new_config = configure(&new_base);
    let store = Store::new(&old_config).unwrap();

    // Players of about 1 KiB, as in the archive_throughput bench, all active just now.
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

    // Baseline for the drain: the same documents straight into another collection.
    let client = mongodb::Client::with_uri_str(mongo.uri()).await.unwrap();
    let baseline = client
        .database("colony_topology_bench")
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
    let insert_time = started.elapsed();

    // The downtime: drain the old topology, mark the players on the new one.
    let old_archiver = Archiver::new(&old_config).await.unwrap();
    let started = Instant::now();
    let drained = old_archiver
        .drain(Duration::from_secs(10), |_| {})
        .await
        .unwrap();
    let drain_time = started.elapsed();
    assert!(drained.is_complete(), "{drained:?}");
    assert_eq!(drained.archived as usize, players, "{drained:?}");
    let new_archiver = Arc::new(Archiver::new(&new_config).await.unwrap());
    let started = Instant::now();
    let rebuilt = new_archiver.rebuild_all(|_| {}).await.unwrap();
    let mark_time = started.elapsed();
    assert_eq!(rebuilt.marked as usize, players, "{rebuilt:?}");

    // The degraded window: everyone logs in at once on the new topology, then again.
    let new_store = Store::new(&new_config).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = new_archiver.clone();
    tokio::spawn(async move { serving.serve_restore_queues(stopped).await });
    let (first, first_all) = read_all(&new_store, players, 32).await;
    let (second, second_all) = read_all(&new_store, players, 32).await;
    let _ = stop.send(true);
    drop((servers, shards));

    let secs = |d: Duration| d.as_secs_f64();
    let downtime = drain_time + mark_time;
    println!("leaving 2 shards for 3 through the archive: {players} players of ~1 KiB, all active; {shape}; against {server}\n");
    println!(
        "baseline: insert_many of the same documents        {:>8.2} s",
        secs(insert_time)
    );
    println!(
        "drain (sweep, archive every player, count left)    {:>8.2} s  ({:.2}x baseline, {:.0} players/s)",
        secs(drain_time),
        secs(drain_time) / secs(insert_time),
        players as f64 / secs(drain_time)
    );
    println!(
        "rebuild --all (every document read, marked)        {:>8.2} s  ({:.2}x baseline, {:.0} players/s)",
        secs(mark_time),
        secs(mark_time) / secs(insert_time),
        players as f64 / secs(mark_time)
    );
    println!(
        "downtime (drain + marking)                         {:>8.2} s  ({:.2}x baseline)",
        secs(downtime),
        secs(downtime) / secs(insert_time)
    );
    println!(
        "degraded window: all log in at once, 32 at a time  {:>8.2} s; first access p50 {:?}, p99 {:?}",
        secs(first_all),
        percentile(&first, 0.5),
        percentile(&first, 0.99)
    );
    println!(
        "baseline: second access to every player            {:>8.2} s; p50 {:?}, p99 {:?}; first ÷ second p99 {:.1}x",
        secs(second_all),
        percentile(&second, 0.5),
        percentile(&second, 0.99),
        secs(percentile(&first, 0.99)) / secs(percentile(&second, 0.99))
    );
}
