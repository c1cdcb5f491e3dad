//! `colony-gateway`: the gateway process. Parses the command line, loads and validates the
//! configuration, sets up logging, binds the two listeners, and runs until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use colony::gateway::{self, Gateway};
use colony::Config;
use tokio::net::TcpListener;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    colony::process::init_logging(&args.log).map_err(anyhow::Error::msg)?;

    let config = Config::load(&args.config, std::env::vars())
        .with_context(|| format!("loading {}", args.config.display()))?;
    let gateway = Gateway::new(&config).context("building the gateway")?;
    let listener = TcpListener::bind(&config.gateway.listen)
        .await
        .with_context(|| format!("binding {}", config.gateway.listen))?;
    let admin = TcpListener::bind(&config.gateway.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.gateway.admin_listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        shards = config.shards.len(),
        tokens = config.gateway.tokens.len(),
        "colony gateway started"
    );
    if config.gateway.tokens.is_empty() {
        tracing::warn!("no tokens configured: every client will be refused");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    };
    let admin_task = tokio::spawn(gateway::admin::serve(admin, gateway.clone(), admin_stop));
    let signals = async move {
        colony::process::stop_signal().await;
        let _ = stop_tx.send(true);
    };
    gateway::run(listener, gateway, signals).await;
    drop(stop_rx);
    admin_task.await??;
    tracing::info!("colony gateway stopped");
    Ok(())
}
