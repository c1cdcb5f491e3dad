//! The `colony-admin` command: operates the Redis Cluster a Colony configuration names.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

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
    /// Moves slots to a master while players play, each player's keys together and nothing
    /// acknowledged held by one master alone (docs/design/resharding.md). `--resume`
    /// finishes a move stopped half-way, `--abort SLOT` undoes one.
    Reshard {
        /// The slots, `A-B[,C-D…]` (single slots allowed; ranges must not overlap).
        #[arg(long, required_unless_present_any = ["resume", "abort"], conflicts_with_all = ["resume", "abort"])]
        slots: Option<String>,
        /// The master (node id or `host:port`) that takes them; with `--resume`, the master
        /// that replaced a failed target.
        #[arg(long, required_unless_present_any = ["resume", "abort"])]
        to: Option<String>,
        /// Finish every move stopped half-way (`status` lists them).
        #[arg(long, conflicts_with = "abort")]
        resume: bool,
        /// Undo the move of this slot stopped half-way: its players go back to the source.
        #[arg(long, value_name = "SLOT")]
        abort: Option<u16>,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Spreads the slots evenly over every master, new empty ones included.
    Rebalance {
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Removes a node: a master's slots are moved to the others first (it must have no
    /// replicas left); then every node forgets it.
    RemoveNode {
        /// The node, by id or `host:port`.
        node: String,
        #[command(flatten)]
        pace: PaceArgs,
    },
}

/// How fast slots move.
#[derive(clap::Args, Debug)]
struct PaceArgs {
    /// Most players moved per second, on average (the limiter waits between slots, never
    /// inside one). 0: as fast as it goes.
    #[arg(long, default_value_t = 2000.0)]
    players_per_second: f64,
    /// Most bytes of players' entries parked in one batch (a bigger player is a batch of
    /// its own).
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: u64,
    /// The run's lease on a move, ms: a run paused past it is fenced off.
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    /// How long a step waits for the replicas of the source or target, ms, before the move
    /// stops (to be resumed once they catch up).
    #[arg(long, default_value_t = 5_000)]
    wait_ms: u64,
}

impl PaceArgs {
    /// The pace, with the replicas the configuration's profile waits for.
    fn pace(&self, config: &Config) -> colony_admin::reshard::Pace {
        let replicas = match config.redis.acknowledge {
            colony::config::Acknowledge::Replicated => config.redis.replicas_to_wait as usize,
            _ => 0,
        };
        colony_admin::reshard::Pace {
            options: colony_admin::slot_move::MoveOptions {
                batch_bytes: self.batch_bytes,
                lease: Duration::from_millis(self.lease_ms),
                wait_timeout: Duration::from_millis(self.wait_ms),
            },
            replicas,
            players_per_second: (self.players_per_second > 0.0).then_some(self.players_per_second),
        }
    }
}

/// A progress bar on stderr (drawn only on a terminal): slots, players, rate and ETA.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} slots, {msg} ({per_sec}, ETA {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(bar)
    }
}

impl colony_admin::reshard::Progress for Bar {
    fn slot_moved(&self, done: usize, total: usize, moved: &colony_admin::slot_move::Moved) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
        self.0
            .set_message(format!("slot {} ({} players)", moved.slot, moved.players));
    }
}

fn print_report(
    json: bool,
    what: &str,
    report: &colony_admin::reshard::Report,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!(
            "{what}: {} slots, {} players, {} keys in {:.1} s",
            report.moved.len(),
            report.players,
            report.keys,
            report.seconds
        );
    }
    Ok(())
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
        Command::Reshard {
            slots,
            to,
            resume,
            abort,
            pace,
        } => {
            let pace = pace.pace(&config);
            if let Some(slot) = abort {
                let restored = colony_admin::reshard::abort(cluster, slot, &pace).await?;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({ "slot": slot, "keys_restored": restored })
                    );
                } else {
                    println!("slot {slot}: move undone, {restored} keys back on the source");
                }
            } else if resume {
                let bar = Bar::new();
                let report =
                    colony_admin::reshard::resume(cluster, to.as_deref(), &pace, &bar).await?;
                bar.0.finish_and_clear();
                print_report(args.json, "resumed", &report)?;
            } else {
                let (Some(slots), Some(to)) = (slots, to) else {
                    anyhow::bail!("--slots and --to are needed");
                };
                let slots = colony_admin::reshard::parse_slots(&slots)?;
                let bar = Bar::new();
                let report =
                    colony_admin::reshard::reshard(cluster, &slots, &to, &pace, &bar).await?;
                bar.0.finish_and_clear();
                print_report(args.json, "moved", &report)?;
            }
        }
        Command::Rebalance { pace } => {
            let bar = Bar::new();
            let report =
                colony_admin::reshard::rebalance(cluster, None, &pace.pace(&config), &bar).await?;
            bar.0.finish_and_clear();
            print_report(args.json, "rebalanced", &report)?;
        }
        Command::RemoveNode { node, pace } => {
            let bar = Bar::new();
            let removed =
                colony_admin::reshard::remove_node(cluster, &node, &pace.pace(&config), &bar)
                    .await?;
            bar.0.finish_and_clear();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                println!(
                    "{} removed: {} slots moved off it first, forgotten by {} nodes",
                    removed.address,
                    removed.drained.moved.len(),
                    removed.forgotten_by
                );
            }
        }
    }
    Ok(())
}
