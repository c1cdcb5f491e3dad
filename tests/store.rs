//! The player store against real redis-server processes: transactions, checks, bounds,
//! idempotency, batches across shards, visibility, limits and failures.

mod common;

use std::collections::HashSet;
use std::future::Future;

use colony::keys::RestoreQueue;
use colony::model::COUNTER_LIMIT;
use colony::store::breaker::BreakerState;
use colony::store::road::{Command, Effect};
use colony::{Access, Error, Operation, PlayerId, Store, Transaction, Value, Visibility};
use colony_testkit::{config_for, free_port, RedisServer};
use common::{digest, key, name, pid, raw};

fn set(n: &str, v: &[u8], visibility: Visibility) -> Operation {
    Operation::SetField {
        name: name(n),
        value: v.to_vec(),
        visibility,
    }
}

fn incr(n: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> Operation {
    Operation::IncrementCounter {
        name: name(n),
        delta,
        min,
        max,
        visibility: Visibility::Private,
    }
}

fn read_all() -> Operation {
    Operation::Read { names: vec![] }
}

fn entries(c: &colony::Committed) -> Vec<(String, Visibility, Value)> {
    c.reads
        .iter()
        .flat_map(|r| &r.entries)
        .map(|e| (e.name.as_str().to_string(), e.visibility, e.value.clone()))
        .collect()
}

#[tokio::test]
async fn a_transaction_applies_all_operations_and_bumps_the_version_once() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let p = pid("alice");
    let txn = Transaction::owner(p.clone(), key(1))
        .with(Operation::CheckVersion { expected: 0 })
        .with(set("nick", b"Al", Visibility::Public))
        .with(set("email", b"a@example.org", Visibility::Private))
        .with(incr("gold", 100, Some(0), None))
        .with(read_all());
    let committed = store.execute(txn).await.expect("commits");
    assert_eq!(committed.version, 1);
    assert!(!committed.replayed);
    assert_eq!(
        entries(&committed),
        vec![
            (
                "email".into(),
                Visibility::Private,
                Value::Bytes(b"a@example.org".to_vec())
            ),
            ("gold".into(), Visibility::Private, Value::Counter(100)),
            (
                "nick".into(),
                Visibility::Public,
                Value::Bytes(b"Al".to_vec())
            ),
        ]
    );

    let second = Transaction::owner(p.clone(), key(2))
        .with(incr("gold", -30, Some(0), None))
        .with(Operation::Read {
            names: vec![name("gold"), name("missing")],
        });
    let committed = store.execute(second).await.expect("commits");
    assert_eq!(committed.version, 2);
    assert_eq!(
        entries(&committed),
        vec![("gold".into(), Visibility::Private, Value::Counter(70))]
    );

    // Reads alone do not move the version.
    let read = Transaction::owner(p.clone(), None).with(read_all());
    assert_eq!(store.execute(read).await.expect("reads").version, 2);
}

#[tokio::test]
async fn public_access_sees_public_entries_only() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let p = pid("bob");
    let txn = Transaction::owner(p.clone(), key(1))
        .with(set("nick", b"Bob", Visibility::Public))
        .with(set("secret", b"s3cr3t", Visibility::Private))
        .with(Operation::IncrementCounter {
            name: name("trophies"),
            delta: 7,
            min: None,
            max: None,
            visibility: Visibility::Public,
        })
        .with(incr("gold", 5, None, None));
    store.execute(txn).await.expect("commits");

    let public = store
        .get_player(p.clone(), Access::Public)
        .await
        .expect("reads");
    assert_eq!(
        entries(&public),
        vec![
            (
                "nick".into(),
                Visibility::Public,
                Value::Bytes(b"Bob".to_vec())
            ),
            ("trophies".into(), Visibility::Public, Value::Counter(7)),
        ]
    );
    // Naming a private field explicitly does not reveal it either.
    let named = Transaction {
        player: p.clone(),
        access: Access::Public,
        idempotency_key: None,
        operations: vec![Operation::Read {
            names: vec![name("secret"), name("gold"), name("nick")],
        }],
    };
    let named = store.execute(named).await.expect("reads");
    assert_eq!(
        entries(&named),
        vec![(
            "nick".into(),
            Visibility::Public,
            Value::Bytes(b"Bob".to_vec())
        )]
    );

    // Making a field private hides it from public reads at once.
    let hide = Transaction::owner(p.clone(), key(2)).with(set("nick", b"Bob", Visibility::Private));
    store.execute(hide).await.expect("commits");
    let public = store
        .get_player(p.clone(), Access::Public)
        .await
        .expect("reads");
    assert_eq!(
        entries(&public),
        vec![("trophies".into(), Visibility::Public, Value::Counter(7))]
    );
    let owner = store.get_player(p, Access::Owner).await.expect("reads");
    assert_eq!(entries(&owner).len(), 4);
}

#[tokio::test]
async fn failed_checks_and_bounds_apply_nothing() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let p = pid("carol");
    store
        .execute(
            Transaction::owner(p.clone(), key(1))
                .with(set("house", b"hut", Visibility::Public))
                .with(incr("gold", 10, None, None)),
        )
        .await
        .expect("commits");
    let before = digest(&servers[0]).await;

    let stale = Transaction::owner(p.clone(), key(2))
        .with(set("house", b"castle", Visibility::Public))
        .with(Operation::CheckVersion { expected: 0 });
    assert_eq!(
        store.execute(stale).await,
        Err(Error::Conflict {
            version: 1,
            operation_index: 1
        })
    );

    let wrong_field = Transaction::owner(p.clone(), key(3))
        .with(incr("gold", 1, None, None))
        .with(Operation::CheckField {
            name: name("house"),
            expected: Some(b"castle".to_vec()),
        });
    assert!(matches!(
        store.execute(wrong_field).await,
        Err(Error::Conflict {
            version: 1,
            operation_index: 1
        })
    ));

    let absent = Transaction::owner(p.clone(), key(4))
        .with(Operation::CheckField {
            name: name("house"),
            expected: None,
        })
        .with(incr("gold", 1, None, None));
    assert!(matches!(
        store.execute(absent).await,
        Err(Error::Conflict { .. })
    ));

    let overdraw = Transaction::owner(p.clone(), key(5))
        .with(set("house", b"castle", Visibility::Public))
        .with(incr("gold", -11, Some(0), None));
    assert_eq!(
        store.execute(overdraw).await,
        Err(Error::OutOfBounds {
            version: 1,
            operation_index: 1
        })
    );
    let cap = Transaction::owner(p.clone(), key(6)).with(incr("gold", 1, None, Some(10)));
    assert!(matches!(
        store.execute(cap).await,
        Err(Error::OutOfBounds { .. })
    ));

    assert_eq!(
        digest(&servers[0]).await,
        before,
        "a failed transaction wrote something"
    );

    // The check passes with the right values.
    let ok = Transaction::owner(p.clone(), key(7))
        .with(Operation::CheckVersion { expected: 1 })
        .with(Operation::CheckField {
            name: name("house"),
            expected: Some(b"hut".to_vec()),
        })
        .with(incr("gold", -10, Some(0), None));
    assert_eq!(store.execute(ok).await.expect("commits").version, 2);
}

#[tokio::test]
async fn counters_are_exact_up_to_the_limit() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let p = pid("dave");
    let big = Transaction::owner(p.clone(), key(1))
        .with(incr("n", COUNTER_LIMIT, None, None))
        .with(Operation::Read {
            names: vec![name("n")],
        });
    let committed = store.execute(big).await.expect("commits");
    assert_eq!(
        entries(&committed),
        vec![(
            "n".into(),
            Visibility::Private,
            Value::Counter(COUNTER_LIMIT)
        )]
    );
    let over = Transaction::owner(p.clone(), key(2)).with(incr("n", 1, None, None));
    assert!(matches!(
        store.execute(over).await,
        Err(Error::OutOfBounds { .. })
    ));
    let down = Transaction::owner(p.clone(), key(3))
        .with(incr("n", -COUNTER_LIMIT, None, None))
        .with(incr("n", -COUNTER_LIMIT, None, None))
        .with(Operation::Read {
            names: vec![name("n")],
        });
    let committed = store.execute(down).await.expect("commits");
    assert_eq!(
        entries(&committed),
        vec![(
            "n".into(),
            Visibility::Private,
            Value::Counter(-COUNTER_LIMIT)
        )]
    );
}

#[tokio::test]
async fn retries_with_the_same_key_apply_once() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let p = pid("erin");
    let txn = Transaction::owner(p.clone(), key(42))
        .with(incr("gold", 5, None, None))
        .with(Operation::Read {
            names: vec![name("gold")],
        });
    let first = store.execute(txn.clone()).await.expect("commits");
    assert!(!first.replayed);
    for _ in 0..3 {
        let again = store.execute(txn.clone()).await.expect("replays");
        assert!(again.replayed);
        assert_eq!(again.version, first.version);
        assert_eq!(again.reads, first.reads);
    }
    let state = store
        .get_player(p.clone(), Access::Owner)
        .await
        .expect("reads");
    assert_eq!(
        entries(&state),
        vec![("gold".into(), Visibility::Private, Value::Counter(5))]
    );

    // Same key, different content: rejected, nothing applied.
    let before = digest(&servers[0]).await;
    let different = Transaction::owner(p.clone(), key(42)).with(incr("gold", 6, None, None));
    assert_eq!(
        store.execute(different).await,
        Err(Error::IdempotencyMismatch { version: 1 })
    );
    let as_public = Transaction {
        access: Access::Public,
        operations: vec![Operation::Read {
            names: vec![name("gold")],
        }],
        ..txn.clone()
    };
    assert!(matches!(
        store.execute(as_public).await,
        Err(Error::IdempotencyMismatch { .. })
    ));
    assert_eq!(digest(&servers[0]).await, before);
}

#[tokio::test]
async fn batches_span_shards_and_keep_request_order() {
    let servers = common::servers(3);
    let store = common::store(&servers);
    let players: Vec<_> = (0..60).map(|i| pid(&format!("player-{i}"))).collect();
    let mut batch: Vec<Transaction> = players
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Transaction::owner(p.clone(), key(1)).with(incr("gold", i as i64, None, None))
        })
        .collect();
    // One malformed and one conflicting transaction in the middle touch nobody else.
    batch.insert(
        10,
        Transaction::owner(pid("bad"), None).with(incr("gold", 1, None, None)),
    );
    batch.insert(
        20,
        Transaction::owner(pid("conflict"), key(1)).with(Operation::CheckVersion { expected: 9 }),
    );
    let results = store.execute_batch(batch).await.expect("batch runs");
    assert_eq!(results.len(), 62);
    assert!(matches!(results[10], Err(Error::Invalid(_))));
    assert!(matches!(results[20], Err(Error::Conflict { .. })));
    let ok: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 10 && *i != 20)
        .map(|(_, r)| r.as_ref().expect("commits").version)
        .collect();
    assert_eq!(ok, vec![1; 60]);

    // Every player is stored on the shard the map names, and only there.
    let mut used = HashSet::new();
    for (i, p) in players.iter().enumerate() {
        let shard = store.shard_map().shard_for_player(p).get();
        used.insert(shard);
        for (s, server) in servers.iter().enumerate() {
            let mut conn = raw(server).await;
            let gold: Option<i64> = redis::cmd("HGET")
                .arg(format!("{{{}}}:priv", p.as_str()))
                .arg("c:gold")
                .query_async(&mut conn)
                .await
                .expect("hget");
            if s == shard {
                assert_eq!(gold, Some(i as i64));
            } else {
                assert_eq!(gold, None);
            }
        }
    }
    assert_eq!(used.len(), 3, "60 players should cover 3 shards");

    let too_many = vec![Transaction::owner(pid("x"), None).with(read_all()); 1025];
    assert!(matches!(
        store.execute_batch(too_many).await,
        Err(Error::TooLarge(_))
    ));
}

#[tokio::test]
async fn owner_transactions_mark_activity_and_public_reads_do_not() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let mut conn = raw(&servers[0]).await;
    let score = |conn: &mut redis::aio::MultiplexedConnection, id: &'static str| {
        let mut conn = conn.clone();
        async move {
            let s: Option<f64> = redis::cmd("ZSCORE")
                .arg(colony::keys::SlotKeys::of_player(&pid(id)).active)
                .arg(id)
                .query_async(&mut conn)
                .await
                .expect("zscore");
            s
        }
    };
    let missing = store.get_player(pid("gus"), Access::Public).await;
    assert!(matches!(missing, Err(Error::NotFound)), "{missing:?}");
    assert_eq!(score(&mut conn, "gus").await, None);
    store
        .execute(Transaction::owner(pid("gus"), key(1)).with(incr("xp", 1, None, None)))
        .await
        .expect("commits");
    let first = score(&mut conn, "gus").await.expect("active");
    let before = digest(&servers[0]).await;
    store
        .get_player(pid("gus"), Access::Public)
        .await
        .expect("reads");
    assert_eq!(
        digest(&servers[0]).await,
        before,
        "a public read changed state"
    );
    let meta_t: i64 = redis::cmd("HGET")
        .arg("{gus}:meta")
        .arg("t")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(meta_t as f64, first);
}

#[tokio::test]
async fn a_missing_player_is_not_found_and_reads_create_nothing() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let before = digest(&servers[0]).await;
    assert_eq!(
        store.get_player(pid("nobody"), Access::Owner).await,
        Err(Error::NotFound)
    );
    assert_eq!(digest(&servers[0]).await, before);
}

#[tokio::test]
async fn the_script_is_reloaded_after_a_flush() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let txn = |r| Transaction::owner(pid("hal"), key(r)).with(incr("gold", 1, None, None));
    store.execute(txn(1)).await.expect("commits");
    let mut conn = raw(&servers[0]).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let batch = vec![txn(2), txn(3), txn(2)];
    let results = store.execute_batch(batch).await.expect("runs");
    let versions: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().expect("commits").version)
        .collect();
    assert_eq!(versions, vec![2, 3, 2]);
    assert!(results[2].as_ref().expect("ok").replayed);
}

#[tokio::test]
async fn a_dead_shard_fails_only_its_own_players_and_then_fails_fast() {
    let live = RedisServer::start().expect("starts");
    let dead_port = free_port().expect("port");
    let text = format!(
        "[[shards]]\nname = \"live\"\nmaster = \"{}\"\n[[shards]]\nname = \"dead\"\nmaster = \"127.0.0.1:{dead_port}\"\n\
         [redis]\nconnect_timeout_ms = 300\nretry_deadline_ms = 0\nbreaker_failures = 2\nbreaker_cooldown_ms = 60000\n",
        live.address()
    );
    let store = Store::new(&colony::Config::from_toml(&text, []).expect("config")).expect("store");
    let batch = |request: u64| -> Vec<Transaction> {
        (0..20)
            .map(|i| {
                Transaction::owner(pid(&format!("p{i}")), key(request))
                    .with(incr("gold", 1, None, None))
            })
            .collect()
    };
    let players: Vec<_> = batch(1).iter().map(|t| t.player.clone()).collect();
    for request in 1..=2 {
        let results = store.execute_batch(batch(request)).await.expect("runs");
        let mut saw_dead = false;
        for (p, result) in players.iter().zip(&results) {
            if store.shard_map().shard_for_player(p).get() == 0 {
                assert_eq!(
                    result.as_ref().expect("live shard commits").version,
                    request
                );
            } else {
                saw_dead = true;
                let e = result.as_ref().expect_err("dead shard fails");
                assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
                assert!(e.is_retryable());
            }
        }
        assert!(saw_dead);
    }
    // Two consecutive failures opened the dead shard's breaker: its players now fail without
    // a connection attempt, and the live shard is untouched.
    assert_eq!(
        store.breaker_states(),
        vec![BreakerState::Closed, BreakerState::Open]
    );
    let connects = store.connection_stats()[1].connects;
    let results = store.execute_batch(batch(3)).await.expect("runs");
    assert_eq!(store.connection_stats()[1].connects, connects);
    for (p, result) in players.iter().zip(&results) {
        if store.shard_map().shard_for_player(p).get() == 1 {
            assert!(
                matches!(result, Err(Error::Unavailable { reason, .. }) if reason.contains("breaker")),
                "{result:?}"
            );
        } else {
            assert!(result.is_ok());
        }
    }
    let pings = store.ping_shards(std::time::Duration::from_secs(1)).await;
    assert!(pings[0].is_ok(), "{:?}", pings[0]);
    assert!(
        matches!(&pings[1], Err(Error::Unavailable { shard, .. }) if shard.as_deref() == Some("dead")),
        "{:?}",
        pings[1]
    );
}

#[tokio::test]
async fn oversized_and_malformed_transactions_change_nothing() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let p = pid("ivy");
    store
        .execute(Transaction::owner(p.clone(), key(1)).with(set("a", b"1", Visibility::Public)))
        .await
        .expect("commits");
    let before = digest(&servers[0]).await;
    let limits = store.limits().clone();
    let huge = vec![0u8; limits.max_value_bytes + 1];
    type Expect = fn(&Error) -> bool;
    let cases: Vec<(Transaction, Expect)> = vec![
        (
            Transaction::owner(p.clone(), key(2)).with(set("a", &huge, Visibility::Public)),
            |e| matches!(e, Error::TooLarge(_)),
        ),
        (
            (0..=limits.max_operations_per_transaction)
                .fold(Transaction::owner(p.clone(), key(3)), |t, _| {
                    t.with(set("a", b"x", Visibility::Public))
                }),
            |e| matches!(e, Error::TooLarge(_)),
        ),
        (Transaction::owner(p.clone(), key(4)), |e| {
            matches!(e, Error::Invalid(_))
        }),
        (
            Transaction::owner(p.clone(), None).with(set("a", b"2", Visibility::Public)),
            |e| matches!(e, Error::Invalid(_)),
        ),
        (
            Transaction {
                access: Access::Public,
                ..Transaction::owner(p.clone(), key(5)).with(set("a", b"2", Visibility::Public))
            },
            |e| matches!(e, Error::Forbidden(_)),
        ),
        (
            Transaction::owner(p.clone(), key(6)).with(incr("g", i64::MAX, None, None)),
            |e| matches!(e, Error::Invalid(_)),
        ),
    ];
    for (txn, expected) in cases {
        let e = store.execute(txn).await.expect_err("rejected");
        assert!(expected(&e), "unexpected error {e:?}");
    }
    assert_eq!(digest(&servers[0]).await, before);
}

#[tokio::test]
async fn hostile_player_ids_stay_inside_their_own_keys() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    // A leading '}' would leave the keys' hash tag empty, so such ids are refused up front.
    assert!(matches!(PlayerId::new("}"), Err(Error::Invalid(_))));
    let ids = ["a}", "{", "{}", "a}:pub", "x\r\nFLUSHALL\r\n", "\0", "ü{ß}"];
    for (i, id) in ids.iter().enumerate() {
        let txn = Transaction::owner(pid(id), key(1)).with(set(
            "v",
            format!("{i}").as_bytes(),
            Visibility::Public,
        ));
        store.execute(txn).await.expect("commits");
    }
    for (i, id) in ids.iter().enumerate() {
        let got = store
            .get_player(pid(id), Access::Public)
            .await
            .expect("reads");
        assert_eq!(
            entries(&got),
            vec![(
                "v".into(),
                Visibility::Public,
                Value::Bytes(format!("{i}").into_bytes())
            )],
            "player {id:?}"
        );
    }
}

#[tokio::test]
async fn connections_recover_after_the_server_restarts() {
    let mut servers = common::servers(1);
    let store = common::store(&servers);
    let txn = |r| Transaction::owner(pid("jo"), key(r)).with(incr("gold", 1, None, None));
    store.execute(txn(1)).await.expect("commits");
    servers[0].restart().expect("restarts");
    // The old connections are dead. The store retries within its deadline, reconnecting and
    // reloading the script by itself, so the caller sees no failure at all.
    // Enough requests to use every connection of the round robin, the dead ones included.
    for request in 2..6 {
        let committed = store
            .execute(txn(request))
            .await
            .expect("retried to success");
        // The server restarted empty (no persistence in tests).
        assert_eq!(committed.version, request - 1);
    }
    assert!(
        store.retries() >= 1,
        "a dead connection must have failed and been retried"
    );
    let stats = store.connection_stats();
    assert!(stats[0].connects >= 2, "{stats:?}");
}

/// A store over `servers` with `limits`.
fn store_with(servers: &[RedisServer], limits: colony::Limits) -> Store {
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = config_for(&refs);
    config.limits = limits;
    Store::new(&config).expect("store builds")
}

/// The size tally the script keeps in `{id}:meta` (b, n; -1 when absent), and the size
/// counted from the player's hashes.
async fn tally_and_real(server: &RedisServer, player: &str) -> ((i64, i64), (i64, i64)) {
    let (tally, real) = common::size_tally(&mut raw(server).await, player).await;
    (tally.unwrap_or((-1, -1)), real)
}

#[tokio::test]
async fn a_player_cannot_grow_past_its_bounds_and_the_tally_stays_true() {
    let servers = common::servers(1);
    let limits = colony::Limits {
        max_player_bytes: 100,
        max_player_entries: 3,
        max_answer_bytes: 1000,
        ..colony::Limits::default()
    };
    let store = store_with(&servers, limits);
    let p = pid("grower");
    let mut request = 0;
    let mut write = |ops: Vec<Operation>| {
        request += 1;
        let mut txn = Transaction::owner(p.clone(), key(request));
        txn.operations = ops;
        store.execute(txn)
    };
    // 2 entries, 4 + 40 + 4 + 1 = 49 bytes.
    write(vec![
        set("name", &[b'x'; 40], Visibility::Public),
        incr("gold", 5, None, None),
    ])
    .await
    .expect("fits");
    assert_eq!(
        tally_and_real(&servers[0], "grower").await,
        ((49, 2), (49, 2))
    );
    // Past the byte bound: refused, nothing applied.
    let before = digest(&servers[0]).await;
    let refused = write(vec![
        incr("gold", 1, None, None),
        set("bio", &[b'y'; 60], Visibility::Private),
    ])
    .await;
    assert_eq!(
        refused,
        Err(Error::PlayerTooLarge {
            version: 1,
            operation_index: 1
        })
    );
    assert_eq!(
        refused.expect_err("refused").code(),
        colony::Code::PlayerTooLarge
    );
    assert_eq!(digest(&servers[0]).await, before);
    // Past the entry bound: refused too.
    let refused = write(vec![
        set("a", b"1", Visibility::Public),
        set("b", b"1", Visibility::Public),
    ])
    .await;
    assert!(
        matches!(refused, Err(Error::PlayerTooLarge { .. })),
        "{refused:?}"
    );
    assert_eq!(digest(&servers[0]).await, before);
    // Replacing a value, moving it between visibilities and deleting keep the tally exact.
    write(vec![
        set("name", b"short", Visibility::Private),
        set("bio", &[b'y'; 30], Visibility::Public),
        Operation::DeleteCounter { name: name("gold") },
        set("e", b"", Visibility::Public),
    ])
    .await
    .expect("fits");
    let (tally, real) = tally_and_real(&servers[0], "grower").await;
    assert_eq!(tally, real);
    assert_eq!(real, (4 + 5 + 3 + 30 + 1, 3));

    // A tally that is missing (a rebuilt player) is counted afresh by the next write.
    let mut conn = raw(&servers[0]).await;
    let _: i64 = redis::cmd("HDEL")
        .arg("{grower}:meta")
        .arg("b")
        .arg("n")
        .query_async(&mut conn)
        .await
        .expect("hdel");
    let refused = write(vec![incr("gold", 1, None, None)]).await;
    assert!(
        matches!(refused, Err(Error::PlayerTooLarge { .. })),
        "a fourth entry is refused after counting afresh: {refused:?}"
    );
    write(vec![set("e", b"12", Visibility::Public)])
        .await
        .expect("fits");
    let (tally, real) = tally_and_real(&servers[0], "grower").await;
    assert_eq!(tally, real);

    // Lowered bounds: the player is now over them; writes that shrink it still apply.
    let smaller = store_with(
        &servers,
        colony::Limits {
            max_player_bytes: 10,
            max_player_entries: 3,
            max_answer_bytes: 1000,
            ..colony::Limits::default()
        },
    );
    let shrink =
        Transaction::owner(p.clone(), key(100)).with(Operation::DeleteField { name: name("bio") });
    smaller.execute(shrink).await.expect("shrinking is allowed");
    let grow = Transaction::owner(p.clone(), key(101)).with(set("e", b"123", Visibility::Public));
    assert!(matches!(
        smaller.execute(grow).await,
        Err(Error::PlayerTooLarge { .. })
    ));
}

#[tokio::test]
async fn reads_stop_at_their_budget_and_a_failed_read_applies_nothing() {
    let servers = common::servers(1);
    let limits = colony::Limits {
        max_player_bytes: 4000,
        max_player_entries: 10,
        max_answer_bytes: 4200,
        ..colony::Limits::default()
    };
    let store = store_with(&servers, limits);
    let p = pid("big");
    let mut fill = Transaction::owner(p.clone(), key(1));
    for i in 0..8 {
        fill = fill.with(set(&format!("f{i}"), &[b'v'; 480], Visibility::Public));
    }
    store.execute(fill).await.expect("fills");
    // Alone, a transaction may read the whole player (8 x (2 + 480 + 16) = 3984 bytes).
    let alone = store
        .get_player(p.clone(), Access::Owner)
        .await
        .expect("reads");
    assert_eq!(entries(&alone).len(), 8);
    // Two transactions that read share the budget: neither can read everything, and the
    // write in the first is not applied.
    let before = digest(&servers[0]).await;
    let batch = vec![
        Transaction::owner(p.clone(), key(2))
            .with(incr("gold", 1, None, None))
            .with(read_all()),
        Transaction::owner(p.clone(), None).with(read_all()),
    ];
    let results = store.execute_batch(batch).await.expect("runs");
    for r in &results {
        assert!(matches!(r, Err(Error::TooLarge(_))), "{r:?}");
    }
    assert_eq!(
        digest(&servers[0]).await,
        before,
        "a refused read changed state"
    );
    // Named reads within the share still work in the same batch shape.
    let batch = vec![
        Transaction::owner(p.clone(), None).with(Operation::Read {
            names: vec![name("f0"), name("f1")],
        }),
        Transaction::owner(p.clone(), None).with(Operation::Read {
            names: vec![name("f2")],
        }),
    ];
    for r in store.execute_batch(batch).await.expect("runs") {
        r.expect("within the share");
    }
}

/// Marks `player` archived at version 1 the way the archiver leaves it, without an archiver.
async fn mark_archived(conn: &mut redis::aio::MultiplexedConnection, player: &str) {
    let () = redis::cmd("HSET")
        .arg(format!("{{{player}}}:meta"))
        .arg(&["v", "1", "a", "1"])
        .query_async(conn)
        .await
        .expect("marks");
}

/// The requests waiting in `queue`, oldest first.
async fn queued(conn: &mut redis::aio::MultiplexedConnection, queue: RestoreQueue) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(queue.key())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("zrange")
}

#[tokio::test]
async fn the_restore_queue_collapses_duplicates_and_holds_at_most_its_cap() {
    let server = RedisServer::start().expect("starts");
    let mut config = config_for(&[&server]);
    config.redis.retry_deadline_ms = 300;
    config.redis.max_restore_requests = 3;
    let store = Store::new(&config).expect("store");
    let mut conn = raw(&server).await;
    // Five players whose requests wait in one queue, and one whose request waits in another.
    let queue = RestoreQueue::of_player(&pid("r0"));
    let same: Vec<String> = (0..)
        .map(|n| format!("r{n}"))
        .filter(|id| RestoreQueue::of_player(&pid(id)) == queue)
        .take(5)
        .collect();
    let other = (0..)
        .map(|n| format!("o{n}"))
        .find(|id| RestoreQueue::of_player(&pid(id)) != queue)
        .expect("some player waits in another queue");
    // No archiver runs: every attempt meets the marker until the deadline.
    for player in same.iter().chain([&other]) {
        mark_archived(&mut conn, player).await;
    }
    for _ in 0..3 {
        let read = store.get_player(pid(&same[0]), Access::Owner).await;
        assert!(matches!(read, Err(Error::Unavailable { .. })), "{read:?}");
    }
    let waiting = queued(&mut conn, queue).await;
    assert_eq!(
        waiting,
        vec![format!("f:{}", same[0])],
        "one request, however often asked"
    );
    let batch: Vec<Transaction> = same[1..]
        .iter()
        .chain([&other])
        .map(|p| Transaction::owner(pid(p), None).with(Operation::Read { names: vec![] }))
        .collect();
    for result in store.execute_batch(batch).await.expect("batch") {
        assert!(
            matches!(result, Err(Error::Unavailable { .. })),
            "{result:?}"
        );
    }
    let length: u64 = redis::cmd("ZCARD")
        .arg(queue.key())
        .query_async(&mut conn)
        .await
        .expect("zcard");
    assert_eq!(length, 3, "capped at redis.max_restore_requests");
    let elsewhere = queued(&mut conn, RestoreQueue::of_player(&pid(&other))).await;
    assert_eq!(
        elsewhere,
        vec![format!("f:{other}")],
        "each queue has its own cap"
    );
}

#[tokio::test]
async fn writes_are_recorded_for_checkpoints_only_when_checkpoints_are_on() {
    let server = RedisServer::start().expect("starts");
    let mut conn = raw(&server).await;
    for (interval, expected) in [(0, 0u64), (300, 1)] {
        let mut config = config_for(&[&server]);
        config.archive.checkpoint_interval_secs = interval;
        let store = Store::new(&config).expect("store");
        let player = format!("dirty-{interval}");
        let txn = Transaction::owner(pid(&player), key(1)).with(incr("gold", 1, None, None));
        store.execute(txn).await.expect("commits");
        let dirty: u64 = redis::cmd("SCARD")
            .arg(colony::keys::SlotKeys::of_player(&pid(&player)).dirty)
            .query_async(&mut conn)
            .await
            .expect("scard");
        assert_eq!(dirty, expected, "checkpoint_interval_secs = {interval}");
    }
}

#[test]
fn a_hand_built_configuration_is_validated_by_the_store() {
    let server = RedisServer::start().expect("starts");
    let good = config_for(&[&server]);
    let mut zero_connections = good.clone();
    zero_connections.redis.connections_per_shard = 0;
    let mut huge_timeout = good.clone();
    huge_timeout.redis.command_timeout_ms = u64::MAX;
    let mut no_window = good.clone();
    no_window.redis.idempotency_window_requests = 0;
    let mut zero_answers = good.clone();
    zero_answers.limits.max_answer_bytes = 0;
    for (config, field) in [
        (zero_connections, "redis.connections_per_shard"),
        (huge_timeout, "redis.command_timeout_ms"),
        (no_window, "redis.idempotency_window_requests"),
        (zero_answers, "limits.max_answer_bytes"),
    ] {
        match Store::new(&config) {
            Err(colony::error::StartupError::Config(message)) => {
                assert!(message.contains(field), "{message}")
            }
            Err(other) => panic!("{field}: {other}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    assert!(Store::new(&good).is_ok());
}

/// Counts the calls (pipelines) the store reports.
#[derive(Default)]
struct CallCounter(std::sync::atomic::AtomicUsize);

impl colony::store::ShardObserver for CallCounter {
    fn pipeline(&self, _shard: &str, _elapsed: std::time::Duration, _error: Option<&Error>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `INCRBY <key> <by>`, a write.
fn incr_by(key: &str, by: i64) -> Command {
    Command::plain(
        redis::cmd("INCRBY").arg(key).arg(by).clone(),
        Effect::Writes,
    )
}

#[tokio::test]
async fn coalesced_calls_share_pipelines_and_each_caller_gets_its_own_replies() {
    let servers = common::servers(1);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let calls = std::sync::Arc::new(CallCounter::default());
    let store = Store::with_observer(&config_for(&refs), calls.clone()).expect("store builds");
    let shard = store.shard_map().shard_for_player(&pid("anyone"));
    // 100 callers, caller i sending (i mod 3) + 1 commands: 199 commands in all, so at least
    // four calls of at most 64 commands, and one call per caller without coalescing.
    let jobs = (0..100i64).map(|i| {
        let commands = (0..=(i % 3)).map(|_| incr_by(&format!("coalesced:{i}"), i + 1));
        store.send_coalesced(shard, commands.collect())
    });
    let answers = futures_util::future::join_all(jobs).await;
    for (i, answer) in (0..100i64).zip(answers) {
        assert_eq!(
            answer.acknowledged, None,
            "local acknowledgements ask for none"
        );
        let replies: Vec<i64> = answer
            .replies
            .into_iter()
            .map(|r| redis::from_redis_value(r.expect("answered")).expect("a number"))
            .collect();
        let expected: Vec<i64> = (1..=(i % 3) + 1).map(|k| k * (i + 1)).collect();
        assert_eq!(replies, expected, "caller {i} got another caller's replies");
    }
    let calls = calls.0.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (4..=20).contains(&calls),
        "100 callers' 199 commands took {calls} calls"
    );
}

#[tokio::test]
async fn a_coalesced_call_acknowledges_only_the_callers_that_wrote() {
    let servers = common::servers(1);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config = config_for(&refs);
    // The server has no replica, so a write's acknowledgement must fail, quickly.
    config.redis.acknowledge = colony::config::Acknowledge::Replicated;
    config.redis.replication_timeout_ms = 50;
    let calls = std::sync::Arc::new(CallCounter::default());
    let store = Store::with_observer(&config, calls.clone()).expect("store builds");
    let shard = store.shard_map().shard_for_player(&pid("anyone"));
    let read = || Command::read(redis::cmd("GET").arg("acknowledged:w").clone());
    let (writer, reader) = tokio::join!(
        store.send_coalesced(shard, vec![incr_by("acknowledged:w", 1)]),
        store.send_coalesced(shard, vec![read()]),
    );
    assert_eq!(
        calls.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the write and the read went out in one call"
    );
    assert!(
        matches!(writer.acknowledged, Some(Err(Error::Unknown { .. }))),
        "a write without its replica is not acknowledged: {writer:?}"
    );
    assert_eq!(reader.acknowledged, None, "a read needs no acknowledgement");
    assert!(reader.replies[0].is_ok(), "{reader:?}");
    // Alone, the write is answered the same: coalescing changes no caller's answer.
    let alone = store
        .send_coalesced(shard, vec![incr_by("acknowledged:w", 1)])
        .await;
    assert!(matches!(
        alone.acknowledged,
        Some(Err(Error::Unknown { .. }))
    ));
    assert_eq!(
        redis::from_redis_value::<i64>(alone.replies[0].clone().expect("answered"))
            .expect("a number"),
        2
    );
}

/// A fresh runtime of one thread.
fn one_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Whether `shard`'s lane sends calls again, on a runtime of its own: a lane still counting
/// a task that died would queue the call forever. (The first answers may fail: the links
/// died with the earlier runtime too; the store reconnects.)
fn lane_answers(store: &Store, shard: colony::shard_map::ShardIndex) {
    one_thread_runtime().block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let ping = Command::read(redis::cmd("PING").clone());
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(3),
                store.send_coalesced(shard, vec![ping]),
            )
            .await
            .expect("the lane sent the call");
            if answer.replies[0].is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer: {answer:?}"
            );
        }
    });
}

#[test]
fn a_lane_whose_task_died_with_its_runtime_takes_calls_again() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let shard = store.shard_map().shard_for_player(&pid("anyone"));
    // The lane's call blocks on an empty list for 5 s; its runtime is dropped meanwhile,
    // and the task sending it with it.
    let first = one_thread_runtime();
    let waited = first.block_on(async {
        let blocked = Command::read(redis::cmd("BLPOP").arg("lane:empty").arg(5).clone());
        tokio::time::timeout(
            std::time::Duration::from_millis(200),
            store.send_coalesced(shard, vec![blocked]),
        )
        .await
    });
    assert!(waited.is_err(), "the blocked call answered: {waited:?}");
    drop(first);
    lane_answers(&store, shard);
    // A lane task dropped before it ever ran: the call is queued and its task spawned, and
    // the runtime goes before it schedules the task.
    let second = one_thread_runtime();
    {
        let _entered = second.enter();
        let ping = Command::read(redis::cmd("PING").clone());
        let mut call = Box::pin(store.send_coalesced(shard, vec![ping]));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(call.as_mut().poll(&mut cx).is_pending(), "answered at once");
    }
    drop(second);
    lane_answers(&store, shard);
}
