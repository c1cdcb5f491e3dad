//! Redis Cluster's own map, as Colony routes by it: a `CLUSTER NODES` reply parsed
//! ([`parse_nodes`]), its nodes grouped into shards — a master and its replicas — that keep
//! their index across failovers and slot moves ([`ClusterView::next`]), and the slot map those
//! shards make ([`ClusterView::map`]).
//!
//! Pure: the store asks the nodes (`store/directory.rs`), this reads their answers.
//!
//! Why shards keep their index: a [`ShardIndex`] names a shard for as long as a call, a sweep
//! or the archiver's walk holds it, and the store keeps one set of connections, one breaker and
//! one series of metrics per index. A failover in a cluster replaces a master by one of its own
//! replicas, so the group "this master and its replicas" outlives it, exactly as a Sentinel
//! shard outlives its masters. A new view matches each of its masters to the group of the last
//! view that held that master (as master or replica), else to one that shares a node with it;
//! only a master with none of the last view's nodes starts a new group. Groups are only ever
//! appended: one that no master claims any more stays, with no master and no slots, so every
//! index handed out stays meaningful.

use std::collections::BTreeSet;
use std::fmt;

use crate::shard_map::{Endpoint, Shard, ShardIndex, ShardMap};
use crate::slot::SLOT_COUNT;

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's id (40 hex characters).
    pub id: String,
    /// Where clients reach it, `host:port` (empty for a node that has no address yet).
    pub address: String,
    /// Its cluster bus port (the `@cport` of its address), when listed.
    pub bus_port: Option<u16>,
    /// The hostname it announces (`cluster-announce-hostname`), if any: redirects name it
    /// instead of the address when the cluster prefers hostnames.
    pub hostname: Option<String>,
    /// Whether it is a master (else a replica).
    pub master: bool,
    /// The master it replicates, for a replica.
    pub replica_of: Option<String>,
    /// Flagged `fail`: the cluster agreed it is down. (`fail?`, one node's suspicion, is not
    /// enough: connecting and `ROLE` tell.)
    pub failing: bool,
    /// Flagged `handshake` or `noaddr`: not a usable member yet.
    pub unusable: bool,
    /// Whether the cluster bus link to it is up, as the answering node sees it.
    pub connected: bool,
    /// Its configuration epoch (for a replica, its master's).
    pub config_epoch: u64,
    /// The slots it serves (masters only), as inclusive ranges.
    pub slots: Vec<(u16, u16)>,
    /// Slots it is moving away, with the node id they go to (`[slot->-id]`: its
    /// `MIGRATING` state; listed only by the node itself).
    pub migrating: Vec<(u16, String)>,
    /// Slots it is taking in, with the node id they come from (`[slot-<-id]`: its
    /// `IMPORTING` state; listed only by the node itself).
    pub importing: Vec<(u16, String)>,
}

/// Why a `CLUSTER NODES` reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CLUSTER NODES line {line}: {reason}")]
pub struct ParseError {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses a `CLUSTER NODES` reply. Slot-migration markers (`[slot->-id]`, `[slot-<-id]`) are
/// the answering node's own state: kept apart (`migrating`, `importing`), never as slots
/// served — a migrating slot still belongs to its source until `CLUSTER SETSLOT ... NODE`
/// says otherwise.
pub fn parse_nodes(text: &str) -> Result<Vec<ClusterNode>, ParseError> {
    let mut nodes = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| ParseError {
            line: number + 1,
            reason,
        };
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 8 {
            return Err(bad(format!("{} fields, expected at least 8", fields.len())));
        }
        let id = fields[0];
        if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("{id:?} is not a node id")));
        }
        // `ip:port@cport[,hostname]`; the address clients use is `ip:port`.
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let hostname = fields[1]
            .split_once(',')
            .map(|(_, h)| h.to_string())
            .filter(|h| !h.is_empty());
        let bus_port = fields[1]
            .split_once('@')
            .and_then(|(_, rest)| rest.split(',').next())
            .and_then(|port| port.parse::<u16>().ok());
        let flags: Vec<&str> = fields[2].split(',').collect();
        let master = flags.contains(&"master");
        let replica = flags.contains(&"slave") || flags.contains(&"replica");
        let joining = flags.contains(&"handshake") || flags.contains(&"noaddr");
        if !master && !replica && !joining {
            return Err(bad(format!(
                "flags {:?} name neither master nor replica",
                fields[2]
            )));
        }
        let replica_of = match fields[3] {
            "-" => None,
            id => Some(id.to_string()),
        };
        let config_epoch: u64 = fields[6]
            .parse()
            .map_err(|_| bad(format!("config epoch {:?} is not a number", fields[6])))?;
        let mut slots = Vec::new();
        let (mut migrating, mut importing) = (Vec::new(), Vec::new());
        for range in &fields[8..] {
            if let Some(marker) = range.strip_prefix('[') {
                let marker = marker
                    .strip_suffix(']')
                    .ok_or_else(|| bad(format!("migration marker {range:?} is not closed")))?;
                let (slot, list, peer) = if let Some((slot, peer)) = marker.split_once("->-") {
                    (slot, &mut migrating, peer)
                } else if let Some((slot, peer)) = marker.split_once("-<-") {
                    (slot, &mut importing, peer)
                } else {
                    return Err(bad(format!("migration marker {range:?} is not understood")));
                };
                let slot = slot
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n < SLOT_COUNT)
                    .ok_or_else(|| bad(format!("migration marker {range:?}: slot out of range")))?;
                list.push((slot, peer.to_string()));
                continue;
            }
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            let parse = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|n| *n < SLOT_COUNT)
                    .ok_or_else(|| bad(format!("slot range {range:?} is not within 0-16383")))
            };
            let (start, end) = (parse(start)?, parse(end)?);
            if start > end {
                return Err(bad(format!("slot range {range:?} is reversed")));
            }
            slots.push((start, end));
        }
        let usable_address = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        nodes.push(ClusterNode {
            id: id.to_string(),
            address: if usable_address {
                address.to_string()
            } else {
                String::new()
            },
            hostname,
            bus_port,
            master,
            replica_of,
            failing: flags.contains(&"fail"),
            unusable: flags.contains(&"handshake") || flags.contains(&"noaddr") || !usable_address,
            connected: fields[7] == "connected",
            config_epoch,
            slots,
            migrating,
            importing,
        });
    }
    if nodes.is_empty() {
        return Err(ParseError {
            line: 0,
            reason: "no nodes".into(),
        });
    }
    Ok(nodes)
}

/// A node of a group as the view lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// The hostname it announces, if any.
    pub hostname: Option<String>,
    /// Flagged `fail`.
    pub failing: bool,
}

impl Member {
    /// Whether a redirect naming `target` (`host:port`) names this node: by its address, or
    /// by its announced hostname and its port.
    pub fn answers_to(&self, target: &str) -> bool {
        if self.address == target {
            return true;
        }
        let port = self.address.rsplit_once(':').map(|(_, p)| p);
        match (&self.hostname, port, target.rsplit_once(':')) {
            (Some(host), Some(port), Some((target_host, target_port))) => {
                host == target_host && port == target_port
            }
            _ => false,
        }
    }
}

/// A shard of the cluster: a master and its replicas, under a name that outlives failovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `shard-<index>`.
    pub name: String,
    /// The master serving the group's slots, if any master claims the group in this view.
    pub master: Option<Member>,
    /// Its replicas.
    pub replicas: Vec<Member>,
}

impl Group {
    /// Every node id of the group.
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.master
            .iter()
            .chain(&self.replicas)
            .map(|m| m.id.as_str())
    }

    /// Replicas the view does not list as failing.
    pub fn replicas_online(&self) -> usize {
        self.replicas.iter().filter(|r| !r.failing).count()
    }
}

/// The cluster as one answer described it: groups in index order and the slot map.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterView {
    groups: Vec<Group>,
    map: ShardMap,
    /// The answering node's address.
    source: String,
}

impl fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterView")
            .field("source", &self.source)
            .field("groups", &self.groups)
            .field("map", &self.map)
            .finish()
    }
}

impl ClusterView {
    /// The first view, from `nodes` as the node at `source` listed them.
    pub fn first(source: &str, nodes: &[ClusterNode]) -> Result<ClusterView, String> {
        ClusterView::build(None, source, nodes)
    }

    /// The view after this one: the same groups keep their index (see the module docs).
    pub fn next(&self, source: &str, nodes: &[ClusterNode]) -> Result<ClusterView, String> {
        ClusterView::build(Some(self), source, nodes)
    }

    fn build(
        previous: Option<&ClusterView>,
        source: &str,
        nodes: &[ClusterNode],
    ) -> Result<ClusterView, String> {
        let usable = |n: &&ClusterNode| !n.unusable;
        // Masters that serve slots, failing or not (a failed one is the owner until a
        // replica takes over; its refusal says nothing applied). A master with no slots is
        // no shard yet: a node added empty, or — for a moment after the cluster was formed —
        // a replica whose new role has not reached the answering node by gossip. Groups are
        // never removed, so a passing state must not make one.
        let mut masters: Vec<&ClusterNode> = nodes
            .iter()
            .filter(usable)
            .filter(|n| n.master && !n.slots.is_empty())
            .collect();
        // A stable order for new groups: by lowest slot.
        masters.sort_by_key(|m| m.slots.iter().map(|r| r.0).min());
        let member = |n: &ClusterNode| Member {
            id: n.id.clone(),
            address: n.address.clone(),
            hostname: n.hostname.clone(),
            failing: n.failing,
        };
        let mut groups: Vec<Group> = previous
            .map(|p| {
                p.groups
                    .iter()
                    .map(|g| Group {
                        name: g.name.clone(),
                        master: None,
                        replicas: Vec::new(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let before: Vec<BTreeSet<&str>> = previous
            .map(|p| p.groups.iter().map(|g| g.ids().collect()).collect())
            .unwrap_or_default();
        // Each master's replicas, and the group it takes. Matching runs in passes over every
        // master, strongest evidence first, so that a weak match of one master cannot take
        // the group another master holds by a strong one: the group this very node was
        // master of; then one it was a replica in; then the one sharing most nodes with it.
        let crew: Vec<Vec<&ClusterNode>> = masters
            .iter()
            .map(|master| {
                nodes
                    .iter()
                    .filter(usable)
                    .filter(|n| !n.master && n.replica_of.as_deref() == Some(master.id.as_str()))
                    .collect()
            })
            .collect();
        let was_master: Vec<Option<&str>> = previous
            .map(|p| {
                p.groups
                    .iter()
                    .map(|g| g.master.as_ref().map(|m| m.id.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let mut claimed = vec![false; groups.len()];
        let mut taken: Vec<Option<usize>> = vec![None; masters.len()];
        for pass in 0..3 {
            for (k, master) in masters.iter().enumerate() {
                if taken[k].is_some() {
                    continue;
                }
                let id = master.id.as_str();
                let ids: BTreeSet<&str> = std::iter::once(id)
                    .chain(crew[k].iter().map(|r| r.id.as_str()))
                    .collect();
                let free = (0..before.len()).filter(|&i| !claimed[i]);
                let found = match pass {
                    0 => free.clone().find(|&i| was_master[i] == Some(id)),
                    1 => free.clone().find(|&i| before[i].contains(id)),
                    _ => free
                        .map(|i| (before[i].intersection(&ids).count(), i))
                        .filter(|&(shared, _)| shared > 0)
                        // Most shared nodes; of equals, the lowest index.
                        .max_by_key(|&(shared, i)| (shared, std::cmp::Reverse(i)))
                        .map(|(_, i)| i),
                };
                if let Some(i) = found {
                    claimed[i] = true;
                    taken[k] = Some(i);
                }
            }
        }
        let mut owner_of_master: Vec<(usize, &ClusterNode)> = Vec::new();
        for (k, master) in masters.iter().enumerate() {
            let index = taken[k].unwrap_or_else(|| {
                groups.push(Group {
                    name: format!("shard-{}", groups.len()),
                    master: None,
                    replicas: Vec::new(),
                });
                groups.len() - 1
            });
            groups[index].master = Some(member(master));
            groups[index].replicas = crew[k].iter().map(|r| member(r)).collect();
            owner_of_master.push((index, master));
        }
        if groups.is_empty() {
            return Err(format!("{source} lists no master"));
        }
        const UNOWNED: u16 = u16::MAX;
        let mut owner = vec![UNOWNED; usize::from(SLOT_COUNT)];
        for (index, master) in &owner_of_master {
            for &(start, end) in &master.slots {
                for slot in start..=end {
                    let o = &mut owner[usize::from(slot)];
                    // Two masters in one answer claiming a slot: the newer configuration
                    // wins, as in the cluster itself.
                    let newer = *o == UNOWNED
                        || owner_of_master
                            .iter()
                            .find(|(i, _)| usize::from(*o) == *i)
                            .is_some_and(|(_, m)| m.config_epoch < master.config_epoch);
                    if newer {
                        *o = *index as u16;
                    }
                }
            }
        }
        // A slot no master serves (a failed master's, before a replica takes over with
        // `cluster-require-full-coverage no`) routes where it last did: the node's refusal
        // says nothing applied.
        for (slot, o) in owner.iter_mut().enumerate() {
            if *o == UNOWNED {
                *o = previous.map_or(0, |p| {
                    p.map
                        .shard_for_slot(crate::slot::Slot::new(slot as u16).expect("slot"))
                        .get() as u16
                });
            }
        }
        let epoch = nodes.iter().map(|n| n.config_epoch).max().unwrap_or(0);
        let shards = groups
            .iter()
            .map(|g| Shard {
                name: g.name.clone(),
                endpoint: Endpoint::Cluster {
                    master: g.master.as_ref().map(|m| m.address.clone()),
                },
                replicas: g.replicas.iter().map(|r| r.address.clone()).collect(),
            })
            .collect();
        let map = ShardMap::from_owners(epoch, shards, owner).map_err(|e| e.0)?;
        Ok(ClusterView {
            groups,
            map,
            source: source.to_string(),
        })
    }

    /// The groups, in index order (every index handed out so far).
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group at `index`.
    pub fn group(&self, index: ShardIndex) -> Option<&Group> {
        self.groups.get(index.get())
    }

    /// The slot map: each slot's group, and the epoch (the highest configuration epoch listed).
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The cluster's epoch as this view saw it (the highest configuration epoch listed).
    pub fn epoch(&self) -> u64 {
        self.map.epoch()
    }

    /// The address of the node that answered.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The group whose master a redirect naming `address` means (by address or announced
    /// hostname), if one is.
    pub fn group_of_master(&self, address: &str) -> Option<ShardIndex> {
        self.groups
            .iter()
            .position(|g| g.master.as_ref().is_some_and(|m| m.answers_to(address)))
            .and_then(|i| self.map.index(i))
    }

    /// Whether any master serves a slot in this view: a node whose cluster was reset (or
    /// one that has not joined) lists none, and its view must not replace a real one.
    pub fn serves_slots(&self) -> bool {
        self.groups.iter().any(|g| g.master.is_some())
    }

    /// Every node's address, masters first: whom to ask for the next view.
    pub fn addresses(&self) -> Vec<String> {
        let masters = self.groups.iter().filter_map(|g| g.master.as_ref());
        let replicas = self.groups.iter().flat_map(|g| &g.replicas);
        masters
            .chain(replicas)
            .filter(|m| !m.failing)
            .map(|m| m.address.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::Slot;

    /// A 3 × (1 + 2) cluster as `redis-cli --cluster create` made it (redis 7.0.15), asked on
    /// 127.0.0.1:7101.
    const CREATED: &str = "\
5e48a6f72b750eda35a491eb265538b6b4dd5371 127.0.0.1:7102@7202 master - 0 1796386133100 2 connected 5461-10922
0e2b3b5219ed6b87645ac17446b08256391bf19a 127.0.0.1:7105@7205 slave 677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1 0 1796386133599 3 connected
3f4e9b3fe29e7b82b9a40520833f07ba5060ff79 127.0.0.1:7107@7207 slave dc878f879e2fc114124782a149dec9f111a31639 0 1796386133101 1 connected
0ed8d41be1b6243bcdbbff88a5ff95acebbe9609 127.0.0.1:7109@7209 slave dc878f879e2fc114124782a149dec9f111a31639 0 1796386133598 1 connected
dc878f879e2fc114124782a149dec9f111a31639 127.0.0.1:7101@7201 myself,master - 0 1796386133000 1 connected 0-5460 [100->-677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1]
677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1 127.0.0.1:7103@7203 master - 0 1796386133100 3 connected 10923-16383
643dedccc14033e65493b961638183d76f33d211 127.0.0.1:7108@7208 slave 5e48a6f72b750eda35a491eb265538b6b4dd5371 0 1796386133100 2 connected
953254d2fc38fc8dd1986256a90bd7fbaef77dab 127.0.0.1:7104@7204 slave 5e48a6f72b750eda35a491eb265538b6b4dd5371 0 1796386133101 2 connected
fb777b41f10a4356a1135e692d014eb47aa332cf 127.0.0.1:7106@7206 slave 677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1 0 1796386133101 3 connected
";

    /// The same cluster after 7101 was killed and 7109 promoted, asked on 7102.
    const FAILED_OVER: &str = "\
0ed8d41be1b6243bcdbbff88a5ff95acebbe9609 127.0.0.1:7109@7209 master - 0 1796386142155 10 connected 0-5460
dc878f879e2fc114124782a149dec9f111a31639 127.0.0.1:7101@7201 master,fail - 1796386138029 1796386137025 1 disconnected
0e2b3b5219ed6b87645ac17446b08256391bf19a 127.0.0.1:7105@7205 slave 677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1 0 1796386142055 3 connected
3f4e9b3fe29e7b82b9a40520833f07ba5060ff79 127.0.0.1:7107@7207 slave 0ed8d41be1b6243bcdbbff88a5ff95acebbe9609 0 1796386142000 10 connected
5e48a6f72b750eda35a491eb265538b6b4dd5371 127.0.0.1:7102@7202 myself,master - 0 1796386142000 2 connected 5461-10922
fb777b41f10a4356a1135e692d014eb47aa332cf 127.0.0.1:7106@7206 slave 677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1 0 1796386142156 3 connected
643dedccc14033e65493b961638183d76f33d211 127.0.0.1:7108@7208 slave 5e48a6f72b750eda35a491eb265538b6b4dd5371 0 1796386142660 2 connected
677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1 127.0.0.1:7103@7203 master - 0 1796386142000 3 connected 10923-16383
953254d2fc38fc8dd1986256a90bd7fbaef77dab 127.0.0.1:7104@7204 slave 5e48a6f72b750eda35a491eb265538b6b4dd5371 0 1796386142055 2 connected
";

    fn slot(n: u16) -> Slot {
        Slot::new(n).expect("slot")
    }

    fn master_of(view: &ClusterView, n: u16) -> String {
        let shard = view.map().shard_for_slot(slot(n));
        view.group(shard)
            .and_then(|g| g.master.as_ref())
            .map(|m| m.address.clone())
            .unwrap_or_default()
    }

    #[test]
    fn a_created_cluster_parses_into_three_groups_by_lowest_slot() {
        let nodes = parse_nodes(CREATED).expect("parses");
        assert_eq!(nodes.len(), 9);
        let view = ClusterView::first("127.0.0.1:7101", &nodes).expect("view");
        let names: Vec<&str> = view.groups().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["shard-0", "shard-1", "shard-2"]);
        assert_eq!(master_of(&view, 0), "127.0.0.1:7101");
        assert_eq!(
            master_of(&view, 100),
            "127.0.0.1:7101",
            "a migrating slot stays"
        );
        let source = nodes
            .iter()
            .find(|n| n.address == "127.0.0.1:7101")
            .expect("node");
        assert_eq!(
            source.migrating,
            [(100, "677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1".to_string())]
        );
        assert!(source.importing.is_empty());
        assert_eq!(source.bus_port, Some(7201));
        let target = parse_nodes(
            "677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1 127.0.0.1:7102@7202 myself,master - 0 0 2 \
             connected 5461-10922 [100-<-dc878f879e2fc114124782a149dec9f111a31639]",
        )
        .expect("parses");
        assert_eq!(
            target[0].importing,
            [(100, "dc878f879e2fc114124782a149dec9f111a31639".to_string())]
        );
        assert_eq!(
            target[0].slots,
            [(5461, 10922)],
            "an importing slot is not served yet"
        );
        assert_eq!(master_of(&view, 5461), "127.0.0.1:7102");
        assert_eq!(master_of(&view, 16383), "127.0.0.1:7103");
        for group in view.groups() {
            assert_eq!(group.replicas.len(), 2, "{group:?}");
            assert_eq!(group.replicas_online(), 2);
        }
        assert_eq!(view.epoch(), 3);
        assert_eq!(
            view.group_of_master("127.0.0.1:7103").map(|i| i.get()),
            Some(2)
        );
        assert_eq!(view.addresses().len(), 9);
    }

    #[test]
    fn a_failover_keeps_the_group_and_its_index() {
        let first =
            ClusterView::first("a:1", &parse_nodes(CREATED).expect("parses")).expect("view");
        let after = first
            .next("a:2", &parse_nodes(FAILED_OVER).expect("parses"))
            .expect("view");
        assert_eq!(after.groups().len(), 3, "no new group: {after:?}");
        let group = &after.groups()[0];
        assert_eq!(group.name, "shard-0");
        assert_eq!(
            group.master.as_ref().map(|m| m.address.as_str()),
            Some("127.0.0.1:7109")
        );
        assert_eq!(group.replicas.len(), 1, "7107 follows the new master");
        assert_eq!(master_of(&after, 0), "127.0.0.1:7109");
        assert_eq!(master_of(&after, 6000), "127.0.0.1:7102");
        assert_eq!(after.epoch(), 10);
    }

    #[test]
    fn a_failed_master_still_holding_slots_owns_them_until_replaced() {
        let text = CREATED.replace(
            "127.0.0.1:7101@7201 myself,master",
            "127.0.0.1:7101@7201 master,fail",
        );
        let view = ClusterView::first("a:1", &parse_nodes(&text).expect("parses")).expect("view");
        assert_eq!(master_of(&view, 0), "127.0.0.1:7101");
        assert!(view.groups()[0].master.as_ref().is_some_and(|m| m.failing));
        assert!(!view.addresses().contains(&"127.0.0.1:7101".to_string()));
    }

    #[test]
    fn a_new_master_appends_a_group_and_a_removed_one_leaves_an_empty_one() {
        let first =
            ClusterView::first("a:1", &parse_nodes(CREATED).expect("parses")).expect("view");
        let mut text = CREATED.replace("5461-10922", "5461-9000");
        text.push_str(
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 127.0.0.1:7110@7210 master - 0 0 11 connected 9001-10922\n",
        );
        let grown = first
            .next("a:1", &parse_nodes(&text).expect("parses"))
            .expect("view");
        assert_eq!(grown.groups().len(), 4);
        assert_eq!(grown.groups()[3].name, "shard-3");
        assert_eq!(master_of(&grown, 9500), "127.0.0.1:7110");
        assert_eq!(master_of(&grown, 100), "127.0.0.1:7101");
        // The new master's slots go back, and it leaves the cluster.
        let shrunk = grown
            .next("a:1", &parse_nodes(CREATED).expect("parses"))
            .expect("view");
        assert_eq!(shrunk.groups().len(), 4, "indices are never reused");
        assert!(shrunk.groups()[3].master.is_none());
        assert!(shrunk
            .map()
            .slots_of(shrunk.map().index(3).expect("index"))
            .is_empty());
        assert_eq!(master_of(&shrunk, 9500), "127.0.0.1:7102");
    }

    #[test]
    fn a_master_without_slots_is_no_shard_yet() {
        // Right after forming, a node may still list a replica as a master with no slots.
        let text = CREATED.replace(
            "127.0.0.1:7105@7205 slave 677ee9ecf266ef0496dd2e370c2dca9a15f1c5d1",
            "127.0.0.1:7105@7205 master -",
        );
        let view = ClusterView::first("a:1", &parse_nodes(&text).expect("parses")).expect("view");
        assert_eq!(view.groups().len(), 3, "{view:?}");
        assert_eq!(view.groups()[2].replicas.len(), 1);
        let next = view
            .next("a:1", &parse_nodes(CREATED).expect("parses"))
            .expect("view");
        assert_eq!(next.groups().len(), 3);
        assert_eq!(next.groups()[2].replicas.len(), 2);
    }

    #[test]
    fn a_strong_match_is_not_taken_by_a_weak_one() {
        // A node X added and given slot 0 (sorting first) while 7109, a replica of shard-0's
        // master 7101, migrated to X: X shares a node with shard-0, but 7101 is its master.
        let first =
            ClusterView::first("a:1", &parse_nodes(CREATED).expect("parses")).expect("view");
        let mut text = CREATED
            .replace("connected 0-5460", "connected 1-5460")
            .replace(
                "127.0.0.1:7109@7209 slave dc878f879e2fc114124782a149dec9f111a31639",
                "127.0.0.1:7109@7209 slave aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            );
        text.push_str(
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 127.0.0.1:7110@7210 master - 0 0 11 connected 0\n",
        );
        let next = first
            .next("a:1", &parse_nodes(&text).expect("parses"))
            .expect("view");
        assert_eq!(master_of(&next, 100), "127.0.0.1:7101");
        assert_eq!(
            next.groups()[0].master.as_ref().map(|m| m.address.as_str()),
            Some("127.0.0.1:7101")
        );
        assert_eq!(
            next.groups()[3].master.as_ref().map(|m| m.address.as_str()),
            Some("127.0.0.1:7110")
        );
        assert_eq!(master_of(&next, 0), "127.0.0.1:7110");
    }

    #[test]
    fn redirects_may_name_a_node_by_its_hostname() {
        let text = CREATED.replace(
            "127.0.0.1:7103@7203 master",
            "127.0.0.1:7103@7203,node-c.example master",
        );
        let view = ClusterView::first("a:1", &parse_nodes(&text).expect("parses")).expect("view");
        assert_eq!(
            view.group_of_master("node-c.example:7103").map(|i| i.get()),
            Some(2)
        );
        assert_eq!(
            view.group_of_master("127.0.0.1:7103").map(|i| i.get()),
            Some(2)
        );
        assert_eq!(view.group_of_master("node-c.example:7102"), None);
        assert!(view.serves_slots());
    }

    #[test]
    fn an_unserved_slot_routes_where_it_last_did() {
        let first =
            ClusterView::first("a:1", &parse_nodes(CREATED).expect("parses")).expect("view");
        let text = CREATED.replace("connected 10923-16383", "connected 10923-16000");
        let next = first
            .next("a:1", &parse_nodes(&text).expect("parses"))
            .expect("view");
        assert_eq!(master_of(&next, 16100), "127.0.0.1:7103");
    }

    #[test]
    fn malformed_replies_are_refused_with_the_line() {
        let cases = [
            ("", "no nodes"),
            ("abc 1.2.3.4:1@2 master - 0 0 1 connected", "not a node id"),
            ("short line", "fields"),
            (
                "dc878f879e2fc114124782a149dec9f111a31639 h:1@2 master - 0 0 x connected",
                "config epoch",
            ),
            (
                "dc878f879e2fc114124782a149dec9f111a31639 h:1@2 master - 0 0 1 connected 5-99999",
                "within 0-16383",
            ),
            (
                "dc878f879e2fc114124782a149dec9f111a31639 h:1@2 master - 0 0 1 connected 9-5",
                "reversed",
            ),
            (
                "dc878f879e2fc114124782a149dec9f111a31639 h:1@2 myself - 0 0 1 connected",
                "neither master nor replica",
            ),
            (
                "dc878f879e2fc114124782a149dec9f111a31639 h:1@2 master - 0 0 1 connected [5->-x",
                "not closed",
            ),
            (
                "dc878f879e2fc114124782a149dec9f111a31639 h:1@2 master - 0 0 1 connected [5-x]",
                "not understood",
            ),
            (
                "dc878f879e2fc114124782a149dec9f111a31639 h:1@2 master - 0 0 1 connected [99999-<-x]",
                "slot out of range",
            ),
        ];
        for (text, expected) in cases {
            let e = parse_nodes(text).expect_err(text).to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn nodes_without_an_address_or_in_handshake_are_not_members() {
        let mut text = CREATED.to_string();
        text.push_str(
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb :0@0 master,noaddr - 0 0 0 disconnected\n",
        );
        text.push_str(
            "cccccccccccccccccccccccccccccccccccccccc 127.0.0.1:7111@7211 handshake - 0 0 0 connected\n",
        );
        let view = ClusterView::first("a:1", &parse_nodes(&text).expect("parses")).expect("view");
        assert_eq!(view.groups().len(), 3);
    }
}
