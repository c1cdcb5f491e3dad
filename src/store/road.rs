//! The one road to Redis: every command the library sends to a shard goes through
//! [`Store::send`], which owns everything a call needs to be right and observable.
//!
//! - **One connection per call.** A call's commands go out as one pipeline on one of the
//!   shard's links; a `NOSCRIPT` reload and the resend of what it refused use the same link.
//! - **The acknowledgement covers the call's own writes.** In `replicated` mode a call that
//!   wrote is acknowledged by `WAIT` on *the link that carried its writes* (Redis counts only
//!   the writes of the connection `WAIT` is sent on), and the acknowledgement comes back only
//!   inside the call's [`Answer`]: there is no other way to ask for one, so no write can be
//!   acknowledged on a connection that did not carry it.
//! - **The breaker**: an open breaker fails the call before anything is sent.
//! - **Shard metrics**: every call is reported to the store's observer.
//! - **One classifier** of Redis failures into [`Error`] ([`server_error`],
//!   [`transport_error`]), with its retry advice, and the rule for when a failure means the
//!   master may have moved (the shard's links are invalidated, at most once per cooldown for
//!   a master that is merely short of replicas, so a stalled shard does not see a connect per
//!   retry).
//!
//! - **Calls nobody waits on are coalesced per shard** ([`Store::send_coalesced`]: a
//!   committed trade's detached applies and its forget): while one such call to a shard is
//!   out, the next ones queue and go out together as one call once it is back, each caller
//!   answered its own replies and the call's acknowledgement (if its commands write). A
//!   coalesced call is a call like any other: one link, its `WAIT` on that link.
//!
//! The only exception is [`Store::dedicated_connection`], a connection of its own for one
//! blocking reader (the archiver's restore queue), which carries no writes that need an
//! acknowledgement.

use std::sync::{Arc, LazyLock};

use redis::{ServerErrorKind, ToRedisArgs, Value as RedisValue};
use tokio::time::Instant;

use crate::config::Acknowledge;
use crate::error::Error;
use crate::script::Invocation;
use crate::shard_map::ShardIndex;

use super::breaker::Admit;
use super::links::ShardLinks;
use super::topology::Routes;
use super::Store;

/// A Lua script the road can run: its source and its SHA1, reloaded when a server has lost
/// it (after a restart or `SCRIPT FLUSH`).
pub struct LuaScript {
    script: redis::Script,
    source: &'static str,
}

impl LuaScript {
    /// The script with `source`; its SHA1 is computed here, once.
    pub fn new(source: &'static str) -> LuaScript {
        LuaScript {
            script: redis::Script::new(source),
            source,
        }
    }

    /// The script's SHA1, as `EVALSHA` names it.
    pub fn hash(&self) -> &str {
        self.script.get_hash()
    }

    /// The script's source.
    pub fn source(&self) -> &'static str {
        self.source
    }
}

/// What a command does to the shard, which decides how a failure is classified and whether
/// the call is acknowledged by the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Reads only: a failure after sending is UNAVAILABLE (nothing changed), and no `WAIT`.
    Reads,
    /// May write: a failure after sending is UNKNOWN, and in `replicated` mode the call is
    /// acknowledged by `WAIT` on its own link once this command answered. A script that
    /// answers nil declares that it wrote nothing (no `WAIT` for it).
    Writes,
    /// Writes whose loss in a failover is harmless (housekeeping that is redone, hints):
    /// classified as a write, never waited for.
    Housekeeping,
}

/// One command of a call: a script (keys and arguments) or a plain command.
pub struct Command {
    body: Body,
    effect: Effect,
}

enum Body {
    Script {
        script: &'static LuaScript,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    },
    Plain(redis::Cmd),
}

impl Command {
    /// Runs `script` (add its keys and arguments with [`Command::key`] and [`Command::arg`]).
    pub fn script(script: &'static LuaScript, effect: Effect) -> Command {
        Command {
            body: Body::Script {
                script,
                keys: Vec::new(),
                args: Vec::new(),
            },
            effect,
        }
    }

    /// A call of the transaction script, encoded by [`crate::script`].
    pub(crate) fn transaction(invocation: Invocation, effect: Effect) -> Command {
        Command {
            body: Body::Script {
                script: &TRANSACTION,
                keys: invocation.keys,
                args: invocation.args,
            },
            effect,
        }
    }

    /// A plain command.
    pub fn plain(cmd: redis::Cmd, effect: Effect) -> Command {
        Command {
            body: Body::Plain(cmd),
            effect,
        }
    }

    /// A plain command that only reads.
    pub fn read(cmd: redis::Cmd) -> Command {
        Command::plain(cmd, Effect::Reads)
    }

    /// Adds a key (scripts) or an argument (plain commands).
    pub fn key(mut self, key: impl ToRedisArgs) -> Command {
        match &mut self.body {
            Body::Script { keys, .. } => keys.extend(key.to_redis_args()),
            Body::Plain(cmd) => {
                cmd.arg(key);
            }
        }
        self
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Command {
        match &mut self.body {
            Body::Script { args, .. } => args.extend(arg.to_redis_args()),
            Body::Plain(cmd) => {
                cmd.arg(arg);
            }
        }
        self
    }

    fn add_to(&self, pipe: &mut redis::Pipeline) {
        match &self.body {
            Body::Script { script, keys, args } => {
                let cmd = pipe.cmd("EVALSHA").arg(script.hash()).arg(keys.len());
                for key in keys {
                    cmd.arg(key.as_slice());
                }
                for arg in args {
                    cmd.arg(arg.as_slice());
                }
            }
            Body::Plain(cmd) => {
                pipe.add_command(cmd.clone());
            }
        }
    }

    fn lua(&self) -> Option<&'static LuaScript> {
        match &self.body {
            Body::Script { script, .. } => Some(script),
            Body::Plain(_) => None,
        }
    }
}

/// What a call answered: each command's reply (or why it failed), and the acknowledgement of
/// the call's writes.
#[derive(Debug)]
pub struct Answer {
    /// One per command, in order. A Redis error reply is already classified.
    pub replies: Vec<Result<RedisValue, Error>>,
    /// `None` when no acknowledgement was asked for (`local` mode, or no command that
    /// writes answered); else whether `WAIT` on the link that carried the writes counted
    /// `redis.replicas_to_wait` replicas (a shortfall or a failed `WAIT` is UNKNOWN).
    pub acknowledged: Option<Result<(), Error>>,
}

impl Answer {
    /// The acknowledgement, as a result: `Ok` when none was needed or it was given.
    pub fn acknowledgement(&self) -> Result<(), Error> {
        self.acknowledged.clone().unwrap_or(Ok(()))
    }

    /// The only reply of a one-command call, failed by a missing acknowledgement if the
    /// command wrote.
    pub fn into_acknowledged_reply(mut self) -> Result<RedisValue, Error> {
        let reply = self
            .replies
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("a call answered nothing".into())))?;
        self.acknowledgement()?;
        Ok(reply)
    }
}

/// Scripts the road runs for the store itself, with their sources, so a reload knows them.
pub(crate) static TRANSACTION: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(crate::script::SOURCE));

impl Store {
    /// Sends `commands` to `shard`'s master as one pipeline on one link: the one road every
    /// command of the library takes (see the module docs).
    ///
    /// Fails every command at once, sending nothing, while the shard's breaker is open or no
    /// master can be reached.
    pub async fn send(&self, shard: ShardIndex, commands: Vec<Command>) -> Answer {
        let commands: Vec<&Command> = commands.iter().collect();
        self.send_borrowed(shard, &commands).await
    }

    /// [`Store::send`] for commands the caller keeps, e.g. to send them again on a retry
    /// without encoding them again.
    pub(super) async fn send_borrowed(&self, shard: ShardIndex, commands: &[&Command]) -> Answer {
        let routes = self.routes();
        let links = routes.links(shard).clone();
        self.inner.topology.watch();
        let started = Instant::now();
        let before = links.breaker.state();
        let answer = if links.breaker.admit(started) == Admit::No {
            let e = Error::Unavailable {
                shard: Some(links.name.clone()),
                reason: "circuit breaker open: the shard failed repeatedly".into(),
            };
            Answer {
                replies: commands.iter().map(|_| Err(e.clone())).collect(),
                acknowledged: None,
            }
        } else {
            let sent = self
                .send_on_link(&routes, &links, commands, Asking::No)
                .await;
            if sent.healthy {
                links.breaker.success();
            } else if links.breaker.failure(Instant::now()) {
                tracing::warn!(shard = %links.name, "circuit breaker opened");
            }
            if sent.moved {
                // The map is stale: read it again before the caller retries, so the retry
                // is routed by the new one (one read serves every caller meanwhile).
                self.inner.topology.moved(started).await;
            }
            sent.answer
        };
        if let Some(observer) = &self.inner.observer {
            let error = answer
                .replies
                .iter()
                .filter_map(|r| r.as_ref().err())
                .chain(answer.acknowledged.iter().filter_map(|a| a.as_ref().err()))
                .find(|e| {
                    matches!(
                        e,
                        Error::Unavailable { .. } | Error::Unknown { .. } | Error::Internal(_)
                    )
                });
            observer.pipeline(&links.name, started.elapsed(), error);
            let after = links.breaker.state();
            if after != before {
                observer.breaker_changed(&links.name, after);
            }
        }
        answer
    }

    /// One command on the road, its reply converted: failed by a missing acknowledgement if
    /// it wrote.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        shard: ShardIndex,
        command: Command,
    ) -> Result<T, Error> {
        let reply = self
            .send(shard, vec![command])
            .await
            .into_acknowledged_reply()?;
        redis::from_redis_value(reply).map_err(|e| self.unexpected(shard, e))
    }

    /// Several commands in one call (one pipeline, one link), their replies converted: every
    /// reply, or the first failure (a missing acknowledgement included).
    pub async fn call_all<T: redis::FromRedisValue>(
        &self,
        shard: ShardIndex,
        commands: Vec<Command>,
    ) -> Result<Vec<T>, Error> {
        let answer = self.send(shard, commands).await;
        answer.acknowledgement()?;
        answer
            .replies
            .into_iter()
            .map(|reply| redis::from_redis_value(reply?).map_err(|e| self.unexpected(shard, e)))
            .collect()
    }

    fn unexpected(&self, shard: ShardIndex, e: impl std::fmt::Display) -> Error {
        Error::Internal(format!(
            "shard {}: unexpected reply: {e}",
            self.shard_name(shard)
        ))
    }

    /// The call on one link of `links`. Commands a migrating slot's source sends on (`ASK`)
    /// go once more, each after `ASKING` in one pipeline, on a link of the node named.
    async fn send_on_link(
        &self,
        routes: &Routes,
        links: &Arc<ShardLinks>,
        commands: &[&Command],
        asking: Asking,
    ) -> Sent {
        let name = &links.name;
        links.watch_sentinels();
        let failed_all = |e: Error| Sent {
            answer: Answer {
                replies: commands.iter().map(|_| Err(e.clone())).collect(),
                acknowledged: None,
            },
            healthy: false,
            moved: false,
        };
        let link = match links.get().await {
            Ok(link) => link,
            Err(e) => return failed_all(e),
        };
        let mut conn = link.conn.clone();
        let mut replies: Vec<Option<Result<RedisValue, Error>>> = vec![None; commands.len()];
        let mut pending: Vec<usize> = (0..commands.len()).collect();
        let mut healthy = true;
        let mut moved = false;
        // Per command sent on to a migrating slot's target: the target's address.
        let mut asked: Vec<(usize, String)> = Vec::new();
        for round in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &pending {
                if asking == Asking::Yes {
                    // Lets the target run a command for a slot it is importing; it counts
                    // for the next command on this connection only.
                    pipe.cmd("ASKING");
                }
                commands[i].add_to(&mut pipe);
            }
            let expected = pending.len() * if asking == Asking::Yes { 2 } else { 1 };
            let answered: Result<Vec<RedisValue>, redis::RedisError> =
                pipe.query_async(&mut conn).await;
            let answered = match answered {
                Ok(answered) if answered.len() == expected => answered,
                Ok(_) => {
                    for &i in &pending {
                        replies[i] = Some(Err(Error::Internal(format!(
                            "shard {name}: pipeline reply count mismatch"
                        ))));
                    }
                    let _ = links.invalidate(&link);
                    healthy = false;
                    break;
                }
                Err(e) => {
                    tracing::warn!(shard = %name, error = %e, "call failed");
                    for &i in &pending {
                        replies[i] = Some(Err(transport_error(name, commands[i].effect, &e)));
                    }
                    // The connection may be closed, out of step, or to a master that is gone.
                    let _ = links.invalidate(&link);
                    healthy = false;
                    break;
                }
            };
            let answered = answered
                .into_iter()
                .skip(usize::from(asking == Asking::Yes))
                .step_by(if asking == Asking::Yes { 2 } else { 1 });
            let mut lost_script = Vec::new();
            for (&i, reply) in pending.iter().zip(answered) {
                match reply {
                    RedisValue::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                        lost_script.push(i)
                    }
                    RedisValue::ServerError(e)
                        if e.kind() == Some(ServerErrorKind::Ask) && asking == Asking::No =>
                    {
                        match e.details().and_then(redirect_target) {
                            Some(target) => asked.push((i, target.to_string())),
                            None => replies[i] = Some(Err(server_error(name, e.code(), &e))),
                        }
                    }
                    RedisValue::ServerError(e) => {
                        if moved_on(e.code()) {
                            links.master_may_have_moved(&link, e.code() == "NOREPLICAS");
                            healthy = false;
                        }
                        // MOVED: the map is stale (read again once the call is over). CLUSTERDOWN
                        // is the cluster's state, not this shard's, so it leaves the breaker
                        // alone (every shard answers it at once when the cluster lost its
                        // majority; opened breakers would outlast the recovery).
                        if e.code() == "MOVED" {
                            moved = true;
                        }
                        replies[i] = Some(Err(server_error(name, e.code(), &e)));
                    }
                    reply => replies[i] = Some(Ok(reply)),
                }
            }
            if lost_script.is_empty() {
                break;
            }
            // NOSCRIPT means the script did not run, so sending those again is safe.
            let mut sources: Vec<&'static LuaScript> = Vec::new();
            for &i in &lost_script {
                if let Some(script) = commands[i].lua() {
                    if !sources.iter().any(|s| s.hash() == script.hash()) {
                        sources.push(script);
                    }
                }
            }
            let mut load = redis::pipe();
            for script in &sources {
                load.cmd("SCRIPT").arg("LOAD").arg(script.source());
            }
            let loaded: Result<Vec<String>, redis::RedisError> = load.query_async(&mut conn).await;
            if let Err(e) = &loaded {
                // The connection failed under the reload: it may be closed or out of step.
                tracing::warn!(shard = %name, error = %e, "script reload failed");
                let _ = links.invalidate(&link);
                healthy = false;
            }
            let loaded_all = matches!(&loaded, Ok(hashes)
                if hashes.iter().zip(&sources).all(|(h, s)| h == s.hash()));
            if loaded_all && round == 0 {
                pending = lost_script;
            } else {
                for i in lost_script {
                    replies[i] = Some(Err(Error::Unavailable {
                        shard: Some(name.clone()),
                        reason: "could not load a script".into(),
                    }));
                }
                break;
            }
        }
        // The master answered as the master (no refusal that says it may have moved): its
        // links need not ask the Sentinels again for a while.
        if healthy {
            links.heard(&link);
        }
        // A write that answered is acknowledged by WAIT on this very link (shared with the
        // other callers of the link, see `wait.rs`): never on another.
        let wrote = commands.iter().zip(&replies).any(|(c, r)| {
            c.effect == Effect::Writes && matches!(r, Some(Ok(v)) if *v != RedisValue::Nil)
        });
        let settings = &self.inner.settings;
        let mut acknowledged = if !wrote || settings.acknowledge != Acknowledge::Replicated {
            None
        } else {
            Some(match link.replicated().await {
                // Counted for the master this link leads to: if the shard's links have moved
                // on meanwhile (a failover followed, the master may have changed), the count
                // it was asked for may be the new master's, which a replica still following
                // the old one could satisfy. Not taken as acknowledged: the write is UNKNOWN,
                // and its retry (same key) is judged and acknowledged on a current link.
                Ok((n, asked)) if n >= i64::from(asked) && !links.is_current(&link) => {
                    Err(Error::Unknown {
                        shard: Some(name.clone()),
                        reason: "applied on the master, acknowledged while the shard's \
                                 connections moved on (the master may have changed)"
                            .into(),
                    })
                }
                Ok((n, asked)) if n >= i64::from(asked) => Ok(()),
                Ok((n, asked)) => Err(Error::Unknown {
                    shard: Some(name.clone()),
                    reason: format!(
                        "applied on the master but acknowledged by {n} of {asked} replicas in time"
                    ),
                }),
                Err(e) => {
                    let _ = links.invalidate(&link);
                    Err(Error::Unknown {
                        shard: Some(name.clone()),
                        reason: format!("applied on the master, but {e}"),
                    })
                }
            })
        };
        if !asked.is_empty() {
            // Sent on to the importing node, each once; what that call wrote is acknowledged
            // on its own link, and both acknowledgements must hold.
            let (answers, ask_acknowledged) = self.send_asked(routes, name, commands, &asked).await;
            for ((i, _), reply) in asked.iter().zip(answers) {
                replies[*i] = Some(reply);
            }
            acknowledged = match (acknowledged, ask_acknowledged) {
                (Some(Err(e)), _) | (_, Some(Err(e))) => Some(Err(e)),
                (None, None) => None,
                _ => Some(Ok(())),
            };
        }
        let replies: Vec<Result<RedisValue, Error>> = replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("no reply".into()))))
            .collect();
        Sent {
            answer: Answer {
                replies,
                acknowledged,
            },
            healthy,
            moved,
        }
    }

    /// Sends each command of `asked` (its index, the node named by `ASK`) on to that node
    /// after `ASKING`, once, the commands for one node in one call: their replies in the
    /// order of `asked`, and the acknowledgement of what they wrote.
    async fn send_asked(
        &self,
        routes: &Routes,
        source: &str,
        commands: &[&Command],
        asked: &[(usize, String)],
    ) -> (Vec<Result<RedisValue, Error>>, Option<Result<(), Error>>) {
        let mut replies: Vec<Option<Result<RedisValue, Error>>> = vec![None; asked.len()];
        let mut acknowledged: Option<Result<(), Error>> = None;
        let mut targets: Vec<&str> = asked.iter().map(|(_, t)| t.as_str()).collect();
        targets.sort_unstable();
        targets.dedup();
        for target in targets {
            let positions: Vec<usize> =
                (0..asked.len()).filter(|&k| asked[k].1 == target).collect();
            let shard = routes
                .view
                .as_ref()
                .and_then(|view| view.group_of_master(target));
            let Some(links) = shard.and_then(|s| routes.links.get(s.get())) else {
                // A node the map does not know as a master yet: the command applied nothing;
                // the retry finds the slot moved, or the node in the map.
                for k in positions {
                    replies[k] = Some(Err(Error::Unavailable {
                        shard: Some(source.to_string()),
                        reason: format!(
                            "slot migrating to {target}, a node the cluster's map does not \
                             list yet: nothing applied"
                        ),
                    }));
                }
                self.inner.topology.moved(Instant::now()).await;
                continue;
            };
            let sent_on: Vec<&Command> = positions.iter().map(|&k| commands[asked[k].0]).collect();
            let sent = Box::pin(self.send_on_link(routes, links, &sent_on, Asking::Yes)).await;
            for (k, reply) in positions.into_iter().zip(sent.answer.replies) {
                replies[k] = Some(reply);
            }
            acknowledged = match (acknowledged, sent.answer.acknowledged) {
                (Some(Err(e)), _) | (_, Some(Err(e))) => Some(Err(e)),
                (None, None) => None,
                _ => Some(Ok(())),
            };
        }
        let replies = replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("no reply".into()))))
            .collect();
        (replies, acknowledged)
    }
}

/// Whether a call is sent on to a migrating slot's target (each command after `ASKING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asking {
    No,
    Yes,
}

/// The calls nobody is waiting on (a committed trade's detached applies and its forget),
/// coalesced per shard: while one of a shard's coalesced calls is out, the next ones queue,
/// and go out together as one call once it is back. Under load a detached apply then costs
/// the store and Redis a share of one call (one pipeline, one `WAIT`) instead of a call of
/// its own; alone, it goes out at once, as before. A queue longer than one call carries
/// gets another call out beside the first, up to [`LANE_CALLS`]: a shard whose calls are
/// slow (a `WAIT` timing out while replicas are short) is then not limited to one call's
/// worth of commands per round trip.
#[derive(Default)]
pub(super) struct Lanes {
    lanes: std::sync::Mutex<std::collections::HashMap<ShardIndex, Lane>>,
}

impl Lanes {
    /// The lanes, locked (never across an await). A panic while they were locked left them
    /// consistent: every change is a push, a pop or a count, each whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ShardIndex, Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Lane {
    queue: std::collections::VecDeque<Job>,
    /// The commands in `queue`.
    queued: usize,
    /// The tasks sending this lane's calls (each stops when it finds the queue empty).
    running: usize,
}

/// One caller's commands in a coalesced call, and where its part of the answer goes.
struct Job {
    commands: Vec<Command>,
    answer: tokio::sync::oneshot::Sender<Answer>,
}

/// At most this many commands in one coalesced call; more wait for the next.
const COALESCED_COMMANDS: usize = 64;

/// At most this many coalesced calls out to one shard at once.
const LANE_CALLS: usize = 8;

/// A task sending a lane's calls, counted in its `running` from before it is spawned: if it
/// ends other than by finding the queue empty — its runtime shut down, before or after it
/// first ran — it counts itself out, and the last one out drops the queued callers, whose
/// dropped senders answer them UNKNOWN; the next caller starts a task again.
struct LaneTask {
    store: Store,
    shard: ShardIndex,
    counted: bool,
}

impl Drop for LaneTask {
    fn drop(&mut self) {
        if self.counted {
            let mut lanes = self.store.inner.lanes.lock();
            if let Some(lane) = lanes.get_mut(&self.shard) {
                lane.running = lane.running.saturating_sub(1);
                if lane.running == 0 {
                    lane.queue.clear();
                    lane.queued = 0;
                }
            }
        }
    }
}

impl Store {
    /// [`Store::send`] for work nobody is waiting on: the commands may go out in one call with
    /// other callers' (see [`Lanes`]). Each caller's answer holds its own commands' replies;
    /// the acknowledgement is the call's, which covers every write it carried, and is given
    /// only to callers whose commands write (as [`Store::send`] gives it). Only for commands
    /// that answer at once: a blocking one would hold every caller queued behind it.
    pub async fn send_coalesced(&self, shard: ShardIndex, commands: Vec<Command>) -> Answer {
        let count = commands.len();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let start = {
            let mut lanes = self.inner.lanes.lock();
            let lane = lanes.entry(shard).or_default();
            lane.queue.push_back(Job { commands, answer });
            lane.queued += count;
            let start = lane.running == 0
                || (lane.queued > COALESCED_COMMANDS && lane.running < LANE_CALLS);
            if start {
                lane.running += 1;
            }
            start
        };
        if start {
            let task = LaneTask {
                store: self.clone(),
                shard,
                counted: true,
            };
            tokio::spawn(task.run());
        }
        answered.await.unwrap_or_else(|_| {
            let e = Error::Unknown {
                shard: Some(self.shard_name(shard)),
                reason: "the call carrying these commands was dropped".into(),
            };
            Answer {
                replies: (0..count).map(|_| Err(e.clone())).collect(),
                acknowledged: None,
            }
        })
    }
}

impl LaneTask {
    /// Sends the queue of the lane, a call at a time, until it finds it empty.
    async fn run(mut self) {
        loop {
            let jobs: Vec<Job> = {
                let mut all = self.store.inner.lanes.lock();
                let lane = all.entry(self.shard).or_default();
                if lane.queue.is_empty() {
                    lane.running = lane.running.saturating_sub(1);
                    self.counted = false;
                    return;
                }
                let mut jobs = Vec::new();
                let mut commands = 0;
                while let Some(job) = lane.queue.front() {
                    if !jobs.is_empty() && commands + job.commands.len() > COALESCED_COMMANDS {
                        break;
                    }
                    commands += job.commands.len();
                    jobs.extend(lane.queue.pop_front());
                }
                lane.queued -= commands;
                jobs
            };
            let mut parts = Vec::with_capacity(jobs.len());
            let mut commands = Vec::new();
            for job in jobs {
                let writes = job.commands.iter().any(|c| c.effect == Effect::Writes);
                parts.push((job.commands.len(), writes, job.answer));
                commands.extend(job.commands);
            }
            let answer = self.store.send(self.shard, commands).await;
            let mut replies = answer.replies.into_iter();
            for (count, writes, sender) in parts {
                let _ = sender.send(Answer {
                    replies: replies.by_ref().take(count).collect(),
                    acknowledged: if writes {
                        answer.acknowledged.clone()
                    } else {
                        None
                    },
                });
            }
        }
    }
}

/// A call's answer, and what the road learnt about the shard.
struct Sent {
    answer: Answer,
    /// Whether the shard behaved (for the breaker).
    healthy: bool,
    /// Whether a node refused a command for a slot it does not serve (`MOVED`).
    moved: bool,
}

/// The node a redirect's details (`<slot> <host:port>`) name.
fn redirect_target(details: &str) -> Option<&str> {
    details.split_ascii_whitespace().nth(1)
}

/// Error codes meaning "this server no longer takes writes for the shard".
fn moved_on(code: &str) -> bool {
    matches!(code, "READONLY" | "NOREPLICAS" | "MASTERDOWN")
}

/// Classifies a connection-level failure of a pipeline that was (or may have been) sent: a
/// command that may write may have run before the connection failed, so only a retry with
/// the same idempotency key can tell (UNKNOWN); a read changed nothing (UNAVAILABLE).
pub(crate) fn transport_error(shard: &str, effect: Effect, e: &redis::RedisError) -> Error {
    match effect {
        Effect::Writes | Effect::Housekeeping => Error::Unknown {
            shard: Some(shard.to_string()),
            reason: e.to_string(),
        },
        Effect::Reads => Error::Unavailable {
            shard: Some(shard.to_string()),
            reason: e.to_string(),
        },
    }
}

/// Classifies an error reply to one command. Redis refuses these before a script or command
/// runs (READONLY, OOM, BUSY, LOADING, MASTERDOWN, NOREPLICAS, MISCONF, and a cluster's
/// MOVED, ASK, TRYAGAIN, CLUSTERDOWN), or Colony's scripts refuse before writing anything
/// (MOVING: a slot move has the player parked, `docs/design/resharding.md`), so nothing was
/// applied and a retry is safe; anything else is a failure inside a script, which is a bug.
pub(crate) fn server_error(shard: &str, code: &str, e: &dyn std::fmt::Display) -> Error {
    let refused = matches!(
        code,
        "READONLY"
            | "OOM"
            | "BUSY"
            | "LOADING"
            | "MASTERDOWN"
            | "NOREPLICAS"
            | "TRYAGAIN"
            | "CLUSTERDOWN"
            | "MISCONF"
            | "MOVED"
            | "ASK"
            | "MOVING"
    );
    if refused {
        Error::Unavailable {
            shard: Some(shard.to_string()),
            reason: e.to_string(),
        }
    } else {
        tracing::error!(shard, error = %e, "a script or command failed");
        Error::Internal(format!("shard {shard}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_unavailable_and_other_error_replies_are_internal() {
        for code in [
            "READONLY",
            "OOM",
            "BUSY",
            "LOADING",
            "MASTERDOWN",
            "NOREPLICAS",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MISCONF",
            "MOVED",
            "ASK",
            "MOVING",
        ] {
            assert!(
                matches!(server_error("s", code, &code), Error::Unavailable { .. }),
                "{code}"
            );
        }
        for code in ["ERR", "WRONGTYPE", "NOSCRIPT"] {
            assert!(
                matches!(server_error("s", code, &code), Error::Internal(_)),
                "{code}"
            );
        }
        assert!(moved_on("READONLY") && moved_on("NOREPLICAS") && moved_on("MASTERDOWN"));
        assert!(!moved_on("BUSY") && !moved_on("OOM"));
    }

    #[test]
    fn a_failed_write_is_unknown_and_a_failed_read_unavailable() {
        let e = redis::RedisError::from(std::io::Error::other("reset"));
        assert!(matches!(
            transport_error("s", Effect::Writes, &e),
            Error::Unknown { .. }
        ));
        assert!(matches!(
            transport_error("s", Effect::Housekeeping, &e),
            Error::Unknown { .. }
        ));
        assert!(matches!(
            transport_error("s", Effect::Reads, &e),
            Error::Unavailable { .. }
        ));
    }
}
