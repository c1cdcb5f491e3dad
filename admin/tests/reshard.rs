//! `colony-admin reshard` on a real Redis Cluster, through the binary: hostile input refused
//! with one line and nothing changed (overlapping ranges, an unknown node, a replica, a slot
//! already on the target, a second move while one is half done), a half-done move shown by
//! `status` and undone by `--abort` or finished by `--resume`, and slots moved with `--json`
//! — a restore queue's slot and a player with a key that expires among them.

use std::process::Command;
use std::time::Duration;

use colony::slot::Slot;
use colony::{IdempotencyKey, Name, Operation, PlayerId, Store, Transaction, Visibility};
use colony_admin::slot_move::{MoveOptions, SlotMove};
use colony_testkit::{Profile, RedisCluster, RedisServer};

fn gold() -> Operation {
    Operation::IncrementCounter {
        name: Name::new("gold").expect("valid"),
        delta: 1,
        min: None,
        max: None,
        visibility: Visibility::Private,
    }
}

static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs the binary with `args` on a configuration naming `cluster`.
fn admin(cluster: &RedisCluster, args: &[&str]) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!(
        "colony-reshard-test-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a directory");
    let file = dir.join("colony.toml");
    let toml = format!(
        "[cluster]\nseeds = [\"{}\"]\n[redis]\nacknowledge = \"replicated\"\nreplicas_to_wait = 1\n",
        cluster.nodes()[0].address()
    );
    std::fs::write(&file, toml).expect("writes");
    let output = Command::new(env!("CARGO_BIN_EXE_colony-admin"))
        .arg("--config")
        .arg(&file)
        .args(args)
        .args(
            ["--lease-ms", "8000", "--wait-ms", "3000"]
                .iter()
                .filter(|_| args.contains(&"reshard")),
        )
        .output()
        .expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every master's dataset digest and every node's own slot marks: what "nothing changed"
/// means.
async fn state(cluster: &RedisCluster) -> Vec<String> {
    let mut out = Vec::new();
    for node in cluster.nodes() {
        let mut conn = raw(node).await;
        let digest: String = redis::cmd("DEBUG")
            .arg("DIGEST")
            .query_async(&mut conn)
            .await
            .expect("digest");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .expect("nodes");
        let own = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .map(|l| {
                // The slots and marks, not the ping times.
                l.split(' ').skip(8).collect::<Vec<_>>().join(" ")
            })
            .unwrap_or_default();
        out.push(format!("{} {digest} {own}", node.port()));
    }
    out
}

async fn raw(node: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(node.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects")
}

fn options() -> MoveOptions {
    MoveOptions {
        batch_bytes: 64,
        lease: Duration::from_secs(8),
        wait_timeout: Duration::from_secs(3),
    }
}

/// Leaves the move of `slot` to `to` as a tool killed after its first park leaves it.
async fn leave_half_done(seeds: &colony::config::ClusterConfig, slot: u16, to: &str, run: &str) {
    let mut half = SlotMove::claim(seeds, Slot::new(slot).expect("slot"), to, run, 1, options())
        .await
        .expect("claims");
    half.open().await.expect("opens");
    let batches = half.unparked_batches().await.expect("lists");
    half.park(&batches[0]).await.expect("parks");
}

/// Runs the binary until it succeeds (a killed run's lease must pass first), for at most
/// 30 s; the last output.
async fn admin_until_done(cluster: &RedisCluster, args: &[&str]) -> std::process::Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let output = admin(cluster, args);
        if output.status.success() || std::time::Instant::now() > deadline {
            return output;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_refuses_hostile_input_and_undoes_or_finishes_a_half_done_move() {
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let mut config = cluster.config();
    config.redis.retry_deadline_ms = 20_000;
    let store = Store::connect(&config).await.expect("store");
    let players: Vec<PlayerId> = (0..30)
        .map(|i| PlayerId::new(format!("rs-{i}")).expect("valid"))
        .collect();
    for p in &players {
        let txn = Transaction::owner(p.clone(), IdempotencyKey::new("t", 1).ok()).with(gold());
        store.execute(txn).await.expect("creates");
    }
    let slot = colony::keys::player_slot(&players[0]).get();
    let from = cluster.owner_of(slot, 0).expect("owner").address();
    let to = cluster
        .master_nodes()
        .into_iter()
        .find(|m| m.address() != from)
        .expect("another master")
        .address();
    let before = state(&cluster).await;

    let slot_arg = slot.to_string();
    let refused = [
        (vec!["--slots", "5-10,8-12", "--to", &to], "overlap"),
        (vec!["--slots", "0-16384", "--to", &to], "past 16383"),
        (
            vec!["--slots", &slot_arg, "--to", "127.0.0.1:1"],
            "not a node",
        ),
        (
            vec!["--slots", &slot_arg, "--to", &from],
            "moving a slot to its owner",
        ),
    ];
    for (args, says) in &refused {
        let mut all = vec!["reshard"];
        all.extend(args.iter().copied());
        let output = admin(&cluster, &all);
        assert!(!output.status.success(), "{args:?} was accepted");
        let said = text(&output);
        assert!(said.contains(says), "{args:?}: {said}");
        assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
    }
    let replica = cluster.replicas_of(cluster.owner_of(slot, 0).expect("owner"))[0].address();
    let output = admin(
        &cluster,
        &["reshard", "--slots", &slot_arg, "--to", &replica],
    );
    assert!(text(&output).contains("is a replica"), "{}", text(&output));
    assert_eq!(state(&cluster).await, before, "refusals changed nothing");

    // A move stopped after its first batch was parked, as a killed tool leaves it.
    let seeds = config.cluster.clone().expect("a [cluster]");
    leave_half_done(&seeds, slot, &to, "killed").await;
    let status = admin(&cluster, &["status"]);
    let shown = text(&status);
    assert!(
        shown.contains(&format!("slot {slot} is half moved"))
            && shown.contains("--resume")
            && shown.contains(&format!("--abort {slot}")),
        "{shown}"
    );
    let other = (0..16384u16)
        .find(|&s| s != slot && cluster.owner_of(s, 0).is_ok_and(|o| o.address() == from))
        .expect("another slot")
        .to_string();
    let output = admin(&cluster, &["reshard", "--slots", &other, "--to", &to]);
    assert!(
        !output.status.success() && text(&output).contains("half moved"),
        "a second move while one is half done: {}",
        text(&output)
    );

    // Undone: the lease of the killed run passes, then its players are back on the source.
    let undone = admin_until_done(&cluster, &["reshard", "--abort", &slot_arg]).await;
    assert!(undone.status.success(), "{}", text(&undone));
    assert_eq!(cluster.owner_of(slot, 0).expect("owner").address(), from);
    for p in &players {
        let txn = Transaction::owner(p.clone(), IdempotencyKey::new("t", 2).ok()).with(gold());
        let committed = store.execute(txn).await.expect("served after the abort");
        assert_eq!(committed.version, 2, "{}", p.as_str());
    }
    assert!(!text(&admin(&cluster, &["status"])).contains("half moved"));

    // Stopped again, then finished by --resume.
    leave_half_done(&seeds, slot, &to, "killed-again").await;
    let resumed = admin_until_done(&cluster, &["--json", "reshard", "--resume"]).await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    let report: serde_json::Value =
        serde_json::from_slice(&resumed.stdout).expect("--json prints JSON");
    assert_eq!(report["moved"][0]["slot"], slot, "{report}");
    assert_eq!(cluster.owner_of(slot, 0).expect("owner").address(), to);
    for p in &players {
        let txn = Transaction::owner(p.clone(), IdempotencyKey::new("t", 3).ok()).with(gold());
        let committed = store.execute(txn).await.expect("served after the resume");
        assert_eq!(committed.version, 3, "{}", p.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_moves_a_range_with_a_restore_queue_and_expiring_keys() {
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let mut config = cluster.config();
    config.redis.retry_deadline_ms = 20_000;
    let store = Store::connect(&config).await.expect("store");
    // Restore queue 0 lives in slot 512; a request waits in it.
    let queue = colony::keys::RestoreQueue::all().next().expect("a queue");
    let queue_slot = queue.slot().get();
    let owner = cluster.owner_of(queue_slot, 0).expect("owner");
    let to = cluster
        .master_nodes()
        .into_iter()
        .find(|m| m.port() != owner.port())
        .expect("another master")
        .address();
    let mut conn = raw(owner).await;
    let () = redis::cmd("ZADD")
        .arg(queue.key())
        .arg(1)
        .arg("f:someone")
        .query_async(&mut conn)
        .await
        .expect("a request waits");
    // Players in the range, one with an idempotency record of the old layout that expires
    // in an hour (its time to live must travel).
    let range: Vec<u16> = (queue_slot - 10..=queue_slot + 10).collect();
    let players: Vec<PlayerId> = (0..200_000)
        .map(|i| PlayerId::new(format!("rq-{i}")).expect("valid"))
        .filter(|p| range.contains(&colony::keys::player_slot(p).get()))
        .take(12)
        .collect();
    assert!(players.len() >= 5, "{} players in the range", players.len());
    for p in &players {
        let txn = Transaction::owner(p.clone(), IdempotencyKey::new("t", 1).ok()).with(gold());
        store.execute(txn).await.expect("creates");
    }
    let legacy = colony::keys::legacy_idempotency_key(
        &players[0],
        &IdempotencyKey::new("old", 1).expect("key"),
    );
    let () = redis::cmd("SET")
        .arg(&legacy)
        .arg("x")
        .arg("PX")
        .arg(3_600_000)
        .query_async(&mut conn)
        .await
        .expect("an expiring record");

    let spec = format!("{}-{}", range[0], range[range.len() - 1]);
    let output = admin(
        &cluster,
        &["--json", "reshard", "--slots", &spec, "--to", &to],
    );
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        report["moved"].as_array().map(Vec::len),
        Some(range.len()),
        "{report}"
    );
    assert!(
        report["players"].as_u64() >= Some(players.len() as u64),
        "{report}"
    );
    eprintln!("{} slots moved in {} s", range.len(), report["seconds"]);

    let target = cluster
        .nodes()
        .iter()
        .find(|n| n.address() == to)
        .expect("the target");
    let mut on_target = raw(target).await;
    let waiting: Vec<String> = redis::cmd("ZRANGE")
        .arg(queue.key())
        .arg(0)
        .arg(-1)
        .query_async(&mut on_target)
        .await
        .expect("the queue on the target");
    assert_eq!(waiting, vec!["f:someone".to_string()]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&legacy)
        .query_async(&mut on_target)
        .await
        .expect("pttl");
    assert!(
        (3_000_000..=3_600_000).contains(&ttl),
        "the record's time to live: {ttl}"
    );
    for p in &players {
        let txn = Transaction::owner(p.clone(), IdempotencyKey::new("t", 2).ok()).with(gold());
        assert_eq!(store.execute(txn).await.expect("served").version, 2);
    }
    for &slot in &range {
        assert_eq!(cluster.owner_of(slot, 0).expect("owned").address(), to);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_takes_slots_under_writers_and_is_removed_again() {
    use colony_testkit::writers::Target;
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let mut config = cluster.config();
    config.redis.acknowledge = colony::config::Acknowledge::Replicated;
    config.redis.replicas_to_wait = 1;
    config.redis.retry_deadline_ms = 20_000;
    let store = Store::connect(&config).await.expect("store");
    let target = Target::Store(store.clone());
    let writers = colony_testkit::IncrementWriters::start(target.clone(), 6, "grow", 300, 5);
    let seeds = config.cluster.clone().expect("a [cluster]");
    let master = RedisCluster::fresh_node(Profile::Plain).expect("a node");
    let replica = RedisCluster::fresh_node(Profile::Plain).expect("a node");
    colony_admin::add_node(&seeds, &master.address(), None)
        .await
        .expect("joins as a master");
    colony_admin::add_node(&seeds, &replica.address(), Some(&master.address()))
        .await
        .expect("joins as its replica");
    // The writers' players of 40 slots, moved to the new master.
    let slots: Vec<u16> = (0..300)
        .map(|n| colony::keys::player_slot(&PlayerId::new(format!("grow-{n}")).expect("id")).get())
        .collect::<std::collections::BTreeSet<u16>>()
        .into_iter()
        .take(40)
        .collect();
    let pace = colony_admin::reshard::Pace {
        options: options(),
        replicas: 1,
        players_per_second: None,
    };
    let report = colony_admin::reshard::reshard(
        &seeds,
        &slots,
        &master.address(),
        &pace,
        &colony_admin::reshard::Quiet,
    )
    .await
    .expect("moves");
    assert_eq!(report.moved.len(), slots.len());
    assert!(report.players >= 40, "{report:?}");
    let status = colony_admin::status(&seeds).await.expect("status");
    assert_eq!(status.shards.len(), 4, "{status:?}");

    // Removing it: refused while it has a replica, then its replica, then it (drained).
    let e = colony_admin::reshard::remove_node(
        &seeds,
        &master.address(),
        &pace,
        &colony_admin::reshard::Quiet,
    )
    .await
    .expect_err("it still has a replica");
    assert!(e.to_string().contains("still has replicas"), "{e}");
    colony_admin::reshard::remove_node(
        &seeds,
        &replica.address(),
        &pace,
        &colony_admin::reshard::Quiet,
    )
    .await
    .expect("the replica goes");
    let removed = colony_admin::reshard::remove_node(
        &seeds,
        &master.address(),
        &pace,
        &colony_admin::reshard::Quiet,
    )
    .await
    .expect("drained and removed");
    assert!(removed.drained.moved.len() >= slots.len(), "{removed:?}");
    let status = colony_admin::status(&seeds).await.expect("status");
    assert_eq!(status.shards.len(), 3, "{status:?}");
    assert!(
        status
            .shards
            .iter()
            .all(|s| s.master.as_deref() != Some(master.address().as_str())),
        "{status:?}"
    );
    let before = writers.acknowledged();
    assert!(
        colony_testkit::wait_until(Duration::from_secs(20), || writers.acknowledged()
            >= before + 100)
        .await,
        "writes did not go on"
    );
    writers
        .stop()
        .await
        .check_against(&target)
        .await
        .assert_exact("writes while a node was added, filled and removed");
}

/// An abort that dies after putting the players back on the source (the journal marked
/// `aborting`, the parked copies dropped) and before cleaning the target: the players write
/// on the source meanwhile, and the abort run again only cleans the target. It never
/// restores the older copies over the newer writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_run_again_after_dying_half_way_never_restores_older_copies() {
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let mut config = cluster.config();
    config.redis.retry_deadline_ms = 20_000;
    let store = Store::connect(&config).await.expect("store");
    // Three players of one slot, so that the move parks several.
    let first = PlayerId::new("ab-0").expect("valid");
    let slot = colony::keys::player_slot(&first);
    let players: Vec<PlayerId> = std::iter::once(first.clone())
        .chain(
            (1..)
                .map(|i| PlayerId::new(format!("ab-{i}")).expect("valid"))
                .filter(|p| colony::keys::player_slot(p) == slot)
                .take(2),
        )
        .collect();
    for p in &players {
        let txn = Transaction::owner(p.clone(), IdempotencyKey::new("t", 1).ok()).with(gold());
        store.execute(txn).await.expect("creates");
    }
    let slot = slot.get();
    let from = cluster.owner_of(slot, 0).expect("owner").address();
    let to = cluster
        .master_nodes()
        .into_iter()
        .find(|m| m.address() != from)
        .expect("another master")
        .address();
    let seeds = config.cluster.clone().expect("a [cluster]");

    // A run parks every player and restores them on the target, then dies.
    let mut killed = SlotMove::claim(
        &seeds,
        Slot::new(slot).expect("slot"),
        &to,
        "killed",
        1,
        options(),
    )
    .await
    .expect("claims");
    killed.open().await.expect("opens");
    for batch in killed.unparked_batches().await.expect("lists") {
        killed.park(&batch).await.expect("parks");
    }
    assert!(killed.restore(None).await.expect("restores") > 0);
    drop(killed);

    // An abort takes over once the lease has passed, puts the players back, and dies.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut aborting = loop {
        match SlotMove::claim(
            &seeds,
            Slot::new(slot).expect("slot"),
            &to,
            "abort-1",
            0,
            options(),
        )
        .await
        {
            Ok(claimed) => break claimed,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the killed run's lease never passed: {e:#}"),
        }
    };
    let put_back = aborting.abort_put_back().await.expect("puts back");
    assert!(put_back >= players.len() as u64, "{put_back} keys put back");
    drop(aborting);

    // The players are served by the source again, and write.
    for p in &players {
        let txn = Transaction::owner(p.clone(), IdempotencyKey::new("t", 2).ok()).with(gold());
        let committed = store.execute(txn).await.expect("served after the put-back");
        assert_eq!(committed.version, 2, "{}", p.as_str());
    }
    // Status offers only the abort: a resume would move players S serves again.
    let shown = text(&admin(&cluster, &["status"]));
    assert!(
        shown.contains(&format!("slot {slot} is half moved"))
            && shown.contains("half aborted")
            && !shown.contains("--resume"),
        "{shown}"
    );

    // Run again, the abort cleans the target and leaves the newer writes alone.
    let undone = admin_until_done(&cluster, &["reshard", "--abort", &slot.to_string()]).await;
    assert!(undone.status.success(), "{}", text(&undone));
    assert_eq!(cluster.owner_of(slot, 0).expect("owner").address(), from);
    let mut target = raw(cluster
        .nodes()
        .iter()
        .find(|n| n.address() == to)
        .expect("the target"))
    .await;
    let left: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut target)
        .await
        .expect("count");
    assert_eq!(left, 0, "the target kept keys of the slot");
    for p in &players {
        let txn = Transaction::owner(p.clone(), IdempotencyKey::new("t", 3).ok()).with(gold());
        let committed = store.execute(txn).await.expect("served after the abort");
        assert_eq!(
            committed.version,
            3,
            "{}: an older copy came back",
            p.as_str()
        );
    }
    assert!(!text(&admin(&cluster, &["status"])).contains("half moved"));
}
