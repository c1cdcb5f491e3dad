//! Process control of a local cluster, for chaos mode: the control directory that
//! `deploy/local/run.sh` writes, and the faults injected through it.
//!
//! The directory holds the cluster's configuration (`colony.toml`) and, for every process
//! of the cluster, a pair of files named after it, `<kind>-<port>` (`redis-7000`,
//! `gateway-7400`, `mongodb-7300`, ...):
//!
//! - `<name>.pid`: the process id of the running process;
//! - `<name>.start`: a bash script that starts the process again in the background (its
//!   arguments are added to the process's command line) and rewrites `<name>.pid`.
//!
//! The launcher owns the processes and knows how to start them; chaos mode only signals them
//! and asks for restarts. Because every restart rewrites the pid file, the launcher stops
//! whatever is running at the end by reading the pid files, restarted processes included.
//! Masters are found by asking the shard's Sentinels, as Colony itself does; on a Redis
//! Cluster (`[cluster]` in the configuration), by asking the nodes who serves the shard's
//! first slot (`CLUSTER NODES`), and a killed master is started again as it was: the
//! cluster makes it a replica of the master elected in its place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use colony::cluster_view::{ClusterNode, ClusterView};
use colony::config::ClusterConfig;
use colony::shard_map::{Endpoint, ShardMap};
use colony::slot::Slot;
use colony::store::{cluster_nodes, sentinel};
use colony::{Config, PlayerId};
use tokio::process::Command;

use crate::chaos::{FaultKind, PlannedFault};

/// How long a paused master stays paused: longer than the Sentinels' down-after
/// (`deploy/redis/sentinel.conf`), so that they promote its replica meanwhile.
pub const PAUSE_HOLD: Duration = Duration::from_secs(5);
/// How long a killed gateway stays down before it is started again.
pub const GATEWAY_HOLD: Duration = Duration::from_secs(2);
/// How long MongoDB stays down before it is started again.
pub const MONGO_HOLD: Duration = Duration::from_secs(5);
/// How long Sentinel may take to promote a replica, or a process to accept connections.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
/// Interval between looks at the Sentinels or a port while waiting for a recovery.
const POLL: Duration = Duration::from_millis(50);

/// How long one node may take to answer `CLUSTER NODES` (a paused node never answers).
const CLUSTER_ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// A local cluster's control directory.
pub struct ControlDir {
    dir: PathBuf,
    config: Config,
    map: ShardMap,
    /// For a Redis Cluster: how its masters are found.
    cluster: Option<ClusterWatch>,
}

/// A Redis Cluster seen from outside: shard `i` is the group of the master serving
/// `first_slots[i]` (slots do not move during a chaos run; masters do).
struct ClusterWatch {
    config: ClusterConfig,
    first_slots: Vec<Slot>,
    /// Every node of the cluster when the run began, and the seeds.
    nodes: Vec<String>,
}

/// What injecting one fault did.
#[derive(Debug, Clone)]
pub struct Injected {
    /// What it hit.
    pub target: String,
    /// What happened, in words.
    pub outcome: String,
    /// Time until what was hit was replaced or back.
    pub recovered_after: Option<Duration>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The shard it hit (master faults).
    pub shard: Option<usize>,
    /// The gateway it hit (index among the load test's gateways).
    pub gateway: Option<usize>,
}

impl ControlDir {
    /// Opens `dir`: reads and validates its `colony.toml`; for a Redis Cluster, reads its
    /// map from the seeds.
    pub async fn open(dir: &Path) -> anyhow::Result<ControlDir> {
        let file = dir.join("colony.toml");
        let config = Config::load(&file, std::iter::empty::<(String, String)>())
            .with_context(|| format!("loading {}", file.display()))?;
        let (map, cluster) = match &config.cluster {
            None => (config.shard_map().context("the cluster's slot map")?, None),
            Some(cluster) => {
                let (source, nodes) = ask_any(&cluster.seeds, cluster, None).await?;
                // The same grouping and order as the gateways' (shards by first slot).
                let view = ClusterView::first(&source, &nodes).map_err(anyhow::Error::msg)?;
                let map = view.map().clone();
                let first_slots = map
                    .indices()
                    .map(|shard| {
                        map.slots_of(shard)
                            .first()
                            .copied()
                            .ok_or_else(|| anyhow!("{} serves no slot", map.shard(shard).name))
                    })
                    .collect::<anyhow::Result<_>>()?;
                let mut addresses = cluster.seeds.clone();
                for address in view.addresses() {
                    if !addresses.contains(&address) {
                        addresses.push(address);
                    }
                }
                let watch = ClusterWatch {
                    config: cluster.clone(),
                    first_slots,
                    nodes: addresses,
                };
                (map, Some(watch))
            }
        };
        Ok(ControlDir {
            dir: dir.to_path_buf(),
            config,
            map,
            cluster,
        })
    }

    /// The cluster's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The index of the shard `player` lives on.
    pub fn shard_of(&self, player: &PlayerId) -> usize {
        self.map.shard_for_player(player).get()
    }

    fn file(&self, name: &str, extension: &str) -> PathBuf {
        self.dir.join(format!("{name}.{extension}"))
    }

    fn has(&self, name: &str) -> bool {
        self.file(name, "start").is_file() && self.file(name, "pid").is_file()
    }

    fn mongodb(&self) -> Option<String> {
        let entries = std::fs::read_dir(&self.dir).ok()?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|f| f.strip_suffix(".start").map(str::to_string))
            .filter(|n| n.starts_with("mongodb-") && self.has(n))
            .collect();
        names.sort();
        names.into_iter().next()
    }

    fn gateways<'a>(&self, gateways: &'a [String]) -> Vec<(usize, &'a str, String)> {
        gateways
            .iter()
            .enumerate()
            .filter_map(|(i, address)| {
                let port = address.rsplit_once(':')?.1;
                let name = format!("gateway-{port}");
                self.has(&name).then_some((i, address.as_str(), name))
            })
            .collect()
    }

    /// Checks before any traffic that every fault in `kinds` has something to act on.
    pub fn check(&self, kinds: &[FaultKind], gateways: &[String]) -> anyhow::Result<()> {
        for kind in kinds {
            match kind {
                FaultKind::KillMaster | FaultKind::PauseMaster if self.cluster.is_none() => {
                    for shard in self.map.shards() {
                        if !matches!(shard.endpoint, Endpoint::Sentinel { .. }) {
                            bail!(
                                "{}: shard {} has a fixed master; only Sentinel shards fail over",
                                kind.name(),
                                shard.name
                            );
                        }
                    }
                }
                // A cluster fails its masters over by election.
                FaultKind::KillMaster | FaultKind::PauseMaster => {}
                FaultKind::KillGateway => {
                    if self.gateways(gateways).is_empty() {
                        bail!(
                            "kill-gateway: none of the gateways {gateways:?} has a gateway-<port>.start in {}",
                            self.dir.display()
                        );
                    }
                }
                FaultKind::StopMongo => {
                    if self.mongodb().is_none() {
                        bail!(
                            "stop-mongo: no mongodb-<port>.start in {}",
                            self.dir.display()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn pid(&self, name: &str) -> anyhow::Result<u32> {
        let file = self.file(name, "pid");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        // 0 would signal our own process group (and -1 everything we may signal): refused.
        match text.trim().parse::<u32>() {
            Ok(pid) if pid > 1 => Ok(pid),
            _ => bail!("{} does not hold a process id", file.display()),
        }
    }

    async fn signal(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(name)?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {pid} ({name}) failed");
        }
        Ok(())
    }

    /// Starts `name` again with `args` added, and waits until its port accepts connections.
    async fn start(&self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let script = self.file(name, "start");
        let status = Command::new("bash")
            .arg(&script)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("{} failed with {status}", script.display());
        }
        let port = name
            .rsplit_once('-')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("{name} does not end in a port"))?;
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("{name} did not accept connections within {RECOVERY_DEADLINE:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// The master of `shard` according to the first of its Sentinels that answers (on a
    /// Redis Cluster: the first node other than `avoid` that answers).
    async fn master(&self, shard: usize, avoid: Option<&str>) -> anyhow::Result<String> {
        if let Some(cluster) = &self.cluster {
            return cluster.master(shard, avoid).await;
        }
        let shard = &self.map.shards()[shard];
        let Endpoint::Sentinel {
            master_name,
            sentinels,
        } = &shard.endpoint
        else {
            bail!("shard {} has no Sentinels", shard.name);
        };
        let timeout = self.config.redis.sentinel_timeout();
        let password = self
            .config
            .shards
            .iter()
            .find(|s| s.name == shard.name)
            .and_then(|s| s.sentinel.as_ref())
            .and_then(|s| s.password.as_deref());
        for sentinel in sentinels {
            if let Ok(view) = sentinel::ask(sentinel, master_name, timeout, password).await {
                return Ok(view.address);
            }
        }
        bail!("no Sentinel of shard {} answered", shard.name)
    }

    /// Polls the Sentinels (or the cluster's other nodes) until `shard`'s master is no
    /// longer `old`, for up to `limit`.
    async fn promoted(&self, shard: usize, old: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(master) = self.master(shard, Some(old)).await {
                if master != old {
                    return Some(master);
                }
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }

    /// Injects `fault` and sees the cluster through it: a killed master is restarted as the
    /// new master's replica once Sentinel has promoted one, a paused master is resumed after
    /// [`PAUSE_HOLD`], a killed gateway or MongoDB is started again after its hold. Never
    /// fails: what went wrong is in [`Injected::error`].
    pub async fn inject(&self, fault: &PlannedFault, gateways: &[String]) -> Injected {
        let mut injected = Injected {
            target: String::new(),
            outcome: String::new(),
            recovered_after: None,
            error: None,
            shard: None,
            gateway: None,
        };
        let result = match fault.kind {
            FaultKind::KillMaster | FaultKind::PauseMaster => {
                let shard = (fault.choice % self.map.shards().len() as u64) as usize;
                injected.shard = Some(shard);
                self.hit_master(fault.kind, shard, &mut injected).await
            }
            FaultKind::KillGateway => {
                let candidates = self.gateways(gateways);
                match candidates.get((fault.choice % candidates.len().max(1) as u64) as usize) {
                    Some((index, address, name)) => {
                        injected.gateway = Some(*index);
                        injected.target = format!("gateway {address}");
                        self.restart_after(name, "KILL", GATEWAY_HOLD, &mut injected)
                            .await
                    }
                    None => Err(anyhow!("no gateway to kill")),
                }
            }
            FaultKind::StopMongo => match self.mongodb() {
                Some(name) => {
                    injected.target = name.clone();
                    self.restart_after(&name, "KILL", MONGO_HOLD, &mut injected)
                        .await
                }
                None => Err(anyhow!("no MongoDB to stop")),
            },
        };
        if let Err(e) = result {
            injected.error = Some(format!("{e:#}"));
        }
        injected
    }

    async fn hit_master(
        &self,
        kind: FaultKind,
        shard: usize,
        injected: &mut Injected,
    ) -> anyhow::Result<()> {
        let name = &self.map.shards()[shard].name;
        let old = self.master(shard, None).await?;
        let elected = if self.cluster.is_some() {
            "the cluster elected"
        } else {
            "Sentinel promoted"
        };
        injected.target = format!("{name} master {old}");
        let port = old
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .ok_or_else(|| anyhow!("Sentinel answered {old:?}"))?;
        let component = format!("redis-{port}");
        let hit_at = Instant::now();
        if kind == FaultKind::KillMaster {
            self.signal(&component, "KILL").await?;
            let new = self
                .promoted(shard, &old, RECOVERY_DEADLINE)
                .await
                .ok_or_else(|| anyhow!("no promotion within {RECOVERY_DEADLINE:?}"))?;
            injected.recovered_after = Some(hit_at.elapsed());
            let (host, new_port) = new
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("the new master is {new:?}"))?;
            // Back as the new master's replica, so the shard has a replica again (the safe
            // profile refuses writes without one). A cluster node rejoins by itself, and the
            // cluster makes it a replica of the master elected in its place.
            if self.cluster.is_some() {
                self.start(&component, &[]).await?;
            } else {
                self.start(&component, &["--replicaof", host, new_port])
                    .await?;
            }
            injected.outcome = format!(
                "SIGKILL; {elected} {new} after {:.2} s; the old master is back as its replica",
                hit_at.elapsed().as_secs_f64()
            );
        } else {
            self.signal(&component, "STOP").await?;
            let promoted = self.promoted(shard, &old, PAUSE_HOLD).await;
            if promoted.is_some() {
                injected.recovered_after = Some(hit_at.elapsed());
            }
            let resume_at = hit_at + PAUSE_HOLD;
            tokio::time::sleep_until(resume_at.into()).await;
            self.signal(&component, "CONT").await?;
            injected.outcome = match promoted {
                Some(new) => format!(
                    "SIGSTOP for {:.0} s; {elected} {new} after {:.2} s; SIGCONT",
                    PAUSE_HOLD.as_secs_f64(),
                    injected.recovered_after.unwrap_or_default().as_secs_f64()
                ),
                None => format!(
                    "SIGSTOP for {:.0} s, no promotion meanwhile; SIGCONT",
                    PAUSE_HOLD.as_secs_f64()
                ),
            };
        }
        Ok(())
    }

    async fn restart_after(
        &self,
        name: &str,
        signal: &str,
        hold: Duration,
        injected: &mut Injected,
    ) -> anyhow::Result<()> {
        let hit_at = Instant::now();
        self.signal(name, signal).await?;
        tokio::time::sleep(hold).await;
        self.start(name, &[]).await?;
        injected.recovered_after = Some(hit_at.elapsed());
        injected.outcome = format!(
            "SIG{signal}; started again after {:.0} s, accepting connections after {:.2} s",
            hold.as_secs_f64(),
            hit_at.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

impl ClusterWatch {
    /// The master serving shard `shard`'s first slot, as the first node other than `avoid`
    /// that answers sees it: of the masters not flagged failing that claim the slot, the one
    /// with the highest configuration epoch (the cluster's own rule).
    async fn master(&self, shard: usize, avoid: Option<&str>) -> anyhow::Result<String> {
        let slot = self
            .first_slots
            .get(shard)
            .ok_or_else(|| anyhow!("no shard {shard}"))?
            .get();
        let (source, nodes) = ask_any(&self.nodes, &self.config, avoid).await?;
        nodes
            .iter()
            .filter(|n| n.master && !n.failing && !n.address.is_empty())
            .filter(|n| n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .max_by_key(|n| n.config_epoch)
            .map(|n| n.address.clone())
            .ok_or_else(|| anyhow!("{source} names no master serving slot {slot}"))
    }
}

/// `CLUSTER NODES` from the first of `addresses` (but `avoid`) that answers, in order.
async fn ask_any(
    addresses: &[String],
    cluster: &ClusterConfig,
    avoid: Option<&str>,
) -> anyhow::Result<(String, Vec<ClusterNode>)> {
    let mut failures = Vec::new();
    for address in addresses.iter().filter(|a| Some(a.as_str()) != avoid) {
        match cluster_nodes(address, cluster, CLUSTER_ASK_TIMEOUT).await {
            Ok(nodes) => return Ok((address.clone(), nodes)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    bail!("no node of the cluster answered: {}", failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: &str = "[[shards]]\nname = \"s0\"\nmaster = \"127.0.0.1:1\"\n";

    fn dir_with(config: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("dir");
        if let Some(text) = config {
            std::fs::write(dir.path().join("colony.toml"), text).expect("writes");
        }
        dir
    }

    #[tokio::test]
    async fn a_directory_without_a_valid_configuration_is_refused() {
        assert!(ControlDir::open(dir_with(None).path()).await.is_err());
        let bad = dir_with(Some("[[shards]]\nname = 5\n"));
        assert!(ControlDir::open(bad.path()).await.is_err());
        assert!(ControlDir::open(dir_with(Some(FIXED)).path()).await.is_ok());
        // A cluster none of whose seeds answers.
        let unreachable = dir_with(Some("[cluster]\nseeds = [\"127.0.0.1:1\"]\n"));
        let refused = ControlDir::open(unreachable.path())
            .await
            .err()
            .expect("no map");
        assert!(refused.to_string().contains("no node"), "{refused}");
    }

    #[tokio::test]
    async fn faults_without_anything_to_act_on_are_refused_before_traffic() {
        let dir = dir_with(Some(FIXED));
        let control = ControlDir::open(dir.path()).await.expect("opens");
        let gateways = vec!["127.0.0.1:7400".to_string()];
        for kind in FaultKind::ALL {
            let refused = control
                .check(&[kind], &gateways)
                .expect_err("nothing to act on");
            assert!(refused.to_string().contains(kind.name()), "{refused}");
        }
        // A gateway-<port>.start without its pid file does not count either.
        std::fs::write(dir.path().join("gateway-7400.start"), "").expect("writes");
        assert!(control.check(&[FaultKind::KillGateway], &gateways).is_err());
    }

    #[tokio::test]
    async fn a_bad_pid_file_fails_the_fault_and_starts_nothing() {
        let dir = dir_with(Some(FIXED));
        let marker = dir.path().join("started");
        std::fs::write(
            dir.path().join("mongodb-1.start"),
            format!("touch {}\n", marker.display()),
        )
        .expect("writes");
        let control = ControlDir::open(dir.path()).await.expect("opens");
        control
            .check(&[FaultKind::StopMongo], &[])
            .expect_err("no pid file yet");
        for hostile in [
            "",
            "not-a-pid",
            "0",
            "1",
            "-1",
            "1 2",
            "99999999999999999999",
        ] {
            std::fs::write(dir.path().join("mongodb-1.pid"), hostile).expect("writes");
            let fault = PlannedFault {
                at: Duration::ZERO,
                kind: FaultKind::StopMongo,
                choice: 0,
            };
            let injected = control.inject(&fault, &[]).await;
            let error = injected.error.expect("refused");
            assert!(error.contains("process id"), "{hostile:?}: {error}");
            assert!(!marker.exists(), "{hostile:?}: the start script ran");
        }
    }
}
