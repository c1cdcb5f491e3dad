//! `colony-admin add-node` then `rebalance` from 3 to 4 masters under writers and trades, on
//! a real Redis Cluster in the replicated profile: a quarter of the slots (4,096) move to the
//! new master, every acknowledged write is there exactly once, and trades are conserved.
//! Slow (every slot's move and close, one after another): in the `slow-tests` tier.

use std::time::Duration;

use colony::{MultiTransaction, Participant, PlayerId, Store, Transaction};
use colony_admin::reshard::{Pace, Quiet};
use colony_admin::slot_move::MoveOptions;
use colony_testkit::writers::Target;
use colony_testkit::{wait_for, wait_until, IncrementWriters, Profile, RedisCluster};

fn gold(delta: i64) -> colony::Operation {
    colony::Operation::IncrementCounter {
        name: colony::Name::new("gold").expect("name"),
        delta,
        min: Some(0),
        max: None,
        visibility: colony::Visibility::Private,
    }
}

fn pid(s: &str) -> PlayerId {
    PlayerId::new(s).expect("valid id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_then_rebalance_from_three_to_four_masters_under_load() {
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let mut config = cluster.config();
    config.redis.acknowledge = colony::config::Acknowledge::Replicated;
    config.redis.replicas_to_wait = 1;
    config.redis.retry_deadline_ms = 20_000;
    let store = Store::connect(&config).await.expect("store");
    let target = Target::Store(store.clone());
    let writers = IncrementWriters::start(target.clone(), 6, "rebalance", 300, 3);
    let (a, b) = (pid("rebalance-trader-a"), pid("rebalance-trader-b"));
    for (who, n) in [(&a, 1), (&b, 2)] {
        store
            .execute(
                Transaction::owner(who.clone(), colony::IdempotencyKey::new("fund", n).ok())
                    .with(gold(100)),
            )
            .await
            .expect("funded");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trading = {
        let (store, stop, a, b) = (store.clone(), stop.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let (from, to) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let trade = MultiTransaction::new(
                    colony::IdempotencyKey::new("rebalance", n).expect("key"),
                )
                .with(Participant::owner(from.clone()).with(gold(-1)))
                .with(Participant::owner(to.clone()).with(gold(1)));
                let _ = store.execute_multi(trade).await;
            }
            n
        })
    };
    let seeds = config.cluster.clone().expect("a [cluster]");
    let master = RedisCluster::fresh_node(Profile::Plain).expect("a node");
    let replica = RedisCluster::fresh_node(Profile::Plain).expect("a node");
    colony_admin::add_node(&seeds, &master.address(), None)
        .await
        .expect("joins as a master");
    colony_admin::add_node(&seeds, &replica.address(), Some(&master.address()))
        .await
        .expect("joins as its replica");
    let pace = Pace {
        options: MoveOptions {
            batch_bytes: 1 << 20,
            lease: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(2),
        },
        replicas: 1,
        players_per_second: None,
    };
    let report = colony_admin::reshard::rebalance(&seeds, None, &pace, &Quiet)
        .await
        .expect("rebalances");
    eprintln!(
        "rebalance: {} slots, {} players, {} keys in {:.1} s",
        report.moved.len(),
        report.players,
        report.keys,
        report.seconds
    );
    assert_eq!(report.moved.len(), 4096);
    let status = colony_admin::status(&seeds).await.expect("status");
    assert_eq!(status.shards.len(), 4, "{status:?}");
    for shard in &status.shards {
        assert!((4095..=4097).contains(&shard.slot_count), "{shard:?}");
    }
    let before = writers.acknowledged();
    assert!(
        wait_until(Duration::from_secs(20), || writers.acknowledged()
            >= before + 100)
        .await,
        "writes did not go on"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let trades = trading.await.expect("trading ends");
    writers
        .stop()
        .await
        .check_against(&target)
        .await
        .assert_exact("writes while rebalancing from 3 to 4 masters");
    let mut total = 0;
    for t in [&a, &b] {
        let read = wait_for(Duration::from_secs(20), || {
            let store = store.clone();
            let t = t.clone();
            async move {
                store
                    .execute(Transaction::owner(t, None).with(colony::Operation::Read {
                        names: vec![colony::Name::new("gold").expect("name")],
                    }))
                    .await
                    .ok()
            }
        })
        .await
        .expect("readable");
        total += read.reads[0]
            .entries
            .first()
            .map(|e| match e.value {
                colony::Value::Counter(n) => n,
                _ => 0,
            })
            .unwrap_or(0);
    }
    assert_eq!(total, 200, "trades conserved over {trades} attempts");
}
