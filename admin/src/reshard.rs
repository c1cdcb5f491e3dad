//! `colony-admin reshard`, `rebalance` and `remove-node`: slots moved one after another by
//! [`SlotMove`], rate-limited between slots (never inside one, so no parked player waits for
//! the limiter), with every check made before the first change — and the ways out of a move
//! stopped half-way: `--resume` (finish it) and `--abort` (undo it).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colony::cluster_view::ClusterNode;
use colony::config::ClusterConfig;
use colony::slot::{Slot, SLOT_COUNT};
use colony::store::node_connection;
use serde::Serialize;

use crate::slot_move::{confirm_closes, move_in_progress, Closing, MoveOptions, Moved, SlotMove};

/// Closed moves confirmed together (and before a run that fails stops): a source's mark
/// toward a target that owns the slot is a close waiting for gossip, which `reshard`
/// recognises.
const CONFIRM_EVERY: usize = 128;
use crate::status::{first_answer, half_done_moves, HalfDone, NODE_TIMEOUT};

/// Parses `A-B[,C-D…]` (single slots allowed): every slot once, in order. Refused: an empty
/// list, a slot past 16383, a range whose end comes before its start, ranges that overlap.
pub fn parse_slots(spec: &str) -> anyhow::Result<Vec<u16>> {
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            bail!("--slots {spec:?}: an empty range");
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| -> anyhow::Result<u16> {
            let n: u16 = s
                .parse()
                .with_context(|| format!("--slots {spec:?}: {s:?} is not a slot number"))?;
            if n >= SLOT_COUNT {
                bail!("--slots {spec:?}: slot {n} is past {}", SLOT_COUNT - 1);
            }
            Ok(n)
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if b < a {
            bail!("--slots {spec:?}: {a}-{b} ends before it starts");
        }
        ranges.push((a, b));
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        if pair[1].0 <= pair[0].1 {
            bail!(
                "--slots {spec:?}: {}-{} and {}-{} overlap",
                pair[0].0,
                pair[0].1,
                pair[1].0,
                pair[1].1
            );
        }
    }
    Ok(ranges.into_iter().flat_map(|(a, b)| a..=b).collect())
}

/// How a run of moves goes.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Each slot's move.
    pub options: MoveOptions,
    /// Replicas the targets must have (the replicated profile's `replicas_to_wait`; 0 in
    /// the fast profile).
    pub replicas: usize,
    /// Most players moved per second, on average over the run (`None`: as fast as it goes).
    pub players_per_second: Option<f64>,
}

/// What a run of moves did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Each slot moved, in order.
    pub moved: Vec<Moved>,
    /// Players parked and restored.
    pub players: u64,
    /// Keys restored on the targets.
    pub keys: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Told after each slot, for a progress bar.
pub trait Progress {
    /// `done` of `total` slots moved; `moved` is the last one.
    fn slot_moved(&self, done: usize, total: usize, moved: &Moved);
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn slot_moved(&self, _: usize, _: usize, _: &Moved) {}
}

/// A run id: unique enough to tell runs apart in a journal.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", std::process::id(), nanos)
}

fn owner_of(nodes: &[ClusterNode], slot: u16) -> Option<&ClusterNode> {
    nodes
        .iter()
        .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
}

/// The master `wanted` names (node id or address), usable.
fn master_named<'n>(nodes: &'n [ClusterNode], wanted: &str) -> anyhow::Result<&'n ClusterNode> {
    let node = nodes
        .iter()
        .find(|n| n.id == wanted || n.address == wanted)
        .with_context(|| format!("{wanted} is not a node of the cluster"))?;
    if !node.master {
        bail!("{wanted} is a replica: slots go to masters");
    }
    if node.failing || node.unusable {
        bail!("{wanted} is not a usable master (failed, or still joining)");
    }
    Ok(node)
}

/// Refuses to start while any slot is moving: a `colony-admin` journal anywhere, or a
/// `MIGRATING`/`IMPORTING` mark on any master (Redis's own tool, or a managed service).
async fn refuse_concurrent(cluster: &ClusterConfig, nodes: &[ClusterNode]) -> anyhow::Result<()> {
    if let Some(h) = half_done_moves(cluster, nodes).await?.first() {
        bail!(
            "slot {} is half moved from {} (run {}): finish it with `reshard --resume` or undo it with `reshard --abort {}` first",
            h.slot,
            h.source,
            h.run,
            h.slot
        );
    }
    if let Some(busy) = move_in_progress(cluster, nodes, None).await? {
        bail!("{busy} (another tool?): a second concurrent move is refused");
    }
    Ok(())
}

/// Moves `slots` to the master `to`, one after another. Every check is made before the
/// first change: `to` is a usable master, no slot is `to`'s already, no move is in
/// progress; each slot's own checks (`SlotMove::claim`) follow.
pub async fn reshard(
    cluster: &ClusterConfig,
    slots: &[u16],
    to: &str,
    pace: &Pace,
    progress: &dyn Progress,
) -> anyhow::Result<Report> {
    let nodes = first_answer(&cluster.seeds, cluster).await?.1;
    let target = master_named(&nodes, to)?.clone();
    let theirs: Vec<u16> = slots
        .iter()
        .copied()
        .filter(|&s| owner_of(&nodes, s).is_some_and(|o| o.id == target.id))
        .collect();
    if !theirs.is_empty() {
        bail!(
            "{} already serves {} of these slots (e.g. {}): moving a slot to its owner is refused",
            target.address,
            theirs.len(),
            theirs[0]
        );
    }
    if let Some(&orphan) = slots.iter().find(|&&s| owner_of(&nodes, s).is_none()) {
        bail!("slot {orphan} has no owner in the cluster's map");
    }
    refuse_concurrent(cluster, &nodes).await?;
    let moves: Vec<(u16, String)> = slots.iter().map(|&s| (s, target.id.clone())).collect();
    run_moves(cluster, &moves, pace, progress).await
}

/// Says on stderr that confirming the closes before a failed run stopped failed too.
fn warn_unconfirmed(e: &anyhow::Error) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("colony-admin: the closes before the failure are not confirmed: {e:#}");
    }
}

/// Moves each `(slot, target id)` in turn, pacing by players moved.
async fn run_moves(
    cluster: &ClusterConfig,
    moves: &[(u16, String)],
    pace: &Pace,
    progress: &dyn Progress,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let run = run_id();
    let mut report = Report::default();
    let mut unconfirmed: Vec<Closing> = Vec::new();
    for (done, (slot, target)) in moves.iter().enumerate() {
        let slot_no = Slot::new(*slot).with_context(|| format!("slot {slot}"))?;
        // The run looked for moves in progress before its first slot.
        let moved = SlotMove::claim_checked(
            cluster,
            slot_no,
            target,
            &run,
            pace.replicas,
            pace.options.clone(),
            done == 0,
        )
        .await
        .with_context(|| format!("slot {slot}"));
        let moved = match moved {
            Ok(claimed) => claimed.run_to_close().await.with_context(|| {
                format!(
                    "slot {slot} stopped half-way; `colony-admin status` shows it, `reshard --resume` finishes it"
                )
            }),
            Err(e) => Err(e),
        };
        let moved = match moved {
            Ok(moved) => moved,
            Err(e) => {
                // The slots closed before this one are confirmed still (their sources'
                // marks cleared) before the run stops.
                if let Err(confirming) = confirm_closes(cluster, &unconfirmed).await {
                    warn_unconfirmed(&confirming);
                }
                return Err(e);
            }
        };
        let (moved, (_, closed)) = moved;
        unconfirmed.push(closed);
        // Closes are confirmed in groups: gossip takes the same time for one slot or many.
        if unconfirmed.len() >= CONFIRM_EVERY || done + 1 == moves.len() {
            confirm_closes(cluster, &unconfirmed).await?;
            unconfirmed.clear();
        }
        report.players += moved.players;
        report.keys += moved.keys_restored;
        progress.slot_moved(done + 1, moves.len(), &moved);
        report.moved.push(moved);
        // The limiter: between slots only.
        if let Some(rate) = pace.players_per_second.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64(report.players as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Finishes every half-done move (their journals' targets, or `to` for a move whose target
/// failed and was replaced by no master the map links to it).
pub async fn resume(
    cluster: &ClusterConfig,
    to: Option<&str>,
    pace: &Pace,
    progress: &dyn Progress,
) -> anyhow::Result<Report> {
    let nodes = first_answer(&cluster.seeds, cluster).await?.1;
    let half: Vec<HalfDone> = half_done_moves(cluster, &nodes).await?;
    if half.is_empty() {
        bail!("no move is half done");
    }
    let moves: Vec<(u16, String)> = half
        .iter()
        .map(|h| {
            (
                h.slot,
                to.map_or_else(|| h.target_id.clone(), str::to_string),
            )
        })
        .collect();
    run_moves(cluster, &moves, pace, progress).await
}

/// Undoes the half-done move of `slot`. Returns the keys put back on the source.
pub async fn abort(cluster: &ClusterConfig, slot: u16, pace: &Pace) -> anyhow::Result<u64> {
    let nodes = first_answer(&cluster.seeds, cluster).await?.1;
    let half = half_done_moves(cluster, &nodes).await?;
    let Some(h) = half.iter().find(|h| h.slot == slot) else {
        bail!("slot {slot} has no half-done move");
    };
    // Its target may be gone: any other master stands in, only to be told to let go.
    let target = match nodes.iter().find(|n| n.id == h.target_id && n.master && !n.failing) {
        Some(t) => t.id.clone(),
        None => bail!(
            "slot {slot}'s target {} is gone: resume the move to the master that replaced it (reshard --resume --to NODE)",
            h.target.as_deref().unwrap_or(&h.target_id)
        ),
    };
    // No replica count is required of the target: an abort undoes a move, whatever state
    // the target is in (its WAITs still ask every replica the map lists).
    SlotMove::claim(
        cluster,
        Slot::new(slot).with_context(|| format!("slot {slot}"))?,
        &target,
        &run_id(),
        0,
        pace.options.clone(),
    )
    .await?
    .abort()
    .await
}

/// The moves that spread the slots evenly over `masters` (ids): each master ends with
/// `16384 / n` slots or one more. Slots leave the masters holding the most, highest first,
/// and go to those holding the fewest. `owners` maps each slot to its master's id.
pub fn plan_rebalance(owners: &[(u16, String)], masters: &[String]) -> Vec<(u16, String)> {
    if masters.is_empty() {
        return Vec::new();
    }
    let n = masters.len();
    let base = usize::from(SLOT_COUNT) / n;
    let extra = usize::from(SLOT_COUNT) % n;
    // Held slots per master, highest first so that moves take the ends of ranges.
    let mut held: Vec<(String, Vec<u16>)> = masters
        .iter()
        .map(|m| {
            let mut slots: Vec<u16> = owners
                .iter()
                .filter(|(_, o)| o == m)
                .map(|(s, _)| *s)
                .collect();
            slots.sort_unstable_by(|a, b| b.cmp(a));
            (m.clone(), slots)
        })
        .collect();
    // The masters holding the most keep the extra slot each.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(held[i].1.len()));
    let mut quota = vec![base; n];
    for &i in order.iter().take(extra) {
        quota[i] += 1;
    }
    let mut spare: Vec<u16> = Vec::new();
    for (i, (_, slots)) in held.iter_mut().enumerate() {
        while slots.len() > quota[i] {
            if let Some(s) = slots.first().copied() {
                slots.remove(0);
                spare.push(s);
            }
        }
    }
    // Slots no listed master holds (a removed master's) are spare too.
    let listed: BTreeSet<&String> = masters.iter().collect();
    spare.extend(
        owners
            .iter()
            .filter(|(_, o)| !listed.contains(o))
            .map(|(s, _)| *s),
    );
    spare.sort_unstable();
    let mut moves = Vec::new();
    for (i, (id, slots)) in held.iter().enumerate() {
        let mut need = quota[i].saturating_sub(slots.len());
        while need > 0 {
            let Some(s) = spare.pop() else { break };
            moves.push((s, id.clone()));
            need -= 1;
        }
    }
    moves.sort_unstable();
    moves
}

/// Spreads the slots evenly over every usable master, new empty ones included (`except`: a
/// master to empty, for `remove-node`).
pub async fn rebalance(
    cluster: &ClusterConfig,
    except: Option<&str>,
    pace: &Pace,
    progress: &dyn Progress,
) -> anyhow::Result<Report> {
    let nodes = first_answer(&cluster.seeds, cluster).await?.1;
    let leaving = match except {
        Some(name) => Some(master_named(&nodes, name)?.id.clone()),
        None => None,
    };
    let masters: Vec<String> = nodes
        .iter()
        .filter(|n| n.master && !n.failing && !n.unusable && Some(&n.id) != leaving.as_ref())
        .map(|n| n.id.clone())
        .collect();
    if masters.is_empty() {
        bail!("no master is left to take the slots");
    }
    let owners: Vec<(u16, String)> = (0..SLOT_COUNT)
        .filter_map(|s| owner_of(&nodes, s).map(|o| (s, o.id.clone())))
        .collect();
    let moves = plan_rebalance(&owners, &masters);
    if moves.is_empty() {
        return Ok(Report::default());
    }
    refuse_concurrent(cluster, &nodes).await?;
    run_moves(cluster, &moves, pace, progress).await
}

/// What `remove-node` did.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// The node's address.
    pub address: String,
    /// Slots moved off it first.
    pub drained: Report,
    /// Nodes told to forget it.
    pub forgotten_by: usize,
}

/// Removes the node `name` (id or address): a master's slots are moved to the others first
/// (refused while it still has replicas: remove or move them first); then every other node
/// forgets it, and it is reset so that it does not rejoin by gossip.
pub async fn remove_node(
    cluster: &ClusterConfig,
    name: &str,
    pace: &Pace,
    progress: &dyn Progress,
) -> anyhow::Result<Removed> {
    let nodes = first_answer(&cluster.seeds, cluster).await?.1;
    let node = nodes
        .iter()
        .find(|n| n.id == name || n.address == name)
        .with_context(|| format!("{name} is not a node of the cluster"))?
        .clone();
    let mut drained = Report::default();
    if node.master {
        let replicas: Vec<&str> = nodes
            .iter()
            .filter(|n| n.replica_of.as_deref() == Some(node.id.as_str()))
            .map(|n| n.address.as_str())
            .collect();
        if !replicas.is_empty() {
            bail!(
                "{} still has replicas ({}): remove them (or make them another master's) first",
                node.address,
                replicas.join(", ")
            );
        }
        if nodes
            .iter()
            .filter(|n| n.master && !n.failing && !n.slots.is_empty())
            .count()
            <= 1
            && !node.slots.is_empty()
        {
            bail!("{} is the only master serving slots", node.address);
        }
        if !node.slots.is_empty() {
            drained = rebalance(cluster, Some(&node.id), pace, progress).await?;
        }
    }
    let mut forgotten_by = 0;
    for other in nodes.iter().filter(|n| n.id != node.id && !n.failing) {
        let mut conn = node_connection(&other.address, cluster, NODE_TIMEOUT).await?;
        let () = redis::cmd("CLUSTER")
            .arg("FORGET")
            .arg(&node.id)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("FORGET on {}", other.address))?;
        forgotten_by += 1;
    }
    // It would otherwise meet the others again by gossip; it may be down already.
    if let Ok(mut conn) = node_connection(&node.address, cluster, NODE_TIMEOUT).await {
        let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
            .arg("RESET")
            .arg("SOFT")
            .query_async(&mut conn)
            .await;
    }
    Ok(Removed {
        address: node.address,
        drained,
        forgotten_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_lists_parse_and_hostile_ones_are_refused() {
        assert_eq!(parse_slots("0-2,7").expect("parses"), vec![0, 1, 2, 7]);
        assert_eq!(parse_slots(" 9 , 3-4").expect("parses"), vec![3, 4, 9]);
        assert_eq!(parse_slots("16383").expect("parses"), vec![16383]);
        for bad in [
            "", "1,", "a-3", "3-1", "0-16384", "1-5,5-6", "1-10,2", "-1", "1-2-3",
        ] {
            assert!(parse_slots(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn rebalance_spreads_slots_evenly_onto_a_new_master() {
        let (a, b, c, d) = (
            "a".to_string(),
            "b".to_string(),
            "c".to_string(),
            "d".to_string(),
        );
        let owners: Vec<(u16, String)> = (0..SLOT_COUNT)
            .map(|s| {
                let o = match s {
                    0..=5460 => &a,
                    5461..=10922 => &b,
                    _ => &c,
                };
                (s, o.clone())
            })
            .collect();
        let masters = vec![a.clone(), b.clone(), c.clone(), d.clone()];
        let moves = plan_rebalance(&owners, &masters);
        assert_eq!(moves.len(), 4096, "d takes a quarter");
        assert!(moves.iter().all(|(_, to)| *to == d));
        let unique: BTreeSet<u16> = moves.iter().map(|(s, _)| *s).collect();
        assert_eq!(unique.len(), moves.len());
        // Each old master gives up about the same number.
        for m in [&a, &b, &c] {
            let given = moves
                .iter()
                .filter(|(s, _)| owners[usize::from(*s)].1 == **m)
                .count();
            assert!((1364..=1366).contains(&given), "{m} gave {given}");
        }
        // Already even: nothing moves.
        let after: Vec<(u16, String)> = owners
            .iter()
            .map(|(s, o)| match moves.iter().find(|(m, _)| m == s) {
                Some((_, to)) => (*s, to.clone()),
                None => (*s, o.clone()),
            })
            .collect();
        assert!(plan_rebalance(&after, &masters).is_empty());
        // Draining a master: its slots go to the others.
        let drain = plan_rebalance(&after, &[a.clone(), b.clone(), c.clone()]);
        assert_eq!(drain.len(), 4096);
        assert!(drain
            .iter()
            .all(|(s, to)| after[usize::from(*s)].1 == d && *to != d));
    }
}
