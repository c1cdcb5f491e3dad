//! `colony-archiver`: parses the command line, loads the configuration shared with the
//! gateway, sets up logging, and runs the archiver until Ctrl-C or SIGTERM — or one pass with
//! `--once`, or `rebuild --shard <name>` to refill a shard whose Redis data was lost.

use std::io::IsTerminal;
use std::path::PathBuf;

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
    Rebuild {
        /// The shard's name, as in the configuration.
        #[arg(long)]
        shard: String,
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
    if let Some(Command::Rebuild { shard }) = &args.command {
        let archiver = Archiver::new(&config)
            .await
            .context("starting the archiver")?;
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
    if args.once {
        let archiver = Archiver::new(&config)
            .await
            .context("starting the archiver")?;
        // A progress line on a terminal; logs only otherwise.
        let terminal = std::io::stderr().is_terminal();
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
