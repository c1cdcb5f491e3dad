//! Transactions per second through the library on one local shard, against two baselines
//! measured in the same run on the same redis-server:
//!
//! (a) the same transaction done the naive way, WATCH/MULTI/EXEC from the client, both as
//!     usually written (one round trip per read) and with the reads pipelined;
//! (b) `redis-benchmark` sending EVALSHA of the same script with the same arguments,
//!     pipelined, as the ceiling of what Redis itself can do.
//!
//! The transaction: increment a bounded private counter by one, with an idempotency key
//! (so the idempotency record, version bump and last-active update are all included).
//!
//! Run: `cargo bench --bench txn_throughput` (options: `--seconds N`, default 3).
//! Figures are ratios against baselines measured in the same run, because the machine is
//! shared and absolute numbers drift.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use colony::keys::{legacy_idempotency_key, PlayerKeys, SlotKeys};
use colony::script::{encode, Bounds, Window, SCRIPT};
use colony::{IdempotencyKey, PlayerId, Store, Transaction};
use colony_testkit::{config_for, RedisServer};

const CONCURRENCY: u64 = 64;
const BATCH: u64 = 16;
const MAX_GOLD: i64 = 1_000_000_000;

/// Runs `tasks` copies of `work` for `duration` and returns completed transactions per
/// second. `work(task, iteration)` returns how many transactions it completed.
async fn measure<F, Fut>(tasks: u64, duration: Duration, work: F) -> f64
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (work, stop, done) = (work.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = work(task, i).await;
                    done.fetch_add(n, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// One naive transaction: WATCH the player's keys, read, compute, MULTI/EXEC; retried
/// while EXEC reports that a watched key changed.
async fn naive_once(
    conn: &mut redis::aio::MultiplexedConnection,
    player: &PlayerId,
    request: u64,
    pipelined_reads: bool,
) {
    let keys = PlayerKeys::new(player);
    let slot_keys = SlotKeys::of_player(player);
    let idem = legacy_idempotency_key(player, &IdempotencyKey::new("naive", request).unwrap());
    loop {
        let (seen, version, gold): (Option<Vec<u8>>, Option<u64>, Option<i64>) = if pipelined_reads
        {
            redis::pipe()
                .cmd("WATCH")
                .arg(&keys.meta)
                .arg(&keys.public)
                .arg(&keys.private)
                .arg(&idem)
                .ignore()
                .cmd("GET")
                .arg(&idem)
                .cmd("HGET")
                .arg(&keys.meta)
                .arg("v")
                .cmd("HGET")
                .arg(&keys.private)
                .arg("c:gold")
                .query_async(conn)
                .await
                .unwrap()
        } else {
            let _: () = redis::cmd("WATCH")
                .arg(&keys.meta)
                .arg(&keys.public)
                .arg(&keys.private)
                .arg(&idem)
                .query_async(conn)
                .await
                .unwrap();
            let seen = redis::cmd("GET")
                .arg(&idem)
                .query_async(conn)
                .await
                .unwrap();
            let version = redis::cmd("HGET")
                .arg(&keys.meta)
                .arg("v")
                .query_async(conn)
                .await
                .unwrap();
            let gold = redis::cmd("HGET")
                .arg(&keys.private)
                .arg("c:gold")
                .query_async(conn)
                .await
                .unwrap();
            (seen, version, gold)
        };
        if seen.is_some() {
            let _: () = redis::cmd("UNWATCH").query_async(conn).await.unwrap();
            return;
        }
        let new_gold = gold.unwrap_or(0) + 1;
        assert!((0..=MAX_GOLD).contains(&new_gold));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let result: Option<redis::Value> = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&keys.private)
            .arg("c:gold")
            .arg(new_gold)
            .ignore()
            .cmd("HDEL")
            .arg(&keys.public)
            .arg("c:gold")
            .ignore()
            .cmd("HSET")
            .arg(&keys.meta)
            .arg("v")
            .arg(version.unwrap_or(0) + 1)
            .arg("t")
            .arg(now_ms)
            .ignore()
            .cmd("ZADD")
            .arg(&slot_keys.active)
            .arg(now_ms)
            .arg(player.as_str())
            .ignore()
            .cmd("SADD")
            .arg(&slot_keys.dirty)
            .arg(player.as_str())
            .ignore()
            .cmd("SET")
            .arg(&idem)
            .arg("result")
            .arg("PX")
            .arg(86_400_000)
            .ignore()
            .query_async(conn)
            .await
            .unwrap();
        if result.is_some() {
            return;
        }
    }
}

/// Where redis-benchmark puts a random number (each occurrence its own).
const RANDOM: &str = "__rand_int__";
/// The request id encoded in place of a random one.
const REQUEST_STANDIN: u64 = 987_654_321_987;

/// The call the library makes for a write of a fresh player (the batched run's), encoded by
/// the library itself with `player` as the player and `request` as the request id: its
/// keys, then its arguments.
fn fresh_player_call(config: &colony::config::Config, player: &str, request: u64) -> Vec<Vec<u8>> {
    let txn = common::increment(
        &PlayerId::new(player).unwrap(),
        "bench",
        request,
        Some(MAX_GOLD),
    );
    let bounds = Bounds {
        track_changes: config.archive.checkpoint_interval_secs > 0,
        window: Window::of(&config.redis),
        // A transaction that reads has the whole answer to itself.
        read_budget: config.limits.read_budget(1),
        max_player_bytes: config.limits.max_player_bytes,
        max_player_entries: config.limits.max_player_entries,
    };
    let invocation = encode(&txn, colony::keys::player_slot(&txn.player), &bounds);
    let mut words = vec![invocation.keys.len().to_string().into_bytes()];
    words.extend(invocation.keys);
    words.extend(invocation.args);
    words
}

/// `word` with every `from` replaced by `to`.
fn replaced(word: &[u8], from: &str, to: &str) -> String {
    String::from_utf8(word.to_vec()).unwrap().replace(from, to)
}

fn redis_benchmark(server: &RedisServer, config: &colony::config::Config, requests: u64) -> f64 {
    let sha = SCRIPT.get_hash().to_string();
    // The same call as the batched library run's, each random number independent: every
    // call touches fresh keys the way that run does with fresh players, so the cost per call
    // is the same script path (new player, idempotency record written). A standalone server
    // does not check that the keys share a slot.
    let words: Vec<String> = fresh_player_call(config, RANDOM, REQUEST_STANDIN)
        .iter()
        .map(|w| replaced(w, &REQUEST_STANDIN.to_string(), RANDOM))
        .collect();
    // The call must do what the library's does: sent once with the random numbers fixed, it
    // answers OK (a call the script refused would measure a refusal instead).
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut probe = redis::cmd("EVALSHA");
    probe.arg(&sha);
    for word in &words {
        probe.arg(word.replace(RANDOM, "000000000001"));
    }
    let answer: Vec<redis::Value> = probe.query(&mut conn).unwrap();
    assert!(
        matches!(answer.first(), Some(redis::Value::BulkString(status)) if status == b"OK"),
        "the baseline's call answers {answer:?}"
    );
    let keys_before = db_keys(&mut conn);
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-c", &CONCURRENCY.to_string(), "-P", &BATCH.to_string()])
        .args(["-n", &requests.to_string(), "-r", "100000000", "-q"])
        .args(["EVALSHA", &sha])
        .args(&words)
        .output()
        .expect("redis-benchmark runs (installed with redis-tools)");
    // Each call wrote a fresh player: most of them are new keys (random numbers repeat
    // rarely in 10^8).
    let written = db_keys(&mut conn) - keys_before;
    assert!(
        written >= requests / 2,
        "redis-benchmark's calls wrote {written} keys for {requests} calls"
    );
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("requests per second"))
        .unwrap_or_else(|| panic!("no figure in redis-benchmark output: {text}"));
    line.split(" requests per second")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

/// The keys in database 0.
fn db_keys(conn: &mut redis::Connection) -> u64 {
    redis::cmd("DBSIZE").query(conn).unwrap()
}

fn main() {
    let seconds = common::option("--seconds", 3);
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start().expect("redis-server starts");
    let mut config = config_for(&[&server]);
    config.redis.connections_per_shard = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let store = Store::new(&config).unwrap();
    // The script must be loaded before redis-benchmark sends EVALSHA.
    runtime
        .block_on(store.execute(common::increment(
            &PlayerId::new("warm").unwrap(),
            "warm",
            0,
            Some(MAX_GOLD),
        )))
        .unwrap();

    let players: Arc<Vec<PlayerId>> = Arc::new(
        (0..CONCURRENCY)
            .map(|i| PlayerId::new(format!("bench-{i}")).unwrap())
            .collect(),
    );

    let single = runtime.block_on({
        let (store, players) = (store.clone(), players.clone());
        measure(CONCURRENCY, duration, move |task, i| {
            let (store, players) = (store.clone(), players.clone());
            async move {
                store
                    .execute(common::increment(
                        &players[task as usize],
                        "single",
                        i,
                        Some(MAX_GOLD),
                    ))
                    .await
                    .unwrap();
                1
            }
        })
    });

    let naive = |pipelined: bool| {
        runtime.block_on(async {
            let client = redis::Client::open(server.url()).unwrap();
            let mut conns = Vec::new();
            for _ in 0..CONCURRENCY {
                conns.push(client.get_multiplexed_async_connection().await.unwrap());
            }
            let conns = Arc::new(conns);
            let players = players.clone();
            let offset = if pipelined { 1 << 40 } else { 0 };
            measure(CONCURRENCY, duration, move |task, i| {
                let (conns, players) = (conns.clone(), players.clone());
                async move {
                    // Each task has a connection of its own: WATCH is per connection.
                    let mut conn = conns[task as usize].clone();
                    naive_once(&mut conn, &players[task as usize], offset + i, pipelined).await;
                    1
                }
            })
            .await
        })
    };
    let naive_sequential = naive(false);
    let naive_pipelined = naive(true);

    let batched = runtime.block_on({
        let store = store.clone();
        measure(CONCURRENCY, duration, move |task, i| {
            let store = store.clone();
            async move {
                let batch: Vec<Transaction> = (0..BATCH)
                    .map(|k| {
                        let id = format!("batch-{task}-{i}-{k}");
                        common::increment(&PlayerId::new(id).unwrap(), "batched", i, Some(MAX_GOLD))
                    })
                    .collect();
                let results = store.execute_batch(batch).await.unwrap();
                assert!(results.iter().all(Result::is_ok));
                BATCH
            }
        })
    });
    let requests = ((batched * seconds as f64) as u64).max(100_000);
    let ceiling = redis_benchmark(&server, &config, requests);

    println!("Colony transaction throughput, one redis-server on loopback, {seconds} s per run");
    println!("transaction: bounded private counter +1 with an idempotency key\n");
    println!("{:<58} {:>10}", "run", "txn/s");
    println!(
        "{:<58} {:>10.0}",
        "library, 64 players, one transaction per call", single
    );
    println!(
        "{:<58} {:>10.0}",
        "(a) naive WATCH/MULTI/EXEC, one round trip per read", naive_sequential
    );
    println!(
        "{:<58} {:>10.0}",
        "(a') naive WATCH/MULTI/EXEC, reads pipelined", naive_pipelined
    );
    println!(
        "{:<58} {:>10.0}",
        "library, batches of 16, 64 callers", batched
    );
    println!(
        "{:<58} {:>10.0}",
        "(b) redis-benchmark EVALSHA, -P 16 -c 64", ceiling
    );
    println!();
    println!(
        "library / (a)  naive:              {:>5.2}x  (target >= 3x)",
        single / naive_sequential
    );
    println!(
        "library / (a') naive, pipelined:   {:>5.2}x",
        single / naive_pipelined
    );
    println!(
        "library batched / (b) redis-bench: {:>5.2}x  (target >= 0.7x)",
        batched / ceiling
    );
}
