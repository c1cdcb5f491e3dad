//! Many tasks increment one player's value with optimistic retries (read the version, then
//! CheckVersion + SetField); the final value must be exact.

mod common;

use colony::{Error, Operation, Transaction, Value, Visibility};
use common::{name, pid};

const TASKS: u64 = 16;
const INCREMENTS: u64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_increments_are_exact() {
    let servers = common::servers(1);
    let store = common::store(&servers);
    let player = pid("shared");
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let player = player.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for i in 0..INCREMENTS {
                let mut attempt = 0u64;
                loop {
                    attempt += 1;
                    let read = Transaction::owner(player.clone(), None).with(Operation::Read {
                        names: vec![name("n")],
                    });
                    let seen = store.execute(read).await.expect("reads");
                    let current = match seen.reads[0].entries.first().map(|e| &e.value) {
                        Some(Value::Bytes(b)) => String::from_utf8(b.clone())
                            .expect("utf8")
                            .parse::<u64>()
                            .expect("number"),
                        _ => 0,
                    };
                    // A fresh request id per attempt (a conflicted attempt applied nothing),
                    // increasing per client as the protocol asks; each task is a client.
                    let request = (i << 20) | attempt;
                    let key = colony::IdempotencyKey::new(format!("task-{task}"), request).ok();
                    let write = Transaction::owner(player.clone(), key)
                        .with(Operation::CheckVersion {
                            expected: seen.version,
                        })
                        .with(Operation::SetField {
                            name: name("n"),
                            value: (current + 1).to_string().into_bytes(),
                            visibility: Visibility::Private,
                        });
                    match store.execute(write).await {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.expect("task");
    }
    let state = store
        .get_player(player, colony::Access::Owner)
        .await
        .expect("reads");
    let total = TASKS * INCREMENTS;
    assert_eq!(
        state.reads[0].entries[0].value,
        Value::Bytes(total.to_string().into_bytes())
    );
    assert_eq!(state.version, total);
    // With this much contention some attempts must have conflicted; otherwise the test
    // exercised nothing.
    assert!(conflicts > 0);
}
