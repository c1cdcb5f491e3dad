//! Failover with real processes: a shard of three redis-servers (safe profile) watched by
//! three Sentinels. The master is SIGKILLed under steady, acknowledged increments; the
//! Sentinels promote a replica, the store finds it by itself, and no acknowledged increment
//! is lost or applied twice.
//!
//! The test prints its figures: acknowledged increments, the Sentinels' promotion time and
//! how long writes were unavailable as Colony saw it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::config::Acknowledge;
use colony::testkit::{wait_until, Profile, SentinelShard};
use colony::{Access, Error, Operation, Store, Transaction, Value, Visibility};
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

#[derive(Default)]
struct History {
    /// Increments acknowledged OK, each request once.
    acknowledged: u64,
    /// When each acknowledgement arrived.
    ack_times: Vec<Instant>,
    /// Attempts that ended UNKNOWN or UNAVAILABLE (then retried with the same key).
    retried: u64,
    /// A request in progress when the writer stopped (its outcome may be either).
    unsettled: u64,
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

    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stop, history, acknowledged) = (
            store.clone(),
            stop.clone(),
            history.clone(),
            acknowledged.clone(),
        );
        tokio::spawn(async move {
            let mut request = 0;
            'requests: while !stop.load(Ordering::Relaxed) {
                request += 1;
                // Every request is sent until it settles: a retry with the same key applies at
                // most once, so each request is acknowledged exactly once.
                loop {
                    match store.execute(increment(request)).await {
                        Ok(_) => {
                            let mut h = history.lock().expect("lock");
                            h.acknowledged += 1;
                            h.ack_times.push(Instant::now());
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(Error::Unknown { .. } | Error::Unavailable { .. }) => {
                            history.lock().expect("lock").retried += 1;
                            if stop.load(Ordering::Relaxed) {
                                history.lock().expect("lock").unsettled += 1;
                                break 'requests;
                            }
                            // A client's pause between attempts (the store fails fast while
                            // the shard's breaker is open), not a wait for a condition.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
        })
    };

    let acked = || acknowledged.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(20), || acked() >= 200),
        "writes never got going"
    );
    let old = shard.master_index().expect("a master");
    let acked_at_kill = acked();
    let killed_at = Instant::now();
    shard.servers[old].kill().expect("kill -9 the master");
    assert!(
        wait_until(Duration::from_secs(30), || shard
            .master_index()
            .is_some_and(|m| m != old)),
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
        wait_until(Duration::from_secs(30), || acked() >= acked_at_kill + 200),
        "writes did not resume after the failover"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");

    let h = std::mem::take(&mut *history.lock().expect("lock"));
    let state = store
        .get_player(pid("counter"), Access::Owner)
        .await
        .expect("reads");
    let Value::Counter(value) = state.reads[0].entries[0].value else {
        panic!("not a counter");
    };
    let value = value as u64;
    let lost = h.acknowledged.saturating_sub(value);
    let first_ack_after_kill = h
        .ack_times
        .iter()
        .find(|t| **t > killed_at)
        .map(|t| t.duration_since(killed_at));
    println!(
        "failover figures: acknowledged {}, final counter {value}, lost {lost}, retried attempts {}, \
         unsettled {}, Sentinel promotion seen after {promoted_after:?}, first write acknowledged \
         after the kill at {first_ack_after_kill:?}, failovers seen by the store {}",
        h.acknowledged,
        h.retried,
        h.unsettled,
        store.connection_stats()[0].failovers
    );
    assert_eq!(lost, 0, "acknowledged increments were lost");
    assert!(
        value <= h.acknowledged + h.unsettled,
        "an increment was applied twice: {value} > {} + {}",
        h.acknowledged,
        h.unsettled
    );
    assert!(
        store.connection_stats()[0].failovers >= 1,
        "the store never saw the new master"
    );
}

#[tokio::test]
async fn a_write_no_replica_acknowledged_is_unknown_until_a_retry_settles_it() {
    use colony::testkit::{config_for, RedisServer};
    let master = RedisServer::start().expect("master");
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    assert!(
        wait_until(Duration::from_secs(15), || master.replicas_online() >= 1),
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
