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

use crate::error::Error;
use crate::keys::{decision_key, PlayerKeys, SlotKeys};
use crate::model::{Committed, MultiCommitted, MultiTransaction, PlayerId, Transaction};
use crate::script::{self, IntentRef, Outcome, Prepared};
use crate::shard_map::ShardIndex;

use super::road::{Command, Effect, LuaScript};
use super::{Store, RETRY_BACKOFF};

/// Applies or rolls back one participant (`window.lua` in front, for the primary's window).
static APPLY: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new(concat!(
        include_str!("../window.lua"),
        include_str!("../multi/apply.lua")
    ))
});
/// Writes an attempt's decision once, or reads it back (writing it again).
static DECIDE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../multi/decide.lua")));
/// Forgets a decision record.
static FORGET: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../multi/forget.lua")));

/// How many records may be waiting to be forgotten by detached tasks at once; past it, the
/// sweep forgets them (commit records) or they expire (abort records).
pub(super) const FORGETTING_AT_ONCE: usize = 256;

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

/// Who writes a decision: the attempt's coordinator, or a resolver of an intent it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decider {
    Coordinator,
    Resolver,
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
async fn server_ms(store: &Store, shard: ShardIndex) -> Result<u64, Error> {
    let reply = store
        .send(shard, vec![Command::read(redis::cmd("TIME"))])
        .await
        .into_acknowledged_reply()?;
    let (secs, micros): (u64, u64) = redis::from_redis_value(reply).map_err(unexpected)?;
    Ok(secs * 1000 + micros / 1000)
}

/// A reply of an unexpected shape.
fn unexpected(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("unexpected reply: {e}"))
}

/// Up to 1000 members of each of `slots`' sorted sets (`key` names it) scored at most `upto`,
/// in one pipelined round trip; one list per slot, in order.
async fn scored_up_to(
    store: &Store,
    shard: ShardIndex,
    slots: &[crate::slot::Slot],
    key: impl Fn(crate::slot::Slot) -> String,
    upto: u64,
) -> Result<Vec<Vec<Vec<u8>>>, Error> {
    let commands = slots
        .iter()
        .map(|&slot| {
            let mut cmd = redis::cmd("ZRANGEBYSCORE");
            cmd.arg(key(slot))
                .arg("-inf")
                .arg(upto)
                .arg("LIMIT")
                .arg(0)
                .arg(1000);
            Command::read(cmd)
        })
        .collect();
    store
        .send(shard, commands)
        .await
        .replies
        .into_iter()
        .map(|reply| redis::from_redis_value(reply?).map_err(unexpected))
        .collect()
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

impl Store {
    /// The shard of `player` and its name.
    fn shard_of(&self, player: &PlayerId) -> (ShardIndex, String) {
        let shard = self.inner.map.shard_for_player(player);
        (shard, self.inner.shards[shard.0].name.clone())
    }

    /// The decision of `attempt` (primary `primary`), if one was written — and, in replicated
    /// mode, known replicated: the decision script writes a decision it finds again, and the
    /// call is acknowledged on the link that carried that write, so whoever acts on the
    /// answer acts on a decision a failover keeps.
    pub async fn multi_decision(
        &self,
        primary: &PlayerId,
        attempt: &str,
    ) -> Result<Option<Decision>, Error> {
        let shard = self.inner.map.shard_for_player(primary);
        let read = Command::script(&DECIDE, Effect::Writes)
            .key(decision_key(primary, attempt))
            .key(SlotKeys::of_player(primary).decisions)
            .key(PlayerKeys::new(primary).meta)
            .key(PlayerKeys::new(primary).intent)
            .arg("R")
            .arg(ABORT_RECORD_MS);
        let value = self
            .send(shard, vec![read])
            .await
            .into_acknowledged_reply()?;
        Ok(text(&value).as_deref().and_then(decision_of))
    }

    /// Writes `decision` for `attempt` unless one exists; returns the one that holds, once it
    /// is acknowledged (replicated mode). A commit is written only while the primary holds
    /// the attempt's intent, within its lease; otherwise the attempt aborts.
    ///
    /// The attempt's coordinator may act on an abort that is not acknowledged yet: only the
    /// coordinator ever writes a commit, and it has decided not to, so nothing a failover does
    /// to the record can make the attempt commit; its participants are rolled back at once
    /// rather than kept locked while the primary's shard cannot replicate. A resolver needs
    /// its abort acknowledged before it rolls anything back: a lost abort record would let a
    /// slow coordinator's commit win.
    async fn decide_once(
        &self,
        by: Decider,
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
        let mut decide = Command::script(&DECIDE, Effect::Writes)
            .key(decision_key(primary, attempt))
            .key(SlotKeys::of_player(primary).decisions)
            .key(PlayerKeys::new(primary).meta)
            .key(PlayerKeys::new(primary).intent)
            .arg(match decision {
                Decision::Commit => "C",
                Decision::Abort => "A",
            })
            .arg(ABORT_RECORD_MS);
        if decision == Decision::Commit {
            decide = decide.arg(listed);
            for reply in replies {
                decide = decide.arg(reply.as_slice());
            }
            decide = decide.arg(attempt);
        }
        let mut answer = self.send(shard, vec![decide]).await;
        let held = answer
            .replies
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("the decision answered nothing".into())))?;
        let held = text(&held)
            .as_deref()
            .and_then(decision_of)
            .ok_or_else(|| Error::Internal("the decision script answered no decision".into()))?;
        if !(by == Decider::Coordinator && held == Decision::Abort) {
            answer.acknowledgement()?;
        }
        Ok(held)
    }

    /// Whether `player` still holds the intent of `attempt`.
    async fn holds(&self, player: &PlayerId, attempt: &str) -> Result<bool, Error> {
        let shard = self.inner.map.shard_for_player(player);
        let mut read = redis::cmd("HGET");
        read.arg(PlayerKeys::new(player).meta).arg("x");
        let held: Option<String> = self.call(shard, Command::read(read)).await?;
        Ok(held.as_deref() == Some(attempt))
    }

    /// The decision of `attempt`, read without writing or waiting: for a reader, which acts
    /// on a commit only through the resolver (which reads it again, acknowledged), and
    /// otherwise reads the last committed state.
    async fn peek_decision(
        &self,
        primary: &PlayerId,
        attempt: &str,
    ) -> Result<Option<Decision>, Error> {
        let shard = self.inner.map.shard_for_player(primary);
        let mut read = redis::cmd("HGET");
        read.arg(decision_key(primary, attempt)).arg("d");
        let value: RedisValue = self.call(shard, Command::read(read)).await?;
        Ok(text(&value).as_deref().and_then(decision_of))
    }

    /// Applies (a commit) or rolls back (an abort) `attempt` on `player`; `primary` says
    /// whether it is the attempt's primary (whose apply records the key in its window). An
    /// apply, a roll back or an apply found done before is answered once acknowledged
    /// (replicated mode), on the link that carried it.
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
        let apply = Command::script(&APPLY, Effect::Writes)
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
        let mut answer = self.send(shard, vec![apply]).await;
        let outcome = answer
            .replies
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("the apply answered nothing".into())))?;
        let finished = match text(&outcome).as_deref() {
            Some("APPLIED") => Finished::Applied,
            Some("ROLLED_BACK") => Finished::RolledBack,
            Some("ALREADY") => Finished::AlreadyApplied,
            // Nothing was written: nothing to acknowledge.
            Some("NO_INTENT") => return Ok(Finished::NoIntent),
            _ => {
                return Err(Error::Internal(
                    "unexpected reply from the apply script".into(),
                ))
            }
        };
        answer.acknowledgement()?;
        Ok(finished)
    }

    /// Forgets the decision record of `attempt` (primary `primary`): a commit record only once
    /// every participant's apply was acknowledged, an abort record once every participant
    /// was rolled back. Housekeeping: not waited for (a record a failover brings back is
    /// forgotten by the sweep, or expires).
    async fn forget_decision(&self, primary: &PlayerId, attempt: &str) -> Result<(), Error> {
        let shard = self.inner.map.shard_for_player(primary);
        let forget = Command::script(&FORGET, Effect::Housekeeping)
            .key(decision_key(primary, attempt))
            .key(SlotKeys::of_player(primary).decisions);
        self.send(shard, vec![forget])
            .await
            .into_acknowledged_reply()
            .map(|_| ())
    }

    /// Forgets a decision record in a detached task, so the caller does not wait for it; at
    /// most [`FORGETTING_AT_ONCE`] at a time, past which the record is left to the sweep (a
    /// commit) or to its expiry (an abort).
    fn forget_later(&self, primary: &PlayerId, attempt: &str) {
        let Ok(permit) = self.inner.forgetting.clone().try_acquire_owned() else {
            return;
        };
        let (store, primary, attempt) = (self.clone(), primary.clone(), attempt.to_string());
        tokio::spawn(async move {
            if let Err(e) = store.forget_decision(&primary, &attempt).await {
                tracing::debug!(error = %e, "the decision record stays for the sweep");
            }
            drop(permit);
        });
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
        self.resolve(player, intent, intent.expired).await
    }

    /// The resolver; it writes an abort only when `may_abort` (the lease has passed) and no
    /// decision exists.
    async fn resolve(
        &self,
        player: &PlayerId,
        intent: &IntentRef,
        may_abort: bool,
    ) -> Result<Resolution, Error> {
        let primary = PlayerId::new(intent.primary.clone())
            .map_err(|e| Error::Internal(format!("an intent names a bad primary: {e}")))?;
        let decision = match self.multi_decision(&primary, &intent.attempt).await? {
            Some(decision) => decision,
            None if may_abort => {
                self.decide_once(
                    Decider::Resolver,
                    &primary,
                    &intent.attempt,
                    Decision::Abort,
                    &[],
                    &[],
                )
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

    /// Finishes `player`'s intent of an earlier attempt of the caller's own, which nobody
    /// runs any more: aborted (the caller is its coordinator, so it may) unless it committed,
    /// in which case it is applied and the next attempt replays it.
    async fn settle_own_attempt(
        &self,
        player: &PlayerId,
        intent: &IntentRef,
    ) -> Result<Resolution, Error> {
        let primary = PlayerId::new(intent.primary.clone())
            .map_err(|e| Error::Internal(format!("an intent names a bad primary: {e}")))?;
        let decision = self
            .decide_once(
                Decider::Coordinator,
                &primary,
                &intent.attempt,
                Decision::Abort,
                &[],
                &[],
            )
            .await?;
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
        let old = server_ms(self, shard)
            .await?
            .saturating_sub(self.inner.settings.intent_lease_ms);
        let mut forgotten = 0;
        for chunk in self.inner.map.slots_of(shard).chunks(512) {
            let records = scored_up_to(
                self,
                shard,
                chunk,
                |slot| SlotKeys::new(slot).decisions,
                old,
            )
            .await?;
            for (&slot, keys) in chunk.iter().zip(records) {
                let index = SlotKeys::new(slot).decisions;
                for key in keys {
                    let mut read = redis::cmd("HGET");
                    read.arg(key.as_slice()).arg("p");
                    let value = self
                        .send(shard, vec![Command::read(read)])
                        .await
                        .into_acknowledged_reply()?;
                    let attempt = String::from_utf8_lossy(&key)
                        .rsplit(":decision:")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let participants = text(&value)
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
                            // Apply only: the record was read as a commit, and one that
                            // vanished since (forgotten by its coordinator) must not turn
                            // into an abort record for a committed attempt.
                            if self.resolve(player, &intent, false).await.is_err() {
                                all_applied = false;
                            }
                        }
                    }
                    if all_applied {
                        let forget = Command::script(&FORGET, Effect::Housekeeping)
                            .key(key.as_slice())
                            .key(&index);
                        self.send(shard, vec![forget])
                            .await
                            .into_acknowledged_reply()?;
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
    ///
    /// The set of intents is read first and each intent after: between the two the player
    /// may have been finished and taken a new attempt's intent, with a lease of its own. So
    /// the intent's attempt and lease are read together (one `HMGET`; an attempt's lease never
    /// changes) and an intent whose lease has not passed is left alone.
    pub async fn sweep_intents(&self, shard: ShardIndex) -> Result<Swept, Error> {
        let name = self.inner.shards[shard.0].name.clone();
        let now_ms = server_ms(self, shard).await?;
        let slots = self.inner.map.slots_of(shard);
        let (mut finished, mut unresolved) = (0, 0);
        for chunk in slots.chunks(512) {
            let expired = scored_up_to(
                self,
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
                let mut read = redis::cmd("HMGET");
                read.arg(PlayerKeys::new(&player).intent)
                    .arg("a")
                    .arg("p")
                    .arg("v")
                    .arg("l");
                type Held = (Option<String>, Option<String>, Option<u64>, Option<u64>);
                let held = match self.call::<Held>(shard, Command::read(read)).await {
                    Ok(held) => held,
                    Err(e) => {
                        // One unreadable intent does not stop the sweep of the others.
                        if unresolved == 0 {
                            tracing::warn!(shard = %name, player = %player.as_str(), error = %e, "cannot read an intent yet");
                        }
                        unresolved += 1;
                        continue;
                    }
                };
                let (Some(attempt), Some(primary), version, lease) = held else {
                    // The set names a player whose intent is gone: drop the stale entry.
                    let mut drop = redis::cmd("ZREM");
                    drop.arg(SlotKeys::of_player(&player).intents)
                        .arg(player.as_str());
                    let _ = self
                        .send(shard, vec![Command::plain(drop, Effect::Housekeeping)])
                        .await;
                    continue;
                };
                if lease.is_some_and(|lease| lease > now_ms) {
                    // A newer attempt's intent, still live.
                    continue;
                }
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
                Ok(Outcome::AnsweredWithIntent(answer, intent)) => {
                    let primary = PlayerId::new(intent.primary.clone());
                    let decision = match &primary {
                        Ok(primary) => self.peek_decision(primary, &intent.attempt).await,
                        Err(e) => Err(Error::Internal(e.to_string())),
                    };
                    match decision {
                        Ok(Some(Decision::Commit)) => {
                            if let Err(e) = self.resolve_intent(player, &intent).await {
                                tracing::warn!(player = %player.as_str(), version = intent.version, error = %e, "cannot apply a committed intent");
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
        let mut earlier = Vec::new();
        loop {
            let mut attempt = MultiAttempt::new(self, txn.clone())?;
            attempt.readers = readers.max(1);
            attempt.earlier = earlier.clone();
            let result = attempt.run().await;
            earlier.push(attempt.id.clone());
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
    /// The ids of the attempts of the same call before this one.
    earlier: Vec<String>,
    /// Per participant, whether its prepare got a definite answer (not one that may still
    /// run: a prepare lost on the way can stage an intent later).
    definite: Vec<bool>,
}

impl<'s> MultiAttempt<'s> {
    /// A new attempt at `txn` (validated here), with a fresh random id.
    pub fn new(store: &'s Store, txn: MultiTransaction) -> Result<MultiAttempt<'s>, Error> {
        txn.validate(&store.inner.limits)?;
        let random = RandomState::new().hash_one(Instant::now());
        let id = format!("{random:016x}");
        let fingerprint = script::multi_fingerprint(&txn);
        let staged = vec![None; txn.participants.len()];
        let staged_len = staged.len();
        Ok(MultiAttempt {
            store,
            txn,
            id,
            fingerprint,
            staged,
            decision: None,
            readers: 1,
            earlier: Vec::new(),
            definite: vec![false; staged_len],
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
                // The shard's participants in one call: one round trip, and the intents
                // acknowledged on the link that wrote them.
                let commands = positions
                    .iter()
                    .map(|&i| {
                        let prepare = script::Prepare {
                            attempt: id,
                            primary,
                            lease_ms,
                            key: (i == 0).then_some((&txn.idempotency_key, fingerprint)),
                        };
                        script::encode_prepare(&txn.participants[i], &prepare, bounds)
                            .command(Effect::Writes)
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
                    let player = &self.txn.participants[i].player;
                    // A decided intent is finished now, so the next attempt need not wait
                    // for its lease; so is one of this key's own earlier attempts, which
                    // nobody else is running any more (aborted unless it committed).
                    let settled = if self.earlier.contains(&intent.attempt) {
                        store.settle_own_attempt(player, &intent).await
                    } else {
                        store.resolve_intent(player, &intent).await
                    };
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
                            player: self.txn.participants[i].player.as_str().to_string(),
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
        let finishes = self.txn.participants.iter().enumerate().map(|(i, p)| {
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
