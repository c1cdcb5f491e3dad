//! `colony-admin status`: the cluster as its nodes describe it — masters with their replicas
//! and slots, live players per master, slot moves in progress, the configuration epoch.
//!
//! Every node is asked for its own `CLUSTER NODES`, because a node lists a slot move
//! (`MIGRATING`/`IMPORTING`) only in its own line. Players are counted from the slots'
//! `active` sets (live players; archived ones are in MongoDB), pipelined
//! [`SLOTS_PER_ROUND_TRIP`] slots at a time on a connection to each master.

use std::time::Duration;

use anyhow::{bail, Context};
use colony::cluster_view::{ClusterNode, ClusterView};
use colony::config::ClusterConfig;
use colony::keys::SlotKeys;
use colony::store::{cluster_nodes, node_connection};
use serde::Serialize;

/// Slots whose player counts are asked in one pipelined round trip.
pub const SLOTS_PER_ROUND_TRIP: usize = 512;

/// How long one node may take to answer one command.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `status` found.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The highest configuration epoch any node lists.
    pub epoch: u64,
    /// The node whose map the shards are read from.
    pub read_from: String,
    /// Shards in index order (a master and its replicas).
    pub shards: Vec<ShardStatus>,
    /// Slot moves in progress, as the nodes that hold them say.
    pub moves: Vec<SlotMove>,
    /// Moves of `colony-admin` whose journal is still on a source master: stopped half-way
    /// (or running now), with how to finish or undo them.
    pub half_done: Vec<HalfDone>,
    /// Masters that serve no slot yet (a node just added), by address.
    pub empty_masters: Vec<String>,
    /// Nodes that did not answer (their own moves are unknown).
    pub unreachable: Vec<String>,
}

/// One shard of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// `shard-<index>`, as the gateways name it.
    pub name: String,
    /// The master's address, when a master serves the shard.
    pub master: Option<String>,
    /// The master's node id.
    pub master_id: Option<String>,
    /// Replicas: address and whether the cluster flags them failed.
    pub replicas: Vec<ReplicaStatus>,
    /// The slots it serves, as inclusive ranges.
    pub slots: Vec<(u16, u16)>,
    /// How many slots that is.
    pub slot_count: usize,
    /// Live players in those slots (`None` when the master did not answer).
    pub players: Option<u64>,
}

/// One replica of a shard.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    /// `host:port`.
    pub address: String,
    /// Flagged `fail` by the cluster.
    pub failing: bool,
}

/// A slot being moved, as one node's state says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotMove {
    /// The slot.
    pub slot: u16,
    /// The node that says so.
    pub node: String,
    /// `migrating` (the node sends the slot away) or `importing` (it takes it in).
    pub state: &'static str,
    /// The node id on the other end.
    pub peer: String,
}

/// A move of one slot whose journal (`colony:{<slot tag>}:move`) a master holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HalfDone {
    /// The slot.
    pub slot: u16,
    /// The master holding the journal (the slot's source).
    pub source: String,
    /// The target's node id, as the journal names it.
    pub target_id: String,
    /// The target's address, when the map still lists that node.
    pub target: Option<String>,
    /// The run that holds (or held) the move.
    pub run: String,
    /// Milliseconds left on that run's lease (0: passed, anyone may resume or abort).
    pub lease_left_ms: u64,
    /// Keys parked so far.
    pub parked: u64,
    /// Keys restored on the target so far (restores repeated by a rerun included).
    pub restored: u64,
    /// An abort put the players back on the source already: the move can only be aborted
    /// (what is left is cleaning the target).
    pub aborting: bool,
}

/// The journals of half-done moves on every master of `nodes` (a `SCAN` of each master's
/// keys: an operator's occasional look, never on the players' path).
pub async fn half_done_moves(
    cluster: &ClusterConfig,
    nodes: &[ClusterNode],
) -> anyhow::Result<Vec<HalfDone>> {
    let mut found = Vec::new();
    for master in nodes
        .iter()
        .filter(|n| n.master && !n.failing && !n.unusable)
    {
        let mut conn = node_connection(&master.address, cluster, NODE_TIMEOUT)
            .await
            .with_context(|| format!("connecting to {}", master.address))?;
        let (now_s, now_us): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now = now_s * 1000 + now_us / 1000;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("colony:{*}:move")
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut conn)
                .await?;
            for key in keys {
                let journal: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await?;
                let number = |f: &str| journal.get(f).and_then(|v| v.parse::<u64>().ok());
                let target_id = journal.get("target").cloned().unwrap_or_default();
                found.push(HalfDone {
                    slot: colony::slot::key_slot(key.as_bytes()).get(),
                    source: master.address.clone(),
                    target: nodes
                        .iter()
                        .find(|n| n.id == target_id)
                        .map(|n| n.address.clone()),
                    target_id,
                    run: journal.get("run").cloned().unwrap_or_default(),
                    lease_left_ms: number("lease").unwrap_or(0).saturating_sub(now),
                    parked: number("parked").unwrap_or(0),
                    restored: number("restored").unwrap_or(0),
                    aborting: journal.contains_key("aborting"),
                });
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    found.sort_by_key(|h| h.slot);
    Ok(found)
}

/// Reads the cluster's state from the nodes `cluster` names (and every node they list).
pub async fn status(cluster: &ClusterConfig) -> anyhow::Result<Status> {
    let (source, nodes) = first_answer(&cluster.seeds, cluster).await?;
    let view = ClusterView::first(&source, &nodes).map_err(anyhow::Error::msg)?;
    let map = view.map();
    // Every node's own line, for its moves.
    let mut moves = Vec::new();
    let mut unreachable = Vec::new();
    for address in view.addresses() {
        match cluster_nodes(&address, cluster, NODE_TIMEOUT).await {
            Ok(listed) => moves.extend(own_moves(&address, &listed)),
            Err(_) => unreachable.push(address),
        }
    }
    let mut shards = Vec::new();
    for (index, group) in map.indices().zip(view.groups()) {
        let slots = map.slots_of(index);
        let players = match &group.master {
            Some(master) => count_players(&master.address, &slots, cluster).await.ok(),
            None => None,
        };
        shards.push(ShardStatus {
            name: group.name.clone(),
            master: group.master.as_ref().map(|m| m.address.clone()),
            master_id: group.master.as_ref().map(|m| m.id.clone()),
            replicas: group
                .replicas
                .iter()
                .map(|r| ReplicaStatus {
                    address: r.address.clone(),
                    failing: r.failing,
                })
                .collect(),
            slots: ranges(&slots.iter().map(|s| s.get()).collect::<Vec<_>>()),
            slot_count: slots.len(),
            players,
        });
    }
    let empty_masters = nodes
        .iter()
        .filter(|n| n.master && n.slots.is_empty() && !n.failing && !n.unusable)
        .map(|n| n.address.clone())
        .collect();
    let half_done = half_done_moves(cluster, &nodes).await?;
    Ok(Status {
        epoch: view.epoch(),
        read_from: source,
        shards,
        moves,
        half_done,
        empty_masters,
        unreachable,
    })
}

/// `CLUSTER NODES` from the first of `addresses` that answers.
pub(crate) async fn first_answer(
    addresses: &[String],
    cluster: &ClusterConfig,
) -> anyhow::Result<(String, Vec<ClusterNode>)> {
    let mut failures = Vec::new();
    for address in addresses {
        match cluster_nodes(address, cluster, NODE_TIMEOUT).await {
            Ok(nodes) => return Ok((address.clone(), nodes)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    bail!("no seed of the cluster answered: {}", failures.join("; "))
}

/// The moves the node at `address` lists in its own line (`myself`).
fn own_moves(address: &str, listed: &[ClusterNode]) -> Vec<SlotMove> {
    let Some(me) = listed.iter().find(|n| n.address == address) else {
        return Vec::new();
    };
    let migrating = me.migrating.iter().map(|(slot, peer)| SlotMove {
        slot: *slot,
        node: address.to_string(),
        state: "migrating",
        peer: peer.clone(),
    });
    let importing = me.importing.iter().map(|(slot, peer)| SlotMove {
        slot: *slot,
        node: address.to_string(),
        state: "importing",
        peer: peer.clone(),
    });
    migrating.chain(importing).collect()
}

/// Live players in `slots` on the master at `address`: the sizes of their `active` sets.
async fn count_players(
    address: &str,
    slots: &[colony::slot::Slot],
    cluster: &ClusterConfig,
) -> anyhow::Result<u64> {
    let mut conn = node_connection(address, cluster, NODE_TIMEOUT)
        .await
        .with_context(|| format!("counting players on {address}"))?;
    let mut total = 0;
    for chunk in slots.chunks(SLOTS_PER_ROUND_TRIP) {
        let mut pipe = redis::pipe();
        for &slot in chunk {
            pipe.cmd("ZCARD").arg(SlotKeys::new(slot).active);
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .with_context(|| format!("counting players on {address}"))?;
        total += counts.iter().sum::<u64>();
    }
    Ok(total)
}

/// Sorted slots as inclusive ranges.
pub fn ranges(slots: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &slot in slots {
        match out.last_mut() {
            Some((_, end)) if slot == end.saturating_add(1) => *end = slot,
            _ => out.push((slot, slot)),
        }
    }
    out
}

impl Status {
    /// The status as a few lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Redis Cluster, configuration epoch {} (map read from {})\n",
            self.epoch, self.read_from
        );
        for shard in &self.shards {
            let slots: Vec<String> = shard
                .slots
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let replicas: Vec<String> = shard
                .replicas
                .iter()
                .map(|r| {
                    if r.failing {
                        format!("{} (failed)", r.address)
                    } else {
                        r.address.clone()
                    }
                })
                .collect();
            out.push_str(&format!(
                "  {:<9} master {:<21} {:>5} slots ({})  players {:<8} replicas {}\n",
                shard.name,
                shard.master.as_deref().unwrap_or("none"),
                shard.slot_count,
                slots.join(","),
                shard
                    .players
                    .map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                if replicas.is_empty() {
                    "none".to_string()
                } else {
                    replicas.join(", ")
                }
            ));
        }
        if self.moves.is_empty() {
            out.push_str("  no slot is moving\n");
        }
        for m in &self.moves {
            out.push_str(&format!(
                "  slot {} is {} on {} ({} {})\n",
                m.slot,
                m.state,
                m.node,
                if m.state == "migrating" { "to" } else { "from" },
                m.peer
            ));
        }
        for h in &self.half_done {
            let next = if h.aborting {
                format!(
                    "half aborted, the players back on the source: finish the abort with `colony-admin reshard --abort {}`",
                    h.slot
                )
            } else {
                format!(
                    "finish with `colony-admin reshard --resume`, undo with `colony-admin reshard --abort {}`",
                    h.slot
                )
            };
            out.push_str(&format!(
                "  slot {} is half moved from {} to {} by run {} ({} keys parked, {} restored; {}): {next}\n",
                h.slot,
                h.source,
                h.target.as_deref().unwrap_or(&h.target_id),
                h.run,
                h.parked,
                h.restored,
                if h.lease_left_ms > 0 {
                    format!("its lease has {} ms left", h.lease_left_ms)
                } else {
                    "its lease has passed".to_string()
                },
            ));
        }
        for node in &self.empty_masters {
            out.push_str(&format!("  {node} is a master with no slots yet\n"));
        }
        for node in &self.unreachable {
            out.push_str(&format!("  {node} did not answer\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_become_ranges() {
        assert_eq!(ranges(&[]), vec![]);
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), vec![(0, 2), (5, 5), (7, 8)]);
        assert_eq!(ranges(&[16383]), vec![(16383, 16383)]);
    }
}
