//! The trade coordinator: one attempt of a multi-player transaction, step by step, and the
//! retry loop around attempts. The decision record, finishing a participant and resolving
//! intents left behind live one layer down, in [`super::intents`]; the protocol and its
//! invariants are in `docs/design/trades.md`.
//!
//! [`MultiAttempt`] runs one attempt step by step — [`MultiAttempt::prepare`],
//! [`MultiAttempt::decide`], [`MultiAttempt::finish`], [`MultiAttempt::forget`] — so a test
//! can stop it between any two (as a coordinator that dies would) and check that resolvers
//! finish the work. [`Store::execute_multi`] runs attempts to the end, retrying within the
//! store's retry deadline.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use futures_util::future::join_all;
use redis::Value as RedisValue;
use tokio::time::Instant;

use crate::error::Error;
use crate::keys;
use crate::model::{Committed, MultiCommitted, MultiTransaction, PlayerId};
use crate::script::{self, IntentRef, TradeReply};
use crate::shard_map::ShardIndex;
use crate::slot::Slot;

use super::intents::{Decision, Finished, Resolution, Waited, COMMIT_CLOCK_SLACK_MS};
use super::road::{Command, Effect};
use super::{Store, RESTORE_REQUEST_AGAIN, RETRY_BACKOFF};

/// How often a trade waiting for an archived participant's restore is tried again. Less
/// briskly than a single write polls: each attempt stages the others' intents and rolls
/// them back.
const TRADE_RESTORE_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Stops the process at `step` (`multi:after-prepare`; `multi:after-decide`, for a commit with
/// the primary applied and the others not; `multi:after-finish`, every participant finished and
/// the record not forgotten, for a commit in the detached task, so perhaps after the caller was
/// answered) when built with the `failpoints` feature
/// and the environment variable `COLONY_FAILPOINT` names it: how fault tests kill a
/// coordinating gateway exactly between two steps. Without the feature it does nothing.
fn failpoint(step: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("COLONY_FAILPOINT").is_ok_and(|named| named == step) {
        tracing::error!(step, "failpoint: stopping the process");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = step;
}

impl Store {
    /// Runs a multi-player transaction to the end: every participant's operations apply, or
    /// none do. Attempts that end with nothing applied for a retryable reason (a participant
    /// locked or unreachable, the attempt aborted by a resolver) are tried again, as new
    /// attempts with the same key, with backoff until `redis.retry_deadline_ms`. An attempt
    /// whose outcome is unknown is also tried again: the key is judged at the primary, so a
    /// committed one is replayed, never applied twice.
    pub async fn execute_multi(&self, txn: MultiTransaction) -> Result<MultiCommitted, Error> {
        self.execute_multi_sharing(txn, 1).await
    }

    /// [`Store::execute_multi`], its reads taking a share of the read budget as one of
    /// `readers` entries of a request that read.
    pub(super) async fn execute_multi_sharing(
        &self,
        txn: MultiTransaction,
        readers: usize,
    ) -> Result<MultiCommitted, Error> {
        let call = Arc::new(MultiCall::new(self, txn)?);
        let deadline = Instant::now() + self.inner.settings.retry_deadline();
        let mut attempt_number = 0u32;
        let mut last: Option<Result<MultiCommitted, Error>> = None;
        let mut earlier = Vec::new();
        // Restores go out on the first ARCHIVED answer, then again only now and then (in case
        // the archiver lost one), as for single writes.
        let mut restore_requested: Option<Instant> = None;
        loop {
            let mut attempt = MultiAttempt::of(self, call.clone());
            attempt.readers = readers.max(1);
            attempt.earlier = earlier.clone();
            let result = attempt.run().await;
            // Each attempt's end, for following one trade through a failover in the logs
            // (`COLONY_LOG=colony::store=debug`).
            match &result {
                Ok(done) => tracing::debug!(
                    attempt = %attempt.id,
                    primary = %attempt.primary().as_str(),
                    replayed = done.replayed,
                    decision = ?attempt.decision,
                    "trade attempt committed"
                ),
                Err(e) => tracing::debug!(
                    attempt = %attempt.id,
                    primary = %attempt.primary().as_str(),
                    decision = ?attempt.decision,
                    error = %e,
                    "trade attempt ended without committing"
                ),
            }
            earlier.push(attempt.id.clone());
            // Polled for only when the attempt's answer is the archived player: another
            // refusal (a participant locked, a shard down) backs off as usual.
            let restoring = matches!(&result, Err(Error::InParticipant { error, .. })
                if matches!(**error, Error::Archived { .. }));
            let result = Error::after_attempts(result, last.as_ref());
            let retry = matches!(&result, Err(e) if e.is_retryable());
            let archived = std::mem::take(&mut attempt.archived);
            if retry
                && !archived.is_empty()
                && restore_requested.is_none_or(|at| at.elapsed() >= RESTORE_REQUEST_AGAIN)
            {
                self.request_trade_restores(&call, &archived).await;
                restore_requested = Some(Instant::now());
            }
            let now = Instant::now();
            if !retry || now >= deadline {
                return result.map_err(not_restored_in_time);
            }
            last = Some(result);
            self.count_multi_retry(&call);
            // A restore takes the archiver a few milliseconds: polled for, not backed off
            // from as from a failing shard.
            let pause = if restoring {
                TRADE_RESTORE_POLL.min(deadline - now)
            } else {
                RETRY_BACKOFF.delay_within(attempt_number, deadline - now)
            };
            tokio::time::sleep(pause).await;
            attempt_number += 1;
        }
    }

    /// Asks the archiver to restore the participants of `call` at `positions`, wholly: a
    /// trade's scripts refuse a player whose public part alone is back.
    async fn request_trade_restores(&self, call: &MultiCall, positions: &[usize]) {
        let requests = positions.iter().filter_map(|&i| {
            let participant = call.txn.participants.get(i)?;
            let request = keys::restore_request(&participant.player, true);
            Some((*call.slots.get(i)?, request))
        });
        self.push_restore_requests(&self.shard_map(), requests)
            .await;
    }

    fn count_multi_retry(&self, call: &MultiCall) {
        self.inner
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let (Some(observer), Some(&slot)) = (&self.inner.observer, call.slots.first()) {
            let shard = self.shard_map().shard_for_slot(slot);
            observer.retried(&self.shard_name(shard), 1);
        }
    }
}

/// What step 1 found: every participant other than the primary prepared — or not, and then
/// what the primary's judge of the key said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// Every other participant holds this attempt's intent: commit next (the commit judges
    /// the key).
    AllStaged,
    /// The key was applied before: the stored result. The other participants may have
    /// staged intents of this attempt meanwhile: they are rolled back, then the stored result
    /// is the answer.
    Replayed(MultiCommitted),
    /// A participant refused or could not be reached: abort next. The error is the answer.
    Refused(Error),
}

/// Now, in ms since the Unix epoch, by this machine's clock (a commit's deadline is compared
/// with the primary's clock, not with tokio's).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A multi-player transaction as every attempt of one call shares it: validated, each
/// participant's slot found, and its fingerprint taken, once. (Each attempt routes the slots
/// by the map of its start: a Redis Cluster's map changes when a slot moves.)
struct MultiCall {
    txn: MultiTransaction,
    fingerprint: String,
    /// Per participant, in order: its slot.
    slots: Vec<Slot>,
}

impl MultiCall {
    fn new(store: &Store, txn: MultiTransaction) -> Result<MultiCall, Error> {
        txn.validate(&store.inner.limits)?;
        let slots = txn
            .participants
            .iter()
            .map(|p| keys::player_slot(&p.player))
            .collect();
        Ok(MultiCall {
            fingerprint: script::multi_fingerprint(&txn),
            txn,
            slots,
        })
    }
}

/// One attempt of a multi-player transaction, run step by step.
pub struct MultiAttempt<'s> {
    store: &'s Store,
    call: Arc<MultiCall>,
    id: String,
    /// Per participant other than the primary (index 0 unused), what its prepare answered,
    /// once it did.
    staged: Vec<Option<(Committed, Vec<u8>)>>,
    decision: Option<Decision>,
    /// The primary's result, once the commit script applied it.
    primary_result: Option<Committed>,
    /// Why the commit script wrote no commit, when it refused (a failed check on the
    /// primary, its deadline passed, a resolver's abort, the primary locked).
    primary_refusal: Option<Error>,
    /// The stored result, when the commit script found the key applied before.
    replayed: Option<MultiCommitted>,
    /// Entries of the request that read, sharing its read budget evenly.
    readers: usize,
    /// The ids of the attempts of the same call before this one.
    earlier: Vec<String>,
    /// The participants (by position) this attempt found archived: the retry loop asks the
    /// archiver to restore them.
    archived: Vec<usize>,
    /// The commit's deadline, ms since the Unix epoch by this machine's clock (the fence,
    /// `docs/design/trades.md`).
    deadline_ms: u64,
}

impl<'s> MultiAttempt<'s> {
    /// A new attempt at `txn` (validated here), with a fresh random id.
    pub fn new(store: &'s Store, txn: MultiTransaction) -> Result<MultiAttempt<'s>, Error> {
        Ok(MultiAttempt::of(
            store,
            Arc::new(MultiCall::new(store, txn)?),
        ))
    }

    /// The next attempt of `call`, with a fresh random id.
    fn of(store: &'s Store, call: Arc<MultiCall>) -> MultiAttempt<'s> {
        let random = RandomState::new().hash_one(Instant::now());
        let participants = call.txn.participants.len();
        MultiAttempt {
            store,
            call,
            id: format!("{random:016x}"),
            staged: vec![None; participants],
            decision: None,
            primary_result: None,
            primary_refusal: None,
            replayed: None,
            readers: 1,
            earlier: Vec::new(),
            archived: Vec::new(),
            deadline_ms: unix_ms() + store.inner.settings.intent_lease_ms + COMMIT_CLOCK_SLACK_MS,
        }
    }

    /// Sets the commit's deadline, in ms since the Unix epoch (by default the attempt's start
    /// plus the intents' lease plus 2 s): tests set one already passed, to see the primary
    /// refuse the commit.
    pub fn set_commit_deadline_ms(&mut self, unix_ms: u64) {
        self.deadline_ms = unix_ms;
    }

    /// The attempt's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The primary participant.
    pub fn primary(&self) -> &PlayerId {
        &self.call.txn.participants[0].player
    }

    /// Every participant's player, in order (the primary first).
    fn players(&self) -> Vec<PlayerId> {
        self.call
            .txn
            .participants
            .iter()
            .map(|p| p.player.clone())
            .collect()
    }

    /// Sends step 1 to the participants at `positions` — the others' prepares, and the
    /// primary's judge of the key (position 0) — the participants of one shard in one call
    /// (one round trip, and the intents acknowledged on the link that wrote them), the shards
    /// concurrently; answers each position's outcome.
    async fn prepare_positions(
        &self,
        positions: Vec<usize>,
    ) -> Vec<(usize, Result<TradeReply, Error>)> {
        let store = self.store;
        let bounds = store.bounds(self.readers.max(1));
        let primary = self.primary().clone();
        let lease_ms = store.inner.settings.intent_lease_ms;
        let mut plan: BTreeMap<ShardIndex, Vec<usize>> = BTreeMap::new();
        let map = store.shard_map();
        for i in positions {
            plan.entry(map.shard_for_slot(self.call.slots[i]))
                .or_default()
                .push(i);
        }
        let call = &*self.call;
        let (txn, id) = (&call.txn, self.id.as_str());
        let runs = plan.into_iter().map(|(shard, positions)| {
            let bounds = &bounds;
            let primary = &primary;
            async move {
                let commands = positions
                    .iter()
                    .map(|&i| {
                        if i == 0 {
                            return store.judge_command(
                                primary,
                                id,
                                &txn.idempotency_key,
                                &call.fingerprint,
                            );
                        }
                        let prepare = script::Prepare {
                            attempt: id,
                            primary,
                            lease_ms,
                        };
                        Command::transaction(
                            script::encode_prepare(
                                &txn.participants[i],
                                call.slots[i],
                                &prepare,
                                bounds,
                            ),
                            Effect::Writes,
                        )
                    })
                    .collect();
                let answer = store.send(shard, commands).await;
                let acknowledged = answer.acknowledgement();
                positions
                    .into_iter()
                    .zip(answer.replies)
                    .map(|(i, reply)| {
                        let outcome = reply.and_then(|reply| match reply {
                            RedisValue::BulkString(s) if i == 0 && s == b"NEW" => {
                                Ok(TradeReply::New)
                            }
                            reply => script::decode_trade(
                                &txn.participants[i].operations,
                                &txn.participants,
                                &reply,
                            ),
                        });
                        // Acted on, so acknowledged: a staged intent, a replay, and the
                        // judge's "new", which lets another participant's refusal be final
                        // (one from a master woken after its failover could be wrong).
                        let outcome = match outcome {
                            Ok(answer @ (TradeReply::Staged { .. } | TradeReply::Replay(_))) => {
                                acknowledged.clone().map(|()| answer)
                            }
                            // The judge wrote nothing of the trade: unacknowledged, the key
                            // is merely not judged (UNAVAILABLE; an earlier attempt's UNKNOWN
                            // still stands), not an outcome unknown.
                            Ok(TradeReply::New) => match &acknowledged {
                                Ok(()) => Ok(TradeReply::New),
                                Err(e) => Err(Error::Unavailable {
                                    shard: store.shard_name(shard).to_string().into(),
                                    reason: format!(
                                        "the primary found the key new, but not as a master \
                                         its replicas follow: {e}"
                                    ),
                                }),
                            },
                            // The primary's refusal of the key (too old, a mismatch, no room
                            // for its client) is final whatever the others say: likewise.
                            Err(e) if i == 0 => Err(e.unless_unacknowledged(&acknowledged)),
                            other => other,
                        };
                        (i, outcome)
                    })
                    .collect::<Vec<_>>()
            }
        });
        join_all(runs).await.into_iter().flatten().collect()
    }

    /// Step 1: prepares every participant but the primary, the participants of one shard in
    /// one call (so in one round trip), the shards concurrently. When one refuses (or stays
    /// locked, or cannot be reached), the primary judges the key before that is the answer:
    /// a key applied before replays, whatever the others said.
    pub async fn prepare(&mut self) -> PrepareOutcome {
        // A participant this store is still applying for a trade it answered (most often the
        // caller's previous trade): waited for first, locally, rather than met as an intent.
        for p in &self.call.txn.participants {
            self.store.wait_detached_finish(&p.player, None).await;
        }
        let mut outcomes = self
            .prepare_positions((1..self.call.slots.len()).collect())
            .await;
        self.prepare_again_where_finished(&mut outcomes).await;
        let all_staged = outcomes
            .iter()
            .all(|(_, outcome)| matches!(outcome, Ok(TradeReply::Staged { .. })));
        if !all_staged {
            let mut judged = self.prepare_positions(vec![0]).await;
            self.prepare_again_where_finished(&mut judged).await;
            outcomes.extend(judged);
        }
        self.prepare_outcome(outcomes)
    }

    /// Of `outcomes`, those that met another attempt's intent: a decided one is finished now
    /// (so the next attempt need not wait for its lease), and so is one of this key's own
    /// earlier attempts, which nobody else is running any more (aborted unless it committed).
    /// Most often it is the last trade's participant, applied after that trade was answered:
    /// once finished, the position is sent again at once, in this attempt, instead of the
    /// attempt failing LOCKED and waiting out a backoff.
    async fn prepare_again_where_finished(
        &self,
        outcomes: &mut [(usize, Result<TradeReply, Error>)],
    ) {
        let mut again = Vec::new();
        for (i, outcome) in outcomes.iter() {
            let Ok(TradeReply::Locked(intent)) = outcome else {
                continue;
            };
            let player = &self.call.txn.participants[*i].player;
            if self
                .store
                .wait_detached_finish(player, Some(&intent.attempt))
                .await
            {
                again.push(*i);
                continue;
            }
            let own = self.earlier.contains(&intent.attempt);
            let settled = if own {
                self.store.settle_own_attempt(player, intent).await
            } else {
                self.store.resolve_intent(player, intent).await
            };
            tracing::debug!(
                attempt = %self.id,
                player = %player.as_str(),
                met = %intent.attempt,
                own,
                settled = ?settled,
                "a trade's prepare met another attempt's intent"
            );
            match settled {
                Ok(Resolution::Finished(..) | Resolution::NotHeld) => again.push(*i),
                Ok(Resolution::Live) => {}
                Err(e) => {
                    tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot resolve an intent");
                }
            }
        }
        if !again.is_empty() {
            for (i, outcome) in self.prepare_positions(again).await {
                if let Some(slot) = outcomes.iter_mut().find(|(j, _)| *j == i) {
                    slot.1 = outcome;
                }
            }
        }
    }

    /// What step 1's `outcomes` (the others', and the primary's judge when it was asked)
    /// amount to.
    fn prepare_outcome(
        &mut self,
        outcomes: Vec<(usize, Result<TradeReply, Error>)>,
    ) -> PrepareOutcome {
        let mut refused: Option<(usize, Error)> = None;
        let mut replayed = None;
        // Why the primary could not judge the key, if it could not.
        let mut primary_unjudged: Option<Error> = None;
        // A refusal of the key itself (a mismatch, too old): the answer, whatever the others
        // say.
        let mut key_refused: Option<Error> = None;
        for (i, outcome) in outcomes {
            let e = match outcome {
                Ok(TradeReply::Staged { committed, packed }) if i > 0 => {
                    self.staged[i] = Some((committed, packed));
                    continue;
                }
                Ok(TradeReply::New) if i == 0 => continue,
                Ok(TradeReply::Replay(results)) if i == 0 => {
                    replayed = Some(MultiCommitted {
                        participants: results,
                        replayed: true,
                    });
                    continue;
                }
                Ok(TradeReply::Locked(intent)) => {
                    // Resolved above where it could be: still held, or held again.
                    let player = &self.call.txn.participants[i].player;
                    Error::Locked {
                        player: player.as_str().to_string(),
                        reason: format!(
                            "by attempt {} (primary {:?})",
                            intent.attempt, intent.primary
                        ),
                    }
                }
                Ok(other) => Error::Internal(format!("step 1 of a trade answered {other:?}")),
                Err(Error::Locked { player, reason }) if player.is_empty() => Error::Locked {
                    player: self.call.txn.participants[i].player.as_str().to_string(),
                    reason,
                },
                Err(e) => e,
            };
            if matches!(e, Error::Archived { .. }) {
                self.archived.push(i);
            }
            if i == 0 {
                if e.is_retryable() {
                    primary_unjudged = Some(e.clone());
                } else {
                    key_refused = Some(e.clone());
                }
            }
            // Keep the most telling refusal: one of a participant's operations over a
            // transport failure or a lock; of those, the first participant's in order.
            let replace = match &refused {
                None => true,
                Some((j, previous)) => {
                    (previous.is_retryable() && !e.is_retryable())
                        || (previous.is_retryable() == e.is_retryable() && i < *j)
                }
            };
            if replace {
                refused = Some((i, e));
            }
        }
        // The primary judges the key before anything else: its replay or its refusal of the
        // key is the answer. While it could not (locked, or not reached), the key may be one
        // applied before, whose replay is the answer whatever the other participants say
        // now: no other refusal is final yet.
        if let Some(result) = replayed {
            return PrepareOutcome::Replayed(result);
        }
        if let Some(e) = key_refused {
            return PrepareOutcome::Refused(in_participant(0, e));
        }
        if let Some(unjudged) = primary_unjudged {
            if refused.as_ref().is_some_and(|(_, e)| !e.is_retryable()) {
                refused = Some((0, unjudged));
            }
        }
        match refused {
            None => PrepareOutcome::AllStaged,
            Some((i, e)) => PrepareOutcome::Refused(in_participant(i, e)),
        }
    }

    /// Step 2, `commit`: the primary's commit script runs the primary's operations, writes
    /// the commit and applies the primary, in one script on the primary's slot, unless it
    /// refuses (a failed check on the primary, the key applied before, its deadline passed, the
    /// attempt aborted by a resolver); returns the decision that holds: `Commit` once the
    /// commit (and with it the primary's apply) is acknowledged, `Abort` when the script
    /// refused. The others are applied by [`MultiAttempt::finish`] (or whoever meets their
    /// intents). Without `commit`, the attempt aborts: no record is written, since only this
    /// coordinator writes a commit and it will not (a resolver that meets an intent left finds
    /// none, and aborts it once its lease passed).
    pub async fn decide(&mut self, commit: bool) -> Result<Decision, Error> {
        if !commit {
            self.decision = Some(Decision::Abort);
            return Ok(Decision::Abort);
        }
        let held = self.commit().await?;
        self.decision = Some(held);
        Ok(held)
    }

    /// The primary's commit script; see [`MultiAttempt::decide`]. Sent again once when the
    /// primary was found locked by another attempt's intent that could be finished at once
    /// (one this store is applying, or a decided one): a primary that is also other trades'
    /// participant is not starved by intents staged on it while the others prepared.
    async fn commit(&mut self) -> Result<Decision, Error> {
        let store = self.store;
        let call = self.call.clone();
        let players = self.players();
        let replies: Vec<Vec<u8>> = self.staged[1..]
            .iter()
            .map(|s| s.as_ref().map(|(_, packed)| packed.clone()))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Internal("a commit before every prepare".into()))?;
        let primary = &call.txn.participants[0];
        let shard = store.shard_map().shard_for_slot(call.slots[0]);
        let mut round = 0;
        loop {
            let commit = script::Commit {
                attempt: &self.id,
                key: &call.txn.idempotency_key,
                fingerprint: &call.fingerprint,
                participants: &players,
                replies: &replies,
                deadline_ms: self.deadline_ms,
            };
            let invocation = script::encode_commit(
                primary,
                call.slots[0],
                &commit,
                &store.bounds(self.readers.max(1)),
            );
            let mut answer = store
                .send(
                    shard,
                    vec![Command::transaction(invocation, Effect::Writes)],
                )
                .await;
            let reply = answer
                .replies
                .pop()
                .unwrap_or_else(|| Err(Error::Internal("the commit answered nothing".into())));
            let reply = match reply {
                Ok(reply) => reply,
                // Not sent: nothing written.
                Err(e) if !e.may_have_applied() => {
                    self.primary_refusal = Some(in_participant(0, e));
                    return Ok(Decision::Abort);
                }
                // Sent, no answer: whether the commit was written is asked once more.
                Err(e) => return self.decision_after_lost_answer(e).await,
            };
            let decoded = script::decode_trade(&primary.operations, &call.txn.participants, &reply);
            let refusal = match decoded {
                Ok(TradeReply::Committed(result)) => {
                    self.primary_result = Some(result);
                    return match answer.acknowledgement() {
                        Ok(()) => Ok(Decision::Commit),
                        // Written on the master, its replication not confirmed: read again
                        // (the read writes the record again and is acknowledged).
                        Err(e) => self.decision_after_lost_answer(e).await,
                    };
                }
                // A commit found: only this attempt's own commit script writes one, so the
                // primary was applied with it, its result unknown here (acted on once
                // acknowledged). An abort found (a resolver's) is acted on at once: only this
                // coordinator could write a commit, and it will not.
                Ok(TradeReply::Decided(true)) => {
                    answer.acknowledgement()?;
                    return Ok(Decision::Commit);
                }
                Ok(TradeReply::Decided(false)) => Error::Unavailable {
                    shard: None,
                    reason: format!(
                        "attempt {} was aborted by a resolver (its coordinator slower than a lease); nothing applied",
                        self.id
                    ),
                },
                Ok(TradeReply::Replay(participants)) => {
                    // The key was applied before, by another attempt: its replay.
                    match answer.acknowledgement() {
                        Ok(()) => {
                            self.replayed = Some(MultiCommitted {
                                participants,
                                replayed: true,
                            });
                            return Ok(Decision::Abort);
                        }
                        Err(e) => e,
                    }
                }
                Ok(TradeReply::TooLate) => {
                    // Slow, or this machine's clock is behind the primary's: every commit
                    // of the latter is refused, so it is said loudly.
                    tracing::warn!(
                        attempt = %self.id,
                        deadline_ms = self.deadline_ms,
                        "a trade's commit reached its primary after its deadline by the primary's clock; if this repeats, this machine's clock is behind the Redis servers'"
                    );
                    Error::Unavailable {
                        shard: None,
                        reason: format!(
                            "attempt {} reached the primary after its commit deadline: nothing applied",
                            self.id
                        ),
                    }
                }
                Ok(TradeReply::Locked(intent)) => {
                    if round == 0 && self.finish_intent_met(intent.clone()).await {
                        round += 1;
                        continue;
                    }
                    Error::Locked {
                        player: self.primary().as_str().to_string(),
                        reason: format!(
                            "by attempt {} (primary {:?})",
                            intent.attempt, intent.primary
                        ),
                    }
                }
                Ok(other) => return Err(Error::Internal(format!("the commit answered {other:?}"))),
                // A refusal of the primary's operations or key: nothing written, and final
                // once acknowledged. An archived primary (archived while the others
                // prepared) is restored for the retry.
                Err(e) => {
                    if matches!(e, Error::Archived { .. }) {
                        self.archived.push(0);
                    }
                    e.unless_unacknowledged(&answer.acknowledgement())
                }
            };
            self.primary_refusal = Some(in_participant(0, refusal));
            return Ok(Decision::Abort);
        }
    }

    /// Whether the primary's intent of another attempt, met by the commit, is gone now: one
    /// this store is applying (waited for, locally), or one the resolver finished.
    async fn finish_intent_met(&self, intent: IntentRef) -> bool {
        let primary = self.primary();
        if self
            .store
            .wait_detached_finish(primary, Some(&intent.attempt))
            .await
        {
            return true;
        }
        matches!(
            self.store.resolve_intent(primary, &intent).await,
            Ok(Resolution::Finished(..) | Resolution::NotHeld)
        )
    }

    /// The decision after the commit's answer (or its acknowledgement) was lost: read once
    /// more, acknowledged. A commit found was written by this attempt's commit script, with
    /// the primary's apply.
    async fn decision_after_lost_answer(&mut self, lost: Error) -> Result<Decision, Error> {
        match self.store.multi_decision(self.primary(), &self.id).await {
            Ok(Some(decision)) => Ok(decision),
            _ => Err(Error::Unknown {
                shard: None,
                reason: format!("the decision of attempt {} is unknown: {lost}", self.id),
            }),
        }
    }

    /// Step 3: applies (a commit) or rolls back (an abort) every participant but the primary
    /// (which the commit script applied, and which holds no intent), each shard's
    /// participants in one call, the shards concurrently. A commit answers the whole result;
    /// an abort answers UNAVAILABLE (nothing applied).
    pub async fn finish(&mut self) -> Result<MultiCommitted, Error> {
        let Some(decision) = self.decision else {
            return Err(Error::Internal("finish before a decision".into()));
        };
        let players = self.players();
        let finished = finish_others_now(self.store, &players, &self.id, decision).await;
        if decision == Decision::Abort {
            return Err(Error::Unavailable {
                shard: None,
                reason: format!(
                    "attempt {} of the multi-player transaction was aborted; nothing applied",
                    self.id
                ),
            });
        }
        for (i, outcome) in finished.into_iter().enumerate() {
            if let Err(e) = applied(&self.id, outcome) {
                return Err(in_participant(i + 1, e));
            }
        }
        self.result()
    }

    /// The whole result of a committed attempt: the primary's from its commit, the others'
    /// from what they staged. UNKNOWN when the commit's answer was lost (a retry of the key
    /// replays it).
    fn result(&self) -> Result<MultiCommitted, Error> {
        let Some(primary) = self.primary_result.clone() else {
            return Err(Error::Unknown {
                shard: None,
                reason: format!(
                    "attempt {} committed, its answer lost: a retry of the key replays it",
                    self.id
                ),
            });
        };
        let others = self.staged[1..]
            .iter()
            .map(|s| s.as_ref().map(|(committed, _)| committed.clone()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Internal("a committed attempt missing a prepare".into()))?;
        let mut participants = vec![primary];
        participants.extend(others);
        Ok(MultiCommitted {
            participants,
            replayed: false,
        })
    }

    /// The rest of step 3 once the caller can be answered: the commit and the primary's
    /// apply were acknowledged (so was every intent, in step 1), and the outcome is durable.
    /// Applies the other participants, then forgets the commit record, in a detached task —
    /// at most [`FINISHING_AT_ONCE`](super::intents::FINISHING_AT_ONCE) at a time; past that, here, before answering — and
    /// answers the whole result.
    async fn answer_and_finish_others(&self) -> Result<MultiCommitted, Error> {
        let result = self.result()?;
        let players = self.players();
        match self.store.inner.finishing.clone().try_acquire_owned() {
            Ok(permit) => {
                let finishing = finish_others(
                    self.store.clone(),
                    players.clone(),
                    self.id.clone(),
                    Waited::Detached,
                );
                let others = players[1..].to_vec();
                let ended = self.store.inner.detached.begin(&self.id, &others);
                let store = self.store.clone();
                let attempt = self.id.clone();
                tokio::spawn(async move {
                    finishing.await;
                    store.inner.detached.end(&attempt, &others);
                    drop(ended);
                    drop(permit);
                });
            }
            // Back-pressure: this caller waits for its own applies, on calls of their own
            // (not queued behind the detached ones it is waiting out).
            Err(_) => {
                finish_others(self.store.clone(), players, self.id.clone(), Waited::Now).await
            }
        }
        Ok(result)
    }

    /// Step 4: forgets the decision record once every participant was applied.
    pub async fn forget(&self) -> Result<(), Error> {
        self.store
            .forget_decision(self.primary(), &self.id, Waited::Now)
            .await
    }

    /// Every step in order: prepare (and judge the primary's key on a refusal); the commit when every
    /// participant staged, else an abort; apply or roll back the others; forget a commit
    /// record once applied everywhere.
    pub async fn run(&mut self) -> Result<MultiCommitted, Error> {
        let prepared = self.prepare().await;
        failpoint("multi:after-prepare");
        let answer = match prepared {
            PrepareOutcome::AllStaged => None,
            PrepareOutcome::Replayed(result) => Some(Ok(result)),
            PrepareOutcome::Refused(e) => Some(Err(e)),
        };
        if let Some(answer) = answer {
            // Nothing of this attempt may apply: what the others staged is rolled back (no
            // record: only this coordinator writes a commit, and it will not).
            self.decision = Some(Decision::Abort);
            let _ = self.finish().await;
            return answer;
        }
        let decided = self.decide(true).await?;
        failpoint("multi:after-decide");
        match decided {
            Decision::Commit if self.primary_result.is_some() => {
                self.answer_and_finish_others().await
            }
            Decision::Commit => {
                // Committed, the primary's result lost with the answer: the others are
                // applied here, the caller waiting, and its retry of the key replays the
                // result (UNKNOWN, below). Every apply acknowledged: the record can go.
                let players = self.players();
                let finished = finish_others_now(self.store, &players, &self.id, decided).await;
                failpoint("multi:after-finish");
                if finished.into_iter().all(|f| applied(&self.id, f).is_ok()) {
                    self.store.forget_later(self.primary(), &self.id);
                }
                self.result()
            }
            Decision::Abort => {
                let _ = self.finish().await;
                match (self.replayed.take(), self.primary_refusal.take()) {
                    (Some(replayed), _) => Ok(replayed),
                    (None, Some(refused)) => Err(refused),
                    (None, None) => Err(Error::Unavailable {
                        shard: None,
                        reason: format!(
                            "attempt {} of the multi-player transaction was aborted by a \
                             resolver; nothing applied",
                            self.id
                        ),
                    }),
                }
            }
        }
    }
}

/// Finishes every participant but the primary (`players[1..]`) by `decision` for `attempt`,
/// the caller waiting, each shard's participants in one call, the shards concurrently. The
/// answers are in the order of `players[1..]`.
async fn finish_others_now(
    store: &Store,
    players: &[PlayerId],
    attempt: &str,
    decision: Decision,
) -> Vec<Result<Finished, Error>> {
    let positions: Vec<usize> = (1..players.len()).collect();
    finish_positions(store, players, &positions, attempt, decision, Waited::Now)
        .await
        .into_iter()
        .map(|(_, answer)| answer)
        .collect()
}

/// Finishes the participants of `players` at `positions` — never the primary (index 0),
/// which its commit applied and which holds no intent of this version's attempts — each
/// shard's in one call, the shards concurrently; answers each position's outcome, in the
/// order of `positions`.
async fn finish_positions(
    store: &Store,
    players: &[PlayerId],
    positions: &[usize],
    attempt: &str,
    decision: Decision,
    waited: Waited,
) -> Vec<(usize, Result<Finished, Error>)> {
    let map = store.shard_map();
    let mut plan: BTreeMap<ShardIndex, Vec<usize>> = BTreeMap::new();
    for &i in positions {
        plan.entry(map.shard_for_player(&players[i]))
            .or_default()
            .push(i);
    }
    let runs = plan.into_iter().map(|(shard, on)| async move {
        // None of them is the attempt's primary (a resolver finishing an earlier version's
        // primary intent says so; the coordinator never does).
        let on_shard: Vec<(&PlayerId, bool)> = on.iter().map(|&i| (&players[i], false)).collect();
        let answers = store
            .finish_on_shard(shard, &on_shard, attempt, decision, waited)
            .await;
        on.into_iter().zip(answers).collect::<Vec<_>>()
    });
    let mut answers: BTreeMap<usize, Result<Finished, Error>> =
        join_all(runs).await.into_iter().flatten().collect();
    positions
        .iter()
        .map(|&i| {
            let answer = answers
                .remove(&i)
                .unwrap_or_else(|| Err(Error::Internal("a participant not finished".into())));
            (i, answer)
        })
        .collect()
}

/// Whether a committed participant's finishing applied it (now or before); the error a
/// caller waiting for it gets otherwise (UNKNOWN: the commit stands, a resolver applies it).
fn applied(attempt: &str, outcome: Result<Finished, Error>) -> Result<(), Error> {
    match outcome {
        Ok(Finished::Applied | Finished::AlreadyApplied) => Ok(()),
        Ok(_) => Err(Error::Unknown {
            shard: None,
            reason: format!(
                "attempt {attempt} committed, but the participant held no intent to apply (lost \
                 in a failover?)"
            ),
        }),
        Err(e) => Err(Error::Unknown {
            shard: None,
            reason: format!("attempt {attempt} committed; applying failed: {e}"),
        }),
    }
}

/// Applies a committed attempt's participants other than the primary (which the commit
/// applied), then forgets the commit record once no participant holds the attempt's intent
/// (each applied, acknowledged, or found without it: every prepare was answered before the
/// commit, so no intent of the attempt can appear later — the sweep's rule). The caller
/// was answered already: a participant failing for a retryable reason (its shard failing
/// over, a slot moving) is tried again with backoff within the store's retry deadline, so
/// that readers and writers of a healthy shard do not have to reach the primary's shard to
/// finish it; one not applied in the end keeps its intent, which whoever meets it applies
/// from the commit record, and the sweep forgets the record later. `waited` is `Detached`
/// in the detached task (its calls coalesced with the other detached calls), `Now` when the
/// caller waits for it (back-pressure).
async fn finish_others(store: Store, players: Vec<PlayerId>, attempt: String, waited: Waited) {
    let deadline = Instant::now() + store.inner.settings.retry_deadline();
    let mut pending: Vec<usize> = (1..players.len()).collect();
    let mut none_held = true;
    let mut round = 0u32;
    while !pending.is_empty() {
        let answers = finish_positions(
            &store,
            &players,
            &pending,
            &attempt,
            Decision::Commit,
            waited,
        )
        .await;
        if round == 0 {
            failpoint("multi:after-finish");
        }
        let mut again = Vec::new();
        for (i, outcome) in answers {
            let player = &players[i];
            match outcome {
                Ok(Finished::Applied | Finished::AlreadyApplied) => {}
                Ok(_) => {
                    // Applied by someone else who met the intent and overwritten since by a
                    // later attempt's apply (the mark `y` holds the last attempt only) — or,
                    // in the naive profile, an intent a failover lost. Not told apart here;
                    // either way it holds no intent the record is needed for.
                    tracing::debug!(
                        attempt = %attempt,
                        player = %player.as_str(),
                        "a committed trade's participant held no intent to apply any more"
                    );
                }
                Err(e) if e.is_retryable() && Instant::now() < deadline => again.push(i),
                Err(e) => {
                    none_held = false;
                    tracing::warn!(
                        attempt = %attempt,
                        player = %player.as_str(),
                        error = %e,
                        "a committed trade's participant is left to whoever meets its intent"
                    );
                }
            }
        }
        if !again.is_empty() {
            let now = Instant::now();
            tokio::time::sleep(
                RETRY_BACKOFF.delay_within(round, deadline.saturating_duration_since(now)),
            )
            .await;
        }
        pending = again;
        round += 1;
    }
    if none_held {
        if let Err(e) = store.forget_decision(&players[0], &attempt, waited).await {
            tracing::debug!(error = %e, "the decision record stays for the sweep");
        }
    }
}

/// A participant still archived when the trade's deadline passed: UNAVAILABLE, saying so
/// (as a single write says it), rather than "restore requested" as if it were still waited.
fn not_restored_in_time(error: Error) -> Error {
    match error {
        Error::InParticipant { participant, error } => match *error {
            Error::Archived { version } => Error::InParticipant {
                participant,
                error: Box::new(Error::Unavailable {
                    shard: None,
                    reason: format!(
                        "the player is archived (version {version}) and the archiver did not \
                         restore it in time"
                    ),
                }),
            },
            error => Error::InParticipant {
                participant,
                error: Box::new(error),
            },
        },
        error => error,
    }
}

fn in_participant(index: usize, error: Error) -> Error {
    match error {
        e @ Error::InParticipant { .. } => e,
        error => Error::InParticipant {
            participant: index as u32,
            error: Box::new(error),
        },
    }
}
