//! The `colony-admin` command: operates the Redis Cluster a Colony configuration names.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use colony::Config;

/// Operates the Redis Cluster Colony runs on (the `[cluster]` of a Colony configuration).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The Colony configuration file (its `[cluster]` seeds and credentials are used).
    #[arg(long, default_value = "colony.toml", env = "COLONY_CONFIG")]
    config: PathBuf,
    /// Print JSON instead of text, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Masters, replicas, slots and live players per master, slot moves in progress, the
    /// configuration epoch.
    Status,
    /// Brings a fresh node (cluster-enabled, empty, knowing no other node) into the cluster:
    /// a master with no slots yet, or a replica of `--replica-of`.
    AddNode {
        /// The new node, `host:port`.
        address: String,
        /// A master (node id or `host:port`) for the new node to replicate.
        #[arg(long)]
        replica_of: Option<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    colony::process::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(&args.config, std::env::vars())
        .with_context(|| format!("loading {}", args.config.display()))?;
    let cluster = config.cluster.as_ref().with_context(|| {
        format!(
            "{} names no [cluster]: colony-admin operates a Redis Cluster (Sentinel shards \
             are moved by the way off a fixed topology, see README)",
            args.config.display()
        )
    })?;
    match args.command {
        Command::Status => {
            let status = colony_admin::status(cluster).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
        }
        Command::AddNode {
            address,
            replica_of,
        } => {
            let added = colony_admin::add_node(cluster, &address, replica_of.as_deref()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&added)?);
            } else {
                println!("{} ({}) joined as {}", added.address, added.id, added.role);
            }
        }
    }
    Ok(())
}
