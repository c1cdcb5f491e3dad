//! Transactions across players on different shards: the coordinator's steps, the one
//! resolver of intents left behind, and what a transaction on its own does when it meets an
//! intent. ARCHITECTURE.md, "Transactions across shards", has the protocol and its
//! invariants; the scripts are `multi/apply.lua`, `multi/decide.lua` and `multi/forget.lua`,
//! with the prepare in the transaction script.
//!
//! [`MultiAttempt`] runs one attempt step by step — [`MultiAttempt::prepare`],
//! [`MultiAttempt::decide`], [`MultiAttempt::finish`], [`MultiAttempt::forget`] — so a test
//! can stop it between any two (as a coordinator that dies would) and check that resolvers
//! finish the work. [`Store::execute_multi`] runs attempts to the end, retrying within the
//! store's retry deadline.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;

use futures_util::future::join_all;
use redis::Value as RedisValue;
use tokio::time::Instant;

use crate::config::Acknowledge;
use crate::error::Error;
use crate::keys::{decision_key, PlayerKeys, SlotKeys};
use crate::model::{Committed, MultiCommitted, MultiTransaction, PlayerId, Transaction};
use crate::script::{self, IntentRef, Outcome, Prepared};
use crate::shard_map::ShardIndex;

use super::{Store, RETRY_BACKOFF};

/// Applies or rolls back one participant (`window.lua` in front, for the primary's window).
static APPLY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(concat!(
        include_str!("../window.lua"),
        include_str!("../multi/apply.lua")
    ))
});
/// Writes an attempt's decision once.
static DECIDE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../multi/decide.lua")));
/// Forgets a commit record.
static FORGET: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../multi/forget.lua")));

/// How long an abort record is kept: a resolver that finds none writes it again, so this
/// only saves work.
const ABORT_RECORD_MS: u64 = 86_400_000;

/// An attempt's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every participant applies.
    Commit,
    /// No participant applies.
    Abort,
}

/// What finishing one participant found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The staged writes applied now.
    Applied,
    /// The intent was dropped now.
    RolledBack,
    /// This attempt was applied to the player before.
    AlreadyApplied,
    /// The player holds no intent of this attempt (never prepared, or rolled back before).
    NoIntent,
}

/// What one sweep of a shard did with the intents whose lease had passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Applied or rolled back by their decision.
    pub finished: u64,
    /// Left for the next sweep: their decision could not be read or written now.
    pub unresolved: u64,
}

/// What the resolver did with an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The player holds no intent (of that attempt).
    NotHeld,
    /// The intent's lease has not passed and no decision exists: left alone.
    Live,
    /// Finished by the decision read (or written, as an abort).
    Finished(Decision, Finished),
}

/// A `GET` or script reply as a string, if it is one.
fn text(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        RedisValue::SimpleString(s) => Some(s.clone()),
        RedisValue::Okay => Some("OK".into()),
        _ => None,
    }
}

/// The decision a stored value stands for.
fn decision_of(value: &str) -> Option<Decision> {
    match value.as_bytes().first() {
        Some(b'C') => Some(Decision::Commit),
        Some(b'A') => Some(Decision::Abort),
        _ => None,
    }
}

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

/// The server's clock, in ms.
async fn server_ms(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
    shard: ShardIndex,
) -> Result<u64, Error> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .map_err(|e| store.call_failed(shard, &e, false))?;
    Ok(secs * 1000 + micros / 1000)
}

/// Up to 1000 members of each of `slots`' sorted sets (`key` names it) scored at most `upto`,
/// in one pipelined round trip; one list per slot, in order.
async fn scored_up_to(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
    shard: ShardIndex,
    slots: &[crate::slot::Slot],
    key: impl Fn(crate::slot::Slot) -> String,
    upto: u64,
) -> Result<Vec<Vec<Vec<u8>>>, Error> {
    let mut pipe = redis::pipe();
    for &slot in slots {
        pipe.cmd("ZRANGEBYSCORE")
            .arg(key(slot))
            .arg("-inf")
            .arg(upto)
            .arg("LIMIT")
            .arg(0)
            .arg(1000);
    }
    pipe.query_async(conn)
        .await
        .map_err(|e| store.call_failed(shard, &e, false))
}

/// The participants a commit record names (`<length>:<player id>` each, primary first).
fn commit_participants(value: &str) -> Vec<PlayerId> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some((length, tail)) = rest.split_once(':') {
        let Ok(length) = length.parse::<usize>() else {
            break;
        };
        let Some(id) = tail.get(..length) else {
            break;
        };
        if let Ok(player) = PlayerId::new(id) {
            out.push(player);
        }
        rest = &tail[length..];
    }
    out
}

/// Classifies a failed call to `shard`: refused before running (nothing applied), lost on
/// the way (`sent`: it may have run), or a bug.
fn call_error(shard: &str, e: &redis::RedisError, sent: bool) -> Error {
    let refused = matches!(
        e.code(),
        Some("READONLY" | "OOM" | "BUSY" | "LOADING" | "MASTERDOWN" | "NOREPLICAS" | "TRYAGAIN")
    );
    if refused || !sent {
        return Error::Unavailable {
            shard: shard.to_string(),
            reason: e.to_string(),
        };
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
    {
        return Error::Unknown {
            shard: shard.to_string(),
            reason: e.to_string(),
        };
    }
    Error::Internal(format!("shard {shard}: {e}"))
}

impl Store {
    /// A failed call to `shard`, classified ([`call_error`]); a failure of the connection
    /// itself, or a master that moved on, makes every connection of the shard stale, so the
    /// next call finds the master again (as a failed pipeline does).
    fn call_failed(&self, shard: ShardIndex, e: &redis::RedisError, sent: bool) -> Error {
        let links = &self.inner.shards[shard.0];
        let moved_on = matches!(e.code(), Some("READONLY" | "NOREPLICAS" | "MASTERDOWN"));
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || moved_on {
            links.invalidate_all();
        }
        call_error(&links.name, e, sent)
    }

    /// The shard of `player` and its name.
    fn shard_of(&self, player: &PlayerId) -> (ShardIndex, String) {
        let shard = self.inner.map.shard_for_player(player);
        (shard, self.inner.shards[shard.0].name.clone())
    }

    /// In replicated mode, waits until `shard`'s replicas have every write this store sent
    /// it before; an answer short of `redis.replicas_to_wait` is UNKNOWN.
    async fn replicated(&self, shard: ShardIndex) -> Result<(), Error> {
        let settings = &self.inner.settings;
        if settings.acknowledge != Acknowledge::Replicated {
            return Ok(());
        }
        let links = &self.inner.shards[shard.0];
        let link = links.get().await?;
        match link.replicated().await {
            Ok(n) if n >= i64::from(settings.replicas_to_wait) => Ok(()),
            Ok(n) => Err(Error::Unknown {
                shard: links.name.clone(),
                reason: format!(
                    "applied on the master but acknowledged by {n} of {} replicas in time",
                    settings.replicas_to_wait
                ),
            }),
            Err(e) => Err(Error::Unknown {
                shard: links.name.clone(),
                reason: format!("WAIT failed: {e}"),
            }),
        }
    }

    /// The decision of `attempt` (primary `primary`), if one was written.
    pub async fn multi_decision(
        &self,
        primary: &PlayerId,
        attempt: &str,
    ) -> Result<Option<Decision>, Error> {
        let shard = self.inner.map.shard_for_player(primary);
        let mut conn = self.master_connection(shard).await?;
        let value: RedisValue = redis::cmd("HGET")
            .arg(decision_key(primary, attempt))
            .arg("d")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.call_failed(shard, &e, false))?;
        Ok(text(&value).as_deref().and_then(decision_of))
    }

    /// Writes `decision` for `attempt` unless one exists; returns the one that holds.
    async fn decide_once(
        &self,
        primary: &PlayerId,
        attempt: &str,
        decision: Decision,
        participants: &[PlayerId],
        replies: &[Vec<u8>],
    ) -> Result<Decision, Error> {
        let shard = self.inner.map.shard_for_player(primary);
        let mut listed = String::new();
        for p in participants {
            listed.push_str(&format!("{}:{}", p.as_str().len(), p.as_str()));
        }
        let mut conn = self.master_connection(shard).await?;
        let mut invocation = DECIDE.prepare_invoke();
        invocation
            .key(decision_key(primary, attempt))
            .key(SlotKeys::of_player(primary).decisions)
            .arg(match decision {
                Decision::Commit => "C",
                Decision::Abort => "A",
            })
            .arg(ABORT_RECORD_MS);
        if decision == Decision::Commit {
            invocation.arg(listed);
            for reply in replies {
                invocation.arg(reply.as_slice());
            }
        }
        let held: RedisValue = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.call_failed(shard, &e, true))?;
        let held = text(&held)
            .as_deref()
            .and_then(decision_of)
            .ok_or_else(|| Error::Internal("the decision script answered no decision".into()))?;
        self.replicated(shard).await?;
        Ok(held)
    }

    /// Applies (a commit) or rolls back (an abort) `attempt` on `player`; `primary` says
    /// whether it is the attempt's primary (whose apply records the key in its window).
    async fn finish_participant(
        &self,
        player: &PlayerId,
        attempt: &str,
        decision: Decision,
        primary: bool,
    ) -> Result<Finished, Error> {
        let shard = self.inner.map.shard_for_player(player);
        let keys = PlayerKeys::new(player);
        let slot = SlotKeys::of_player(player);
        let window = script::Window::of(&self.inner.settings);
        let record = if primary {
            decision_key(player, attempt)
        } else {
            keys.meta.clone()
        };
        let mut invocation = APPLY.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.public)
            .key(&keys.private)
            .key(&keys.intent)
            .key(&slot.active)
            .key(&slot.dirty)
            .key(&keys.clients)
            .key(&slot.intents)
            .key(record)
            .arg(player.as_str())
            .arg(attempt)
            .arg(match decision {
                Decision::Commit => "c",
                Decision::Abort => "a",
            })
            .arg(if self.inner.track_changes { "1" } else { "0" })
            .arg(window.age_ms)
            .arg(window.length)
            .arg(window.client_ttl_ms);
        let mut conn = self.master_connection(shard).await?;
        let outcome: RedisValue = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.call_failed(shard, &e, true))?;
        let finished = match text(&outcome).as_deref() {
            Some("APPLIED") => Finished::Applied,
            Some("ROLLED_BACK") => Finished::RolledBack,
            Some("ALREADY") => Finished::AlreadyApplied,
            Some("NO_INTENT") => Finished::NoIntent,
            _ => {
                return Err(Error::Internal(
                    "unexpected reply from the apply script".into(),
                ))
            }
        };
        if matches!(finished, Finished::Applied | Finished::RolledBack) {
            self.replicated(shard).await?;
        }
        Ok(finished)
    }

    /// Forgets the commit record of `attempt` (primary `primary`): only once every
    /// participant was applied.
    async fn forget_decision(&self, primary: &PlayerId, attempt: &str) -> Result<(), Error> {
        let shard = self.inner.map.shard_for_player(primary);
        let mut conn = self.master_connection(shard).await?;
        let _: RedisValue = FORGET
            .key(decision_key(primary, attempt))
            .key(SlotKeys::of_player(primary).decisions)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.call_failed(shard, &e, true))?;
        Ok(())
    }

    /// The one resolver of intents: finishes `intent` on `player` by its attempt's decision.
    /// With no decision written, it aborts the attempt only if the intent's lease has passed
    /// (`intent.expired`, judged by the player's shard's clock); a live intent is left alone.
    /// Never writes a commit.
    pub async fn resolve_intent(
        &self,
        player: &PlayerId,
        intent: &IntentRef,
    ) -> Result<Resolution, Error> {
        let primary = PlayerId::new(intent.primary.clone())
            .map_err(|e| Error::Internal(format!("an intent names a bad primary: {e}")))?;
        let decision = match self.multi_decision(&primary, &intent.attempt).await? {
            Some(decision) => decision,
            None if intent.expired => {
                self.decide_once(&primary, &intent.attempt, Decision::Abort, &[], &[])
                    .await?
            }
            None => return Ok(Resolution::Live),
        };
        let finished = self
            .finish_participant(player, &intent.attempt, decision, player == &primary)
            .await?;
        if finished == Finished::NoIntent {
            return Ok(Resolution::NotHeld);
        }
        Ok(Resolution::Finished(decision, finished))
    }

    /// The sweep of one shard: resolves every intent whose lease has passed, then forgets
    /// the commit records older than a lease whose participants were all applied (applying
    /// any that were not). Returns how many intents it finished.
    pub async fn sweep(&self, shard: ShardIndex) -> Result<Swept, Error> {
        let swept = self.sweep_intents(shard).await?;
        self.sweep_decisions(shard).await?;
        Ok(swept)
    }

    /// Commit records of `shard`'s primaries older than a lease: each participant still
    /// holding the attempt's intent is applied, then the record is forgotten.
    async fn sweep_decisions(&self, shard: ShardIndex) -> Result<u64, Error> {
        let mut conn = self.master_connection(shard).await?;
        let old = server_ms(self, &mut conn, shard)
            .await?
            .saturating_sub(self.inner.settings.intent_lease_ms);
        let mut forgotten = 0;
        for chunk in self.inner.map.slots_of(shard).chunks(512) {
            let records = scored_up_to(
                self,
                &mut conn,
                shard,
                chunk,
                |slot| SlotKeys::new(slot).decisions,
                old,
            )
            .await?;
            for (&slot, keys) in chunk.iter().zip(records) {
                let index = SlotKeys::new(slot).decisions;
                for key in keys {
                    let value: Option<String> = redis::cmd("HGET")
                        .arg(key.as_slice())
                        .arg("p")
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.call_failed(shard, &e, false))?;
                    let attempt = String::from_utf8_lossy(&key)
                        .rsplit(":decision:")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let participants = value
                        .as_deref()
                        .map(commit_participants)
                        .unwrap_or_default();
                    // A commit record names its primary first.
                    let mut all_applied = true;
                    if let Some(primary) = participants.first() {
                        for player in &participants {
                            let intent = IntentRef {
                                attempt: attempt.clone(),
                                primary: primary.as_str().to_string(),
                                expired: true,
                                version: None,
                            };
                            if self.resolve_intent(player, &intent).await.is_err() {
                                all_applied = false;
                            }
                        }
                    }
                    if all_applied {
                        let _: RedisValue = FORGET
                            .key(key.as_slice())
                            .key(&index)
                            .invoke_async(&mut conn)
                            .await
                            .map_err(|e| self.call_failed(shard, &e, true))?;
                        forgotten += 1;
                    }
                }
            }
        }
        Ok(forgotten)
    }

    /// Resolves every intent of `shard` whose lease has passed (by the shard's clock), slot
    /// by slot. An intent that cannot be resolved now (its primary's shard refuses writes,
    /// say) is counted and left for the next sweep; the others go on.
    pub async fn sweep_intents(&self, shard: ShardIndex) -> Result<Swept, Error> {
        let name = self.inner.shards[shard.0].name.clone();
        let mut conn = self.master_connection(shard).await?;
        let now_ms = server_ms(self, &mut conn, shard).await?;
        let slots = self.inner.map.slots_of(shard);
        let (mut finished, mut unresolved) = (0, 0);
        for chunk in slots.chunks(512) {
            let expired = scored_up_to(
                self,
                &mut conn,
                shard,
                chunk,
                |slot| SlotKeys::new(slot).intents,
                now_ms,
            )
            .await?;
            for id in expired.into_iter().flatten() {
                let Ok(player) = PlayerId::new(String::from_utf8_lossy(&id).into_owned()) else {
                    continue;
                };
                let held: (Option<String>, Option<String>, Option<u64>) = redis::cmd("HMGET")
                    .arg(PlayerKeys::new(&player).intent)
                    .arg("a")
                    .arg("p")
                    .arg("v")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.call_failed(shard, &e, false))?;
                let (Some(attempt), Some(primary), version) = held else {
                    // The set names a player whose intent is gone: drop the stale entry.
                    let _: Result<i64, _> = redis::cmd("ZREM")
                        .arg(SlotKeys::of_player(&player).intents)
                        .arg(player.as_str())
                        .query_async(&mut conn)
                        .await;
                    continue;
                };
                let intent = IntentRef {
                    attempt,
                    primary,
                    expired: true,
                    version,
                };
                match self.resolve_intent(&player, &intent).await {
                    Ok(Resolution::Finished(..)) => finished += 1,
                    Ok(_) => {}
                    Err(e) => {
                        if unresolved == 0 {
                            tracing::warn!(shard = %name, player = %player.as_str(), version = intent.version, error = %e, "cannot resolve an expired intent yet");
                        }
                        unresolved += 1;
                    }
                }
            }
        }
        Ok(Swept {
            finished,
            unresolved,
        })
    }

    /// Turns what the script answered transactions on their own into results, settling the
    /// intents they met: a write that met a decided or expired intent resolves it (and is
    /// retried); a
    /// read that met an intent whose attempt committed applies it first (and is retried);
    /// any other read of a player with an intent returns the state it read, the last one
    /// committed.
    pub(super) async fn settle_intents(
        &self,
        txns: &[Transaction],
        answered: Vec<(usize, Result<Outcome, Error>)>,
    ) -> Vec<(usize, Result<Committed, Error>)> {
        let settled = answered.into_iter().map(|(position, outcome)| async move {
            let player = &txns[position].player;
            let locked = |intent: &IntentRef, why: &str| Error::Locked {
                player: player.as_str().to_string(),
                reason: format!("attempt {} (primary {:?}) {why}", intent.attempt, intent.primary),
            };
            let result = match outcome {
                Ok(Outcome::Done(committed)) => Ok(committed),
                Err(e) => Err(e),
                Ok(Outcome::Locked(intent)) => {
                    // Decided (or expired) intents are finished at once; a live undecided one
                    // is waited out by the retry.
                    match self.resolve_intent(player, &intent).await {
                        Ok(Resolution::Live) => Err(locked(&intent, "is in progress")),
                        Ok(_) => Err(locked(&intent, "was resolved")),
                        Err(e) => {
                            tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot resolve an intent");
                            Err(locked(&intent, "could not be resolved"))
                        }
                    }
                }
                Ok(Outcome::ReadWithIntent(committed, intent)) => {
                    let primary = PlayerId::new(intent.primary.clone());
                    let decision = match &primary {
                        Ok(primary) => self.multi_decision(primary, &intent.attempt).await,
                        Err(e) => Err(Error::Internal(e.to_string())),
                    };
                    match decision {
                        Ok(Some(Decision::Commit)) => {
                            if let Err(e) = self.resolve_intent(player, &intent).await {
                                tracing::warn!(player = %player.as_str(), version = committed.version, error = %e, "cannot apply a committed intent");
                            }
                            Err(locked(&intent, "committed and is being applied"))
                        }
                        Ok(None) if intent.expired => {
                            if let Err(e) = self.resolve_intent(player, &intent).await {
                                tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot resolve an expired intent");
                            }
                            Ok(committed)
                        }
                        Ok(_) => Ok(committed),
                        Err(e) => Err(Error::Unavailable {
                            shard: String::new(),
                            reason: format!(
                                "the player holds an intent whose decision cannot be read: {e}"
                            ),
                        }),
                    }
                }
            };
            (position, result)
        });
        join_all(settled).await
    }

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
        txn.validate(&self.inner.limits)?;
        let deadline = Instant::now() + self.inner.settings.retry_deadline();
        let mut attempt_number = 0u32;
        let mut last: Option<Result<MultiCommitted, Error>> = None;
        loop {
            let mut attempt = MultiAttempt::new(self, txn.clone())?;
            attempt.readers = readers.max(1);
            let result = attempt.run().await;
            let result = Error::after_attempts(result, last.as_ref());
            let retry = matches!(&result, Err(e) if e.is_retryable());
            let now = Instant::now();
            if !retry || now >= deadline {
                return result;
            }
            last = Some(result);
            self.count_multi_retry(&txn);
            tokio::time::sleep(RETRY_BACKOFF.delay_within(attempt_number, deadline - now)).await;
            attempt_number += 1;
        }
    }

    fn count_multi_retry(&self, txn: &MultiTransaction) {
        self.inner
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let (Some(observer), Some(first)) = (&self.inner.observer, txn.participants.first()) {
            let (_, name) = self.shard_of(&first.player);
            observer.retried(&name, 1);
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

/// One attempt of a multi-player transaction, run step by step.
pub struct MultiAttempt<'s> {
    store: &'s Store,
    txn: MultiTransaction,
    id: String,
    fingerprint: String,
    /// Per participant, what its prepare answered, once it did.
    staged: Vec<Option<(Committed, Vec<u8>)>>,
    decision: Option<Decision>,
    /// Entries of the request that read, sharing its read budget evenly.
    readers: usize,
}

impl<'s> MultiAttempt<'s> {
    /// A new attempt at `txn` (validated here), with a fresh random id.
    pub fn new(store: &'s Store, txn: MultiTransaction) -> Result<MultiAttempt<'s>, Error> {
        txn.validate(&store.inner.limits)?;
        let random = RandomState::new().hash_one(Instant::now());
        let id = format!("{random:016x}");
        let fingerprint = script::multi_fingerprint(&txn);
        let staged = vec![None; txn.participants.len()];
        Ok(MultiAttempt {
            store,
            txn,
            id,
            fingerprint,
            staged,
            decision: None,
            readers: 1,
        })
    }

    /// The attempt's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The primary participant.
    pub fn primary(&self) -> &PlayerId {
        &self.txn.participants[0].player
    }

    /// Step 1: prepares every participant, the participants of one shard concurrently on
    /// its connection (so in one round trip), the shards concurrently.
    pub async fn prepare(&mut self) -> PrepareOutcome {
        let store = self.store;
        let limits = &store.inner.limits;
        let reading = self.readers.max(1);
        let bounds = script::Bounds {
            track_changes: store.inner.track_changes,
            window: script::Window::of(&store.inner.settings),
            read_budget: limits.read_budget(reading),
            max_player_bytes: limits.max_player_bytes,
            max_player_entries: limits.max_player_entries,
        };
        let primary = self.primary().clone();
        let lease_ms = store.inner.settings.intent_lease_ms;
        let mut plan: BTreeMap<ShardIndex, Vec<usize>> = BTreeMap::new();
        for (i, p) in self.txn.participants.iter().enumerate() {
            plan.entry(store.inner.map.shard_for_player(&p.player))
                .or_default()
                .push(i);
        }
        let (txn, id, fingerprint) = (&self.txn, self.id.as_str(), self.fingerprint.as_str());
        let runs = plan.into_iter().map(|(shard, positions)| {
            let bounds = &bounds;
            let primary = &primary;
            async move {
                let conn = match store.master_connection(shard).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        return positions
                            .into_iter()
                            .map(|i| (i, Err(e.clone())))
                            .collect::<Vec<_>>()
                    }
                };
                let calls = positions.iter().map(|&i| {
                    let participant = &txn.participants[i];
                    let prepare = script::Prepare {
                        attempt: id,
                        primary,
                        lease_ms,
                        key: (i == 0).then_some((&txn.idempotency_key, fingerprint)),
                    };
                    let invocation = script::encode_prepare(participant, &prepare, bounds);
                    let mut conn = conn.clone();
                    async move {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(script::SCRIPT.get_hash()).arg(invocation.keys.len());
                        for key in &invocation.keys {
                            cmd.arg(key.as_slice());
                        }
                        for arg in &invocation.args {
                            cmd.arg(arg.as_slice());
                        }
                        let mut reply: Result<RedisValue, redis::RedisError> =
                            cmd.query_async(&mut conn).await;
                        if matches!(&reply, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
                        {
                            let loaded: Result<String, _> = redis::cmd("SCRIPT")
                                .arg("LOAD")
                                .arg(script::SOURCE)
                                .query_async(&mut conn)
                                .await;
                            if loaded.is_ok() {
                                reply = cmd.query_async(&mut conn).await;
                            }
                        }
                        let outcome = match reply {
                            Ok(reply) => script::decode_prepare(
                                &participant.operations,
                                &txn.participants,
                                &reply,
                            ),
                            Err(e) => Err(store.call_failed(shard, &e, true)),
                        };
                        (i, outcome)
                    }
                });
                let mut outcomes = join_all(calls).await;
                if outcomes
                    .iter()
                    .any(|(_, o)| matches!(o, Ok(Prepared::Staged { .. })))
                {
                    if let Err(e) = store.replicated(shard).await {
                        for (_, outcome) in outcomes.iter_mut() {
                            if matches!(outcome, Ok(Prepared::Staged { .. })) {
                                *outcome = Err(e.clone());
                            }
                        }
                    }
                }
                outcomes
            }
        });
        let mut refused: Option<(usize, Error)> = None;
        let mut replayed = None;
        for (i, outcome) in join_all(runs).await.into_iter().flatten() {
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
                    let player = &self.txn.participants[i].player;
                    if intent.expired {
                        if let Err(e) = store.resolve_intent(player, &intent).await {
                            tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot resolve an expired intent");
                        }
                    }
                    let e = Error::Locked {
                        player: player.as_str().to_string(),
                        reason: format!(
                            "by attempt {} (primary {:?})",
                            intent.attempt, intent.primary
                        ),
                    };
                    refused.get_or_insert((i, e));
                }
                Err(e) => {
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
            .decide_once(&primary, &self.id, wanted, &players, &replies)
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
        let finishes = self.txn.participants.iter().enumerate().map(|(i, p)| {
            self.store
                .finish_participant(&p.player, &self.id, decision, i == 0)
        });
        let finished = join_all(finishes).await;
        if decision == Decision::Abort {
            return Err(Error::Unavailable {
                shard: String::new(),
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
                            shard: String::new(),
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
                            shard: String::new(),
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

    /// Step 4: forgets the commit record once every participant was applied.
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
                            shard: String::new(),
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
            let first = &self.txn.participants[0].player;
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
                // Forgetting the record is housekeeping (the sweep does it otherwise): the
                // caller does not wait for it.
                let (store, primary, id) =
                    (self.store.clone(), self.primary().clone(), self.id.clone());
                tokio::spawn(async move {
                    if let Err(e) = store.forget_decision(&primary, &id).await {
                        tracing::debug!(error = %e, "the commit record stays for the sweep");
                    }
                });
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
