//! Restores: one player back from MongoDB, and the loop serving a shard's restore queue.

use std::time::{Duration, Instant};

use mongodb::bson::doc;
use tokio::sync::watch;

use colony::keys::{LEGACY_RESTORE_QUEUE, RESTORE_QUEUE};
use colony::shard_map::ShardIndex;
use colony::PlayerId;

use super::*;
use crate::document::from_document;

impl Archiver {
    /// Restores a player from MongoDB: everything when `full`, else the public part.
    pub async fn restore(
        &self,
        shard: ShardIndex,
        player: &PlayerId,
        full: bool,
    ) -> Result<Restoral, ArchiveError> {
        async {
            let document = self.collections[shard.get()]
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

    /// Serves one shard's restore requests until `stop` turns true. After a failure of the
    /// queue it reconnects after [`RESTORE_QUEUE_PAUSE`].
    pub async fn serve_restores(&self, shard: ShardIndex, mut stop: watch::Receiver<bool>) {
        let mut conn = None;
        while !*stop.borrow() {
            if conn.is_none() {
                match self.store.dedicated_connection(shard).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(shard = %self.shard_name(shard), error = %e, "restore queue unreachable");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            // The oldest request first; what a gateway of the previous version pushed to the
            // legacy list is served too, ahead of waiting.
            let popped: Result<Option<String>, redis::RedisError> = async {
                let legacy: Option<String> = redis::cmd("RPOP")
                    .arg(LEGACY_RESTORE_QUEUE)
                    .query_async(c)
                    .await?;
                if legacy.is_some() {
                    return Ok(legacy);
                }
                let mut pop = redis::cmd("BZPOPMIN");
                pop.arg(RESTORE_QUEUE).arg(1);
                let popped: Option<(String, String, f64)> = tokio::select! {
                    popped = pop.query_async(c) => popped?,
                    _ = stop.changed() => None,
                };
                Ok(popped.map(|(_, request, _)| request))
            }
            .await;
            if *stop.borrow() {
                break;
            }
            let request = match popped {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(e) => {
                    // NOREPLICAS (the pops write), READONLY after a failover, a lost connection:
                    // reconnect (the master may have moved), but pause first. Retrying at once
                    // opened a connection per attempt, thousands a second, and the load kept
                    // the master's replicas from counting as good: NOREPLICAS for everyone.
                    tracing::warn!(shard = %self.shard_name(shard), error = %e, "restore queue failed");
                    conn = None;
                    tokio::select! {
                        _ = tokio::time::sleep(RESTORE_QUEUE_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            };
            let (full, id) = match request.split_once(':') {
                Some(("f", id)) => (true, id),
                Some(("p", id)) => (false, id),
                _ => {
                    tracing::warn!(%request, "malformed restore request dropped");
                    continue;
                }
            };
            let Ok(player) = PlayerId::new(id) else {
                tracing::warn!(%request, "restore request with an invalid player id dropped");
                continue;
            };
            let started = Instant::now();
            let restored = self.restore(shard, &player, full).await;
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
                // The store asks again while its caller waits: a passing failure is retried
                // that way; one that will fail again needs an operator.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(shard = %self.shard_name(shard), player = %id, error = %e.cause(), "restore failed; the next request retries it")
                }
                Err(e) => {
                    tracing::error!(shard = %self.shard_name(shard), player = %id, error = %e.cause(), "restore failed and will fail again")
                }
            }
        }
    }
}
