//! The sweeper: finds the intents whose lease has passed and the commit records older than a
//! lease on one shard, and hands each to the resolver ([`super::intents`]). The archiver runs
//! it on every pass (`Archiver::sweep_pass`); tests run it when they need it.

use std::sync::LazyLock;

use redis::Value as RedisValue;

use crate::error::Error;
use crate::keys::{PlayerKeys, SlotKeys};
use crate::model::PlayerId;
use crate::script::IntentRef;
use crate::shard_map::ShardIndex;

use super::intents::{text, unexpected, Decision, Finished, Resolution, FORGET};
use super::look::Read;
use super::road::{Command, Effect, LuaScript};
use super::Store;

/// Drops a player's entry from its slot's intents set unless it holds an intent again.
static UNLIST: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../multi/unlist.lua")));

/// What one sweep of a shard did with the intents whose lease had passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Applied or rolled back by their decision.
    pub finished: u64,
    /// Left for the next sweep: their decision could not be read or written now.
    pub unresolved: u64,
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
    /// The sweep of one shard: resolves every intent whose lease has passed, then forgets
    /// the commit records older than a lease whose participants were all applied (applying
    /// any that were not). Returns how many intents it finished.
    pub async fn sweep(&self, shard: ShardIndex) -> Result<Swept, Error> {
        let mut swept = self.sweep_intents(shard).await?;
        // The records' pass reads the clock again, later: an intent whose lease passed in
        // between is finished there, and counts the same.
        swept.finished += self.sweep_decisions(shard).await?;
        Ok(swept)
    }

    /// Commit records of `shard`'s primaries older than a lease: each participant still
    /// holding the attempt's intent is applied, then the record is forgotten. Returns how
    /// many intents it finished.
    async fn sweep_decisions(&self, shard: ShardIndex) -> Result<u64, Error> {
        let old = server_ms(self, shard)
            .await?
            .saturating_sub(self.inner.settings.intent_lease_ms);
        let mut finished = 0;
        for chunk in self.shard_map().slots_of(shard).chunks(512) {
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
                    // `{<primary>}:decision:<attempt>`: the primary's meta is `{<primary>}:meta`.
                    let text_key = String::from_utf8_lossy(&key);
                    let Some((tagged_primary, attempt)) = text_key.rsplit_once(":decision:") else {
                        continue;
                    };
                    let attempt = attempt.to_string();
                    let meta = format!("{tagged_primary}:meta").into_bytes();
                    let value = match self
                        .look(shard, &meta, &[key.as_slice()], Read::Field, &["p"])
                        .await
                    {
                        Ok(mut replies) => replies.pop().unwrap_or(RedisValue::Nil),
                        // Its primary is parked by a slot move (or the shard refuses now):
                        // the record is looked at again by a later sweep, on its owner. One
                        // that cannot be read at all must not keep the sweep from the others.
                        Err(e) => {
                            if !e.is_retryable() {
                                tracing::warn!(record = %text_key, error = %e, "a commit record could not be read");
                            }
                            continue;
                        }
                    };
                    let participants = text(&value)
                        .as_deref()
                        .map(commit_participants)
                        .unwrap_or_default();
                    // A commit record names its primary first. None read: the record is gone
                    // (forgotten since it was listed, its entry with it), or a server that is
                    // no longer the master answered: only an entry whose record is absent
                    // where the forget runs is dropped.
                    let Some(primary) = participants.first() else {
                        let _ = self
                            .send(
                                shard,
                                vec![Command::script(&FORGET, Effect::Housekeeping)
                                    .key(key.as_slice())
                                    .key(&index)
                                    .key(meta.as_slice())
                                    .arg("entry")],
                            )
                            .await;
                        continue;
                    };
                    // Read again, acknowledged (the read writes the decision again): every
                    // answer below is then from a master that holds the commit, so none is
                    // an old master's, woken after a failover, that never saw it.
                    match self.multi_decision(primary, &attempt).await {
                        Ok(Some(Decision::Commit)) => {}
                        // Gone meanwhile (forgotten by its coordinator), or not a commit:
                        // nothing of it to finish or forget here.
                        Ok(_) => continue,
                        Err(e) => {
                            // One record that cannot be read now must not keep the sweep
                            // from the others: looked at again by the next pass.
                            if !e.is_retryable() {
                                tracing::warn!(record = %text_key, error = %e, "a commit record could not be read again");
                            }
                            continue;
                        }
                    }
                    // Apply only: a participant answers whether it holds the intent, and the
                    // answer is acknowledged like a write (`NO_INTENT` writes its last apply
                    // again), so the record is forgotten only once every apply is kept.
                    let mut all_applied = true;
                    for player in &participants {
                        match self
                            .finish_participant(
                                player,
                                &attempt,
                                Decision::Commit,
                                player == primary,
                            )
                            .await
                        {
                            // Applied now; one applied before (by the intents' pass just
                            // above, say) was counted there.
                            Ok(Finished::Applied) => finished += 1,
                            Ok(Finished::AlreadyApplied | Finished::NoIntent) => {}
                            Ok(Finished::RolledBack) | Err(_) => all_applied = false,
                        }
                    }
                    if all_applied {
                        let forget = Command::script(&FORGET, Effect::Housekeeping)
                            .key(key.as_slice())
                            .key(&index)
                            .key(meta.as_slice());
                        match self
                            .send(shard, vec![forget])
                            .await
                            .into_acknowledged_reply()
                        {
                            Ok(_) => {}
                            // Parked meanwhile: forgotten by a later sweep.
                            Err(e) if e.is_retryable() => {}
                            Err(e) => {
                                tracing::warn!(record = %text_key, error = %e, "a commit record could not be forgotten");
                            }
                        }
                    }
                }
            }
        }
        Ok(finished)
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
        let name = self.shard_name(shard).to_string();
        let now_ms = server_ms(self, shard).await?;
        let slots = self.shard_map().slots_of(shard);
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
                let keys = PlayerKeys::new(&player);
                type Held = (Option<String>, Option<String>, Option<u64>, Option<u64>);
                let looked = self
                    .look(
                        shard,
                        &keys.meta,
                        &[&keys.intent],
                        Read::Fields,
                        &["a", "p", "v", "l"],
                    )
                    .await
                    .and_then(|mut replies| {
                        redis::from_redis_value::<Held>(replies.pop().unwrap_or(RedisValue::Nil))
                            .map_err(unexpected)
                    });
                let held = match looked {
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
                    // The set names a player whose intent is gone: drop the stale entry —
                    // unless a new intent was staged since the look (its entry is its own).
                    let unlist = Command::script(&UNLIST, Effect::Housekeeping)
                        .key(&keys.meta)
                        .key(&keys.intent)
                        .key(SlotKeys::of_player(&player).intents)
                        .arg(player.as_str());
                    let _ = self.send(shard, vec![unlist]).await;
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
}
