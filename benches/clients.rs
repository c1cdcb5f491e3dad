//! Each client's throughput and latency against one gateway, as ratios to the Rust client's
//! in the same run: the Rust client (this binary again, as a child process), the TypeScript
//! client (Node.js) and the Python client (asyncio), one after another, then the Rust client
//! once more, so drift on a shared machine shows.
//!
//! Run: `cargo bench --bench clients` (option: `--seconds N` per phase, default 2). It starts a
//! redis-server and a gateway (in this process, on loopback), builds the TypeScript client
//! (`npm run build`; its packages come from `bash .ci/setup`) and installs the Python client
//! into its venv. Every client runs the same workload, each phase a closed loop on one
//! connection: one caller sending one transaction at a time (its p50 and p99), then 16 and 32
//! callers (requests in flight), then 16 callers sending batches of 16. The transaction: a
//! private counter +1 (never below 0) with an idempotency key, on one of 10,000 players.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colony::client::{Client, ClientConfig};
use colony::{Name, Operation, PlayerId, Transaction, Visibility};
use colony_testkit::{gateway_config, RedisServer, TestGateway, ADMIN_TOKEN};
use hdrhistogram::Histogram;
use serde_json::Value;

const PLAYERS: u64 = 10_000;
/// The figures every client prints, in the order of the table.
const FIGURES: [(&str, &str); 5] = [
    ("single_p50_us", "p50 µs (1 caller)"),
    ("single_tps", "txn/s 1 caller"),
    ("inflight16_tps", "txn/s 16 in flight"),
    ("inflight32_tps", "txn/s 32 in flight"),
    ("batch16_tps", "txn/s 16 x batch 16"),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--workload") {
        let seconds: f64 = args[at + 3].parse().unwrap();
        rust_workload(
            &args[at + 1],
            &args[at + 2],
            Duration::from_secs_f64(seconds),
        );
        return;
    }
    let seconds = common::option("--seconds", 2);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    prepare_clients(root);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start().unwrap();
    let config = gateway_config(&[&server]);
    let gateway = runtime.block_on(TestGateway::start(&config)).unwrap();
    let address = gateway.address.to_string();
    let seconds_arg = seconds.to_string();

    println!(
        "Colony clients against one gateway (one redis-server, loopback), {seconds} s per phase"
    );
    println!("transaction: private counter +1 with an idempotency key, {PLAYERS} players; ratios to the mean of the two Rust runs\n");
    let exe = std::env::current_exe().unwrap();
    let runs: Vec<(&str, Command)> = vec![
        ("rust", {
            let mut c = Command::new(&exe);
            c.args(["--workload", &address, ADMIN_TOKEN, &seconds_arg]);
            c
        }),
        ("typescript", {
            let mut c = Command::new("node");
            c.current_dir(root.join("clients/typescript")).args([
                "dist/bench/throughput.js",
                &address,
                ADMIN_TOKEN,
                &seconds_arg,
            ]);
            c
        }),
        ("python", {
            let mut c = Command::new(root.join("clients/python/.venv/bin/python"));
            c.current_dir(root.join("clients/python")).args([
                "bench/throughput.py",
                &address,
                ADMIN_TOKEN,
                &seconds_arg,
            ]);
            c
        }),
        ("rust (again)", {
            let mut c = Command::new(&exe);
            c.args(["--workload", &address, ADMIN_TOKEN, &seconds_arg]);
            c
        }),
    ];
    let mut results: Vec<(&str, Value)> = Vec::new();
    for (name, mut command) in runs {
        let output = command.output().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            output.status.success(),
            "{name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = String::from_utf8_lossy(&output.stdout);
        let figures: Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{name} printed no figures ({e}): {line}"));
        results.push((name, figures));
    }
    runtime.block_on(gateway.shutdown());

    let value = |figures: &Value, key: &str| figures[key].as_f64().unwrap();
    let baseline = |key: &str| {
        let rust: Vec<f64> = results
            .iter()
            .filter(|(name, _)| name.starts_with("rust"))
            .map(|(_, f)| value(f, key))
            .collect();
        rust.iter().sum::<f64>() / rust.len() as f64
    };
    print!("{:<14}", "client");
    for (_, label) in FIGURES {
        print!(" {label:>20}");
    }
    println!();
    for (name, figures) in &results {
        print!("{name:<14}");
        for (key, _) in FIGURES {
            let v = value(figures, key);
            print!(" {:>11.0} ({:>5.2}x)", v, v / baseline(key));
        }
        println!();
    }
    println!("\nthroughput ratios above 1 are faster than Rust; the p50 ratio above 1 is slower");
}

/// Builds the TypeScript client and installs the Python one, as their test scripts do.
fn prepare_clients(root: &Path) {
    let run = |what: &str, command: &mut Command| {
        let status = command.status().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(status.success(), "{what} failed");
    };
    run(
        "npm run build (clients/typescript; run bash .ci/setup first)",
        Command::new("npm")
            .current_dir(root.join("clients/typescript"))
            .args(["run", "build", "--silent"]),
    );
    run(
        "the Python client's venv",
        Command::new("bash").arg(root.join("clients/python/venv.sh")),
    );
    run(
        "pip install clients/python",
        Command::new(root.join("clients/python/.venv/bin/pip"))
            .current_dir(root.join("clients/python"))
            .args([
                "install",
                "-q",
                "--no-build-isolation",
                "--no-deps",
                "--force-reinstall",
                ".",
            ]),
    );
}

/// The workload, with the Rust client, in this (child) process: prints one JSON line.
fn rust_workload(address: &str, token: &str, seconds: Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = ClientConfig::new(address, token);
        config.request_deadline = Duration::from_secs(30);
        config.client_name = "bench-rust".into();
        let client = Client::connect(config).await.unwrap();
        phase(&client, seconds, 8, 1, None).await;
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        let single_tps = phase(&client, seconds, 1, 1, Some(&mut histogram)).await;
        let figures = serde_json::json!({
            "client": "rust",
            "single_p50_us": histogram.value_at_quantile(0.5),
            "single_p99_us": histogram.value_at_quantile(0.99),
            "single_tps": single_tps,
            "inflight16_tps": phase(&client, seconds, 16, 1, None).await,
            "inflight32_tps": phase(&client, seconds, 32, 1, None).await,
            "batch16_tps": phase(&client, seconds, 16, 16, None).await,
        });
        client.close().await;
        println!("{figures}");
    });
}

fn transaction(client: &Client) -> Transaction {
    let n = rand_below(PLAYERS);
    Transaction::owner(
        PlayerId::new(format!("bench-rs-{}-{n}", std::process::id())).unwrap(),
        Some(client.next_key()),
    )
    .with(Operation::IncrementCounter {
        name: Name::new("gold").unwrap(),
        delta: 1,
        min: Some(0),
        max: None,
        visibility: Visibility::Private,
    })
}

/// A cheap pseudo-random number below `n` (the players a transaction picks).
fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % n
}

/// One closed-loop phase: `callers` tasks, each sending `batch` transactions per call until
/// the time is up. Transactions per second; each call's latency into `histogram`.
async fn phase(
    client: &Client,
    seconds: Duration,
    callers: usize,
    batch: usize,
    histogram: Option<&mut Histogram<u64>>,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + seconds;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let mut local = Histogram::<u64>::new(3).unwrap();
                while Instant::now() < until {
                    let call = Instant::now();
                    let txns: Vec<_> = (0..batch).map(|_| transaction(&client)).collect();
                    for result in client.execute_batch(txns).await.unwrap() {
                        result.unwrap();
                    }
                    local.record(call.elapsed().as_micros() as u64).unwrap();
                    done.fetch_add(batch as u64, Ordering::Relaxed);
                }
                local
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        all.add(task.await.unwrap()).unwrap();
    }
    let tps = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    if let Some(h) = histogram {
        h.add(all).unwrap();
    }
    tps
}
