//! The archiver on a real Redis Cluster (and a real MongoDB-wire server): archive passes walk
//! each master's slots by the cluster's map, checkpoints and the sweep run on every master,
//! and players come back on access after their slot — and their restore queue's slot — moved
//! to another master behind the archiver's back.

use std::sync::Arc;

use colony::keys::{self, RestoreQueue};
use colony::{
    Access, Config, IdempotencyKey, Name, Operation, PlayerId, Store, Transaction, Value,
    Visibility,
};
use colony_archiver::Archiver;
use colony_testkit::{wait_for, MongoServer, Profile, RedisCluster, RedisServer};
use std::time::Duration;

static NEXT_DB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The cluster's configuration with the archive on `mongo`, every player inactive at once,
/// and the map read again only when a node says it is stale (the periodic read is ten
/// minutes away), so the test sees what `MOVED` alone does.
fn config(cluster: &RedisCluster, mongo: &MongoServer) -> Config {
    let mut config = cluster.config();
    config.archive.mongodb_uris = vec![mongo.uri().to_string()];
    config.archive.database = format!(
        "colony_cluster_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    config.archive.inactive_after_secs = 0;
    config.archive.checkpoint_interval_secs = 300;
    config.redis.retry_deadline_ms = 5000;
    if let Some(c) = config.cluster.as_mut() {
        c.refresh_interval_ms = 600_000;
    }
    config
}

fn pid(s: &str) -> PlayerId {
    PlayerId::new(s).expect("valid id")
}

fn gold(delta: i64) -> Operation {
    Operation::IncrementCounter {
        name: Name::new("gold").expect("valid"),
        delta,
        min: None,
        max: None,
        visibility: Visibility::Private,
    }
}

async fn owner_gold(store: &Store, player: &PlayerId) -> Option<i64> {
    let read = store
        .get_player(player.clone(), Access::Owner)
        .await
        .expect("the owner reads the player");
    read.reads
        .iter()
        .flat_map(|r| &r.entries)
        .find(|e| e.name.as_str() == "gold")
        .and_then(|e| match e.value {
            Value::Counter(n) => Some(n),
            _ => None,
        })
}

/// A master of `cluster` other than the one at `port`.
fn other_master(cluster: &RedisCluster, port: u16) -> &RedisServer {
    cluster
        .master_nodes()
        .into_iter()
        .find(|n| n.port() != port)
        .expect("another master")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archiver_serves_a_cluster_and_follows_slots_that_moved() {
    let cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&cluster, &mongo);
    let store = Store::connect(&config).await.expect("store");
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver on a cluster"));

    // Players on every master, each with its own gold.
    let players: Vec<PlayerId> = (0..30).map(|i| pid(&format!("c{i}"))).collect();
    for (i, player) in players.iter().enumerate() {
        let txn = Transaction::owner(player.clone(), IdempotencyKey::new("t", 1).ok())
            .with(gold(i as i64 + 1));
        store.execute(txn).await.expect("creates");
    }
    let masters: std::collections::BTreeSet<u16> = players
        .iter()
        .map(|p| {
            cluster
                .owner_of(keys::player_slot(p).get(), 0)
                .expect("owner")
                .port()
        })
        .collect();
    assert_eq!(masters.len(), 3, "the players live on every master");

    // A checkpoint and a sweep visit every master; the backlog asks each.
    assert_eq!(archiver.checkpoint_pass().await.expect("checkpoint"), 30);
    assert_eq!(archiver.sweep_pass().await, 0, "no intents to finish");
    let backlog = archiver.backlog().await;
    assert_eq!(backlog.len(), 3, "{backlog:?}");
    assert_eq!(
        backlog
            .iter()
            .map(|(_, n)| n.clone().expect("answers"))
            .sum::<u64>(),
        30,
        "{backlog:?}"
    );

    // Everyone moves to MongoDB, master by master.
    let report = archiver
        .archive_pass(colony_archiver::worker::now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!(report.archived, 30, "{report:?}");
    assert!(report.failed_shards.is_empty(), "{report:?}");

    // The archiver's queues run, each blocked on the master that owns its slot.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = archiver.clone();
    let queues = tokio::spawn(async move { serving.serve_restore_queues(stopped).await });
    let first = &players[0];
    let queue = RestoreQueue::of_player(first);
    let queue_from = cluster
        .owner_of(queue.slot().get(), 0)
        .expect("owner")
        .port();
    let source = cluster
        .nodes()
        .iter()
        .find(|n| n.port() == queue_from)
        .expect("the queue's master");
    let blocked = wait_for(Duration::from_secs(10), || async {
        (blocked_pops(source) >= 1).then_some(())
    })
    .await;
    assert!(
        blocked.is_some(),
        "the archiver blocks on the queue's master"
    );

    // The queue's slot starts moving to another master and stays half moved: a request for
    // `first` (whose queue it is) is pushed to the importing master (ASK), where the
    // archiver must find it before the move ends.
    let queue_to = other_master(&cluster, queue_from);
    cluster
        .start_move(queue.slot().get(), queue_to)
        .expect("the queue's slot starts moving");
    assert_eq!(
        owner_gold(&store, first).await,
        Some(1),
        "restored mid-move"
    );

    // The move ends behind the archiver's back (its map is stale: MOVED), and an archived
    // player of the same queue moves to another master too: it comes back whole on its new
    // master, as do players of every other queue.
    cluster
        .finish_move(queue.slot().get(), queue_to)
        .expect("the queue's slot moves");
    let moved = players[1..]
        .iter()
        .find(|p| RestoreQueue::of_player(p) == queue)
        .unwrap_or(&players[1]);
    let from = cluster
        .owner_of(keys::player_slot(moved).get(), 0)
        .expect("owner")
        .port();
    let to = other_master(&cluster, from);
    assert!(
        cluster
            .move_slot(keys::player_slot(moved).get(), to)
            .expect("the player's slot moves")
            >= 1,
        "the marker moved with the slot"
    );
    let index = |p: &PlayerId| players.iter().position(|q| q == p).expect("a player") as i64;
    assert_eq!(owner_gold(&store, moved).await, Some(index(moved) + 1));
    for (i, player) in players.iter().enumerate().take(8) {
        assert_eq!(
            owner_gold(&store, player).await,
            Some(i as i64 + 1),
            "{player:?} restored whole"
        );
    }
    let meta: Option<String> = {
        let mut conn = redis::Client::open(to.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        redis::cmd("HGET")
            .arg(keys::PlayerKeys::new(moved).meta)
            .arg("v")
            .query_async(&mut conn)
            .await
            .expect("hget")
    };
    assert_eq!(
        meta.as_deref(),
        Some("1"),
        "restored on the slot's new master"
    );
    let _ = stop.send(true);
    queues.await.expect("the queues stop");
}

/// Clients of `node` blocked in `BZPOPMIN` now.
fn blocked_pops(node: &RedisServer) -> usize {
    let text: String = redis::Client::open(node.url())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("CLIENT").arg("LIST").query(&mut c))
        .unwrap_or_default();
    text.lines().filter(|l| l.contains("cmd=bzpopmin")).count()
}
