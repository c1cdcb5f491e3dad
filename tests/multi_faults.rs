//! Faults in the middle of multi-player transactions (RELIABILITY.md scenario 8).
//!
//! A coordinating gateway killed mid-trade, at every step: the
//! gateway binary, built with failpoints, stops itself (abort) exactly after the named step of
//! a multi-player transaction. Afterwards the trade is applied on every participant or on none,
//! the currency is conserved, no intent is left once the lease has passed and the sweep ran,
//! and the client's retry with the same key settles the outcome without applying it twice.
//!
//! A participant's master killed or paused mid-trade (the taker's after the prepare and after
//! the apply, the primary's after the decide), with Sentinels (or a cluster's election)
//! promoting a replica: in the safe profile nothing is applied on one side only and the
//! currency is conserved; the naive profile's damage is reported.
//!
//! Faults that strike *before* replication caught up (RELIABILITY.md scenario 15), each on
//! Sentinel shards and on a Redis Cluster, whose acknowledgements are counted differently
//! (every electable replica, from the cluster's map and `ROLE`): a shard's replicas are
//! stopped and their link filled, so a trade's prepare, commit, refusal, detached apply or a
//! participant's answer to the sweep exists on the master alone; nothing may be acted on as
//! if it were durable, and after the master is killed nothing is one-sided.

mod common;

use std::time::Duration;

use colony::client::{Client, ClientConfig};
use colony::store::road::Command;
use colony::{
    Access, Config, Envelope, IdempotencyKey, MultiTransaction, Name, Operation, Participant,
    PlayerId, Store, Transaction, Value, Visibility,
};
use colony_testkit::{wait_for, RedisServer, Rig, Topology, ADMIN_TOKEN};

const LEASE_MS: u64 = 300;
const START: i64 = 1000;

fn gold(delta: i64) -> Operation {
    Operation::IncrementCounter {
        name: Name::new("gold").expect("valid"),
        delta,
        min: Some(0),
        max: None,
        visibility: Visibility::Private,
    }
}

fn shards_toml(servers: &[RedisServer]) -> String {
    let mut text = String::new();
    for (i, s) in servers.iter().enumerate() {
        text.push_str(&format!(
            "[[shards]]\nname = \"s{i}\"\nmaster = \"{}\"\n",
            s.address()
        ));
    }
    text.push_str(&format!(
        "[redis]\nintent_lease_ms = {LEASE_MS}\nretry_deadline_ms = 500\n"
    ));
    text
}

/// Starts the gateway binary in front of `servers`, stopping itself at `failpoint`.
async fn gateway_stopping_at(servers: &[RedisServer], failpoint: &str) -> common::GatewayBinary {
    common::GatewayBinary::start(
        |port, admin| {
            format!(
                "{}\n[gateway]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                 tokens = [ {{ name = \"admin\", token = \"{ADMIN_TOKEN}\", role = \"admin\" }} ]\n",
                shards_toml(servers)
            )
            .replace("[redis]", "\n[redis]")
        },
        &[("COLONY_FAILPOINT", failpoint)],
    )
    .await
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects")
}

/// Whether the players' intents (if any) have leases that passed by their shards' clocks.
async fn leases_passed(servers: &[RedisServer], players: [&PlayerId; 2]) -> bool {
    for (server, player) in servers.iter().zip(players) {
        let mut conn = raw(server).await;
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("time");
        let lease: Option<u64> = redis::cmd("HGET")
            .arg(colony::keys::PlayerKeys::new(player).intent)
            .arg("l")
            .query_async(&mut conn)
            .await
            .expect("hget");
        if lease.is_some_and(|l| l > secs * 1000 + micros / 1000) {
            return false;
        }
    }
    true
}

async fn coins(store: &Store, player: &PlayerId) -> i64 {
    let c = store
        .get_player(player.clone(), Access::Owner)
        .await
        .expect("owner read");
    c.reads[0]
        .entries
        .iter()
        .find_map(|e| match (&e.value, e.name.as_str()) {
            (Value::Counter(n), "gold") => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_after_any_step_of_a_trade_leaves_it_whole_or_undone() {
    let servers: Vec<RedisServer> = (0..2)
        .map(|_| RedisServer::start().expect("redis starts"))
        .collect();
    let config = Config::from_toml(&shards_toml(&servers), []).expect("valid");
    let store = Store::new(&config).expect("store");
    // One player on each shard.
    let mut on: Vec<Option<PlayerId>> = vec![None, None];
    for i in 0.. {
        let p = PlayerId::new(format!("kill-{i}")).expect("valid");
        let shard = store.shard_map().shard_for_player(&p).get();
        on[shard].get_or_insert(p);
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    let (giver, taker) = (on[0].clone().expect("one"), on[1].clone().expect("one"));
    for p in [&giver, &taker] {
        let txn = Transaction::owner(
            p.clone(),
            Some(IdempotencyKey::new("setup", 1).expect("valid")),
        )
        .with(gold(START));
        store.execute(txn).await.expect("created");
    }

    // After the decide, the primary is applied with the commit and the taker is not; after the
    // finish (in the detached task a commit finishes in), both are, and the record stays.
    let steps = [
        ("multi:after-prepare", false),
        ("multi:after-decide", true),
        ("multi:after-finish", true),
    ];
    let mut moved = 0;
    for (n, (step, commits)) in steps.into_iter().enumerate() {
        let gateway = gateway_stopping_at(&servers, step).await;
        let mut client_config = ClientConfig::new(gateway.address.to_string(), ADMIN_TOKEN);
        client_config.request_deadline = Duration::from_secs(2);
        let client = Client::connect(client_config).await.expect("connects");
        let trade =
            MultiTransaction::new(IdempotencyKey::new("killed", n as u64 + 1).expect("valid"))
                .with(Participant::owner(giver.clone()).with(gold(-10)))
                .with(Participant::owner(taker.clone()).with(gold(10)));
        let answer = client.execute_multi(Envelope::from(trade.clone())).await;
        // The gateway died after the step: the client cannot know the outcome — except after
        // the finish, which a commit runs once the caller was answered: the answer may have
        // left before the gateway died.
        let answered_before_dying =
            step == "multi:after-finish" && matches!(&answer, Ok(done) if !done.replayed);
        assert!(
            answered_before_dying || matches!(&answer, Err(e) if e.is_retryable()),
            "{step}: {answer:?}"
        );
        let status = tokio::task::spawn_blocking({
            let mut gateway = gateway;
            move || {
                let status = gateway.child.wait().expect("waits");
                drop(gateway);
                status
            }
        })
        .await
        .expect("joins");
        assert!(
            !status.success(),
            "{step}: the gateway stopped at its failpoint"
        );

        // The lease passes (by the shards' clocks); then one sweep per shard finishes what
        // the gateway left, and neither player holds an intent.
        // The lease is 300 ms.
        let passed = wait_for(Duration::from_secs(10), || async {
            leases_passed(&servers, [&giver, &taker])
                .await
                .then_some(())
        })
        .await;
        assert!(passed.is_some(), "{step}: the lease never passed");
        for shard in 0..2 {
            store
                .sweep(store.shard_map().index(shard).expect("a shard of the map"))
                .await
                .expect("sweeps");
        }
        for (server, player) in servers.iter().zip([&giver, &taker]) {
            let mut conn = raw(server).await;
            let held: bool = redis::cmd("HEXISTS")
                .arg(colony::keys::PlayerKeys::new(player).meta)
                .arg("x")
                .query_async(&mut conn)
                .await
                .expect("hexists");
            assert!(
                !held,
                "{step}: {player:?} still holds an intent after the sweep"
            );
        }
        let (g, t) = (coins(&store, &giver).await, coins(&store, &taker).await);
        assert_eq!(g + t, 2 * START, "{step}: currency not conserved");
        let applied = g == START - moved - 10;
        assert_eq!(
            applied, commits,
            "{step}: gold {g}/{t}, moved before {moved}"
        );
        assert!(
            applied || g == START - moved,
            "{step}: applied on one side only: {g}/{t}"
        );
        if commits {
            moved += 10;
        }

        // The client retries the same key: a committed trade replays, an aborted one runs
        // now — never twice.
        let retried = store.execute_multi(trade).await.expect("settles");
        if commits {
            assert!(retried.replayed, "{step}: {retried:?}");
        } else {
            moved += 10;
        }
        assert_eq!(coins(&store, &giver).await, START - moved, "{step}");
        assert_eq!(coins(&store, &taker).await, START + moved, "{step}");
    }
}

/// The trade fault tests' settings: short timeouts and retries, intents leased for
/// `lease_ms`.
fn tuned(mut config: Config, acknowledge: colony::config::Acknowledge, lease_ms: u64) -> Config {
    config.redis.acknowledge = acknowledge;
    config.redis.connect_timeout_ms = 300;
    // Generous: three of these clusters may share two busy cores, and a slow replica
    // acknowledgement before the fault would make the prepare UNKNOWN.
    config.redis.replication_timeout_ms = 1000;
    config.redis.retry_deadline_ms = 300;
    config.redis.breaker_cooldown_ms = 100;
    config.redis.intent_lease_ms = lease_ms;
    config
}

/// Two watched shards of `topology` (on a cluster, two of its three masters) with a store
/// tuned as the others are ([`tuned`]).
async fn rig_and_store(
    topology: Topology,
    tag: &str,
    profile: colony_testkit::Profile,
    replicas: usize,
    acknowledge: colony::config::Acknowledge,
) -> (Rig, Store) {
    let rig = Rig::start(topology, tag, profile, replicas, 2).expect("starts");
    let store = Store::connect(&tuned(rig.config(), acknowledge, LEASE_MS))
        .await
        .expect("store");
    (rig, store)
}

/// What one profile's run found: trades applied on one side only, and the currency's drift.
#[derive(Debug, Default)]
struct Damage {
    one_sided: u32,
    drift: i64,
}

/// What happens to a participant's master mid-trade.
#[derive(Debug, Clone, Copy)]
enum MasterFault {
    /// SIGKILL; it comes back as a replica of the promoted one.
    Kill,
    /// SIGSTOP until a replica is promoted, then SIGCONT: the old master wakes up still
    /// believing it is the master, holding connections, until the Sentinels demote it.
    Pause,
}

/// After which step of a trade a participant's master fails, and whose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultAfter {
    /// Every participant staged; the taker's master (not the primary's) fails.
    Prepare,
    /// The primary's shard holds the decision and the primary's apply; its master fails.
    Decide,
    /// Committed (the primary applied with the commit), so a caller would be answered OK now,
    /// before the other participant's apply: that participant's master fails before its apply
    /// reached it. (This trade names the taker first, so the giver is that participant, and
    /// the shards take turns failing over.)
    Answer,
    /// Applied everywhere and answered; the taker's master fails. With local
    /// acknowledgements the taker's apply may not have reached a replica yet.
    Finish,
}

/// Kills or pauses a participant's master after a step of a trade — the taker's after the
/// prepare, the primary's after the decide, the taker's after the apply, and the
/// non-primary's after the answer (its apply not sent yet) — lets the
/// Sentinels promote a replica and the coordinator go on, then resolves and checks.
async fn participant_master_fault(
    topology: Topology,
    tag: &str,
    fault: MasterFault,
    profile: colony_testkit::Profile,
    replicas: usize,
    acknowledge: colony::config::Acknowledge,
) -> Damage {
    use colony::store::multi::{MultiAttempt, PrepareOutcome};
    use colony_testkit::wait_until;
    let (mut shards, store) = rig_and_store(topology, tag, profile, replicas, acknowledge).await;
    // Each shard fails over twice here, a few seconds apart.
    for g in 0..2 {
        shards.allow_quick_failovers(g);
    }
    let mut on: Vec<Option<PlayerId>> = vec![None, None];
    for i in 0.. {
        let p = PlayerId::new(format!("{tag}-p{i}")).expect("valid");
        if let Some(slot) = on.get_mut(store.shard_map().shard_for_player(&p).get()) {
            slot.get_or_insert(p);
        }
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    let (giver, taker) = (on[0].clone().expect("one"), on[1].clone().expect("one"));
    for p in [&giver, &taker] {
        let txn = Transaction::owner(
            p.clone(),
            Some(IdempotencyKey::new("setup", 1).expect("valid")),
        )
        .with(gold(START));
        store.execute(txn).await.expect("created");
    }
    let mut damage = Damage::default();
    let mut moved = 0;
    let steps = [
        FaultAfter::Prepare,
        FaultAfter::Decide,
        FaultAfter::Finish,
        FaultAfter::Answer,
    ];
    for (n, step) in steps.into_iter().enumerate() {
        let give = Participant::owner(giver.clone()).with(gold(-10));
        let take = Participant::owner(taker.clone()).with(gold(10));
        let trade = MultiTransaction::new(IdempotencyKey::new(tag, n as u64 + 1).expect("valid"));
        let trade = if step == FaultAfter::Answer {
            trade.with(take).with(give)
        } else {
            trade.with(give).with(take)
        };
        let mut attempt = MultiAttempt::new(&store, trade).expect("valid");
        assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged, "{tag}");
        if step != FaultAfter::Prepare {
            attempt.decide(true).await.expect("decides");
        }
        if step == FaultAfter::Finish {
            attempt.finish().await.expect("applied everywhere");
        }
        // A participant's master dies or stops — the taker's after the prepare and after the
        // apply, the primary's (holding the decision) after the decide, the giver's (not the
        // primary this time) after the answer, its apply not sent; the Sentinels promote
        // a replica, and the old master comes back as a replica of the new one (a paused one
        // is demoted by the Sentinels when it wakes).
        let g = match step {
            FaultAfter::Decide | FaultAfter::Answer => 0,
            FaultAfter::Prepare | FaultAfter::Finish => 1,
        };
        let old = shards.master_index(g).expect("a master");
        match fault {
            MasterFault::Kill => shards.server_mut(g, old).kill().expect("kill the master"),
            MasterFault::Pause => shards.server(g, old).pause().expect("pause the master"),
        }
        assert!(
            wait_until(Duration::from_secs(30), || shards
                .master_index(g)
                .is_some_and(|m| m != old))
            .await,
            "{tag}: no promotion"
        );
        let new = shards.master_index(g).expect("a master");
        match fault {
            MasterFault::Kill => shards
                .restart_as_replica(g, old, new)
                .expect("the old master rejoins"),
            MasterFault::Pause => shards.server(g, old).resume().expect("wake the old master"),
        }
        // The coordinator goes on: decide (if not yet) and apply, through the failover.
        if step == FaultAfter::Prepare {
            let _ = attempt.decide(true).await;
        }
        if step != FaultAfter::Finish {
            let _ = attempt.finish().await;
        }
        drop(attempt);
        // Once the lease has passed, sweeps finish what is left (the shard may still be
        // settling: sweep until both shards answer). Generous: on a cluster the old master
        // rejoins with a full sync, during which its shard's writes wait for it, and this
        // test shares two cores with others of its kind.
        let last = std::cell::RefCell::new(String::new());
        let settled = wait_for(Duration::from_secs(60), || async {
            let swept = [
                store
                    .sweep(store.shard_map().index(0).expect("a shard of the map"))
                    .await,
                store
                    .sweep(store.shard_map().index(1).expect("a shard of the map"))
                    .await,
            ];
            let (g, t) = (
                store.get_player(giver.clone(), Access::Owner).await,
                store.get_player(taker.clone(), Access::Owner).await,
            );
            if swept.iter().all(Result::is_ok)
                && g.is_ok()
                && t.is_ok()
                && leases_gone(&store, [&giver, &taker]).await
            {
                return Some(());
            }
            *last.borrow_mut() = format!("sweeps {swept:?}, giver {g:?}, taker {t:?}");
            None
        })
        .await;
        assert!(
            settled.is_some(),
            "{tag}: never settled after {step:?}: {}",
            last.borrow()
        );
        let (g, t) = (coins(&store, &giver).await, coins(&store, &taker).await);
        let gave = g == START - moved - 10;
        let took = t == START + moved + 10;
        if gave != took {
            damage.one_sided += 1;
        }
        damage.drift = (g + t) - 2 * START;
        if gave {
            moved += 10;
        }
        eprintln!("{tag} after {step:?} (trade {n}): giver {g}, taker {t}");
    }
    damage
}

/// True when neither player holds an intent (read through the store's own connections).
async fn leases_gone(store: &Store, players: [&PlayerId; 2]) -> bool {
    for p in players {
        match store.inspect_player(p).await {
            Ok(looked) if looked.intent.is_none() => {}
            _ => return false,
        }
    }
    true
}

/// The fault in the safe profile (replicated acknowledgements, two replicas: the promoted
/// master keeps one), asserted to break nothing; then in the naive profile (local
/// acknowledgements), where the checker reports what the failover did.
async fn safe_then_naive(topology: Topology, tag: &str, fault: MasterFault) {
    use colony::config::Acknowledge;
    use colony_testkit::Profile;
    let safe = participant_master_fault(
        topology,
        &format!("{tag}safe"),
        fault,
        Profile::Safe,
        2,
        Acknowledge::Replicated,
    )
    .await;
    eprintln!("safe profile, {topology:?}: {safe:?}");
    assert_eq!(
        (safe.one_sided, safe.drift),
        (0, 0),
        "safe profile, {topology:?}: {safe:?}"
    );
    let naive = participant_master_fault(
        topology,
        &format!("{tag}naive"),
        fault,
        Profile::Naive,
        1,
        Acknowledge::Local,
    )
    .await;
    eprintln!("naive profile, {topology:?} (reported, not asserted): {naive:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_master_killed_mid_trade_breaks_nothing_in_the_safe_profile() {
    safe_then_naive(Topology::Sentinel, "mf", MasterFault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_participant_master_killed_mid_trade_breaks_nothing_in_the_safe_profile() {
    safe_then_naive(Topology::Cluster, "mcf", MasterFault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_master_paused_mid_trade_breaks_nothing_in_the_safe_profile() {
    // A paused master is the harder case: it wakes up still a master, with the coordinator's
    // connections open, until the Sentinels demote it. In the safe profile it has no replica
    // left to acknowledge a write, so nothing it takes after the promotion is acknowledged.
    safe_then_naive(Topology::Sentinel, "mp", MasterFault::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_participant_master_paused_mid_trade_breaks_nothing_in_the_safe_profile() {
    safe_then_naive(Topology::Cluster, "mcp", MasterFault::Pause).await;
}

/// Two safe-profile shards of `topology` (two replicas each; on a cluster, two of its three
/// masters) with a player created on each: (shards, store, giver on shard 0 and the trades'
/// primary, taker on shard 1). Every connection is warmed, so a trade's steps open none.
async fn stall_cluster(
    topology: Topology,
    tag: &str,
    lease_ms: u64,
) -> (Rig, Store, PlayerId, PlayerId) {
    let (rig, _, store, giver, taker) =
        stall_cluster_of(topology, tag, lease_ms, colony_testkit::Profile::Safe).await;
    (rig, store, giver, taker)
}

/// [`stall_cluster`] with servers of `profile`, also returning the store's configuration
/// (for a second store: another gateway).
async fn stall_cluster_of(
    topology: Topology,
    tag: &str,
    lease_ms: u64,
    profile: colony_testkit::Profile,
) -> (Rig, Config, Store, PlayerId, PlayerId) {
    use colony::config::Acknowledge;
    let rig = Rig::start(topology, tag, profile, 2, 2).expect("shards start");
    let config = tuned(rig.config(), Acknowledge::Replicated, lease_ms);
    let store = Store::connect(&config).await.expect("store");
    let mut on: Vec<Option<PlayerId>> = vec![None, None];
    for i in 0.. {
        let p = PlayerId::new(format!("{tag}-p{i}")).expect("valid");
        if let Some(slot) = on.get_mut(store.shard_map().shard_for_player(&p).get()) {
            slot.get_or_insert(p);
        }
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    let (giver, taker) = (on[0].clone().expect("one"), on[1].clone().expect("one"));
    for p in [&giver, &taker] {
        let txn = Transaction::owner(
            p.clone(),
            Some(IdempotencyKey::new("setup", 1).expect("valid")),
        )
        .with(gold(START));
        store.execute(txn).await.expect("created");
    }
    for _ in 0..4 {
        for p in [&giver, &taker] {
            store
                .get_player(p.clone(), Access::Owner)
                .await
                .expect("reads");
        }
    }
    (rig, config, store, giver, taker)
}

/// Shard `g`'s master now.
fn master_of(rig: &Rig, g: usize) -> &RedisServer {
    rig.server(g, rig.master_index(g).expect("a master"))
}

/// A key in `player`'s slot, so that on a cluster it lives on the player's master.
fn key_beside(player: &PlayerId, name: &str) -> String {
    format!("{{{}}}:{name}", player.as_str())
}

/// Stops (SIGSTOP) every replica of shard `g` (the shard of `player`) once they have
/// acknowledged everything (no connection has a write they lack, as on a quiet shard), then
/// fills the replication link: 32 MiB more than the stopped replicas' socket buffers hold,
/// written in `player`'s slot, so what the master takes next stays in its output buffers.
/// Returns the master's index and the replicas'.
async fn stall_replicas(rig: &Rig, g: usize, player: &PlayerId) -> (usize, Vec<usize>) {
    let master = rig.master_index(g).expect("a master");
    let replicas: Vec<usize> = (0..rig.len(g)).filter(|&i| i != master).collect();
    let master_server = rig.server(g, master);
    wait_for(Duration::from_secs(10), || async {
        master_server.replicas_caught_up().then_some(())
    })
    .await
    .expect("the replicas catch up");
    for &r in &replicas {
        rig.server(g, r).pause().expect("stop a replica");
    }
    let mut conn = redis::Client::open(master_server.url())
        .expect("client")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("connects");
    let ballast = vec![b'x'; 32 << 20];
    let _: () = redis::cmd("SET")
        .arg(key_beside(player, "ballast"))
        .arg(ballast)
        .query_async(&mut conn)
        .await
        .expect("ballast written");
    (master, replicas)
}

/// Kills shard `g`'s stalled master, resumes its replicas, waits for the Sentinels (or the
/// cluster's election) to promote one, and starts the old master again as its replica.
async fn kill_master_and_resume(rig: &mut Rig, g: usize, master: usize, replicas: &[usize]) {
    rig.server_mut(g, master).kill().expect("kill the master");
    for &r in replicas {
        rig.server(g, r).resume().expect("resume a replica");
    }
    assert!(
        colony_testkit::wait_until(Duration::from_secs(30), || rig
            .master_index(g)
            .is_some_and(|m| m != master))
        .await,
        "no promotion"
    );
    let new = rig.master_index(g).expect("a master");
    rig.restart_as_replica(g, master, new)
        .expect("the old master rejoins");
}

/// Sweeps until both shards answer and neither player holds an intent; their coins.
async fn settled_coins(store: &Store, giver: &PlayerId, taker: &PlayerId) -> (i64, i64) {
    let last = std::cell::RefCell::new(String::new());
    let settled = wait_for(Duration::from_secs(30), || async {
        let swept = [
            store
                .sweep(store.shard_map().index(0).expect("a shard of the map"))
                .await,
            store
                .sweep(store.shard_map().index(1).expect("a shard of the map"))
                .await,
        ];
        let (g, t) = (
            store.get_player(giver.clone(), Access::Owner).await,
            store.get_player(taker.clone(), Access::Owner).await,
        );
        if swept.iter().all(Result::is_ok)
            && g.is_ok()
            && t.is_ok()
            && leases_gone(store, [giver, taker]).await
        {
            return Some(());
        }
        *last.borrow_mut() = format!("sweeps {swept:?}, giver {g:?}, taker {t:?}");
        None
    })
    .await;
    assert!(settled.is_some(), "never settled: {}", last.borrow());
    (coins(store, giver).await, coins(store, taker).await)
}

/// The replicas of the taker's shard are stopped and the replication link filled before the
/// trade is sent, so the trade's writes exist on the master alone; then the master is killed
/// and the replicas resumed. A fault that strikes *before* replication caught up: the trade
/// must not be answered OK (its acknowledgement waited for nothing), no code saying nothing
/// applied may answer it, retries open no connection each, and after the promotion nothing is
/// applied on one side only. (On the code that sent `WAIT` on another connection, the trade
/// ended one-sided: giver 990, taker 1000.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_whose_replicas_are_stalled_is_not_acknowledged_and_never_one_sided() {
    trade_with_stalled_replicas(Topology::Sentinel, "stall").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_trade_whose_replicas_are_stalled_is_not_acknowledged_and_never_one_sided() {
    trade_with_stalled_replicas(Topology::Cluster, "cstall").await;
}

async fn trade_with_stalled_replicas(topology: Topology, tag: &str) {
    let (mut rig, store, giver, taker) = stall_cluster(topology, tag, LEASE_MS).await;
    let (master, replicas) = stall_replicas(&rig, 1, &taker).await;
    let trade = MultiTransaction::new(IdempotencyKey::new(tag, 1).expect("valid"))
        .with(Participant::owner(giver.clone()).with(gold(-10)))
        .with(Participant::owner(taker.clone()).with(gold(10)));
    let connects = store.connection_stats()[1].connects;
    let answer = store.execute_multi(trade).await;
    assert!(
        answer.is_err(),
        "a trade whose taker's replicas were stopped was acknowledged: {answer:?}"
    );
    assert!(
        answer.as_ref().is_err_and(|e| e.may_have_applied()),
        "a trade that may have applied was answered with a code that says nothing applied: \
         {answer:?}"
    );
    // Retries into a stalled shard reuse its connections: no connect per retry.
    let opened = store.connection_stats()[1].connects - connects;
    assert!(
        opened <= 2,
        "{opened} connections opened to the stalled shard"
    );
    kill_master_and_resume(&mut rig, 1, master, &replicas).await;
    let (g, t) = settled_coins(&store, &giver, &taker).await;
    eprintln!("{topology:?}: answer {answer:?}; giver {g}, taker {t}");
    assert_eq!(g + t, 2 * START, "one-sided: giver {g}, taker {t}");
}

/// The primary's replicas are stopped after every participant prepared, so the commit record
/// exists on the primary's master alone: the coordinator must not take it as decided, and a
/// resolver that meets the taker's intent must not apply it from that record. Then the
/// primary's master is killed (the commit record dies with it) and the replicas resumed: the
/// attempt aborts, nothing one-sided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreplicated_commit_record_is_acted_on_by_nobody() {
    unreplicated_commit_record(Topology::Sentinel, "undecided").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreplicated_cluster_commit_record_is_acted_on_by_nobody() {
    unreplicated_commit_record(Topology::Cluster, "cundecided").await;
}

async fn unreplicated_commit_record(topology: Topology, tag: &str) {
    use colony::script::IntentRef;
    use colony::store::intents::{Decision, Resolution};
    use colony::store::multi::{MultiAttempt, PrepareOutcome};
    // A lease long enough that the commit is not refused for a passed lease meanwhile.
    let (mut rig, store, giver, taker) = stall_cluster(topology, tag, 10_000).await;
    let trade = MultiTransaction::new(IdempotencyKey::new(tag, 1).expect("valid"))
        .with(Participant::owner(giver.clone()).with(gold(-10)))
        .with(Participant::owner(taker.clone()).with(gold(10)));
    let mut attempt = MultiAttempt::new(&store, trade).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    let (master, replicas) = stall_replicas(&rig, 0, &giver).await;
    let decided = attempt.decide(true).await;
    assert!(
        decided != Ok(Decision::Commit),
        "a commit the replicas never saw was taken as decided"
    );
    // The commit is on the primary's master, unreplicated.
    let mut conn = raw(rig.server(0, master)).await;
    let record: Option<String> = redis::cmd("HGET")
        .arg(colony::keys::decision_key(&giver, attempt.id()))
        .arg("d")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(
        record.as_deref(),
        Some("C"),
        "the test needs the commit written"
    );
    let met = IntentRef {
        attempt: attempt.id().to_string(),
        primary: giver.as_str().to_string(),
        expired: false,
        version: None,
    };
    let resolved = store.resolve_intent(&taker, &met).await;
    assert!(
        !matches!(resolved, Ok(Resolution::Finished(Decision::Commit, _))),
        "a resolver applied an unreplicated commit: {resolved:?}"
    );
    drop(attempt);
    kill_master_and_resume(&mut rig, 0, master, &replicas).await;
    let (g, t) = settled_coins(&store, &giver, &taker).await;
    eprintln!("{topology:?}: decided {decided:?}, resolver {resolved:?}; giver {g}, taker {t}");
    assert_eq!(g + t, 2 * START, "one-sided: giver {g}, taker {t}");
    assert!(g == START || g == START - 10, "giver {g}");
}

/// A commit record is forgotten only on its participants' acknowledged answers, struck
/// before replication caught up: another gateway applies a committed trade to the taker,
/// and a second trade then applies the taker again, both after the taker's replicas
/// stopped, so the taker answers the sweep NO_INTENT from a state its master alone holds.
/// The sweep must keep the record. Then that master dies: the promoted replica still holds
/// the first trade's intent, and the record kept applies it. (With NO_INTENT taken
/// unacknowledged, as before, the sweep forgot the record here, checked.) The state it
/// answered from was written on another connection: Redis documents `WAIT` as covering the
/// connection's own writes, hence the field `finish.lua` writes again on NO_INTENT — though
/// Debian's Redis 7.0 records the master's offset on any command, so there the `WAIT`
/// covers the other connection's writes without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_keeps_a_commit_record_its_taker_denies_from_an_unreplicated_state() {
    sweep_keeps_a_denied_record(Topology::Sentinel, "denied").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_sweep_keeps_a_commit_record_its_taker_denies_from_an_unreplicated_state() {
    sweep_keeps_a_denied_record(Topology::Cluster, "cdenied").await;
}

async fn sweep_keeps_a_denied_record(topology: Topology, tag: &str) {
    use colony::store::intents::Decision;
    use colony::store::multi::{MultiAttempt, PrepareOutcome};
    // Plain servers (no `min-replicas-to-write`): the stalled master takes every write.
    let (mut rig, config, sweeper, giver, taker) =
        stall_cluster_of(topology, tag, LEASE_MS, colony_testkit::Profile::Plain).await;
    // A third player, on the taker's shard: the second trade's other participant, so that
    // nothing of that trade is on the giver's shard, which the sweep walks.
    let friend = (0..)
        .map(|i| PlayerId::new(format!("{tag}-q{i}")).expect("valid"))
        .find(|p| sweeper.shard_map().shard_for_player(p).get() == 1)
        .expect("a player on shard 1");
    let setup = Transaction::owner(
        friend.clone(),
        Some(IdempotencyKey::new("setup", 1).expect("valid")),
    )
    .with(gold(START));
    sweeper.execute(setup).await.expect("created");
    // Another gateway, with connections of its own, waiting briefly for replicas: none of
    // its unacknowledged writes is on a connection the sweep uses.
    let mut quick = config.clone();
    quick.redis.replication_timeout_ms = 200;
    let gateway = Store::connect(&quick).await.expect("store");
    let trade = |n: u64, from: &PlayerId, to: &PlayerId, amount: i64| {
        MultiTransaction::new(IdempotencyKey::new(tag, n).expect("valid"))
            .with(Participant::owner(from.clone()).with(gold(-amount)))
            .with(Participant::owner(to.clone()).with(gold(amount)))
    };
    let mut first = MultiAttempt::new(&gateway, trade(1, &giver, &taker, 10)).expect("valid");
    assert_eq!(first.prepare().await, PrepareOutcome::AllStaged);
    assert_eq!(first.decide(true).await, Ok(Decision::Commit));
    // The second trade's other participant prepares now, replicated; its commit on the
    // taker, after the stall, must not be refused for a deadline the stall outlasted.
    let mut second = MultiAttempt::new(&gateway, trade(2, &taker, &friend, 5)).expect("valid");
    second.set_commit_deadline_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
            + 60_000,
    );
    assert_eq!(second.prepare().await, PrepareOutcome::AllStaged);

    // The taker's replicas stop. The first trade's apply, then the second's commit (which
    // applies its primary, the taker), reach the taker's master alone.
    let (master, replicas) = stall_replicas(&rig, 1, &taker).await;
    let applied = first.finish().await;
    assert!(
        applied.is_err(),
        "an apply the replicas never saw was acknowledged: {applied:?}"
    );
    let decided = second.decide(true).await;
    assert!(
        decided != Ok(Decision::Commit),
        "a commit the replicas never saw was taken as decided"
    );
    let mut taker_master = raw(rig.server(1, master)).await;
    let mark: Option<String> = redis::cmd("HGET")
        .arg(colony::keys::PlayerKeys::new(&taker).meta)
        .arg("y")
        .query_async(&mut taker_master)
        .await
        .expect("hget");
    assert_eq!(
        mark.as_deref(),
        Some(second.id()),
        "the test needs the second trade applied on the taker's master"
    );

    // The first record, once older than a lease by its shard's clock, is swept: the taker
    // answers NO_INTENT, which its replicas cannot acknowledge. The record stays.
    let shard_0 = sweeper.shard_map().index(0).expect("a shard of the map");
    let mut giver_master = raw(master_of(&rig, 0)).await;
    let record = colony::keys::decision_key(&giver, first.id());
    let decisions = colony::keys::SlotKeys::of_player(&giver).decisions;
    let old_enough = wait_for(Duration::from_secs(10), || {
        let (mut conn, decisions, record) =
            (giver_master.clone(), decisions.clone(), record.clone());
        async move {
            let written: Option<f64> = redis::cmd("ZSCORE")
                .arg(&decisions)
                .arg(&record)
                .query_async(&mut conn)
                .await
                .ok()?;
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut conn).await.ok()?;
            let now = (secs * 1000 + micros / 1000) as f64;
            (now - written? > LEASE_MS as f64).then_some(())
        }
    })
    .await;
    assert!(old_enough.is_some(), "the commit record is not indexed");
    sweeper.sweep(shard_0).await.expect("the sweep runs");
    let kept: (i64, Option<f64>) = redis::pipe()
        .cmd("EXISTS")
        .arg(&record)
        .cmd("ZSCORE")
        .arg(&decisions)
        .arg(&record)
        .query_async(&mut giver_master)
        .await
        .expect("read");
    assert!(
        kept.0 == 1 && kept.1.is_some(),
        "a commit record was forgotten on an answer its taker's replicas never acknowledged"
    );

    // The taker's master dies with everything its replicas lacked: the promoted replica
    // holds the first trade's intent, which the kept record applies; the second trade's
    // commit is lost, and its friend's intent is rolled back.
    drop((first, second));
    kill_master_and_resume(&mut rig, 1, master, &replicas).await;
    let (g, t) = settled_coins(&sweeper, &giver, &taker).await;
    assert_eq!(
        (g, t),
        (START - 10, START + 10),
        "the first trade is not whole"
    );
    assert_eq!(coins(&sweeper, &friend).await, START);
}

/// A trade's refusal is final only once the primary's answer is acknowledged, struck before
/// replication caught up: the primary's judge of the key (when the taker refuses; its "new"
/// lets that refusal be final) and the commit script's own refusal (when the primary's
/// operations fail) each come from the primary's window, and a master woken after its
/// failover could find new a key the shard applied; the client would take a trade that
/// applied for one that did not. With the primary's replicas stopped, neither refusal is
/// definite; once they are back, both are again. (Where the judge answered nil and the
/// commit's refusal went unchecked, both were definite while the replicas were stopped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trades_refusal_is_final_only_once_the_primary_acknowledges_it() {
    refusal_final_once_acknowledged(Topology::Sentinel, "judged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_trades_refusal_is_final_only_once_the_primary_acknowledges_it() {
    refusal_final_once_acknowledged(Topology::Cluster, "cjudged").await;
}

async fn refusal_final_once_acknowledged(topology: Topology, tag: &str) {
    let (rig, store, giver, taker) = stall_cluster(topology, tag, LEASE_MS).await;
    // The taker cannot pay: its prepare refuses, so the primary judges the key. Then the
    // primary cannot pay: the others prepared, and the commit script refuses.
    let trades = [
        MultiTransaction::new(IdempotencyKey::new(tag, 1).expect("valid"))
            .with(Participant::owner(giver.clone()).with(gold(10)))
            .with(Participant::owner(taker.clone()).with(gold(-(START + 1)))),
        MultiTransaction::new(IdempotencyKey::new(tag, 2).expect("valid"))
            .with(Participant::owner(giver.clone()).with(gold(-(START + 1))))
            .with(Participant::owner(taker.clone()).with(gold(10))),
    ];
    let definite = |answer: &Result<colony::MultiCommitted, colony::Error>| {
        answer
            .as_ref()
            .is_err_and(|e| !e.is_retryable() && !e.may_have_applied())
    };
    // With the replicas healthy the refusals are final (sent again while a slow replica
    // leaves one unacknowledged on a loaded machine).
    let mut refused = Vec::new();
    for trade in &trades {
        let answer = wait_for(Duration::from_secs(20), || async {
            let answer = store.execute_multi(trade.clone()).await;
            definite(&answer).then_some(answer)
        })
        .await;
        assert!(answer.is_some(), "the refusal was never final");
        refused.extend(answer);
    }

    let (master, replicas) = stall_replicas(&rig, 0, &giver).await;
    for trade in &trades {
        let unconfirmed = store.execute_multi(trade.clone()).await;
        assert!(
            !definite(&unconfirmed),
            "a refusal was final on an answer the primary's replicas never acknowledged: \
             {unconfirmed:?}"
        );
    }

    for &r in &replicas {
        rig.server(0, r).resume().expect("resume a replica");
    }
    let master_server = rig.server(0, master);
    wait_for(Duration::from_secs(20), || async {
        master_server.replicas_caught_up().then_some(())
    })
    .await
    .expect("the replicas catch up");
    for (trade, refused) in trades.iter().zip(&refused) {
        let again = wait_for(Duration::from_secs(10), || async {
            let answer = store.execute_multi(trade.clone()).await;
            definite(&answer).then_some(answer)
        })
        .await;
        assert!(
            again.is_some_and(|answer| answer.as_ref().err().map(|e| e.code())
                == refused.as_ref().err().map(|e| e.code())),
            "the refusal did not come back once the replicas did"
        );
    }
    assert_eq!(coins(&store, &giver).await, START);
    assert_eq!(coins(&store, &taker).await, START);
}

/// The taker's apply, detached after the trade was answered OK, waits in its shard's lane of
/// coalesced calls behind a call the test holds (a `BLPOP`); meanwhile the taker's replicas
/// are stopped, so the apply then exists on the master alone. A fault that strikes *before*
/// replication caught up, on the coalesced path: the apply must not count as acknowledged,
/// so the commit record is kept; then the master is killed, and the promoted replica's
/// intent is applied from that record. (On a build whose coalesced call gave its writers no
/// acknowledgement, the record was forgotten and the intent aborted: giver 990, taker 1000.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_apply_that_only_the_master_took_keeps_its_commit_record() {
    detached_apply_on_the_master_alone(Topology::Sentinel, "lane").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_detached_apply_that_only_the_master_took_keeps_its_commit_record() {
    detached_apply_on_the_master_alone(Topology::Cluster, "clane").await;
}

async fn detached_apply_on_the_master_alone(topology: Topology, tag: &str) {
    let (mut rig, store, giver, taker) = stall_cluster(topology, tag, LEASE_MS).await;
    let taker_shard = store.shard_map().shard_for_player(&taker);
    // Hold the taker's shard's lane: its one call blocks until the test pushes (a key in the
    // taker's slot, so that on a cluster it is the taker's master that blocks).
    let master_url = master_of(&rig, 1).url();
    let hold_key = key_beside(&taker, "lane:hold");
    let holder = {
        let store = store.clone();
        let hold = Command::read(redis::cmd("BLPOP").arg(&hold_key).arg(20).clone());
        tokio::spawn(async move { store.send_coalesced(taker_shard, vec![hold]).await })
    };
    let mut master = redis::Client::open(master_url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let blocked = wait_for(Duration::from_secs(10), || {
        let mut master = master.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query_async(&mut master)
                .await
                .ok()?;
            info.contains("blocked_clients:1").then_some(())
        }
    })
    .await;
    assert!(blocked.is_some(), "the lane's call never blocked");
    let trade = MultiTransaction::new(IdempotencyKey::new(tag, 1).expect("valid"))
        .with(Participant::owner(giver.clone()).with(gold(-10)))
        .with(Participant::owner(taker.clone()).with(gold(10)));
    store
        .execute_multi(trade)
        .await
        .expect("the trade is answered OK");
    let (stopped_master, replicas) = stall_replicas(&rig, 1, &taker).await;
    // Release the lane: the queued apply goes out now, to the master alone.
    let _: i64 = redis::cmd("LPUSH")
        .arg(&hold_key)
        .arg("go")
        .query_async(&mut master)
        .await
        .expect("pushed");
    holder.await.expect("the holder ends");
    store.wait_detached().await;
    let records: i64 = redis::cmd("ZCARD")
        .arg(colony::keys::SlotKeys::of_player(&giver).decisions)
        .query_async(&mut raw(master_of(&rig, 0)).await)
        .await
        .expect("counted");
    assert_eq!(
        records, 1,
        "the commit record was forgotten on an unacknowledged apply"
    );
    kill_master_and_resume(&mut rig, 1, stopped_master, &replicas).await;
    let (g, t) = settled_coins(&store, &giver, &taker).await;
    assert_eq!(
        (g, t),
        (START - 10, START + 10),
        "a trade answered OK is not whole"
    );
}
