//! `colony-archiver`: parses the command line, loads the configuration shared with the
//! gateway, sets up logging, and runs the archiver until Ctrl-C or SIGTERM — or one pass with
//! `--once`, or every player archived with `--once --drain` (leaving a topology), or
//! `rebuild --shard <name>` / `rebuild --all` to refill shards from MongoDB.

// The drain and the rebuild of every shard print their report as JSON on stdout, for scripts.
#![allow(clippy::print_stdout)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use colony::Config;
use colony_archiver::worker::now;
use colony_archiver::Archiver;

/// Colony's archiver: moves inactive players to MongoDB and restores them on access.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (the gateway's; the archiver reads [archive] and the shards).
    #[arg(long, short, default_value = "colony.toml")]
    config: PathBuf,
    /// Run one archive pass and exit (no restores are served).
    #[arg(long)]
    once: bool,
    /// With --once: count the players a pass would move, and move nothing.
    #[arg(long, requires = "once")]
    dry_run: bool,
    /// With --once: archive every live player, however recent, to leave this topology
    /// (stop the gateways first). Sweeps unfinished trades first, and fails naming the
    /// players left if any remain. Then `rebuild --all` on the new topology.
    #[arg(long, requires = "once", conflicts_with = "dry_run")]
    drain: bool,
    /// Log filter, e.g. "info", "colony_archiver=debug,info".
    #[arg(long, default_value = "info", env = "COLONY_LOG")]
    log: String,
    /// Log line format: "text", or "json" (one object per line, with the event's fields —
    /// shard, player, version — at the top level).
    #[arg(long, default_value = "text", env = "COLONY_LOG_FORMAT")]
    log_format: colony::process::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Refill a shard whose Redis data was lost from MongoDB: archived players get their
    /// markers back, checkpointed players come back live; players in Redis are left alone.
    ///
    /// With --all, every shard of the configuration's topology, each MongoDB read once: the
    /// last step of moving to a new topology after `--once --drain` on the old one.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["shard", "all"])))]
    Rebuild {
        /// The shard's name, as in the configuration.
        #[arg(long)]
        shard: Option<String>,
        /// Every shard.
        #[arg(long)]
        all: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    colony::process::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    colony::process::init_logging(&args.log, args.log_format).map_err(anyhow::Error::msg)?;
    let config = Config::load(&args.config, std::env::vars())
        .with_context(|| format!("loading {}", args.config.display()))?;
    let terminal = std::io::stderr().is_terminal();
    if let Some(Command::Rebuild { shard, all }) = &args.command {
        let archiver = Archiver::new(&config)
            .await
            .context("starting the archiver")?;
        if *all {
            let report = archiver
                .rebuild_all(|r| {
                    if terminal {
                        eprint!(
                            "\r{} marked, {} live, {} already present",
                            r.marked, r.live, r.present
                        );
                    }
                })
                .await?;
            if terminal {
                eprintln!();
            }
            tracing::info!(?report, "rebuild of every shard done");
            println!("{}", serde_json::to_string(&report)?);
            anyhow::ensure!(
                report.misplaced == 0,
                "{} documents are outside the MongoDB their slot names (was archive.mongodb_uris \
                 changed?); they were not marked, and their players would be unavailable",
                report.misplaced
            );
            return Ok(());
        }
        let shard = shard.as_deref().unwrap_or_default();
        let index = archiver
            .store()
            .shard_map()
            .index_of(shard)
            .with_context(|| {
                format!("no shard named {shard:?} in the configuration (or the cluster's map)")
            })?;
        let (marked, live) = archiver.rebuild(index).await?;
        tracing::info!(shard, marked, live, "rebuild done");
        return Ok(());
    }
    if args.drain {
        let archiver = Archiver::new(&config)
            .await
            .context("starting the archiver")?;
        // Long enough for every intent's lease to pass and the sweep to finish it.
        let patience = Duration::from_millis(config.redis.intent_lease_ms.saturating_mul(3))
            .max(Duration::from_secs(10));
        let report = archiver
            .drain(patience, |r| {
                if terminal {
                    eprint!("\rdraining: {} archived, {} kept", r.archived, r.kept);
                }
            })
            .await?;
        if terminal {
            eprintln!();
        }
        tracing::info!(?report, "drain done");
        println!("{}", serde_json::to_string(&report)?);
        anyhow::ensure!(
            report.is_complete(),
            "the drain left live players: {}{}",
            report
                .left
                .iter()
                .map(|(shard, n)| format!("{n} on {shard}"))
                .collect::<Vec<_>>()
                .join(", "),
            if report.failed_shards.is_empty() {
                String::new()
            } else {
                format!("; shard(s) {} failed", report.failed_shards.join(", "))
            }
        );
        return Ok(());
    }
    if args.once {
        let archiver = Archiver::new(&config)
            .await
            .context("starting the archiver")?;
        // A progress line on a terminal; logs only otherwise.
        let report = archiver
            .archive_pass_reporting(now(), args.dry_run, |r| {
                if terminal {
                    eprint!(
                        "\r{} candidates: {} archived, {} kept, {} failed",
                        r.candidates, r.archived, r.kept, r.failed
                    );
                }
            })
            .await?;
        if terminal {
            eprintln!();
        }
        tracing::info!(?report, dry_run = args.dry_run, "archive pass done");
        // The other shards' work is done; say so in the exit status too, for cron and CI.
        anyhow::ensure!(
            report.failed_shards.is_empty(),
            "the pass failed on shard(s) {}",
            report.failed_shards.join(", ")
        );
        return Ok(());
    }
    colony_archiver::serve(&config, colony::process::stop_signal()).await?;
    tracing::info!("colony archiver stopped");
    Ok(())
}
