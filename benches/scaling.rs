//! How cost grows: the same single-player write at 1, 2, 4 and 8 shards and 1,000 → 100,000
//! players, in one run.
//!
//! For each shard count, fresh `redis-server`s (masters only, the test defaults) are filled
//! to 1,000 players, then 10,000, then 100,000 (`--max-players` to change the last). At each
//! size, 32 callers write for `--seconds` (3) — a bounded gold +1 and a field set, with an
//! idempotency key, on players drawn evenly — and the bench prints: transactions per second;
//! p99; Redis CPU per write (`usec_per_call` of EVALSHA from `INFO commandstats`, over every
//! master, the script's own time) and the servers' whole CPU per write (`INFO cpu`, network
//! included); and memory: bytes per player the fill added, and bytes the writes added per
//! player written (the idempotency windows of the callers that wrote it). The first row (1 shard, 1,000 players) is the baseline the ratios
//! are printed against.
//!
//! Run: `cargo bench --bench scaling [-- --seconds N --max-players N]`.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use colony::{IdempotencyKey, Name, Operation, PlayerId, Store, Transaction, Visibility};
use colony_testkit::{config_for, RedisServer};

mod common;

const CALLERS: u64 = 32;

fn pid(n: u64) -> PlayerId {
    PlayerId::new(format!("scale-{n}")).unwrap()
}

fn used_memory(servers: &[RedisServer]) -> f64 {
    servers
        .iter()
        .map(|s| common::info_field(&common::info(s, "memory"), "used_memory:"))
        .sum()
}

fn cpu_seconds(servers: &[RedisServer]) -> f64 {
    common::redis_cpu_seconds(servers)
}

/// (calls, total µs) of EVALSHA over `servers`.
fn evalsha_stats(servers: &[RedisServer]) -> (f64, f64) {
    let mut calls = 0.0;
    let mut usec = 0.0;
    for s in servers {
        let stats = common::info(s, "commandstats");
        if let Some(line) = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:")) {
            for part in line["cmdstat_evalsha:".len()..].split(',') {
                if let Some(v) = part.strip_prefix("calls=") {
                    calls += v.parse::<f64>().unwrap_or(0.0);
                }
                if let Some(v) = part.strip_prefix("usec=") {
                    usec += v.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    (calls, usec)
}

fn reset_stats(servers: &[RedisServer]) {
    for s in servers {
        let mut conn = redis::Client::open(s.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut conn)
            .unwrap();
    }
}

/// Creates players `from..to`: a 200-byte public field, a 768-byte private one, gold.
async fn fill(store: &Store, from: u64, to: u64) {
    let save = vec![b'p'; 768];
    let profile = vec![b'u'; 200];
    for chunk in (from..to).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|&n| {
                Transaction::owner(pid(n), Some(IdempotencyKey::new("fill", n + 1).unwrap()))
                    .with(Operation::SetField {
                        name: Name::new("save").unwrap(),
                        value: save.clone(),
                        visibility: Visibility::Private,
                    })
                    .with(Operation::SetField {
                        name: Name::new("profile").unwrap(),
                        value: profile.clone(),
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
        for outcome in store.execute_batch(batch).await.unwrap() {
            outcome.unwrap();
        }
    }
}

struct Row {
    shards: usize,
    players: u64,
    rate: f64,
    p99_ms: f64,
    script_us: f64,
    server_us: f64,
    bytes_filled: f64,
    bytes_written: f64,
}

#[tokio::main]
async fn main() {
    let seconds = common::option("--seconds", 3);
    let max_players = common::option("--max-players", 100_000);
    let sizes: Vec<u64> = [1_000, 10_000, 100_000]
        .into_iter()
        .filter(|&n| n < max_players)
        .chain(std::iter::once(max_players))
        .collect();
    let mut rows = Vec::new();
    for shards in [1usize, 2, 4, 8] {
        let servers: Vec<RedisServer> =
            (0..shards).map(|_| RedisServer::start().unwrap()).collect();
        let refs: Vec<&RedisServer> = servers.iter().collect();
        let store = Arc::new(Store::new(&config_for(&refs)).unwrap());
        let mut filled = 0;
        for &players in &sizes {
            let before_fill = used_memory(&servers);
            fill(&store, filled, players).await;
            let after_fill = used_memory(&servers);
            let bytes_filled = (after_fill - before_fill) / (players - filled) as f64;
            filled = players;
            reset_stats(&servers);
            let cpu = cpu_seconds(&servers);
            let run = format!("{shards}-{players}");
            let (rate, latencies) = {
                let store = store.clone();
                common::measure(CALLERS, Duration::from_secs(seconds), move |caller, i| {
                    let (store, run) = (store.clone(), run.clone());
                    async move {
                        let n = (caller * 7919 + i * 104_729) % players;
                        let txn = Transaction::owner(
                            pid(n),
                            Some(IdempotencyKey::new(format!("{run}-{caller}"), i + 1).unwrap()),
                        )
                        .with(Operation::IncrementCounter {
                            name: Name::new("gold").unwrap(),
                            delta: 1,
                            min: Some(0),
                            max: None,
                            visibility: Visibility::Private,
                        })
                        .with(Operation::SetField {
                            name: Name::new("last").unwrap(),
                            value: i.to_string().into_bytes(),
                            visibility: Visibility::Private,
                        });
                        store.execute(txn).await.is_ok()
                    }
                })
                .await
            };
            let (calls, usec) = evalsha_stats(&servers);
            let writes = (rate * seconds as f64).max(1.0);
            // Players drawn evenly: about min(players, writes) of them were written.
            let written = writes.min(players as f64);
            rows.push(Row {
                shards,
                players,
                rate,
                p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
                script_us: usec / calls.max(1.0),
                server_us: (cpu_seconds(&servers) - cpu) * 1e6 / writes,
                bytes_filled,
                bytes_written: (used_memory(&servers) - after_fill) / written,
            });
        }
    }

    let base = &rows[0];
    println!(
        "single-player writes (gold +1 bounded, a field set, an idempotency key) from {CALLERS} callers, {seconds} s each; masters only; ratios against 1 shard x {} players\n",
        base.players
    );
    println!(
        "| shards | players | writes/s | p99 ms | Redis µs/write (script) | server CPU µs/write | bytes per player filled | bytes added per player written |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} ({:.2}x) | {:.2} ({:.2}x) | {:.1} ({:.2}x) | {:.1} ({:.2}x) | {:.0} ({:.2}x) | {:.0} ({:.2}x) |",
            r.shards,
            r.players,
            r.rate,
            r.rate / base.rate,
            r.p99_ms,
            r.p99_ms / base.p99_ms,
            r.script_us,
            r.script_us / base.script_us,
            r.server_us,
            r.server_us / base.server_us,
            r.bytes_filled,
            r.bytes_filled / base.bytes_filled,
            r.bytes_written,
            r.bytes_written / base.bytes_written,
        );
    }
}
