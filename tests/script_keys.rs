//! Every key the store's scripts touch is declared in their `KEYS`, and a call's declared keys
//! lie in one slot — the rule a Redis Cluster needs (a script touching an undeclared key of a
//! slot that is moving fails half-way, its earlier writes kept), checked by watching real
//! Redis run them ([`ScriptWatch`]: `MONITOR` and `COMMAND GETKEYS`). The store runs every
//! kind of call its scripts serve: every operation, public and owner access, a new and an
//! existing player, a replayed key, reads, checks that fail, a trade committed and one
//! refused (prepare, decide, apply, roll back, forget), an intent left behind met by a writer
//! and resolved, the sweep. The archiver's scripts are watched the same way
//! (`archiver/tests/archive.rs`).

mod common;

use std::time::Duration;

use colony::store::multi::MultiAttempt;
use colony::{
    Access, IdempotencyKey, MultiTransaction, Operation, Participant, Transaction, Visibility,
};
use colony_testkit::{wait_for, RedisServer, ScriptWatch};
use common::{gold, key, name, pid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_a_script_touches_is_declared_and_in_the_calls_one_slot() {
    let server = RedisServer::start().expect("redis-server starts");
    let watch = ScriptWatch::start(&server).await.expect("MONITOR runs");
    let mut config = colony_testkit::config_for(&[&server]);
    config.redis.intent_lease_ms = 200;
    config.archive.checkpoint_interval_secs = 30;
    let store = colony::Store::new(&config).expect("store");
    let (alice, bob) = (pid("keys-alice"), pid("keys-bob"));
    // Every operation on a new player, then on an existing one, a replay, reads, and checks
    // that fail (nothing written).
    let everything = |request: u64, expected: u64| {
        Transaction::owner(alice.clone(), key(request))
            .with(Operation::CheckVersion { expected })
            .with(Operation::CheckField {
                name: name("nick"),
                expected: (expected > 0).then(|| b"Al".to_vec()),
            })
            .with(Operation::SetField {
                name: name("nick"),
                value: b"Al".to_vec(),
                visibility: Visibility::Public,
            })
            .with(Operation::SetField {
                name: name("mail"),
                value: b"a@b".to_vec(),
                visibility: Visibility::Private,
            })
            .with(Operation::DeleteField { name: name("old") })
            .with(gold(10))
            .with(Operation::DeleteCounter { name: name("xp") })
            .with(Operation::Read { names: vec![] })
    };
    store.execute(everything(1, 0)).await.expect("a new player");
    store
        .execute(everything(2, 1))
        .await
        .expect("an existing one");
    store.execute(everything(2, 1)).await.expect("a replay");
    let _ = store
        .execute(everything(3, 7))
        .await
        .expect_err("a failed check");
    let public = Transaction {
        player: alice.clone(),
        access: Access::Public,
        idempotency_key: None,
        operations: vec![Operation::Read { names: vec![] }],
    };
    store.execute(public).await.expect("a public read");
    store
        .execute(Transaction::owner(bob.clone(), key(4)).with(gold(100)))
        .await
        .expect("bob");
    // A trade committed, one refused (rolled back), and one left half-done for a writer to
    // meet and the sweep to resolve.
    let trade = |n: u64, amount: i64| {
        MultiTransaction::new(IdempotencyKey::new("keys-trade", n).expect("key"))
            .with(Participant::owner(alice.clone()).with(gold(-amount)))
            .with(Participant::owner(bob.clone()).with(gold(amount)))
    };
    store.execute_multi(trade(1, 5)).await.expect("committed");
    let _ = store
        .execute_multi(trade(2, 1_000))
        .await
        .expect_err("refused");
    let mut stopped = MultiAttempt::new(&store, trade(3, 1)).expect("valid");
    stopped.prepare().await;
    drop(stopped);
    let resolved = wait_for(Duration::from_secs(10), || async {
        store
            .execute(Transaction::owner(bob.clone(), key(5)).with(gold(1)))
            .await
            .ok()
    })
    .await;
    assert!(resolved.is_some(), "the intent left behind was resolved");
    let shard = store.shard_map().index(0).expect("a shard");
    store.sweep(shard).await.expect("sweeps");

    let report = watch.finish().await.expect("the watch ends");
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    // The transaction script (single writes, reads and prepares), apply, decide and forget.
    assert!(
        report.scripts.len() >= 4,
        "scripts seen: {:?}",
        report.scripts
    );
    assert!(report.checked > 100, "only {} keys checked", report.checked);
    eprintln!(
        "{} scripts, {} touched keys checked",
        report.scripts.len(),
        report.checked
    );
}
