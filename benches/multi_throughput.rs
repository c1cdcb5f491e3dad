//! Multi-player transactions against single-player ones, on the same local cluster in the same
//! run: two-shard trades per second as a ratio of single-player transactions per second (both
//! from `CONCURRENCY` callers through the library; a trade's rate counts the time its
//! detached last applies take after the callers stop), p50/p99 of a trade, and how both change
//! with 2, 4 and 8 participants (spread over every shard); then the p50 of each with one
//! caller, where latency is round trips rather than queueing.
//!
//! The single-player transaction: a bounded increment of a private counter with an idempotency
//! key. A trade: every participant's counter moves (one gives, the others take), each with
//! its bound. Callers pick disjoint players, so the figures measure the protocol, not
//! contention (the interleaving tests cover contention).
//!
//! Then single writes on one player that a stream of trades keeps locking (their p99 and
//! failures), the single-player and 2-participant figures again with `replicated`
//! acknowledgements (a replica per shard, every `WAIT` on the link that wrote), and the same
//! two through a gateway in process, over loopback TCP, with the Rust client (one connection,
//! requests pipelined), as the ratio a game server sees.
//!
//! Then every caller trading among the same four players for `--contended` seconds: the
//! decision records left behind and the servers' memory growth.
//!
//! Then the two ratios the targets are about again, from `--pairs` pairs of a single-player
//! phase and a 2-participant phase run alternately, with 32 callers and with one: each pair's
//! ratios, and their median, the figure to compare between runs; and this process's own CPU
//! per call in each kind of phase (the callers and the store share the cores with the
//! servers here, so their work is part of what a call costs).
//!
//! Run: `cargo bench --bench multi_throughput [-- --seconds N --shards N --contended N
//! --pairs N]` (defaults 3, 4, 5, 3).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colony::{
    IdempotencyKey, MultiTransaction, Operation, Participant, PlayerId, Store, Transaction,
};
use colony_testkit::{config_for, RedisServer};
use hdrhistogram::Histogram;

const CONCURRENCY: u64 = 32;

fn gold(delta: i64) -> Operation {
    common::gold(delta, Some(1_000_000_000_000))
}

/// Player ids, `per_shard` on each shard, as `[shard][n]`.
fn players(store: &Store, shards: usize, per_shard: usize) -> Vec<Vec<PlayerId>> {
    let mut out = vec![Vec::new(); shards];
    for i in 0.. {
        let p = PlayerId::new(format!("bench-{i}")).unwrap();
        let s = store.shard_map().shard_for_player(&p).get();
        if out[s].len() < per_shard {
            out[s].push(p);
        }
        if out.iter().all(|v| v.len() == per_shard) {
            return out;
        }
    }
    unreachable!()
}

/// One phase's figures: calls answered per second, their latencies, and the Redis CPU of
/// `servers` per call answered (µs).
struct Phase {
    rate: f64,
    latency: Histogram<u64>,
    cpu_us: f64,
    /// This process's CPU per call answered (µs): the callers, the store, the runtime.
    own_cpu_us: f64,
}

impl Phase {
    fn p50(&self) -> u64 {
        self.latency.value_at_quantile(0.5)
    }
}

/// Single-player transactions, then two-player trades (each participant's counter moving by
/// one), from `callers` callers for `duration` each, players picked as the main phases pick
/// them, keys of clients named after `tag`: each one's figures, the Redis CPU of `servers`.
/// A trade's rate counts the time its detached last applies take after the callers stop.
async fn single_then_trade(
    store: &Arc<Store>,
    servers: &[RedisServer],
    all: &Arc<Vec<Vec<PlayerId>>>,
    per_caller: usize,
    callers: u64,
    duration: Duration,
    tag: &str,
) -> (Phase, Phase) {
    let tag: Arc<str> = tag.into();
    let pick = move |all: &Vec<Vec<PlayerId>>, task: u64, shard: usize, n: u64| {
        let base = task as usize * per_caller;
        all[shard % all.len()][base + (n as usize % per_caller)].clone()
    };
    let cpu_before = common::redis_cpu_seconds(servers);
    let own_before = common::own_cpu_seconds();
    let (s, a, t) = (store.clone(), all.clone(), tag.clone());
    let (rate, latency) = common::measure(callers, duration, move |task, i| {
        let (s, a, tag) = (s.clone(), a.clone(), t.clone());
        async move {
            let txn = Transaction::owner(
                pick(&a, task, i as usize, i),
                Some(IdempotencyKey::new(format!("{tag}-single-{task}"), i + 1).unwrap()),
            )
            .with(gold(1));
            s.execute(txn).await.is_ok()
        }
    })
    .await;
    let single = Phase {
        cpu_us: per_call_us(servers, cpu_before, rate, duration),
        own_cpu_us: own_per_call_us(own_before, rate, duration),
        rate,
        latency,
    };
    let cpu_before = common::redis_cpu_seconds(servers);
    let own_before = common::own_cpu_seconds();
    let (s, a, t) = (store.clone(), all.clone(), tag.clone());
    let settled = store.clone();
    let (rate, latency) = common::measure_settled(
        callers,
        duration,
        move |task, i| {
            let (s, a, tag) = (s.clone(), a.clone(), t.clone());
            async move {
                let start = i as usize;
                let txn = MultiTransaction::new(
                    IdempotencyKey::new(format!("{tag}-multi-{task}"), i + 1).unwrap(),
                )
                .with(Participant::owner(pick(&a, task, start, i)).with(gold(-1)))
                .with(Participant::owner(pick(&a, task, start + 1, i)).with(gold(1)));
                s.execute_multi(txn).await.is_ok()
            }
        },
        async move { settled.wait_detached().await },
    )
    .await;
    let trade = Phase {
        cpu_us: per_call_us(servers, cpu_before, rate, duration),
        own_cpu_us: own_per_call_us(own_before, rate, duration),
        rate,
        latency,
    };
    (single, trade)
}

/// The Redis CPU of `servers` since `cpu_before` (seconds), in µs per call answered.
fn per_call_us(servers: &[RedisServer], cpu_before: f64, rate: f64, duration: Duration) -> f64 {
    (common::redis_cpu_seconds(servers) - cpu_before) * 1e6 / (rate * duration.as_secs_f64())
}

/// This process's CPU since `own_before` (seconds), in µs per call answered.
fn own_per_call_us(own_before: f64, rate: f64, duration: Duration) -> f64 {
    (common::own_cpu_seconds() - own_before) * 1e6 / (rate * duration.as_secs_f64())
}

/// `values` as a list for a line of output, each with two decimals.
fn listed(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() {
    let mut seconds = 3u64;
    let mut shards = 4usize;
    let mut contended = 5u64;
    let mut pairs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap(),
            "--shards" => shards = args.next().and_then(|s| s.parse().ok()).unwrap(),
            "--contended" => contended = args.next().and_then(|s| s.parse().ok()).unwrap(),
            "--pairs" => pairs = args.next().and_then(|s| s.parse().ok()).unwrap(),
            _ => {}
        }
    }
    let duration = Duration::from_secs(seconds);
    let servers: Vec<RedisServer> = (0..shards).map(|_| RedisServer::start().unwrap()).collect();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let config = config_for(&refs);
    let store = Arc::new(Store::new(&config).unwrap());
    // Each caller owns 8 players per shard; every player starts rich.
    let per_caller = 8usize;
    let all = players(&store, shards, CONCURRENCY as usize * per_caller);
    for shard in &all {
        common::endow(&store, shard, 1_000_000).await;
    }
    let all = Arc::new(all);
    let player = move |all: &Vec<Vec<PlayerId>>, task: u64, shard: usize, n: u64| {
        let base = task as usize * per_caller;
        all[shard % all.len()][base + (n as usize % per_caller)].clone()
    };

    // Baseline: single-player transactions.
    let cpu_before = common::redis_cpu_seconds(&servers);
    let (s, a) = (store.clone(), all.clone());
    let (single_rate, single_latency) = common::measure(CONCURRENCY, duration, move |task, i| {
        let (s, a) = (s.clone(), a.clone());
        async move {
            let txn = Transaction::owner(
                player(&a, task, i as usize, i),
                Some(IdempotencyKey::new(format!("single-{task}"), i + 1).unwrap()),
            )
            .with(gold(1));
            s.execute(txn).await.is_ok()
        }
    })
    .await;
    // Redis CPU per call: every server's CPU over the phase, divided by the calls answered.
    let single_cpu = (common::redis_cpu_seconds(&servers) - cpu_before) * 1e6
        / (single_rate * duration.as_secs_f64());
    println!(
        "single-player transactions: {single_rate:>8.0}/s  p50 {:>6} µs  p99 {:>6} µs  Redis CPU {single_cpu:>4.0} µs  ({CONCURRENCY} callers, {shards} shards)",
        single_latency.value_at_quantile(0.5),
        single_latency.value_at_quantile(0.99)
    );

    for participants in [2usize, 4, 8] {
        let cpu_before = common::redis_cpu_seconds(&servers);
        let (s, a) = (store.clone(), all.clone());
        let settled = store.clone();
        let (rate, latency) = common::measure_settled(
            CONCURRENCY,
            duration,
            move |task, i| {
                let (s, a) = (s.clone(), a.clone());
                async move {
                    // One participant per shard, round robin from a shard that moves each time.
                    let mut txn = MultiTransaction::new(
                        IdempotencyKey::new(format!("multi-{participants}-{task}"), i + 1).unwrap(),
                    );
                    let start = i as usize;
                    let mut used = Vec::new();
                    for k in 0..participants {
                        let mut p = player(&a, task, start + k, i + (k / a.len()) as u64);
                        let mut bump = 1;
                        while used.contains(&p) {
                            p = player(&a, task, start + k, i + bump);
                            bump += 1;
                        }
                        used.push(p.clone());
                        let delta = if k == 0 {
                            -(participants as i64 - 1)
                        } else {
                            1
                        };
                        txn = txn.with(Participant::owner(p).with(gold(delta)));
                    }
                    s.execute_multi(txn).await.is_ok()
                }
            },
            async move { settled.wait_detached().await },
        )
        .await;
        let cpu = (common::redis_cpu_seconds(&servers) - cpu_before) * 1e6
            / (rate * duration.as_secs_f64());
        println!(
            "{participants}-participant trades:        {rate:>8.0}/s  p50 {:>6} µs  p99 {:>6} µs  Redis CPU {cpu:>4.0} µs ({:.2}x)  ({:.2}x single-player's rate, p50 {:.2}x; for 2, targets >= 0.4 and <= 2)",
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            cpu / single_cpu,
            rate / single_rate,
            latency.value_at_quantile(0.5) as f64 / single_latency.value_at_quantile(0.5) as f64
        );
    }
    println!("retries taken by the store: {}", store.retries());

    // Unloaded: one caller, so a call's latency is its round trips and its scripts, not the
    // queue 32 callers make on two cores (where latency follows the rate).
    let (lone_single, lone_trade) =
        single_then_trade(&store, &servers, &all, per_caller, 1, duration, "lone").await;
    println!(
        "one caller: single-player p50 {} µs, 2-participant trade p50 {} µs ({:.2}x)",
        lone_single.p50(),
        lone_trade.p50(),
        lone_trade.p50() as f64 / lone_single.p50() as f64
    );

    // The two ratios the targets are about, from `--pairs` pairs of phases run alternately
    // (single, then trades), each ratio within its own pair: on a shared machine the rate
    // drifts between phases by more than a step of the work changes it, and a ratio of
    // neighbouring phases with its median over pairs is what stays put between runs.
    if pairs > 0 {
        for callers in [CONCURRENCY, 1] {
            let (mut rates, mut p50s, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
            let mut own = Vec::new();
            for pair in 0..pairs {
                let tag = format!("pair-{callers}-{pair}");
                let (single, trade) =
                    single_then_trade(&store, &servers, &all, per_caller, callers, duration, &tag)
                        .await;
                rates.push(trade.rate / single.rate);
                p50s.push(trade.p50() as f64 / single.p50() as f64);
                cpus.push(trade.cpu_us / single.cpu_us);
                own.push((single.own_cpu_us, trade.own_cpu_us));
            }
            println!(
                "{pairs} alternating pairs, {callers} caller(s): 2-participant trades ÷ single-player: rate {} (median {:.2}, target >= 0.4); p50 {} (median {:.2}, target <= 2); Redis CPU {} (median {:.2})",
                listed(&rates),
                common::median(&rates),
                listed(&p50s),
                common::median(&p50s),
                listed(&cpus),
                common::median(&cpus),
            );
            let singles: Vec<f64> = own.iter().map(|o| o.0).collect();
            let trades: Vec<f64> = own.iter().map(|o| o.1).collect();
            println!(
                "    this process's CPU per call: single-player {:.0} µs, 2-participant trade {:.0} µs (medians; {:.2}x)",
                common::median(&singles),
                common::median(&trades),
                common::median(&own.iter().map(|o| o.1 / o.0).collect::<Vec<_>>()),
            );
        }
    }

    // Contention and the decision records it leaves: every caller trades among the same four
    // players for `--contended` seconds, so attempts meet each other's intents (LOCKED, or a
    // writer's mark) and abort. Each aborted attempt once left an abort record for a day; now
    // the coordinator forgets it once its roll backs were acknowledged. Counted after the
    // detached forgets finished, with the servers' memory.
    {
        let hot: Vec<PlayerId> = (0..4).map(|k| all[k % all.len()][0].clone()).collect();
        let memory = |servers: &[RedisServer]| {
            servers
                .iter()
                .map(|s| {
                    let mut conn = redis::Client::open(s.url())
                        .unwrap()
                        .get_connection()
                        .unwrap();
                    let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
                    info.lines()
                        .find_map(|l| l.strip_prefix("used_memory:"))
                        .and_then(|v| v.trim().parse::<i64>().ok())
                        .unwrap()
                })
                .sum::<i64>()
        };
        let records = |servers: &[RedisServer]| {
            servers
                .iter()
                .map(|s| {
                    let mut conn = redis::Client::open(s.url())
                        .unwrap()
                        .get_connection()
                        .unwrap();
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg("*:decision:*")
                        .query(&mut conn)
                        .unwrap();
                    keys.len()
                })
                .sum::<usize>()
        };
        let before_memory = memory(&servers);
        let before_retries = store.retries();
        let (s, h) = (store.clone(), hot.clone());
        let (rate, _) = common::measure(
            CONCURRENCY,
            Duration::from_secs(contended),
            move |task, i| {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    let from = &h[(task + i) as usize % h.len()];
                    let to = &h[(task + i + 1 + i / 4) as usize % h.len()];
                    let to = if to == from {
                        &h[(task + i + 2) as usize % h.len()]
                    } else {
                        to
                    };
                    let txn = MultiTransaction::new(
                        IdempotencyKey::new(format!("contended-{task}"), i + 1).unwrap(),
                    )
                    .with(Participant::owner(from.clone()).with(gold(-1)))
                    .with(Participant::owner(to.clone()).with(gold(1)));
                    s.execute_multi(txn).await.is_ok()
                }
            },
        )
        .await;
        let retries = store.retries() - before_retries;
        let settled = Instant::now();
        let mut left = records(&servers);
        while left > 0 && settled.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = records(&servers);
        }
        println!(
            "{contended} s of trades among 4 players ({CONCURRENCY} callers): {rate:.0} trades/s, {retries} retried attempts; decision records left: {left}; used_memory {:+} bytes over the run",
            memory(&servers) - before_memory
        );
    }

    // A player under a stream of trades: `TRADERS` callers each trade with the same hot
    // player (alternately giving to it and taking from it) while one caller writes to it
    // alone. The single writes meet the trades' intents (LOCKED, retried by the store within
    // its deadline): their p99 and failures are the price of the lock.
    {
        const TRADERS: u64 = 8;
        let hot = all[0][0].clone();
        let stop = Arc::new(AtomicBool::new(false));
        let trades = Arc::new(AtomicU64::new(0));
        let traders: Vec<_> = (0..TRADERS)
            .map(|t| {
                let (s, a, stop, trades, hot) = (
                    store.clone(),
                    all.clone(),
                    stop.clone(),
                    trades.clone(),
                    hot.clone(),
                );
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let other = a[1 % a.len()][(t as usize + 1) * per_caller - 1].clone();
                        let (from, to) = if i % 2 == 0 {
                            (&hot, &other)
                        } else {
                            (&other, &hot)
                        };
                        let txn = MultiTransaction::new(
                            IdempotencyKey::new(format!("hot-trade-{t}"), i).unwrap(),
                        )
                        .with(Participant::owner(from.clone()).with(gold(-1)))
                        .with(Participant::owner(to.clone()).with(gold(1)));
                        if s.execute_multi(txn).await.is_ok() {
                            trades.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let mut latency = Histogram::<u64>::new(3).unwrap();
        let (mut writes, mut failed) = (0u64, 0u64);
        let started = Instant::now();
        while started.elapsed() < duration {
            writes += 1;
            let txn = Transaction::owner(
                hot.clone(),
                Some(IdempotencyKey::new("hot-single", writes).unwrap()),
            )
            .with(gold(1));
            let at = Instant::now();
            if store.execute(txn).await.is_err() {
                failed += 1;
            }
            latency.record(at.elapsed().as_micros() as u64).unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in traders {
            t.await.unwrap();
        }
        println!(
            "single writes on a player receiving {:.0} trades/s ({TRADERS} traders): {:.0}/s, p50 {} µs, p99 {} µs, {failed} of {writes} failed",
            trades.load(Ordering::Relaxed) as f64 / elapsed,
            writes as f64 / elapsed,
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
        );
    }

    // The same single-player transactions and 2-participant trades with every
    // acknowledgement really waited: a replica per shard, `replicated` acknowledgements.
    {
        let replicas: Vec<RedisServer> = servers
            .iter()
            .map(|m| {
                let port = m.port().to_string();
                RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap()
            })
            .collect();
        for m in &servers {
            assert!(colony_testkit::wait_until_blocking(
                Duration::from_secs(15),
                || m.replicas_online() >= 1
            ));
        }
        let mut replicated = config.clone();
        replicated.redis.acknowledge = colony::config::Acknowledge::Replicated;
        replicated.redis.replicas_to_wait = 1;
        let store = Arc::new(Store::new(&replicated).unwrap());
        let (single, trade) = single_then_trade(
            &store,
            &servers,
            &all,
            per_caller,
            CONCURRENCY,
            duration,
            "r",
        )
        .await;
        println!(
            "replicated acknowledgements (1 replica per shard, every WAIT on the link that wrote): single-player {:>8.0}/s (p50 {} µs, p99 {} µs); 2-participant trades {:>8.0}/s (p50 {} µs, p99 {} µs): {:.2}x",
            single.rate,
            single.p50(),
            single.latency.value_at_quantile(0.99),
            trade.rate,
            trade.p50(),
            trade.latency.value_at_quantile(0.99),
            trade.rate / single.rate
        );
        drop(replicas);
    }

    // Through the gateway.
    let gateway = colony_testkit::TestGateway::start(&colony_testkit::with_test_gateway(config))
        .await
        .unwrap();
    let client = Arc::new(
        colony::client::Client::connect(colony::client::ClientConfig::new(
            gateway.address.to_string(),
            colony_testkit::ADMIN_TOKEN,
        ))
        .await
        .unwrap(),
    );
    let (c, a) = (client.clone(), all.clone());
    let (single_gw, single_gw_latency) = common::measure(CONCURRENCY, duration, move |task, i| {
        let (c, a) = (c.clone(), a.clone());
        async move {
            let txn = Transaction::owner(
                player(&a, task, i as usize, i),
                Some(IdempotencyKey::new(format!("gw-single-{task}"), i + 1).unwrap()),
            )
            .with(gold(1));
            c.execute(txn).await.is_ok()
        }
    })
    .await;
    let (c, a) = (client.clone(), all.clone());
    let settled = gateway.gateway.store().clone();
    let (trade_gw, trade_gw_latency) = common::measure_settled(
        CONCURRENCY,
        duration,
        move |task, i| {
            let (c, a) = (c.clone(), a.clone());
            async move {
                let start = i as usize;
                let giver = player(&a, task, start, i);
                let taker = player(&a, task, start + 1, i);
                let txn = MultiTransaction::new(
                    IdempotencyKey::new(format!("gw-multi-{task}"), i + 1).unwrap(),
                )
                .with(Participant::owner(giver).with(gold(-1)))
                .with(Participant::owner(taker).with(gold(1)));
                c.execute_multi(txn).await.is_ok()
            }
        },
        async move { settled.wait_detached().await },
    )
    .await;
    println!(
        "through the gateway: single-player {single_gw:>8.0}/s (p50 {} µs, p99 {} µs); 2-participant trades {trade_gw:>8.0}/s (p50 {} µs, p99 {} µs): {:.2}x",
        single_gw_latency.value_at_quantile(0.5),
        single_gw_latency.value_at_quantile(0.99),
        trade_gw_latency.value_at_quantile(0.5),
        trade_gw_latency.value_at_quantile(0.99),
        trade_gw / single_gw
    );
}
