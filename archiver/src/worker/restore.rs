//! Restores: one player back from MongoDB, and the loops serving the restore queues.

use std::time::{Duration, Instant};

use mongodb::bson::doc;
use tokio::sync::watch;

use colony::backoff::Backoff;
use colony::keys::{RestoreQueue, LEGACY_RESTORE_QUEUE, LEGACY_RESTORE_SET};
use colony::shard_map::ShardIndex;
use colony::PlayerId;

use super::*;
use crate::document::from_document;

impl Archiver {
    /// Restores a player from MongoDB: everything when `full`, else the public part, on the
    /// shard that serves the player now (by the store's current map: in a cluster the
    /// player's slot may have moved since it was archived).
    pub async fn restore(&self, player: &PlayerId, full: bool) -> Result<Restoral, ArchiveError> {
        let shard = self.store.shard_map().shard_for_player(player);
        async {
            let document = self
                .collection_of(player.as_str())
                .find_one(doc! { "_id": player.as_str() })
                .await?
                .ok_or_else(|| ArchiveError::MissingDocument(player.as_str().to_string()))?;
            let snapshot = from_document(&document)?;
            let command = write_back(&RESTORE, player, &snapshot, if full { "1" } else { "0" });
            let outcome: String = self.store.call(shard, command).await?;
            tracing::debug!(
                shard = %self.shard_name(shard),
                player = %player.as_str(),
                version = snapshot.version,
                full,
                %outcome,
                "restore written back"
            );
            match outcome.as_str() {
                "RESTORED" => Ok(Restoral::Restored),
                "PUBLIC_RESTORED" => Ok(Restoral::PublicRestored),
                "NOT_ARCHIVED" => Ok(Restoral::NotArchived),
                "VERSION_MISMATCH" => Err(ArchiveError::Document(crate::document::DocumentError {
                    player: player.as_str().to_string(),
                    reason: "the document's version is not the one Redis archived".into(),
                })),
                other => Err(ArchiveError::UnexpectedReply(format!(
                    "restore script answered {other:?}"
                ))),
            }
        }
        .await
        .map_err(self.on(shard))
    }

    /// Serves every restore queue until `stop` turns true (and, on `[[shards]]`, what the
    /// previous versions' per-shard queues still hold).
    pub async fn serve_restore_queues(&self, stop: watch::Receiver<bool>) {
        let queues = RestoreQueue::all().map(|queue| self.serve_restore_queue(queue, stop.clone()));
        let legacy = self
            .shards()
            .filter(|_| !self.store.is_cluster())
            .map(|shard| self.serve_legacy_restores(shard, stop.clone()));
        tokio::join!(join_all(queues), join_all(legacy));
    }

    /// Serves one restore queue until `stop` turns true: a blocking pop, on a connection of
    /// its own, on whichever shard owns the queue's slot now.
    ///
    /// - The slot moved (`MOVED`, or the store's map names another shard): read the map
    ///   again and follow it.
    /// - The slot is moving and the queue's key is not on the source (`ASK`): requests
    ///   pushed meanwhile wait on the importing master, so they are taken through the
    ///   store's road (which follows `ASK`) every [`RESTORE_QUEUE_PAUSE`] until the move
    ///   ends.
    /// - Any other error reply (`NOREPLICAS`, `CLUSTERDOWN`, `LOADING`, ...) keeps the
    ///   connection; only a broken connection is opened again. Failures in a row back off
    ///   from [`RESTORE_QUEUE_PAUSE`] to [`RESTORE_QUEUE_MAX_PAUSE`], so that sixteen loops
    ///   never storm a shard that is failing over with connections.
    pub async fn serve_restore_queue(&self, queue: RestoreQueue, mut stop: watch::Receiver<bool>) {
        let key = queue.key();
        // The pop blocks well inside the connection's response timeout, so an idle queue
        // never looks like a dead connection.
        let settings = self.store.settings();
        let block = ((settings.command_timeout() + settings.replication_timeout()) / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(1))
            .as_secs_f64();
        let backoff = Backoff {
            base: RESTORE_QUEUE_PAUSE,
            max: RESTORE_QUEUE_MAX_PAUSE,
        };
        let mut failures: u32 = 0;
        let mut migrating = false;
        let mut conn: Option<(ShardIndex, redis::aio::MultiplexedConnection)> = None;
        while !*stop.borrow() {
            let shard = self.store.shard_map().shard_for_slot(queue.slot());
            if conn.as_ref().is_some_and(|(on, _)| *on != shard) {
                conn = None;
            }
            let Some((_, c)) = conn.as_mut() else {
                match self.store.dedicated_connection(shard).await {
                    Ok(c) => conn = Some((shard, c)),
                    Err(e) => {
                        tracing::warn!(shard = %self.shard_name(shard), queue = queue.index(), error = %e, "restore queue unreachable");
                        self.pause(backoff.delay(failures), &mut stop).await;
                        failures = failures.saturating_add(1);
                    }
                }
                continue;
            };
            // The oldest request first.
            let sent = tokio::time::Instant::now();
            let mut pop = redis::cmd("BZPOPMIN");
            pop.arg(&key).arg(block);
            let popped: Result<Option<String>, redis::RedisError> = tokio::select! {
                popped = pop.query_async::<Option<(String, String, f64)>>(c) => {
                    popped.map(|p| p.map(|(_, request, _)| request))
                }
                _ = stop.changed() => Ok(None),
            };
            if *stop.borrow() {
                break;
            }
            match popped {
                Ok(popped) => {
                    failures = 0;
                    migrating = false;
                    if let Some(request) = popped {
                        self.serve_request(&request).await;
                    }
                }
                Err(e) if e.code() == Some("ASK") => {
                    if !migrating {
                        tracing::info!(shard = %self.shard_name(shard), queue = queue.index(), "the restore queue's slot is moving; taking its requests through the road until the move ends");
                    }
                    migrating = true;
                    if !self.pop_through_road(shard, &key).await {
                        self.pause(RESTORE_QUEUE_PAUSE, &mut stop).await;
                    }
                }
                Err(e) => {
                    if e.code() == Some("MOVED") {
                        // Served by any read of the map begun since the pop was sent.
                        self.store.slot_moved(sent).await;
                        conn = None;
                    } else if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_timeout()
                        || e.code() == Some("READONLY")
                    {
                        // READONLY: the server was demoted (a failover); its pops would
                        // fail for ever on this connection, opened to it as the master.
                        conn = None;
                    }
                    tracing::warn!(shard = %self.shard_name(shard), queue = queue.index(), error = %e, "restore queue failed");
                    self.pause(backoff.delay(failures), &mut stop).await;
                    failures = failures.saturating_add(1);
                }
            }
        }
    }

    /// Takes one request from `key` through the store's road (following `ASK` to an
    /// importing master) and serves it. Whether there was one.
    async fn pop_through_road(&self, shard: ShardIndex, key: &str) -> bool {
        let mut pop = redis::cmd("ZPOPMIN");
        pop.arg(key).arg(1);
        let popped: Result<Vec<String>, colony::Error> = self
            .store
            .call(shard, Command::plain(pop, Effect::Housekeeping))
            .await;
        match popped {
            Ok(popped) => match popped.first() {
                Some(request) => {
                    self.serve_request(request).await;
                    true
                }
                None => false,
            },
            Err(e) => {
                tracing::debug!(shard = %self.shard_name(shard), error = %e, "restore queue unreadable while its slot moves");
                false
            }
        }
    }

    /// Sleeps `pause`, or less if `stop` changes.
    async fn pause(&self, pause: Duration, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }

    /// Serves, on `[[shards]]`, what a gateway of a previous version queued in `shard`'s own
    /// queues (`colony:restore`, then `colony:restores`) during a rolling upgrade: polled
    /// through the store every [`LEGACY_RESTORE_POLL`] while empty.
    pub async fn serve_legacy_restores(&self, shard: ShardIndex, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let popped: Result<Option<String>, colony::Error> = async {
                let mut rpop = redis::cmd("RPOP");
                rpop.arg(LEGACY_RESTORE_QUEUE);
                let legacy: Option<String> = self
                    .store
                    .call(shard, Command::plain(rpop, Effect::Housekeeping))
                    .await?;
                if legacy.is_some() {
                    return Ok(legacy);
                }
                let mut zpop = redis::cmd("ZPOPMIN");
                zpop.arg(LEGACY_RESTORE_SET).arg(1);
                let popped: Vec<String> = self
                    .store
                    .call(shard, Command::plain(zpop, Effect::Housekeeping))
                    .await?;
                Ok(popped.into_iter().next())
            }
            .await;
            match popped {
                Ok(Some(request)) => {
                    self.serve_request(&request).await;
                    continue;
                }
                Ok(None) => {}
                // A shard that is down is reported by the store and by the other loops.
                Err(e) if e.is_retryable() => {
                    tracing::debug!(shard = %self.shard_name(shard), error = %e, "legacy restore queue unreadable")
                }
                Err(e) => {
                    tracing::warn!(shard = %self.shard_name(shard), error = %e, "legacy restore queue unreadable")
                }
            }
            self.pause(LEGACY_RESTORE_POLL, &mut stop).await;
        }
    }

    /// Serves one restore request (`f:<id>` or `p:<id>`), logging and counting what happened.
    async fn serve_request(&self, request: &str) {
        let (full, id) = match request.split_once(':') {
            Some(("f", id)) => (true, id),
            Some(("p", id)) => (false, id),
            _ => {
                tracing::warn!(%request, "malformed restore request dropped");
                return;
            }
        };
        let Ok(player) = PlayerId::new(id) else {
            tracing::warn!(%request, "restore request with an invalid player id dropped");
            return;
        };
        let started = Instant::now();
        let restored = self.restore(&player, full).await;
        let outcome = match &restored {
            Ok(Restoral::NotArchived) => "already",
            Ok(_) => "restored",
            Err(_) => "error",
        };
        self.metrics.restore(full, outcome, started.elapsed());
        match restored {
            Ok(outcome) => {
                tracing::debug!(player = %id, ?outcome, elapsed = ?started.elapsed(), "restore")
            }
            // The store asks again while its caller waits: a passing failure is retried that
            // way; one that will fail again needs an operator. The error names its shard.
            Err(e) if e.is_retryable() => {
                tracing::warn!(player = %id, error = %e, "restore failed; the next request retries it")
            }
            Err(e) => {
                tracing::error!(player = %id, error = %e, "restore failed and will fail again")
            }
        }
    }
}
