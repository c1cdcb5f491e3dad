//! The store on a real Redis Cluster: the map read from the cluster, transactions routed by
//! it, a map gone stale under a slot moved by hand (`MOVED`), a slot in the middle of a move
//! (`ASK`, `TRYAGAIN`), trades between masters, and a master killed and replaced by the
//! cluster's own failover.

mod common;

use std::time::Duration;

use colony::client::{Client, ClientConfig};
use colony::{
    keys, Envelope, Error, IdempotencyKey, Item, ItemResult, MultiTransaction, Operation,
    Participant, PlayerId, Store, Transaction, Value,
};
use colony_testkit::{
    wait_for, wait_until, with_test_gateway, IncrementWriters, Profile, RedisCluster, RedisServer,
    Target, TestGateway, ADMIN_TOKEN,
};
use common::{get_admin, gold, key, name, pid};

fn gold_of(committed: &colony::Committed) -> Option<i64> {
    committed
        .reads
        .iter()
        .flat_map(|r| &r.entries)
        .find(|e| e.name.as_str() == "gold")
        .and_then(|e| match e.value {
            Value::Counter(n) => Some(n),
            _ => None,
        })
}

fn read_gold() -> Operation {
    Operation::Read {
        names: vec![name("gold")],
    }
}

async fn stored_gold(store: &Store, player: &PlayerId) -> Option<i64> {
    let read = Transaction::owner(player.clone(), None).with(read_gold());
    gold_of(&store.execute(read).await.expect("reads"))
}

/// A store on `cluster` whose map is read again only when a node says it is stale (the
/// periodic read is ten minutes away), so a test sees what `MOVED` alone does.
async fn store_on(cluster: &RedisCluster, tune: impl FnOnce(&mut colony::Config)) -> Store {
    let mut config = cluster.config();
    if let Some(c) = config.cluster.as_mut() {
        c.refresh_interval_ms = 600_000;
    }
    tune(&mut config);
    Store::connect(&config)
        .await
        .expect("reads the cluster's map")
}

/// The master (by the test's own look at the cluster) that serves `player`.
fn owner<'c>(cluster: &'c RedisCluster, player: &PlayerId) -> &'c RedisServer {
    cluster
        .owner_of(keys::player_slot(player).get(), 0)
        .expect("the slot has an owner")
}

#[tokio::test]
async fn transactions_are_routed_by_the_clusters_own_map() {
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |_| {}).await;
    let (view, reads, failed) = store.cluster_view().expect("a cluster store has a view");
    assert_eq!((view.groups().len(), failed), (3, 0), "{view:?}");
    assert!(reads >= 1);
    assert!(
        view.epoch() >= 3,
        "config epochs 1..=6 were given: {view:?}"
    );
    for group in view.groups() {
        assert_eq!(group.replicas.len(), 1, "{group:?}");
    }
    // The store's map and the cluster agree on every slot's master.
    let map = store.shard_map();
    for slot in [0u16, 5460, 5461, 10922, 10923, 16383] {
        let shard = map.shard_for_slot(colony::slot::Slot::new(slot).expect("slot"));
        let master = view
            .group(shard)
            .and_then(|g| g.master.clone())
            .expect("a master");
        assert_eq!(
            master.address,
            cluster.owner_of(slot, 1).expect("owner").address(),
            "slot {slot}"
        );
    }

    // A batch across every master, then each player read back.
    let players: Vec<PlayerId> = (0..120).map(|i| pid(&format!("routed-{i}"))).collect();
    let batch: Vec<Transaction> = players
        .iter()
        .enumerate()
        .map(|(i, p)| Transaction::owner(p.clone(), key(i as u64 + 1)).with(gold(i as i64 + 1)))
        .collect();
    for result in store.execute_batch(batch).await.expect("a batch") {
        result.expect("each commits");
    }
    let mut served = std::collections::BTreeSet::new();
    for (i, p) in players.iter().enumerate() {
        assert_eq!(stored_gold(&store, p).await, Some(i as i64 + 1), "{p:?}");
        served.insert(owner(&cluster, p).port());
    }
    assert_eq!(served.len(), 3, "the players span every master");
    // Nothing was redirected: the map was right from the start.
    assert_eq!(store.cluster_view().expect("view").1, reads);
}

#[tokio::test]
async fn a_slot_moved_under_a_stale_map_is_served_after_one_read_of_the_map() {
    let cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |_| {}).await;
    let p = pid("mover");
    let first = store
        .execute(Transaction::owner(p.clone(), key(1)).with(gold(5)))
        .await
        .expect("commits");
    assert_eq!(first.version, 1);
    let (before, reads_before, _) = store.cluster_view().expect("view");

    // The slot moves behind the store's back, keys and all.
    let from = owner(&cluster, &p).port();
    let to = cluster
        .nodes()
        .iter()
        .take(3)
        .find(|n| n.port() != from)
        .expect("another master");
    let moved = cluster
        .move_slot(keys::player_slot(&p).get(), to)
        .expect("the slot moves");
    assert!(moved >= 1, "the player's keys moved");

    // The stale map sends the write to the old master, which answers MOVED before running
    // anything; the store reads the map again and the retry lands on the new owner.
    let second = store
        .execute(
            Transaction::owner(p.clone(), key(2))
                .with(gold(7))
                .with(read_gold()),
        )
        .await
        .expect("served on the new owner");
    assert_eq!((second.version, gold_of(&second)), (2, Some(12)));
    let (after, reads_after, _) = store.cluster_view().expect("view");
    assert!(
        reads_after > reads_before,
        "MOVED made the store read the map"
    );
    assert!(after.epoch() > before.epoch(), "the move bumped the epoch");
    let shard = after.map().shard_for_player(&p);
    assert_eq!(
        after
            .group(shard)
            .and_then(|g| g.master.clone())
            .map(|m| m.address),
        Some(to.address())
    );
    // The retry of the first write still replays: its idempotency record moved with it.
    let replay = store
        .execute(Transaction::owner(p.clone(), key(1)).with(gold(5)))
        .await
        .expect("replays");
    assert!(replay.replayed);
    assert_eq!(stored_gold(&store, &p).await, Some(12));
}

#[tokio::test]
async fn a_write_to_a_slot_being_migrated_waits_for_the_move_and_applies_once() {
    let cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |config| {
        config.redis.retry_deadline_ms = 20_000;
    })
    .await;
    let p = pid("migrant");
    store
        .execute(Transaction::owner(p.clone(), key(1)).with(gold(1)))
        .await
        .expect("commits");
    let slot = keys::player_slot(&p).get();
    let from = owner(&cluster, &p);
    let to = cluster
        .nodes()
        .iter()
        .take(3)
        .find(|n| n.port() != from.port())
        .expect("another master");
    let (from_id, to_id) = (node_id(from).await, node_id(to).await);
    // Half a move: the target imports, the source migrates, no key has moved yet. A player
    // some of whose keys are absent is refused (TRYAGAIN or ASK) until the move ends.
    setslot(to, slot, "IMPORTING", &from_id).await;
    setslot(from, slot, "MIGRATING", &to_id).await;
    // A new player of another slot of the source, a slot with no keys at all, moving too:
    // the source sends its writes on to the target (ASK), where a script of several keys
    // answers TRYAGAIN until the move ends. (A slot holding any player answers TRYAGAIN at
    // the source already: some of the script's keys exist there, some do not.)
    let newcomer = (0..1_000_000)
        .map(|i| pid(&format!("newcomer-{i}")))
        .find(|q| {
            let s = keys::player_slot(q).get();
            s != slot
                && cluster
                    .owner_of(s, 0)
                    .is_ok_and(|o| o.port() == from.port())
        })
        .expect("a player of another slot of the source");
    let empty_slot = keys::player_slot(&newcomer).get();
    setslot(to, empty_slot, "IMPORTING", &from_id).await;
    setslot(from, empty_slot, "MIGRATING", &to_id).await;
    let asking_before = asking_calls(to).await;
    let retries = store.retries();
    let write = |player: &PlayerId, request: u64| {
        let store = store.clone();
        let txn = Transaction::owner(player.clone(), key(request))
            .with(gold(10))
            .with(read_gold());
        tokio::spawn(async move { store.execute(txn).await })
    };
    let (old, new) = (write(&p, 2), write(&newcomer, 3));
    // Both are refused and retried meanwhile, with nothing applied.
    let refused = wait_for(Duration::from_secs(10), || async {
        (store.retries() > retries + 4 && asking_calls(to).await > asking_before).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the writes were refused during the move, the newcomer's on the target after ASKING \
         (retries {} → {}, ASKING {asking_before} → {})",
        retries,
        store.retries(),
        asking_calls(to).await
    );
    assert!(!old.is_finished() && !new.is_finished());
    cluster.move_slot(slot, to).expect("the move finishes");
    assert_eq!(
        cluster
            .move_slot(empty_slot, to)
            .expect("the move finishes"),
        0
    );
    let done = old.await.expect("joins").expect("applies after the move");
    assert_eq!((done.version, gold_of(&done)), (2, Some(11)));
    let done = new.await.expect("joins").expect("applies after the move");
    assert_eq!((done.version, gold_of(&done)), (1, Some(10)));
    assert_eq!(stored_gold(&store, &p).await, Some(11));
    assert_eq!(stored_gold(&store, &newcomer).await, Some(10));
}

/// How many `ASKING` commands `node` has run.
async fn asking_calls(node: &RedisServer) -> u64 {
    let mut conn = common::raw(node).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_asking:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_redis_clis_own_reshard_lose_nothing_and_apply_once() {
    // A studio may move slots with `redis-cli --cluster reshard`: it migrates 10 keys at a
    // time in GETKEYSINSLOT order, so a player's keys are split across batches and its
    // writes meet TRYAGAIN, ASK and then MOVED. The store must retry and follow them all.
    let cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |config| {
        config.redis.retry_deadline_ms = 10_000;
    })
    .await;
    let target = Target::Store(store.clone());
    let writers = IncrementWriters::start(target.clone(), 8, "reshard", 300, 24);
    assert!(
        wait_until(Duration::from_secs(20), || writers.acknowledged() >= 300).await,
        "writes never got going"
    );
    let (from, to) = (&cluster.nodes()[0], &cluster.nodes()[1]);
    let (from_id, to_id) = (node_id(from).await, node_id(to).await);
    let seed = from.address();
    let moved_before = writers.acknowledged();
    let reshard = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", "2000", "--cluster-yes"])
            .output()
            .expect("redis-cli runs")
    })
    .await
    .expect("joins");
    assert!(
        reshard.status.success(),
        "{}",
        String::from_utf8_lossy(&reshard.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(20), || writers.acknowledged()
            >= moved_before + 300)
        .await,
        "writes did not go on after the reshard"
    );
    let history = writers.stop().await;
    history
        .check_against(&target)
        .await
        .assert_exact("writes during redis-cli --cluster reshard");
    // The moved slots were served on their new master, by a map the store read again.
    let moved = (0..16384u16)
        .filter(|&slot| {
            cluster
                .owner_of(slot, 0)
                .is_ok_and(|o| o.port() == to.port())
        })
        .count();
    assert!(moved >= 5461 + 2000, "{moved} slots on the target");
    let players_moved = (0..300)
        .map(|n| pid(&format!("reshard-{n}")))
        .filter(|p| {
            let slot = keys::player_slot(p).get();
            (0..=5460).contains(&slot) && owner(&cluster, p).port() == to.port()
        })
        .count();
    assert!(players_moved > 0, "no written player was in a moved slot");
}

/// Two players the store's map places on different masters (`<prefix>-a` and the first
/// `<prefix>-b-<n>` that is elsewhere), each funded with 100 gold.
async fn two_traders(store: &Store, prefix: &str) -> (PlayerId, PlayerId) {
    let map = store.shard_map();
    let alice = pid(&format!("{prefix}-a"));
    let bob = (0..100)
        .map(|i| pid(&format!("{prefix}-b-{i}")))
        .find(|b| map.shard_for_player(b) != map.shard_for_player(&alice))
        .expect("a player on another master");
    for (i, p) in [&alice, &bob].into_iter().enumerate() {
        store
            .execute(Transaction::owner(p.clone(), key(i as u64 + 1)).with(gold(100)))
            .await
            .expect("funded");
    }
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_whose_participants_slot_is_moving_waits_and_applies_once() {
    // Alice's slot is half moved (every key already on the target, the slot not yet handed
    // over): her steps answer TRYAGAIN on both ends. The trade waits within its deadline and
    // commits once, on her new master, when the move ends.
    let cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |config| {
        config.redis.retry_deadline_ms = 10_000;
    })
    .await;
    let (alice, bob) = two_traders(&store, "mover").await;
    let slot = keys::player_slot(&alice).get();
    let from = owner(&cluster, &alice).port();
    let bob_master = owner(&cluster, &bob).port();
    let to = cluster
        .master_nodes()
        .into_iter()
        .find(|m| m.port() != from && m.port() != bob_master)
        .expect("a third master");
    assert!(cluster.start_move(slot, to).expect("the move starts") >= 1);
    let trade = MultiTransaction::new(IdempotencyKey::new("moving-trade", 1).expect("key"))
        .with(Participant::owner(alice.clone()).with(gold(-30)))
        .with(Participant::owner(bob.clone()).with(gold(30)));
    let retried_before = store.retries();
    let trading = {
        let store = store.clone();
        let trade = trade.clone();
        tokio::spawn(async move { store.execute_multi(trade).await })
    };
    // The trade cannot finish while the slot is half moved: it meets the move (TRYAGAIN) and
    // is retried, still unfinished.
    let met = wait_for(Duration::from_secs(10), || async {
        (store.retries() > retried_before).then_some(())
    })
    .await;
    assert!(met.is_some(), "the trade never met the move");
    assert!(!trading.is_finished(), "the trade finished mid-move");
    cluster.finish_move(slot, to).expect("the move ends");
    let committed = trading
        .await
        .expect("joins")
        .expect("commits after the move");
    assert_eq!(committed.participants.len(), 2);
    assert_eq!(stored_gold(&store, &alice).await, Some(70));
    assert_eq!(stored_gold(&store, &bob).await, Some(130));
    // Sent again with its key, it is recognised, not applied twice.
    let again = store.execute_multi(trade).await.expect("replays");
    assert_eq!(again.participants.len(), 2);
    assert_eq!(stored_gold(&store, &alice).await, Some(70));
    assert_eq!(stored_gold(&store, &bob).await, Some(130));
    assert_eq!(owner(&cluster, &alice).port(), to.port());
}

#[tokio::test]
async fn trades_between_players_on_different_masters_commit_on_both() {
    let cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |_| {}).await;
    let (alice, bob) = two_traders(&store, "trader").await;
    let trade = MultiTransaction::new(IdempotencyKey::new("trade", 1).expect("key"))
        .with(Participant::owner(alice.clone()).with(gold(-30)))
        .with(Participant::owner(bob.clone()).with(gold(30)));
    let committed = store.execute_multi(trade).await.expect("commits");
    assert_eq!(committed.participants.len(), 2);
    assert_eq!(stored_gold(&store, &alice).await, Some(70));
    assert_eq!(stored_gold(&store, &bob).await, Some(130));
}

#[tokio::test]
async fn a_killed_master_is_replaced_and_acknowledged_writes_survive() {
    let mut cluster = RedisCluster::start(3, 2, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |config| {
        config.redis.acknowledge = colony::config::Acknowledge::Replicated;
        config.redis.replicas_to_wait = 2;
    })
    .await;
    let p = pid("survivor");
    store
        .execute(Transaction::owner(p.clone(), key(1)).with(gold(40)))
        .await
        .expect("acknowledged by both replicas");
    let port = owner(&cluster, &p).port();
    let index = cluster
        .nodes()
        .iter()
        .position(|n| n.port() == port)
        .expect("the owner is a node");
    cluster.node_mut(index).kill().expect("killed");

    // Until a replica takes over, the shard refuses; then the store follows the map to it.
    // (Reads: the promoted master has one replica left, fewer than the store waits for, so
    // its writes answer UNKNOWN until it has two again.)
    let last = std::sync::Mutex::new(None);
    let served = wait_for(Duration::from_secs(30), || {
        let read = Transaction::owner(p.clone(), None).with(read_gold());
        let store = store.clone();
        let last = &last;
        async move {
            match store.execute(read).await {
                Ok(committed) => Some(committed),
                Err(e @ (Error::Unavailable { .. } | Error::Unknown { .. })) => {
                    *last.lock().expect("lock") = Some(e);
                    None
                }
                Err(e) => panic!("unexpected error while failing over: {e}"),
            }
        }
    })
    .await;
    let served = served.unwrap_or_else(|| panic!("not served by a promoted replica: {last:?}"));
    assert_eq!(
        gold_of(&served),
        Some(40),
        "the acknowledged write survived"
    );
    let new_owner = owner(&cluster, &p);
    assert_ne!(new_owner.port(), port, "a replica was promoted");
    let (view, _, _) = store.cluster_view().expect("view");
    let shard = view.map().shard_for_player(&p);
    assert_eq!(
        view.group(shard)
            .and_then(|g| g.master.clone())
            .map(|m| m.address),
        Some(new_owner.address())
    );
    assert_eq!(
        view.groups().len(),
        3,
        "the failover kept the shard: {view:?}"
    );
    // A write is applied but not acknowledged by two replicas: UNKNOWN, never OK.
    let write = store
        .execute(Transaction::owner(p.clone(), key(2)).with(gold(1)))
        .await;
    assert!(
        matches!(write, Err(Error::Unknown { .. })),
        "one replica left, two waited for: {write:?}"
    );
}

#[tokio::test]
async fn a_write_waits_for_every_replica_the_map_lists_online() {
    // Two replicas per master, one configured: the cluster's election prefers the most
    // advanced replica but does not guarantee it, so every replica must have the write. A
    // stopped replica is dropped by its master after `repl-timeout`, as the safe profile
    // sets it.
    let cluster = RedisCluster::start(
        3,
        2,
        Profile::Plain,
        &["--repl-timeout", "5", "--repl-ping-replica-period", "1"],
    )
    .expect("cluster starts");
    let store = store_on(&cluster, |config| {
        config.redis.acknowledge = colony::config::Acknowledge::Replicated;
        config.redis.replicas_to_wait = 1;
        config.redis.retry_deadline_ms = 0;
        if let Some(c) = config.cluster.as_mut() {
            c.refresh_interval_ms = 200;
        }
    })
    .await;
    let p = pid("careful");
    store
        .execute(Transaction::owner(p.clone(), key(1)).with(gold(1)))
        .await
        .expect("both replicas acknowledge");
    let master = owner(&cluster, &p);
    let stalled = cluster.replicas_of(master)[0];
    stalled.pause().expect("paused");
    // The stalled replica still counts until the cluster flags it failed: the write applies
    // on the master and one replica, and is UNKNOWN, never OK.
    let write = store
        .execute(Transaction::owner(p.clone(), key(2)).with(gold(1)))
        .await;
    let e = write.expect_err("one of two replicas is not enough");
    // (1 of 2, or 0 of 2 if the healthy replica was also slow on a loaded machine.)
    assert!(
        matches!(&e, Error::Unknown { reason, .. } if reason.contains("of 2 replicas")),
        "{e:?}"
    );
    // Once the cluster flags it failed (node timeout 2 s) and the map is read again, and its
    // master drops it (repl-timeout 5 s: until then it could answer `WAIT` in place of the
    // other), one replica online means one waited for.
    let mut request = 2;
    let ok = wait_for(Duration::from_secs(30), || {
        request += 1;
        let txn = Transaction::owner(p.clone(), key(request)).with(gold(1));
        let store = store.clone();
        async move { store.execute(txn).await.ok() }
    })
    .await;
    stalled.resume().expect("resumed");
    assert!(ok.is_some(), "writes acknowledged by the one replica left");
}

#[tokio::test]
async fn a_replica_that_moved_to_a_master_counts_before_the_map_lists_it() {
    // One replica per master; the map is read at start only. A's replica then follows B: the
    // store's map still lists it under A, but B's `ROLE` shows it attached, so B's writes wait
    // for both of B's replicas — acknowledged while both have them, never while one stalls.
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |config| {
        config.redis.acknowledge = colony::config::Acknowledge::Replicated;
        config.redis.replicas_to_wait = 1;
        config.redis.replication_timeout_ms = 1000;
        config.redis.retry_deadline_ms = 0;
    })
    .await;
    let p = pid("receiver");
    let b = owner(&cluster, &p);
    let a = cluster
        .master_nodes()
        .into_iter()
        .find(|m| m.port() != b.port())
        .expect("another master");
    let moved = cluster.replicas_of(a)[0];
    let b_id = node_id(b).await;
    let mut conn = common::raw(moved).await;
    let () = redis::cmd("CLUSTER")
        .arg("REPLICATE")
        .arg(&b_id)
        .query_async(&mut conn)
        .await
        .expect("the replica follows B");
    assert!(
        wait_until(Duration::from_secs(30), || b.replicas_online() >= 2).await,
        "B never had both replicas in sync"
    );
    // "Online" in B's INFO may come a moment before the new replica keeps up within the
    // timeout on a loaded machine: the first acknowledgement by both is waited for.
    let mut request = 0;
    let acknowledged = wait_for(Duration::from_secs(30), || {
        request += 1;
        let txn = Transaction::owner(p.clone(), key(request)).with(gold(1));
        let store = store.clone();
        async move { store.execute(txn).await.ok() }
    })
    .await;
    assert!(
        acknowledged.is_some(),
        "both of B's replicas never acknowledged"
    );
    moved.pause().expect("paused");
    let write = store
        .execute(Transaction::owner(p.clone(), key(request + 1)).with(gold(1)))
        .await;
    moved.resume().expect("resumed");
    let e = write.expect_err("the replica the map does not list yet is waited for");
    assert!(
        matches!(&e, Error::Unknown { reason, .. } if reason.contains("of 2 replicas")),
        "{e:?}"
    );
}

#[tokio::test]
async fn one_master_down_leaves_the_other_masters_players_served() {
    // No replicas: the dead master's slots stay unserved (cluster-require-full-coverage no).
    let mut cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let store = store_on(&cluster, |config| {
        config.redis.retry_deadline_ms = 300;
    })
    .await;
    let map = store.shard_map();
    let players: Vec<PlayerId> = (0..60).map(|i| pid(&format!("alive-{i}"))).collect();
    for (i, p) in players.iter().enumerate() {
        store
            .execute(Transaction::owner(p.clone(), key(i as u64 + 1)).with(gold(1)))
            .await
            .expect("commits");
    }
    let dead = cluster.nodes()[1].port();
    // Who lives where, before the kill (a failed master's slots are listed by nobody after).
    let doomed: Vec<bool> = players
        .iter()
        .map(|p| owner(&cluster, p).port() == dead)
        .collect();
    cluster.node_mut(1).kill().expect("killed");
    // Once the cluster agreed it failed: with cluster-require-full-coverage yes every master
    // would refuse from then on, which this test would catch.
    assert!(
        wait_until(Duration::from_secs(30), || cluster.flagged_failed(dead, 0)).await,
        "the cluster never flagged the dead master"
    );
    let on_dead = |p: &PlayerId| doomed[players.iter().position(|q| q == p).expect("listed")];
    let (mut served, mut refused) = (0, 0);
    for (i, p) in players.iter().enumerate() {
        let write = Transaction::owner(p.clone(), key(i as u64 + 100)).with(gold(1));
        match store.execute(write).await {
            Ok(_) => {
                assert!(!on_dead(p), "{p:?} was served by a dead master");
                served += 1;
            }
            Err(e @ (Error::Unavailable { .. } | Error::Unknown { .. })) => {
                assert!(on_dead(p), "{p:?} on a live master was refused: {e}");
                refused += 1;
            }
            Err(e) => panic!("{p:?}: {e}"),
        }
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    assert_eq!(map.shards().len(), 3);
}

#[tokio::test]
async fn a_gateway_serves_a_cluster_and_shows_its_map() {
    let cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let gw = TestGateway::start(&with_test_gateway(cluster.config()))
        .await
        .expect("the gateway reads the cluster's map and starts");
    let client = Client::connect(ClientConfig::new(gw.address.to_string(), ADMIN_TOKEN))
        .await
        .expect("connects");
    let players: Vec<PlayerId> = (0..30).map(|i| pid(&format!("gw-{i}"))).collect();
    let mut items: Vec<Item> = players
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Item::from(Envelope::from(
                Transaction::owner(p.clone(), key(i as u64 + 1)).with(gold(50)),
            ))
        })
        .collect();
    // A trade in the same batch between players the map places on different masters (their
    // funding above runs concurrently, so the trade may meet it: retried below).
    let map = gw.gateway.store().shard_map();
    let other = players
        .iter()
        .find(|q| map.shard_for_player(q) != map.shard_for_player(&players[0]))
        .expect("a player on another master")
        .clone();
    for result in client
        .execute_items(items.drain(..))
        .await
        .expect("a batch")
    {
        assert!(matches!(result, ItemResult::Single(Ok(_))), "{result:?}");
    }
    let trade = MultiTransaction::new(IdempotencyKey::new("gw-trade", 1).expect("key"))
        .with(Participant::owner(players[0].clone()).with(gold(-20)))
        .with(Participant::owner(other.clone()).with(gold(20)));
    let results = client
        .execute_items(vec![Item::from(trade)])
        .await
        .expect("a batch");
    assert!(
        matches!(&results[0], ItemResult::Multi(Ok(_))),
        "{results:?}"
    );
    let read = |p: &PlayerId| Transaction::owner(p.clone(), None).with(read_gold());
    let a = client.execute(read(&players[0])).await.expect("reads");
    let b = client.execute(read(&other)).await.expect("reads");
    assert_eq!((gold_of(&a), gold_of(&b)), (Some(30), Some(70)));

    let (status, body) = get_admin(gw.admin_address, "/admin/status").await;
    assert_eq!(status, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["topology"], "cluster", "{status}");
    let epoch = status["cluster"]["epoch"].as_u64().expect("an epoch");
    assert!(epoch >= 3, "{status}");
    // The same epoch in the metrics, with the map's reads.
    let (_, metrics) = get_admin(gw.admin_address, "/metrics").await;
    assert!(
        metrics.contains(&format!("colony_cluster_epoch {epoch}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("colony_cluster_map_reads_total "),
        "{metrics}"
    );
    let shards = status["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3, "{status}");
    for shard in shards {
        assert_eq!(shard["reachable"], true, "{shard}");
        assert!(
            shard["endpoint"]["cluster"]["master"].is_string(),
            "{shard}"
        );
    }
    // The console's player lookup finds a player on the master the cluster says owns it.
    let (status, body) = get_admin(
        gw.admin_address,
        &format!("/admin/player?id={}", other.as_str()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(found["version"], 2, "funded, then traded: {found}");
    assert_eq!(found["slot"], keys::player_slot(&other).get(), "{found}");
    assert_eq!(
        found["master"].as_str(),
        Some(owner(&cluster, &other).address().as_str()),
        "{found}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn start_up_refuses_a_cluster_colony_cannot_keep_its_promises_on() {
    let refused = |config: colony::Config| async move {
        match Store::connect(&config).await {
            Ok(_) => panic!("a store was built"),
            Err(e) => e.to_string(),
        }
    };
    // Redis's default: one master's failure stops every master.
    let full = RedisCluster::start(
        3,
        0,
        Profile::Plain,
        &["--cluster-require-full-coverage", "yes"],
    )
    .expect("cluster starts");
    let e = refused(full.config()).await;
    assert!(e.contains("cluster-require-full-coverage yes"), "{e}");
    drop(full);

    // Two masters cannot elect a replacement for one.
    let two = RedisCluster::start(2, 0, Profile::Plain, &[]).expect("cluster starts");
    let e = refused(two.config()).await;
    assert!(e.contains("2 master(s); at least 3"), "{e}");
    drop(two);

    // The replicated profile waits for more replicas than a master has.
    let thin = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let mut config = thin.config();
    config.redis.acknowledge = colony::config::Acknowledge::Replicated;
    config.redis.replicas_to_wait = 2;
    let e = refused(config).await;
    assert!(
        e.contains("has 1 replica(s) online") && e.contains("waits for 2"),
        "{e}"
    );
    drop(thin);

    // A user that may not run scripts (as a managed service's restricted user might be).
    let locked = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    for node in locked.nodes() {
        let mut conn = common::raw(node).await;
        let () = redis::cmd("ACL")
            .arg(
                &[
                    "SETUSER",
                    "colony",
                    "on",
                    ">colony-secret-1",
                    "~*",
                    "&*",
                    "+@all",
                    "-evalsha",
                ][..],
            )
            .query_async(&mut conn)
            .await
            .expect("user made");
    }
    let mut config = locked.config();
    if let Some(c) = config.cluster.as_mut() {
        c.username = Some("colony".into());
        c.password = Some("colony-secret-1".into());
    }
    let e = refused(config.clone()).await;
    assert!(e.contains("refuses EVALSHA, which Colony needs"), "{e}");
    // The same user with scripts allowed is accepted.
    for node in locked.nodes() {
        let mut conn = common::raw(node).await;
        let () = redis::cmd("ACL")
            .arg(&["SETUSER", "colony", "+evalsha"][..])
            .query_async(&mut conn)
            .await
            .expect("user changed");
    }
    let store = Store::connect(&config).await.expect("accepted");
    store
        .execute(Transaction::owner(pid("allowed"), key(1)).with(gold(1)))
        .await
        .expect("commits as that user");
}

async fn node_id(node: &RedisServer) -> String {
    let mut conn = common::raw(node).await;
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut conn)
        .await
        .expect("node id")
}

async fn setslot(node: &RedisServer, slot: u16, what: &str, id: &str) {
    let mut conn = common::raw(node).await;
    let () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(what)
        .arg(id)
        .query_async(&mut conn)
        .await
        .expect("setslot");
}
