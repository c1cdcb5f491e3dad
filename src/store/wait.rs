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
    /// For a Redis Cluster's shard or a Sentinel shard, `ROLE` (which replicas are attached
    /// now) and a `WAIT` for the replicas the map (or the Sentinels) list go out in one
    /// pipeline on that connection: one round trip. Only when the master has a replica
    /// attached that they do not list (one not discovered yet, one they cannot promote or
    /// flag down: any replica may answer `WAIT`, so each attached one must be counted for the
    /// listed ones to be covered) is a second `WAIT`, for all of them, sent on the same
    /// connection. It covers at least the same writes (`WAIT` waits for the connection's
    /// latest write offset, which only grows), so the answer is the same as a `ROLE`, then one
    /// `WAIT` for all — a round trip sooner.
    async fn round(&self) -> Acknowledged {
        let mut conn = self.conn.clone();
        let wait_for = lock(&self.wait_for).for_master(&self.master);
        let listed = wait_for.asked(None);
        if let WaitFor::Configured(_) = wait_for {
            return self.send_wait(&mut conn, listed, self.timeout_ms).await;
        }
        let sent = tokio::time::Instant::now();
        let (role, acked): (redis::Value, i64) = redis::pipe()
            .cmd("ROLE")
            .cmd("WAIT")
            .arg(listed)
            .arg(self.timeout_ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| ConnectError::redis("ROLE and WAIT on", "the link", e))?;
        let asked = wait_for.asked(Some(&attached_replicas(&role)));
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
    },
    /// [`WaitFor::Sentinel`] as one link to a master sees it ([`WaitFor::for_master`]): the
    /// other replicas that could be promoted, and every replica attached to the master that
    /// is none of them. `WAIT n` counts any `n` replicas, so one that cannot be promoted, that
    /// the Sentinels do not list, or that they flag down though the master still reaches it
    /// (a partition that is not transitive), could otherwise stand in for one that can. A
    /// stopped replica is counted until the master drops it (`repl-timeout`, 5 s in the
    /// shipped safe profile).
    Promotable {
        /// `redis.replicas_to_wait`.
        configured: u32,
        /// The replicas that could be promoted, each as the addresses it is listed under.
        others: Vec<BTreeSet<String>>,
    },
    /// A Redis Cluster's shard: every replica that could be elected — those the map lists
    /// online for the master — and every other replica attached to it now (the map may lag:
    /// a replica that moved to this master, one back from a failure; and one the map flags
    /// failed while the master still reaches it would otherwise stand in for one that can be
    /// elected); and at least `configured`. The cluster's election prefers the most advanced
    /// replica but does not guarantee it.
    Cluster {
        /// `redis.replicas_to_wait`.
        configured: u32,
        /// The master's replicas the map lists as online, `host:port`.
        listed_online: Vec<String>,
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
            } => WaitFor::Promotable {
                configured: *configured,
                others: electable
                    .iter()
                    .filter(|r| !r.contains(master))
                    .cloned()
                    .collect(),
            },
            other => other.clone(),
        }
    }

    /// How many replicas to ask `WAIT` for, given the replicas attached now (`host:port`;
    /// `None` when not asked); a Sentinel shard's with no master left out (see
    /// [`WaitFor::for_master`]).
    pub(super) fn asked(&self, attached: Option<&[String]>) -> u32 {
        match self {
            WaitFor::Configured(n) => *n,
            WaitFor::Sentinel {
                configured,
                electable,
            } => u32::try_from(electable.len())
                .unwrap_or(u32::MAX)
                .max(*configured),
            WaitFor::Promotable { configured, others } => {
                let promotable =
                    |a: &str| others.iter().any(|r| r.iter().any(|o| same_address(o, a)));
                let unlisted = attached
                    .unwrap_or_default()
                    .iter()
                    .filter(|a| !promotable(a))
                    .count();
                u32::try_from(others.len() + unlisted)
                    .unwrap_or(u32::MAX)
                    .max(*configured)
            }
            WaitFor::Cluster {
                configured,
                listed_online,
            } => {
                let mut electable: BTreeSet<&str> =
                    listed_online.iter().map(String::as_str).collect();
                electable.extend(attached.unwrap_or_default().iter().map(String::as_str));
                u32::try_from(electable.len())
                    .unwrap_or(u32::MAX)
                    .max(*configured)
            }
        }
    }
}

/// Whether two `host:port` addresses name the same place: the Sentinels write an IPv6 host
/// in brackets, `ROLE`'s replicas are read without (see [`attached_replicas`]).
fn same_address(a: &str, b: &str) -> bool {
    let bare = |s: &str| s.replace(['[', ']'], "");
    a == b || bare(a) == bare(b)
}

/// The replicas a master's `ROLE` reply lists (`master`, offset, then `[ip, port, offset]`
/// per replica, only those streamed to: a replica still syncing cannot acknowledge), as
/// `ip:port`.
fn attached_replicas(role: &redis::Value) -> Vec<String> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let redis::Value::Array(items) = role else {
        return Vec::new();
    };
    let Some(redis::Value::Array(replicas)) = items.get(2) else {
        return Vec::new();
    };
    replicas
        .iter()
        .filter_map(|r| match r {
            redis::Value::Array(fields) => {
                let host = text(fields.first()?)?;
                let port = text(fields.get(1)?)?;
                // As the cluster's map writes addresses: `ip:port`, an IPv6 one unbracketed.
                Some(format!("{host}:{port}"))
            }
            _ => None,
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
    use redis::Value;

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
    fn attached_replicas_are_counted_from_a_masters_role() {
        let replica = |port: &str| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::BulkString(port.as_bytes().to_vec()),
                Value::BulkString(b"100".to_vec()),
            ])
        };
        let role = Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(100),
            Value::Array(vec![replica("7001"), replica("7002")]),
        ]);
        assert_eq!(
            attached_replicas(&role),
            ["127.0.0.1:7001", "127.0.0.1:7002"]
        );
        let alone = Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(0),
            Value::Array(vec![]),
        ]);
        assert!(attached_replicas(&alone).is_empty());
        assert!(attached_replicas(&Value::Nil).is_empty());
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn a_cluster_write_waits_for_every_replica_that_could_be_elected() {
        let wait_for = WaitFor::Cluster {
            configured: 1,
            listed_online: strings(&["r1:1", "r2:1"]),
        };
        // The map's two, however many are attached.
        assert_eq!(wait_for.asked(None), 2);
        assert_eq!(wait_for.asked(Some(&strings(&["r1:1"]))), 2);
        // A replica the map has not placed here yet counts, and so does one it flags failed
        // (the master reaches it where the cluster's majority does not: it could stand in
        // for one that can be elected).
        assert_eq!(wait_for.asked(Some(&strings(&["r1:1", "r2:1", "r4:1"]))), 3);
        assert_eq!(wait_for.asked(Some(&strings(&["r1:1", "r3:1"]))), 3);
        // Never fewer than configured.
        let lonely = WaitFor::Cluster {
            configured: 1,
            listed_online: Vec::new(),
        };
        assert_eq!(lonely.asked(Some(&[])), 1);
        assert_eq!(WaitFor::Configured(2).asked(Some(&strings(&["a:1"]))), 2);
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
        assert_eq!(
            old.asked(Some(&strings(&["other:1", "priority-zero:1"]))),
            3
        );
        assert_eq!(old.asked(Some(&strings(&["other-nat:1"]))), 2);
        // One the Sentinels flag down is waited for while the master still has it attached:
        // the master may reach it where they do not, and it could answer `WAIT` for a
        // replica they could promote.
        assert_eq!(old.asked(Some(&strings(&["flagged-down:1"]))), 3);
        // An IPv6 replica: listed in brackets by the Sentinels, read without from ROLE.
        let six = WaitFor::Sentinel {
            configured: 1,
            electable: vec![replica(&["[::1]:6380"])],
        }
        .for_master("[::1]:6379");
        assert_eq!(six.asked(Some(&strings(&["::1:6380"]))), 1);
        assert_eq!(six.asked(Some(&strings(&["::1:6380", "::1:6381"]))), 2);
        // None could be promoted: the configured floor still holds.
        let none = WaitFor::Sentinel {
            configured: 1,
            electable: Vec::new(),
        };
        assert_eq!(none.for_master("m:1").asked(None), 1);
    }
}
