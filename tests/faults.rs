//! Fault scenarios with real processes (RELIABILITY.md), each seeded and printing its seed and
//! figures. Every increment is recorded in a [`History`] and the final counters are checked:
//! in the safe profile nothing acknowledged is lost and nothing is applied twice; in the naive
//! control profile the checker must find the loss the same schedule causes, or the fault is
//! not being exercised.
//!
//! Re-run a schedule with `COLONY_FAULT_SEED=<seed> cargo test --test faults`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::config::Acknowledge;
use colony::testkit::{wait_until, History, Profile, Seeded, SentinelShard, Verdict};
use colony::{Access, Config, Error, Operation, PlayerId, Store, Transaction, Value, Visibility};
use common::{key, name, pid};

const COUNTERS: u64 = 8;

/// Short timeouts and retries, so that a failover shows up within seconds.
fn tuned(mut config: Config, acknowledge: Acknowledge) -> Config {
    config.redis.acknowledge = acknowledge;
    config.redis.connect_timeout_ms = 300;
    config.redis.command_timeout_ms = 1000;
    config.redis.replication_timeout_ms = 200;
    config.redis.retry_deadline_ms = 300;
    config.redis.breaker_cooldown_ms = 100;
    config
}

/// Increments random counters until stopped; each request is sent until it settles.
fn start_writer(
    store: Store,
    seed: u64,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    acknowledged: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut random = Seeded::new(seed);
        let mut request = 0u64;
        while !stop.load(Ordering::Relaxed) {
            request += 1;
            let counter = format!("counter-{}", random.range(0, COUNTERS));
            let txn =
                Transaction::owner(pid(&counter), key(request)).with(Operation::IncrementCounter {
                    name: name("n"),
                    delta: 1,
                    min: None,
                    max: None,
                    visibility: Visibility::Private,
                });
            let mut maybe_applied = false;
            loop {
                match store.execute(txn.clone()).await {
                    Ok(_) => {
                        history.lock().expect("lock").acknowledged(&counter);
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e @ (Error::Unknown { .. } | Error::Unavailable { .. })) => {
                        maybe_applied |= matches!(e, Error::Unknown { .. });
                        if stop.load(Ordering::Relaxed) {
                            let mut h = history.lock().expect("lock");
                            if maybe_applied {
                                h.unknown(&counter);
                            } else {
                                h.failed(&counter);
                            }
                            return;
                        }
                        // A client's pause between attempts (the store fails fast while the
                        // shard's breaker is open), not a wait for a condition.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }
    })
}

async fn final_values(store: &Store, history: &History) -> Vec<(String, u64)> {
    let mut values = Vec::new();
    for counter in history.counters() {
        let value = match store
            .get_player(PlayerId::new(counter.clone()).expect("id"), Access::Owner)
            .await
        {
            Ok(c) => match c.reads[0].entries.first().map(|e| &e.value) {
                Some(Value::Counter(v)) => *v as u64,
                _ => 0,
            },
            Err(Error::NotFound) => 0,
            Err(e) => panic!("final read of {counter}: {e}"),
        };
        values.push((counter, value));
    }
    values
}

/// The replica falls behind (paused while more is written than socket buffers hold), then the
/// master dies and the stale replica is promoted.
async fn lagging_replica_then_master_death(
    profile: Profile,
    acknowledge: Acknowledge,
    seed: u64,
) -> Verdict {
    let mut random = Seeded::new(seed);
    let mut shard = SentinelShard::start("faults-lag", profile, 1).expect("shard starts");
    let store = Store::new(&tuned(shard.config(), acknowledge)).expect("store");
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = start_writer(
        store.clone(),
        seed,
        stop.clone(),
        history.clone(),
        acked.clone(),
    );
    let count = || acked.load(Ordering::Relaxed);
    let warm_up = random.range(100, 300);
    assert!(
        wait_until(Duration::from_secs(20), || count() >= warm_up),
        "writes never got going"
    );

    let master = shard.master_index().expect("a master");
    let replica = 1 - master;
    shard.servers[replica].pause().expect("pause the replica");
    history.lock().expect("lock").fault("replica paused");
    // More than the kernel buffers to a stopped replica hold, so what follows never reaches it.
    // One batch, so that in the safe profile it costs one WAIT timeout rather than 256.
    let big = vec![b'x'; 60 * 1024];
    let filler: Vec<Transaction> = (0..256u64)
        .map(|i| {
            Transaction::owner(pid(&format!("filler-{i}")), key(1)).with(Operation::SetField {
                name: name("f"),
                value: big.clone(),
                visibility: Visibility::Private,
            })
        })
        .collect();
    let _ = store
        .execute_batch(filler)
        .await
        .expect("the filler batch is well-formed");
    let after_filler = count();
    let more = random.range(20, 60);
    // In the naive profile writes keep being acknowledged; in the safe one they cannot be.
    let _ = wait_until(Duration::from_secs(3), || count() >= after_filler + more);
    history.lock().expect("lock").fault("master killed");
    let killed_at = Instant::now();
    shard.servers[master].kill().expect("kill the master");
    shard.servers[replica].resume().expect("resume the replica");
    assert!(
        wait_until(Duration::from_secs(30), || shard.master_index()
            == Some(replica)),
        "the Sentinels did not promote the replica"
    );
    let promoted_after = killed_at.elapsed();
    let port = shard.servers[replica].port().to_string();
    shard.servers[master]
        .start_again(&["--replicaof", "127.0.0.1", &port])
        .expect("the old master returns as a replica");
    let at_promotion = count();
    assert!(
        wait_until(Duration::from_secs(30), || count() >= at_promotion + 100),
        "writes did not resume"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let history = std::mem::take(&mut *history.lock().expect("lock"));
    let values = final_values(&store, &history).await;
    let verdict = history.check(|c| values.iter().find(|(n, _)| n == c).map_or(0, |(_, v)| *v));
    eprintln!(
        "lagging replica, {profile:?} profile, {acknowledge:?} acknowledgements, seed {seed}: {verdict:?}, \
         promotion after {promoted_after:?}, longest write gap after the kill {:?}",
        history.longest_gap_after(killed_at)
    );
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_profile_loses_nothing_when_a_lagging_replica_is_promoted() {
    let seed = Seeded::seed_from_env();
    eprintln!("seed {seed}");
    let verdict =
        lagging_replica_then_master_death(Profile::Safe, Acknowledge::Replicated, seed).await;
    assert_eq!(
        verdict.lost, 0,
        "seed {seed}: acknowledged increments lost: {verdict:?}"
    );
    assert_eq!(
        verdict.extra, 0,
        "seed {seed}: increments applied twice: {verdict:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_profile_loss_is_caught_by_the_checker() {
    let seed = Seeded::seed_from_env();
    eprintln!("seed {seed}");
    let verdict = lagging_replica_then_master_death(Profile::Naive, Acknowledge::Local, seed).await;
    assert!(
        verdict.lost > 0,
        "seed {seed}: the naive profile lost nothing, so the fault was not exercised: {verdict:?}"
    );
    assert_eq!(
        verdict.extra, 0,
        "seed {seed}: increments applied twice: {verdict:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_paused_past_down_after_loses_nothing_when_it_wakes() {
    let seed = Seeded::seed_from_env();
    eprintln!("seed {seed}");
    let mut random = Seeded::new(seed);
    let shard = SentinelShard::start("faults-pause", Profile::Safe, 2).expect("shard starts");
    let store = Store::new(&tuned(shard.config(), Acknowledge::Replicated)).expect("store");
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = start_writer(
        store.clone(),
        seed,
        stop.clone(),
        history.clone(),
        acked.clone(),
    );
    let count = || acked.load(Ordering::Relaxed);
    let warm_up = random.range(100, 300);
    assert!(
        wait_until(Duration::from_secs(20), || count() >= warm_up),
        "writes never got going"
    );

    let master = shard.master_index().expect("a master");
    history.lock().expect("lock").fault("master paused");
    let paused_at = Instant::now();
    shard.servers[master].pause().expect("SIGSTOP the master");
    assert!(
        wait_until(Duration::from_secs(30), || shard
            .master_index()
            .is_some_and(|m| m != master)),
        "the Sentinels did not promote a replica"
    );
    let promoted_after = paused_at.elapsed();
    // The old master wakes up believing it is the master; the Sentinels demote it.
    shard.servers[master]
        .resume()
        .expect("SIGCONT the old master");
    history.lock().expect("lock").fault("old master resumed");
    let at_resume = count();
    assert!(
        wait_until(Duration::from_secs(30), || count() >= at_resume + 200),
        "writes did not resume"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let history = std::mem::take(&mut *history.lock().expect("lock"));
    let values = final_values(&store, &history).await;
    let verdict = history.check(|c| values.iter().find(|(n, _)| n == c).map_or(0, |(_, v)| *v));
    eprintln!(
        "paused master, seed {seed}: {verdict:?}, promotion after {promoted_after:?}, \
         longest write gap after the pause {:?}",
        history.longest_gap_after(paused_at)
    );
    assert_eq!(
        verdict.lost, 0,
        "seed {seed}: acknowledged increments lost: {verdict:?}"
    );
    assert_eq!(
        verdict.extra, 0,
        "seed {seed}: increments applied twice: {verdict:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_is_down_does_not_disturb_the_others() {
    use colony::testkit::{config_for, RedisServer};
    let healthy = RedisServer::start().expect("starts");
    let mut failing = RedisServer::start().expect("starts");
    let mut config = tuned(config_for(&[&healthy, &failing]), Acknowledge::Local);
    // The breaker stays open for the whole outage here.
    config.redis.breaker_cooldown_ms = 1000;
    let store = Store::new(&config).expect("store");
    let on = |shard: usize| {
        (0..1000)
            .map(|i| pid(&format!("p{i}")))
            .filter(|p| store.shard_map().shard_for_player(p).0 == shard)
            .take(20)
            .collect::<Vec<_>>()
    };
    let (healthy_players, failing_players) = (on(0), on(1));
    let read =
        |p: &PlayerId| Transaction::owner(p.clone(), None).with(Operation::Read { names: vec![] });
    failing.kill().expect("the second shard goes down");
    let started = Instant::now();
    let mut failing_errors = 0;
    let mut rounds = 0;
    // While it is down, every request to the healthy shard succeeds and every request to the
    // failing one fails with UNAVAILABLE, and the breaker stops even trying to connect.
    while rounds < 50 {
        rounds += 1;
        let batch: Vec<Transaction> = healthy_players
            .iter()
            .chain(&failing_players)
            .map(read)
            .collect();
        let results = store.execute_batch(batch).await.expect("runs");
        let (ok, failed) = results.split_at(healthy_players.len());
        assert!(
            ok.iter().all(Result::is_ok),
            "the healthy shard failed: {ok:?}"
        );
        for r in failed {
            assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
            failing_errors += 1;
        }
    }
    let elapsed = started.elapsed();
    let stats = store.connection_stats();
    eprintln!(
        "shard down: {rounds} batches in {elapsed:?}, {failing_errors} UNAVAILABLE on the failing \
         shard, {} connection attempts to it, breaker {:?}",
        stats[1].connects,
        store.breaker_states()[1]
    );
    assert!(
        stats[1].connects < rounds,
        "the breaker should spare most connection attempts ({} for {rounds} batches)",
        stats[1].connects
    );
    // It comes back: its players are served again once the breaker lets a probe through.
    failing.start_again(&[]).expect("back up");
    assert!(
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut back = false;
            while !back && Instant::now() < deadline {
                back = store.execute(read(&failing_players[0])).await.is_ok();
            }
            back
        },
        "the shard's players were not served again"
    );
}
