//! The archiver against real redis-server and a real MongoDB-wire server (SecantusDB, or the
//! MongoDB named by COLONY_TEST_MONGODB_URI): moves, restores with the public/private rules,
//! players that wake up mid-move, MongoDB down, concurrent restores, stale writes.

use std::sync::Arc;

use colony::shard_map::ShardIndex;
use colony::{
    Access, Config, Error, IdempotencyKey, Name, Operation, PlayerId, Store, Transaction, Value,
    Visibility,
};
use colony_archiver::document::{DocState, Snapshot};
use colony_archiver::worker::now;
use colony_archiver::{ArchiveError, Archiver, Removal};
use colony_testkit::{
    config_for, wait_for, wait_until_blocking, MongoServer, RedisServer, WriteConcernFault,
};
use mongodb::bson::doc;

static NEXT_DB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn config(redis: &RedisServer, mongo: &MongoServer) -> Config {
    let mut config = config_for(&[redis]);
    config.archive.mongodb_uris = vec![mongo.uri().to_string()];
    // A database per test, so that a shared real MongoDB keeps tests apart.
    config.archive.database = format!(
        "colony_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    config.archive.inactive_after_secs = 0;
    config.redis.retry_deadline_ms = 3000;
    config
}

fn pid(s: &str) -> PlayerId {
    PlayerId::new(s).expect("valid id")
}

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

/// A bounded change of the private counter `gold`.
fn gold(delta: i64) -> Operation {
    Operation::IncrementCounter {
        name: name("gold"),
        delta,
        min: Some(0),
        max: None,
        visibility: Visibility::Private,
    }
}

async fn create(store: &Store, player: &str, request: u64) {
    let txn = Transaction::owner(pid(player), IdempotencyKey::new("t", request).ok())
        .with(Operation::SetField {
            name: name("nick"),
            value: player.as_bytes().to_vec(),
            visibility: Visibility::Public,
        })
        .with(Operation::IncrementCounter {
            name: name("gold"),
            delta: 50,
            min: None,
            max: None,
            visibility: Visibility::Private,
        });
    store.execute(txn).await.expect("creates");
}

async fn exists(redis: &RedisServer, key: &str) -> bool {
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("exists");
    n == 1
}

/// The shard loses everything.
async fn flushall(redis: &RedisServer) {
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flush");
}

async fn digest(redis: &RedisServer) -> String {
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    redis::cmd("DEBUG")
        .arg("DIGEST")
        .query_async(&mut conn)
        .await
        .expect("digest")
}

/// The `n`th shard of `archiver`'s map.
fn shard_index(archiver: &Archiver, n: usize) -> ShardIndex {
    archiver
        .store()
        .shard_map()
        .index(n)
        .expect("the map has that shard")
}

/// The restore queues' loops, as the archiver process runs them.
fn serve_restores(archiver: &Arc<Archiver>) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let archiver = archiver.clone();
    tokio::spawn(async move { archiver.serve_restore_queues(stopped).await });
    stop
}

fn names(c: &colony::Committed) -> Vec<(String, Visibility)> {
    c.reads[0]
        .entries
        .iter()
        .map(|e| (e.name.as_str().to_string(), e.visibility))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_move_to_mongodb_and_come_back_public_first_then_whole() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    create(&store, "alice", 1).await;
    create(&store, "bob", 2).await;
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));

    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!(
        (report.candidates, report.archived, report.failed),
        (2, 2, 0),
        "{report:?}"
    );
    assert!(!exists(&redis, "{alice}:pub").await && !exists(&redis, "{alice}:priv").await);
    assert!(exists(&redis, "{alice}:meta").await, "the marker stays");
    let stored = mongodb::Client::with_uri_str(mongo.uri())
        .await
        .expect("client")
        .database(&config.archive.database)
        .collection::<mongodb::bson::Document>(&config.archive.collection)
        .find_one(doc! { "_id": "alice" })
        .await
        .expect("find")
        .expect("alice is archived");
    assert_eq!(stored.get_i64("v"), Ok(1));
    assert_eq!(stored.get_i32("schema"), Ok(1));

    let _restores = serve_restores(&archiver);
    // A friend's look restores the public part only.
    let public = store
        .get_player(pid("alice"), Access::Public)
        .await
        .expect("public read");
    assert_eq!(
        names(&public),
        vec![("nick".to_string(), Visibility::Public)]
    );
    assert!(exists(&redis, "{alice}:pub").await);
    assert!(
        !exists(&redis, "{alice}:priv").await,
        "private part restored by a public read"
    );
    // The owner's login restores everything.
    let owner = store
        .get_player(pid("alice"), Access::Owner)
        .await
        .expect("owner read");
    assert_eq!(
        names(&owner),
        vec![
            ("gold".to_string(), Visibility::Private),
            ("nick".to_string(), Visibility::Public)
        ]
    );
    assert_eq!(owner.version, 1);
    let write = Transaction::owner(pid("alice"), IdempotencyKey::new("t", 3).ok()).with(
        Operation::IncrementCounter {
            name: name("gold"),
            delta: -10,
            min: Some(0),
            max: None,
            visibility: Visibility::Private,
        },
    );
    assert_eq!(store.execute(write).await.expect("writes").version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_who_changes_or_wakes_up_mid_move_stays_in_redis() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    create(&store, "carol", 1).await;
    let archiver = Archiver::new(&config).await.expect("archiver");
    let shard = shard_index(&archiver, 0);
    let cutoff = now() + 1000;

    // Snapshot and MongoDB write happen, then the player writes before the removal.
    let snapshot = archiver
        .snapshot(shard, &pid("carol"))
        .await
        .expect("snapshot")
        .expect("live");
    write_archive(&archiver, shard, &snapshot)
        .await
        .expect("written");
    create(&store, "carol", 2).await;
    assert_eq!(
        archiver
            .remove(shard, &pid("carol"), snapshot.version, cutoff)
            .await
            .expect("runs"),
        Removal::Changed
    );
    // Or it just became active (logged in) at the same version.
    let snapshot = archiver
        .snapshot(shard, &pid("carol"))
        .await
        .expect("snapshot")
        .expect("live");
    assert_eq!(
        archiver
            .remove(shard, &pid("carol"), snapshot.version, now() - 60_000)
            .await
            .expect("runs"),
        Removal::Active
    );
    let state = store
        .get_player(pid("carol"), Access::Owner)
        .await
        .expect("still in Redis");
    assert_eq!(state.version, 2);
    assert_eq!(state.reads[0].entries[0].value, Value::Counter(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mongodb_down_nothing_leaves_redis() {
    let redis = RedisServer::start().expect("redis");
    let mut mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    create(&store, "dave", 1).await;
    create(&store, "erin", 2).await;
    let archiver = Archiver::new(&config).await.expect("archiver");
    if std::env::var("COLONY_TEST_MONGODB_URI").is_ok() {
        return; // A shared real MongoDB is not ours to kill.
    }
    mongo.kill().expect("MongoDB goes down");
    a_pass_fails_both_and_leaves_redis_as_it_was(&archiver, &redis).await;
}

/// Runs an archive pass over two players that MongoDB does not acknowledge: both fail, and
/// Redis holds exactly what it held before.
async fn a_pass_fails_both_and_leaves_redis_as_it_was(archiver: &Archiver, redis: &RedisServer) {
    let before = digest(redis).await;
    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("the pass itself runs");
    assert_eq!((report.archived, report.failed), (0, 2), "{report:?}");
    assert_eq!(
        digest(redis).await,
        before,
        "Redis changed although MongoDB never acknowledged with majority"
    );
}

/// RELIABILITY.md: Redis is cleared only after MongoDB acknowledged with majority. Every
/// archive write asks for `w: majority`, and one that reached MongoDB's primary but not a
/// majority (a replica set answers it with `writeConcernError`) counts as not written: the
/// players stay in Redis untouched, and a later pass archives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_a_majority_did_not_confirm_leaves_the_players_in_redis() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let fault = WriteConcernFault::start(&mongo.address()).expect("proxy");
    let mut config = config(&redis, &mongo);
    config.archive.mongodb_uris = vec![fault.uri()];
    let store = Store::new(&config).expect("store");
    create(&store, "fay", 1).await;
    create(&store, "gus", 2).await;
    let archiver = Archiver::new(&config).await.expect("archiver");

    fault.fail(true);
    a_pass_fails_both_and_leaves_redis_as_it_was(&archiver, &redis).await;
    assert!(
        fault.failed() > 0,
        "no write was answered short of a majority"
    );
    let writes = fault.writes();
    assert!(!writes.is_empty(), "the archiver wrote nothing");
    for (command, concern) in &writes {
        assert_eq!(
            concern.as_ref().and_then(|c| c.get_str("w").ok()),
            Some("majority"),
            "{command} asked for {concern:?}"
        );
    }

    // The primary has the documents already; once a majority confirms, the next pass
    // archives both, over what the short write left.
    fault.fail(false);
    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!((report.archived, report.failed), (2, 0), "{report:?}");
    assert!(!exists(&redis, "{fay}:priv").await && !exists(&redis, "{gus}:priv").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_during_a_restore_all_see_the_whole_player() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    create(&store, "fay", 1).await;
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    let _restores = serve_restores(&archiver);
    let logins = (0..16).map(|_| store.get_player(pid("fay"), Access::Owner));
    for login in futures_util::future::join_all(logins).await {
        let login = login.expect("restored");
        assert_eq!(login.version, 1);
        assert_eq!(login.reads[0].entries.len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_archiver_an_archived_player_is_unavailable_never_empty() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config(&redis, &mongo);
    config.redis.retry_deadline_ms = 300;
    let store = Store::new(&config).expect("store");
    create(&store, "gus", 1).await;
    let archiver = Archiver::new(&config).await.expect("archiver");
    archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    for access in [Access::Owner, Access::Public] {
        let result = store.get_player(pid("gus"), access).await;
        assert!(
            matches!(&result, Err(Error::Unavailable { reason, .. }) if reason.contains("archived")),
            "{result:?}"
        );
    }
}

/// A trade that meets archived participants asks the archiver to restore them, wholly (a
/// trade refuses a player whose public part alone is back), as a single write does. Without
/// an archiver it answers UNAVAILABLE saying so, nothing applied; with one, it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_with_archived_participants_has_them_restored_and_commits() {
    use colony::keys::RestoreQueue;
    use colony::{MultiTransaction, Participant};
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    let mut impatient = config.clone();
    impatient.redis.retry_deadline_ms = 300;
    let impatient = Store::new(&impatient).expect("store");
    create(&store, "hal", 1).await;
    create(&store, "ida", 2).await;
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!(report.archived, 2, "{report:?}");
    let gift = MultiTransaction::new(IdempotencyKey::new("gift", 1).expect("valid"))
        .with(Participant::owner(pid("hal")).with(gold(-20)))
        // A friend's trade: public access, a public entry written.
        .with(Participant {
            player: pid("ida"),
            access: Access::Public,
            operations: vec![Operation::SetField {
                name: name("thanks"),
                value: b"hal".to_vec(),
                visibility: Visibility::Public,
            }],
        });

    // No archiver serving the queues: the trade gives up, saying why, and both players are
    // asked for, wholly, in their queues.
    let refused = impatient.execute_multi(gift.clone()).await;
    assert!(
        matches!(&refused, Err(e) if e.code() == colony::Code::Unavailable
            && e.to_string().contains("did not restore it in time")),
        "{refused:?}"
    );
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    for player in ["hal", "ida"] {
        let queued: Option<f64> = redis::cmd("ZSCORE")
            .arg(RestoreQueue::of_player(&pid(player)).key())
            .arg(format!("f:{player}"))
            .query_async(&mut conn)
            .await
            .expect("zscore");
        assert!(queued.is_some(), "no whole restore of {player} requested");
    }

    // With the archiver serving them, the same trade commits, once.
    let _restores = serve_restores(&archiver);
    let done = store.execute_multi(gift).await.expect("commits");
    assert!(!done.replayed);
    let entry = |view: &(u64, Vec<(String, Visibility, Value)>), wanted: &str| {
        view.1
            .iter()
            .find(|(n, _, _)| n == wanted)
            .map(|(_, _, v)| v.clone())
    };
    let hal = owner_view(&store, "hal").await;
    assert_eq!((hal.0, entry(&hal, "gold")), (2, Some(Value::Counter(30))));
    let ida = owner_view(&store, "ida").await;
    assert_eq!(ida.0, 2);
    assert_eq!(
        entry(&ida, "gold"),
        Some(Value::Counter(50)),
        "private part kept"
    );
    assert_eq!(entry(&ida, "thanks"), Some(Value::Bytes(b"hal".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_never_overwrites_a_newer_document() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let archiver = Archiver::new(&config).await.expect("archiver");
    let snapshot = |version: u64, nick: &[u8]| Snapshot {
        player: "hal".into(),
        version,
        public: vec![(b"f:nick".to_vec(), nick.to_vec())],
        private: vec![],
        clients: vec![],
    };
    let shard = shard_index(&archiver, 0);
    write_archive(&archiver, shard, &snapshot(2, b"new"))
        .await
        .expect("newer");
    // An older version meeting a newer document is refused: the player must stay in Redis.
    let stale = write_archive(&archiver, shard, &snapshot(1, b"old")).await;
    assert!(
        matches!(
            stale,
            Err(ArchiveError::OnShard { ref source, .. })
                if matches!(**source, ArchiveError::NewerDocument { version: 1, .. })
        ),
        "{stale:?}"
    );
    write_archive(&archiver, shard, &snapshot(2, b"new"))
        .await
        .expect("same version again");
    // A checkpoint of an older version does not replace it either.
    let checkpointed = archiver
        .write_documents(shard, &[snapshot(1, b"older")], DocState::Checkpoint)
        .await;
    assert!(checkpointed.iter().all(Result::is_ok), "{checkpointed:?}");
    let collection = mongodb::Client::with_uri_str(mongo.uri())
        .await
        .expect("client")
        .database(&config.archive.database)
        .collection::<mongodb::bson::Document>(&config.archive.collection);
    let stored = |id: &'static str| {
        let collection = collection.clone();
        async move {
            let document = collection
                .find_one(doc! { "_id": id })
                .await
                .expect("find")
                .expect("stored");
            colony_archiver::document::from_document(&document).expect("readable")
        }
    };
    assert_eq!(stored("hal").await, snapshot(2, b"new"));

    // One batch mixing a new player (inserted), a newer version of a stored one (inserted,
    // collides, upserted) and a stale one (collides, left alone, refused).
    let other = Snapshot {
        player: "ivy".into(),
        ..snapshot(1, b"ivy")
    };
    let results = archiver
        .write_documents(
            shard,
            &[other.clone(), snapshot(3, b"newest"), snapshot(1, b"stale")],
            DocState::Archived,
        )
        .await;
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(results[2].is_err(), "{results:?}");
    assert_eq!(stored("ivy").await, other);
    assert_eq!(stored("hal").await, snapshot(3, b"newest"));
}

/// Writes one archive document the way an archive pass does (`write_documents`).
async fn write_archive(
    archiver: &Archiver,
    shard: ShardIndex,
    snapshot: &Snapshot,
) -> Result<(), ArchiveError> {
    archiver
        .write_documents(shard, std::slice::from_ref(snapshot), DocState::Archived)
        .await
        .pop()
        .expect("one result per snapshot")
}

/// Reads everything a player owns, restoring it if needed, as (name, visibility, value).
async fn owner_view(store: &Store, player: &str) -> (u64, Vec<(String, Visibility, Value)>) {
    let c = store
        .get_player(pid(player), Access::Owner)
        .await
        .expect("owner read");
    let entries = c.reads[0]
        .entries
        .iter()
        .map(|e| (e.name.as_str().to_string(), e.visibility, e.value.clone()))
        .collect();
    (c.version, entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_killed_at_any_step_loses_nothing_when_run_again() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    let players = ["s0", "s1", "s2", "s3"];
    for (i, p) in players.iter().enumerate() {
        create(&store, p, i as u64 + 1).await;
    }
    let mut expected = Vec::new();
    for p in players {
        expected.push(owner_view(&store, p).await);
    }
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    let shard = shard_index(&archiver, 0);
    let cutoff = now() + 1000;
    // s0: killed after the snapshot, before MongoDB saw anything.
    archiver
        .snapshot(shard, &pid("s0"))
        .await
        .expect("snapshot");
    // s1: killed after MongoDB acknowledged, before Redis was cleared.
    let s1 = archiver
        .snapshot(shard, &pid("s1"))
        .await
        .expect("snapshot")
        .expect("live");
    write_archive(&archiver, shard, &s1).await.expect("written");
    // s2: killed after Redis was cleared (the move had finished).
    let s2 = archiver
        .snapshot(shard, &pid("s2"))
        .await
        .expect("snapshot")
        .expect("live");
    write_archive(&archiver, shard, &s2).await.expect("written");
    assert_eq!(
        archiver
            .remove(shard, &pid("s2"), s2.version, cutoff)
            .await
            .expect("removes"),
        Removal::Archived
    );
    // s3: untouched. The next run finishes everything, and running it twice changes nothing.
    let report = archiver.archive_pass(cutoff, false).await.expect("pass");
    assert_eq!((report.archived, report.failed), (3, 0), "{report:?}");
    let again = archiver.archive_pass(cutoff, false).await.expect("pass");
    assert_eq!((again.candidates, again.archived), (0, 0), "{again:?}");
    let _restores = serve_restores(&archiver);
    for (p, want) in players.iter().zip(&expected) {
        assert_eq!(
            &owner_view(&store, p).await,
            want,
            "player {p} came back different"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_let_a_wiped_shard_be_rebuilt() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    create(&store, "old", 1).await;
    archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("archives old");
    create(&store, "live", 2).await;
    create(&store, "live", 3).await;
    assert_eq!(archiver.checkpoint_pass().await.expect("checkpoint"), 1);
    assert_eq!(
        archiver.checkpoint_pass().await.expect("nothing changed"),
        0
    );
    let (want_version, want) = owner_view(&store, "live").await;

    flushall(&redis).await;
    assert!(matches!(
        store.get_player(pid("live"), Access::Owner).await,
        Err(Error::NotFound)
    ));

    assert_eq!(
        archiver
            .rebuild(shard_index(&archiver, 0))
            .await
            .expect("rebuild"),
        (1, 1)
    );
    assert_eq!(owner_view(&store, "live").await, (want_version, want));
    // The archived player is archived again, and restores as usual.
    let _restores = serve_restores(&archiver);
    let (version, entries) = owner_view(&store, "old").await;
    assert_eq!((version, entries.len()), (1, 2));
    // Running it again over live data changes nothing.
    assert_eq!(
        archiver
            .rebuild(shard_index(&archiver, 0))
            .await
            .expect("rebuild"),
        (0, 0)
    );
}

/// `colony-archiver rebuild --shard <name>` is the operator's way in: it refills the named
/// shard, and an unknown name is refused with the reason and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_command_refills_the_named_shard() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    let archiver = Archiver::new(&config).await.expect("archiver");
    create(&store, "old", 1).await;
    archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("archives old");
    flushall(&redis).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("colony.toml");
    std::fs::write(
        &file,
        format!(
            "[[shards]]\nname = \"shard-0\"\nmaster = \"{}\"\n[archive]\nmongodb_uris = [\"{}\"]\ndatabase = \"{}\"\n",
            redis.address(),
            mongo.uri(),
            config.archive.database
        ),
    )
    .expect("writes the configuration");
    let run = |shard: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_colony-archiver"))
            .arg("--config")
            .arg(&file)
            .args(["--log", "warn", "rebuild", "--shard", shard])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs colony-archiver");
        // A one-shot command must end; a daemon that kept running would fail here.
        let ended = wait_until_blocking(std::time::Duration::from_secs(30), || {
            child.try_wait().ok().flatten().is_some()
        });
        if !ended {
            let _ = child.kill();
        }
        let output = child.wait_with_output().expect("collects the output");
        assert!(ended, "`rebuild --shard {shard}` did not finish");
        output
    };

    let refused = run("shard-9");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no shard named \"shard-9\""),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !exists(&redis, "{old}:meta").await,
        "a refused rebuild wrote"
    );

    let done = run("shard-0");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(exists(&redis, "{old}:meta").await, "the marker is back");
    let _restores = serve_restores(&Arc::new(archiver));
    let (version, entries) = owner_view(&store, "old").await;
    assert_eq!((version, entries.len()), (1, 2));
}

/// A GET of the archiver's admin port, with the admin token (as `axum_serve` configures it).
async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_as(address, path, Some(colony_testkit::ADMIN_TOKEN)).await
}

async fn http_get_as(
    address: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{authorization}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("reads");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_reports_moves_restores_and_the_backlog() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    create(&store, "ivy", 1).await;
    create(&store, "jay", 2).await;
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    tokio::spawn(axum_serve(listener, archiver.clone()));

    // Before the pass both players are inactive (the configured period is 0 s).
    let (_, body) = http_get(address, "/admin/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["backlog"][0]["inactive_in_redis"], 2, "{status}");

    archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    let _restores = serve_restores(&archiver);
    store
        .get_player(pid("ivy"), Access::Owner)
        .await
        .expect("restored");
    // The archiver counts a restore just after it ran, so the player may be back a moment
    // before the count: wait for it, with a deadline.
    let restored = "colony_archiver_restores_total{part=\"full\",outcome=\"restored\"} 1";
    // At the deadline, the last metrics read are what the assertion shows.
    let last_metrics = std::cell::RefCell::new(String::new());
    let metrics = wait_for(std::time::Duration::from_secs(10), || async {
        let (code, metrics) = http_get(address, "/metrics").await;
        assert_eq!(code, 200);
        if metrics.contains(restored) {
            return Some(metrics);
        }
        *last_metrics.borrow_mut() = metrics;
        None
    })
    .await
    .unwrap_or_else(|| last_metrics.take());
    assert!(metrics.contains(restored), "{metrics}");
    assert!(
        metrics.contains("colony_archiver_archived_total 2"),
        "{metrics}"
    );
    let (_, body) = http_get(address, "/admin/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["archived"], 2);
    assert_eq!(status["last_pass"]["archived"], 2);
    assert_eq!(http_get(address, "/healthz").await, (200, "ok\n".into()));
    // The status answers only to the admin token; metrics and health are open.
    assert_eq!(http_get_as(address, "/admin/status", None).await.0, 401);
    assert_eq!(
        http_get_as(address, "/admin/status", Some(colony_testkit::GAME_TOKEN))
            .await
            .0,
        403
    );
    assert_eq!(
        http_get_as(address, "/admin/status", Some("not-a-token-at-all"))
            .await
            .0,
        401
    );
    assert_eq!(http_get_as(address, "/metrics", None).await.0, 200);
}

/// Serves the archiver's admin routes with the test tokens, as the gateway's tests have them.
async fn axum_serve(listener: tokio::net::TcpListener, archiver: Arc<Archiver>) {
    use colony::auth::{Role, TokenConfig};
    let tokens = vec![
        TokenConfig {
            name: "game".into(),
            token: colony_testkit::GAME_TOKEN.into(),
            role: Role::Game,
        },
        TokenConfig {
            name: "admin".into(),
            token: colony_testkit::ADMIN_TOKEN.into(),
            role: Role::Admin,
        },
    ];
    let router = colony_archiver::admin::router(archiver, colony::auth::Tokens::new(tokens));
    let _ = axum::serve(listener, router).await;
}

/// A cluster node owning every slot: Redis refuses a script whose declared keys lie in
/// several slots (CROSSSLOT), and one that touches a key of another slot than its declared
/// ones while it runs.
async fn cluster_node() -> RedisServer {
    let redis = RedisServer::start_with(&["--cluster-enabled", "yes"]).expect("cluster node");
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut conn)
        .await
        .expect("takes every slot");
    let last_info = std::cell::RefCell::new(String::new());
    let ok = wait_for(std::time::Duration::from_secs(10), || async {
        // A clone of the multiplexed connection: the check only borrows what it shares.
        let mut conn = conn.clone();
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .expect("cluster info");
        if info.contains("cluster_state:ok") {
            return Some(());
        }
        *last_info.borrow_mut() = info;
        None
    })
    .await;
    assert!(ok.is_some(), "cluster never ok: {}", last_info.borrow());
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_runs_on_a_redis_cluster_node_without_crossing_slots() {
    let redis = cluster_node().await;
    // Every key each script touches must be among its KEYS, too (checked at the end).
    let watch = colony_testkit::ScriptWatch::start(&redis)
        .await
        .expect("MONITOR runs");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config(&redis, &mongo);
    config.archive.batch_size = 7;
    let store = Store::new(&config).expect("store");
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    let ids: Vec<String> = (0..40).map(|i| format!("cl-{i}")).collect();
    let slots: std::collections::HashSet<u16> = ids
        .iter()
        .map(|id| colony::keys::player_slot(&pid(id)).get())
        .collect();
    assert!(slots.len() > 30, "the players spread over many slots");

    // The transaction script: writes, a replay, reads of both kinds.
    for (i, id) in ids.iter().enumerate() {
        create(&store, id, i as u64 + 1).await;
    }
    let again = Transaction::owner(pid(&ids[0]), IdempotencyKey::new("t", 1).ok()).with(
        Operation::SetField {
            name: name("nick"),
            value: ids[0].as_bytes().to_vec(),
            visibility: Visibility::Public,
        },
    );
    assert!(matches!(
        store.execute(again).await,
        Err(Error::IdempotencyMismatch { .. })
    ));
    store
        .get_player(pid(&ids[1]), Access::Public)
        .await
        .expect("public read");

    // A slot's players are listed from the slot alone.
    let mut conn = common_raw(&redis).await;
    let slot = colony::keys::player_slot(&pid(&ids[2]));
    let listed: Vec<String> = redis::cmd("ZRANGE")
        .arg(colony::keys::SlotKeys::new(slot).active)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert!(listed.contains(&ids[2]), "{listed:?}");
    assert!(listed
        .iter()
        .all(|id| colony::keys::player_slot(&pid(id)) == slot));

    // The archiver's scripts: checkpoint, snapshot and archive, restore, rebuild.
    assert_eq!(archiver.checkpoint_pass().await.expect("checkpoint"), 40);
    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!((report.archived, report.failed), (40, 0), "{report:?}");
    let stop = serve_restores(&archiver);
    let (_, entries) = owner_view(&store, &ids[3]).await;
    assert_eq!(entries.len(), 2, "restored whole: {entries:?}");
    let _ = stop.send(true);
    create(&store, &ids[3], 1000).await;
    assert_eq!(archiver.checkpoint_pass().await.expect("checkpoint"), 1);
    flushall(&redis).await;
    let (marked, live) = archiver
        .rebuild(shard_index(&archiver, 0))
        .await
        .expect("rebuild");
    assert_eq!((marked, live), (39, 1));
    let report = watch.finish().await.expect("the watch ends");
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    // The transaction script and the archiver's: checkpoint, snapshot, archive, restore,
    // rebuild, the restore queue.
    assert!(
        report.scripts.len() >= 6,
        "scripts seen: {:?}",
        report.scripts
    );
}

async fn common_raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookkeeping_left_in_the_legacy_per_shard_sets_is_moved_into_the_slot_sets() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    let archiver = Archiver::new(&config).await.expect("archiver");
    let mut conn = common_raw(&redis).await;
    // Two players written by a gateway of the previous layout: their activity and their
    // checkpoint flag sit in the per-shard sets only.
    for (i, id) in ["old-a", "old-b"].iter().enumerate() {
        create(&store, id, i as u64 + 1).await;
        let slot = colony::keys::SlotKeys::of_player(&pid(id));
        let score: f64 = redis::cmd("ZSCORE")
            .arg(&slot.active)
            .arg(id)
            .query_async(&mut conn)
            .await
            .expect("zscore");
        let () = redis::pipe()
            .cmd("ZREM")
            .arg(&slot.active)
            .arg(id)
            .ignore()
            .cmd("SREM")
            .arg(&slot.dirty)
            .arg(id)
            .ignore()
            .cmd("ZADD")
            .arg("colony:active")
            .arg(score)
            .arg(id)
            .ignore()
            .cmd("SADD")
            .arg("colony:dirty")
            .arg(id)
            .ignore()
            .query_async(&mut conn)
            .await
            .expect("moved back to the legacy sets");
    }
    // A pass that archives nobody still moves the bookkeeping.
    let report = archiver.archive_pass(0, false).await.expect("pass");
    assert_eq!(report.archived, 0);
    let left: (u64, u64) = redis::pipe()
        .cmd("ZCARD")
        .arg("colony:active")
        .cmd("SCARD")
        .arg("colony:dirty")
        .query_async(&mut conn)
        .await
        .expect("cards");
    assert_eq!(left, (0, 0));
    assert_eq!(archiver.checkpoint_pass().await.expect("checkpoint"), 2);
    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!((report.candidates, report.archived), (2, 2), "{report:?}");

    // Restore requests gateways of previous versions queued in the shard's own queues (the
    // list, then the sorted set the 16 queues replaced) are still served.
    let archiver = Arc::new(archiver);
    let () = redis::cmd("LPUSH")
        .arg("colony:restore")
        .arg("f:old-a")
        .query_async(&mut conn)
        .await
        .expect("lpush");
    let () = redis::cmd("ZADD")
        .arg("colony:restores")
        .arg(1)
        .arg("f:old-b")
        .query_async(&mut conn)
        .await
        .expect("zadd");
    let stop = serve_restores(&archiver);
    let url = redis.url();
    let restored = tokio::task::spawn_blocking(move || {
        let mut conn = redis::Client::open(url)
            .expect("client")
            .get_connection()
            .expect("connects");
        wait_until_blocking(std::time::Duration::from_secs(10), || {
            ["{old-a}:meta", "{old-b}:meta"].iter().all(|meta| {
                let marker: Option<String> = redis::cmd("HGET")
                    .arg(meta)
                    .arg("a")
                    .query(&mut conn)
                    .expect("hget");
                marker.is_none()
            })
        })
    })
    .await
    .expect("joins");
    assert!(restored, "the legacy requests were not served");
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_then_restored_player_refuses_retries_too_old_to_judge() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config(&redis, &mongo);
    config.redis.idempotency_window_requests = 2;
    let store = Store::new(&config).expect("store");
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    let gold = |client: &str, request: u64| {
        Transaction::owner(pid("ivy"), IdempotencyKey::new(client, request).ok()).with(
            Operation::IncrementCounter {
                name: name("gold"),
                delta: 1,
                min: None,
                max: None,
                visibility: Visibility::Private,
            },
        )
    };
    for request in 1..=3 {
        store.execute(gold("gs", request)).await.expect("applies");
    }
    store.execute(gold("other", 40)).await.expect("applies");
    assert!(
        store
            .execute(gold("gs", 3))
            .await
            .expect("replays")
            .replayed
    );

    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!(report.archived, 1);
    // The windows left Redis with the player; the document keeps each client's floor.
    let mut conn = common_raw(&redis).await;
    let meta: Vec<String> = redis::cmd("HKEYS")
        .arg("{ivy}:meta")
        .query_async(&mut conn)
        .await
        .expect("hkeys");
    let mut meta = meta;
    meta.sort();
    assert_eq!(meta, vec!["a", "t", "v"]);
    assert!(!exists(&redis, "{ivy}:clients").await);

    let stop = serve_restores(&archiver);
    let (version, _) = owner_view(&store, "ivy").await;
    assert_eq!(version, 4);
    let before = digest(&redis).await;
    // Every request the window had judged is now too old, the remembered ones included:
    // records are not archived, and none of them applies again.
    for (client, request) in [("gs", 1), ("gs", 3), ("other", 40), ("other", 7)] {
        assert!(
            matches!(
                store.execute(gold(client, request)).await,
                Err(Error::RequestTooOld { version: 4 })
            ),
            "{client} {request}"
        );
    }
    assert_eq!(digest(&redis).await, before);
    // Newer requests apply, and a client the player never saw starts afresh.
    store.execute(gold("gs", 4)).await.expect("applies");
    store.execute(gold("new", 1)).await.expect("applies");
    let _ = stop.send(true);

    // Checkpoints carry the floors too: a rebuilt shard still refuses the old ones.
    assert_eq!(archiver.checkpoint_pass().await.expect("checkpoint"), 1);
    flushall(&redis).await;
    assert_eq!(
        archiver
            .rebuild(shard_index(&archiver, 0))
            .await
            .expect("rebuild"),
        (0, 1)
    );
    assert!(matches!(
        store.execute(gold("gs", 4)).await,
        Err(Error::RequestTooOld { .. })
    ));
    assert!(matches!(
        store.execute(gold("other", 40)).await,
        Err(Error::RequestTooOld { .. })
    ));
    store.execute(gold("gs", 5)).await.expect("applies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_shard_down_the_others_are_archived_checkpointed_and_restored() {
    let healthy = RedisServer::start().expect("redis");
    let mut down = RedisServer::start().expect("redis");
    let mut down_replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &down.port().to_string()])
            .expect("replica");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config(&healthy, &mongo);
    let two = colony_testkit::config_for(&[&healthy, &down]);
    config.shards = two.shards;
    config.redis.retry_deadline_ms = 500;
    let store = Store::new(&config).expect("store");
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    let map = store.shard_map().clone();
    let on = |shard: usize| -> Vec<String> {
        (0..200)
            .map(|i| format!("iso-{i}"))
            .filter(|id| map.shard_for_player(&pid(id)) == shard_index(&archiver, shard))
            .take(3)
            .collect()
    };
    let (here, there) = (on(0), on(1));
    for (i, id) in here.iter().chain(&there).enumerate() {
        create(&store, id, i as u64 + 1).await;
    }
    down_replica.kill().expect("replica stops");
    down.kill().expect("master stops");

    // Checkpoints and archiving go on for the healthy shard, and the pass names the other.
    assert_eq!(archiver.checkpoint_pass().await.expect("checkpoint"), 3);
    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!((report.archived, report.failed), (3, 0), "{report:?}");
    assert_eq!(report.failed_shards, vec!["shard-1".to_string()]);
    let failures = archiver.metrics().render();
    for pass in ["archive", "checkpoint"] {
        let line =
            format!("colony_archiver_shard_failures_total{{shard=\"shard-1\",pass=\"{pass}\"}} 1");
        assert!(failures.contains(&line), "{failures}");
    }

    // An error of the down shard's work names the shard.
    let failed = archiver
        .snapshot(shard_index(&archiver, 1), &pid(&there[0]))
        .await
        .expect_err("the shard is down");
    assert_eq!(failed.shard(), Some("shard-1"), "{failed}");
    // The store's error, kept whole: UNAVAILABLE, and worth retrying once the shard is back.
    assert!(
        matches!(
            failed.cause(),
            ArchiveError::Store(Error::Unavailable { shard: Some(name), .. }) if name == "shard-1"
        ),
        "{failed:?}"
    );
    assert!(failed.is_retryable(), "{failed:?}");
    assert!(
        failed.to_string().starts_with("shard shard-1: "),
        "{failed}"
    );

    // Restores of the healthy shard are served.
    let stop = serve_restores(&archiver);
    let (_, entries) = owner_view(&store, &here[0]).await;
    assert_eq!(entries.len(), 2);
    let _ = stop.send(true);

    // The status page answers within its bound, naming the shard that does not.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    tokio::spawn(axum_serve(listener, archiver.clone()));
    let started = std::time::Instant::now();
    let (code, body) = http_get(address, "/admin/status").await;
    assert_eq!(code, 200);
    assert!(
        started.elapsed()
            < colony_archiver::worker::SHARD_QUESTION_TIMEOUT + std::time::Duration::from_secs(1),
        "status took {:?}",
        started.elapsed()
    );
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["backlog"][0]["shard"], "shard-0", "{status}");
    // The restored player counts again (the test's inactivity period is 0 s).
    assert_eq!(status["backlog"][0]["inactive_in_redis"], 1, "{status}");
    assert_eq!(status["backlog"][1]["shard"], "shard-1", "{status}");
    assert!(status["backlog"][1]["error"].is_string(), "{status}");
    assert_eq!(
        status["last_pass"]["failed_shards"][0], "shard-1",
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_pass_meets_every_player_of_a_crowded_slot_once() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config(&redis, &mongo);
    // Batches far smaller than the crowded slot, so several are in flight inside it at once.
    config.archive.batch_size = 3;
    let store = Store::new(&config).expect("store");
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    // Eleven players in one slot (found by trying ids), and a few spread elsewhere.
    let crowded_slot = colony::keys::player_slot(&pid("crowd-0"));
    let crowded: Vec<String> = (0..)
        .map(|i| format!("crowd-{i}"))
        .filter(|id| colony::keys::player_slot(&pid(id)) == crowded_slot)
        .take(11)
        .collect();
    let spread: Vec<String> = (0..5).map(|i| format!("spread-{i}")).collect();
    for (i, id) in crowded.iter().chain(&spread).enumerate() {
        create(&store, id, i as u64 + 1).await;
    }

    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!(
        (
            report.candidates,
            report.archived,
            report.kept,
            report.failed
        ),
        (16, 16, 0, 0),
        "each player met once and archived: {report:?}"
    );
    let again = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!(again.candidates, 0, "{again:?}");

    let stop = serve_restores(&archiver);
    for id in crowded.iter().chain(&spread) {
        let (_, entries) = owner_view(&store, id).await;
        assert_eq!(entries.len(), 2, "{id} came back whole: {entries:?}");
    }
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_holding_an_intent_is_never_archived_and_the_sweep_finishes_the_intent() {
    use colony::store::intents::Decision;
    use colony::store::multi::{MultiAttempt, PrepareOutcome};
    use colony::{MultiTransaction, Participant};
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config(&redis, &mongo);
    config.redis.intent_lease_ms = 100;
    let store = Store::new(&config).expect("store");
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    create(&store, "giver", 1).await;
    create(&store, "taker", 2).await;
    let gift = MultiTransaction::new(IdempotencyKey::new("gift", 1).expect("valid"))
        .with(Participant::owner(pid("giver")).with(gold(-20)))
        .with(Participant::owner(pid("taker")).with(gold(20)));
    // The coordinator commits (applying the giver, the primary, with the commit), then stops
    // before applying the taker.
    let mut attempt = MultiAttempt::new(&store, gift).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    assert_eq!(
        attempt.decide(true).await.expect("decides"),
        Decision::Commit
    );

    // Both players are inactive (the test's period is 0 s); the taker holds the intent: kept.
    // The giver, applied, is archived.
    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!((report.archived, report.kept), (1, 1), "{report:?}");

    // After the lease, the sweep applies the commit to the taker; then it archives.
    // The lease is 100 ms; the intents resolved add up over the passes.
    let resolved = std::cell::Cell::new(0);
    let finished = wait_for(std::time::Duration::from_secs(10), || async {
        let more = archiver.sweep_pass().await;
        resolved.set(resolved.get() + more);
        (resolved.get() >= 1).then_some(())
    })
    .await;
    assert!(finished.is_some(), "the sweep never finished the intent");
    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("pass");
    assert_eq!((report.archived, report.kept), (1, 0), "{report:?}");
    let _restores = serve_restores(&archiver);
    let gold_of = |view: &(u64, Vec<(String, Visibility, Value)>)| {
        view.1
            .iter()
            .find(|(n, _, _)| n == "gold")
            .map(|(_, _, v)| v.clone())
    };
    assert_eq!(
        gold_of(&owner_view(&store, "giver").await),
        Some(Value::Counter(30))
    );
    assert_eq!(
        gold_of(&owner_view(&store, "taker").await),
        Some(Value::Counter(70))
    );
    let rendered = archiver.metrics().render();
    assert!(
        rendered.contains("colony_archiver_intents_resolved_total 1"),
        "{rendered}"
    );
}

/// A player parked by a slot move (`docs/design/resharding.md`; parked here by hand) is left
/// alone by every archiver script: no snapshot (an empty one must never reach MongoDB), no
/// removal, no restore, no checkpoint — each refused with the retryable `MOVING`, nothing
/// written — and it is archived and restored as usual once put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_parked_by_a_slot_move_is_left_alone_until_put_back() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config(&redis, &mongo);
    config.redis.retry_deadline_ms = 300;
    let store = Store::new(&config).expect("store");
    create(&store, "dana", 1).await;
    create(&store, "erin", 1).await;
    let archiver = Archiver::new(&config).await.expect("archiver");
    let shard = shard_index(&archiver, 0);
    let cutoff = now() + 1000;
    // erin archived, dana live (and changed since her last checkpoint).
    let erin = archiver
        .snapshot(shard, &pid("erin"))
        .await
        .expect("snapshot")
        .expect("live");
    write_archive(&archiver, shard, &erin)
        .await
        .expect("written");
    assert_eq!(
        archiver
            .remove(shard, &pid("erin"), erin.version, cutoff)
            .await
            .expect("removes"),
        Removal::Archived
    );
    let parked: Vec<_> = ["dana", "erin"]
        .iter()
        .map(|id| colony_testkit::park_by_hand(&redis.url(), id).expect("parked"))
        .collect();
    let before = digest(&redis).await;
    let moving = |e: &dyn std::fmt::Display| e.to_string().contains("MOVING");

    let e = archiver
        .snapshot(shard, &pid("dana"))
        .await
        .expect_err("no snapshot of a parked player");
    assert!(moving(&e), "{e}");
    let e = archiver
        .remove(shard, &pid("dana"), 1, cutoff)
        .await
        .expect_err("no removal");
    assert!(moving(&e), "{e}");
    let e = archiver
        .restore(&pid("erin"), true)
        .await
        .expect_err("no restore");
    assert!(moving(&e), "{e}");
    let report = archiver.archive_pass(cutoff, false).await.expect("a pass");
    assert_eq!(report.archived, 0, "{report:?}");
    let _ = archiver.checkpoint_pass().await;
    assert_eq!(digest(&redis).await, before, "nothing written while parked");

    for p in parked {
        p.put_back(&redis.url()).expect("put back");
    }
    let _restores = {
        let archiver = Arc::new(archiver);
        let stop = serve_restores(&archiver);
        let report = archiver.archive_pass(cutoff, false).await.expect("a pass");
        assert_eq!(report.archived, 1, "dana, once put back: {report:?}");
        stop
    };
    for p in ["dana", "erin"] {
        let state = store
            .get_player(pid(p), Access::Owner)
            .await
            .expect("comes back whole");
        assert_eq!(state.reads[0].entries.len(), 2, "{p}");
    }
}

/// Scenario 10 struck before replication caught up. A checkpoint must never put into MongoDB
/// a state that a failover then takes back: the shard's replica is stopped and its link
/// filled, a write reaches the master alone (answered UNKNOWN), a checkpoint pass runs, the
/// master dies and the replica, without that write, is promoted. A document newer than what
/// the shard kept would outrank it for good: the player, archived later at the kept version,
/// would find a document of another version and never be restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_never_stores_a_state_that_only_the_master_took() {
    checkpoint_beside_a_lagging_replica(colony_testkit::Topology::Sentinel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_checkpoint_never_stores_a_state_that_only_the_master_took() {
    checkpoint_beside_a_lagging_replica(colony_testkit::Topology::Cluster).await;
}

async fn checkpoint_beside_a_lagging_replica(topology: colony_testkit::Topology) {
    use colony::config::Acknowledge;
    use colony::keys::PlayerKeys;
    use colony_testkit::{wait_until, Profile, Rig};
    use std::time::Duration;

    let mut rig = Rig::start(topology, "archive-lag", Profile::Safe, 1, 1).expect("shard starts");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = rig.config();
    config.archive.mongodb_uris = vec![mongo.uri().to_string()];
    config.archive.database = format!(
        "colony_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    config.archive.inactive_after_secs = 0;
    config.redis.acknowledge = Acknowledge::Replicated;
    config.redis.connect_timeout_ms = 300;
    config.redis.command_timeout_ms = 1000;
    config.redis.replication_timeout_ms = 200;
    config.redis.retry_deadline_ms = 300;
    let store = Store::connect(&config).await.expect("store");
    let archiver = Arc::new(Archiver::new(&config).await.expect("archiver"));
    let map = store.shard_map();
    // The shard of the player watched (on a cluster, one of three masters).
    let g = map.shard_for_player(&pid("kept")).get();

    // Version 1, then 2, both on the replica.
    create(&store, "kept", 1).await;
    store
        .execute(Transaction::owner(pid("kept"), IdempotencyKey::new("t", 2).ok()).with(gold(1)))
        .await
        .expect("version 2");

    // The replica stops; more than its socket buffers hold is written, so nothing after
    // reaches it.
    let master = rig.master_index(g).expect("a master");
    let replica = 1 - master;
    rig.server(g, replica).pause().expect("SIGSTOP the replica");
    colony_testkit::fill_replication_link(&store, |p| map.shard_for_player(p).get() == g).await;
    // Version 3 on the master alone: not acknowledged.
    let unacknowledged = store
        .execute(Transaction::owner(pid("kept"), IdempotencyKey::new("t", 3).ok()).with(gold(5)))
        .await;
    assert!(
        matches!(unacknowledged, Err(Error::Unknown { .. })),
        "a write its replica cannot acknowledge: {unacknowledged:?}"
    );
    let meta = PlayerKeys::new(&pid("kept")).meta;
    let mut on_master = redis::Client::open(rig.server(g, master).url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let version: u64 = redis::cmd("HGET")
        .arg(&meta)
        .arg("v")
        .query_async(&mut on_master)
        .await
        .expect("reads");
    assert_eq!(version, 3, "the master took the write");

    // The checkpoint runs while the replica lags; whether it stores anything is the
    // question below.
    let _ = archiver.checkpoint_pass().await;

    rig.server_mut(g, master).kill().expect("kill the master");
    rig.server(g, replica).resume().expect("resume the replica");
    assert!(
        wait_until(Duration::from_secs(30), || rig
            .server(g, replica)
            .is_master())
        .await,
        "the replica was not promoted"
    );
    rig.restart_as_replica(g, master, replica)
        .expect("the old master returns as a replica");

    let collection = mongodb::Client::with_uri_str(mongo.uri())
        .await
        .expect("client")
        .database(&config.archive.database)
        .collection::<mongodb::bson::Document>(&config.archive.collection);
    let stored = collection
        .find_one(doc! { "_id": "kept" })
        .await
        .expect("find")
        .map(|d| d.get_i64("v").expect("a version"));
    assert!(
        stored.is_none_or(|v| v <= 2),
        "{topology:?}: MongoDB holds version {stored:?}, which the promoted replica never had"
    );

    // The player goes on from what the shard kept: it is checkpointed, archived and
    // restored at version 2.
    let checkpointed = wait_for(Duration::from_secs(20), || async {
        archiver.checkpoint_pass().await.ok()
    })
    .await;
    assert!(checkpointed.is_some(), "no checkpoint after the failover");
    let promoted = rig.server(g, replica).url();
    let archived = wait_for(Duration::from_secs(20), || async {
        let _ = archiver.archive_pass(now() + 1000, false).await;
        let mut conn = redis::Client::open(promoted.as_str())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()?;
        let marker: Option<u64> = redis::cmd("HGET")
            .arg(&meta)
            .arg("a")
            .query_async(&mut conn)
            .await
            .ok()?;
        marker
    })
    .await;
    assert_eq!(archived, Some(2), "archived at the version the shard kept");
    let _restores = serve_restores(&archiver);
    let (version, entries) = owner_view(&store, "kept").await;
    assert_eq!(version, 2, "restored at the version the shard kept");
    assert!(
        entries
            .iter()
            .any(|(n, _, v)| n == "gold" && *v == Value::Counter(51)),
        "{entries:?}"
    );
}

/// The archiver is what frees a shard's memory, so it must work when the shard is full: at
/// `maxmemory` with `noeviction`, every write that could grow memory is refused (OOM), but a
/// pass still snapshots, stores and removes inactive players. Its snapshot writes the
/// version again as it is, which grows nothing (`allow-oom`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_at_its_memory_limit_is_still_archived() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    let archiver = Archiver::new(&config).await.expect("archiver");
    create(&store, "full-a", 1).await;
    create(&store, "full-b", 2).await;
    redis.config_set("maxmemory", "1").expect("config set");
    // The shard is full: a write is refused.
    let refused = store
        .execute(Transaction::owner(pid("full-c"), IdempotencyKey::new("t", 3).ok()).with(gold(1)))
        .await;
    assert!(refused.is_err(), "a write at maxmemory: {refused:?}");

    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("the pass runs");
    assert_eq!(report.archived, 2, "{report:?}");
    assert!(!exists(&redis, "{full-a}:pub").await);
    assert!(!exists(&redis, "{full-b}:priv").await);
}

/// A shard that lost writes MongoDB has (restored from an old backup, or failed over in
/// `local` mode after a checkpoint) holds a player older than its document. Archiving it
/// there would leave a marker no document matches: the player would never be restored. So
/// the pass leaves it in Redis, served as it is, and counts it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_older_than_its_document_stays_in_redis() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let config = config(&redis, &mongo);
    let store = Store::new(&config).expect("store");
    let archiver = Archiver::new(&config).await.expect("archiver");
    create(&store, "behind", 1).await;
    let shard = shard_index(&archiver, 0);
    let mut newer = archiver
        .snapshot(shard, &pid("behind"))
        .await
        .expect("snapshot")
        .expect("a player");
    newer.version += 1;
    let written = archiver
        .write_documents(shard, &[newer], DocState::Checkpoint)
        .await;
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    let before = digest(&redis).await;

    let report = archiver
        .archive_pass(now() + 1000, false)
        .await
        .expect("the pass runs");
    assert_eq!((report.archived, report.failed), (0, 1), "{report:?}");
    assert_eq!(digest(&redis).await, before, "Redis was changed");
    let (version, entries) = owner_view(&store, "behind").await;
    assert_eq!((version, entries.len()), (1, 2));
}

/// A checkpoint goes on past a player it cannot read now (here one parked by a slot move):
/// the others of the batch are copied, and that one stays dirty until a later pass copies
/// it. Before, one such player failed the shard's whole pass, every pass, for as long as it
/// could not be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_goes_on_past_a_player_it_cannot_read() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config(&redis, &mongo);
    config.redis.retry_deadline_ms = 300;
    let store = Store::new(&config).expect("store");
    create(&store, "flo", 1).await;
    create(&store, "gus", 1).await;
    let archiver = Archiver::new(&config).await.expect("archiver");
    let parked = colony_testkit::park_by_hand(&redis.url(), "flo").expect("parked");
    assert_eq!(
        archiver.checkpoint_pass().await.expect("the pass goes on"),
        1,
        "gus is copied"
    );
    parked.put_back(&redis.url()).expect("put back");
    assert_eq!(
        archiver.checkpoint_pass().await.expect("a pass"),
        1,
        "flo stayed dirty and is copied now"
    );
    assert_eq!(archiver.checkpoint_pass().await.expect("a pass"), 0);
}
