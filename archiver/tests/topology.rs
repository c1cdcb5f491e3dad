//! Leaving a topology through the archive ("A way off a fixed topology" in
//! docs/design/resharding.md), on real redis-server and MongoDB-wire servers: the drain
//! archives every live player (finishing unfinished trades first), `rebuild --all` marks
//! them on the new topology, and every player comes back on access with what was
//! acknowledged, its idempotency floors included. Documents stay where their slot's block
//! places them, whatever the Redis topology.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use colony::{
    Access, Config, Error, IdempotencyKey, Name, Operation, PlayerId, Store, Transaction, Value,
    Visibility,
};
use colony_archiver::Archiver;
use colony_testkit::{config_for, wait_until_blocking, MongoServer, RedisServer};
use mongodb::bson::{doc, Document};

static NEXT_DB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn database() -> String {
    format!(
        "colony_topology_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A configuration of `redis` as `[[shards]]`, archiving to `mongos` in `database`.
fn config(redis: &[&RedisServer], mongos: &[&MongoServer], database: &str) -> Config {
    let mut config = config_for(redis);
    config.archive.mongodb_uris = mongos
        .iter()
        .enumerate()
        // Two servers are the same one when the tests share a real MongoDB: name them apart.
        .map(|(i, m)| {
            let joint = if m.uri().contains('?') { '&' } else { '?' };
            format!("{}{joint}appName=archive-{i}", m.uri())
        })
        .collect();
    config.archive.database = database.to_string();
    config.archive.inactive_after_secs = 3600;
    config.redis.retry_deadline_ms = 3000;
    config
}

fn pid(s: &str) -> PlayerId {
    PlayerId::new(s).expect("valid id")
}

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

fn gold(player: &str, request: u64, delta: i64) -> Transaction {
    Transaction::owner(pid(player), IdempotencyKey::new("gs", request).ok()).with(
        Operation::IncrementCounter {
            name: name("gold"),
            delta,
            min: Some(0),
            max: None,
            visibility: Visibility::Private,
        },
    )
}

fn nick(player: &str, request: u64) -> Transaction {
    Transaction::owner(pid(player), IdempotencyKey::new("gs", request).ok()).with(
        Operation::SetField {
            name: name("nick"),
            value: player.as_bytes().to_vec(),
            visibility: Visibility::Public,
        },
    )
}

type View = (u64, Vec<(String, Visibility, Value)>);

async fn owner_view(store: &Store, player: &str) -> View {
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

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects")
}

async fn dbsize(redis: &RedisServer) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(&mut raw(redis).await)
        .await
        .expect("dbsize")
}

async fn digest(redis: &RedisServer) -> String {
    redis::cmd("DEBUG")
        .arg("DIGEST")
        .query_async(&mut raw(redis).await)
        .await
        .expect("digest")
}

/// The `_id`s of `uri`'s archive collection.
async fn documents(uri: &str, database: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let client = mongodb::Client::with_uri_str(uri).await.expect("mongo");
    let found: Vec<Document> = client
        .database(database)
        .collection::<Document>("players")
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("documents");
    found
        .iter()
        .map(|d| d.get_str("_id").expect("an _id").to_string())
        .collect()
}

/// The distinct `state`s of `uri`'s archive collection, sorted.
async fn states(uri: &str, database: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let client = mongodb::Client::with_uri_str(uri).await.expect("mongo");
    let found: Vec<Document> = client
        .database(database)
        .collection::<Document>("players")
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("documents");
    let mut states: Vec<String> = found
        .iter()
        .map(|d| d.get_str("state").expect("a state").to_string())
        .collect();
    states.sort();
    states.dedup();
    states
}

fn serve_restores(archiver: &Arc<Archiver>) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let archiver = archiver.clone();
    tokio::spawn(async move { archiver.serve_restore_queues(stopped).await });
    stop
}

/// Two shards left for three: every player, active a moment ago or not, is drained to two
/// MongoDBs (each document in its slot's block), marked on the new shards, and served there
/// as acknowledged. A trade the coordinator left half-done is finished by the drain first,
/// and writes acknowledged before the switch are not applied again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_two_shards_for_three_through_the_archive_loses_nothing() {
    use colony::store::intents::Decision;
    use colony::store::multi::{MultiAttempt, PrepareOutcome};
    use colony::{MultiTransaction, Participant};

    let old = [
        RedisServer::start().expect("redis"),
        RedisServer::start().expect("redis"),
    ];
    let new = [
        RedisServer::start().expect("redis"),
        RedisServer::start().expect("redis"),
        RedisServer::start().expect("redis"),
    ];
    let mongos = [
        MongoServer::start().expect("mongodb-wire server"),
        MongoServer::start().expect("mongodb-wire server"),
    ];
    let db = database();
    // Two MongoDBs, unless the tests share one real MongoDB (then both would be one
    // collection, read twice by the rebuild).
    let two = mongos[0].uri() != mongos[1].uri();
    let mongo_refs: Vec<&MongoServer> = mongos.iter().take(if two { 2 } else { 1 }).collect();
    let mut old_config = config(&[&old[0], &old[1]], &mongo_refs, &db);
    old_config.redis.intent_lease_ms = 100;
    let new_config = config(&[&new[0], &new[1], &new[2]], &mongo_refs, &db);

    let store = Store::new(&old_config).expect("store");
    let players: Vec<String> = (0..120).map(|i| format!("p{i}")).collect();
    for (i, player) in players.iter().enumerate() {
        store.execute(nick(player, 1)).await.expect("applies");
        store
            .execute(gold(player, 2, 100 + i as i64))
            .await
            .expect("applies");
    }
    // A gift the coordinator committed (applying the giver, its primary, with the commit) and
    // never finished: the taker holds an intent.
    let gift = MultiTransaction::new(IdempotencyKey::new("gift", 1).expect("valid"))
        .with(
            Participant::owner(pid("p1")).with(Operation::IncrementCounter {
                name: name("gold"),
                delta: -20,
                min: Some(0),
                max: None,
                visibility: Visibility::Private,
            }),
        )
        .with(
            Participant::owner(pid("p2")).with(Operation::IncrementCounter {
                name: name("gold"),
                delta: 20,
                min: None,
                max: None,
                visibility: Visibility::Private,
            }),
        );
    let mut attempt = MultiAttempt::new(&store, gift).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    assert_eq!(
        attempt.decide(true).await.expect("decides"),
        Decision::Commit
    );
    drop(attempt);

    // A checkpoint first: every player already has a document, so the drain's writes go
    // through the compare-on-version upsert, grouped by placement like the inserts.
    let old_archiver = Archiver::new(&old_config).await.expect("archiver");
    assert_eq!(
        old_archiver.checkpoint_pass().await.expect("checkpoints"),
        players.len() as u64
    );

    // The gateways stop; the drain archives everyone (all were active a moment ago, an
    // hour inside the inactivity period) after the sweep finished the gift.
    let report = old_archiver
        .drain(Duration::from_secs(10), |_| {})
        .await
        .expect("drains");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.archived, players.len() as u64, "{report:?}");
    assert!(report.intents_finished >= 1, "{report:?}");
    // A second drain finds nothing to do.
    let again = old_archiver
        .drain(Duration::from_secs(10), |_| {})
        .await
        .expect("drains");
    assert_eq!(
        (again.archived, again.is_complete()),
        (0, true),
        "{again:?}"
    );

    // Every document is in the MongoDB its slot's block names, and both hold some.
    let placed: Vec<usize> = players.iter().map(|p| old_archiver.placement(p)).collect();
    if two {
        for m in 0..mongos.len() {
            let mut held = documents(&old_config.archive.mongodb_uris[m], &db).await;
            held.sort();
            let mut want: Vec<String> = players
                .iter()
                .zip(&placed)
                .filter(|(_, &p)| p == m)
                .map(|(id, _)| id.clone())
                .collect();
            want.sort();
            assert!(!want.is_empty(), "no player placed on MongoDB {m}");
            assert_eq!(held, want, "MongoDB {m}");
            // Every document is the archive now, at the version the drain read.
            assert_eq!(
                states(&old_config.archive.mongodb_uris[m], &db).await,
                vec!["archived".to_string()],
                "MongoDB {m}"
            );
        }
    }

    // The new topology: marked from MongoDB, then served.
    let new_archiver = Arc::new(Archiver::new(&new_config).await.expect("archiver"));
    let rebuilt = new_archiver.rebuild_all(|_| {}).await.expect("rebuilds");
    assert_eq!(
        (rebuilt.marked, rebuilt.live, rebuilt.present),
        (players.len() as u64, 0, 0)
    );
    for server in &new {
        assert!(dbsize(server).await > 0, "a new shard was given no player");
    }
    let new_store = Store::new(&new_config).expect("store");
    let stop = serve_restores(&new_archiver);
    let mut total = 0;
    for (i, player) in players.iter().enumerate() {
        let (version, entries) = owner_view(&new_store, player).await;
        let gold = entries
            .iter()
            .find(|(n, _, _)| n == "gold")
            .map(|(_, _, v)| v.clone());
        let want = 100
            + i as i64
            + match player.as_str() {
                "p1" => -20,
                "p2" => 20,
                _ => 0,
            };
        assert_eq!(gold, Some(Value::Counter(want)), "{player}");
        assert!(
            entries.iter().any(|(n, v, value)| n == "nick"
                && *v == Visibility::Public
                && *value == Value::Bytes(player.as_bytes().to_vec())),
            "{player}: {entries:?}"
        );
        let want_version = if matches!(player.as_str(), "p1" | "p2") {
            3
        } else {
            2
        };
        assert_eq!(version, want_version, "{player}");
        total += want;
    }
    assert_eq!(
        total,
        (0..players.len() as i64).map(|i| 100 + i).sum::<i64>(),
        "the gift moved gold, it did not make any"
    );
    // A write acknowledged before the switch, sent again after it, is not applied again.
    let before: Vec<String> = futures_util::future::join_all(new.iter().map(digest)).await;
    assert!(matches!(
        new_store.execute(gold("p7", 2, 107)).await,
        Err(Error::RequestTooOld { .. })
    ));
    let after: Vec<String> = futures_util::future::join_all(new.iter().map(digest)).await;
    assert_eq!(before, after, "a refused retry wrote");
    new_store
        .execute(gold("p7", 3, 1))
        .await
        .expect("a new write applies");
    let _ = stop.send(true);

    // Run again, the marking changes nothing: every player is present.
    let again = new_archiver.rebuild_all(|_| {}).await.expect("rebuilds");
    assert_eq!(
        (again.marked, again.live, again.present),
        (0, 0, players.len() as u64)
    );
}

/// A player whose intent cannot be finished within the drain's patience (its lease is long)
/// is never archived: the drain says which shard still holds how many, and the player is
/// as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_names_the_players_it_could_not_archive() {
    use colony::store::multi::{MultiAttempt, PrepareOutcome};
    use colony::{MultiTransaction, Participant};

    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let db = database();
    let mut config = config(&[&redis], &[&mongo], &db);
    config.redis.intent_lease_ms = 600_000;
    let store = Store::new(&config).expect("store");
    for player in ["kim", "lee", "max"] {
        store.execute(nick(player, 1)).await.expect("applies");
        store.execute(gold(player, 2, 50)).await.expect("applies");
    }
    let gift = MultiTransaction::new(IdempotencyKey::new("gift", 1).expect("valid"))
        .with(
            Participant::owner(pid("kim")).with(Operation::IncrementCounter {
                name: name("gold"),
                delta: -5,
                min: Some(0),
                max: None,
                visibility: Visibility::Private,
            }),
        )
        .with(
            Participant::owner(pid("lee")).with(Operation::IncrementCounter {
                name: name("gold"),
                delta: 5,
                min: None,
                max: None,
                visibility: Visibility::Private,
            }),
        );
    let mut attempt = MultiAttempt::new(&store, gift).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    drop(attempt);

    let archiver = Archiver::new(&config).await.expect("archiver");
    let report = archiver
        .drain(Duration::from_millis(300), |_| {})
        .await
        .expect("drains");
    assert!(!report.is_complete(), "{report:?}");
    // The primary (`kim`) holds no intent, only its lease: its operations run with the
    // commit, which now finds it archived and refuses. `max` is archived too.
    assert_eq!(report.archived, 2, "{report:?}");
    // One live player and its intent (an intent alone keeps a shard from being left: a
    // participant that never existed is live only through it).
    assert_eq!(report.left, vec![("shard-0".to_string(), 2)], "{report:?}");
    // `max` and `kim` are archived (the marker holds the version); `lee`, holding the intent,
    // is still live at the version it had (a read would wait on the intent). Its document
    // was written before the removal was refused, as in any pass that keeps a player: so
    // the drain's exit status, not MongoDB, says whether the topology can be left.
    for (player, archived) in [("max", Some(2)), ("kim", Some(2)), ("lee", None)] {
        let (version, marker): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(format!("{{{player}}}:meta"))
            .arg("v")
            .arg("a")
            .query_async(&mut raw(&redis).await)
            .await
            .expect("hmget");
        assert_eq!((version, marker), (Some(2), archived), "{player}");
    }
}

/// A trade whose taker never existed is live only through its intent: a drain that runs
/// while the intent's lease holds waits for the sweep to finish it, then archives the new
/// player too, and both arrive on the new topology with the gold moved once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_a_trade_with_a_player_that_never_existed() {
    use colony::store::intents::Decision;
    use colony::store::multi::{MultiAttempt, PrepareOutcome};
    use colony::{MultiTransaction, Participant};

    let old = RedisServer::start().expect("redis");
    let new = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let db = database();
    let mut old_config = config(&[&old], &[&mongo], &db);
    old_config.redis.intent_lease_ms = 1500;
    let new_config = config(&[&new], &[&mongo], &db);
    let store = Store::new(&old_config).expect("store");
    store.execute(gold("gio", 1, 50)).await.expect("applies");
    let gift = MultiTransaction::new(IdempotencyKey::new("gift", 1).expect("valid"))
        .with(
            Participant::owner(pid("gio")).with(Operation::IncrementCounter {
                name: name("gold"),
                delta: -20,
                min: Some(0),
                max: None,
                visibility: Visibility::Private,
            }),
        )
        .with(
            Participant::owner(pid("newbie")).with(Operation::IncrementCounter {
                name: name("gold"),
                delta: 20,
                min: None,
                max: None,
                visibility: Visibility::Private,
            }),
        );
    let mut attempt = MultiAttempt::new(&store, gift).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    assert_eq!(
        attempt.decide(true).await.expect("decides"),
        Decision::Commit
    );
    drop(attempt);

    let archiver = Archiver::new(&old_config).await.expect("archiver");
    let report = archiver
        .drain(Duration::from_secs(10), |_| {})
        .await
        .expect("drains");
    assert!(report.is_complete(), "{report:?}");
    assert!(
        report.rounds > 1,
        "the drain did not wait for the lease: {report:?}"
    );
    // The commit applied the primary; the other's intent is the one finished.
    assert_eq!(
        (report.archived, report.intents_finished),
        (2, 1),
        "{report:?}"
    );

    let new_archiver = Arc::new(Archiver::new(&new_config).await.expect("archiver"));
    let rebuilt = new_archiver.rebuild_all(|_| {}).await.expect("rebuilds");
    assert_eq!((rebuilt.marked, rebuilt.misplaced), (2, 0), "{rebuilt:?}");
    let new_store = Store::new(&new_config).expect("store");
    let stop = serve_restores(&new_archiver);
    for (player, want) in [("gio", 30), ("newbie", 20)] {
        let (_, entries) = owner_view(&new_store, player).await;
        assert!(
            entries
                .iter()
                .any(|(n, _, v)| n == "gold" && *v == Value::Counter(want)),
            "{player}: {entries:?}"
        );
    }
    let _ = stop.send(true);
}

/// A rebuild never marks a document that sits outside the MongoDB its slot's block names
/// (the list of MongoDBs was changed): its player would be unavailable. It says how many,
/// and the command exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_refuses_documents_outside_their_placement() {
    let old = RedisServer::start().expect("redis");
    let new = RedisServer::start().expect("redis");
    let mongos = [
        MongoServer::start().expect("mongodb-wire server"),
        MongoServer::start().expect("mongodb-wire server"),
    ];
    if mongos[0].uri() == mongos[1].uri() {
        // One shared real MongoDB: there is no second placement to get wrong.
        return;
    }
    let db = database();
    let old_config = config(&[&old], &[&mongos[0]], &db);
    let store = Store::new(&old_config).expect("store");
    let players: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    for player in &players {
        store.execute(nick(player, 1)).await.expect("applies");
    }
    let archiver = Archiver::new(&old_config).await.expect("archiver");
    let report = archiver
        .drain(Duration::from_secs(10), |_| {})
        .await
        .expect("drains");
    assert!(report.is_complete(), "{report:?}");

    // The list grows to two MongoDBs: the documents of the second block are misplaced.
    let new_config = config(&[&new], &[&mongos[0], &mongos[1]], &db);
    let new_archiver = Archiver::new(&new_config).await.expect("archiver");
    let moved = players
        .iter()
        .filter(|p| new_archiver.placement(p) == 1)
        .count() as u64;
    assert!(moved > 0 && moved < players.len() as u64, "{moved}");
    let rebuilt = new_archiver.rebuild_all(|_| {}).await.expect("rebuilds");
    assert_eq!(
        (rebuilt.marked, rebuilt.misplaced),
        (players.len() as u64 - moved, moved),
        "{rebuilt:?}"
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("new.toml");
    std::fs::write(
        &file,
        toml_for(&[&new], &new_config.archive.mongodb_uris, &db),
    )
    .expect("writes");
    let refused = run_archiver(&file, &["rebuild", "--all"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("{moved} documents are outside the MongoDB")),
        "{stderr}"
    );
}

/// Runs `colony-archiver` with `args` on `config_file`; waits for it to end.
fn run_archiver(config_file: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_colony-archiver"))
        .arg("--config")
        .arg(config_file)
        .args(["--log", "warn"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs colony-archiver");
    // A one-shot command must end; a daemon that kept running would fail here.
    let ended = wait_until_blocking(Duration::from_secs(60), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("collects the output");
    assert!(ended, "`colony-archiver {}` did not finish", args.join(" "));
    output
}

fn toml_for(redis: &[&RedisServer], uris: &[String], database: &str) -> String {
    let mut text = String::new();
    for (i, server) in redis.iter().enumerate() {
        text.push_str(&format!(
            "[[shards]]\nname = \"shard-{i}\"\nmaster = \"{}\"\n",
            server.address()
        ));
    }
    let uris: Vec<String> = uris.iter().map(|u| format!("{u:?}")).collect();
    text.push_str(&format!(
        "[archive]\nmongodb_uris = [{}]\ndatabase = \"{database}\"\n",
        uris.join(", ")
    ));
    text
}

/// The operator's commands: `--once --drain` on the old configuration, `rebuild --all` on
/// the new one, each printing its report as JSON; flags that make no sense together are
/// refused in one line and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_and_rebuild_commands_move_players_and_refuse_bad_flags() {
    let old = RedisServer::start().expect("redis");
    let new = [
        RedisServer::start().expect("redis"),
        RedisServer::start().expect("redis"),
    ];
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let db = database();
    let config = config(&[&old], &[&mongo], &db);
    let store = Store::new(&config).expect("store");
    let players: Vec<String> = (0..40).map(|i| format!("q{i}")).collect();
    let mut views = BTreeMap::new();
    for player in &players {
        store.execute(nick(player, 1)).await.expect("applies");
        views.insert(player.clone(), owner_view(&store, player).await);
    }
    let dir = tempfile::tempdir().expect("dir");
    let old_file = dir.path().join("old.toml");
    let new_file = dir.path().join("new.toml");
    std::fs::write(
        &old_file,
        toml_for(&[&old], &config.archive.mongodb_uris, &db),
    )
    .expect("writes");
    std::fs::write(
        &new_file,
        toml_for(&[&new[0], &new[1]], &config.archive.mongodb_uris, &db),
    )
    .expect("writes");

    let before = digest(&old).await;
    for (args, says) in [
        (vec!["--drain"], "--once"),
        (
            vec!["--once", "--drain", "--dry-run"],
            "cannot be used with",
        ),
        (vec!["rebuild"], "--shard"),
        (
            vec!["rebuild", "--all", "--shard", "shard-0"],
            "cannot be used with",
        ),
    ] {
        let refused = run_archiver(&old_file, &args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(digest(&old).await, before, "a refused command wrote");
    assert!(documents(&config.archive.mongodb_uris[0], &db)
        .await
        .is_empty());

    let drained = run_archiver(&old_file, &["--once", "--drain"]);
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&drained.stdout).expect("a JSON report");
    assert_eq!(report["archived"], players.len() as u64, "{report}");
    assert_eq!(report["left"], serde_json::json!([]), "{report}");

    let rebuilt = run_archiver(&new_file, &["rebuild", "--all"]);
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&rebuilt.stdout).expect("a JSON report");
    assert_eq!(report["marked"], players.len() as u64, "{report}");

    let new_config = Config::load(&new_file, Vec::<(String, String)>::new()).expect("loads");
    let new_store = Store::new(&new_config).expect("store");
    let new_archiver = Arc::new(Archiver::new(&new_config).await.expect("archiver"));
    let stop = serve_restores(&new_archiver);
    for (player, view) in &views {
        assert_eq!(&owner_view(&new_store, player).await, view, "{player}");
    }
    let _ = stop.send(true);
}
