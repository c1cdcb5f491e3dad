//! The HTTP server under the gateway's and the archiver's admin routes, with the bounds any
//! listener needs even on a private network: a cap on open connections (more are closed at
//! once, so stalled clients cannot use up the process's file descriptors), a time limit for
//! the request headers, a time limit for the answer, and one request per connection, so that
//! nothing an admin client does can hold a connection longer than those two limits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The bounds of an admin listener.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Time for the request headers to arrive, and again for the answer.
    pub request_timeout: Duration,
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then lets the
/// requests being answered finish, for at most one request timeout.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
            }
        },
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!("admin connection refused: too many open");
                    continue;
                };
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(timeout)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    // Headers, then the answer: each has its own limit, so the whole
                    // connection is over within both (plus writing, which the kernel buffers).
                    let _ = tokio::time::timeout(timeout * 2 + Duration::from_secs(1), connection)
                        .await;
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// The limits `gateway.admin_max_connections` and `gateway.admin_request_timeout_ms` set.
pub fn limits_of(config: &crate::config::GatewayConfig) -> AdminLimits {
    AdminLimits {
        max_connections: config.admin_max_connections,
        request_timeout: config.admin_request_timeout(),
    }
}
