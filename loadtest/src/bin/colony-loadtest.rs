//! `colony-loadtest`: simulates batched game-client traffic against Colony gateways, prints a
//! live progress line and a final report, writes the report as JSON and an HTML chart, and
//! exits non-zero if anything acknowledged was lost or applied twice. With `--chaos` it also
//! injects faults into a local cluster (see `deploy/local/run.sh --chaos`) and reports how
//! long each part hit was unavailable; it then also fails if the cluster did not recover.

#![allow(clippy::print_stdout)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use colony_loadtest::chaos::FaultKind;
use colony_loadtest::runner;
use colony_loadtest::scenario::{Chaos, Mix, Scenario};

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
    /// Cold players, visited only by the return operation (away long enough to be archived).
    #[arg(long, default_value_t = 0)]
    cold_players: u64,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 32)]
    sessions: u64,
    /// Transactions per batch.
    #[arg(long, default_value_t = 8)]
    batch: u64,
    /// Pause after each request of a session, in milliseconds.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Operation mix, e.g. login=5,friends=30,currency=35,write=15,trade=10,idle=5,return=5 (return
    /// needs --cold-players).
    #[arg(
        long,
        default_value = "login=5,friends=30,currency=35,write=15,trade=10,idle=5"
    )]
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
    /// Chaos mode: faults to inject, taking turns on a seeded schedule: all, or some of
    /// kill-master, pause-master, kill-gateway, stop-mongo. Needs --control.
    #[arg(long, requires = "control")]
    chaos: Option<String>,
    /// The local cluster's control directory (printed by deploy/local/run.sh).
    #[arg(long, requires = "chaos")]
    control: Option<PathBuf>,
    /// Chaos mode: one fault in each slot of this many seconds.
    #[arg(long, default_value_t = 10)]
    chaos_every: u64,
    /// A file where another process records windows of its own (`label<TAB>start ms<TAB>end
    /// ms<TAB>what happened`, Unix ms, end `-` while open), reported and shaded like faults
    /// (`deploy/local/run.sh --cluster --reshard` records its slot moves there).
    #[arg(long)]
    windows: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    colony::process::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
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
        cold_players: args.cold_players,
        prefix: args.prefix,
        sessions: args.sessions,
        batch: args.batch,
        think: Duration::from_millis(args.think_ms),
        mix: Mix::parse(&args.mix).map_err(anyhow::Error::msg)?,
        rate: args.rate,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        seed,
        chaos: match (args.chaos, args.control) {
            (Some(faults), Some(control)) => Some(Chaos {
                control,
                faults: FaultKind::parse_list(&faults).map_err(anyhow::Error::msg)?,
                every: Duration::from_secs(args.chaos_every),
            }),
            _ => None,
        },
        windows: args.windows,
    };
    println!(
        "colony-loadtest: {} players, {} sessions, batches of {}, seed {seed}",
        scenario.players, scenario.sessions, scenario.batch
    );
    for fault in scenario.schedule() {
        println!(
            "chaos: {} at {:.1} s",
            fault.kind.name(),
            fault.at.as_secs_f64() - scenario.warmup.as_secs_f64()
        );
    }
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
    std::fs::write(
        args.out.join("report.html"),
        colony_loadtest::charts::page(&report),
    )?;
    println!(
        "report: {}/report.json, {}/report.html",
        args.out.display(),
        args.out.display()
    );
    let c = &report.correctness;
    if c.lost > 0 || c.applied_twice > 0 || c.conservation_gap != 0 {
        anyhow::bail!(
            "{} coins lost, {} applied twice, total off by {}",
            c.lost,
            c.applied_twice,
            c.conservation_gap
        );
    }
    if c.unreadable > 0 {
        anyhow::bail!(
            "{} players could not be read back and checked",
            c.unreadable
        );
    }
    if report.chaos_failed() {
        anyhow::bail!("a fault could not be injected or the cluster did not recover from it");
    }
    Ok(())
}
