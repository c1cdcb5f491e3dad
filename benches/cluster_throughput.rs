//! A Redis Cluster against Sentinel shards, on this machine in the same run: three masters
//! with one replica each on both topologies (the cluster formed by the test harness, the
//! Sentinel shards watched by three Sentinels each), the same library, the same callers.
//! Printed as ratios cluster ÷ Sentinel, the figure the cluster work is held to (≥ 0.9):
//!
//! - single-player transactions per second (a bounded private counter +1 with an idempotency
//!   key), and their p50/p99;
//! - two-player trades per second, the participants on different masters;
//! - both again in the replicated profile (every write waits for its replica on the link
//!   that wrote it; on the cluster, for every replica the map lists for that master).
//!
//! The topologies are measured in turns (Sentinel, cluster, Sentinel, cluster, ...) and each
//! figure is the mean of its rounds, so a noisy neighbour on this shared machine weighs on
//! both alike. Failover unavailability, the third figure of the comparison, comes from the
//! chaos tables (`bash deploy/local/run.sh --chaos` and `--cluster --chaos`).
//!
//! Run: `cargo bench --bench cluster_throughput [-- --seconds N --rounds N]` (defaults 3, 2).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use colony::config::Acknowledge;
use colony::{
    IdempotencyKey, MultiTransaction, Operation, Participant, PlayerId, Store, Transaction,
};
use colony_testkit::{Profile, Rig, Topology};
use hdrhistogram::Histogram;

const CONCURRENCY: u64 = 32;
/// Players each caller owns on each master.
const PER_CALLER: usize = 8;

/// The player's private gold moved by `delta`, never below 0.
fn gold(delta: i64) -> Operation {
    common::gold(delta, None)
}

/// One topology under test: its servers (kept running) and a store per profile.
struct Bench {
    name: &'static str,
    _rig: Rig,
    local: Arc<Store>,
    replicated: Arc<Store>,
    /// Players as `[master][n]`, every one funded.
    players: Arc<Vec<Vec<PlayerId>>>,
}

impl Bench {
    async fn start(topology: Topology, name: &'static str) -> Bench {
        let rig = Rig::start(topology, "bench", Profile::Plain, 1, 3).unwrap();
        let mut config = rig.config();
        let local = Arc::new(Store::connect(&config).await.unwrap());
        config.redis.acknowledge = Acknowledge::Replicated;
        let replicated = Arc::new(Store::connect(&config).await.unwrap());
        let map = local.shard_map();
        let shards = map.shards().len();
        let wanted = CONCURRENCY as usize * PER_CALLER;
        let mut players = vec![Vec::new(); shards];
        for i in 0.. {
            let p = PlayerId::new(format!("bench-{i}")).unwrap();
            let s = map.shard_for_player(&p).get();
            if players[s].len() < wanted {
                players[s].push(p);
            }
            if players.iter().all(|v| v.len() == wanted) {
                break;
            }
        }
        for shard in &players {
            for chunk in shard.chunks(256) {
                let batch = chunk
                    .iter()
                    .map(|p| {
                        Transaction::owner(p.clone(), IdempotencyKey::new("setup", 1).ok())
                            .with(gold(1_000_000))
                    })
                    .collect();
                for r in local.execute_batch(batch).await.unwrap() {
                    r.unwrap();
                }
            }
        }
        Bench {
            name,
            _rig: rig,
            local,
            replicated,
            players: Arc::new(players),
        }
    }

    fn store(&self, replicated: bool) -> Arc<Store> {
        if replicated {
            self.replicated.clone()
        } else {
            self.local.clone()
        }
    }

    /// Single-player transactions, each caller over its own players of every master.
    async fn singles(
        &self,
        duration: Duration,
        replicated: bool,
        round: u64,
    ) -> (f64, Histogram<u64>) {
        let (store, players) = (self.store(replicated), self.players.clone());
        let client = format!("single-{replicated}-{round}");
        common::measure(CONCURRENCY, duration, move |task, i| {
            let (store, players, client) = (store.clone(), players.clone(), client.clone());
            async move {
                let shard = &players[i as usize % players.len()];
                let player =
                    &shard[task as usize * PER_CALLER + (i as usize / players.len()) % PER_CALLER];
                let txn = common::increment(player, &format!("{client}-{task}"), i + 1, None);
                store.execute(txn).await.is_ok()
            }
        })
        .await
    }

    /// Two-player trades between players on different masters.
    async fn trades(
        &self,
        duration: Duration,
        replicated: bool,
        round: u64,
    ) -> (f64, Histogram<u64>) {
        let (store, players) = (self.store(replicated), self.players.clone());
        let client = format!("trade-{replicated}-{round}");
        common::measure(CONCURRENCY, duration, move |task, i| {
            let (store, players, client) = (store.clone(), players.clone(), client.clone());
            async move {
                let masters = players.len();
                let from = i as usize % masters;
                let to = (from + 1) % masters;
                let pick = |m: usize| {
                    players[m][task as usize * PER_CALLER + (i as usize / masters) % PER_CALLER]
                        .clone()
                };
                let give = |p: PlayerId, delta: i64| Participant::owner(p).with(gold(delta));
                let trade = MultiTransaction::new(
                    IdempotencyKey::new(format!("{client}-{task}"), i + 1).unwrap(),
                )
                .with(give(pick(from), -1))
                .with(give(pick(to), 1));
                store.execute_multi(trade).await.is_ok()
            }
        })
        .await
    }
}

/// The mean of the rates of `rounds`, and the merged latencies.
#[derive(Default)]
struct Figure {
    rates: Vec<f64>,
    latency: Option<Histogram<u64>>,
}

impl Figure {
    fn add(&mut self, (rate, latency): (f64, Histogram<u64>)) {
        self.rates.push(rate);
        match &mut self.latency {
            Some(all) => all.add(&latency).unwrap(),
            None => self.latency = Some(latency),
        }
    }

    fn rate(&self) -> f64 {
        self.rates.iter().sum::<f64>() / self.rates.len().max(1) as f64
    }

    fn quantile(&self, q: f64) -> u64 {
        self.latency.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }
}

#[tokio::main]
async fn main() {
    let duration = Duration::from_secs(common::option("--seconds", 3));
    let rounds = common::option("--rounds", 2);
    println!("starting 3 Sentinel shards and a 3-master cluster, one replica per master ...");
    let sentinel = Bench::start(Topology::Sentinel, "Sentinel shards").await;
    let cluster = Bench::start(Topology::Cluster, "Redis Cluster").await;
    println!(
        "{CONCURRENCY} callers, {}-second rounds, {rounds} rounds per figure, topologies in turns\n",
        duration.as_secs()
    );
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "", "Sentinel/s", "p50 µs", "p99 µs", "cluster/s", "p50 µs", "p99 µs", "ratio"
    );
    for replicated in [false, true] {
        let profile = if replicated { "replicated" } else { "local" };
        for what in ["single-player transactions", "two-master trades"] {
            let mut figures = [Figure::default(), Figure::default()];
            for round in 0..rounds {
                for (bench, figure) in [&sentinel, &cluster].into_iter().zip(figures.iter_mut()) {
                    let measured = if what.starts_with("single") {
                        bench.singles(duration, replicated, round).await
                    } else {
                        bench.trades(duration, replicated, round).await
                    };
                    figure.add(measured);
                }
            }
            let [s, c] = &figures;
            println!(
                "{:<34} {:>10.0} {:>9} {:>9} {:>10.0} {:>9} {:>9} {:>6.2}x",
                format!("{what} ({profile})"),
                s.rate(),
                s.quantile(0.5),
                s.quantile(0.99),
                c.rate(),
                c.quantile(0.5),
                c.quantile(0.99),
                c.rate() / s.rate().max(1.0)
            );
        }
    }
    println!(
        "\nratio = {} ÷ {} (target >= 0.9); failover unavailability: the chaos tables",
        cluster.name, sentinel.name
    );
}
