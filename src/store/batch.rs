//! Batches of transactions on one player each: validated, routed and encoded once per call,
//! pipelined per shard, the shards concurrently, retried within the store's deadline; and
//! requests that mix them with multi-player transactions ([`Store::execute_mixed`]).
//!
//! A transaction that meets a trade's intent is settled through the resolver one layer down
//! ([`super::intents`]); one whose player is archived asks the archiver for a restore and
//! polls for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::error::Error;
use crate::keys;
use crate::model::{
    Access, Committed, MultiCommitted, MultiTransaction, Operation, PlayerId, Transaction,
};
use crate::script::{self, IntentRef, Outcome};
use crate::shard_map::{ShardIndex, ShardMap};
use crate::slot::Slot;

use super::breaker::BreakerState;
use super::intents::{Decision, Resolution};
use super::road::{Command, Effect, LuaScript};
use super::{Store, RESTORE_REQUEST_AGAIN, RETRY_BACKOFF};

/// How often a transaction waiting for a restore is tried again.
const RESTORE_POLL: Duration = Duration::from_millis(2);

/// Queues restore requests in one restore queue: no duplicates, at most
/// `redis.max_restore_requests` in each queue.
static RESTORE_REQUEST: std::sync::LazyLock<LuaScript> =
    std::sync::LazyLock::new(|| LuaScript::new(include_str!("../restore_request.lua")));

/// A transaction of a call, done once for the whole call: validated, its slot found, its
/// script call encoded. Retries send the same command again, to the shard that owns the slot
/// by the map of their round (a Redis Cluster's map changes when a slot moves).
struct Routed {
    slot: Slot,
    command: Command,
}

impl Store {
    /// Executes one transaction.
    pub async fn execute(&self, txn: Transaction) -> Result<Committed, Error> {
        let mut results = self.execute_batch(vec![txn]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("empty batch result".into())))
    }

    /// Reads a player: everything as the owner, public entries otherwise. Never marks the
    /// player active for a public read. `NotFound` when the player has no version.
    pub async fn get_player(&self, player: PlayerId, access: Access) -> Result<Committed, Error> {
        let txn = Transaction {
            player,
            access,
            idempotency_key: None,
            operations: vec![Operation::Read { names: Vec::new() }],
        };
        let committed = self.execute(txn).await?;
        if committed.version == 0 {
            return Err(Error::NotFound);
        }
        Ok(committed)
    }

    /// Executes transactions for many players: grouped per shard, pipelined, shards run
    /// concurrently. Transactions that fail retryably (shard unreachable, outcome unknown) are
    /// sent again, unchanged, with capped exponential backoff and jitter until
    /// `redis.retry_deadline_ms` has passed: a write carries its idempotency key, so a retry
    /// applies it at most once and settles an unknown outcome. The outer error is for the
    /// batch as a whole (too many transactions); each transaction has its own result, in
    /// request order.
    pub async fn execute_batch(
        &self,
        txns: Vec<Transaction>,
    ) -> Result<Vec<Result<Committed, Error>>, Error> {
        self.inner.limits.check_batch(txns.len())?;
        Ok(self.run_batch(txns, 0).await)
    }

    /// Runs a batch that mixes transactions on one player with multi-player transactions:
    /// the first through [`Store::execute_batch`], each of the others through
    /// [`Store::execute_multi`], all concurrently, every one that reads taking an even share
    /// of the request's read budget. The outer error is for the batch as a whole (too many
    /// entries); each entry has its own result, in order per kind.
    pub async fn execute_mixed(
        &self,
        singles: Vec<Transaction>,
        multis: Vec<MultiTransaction>,
    ) -> Result<
        (
            Vec<Result<Committed, Error>>,
            Vec<Result<MultiCommitted, Error>>,
        ),
        Error,
    > {
        self.inner
            .limits
            .check_batch(singles.len() + multis.len())?;
        let multi_readers = multis.iter().filter(|m| m.reads()).count();
        let readers = singles.iter().filter(|t| t.reads()).count() + multi_readers;
        let runs = multis
            .into_iter()
            .map(|m| self.execute_multi_sharing(m, readers));
        Ok(tokio::join!(
            self.run_batch(singles, multi_readers),
            join_all(runs)
        ))
    }

    /// [`Store::execute_batch`] after the batch's size was checked, with `other_readers` more
    /// entries of the same request sharing the read budget.
    async fn run_batch(
        &self,
        txns: Vec<Transaction>,
        other_readers: usize,
    ) -> Vec<Result<Committed, Error>> {
        let limits = &self.inner.limits;
        let deadline = Instant::now() + self.inner.settings.retry_deadline();
        // The request's read budget is shared evenly by the transactions that read, counted
        // over the whole batch, so that a retry of some of them runs with the same budget
        // (and a replayed result fits as the first one did).
        let bounds = self.bounds(txns.iter().filter(|t| t.reads()).count() + other_readers);
        let mut results: Vec<Option<Result<Committed, Error>>> = vec![None; txns.len()];
        let mut routed: Vec<Option<Routed>> = Vec::with_capacity(txns.len());
        let mut pending = Vec::with_capacity(txns.len());
        for (position, txn) in txns.iter().enumerate() {
            match txn.validate(limits) {
                Ok(()) => {
                    let slot = keys::player_slot(&txn.player);
                    let effect = if txn.is_write() {
                        Effect::Writes
                    } else {
                        Effect::Reads
                    };
                    routed.push(Some(Routed {
                        slot,
                        command: Command::transaction(script::encode(txn, slot, &bounds), effect),
                    }));
                    pending.push(position);
                }
                Err(e) => {
                    routed.push(None);
                    results[position] = Some(Err(e));
                }
            }
        }
        let shard_in = |map: &ShardMap, position: usize| {
            routed[position]
                .as_ref()
                .map(|r| map.shard_for_slot(r.slot))
        };
        let mut map = self.shard_map();
        let mut attempt = 0u32;
        // Restore requests go out on the first ARCHIVED answer, then again only now and then
        // (in case the archiver lost one), not on every poll.
        let mut restore_requested: Option<Instant> = None;
        while !pending.is_empty() {
            // One map per round: every transaction of the round is routed by it.
            map = self.shard_map();
            let shard_of = |position: usize| shard_in(&map, position);
            let mut again = Vec::new();
            let answered = self.run_once(&map, &txns, &routed, &pending).await;
            let answered = self.settle_intents(&txns, answered).await;
            // Whether every retry is of a write that met an intent finished just now (most
            // often a trade's participant applied after the trade was answered): the player
            // is free, so the retry goes at once rather than after a backoff.
            let mut all_freed = true;
            // Found archived this round: taken from the answers themselves, since an earlier
            // attempt's UNKNOWN stands in `results` over a later ARCHIVED.
            let mut archived = Vec::new();
            for (position, outcome, freed) in answered {
                if matches!(&outcome, Err(Error::Archived { .. })) {
                    archived.push(position);
                }
                if matches!(&outcome, Err(e) if e.is_retryable()) && !freed {
                    all_freed = false;
                }
                // No retry into an open breaker: it would fail the same way until the cooldown
                // ends, and it would hold back the rest of the batch meanwhile.
                if matches!(&outcome, Err(e) if e.is_retryable())
                    && !shard_of(position).is_some_and(|shard| self.breaker_open(shard))
                {
                    again.push(position);
                }
                results[position] =
                    Some(Error::after_attempts(outcome, results[position].as_ref()));
            }
            if restore_requested.is_none_or(|at| at.elapsed() >= RESTORE_REQUEST_AGAIN)
                && self.request_restores(&map, &txns, &routed, &archived).await
            {
                restore_requested = Some(Instant::now());
            }
            let now = Instant::now();
            if again.is_empty() || now >= deadline {
                break;
            }
            self.count_retries(again.iter().filter_map(|&p| shard_of(p)));
            if all_freed {
                pending = again;
                continue;
            }
            // A restore takes the archiver about a millisecond: poll for it briskly rather
            // than backing off as from a failing shard.
            let only_restores = again.iter().all(|p| archived.contains(p));
            let pause = if only_restores {
                RESTORE_POLL
            } else {
                RETRY_BACKOFF.delay(attempt)
            };
            tokio::time::sleep(pause.min(deadline - now)).await;
            attempt += 1;
            pending = again;
        }
        results
            .into_iter()
            .enumerate()
            .map(|(position, r)| match r {
                Some(Err(Error::Archived { version })) => Err(Error::Unavailable {
                    shard: shard_in(&map, position).map(|shard| self.shard_name(shard)),
                    reason: format!(
                        "the player is archived (version {version}) and the archiver did not \
                         restore it in time"
                    ),
                }),
                Some(r) => r,
                None => Err(Error::Internal("transaction not run".into())),
            })
            .collect()
    }

    /// Asks the archiver to restore the players at `archived` (found archived): everything
    /// for owner access, the public part otherwise. Returns whether there were any.
    async fn request_restores(
        &self,
        map: &ShardMap,
        txns: &[Transaction],
        routed: &[Option<Routed>],
        archived: &[usize],
    ) -> bool {
        let requests = archived.iter().filter_map(|&p| {
            let txn = &txns[p];
            routed[p].as_ref().map(|routed| {
                let request = keys::restore_request(&txn.player, txn.access == Access::Owner);
                (routed.slot, request)
            })
        });
        self.push_restore_requests(map, requests).await
    }

    /// Queues restore `requests` (each a player's slot and its request) for the archiver,
    /// those of one restore queue in one call, on the shard that owns the queue's slot by
    /// `map`. Failures are logged, not returned: the caller asks again
    /// ([`RESTORE_REQUEST_AGAIN`]) while it waits for the restore. Returns whether there were
    /// any.
    pub(super) async fn push_restore_requests(
        &self,
        map: &ShardMap,
        requests: impl IntoIterator<Item = (Slot, String)>,
    ) -> bool {
        let mut queued: BTreeMap<keys::RestoreQueue, BTreeSet<String>> = BTreeMap::new();
        for (slot, request) in requests {
            queued
                .entry(keys::RestoreQueue::for_slot(slot))
                .or_default()
                .insert(request);
        }
        if queued.is_empty() {
            return false;
        }
        let pushes = queued.into_iter().map(|(queue, requests)| async move {
            // The queue lives on whichever shard owns its slot now, not the player's.
            let shard = map.shard_for_slot(queue.slot());
            let name = self.shard_name(shard);
            // A request lost in a failover or refused while the queue's slot moves is sent
            // again (RESTORE_REQUEST_AGAIN): not waited.
            let mut push = Command::script(&RESTORE_REQUEST, Effect::Housekeeping)
                .key(queue.key())
                .arg(self.inner.settings.max_restore_requests);
            for request in requests {
                push = push.arg(request);
            }
            match self.call::<(u64, u64, u64)>(shard, push).await {
                Err(e) => {
                    tracing::warn!(shard = %name, queue = queue.index(), error = %e, "cannot request a restore")
                }
                Ok((_, _, refused)) if refused > 0 => tracing::warn!(
                    shard = %name,
                    queue = queue.index(),
                    refused,
                    cap = self.inner.settings.max_restore_requests,
                    "restore queue full; requests not queued"
                ),
                Ok(_) => {}
            }
        });
        join_all(pushes).await;
        true
    }

    fn breaker_open(&self, shard: ShardIndex) -> bool {
        self.routes().links(shard).breaker.state() == BreakerState::Open
    }

    /// Counts one retry per shard in `retried` (a shard once for each transaction retried).
    fn count_retries(&self, retried: impl Iterator<Item = ShardIndex>) {
        let mut per_shard: BTreeMap<ShardIndex, u64> = BTreeMap::new();
        for shard in retried {
            *per_shard.entry(shard).or_default() += 1;
        }
        let total: u64 = per_shard.values().sum();
        self.inner.retries.fetch_add(total, Ordering::Relaxed);
        if let Some(observer) = &self.inner.observer {
            for (shard, count) in per_shard {
                observer.retried(&self.shard_name(shard), count);
            }
        }
    }

    /// One attempt at `positions`: grouped by shard (by `map`), shards concurrently.
    async fn run_once(
        &self,
        map: &ShardMap,
        txns: &[Transaction],
        routed: &[Option<Routed>],
        positions: &[usize],
    ) -> Vec<(usize, Result<Outcome, Error>)> {
        let mut plan: BTreeMap<ShardIndex, Vec<(usize, &Routed)>> = BTreeMap::new();
        for &p in positions {
            if let Some(r) = &routed[p] {
                plan.entry(map.shard_for_slot(r.slot))
                    .or_default()
                    .push((p, r));
            }
        }
        let runs = plan.into_iter().map(|(shard, batch)| async move {
            let outcomes = self.run_on_shard(txns, shard, &batch).await;
            batch.into_iter().map(|(p, _)| p).zip(outcomes)
        });
        join_all(runs).await.into_iter().flatten().collect()
    }

    /// Runs one shard's part of a batch as one call on the road (one pipeline, with `WAIT`
    /// on the same link in replicated mode, the script reloaded if the server lost it, the
    /// breaker and the shard's metrics): a committed write (or replay) is OK only once the
    /// replicas acknowledged the link's writes.
    async fn run_on_shard(
        &self,
        txns: &[Transaction],
        shard: ShardIndex,
        batch: &[(usize, &Routed)],
    ) -> Vec<Result<Outcome, Error>> {
        let commands: Vec<&Command> = batch.iter().map(|(_, r)| &r.command).collect();
        let answer = self.send_borrowed(shard, &commands).await;
        let acknowledged = answer.acknowledgement();
        batch
            .iter()
            .zip(answer.replies)
            .map(|(&(p, _), reply)| {
                let txn = &txns[p];
                // A write's refusal is final only once acknowledged, as its success is.
                let outcome = script::decode(txn, &reply?).map_err(|e| {
                    if txn.is_write() {
                        e.unless_unacknowledged(&acknowledged)
                    } else {
                        e
                    }
                })?;
                match outcome {
                    Outcome::Done(committed) if txn.is_write() => {
                        acknowledged.clone().map(|()| Outcome::Done(committed))
                    }
                    // A refusal on a player holding an intent: final on the same condition.
                    Outcome::AnsweredWithIntent(Err(e), intent) if txn.is_write() => {
                        Ok(Outcome::AnsweredWithIntent(
                            Err(e.unless_unacknowledged(&acknowledged)),
                            intent,
                        ))
                    }
                    other => Ok(other),
                }
            })
            .collect()
    }

    /// Turns what the script answered transactions on their own into results, settling the
    /// intents they met: a write that met a decided or expired intent resolves it (and is
    /// retried); a
    /// read that met an intent whose attempt committed applies it first (and is retried);
    /// any other read of a player with an intent returns the state it read, the last one
    /// committed.
    async fn settle_intents(
        &self,
        txns: &[Transaction],
        answered: Vec<(usize, Result<Outcome, Error>)>,
    ) -> Vec<(usize, Result<Committed, Error>, bool)> {
        let settled = answered.into_iter().map(|(position, outcome)| async move {
            let player = &txns[position].player;
            let locked = |intent: &IntentRef, why: &str| Error::Locked {
                player: player.as_str().to_string(),
                reason: format!("attempt {} (primary {:?}) {why}", intent.attempt, intent.primary),
            };
            // Whether the intent met was finished here: the retry may go at once.
            let mut freed = false;
            let result = match outcome {
                Ok(Outcome::Done(committed)) => Ok(committed),
                Err(e) => Err(e),
                Ok(Outcome::Locked(intent))
                    if self.wait_detached_finish(player, Some(&intent.attempt)).await =>
                {
                    // A trade this store answered, whose detached task just applied it.
                    freed = true;
                    Err(locked(&intent, "was applied by its coordinator"))
                }
                Ok(Outcome::Locked(intent)) => {
                    // Decided (or expired) intents are finished at once; a live undecided one
                    // is waited out by the retry.
                    match self.resolve_intent(player, &intent).await {
                        Ok(Resolution::Live) => Err(locked(&intent, "is in progress")),
                        Ok(_) => {
                            freed = true;
                            Err(locked(&intent, "was resolved"))
                        }
                        Err(e) => {
                            tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot resolve an intent");
                            Err(locked(&intent, "could not be resolved"))
                        }
                    }
                }
                Ok(Outcome::AnsweredWithIntent(_, intent))
                    if self.wait_detached_finish(player, Some(&intent.attempt)).await =>
                {
                    // A trade this store answered, whose detached task just applied it: the
                    // answer is judged again against the applied state.
                    freed = true;
                    Err(locked(&intent, "was applied by its coordinator"))
                }
                Ok(Outcome::AnsweredWithIntent(answer, intent)) => {
                    let primary = PlayerId::new(intent.primary.clone());
                    let decision = match &primary {
                        Ok(primary) => self.peek_decision(primary, &intent.attempt).await,
                        Err(e) => Err(Error::Internal(e.to_string())),
                    };
                    match decision {
                        Ok(Some(Decision::Commit)) => {
                            match self.resolve_intent(player, &intent).await {
                                Ok(Resolution::Finished(..) | Resolution::NotHeld) => freed = true,
                                Ok(Resolution::Live) => {}
                                Err(e) => {
                                    tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot apply a committed intent");
                                }
                            }
                            Err(locked(&intent, "committed and is being applied"))
                        }
                        // Aborted: nothing of it applies, the answer stands.
                        Ok(Some(Decision::Abort)) => answer,
                        // No decision: the answer was judged against the last applied state,
                        // which is still the player's while it holds the intent (a commit
                        // written after the look is ordered after the answer). If the intent
                        // is gone since, its commit may have been applied and its record
                        // forgotten: judged again.
                        Ok(None) => match self.holds(player, &intent.attempt).await {
                            Ok(true) => {
                                if intent.expired {
                                    if let Err(e) = self.resolve_intent(player, &intent).await {
                                        tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot resolve an expired intent");
                                    }
                                }
                                answer
                            }
                            Ok(false) => Err(locked(&intent, "finished meanwhile")),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(Error::Unavailable {
                            shard: None,
                            reason: format!(
                                "the player holds an intent whose decision cannot be read: {e}"
                            ),
                        }),
                    }
                }
            };
            (position, result, freed)
        });
        join_all(settled).await
    }
}
