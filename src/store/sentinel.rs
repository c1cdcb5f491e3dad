//! Asking Redis Sentinel where a shard's master is, and when to believe the answer.
//!
//! One way of asking, shared by the store, the test harness and the load test: the two
//! commands of [`master_query`] in one round trip, read by [`SentinelView::from_replies`].
//! The store asks every Sentinel of a shard at once and believes them only under the rules
//! of [`agreed_master`] (newest configuration wins; a master being failed over is refused);
//! a tool that only wants to know where the master is now uses [`ask`].
//!
//! [`watch_switch_master`] follows the `+switch-master` announcements that let the store
//! find a new master before its requests fail.
//!
//! With the master, each Sentinel is asked which replicas it lists for it
//! (`SENTINEL REPLICAS`): a replicated write waits for every one the Sentinels could promote
//! ([`ReplicaView::electable`], [`Agreed::electable`]; ARCHITECTURE.md, "Answers and retries").

use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncConnectionConfig, RedisConnectionInfo};

use super::connect::{tcp_info, ConnectError};

/// The commands that ask a Sentinel about `master_name`, for one round trip:
/// `get-master-addr-by-name` already names the promoted replica while a failover is still
/// reconfiguring the others; `MASTER` carries the flags, the epoch, and the master being
/// failed over. Their replies are read by [`SentinelView::from_replies`].
pub fn master_query(master_name: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master_name)
        .cmd("SENTINEL")
        .arg("MASTER")
        .arg(master_name);
    pipe
}

/// One Sentinel's view of `master_name` (at `sentinel`, `host:port`), within `timeout`.
pub async fn ask(
    sentinel: &str,
    master_name: &str,
    timeout: Duration,
    password: Option<&str>,
) -> Result<SentinelView, ConnectError> {
    ask_about(sentinel, master_name, timeout, password, false).await
}

/// [`ask`], and with `replicas` also `SENTINEL REPLICAS` in the same round trip. A refusal
/// of that command (a Sentinel older than 5.0, an ACL that does not allow it) leaves the
/// view's replicas unknown, not the master.
async fn ask_about(
    sentinel: &str,
    master_name: &str,
    timeout: Duration,
    password: Option<&str>,
    replicas: bool,
) -> Result<SentinelView, ConnectError> {
    let mut redis = RedisConnectionInfo::default();
    if let Some(password) = password {
        redis = redis.set_password(password);
    }
    let failed = |e| ConnectError::redis("ask Sentinel", sentinel, e);
    let asking = async {
        let client = redis::Client::open(tcp_info(sentinel, redis)?).map_err(failed)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(failed)?;
        let mut query = master_query(master_name);
        if replicas {
            query.cmd("SENTINEL").arg("REPLICAS").arg(master_name);
            query.ignore_errors();
        }
        let mut replies: Vec<redis::Value> = query.query_async(&mut conn).await.map_err(failed)?;
        let listed = if replicas { replies.pop() } else { None };
        let mut replies = replies.into_iter();
        let (Some(address), Some(details)) = (replies.next(), replies.next()) else {
            return Err(ConnectError::UnknownMaster);
        };
        let parsed = |e: redis::ParsingError| failed(redis::RedisError::from(e));
        let address: Option<Vec<String>> = redis::from_redis_value(address).map_err(parsed)?;
        let details: Vec<String> = redis::from_redis_value(details).map_err(parsed)?;
        let mut view = SentinelView::from_replies(address.as_deref(), &details)?;
        view.replicas = listed
            .and_then(|listed| redis::from_redis_value::<Vec<Vec<String>>>(listed).ok())
            .map(|listed| listed.iter().map(|r| ReplicaView::from_reply(r)).collect());
        Ok(view)
    };
    tokio::time::timeout(timeout, asking)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                step: "ask Sentinel",
                address: sentinel.to_string(),
            })
        })
}

/// Asks every Sentinel at once (with `replicas`, which replicas each lists too); those that
/// answer within `timeout` decide (see [`agreed_master`]).
pub(super) async fn ask_all(
    master_name: &str,
    sentinels: &[String],
    timeout: Duration,
    password: Option<&str>,
    replicas: bool,
) -> Result<Agreed, ConnectError> {
    let asked = sentinels.iter().map(|sentinel| async move {
        let view = ask_about(sentinel, master_name, timeout, password, replicas).await;
        (sentinel.clone(), view)
    });
    let answers = futures_util::future::join_all(asked).await;
    agreed_master(master_name, &answers)
}

/// Follows one Sentinel's `+switch-master` channel at a time, moving to the next Sentinel when
/// one fails, and calls `on_switch` with the new address of each announced move of
/// `master_name`, until `stopped` changes or its sender is dropped.
pub(super) async fn watch_switch_master(
    master_name: String,
    sentinels: Vec<String>,
    timeout: Duration,
    password: Option<String>,
    on_switch: impl Fn(&str),
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    let mut redis = RedisConnectionInfo::default();
    if let Some(password) = &password {
        redis = redis.set_password(password);
    }
    let mut index = 0usize;
    loop {
        let sentinel = &sentinels[index % sentinels.len()];
        let subscribed = async {
            let failed = |e| ConnectError::redis("subscribe to Sentinel", sentinel, e);
            let client = redis::Client::open(tcp_info(sentinel, redis.clone())?).map_err(failed)?;
            let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                .await
                .map_err(|_| ConnectError::Timeout {
                    step: "subscribe to Sentinel",
                    address: sentinel.clone(),
                })?
                .map_err(failed)?;
            pubsub.subscribe("+switch-master").await.map_err(failed)?;
            Ok::<_, ConnectError>(pubsub.into_on_message())
        };
        let mut messages = tokio::select! {
            subscribed = subscribed => match subscribed {
                Ok(messages) => Some(messages),
                Err(e) => {
                    tracing::debug!(%sentinel, error = %e, "cannot follow +switch-master");
                    None
                }
            },
            _ = stopped.changed() => return,
        };
        while let Some(stream) = messages.as_mut() {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = stopped.changed() => return,
            };
            let Some(message) = message else { break };
            // "<master name> <old ip> <old port> <new ip> <new port>"
            let payload: String = message.get_payload().unwrap_or_default();
            let words: Vec<&str> = payload.split_whitespace().collect();
            if let [name, _, _, ip, port] = words.as_slice() {
                if *name == master_name {
                    on_switch(&host_port(ip, port));
                }
            }
        }
        index += 1;
        // Before asking the next Sentinel, so that a dead one is not hammered.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What one Sentinel said about a master.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelView {
    /// The address `get-master-addr-by-name` gave: during a failover, the promoted replica
    /// once it answers as a master.
    pub address: String,
    /// The address of the master the Sentinel monitors (`SENTINEL MASTER`): until a failover
    /// ends, the one being failed over.
    pub monitored: String,
    /// The Sentinel's flags for the master (`s_down`, `o_down`, `failover_in_progress`, ...).
    pub flags: Vec<String>,
    /// The epoch of the Sentinel's configuration for the master; each failover raises it.
    pub config_epoch: u64,
    /// How long the master may be silent before this Sentinel deems it down.
    pub down_after_ms: Option<u64>,
    /// The replicas the Sentinel lists for the master it monitors (`SENTINEL REPLICAS`);
    /// `None` when not asked, or when the Sentinel refused the command.
    pub replicas: Option<Vec<ReplicaView>>,
}

/// What one Sentinel says of one replica of a master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// `host:port`.
    pub address: String,
    /// Its run id, once the Sentinel has read it (empty before): the same replica listed
    /// under two addresses (NAT, a host with several) is one replica.
    pub run_id: String,
    /// Its flags (`slave`, `s_down`, `o_down`, `disconnected`, `promoted`, ...).
    pub flags: Vec<String>,
    /// Whether its link to the master is up (`master-link-status ok`); `None` if not said.
    pub link_ok: Option<bool>,
    /// Its `replica-priority` (0: never promoted); `None` if not said.
    pub priority: Option<u64>,
}

impl ReplicaView {
    /// Reads one entry of `SENTINEL REPLICAS` (a flat list of field names and values).
    /// Missing or malformed fields fall back to counting the replica: waiting for a
    /// replica that cannot be promoted costs availability, not waiting for one that can
    /// costs acknowledged writes.
    pub fn from_reply(fields: &[String]) -> ReplicaView {
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|pair| pair[0] == name)
                .and_then(|pair| pair.get(1))
        };
        let address = match (field("ip"), field("port")) {
            (Some(host), Some(port)) => host_port(host, port),
            _ => field("name").cloned().unwrap_or_default(),
        };
        ReplicaView {
            address,
            run_id: field("runid").cloned().unwrap_or_default(),
            flags: field("flags")
                .map(|flags| flags.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            link_ok: field("master-link-status").map(|status| status == "ok"),
            priority: field("slave-priority")
                .or_else(|| field("replica-priority"))
                .and_then(|p| p.parse().ok()),
        }
    }

    /// Whether the Sentinels could promote it, so a replicated write must reach it: not
    /// flagged down (`s_down`, `o_down`), a priority other than 0, and its link to the master
    /// up — or flagged `promoted`, the replica a failover leader is promoting. A replica
    /// flagged `disconnected` still counts: Sentinel's own link to it drops for a moment
    /// while it is promoted (seen in a `SENTINEL FAILOVER`), and a dead one is flagged
    /// `s_down` after `down-after`. A replica whose link to the master is down (a full sync,
    /// or the old master just turned into a replica) does not: waiting for it would stop the
    /// master's writes for the whole sync.
    pub fn electable(&self) -> bool {
        let flagged = |name: &str| self.flags.iter().any(|f| f == name);
        if flagged("s_down") || flagged("o_down") || self.priority == Some(0) {
            return false;
        }
        self.link_ok != Some(false) || flagged("promoted")
    }
}

impl SentinelView {
    /// Reads the replies to `get-master-addr-by-name` and `SENTINEL MASTER` (a flat list of
    /// field names and values). Fields that are missing or malformed fall back to what is
    /// safest: no flags, epoch 0 (so any Sentinel with a real epoch outranks it), no
    /// `down-after`, and the named address as the monitored one (so its flags still count).
    pub fn from_replies(
        address: Option<&[String]>,
        details: &[String],
    ) -> Result<SentinelView, ConnectError> {
        let address = match address {
            Some([host, port]) => host_port(host, port),
            _ => return Err(ConnectError::UnknownMaster),
        };
        let field = |name: &str| {
            details
                .chunks(2)
                .find(|pair| pair[0] == name)
                .and_then(|pair| pair.get(1))
        };
        let flags = field("flags")
            .map(|flags| flags.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let config_epoch = field("config-epoch")
            .and_then(|epoch| epoch.parse().ok())
            .unwrap_or(0);
        let down_after_ms = field("down-after-milliseconds").and_then(|ms| ms.parse().ok());
        let monitored = match (field("ip"), field("port")) {
            (Some(host), Some(port)) => host_port(host, port),
            _ => address.clone(),
        };
        Ok(SentinelView {
            address,
            monitored,
            flags,
            config_epoch,
            down_after_ms,
            replicas: None,
        })
    }
}

/// The master the Sentinels agreed on.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Agreed {
    pub(super) address: String,
    /// The shortest `down-after-milliseconds` among the Sentinels that agreed.
    pub(super) down_after_ms: Option<u64>,
    /// Every replica that one of the Sentinels that agreed lists as one it could promote
    /// ([`ReplicaView::electable`]), each once as the addresses it is listed under (entries
    /// sharing an address or a run id are one replica: [`distinct_replicas`]), the master
    /// each Sentinel monitors left out; `None` when none of them said (not asked, or
    /// refused). A write acknowledged by fewer may be thrown away by a failover that
    /// promotes one of the others while the master still serves.
    pub(super) electable: Option<Vec<std::collections::BTreeSet<String>>>,
}

/// Whether a reply may take as long as the Sentinels' `down-after`, after which the master
/// that sends it may have been replaced.
pub(super) fn replies_outlast_down_after(response_timeout: Duration, down_after_ms: u64) -> bool {
    response_timeout >= Duration::from_millis(down_after_ms)
}

/// The master the Sentinels name, if it is safe to write to.
///
/// Asking one Sentinel is not enough to keep acknowledged writes. A master that was frozen
/// past `down-after` and wakes up after a replica was promoted still believes it is the
/// master, and the other replicas are still attached to it until the failover leader
/// reconfigures them: it takes writes, and `WAIT` counts those replicas' acknowledgements. The
/// Sentinels that did not lead the failover name the old master until the leader's hello
/// reaches them (up to two seconds), and `ROLE` confirms it, so a client that believes them
/// writes into a history the failover is about to throw away. The failover leader knows
/// better throughout: it flags the master `failover_in_progress` from the moment it starts,
/// and once the promoted replica answers as a master it names that replica under a higher
/// configuration epoch than the others.
///
/// So the newest configuration wins, as it does between the Sentinels themselves: of the
/// Sentinels that answered, those at the highest configuration epoch must agree on the
/// address, and it is refused while one of them flags a failover of that very address
/// (`failover_in_progress` or `o_down` on the master it names). The promoted replica, named
/// while the leader still moves the other replicas, is the failover's outcome and is used at
/// once. Sentinels that did not answer do not count, so a shard whose Sentinels are mostly
/// down is still served by the one left (it cannot fail over without a majority anyway). The
/// caller retries a refusal like any UNAVAILABLE shard.
fn agreed_master(
    master_name: &str,
    answers: &[(String, Result<SentinelView, ConnectError>)],
) -> Result<Agreed, ConnectError> {
    let views: Vec<(&String, &SentinelView)> = answers
        .iter()
        .filter_map(|(sentinel, view)| view.as_ref().ok().map(|view| (sentinel, view)))
        .collect();
    let Some(newest) = views.iter().map(|(_, view)| view.config_epoch).max() else {
        return Err(ConnectError::NoSentinelAnswered {
            master: master_name.to_string(),
            answers: answers
                .iter()
                .filter_map(|(sentinel, view)| {
                    view.as_ref().err().map(|e| (sentinel.clone(), e.clone()))
                })
                .collect(),
        });
    };
    // Only the newest configuration counts: a Sentinel still at the old epoch has not heard
    // that the failover it flags (or the down master it sees) is over.
    let current: Vec<&(&String, &SentinelView)> = views
        .iter()
        .filter(|(_, view)| view.config_epoch == newest)
        .collect();
    if let Some((sentinel, view)) = current.iter().find(|(_, view)| {
        view.address == view.monitored
            && view
                .flags
                .iter()
                .any(|flag| flag == "failover_in_progress" || flag == "o_down")
    }) {
        return Err(ConnectError::FailingOver {
            sentinel: sentinel.to_string(),
            master: master_name.to_string(),
            flags: view.flags.join(","),
        });
    }
    let address = &current[0].1.address;
    if current.iter().any(|(_, view)| &view.address != address) {
        return Err(ConnectError::Disagree {
            master: master_name.to_string(),
            epoch: newest,
            said: current
                .iter()
                .map(|(sentinel, view)| format!("{sentinel} says {}", view.address))
                .collect(),
        });
    }
    Ok(Agreed {
        address: address.clone(),
        down_after_ms: current
            .iter()
            .filter_map(|(_, view)| view.down_after_ms)
            .min(),
        // Every Sentinel's list counts: one that has not yet seen a replica attach, or that
        // flags it down sooner, must not shrink what the others would promote. Each list
        // belongs to the master that Sentinel monitors, not to the address agreed on: while
        // the failover leader moves the other replicas it names the promoted one, and still
        // lists it among the old master's replicas, where writes must still wait for it.
        electable: current
            .iter()
            .any(|(_, view)| view.replicas.is_some())
            .then(|| {
                distinct_replicas(current.iter().flat_map(|(_, view)| {
                    view.replicas
                        .iter()
                        .flatten()
                        .filter(|r| r.electable() && r.address != view.monitored)
                }))
            }),
    })
}

/// The replicas among `listed` (entries of several Sentinels' lists), each once, as the
/// addresses it is listed under: two entries are one replica when they share an address
/// (Sentinels that have read its run id and one that has not yet, or one restarted with a
/// new run id) or a run id (one replica under two addresses: NAT, a host with several).
fn distinct_replicas<'a>(
    listed: impl Iterator<Item = &'a ReplicaView>,
) -> Vec<std::collections::BTreeSet<String>> {
    use std::collections::BTreeSet;
    let mut groups: Vec<(BTreeSet<&str>, BTreeSet<&str>)> = Vec::new();
    for replica in listed {
        let mut group = (BTreeSet::from([replica.address.as_str()]), BTreeSet::new());
        if !replica.run_id.is_empty() {
            group.1.insert(replica.run_id.as_str());
        }
        // Every group this entry joins becomes one with it.
        let (joined, apart): (Vec<_>, Vec<_>) = groups.into_iter().partition(|(addresses, ids)| {
            !addresses.is_disjoint(&group.0) || !ids.is_disjoint(&group.1)
        });
        for (addresses, ids) in joined {
            group.0.extend(addresses);
            group.1.extend(ids);
        }
        groups = apart;
        groups.push(group);
    }
    let mut replicas: Vec<BTreeSet<String>> = groups
        .into_iter()
        .map(|(addresses, _)| addresses.into_iter().map(str::to_string).collect())
        .collect();
    replicas.sort();
    replicas
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each counted replica by its first address.
    fn firsts(electable: Option<Vec<std::collections::BTreeSet<String>>>) -> Vec<String> {
        electable
            .into_iter()
            .flatten()
            .filter_map(|r| r.into_iter().next())
            .collect()
    }

    fn view(address: &str, flags: &str) -> Result<SentinelView, ConnectError> {
        at_epoch(address, flags, 1)
    }

    fn at_epoch(
        address: &str,
        flags: &str,
        config_epoch: u64,
    ) -> Result<SentinelView, ConnectError> {
        Ok(SentinelView {
            address: address.to_string(),
            monitored: address.to_string(),
            flags: flags.split(',').map(str::to_string).collect(),
            config_epoch,
            down_after_ms: Some(2000),
            replicas: None,
        })
    }

    /// The failover leader once the promoted replica answers as a master.
    fn reconfiguring(
        promoted: &str,
        old: &str,
        config_epoch: u64,
    ) -> Result<SentinelView, ConnectError> {
        Ok(SentinelView {
            address: promoted.to_string(),
            monitored: old.to_string(),
            flags: vec!["master".into(), "failover_in_progress".into()],
            config_epoch,
            down_after_ms: Some(2000),
            replicas: None,
        })
    }

    fn refused() -> ConnectError {
        ConnectError::redis(
            "ask Sentinel",
            "s0:26379",
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        )
    }

    fn agreed(address: &str) -> Agreed {
        Agreed {
            address: address.to_string(),
            down_after_ms: Some(2000),
            electable: None,
        }
    }

    fn answers(
        views: Vec<Result<SentinelView, ConnectError>>,
    ) -> Vec<(String, Result<SentinelView, ConnectError>)> {
        views
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("s{i}:26379"), v))
            .collect()
    }

    #[test]
    fn sentinels_that_agree_name_the_master() {
        let all = answers(vec![
            view("10.0.0.1:6379", "master"),
            view("10.0.0.1:6379", "master"),
            view("10.0.0.1:6379", "master,s_down"),
        ]);
        assert_eq!(agreed_master("m", &all).ok(), Some(agreed("10.0.0.1:6379")));
    }

    #[test]
    fn sentinels_that_do_not_answer_do_not_count() {
        let some = answers(vec![
            Err(refused()),
            view("10.0.0.1:6379", "master"),
            Err(ConnectError::Timeout {
                step: "ask Sentinel",
                address: "s2:26379".into(),
            }),
        ]);
        assert_eq!(
            agreed_master("m", &some).ok(),
            Some(agreed("10.0.0.1:6379"))
        );
    }

    #[test]
    fn no_answer_at_all_is_an_error_naming_each_sentinel() {
        let none = answers(vec![Err(refused()), Err(ConnectError::UnknownMaster)]);
        let error = agreed_master("m", &none)
            .expect_err("nobody answered")
            .to_string();
        assert!(
            error.contains("s0:26379: ask Sentinel s0:26379 failed"),
            "{error}"
        );
        assert!(error.contains("s1:26379: unknown master name"), "{error}");
    }

    #[test]
    fn a_failover_of_the_named_master_refuses_it() {
        // The leader, before it saw the promoted replica answer as a master: everyone still
        // names the old one.
        let waiting_for_promotion = answers(vec![
            view("10.0.0.1:6379", "master"),
            view("10.0.0.1:6379", "master,s_down,o_down,failover_in_progress"),
            view("10.0.0.1:6379", "master"),
        ]);
        let error = agreed_master("m", &waiting_for_promotion)
            .expect_err("a failover is running")
            .to_string();
        assert!(error.contains("s1:26379"), "{error}");
        assert!(error.contains("failover_in_progress"), "{error}");
        // An objectively down master is being replaced even before a leader is elected.
        let down = answers(vec![view("10.0.0.1:6379", "master,s_down,o_down")]);
        assert!(agreed_master("m", &down).is_err());
    }

    #[test]
    fn the_newest_configuration_wins_once_the_failover_is_over() {
        // The leader finished the failover; the others have not had its hello yet.
        let catching_up = answers(vec![
            at_epoch("10.0.0.1:6379", "master", 3),
            at_epoch("10.0.0.2:6379", "master", 4),
            at_epoch("10.0.0.1:6379", "master", 3),
        ]);
        assert_eq!(
            agreed_master("m", &catching_up).ok(),
            Some(agreed("10.0.0.2:6379"))
        );
        // Nor do their flags for the master they still believe in count.
        let dead_old_master = answers(vec![
            at_epoch(
                "10.0.0.1:6379",
                "master,s_down,o_down,failover_in_progress",
                3,
            ),
            at_epoch("10.0.0.2:6379", "master", 4),
        ]);
        assert_eq!(
            agreed_master("m", &dead_old_master).ok(),
            Some(agreed("10.0.0.2:6379"))
        );
    }

    #[test]
    fn the_promoted_replica_is_used_while_the_leader_moves_the_others() {
        let promoted = answers(vec![
            at_epoch("10.0.0.1:6379", "master,s_down,o_down", 3),
            reconfiguring("10.0.0.2:6379", "10.0.0.1:6379", 4),
            at_epoch("10.0.0.1:6379", "master", 3),
        ]);
        assert_eq!(
            agreed_master("m", &promoted).ok(),
            Some(agreed("10.0.0.2:6379"))
        );
    }

    #[test]
    fn disagreement_at_the_same_epoch_names_no_master() {
        let split = answers(vec![
            at_epoch("10.0.0.1:6379", "master", 4),
            at_epoch("10.0.0.2:6379", "master", 4),
            at_epoch("10.0.0.3:6379", "master", 2),
        ]);
        let error = agreed_master("m", &split)
            .expect_err("they disagree")
            .to_string();
        assert!(error.contains("s0:26379 says 10.0.0.1:6379"), "{error}");
        assert!(error.contains("s1:26379 says 10.0.0.2:6379"), "{error}");
        assert!(
            !error.contains("s2:26379"),
            "a stale Sentinel is not quoted: {error}"
        );
    }

    #[test]
    fn replies_that_can_outlast_down_after_are_flagged() {
        // The defaults (1000 + 500 ms) against the shipped Sentinel profile (2000 ms).
        assert!(!replies_outlast_down_after(
            Duration::from_millis(1500),
            2000
        ));
        // The old default command timeout (2000 + 500 ms).
        assert!(replies_outlast_down_after(
            Duration::from_millis(2500),
            2000
        ));
        assert!(replies_outlast_down_after(
            Duration::from_millis(2000),
            2000
        ));
    }

    #[test]
    fn the_shortest_down_after_of_the_agreeing_sentinels_is_reported() {
        let mut quick = at_epoch("10.0.0.1:6379", "master", 1);
        if let Ok(view) = quick.as_mut() {
            view.down_after_ms = Some(1500);
        }
        let all = answers(vec![at_epoch("10.0.0.1:6379", "master", 1), quick]);
        let agreed = agreed_master("m", &all).expect("they agree");
        assert_eq!(agreed.down_after_ms, Some(1500));
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_sentinel_reply_is_read_field_by_field() {
        let view = SentinelView::from_replies(
            Some(&strings(&["10.0.0.2", "6379"])),
            &strings(&[
                "name",
                "m",
                "ip",
                "10.0.0.1",
                "port",
                "6379",
                "flags",
                "master,o_down",
                "config-epoch",
                "7",
                "down-after-milliseconds",
                "2000",
            ]),
        );
        assert_eq!(
            view.ok(),
            Some(SentinelView {
                address: "10.0.0.2:6379".into(),
                monitored: "10.0.0.1:6379".into(),
                flags: strings(&["master", "o_down"]),
                config_epoch: 7,
                down_after_ms: Some(2000),
                replicas: None,
            })
        );
        let ipv6 = SentinelView::from_replies(Some(&strings(&["::1", "6379"])), &[]);
        assert_eq!(ipv6.ok().map(|v| v.address), Some("[::1]:6379".to_string()));
    }

    #[test]
    fn malformed_sentinel_replies_fall_back_to_the_safe_side() {
        // No address, or one of the wrong shape: the Sentinel does not count.
        assert!(matches!(
            SentinelView::from_replies(None, &[]),
            Err(ConnectError::UnknownMaster)
        ));
        assert!(SentinelView::from_replies(Some(&strings(&["10.0.0.1"])), &[]).is_err());
        assert!(SentinelView::from_replies(Some(&strings(&["a", "1", "b"])), &[]).is_err());
        // A details list with an odd length, bad numbers and no ip/port.
        let view = SentinelView::from_replies(
            Some(&strings(&["10.0.0.1", "6379"])),
            &strings(&[
                "config-epoch",
                "-3",
                "down-after-milliseconds",
                "soon",
                "flags",
                "failover_in_progress",
                "port",
            ]),
        )
        .expect("the address is enough");
        assert_eq!(
            view.config_epoch, 0,
            "a bad epoch never outranks a real one"
        );
        assert_eq!(view.down_after_ms, None);
        assert_eq!(
            view.monitored, view.address,
            "so its failover flag still refuses it"
        );
        let refused = answers(vec![Ok(view)]);
        assert!(agreed_master("m", &refused).is_err());
        // A huge list is read without trouble; only the first occurrence of a field counts.
        let mut long = strings(&["flags", "master"]);
        long.extend((0..100_000).map(|i| format!("junk-{i}")));
        long.extend(strings(&["flags", "o_down"]));
        let view = SentinelView::from_replies(Some(&strings(&["h", "1"])), &long)
            .expect("the address is enough");
        assert_eq!(view.flags, strings(&["master"]));
    }

    fn replica(address: &str, flags: &str, link: &str, priority: &str) -> ReplicaView {
        let (ip, port) = address.rsplit_once(':').expect("host:port");
        ReplicaView::from_reply(&strings(&[
            "name",
            address,
            "ip",
            ip,
            "port",
            port,
            "flags",
            flags,
            "master-link-status",
            link,
            "slave-priority",
            priority,
        ]))
    }

    #[test]
    fn a_replica_is_electable_unless_down_unpromotable_or_cut_from_its_master() {
        assert!(replica("10.0.0.2:6379", "slave", "ok", "100").electable());
        // Sentinel's own link to it drops for a moment while a failover promotes it.
        assert!(replica("10.0.0.2:6379", "slave,disconnected", "ok", "100").electable());
        assert!(replica("10.0.0.2:6379", "slave,disconnected,promoted", "ok", "100").electable());
        assert!(replica("10.0.0.2:6379", "slave,promoted", "err", "100").electable());
        assert!(!replica("10.0.0.2:6379", "slave,s_down", "ok", "100").electable());
        assert!(!replica("10.0.0.2:6379", "slave,s_down,o_down", "ok", "100").electable());
        assert!(!replica("10.0.0.2:6379", "slave", "ok", "0").electable());
        // A full sync (the old master turned into a replica after a failover).
        assert!(!replica("10.0.0.1:6379", "slave", "err", "100").electable());
    }

    #[test]
    fn a_malformed_replica_entry_is_waited_for() {
        let bare = ReplicaView::from_reply(&strings(&["name", "10.0.0.2:6379"]));
        assert_eq!(bare.address, "10.0.0.2:6379");
        assert!(bare.electable(), "nothing says it cannot be promoted");
        let odd = ReplicaView::from_reply(&strings(&[
            "ip",
            "::1",
            "port",
            "6380",
            "slave-priority",
            "high",
            "master-link-status",
        ]));
        assert_eq!(odd.address, "[::1]:6380");
        assert_eq!(odd.priority, None);
        assert!(odd.electable());
    }

    #[test]
    fn every_replica_an_agreeing_sentinel_could_promote_is_counted() {
        let with = |view: Result<SentinelView, ConnectError>, replicas: Vec<ReplicaView>| {
            view.map(|mut v| {
                v.replicas = Some(replicas);
                v
            })
        };
        let all = answers(vec![
            // The leader of a manual failover: the promoted replica and the other.
            with(
                view("10.0.0.1:6379", "master"),
                vec![
                    replica("10.0.0.2:6379", "slave,promoted", "ok", "100"),
                    replica("10.0.0.3:6379", "slave", "ok", "100"),
                ],
            ),
            // Another Sentinel, whose link to the promoted replica dropped for a moment,
            // and which has not seen a third replica attach yet.
            with(
                view("10.0.0.1:6379", "master"),
                vec![replica("10.0.0.2:6379", "slave,disconnected", "ok", "100")],
            ),
            // One that flags a fourth down, and lists the master among the replicas (the
            // old master turned replica, after a failover the others have not heard of).
            with(
                view("10.0.0.1:6379", "master"),
                vec![
                    replica("10.0.0.4:6379", "slave,s_down", "ok", "100"),
                    replica("10.0.0.1:6379", "slave", "ok", "100"),
                ],
            ),
        ]);
        let agreed = agreed_master("m", &all).expect("they agree");
        assert_eq!(
            firsts(agreed.electable),
            strings(&["10.0.0.2:6379", "10.0.0.3:6379"])
        );
        // A Sentinel at an older epoch does not count, its replicas neither.
        let stale = answers(vec![
            with(
                at_epoch("10.0.0.1:6379", "master", 3),
                vec![replica("10.0.0.5:6379", "slave", "ok", "100")],
            ),
            with(
                at_epoch("10.0.0.2:6379", "master", 4),
                vec![replica("10.0.0.3:6379", "slave", "ok", "100")],
            ),
        ]);
        let agreed = agreed_master("m", &stale).expect("the newest wins");
        assert_eq!(firsts(agreed.electable), strings(&["10.0.0.3:6379"]));
    }

    #[test]
    fn the_promoted_replica_is_waited_for_while_the_leader_moves_the_others() {
        // The leader names the promoted replica at the new epoch and still lists it among
        // the old master's replicas: links still on the old master must wait for it, or the
        // other replica alone acknowledges writes the failover throws away.
        let leader = reconfiguring("10.0.0.2:6379", "10.0.0.1:6379", 4).map(|mut v| {
            v.replicas = Some(vec![
                replica("10.0.0.2:6379", "slave,promoted", "ok", "100"),
                replica("10.0.0.3:6379", "slave", "ok", "100"),
            ]);
            v
        });
        let agreed = agreed_master("m", &answers(vec![leader])).expect("the promoted one");
        assert_eq!(agreed.address, "10.0.0.2:6379");
        assert_eq!(agreed.electable.map(|e| e.len()), Some(2));
    }

    #[test]
    fn a_replica_listed_under_two_addresses_is_waited_for_once() {
        let with_run_id = |address: &str, run_id: &str| {
            let mut r = replica(address, "slave", "ok", "100");
            r.run_id = run_id.to_string();
            r
        };
        let listed = view("10.0.0.1:6379", "master").map(|mut v| {
            v.replicas = Some(vec![
                with_run_id("10.0.0.2:6379", "r2"),
                with_run_id("192.168.0.2:6379", "r2"),
                with_run_id("10.0.0.3:6379", "r3"),
            ]);
            v
        });
        let agreed = agreed_master("m", &answers(vec![listed])).expect("agreed");
        assert_eq!(agreed.electable.map(|e| e.len()), Some(2));
        // One Sentinel has read a replica's run id, another not yet (or read the one it had
        // before a restart): the same address is the same replica.
        let fresh = view("10.0.0.1:6379", "master").map(|mut v| {
            v.replicas = Some(vec![
                with_run_id("10.0.0.2:6379", "r2"),
                with_run_id("10.0.0.3:6379", "r3-before-restart"),
            ]);
            v
        });
        let behind = view("10.0.0.1:6379", "master").map(|mut v| {
            v.replicas = Some(vec![
                with_run_id("10.0.0.2:6379", ""),
                with_run_id("10.0.0.3:6379", "r3"),
                with_run_id("192.168.0.3:6379", "r3"),
            ]);
            v
        });
        let agreed = agreed_master("m", &answers(vec![fresh, behind])).expect("agreed");
        assert_eq!(
            firsts(agreed.electable),
            strings(&["10.0.0.2:6379", "10.0.0.3:6379"])
        );
    }

    #[test]
    fn sentinels_that_list_no_replicas_leave_the_count_unknown() {
        // Not asked, or refused: nothing is known, so the last count is kept.
        let silent = answers(vec![view("10.0.0.1:6379", "master")]);
        assert_eq!(agreed_master("m", &silent).expect("agreed").electable, None);
        // One that listed them is enough; the silent one adds nothing.
        let one = answers(vec![
            view("10.0.0.1:6379", "master"),
            view("10.0.0.1:6379", "master").map(|mut v| {
                v.replicas = Some(vec![replica("10.0.0.2:6379", "slave", "ok", "100")]);
                v
            }),
        ]);
        assert_eq!(
            agreed_master("m", &one)
                .expect("agreed")
                .electable
                .map(|e| e.len()),
            Some(1)
        );
        // Listed, and none could be promoted: known, and zero.
        let none = answers(vec![view("10.0.0.1:6379", "master").map(|mut v| {
            v.replicas = Some(vec![replica("10.0.0.2:6379", "slave,s_down", "ok", "100")]);
            v
        })]);
        assert_eq!(
            agreed_master("m", &none)
                .expect("agreed")
                .electable
                .map(|e| e.len()),
            Some(0)
        );
    }
}
