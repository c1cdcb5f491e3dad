//! The move of one slot from its master (S) to another (T), each player's keys together,
//! nothing acknowledged ever held by one master alone: `docs/design/resharding.md` has the
//! protocol, its invariants and why each step is there. Its steps are public functions of
//! [`SlotMove`] so that a test can stop between any two (as a killed tool would) and run the
//! move again: a rerun claims the journal, opens the slot again, restores every parked copy
//! (the authority until the close) and goes on.
//!
//! The tool talks to S and T on connections of its own, one each for the whole run (a `WAIT`
//! counts the writes of its own connection, and a multiplexed connection never reconnects
//! behind the caller's back).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use colony::cluster_view::ClusterNode;
use colony::config::ClusterConfig;
use colony::keys::slot_tag;
use colony::slot::Slot;
use colony::store::{cluster_nodes, node_connection};
use redis::aio::MultiplexedConnection;
use serde::Serialize;

use crate::status::{first_answer, NODE_TIMEOUT};

static CLAIM: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/claim.lua")));
static RENEW: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/renew.lua")));
/// Marks a move aborted once its parked copies are back on S, and drops them, in one step.
static ABORTED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "redis.call('HSET', KEYS[1], 'aborting', '1') redis.call('DEL', KEYS[2]) return 1",
    )
});
/// Takes a restore queue off S in one step: its entries, and the key deleted.
static TAKE_QUEUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local e = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES') \
         redis.call('DEL', KEYS[1]) return e",
    )
});
static PARK: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/park.lua")));

/// The suffixes of a player's keys after `{<id>}` (`keys::PlayerKeys`, decision records, a
/// trade primary's lease keys, which earlier versions wrote, and legacy idempotency
/// records). A lease key travels with its player, its expiry kept (an earlier version's
/// commit on the target finds it while it lives).
const PLAYER_SUFFIXES: [&str; 5] = [":meta", ":pub", ":priv", ":clients", ":intent"];
const PLAYER_PREFIXES: [&str; 3] = [":decision:", ":lease:", ":idem:"];
/// The slot's bookkeeping, after `colony:{<slot tag>}`.
const BOOKKEEPING: [&str; 5] = [":active", ":dirty", ":intents", ":decisions", ":restores"];
/// The bookkeeping key that is merged on the target rather than replaced.
const RESTORE_QUEUE: &str = ":restores";

/// How a key of a moving slot travels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyRole {
    /// A key of the player with this id: moves with the player's other keys.
    Player(String),
    /// The slot's own bookkeeping: copied last, kept on S until the close.
    Bookkeeping,
    /// The move's journal or parked copies: never moved, gone with the slot at the close.
    MoveState,
    /// Neither Colony's nor the move's: the move refuses to start (S would drop it).
    Unknown,
}

/// The role of `key`, a key of `slot`.
pub fn key_role(slot: Slot, key: &[u8]) -> KeyRole {
    let Ok(key) = std::str::from_utf8(key) else {
        return KeyRole::Unknown;
    };
    let own = format!("colony:{{{}}}", slot_tag(slot));
    if let Some(rest) = key.strip_prefix(own.as_str()) {
        if BOOKKEEPING.contains(&rest) {
            return KeyRole::Bookkeeping;
        }
        if rest == ":move" || rest == ":parked" {
            return KeyRole::MoveState;
        }
    }
    let Some(body) = key.strip_prefix('{') else {
        return KeyRole::Unknown;
    };
    // `{<id>}<suffix>`: the id may itself hold `}` and `:`, but no suffix holds `}` (attempt
    // ids are hex, client ids and request ids are checked tokens), so the id ends at the
    // last `}`.
    if let Some(last) = body.rfind('}') {
        let (id, rest) = (&body[..last], &body[last + 1..]);
        if !id.is_empty()
            && (PLAYER_SUFFIXES.contains(&rest)
                || PLAYER_PREFIXES
                    .iter()
                    .any(|p| rest.starts_with(p) && rest.len() > p.len()))
        {
            return KeyRole::Player(id.to_string());
        }
    }
    KeyRole::Unknown
}

/// The keys of one slot as S holds them, by role.
#[derive(Debug, Default, Clone)]
pub struct SlotKeysHeld {
    /// Per player id, its keys.
    pub players: BTreeMap<String, Vec<Vec<u8>>>,
    /// The slot's bookkeeping keys.
    pub bookkeeping: Vec<Vec<u8>>,
    /// Keys of neither kind.
    pub unknown: Vec<Vec<u8>>,
}

/// Settings of a move.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    /// Most bytes of players' entries (their meta tally `b`) parked in one batch; a bigger
    /// player is a batch of its own.
    pub batch_bytes: u64,
    /// The run's lease on the journal, renewed by every step; at least twice `wait_timeout`.
    pub lease: Duration,
    /// How long a `WAIT` for the replicas of S or T may take before the move stops.
    pub wait_timeout: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            batch_bytes: 1 << 20,
            lease: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(5),
        }
    }
}

/// What a finished move did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Moved {
    /// The slot.
    pub slot: u16,
    /// Players parked and restored by this run (a resumed run counts what it parked).
    pub players: u64,
    /// Keys restored on the target by this run, parked copies restored again included.
    pub keys_restored: u64,
    /// Batches.
    pub batches: u64,
}

/// One slot's move, claimed by one run.
pub struct SlotMove {
    cluster: ClusterConfig,
    options: MoveOptions,
    slot: Slot,
    run: String,
    generation: u64,
    source: ClusterNode,
    target: ClusterNode,
    s: MultiplexedConnection,
    t: MultiplexedConnection,
    /// Replicas `WAIT` asks for on S and on T: every replica the map lists, not failing.
    s_replicas: usize,
    t_replicas: usize,
    journal: String,
    parked: String,
    /// Whether S is `MIGRATING` the slot (found so at the claim, or set by this run).
    migrating: bool,
    /// Whether an abort already put the parked copies back on S (the journal says so): the
    /// move can only be aborted, never resumed.
    aborting: bool,
    /// What this run did.
    pub moved: Moved,
}

/// The cluster's map, from the first seed that answers, and each master's own view (a
/// node lists its `MIGRATING`/`IMPORTING` slots only in its own line).
async fn map(cluster: &ClusterConfig) -> anyhow::Result<Vec<ClusterNode>> {
    Ok(first_answer(&cluster.seeds, cluster).await?.1)
}

fn replicas_of(nodes: &[ClusterNode], master: &ClusterNode) -> usize {
    nodes
        .iter()
        .filter(|n| {
            n.replica_of.as_deref() == Some(master.id.as_str()) && !n.failing && !n.unusable
        })
        .count()
}

fn owner_of(nodes: &[ClusterNode], slot: Slot) -> Option<&ClusterNode> {
    nodes
        .iter()
        .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot.get())))
}

/// A slot moving anywhere but `except`, as the masters list in their own lines (a node
/// lists its `MIGRATING`/`IMPORTING` marks only there). A source's `MIGRATING` mark toward a
/// target that names itself the slot's owner is a closed move waiting for gossip to reach
/// the source, not a move in progress.
pub async fn move_in_progress(
    cluster: &ClusterConfig,
    nodes: &[ClusterNode],
    except: Option<u16>,
) -> anyhow::Result<Option<String>> {
    let mut views = Vec::new();
    for node in nodes.iter().filter(|n| n.master && !n.failing) {
        let own = cluster_nodes(&node.address, cluster, NODE_TIMEOUT)
            .await
            .with_context(|| format!("asking {} for its own moves", node.address))?;
        views.push((node.clone(), own));
    }
    let claims = |peer: &str, slot: u16| {
        views.iter().any(|(node, own)| {
            node.id == peer
                && Slot::new(slot)
                    .and_then(|s| owner_of(own, s))
                    .is_some_and(|o| o.id == peer)
        })
    };
    for (node, own) in &views {
        let Some(me) = own.iter().find(|n| n.id == node.id) else {
            continue;
        };
        let busy = me
            .migrating
            .iter()
            .filter(|(s, peer)| !claims(peer, *s))
            .chain(&me.importing)
            .find(|(s, _)| Some(*s) != except);
        if let Some((s, _)) = busy {
            return Ok(Some(format!("slot {s} is being moved by {}", node.address)));
        }
    }
    Ok(None)
}

/// A move closed on the target whose confirmation is left for later: many slots' closes
/// are then confirmed by one look at every node (gossip takes the same time for all).
#[derive(Debug, Clone)]
pub struct Closing {
    /// The slot.
    pub slot: Slot,
    /// The source's address and node id.
    pub source: (String, String),
    /// The target's address and node id.
    pub target: (String, String),
}

/// Waits until every node of the map names each closed slot's target its owner and each
/// source holds no key of its slot (it dropped its leftovers: tombstones, bookkeeping,
/// journal, parked copies), then clears the sources' `MIGRATING` marks (`STABLE`).
pub async fn confirm_closes(cluster: &ClusterConfig, closing: &[Closing]) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLOSE_DEADLINE;
    let mut pending: Vec<Closing> = closing.to_vec();
    while !pending.is_empty() {
        let mut missing = String::new();
        if let Ok(nodes) = map(cluster).await {
            let mut views = Vec::new();
            for node in nodes.iter().filter(|n| !n.failing && !n.unusable) {
                if let Ok(view) = cluster_nodes(&node.address, cluster, NODE_TIMEOUT).await {
                    views.push((node.address.clone(), view));
                }
            }
            let mut still = Vec::new();
            for c in pending {
                let named_by_all = views
                    .iter()
                    .all(|(_, view)| owner_of(view, c.slot).is_some_and(|o| o.id == c.target.1));
                if !named_by_all {
                    missing = format!(
                        "not every node names {} the owner of slot {}",
                        c.target.0,
                        c.slot.get()
                    );
                    still.push(c);
                    continue;
                }
                match settle_source(cluster, &c).await {
                    Ok(true) => {}
                    Ok(false) => {
                        missing =
                            format!("{} still holds keys of slot {}", c.source.0, c.slot.get());
                        still.push(c);
                    }
                    Err(e) => {
                        missing = format!("{e:#}");
                        still.push(c);
                    }
                }
            }
            pending = still;
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} closed moves not confirmed after {CLOSE_DEADLINE:?} ({missing}); run again to finish",
                pending.len()
            );
        }
        // Gossip spreads the targets' claims within a few cluster-bus pings.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Clears a closed move's mark on its source once it holds no key of the slot; whether it
/// is done. A source that lost its last slot is a replica of the new owner now (Redis's
/// `cluster-allow-replica-migration`): its keys are its master's, and Redis cleared its marks.
async fn settle_source(cluster: &ClusterConfig, c: &Closing) -> anyhow::Result<bool> {
    let own = cluster_nodes(&c.source.0, cluster, NODE_TIMEOUT).await?;
    if own.iter().any(|n| n.id == c.source.1 && !n.master) {
        return Ok(true);
    }
    let mut conn = node_connection(&c.source.0, cluster, NODE_TIMEOUT).await?;
    let left: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(c.slot.get())
        .query_async(&mut conn)
        .await?;
    if left > 0 {
        return Ok(false);
    }
    let () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(c.slot.get())
        .arg("STABLE")
        .query_async(&mut conn)
        .await?;
    Ok(true)
}

impl SlotMove {
    /// Step 1: claims the move of `slot` to the master `target` (node id or address) for run
    /// `run`, or resumes a half-done move the slot's journal names. Refused, changing
    /// nothing, when the slot is already the target's, the target is not a master, has fewer
    /// replicas than `replicas` (the replicated profile's count) or another Redis version
    /// than the source, another slot is moving, another run's lease is live, or the slot holds
    /// keys that are not Colony's.
    pub async fn claim(
        cluster: &ClusterConfig,
        slot: Slot,
        target: &str,
        run: &str,
        replicas: usize,
        options: MoveOptions,
    ) -> anyhow::Result<SlotMove> {
        Self::claim_checked(cluster, slot, target, run, replicas, options, true).await
    }

    /// [`SlotMove::claim`], asking every master for moves in progress only when `look` is
    /// set: a run of many moves looks once, before its first (each slot's journal and lease
    /// still keep two runs off one slot).
    pub async fn claim_checked(
        cluster: &ClusterConfig,
        slot: Slot,
        target: &str,
        run: &str,
        replicas: usize,
        options: MoveOptions,
        look: bool,
    ) -> anyhow::Result<SlotMove> {
        if options.lease < options.wait_timeout * 2 {
            bail!(
                "the lease ({:?}) must be at least twice the replicas' wait ({:?}): a step that waits must not outlive it",
                options.lease,
                options.wait_timeout
            );
        }
        let nodes = map(cluster).await?;
        let source = owner_of(&nodes, slot)
            .with_context(|| format!("slot {} has no owner in the cluster's map", slot.get()))?
            .clone();
        let wanted = nodes
            .iter()
            .find(|n| n.id == target || n.address == target)
            .with_context(|| format!("{target} is not a node of the cluster"))?;
        // A replica named: its master (e.g. the old target, back as a replica after a
        // failover).
        let target_node = if wanted.master {
            wanted.clone()
        } else {
            let master = wanted
                .replica_of
                .as_deref()
                .and_then(|m| nodes.iter().find(|n| n.id == m))
                .with_context(|| format!("{target} is a replica of no known master"))?;
            master.clone()
        };
        if target_node.id == source.id {
            // A run killed during the close leaves S migrating toward T: finished here.
            settle_closed(cluster, &nodes, slot, &target_node.id).await?;
            bail!(
                "slot {} is already served by {}",
                slot.get(),
                source.address
            );
        }
        if target_node.failing || target_node.unusable {
            bail!("{} is not a usable master", target_node.address);
        }
        let t_replicas = replicas_of(&nodes, &target_node);
        if t_replicas < replicas {
            bail!(
                "{} has {t_replicas} replicas; the replicated profile waits for {replicas}",
                target_node.address
            );
        }
        if look {
            if let Some(busy) = move_in_progress(cluster, &nodes, Some(slot.get())).await? {
                bail!("another move is in progress: {busy}");
            }
        }
        // A reply may take a whole WAIT: the connections' timeout leaves room for it.
        let patience = NODE_TIMEOUT + options.wait_timeout;
        let mut s = node_connection(&source.address, cluster, patience).await?;
        let mut t = node_connection(&target_node.address, cluster, patience).await?;
        let version = |info: String| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
                .unwrap_or_default()
        };
        let sv = version(redis::cmd("INFO").arg("server").query_async(&mut s).await?);
        let tv = version(redis::cmd("INFO").arg("server").query_async(&mut t).await?);
        if sv != tv {
            bail!(
                "{} runs redis {sv} and {} runs {tv}: DUMP values may not restore",
                source.address,
                target_node.address
            );
        }
        let held = list_keys(&mut s, slot).await?;
        if !held.unknown.is_empty() {
            bail!(
                "slot {} holds {} keys that are not Colony's (e.g. {:?}): the close would drop them",
                slot.get(),
                held.unknown.len(),
                String::from_utf8_lossy(&held.unknown[0])
            );
        }
        let tag = slot_tag(slot);
        let journal = format!("colony:{{{tag}}}:move");
        let parked = format!("colony:{{{tag}}}:parked");
        // A half-done move names its target: resumed to that node, or to the master that
        // replaced it when it failed (dead, failing, or a replica now); to any other node
        // only after an abort.
        let recorded: Option<String> = redis::cmd("HGET")
            .arg(&journal)
            .arg("target")
            .query_async(&mut s)
            .await?;
        if recorded.is_none() {
            let leftover: u64 = redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot.get())
                .query_async(&mut t)
                .await?;
            if leftover > 0 {
                bail!(
                    "{} holds {leftover} keys of slot {} it does not serve (a leftover): a new move there would bring them back",
                    target_node.address,
                    slot.get()
                );
            }
        }
        let replaced = match recorded {
            Some(id) if id != target_node.id => match nodes.iter().find(|n| n.id == id) {
                Some(n) if n.master && !n.failing && !n.unusable => bail!(
                    "slot {} is half moved to {} ({}): resume that move or abort it",
                    slot.get(),
                    n.address,
                    n.id
                ),
                _ => id,
            },
            _ => String::new(),
        };
        // A rerun finds S migrating already (a killed run got that far): its park must not
        // declare metas S lacks.
        let migrating = cluster_nodes(&source.address, cluster, NODE_TIMEOUT)
            .await?
            .iter()
            .any(|n| n.id == source.id && n.migrating.iter().any(|(s, _)| *s == slot.get()));
        let aborting: Option<String> = redis::cmd("HGET")
            .arg(&journal)
            .arg("aborting")
            .query_async(&mut s)
            .await?;
        let (generation, _before): (u64, String) = CLAIM
            .key(&journal)
            .key(&parked)
            .arg(run)
            .arg(&target_node.id)
            .arg(options.lease.as_millis() as u64)
            .arg(&replaced)
            .invoke_async(&mut s)
            .await
            .with_context(|| format!("claiming slot {}'s move", slot.get()))?;
        let mut claimed = SlotMove {
            cluster: cluster.clone(),
            options,
            slot,
            run: run.to_string(),
            generation,
            s_replicas: replicas_of(&nodes, &source),
            source,
            target: target_node,
            s,
            t,
            t_replicas,
            journal,
            parked,
            migrating,
            aborting: aborting.is_some(),
            moved: Moved {
                slot: slot.get(),
                ..Moved::default()
            },
        };
        claimed.wait_source().await.context("the claim")?;
        claimed.fence_other_runs().await?;
        Ok(claimed)
    }

    /// The slot.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The source's address.
    pub fn source(&self) -> &str {
        &self.source.address
    }

    /// The target's address.
    pub fn target(&self) -> &str {
        &self.target.address
    }

    /// Renews the lease (and adds `by` to the journal's `field`): every step calls it first.
    ///
    /// A renewal that took more than a third of the lease proves too little: the run stops
    /// rather than act on a lease another run may have taken since.
    async fn renew(&mut self, field: &str, by: u64) -> anyhow::Result<()> {
        let sent = Instant::now();
        let _: u64 = RENEW
            .key(&self.journal)
            .arg(&self.run)
            .arg(self.options.lease.as_millis() as u64)
            .arg(field)
            .arg(by)
            .invoke_async(&mut self.s)
            .await
            .with_context(|| format!("renewing the lease on slot {}", self.slot.get()))?;
        if sent.elapsed() > self.options.lease / 3 {
            bail!(
                "slot {}: renewing the lease took {:?}, too long to act on it",
                self.slot.get(),
                sent.elapsed()
            );
        }
        Ok(())
    }

    /// Names this run's connections, then closes every other run's connection for this
    /// slot on S and T: a paused or partitioned earlier run's commands, still in flight or
    /// not yet sent, can never reach a node after this run took the move over.
    async fn fence_other_runs(&mut self) -> anyhow::Result<()> {
        let prefix = format!("colony-move-{}-", self.slot.get());
        let name = format!("{prefix}{}", self.run);
        for conn in [&mut self.s, &mut self.t] {
            let () = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&name)
                .query_async(conn)
                .await?;
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("normal")
                .query_async(conn)
                .await?;
            for line in clients.lines() {
                let field = |f: &str| {
                    line.split(' ')
                        .find_map(|kv| kv.strip_prefix(f).and_then(|v| v.strip_prefix('=')))
                };
                if let (Some(id), Some(other)) = (field("id"), field("name")) {
                    if other.starts_with(&prefix) && other != name {
                        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("ID")
                            .arg(id)
                            .query_async(conn)
                            .await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn wait_on(
        conn: &mut MultiplexedConnection,
        replicas: usize,
        timeout: Duration,
        node: &str,
    ) -> anyhow::Result<()> {
        if replicas == 0 {
            return Ok(());
        }
        let acked: usize = redis::cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis() as u64)
            .query_async(conn)
            .await?;
        if acked < replicas {
            bail!("{node}: {acked} of {replicas} replicas acknowledged in {timeout:?}; the move stops here and resumes once they catch up");
        }
        Ok(())
    }

    async fn wait_source(&mut self) -> anyhow::Result<()> {
        Self::wait_on(
            &mut self.s,
            self.s_replicas,
            self.options.wait_timeout,
            &self.source.address,
        )
        .await
    }

    async fn wait_target(&mut self) -> anyhow::Result<()> {
        Self::wait_on(
            &mut self.t,
            self.t_replicas,
            self.options.wait_timeout,
            &self.target.address,
        )
        .await
    }

    /// Step 2: `IMPORTING` on T, so that T takes the restores (sent after `ASKING`) and,
    /// at the close, takes the slot with a new, highest epoch. Set again by a rerun (a
    /// failed-over T has lost it). S is not migrating yet: its unparked players are served
    /// as usual while the others move.
    pub async fn open(&mut self) -> anyhow::Result<()> {
        self.renew("", 0).await?;
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(self.slot.get())
            .arg("IMPORTING")
            .arg(&self.source.id)
            .query_async(&mut self.t)
            .await
            .with_context(|| format!("IMPORTING on {}", self.target.address))?;
        Ok(())
    }

    /// Step 6's start: `MIGRATING` on S, once every player listed so far is on T. From here
    /// S refuses to create a key of the slot (`TRYAGAIN`: a new player's script finds the
    /// slot's bookkeeping but not its own keys), so nothing is written on S that the close
    /// would drop. Set again by a rerun (a failed-over S has lost it).
    pub async fn migrate(&mut self) -> anyhow::Result<()> {
        self.renew("", 0).await?;
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(self.slot.get())
            .arg("MIGRATING")
            .arg(&self.target.id)
            .query_async(&mut self.s)
            .await
            .with_context(|| format!("MIGRATING on {}", self.source.address))?;
        self.migrating = true;
        Ok(())
    }

    /// What S holds of the slot now.
    pub async fn held(&mut self) -> anyhow::Result<SlotKeysHeld> {
        list_keys(&mut self.s, self.slot).await
    }

    /// The players S still holds unparked, in batches of about `batch_bytes`.
    pub async fn unparked_batches(&mut self) -> anyhow::Result<Vec<Vec<(String, Vec<Vec<u8>>)>>> {
        let held = self.held().await?;
        if let Some(key) = held.unknown.first() {
            bail!(
                "slot {} now holds a key that is not Colony's ({:?}): the close would drop it",
                self.slot.get(),
                String::from_utf8_lossy(key)
            );
        }
        let mut players = Vec::new();
        let mut pipe = redis::pipe();
        for (id, keys) in held.players {
            // Only a meta S holds: asked for one it lacks, a migrating S answers ASK.
            let meta = meta_key(&id);
            if keys.contains(&meta) {
                pipe.cmd("HMGET").arg(meta).arg("m").arg("b");
            } else {
                pipe.cmd("ECHO").arg("").ignore();
            }
            players.push((id, keys));
        }
        let looked: Vec<(Option<String>, Option<u64>)> = if players.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.s).await?
        };
        let mut looks = looked.into_iter();
        let mut batches: Vec<Vec<(String, Vec<Vec<u8>>)>> = Vec::new();
        let mut bytes = 0;
        for (id, keys) in players {
            let meta = meta_key(&id);
            let (tombstone, size) = if keys.contains(&meta) {
                looks.next().unwrap_or((None, None))
            } else {
                (None, None)
            };
            // Parked already: only its tombstoned meta is left.
            if tombstone.is_some() && keys.iter().all(|k| *k == meta) {
                continue;
            }
            let size = size.unwrap_or(0) + 64 * keys.len() as u64;
            if batches.is_empty() || bytes + size > self.options.batch_bytes {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(batch) = batches.last_mut() {
                batch.push((id, keys));
            }
        }
        Ok(batches)
    }

    /// Step 3: parks one batch on S (one script), then waits for S's replicas: the park is
    /// on them before anything leaves S. Returns the keys parked now.
    pub async fn park(&mut self, batch: &[(String, Vec<Vec<u8>>)]) -> anyhow::Result<u64> {
        let mut invocation = PARK.key(&self.journal);
        invocation.key(&self.parked);
        let mut n = 0;
        for (_, keys) in batch {
            for key in keys {
                invocation.key(key.as_slice());
                n += 1;
            }
        }
        for (id, keys) in batch {
            // Every player gets a tombstone; while S is migrating, only on a meta S holds
            // (a key of a migrating slot S lacks cannot be declared without TRYAGAIN, and
            // Redis refuses such a player's scripts itself then).
            let meta = meta_key(id);
            if !self.migrating || keys.contains(&meta) {
                invocation.key(meta);
            }
        }
        let parked: u64 = invocation
            .arg(&self.run)
            .arg(self.generation)
            .arg(n)
            .invoke_async(&mut self.s)
            .await
            .with_context(|| format!("parking a batch of slot {}", self.slot.get()))?;
        self.wait_source().await.context("the park")?;
        self.moved.players += batch.len() as u64;
        Ok(parked)
    }

    /// Step 4: restores every parked key of `players` on T (`ASKING` + `RESTORE … REPLACE
    /// ABSTTL`, metas last) and waits for T's replicas on that same connection; `None`
    /// restores every key parked so far (a rerun: the parked copies are the authority over
    /// whatever T holds). Returns the keys restored.
    pub async fn restore(&mut self, players: Option<&[String]>) -> anyhow::Result<u64> {
        self.renew("", 0).await?;
        let entries = self.parked_entries(players).await?;
        let mut restored = 0;
        for chunk in entries.chunks(256) {
            // Each pipeline to T goes under a lease renewed just before it.
            self.renew("", 0).await?;
            let pipe = restores(chunk, true);
            restored += chunk.len() as u64;
            let () = pipe
                .query_async(&mut self.t)
                .await
                .with_context(|| format!("restoring on {}", self.target.address))?;
        }
        self.wait_target().await.context("the restore")?;
        self.renew("restored", restored).await?;
        self.moved.keys_restored += restored;
        Ok(restored)
    }

    /// Step 6: copies the slot's bookkeeping to T (`DUMP`/`RESTORE REPLACE`, the restore
    /// queue merged with `ZADD`), kept on S until the close, and waits for T's replicas.
    pub async fn copy_bookkeeping(&mut self) -> anyhow::Result<()> {
        self.renew("", 0).await?;
        let held = self.held().await?;
        for key in held.bookkeeping {
            self.renew("", 0).await?;
            let mut pipe = redis::pipe();
            pipe.cmd("ASKING").ignore();
            if key.ends_with(RESTORE_QUEUE.as_bytes()) {
                // Taken off S (S is migrating: a push after this finds no queue on S and is
                // sent to T by ASK), then merged on T, where a push may have created it
                // already. Requests lost if the tool dies in between are asked again by
                // the callers still waiting for them.
                let entries: Vec<(Vec<u8>, f64)> = match TAKE_QUEUE
                    .key(key.as_slice())
                    .invoke_async(&mut self.s)
                    .await
                {
                    Ok(entries) => entries,
                    // Gone since the listing (the archiver took the last request): S,
                    // migrating, sends anything about it to T.
                    Err(e) if e.code() == Some("ASK") => continue,
                    Err(e) => return Err(e.into()),
                };
                if entries.is_empty() {
                    continue;
                }
                let zadd = pipe.cmd("ZADD").arg(key.as_slice());
                for (member, score) in &entries {
                    zadd.arg(*score).arg(member.as_slice());
                }
                zadd.ignore();
            } else {
                let dump: Option<Vec<u8>> = match redis::cmd("DUMP")
                    .arg(key.as_slice())
                    .query_async(&mut self.s)
                    .await
                {
                    Ok(dump) => dump,
                    Err(e) if e.code() == Some("ASK") => continue,
                    Err(e) => return Err(e.into()),
                };
                let Some(dump) = dump else { continue };
                pipe.cmd("RESTORE")
                    .arg(key.as_slice())
                    .arg(0)
                    .arg(dump)
                    .arg("REPLACE")
                    .ignore();
            }
            let () = pipe
                .query_async(&mut self.t)
                .await
                .with_context(|| format!("copying bookkeeping to {}", self.target.address))?;
        }
        self.wait_target().await.context("the bookkeeping")
    }

    /// Step 7: the close. `IMPORTING` again and `NODE` on T (T's new, highest epoch), then
    /// `NODE` on every other master but S (which learns it by gossip and drops the slot's
    /// leftovers); confirmed when every node names T and S holds no key of the slot.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        self.close_on_target().await?;
        self.tell_masters().await;
        self.confirm_close().await
    }

    /// `SETSLOT NODE T` on every master but S and T: gossip carries T's claim anyway; telling
    /// every master saves the wait.
    async fn tell_masters(&mut self) {
        let slot = self.slot.get();
        let Ok(nodes) = map(&self.cluster).await else {
            return;
        };
        for node in nodes
            .iter()
            .filter(|n| n.master && !n.failing && n.id != self.source.id && n.id != self.target.id)
        {
            // Gossip carries T's claim anyway; telling every master saves the wait.
            if let Ok(mut conn) = node_connection(&node.address, &self.cluster, NODE_TIMEOUT).await
            {
                let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&self.target.id)
                    .query_async(&mut conn)
                    .await;
            }
        }
    }

    /// The first half of the close, on T alone: `IMPORTING` again (a failed-over T lost
    /// it), then `NODE T`, which gives T a new, highest configuration epoch.
    pub async fn close_on_target(&mut self) -> anyhow::Result<()> {
        self.renew("", 0).await?;
        let slot = self.slot.get();
        let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&self.source.id)
            .query_async(&mut self.t)
            .await;
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&self.target.id)
            .query_async(&mut self.t)
            .await
            .with_context(|| format!("SETSLOT NODE on {}", self.target.address))?;
        Ok(())
    }

    /// What confirming this move's close waits for.
    pub fn closing(&self) -> Closing {
        Closing {
            slot: self.slot,
            source: (self.source.address.clone(), self.source.id.clone()),
            target: (self.target.address.clone(), self.target.id.clone()),
        }
    }

    /// Waits until every node names T as the slot's owner and S dropped the slot's keys,
    /// then clears S's mark.
    pub async fn confirm_close(&mut self) -> anyhow::Result<()> {
        confirm_closes(&self.cluster, &[self.closing()])
            .await
            .with_context(|| format!("slot {}", self.slot.get()))
    }

    /// Steps 2 to 7 from wherever the journal stands: open, restore every parked copy, park
    /// and restore the players batch by batch, set S migrating, copy the bookkeeping and
    /// look for players again until none is left unparked, close.
    pub async fn run_to_end(self) -> anyhow::Result<Moved> {
        let (moved, (cluster, closing)) = self.run_to_close().await?;
        confirm_closes(&cluster, &[closing]).await?;
        Ok(moved)
    }

    /// [`SlotMove::run_to_end`] up to the close sent to every master, its confirmation left
    /// to the caller ([`confirm_closes`], for many slots at once).
    pub async fn run_to_close(mut self) -> anyhow::Result<(Moved, (ClusterConfig, Closing))> {
        if self.aborting {
            bail!(
                "slot {}: an abort already put its players back on {}: finish it with `reshard --abort {}`",
                self.slot.get(),
                self.source.address,
                self.slot.get()
            );
        }
        let closing = (self.cluster.clone(), self.closing());
        if self.target_owns().await? {
            return Ok((self.moved, closing));
        }
        self.open().await?;
        self.restore(None).await?;
        self.move_unparked().await?;
        self.migrate().await?;
        loop {
            self.copy_bookkeeping().await?;
            // A player created on S before it was migrating (or since, if S failed over and
            // lost it) is moved, and the bookkeeping copied again, before the close.
            if self.move_unparked().await? == 0 {
                break;
            }
        }
        self.close_on_target().await?;
        self.tell_masters().await;
        Ok((self.moved, closing))
    }

    /// Parks and restores every player S holds unparked, batch by batch. Returns how many
    /// batches that took.
    pub async fn move_unparked(&mut self) -> anyhow::Result<u64> {
        let mut moved = 0;
        // A key that vanished between the listing and the park (an intent finished, a
        // record expired) makes a migrating S answer TRYAGAIN: listed again.
        for _ in 0..PARK_ATTEMPTS {
            let batches = self.unparked_batches().await?;
            if batches.is_empty() {
                return Ok(moved);
            }
            for batch in &batches {
                match self.park(batch).await {
                    Ok(_) => {}
                    Err(e) if format!("{e:#}").contains("TRYAGAIN") => break,
                    Err(e) => return Err(e),
                }
                let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
                self.restore(Some(&ids)).await?;
                self.moved.batches += 1;
                moved += 1;
            }
        }
        bail!(
            "slot {}: players' keys kept changing under {PARK_ATTEMPTS} listings",
            self.slot.get()
        )
    }

    /// Undoes a half-done move: `STABLE` on S first (its tombstones keep refusing), every
    /// parked copy restored on S (`REPLACE`, metas last, replacing the tombstones) and waited
    /// for on S's replicas, then everything the move put on T deleted (after `ASKING`) and
    /// waited for, `STABLE` on T, and the journal and parked copies deleted. Refused once T
    /// owns the slot: that move is finished with a rerun instead. Returns the keys restored.
    ///
    /// Two steps a test can stop between: [`SlotMove::abort_put_back`], then
    /// [`SlotMove::abort_clean_target`]; a run that dies between them leaves the journal
    /// marked `aborting`, and the rerun only cleans T.
    pub async fn abort(mut self) -> anyhow::Result<u64> {
        let restored = self.abort_put_back().await?;
        self.abort_clean_target().await?;
        Ok(restored)
    }

    /// The abort's first step: `STABLE` on S, every parked copy restored on S and waited
    /// for, then the copies dropped and the journal marked `aborting` in one script and
    /// waited for: from then on S serves the players, and no rerun restores a copy again.
    /// Nothing to do when a run before got that far. Returns the keys restored.
    pub async fn abort_put_back(&mut self) -> anyhow::Result<u64> {
        if self.target_owns().await? {
            bail!(
                "slot {} is already {}'s: the move can only be finished (reshard --resume)",
                self.slot.get(),
                self.target.address
            );
        }
        self.renew("", 0).await?;
        let slot = self.slot.get();
        let mut restored = 0;
        // An abort run before got past this point: the players S serves now are newer than
        // any copy, and the copies are gone.
        if !self.aborting {
            let () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("STABLE")
                .query_async(&mut self.s)
                .await
                .with_context(|| format!("STABLE on {}", self.source.address))?;
            let entries = self.parked_entries(None).await?;
            for chunk in entries.chunks(256) {
                let pipe = restores(chunk, false);
                restored += chunk.len() as u64;
                let () = pipe
                    .query_async(&mut self.s)
                    .await
                    .with_context(|| format!("restoring on {}", self.source.address))?;
            }
            self.wait_source().await.context("the abort's restore")?;
            // From here S serves the players: the copies must never be restored again.
            let () = ABORTED
                .key(&self.journal)
                .key(&self.parked)
                .invoke_async(&mut self.s)
                .await?;
            self.wait_source().await.context("the abort's mark")?;
            self.aborting = true;
        }
        Ok(restored)
    }

    /// The abort's second step, once S serves the players again: everything the move put
    /// on T deleted (after `ASKING`) and waited for, `STABLE` on T, and the journal and
    /// parked copies deleted.
    pub async fn abort_clean_target(mut self) -> anyhow::Result<()> {
        let slot = self.slot.get();
        if !self.aborting {
            bail!("slot {slot}: the players are not back on the source yet (abort_put_back)");
        }
        self.renew("", 0).await?;
        let count: u64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query_async(&mut self.t)
            .await?;
        let on_target: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(count.max(1))
            .query_async(&mut self.t)
            .await?;
        for chunk in on_target.chunks(256) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("ASKING").ignore();
                pipe.cmd("DEL").arg(key.as_slice()).ignore();
            }
            let () = pipe.query_async(&mut self.t).await?;
        }
        self.wait_target()
            .await
            .context("the abort's clean-up on the target")?;
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("STABLE")
            .query_async(&mut self.t)
            .await
            .with_context(|| format!("STABLE on {}", self.target.address))?;
        let left: u64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query_async(&mut self.t)
            .await?;
        if left > 0 {
            bail!(
                "{} still holds {left} keys of slot {slot} after the abort",
                self.target.address
            );
        }
        let () = redis::cmd("DEL")
            .arg(&self.journal)
            .arg(&self.parked)
            .query_async(&mut self.s)
            .await?;
        self.wait_source().await.context("the journal's removal")?;
        Ok(())
    }

    /// The parked copies on S (all, or the keys of `players`), as (key, expiry ms or 0,
    /// `DUMP` value), metas last.
    async fn parked_entries(&mut self, players: Option<&[String]>) -> anyhow::Result<Vec<Parked>> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = match players {
            None => {
                redis::cmd("HGETALL")
                    .arg(&self.parked)
                    .query_async(&mut self.s)
                    .await?
            }
            Some(players) => {
                let names: Vec<Vec<u8>> = redis::cmd("HKEYS")
                    .arg(&self.parked)
                    .query_async(&mut self.s)
                    .await?;
                let wanted: BTreeSet<&str> = players.iter().map(String::as_str).collect();
                let names: Vec<Vec<u8>> = names
                    .into_iter()
                    .filter(|k| {
                        matches!(key_role(self.slot, k), KeyRole::Player(id) if wanted.contains(id.as_str()))
                    })
                    .collect();
                if names.is_empty() {
                    Vec::new()
                } else {
                    let values: Vec<Vec<u8>> = redis::cmd("HMGET")
                        .arg(&self.parked)
                        .arg(&names)
                        .query_async(&mut self.s)
                        .await?;
                    names.into_iter().zip(values).collect()
                }
            }
        };
        let mut entries: Vec<Parked> = entries
            .into_iter()
            .filter(|(k, _)| k.as_slice() != b"_")
            .map(|(k, v)| {
                if v.as_slice() == b"-" {
                    return Ok((k, None));
                }
                let colon = v
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or_else(|| anyhow!("a parked copy without its expiry"))?;
                let expiry: u64 = std::str::from_utf8(&v[..colon])?.parse()?;
                Ok((k, Some((expiry, v[colon + 1..].to_vec()))))
            })
            .collect::<anyhow::Result<_>>()?;
        // Metas last: a player is whole before its meta says it exists.
        entries.sort_by_key(|(k, _)| k.ends_with(b":meta"));
        Ok(entries)
    }

    /// Whether T already claims the slot (a run killed during the close).
    async fn target_owns(&mut self) -> anyhow::Result<bool> {
        let view = cluster_nodes(&self.target.address, &self.cluster, NODE_TIMEOUT).await?;
        Ok(owner_of(&view, self.slot).map(|n| n.id.as_str()) == Some(self.target.id.as_str()))
    }
}

/// Listings of a slot's players a move makes before it gives up on keys that keep changing.
const PARK_ATTEMPTS: usize = 20;

/// How long the close may take to be confirmed by every node.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

/// Clears the `MIGRATING` mark a closed move of `slot` to `target` left on its old source
/// (a run killed after telling T), once that node names T the owner and holds no key of the
/// slot (gossip made it drop them).
async fn settle_closed(
    cluster: &ClusterConfig,
    nodes: &[ClusterNode],
    slot: Slot,
    target: &str,
) -> anyhow::Result<()> {
    for node in nodes.iter().filter(|n| n.master && !n.failing) {
        let deadline = Instant::now() + CLOSE_DEADLINE;
        loop {
            let own = cluster_nodes(&node.address, cluster, NODE_TIMEOUT).await?;
            let Some(me) = own.iter().find(|n| n.id == node.id) else {
                break;
            };
            if !me
                .migrating
                .iter()
                .any(|(s, to)| *s == slot.get() && to == target)
            {
                break;
            }
            let mut conn = node_connection(&node.address, cluster, NODE_TIMEOUT).await?;
            let left: u64 = redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot.get())
                .query_async(&mut conn)
                .await?;
            let theirs = owner_of(&own, slot).is_some_and(|o| o.id == target);
            if left == 0 && theirs {
                let () = redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot.get())
                    .arg("STABLE")
                    .query_async(&mut conn)
                    .await?;
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still holds {left} keys of slot {} it no longer serves",
                    node.address,
                    slot.get()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// One parked key: its name and its copy (absolute expiry in ms or 0, `DUMP` value), or
/// `None` for a meta the player did not have (the park wrote the tombstone on a new key).
type Parked = (Vec<u8>, Option<(u64, Vec<u8>)>);

/// A pipeline restoring parked copies (`RESTORE … REPLACE ABSTTL`), each after `ASKING`
/// when sent to the importing target. A key whose absolute expiry has passed is not created
/// (and one the node held is deleted, `REPLACE`): judged by the node's clock, never the
/// tool's.
fn restores(entries: &[Parked], asking: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for (key, copy) in entries {
        if asking {
            pipe.cmd("ASKING").ignore();
        }
        let Some((expiry, dump)) = copy else {
            // A meta the player did not have: the tombstone's own.
            pipe.cmd("DEL").arg(key.as_slice()).ignore();
            continue;
        };
        pipe.cmd("RESTORE")
            .arg(key.as_slice())
            .arg(*expiry)
            .arg(dump.as_slice())
            .arg("REPLACE")
            .arg("ABSTTL")
            .ignore();
    }
    pipe
}

fn meta_key(id: &str) -> Vec<u8> {
    format!("{{{id}}}:meta").into_bytes()
}

/// Every key S holds of `slot`, by role.
async fn list_keys(conn: &mut MultiplexedConnection, slot: Slot) -> anyhow::Result<SlotKeysHeld> {
    // Keys created between a count and the listing would push others out of a listing of
    // exactly that count: ask for more than counted until the answer is shorter than asked.
    let mut asked: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot.get())
        .query_async(conn)
        .await?;
    let keys: Vec<Vec<u8>> = loop {
        asked = asked + asked / 4 + 16;
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot.get())
            .arg(asked)
            .query_async(conn)
            .await?;
        if (keys.len() as u64) < asked {
            break keys;
        }
    };
    let mut held = SlotKeysHeld::default();
    for key in keys {
        match key_role(slot, &key) {
            KeyRole::Player(id) => held.players.entry(id).or_default().push(key),
            KeyRole::Bookkeeping => held.bookkeeping.push(key),
            KeyRole::MoveState => {}
            KeyRole::Unknown => held.unknown.push(key),
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_of(key: &str) -> Slot {
        colony::slot::key_slot(key.as_bytes())
    }

    #[test]
    fn keys_are_told_apart_by_role() {
        let key = "{alice}:meta";
        let slot = slot_of(key);
        let tag = slot_tag(slot);
        for k in [
            "{alice}:meta",
            "{alice}:pub",
            "{alice}:priv",
            "{alice}:clients",
            "{alice}:intent",
            "{alice}:decision:0123abcd",
            "{alice}:lease:0123abcd",
            "{alice}:idem:client:42",
        ] {
            assert_eq!(
                key_role(slot, k.as_bytes()),
                KeyRole::Player("alice".into()),
                "{k}"
            );
        }
        for k in ["active", "dirty", "intents", "decisions", "restores"] {
            let k = format!("colony:{{{tag}}}:{k}");
            assert_eq!(key_role(slot, k.as_bytes()), KeyRole::Bookkeeping, "{k}");
        }
        for k in ["move", "parked"] {
            let k = format!("colony:{{{tag}}}:{k}");
            assert_eq!(key_role(slot, k.as_bytes()), KeyRole::MoveState, "{k}");
        }
        for k in [
            "alice",
            "{alice}:other",
            "{alice}",
            "{}:meta",
            "{alice}:decision:",
            "{alice}:lease:",
            "colony:{x}:active",
        ] {
            assert_eq!(key_role(slot, k.as_bytes()), KeyRole::Unknown, "{k}");
        }
    }

    #[test]
    fn an_id_holding_braces_and_colons_is_still_one_player() {
        // Player ids may hold `}` and `:` (not first): the first split whose rest is a
        // player's suffix names the id.
        let slot = slot_of("{a}:pub}:meta");
        assert_eq!(
            key_role(slot, b"{a}:pub}:meta"),
            KeyRole::Player("a}:pub".into())
        );
        assert_eq!(key_role(slot, b"{a}:pub"), KeyRole::Player("a".into()));
        // Another player's keys are never credited to a player whose id is a prefix.
        let slot = slot_of("{a}:decision:z}:meta");
        assert_eq!(
            key_role(slot, b"{a}:decision:z}:meta"),
            KeyRole::Player("a}:decision:z".into())
        );
        assert_eq!(
            key_role(slot, b"{a}:decision:z}:decision:0f"),
            KeyRole::Player("a}:decision:z".into())
        );
        assert_eq!(
            key_role(slot, b"{a}:decision:0f"),
            KeyRole::Player("a".into())
        );
    }
}
