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
use tokio::time::Instant;

use crate::error::Error;
use crate::keys;
use crate::model::{Committed, MultiCommitted, MultiTransaction, PlayerId};
use crate::script::{self, Prepared};
use crate::shard_map::ShardIndex;
use crate::slot::Slot;

use super::intents::{Decider, Decision, Finished};
use super::road::{Command, Effect};
use super::{Store, RETRY_BACKOFF};

/// Stops the process at `step` (`multi:after-prepare`, `multi:after-decide`,
/// `multi:after-first-apply`, `multi:after-finish`) when built with the `failpoints` feature
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
            let result = Error::after_attempts(result, last.as_ref());
            let retry = matches!(&result, Err(e) if e.is_retryable());
            let now = Instant::now();
            if !retry || now >= deadline {
                return result;
            }
            last = Some(result);
            self.count_multi_retry(&call);
            tokio::time::sleep(RETRY_BACKOFF.delay_within(attempt_number, deadline - now)).await;
            attempt_number += 1;
        }
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

/// What preparing every participant found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// Every participant holds this attempt's intent: decide next.
    AllStaged,
    /// The key was applied before: the stored result. The other participants may have
    /// staged intents of this attempt meanwhile: abort next (which rolls them back), then
    /// answer the stored result.
    Replayed(MultiCommitted),
    /// A participant refused or could not be reached: abort next. The error is the answer.
    Refused(Error),
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
    /// Per participant, what its prepare answered, once it did.
    staged: Vec<Option<(Committed, Vec<u8>)>>,
    decision: Option<Decision>,
    /// Entries of the request that read, sharing its read budget evenly.
    readers: usize,
    /// The ids of the attempts of the same call before this one.
    earlier: Vec<String>,
    /// Per participant, whether its prepare got a definite answer (not one that may still
    /// run: a prepare lost on the way can stage an intent later).
    definite: Vec<bool>,
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
            readers: 1,
            earlier: Vec::new(),
            definite: vec![false; participants],
        }
    }

    /// The attempt's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The primary participant.
    pub fn primary(&self) -> &PlayerId {
        &self.call.txn.participants[0].player
    }

    /// Step 1: prepares every participant, the participants of one shard concurrently on
    /// its connection (so in one round trip), the shards concurrently.
    pub async fn prepare(&mut self) -> PrepareOutcome {
        let store = self.store;
        let bounds = store.bounds(self.readers.max(1));
        let primary = self.primary().clone();
        let lease_ms = store.inner.settings.intent_lease_ms;
        let mut plan: BTreeMap<ShardIndex, Vec<usize>> = BTreeMap::new();
        let map = store.shard_map();
        for (i, &slot) in self.call.slots.iter().enumerate() {
            plan.entry(map.shard_for_slot(slot)).or_default().push(i);
        }
        let call = &*self.call;
        let (txn, id) = (&call.txn, self.id.as_str());
        let runs = plan.into_iter().map(|(shard, positions)| {
            let bounds = &bounds;
            let primary = &primary;
            async move {
                // The shard's participants in one call: one round trip, and the intents
                // acknowledged on the link that wrote them.
                let commands = positions
                    .iter()
                    .map(|&i| {
                        let prepare = script::Prepare {
                            attempt: id,
                            primary,
                            lease_ms,
                            key: (i == 0)
                                .then_some((&txn.idempotency_key, call.fingerprint.as_str())),
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
                        let outcome = reply.and_then(|reply| {
                            script::decode_prepare(
                                &txn.participants[i].operations,
                                &txn.participants,
                                &reply,
                            )
                        });
                        let outcome = match outcome {
                            Ok(written @ (Prepared::Staged { .. } | Prepared::Replay(_))) => {
                                acknowledged.clone().map(|()| written)
                            }
                            other => other,
                        };
                        (i, outcome)
                    })
                    .collect::<Vec<_>>()
            }
        });
        let mut refused: Option<(usize, Error)> = None;
        let mut replayed = None;
        // Why the primary could not judge the key, if it could not.
        let mut primary_unjudged: Option<Error> = None;
        for (i, outcome) in join_all(runs).await.into_iter().flatten() {
            self.definite[i] = !matches!(&outcome, Err(e) if e.may_have_applied());
            match outcome {
                Ok(Prepared::Staged { committed, packed }) => {
                    self.staged[i] = Some((committed, packed))
                }
                Ok(Prepared::Replay(results)) => {
                    replayed = Some(MultiCommitted {
                        participants: results,
                        replayed: true,
                    })
                }
                Ok(Prepared::Locked(intent)) => {
                    let player = &self.call.txn.participants[i].player;
                    // A decided intent is finished now, so the next attempt need not wait
                    // for its lease; so is one of this key's own earlier attempts, which
                    // nobody else is running any more (aborted unless it committed).
                    let own = self.earlier.contains(&intent.attempt);
                    let settled = if own {
                        store.settle_own_attempt(player, &intent).await
                    } else {
                        store.resolve_intent(player, &intent).await
                    };
                    tracing::debug!(
                        attempt = %self.id,
                        player = %player.as_str(),
                        met = %intent.attempt,
                        own,
                        settled = ?settled,
                        "a trade's prepare met another attempt's intent"
                    );
                    if let Err(e) = settled {
                        tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot resolve an intent");
                    }
                    let e = Error::Locked {
                        player: player.as_str().to_string(),
                        reason: format!(
                            "by attempt {} (primary {:?})",
                            intent.attempt, intent.primary
                        ),
                    };
                    if i == 0 {
                        primary_unjudged = Some(e.clone());
                    }
                    refused.get_or_insert((i, e));
                }
                Err(e) => {
                    // Refused before the key was judged (not reached, or the answer lost);
                    // a writer waiting on the primary is met after the key was judged.
                    if i == 0 && e.is_retryable() && !matches!(e, Error::Locked { .. }) {
                        primary_unjudged = Some(e.clone());
                    }
                    let e = match e {
                        Error::Locked { player, reason } if player.is_empty() => Error::Locked {
                            player: self.call.txn.participants[i].player.as_str().to_string(),
                            reason,
                        },
                        e => e,
                    };
                    // Keep the most telling refusal: one of a participant's operations over
                    // a transport failure.
                    let replace = match &refused {
                        None => true,
                        Some((_, previous)) => previous.is_retryable() && !e.is_retryable(),
                    };
                    if replace {
                        refused = Some((i, e));
                    }
                }
            }
        }
        // The primary judges the key before anything else. While it could not (locked, or not
        // reached), the key may be one applied before, whose replay is the answer whatever
        // the other participants say now: no other refusal is final yet.
        if let (None, Some(unjudged)) = (&replayed, primary_unjudged) {
            if refused.as_ref().is_some_and(|(_, e)| !e.is_retryable()) {
                refused = Some((0, unjudged));
            }
        }
        match (replayed, refused) {
            (Some(result), _) => PrepareOutcome::Replayed(result),
            (None, None) => PrepareOutcome::AllStaged,
            (None, Some((i, e))) => PrepareOutcome::Refused(in_participant(i, e)),
        }
    }

    /// Step 2: writes the decision — commit when `commit`, else abort — unless one exists,
    /// and returns the one that holds.
    pub async fn decide(&mut self, commit: bool) -> Result<Decision, Error> {
        let wanted = if commit {
            Decision::Commit
        } else {
            Decision::Abort
        };
        let players: Vec<PlayerId> = self
            .call
            .txn
            .participants
            .iter()
            .map(|p| p.player.clone())
            .collect();
        let primary = self.primary().clone();
        let replies: Vec<Vec<u8>> = self
            .staged
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|(_, packed)| packed.clone())
                    .unwrap_or_default()
            })
            .collect();
        let held = self
            .store
            .decide_once(
                Decider::Coordinator,
                &primary,
                &self.id,
                wanted,
                &players,
                &replies,
            )
            .await?;
        self.decision = Some(held);
        Ok(held)
    }

    /// Step 3: applies (a commit) or rolls back (an abort) every participant, the
    /// participants concurrently. A commit answers the whole result; an abort answers
    /// UNAVAILABLE (nothing applied).
    pub async fn finish(&mut self) -> Result<MultiCommitted, Error> {
        let Some(decision) = self.decision else {
            return Err(Error::Internal("finish before a decision".into()));
        };
        let finishes = self.call.txn.participants.iter().enumerate().map(|(i, p)| {
            self.store
                .finish_participant(&p.player, &self.id, decision, i == 0)
        });
        let finished = join_all(finishes).await;
        if decision == Decision::Abort {
            // Every participant rolled back, acknowledged, and no prepare of this attempt can
            // still arrive: no intent of it is left for a resolver to look up, and only this
            // coordinator could ever have written a commit, so the abort record is no longer
            // needed. (One left behind expires.)
            if finished.iter().all(Result::is_ok) && self.definite.iter().all(|d| *d) {
                self.store.forget_later(self.primary(), &self.id);
            }
            return Err(Error::Unavailable {
                shard: None,
                reason: format!(
                    "attempt {} of the multi-player transaction was aborted; nothing applied",
                    self.id
                ),
            });
        }
        let mut participants = Vec::with_capacity(finished.len());
        for (i, outcome) in finished.into_iter().enumerate() {
            match (outcome, &self.staged[i]) {
                (Ok(Finished::Applied | Finished::AlreadyApplied), Some((committed, _))) => {
                    participants.push(committed.clone())
                }
                (Ok(_), _) => {
                    return Err(in_participant(
                        i,
                        Error::Unknown {
                            shard: None,
                            reason: format!(
                                "attempt {} committed, but the participant held no intent to \
                                 apply (lost in a failover?)",
                                self.id
                            ),
                        },
                    ))
                }
                (Err(e), _) => {
                    // Committed: a resolver applies it; the outcome is only unknown to us.
                    return Err(in_participant(
                        i,
                        Error::Unknown {
                            shard: None,
                            reason: format!("attempt {} committed; applying failed: {e}", self.id),
                        },
                    ));
                }
            }
        }
        Ok(MultiCommitted {
            participants,
            replayed: false,
        })
    }

    /// Step 4: forgets the decision record once every participant was applied (or rolled
    /// back).
    pub async fn forget(&self) -> Result<(), Error> {
        self.store.forget_decision(self.primary(), &self.id).await
    }

    /// Every step in order: prepare; a commit when every participant staged, else an abort;
    /// apply or roll back; forget a commit record once applied everywhere.
    pub async fn run(&mut self) -> Result<MultiCommitted, Error> {
        let prepared = self.prepare().await;
        failpoint("multi:after-prepare");
        let (refused, replayed) = match prepared {
            PrepareOutcome::Replayed(result) => (None, Some(result)),
            PrepareOutcome::AllStaged => (None, None),
            PrepareOutcome::Refused(e) => (Some(e), None),
        };
        if let Some(result) = replayed {
            // Nothing of this attempt may apply: abort it, rolling back what the other
            // participants staged, and answer the first result.
            if self.decide(false).await == Ok(Decision::Abort) {
                let _ = self.finish().await;
            }
            return Ok(result);
        }
        let decided = match self.decide(refused.is_none()).await {
            Ok(decision) => decision,
            Err(e) => {
                // Whether the decision was written is unknown: ask once more.
                match self.store.multi_decision(self.primary(), &self.id).await {
                    Ok(Some(decision)) => {
                        self.decision = Some(decision);
                        decision
                    }
                    Ok(None) if refused.is_some() => return Err(refused.unwrap_or(e)),
                    _ => {
                        return Err(Error::Unknown {
                            shard: None,
                            reason: format!("the decision of attempt {} is unknown: {e}", self.id),
                        })
                    }
                }
            }
        };
        failpoint("multi:after-decide");
        #[cfg(feature = "failpoints")]
        if std::env::var("COLONY_FAILPOINT").is_ok_and(|named| named == "multi:after-first-apply") {
            // Applies the primary alone, then stops: a coordinator that died half-way through
            // the applies.
            let first = &self.call.txn.participants[0].player;
            let _ = self
                .store
                .finish_participant(first, &self.id, decided, true)
                .await;
            failpoint("multi:after-first-apply");
        }
        let result = self.finish().await;
        failpoint("multi:after-finish");
        match (decided, &result) {
            (Decision::Commit, Ok(_)) => {
                // Every apply was acknowledged: the commit record is no longer needed.
                // Forgetting it is housekeeping (the sweep does it otherwise): the caller
                // does not wait for it.
                self.store.forget_later(self.primary(), &self.id);
                result
            }
            // Aborted because a participant refused: that refusal is the answer.
            (Decision::Abort, _) => Err(refused.unwrap_or_else(|| {
                result
                    .err()
                    .unwrap_or_else(|| Error::Internal("abort answered OK".into()))
            })),
            (Decision::Commit, Err(_)) => result,
        }
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
