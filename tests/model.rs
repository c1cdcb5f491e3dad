//! Model-based test: random sequences of transactions run against real Redis and against a
//! small in-memory model of Colony's semantics; every result must agree. Two clients send
//! request ids in any order, retried or not, through a window of four requests, so replays,
//! mismatches, out-of-order arrivals and REQUEST_TOO_OLD all occur.
//!
//! The second test adds multi-player transactions between the same two players, retried
//! with their keys, interleaved with transactions on one player, with coordinators that stop
//! after the prepare or after deciding a commit (their intents finished by whoever meets
//! them: the next transaction, a read, the resolver or the sweep), and with sweeps.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};

use colony::model::COUNTER_LIMIT;
use colony::{
    Access, Committed, Entry, Error, IdempotencyKey, MultiCommitted, MultiTransaction, Name,
    Operation, Participant, PlayerId, ReadResult, Transaction, Value, Visibility,
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
    /// request id -> the request and its first result
    remembered: HashMap<u64, Remembered>,
}

/// A request a window remembers with its first result.
#[derive(Clone)]
enum Remembered {
    Single(Transaction, Committed),
    Multi(MultiTransaction, MultiCommitted),
}

impl ModelWindow {
    /// Remembers request `r`, forgetting the oldest together once the window holds a quarter
    /// more than its length (the age never runs out within a case).
    fn remember(&mut self, r: u64, what: Remembered) {
        self.queue.push_back(r);
        self.remembered.insert(r, what);
        if self.queue.len() > WINDOW + WINDOW / 4 {
            while self.queue.len() > WINDOW {
                if let Some(forgotten) = self.queue.pop_front() {
                    self.remembered.remove(&forgotten);
                    self.floor = Some(self.floor.map_or(forgotten, |f| f.max(forgotten)));
                }
            }
        }
    }
}

#[derive(Default, Clone)]
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
            match window.remembered.get(&r) {
                Some(Remembered::Single(first, result))
                    if first.access == txn.access && first.operations == txn.operations =>
                {
                    return Ok(Committed {
                        replayed: true,
                        ..result.clone()
                    });
                }
                Some(_) => {
                    return Err(Error::IdempotencyMismatch {
                        version: player.version,
                    })
                }
                None => {}
            }
            if window.floor.is_some_and(|floor| r <= floor) {
                return Err(Error::RequestTooOld {
                    version: player.version,
                });
            }
        }
        let (staged, mutated, reads) = stage(player, txn.access, &txn.operations)?;
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
            player
                .windows
                .entry(key.client_id().to_string())
                .or_default()
                .remember(r, Remembered::Single(txn.clone(), committed.clone()));
        }
        Ok(committed)
    }

    /// A multi-player transaction: judged in the primary's window, every participant staged
    /// as a transaction on its own is, all applied or none (the first participant that
    /// refuses names the refusal), and the key remembered in the primary's window with every
    /// participant's result.
    fn apply_multi(&mut self, txn: &MultiTransaction) -> Result<MultiCommitted, Error> {
        let in_participant = |participant: usize, error: Error| Error::InParticipant {
            participant: participant as u32,
            error: Box::new(error),
        };
        let key = &txn.idempotency_key;
        let primary = self
            .players
            .entry(txn.participants[0].player.clone())
            .or_default();
        let window = primary
            .windows
            .entry(key.client_id().to_string())
            .or_default();
        let r = key.request_id();
        match window.remembered.get(&r) {
            Some(Remembered::Multi(first, result)) if first == txn => {
                // A replay marks the whole result and every participant's.
                return Ok(MultiCommitted {
                    participants: result
                        .participants
                        .iter()
                        .map(|c| Committed {
                            replayed: true,
                            ..c.clone()
                        })
                        .collect(),
                    replayed: true,
                });
            }
            Some(_) => {
                let version = primary.version;
                return Err(in_participant(0, Error::IdempotencyMismatch { version }));
            }
            None => {}
        }
        if window.floor.is_some_and(|floor| r <= floor) {
            let version = primary.version;
            return Err(in_participant(0, Error::RequestTooOld { version }));
        }
        // The participants other than the primary are prepared first, the primary's
        // operations run with the commit: a refusal names the first of the others that
        // refuses, in order, else the primary.
        let mut staged = Vec::new();
        let order = (1..txn.participants.len()).chain([0]);
        for i in order {
            let participant = &txn.participants[i];
            let player = self.players.entry(participant.player.clone()).or_default();
            staged.push((
                i,
                stage(player, participant.access, &participant.operations)
                    .map_err(|e| in_participant(i, e))?,
            ));
        }
        staged.sort_by_key(|(i, _)| *i);
        let staged: Vec<_> = staged.into_iter().map(|(_, s)| s).collect();
        let mut results = Vec::new();
        for (participant, (entries, mutated, reads)) in txn.participants.iter().zip(staged) {
            let player = self.players.entry(participant.player.clone()).or_default();
            if mutated {
                player.version += 1;
                player.entries = entries;
            }
            results.push(Committed {
                version: player.version,
                reads,
                replayed: false,
            });
        }
        let committed = MultiCommitted {
            participants: results,
            replayed: false,
        };
        self.players
            .entry(txn.participants[0].player.clone())
            .or_default()
            .windows
            .entry(key.client_id().to_string())
            .or_default()
            .remember(r, Remembered::Multi(txn.clone(), committed.clone()));
        Ok(committed)
    }
}

/// Runs `operations` against `player`'s state under `access` without changing it: the new
/// entries, whether anything was written, and the reads; or the refusal.
#[allow(clippy::type_complexity)]
fn stage(
    player: &ModelPlayer,
    access: Access,
    operations: &[Operation],
) -> Result<
    (
        BTreeMap<(String, bool), (Visibility, Value)>,
        bool,
        Vec<ReadResult>,
    ),
    Error,
> {
    {
        let owner = access == Access::Owner;
        let visible = |v: Visibility| owner || v == Visibility::Public;
        let mut staged = player.entries.clone();
        let mut reads = Vec::new();
        let mut mutated = false;
        for (index, op) in operations.iter().enumerate() {
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
        Ok((staged, mutated, reads))
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

/// One step of the second test.
#[derive(Debug, Clone)]
enum Step {
    /// A transaction on one player.
    Single((bool, bool, u64, Vec<Operation>)),
    /// A trade run to the end.
    Trade(TradeParts),
    /// A trade whose coordinator stops after every participant prepared.
    StopAfterPrepare(TradeParts),
    /// A trade whose coordinator stops after writing the commit.
    StopAfterCommit(TradeParts),
    /// The sweep of the shard.
    Sweep,
}

/// A trade between the case's two players: which is the primary, how its request id is
/// picked, and each participant's operations.
type TradeParts = (bool, u64, Vec<Operation>, Vec<Operation>);

fn arb_ops() -> impl Strategy<Value = Vec<Operation>> {
    prop::collection::vec(
        prop_oneof![6 => arb_write_op(), 2 => arb_read_op(), 1 => arb_check_field()],
        1..4,
    )
}

fn arb_step() -> impl Strategy<Value = Step> {
    let trade = || (any::<bool>(), 0u64..6, arb_ops(), arb_ops());
    prop_oneof![
        4 => arb_txn().prop_map(Step::Single),
        4 => trade().prop_map(Step::Trade),
        1 => trade().prop_map(Step::StopAfterPrepare),
        1 => trade().prop_map(Step::StopAfterCommit),
        1 => Just(Step::Sweep),
    ]
}

/// The trade of `parts` in case `prefix`, its key from client `t`, ids picked as `build`
/// picks them.
fn build_trade(
    prefix: &str,
    next_ids: &mut HashMap<String, u64>,
    (p_first, request, ops_a, ops_b): TradeParts,
) -> MultiTransaction {
    let p = PlayerId::new(format!("{prefix}-p")).expect("valid");
    let q = PlayerId::new(format!("{prefix}-q")).expect("valid");
    let (a, b) = if p_first { (p, q) } else { (q, p) };
    let next = next_ids.entry("t".to_string()).or_default();
    let id = match request % 3 {
        0 => *next,
        1 => *next + 1,
        _ => next.saturating_sub(2),
    };
    *next = (*next).max(id + 1);
    let participant = |player: PlayerId, ops: Vec<Operation>| {
        ops.into_iter()
            .fold(Participant::owner(player), Participant::with)
    };
    MultiTransaction::new(IdempotencyKey::new("t", id).expect("valid"))
        .with(participant(a, ops_a))
        .with(participant(b, ops_b))
}

#[test]
fn trades_interleaved_with_singles_stops_and_sweeps_agree_with_the_model() {
    use colony::store::intents::Decision;
    use colony::store::multi::{MultiAttempt, PrepareOutcome};
    let servers = common::servers(1);
    let mut config = colony_testkit::config_for(&[&servers[0]]);
    config.redis.idempotency_window_requests = WINDOW;
    // A stopped coordinator's intents expire quickly, well within the store's retry
    // deadline: what meets them waits for the lease, then the resolver finishes them.
    config.redis.intent_lease_ms = 40;
    config.redis.retry_deadline_ms = 2000;
    let store = colony::Store::new(&config).expect("store");
    let shard = store.shard_map().index(0).expect("shard 0");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let case = std::cell::Cell::new(0u64);
    // Each case waits out a few 40 ms leases: the full run (CI, `slow-tests`) takes 32 cases,
    // the fast tier 8, so it stays under a minute.
    let proptest_config = ProptestConfig {
        cases: if cfg!(feature = "slow-tests") { 32 } else { 8 },
        ..ProptestConfig::default()
    };
    let step = (
        arb_step(),
        prop::option::weighted(0.3, any::<prop::sample::Index>()),
    );
    proptest!(proptest_config, |(steps in prop::collection::vec(step, 1..48))| {
        case.set(case.get() + 1);
        let prefix = format!("trades{}", case.get());
        let mut model = Model::default();
        let mut next_ids = HashMap::new();
        let mut sent: Vec<Transaction> = Vec::new();
        let mut traded: Vec<MultiTransaction> = Vec::new();
        for (step, retry) in steps {
            match step {
                Step::Sweep => {
                    let swept = runtime.block_on(store.sweep(shard));
                    prop_assert!(swept.is_ok(), "sweep: {:?}", swept);
                }
                Step::Single(raw) => {
                    let txn = match retry {
                        Some(index) if !sent.is_empty() => sent[index.index(sent.len())].clone(),
                        _ => build(&prefix, &mut next_ids, raw),
                    };
                    sent.push(txn.clone());
                    let expected = model.apply(&txn);
                    let actual = runtime.block_on(store.execute(txn.clone()));
                    prop_assert_eq!(actual, expected, "transaction {:?}", txn);
                }
                step => {
                    let (parts, stop) = match step {
                        Step::Trade(parts) => (parts, None),
                        Step::StopAfterPrepare(parts) => (parts, Some(false)),
                        Step::StopAfterCommit(parts) => (parts, Some(true)),
                        _ => unreachable!("matched above"),
                    };
                    let txn = match retry {
                        Some(index) if !traded.is_empty() => {
                            traded[index.index(traded.len())].clone()
                        }
                        _ => build_trade(&prefix, &mut next_ids, parts),
                    };
                    traded.push(txn.clone());
                    let mut after = model.clone();
                    let expected = after.apply_multi(&txn);
                    let applies_now = matches!(&expected, Ok(c) if !c.replayed);
                    match stop {
                        Some(commit) if applies_now => {
                            // The coordinator stops: after the prepare (nothing applies, the
                            // intents are aborted once their lease passed), or after writing
                            // the commit (whoever meets an intent applies it).
                            // A stopped attempt of an earlier step may still hold a
                            // participant (the primary too: it is checked by the commit): its
                            // lease (40 ms) passes, the attempt is tried again, the failed
                            // one rolled back first.
                            let last_refusal = std::cell::RefCell::new(None);
                            let stopped = runtime.block_on(colony_testkit::wait_for(
                                std::time::Duration::from_secs(2),
                                || async {
                                    let mut attempt =
                                        MultiAttempt::new(&store, txn.clone()).expect("valid");
                                    let prepared = attempt.prepare().await;
                                    let refusal = if prepared != PrepareOutcome::AllStaged {
                                        format!("{prepared:?}")
                                    } else if !commit {
                                        return Some(attempt);
                                    } else {
                                        match attempt.decide(true).await {
                                            Ok(Decision::Commit) => return Some(attempt),
                                            // Refused (the primary still locked): nothing
                                            // written, so the others are rolled back.
                                            Ok(Decision::Abort) => "the commit refused".into(),
                                            Err(e) => panic!("{txn:?}: the commit: {e:?}"),
                                        }
                                    };
                                    let _ = attempt.decide(false).await;
                                    let _ = attempt.finish().await;
                                    *last_refusal.borrow_mut() = Some(refusal);
                                    None
                                },
                            ));
                            prop_assert!(
                                stopped.is_some(),
                                "{:?}: never staged (and committed), the last refusal: {:?}",
                                txn,
                                last_refusal.borrow()
                            );
                            if commit {
                                model = after;
                            }
                        }
                        _ => {
                            let actual = runtime.block_on(store.execute_multi(txn.clone()));
                            prop_assert_eq!(actual, expected, "trade {:?}", txn);
                            model = after;
                        }
                    }
                }
            }
        }
        // Everything left is finished: after the lease, one sweep leaves no intent, and
        // both players read as the model says.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for id in ["p", "q"] {
            let player = PlayerId::new(format!("{prefix}-{id}")).expect("valid");
            // One deadline for both players (leases of 40 ms).
            let cleared = runtime.block_on(colony_testkit::wait_for(
                deadline.saturating_duration_since(std::time::Instant::now()),
                || async {
                    let _ = store.sweep(shard).await;
                    let looked = store.inspect_player(&player).await;
                    (!matches!(&looked, Ok(l) if l.intent.is_some())).then_some(())
                },
            ));
            prop_assert!(cleared.is_some(), "{:?} keeps an intent", player);
            let read = Transaction {
                player: player.clone(),
                access: Access::Owner,
                idempotency_key: None,
                operations: vec![Operation::Read { names: vec![] }],
            };
            let expected = model.clone().apply(&read);
            let actual = runtime.block_on(store.execute(read.clone()));
            prop_assert_eq!(actual, expected, "final read of {:?}", player);
        }
    });
}
