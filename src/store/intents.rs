//! Intent resolution: the layer below both the single-player path ([`super::batch`]) and the
//! trade coordinator ([`super::multi`]). It reads and writes an attempt's decision record,
//! finishes one participant by a decision (apply or roll back), and resolves an intent left
//! behind — the one resolver every path uses. The trade design (`docs/design/trades.md`)
//! has the rules these functions keep; the scripts are `multi/decide.lua`, `multi/judge.lua`,
//! `multi/apply.lua` (with `multi/finish.lua`) and `multi/forget.lua`; the commit is the
//! transaction script's commit mode (`transaction.lua`).

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Value as RedisValue;

use crate::error::Error;
use crate::keys::{decision_key, PlayerKeys, SlotKeys};
use crate::model::PlayerId;
use crate::script::{self, IntentRef};
use crate::shard_map::ShardIndex;

use super::look::Read;
use super::road::{Command, Effect, LuaScript};
use super::Store;

/// Applies or rolls back one participant (`window.lua` in front, for the window of a primary
/// prepared by an earlier version, and `finish.lua`).
static APPLY: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new(concat!(
        include_str!("../window.lua"),
        include_str!("../multi/finish.lua"),
        include_str!("../multi/apply.lua")
    ))
});
/// Judges a trade's key in its primary's window, or answers the intent that holds the
/// primary (`window.lua` in front, for the key's floor).
static JUDGE: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new(concat!(
        include_str!("../window.lua"),
        include_str!("../multi/judge.lua")
    ))
});
/// Aborts an attempt unless it is decided, or reads its decision back (writing it again).
static DECIDE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../multi/decide.lua")));
/// Forgets a decision record.
pub(super) static FORGET: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../multi/forget.lua")));

/// How many commit records may be waiting to be forgotten by detached tasks at once; past
/// it, the sweep forgets them.
pub(super) const FORGETTING_AT_ONCE: usize = 256;

/// How long an abort record is kept. A resolver that finds none writes it again; what the
/// day is for is a slow coordinator: its commit, fenced by a deadline seconds after its
/// attempt began ([`COMMIT_CLOCK_SLACK_MS`]), can only come while the abort record that
/// stops it still exists (`docs/design/trades.md`, "The fence").
const ABORT_RECORD_MS: u64 = 86_400_000;

/// A commit's deadline is its attempt's start plus the intents' lease plus this, by the
/// coordinator's clock, compared with the primary's: the slack for the two clocks'
/// difference. Larger tolerates worse clocks; smaller narrows the moment in which a lost
/// abort record could let a late commit through (`docs/design/trades.md`, "The fence").
pub(super) const COMMIT_CLOCK_SLACK_MS: u64 = 2_000;

/// The players this store's detached tasks are applying now, each with the attempt and a
/// receiver that sees its sender dropped when the task ends ([`Store::wait_detached_finish`]).
#[derive(Default)]
pub(super) struct DetachedFinishes {
    running: std::sync::Mutex<HashMap<String, (String, tokio::sync::watch::Receiver<()>)>>,
}

impl DetachedFinishes {
    /// Registers `players` as being applied for `attempt`; the end is seen when the returned
    /// sender drops.
    pub(super) fn begin(
        &self,
        attempt: &str,
        players: &[PlayerId],
    ) -> tokio::sync::watch::Sender<()> {
        let (ended, watched) = tokio::sync::watch::channel(());
        let mut running = self.lock();
        for p in players {
            running.insert(
                p.as_str().to_string(),
                (attempt.to_string(), watched.clone()),
            );
        }
        ended
    }

    /// Forgets `players`' entries of `attempt` (a later attempt's entry for a player stays).
    pub(super) fn end(&self, attempt: &str, players: &[PlayerId]) {
        let mut running = self.lock();
        for p in players {
            if running.get(p.as_str()).is_some_and(|(a, _)| a == attempt) {
                running.remove(p.as_str());
            }
        }
    }

    /// The end of the task applying `player`, for `attempt` when given, else for any attempt.
    fn watch(
        &self,
        player: &PlayerId,
        attempt: Option<&str>,
    ) -> Option<tokio::sync::watch::Receiver<()>> {
        self.lock()
            .get(player.as_str())
            .filter(|(a, _)| attempt.is_none_or(|attempt| attempt == a))
            .map(|(_, watched)| watched.clone())
    }

    #[allow(clippy::type_complexity)]
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (String, tokio::sync::watch::Receiver<()>)>>
    {
        // A panic while holding it cannot leave the map inconsistent (inserts and removes).
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long a request of this store waits for its own detached task finishing an intent it
/// met, before resolving the intent itself: a task retrying through a failover takes longer.
const DETACHED_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

impl Store {
    /// When this store's own detached task is applying `player` (for `attempt`, when given:
    /// a trade it answered a moment ago), waits for the task to end, at most [`DETACHED_WAIT`], and answers whether
    /// it ended: the intent met is then most likely applied, so the caller goes on at once
    /// instead of resolving it through the primary's shard. (Whatever the answer, nothing
    /// depends on it for safety: an intent still held is met again and resolved.)
    pub(super) async fn wait_detached_finish(
        &self,
        player: &PlayerId,
        attempt: Option<&str>,
    ) -> bool {
        let Some(mut watched) = self.inner.detached.watch(player, attempt) else {
            return false;
        };
        // The sender dropped: `changed` answers an error, which is the end we wait for.
        tokio::time::timeout(DETACHED_WAIT, watched.changed())
            .await
            .is_ok()
    }
}

/// How many committed trades may have their other participants applied by detached tasks at
/// once (`multi.rs`); past it, the coordinator applies them before answering.
pub(super) const FINISHING_AT_ONCE: usize = 1024;

/// Whether a finishing call is waited for by a caller (sent at once, on a call of its own)
/// or runs in a detached task (coalesced with other detached calls to its shard, see
/// `road::Lanes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waited {
    Now,
    Detached,
}

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
pub(super) enum Decider {
    Coordinator,
    Resolver,
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
pub(super) fn text(v: &RedisValue) -> Option<String> {
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

/// The keys `finish.lua` declares, in its order: the player's meta, public and private
/// hashes and intent, its slot's active and dirty sets, its clients, its slot's intents, and
/// `record` (the attempt's decision record for the primary, else the meta again).
fn finishing_keys(command: Command, player: &PlayerId, record: Vec<u8>) -> Command {
    let keys = PlayerKeys::new(player);
    let slot = SlotKeys::of_player(player);
    command
        .key(&keys.meta)
        .key(&keys.public)
        .key(&keys.private)
        .key(&keys.intent)
        .key(&slot.active)
        .key(&slot.dirty)
        .key(&keys.clients)
        .key(&slot.intents)
        .key(record)
}

/// What the finishing script's answer says it did.
fn finished_of(reply: &RedisValue) -> Result<Finished, Error> {
    match text(reply).as_deref() {
        Some("APPLIED") => Ok(Finished::Applied),
        Some("ROLLED_BACK") => Ok(Finished::RolledBack),
        Some("ALREADY") => Ok(Finished::AlreadyApplied),
        Some("NO_INTENT") => Ok(Finished::NoIntent),
        _ => Err(Error::Internal(
            "unexpected reply from the apply script".into(),
        )),
    }
}

/// A reply of an unexpected shape.
pub(super) fn unexpected(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("unexpected reply: {e}"))
}

impl Store {
    /// The decision of `attempt` (primary `primary`), if one was written — and, in replicated
    /// mode, known replicated: the decision script writes a decision it finds again, and the
    /// call is acknowledged on the link that carried that write, so whoever acts on the
    /// answer acts on a decision a failover keeps.
    pub async fn multi_decision(
        &self,
        primary: &PlayerId,
        attempt: &str,
    ) -> Result<Option<Decision>, Error> {
        let shard = self.shard_map().shard_for_player(primary);
        let read = Command::script(&DECIDE, Effect::Writes)
            .key(decision_key(primary, attempt))
            .key(PlayerKeys::new(primary).meta)
            .arg("R")
            .arg(ABORT_RECORD_MS);
        let value = self
            .send(shard, vec![read])
            .await
            .into_acknowledged_reply()?;
        Ok(text(&value).as_deref().and_then(decision_of))
    }

    /// Writes an abort of `attempt` unless a decision exists; returns the one that holds, once
    /// it is acknowledged (replicated mode). Only the commit script writes a commit.
    ///
    /// A coordinator settling its own earlier attempt may act on an abort that is not
    /// acknowledged yet: only the coordinator ever writes a commit, and it has decided not to,
    /// so nothing a failover does to the record can make the attempt commit. A resolver needs
    /// its abort acknowledged before it rolls anything back: a lost abort record would let a
    /// slow coordinator's commit win.
    pub(super) async fn abort_once(
        &self,
        by: Decider,
        primary: &PlayerId,
        attempt: &str,
    ) -> Result<Decision, Error> {
        let shard = self.shard_map().shard_for_player(primary);
        let abort = Command::script(&DECIDE, Effect::Writes)
            .key(decision_key(primary, attempt))
            .key(PlayerKeys::new(primary).meta)
            .arg("A")
            .arg(ABORT_RECORD_MS);
        let mut answer = self.send(shard, vec![abort]).await;
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
    pub(super) async fn holds(&self, player: &PlayerId, attempt: &str) -> Result<bool, Error> {
        let shard = self.shard_map().shard_for_player(player);
        let meta = PlayerKeys::new(player).meta;
        let held = self
            .look(shard, &meta, &[&meta], Read::Field, &["x"])
            .await?;
        Ok(held.first().and_then(text).as_deref() == Some(attempt))
    }

    /// The decision of `attempt`, read without writing or waiting: for a reader, which acts
    /// on a commit only through the resolver (which reads it again, acknowledged), and
    /// otherwise reads the last committed state.
    pub(super) async fn peek_decision(
        &self,
        primary: &PlayerId,
        attempt: &str,
    ) -> Result<Option<Decision>, Error> {
        let shard = self.shard_map().shard_for_player(primary);
        let meta = PlayerKeys::new(primary).meta;
        let record = decision_key(primary, attempt);
        let value = self
            .look(shard, &meta, &[&record], Read::Field, &["d"])
            .await?;
        Ok(value
            .first()
            .and_then(text)
            .as_deref()
            .and_then(decision_of))
    }

    /// Applies (a commit) or rolls back (an abort) `attempt` on `player`; `primary` says
    /// whether it is the attempt's primary (whose apply records the key in its window). An
    /// apply, a roll back or an apply found done before is answered once acknowledged
    /// (replicated mode), on the link that carried it.
    pub(super) async fn finish_participant(
        &self,
        player: &PlayerId,
        attempt: &str,
        decision: Decision,
        primary: bool,
    ) -> Result<Finished, Error> {
        self.finish_on_shard(
            self.shard_map().shard_for_player(player),
            &[(player, primary)],
            attempt,
            decision,
            Waited::Now,
        )
        .await
        .pop()
        .unwrap_or_else(|| Err(Error::Internal("the apply answered nothing".into())))
    }

    /// [`Store::finish_participant`] for every participant in `players` (each with whether it
    /// is the primary), all on `shard`: one call, so one round trip and one acknowledgement
    /// covering every apply and roll back it carried. A participant whose answer wrote
    /// something is `Ok` only if that acknowledgement was given.
    pub(super) async fn finish_on_shard(
        &self,
        shard: ShardIndex,
        players: &[(&PlayerId, bool)],
        attempt: &str,
        decision: Decision,
        waited: Waited,
    ) -> Vec<Result<Finished, Error>> {
        let window = script::Window::of(&self.inner.settings);
        let commands = players
            .iter()
            .map(|&(player, primary)| {
                let record = if primary {
                    decision_key(player, attempt)
                } else {
                    PlayerKeys::new(player).meta
                };
                finishing_keys(Command::script(&APPLY, Effect::Writes), player, record)
                    .arg(player.as_str())
                    .arg(attempt)
                    .arg(match decision {
                        Decision::Commit => "c",
                        Decision::Abort => "a",
                    })
                    .arg(if self.inner.track_changes { "1" } else { "0" })
                    .arg(window.age_ms)
                    .arg(window.length)
                    .arg(window.client_ttl_ms)
            })
            .collect();
        let answer = match waited {
            Waited::Now => self.send(shard, commands).await,
            Waited::Detached => self.send_coalesced(shard, commands).await,
        };
        let acknowledged = answer.acknowledgement();
        answer
            .replies
            .into_iter()
            .map(|reply| {
                let finished = finished_of(&reply?)?;
                // NO_INTENT is acknowledged too: it is acted on (a commit record is forgotten
                // once no participant holds the intent), so it must come from a master that
                // still has its replicas, and the state it saw must be replicated (the script
                // writes a field again for that). A master woken after a failover, cut off
                // from its replicas, cannot acknowledge it.
                acknowledged.clone()?;
                Ok(finished)
            })
            .collect()
    }

    /// The judge of a trade's key (`key`, with `fingerprint`) in `primary`'s window, for
    /// `attempt` (step 1, once another participant refused): `NEW` for a key not applied
    /// there, and a replay, are both acknowledged: either decides the answer.
    pub(super) fn judge_command(
        &self,
        primary: &PlayerId,
        attempt: &str,
        key: &crate::model::IdempotencyKey,
        fingerprint: &str,
    ) -> Command {
        let keys = PlayerKeys::new(primary);
        let window = script::Window::of(&self.inner.settings);
        Command::script(&JUDGE, Effect::Writes)
            .key(&keys.meta)
            .key(&keys.intent)
            .key(&keys.clients)
            .arg(attempt)
            .arg(key.client_id())
            .arg(key.request_id())
            .arg(fingerprint)
            .arg(window.client_ttl_ms)
            .arg(window.max_clients)
    }

    /// Forgets the commit record of `attempt` (primary `primary`), once no participant holds
    /// the attempt's intent. Housekeeping: not waited for (a record a failover brings back is
    /// forgotten by the sweep).
    pub(super) async fn forget_decision(
        &self,
        primary: &PlayerId,
        attempt: &str,
        waited: Waited,
    ) -> Result<(), Error> {
        let shard = self.shard_map().shard_for_player(primary);
        let forget = Command::script(&FORGET, Effect::Housekeeping)
            .key(decision_key(primary, attempt))
            .key(SlotKeys::of_player(primary).decisions)
            .key(PlayerKeys::new(primary).meta);
        let answer = match waited {
            Waited::Now => self.send(shard, vec![forget]).await,
            Waited::Detached => self.send_coalesced(shard, vec![forget]).await,
        };
        answer.into_acknowledged_reply().map(|_| ())
    }

    /// Forgets a commit record in a detached task, so the caller does not wait for it; at
    /// most [`FORGETTING_AT_ONCE`] at a time, past which the record is left to the sweep.
    pub(super) fn forget_later(&self, primary: &PlayerId, attempt: &str) {
        let Ok(permit) = self.inner.forgetting.clone().try_acquire_owned() else {
            return;
        };
        let (store, primary, attempt) = (self.clone(), primary.clone(), attempt.to_string());
        tokio::spawn(async move {
            if let Err(e) = store
                .forget_decision(&primary, &attempt, Waited::Detached)
                .await
            {
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
        let primary = PlayerId::new(intent.primary.clone())
            .map_err(|e| Error::Internal(format!("an intent names a bad primary: {e}")))?;
        let decision = match self.multi_decision(&primary, &intent.attempt).await? {
            Some(decision) => decision,
            None if intent.expired => {
                self.abort_once(Decider::Resolver, &primary, &intent.attempt)
                    .await?
            }
            // No decision and the lease runs: live — unless the intent is gone meanwhile (a
            // commit applied and its record forgotten since the intent was seen), which
            // tells the caller it may go on at once.
            None => {
                if self.holds(player, &intent.attempt).await? {
                    return Ok(Resolution::Live);
                }
                return Ok(Resolution::NotHeld);
            }
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
    pub(super) async fn settle_own_attempt(
        &self,
        player: &PlayerId,
        intent: &IntentRef,
    ) -> Result<Resolution, Error> {
        let primary = PlayerId::new(intent.primary.clone())
            .map_err(|e| Error::Internal(format!("an intent names a bad primary: {e}")))?;
        let decision = self
            .abort_once(Decider::Coordinator, &primary, &intent.attempt)
            .await?;
        let finished = self
            .finish_participant(player, &intent.attempt, decision, player == &primary)
            .await?;
        if finished == Finished::NoIntent {
            return Ok(Resolution::NotHeld);
        }
        Ok(Resolution::Finished(decision, finished))
    }
}
