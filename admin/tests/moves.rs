//! Moving slots with `colony-admin`'s move (`docs/design/resharding.md`) on a real Redis
//! Cluster in the safe profile, while writers and traders run through the store: every
//! acknowledged write is there exactly once afterwards, trades are conserved, and each moved
//! slot is served by its new master alone. A move stopped after any step (as a killed tool
//! stops) is finished by running it again, and a master killed mid-move loses nothing
//! acknowledged: after a step reached its replicas, and before (the step's `WAIT` falls
//! short, the run stops, and the rerun finishes from what the promoted replica holds).

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
        // A replica on a loaded machine gets 3 s to acknowledge a step (the stalled ones
        // below wait that long before the step stops).
        lease: Duration::from_secs(6),
        wait_timeout: Duration::from_secs(3),
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

    // A replica that stalls before it has a step's writes stops the move at that step: the
    // source's before the park is acknowledged, the target's before the restore is.
    let source_replica = &cluster.replicas_of(&cluster.nodes()[0])[0];
    let target_replica = &cluster.replicas_of(&cluster.nodes()[1])[0];
    let mut stalled = claim(&cluster, slots[0], &to, "stalled")
        .await
        .expect("the slot is not the target's");
    stalled.open().await.expect("opens");
    let batches = stalled.unparked_batches().await.expect("lists");
    source_replica.pause().expect("paused");
    let e = stalled
        .park(&batches[0])
        .await
        .expect_err("no acknowledgement");
    source_replica.resume().expect("resumed");
    assert!(format!("{e:#}").contains("replicas acknowledged"), "{e:#}");
    let ids: Vec<String> = batches[0].iter().map(|(id, _)| id.clone()).collect();
    target_replica.pause().expect("paused");
    let e = stalled
        .restore(Some(&ids))
        .await
        .expect_err("no acknowledgement");
    target_replica.resume().expect("resumed");
    assert!(format!("{e:#}").contains("replicas acknowledged"), "{e:#}");
    drop(stalled);

    let mut keys_restored = 0;
    for &slot in &slots {
        let moved = claim(&cluster, slot, &to, "test-run")
            .await
            .expect("the slot is not the target's")
            .run_to_end()
            .await
            .unwrap_or_else(|e| panic!("slot {slot}: {e:#}"));
        keys_restored += moved.keys_restored;
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
    // Every slot holds a player at least, so each move restored a key at least (the
    // stalled slot's rerun restored what the stalled run had parked).
    assert!(
        keys_restored >= slots.len() as u64,
        "{keys_restored} keys restored"
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
    let mut slots = slots_on(&cluster, from);
    // Each rerun waits out the killed run's lease: seven steps and one seeded stop.
    slots.truncate(8);
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

/// A configuration naming every node as a seed, so the tool and the store find the cluster
/// whichever master is killed.
fn all_seeds(cluster: &RedisCluster) -> colony::Config {
    let mut config = cluster.config();
    if let Some(c) = config.cluster.as_mut() {
        c.seeds = cluster.nodes().iter().map(|n| n.address()).collect();
    }
    config
}

/// Waits until a live node names a master other than `killed` as `slot`'s owner.
async fn failed_over(cluster: &RedisCluster, slot: u16, killed: u16, asked: usize) {
    assert!(
        wait_until(Duration::from_secs(30), || cluster
            .owner_of(slot, asked)
            .is_ok_and(|o| o.port() != killed))
        .await,
        "slot {slot} never failed over from {killed}"
    );
}

/// A cluster of three masters with two replicas each (a promoted replica still has one to
/// acknowledge writes), every node a seed, with six writers and a trading pair running
/// through a store in the safe profile: what the tests that kill masters mid-move share.
struct KillRig {
    cluster: RedisCluster,
    seeds: colony::config::ClusterConfig,
    store: Store,
    target: Target,
    writers: IncrementWriters,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    trading: tokio::task::JoinHandle<(u64, u64)>,
    /// The masters as formed, `(port, address)`.
    masters: Vec<(u16, String)>,
    /// Every node's port, by index.
    ports: Vec<u16>,
}

impl KillRig {
    async fn start(seed: u64) -> KillRig {
        let cluster = RedisCluster::start(3, 2, Profile::Plain, &[]).expect("cluster starts");
        let mut config = all_seeds(&cluster);
        config.redis.acknowledge = colony::config::Acknowledge::Replicated;
        config.redis.replicas_to_wait = 1;
        config.redis.retry_deadline_ms = 20_000;
        let store = Store::connect(&config).await.expect("reads the map");
        let seeds = config.cluster.clone().expect("a [cluster]");
        let target = Target::Store(store.clone());
        let writers = IncrementWriters::start(target.clone(), 6, "mv", PLAYERS, seed);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trading = start_trading(store.clone(), stop.clone());
        assert!(
            wait_until(Duration::from_secs(20), || writers.acknowledged() >= 200).await,
            "writes never got going"
        );
        let masters = cluster
            .master_nodes()
            .iter()
            .map(|m| (m.port(), m.address()))
            .collect();
        let ports = cluster.nodes().iter().map(|n| n.port()).collect();
        KillRig {
            cluster,
            seeds,
            store,
            target,
            writers,
            stop,
            trading,
            masters,
            ports,
        }
    }

    /// Waits until the node at `target` knows the master that serves `slot` now (as node
    /// `asked` says) as a master serving slots.
    async fn target_knows_the_new_source(&self, slot: u16, asked: usize, target: u16) {
        let source = self.cluster.owner_of(slot, asked).expect("owned").port();
        let target = self.index_of(target);
        assert!(
            wait_until(Duration::from_secs(30), || self
                .cluster
                .serves_slots(source, target))
            .await,
            "the target never learnt of the promoted source {source}"
        );
    }

    /// The index of the node at `port`.
    fn index_of(&self, port: u16) -> usize {
        self.ports.iter().position(|&p| p == port).expect("a node")
    }

    /// Claims the move of `slot` to `to` for `run`, waiting out a stopped run's lease or a
    /// failover.
    async fn claim(&self, slot: u16, to: &str, run: &str) -> SlotMove {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match SlotMove::claim(
                &self.seeds,
                Slot::new(slot).expect("slot"),
                to,
                run,
                1,
                options(),
            )
            .await
            {
                Ok(m) => return m,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("slot {slot}: never claimed: {e:#}")
                }
                // The stopped run's lease, or the failover, has not passed yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Lets the writers go on, stops them and the traders, and checks that every
    /// acknowledged write is there once and the trades are conserved.
    async fn check(self, what: &str) {
        let before = self.writers.acknowledged();
        assert!(
            wait_until(Duration::from_secs(30), || self.writers.acknowledged()
                >= before + 200)
            .await,
            "writes did not go on after the kills"
        );
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.trading.await.expect("trading ends");
        self.writers
            .stop()
            .await
            .check_against(&self.target)
            .await
            .assert_exact(what);
        assert_eq!(traders_total(&self.store).await, 200, "trades conserved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_move_loses_nothing_acknowledged() {
    let mut rig = KillRig::start(13).await;
    let masters = rig.masters.clone();

    // The source's master dies after a batch was parked (and waited for on its replicas),
    // before the batch reached the target.
    let (s_port, t_addr) = (masters[1].0, masters[2].1.clone());
    let slot = slots_on(&rig.cluster, s_port)[0];
    let mut first = rig.claim(slot, &t_addr, "before-the-kill").await;
    first.open().await.expect("opens");
    let batches = first.unparked_batches().await.expect("lists");
    let parked = first.park(&batches[0]).await.expect("parks");
    assert!(parked > 0);
    drop(first);
    let (source, asked) = (rig.index_of(s_port), rig.index_of(masters[0].0));
    rig.cluster.node_mut(source).kill().expect("killed");
    failed_over(&rig.cluster, slot, s_port, asked).await;
    // The target too must know the promoted source as a master before the rerun's `SETSLOT
    // IMPORTING` names it ("Target node is not a master" otherwise, while gossip spreads).
    rig.target_knows_the_new_source(slot, asked, masters[2].0)
        .await;
    let moved = rig
        .claim(slot, &t_addr, "after-the-source-died")
        .await
        .run_to_end()
        .await
        .expect("the move finishes on the promoted source");
    assert!(
        moved.keys_restored >= parked,
        "the parked copies were restored from the promoted source: {moved:?}"
    );

    // The target's master dies after a batch was restored (and waited for on its replicas);
    // the move goes on to the replica that took its place.
    let (s_port, t_port) = (masters[0].0, masters[2].0);
    let slot = slots_on(&rig.cluster, s_port)[0];
    let mut first = rig.claim(slot, &t_addr, "before-the-kill").await;
    first.open().await.expect("opens");
    let batches = first.unparked_batches().await.expect("lists");
    first.park(&batches[0]).await.expect("parks");
    let ids: Vec<String> = batches[0].iter().map(|(id, _)| id.clone()).collect();
    first.restore(Some(&ids)).await.expect("restores");
    drop(first);
    let new_target = kill_target(&mut rig, t_port, s_port, &[]).await;
    rig.claim(slot, &new_target, "after-the-target-died")
        .await
        .run_to_end()
        .await
        .expect("the move finishes on the promoted target");
    let asked = rig.index_of(s_port);
    assert_eq!(
        rig.cluster.owner_of(slot, asked).expect("owned").address(),
        new_target
    );
    rig.check("writes while masters died mid-move").await;
}

/// Kills the target master at `t_port`, resumes the `stalled` replicas, and waits for a
/// replica to take its slots (as the master at `s_port` says): its address.
async fn kill_target(rig: &mut KillRig, t_port: u16, s_port: u16, stalled: &[u16]) -> String {
    let (target, asked) = (rig.index_of(t_port), rig.index_of(s_port));
    // A slot the target serves, to find the replica promoted in its place.
    let its_slot = (0..16384u16)
        .find(|&s| {
            rig.cluster
                .owner_of(s, asked)
                .is_ok_and(|o| o.port() == t_port)
        })
        .expect("a slot of the target");
    rig.cluster.node_mut(target).kill().expect("killed");
    resume(&rig.cluster, stalled);
    failed_over(&rig.cluster, its_slot, t_port, asked).await;
    rig.cluster
        .owner_of(its_slot, asked)
        .expect("owned")
        .address()
}

/// Stops (SIGSTOP) every replica of `master`, then writes 32 MiB more than their socket
/// buffers hold on it (in a slot it serves other than `moving`), so what the master takes
/// next reaches it alone. (Writers keep writing, so the replicas are never quite caught up
/// when they stop; what was acknowledged before is on them.) Returns their ports.
async fn stall_replicas(
    cluster: &RedisCluster,
    master: &colony_testkit::RedisServer,
    moving: u16,
) -> Vec<u16> {
    let replicas: Vec<u16> = cluster
        .replicas_of(master)
        .iter()
        .map(|r| r.port())
        .collect();
    assert!(!replicas.is_empty(), "{} has no replica", master.address());
    for r in cluster
        .nodes()
        .iter()
        .filter(|n| replicas.contains(&n.port()))
    {
        r.pause().expect("stop a replica");
    }
    let beside = (0..)
        .map(|i| pid(&format!("ballast-{i}")))
        .find(|p| {
            let slot = keys::player_slot(p).get();
            slot != moving
                && cluster
                    .owner_of(slot, 0)
                    .is_ok_and(|o| o.port() == master.port())
        })
        .expect("a slot of the master");
    let mut conn = redis::Client::open(master.url())
        .expect("client")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("connects");
    let _: () = redis::cmd("SET")
        .arg(format!("{{{}}}:ballast", beside.as_str()))
        .arg(vec![b'x'; 32 << 20])
        .query_async(&mut conn)
        .await
        .expect("ballast written");
    replicas
}

/// Resumes the replicas stopped by [`stall_replicas`].
fn resume(cluster: &RedisCluster, replicas: &[u16]) {
    for r in cluster
        .nodes()
        .iter()
        .filter(|n| replicas.contains(&n.port()))
    {
        r.resume().expect("resume a replica");
    }
}

/// A master killed after a step of a move reached it but *before* its replicas had it: the
/// source's park (its tombstones and parked copies on S's master alone), then the target's
/// restore (the copies on T's master alone). Each step's `WAIT` falls short, so the run
/// stops there; the master dies with what its replicas lacked, and a rerun on the promoted
/// replica finishes the move from what the replicas held. Every acknowledged write is there
/// exactly once afterwards and trades are conserved. (A tool that went on after a park its
/// replicas never saw would restore copies of players the promoted source then serves and
/// writes, and the close would replace those writes with the older copies.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_before_a_step_reached_its_replicas_loses_nothing_acknowledged() {
    let mut rig = KillRig::start(17).await;
    let masters = rig.masters.clone();

    // The source's park reaches its master alone; the master dies.
    let (s_port, t_addr) = (masters[1].0, masters[2].1.clone());
    let slot = slots_on(&rig.cluster, s_port)[0];
    let mut first = rig.claim(slot, &t_addr, "park-unreplicated").await;
    first.open().await.expect("opens");
    let batches = first.unparked_batches().await.expect("lists");
    let (source, asked) = (rig.index_of(s_port), rig.index_of(masters[0].0));
    let stalled = stall_replicas(&rig.cluster, &rig.cluster.nodes()[source], slot).await;
    let e = first
        .park(&batches[0])
        .await
        .expect_err("a park the replicas never saw is not acknowledged");
    assert!(format!("{e:#}").contains("replicas acknowledged"), "{e:#}");
    drop(first);
    rig.cluster.node_mut(source).kill().expect("killed");
    resume(&rig.cluster, &stalled);
    failed_over(&rig.cluster, slot, s_port, asked).await;
    // The target too must know the promoted source as a master before the rerun's `SETSLOT
    // IMPORTING` names it ("Target node is not a master" otherwise, while gossip spreads).
    rig.target_knows_the_new_source(slot, asked, masters[2].0)
        .await;
    rig.claim(slot, &t_addr, "after-the-source-died")
        .await
        .run_to_end()
        .await
        .expect("the move finishes on the promoted source");
    assert_eq!(
        rig.cluster.owner_of(slot, asked).expect("owned").address(),
        t_addr
    );

    // The target's restore reaches its master alone; the master dies.
    let (s_port, t_port) = (masters[0].0, masters[2].0);
    let slot = slots_on(&rig.cluster, s_port)[0];
    let mut first = rig.claim(slot, &t_addr, "restore-unreplicated").await;
    first.open().await.expect("opens");
    let batches = first.unparked_batches().await.expect("lists");
    first.park(&batches[0]).await.expect("parks");
    let ids: Vec<String> = batches[0].iter().map(|(id, _)| id.clone()).collect();
    let target = rig.index_of(t_port);
    let stalled = stall_replicas(&rig.cluster, &rig.cluster.nodes()[target], slot).await;
    let e = first
        .restore(Some(&ids))
        .await
        .expect_err("a restore the replicas never saw is not acknowledged");
    assert!(format!("{e:#}").contains("replicas acknowledged"), "{e:#}");
    drop(first);
    let new_target = kill_target(&mut rig, t_port, s_port, &stalled).await;
    rig.claim(slot, &new_target, "after-the-target-died")
        .await
        .run_to_end()
        .await
        .expect("the move finishes on the promoted target");
    let asked = rig.index_of(s_port);
    assert_eq!(
        rig.cluster.owner_of(slot, asked).expect("owned").address(),
        new_target
    );
    rig.check("writes while masters died before a move's step reached their replicas")
        .await;
}
