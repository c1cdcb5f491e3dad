//! Moving slots under load, `colony-admin` against `redis-cli --cluster reshard`, in one run on
//! one real 3-master cluster (one replica each, the replicated profile):
//!
//! - players moved per second by `colony-admin reshard`;
//! - the writers' p99 while each tool moves slots, divided by their p99 with no move
//!   (measured first, same run);
//! - writes refused per slot moved (the nodes' `INFO errorstats`: `TRYAGAIN`, and Colony's own
//!   `MOVING` for a parked player), each tool moving as many slots holding about as many
//!   players. Every player lives in the moved slots, so every write meets a move.
//!
//! `cargo bench -p colony-admin --bench reshard [-- --players N --slots N --writers N
//! --seconds N --pace PLAYERS_PER_SECOND]`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../../benches/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::{PlayerId, Store};
use colony_admin::reshard::{Pace, Quiet};
use colony_admin::slot_move::MoveOptions;
use colony_testkit::{Profile, RedisCluster, RedisServer};
use common::{increment, option};
use hdrhistogram::Histogram;

/// The phases writers record their latencies into.
const BASELINE: usize = 0;
const COLONY_ADMIN: usize = 1;
const REDIS_CLI: usize = 2;
const BETWEEN: usize = 3;

/// Sums `errorstat_<code>` over every node.
async fn refusals(cluster: &RedisCluster) -> u64 {
    let mut total = 0;
    for node in cluster.nodes() {
        let Ok(client) = redis::Client::open(node.url()) else {
            continue;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let info: String = redis::cmd("INFO")
            .arg("errorstats")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        for line in info.lines() {
            let counted = ["errorstat_TRYAGAIN:", "errorstat_MOVING:"]
                .iter()
                .any(|p| line.starts_with(p));
            if counted {
                total += line
                    .split("count=")
                    .nth(1)
                    .and_then(|c| c.split(',').next())
                    .and_then(|c| c.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn node_id(node: &RedisServer) -> String {
    let client = redis::Client::open(node.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("CLUSTER").arg("MYID").query(&mut conn).unwrap()
}

fn main() {
    let players = option("--players", 5_000);
    let slots = option("--slots", 256) as u16;
    let writers = option("--writers", 16);
    let seconds = option("--seconds", 8);
    // colony-admin's --players-per-second (0: as fast as it goes).
    let pace = option("--pace", 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).unwrap();
        let mut config = cluster.config();
        config.redis.acknowledge = colony::config::Acknowledge::Replicated;
        config.redis.replicas_to_wait = 1;
        config.redis.retry_deadline_ms = 30_000;
        let store = Store::connect(&config).await.unwrap();
        // Every player lives in the slots the two tools move (the first `2 x slots`), so
        // the writers meet every move: the worst case for latency and refusals.
        let ids: Vec<PlayerId> = (0..)
            .map(|n| PlayerId::new(format!("player-{n}")).unwrap())
            .filter(|p| colony::keys::player_slot(p).get() < 2 * slots)
            .take(players as usize)
            .collect();
        for (chunk_no, chunk) in ids.chunks(500).enumerate() {
            let batch = chunk
                .iter()
                .enumerate()
                .map(|(i, p)| increment(p, "setup", (chunk_no * 500 + i) as u64 + 1, None))
                .collect();
            for r in store.execute_batch(batch).await.unwrap() {
                r.unwrap();
            }
        }
        // The writers: closed loop, each on random players, recording by phase.
        let phase = Arc::new(AtomicUsize::new(BASELINE));
        let stop = Arc::new(AtomicBool::new(false));
        let histograms = Arc::new(Mutex::new(
            (0..4).map(|_| Histogram::<u64>::new(3).unwrap()).collect::<Vec<_>>(),
        ));
        let ids = Arc::new(ids);
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (store, phase, stop, histograms, ids) = (
                    store.clone(),
                    phase.clone(),
                    stop.clone(),
                    histograms.clone(),
                    ids.clone(),
                );
                tokio::spawn(async move {
                    let mut random = colony::seeded::SplitMix64::new(w);
                    let mut mine: Vec<Histogram<u64>> =
                        (0..4).map(|_| Histogram::<u64>::new(3).unwrap()).collect();
                    let mut request = 0;
                    while !stop.load(Ordering::Relaxed) {
                        request += 1;
                        let p = &ids[(random.next_u64() % ids.len() as u64) as usize];
                        let now = phase.load(Ordering::Relaxed);
                        let t = Instant::now();
                        if store
                            .execute(increment(p, &format!("writer-{w}"), request, None))
                            .await
                            .is_ok()
                        {
                            mine[now].record(t.elapsed().as_micros() as u64).unwrap();
                        }
                    }
                    let mut all = histograms.lock().unwrap();
                    for (a, b) in all.iter_mut().zip(&mine) {
                        a.add(b).unwrap();
                    }
                })
            })
            .collect();

        tokio::time::sleep(Duration::from_secs(seconds)).await;
        // colony-admin: the first `slots` slots of master 0 to master 1.
        let masters = cluster.master_nodes();
        let seeds = config.cluster.clone().unwrap();
        let pace = Pace {
            options: MoveOptions::default(),
            replicas: 1,
            players_per_second: (pace > 0).then_some(pace as f64),
        };
        let first: Vec<u16> = (0..slots).collect();
        let before = refusals(&cluster).await;
        phase.store(COLONY_ADMIN, Ordering::Relaxed);
        let report = colony_admin::reshard::reshard(&seeds, &first, &masters[1].address(), &pace, &Quiet)
            .await
            .unwrap();
        phase.store(BETWEEN, Ordering::Relaxed);
        let admin_refused = refusals(&cluster).await - before;
        // redis-cli: as many slots, from master 0 to master 2 (its next slots, holding about
        // as many players).
        let (from, to) = (node_id(masters[0]), node_id(masters[2]));
        let seed = masters[0].address();
        let before = refusals(&cluster).await;
        phase.store(REDIS_CLI, Ordering::Relaxed);
        let started = Instant::now();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("redis-cli")
                .args(["--cluster", "reshard", &seed])
                .args(["--cluster-from", &from, "--cluster-to", &to])
                .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let cli_seconds = started.elapsed().as_secs_f64();
        phase.store(BETWEEN, Ordering::Relaxed);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let cli_refused = refusals(&cluster).await - before;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let h = histograms.lock().unwrap();
        let p99 = |i: usize| h[i].value_at_quantile(0.99) as f64 / 1000.0;
        println!(
            "{players} players in slots 0-{}, {writers} writers, {slots} slots moved by each tool (3 masters x 1 replica, replicated profile)",
            2 * slots - 1
        );
        println!(
            "baseline (no move)       p99 {:>7.2} ms  ({} writes)",
            p99(BASELINE),
            h[BASELINE].len()
        );
        println!(
            "colony-admin reshard     p99 {:>7.2} ms  ({} writes)  ratio {:.2}  {:.1} s, {} players, {:.0} players/s, {:.2} refusals per slot",
            p99(COLONY_ADMIN),
            h[COLONY_ADMIN].len(),
            p99(COLONY_ADMIN) / p99(BASELINE),
            report.seconds,
            report.players,
            report.players as f64 / report.seconds,
            admin_refused as f64 / f64::from(slots)
        );
        println!(
            "redis-cli --cluster      p99 {:>7.2} ms  ({} writes)  ratio {:.2}  {:.1} s, {:.2} refusals per slot",
            p99(REDIS_CLI),
            h[REDIS_CLI].len(),
            p99(REDIS_CLI) / p99(BASELINE),
            cli_seconds,
            cli_refused as f64 / f64::from(slots)
        );
    });
}
