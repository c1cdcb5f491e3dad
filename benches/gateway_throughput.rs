//! Transactions per second and latency percentiles through the gateway and through the
//! library directly, on the same redis-server in the same run, at batch sizes 1, 16 and 128.
//!
//! Run: `cargo bench --bench gateway_throughput` (options: `--seconds N`, default 3;
//! `--callers N`, default 16). Each caller sends one batch at a time (closed loop); latency is
//! per call. The gateway runs in this process on loopback, spoken to by the Rust client over
//! TCP, exactly as in the tests. Targets: gateway >= 0.5x library throughput at batch 16;
//! gateway adds <= 150 µs to p50 latency. Last, the rollback alarm's cost: a gateway with it
//! on against one with it off (`gateway.rollback_watch_players = 0`), at batch 16.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::client::{Client, ClientConfig};
use colony::{Committed, Error, Store, Transaction};
use colony_testkit::{gateway_config, RedisServer, TestGateway, ADMIN_TOKEN};
use hdrhistogram::Histogram;

const PLAYERS: u64 = 10_000;

#[derive(Clone)]
enum Target {
    Library(Store),
    Gateway(Client),
}

impl Target {
    async fn run(&self, batch: Vec<Transaction>) -> Result<Vec<Result<Committed, Error>>, Error> {
        match self {
            Target::Library(store) => store.execute_batch(batch).await,
            Target::Gateway(client) => client.execute_batch(batch).await,
        }
    }
}

struct Figures {
    tps: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn measure(
    target: Target,
    label: &str,
    batch: u64,
    callers: u64,
    duration: Duration,
) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (target, stop, done, histogram) = (
                target.clone(),
                stop.clone(),
                done.clone(),
                histogram.clone(),
            );
            let client_id = format!("{label}-{batch}-{caller}");
            tokio::spawn(async move {
                let mut local = Histogram::<u64>::new(3).unwrap();
                let mut request = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    request += 1;
                    let txns: Vec<_> = (0..batch)
                        .map(|k| {
                            common::txn(
                                (caller * 7919 + request * 31 + k) % PLAYERS,
                                &client_id,
                                request,
                            )
                        })
                        .collect();
                    let t = Instant::now();
                    let results = target.run(txns).await.unwrap();
                    local.record(t.elapsed().as_micros() as u64).unwrap();
                    assert!(
                        results.iter().all(Result::is_ok),
                        "{:?}",
                        results.iter().find(|r| r.is_err())
                    );
                    done.fetch_add(batch, Ordering::Relaxed);
                }
                histogram.lock().unwrap().add(&local).unwrap();
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let h = histogram.lock().unwrap();
    Figures {
        tps: done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
    }
}

fn main() {
    let callers = common::option("--callers", 16);
    let seconds = common::option("--seconds", 3);
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start().unwrap();
    let config = gateway_config(&[&server]);
    let store = Store::new(&config).unwrap();
    let (gateway, client) = runtime.block_on(async {
        let gateway = TestGateway::start(&config).await.unwrap();
        let mut client_config = ClientConfig::new(gateway.address.to_string(), ADMIN_TOKEN);
        client_config.request_deadline = Duration::from_secs(30);
        let client = Client::connect(client_config).await.unwrap();
        (gateway, client)
    });

    println!("Colony gateway vs library, one redis-server on loopback, {seconds} s per run, {callers} callers");
    println!(
        "transaction: bounded private counter +1 with an idempotency key, {PLAYERS} players\n"
    );
    println!(
        "{:>5}  {:>10} {:>9} {:>9}  {:>10} {:>9} {:>9}  {:>7} {:>9}",
        "batch",
        "lib txn/s",
        "p50 µs",
        "p99 µs",
        "gw txn/s",
        "p50 µs",
        "p99 µs",
        "gw/lib",
        "+p50 µs"
    );
    for batch in [1u64, 16, 128] {
        let lib = runtime.block_on(measure(
            Target::Library(store.clone()),
            "lib",
            batch,
            callers,
            duration,
        ));
        let gw = runtime.block_on(measure(
            Target::Gateway(client.clone()),
            "gw",
            batch,
            callers,
            duration,
        ));
        println!(
            "{batch:>5}  {:>10.0} {:>9} {:>9}  {:>10.0} {:>9} {:>9}  {:>6.2}x {:>9}",
            lib.tps,
            lib.p50_us,
            lib.p99_us,
            gw.tps,
            gw.p50_us,
            gw.p99_us,
            gw.tps / lib.tps,
            gw.p50_us as i64 - lib.p50_us as i64
        );
    }
    // Unloaded latency: one caller, one transaction per call.
    let lib = runtime.block_on(measure(
        Target::Library(store.clone()),
        "lib1",
        1,
        1,
        duration,
    ));
    let gw = runtime.block_on(measure(
        Target::Gateway(client.clone()),
        "gw1",
        1,
        1,
        duration,
    ));
    println!(
        "\nunloaded (1 caller, batch 1): library p50 {} µs, gateway p50 {} µs, added {} µs (target <= 150)",
        lib.p50_us,
        gw.p50_us,
        gw.p50_us as i64 - lib.p50_us as i64
    );
    // The rollback alarm's cost: the same gateway configuration with the alarm on (the
    // default) and off, at batch 16, alternating on, off, on, off so drift hits both alike.
    let mut off_config = config.clone();
    off_config.gateway.rollback_watch_players = 0;
    let (gateway_off, client_off) = runtime.block_on(async {
        let gateway = TestGateway::start(&off_config).await.unwrap();
        let mut client_config = ClientConfig::new(gateway.address.to_string(), ADMIN_TOKEN);
        client_config.request_deadline = Duration::from_secs(30);
        let client = Client::connect(client_config).await.unwrap();
        (gateway, client)
    });
    let (mut on_tps, mut off_tps) = (0.0, 0.0);
    // Labels name the client ids, so each run writes with keys of its own (no replays); the
    // server is emptied before each run, so every run starts alike (and players do not reach
    // redis.idempotency_max_clients).
    let flush = || {
        let mut conn = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    };
    for (on, off) in [("alarm-on-1", "alarm-off-1"), ("alarm-on-2", "alarm-off-2")] {
        flush();
        on_tps += runtime
            .block_on(measure(
                Target::Gateway(client.clone()),
                on,
                16,
                callers,
                duration,
            ))
            .tps;
        flush();
        off_tps += runtime
            .block_on(measure(
                Target::Gateway(client_off.clone()),
                off,
                16,
                callers,
                duration,
            ))
            .tps;
    }
    println!(
        "rollback alarm (batch 16): on {:.0} txn/s, off {:.0} txn/s, on/off {:.2}x",
        on_tps / 2.0,
        off_tps / 2.0,
        on_tps / off_tps
    );
    runtime.block_on(gateway_off.shutdown());
    runtime.block_on(gateway.shutdown());
}
