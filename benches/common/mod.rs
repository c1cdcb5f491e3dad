//! What the benchmarks share: the measured transaction (a bounded private counter +1 with an
//! idempotency key), closed-loop callers measured for a while, and their numeric command-line
//! options.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::{IdempotencyKey, Name, Operation, PlayerId, Transaction, Visibility};
use hdrhistogram::Histogram;

/// The private counter `gold` moved by `delta`, never below 0 and at most `max`.
pub fn gold(delta: i64, max: Option<i64>) -> Operation {
    Operation::IncrementCounter {
        name: Name::new("gold").unwrap(),
        delta,
        min: Some(0),
        max,
        visibility: Visibility::Private,
    }
}

/// Gives every one of `players` `amount` gold, with one keyed write each (client `setup`,
/// request 1), 256 to a batch.
pub async fn endow(store: &colony::Store, players: &[PlayerId], amount: i64) {
    for chunk in players.chunks(256) {
        let batch = chunk
            .iter()
            .map(|p| {
                Transaction::owner(p.clone(), Some(IdempotencyKey::new("setup", 1).unwrap()))
                    .with(gold(amount, None))
            })
            .collect();
        for r in store.execute_batch(batch).await.unwrap() {
            r.unwrap();
        }
    }
}

/// `player`'s gold +1 (never below 0, at most `max`), with the key `client`/`request`.
pub fn increment(player: &PlayerId, client: &str, request: u64, max: Option<i64>) -> Transaction {
    Transaction::owner(
        player.clone(),
        Some(IdempotencyKey::new(client, request).unwrap()),
    )
    .with(gold(1, max))
}

/// [`increment`] of `player-<n>`, without an upper bound.
pub fn txn(n: u64, client: &str, request: u64) -> Transaction {
    increment(
        &PlayerId::new(format!("player-{n}")).unwrap(),
        client,
        request,
        None,
    )
}

/// The value after `flag` on the command line (`--seconds 5`), or `default`. Other arguments
/// (cargo bench passes `--bench`) are ignored.
pub fn option(flag: &str, default: u64) -> u64 {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == flag {
            return args
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"));
        }
    }
    default
}

/// Runs `callers` callers of `work(caller, iteration)` for `duration`, each calling again as
/// soon as its call returns; returns completed calls (those `work` says succeeded) per second
/// and their latency histogram (µs).
pub async fn measure<F, Fut>(callers: u64, duration: Duration, work: F) -> (f64, Histogram<u64>)
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    measure_settled(callers, duration, work, async {}).await
}

/// [`measure`], the rate counting the time `settle` takes once the callers stopped: work
/// answered before it was finished (a trade's last applies, in detached tasks) is paid for
/// in the rate.
pub async fn measure_settled<F, Fut>(
    callers: u64,
    duration: Duration,
    work: F,
    settle: impl std::future::Future<Output = ()>,
) -> (f64, Histogram<u64>)
where
    F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let started = Instant::now();
    let handles: Vec<_> = (0..callers)
        .map(|task| {
            let (work, stop, done, latencies) =
                (work.clone(), stop.clone(), done.clone(), latencies.clone());
            tokio::spawn(async move {
                let mut i = 0;
                let mut mine = Histogram::<u64>::new(3).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if work(task, i).await {
                        done.fetch_add(1, Ordering::Relaxed);
                        mine.record(t.elapsed().as_micros() as u64).unwrap();
                    }
                    i += 1;
                }
                latencies.lock().unwrap().add(&mine).unwrap();
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    settle.await;
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let latencies = latencies.lock().unwrap().clone();
    (rate, latencies)
}

/// `INFO <section>` of `server`, on a connection of its own.
pub fn info(server: &colony_testkit::RedisServer, section: &str) -> String {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("INFO").arg(section).query(&mut conn).unwrap()
}

/// The number after `prefix` on a line of an `INFO` answer (0 when absent).
pub fn info_field(info: &str, prefix: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap_or(0.0))
}

/// CPU seconds (user and system) `servers` have used since they started: every command,
/// the networking and the replication they do, which is what a studio's Redis bill counts.
pub fn redis_cpu_seconds(servers: &[colony_testkit::RedisServer]) -> f64 {
    servers
        .iter()
        .map(|s| {
            let cpu = info(s, "cpu");
            info_field(&cpu, "used_cpu_sys:") + info_field(&cpu, "used_cpu_user:")
        })
        .sum()
}

/// CPU seconds (user and system) this process has used: on a machine whose cores the
/// callers share with the servers, the client's own work is part of what a call costs.
pub fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces): utime and
    // stime are the 12th and 13th of them, in clock ticks of 1/100 s on Linux.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The median of `values` (the lower middle one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}
