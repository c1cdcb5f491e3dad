//! The archiver's admin endpoint: `/metrics` (Prometheus text), `/healthz`, and
//! `/admin/status` (JSON: totals, the last passes, the backlog per shard), behind the same
//! admin tokens as the gateway's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::worker::Archiver;

/// The admin routes: `/metrics` and `/healthz` open, `/admin/status` only with an admin token
/// of `tokens` (the gateway's, `gateway.tokens`).
pub fn router(archiver: Arc<Archiver>, tokens: colony::auth::Tokens) -> Router {
    let admin = colony::admin_http::admin_only(
        Router::new()
            .route("/admin/status", get(status))
            .with_state(archiver.clone()),
        tokens,
    );
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(archiver)
        .merge(admin)
}

async fn metrics(State(archiver): State<Arc<Archiver>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        archiver.metrics().render(),
    )
        .into_response()
}

async fn status(State(archiver): State<Arc<Archiver>>) -> Response {
    let m = archiver.metrics();
    let report = m
        .last_report
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let backlog = archiver.backlog().await;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "archived": m.archived.get(),
        "kept": m.kept.get(),
        "archive_failures": m.archive_failures.get(),
        "checkpointed": m.checkpointed.get(),
        "last_pass_unix": m.last_pass.get(),
        "last_pass": report.map(|r| json!({
            "candidates": r.candidates, "archived": r.archived, "kept": r.kept, "failed": r.failed,
            "failed_shards": r.failed_shards,
        })),
        "backlog": backlog
            .into_iter()
            .map(|(shard, n)| match n {
                Ok(n) => json!({ "shard": shard, "inactive_in_redis": n }),
                Err(e) => json!({ "shard": shard, "inactive_in_redis": null, "error": e }),
            })
            .collect::<Vec<_>>(),
    }))
    .into_response()
}
