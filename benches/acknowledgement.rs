//! The throughput cost of `replicated` acknowledgements against `local`, on the same master
//! and replica in the same run.
//!
//! Run: `cargo bench --bench acknowledgement [-- --seconds N]`. One master and one replica
//! (plain test profile) on loopback; the transaction is a bounded counter increment with an
//! idempotency key; 64 callers send single transactions, then batches of 16.
//! `BENCH_CONNECTIONS=N` sets `redis.connections_per_shard` of the replicated store.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colony::config::Acknowledge;
use colony::Store;
use colony_testkit::{config_for, wait_until_blocking, RedisServer};

const CALLERS: u64 = 64;

async fn measure(store: Store, label: &'static str, batch: u64, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let client = format!("{label}-{batch}-{caller}");
                let mut request = 0;
                while !stop.load(Ordering::Relaxed) {
                    request += 1;
                    let txns = (0..batch)
                        .map(|k| common::txn(caller * 1000 + k, &client, request))
                        .collect();
                    let results = store.execute_batch(txns).await.unwrap();
                    assert!(
                        results.iter().all(Result::is_ok),
                        "{:?}",
                        results.iter().find(|r| r.is_err())
                    );
                    done.fetch_add(batch, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds = common::option("--seconds", 3);
    let duration = Duration::from_secs(seconds);
    let master = RedisServer::start().unwrap();
    let port = master.port().to_string();
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    assert!(wait_until_blocking(Duration::from_secs(15), || master
        .replicas_online()
        >= 1));
    let mut local = config_for(&[&master]);
    local.redis.acknowledge = Acknowledge::Local;
    let mut replicated = local.clone();
    replicated.redis.acknowledge = Acknowledge::Replicated;
    replicated.redis.replication_timeout_ms = 2000;
    if let Some(n) = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        replicated.redis.connections_per_shard = n;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = Store::new(&local).unwrap();
    let replicated = Store::new(&replicated).unwrap();
    // Warm both up (script load, a replica's first acknowledgement).
    runtime.block_on(async {
        local.execute(common::txn(0, "warm-l", 0)).await.unwrap();
        replicated
            .execute(common::txn(0, "warm-r", 0))
            .await
            .unwrap();
    });
    println!("acknowledgement modes, one master and one replica on loopback, {seconds} s per run, {CALLERS} callers\n");
    println!(
        "{:>5}  {:>12} {:>15} {:>8}",
        "batch", "local txn/s", "replicated", "ratio"
    );
    for batch in [1u64, 16] {
        let l = runtime.block_on(measure(local.clone(), "local", batch, duration));
        let r = runtime.block_on(measure(replicated.clone(), "replicated", batch, duration));
        println!("{batch:>5}  {l:>12.0} {r:>15.0} {:>7.2}x", r / l);
    }
}
