//! The admin HTTP endpoint, on its own port: `/metrics` (Prometheus text), `/healthz`
//! (the process answers), `/readyz` (every shard answers PING), `/admin/status` (JSON).
//!
//! The first three are open, for scrapers and orchestrators; everything under `/admin/`
//! answers only to an admin token ([`crate::admin_http::admin_only`]). Keep the port on a
//! private network all the same (the default is `127.0.0.1:7401`): `/metrics` names shards
//! and masters.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use super::Gateway;
use crate::config::Acknowledge;
use crate::shard_map::Endpoint;

/// How long `/readyz` and `/admin/status` wait for each shard's PING.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// The admin routes.
pub fn router(gateway: Gateway) -> Router {
    let admin = crate::admin_http::admin_only(
        Router::new()
            .route("/admin/status", get(status))
            .with_state(gateway.clone()),
        gateway.tokens().clone(),
    );
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(gateway)
        .merge(admin)
}

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = crate::admin_http::limits_of(gateway.config());
    crate::admin_http::serve(listener, router(gateway), limits, shutdown).await
}

async fn metrics(State(gateway): State<Gateway>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics().render(),
    )
        .into_response()
}

async fn ready(State(gateway): State<Gateway>) -> Response {
    let pings = gateway.store().ping_shards(PING_TIMEOUT).await;
    let down: Vec<String> = pings
        .iter()
        .filter_map(|p| p.as_ref().err().map(ToString::to_string))
        .collect();
    if down.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "unreachable": down })),
        )
            .into_response()
    }
}

async fn status(State(gateway): State<Gateway>) -> Response {
    let store = gateway.store();
    let map = store.shard_map();
    let pings = store.ping_shards(PING_TIMEOUT).await;
    let stats = store.connection_stats();
    let breakers = store.breaker_states();
    let ranges = map.ranges();
    let shards: Vec<_> = map
        .shards()
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let slots: Vec<String> = ranges
                .iter()
                .filter(|(_, _, owner)| owner.0 == i)
                .map(|(start, end, _)| format!("{start}-{end}"))
                .collect();
            let conn = &stats[i];
            let endpoint = match &shard.endpoint {
                Endpoint::Fixed(address) => json!({ "fixed": address }),
                Endpoint::Sentinel {
                    master_name,
                    sentinels,
                } => json!({ "sentinel": { "master_name": master_name, "addresses": sentinels } }),
            };
            json!({
                "name": shard.name,
                "master": conn.master,
                "endpoint": endpoint,
                "failovers": conn.failovers,
                "breaker": breakers[i].as_str(),
                "replicas": shard.replicas,
                "slots": slots,
                "reachable": pings[i].is_ok(),
                "error": pings[i].as_ref().err().map(ToString::to_string),
                "connections": {
                    "open": conn.open,
                    "configured": conn.configured,
                    "connects": conn.connects,
                    "connect_failures": conn.connect_failures,
                },
            })
        })
        .collect();
    let metrics = gateway.metrics();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": gateway.uptime().as_secs(),
        "slot_map_epoch": map.epoch(),
        "connections": metrics.connections.get(),
        "requests_in_flight": metrics.in_flight.get(),
        "acknowledge": match store.settings().acknowledge {
            Acknowledge::Local => "local",
            Acknowledge::Replicated => "replicated",
        },
        "retries": store.retries(),
        "shards": shards,
    }))
    .into_response()
}
