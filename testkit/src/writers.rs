//! Writers that increment counters through the store or a gateway until stopped, recording
//! every outcome in a [`History`], and the read-back of the final counters.

use std::time::Duration;

use crate::ledger::{Findings, History};
use crate::seed::Seeded;

/// Where a fault scenario's writes go: the library, or the gateway through the Rust client.
#[derive(Clone)]
pub enum Target {
    /// Straight to the store.
    Store(colony::store::Store),
    /// Through a gateway.
    Client(colony::client::Client),
}

impl Target {
    async fn execute(
        &self,
        txn: colony::model::Transaction,
    ) -> Result<colony::model::Committed, colony::error::Error> {
        match self {
            Target::Store(store) => store.execute(txn).await,
            Target::Client(client) => client.execute(txn).await,
        }
    }
}

/// Writers that increment counters until stopped, recording every outcome in a [`History`].
///
/// Each request increments one counter by one and is sent until it settles: retries keep its
/// idempotency key, so it applies at most once. Writer `w` uses counters chosen by a seeded
/// generator among `counters` names `<prefix>-<n>`.
pub struct IncrementWriters {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    history: std::sync::Arc<std::sync::Mutex<History>>,
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicU64>,
    attempts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IncrementWriters {
    /// Starts `writers` writers against `target`.
    pub fn start(
        target: Target,
        writers: u64,
        prefix: &str,
        counters: u64,
        seed: u64,
    ) -> IncrementWriters {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        // A writer that panicked cannot leave the History half-written: locks are taken
        // through poisoning below.
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let attempts = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|w| {
                let (target, stop, history, acknowledged, attempts) = (
                    target.clone(),
                    stop.clone(),
                    history.clone(),
                    acknowledged.clone(),
                    attempts.clone(),
                );
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut random = Seeded::new(seed.wrapping_add(w));
                    let mut request = 0u64;
                    'requests: while !stop.load(Ordering::Relaxed) {
                        request += 1;
                        let counter = format!("{prefix}-{}", random.range(0, counters));
                        let (Ok(player), Ok(key), Ok(name)) = (
                            colony::model::PlayerId::new(counter.clone()),
                            colony::model::IdempotencyKey::new(format!("writer-{w}"), request),
                            colony::model::Name::new("n"),
                        ) else {
                            return;
                        };
                        let txn = colony::model::Transaction::owner(player, Some(key)).with(
                            colony::model::Operation::IncrementCounter {
                                name,
                                delta: 1,
                                min: None,
                                max: None,
                                visibility: colony::model::Visibility::Private,
                            },
                        );
                        let mut maybe_applied = false;
                        loop {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            match target.execute(txn.clone()).await {
                                Ok(_) => {
                                    history
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .acknowledged(&counter);
                                    acknowledged.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                Err(e) if e.is_retryable() => {
                                    maybe_applied |= e.code() == colony::error::Code::Unknown;
                                    if stop.load(Ordering::Relaxed) {
                                        let mut h =
                                            history.lock().unwrap_or_else(|p| p.into_inner());
                                        if maybe_applied {
                                            h.unknown(&counter);
                                        } else {
                                            h.failed(&counter);
                                        }
                                        break 'requests;
                                    }
                                    // A client's pause between attempts (the store fails fast
                                    // while a breaker is open), not a wait for a condition.
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                Err(e) => panic!("unexpected error {e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        IncrementWriters {
            stop,
            history,
            acknowledged,
            attempts,
            tasks,
        }
    }

    /// Increments acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Attempts sent so far, retries included.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a fault in the history's timeline.
    pub fn fault(&self, what: impl Into<String>) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fault(what);
    }

    /// Stops the writers, waits for them, and returns the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        std::mem::take(&mut *self.history.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The final value of every counter in `history`, read as the owner through `target`.
pub async fn final_counters(target: &Target, history: &History) -> Vec<(String, u64)> {
    let mut values = Vec::new();
    for counter in history.counters() {
        let Ok(player) = colony::model::PlayerId::new(counter.clone()) else {
            continue;
        };
        let read = colony::model::Transaction::owner(player, None)
            .with(colony::model::Operation::Read { names: Vec::new() });
        let value = match target.execute(read).await {
            Ok(c) => match c
                .reads
                .first()
                .and_then(|r| r.entries.first())
                .map(|e| &e.value)
            {
                Some(colony::model::Value::Counter(v)) => *v as u64,
                _ => 0,
            },
            Err(e) => panic!("final read of {counter}: {e}"),
        };
        values.push((counter, value));
    }
    values
}

impl History {
    /// Checks the history against the final counters read through `target`.
    pub async fn check_against(&self, target: &Target) -> Findings {
        let values = final_counters(target, self).await;
        self.check(|c| values.iter().find(|(n, _)| n == c).map_or(0, |(_, v)| *v))
    }
}

/// Writes more than the kernel buffers to a stopped replica hold, on players `on_shard`
/// accepts, so that what follows never reaches that replica: the way a test puts a write on
/// a master alone (a stopped replica still takes bytes into its socket buffer and applies
/// them once resumed). One batch of 256 × 60 KiB, so that in `replicated` mode it costs one
/// `WAIT` timeout rather than 256; its outcome does not matter.
pub async fn fill_replication_link(
    store: &colony::store::Store,
    on_shard: impl Fn(&colony::model::PlayerId) -> bool,
) {
    let big = vec![b'x'; 60 * 1024];
    let filler: Vec<colony::model::Transaction> = (0u64..)
        .filter_map(|i| colony::model::PlayerId::new(format!("filler-{i}")).ok())
        .filter(|p| on_shard(p))
        .take(256)
        .enumerate()
        .map(|(n, p)| {
            colony::model::Transaction::owner(
                p,
                colony::model::IdempotencyKey::new("filler", n as u64 + 1).ok(),
            )
            .with(colony::model::Operation::SetField {
                name: colony::model::Name::new("f").expect("a valid name"),
                value: big.clone(),
                visibility: colony::model::Visibility::Private,
            })
        })
        .collect();
    let _ = store
        .execute_batch(filler)
        .await
        .expect("the filler batch is well-formed");
}
