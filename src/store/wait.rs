//! Replicated acknowledgements: `WAIT`, grouped per connection.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;

use super::connect::ConnectError;

/// Group commit for `WAIT`: one `WAIT` at a time per connection, covering every caller whose
/// writes were answered before it was sent.
///
/// `WAIT` blocks the connection it is sent on until the replicas answer, so a `WAIT` per
/// pipeline would serialise every caller sharing the connection behind one replica round trip
/// each. Instead a caller whose writes were answered joins the next round; a round's `WAIT` is
/// sent only after every caller in it joined, so it covers all of their writes (Redis counts
/// the writes a connection made before the `WAIT`). Rounds run in a task of their own, so a
/// caller that gives up cannot stall the others.
pub(super) struct WaitRounds {
    conn: MultiplexedConnection,
    /// The master `conn` leads to (`host:port`): on a Sentinel shard, the replicas a round
    /// waits for are the others the Sentinels could promote.
    master: Arc<str>,
    /// Which replicas a round waits for, read when it starts: the shard's links change it
    /// with each new view of a Redis Cluster.
    wait_for: Arc<Mutex<WaitFor>>,
    timeout_ms: u64,
    state: Mutex<Rounds>,
}

/// What a round's `WAIT` answered: the replicas that acknowledged, and how many it asked for.
pub(super) type Acknowledged = Result<(i64, u32), ConnectError>;

#[derive(Default)]
struct Rounds {
    waiting: Vec<tokio::sync::oneshot::Sender<Acknowledged>>,
    running: bool,
}

impl WaitRounds {
    /// Rounds on `conn`, each a `WAIT <replicas> timeout_ms`.
    pub(super) fn new(
        conn: MultiplexedConnection,
        master: Arc<str>,
        wait_for: Arc<Mutex<WaitFor>>,
        timeout_ms: u64,
    ) -> WaitRounds {
        WaitRounds {
            conn,
            master,
            wait_for,
            timeout_ms,
            state: Mutex::new(Rounds::default()),
        }
    }

    /// Joins the next round and returns what its `WAIT` answered: how many replicas
    /// acknowledged every write this connection had answered before the call, and how many
    /// the round asked for.
    pub(super) async fn wait(self: &Arc<Self>) -> Acknowledged {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut rounds = lock(&self.state);
            rounds.waiting.push(tx);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run().await });
        }
        rx.await
            .unwrap_or_else(|_| Err(ConnectError::WaitAbandoned))
    }

    async fn run(&self) {
        loop {
            let round = {
                let mut rounds = lock(&self.state);
                if rounds.waiting.is_empty() {
                    rounds.running = false;
                    return;
                }
                std::mem::take(&mut rounds.waiting)
            };
            let acked = self.round().await;
            for waiter in round {
                let _ = waiter.send(acked.clone());
            }
        }
    }
}

impl WaitRounds {
    /// One `WAIT` for as many replicas as [`WaitFor::asked`] says, on the round's connection.
    ///
    /// For a Redis Cluster's shard or a Sentinel shard, `INFO replication` (which replicas
    /// are attached now, and how long since each last acknowledged) and a `WAIT` for the
    /// replicas the map (or the Sentinels) list go out in one pipeline on that connection:
    /// one round trip. Only when the master has a replica attached that they do not list (one
    /// not discovered yet; on a Sentinel shard also one they cannot promote: any replica may
    /// answer `WAIT`, so each attached one must be counted for the listed ones to be covered)
    /// is a second `WAIT`, for all of them, sent on the same connection. It covers at least
    /// the same writes (`WAIT` waits for the connection's latest write offset, which only
    /// grows), so the answer is the same as an `INFO`, then one `WAIT` for all — a round trip
    /// sooner.
    async fn round(&self) -> Acknowledged {
        let mut conn = self.conn.clone();
        let wait_for = lock(&self.wait_for).for_master(&self.master);
        let listed = wait_for.asked(None);
        if let WaitFor::Configured(_) = wait_for {
            return self.send_wait(&mut conn, listed, self.timeout_ms).await;
        }
        let sent = tokio::time::Instant::now();
        let (replication, acked): (String, i64) = redis::pipe()
            .cmd("INFO")
            .arg("replication")
            .cmd("WAIT")
            .arg(listed)
            .arg(self.timeout_ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| ConnectError::redis("INFO replication and WAIT on", "the link", e))?;
        let asked = wait_for.asked(Some(&attached_replicas(&replication)));
        match after_first_wait(listed, acked, asked) {
            Some(answer) => Ok(answer),
            // The second WAIT gets what is left of the timeout (at least 1 ms: `WAIT n 0`
            // would block for ever), so a round never waits much past `timeout_ms`.
            None => {
                let spent = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
                let left = self.timeout_ms.saturating_sub(spent).max(1);
                self.send_wait(&mut conn, asked, left).await
            }
        }
    }

    /// `WAIT <asked> <timeout_ms>` on `conn`: how many acknowledged, and `asked`.
    async fn send_wait(
        &self,
        conn: &mut MultiplexedConnection,
        asked: u32,
        timeout_ms: u64,
    ) -> Acknowledged {
        redis::cmd("WAIT")
            .arg(asked)
            .arg(timeout_ms)
            .query_async::<i64>(conn)
            .await
            .map(|n| (n, asked))
            .map_err(|e| ConnectError::redis("WAIT on", "the link", e))
    }
}

/// What a cluster round answers after its first `WAIT` (for the `listed` replicas, which
/// `acked`), now that `ROLE` says `asked` must have the writes (`asked >= listed`): the
/// answer when that `WAIT` settles it — enough replicas acknowledged, or already too few —
/// or `None` when a second `WAIT`, for `asked`, must tell.
fn after_first_wait(listed: u32, acked: i64, asked: u32) -> Option<(i64, u32)> {
    let settled = acked >= i64::from(asked) || acked < i64::from(listed);
    settled.then_some((acked, asked))
}

/// Which replicas a write must reach before it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WaitFor {
    /// `redis.replicas_to_wait` of them (fixed shards, and a Sentinel shard until the
    /// Sentinels have said which replicas they could promote).
    Configured(u32),
    /// A Sentinel shard: every replica the Sentinels could promote
    /// (`sentinel::Agreed::electable`) other than the master a link leads to, and at least
    /// `configured`. Sentinel ranks candidates by priority, then offset, which keeps a write
    /// fewer replicas acknowledged only if the master stopped taking writes before the
    /// choice; a replica promoted while the master still serves (a `SENTINEL FAILOVER`)
    /// leaves the others acknowledging writes the failover throws away.
    Sentinel {
        /// `redis.replicas_to_wait`.
        configured: u32,
        /// The replicas the Sentinels could promote, each as the addresses it is listed
        /// under. During a failover the list may name the new master (the old one's
        /// promoted replica) or the old one (listed as the new one's replica): each link
        /// leaves out the master it leads to.
        electable: Vec<BTreeSet<String>>,
        /// The replicas the Sentinels flag down, by address.
        down: BTreeSet<String>,
    },
    /// [`WaitFor::Sentinel`] as one link to a master sees it ([`WaitFor::for_master`]): the
    /// other replicas that could be promoted, and every replica attached to the master that
    /// is none of them and still acknowledges ([`Attached::acknowledges`]) — `WAIT n` counts
    /// any `n` replicas, so one that cannot be promoted, that the Sentinels do not list, or
    /// that they flag down though the master still reaches it (a partition that is not
    /// transitive), could otherwise stand in for one that can.
    Promotable {
        /// `redis.replicas_to_wait`.
        configured: u32,
        /// The replicas that could be promoted, each as the addresses it is listed under.
        others: Vec<BTreeSet<String>>,
        /// The replicas the Sentinels flag down, by address: one that also stopped
        /// acknowledging is not waited for (a stopped replica stays attached until the
        /// master's `repl-timeout`, and must not hold writes that long).
        down: BTreeSet<String>,
    },
    /// A Redis Cluster's shard: every replica that could be elected — those the map lists
    /// online for the master — and every other replica attached to it now (the map may lag:
    /// a replica that moved to this master, one back from a failure) unless the map flags it
    /// failed and it stopped acknowledging; and at least `configured`. The cluster's election
    /// prefers the most advanced replica but does not guarantee it, and a replica the others
    /// flag failed while the master still reaches it would otherwise stand in for one that
    /// can be elected.
    Cluster {
        /// `redis.replicas_to_wait`.
        configured: u32,
        /// The master's replicas the map lists as online, `host:port`.
        listed_online: Vec<String>,
        /// Every node the map flags as failed, `host:port`.
        failed: Vec<String>,
    },
}

impl WaitFor {
    /// What a link to `master` (`host:port`) waits for: a Sentinel shard's replicas that
    /// could be promoted, the master itself left out ([`WaitFor::Promotable`]); the others
    /// as they are.
    pub(super) fn for_master(&self, master: &str) -> WaitFor {
        match self {
            WaitFor::Sentinel {
                configured,
                electable,
                down,
            } => WaitFor::Promotable {
                configured: *configured,
                others: electable
                    .iter()
                    .filter(|r| !r.contains(master))
                    .cloned()
                    .collect(),
                down: down.clone(),
            },
            other => other.clone(),
        }
    }

    /// How many replicas to ask `WAIT` for, given the replicas attached now (`host:port`;
    /// `None` when not asked); a Sentinel shard's with no master left out (see
    /// [`WaitFor::for_master`]).
    pub(super) fn asked(&self, attached: Option<&[Attached]>) -> u32 {
        match self {
            WaitFor::Configured(n) => *n,
            WaitFor::Sentinel {
                configured,
                electable,
                ..
            } => u32::try_from(electable.len())
                .unwrap_or(u32::MAX)
                .max(*configured),
            WaitFor::Promotable {
                configured,
                others,
                down,
            } => {
                let promotable =
                    |a: &str| others.iter().any(|r| r.iter().any(|o| same_address(o, a)));
                let gone = |r: &Attached| {
                    !r.acknowledges() && down.iter().any(|d| same_address(d, &r.address))
                };
                let unlisted = attached
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| !promotable(&r.address) && !gone(r))
                    .count();
                u32::try_from(others.len() + unlisted)
                    .unwrap_or(u32::MAX)
                    .max(*configured)
            }
            WaitFor::Cluster {
                configured,
                listed_online,
                failed,
            } => {
                let mut electable: BTreeSet<&str> =
                    listed_online.iter().map(String::as_str).collect();
                for replica in attached.unwrap_or_default() {
                    if replica.acknowledges() || !failed.contains(&replica.address) {
                        electable.insert(&replica.address);
                    }
                }
                u32::try_from(electable.len())
                    .unwrap_or(u32::MAX)
                    .max(*configured)
            }
        }
    }
}

/// Whether two `host:port` addresses name the same place: the Sentinels write an IPv6 host
/// in brackets, `INFO`'s replicas are read without (see [`attached_replicas`]).
fn same_address(a: &str, b: &str) -> bool {
    let bare = |s: &str| s.replace(['[', ']'], "");
    a == b || bare(a) == bare(b)
}

/// Seconds without an acknowledgement after which an attached replica that the Sentinels
/// flag down (or the cluster flags failed) is taken as gone. A replica answers every second
/// (`REPLCONF ACK`), so INFO's `lag` of a live one is 0 or 1, at worst 2 on a busy host.
const ACKNOWLEDGES_WITHIN_SECS: u64 = 2;

/// A replica attached to the master, as its `INFO replication` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Attached {
    /// `ip:port` as the master sees it, an IPv6 address unbracketed.
    pub(super) address: String,
    /// Seconds since its last acknowledgement (`lag`), when the master says.
    pub(super) lag_secs: Option<u64>,
}

impl Attached {
    /// Whether it still acknowledges the master's stream: one that does could answer a `WAIT`
    /// whatever the Sentinels or the cluster think of it, so it must be waited for; one that
    /// does not cannot answer one, so leaving it out costs nothing. Unknown counts as yes.
    pub(super) fn acknowledges(&self) -> bool {
        self.lag_secs
            .is_none_or(|lag| lag <= ACKNOWLEDGES_WITHIN_SECS)
    }
}

/// The replicas a master's `INFO replication` lists as `online` (lines
/// `slave<n>:ip=…,port=…,state=online,offset=…,lag=…`; the others are not streamed to yet
/// and cannot acknowledge), as `ip:port`.
fn attached_replicas(info: &str) -> Vec<Attached> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim_end().split_once(':')?;
            let index = name.strip_prefix("slave")?;
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            };
            if field("state")? != "online" {
                return None;
            }
            // As the cluster's map writes addresses: `ip:port`, an IPv6 one unbracketed.
            Some(Attached {
                address: format!("{}:{}", field("ip")?, field("port")?),
                lag_secs: field("lag").and_then(|l| l.parse().ok()),
            })
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values behind this lock; a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_wait_is_sent_only_when_the_first_cannot_tell() {
        // The map lists one replica, ROLE shows two: one acknowledgement is not enough yet.
        assert_eq!(after_first_wait(1, 1, 2), None);
        // Both had it already, or not even the listed one did: settled either way.
        assert_eq!(after_first_wait(1, 2, 2), Some((2, 2)));
        assert_eq!(after_first_wait(1, 0, 2), Some((0, 2)));
        // ROLE shows nothing the map does not list.
        assert_eq!(after_first_wait(2, 2, 2), Some((2, 2)));
        assert_eq!(after_first_wait(2, 1, 2), Some((1, 2)));
    }

    #[test]
    fn attached_replicas_are_read_from_a_masters_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:3\r\n\
                    min_slaves_good_slaves:2\r\n\
                    slave0:ip=127.0.0.1,port=7001,state=online,offset=100,lag=0\r\n\
                    slave1:ip=::1,port=7002,state=online,offset=90,lag=7\r\n\
                    slave2:ip=127.0.0.1,port=7003,state=wait_bgsave,offset=0,lag=0\r\n\
                    slave3:ip=127.0.0.1,port=7004,state=online,offset=100\r\n\
                    slave_read_repl_offset:100\r\nslave:ip=x,port=1,state=online\r\n\
                    master_repl_offset:100\r\n";
        let attached = attached_replicas(info);
        let at = |address: &str, lag_secs: Option<u64>| Attached {
            address: address.into(),
            lag_secs,
        };
        // Only those online: a replica still being sent its first copy cannot acknowledge.
        assert_eq!(
            attached,
            [
                at("127.0.0.1:7001", Some(0)),
                at("::1:7002", Some(7)),
                at("127.0.0.1:7004", None)
            ]
        );
        assert!(attached[0].acknowledges());
        assert!(!attached[1].acknowledges());
        assert!(attached[2].acknowledges(), "no lag given: taken as live");
        assert!(attached_replicas("role:master\r\nconnected_slaves:0\r\n").is_empty());
        assert!(attached_replicas("").is_empty());
    }

    /// Replicas attached and acknowledging (lag 0), from their addresses.
    fn live(addresses: &[&str]) -> Vec<Attached> {
        addresses
            .iter()
            .map(|a| Attached {
                address: a.to_string(),
                lag_secs: Some(0),
            })
            .collect()
    }

    /// Replicas attached that stopped acknowledging a while ago.
    fn silent(addresses: &[&str]) -> Vec<Attached> {
        addresses
            .iter()
            .map(|a| Attached {
                address: a.to_string(),
                lag_secs: Some(ACKNOWLEDGES_WITHIN_SECS + 1),
            })
            .collect()
    }

    #[test]
    fn a_cluster_write_waits_for_every_replica_that_could_be_elected() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let wait_for = WaitFor::Cluster {
            configured: 1,
            listed_online: s(&["r1:1", "r2:1"]),
            failed: s(&["r3:1"]),
        };
        // The map's two, however many are attached.
        assert_eq!(wait_for.asked(None), 2);
        assert_eq!(wait_for.asked(Some(&live(&["r1:1"]))), 2);
        // A replica the map has not placed here yet counts.
        assert_eq!(wait_for.asked(Some(&live(&["r1:1", "r2:1", "r4:1"]))), 3);
        // One it flags failed counts while it still acknowledges (the master reaches it, the
        // cluster's majority does not: it could stand in for one that can be elected), and
        // not once it stopped.
        assert_eq!(wait_for.asked(Some(&live(&["r1:1", "r3:1"]))), 3);
        assert_eq!(wait_for.asked(Some(&silent(&["r3:1"]))), 2);
        assert_eq!(wait_for.asked(Some(&silent(&["r4:1"]))), 3);
        // Never fewer than configured.
        let lonely = WaitFor::Cluster {
            configured: 1,
            listed_online: Vec::new(),
            failed: Vec::new(),
        };
        assert_eq!(lonely.asked(Some(&[])), 1);
        assert_eq!(WaitFor::Configured(2).asked(Some(&live(&["a:1"]))), 2);
    }

    #[test]
    fn a_sentinel_write_waits_for_every_replica_that_could_be_promoted() {
        let replica = |addresses: &[&str]| -> BTreeSet<String> {
            addresses.iter().map(|a| a.to_string()).collect()
        };
        // Mid-failover: the old master's replicas (the promoted one among them), and the
        // old master listed as the new one's replica.
        let listed = WaitFor::Sentinel {
            configured: 1,
            electable: vec![
                replica(&["new:1"]),
                replica(&["other:1", "other-nat:1"]),
                replica(&["old:1"]),
            ],
            down: replica(&["stopped:1"]),
        };
        // A link to the old master waits for the promoted replica too: it left, so no
        // write there is acknowledged.
        assert_eq!(listed.for_master("old:1").asked(None), 2);
        // A link to the new one does not wait for itself.
        assert_eq!(listed.for_master("new:1").asked(None), 2);
        assert_eq!(listed.for_master("other-nat:1").asked(None), 2);
        assert_eq!(listed.asked(None), 3);
        // Attached replicas the Sentinels do not list as promotable (priority 0, hidden,
        // not discovered yet) are counted too: any of them could answer `WAIT` in place of
        // one that could be promoted. One listed under another address is not counted twice.
        let old = listed.for_master("old:1");
        assert_eq!(old.asked(Some(&live(&["other:1", "priority-zero:1"]))), 3);
        assert_eq!(old.asked(Some(&live(&["other-nat:1"]))), 2);
        // A replica the Sentinels flag down that stopped acknowledging is not waited for,
        // though still attached (a stopped one stays attached until the master's
        // repl-timeout)...
        assert_eq!(old.asked(Some(&silent(&["stopped:1"]))), 2);
        // ...but one they flag down that still acknowledges is: the master reaches it where
        // they do not, and it could answer `WAIT` for a replica they could promote.
        assert_eq!(old.asked(Some(&live(&["stopped:1"]))), 3);
        // Silent and not flagged down: the Sentinels may yet promote it, so it counts.
        assert_eq!(old.asked(Some(&silent(&["unflagged:1"]))), 3);
        // An IPv6 replica: listed in brackets by the Sentinels, read without from INFO.
        let six = WaitFor::Sentinel {
            configured: 1,
            electable: vec![replica(&["[::1]:6380"])],
            down: replica(&["[::1]:6381"]),
        }
        .for_master("[::1]:6379");
        let mut attached = live(&["::1:6380"]);
        attached.extend(silent(&["::1:6381"]));
        assert_eq!(six.asked(Some(&attached)), 1);
        // None could be promoted: the configured floor still holds.
        let none = WaitFor::Sentinel {
            configured: 1,
            electable: Vec::new(),
            down: BTreeSet::new(),
        };
        assert_eq!(none.for_master("m:1").asked(None), 1);
    }
}
