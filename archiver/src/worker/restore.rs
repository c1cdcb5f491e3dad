//! Restores: one player back from MongoDB, and the loops serving the restore queues.

use std::time::{Duration, Instant};

use mongodb::bson::doc;
use tokio::sync::watch;

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
                .collection(shard)
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
    /// its own, on whichever shard owns the queue's slot now. When the slot moves (the pop
    /// answers `MOVED`, or the store's map names another shard) it reads the map again and
    /// follows; after any other failure it reconnects after [`RESTORE_QUEUE_PAUSE`].
    pub async fn serve_restore_queue(&self, queue: RestoreQueue, mut stop: watch::Receiver<bool>) {
        let key = queue.key();
        let mut conn: Option<(
            ShardIndex,
            redis::aio::MultiplexedConnection,
            tokio::time::Instant,
        )> = None;
        while !*stop.borrow() {
            let shard = self.store.shard_map().shard_for_slot(queue.slot());
            if conn.as_ref().is_some_and(|(on, ..)| *on != shard) {
                conn = None;
            }
            if conn.is_none() {
                let opened = tokio::time::Instant::now();
                match self.store.dedicated_connection(shard).await {
                    Ok(c) => conn = Some((shard, c, opened)),
                    Err(e) => {
                        tracing::warn!(shard = %self.shard_name(shard), queue = queue.index(), error = %e, "restore queue unreachable");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
            let Some((_, c, opened)) = conn.as_mut() else {
                continue;
            };
            let opened = *opened;
            // The oldest request first.
            let mut pop = redis::cmd("BZPOPMIN");
            pop.arg(&key).arg(1);
            let popped: Result<Option<String>, redis::RedisError> = tokio::select! {
                popped = pop.query_async::<Option<(String, String, f64)>>(c) => {
                    popped.map(|p| p.map(|(_, request, _)| request))
                }
                _ = stop.changed() => Ok(None),
            };
            if *stop.borrow() {
                break;
            }
            let request = match popped {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(e) => {
                    // MOVED: the queue's slot moved to another master; read the map again
                    // and follow it. NOREPLICAS (the pops write), READONLY after a failover,
                    // a lost connection: reconnect (the master may have moved), but pause
                    // first. Retrying at once opened a connection per attempt, thousands a
                    // second, and the load kept the master's replicas from counting as
                    // good: NOREPLICAS for everyone.
                    if e.code() == Some("MOVED") {
                        self.store.slot_moved(opened).await;
                    }
                    tracing::warn!(shard = %self.shard_name(shard), queue = queue.index(), error = %e, "restore queue failed");
                    conn = None;
                    tokio::select! {
                        _ = tokio::time::sleep(RESTORE_QUEUE_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            };
            self.serve_request(&request).await;
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
                Err(e) => {
                    tracing::debug!(shard = %self.shard_name(shard), error = %e, "legacy restore queue unreadable")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(LEGACY_RESTORE_POLL) => {}
                _ = stop.changed() => {}
            }
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
