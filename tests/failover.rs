//! Failover with real processes: a shard of three redis-servers (safe profile) watched by
//! three Sentinels, or a Redis Cluster of three such shards. The master is SIGKILLed under
//! steady, acknowledged increments; the Sentinels (or the cluster's election) promote a
//! replica, the store finds it by itself, and no acknowledged increment is lost or applied
//! twice.
//!
//! The test prints its figures: acknowledged increments, the Sentinels' promotion time and
//! how long writes were unavailable as Colony saw it.

mod common;

use std::time::{Duration, Instant};

use colony::config::Acknowledge;
use colony::{Access, Error, Operation, Store, Transaction, Value, Visibility};
use colony_testkit::{wait_until, IncrementWriters, Profile, Rig, SentinelShard, Target, Topology};
use common::{key, name, pid};

fn increment(request: u64) -> Transaction {
    Transaction::owner(pid("counter"), key(request)).with(Operation::IncrementCounter {
        name: name("n"),
        delta: 1,
        min: None,
        max: None,
        visibility: Visibility::Private,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_no_acknowledged_increment_is_lost() {
    killed_master(Topology::Sentinel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_master_is_replaced_and_no_acknowledged_increment_is_lost() {
    killed_master(Topology::Cluster).await;
}

// The figures are part of the test's output (run with --nocapture to see them).
#[allow(clippy::print_stdout)]
async fn killed_master(topology: Topology) {
    let watched = pid("counter-0");
    let mut shard = Rig::start(topology, "failover-a", Profile::Safe, 2, 1).expect("shard starts");
    let mut config = shard.config();
    config.redis.acknowledge = Acknowledge::Replicated;
    config.redis.connect_timeout_ms = 300;
    config.redis.command_timeout_ms = 1000;
    config.redis.retry_deadline_ms = 500;
    config.redis.breaker_cooldown_ms = 100;
    let store = Store::connect(&config).await.expect("store");
    // The shard of the first counter (on a cluster, one of three).
    let g = store.shard_map().shard_for_player(&watched).get();
    let target = Target::Store(store.clone());
    let writers = IncrementWriters::start(target.clone(), 4, "counter", 4, 1);

    assert!(
        wait_until(Duration::from_secs(20), || writers.acknowledged() >= 200).await,
        "writes never got going"
    );
    let old = shard.master_index(g).expect("a master");
    let acked_at_kill = writers.acknowledged();
    let killed_at = Instant::now();
    shard.server_mut(g, old).kill().expect("kill -9 the master");
    writers.fault("master killed");
    assert!(
        wait_until(Duration::from_secs(30), || shard
            .master_index(g)
            .is_some_and(|m| m != old))
        .await,
        "no replica was promoted"
    );
    let promoted_after = killed_at.elapsed();
    let new = shard.master_index(g).expect("a master");
    // The old master comes back as a replica of the new one.
    shard.restart_as_replica(g, old, new).expect("restarts");
    assert!(
        wait_until(Duration::from_secs(30), || writers.acknowledged()
            >= acked_at_kill + 200)
        .await,
        "writes did not resume after the failover"
    );
    let attempts = writers.attempts();
    let history = writers.stop().await;
    let verdict = history.check_against(&target).await;
    println!(
        "failover figures ({topology:?}): {verdict:?}, {attempts} attempts, promotion seen after \
         {promoted_after:?}, longest write gap after the kill {:?}, failovers seen by the store {}",
        history.longest_gap_after(killed_at),
        store.connection_stats()[g].failovers
    );
    verdict.assert_exact(&format!(
        "master killed under replicated increments ({topology:?})"
    ));
    assert!(
        store.connection_stats()[g].failovers >= 1,
        "the store never saw the new master"
    );
}

#[tokio::test]
async fn a_write_no_replica_acknowledged_is_unknown_until_a_retry_settles_it() {
    use colony_testkit::{config_for, RedisServer};
    let master = RedisServer::start().expect("master");
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    assert!(
        wait_until(Duration::from_secs(15), || master.replicas_online() >= 1).await,
        "the replica did not sync"
    );
    let mut config = config_for(&[&master]);
    config.redis.acknowledge = Acknowledge::Replicated;
    // Generous: right after its initial sync a replica may take up to a second to acknowledge.
    config.redis.replication_timeout_ms = 1500;
    config.redis.retry_deadline_ms = 0;
    let store = Store::new(&config).expect("store");
    let first = store.execute(increment(1)).await;
    assert!(
        first.is_ok(),
        "replicated write with a live replica: {first:?}"
    );

    replica.pause().expect("pauses the replica");
    let unknown = store.execute(increment(2)).await;
    assert!(
        matches!(&unknown, Err(Error::Unknown { reason, .. }) if reason.contains("0 of 1")),
        "{unknown:?}"
    );
    replica.resume().expect("resumes");
    let settled = store
        .execute(increment(2))
        .await
        .expect("the retry settles it");
    assert!(
        settled.replayed,
        "the first attempt had applied; the retry must not apply again"
    );
    let state = store
        .get_player(pid("counter"), Access::Owner)
        .await
        .expect("reads");
    assert_eq!(state.reads[0].entries[0].value, Value::Counter(2));
}

/// What the rollback schedule found: the highest version acknowledged to the client, the
/// version read after the failover, and the gateway's rollback alarms.
#[derive(Debug)]
struct RollbackRun {
    acknowledged: u64,
    after_failover: u64,
    alarms: u64,
}

/// A schedule that loses writes a master took while its only replica was cut off: a write
/// reaches the replica; the replica is paused and its link cut; three more writes go to the
/// master; the master is killed and the replica, resumed, is promoted without them. Run through a real gateway
/// and the Rust client, so the gateway's rollback alarm sees what the client saw.
async fn writes_behind_a_paused_replica(
    tag: &str,
    profile: Profile,
    acknowledge: Acknowledge,
) -> RollbackRun {
    use colony::client::{Client, ClientConfig};
    use colony_testkit::{TestGateway, ADMIN_TOKEN};
    let mut shard = SentinelShard::start(tag, profile, 1).expect("shard starts");
    let mut config = colony_testkit::with_test_gateway(shard.config());
    config.redis.acknowledge = acknowledge;
    config.redis.connect_timeout_ms = 300;
    config.redis.command_timeout_ms = 1000;
    config.redis.replication_timeout_ms = 300;
    config.redis.retry_deadline_ms = 300;
    config.redis.breaker_cooldown_ms = 100;
    let gw = TestGateway::start(&config).await.expect("gateway starts");
    let mut client_config = ClientConfig::new(gw.address.to_string(), ADMIN_TOKEN);
    client_config.request_deadline = Duration::from_millis(1500);
    let client = Client::connect(client_config).await.expect("connects");
    let player = pid("rolled-back");
    let write = |n: u64| {
        Transaction::owner(player.clone(), key(n)).with(Operation::SetField {
            name: name("n"),
            value: n.to_string().into_bytes(),
            visibility: Visibility::Public,
        })
    };
    let mut acknowledged = client
        .execute(write(1))
        .await
        .expect("the first write")
        .version;
    // The replica has it before it is paused.
    let mut master = common::raw(&shard.servers[0]).await;
    let replicated: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut master)
        .await
        .expect("WAIT");
    assert_eq!(replicated, 1, "{tag}: the replica has the first write");
    // Pause the replica, then cut its link on the master's side: what the master takes next
    // never reaches the replica's socket (a pause alone would leave it in the kernel's
    // buffers, for the replica to read when it wakes).
    shard.servers[1].pause().expect("pause the replica");
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut master)
        .await
        .expect("CLIENT KILL TYPE replica");
    for n in 2..=4 {
        // Naive: acknowledged by the master alone. Safe: no replica acknowledges, so UNKNOWN.
        if let Ok(committed) = client.execute(write(n)).await {
            acknowledged = committed.version;
        }
    }
    shard.servers[0].kill().expect("kill the master");
    shard.servers[1].resume().expect("resume the replica");
    assert!(
        wait_until(Duration::from_secs(30), || shard.master_index() == Some(1)).await,
        "{tag}: the Sentinels did not promote the replica"
    );
    // The old master comes back as the new one's replica (in the safe profile the promoted
    // master takes writes, owners' reads among them, only with a replica).
    let port = shard.servers[1].port().to_string();
    shard.servers[0]
        .start_again(&["--replicaof", "127.0.0.1", &port])
        .expect("the old master rejoins");
    // Read through the gateway until it has found the new master.
    let last_error = std::cell::RefCell::new(String::new());
    let after_failover = colony_testkit::wait_for(Duration::from_secs(30), || async {
        match client.get_player(&player, Access::Owner, None).await {
            Ok(state) => Some(state.version),
            Err(e) => {
                *last_error.borrow_mut() = e.to_string();
                None
            }
        }
    })
    .await
    .unwrap_or_else(|| panic!("{tag}: never readable: {}", last_error.borrow()));
    let alarms = gw
        .gateway
        .metrics()
        .version_rollbacks
        .get_or_create(&colony::gateway::metrics::ShardLabels {
            shard: shard.master_name.clone(),
        })
        .get();
    RollbackRun {
        acknowledged,
        after_failover,
        alarms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_alarm_fires_when_a_failover_loses_acknowledged_writes_and_only_then() {
    // Naive: the master acknowledged writes its replica never had; the promotion loses them,
    // the checker (the client's own record) sees it, and so does the gateway's alarm.
    let naive =
        writes_behind_a_paused_replica("rb-naive", Profile::Naive, Acknowledge::Local).await;
    eprintln!("naive profile: {naive:?}");
    assert!(
        naive.after_failover < naive.acknowledged,
        "the schedule loses acknowledged writes in the naive profile: {naive:?}"
    );
    assert_eq!(naive.alarms, 1, "{naive:?}");
    // Safe: nothing the replica lacked was acknowledged, so nothing is lost and the alarm
    // stays silent.
    let safe =
        writes_behind_a_paused_replica("rb-safe", Profile::Safe, Acknowledge::Replicated).await;
    eprintln!("safe profile: {safe:?}");
    assert!(safe.after_failover >= safe.acknowledged, "{safe:?}");
    assert_eq!(safe.alarms, 0, "{safe:?}");
}

/// A shard's links that heard nothing from their master for the Sentinels' `down-after` ask
/// the Sentinels again before they are used (a master frozen that long may have been
/// replaced, and wake still answering as a master). Tested without a failover, whose
/// `+switch-master` announcement would make the links stale anyway: the Sentinels are
/// pointed at another master by hand (`SENTINEL REMOVE` and `MONITOR` announce no switch),
/// while the old one still answers as a master. The wait is the rule under test: the links
/// must stay idle for `down-after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_idle_past_down_after_find_the_master_the_sentinels_name_now() {
    let shard = SentinelShard::start("idle", Profile::Plain, 1).expect("the shard starts");
    // One link, so that no link opened later asks the Sentinels on its own.
    let mut config = shard.config();
    config.redis.connections_per_shard = 1;
    let store = Store::new(&config).expect("store");
    let write = |request: u64| {
        Transaction::owner(pid(&format!("idle-{request}")), key(request)).with(
            Operation::IncrementCounter {
                name: name("n"),
                delta: 1,
                min: None,
                max: None,
                visibility: Visibility::Private,
            },
        )
    };
    store.execute(write(1)).await.expect("written");
    let (old, new) = (&shard.servers[0], &shard.servers[1]);
    let holds = |server: &colony_testkit::RedisServer, request: u64| {
        let url = server.url();
        async move {
            let mut conn = redis::Client::open(url)
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("connects");
            let version: Option<u64> = redis::cmd("HGET")
                .arg(format!("{{idle-{request}}}:meta"))
                .arg("v")
                .query_async(&mut conn)
                .await
                .expect("HGET");
            version.is_some()
        }
    };
    assert!(holds(old, 1).await);

    // The replica becomes a master of its own, and the Sentinels name it, unannounced.
    let mut conn = redis::Client::open(new.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut conn)
        .await
        .expect("REPLICAOF NO ONE");
    // The Sentinels' down-after, as the store learnt it when it connected.
    let down_after_ms: u64 = include_str!("../deploy/redis/sentinel.conf")
        .lines()
        .find_map(|l| l.strip_prefix("sentinel down-after-milliseconds {{MASTER_NAME}} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the Sentinels' template sets down-after-milliseconds");
    // Each step is followed by a write, so that the link never idles for down-after while
    // the Sentinels are being reconfigured (each step saves their configuration to disk).
    let mut keepalive = 100;
    for sentinel in &shard.sentinels {
        keepalive += 1;
        store.execute(write(keepalive)).await.expect("written");
        let mut conn = redis::Client::open(format!("redis://{}", sentinel.address()))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        let _: () = redis::cmd("SENTINEL")
            .arg("REMOVE")
            .arg("idle")
            .query_async(&mut conn)
            .await
            .expect("SENTINEL REMOVE");
        let _: () = redis::cmd("SENTINEL")
            .arg("MONITOR")
            .arg("idle")
            .arg("127.0.0.1")
            .arg(new.port())
            .arg(2)
            .query_async(&mut conn)
            .await
            .expect("SENTINEL MONITOR");
        let _: () = redis::cmd("SENTINEL")
            .arg("SET")
            .arg("idle")
            .arg("down-after-milliseconds")
            .arg(down_after_ms)
            .query_async(&mut conn)
            .await
            .expect("SENTINEL SET");
    }
    assert_eq!(
        shard.master_index(),
        Some(1),
        "the Sentinels name the new master"
    );

    // Used within down-after, the links still lead to the old master (nothing told them).
    store.execute(write(2)).await.expect("written");
    let (on_old, on_new) = (holds(old, 2).await, holds(new, 2).await);
    assert!(on_old && !on_new, "old {on_old}, new {on_new}");
    // Idle past down-after, they ask the Sentinels first.
    tokio::time::sleep(Duration::from_millis(down_after_ms + 500)).await;
    store.execute(write(3)).await.expect("written");
    assert!(
        holds(new, 3).await && !holds(old, 3).await,
        "an idle link went on to the master it had, not the one the Sentinels name"
    );
}

/// Which replicas a write waits for comes from the Sentinels (`SENTINEL REPLICAS`, asked
/// with the master): two replicas, both waited for, though `redis.replicas_to_wait` is 1.
/// Sentinels that refuse that command (an ACL that does not allow it, as some operators
/// give the clients of their Sentinels) still name the master: the shard is served, and
/// writes wait for the configured count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_replicas_the_sentinels_list_and_a_refusal_to_list_them_is_no_outage() {
    let shard = SentinelShard::start("failover-listed", Profile::Safe, 2).expect("shard starts");
    let mut config = shard.config();
    config.redis.acknowledge = Acknowledge::Replicated;
    config.redis.replicas_to_wait = 1;
    let listed = Store::connect(&config).await.expect("store");
    listed.execute(increment(1)).await.expect("a write");
    assert_eq!(listed.connection_stats()[0].replicas_waited_for, Some(2));

    for address in shard.sentinel_addresses() {
        let mut sentinel = redis::Client::open(format!("redis://{address}"))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("-sentinel|replicas")
            .query_async(&mut sentinel)
            .await
            .expect("ACL SETUSER");
    }
    let refused = Store::connect(&config).await.expect("store");
    refused
        .execute(increment(2))
        .await
        .expect("a write, with the master found though the replicas were not listed");
    assert_eq!(refused.connection_stats()[0].replicas_waited_for, Some(1));
    let mut local = config.clone();
    local.redis.acknowledge = Acknowledge::Local;
    let local = Store::connect(&local).await.expect("store");
    local.execute(increment(3)).await.expect("a write");
    assert_eq!(local.connection_stats()[0].replicas_waited_for, None);
}
