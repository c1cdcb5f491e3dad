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

use std::time::{Duration, Instant};

use colony::client::{Client, ClientConfig};
use colony::config::Acknowledge;
use colony_testkit::{
    wait_until, with_test_gateway, IncrementWriters, Profile, Seeded, SentinelShard, Target,
    TestGateway, ADMIN_TOKEN,
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
        seed: colony_testkit::seed_from_env(),
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

    let target = Target::Client(client.clone());
    let writers = IncrementWriters::start(target.clone(), a.writers, "soak", a.writers, a.seed);

    let mut kills = Vec::new();
    for kill in 0..a.kills {
        let pause = a.interval.saturating_sub(a.interval / 4) + random.range(0, a.interval / 2 + 1);
        tokio::time::sleep(Duration::from_secs(pause)).await;
        let old = shard.master_index().unwrap();
        let killed_at = Instant::now();
        shard.servers[old].kill().unwrap();
        writers.fault(format!("kill {kill}: master {}", shard.servers[old].port()));
        let promoted = wait_until(Duration::from_secs(60), || {
            shard.master_index().is_some_and(|m| m != old)
        })
        .await;
        assert!(promoted, "no promotion after kill {kill}");
        let promotion = killed_at.elapsed();
        let new = shard.master_index().unwrap();
        let port = shard.servers[new].port().to_string();
        shard.servers[old]
            .start_again(&["--replicaof", "127.0.0.1", &port])
            .unwrap();
        let at = writers.acknowledged();
        assert!(
            wait_until(Duration::from_secs(60), || writers.acknowledged() > at + 50).await,
            "writes did not resume after kill {kill}"
        );
        println!("kill {kill}: Sentinel promotion after {promotion:?}");
        kills.push((killed_at, promotion));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = writers.attempts();
    let history = writers.stop().await;
    let verdict = history.check_against(&target).await;
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
        verdict.acknowledged_ops, verdict.unknown_ops, verdict.failed_ops, attempts
    );
    println!(
        "lost acknowledged: {} ({:.3}%), applied twice: {}",
        verdict.lost,
        100.0 * verdict.lost as f64 / verdict.acknowledged_ops.max(1) as f64,
        verdict.applied_twice
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
    if a.profile == Profile::Safe && (verdict.lost > 0 || verdict.applied_twice > 0) {
        std::process::exit(1);
    }
}
