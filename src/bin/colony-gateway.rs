//! `colony-gateway`: the gateway process. Parses the command line, loads and validates the
//! configuration, sets up logging, and serves (see [`colony::gateway::serve`]) until Ctrl-C or
//! SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use colony::Config;

/// Colony's gateway: protobuf over TCP in front of the player store.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML). Values may be overridden with COLONY__SECTION__FIELD
    /// environment variables.
    #[arg(long, short, default_value = "colony.toml")]
    config: PathBuf,
    /// Log filter, e.g. "info", "colony=debug,info".
    #[arg(long, default_value = "info", env = "COLONY_LOG")]
    log: String,
    /// Log line format: "text", or "json" (one object per line, with the event's fields —
    /// shard, player, version — at the top level).
    #[arg(long, default_value = "text", env = "COLONY_LOG_FORMAT")]
    log_format: colony::process::LogFormat,
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
    colony::gateway::serve(&config, colony::process::stop_signal()).await?;
    tracing::info!("colony gateway stopped");
    Ok(())
}
