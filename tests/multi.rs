//! Transactions across players on different shards, against three real `redis-server`s:
//! all or nothing, replays, refusals that store nothing, intents that block writes but not
//! reads, and — in seeded random interleavings of many concurrent attempts whose coordinator
//! stops after a random step while resolvers run at random points — conservation of the
//! currency moved, each transaction applied everywhere or nowhere, and no intent left after
//! its lease and one sweep.

use std::collections::BTreeMap;
use std::time::Duration;

use colony::store::intents::Decision;
use colony::store::multi::{MultiAttempt, PrepareOutcome};
use colony::{
    Access, Code, Config, Error, IdempotencyKey, MultiTransaction, Name, Operation, Participant,
    PlayerId, Store, Transaction, Value, Visibility,
};
use colony_testkit::{config_for, seed_from_env, wait_for, RedisServer, Seeded};

mod common;

use common::gold;

const START_GOLD: i64 = 1000;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

fn pid(s: &str) -> PlayerId {
    PlayerId::new(s).expect("valid id")
}

struct Cluster {
    servers: Vec<RedisServer>,
    store: Store,
}

fn cluster(lease_ms: u64, retry_deadline_ms: u64) -> Cluster {
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start().expect("redis starts"))
        .collect();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config: Config = config_for(&refs);
    config.redis.intent_lease_ms = lease_ms;
    config.redis.retry_deadline_ms = retry_deadline_ms;
    let store = Store::new(&config).expect("store");
    Cluster { servers, store }
}

/// `count` player ids on each shard, in shard order.
fn players_per_shard(store: &Store, prefix: &str, count: usize) -> Vec<Vec<PlayerId>> {
    let shards = store.shard_map().shards().len();
    let mut out = vec![Vec::new(); shards];
    for i in 0.. {
        let player = pid(&format!("{prefix}-{i}"));
        let shard = store.shard_map().shard_for_player(&player).get();
        if out[shard].len() < count {
            out[shard].push(player);
        }
        if out.iter().all(|v| v.len() == count) {
            return out;
        }
    }
    unreachable!()
}

async fn create(store: &Store, player: &PlayerId) {
    let txn = Transaction::owner(
        player.clone(),
        Some(IdempotencyKey::new("setup", 1).expect("valid")),
    )
    .with(gold(START_GOLD));
    store.execute(txn).await.expect("created");
}

/// A cluster (leases of `lease_ms`, retries until `retry_deadline_ms`) and two players created
/// with START_GOLD on different shards, the first on shard 0.
async fn two_players(
    lease_ms: u64,
    retry_deadline_ms: u64,
    prefix: &str,
) -> (Cluster, PlayerId, PlayerId) {
    let c = cluster(lease_ms, retry_deadline_ms);
    let players = players_per_shard(&c.store, prefix, 1);
    let (a, b) = (players[0][0].clone(), players[1][0].clone());
    create(&c.store, &a).await;
    create(&c.store, &b).await;
    (c, a, b)
}

/// Each participant's version in a multi-player transaction's result.
fn versions(result: &colony::MultiCommitted) -> Vec<u64> {
    result.participants.iter().map(|p| p.version).collect()
}

/// The player's gold, and which marker fields it has.
async fn state(store: &Store, player: &PlayerId) -> (i64, Vec<String>, u64) {
    let c = store
        .get_player(player.clone(), Access::Owner)
        .await
        .expect("owner read");
    let mut coins = 0;
    let mut markers = Vec::new();
    for e in &c.reads[0].entries {
        match (&e.value, e.name.as_str()) {
            (Value::Counter(n), "gold") => coins = *n,
            (_, marker) => markers.push(marker.to_string()),
        }
    }
    (coins, markers, c.version)
}

/// A transfer of `amount` gold from the first player to the others (split evenly), each
/// participant also marking the transaction with a field of its number.
fn transfer(
    key: (&str, u64),
    tag: &str,
    from: &PlayerId,
    to: &[PlayerId],
    amount: i64,
) -> MultiTransaction {
    let marker = || Operation::SetField {
        name: name(tag),
        value: b"1".to_vec(),
        visibility: Visibility::Public,
    };
    let each = amount / to.len() as i64;
    let mut txn = MultiTransaction::new(IdempotencyKey::new(key.0, key.1).expect("valid")).with(
        Participant::owner(from.clone())
            .with(gold(-each * to.len() as i64))
            .with(marker()),
    );
    for p in to {
        txn = txn.with(
            Participant::owner(p.clone())
                .with(gold(each))
                .with(marker()),
        );
    }
    txn
}

async fn digests(servers: &[RedisServer]) -> Vec<String> {
    let mut out = Vec::new();
    for server in servers {
        out.push(common::digest(server).await);
    }
    out
}

/// Whether every intent listed on every server has a lease that passed by that server's
/// clock.
async fn leases_passed(cluster: &Cluster) -> bool {
    for server in &cluster.servers {
        let mut conn = common::raw(server).await;
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("time");
        let now = secs * 1000 + micros / 1000;
        let lists: Vec<String> = redis::cmd("KEYS")
            .arg("colony:*:intents")
            .query_async(&mut conn)
            .await
            .expect("keys");
        for list in lists {
            let live: u64 = redis::cmd("ZCOUNT")
                .arg(&list)
                .arg(format!("({now}"))
                .arg("+inf")
                .query_async(&mut conn)
                .await
                .expect("zcount");
            if live > 0 {
                return false;
            }
        }
    }
    true
}

/// Whether any player of any server holds an intent, or any slot lists one.
async fn intents_left(cluster: &Cluster) -> Vec<String> {
    let mut left = Vec::new();
    for server in &cluster.servers {
        let mut conn = common::raw(server).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*:intent*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("type");
            let size: i64 = if kind == "zset" {
                redis::cmd("ZCARD")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("zcard")
            } else {
                1
            };
            if size > 0 {
                left.push(key);
            }
        }
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_between_shards_applies_everywhere_or_nowhere_and_replays() {
    let c = cluster(5000, 1000);
    let players = players_per_shard(&c.store, "trade", 1);
    let (a, b, d) = (&players[0][0], &players[1][0], &players[2][0]);
    for p in [a, b, d] {
        create(&c.store, p).await;
    }

    let txn = transfer(("shop", 1), "t1", a, &[b.clone(), d.clone()], 300);
    let done = c.store.execute_multi(txn.clone()).await.expect("commits");
    assert!(!done.replayed);
    assert_eq!(
        done.participants
            .iter()
            .map(|p| p.version)
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 300);
    assert_eq!(state(&c.store, b).await.0, START_GOLD + 150);
    assert_eq!(state(&c.store, d).await.0, START_GOLD + 150);
    assert!(intents_left(&c).await.is_empty());

    // The same key again: the first result, applied once.
    let again = c.store.execute_multi(txn.clone()).await.expect("replays");
    assert!(again.replayed);
    assert_eq!(
        again
            .participants
            .iter()
            .map(|p| p.version)
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 300);
    // The same key for something else is refused.
    let other = transfer(("shop", 1), "t1", a, std::slice::from_ref(b), 10);
    let refused = c.store.execute_multi(other).await;
    assert_eq!(
        refused.as_ref().map_err(Error::code).err(),
        Some(Code::IdempotencyMismatch),
        "{refused:?}"
    );

    // A check failing on one participant applies nothing anywhere.
    let mut stale = transfer(("shop", 2), "t2", a, std::slice::from_ref(b), 10);
    stale.participants[1]
        .operations
        .insert(0, Operation::CheckVersion { expected: 1 });
    let refused = c.store.execute_multi(stale).await;
    assert!(
        matches!(&refused, Err(Error::InParticipant { participant: 1, error }) if matches!(**error, Error::Conflict { version: 2, operation_index: 0 })),
        "{refused:?}"
    );
    // A bound crossed on the primary applies nothing either.
    let broke = transfer(("shop", 3), "t3", a, std::slice::from_ref(b), 5000);
    let refused = c.store.execute_multi(broke).await;
    assert!(
        matches!(&refused, Err(Error::InParticipant { participant: 0, error }) if matches!(**error, Error::OutOfBounds { .. })),
        "{refused:?}"
    );
    for (p, coins) in [(a, START_GOLD - 300), (b, START_GOLD + 150)] {
        let (now, markers, version) = state(&c.store, p).await;
        assert_eq!((now, version), (coins, 2), "{p:?}");
        assert_eq!(markers, vec!["t1".to_string()]);
    }
    assert!(
        intents_left(&c).await.is_empty(),
        "{:?}",
        intents_left(&c).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_intent_refuses_writes_but_reads_see_the_last_committed_state() {
    let (c, a, b) = two_players(60_000, 300, "live").await;
    let (a, b) = (&a, &b);
    let txn = transfer(("gift", 1), "g1", a, std::slice::from_ref(b), 100);
    let mut attempt = MultiAttempt::new(&c.store, txn).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);

    // Prepared, undecided: a write waits (LOCKED at the deadline), a read sees the old state.
    let write = Transaction::owner(b.clone(), Some(IdempotencyKey::new("w", 1).expect("valid")))
        .with(gold(1));
    let refused = c.store.execute(write.clone()).await;
    assert!(matches!(refused, Err(Error::Locked { .. })), "{refused:?}");
    assert_eq!(state(&c.store, b).await.0, START_GOLD);

    // Committed, not applied: a read applies it first, then sees it.
    assert_eq!(
        attempt.decide(true).await.expect("decides"),
        Decision::Commit
    );
    assert_eq!(state(&c.store, b).await.0, START_GOLD + 100);
    // The commit applied the primary with it: a write to the primary goes through.
    let write_a = Transaction::owner(a.clone(), Some(IdempotencyKey::new("w", 2).expect("valid")))
        .with(gold(1));
    c.store
        .execute(write_a)
        .await
        .expect("applies after resolving");
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 100 + 1);
    c.store.execute(write).await.expect("b takes writes again");
    // The coordinator, coming back, finds everything applied and answers the result.
    let done = attempt.finish().await.expect("finishes");
    assert_eq!(done.participants.len(), 2);
    assert!(intents_left(&c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_multi_player_transactions_are_refused_and_store_nothing() {
    let c = cluster(5000, 300);
    let players = players_per_shard(&c.store, "bad", 2);
    let (a, b) = (&players[0][0], &players[1][0]);
    create(&c.store, a).await;
    let before = digests(&c.servers).await;
    let key = || IdempotencyKey::new("bad", 1).expect("valid");
    let one = |p: &PlayerId| Participant::owner(p.clone()).with(gold(1));
    let cases: Vec<(MultiTransaction, Code)> = vec![
        (MultiTransaction::new(key()).with(one(a)), Code::Invalid),
        (
            MultiTransaction::new(key())
                .with(one(a))
                .with(one(b))
                .with(one(a)),
            Code::Invalid,
        ),
        (
            MultiTransaction::new(key())
                .with(one(a))
                .with(Participant::owner(b.clone())),
            Code::Invalid,
        ),
        (
            (0..17).fold(MultiTransaction::new(key()), |t, i| {
                t.with(one(&pid(&format!("many-{i}"))))
            }),
            Code::TooLarge,
        ),
        (
            MultiTransaction::new(key())
                .with(one(a))
                .with(Participant::owner(b.clone()).with(Operation::SetField {
                    name: name("huge"),
                    value: vec![0; 70_000],
                    visibility: Visibility::Public,
                })),
            Code::TooLarge,
        ),
    ];
    for (txn, code) in cases {
        let refused = c.store.execute_multi(txn.clone()).await;
        assert_eq!(
            refused.as_ref().map_err(Error::code).err(),
            Some(code),
            "{txn:?}: {refused:?}"
        );
    }
    assert_eq!(digests(&c.servers).await, before);
}

/// How far a test's coordinator gets before it stops.
#[derive(Debug, Clone, Copy)]
enum StopAfter {
    Nothing,
    Prepare,
    Decide,
    Finish,
    Everything,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_stopped_after_any_step_are_finished_by_resolvers_in_seeded_interleavings() {
    let seed = seed_from_env();
    eprintln!("seed {seed} (COLONY_FAULT_SEED={seed} repeats this run)");
    let mut random = Seeded::new(seed);
    let lease = Duration::from_millis(200);
    let c = cluster(lease.as_millis() as u64, 200);
    let players: Vec<PlayerId> = players_per_shard(&c.store, "conserve", 6)
        .into_iter()
        .flatten()
        .collect();
    for p in &players {
        create(&c.store, p).await;
    }
    let total = START_GOLD * players.len() as i64;

    let mut trades: Vec<(String, Vec<PlayerId>, MultiTransaction)> = Vec::new();
    let mut number = 0u64;
    for round in 0..8 {
        // A handful of trades at once, each stopping after a random step, while resolvers run.
        let mut attempts = Vec::new();
        for _ in 0..5 {
            number += 1;
            let size = 2 + random.below(2) as usize;
            let mut chosen: Vec<PlayerId> = Vec::new();
            while chosen.len() < size {
                let p = players[random.below(players.len() as u64) as usize].clone();
                if !chosen.contains(&p) {
                    chosen.push(p);
                }
            }
            let tag = format!("t{number}");
            let amount = 10 * (1 + random.below(20) as i64) * (size as i64 - 1);
            let txn = transfer(("trader", number), &tag, &chosen[0], &chosen[1..], amount);
            trades.push((tag, chosen, txn.clone()));
            let stop = match random.below(5) {
                0 => StopAfter::Nothing,
                1 => StopAfter::Prepare,
                2 => StopAfter::Decide,
                3 => StopAfter::Finish,
                _ => StopAfter::Everything,
            };
            attempts.push((txn, stop));
        }
        let store = &c.store;
        let runs = attempts.into_iter().map(|(txn, stop)| async move {
            let mut attempt = MultiAttempt::new(store, txn).expect("valid");
            if matches!(stop, StopAfter::Nothing) {
                return;
            }
            let staged = attempt.prepare().await;
            if matches!(stop, StopAfter::Prepare) {
                return;
            }
            let commit = staged == PrepareOutcome::AllStaged;
            if attempt.decide(commit).await.is_err() || matches!(stop, StopAfter::Decide) {
                return;
            }
            let finished = attempt.finish().await;
            if matches!(stop, StopAfter::Finish) {
                return;
            }
            if finished.is_ok() {
                let _ = attempt.forget().await;
            }
        });
        let resolvers = async {
            for _ in 0..3 {
                let shard = c
                    .store
                    .shard_map()
                    .index(random.below(3) as usize)
                    .expect("a shard of the map");
                let _ = c.store.sweep_intents(shard).await;
                let reader = &players[random.below(players.len() as u64) as usize];
                let _ = c.store.get_player(reader.clone(), Access::Public).await;
            }
        };
        tokio::join!(futures_util::future::join_all(runs), resolvers);
        eprintln!("round {round} done");
    }

    // Every lease passes; then one sweep of each shard leaves no intent.
    let passed = wait_for(Duration::from_secs(10), || async {
        leases_passed(&c).await.then_some(())
    })
    .await;
    assert!(passed.is_some(), "seed {seed}: leases never passed");
    for shard in 0..3 {
        c.store
            .sweep_intents(
                c.store
                    .shard_map()
                    .index(shard)
                    .expect("a shard of the map"),
            )
            .await
            .expect("sweeps");
    }
    let left = intents_left(&c).await;
    assert!(left.is_empty(), "seed {seed}: intents left {left:?}");

    // Conservation, and each trade everywhere or nowhere.
    let mut coins = 0;
    let mut marked: BTreeMap<PlayerId, Vec<String>> = BTreeMap::new();
    for p in &players {
        let (g, markers, _) = state(&c.store, p).await;
        assert!(g >= 0, "seed {seed}: {p:?} has {g}");
        coins += g;
        marked.insert(p.clone(), markers);
    }
    assert_eq!(coins, total, "seed {seed}: gold not conserved");
    let mut applied = 0;
    for (tag, participants, _) in &trades {
        let with: Vec<bool> = participants
            .iter()
            .map(|p| marked[p].contains(tag))
            .collect();
        assert!(
            with.iter().all(|&m| m) || with.iter().all(|&m| !m),
            "seed {seed}: trade {tag} applied to some participants only: {participants:?} {with:?}"
        );
        if with[0] {
            applied += 1;
        }
    }
    eprintln!("seed {seed}: {applied} of {} trades applied", trades.len());

    // Replaying every trade's key applies nothing twice: a committed one replays, one that
    // never committed may run now — conservation still holds either way.
    for (_, _, txn) in &trades {
        let _ = c.store.execute_multi(txn.clone()).await;
    }
    let mut after = 0;
    for p in &players {
        after += state(&c.store, p).await.0;
    }
    assert_eq!(after, total, "seed {seed}: a replay broke conservation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_server_trades_through_the_gateway_owning_only_its_acting_player() {
    use colony::client::{Client, ClientConfig};
    use colony::{Envelope, Item, ItemResult};
    use colony_testkit::{gateway_config, TestGateway, GAME_TOKEN};

    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start().expect("redis starts"))
        .collect();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let gw = TestGateway::start(&gateway_config(&refs))
        .await
        .expect("gateway starts");
    let store = gw.gateway.store();
    let players = players_per_shard(store, "gw", 1);
    let (me, them) = (&players[0][0], &players[1][0]);
    create(store, me).await;
    create(store, them).await;
    let secret = Transaction::owner(
        them.clone(),
        Some(IdempotencyKey::new("setup", 2).expect("valid")),
    )
    .with(Operation::SetField {
        name: name("secret"),
        value: b"hidden".to_vec(),
        visibility: Visibility::Private,
    });
    store.execute(secret).await.expect("secret stored");
    let game = Client::connect(ClientConfig::new(gw.address.to_string(), GAME_TOKEN))
        .await
        .expect("connects");

    // My gold to them; their part under public access: written, but its reads and checks
    // see public entries only (their private `secret` looks absent, and no read shows it).
    let trade = |request: u64, them_access: Access| {
        MultiTransaction::new(IdempotencyKey::new("game", request).expect("valid"))
            .with(Participant::owner(me.clone()).with(gold(-40)))
            .with(Participant {
                access: them_access,
                ..Participant::owner(them.clone())
                    .with(Operation::CheckField {
                        name: name("secret"),
                        expected: None,
                    })
                    .with(gold(40))
                    .with(Operation::Read { names: vec![] })
            })
    };
    let done = game
        .execute_multi(Envelope::acting_for(me.clone(), trade(1, Access::Public)))
        .await
        .expect("trades");
    let their_view = &done.participants[1].reads[0].entries;
    assert!(
        their_view
            .iter()
            .all(|e| e.visibility == Visibility::Public),
        "a private entry reached a game server acting for another player: {their_view:?}"
    );
    assert_eq!(state(store, me).await.0, START_GOLD - 40);
    assert_eq!(state(store, them).await.0, START_GOLD + 40);
    let again = game
        .execute_multi(Envelope::acting_for(me.clone(), trade(1, Access::Public)))
        .await
        .expect("replays");
    assert!(again.replayed);
    assert_eq!(state(store, them).await.0, START_GOLD + 40);

    // Owner access to the other player, or acting for nobody in it, is refused.
    let refused = game
        .execute_multi(Envelope::acting_for(me.clone(), trade(2, Access::Owner)))
        .await;
    assert!(
        matches!(&refused, Err(Error::InParticipant { participant: 1, error }) if matches!(**error, Error::Forbidden(_))),
        "{refused:?}"
    );
    let stranger = pid("stranger");
    let refused = game
        .execute_multi(Envelope::acting_for(stranger, trade(3, Access::Public)))
        .await;
    assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");

    // A batch mixes both kinds; each item answers for itself.
    let single = Envelope::acting_for(
        me.clone(),
        Transaction::owner(
            me.clone(),
            Some(IdempotencyKey::new("game", 4).expect("valid")),
        )
        .with(gold(1)),
    );
    let results = game
        .execute_items(vec![
            Item::from(single),
            Item::from(Envelope::acting_for(me.clone(), trade(5, Access::Public))),
            Item::from(Envelope::acting_for(me.clone(), trade(6, Access::Owner))),
        ])
        .await
        .expect("batch answered");
    assert!(
        matches!(&results[0], ItemResult::Single(Ok(c)) if c.version >= 3),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], ItemResult::Multi(Ok(_))),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], ItemResult::Multi(Err(e)) if e.code() == Code::Forbidden),
        "{results:?}"
    );
    assert_eq!(state(store, me).await.0, START_GOLD - 80 + 1);
    assert_eq!(state(store, them).await.0, START_GOLD + 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_applied_by_resolvers_alone_is_replayed_not_applied_again() {
    let (c, a, b) = two_players(100, 2000, "orphan").await;
    let (a, b) = (&a, &b);
    let txn = transfer(("orphan", 1), "o1", a, std::slice::from_ref(b), 100);
    // The coordinator commits and dies: nothing of it is applied by the coordinator.
    let mut attempt = MultiAttempt::new(&c.store, txn.clone()).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    assert_eq!(
        attempt.decide(true).await.expect("decides"),
        Decision::Commit
    );
    drop(attempt);
    // Readers apply it, each on the player it meets (the primary included).
    assert_eq!(state(&c.store, b).await.0, START_GOLD + 100);
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 100);
    // The client, never having had an answer, sends the same key again: the primary's
    // window remembers it, so it is a replay, not a second transfer.
    let again = c.store.execute_multi(txn).await.expect("replays");
    assert!(again.replayed, "{again:?}");
    assert_eq!(
        again
            .participants
            .iter()
            .map(|p| p.version)
            .collect::<Vec<_>>(),
        vec![2, 2]
    );
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 100);
    assert_eq!(state(&c.store, b).await.0, START_GOLD + 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_trades_over_few_players_all_finish() {
    // Contention: 24 concurrent trades over 4 players, each locking two of them. An attempt
    // that meets another's intent aborts its own at once and retries after a jittered pause,
    // so they all get through within the deadline (no livelock).
    let c = cluster(5000, 30_000);
    let players: Vec<PlayerId> = players_per_shard(&c.store, "busy", 2)
        .into_iter()
        .flatten()
        .take(4)
        .collect();
    for p in &players {
        create(&c.store, p).await;
    }
    let before = c.store.retries();
    let started = std::time::Instant::now();
    let trades = (0..24u64).map(|n| {
        let from = &players[(n % 4) as usize];
        let to = &players[((n + 1 + n / 4) % 4) as usize];
        let to = if to == from {
            &players[((n + 2) % 4) as usize]
        } else {
            to
        };
        let txn = transfer(
            ("busy", n + 1),
            &format!("b{n}"),
            from,
            std::slice::from_ref(to),
            10,
        );
        let store = &c.store;
        async move { store.execute_multi(txn).await }
    });
    let results = futures_util::future::join_all(trades).await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 24 did not finish: {failed:?}",
        failed.len()
    );
    let mut total = 0;
    for p in &players {
        total += state(&c.store, p).await.0;
    }
    assert_eq!(total, 4 * START_GOLD);
    let retries = c.store.retries() - before;
    eprintln!(
        "24 contended trades over 4 players: {retries} retries, {:?}",
        started.elapsed()
    );
    // Contention leaves no decision records behind: every commit record is forgotten once
    // its applies were acknowledged, and every abort record its coordinator acted on once its
    // roll backs were (a day's worth of abort records per conflict, before). The forgets run
    // detached: wait for them, with a deadline.
    assert!(retries > 0, "the trades did not contend");
    let records = std::cell::Cell::new(0usize);
    let forgotten = wait_for(Duration::from_secs(10), || async {
        let mut left = 0usize;
        for server in &c.servers {
            let mut conn = common::raw(server).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*:decision:*")
                .query_async(&mut conn)
                .await
                .expect("keys");
            left += keys.len();
        }
        records.set(left);
        (left == 0).then_some(())
    })
    .await;
    assert!(
        forgotten.is_some(),
        "{} decision records left after {retries} contended retries",
        records.get()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_whose_primary_shard_is_down_waits_for_it_without_stopping_the_sweep() {
    use colony::store::sweep::Swept;
    let mut c = cluster(100, 200);
    let players = players_per_shard(&c.store, "stuck", 1);
    let (a, b) = (&players[0][0], &players[1][0]);
    create(&c.store, a).await;
    create(&c.store, b).await;
    let txn = transfer(("stuck", 1), "s1", a, std::slice::from_ref(b), 10);
    let mut attempt = MultiAttempt::new(&c.store, txn).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    drop(attempt);
    // The primary's shard goes down: b's intent cannot be decided, so it waits.
    c.servers[0].kill().expect("kill shard 0");
    // The lease is 100 ms; at the deadline, the last sweep is what the assertion shows.
    let last_swept = std::cell::Cell::new(None);
    let swept = wait_for(Duration::from_secs(10), || async {
        let swept = c
            .store
            .sweep_intents(c.store.shard_map().index(1).expect("a shard of the map"))
            .await
            .expect("shard 1 answers");
        last_swept.set(Some(swept));
        (swept.unresolved > 0).then_some(swept)
    })
    .await
    .unwrap_or_else(|| last_swept.get().expect("swept at least once"));
    assert_eq!(
        swept,
        Swept {
            finished: 0,
            unresolved: 1
        }
    );
    // Back (empty: the plain profile keeps nothing): no decision exists, so the sweep aborts
    // the attempt and b is free again.
    c.servers[0].start_again(&[]).expect("shard 0 back");
    // Shard 0's breaker cools down first.
    let last_swept = std::cell::RefCell::new(None);
    let resolved = wait_for(Duration::from_secs(10), || async {
        let swept = c
            .store
            .sweep_intents(c.store.shard_map().index(1).expect("a shard of the map"))
            .await;
        let done = matches!(
            swept,
            Ok(Swept {
                finished: 1,
                unresolved: 0
            })
        );
        *last_swept.borrow_mut() = Some(swept);
        done.then_some(())
    })
    .await;
    assert!(
        resolved.is_some(),
        "the intent was never resolved: {:?}",
        last_swept.borrow()
    );
    assert_eq!(state(&c.store, b).await.0, START_GOLD);
    assert!(intents_left(&c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_under_a_stream_of_trades_still_takes_its_own_writes() {
    // Eight traders keep trading with one hot player, so an intent holds it nearly all the
    // time; its own writes must still get through within the store's deadline: a write that
    // meets an intent marks the player, and no new trade locks it until that write went
    // through.
    // Half a second of retries: without the mark, writes met the next trade's intent at
    // every retry and some were still LOCKED at the deadline (slowest 1.27 s in a run with
    // 1.5 s); with it the slowest took 13 ms.
    let c = cluster(5000, 500);
    let players: Vec<PlayerId> = players_per_shard(&c.store, "hot", 3)
        .into_iter()
        .flatten()
        .collect();
    for p in &players {
        create(&c.store, p).await;
    }
    let hot = players[0].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traders: Vec<_> = (0..8u64)
        .map(|t| {
            let (store, stop, traded) = (c.store.clone(), stop.clone(), traded.clone());
            let (hot, other) = (
                hot.clone(),
                players[1 + t as usize % (players.len() - 1)].clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let (from, to) = if n % 2 == 0 {
                        (&hot, &other)
                    } else {
                        (&other, &hot)
                    };
                    let txn = transfer(
                        (&format!("stream{t}"), n),
                        "s",
                        from,
                        std::slice::from_ref(to),
                        1,
                    );
                    if store.execute_multi(txn).await.is_ok() {
                        traded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let the stream start before writing.
    assert!(
        colony_testkit::wait_until(Duration::from_secs(10), || traded
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 20)
        .await,
        "the trades did not start"
    );
    let mut slowest = Duration::ZERO;
    let mut failed = Vec::new();
    for n in 1..=30u64 {
        let write = Transaction::owner(
            hot.clone(),
            Some(IdempotencyKey::new("own", n).expect("valid")),
        )
        .with(gold(1));
        let started = std::time::Instant::now();
        if let Err(e) = c.store.execute(write).await {
            failed.push(e);
        }
        slowest = slowest.max(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in traders {
        t.await.expect("trader");
    }
    eprintln!(
        "30 own writes under {} trades: slowest {slowest:?}, {} failed",
        traded.load(std::sync::atomic::Ordering::Relaxed),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "own writes failed under the trade stream: {failed:?}"
    );
    let mut total = 0;
    for p in &players {
        total += state(&c.store, p).await.0;
    }
    assert_eq!(total, players.len() as i64 * START_GOLD + 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_over_its_size_bound_refuses_the_whole_trade_and_nothing_applies() {
    // Hostile: the second participant's write would grow it past limits.max_player_bytes.
    // Both prepares run (the first stages an intent); the refusal aborts the attempt, and
    // nothing applies anywhere, nor is any intent or decision record left.
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start().expect("redis starts"))
        .collect();
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut config: Config = config_for(&refs);
    config.limits.max_player_bytes = 4000;
    let c = Cluster {
        store: Store::new(&config).expect("store"),
        servers,
    };
    let players = players_per_shard(&c.store, "big", 1);
    let (a, b) = (&players[0][0], &players[1][0]);
    create(&c.store, a).await;
    create(&c.store, b).await;
    let field = |bytes: usize| Operation::SetField {
        name: name("blob"),
        value: vec![7; bytes],
        visibility: Visibility::Public,
    };
    c.store
        .execute(
            Transaction::owner(
                b.clone(),
                Some(IdempotencyKey::new("fill", 1).expect("valid")),
            )
            .with(field(3000)),
        )
        .await
        .expect("b is near its bound");
    let (before_a, before_b) = (state(&c.store, a).await, state(&c.store, b).await);
    let trade = MultiTransaction::new(IdempotencyKey::new("big", 1).expect("valid"))
        .with(Participant::owner(a.clone()).with(gold(-5)))
        .with(
            Participant::owner(b.clone())
                .with(gold(5))
                .with(Operation::SetField {
                    name: name("more"),
                    value: vec![7; 2000],
                    visibility: Visibility::Public,
                }),
        );
    let refused = c.store.execute_multi(trade).await;
    assert!(
        matches!(
            &refused,
            Err(Error::InParticipant { participant: 1, error }) if matches!(**error, Error::PlayerTooLarge { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(state(&c.store, a).await, before_a);
    assert_eq!(state(&c.store, b).await, before_b);
    assert!(intents_left(&c).await.is_empty());
    // The abort record is forgotten once both roll backs were acknowledged (detached).
    let records = std::cell::Cell::new(0usize);
    let forgotten = wait_for(Duration::from_secs(10), || async {
        let mut left = 0usize;
        for server in &c.servers {
            let mut conn = common::raw(server).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*:decision:*")
                .query_async(&mut conn)
                .await
                .expect("keys");
            left += keys.len();
        }
        records.set(left);
        (left == 0).then_some(())
    })
    .await;
    assert!(
        forgotten.is_some(),
        "{} decision records left",
        records.get()
    );
}

/// A commit that reaches the primary past its deadline, by the primary's clock, commits
/// nothing (a resolver may have aborted the attempt meanwhile, and its abort record is not
/// kept forever): it applies nothing, writes no decision, and the other participant is
/// rolled back. The key is new still, and applies once when sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_past_its_deadline_is_refused_and_applies_nothing() {
    let (c, a, b) = two_players(60_000, 1000, "late").await;
    let (a, b) = (&a, &b);
    let txn = transfer(("late", 1), "l1", a, std::slice::from_ref(b), 100);
    let mut attempt = MultiAttempt::new(&c.store, txn.clone()).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    let primary_shard = c.store.shard_map().shard_for_player(a).get();
    let mut conn = common::raw(&c.servers[primary_shard]).await;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("time");
    // A deadline the primary's clock has passed by a millisecond.
    attempt.set_commit_deadline_ms(seconds * 1000 + micros / 1000 - 1);
    assert_eq!(
        attempt.decide(true).await.expect("answers"),
        Decision::Abort
    );
    let finished = attempt.finish().await;
    assert!(
        matches!(&finished, Err(Error::Unavailable { .. })),
        "{finished:?}"
    );
    let record: Option<String> = redis::cmd("HGET")
        .arg(colony::keys::decision_key(a, attempt.id()))
        .arg("d")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(record, None, "a refused commit writes no decision");
    assert_eq!(state(&c.store, a).await, (START_GOLD, vec![], 1));
    assert_eq!(state(&c.store, b).await, (START_GOLD, vec![], 1));
    assert!(intents_left(&c).await.is_empty());
    // The key is new still: sent again, it applies once.
    let done = c.store.execute_multi(txn).await.expect("applies");
    assert!(!done.replayed);
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 100);
    assert_eq!(state(&c.store, b).await.0, START_GOLD + 100);
}

/// The primary is not called in step 1 while every other participant prepares; when one
/// refuses, the primary judges the key first: the retry of a trade applied before replays
/// even though the other participant's operations would fail now, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_wins_over_a_refusal_of_another_participant() {
    let (c, a, b) = two_players(60_000, 300, "judged").await;
    let (a, b) = (&a, &b);
    // `b` gives `a` 100 (the primary takes).
    let txn = MultiTransaction::new(IdempotencyKey::new("judged", 1).expect("valid"))
        .with(Participant::owner(a.clone()).with(gold(100)))
        .with(Participant::owner(b.clone()).with(gold(-100)));
    let done = c.store.execute_multi(txn.clone()).await.expect("applies");
    assert!(!done.replayed);
    c.store.wait_detached().await;
    // `b` spends the rest: the trade's own operation on `b` would fail now.
    let spend = Transaction::owner(
        b.clone(),
        Some(IdempotencyKey::new("spend", 1).expect("valid")),
    )
    .with(gold(-(START_GOLD - 100)));
    c.store.execute(spend).await.expect("spent");
    assert_eq!(state(&c.store, b).await.0, 0);
    let mut attempt = MultiAttempt::new(&c.store, txn.clone()).expect("valid");
    match attempt.prepare().await {
        PrepareOutcome::Replayed(result) => {
            assert!(result.replayed);
            assert_eq!(versions(&result), versions(&done));
        }
        other => panic!("expected the replay, got {other:?}"),
    }
    // The same through the retry loop; and a new key is refused by `b`'s bound.
    let again = c.store.execute_multi(txn).await.expect("replays");
    assert!(again.replayed, "{again:?}");
    let fresh = MultiTransaction::new(IdempotencyKey::new("judged", 2).expect("valid"))
        .with(Participant::owner(a.clone()).with(gold(100)))
        .with(Participant::owner(b.clone()).with(gold(-100)));
    let refused = c.store.execute_multi(fresh).await;
    assert!(
        matches!(&refused, Err(e) if e.code() == Code::OutOfBounds),
        "{refused:?}"
    );
    assert_eq!(state(&c.store, a).await.0, START_GOLD + 100);
    assert_eq!(state(&c.store, b).await.0, 0);
    assert!(intents_left(&c).await.is_empty());
}

/// An archived primary has no window to judge the key by (its windows went with it): when
/// another participant refuses, the answer is the primary's ARCHIVED (retried once it is
/// restored, when the key can be judged), never the other's refusal, which would say "not
/// applied" of a key that may have been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_primary_keeps_another_participants_refusal_from_being_final() {
    let (c, a, b) = two_players(60_000, 300, "shelved").await;
    let (a, b) = (&a, &b);
    // `a` as the archiver leaves a player whose entries went to MongoDB (meta a = version).
    let shard_a = c.store.shard_map().shard_for_player(a).get();
    let _: i64 = redis::cmd("HSET")
        .arg(colony::keys::PlayerKeys::new(a).meta)
        .arg("a")
        .arg(1)
        .query_async(&mut common::raw(&c.servers[shard_a]).await)
        .await
        .expect("hset");
    // `b` gives more than it has: its own prepare refuses.
    let txn = MultiTransaction::new(IdempotencyKey::new("shelved", 1).expect("valid"))
        .with(Participant::owner(a.clone()).with(gold(START_GOLD * 2)))
        .with(Participant::owner(b.clone()).with(gold(-START_GOLD * 2)));
    let mut attempt = MultiAttempt::new(&c.store, txn).expect("valid");
    match attempt.prepare().await {
        PrepareOutcome::Refused(Error::InParticipant {
            participant: 0,
            error,
        }) => {
            assert!(matches!(*error, Error::Archived { .. }), "{error:?}");
            assert!(error.is_retryable());
        }
        other => panic!("expected the primary's ARCHIVED, got {other:?}"),
    }
    assert_eq!(state(&c.store, b).await.0, START_GOLD);
    assert!(intents_left(&c).await.is_empty());
}

/// A key applied before is answered by its replay at once, judged by the primary once the
/// other participant answered LOCKED, even while another participant is locked by an unrelated trade that lives for a minute:
/// the retry of an answered trade does not wait for other trades' locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_answered_while_another_participant_is_locked() {
    let c = cluster(60_000, 300);
    let players = players_per_shard(&c.store, "again", 2);
    let (a, b, other) = (&players[0][0], &players[1][0], &players[0][1]);
    for p in [a, b, other] {
        create(&c.store, p).await;
    }
    let first = transfer(("again", 1), "g1", a, std::slice::from_ref(b), 100);
    let done = c.store.execute_multi(first.clone()).await.expect("applies");
    c.store.wait_detached().await;
    // Another trade holds `b` (prepared, never decided; its lease is a minute).
    let holder = transfer(("holder", 1), "h1", other, std::slice::from_ref(b), 5);
    let mut locking = MultiAttempt::new(&c.store, holder).expect("valid");
    assert_eq!(locking.prepare().await, PrepareOutcome::AllStaged);
    let again = c.store.execute_multi(first).await.expect("replays");
    assert!(again.replayed, "{again:?}");
    assert_eq!(versions(&again), versions(&done));
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 100);
    // A new trade on the locked player is refused LOCKED within the deadline, nothing applied.
    let blocked = transfer(("again", 2), "g2", a, std::slice::from_ref(b), 1);
    let refused = c.store.execute_multi(blocked).await;
    assert!(
        matches!(&refused, Err(e) if e.code() == Code::Locked),
        "{refused:?}"
    );
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 100);
}

/// A rolling upgrade: a coordinator of an earlier version prepared the primary as an intent
/// (holding the key and fingerprint) and wrote the commit record with every participant's
/// reply (`r`), then stopped. This version's resolver, met by reads, applies the primary from
/// the record — remembering the key in its window — and the other participant; the key then
/// replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_prepared_by_an_earlier_version_is_applied_from_its_record_and_replays() {
    use colony::keys::{decision_key, PlayerKeys, SlotKeys};
    let (c, a, b) = two_players(60_000, 1000, "older").await;
    let (a, b) = (&a, &b);
    let txn = transfer(("older", 1), "o1", a, std::slice::from_ref(b), 100);
    // The other participant's intent is what every version stages alike.
    let mut attempt = MultiAttempt::new(&c.store, txn.clone()).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    let shard_of = |p: &PlayerId| c.store.shard_map().shard_for_player(p).get();
    let packed_b: Vec<u8> = redis::cmd("HGET")
        .arg(PlayerKeys::new(b).intent)
        .arg("r")
        .query_async(&mut common::raw(&c.servers[shard_of(b)]).await)
        .await
        .expect("b's staged reply");
    // The primary as the earlier version left it: its intent (gold 1000 -> 900, the marker)
    // and the commit record with both replies.
    let earlier = r#"
        local packed_a = cmsgpack.pack({ 'OK', 2, 0, 0 })
        local staged = cmsgpack.pack({ { 'f:o1', '1' }, {}, { 'c:gold', '900' }, {}, 10, 2 })
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000
        redis.call('HSET', KEYS[2], 'a', ARGV[1], 'p', ARGV[2], 'l', now + 60000, 'v', 1,
          'm', 1, 'w', staged, 'r', packed_a, 'c', ARGV[3], 'q', ARGV[4], 'f', ARGV[5])
        redis.call('HSET', KEYS[1], 'x', ARGV[1])
        redis.call('ZADD', KEYS[3], now + 60000, ARGV[2])
        redis.call('HSET', KEYS[4], 'd', 'C', 'p', ARGV[6], 'r', cmsgpack.pack({ packed_a, ARGV[7] }))
        redis.call('ZADD', KEYS[5], now, KEYS[4])
        return 1
    "#;
    let keys_a = PlayerKeys::new(a);
    let slot_a = SlotKeys::of_player(a);
    let _: i64 = redis::cmd("EVAL")
        .arg(earlier)
        .arg(5)
        .arg(&keys_a.meta)
        .arg(&keys_a.intent)
        .arg(&slot_a.intents)
        .arg(decision_key(a, attempt.id()))
        .arg(&slot_a.decisions)
        .arg(attempt.id())
        .arg(a.as_str())
        .arg(txn.idempotency_key.client_id())
        .arg(txn.idempotency_key.request_id())
        .arg(colony::script::multi_fingerprint(&txn))
        .arg(colony::script::listed(&[a.clone(), b.clone()]))
        .arg(packed_b)
        .query_async(&mut common::raw(&c.servers[shard_of(a)]).await)
        .await
        .expect("the earlier version's state");
    drop(attempt);
    // Reads meet the intents and have the resolver apply them from the commit record.
    assert_eq!(
        state(&c.store, a).await,
        (START_GOLD - 100, vec!["o1".into()], 2)
    );
    assert_eq!(
        state(&c.store, b).await,
        (START_GOLD + 100, vec!["o1".into()], 2)
    );
    assert!(intents_left(&c).await.is_empty());
    // The primary's window remembers the key with both replies: the key replays.
    let again = c.store.execute_multi(txn).await.expect("replays");
    assert!(again.replayed, "{again:?}");
    assert_eq!(
        again
            .participants
            .iter()
            .map(|p| p.version)
            .collect::<Vec<_>>(),
        vec![2, 2]
    );
    assert_eq!(state(&c.store, a).await.0, START_GOLD - 100);
}

/// Until its commit a primary holds nothing, so another trade may stage an intent on it
/// while the others prepare (the primary is that trade's other participant). The commit that
/// meets such an intent already decided finishes it and is sent again, rather than aborting:
/// a player busy in other players' trades still gets its own committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_meeting_a_decided_intent_on_its_primary_finishes_it_and_commits() {
    let c = cluster(60_000, 1000);
    let players = players_per_shard(&c.store, "busy-primary", 1);
    let (a, b, d) = (&players[0][0], &players[1][0], &players[2][0]);
    for p in [a, b, d] {
        create(&c.store, p).await;
    }
    // `a` gives to `b`: `b` prepared.
    let mine = transfer(("mine", 1), "m1", a, std::slice::from_ref(b), 100);
    let mut attempt = MultiAttempt::new(&c.store, mine).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    // Meanwhile `d` gives to `a`: committed on `d`, `a`'s intent not applied yet (its
    // coordinator stopped after the commit).
    let theirs = transfer(("theirs", 1), "t1", d, std::slice::from_ref(a), 10);
    let mut other = MultiAttempt::new(&c.store, theirs).expect("valid");
    assert_eq!(other.prepare().await, PrepareOutcome::AllStaged);
    assert_eq!(other.decide(true).await.expect("decides"), Decision::Commit);
    drop(other);
    // The commit on `a` meets that intent, applies it, and commits.
    assert_eq!(
        attempt.decide(true).await.expect("decides"),
        Decision::Commit
    );
    let done = attempt.finish().await.expect("applies");
    assert_eq!(done.participants.len(), 2);
    assert_eq!(state(&c.store, a).await.0, START_GOLD + 10 - 100);
    assert_eq!(state(&c.store, b).await.0, START_GOLD + 100);
    assert_eq!(state(&c.store, d).await.0, START_GOLD - 10);
    assert!(intents_left(&c).await.is_empty());
}

/// A participant met without the attempt's intent answers NO_INTENT from a state it did not
/// write (someone else's apply dropped the intent, and a later trade's apply has marked the
/// player since), perhaps on another connection and not replicated yet. The sweep and the
/// coordinator forget a commit record on that answer, so it must not be one a failover takes
/// back: the script writes a field again as it is, and the `WAIT` after the call covers the
/// state it answered from. Nothing stored changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_found_without_the_intent_answers_from_a_state_a_wait_covers() {
    let master = RedisServer::start().expect("master");
    let port = master.port().to_string();
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    let synced = wait_for(Duration::from_secs(15), || async {
        (master.replicas_online() >= 1).then_some(())
    })
    .await;
    assert!(synced.is_some(), "the replica did not sync");
    let store = Store::new(&config_for(&[&master])).expect("store");
    let (giver, taker) = (pid("seen-giver"), pid("seen-taker"));
    create(&store, &giver).await;
    create(&store, &taker).await;
    // Two trades: the taker's mark `y` names the second, and neither intent is held once the
    // detached applies landed.
    for n in 1..=2 {
        store
            .execute_multi(transfer(
                ("seen", n),
                "t",
                &giver,
                std::slice::from_ref(&taker),
                5,
            ))
            .await
            .expect("the trade commits");
    }
    let keys = colony::keys::PlayerKeys::new(&taker);
    let slot = colony::keys::SlotKeys::of_player(&taker);
    let mut raw = common::raw(&master).await;
    let applied = wait_for(Duration::from_secs(10), || {
        let mut raw = raw.clone();
        let meta = keys.meta.clone();
        async move {
            let held: Option<String> = redis::cmd("HGET")
                .arg(&meta)
                .arg("x")
                .query_async(&mut raw)
                .await
                .ok()?;
            held.is_none().then_some(())
        }
    })
    .await;
    assert!(applied.is_some(), "the taker still holds an intent");
    // Where the master's replication stream is, and what it stores.
    let probe = raw.clone();
    let now = || {
        let mut raw = probe.clone();
        let master = &master;
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut raw)
                .await
                .expect("INFO");
            let offset: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("master_repl_offset:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("master_repl_offset");
            (offset, common::digest(master).await)
        }
    };
    let before = now().await;

    // The apply script as the store runs it, for an attempt the taker no longer holds.
    let source = concat!(
        include_str!("../src/window.lua"),
        include_str!("../src/multi/finish.lua"),
        include_str!("../src/multi/apply.lua")
    );
    let answer: String = redis::cmd("EVAL")
        .arg(source)
        .arg(9)
        .arg(&keys.meta)
        .arg(&keys.public)
        .arg(&keys.private)
        .arg(&keys.intent)
        .arg(&slot.active)
        .arg(&slot.dirty)
        .arg(&keys.clients)
        .arg(&slot.intents)
        .arg(&keys.meta)
        .arg(taker.as_str())
        .arg("00000000000000aa")
        .arg("c")
        .arg("0")
        .arg(300_000)
        .arg(32)
        .arg(86_400_000)
        .query_async(&mut raw)
        .await
        .expect("the apply script runs");
    assert_eq!(answer, "NO_INTENT");
    let after = now().await;
    assert!(
        after.0 > before.0,
        "NO_INTENT sent nothing to the replicas, so a WAIT after it covers nothing it saw: {before:?} {after:?}"
    );
    assert_eq!(after.1, before.1, "NO_INTENT changed what is stored");
    // The replica acknowledges it (each WAIT short, inside the client's reply timeout).
    let acknowledged = wait_for(Duration::from_secs(10), || {
        let mut raw = raw.clone();
        async move {
            let n: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(200)
                .query_async(&mut raw)
                .await
                .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    assert!(acknowledged.is_some(), "the replica never acknowledged it");
}

/// The sweep forgets a commit record only on answers it had acknowledged: the decision read
/// again, and every participant's apply (or its `NO_INTENT`). An index entry whose record it
/// cannot read is dropped only where the record is absent — the record is never deleted on
/// the word of a server that may no longer be the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_forgets_a_commit_record_only_on_what_it_read_and_an_orphan_entry_alone() {
    use colony::keys::{decision_key, SlotKeys};
    let (c, a, b) = two_players(100, 1000, "swept").await;
    let (a, b) = (&a, &b);
    let shard_a = c.store.shard_map().shard_for_player(a);
    let mut raw_a = common::raw(&c.servers[shard_a.get()]).await;
    let decisions = SlotKeys::of_player(a).decisions;
    // A committed trade finished everywhere but not forgotten (its coordinator stopped).
    let txn = transfer(("swept", 1), "s1", a, std::slice::from_ref(b), 10);
    let mut attempt = MultiAttempt::new(&c.store, txn).expect("valid");
    assert_eq!(attempt.prepare().await, PrepareOutcome::AllStaged);
    assert_eq!(attempt.decide(true).await, Ok(Decision::Commit));
    attempt
        .finish()
        .await
        .expect("the other participant applied");
    let record = decision_key(a, attempt.id());
    // An index entry whose record is gone, and the forget's entry mode against a record that
    // exists: it leaves both.
    let orphan = decision_key(a, "00000000000000ab");
    let _: i64 = redis::cmd("ZADD")
        .arg(&decisions)
        .arg(0)
        .arg(&orphan)
        .query_async(&mut raw_a)
        .await
        .expect("ZADD");
    let kept: i64 = redis::cmd("EVAL")
        .arg(include_str!("../src/multi/forget.lua"))
        .arg(3)
        .arg(&record)
        .arg(&decisions)
        .arg(colony::keys::PlayerKeys::new(a).meta)
        .arg("entry")
        .query_async(&mut raw_a)
        .await
        .expect("forget runs");
    assert_eq!(kept, 0);
    let indexed = |raw: &redis::aio::MultiplexedConnection| {
        let (mut raw, decisions) = (raw.clone(), decisions.clone());
        async move {
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(&decisions)
                .arg(0)
                .arg(-1)
                .query_async(&mut raw)
                .await
                .expect("ZRANGE");
            members
        }
    };
    assert_eq!(indexed(&raw_a).await, vec![orphan.clone(), record.clone()]);
    // Once the record is older than a lease, one sweep forgets it and drops the orphan entry.
    let swept = wait_for(Duration::from_secs(10), || async {
        c.store.sweep(shard_a).await.expect("sweeps");
        indexed(&raw_a).await.is_empty().then_some(())
    })
    .await;
    assert!(swept.is_some(), "{:?}", indexed(&raw_a).await);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&record)
        .query_async(&mut raw_a)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0);
    assert_eq!(state(&c.store, b).await.0, START_GOLD + 10);
}
