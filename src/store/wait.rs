//! Replicated acknowledgements: `WAIT`, grouped per connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;

use super::connect::ConnectError;

/// Group commit for `WAIT`: one `WAIT` at a time per connection, covering every caller whose
/// writes were answered before it was sent.
///
/// `WAIT` blocks the connection it is sent on until the replicas answer, so a `WAIT` per
/// pipeline would serialise every caller sharing the connection behind one replica round trip
/// each. Instead a caller whose writes were answered joins the next round; a round's `WAIT` is
/// sent only after every caller in it joined, so it covers all of their writes (Redis counts
/// the writes a connection made before the `WAIT`). Rounds run in a task of their own, so a
/// caller that gives up cannot stall the others.
pub(super) struct WaitRounds {
    conn: MultiplexedConnection,
    /// How many replicas a round asks for, read when it starts: the shard's links change it
    /// when a Redis Cluster's map lists another number of replicas for its master.
    replicas: Arc<AtomicU32>,
    timeout_ms: u64,
    state: Mutex<Rounds>,
}

/// What a round's `WAIT` answered: the replicas that acknowledged, and how many it asked for.
pub(super) type Acknowledged = Result<(i64, u32), ConnectError>;

#[derive(Default)]
struct Rounds {
    waiting: Vec<tokio::sync::oneshot::Sender<Acknowledged>>,
    running: bool,
}

impl WaitRounds {
    /// Rounds on `conn`, each a `WAIT <replicas> timeout_ms`.
    pub(super) fn new(
        conn: MultiplexedConnection,
        replicas: Arc<AtomicU32>,
        timeout_ms: u64,
    ) -> WaitRounds {
        WaitRounds {
            conn,
            replicas,
            timeout_ms,
            state: Mutex::new(Rounds::default()),
        }
    }

    /// Joins the next round and returns what its `WAIT` answered: how many replicas
    /// acknowledged every write this connection had answered before the call, and how many
    /// the round asked for.
    pub(super) async fn wait(self: &Arc<Self>) -> Acknowledged {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut rounds = lock(&self.state);
            rounds.waiting.push(tx);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run().await });
        }
        rx.await
            .unwrap_or_else(|_| Err(ConnectError::WaitAbandoned))
    }

    async fn run(&self) {
        loop {
            let round = {
                let mut rounds = lock(&self.state);
                if rounds.waiting.is_empty() {
                    rounds.running = false;
                    return;
                }
                std::mem::take(&mut rounds.waiting)
            };
            let mut conn = self.conn.clone();
            let asked = self.replicas.load(Ordering::Relaxed);
            let acked: Acknowledged = redis::cmd("WAIT")
                .arg(asked)
                .arg(self.timeout_ms)
                .query_async::<i64>(&mut conn)
                .await
                .map(|n| (n, asked))
                .map_err(|e| ConnectError::redis("WAIT on", "the link", e));
            for waiter in round {
                let _ = waiter.send(acked.clone());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values behind this lock; a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
