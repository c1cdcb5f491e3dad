//! Moving slots with `colony-admin`'s move (`docs/design/resharding.md`) on a real Redis
//! Cluster in the safe profile, while writers and traders run through the store: every
//! acknowledged write is there exactly once afterwards, trades are conserved, and each moved
//! slot is served by its new master alone. A move stopped after any step (as a killed tool
//! stops) is finished by running it again, and a master killed mid-move loses nothing
//! acknowledged.

use std::time::Duration;

use colony::keys;
use colony::slot::Slot;
use colony::store::Store;
use colony::{MultiTransaction, Participant, PlayerId, Transaction};
use colony_admin::slot_move::{MoveOptions, SlotMove};
use colony_testkit::writers::Target;
use colony_testkit::{
    seed_from_env, wait_for, wait_until, IncrementWriters, Profile, RedisCluster, Seeded,
};

const PLAYERS: u64 = 60;
const TRADERS: [&str; 2] = ["mv-trader-a", "mv-trader-b"];

async fn store_on(cluster: &RedisCluster) -> Store {
    let mut config = cluster.config();
    config.redis.acknowledge = colony::config::Acknowledge::Replicated;
    config.redis.replicas_to_wait = 1;
    config.redis.retry_deadline_ms = 20_000;
    Store::connect(&config)
        .await
        .expect("reads the cluster's map")
}

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

/// The slots of the writers' and traders' players that `from` serves, in order.
fn slots_on(cluster: &RedisCluster, from: u16) -> Vec<u16> {
    let mut slots: Vec<u16> = (0..PLAYERS)
        .map(|n| format!("mv-{n}"))
        .chain(TRADERS.iter().map(|t| t.to_string()))
        .map(|id| keys::player_slot(&pid(&id)).get())
        .filter(|&slot| cluster.owner_of(slot, 0).is_ok_and(|o| o.port() == from))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots
}

/// Two traders funded with 100 gold each, then trading 1 gold back and forth until stopped.
/// Returns the task; its result is (trades acknowledged, trades whose outcome is unknown).
fn start_trading(
    store: Store,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (a, b) = (pid(TRADERS[0]), pid(TRADERS[1]));
        for (who, n) in [(&a, 1), (&b, 2)] {
            store
                .execute(
                    Transaction::owner(who.clone(), colony::IdempotencyKey::new("fund", n).ok())
                        .with(gold(100)),
                )
                .await
                .expect("funded");
        }
        let (mut acked, mut unknown) = (0, 0);
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let (from, to) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let trade =
                MultiTransaction::new(colony::IdempotencyKey::new("mv-trades", n).expect("key"))
                    .with(Participant::owner(from.clone()).with(gold(-1)))
                    .with(Participant::owner(to.clone()).with(gold(1)));
            match store.execute_multi(trade).await {
                Ok(_) => acked += 1,
                Err(colony::Error::Unknown { .. }) => unknown += 1,
                Err(_) => {}
            }
        }
        (acked, unknown)
    })
}

/// Both traders' gold, read once every intent is settled.
async fn traders_total(store: &Store) -> i64 {
    let mut total = 0;
    for t in TRADERS {
        let read = wait_for(Duration::from_secs(20), || {
            let store = store.clone();
            async move {
                store
                    .execute(
                        Transaction::owner(pid(t), None).with(colony::Operation::Read {
                            names: vec![colony::Name::new("gold").expect("name")],
                        }),
                    )
                    .await
                    .ok()
            }
        })
        .await
        .expect("the trader is readable");
        let gold = read.reads[0]
            .entries
            .first()
            .map(|e| match e.value {
                colony::Value::Counter(n) => n,
                _ => panic!("gold is a counter"),
            })
            .unwrap_or(0);
        total += gold;
    }
    total
}

fn options() -> MoveOptions {
    MoveOptions {
        // Small batches: most slots here move in several.
        batch_bytes: 64,
        lease: Duration::from_millis(1500),
        wait_timeout: Duration::from_secs(5),
    }
}

/// Claims the move of `slot` to `to` for `run`, waiting out another run's lease (a killed
/// tool's); `None` when the map already names `to` the slot's owner (a run killed after
/// telling T, whose claim gossip spreads).
async fn claim(cluster: &RedisCluster, slot: u16, to: &str, run: &str) -> Option<SlotMove> {
    let config = cluster.config().cluster.expect("a [cluster]");
    let slot = Slot::new(slot).expect("a slot");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match SlotMove::claim(&config, slot, to, run, 1, options()).await {
            Ok(m) => return Some(m),
            Err(e) if e.to_string().contains("already served by") => return None,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("slot {}: never claimed: {e:#}", slot.get())
            }
            // Another run's lease (a killed tool's) has not passed yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_move_under_writers_and_trades_with_nothing_lost_or_applied_twice() {
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster).await;
    let target = Target::Store(store.clone());
    let writers = IncrementWriters::start(target.clone(), 6, "mv", PLAYERS, 7);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trading = start_trading(store.clone(), stop.clone());
    assert!(
        wait_until(Duration::from_secs(20), || writers.acknowledged() >= 200).await,
        "writes never got going"
    );
    let (from, to) = (cluster.nodes()[0].port(), cluster.nodes()[1].address());
    let slots = slots_on(&cluster, from);
    assert!(slots.len() >= 5, "only {} slots to move", slots.len());
    let mut players_moved = 0;
    for &slot in &slots {
        let moved = claim(&cluster, slot, &to, "test-run")
            .await
            .expect("the slot is not the target's")
            .run_to_end()
            .await
            .unwrap_or_else(|e| panic!("slot {slot}: {e:#}"));
        players_moved += moved.players;
    }
    let before = writers.acknowledged();
    assert!(
        wait_until(Duration::from_secs(20), || writers.acknowledged()
            >= before + 200)
        .await,
        "writes did not go on after the moves"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (trades, unknown) = trading.await.expect("trading ends");
    let history = writers.stop().await;
    history
        .check_against(&target)
        .await
        .assert_exact("writes while colony-admin moved slots");
    assert_eq!(
        traders_total(&store).await,
        200,
        "trades conserved ({trades} acknowledged, {unknown} unknown)"
    );
    assert!(trades > 0, "no trade went through");
    for &slot in &slots {
        assert_eq!(
            cluster.owner_of(slot, 0).expect("owned").address(),
            to,
            "slot {slot}"
        );
    }
    assert!(
        players_moved >= slots.len() as u64,
        "{players_moved} players moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_stopped_after_any_step_is_finished_by_running_it_again() {
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster).await;
    let target = Target::Store(store.clone());
    let writers = IncrementWriters::start(target.clone(), 6, "mv", PLAYERS, 11);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trading = start_trading(store.clone(), stop.clone());
    assert!(
        wait_until(Duration::from_secs(20), || writers.acknowledged() >= 200).await,
        "writes never got going"
    );
    let (from, to) = (cluster.nodes()[0].port(), cluster.nodes()[2].address());
    let slots = slots_on(&cluster, from);
    assert!(
        slots.len() >= 7,
        "only {} slots: every step needs one",
        slots.len()
    );
    let mut random = Seeded::new(seed_from_env());
    // Steps a run may be stopped after: 0 claim, 1 open, 2 a first park, 3 its restore,
    // 4 every batch, 5 migrating and the bookkeeping, 6 the close sent to T alone.
    for (i, &slot) in slots.iter().enumerate() {
        let stop_after = if i < 7 { i as u64 } else { random.range(0, 7) };
        let mut first = claim(&cluster, slot, &to, &format!("killed-{slot}"))
            .await
            .expect("the slot is not the target's");
        stop_partway(&mut first, stop_after)
            .await
            .unwrap_or_else(|e| panic!("slot {slot}, step {stop_after}: {e:#}"));
        drop(first);
        // The killed run's lease must pass before another run may take the move over.
        if let Some(rerun) = claim(&cluster, slot, &to, &format!("rerun-{slot}")).await {
            rerun
                .run_to_end()
                .await
                .unwrap_or_else(|e| panic!("slot {slot} after step {stop_after}: {e:#}"));
        }
        for asked in 0..cluster.nodes().len() {
            assert!(
                wait_until(Duration::from_secs(10), || cluster
                    .owner_of(slot, asked)
                    .is_ok_and(|o| o.address() == to))
                .await,
                "slot {slot}: node {asked} never named the target"
            );
        }
        assert_eq!(cluster.owner_of(slot, 0).expect("owned").address(), to);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = trading.await.expect("trading ends");
    writers
        .stop()
        .await
        .check_against(&target)
        .await
        .assert_exact("writes while moves were killed and run again");
    assert_eq!(traders_total(&store).await, 200, "trades conserved");
}

/// Runs `m`'s steps up to and including step `stop_after` (see the caller), then returns as
/// a killed tool would.
async fn stop_partway(m: &mut SlotMove, stop_after: u64) -> anyhow::Result<()> {
    if stop_after == 0 {
        return Ok(());
    }
    m.open().await?;
    if stop_after == 1 {
        return Ok(());
    }
    let batches = m.unparked_batches().await?;
    for (b, batch) in batches.iter().enumerate() {
        m.park(batch).await?;
        if stop_after == 2 && b == 0 {
            return Ok(());
        }
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        m.restore(Some(&ids)).await?;
        if stop_after == 3 && b == 0 {
            return Ok(());
        }
    }
    if stop_after <= 4 {
        return Ok(());
    }
    m.migrate().await?;
    m.copy_bookkeeping().await?;
    if stop_after == 5 {
        return Ok(());
    }
    m.close_on_target().await
}
