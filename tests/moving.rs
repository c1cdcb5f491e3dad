//! A player parked by a slot move (`docs/design/resharding.md`: its keys taken away, a
//! tombstone `m` left on its meta) is refused by every path of the store with the typed,
//! retryable `MOVING` — single writes and reads, public reads, trades, the decision a reader
//! peeks at, the resolver's and the sweep's looks, `inspect` — and nothing is written while
//! it is parked. Put back, it is served as it was. The park here is made by hand
//! ([`colony_testkit::park_by_hand`]), on a plain Redis: the refusal is the scripts' own,
//! whatever the topology.

mod common;

use colony::{Error, MultiTransaction, Participant, Transaction};
use colony_testkit::{park_by_hand, RedisServer};
use common::{digest, gold, key, pid};

fn is_moving(e: &Error) -> bool {
    e.is_retryable() && e.to_string().contains("MOVING")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_player_is_refused_everywhere_with_moving_and_nothing_is_written() {
    let server = RedisServer::start().expect("redis-server starts");
    let mut config = colony_testkit::config_for(&[&server]);
    // Short: every refusal below is retried until this deadline, then answered.
    config.redis.retry_deadline_ms = 400;
    config.redis.intent_lease_ms = 300;
    let store = colony::Store::new(&config).expect("store");
    let (alice, bob) = (pid("moving-alice"), pid("moving-bob"));
    for (who, n) in [(&alice, 1), (&bob, 2)] {
        store
            .execute(Transaction::owner(who.clone(), key(n)).with(gold(100)))
            .await
            .expect("funded");
    }
    // A trade committed before the park: its record and windows travel with the players.
    let trade = |n: u64, amount: i64, from: &colony::PlayerId, to: &colony::PlayerId| {
        MultiTransaction::new(colony::IdempotencyKey::new("moving", n).expect("key"))
            .with(Participant::owner(from.clone()).with(gold(-amount)))
            .with(Participant::owner(to.clone()).with(gold(amount)))
    };
    store
        .execute_multi(trade(1, 10, &alice, &bob))
        .await
        .expect("a trade before the park");
    // Bob is applied after the answer: wait for that before taking the digest below.
    store.wait_detached().await;

    let parked = park_by_hand(&server.url(), alice.as_str()).expect("parked");
    assert!(parked.len() >= 3, "alice's keys: {}", parked.len());
    let before = digest(&server).await;

    // Single transactions: an owner's write, an owner's read, a public read, and the replay
    // of a key alice applied before (which must not be judged "new" while parked).
    let attempts = [
        Transaction::owner(alice.clone(), key(3)).with(gold(1)),
        Transaction::owner(alice.clone(), key(4)).with(colony::Operation::Read { names: vec![] }),
        Transaction {
            player: alice.clone(),
            access: colony::Access::Public,
            idempotency_key: None,
            operations: vec![colony::Operation::Read { names: vec![] }],
        },
        Transaction::owner(alice.clone(), key(1)).with(gold(100)),
    ];
    for txn in attempts {
        let e = store.execute(txn).await.expect_err("refused while parked");
        assert!(is_moving(&e), "{e}");
    }
    let e = store.inspect_player(&alice).await.expect_err("inspect");
    assert!(is_moving(&e), "{e}");
    let e = store
        .multi_decision(&alice, "no-such-attempt")
        .await
        .expect_err("a decision read");
    assert!(is_moving(&e), "{e}");
    let shard = store.shard_map().index(0).expect("a shard");
    store
        .sweep(shard)
        .await
        .expect("the sweep passes a parked player by");
    assert_eq!(
        digest(&server).await,
        before,
        "nothing written while parked"
    );

    // A trade with the parked player as a participant (bob primary) and as the primary: never
    // applied, on either side.
    for (n, from, to) in [(5, &bob, &alice), (6, &alice, &bob)] {
        let e = store
            .execute_multi(trade(n, 1, from, to))
            .await
            .expect_err("a trade with a parked player");
        assert!(e.is_retryable(), "{e}");
    }

    parked.put_back(&server.url()).expect("put back");
    // Served as it was: the replayed key answers its first reply, and bob's intent (left by
    // the trade whose primary was parked) is resolved by the next write that meets it.
    let replay = store
        .execute(Transaction::owner(alice.clone(), key(1)).with(gold(100)))
        .await
        .expect("the replay after the park");
    assert!(replay.replayed);
    let mut versions = Vec::new();
    for (who, n) in [(&alice, 7), (&bob, 8)] {
        let committed = colony_testkit::wait_for(std::time::Duration::from_secs(10), || {
            let txn = Transaction::owner(who.clone(), key(n)).with(gold(0));
            let store = store.clone();
            async move { store.execute(txn).await.ok() }
        })
        .await
        .expect("served after the park");
        versions.push(committed.version);
    }
    // alice: funded (1), traded (2), this write (3); bob: funded, traded, this write. No
    // write while parked and no half of a refused trade applied.
    assert_eq!(versions, [3, 3]);
}
