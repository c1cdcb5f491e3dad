//! Model-based test: random sequences of transactions run against real Redis and against a
//! small in-memory model of Colony's semantics; every result must agree. Two clients send
//! request ids in any order, retried or not, through a window of four requests, so replays,
//! mismatches, out-of-order arrivals and REQUEST_TOO_OLD all occur.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};

use colony::model::COUNTER_LIMIT;
use colony::{
    Access, Committed, Entry, Error, IdempotencyKey, Name, Operation, PlayerId, ReadResult,
    Transaction, Value, Visibility,
};
use proptest::prelude::*;

/// What the model keeps per player.
#[derive(Default, Clone)]
struct ModelPlayer {
    version: u64,
    /// (name, is_counter) -> (visibility, value)
    entries: BTreeMap<(String, bool), (Visibility, Value)>,
    /// client id -> its idempotency window
    windows: HashMap<String, ModelWindow>,
}

/// Requests remembered per client and player, in the model and in the store under test.
const WINDOW: usize = 4;

/// One client's window on one player: what the protocol promises, written plainly.
#[derive(Default, Clone)]
struct ModelWindow {
    /// Every request at or below it may have been forgotten.
    floor: Option<u64>,
    /// Remembered request ids, oldest arrival first.
    queue: VecDeque<u64>,
    /// request id -> (the transaction, its first result)
    remembered: HashMap<u64, (Transaction, Committed)>,
}

#[derive(Default)]
struct Model {
    players: HashMap<PlayerId, ModelPlayer>,
}

impl Model {
    fn apply(&mut self, txn: &Transaction) -> Result<Committed, Error> {
        let player = self.players.entry(txn.player.clone()).or_default();
        let request = txn.idempotency_key.as_ref().map(|k| k.request_id());
        if let Some(key) = &txn.idempotency_key {
            let window = player
                .windows
                .entry(key.client_id().to_string())
                .or_default();
            let r = key.request_id();
            if let Some((first, result)) = window.remembered.get(&r) {
                if first.access != txn.access || first.operations != txn.operations {
                    return Err(Error::IdempotencyMismatch {
                        version: player.version,
                    });
                }
                return Ok(Committed {
                    replayed: true,
                    ..result.clone()
                });
            }
            if window.floor.is_some_and(|floor| r <= floor) {
                return Err(Error::RequestTooOld {
                    version: player.version,
                });
            }
        }
        let owner = txn.access == Access::Owner;
        let visible = |v: Visibility| owner || v == Visibility::Public;
        let mut staged = player.entries.clone();
        let mut reads = Vec::new();
        let mut mutated = false;
        for (index, op) in txn.operations.iter().enumerate() {
            let index = index as u32;
            let fail_conflict = Error::Conflict {
                version: player.version,
                operation_index: index,
            };
            match op {
                Operation::Read { names } => {
                    let mut entries = Vec::new();
                    let mut push = |n: &str, counter: bool, staged: &BTreeMap<_, _>| {
                        if let Some((vis, value)) = staged.get(&(n.to_string(), counter)) {
                            if visible(*vis) {
                                entries.push(Entry {
                                    name: Name::new(n).expect("valid"),
                                    visibility: *vis,
                                    value: Value::clone(value),
                                });
                            }
                        }
                    };
                    if names.is_empty() {
                        // BTreeMap order is (name, field before counter), as the store sorts.
                        let keys: Vec<_> = staged.keys().cloned().collect();
                        for (n, counter) in keys {
                            push(&n, counter, &staged);
                        }
                    } else {
                        for n in names {
                            push(n.as_str(), false, &staged);
                            push(n.as_str(), true, &staged);
                        }
                    }
                    reads.push(ReadResult {
                        operation_index: index,
                        entries,
                    });
                }
                Operation::SetField {
                    name,
                    value,
                    visibility,
                } => {
                    staged.insert(
                        (name.as_str().to_string(), false),
                        (*visibility, Value::Bytes(value.clone())),
                    );
                    mutated = true;
                }
                Operation::DeleteField { name } => {
                    staged.remove(&(name.as_str().to_string(), false));
                    mutated = true;
                }
                Operation::DeleteCounter { name } => {
                    staged.remove(&(name.as_str().to_string(), true));
                    mutated = true;
                }
                Operation::IncrementCounter {
                    name,
                    delta,
                    min,
                    max,
                    visibility,
                } => {
                    let k = (name.as_str().to_string(), true);
                    let current = match staged.get(&k) {
                        Some((_, Value::Counter(c))) => *c,
                        _ => 0,
                    };
                    let new = current + delta;
                    if min.is_some_and(|m| new < m)
                        || max.is_some_and(|m| new > m)
                        || new.abs() > COUNTER_LIMIT
                    {
                        return Err(Error::OutOfBounds {
                            version: player.version,
                            operation_index: index,
                        });
                    }
                    staged.insert(k, (*visibility, Value::Counter(new)));
                    mutated = true;
                }
                Operation::CheckVersion { expected } => {
                    if *expected != player.version {
                        return Err(fail_conflict);
                    }
                }
                Operation::CheckField { name, expected } => {
                    let current = match staged.get(&(name.as_str().to_string(), false)) {
                        Some((vis, Value::Bytes(b))) if visible(*vis) => Some(b.clone()),
                        _ => None,
                    };
                    if current != *expected {
                        return Err(fail_conflict);
                    }
                }
            }
        }
        if mutated {
            player.version += 1;
            player.entries = staged;
        }
        let committed = Committed {
            version: player.version,
            reads,
            replayed: false,
        };
        if let (Some(key), Some(r), true) = (&txn.idempotency_key, request, mutated) {
            let window = player
                .windows
                .entry(key.client_id().to_string())
                .or_default();
            window.queue.push_back(r);
            window
                .remembered
                .insert(r, (txn.clone(), committed.clone()));
            // The oldest are forgotten together once the window holds a quarter more than
            // its length (the age never runs out within a case).
            if window.queue.len() > WINDOW + WINDOW / 4 {
                while window.queue.len() > WINDOW {
                    if let Some(forgotten) = window.queue.pop_front() {
                        window.remembered.remove(&forgotten);
                        window.floor = Some(window.floor.map_or(forgotten, |f| f.max(forgotten)));
                    }
                }
            }
        }
        Ok(committed)
    }
}

fn arb_name() -> impl Strategy<Value = Name> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(|n| Name::new(n).expect("valid"))
}

fn arb_vis() -> impl Strategy<Value = Visibility> {
    prop_oneof![Just(Visibility::Public), Just(Visibility::Private)]
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"1".to_vec()),
        Just(vec![0u8, 255, 10]),
        Just(b"long value".to_vec()),
    ]
}

fn arb_bound() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![Just(None), (-10i64..10).prop_map(Some)]
}

fn arb_write_op() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (arb_name(), arb_bytes(), arb_vis()).prop_map(|(name, value, visibility)| {
            Operation::SetField {
                name,
                value,
                visibility,
            }
        }),
        arb_name().prop_map(|name| Operation::DeleteField { name }),
        arb_name().prop_map(|name| Operation::DeleteCounter { name }),
        (
            arb_name(),
            prop_oneof![-5i64..5, Just(1i64 << 52), Just(-(1i64 << 52))],
            arb_bound(),
            arb_bound(),
            arb_vis()
        )
            .prop_filter("min <= max", |(_, _, min, max, _)| match (min, max) {
                (Some(a), Some(b)) => a <= b,
                _ => true,
            })
            .prop_map(
                |(name, delta, min, max, visibility)| Operation::IncrementCounter {
                    name,
                    delta,
                    min,
                    max,
                    visibility,
                }
            ),
    ]
}

fn arb_read_op() -> impl Strategy<Value = Operation> {
    prop_oneof![
        prop::collection::vec(arb_name(), 0..3).prop_map(|names| Operation::Read { names }),
        (0u64..4).prop_map(|expected| Operation::CheckVersion { expected }),
    ]
}

fn arb_check_field() -> impl Strategy<Value = Operation> {
    (arb_name(), prop::option::of(arb_bytes()))
        .prop_map(|(name, expected)| Operation::CheckField { name, expected })
}

/// A transaction on player "p" or "q": owner transactions mix everything, public ones read.
/// The third value picks an owner transaction's client and how far ahead of that client's
/// next id its request id lands (see `build`).
fn arb_txn() -> impl Strategy<Value = (bool, bool, u64, Vec<Operation>)> {
    (
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.25),
        0u64..6,
        prop::collection::vec(
            // Mostly writes, so that windows fill and forget within a case; checks still
            // fail often enough for conflicts.
            prop_oneof![6 => arb_write_op(), 2 => arb_read_op(), 1 => arb_check_field()],
            1..5,
        ),
    )
}

/// Builds a transaction of case `prefix`. An owner transaction's client is `m0` or `m1`; its
/// request id is picked so that ids arrive out of order and are sometimes reused.
fn build(
    prefix: &str,
    next_ids: &mut HashMap<String, u64>,
    (on_q, public, request, ops): (bool, bool, u64, Vec<Operation>),
) -> Transaction {
    let player =
        PlayerId::new(format!("{prefix}-{}", if on_q { "q" } else { "p" })).expect("valid");
    if public {
        let ops: Vec<Operation> = ops
            .into_iter()
            .filter(|op| matches!(op, Operation::Read { .. } | Operation::CheckVersion { .. }))
            .collect();
        let ops = if ops.is_empty() {
            vec![Operation::Read { names: vec![] }]
        } else {
            ops
        };
        Transaction {
            player,
            access: Access::Public,
            idempotency_key: None,
            operations: ops,
        }
    } else {
        Transaction {
            player,
            access: Access::Owner,
            idempotency_key: Some({
                let client = format!("m{}", request % 2);
                let next = next_ids.entry(client.clone()).or_default();
                // The client's next id, one past it (leaving a gap a later request fills out
                // of order), or one it used two ids ago (a buggy client reusing an id: a
                // mismatch when remembered, too old when forgotten).
                let id = match request / 2 % 3 {
                    0 => *next,
                    1 => *next + 1,
                    _ => next.saturating_sub(2),
                };
                *next = (*next).max(id + 1);
                IdempotencyKey::new(client, id).expect("valid")
            }),
            operations: ops,
        }
    }
}

#[test]
fn redis_agrees_with_the_model() {
    let servers = common::servers(1);
    let mut config = colony_testkit::config_for(&[&servers[0]]);
    config.redis.idempotency_window_requests = WINDOW;
    let store = colony::Store::new(&config).expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let conn = runtime.block_on(common::raw(&servers[0]));
    let case = std::cell::Cell::new(0u64);
    let proptest_config = ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    };
    // Each step is a new transaction, or (about a third of them) the very same transaction
    // as an earlier step again: a client's retry.
    let step = (
        arb_txn(),
        prop::option::weighted(0.35, any::<prop::sample::Index>()),
    );
    proptest!(proptest_config, |(steps in prop::collection::vec(step, 1..96))| {
        case.set(case.get() + 1);
        // Fresh players per case, so the model can start empty.
        let prefix = format!("case{}", case.get());
        let mut model = Model::default();
        let mut next_ids = HashMap::new();
        let mut sent: Vec<Transaction> = Vec::new();
        for (raw, retry) in steps {
            let txn = match retry {
                Some(index) if !sent.is_empty() => sent[index.index(sent.len())].clone(),
                _ => build(&prefix, &mut next_ids, raw),
            };
            sent.push(txn.clone());
            let expected = model.apply(&txn);
            let actual = runtime.block_on(store.execute(txn.clone()));
            prop_assert_eq!(actual, expected, "transaction {:?}", txn);
            // The size tally the script keeps for the player bounds matches its entries.
            let (tally, real) = runtime.block_on(common::size_tally(&mut conn.clone(), txn.player.as_str()));
            if let Some(tally) = tally {
                prop_assert_eq!(tally, real, "size tally after {:?}", txn);
            }
        }
    });
}
