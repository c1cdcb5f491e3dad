//! `colony-loadtest`: simulates batched game-client traffic against Colony gateways, prints a
//! live progress line and a final report, writes the report as JSON and an HTML chart, and
//! exits non-zero if anything acknowledged was lost or applied twice.

#![allow(clippy::print_stdout)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use colony_loadtest::runner;
use colony_loadtest::scenario::{Mix, Scenario};

/// Load test for Colony.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Gateway addresses, host:port (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7400")]
    gateway: Vec<String>,
    /// Token of the game role.
    #[arg(
        long,
        env = "COLONY_LOADTEST_TOKEN",
        default_value = "local-game-token-0001"
    )]
    token: String,
    /// Players simulated.
    #[arg(long, default_value_t = 1000)]
    players: u64,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 32)]
    sessions: u64,
    /// Transactions per batch.
    #[arg(long, default_value_t = 8)]
    batch: u64,
    /// Pause after each request of a session, in milliseconds.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Operation mix, e.g. login=5,friends=30,currency=40,write=20,idle=5.
    #[arg(long, default_value = "login=5,friends=30,currency=40,write=20,idle=5")]
    mix: String,
    /// Requests per second over all sessions (paced); closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seed of every random choice (printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Prefix of player ids.
    #[arg(long, default_value = "loadtest")]
    prefix: String,
    /// Directory for report.json and report.html.
    #[arg(long, default_value = "loadtest-report")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let scenario = Scenario {
        gateways: args.gateway,
        token: args.token,
        players: args.players,
        prefix: args.prefix,
        sessions: args.sessions,
        batch: args.batch,
        think: Duration::from_millis(args.think_ms),
        mix: Mix::parse(&args.mix).map_err(anyhow::Error::msg)?,
        rate: args.rate,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        seed,
    };
    println!(
        "colony-loadtest: {} players, {} sessions, batches of {}, seed {seed}",
        scenario.players, scenario.sessions, scenario.batch
    );
    let terminal = std::io::stderr().is_terminal();
    let report = runner::run(scenario, move |line| {
        if terminal {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    })
    .await?;
    if terminal {
        eprintln!();
    }
    println!("\n{}", report.table());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("report.html"), report.html())?;
    println!(
        "report: {}/report.json, {}/report.html",
        args.out.display(),
        args.out.display()
    );
    let c = &report.correctness;
    if c.lost > 0 || c.applied_twice > 0 {
        anyhow::bail!(
            "{} coins lost and {} applied twice",
            c.lost,
            c.applied_twice
        );
    }
    Ok(())
}
