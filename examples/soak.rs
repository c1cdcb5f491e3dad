//! The failover soak: steady increments through the gateway while a shard's master is
//! SIGKILLed again and again (RELIABILITY.md scenario 1, or 2 with `--profile naive`), each
//! killed master coming back as a replica. At the end every counter is checked against the
//! recorded history, and the figures are printed.
//!
//!     cargo run --release --example soak -- [--kills 5] [--interval 20] [--writers 8]
//!                                          [--profile safe|naive] [--seed N]
//!
//! Everything runs on loopback: three redis-servers and three Sentinels from
//! `deploy/redis/`, the gateway in process, the Rust client. Unavailability per failover is
//! the longest time without an acknowledged write after the kill; the Sentinels' promotion
//! time is measured in the same run by polling them.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::client::{Client, ClientConfig};
use colony::config::Acknowledge;
use colony::testkit::{
    wait_until, with_test_gateway, History, Profile, Seeded, SentinelShard, TestGateway,
    ADMIN_TOKEN,
};
use colony::{
    Access, Error, IdempotencyKey, Name, Operation, PlayerId, Transaction, Value, Visibility,
};

struct Args {
    kills: u32,
    interval: u64,
    writers: u64,
    profile: Profile,
    seed: u64,
}

fn args() -> Args {
    let mut a = Args {
        kills: 5,
        interval: 20,
        writers: 8,
        profile: Profile::Safe,
        seed: Seeded::seed_from_env(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--kills" => a.kills = value.parse().unwrap(),
            "--interval" => a.interval = value.parse().unwrap(),
            "--writers" => a.writers = value.parse().unwrap(),
            "--seed" => a.seed = value.parse().unwrap(),
            "--profile" => {
                a.profile = match value.as_str() {
                    "safe" => Profile::Safe,
                    "naive" => Profile::Naive,
                    other => panic!("unknown profile {other}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "soak: {} kills every ~{} s, {} writers, {:?} profile, seed {}",
        a.kills, a.interval, a.writers, a.profile, a.seed
    );
    let mut random = Seeded::new(a.seed);
    let mut shard = SentinelShard::start("soak", a.profile, 2).unwrap();
    let mut config = with_test_gateway(shard.config());
    config.redis.acknowledge = match a.profile {
        Profile::Naive => Acknowledge::Local,
        _ => Acknowledge::Replicated,
    };
    config.redis.connect_timeout_ms = 300;
    config.redis.command_timeout_ms = 1000;
    config.redis.replication_timeout_ms = 200;
    config.redis.retry_deadline_ms = 300;
    config.redis.breaker_cooldown_ms = 100;
    let gateway = TestGateway::start(&config).await.unwrap();
    let mut client_config = ClientConfig::new(gateway.address.to_string(), ADMIN_TOKEN);
    client_config.request_deadline = Duration::from_millis(500);
    let client = Client::connect(client_config).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..a.writers)
        .map(|w| {
            let (client, stop, history, acked, attempts) = (
                client.clone(),
                stop.clone(),
                history.clone(),
                acked.clone(),
                attempts.clone(),
            );
            tokio::spawn(async move {
                let counter = format!("soak-{w}");
                let mut request = 0;
                'requests: while !stop.load(Ordering::Relaxed) {
                    request += 1;
                    let txn = Transaction::owner(
                        PlayerId::new(counter.clone()).unwrap(),
                        Some(IdempotencyKey::new(format!("soak-writer-{w}"), request).unwrap()),
                    )
                    .with(Operation::IncrementCounter {
                        name: Name::new("n").unwrap(),
                        delta: 1,
                        min: None,
                        max: None,
                        visibility: Visibility::Private,
                    });
                    let mut maybe_applied = false;
                    loop {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        match client.execute(txn.clone()).await {
                            Ok(_) => {
                                history.lock().unwrap().acknowledged(&counter);
                                acked.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(e) if e.is_retryable() => {
                                maybe_applied |= matches!(e, Error::Unknown { .. });
                                if stop.load(Ordering::Relaxed) {
                                    let mut h = history.lock().unwrap();
                                    if maybe_applied {
                                        h.unknown(&counter);
                                    } else {
                                        h.failed(&counter);
                                    }
                                    break 'requests;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                }
            })
        })
        .collect();

    let mut kills = Vec::new();
    for kill in 0..a.kills {
        let pause = a.interval.saturating_sub(a.interval / 4) + random.range(0, a.interval / 2 + 1);
        tokio::time::sleep(Duration::from_secs(pause)).await;
        let old = shard.master_index().unwrap();
        let killed_at = Instant::now();
        shard.servers[old].kill().unwrap();
        history
            .lock()
            .unwrap()
            .fault(format!("kill {kill}: master {}", shard.servers[old].port()));
        let promoted = wait_until(Duration::from_secs(60), || {
            shard.master_index().is_some_and(|m| m != old)
        });
        assert!(promoted, "no promotion after kill {kill}");
        let promotion = killed_at.elapsed();
        let new = shard.master_index().unwrap();
        let port = shard.servers[new].port().to_string();
        shard.servers[old]
            .start_again(&["--replicaof", "127.0.0.1", &port])
            .unwrap();
        let at = acked.load(Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(60), || acked.load(Ordering::Relaxed)
                > at + 50),
            "writes did not resume after kill {kill}"
        );
        println!("kill {kill}: Sentinel promotion after {promotion:?}");
        kills.push((killed_at, promotion));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    let mut values = Vec::new();
    for counter in history.counters() {
        let state = client
            .get_player(
                &PlayerId::new(counter.clone()).unwrap(),
                Access::Owner,
                None,
            )
            .await
            .unwrap();
        let v = match state.reads[0].entries.first().map(|e| &e.value) {
            Some(Value::Counter(v)) => *v as u64,
            _ => 0,
        };
        values.push((counter, v));
    }
    let verdict = history.check(|c| values.iter().find(|(n, _)| n == c).map_or(0, |(_, v)| *v));
    let mut windows: Vec<Duration> = kills
        .iter()
        .map(|(at, _)| history.longest_gap_after(*at).unwrap_or_default())
        .collect();
    let mut promotions: Vec<Duration> = kills.iter().map(|(_, p)| *p).collect();
    let mut added: Vec<Duration> = windows
        .iter()
        .zip(&promotions)
        .map(|(w, p)| w.saturating_sub(*p))
        .collect();
    windows.sort();
    promotions.sort();
    added.sort();
    println!();
    println!(
        "operations: {} acknowledged, {} unknown, {} failed, {} attempts",
        verdict.acknowledged,
        verdict.unknown,
        verdict.failed,
        attempts.load(Ordering::Relaxed)
    );
    println!(
        "lost acknowledged: {} ({:.3}%), applied twice: {}",
        verdict.lost,
        100.0 * verdict.lost as f64 / verdict.acknowledged.max(1) as f64,
        verdict.extra
    );
    println!("failovers: {}", kills.len());
    println!(
        "unavailability per failover: p50 {:?}, p99 {:?}",
        percentile(&windows, 0.5),
        percentile(&windows, 0.99)
    );
    println!(
        "Sentinel promotion:          p50 {:?}, p99 {:?}",
        percentile(&promotions, 0.5),
        percentile(&promotions, 0.99)
    );
    println!(
        "added by Colony:             p50 {:?}, p99 {:?} (target <= 300 ms)",
        percentile(&added, 0.5),
        percentile(&added, 0.99)
    );
    gateway.shutdown().await;
    if a.profile == Profile::Safe && (verdict.lost > 0 || verdict.extra > 0) {
        std::process::exit(1);
    }
}
