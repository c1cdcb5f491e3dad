//! Colony's archiver: moves players who have been inactive for a while from Redis to
//! MongoDB (sharded by the same slot map), and brings them back when they are accessed. It is
//! the only component that writes to MongoDB.
//!
//! - [`document`]: the archived document, its schema version, and conversion (pure).
//! - [`worker`]: archive passes, restores, checkpoints, rebuilds and the run loop; the module
//!   docs state why a crash at any step loses nothing, and what shutdown finishes.
//! - [`metrics`]: the archiver's Prometheus metrics and admin endpoint.
//! - [`serve`]: the archiver process once its configuration is loaded.

pub mod admin;
pub mod document;
pub mod metrics;
pub mod worker;

pub use metrics::PassReport;
pub use worker::{ArchiveError, Archiver, DrainReport, RebuildReport, Removal, Restoral};

use std::future::Future;
use std::sync::Arc;

/// Why [`serve`] could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The archiver could not reach its stores or read its configuration.
    #[error("starting the archiver: {0}")]
    Start(#[from] ArchiveError),
    /// The admin listener could not be bound, or its server failed.
    #[error("admin endpoint {address}: {source}")]
    Admin {
        /// `archive.admin_listen`.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The archiver process once its configuration is loaded: connects, binds the admin endpoint
/// (`archive.admin_listen`), and runs passes and restores until `stop` completes (see
/// [`Archiver::run`] for what stopping finishes).
pub async fn serve(
    config: &colony::Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let address = config.archive.admin_listen.clone();
    let admin_error = |source| ServeError::Admin {
        address: address.clone(),
        source,
    };
    let archiver = Arc::new(Archiver::new(config).await?);
    let admin = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(admin_error)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(
        shards = archiver.store().shard_map().shards().len(),
        cluster = archiver.store().is_cluster(),
        admin = ?admin.local_addr().ok(),
        "colony archiver started"
    );
    let admin_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    };
    // The archiver's admin listener has the gateway's bounds (`gateway.admin_*`).
    let admin_task = tokio::spawn(colony::admin_http::serve(
        admin,
        admin::router(
            archiver.clone(),
            colony::auth::Tokens::new(config.gateway.tokens.clone()),
        ),
        colony::admin_http::limits_of(&config.gateway),
        admin_stop,
    ));
    archiver.run(stop_rx).await;
    match admin_task.await {
        Ok(result) => result.map_err(admin_error),
        Err(e) => Err(admin_error(std::io::Error::other(e))),
    }
}
