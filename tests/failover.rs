//! Failover with real processes: a shard of three redis-servers (safe profile) watched by
//! three Sentinels. The master is SIGKILLed under steady, acknowledged increments; the
//! Sentinels promote a replica, the store finds it by itself, and no acknowledged increment
//! is lost or applied twice.
//!
//! The test prints its figures: acknowledged increments, the Sentinels' promotion time and
//! how long writes were unavailable as Colony saw it.

mod common;

use std::time::{Duration, Instant};

use colony::config::Acknowledge;
use colony::{Access, Error, Operation, Store, Transaction, Value, Visibility};
use colony_testkit::{wait_until, IncrementWriters, Profile, SentinelShard, Target};
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
// The figures are part of the test's output (run with --nocapture to see them).
#[allow(clippy::print_stdout)]
async fn a_killed_master_is_replaced_and_no_acknowledged_increment_is_lost() {
    let mut shard = SentinelShard::start("failover-a", Profile::Safe, 2).expect("shard starts");
    let mut config = shard.config();
    config.redis.acknowledge = Acknowledge::Replicated;
    config.redis.connect_timeout_ms = 300;
    config.redis.command_timeout_ms = 1000;
    config.redis.retry_deadline_ms = 500;
    config.redis.breaker_cooldown_ms = 100;
    let store = Store::new(&config).expect("store");
    let target = Target::Store(store.clone());
    let writers = IncrementWriters::start(target.clone(), 4, "counter", 4, 1);

    assert!(
        wait_until(Duration::from_secs(20), || writers.acknowledged() >= 200).await,
        "writes never got going"
    );
    let old = shard.master_index().expect("a master");
    let acked_at_kill = writers.acknowledged();
    let killed_at = Instant::now();
    shard.servers[old].kill().expect("kill -9 the master");
    writers.fault("master killed");
    assert!(
        wait_until(Duration::from_secs(30), || shard
            .master_index()
            .is_some_and(|m| m != old))
        .await,
        "the Sentinels did not promote a replica"
    );
    let promoted_after = killed_at.elapsed();
    let new = shard.master_index().expect("a master");
    let new_port = shard.servers[new].port().to_string();
    // The old master comes back as a replica of the new one.
    shard.servers[old]
        .start_again(&["--replicaof", "127.0.0.1", &new_port])
        .expect("restarts");
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
        "failover figures: {verdict:?}, {attempts} attempts, Sentinel promotion seen after \
         {promoted_after:?}, longest write gap after the kill {:?}, failovers seen by the store {}",
        history.longest_gap_after(killed_at),
        store.connection_stats()[0].failovers
    );
    verdict.assert_exact("master killed under replicated increments");
    assert!(
        store.connection_stats()[0].failovers >= 1,
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
