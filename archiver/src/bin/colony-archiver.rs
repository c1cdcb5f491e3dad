//! `colony-archiver`: parses the command line, loads the configuration shared with the
//! gateway, sets up logging, and runs the archiver until Ctrl-C or SIGTERM — or one pass with
//! `--once`, or `rebuild --shard <name>` to refill a shard whose Redis data was lost.

use std::future::IntoFuture;
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
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    colony::process::init_logging(&args.log).map_err(anyhow::Error::msg)?;
    let config = Config::load(&args.config, std::env::vars())
        .with_context(|| format!("loading {}", args.config.display()))?;
    let archiver = Archiver::new(&config)
        .await
        .context("starting the archiver")?;
    if args.once {
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
        return Ok(());
    }
    let admin = tokio::net::TcpListener::bind(&config.archive.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.archive.admin_listen))?;
    let archiver = std::sync::Arc::new(archiver);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        colony::process::stop_signal().await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(shards = config.shards.len(), admin = %admin.local_addr()?, "colony archiver started");
    let admin_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    };
    let admin_task = tokio::spawn(
        axum::serve(admin, colony_archiver::metrics::router(archiver.clone()))
            .with_graceful_shutdown(admin_stop)
            .into_future(),
    );
    archiver.run(stop_rx).await;
    admin_task.await??;
    tracing::info!("colony archiver stopped");
    Ok(())
}
