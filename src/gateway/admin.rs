//! The admin HTTP endpoint, on its own port: `/metrics` (Prometheus text), `/healthz`
//! (the process answers), `/readyz` (every shard answers PING), `/admin/status` (JSON: the
//! gateway, every shard with its replication, and the archiver's status when
//! `gateway.archiver_admin` names it), `/admin/player?id=` (one player as stored, read without
//! touching it) and `/admin/console` (the operations page, `console.html`).
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
            .route("/admin/player", get(player))
            .route("/admin/console", get(console))
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
    if let Some((view, reads, failed)) = gateway.store().cluster_view() {
        gateway
            .metrics()
            .observe_cluster(view.epoch(), reads, failed);
    }
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

/// The operations page: one self-contained HTML file (no build step, nothing fetched from
/// elsewhere) that polls `/admin/status` and `/metrics` and looks players up.
async fn console() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("console.html"),
    )
        .into_response()
}

/// `?id=<player>`.
#[derive(serde::Deserialize)]
struct PlayerQuery {
    id: String,
}

/// One player as stored: where it lives, its version, archived or not, an intent, and its
/// public and private entries (bytes as UTF-8 when they are, else base64). Reads without
/// touching: no last-active update, no restore.
async fn player(
    State(gateway): State<Gateway>,
    query: Result<axum::extract::Query<PlayerQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use base64::Engine;
    let Ok(axum::extract::Query(query)) = query else {
        return (
            StatusCode::BAD_REQUEST,
            "usage: /admin/player?id=<player id>\n",
        )
            .into_response();
    };
    let player = match crate::model::PlayerId::new(query.id) {
        Ok(player) => player,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let store = gateway.store();
    match store.inspect_player(&player).await {
        Ok(found) => {
            let entries = |list: &[crate::store::inspect::InspectedEntry]| {
                list.iter()
                    .map(|e| match std::str::from_utf8(&e.value) {
                        Ok(text) => json!({ "name": e.name, "kind": e.kind, "value": text }),
                        Err(_) => json!({
                            "name": e.name,
                            "kind": e.kind,
                            "base64": base64::engine::general_purpose::STANDARD.encode(&e.value),
                        }),
                    })
                    .collect::<Vec<_>>()
            };
            let index = store.shard_map().shard_for_player(&player);
            let master = store.connection_stats()[index.get()].master.clone();
            Json(json!({
                "id": player.as_str(),
                "shard": found.shard,
                "master": master,
                "slot": found.slot,
                "version": found.version,
                "last_active_ms": found.last_active_ms,
                "archived": found.archived_at_version.is_some(),
                "archived_at_version": found.archived_at_version,
                "public_restored": found.public_restored,
                "intent": found.intent,
                "public": entries(&found.public),
                "private": entries(&found.private),
            }))
            .into_response()
        }
        Err(crate::error::Error::NotFound) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "id": player.as_str(), "found": false })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "id": player.as_str(), "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn status(State(gateway): State<Gateway>) -> Response {
    let store = gateway.store();
    let map = store.shard_map();
    let (pings, replication, archiver) = tokio::join!(
        store.ping_shards(PING_TIMEOUT),
        store.replication(PING_TIMEOUT),
        archiver_status(&gateway),
    );
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
                .filter(|(_, _, owner)| owner.get() == i)
                .map(|(start, end, _)| format!("{start}-{end}"))
                .collect();
            let conn = &stats[i];
            let endpoint = match &shard.endpoint {
                Endpoint::Fixed(address) => json!({ "fixed": address }),
                Endpoint::Sentinel {
                    master_name,
                    sentinels,
                } => json!({ "sentinel": { "master_name": master_name, "addresses": sentinels } }),
                Endpoint::Cluster { master } => json!({ "cluster": { "master": master } }),
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
                "replicas_connected": replication[i].as_ref().ok().map(|r| r.connected),
                "replicas_in_sync": replication[i].as_ref().ok().map(|r| r.in_sync),
                "replicas_waited_for": conn.replicas_waited_for,
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
    // For a Redis Cluster, whose map the store reads from the cluster: where it read it last,
    // and how often it read it (each MOVED and each refresh interval) and failed to.
    let cluster = store.cluster_view().map(|(view, reads, failed)| {
        json!({
            "epoch": view.epoch(),
            "read_from": view.source(),
            "map_reads": reads,
            "map_read_failures": failed,
        })
    });
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": gateway.uptime().as_secs(),
        "topology": if cluster.is_some() { "cluster" } else { "shards" },
        "cluster": cluster,
        "slot_map_epoch": map.epoch(),
        "connections": metrics.connections.get(),
        "requests_in_flight": metrics.in_flight.get(),
        "acknowledge": match store.settings().acknowledge {
            Acknowledge::Local => "local",
            Acknowledge::Replicated => "replicated",
        },
        "retries": store.retries(),
        "shards": shards,
        "archiver": archiver,
    }))
    .into_response()
}

/// The archiver's `/admin/status`, asked with this gateway's first admin token, when
/// `gateway.archiver_admin` names it; `null` when it does not, `{"error": ...}` when it does
/// not answer within the ping timeout.
async fn archiver_status(gateway: &Gateway) -> serde_json::Value {
    let Some(address) = gateway.config().archiver_admin.clone() else {
        return serde_json::Value::Null;
    };
    let Some(token) = gateway.tokens().first_admin() else {
        return json!({ "error": "no admin token to ask the archiver with" });
    };
    match tokio::time::timeout(
        PING_TIMEOUT,
        http_get_json(&address, "/admin/status", &token),
    )
    .await
    {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => json!({ "address": address, "error": e }),
        Err(_) => json!({ "address": address, "error": "no answer in time" }),
    }
}

/// Most bytes read of the archiver's status.
const ARCHIVER_STATUS_MAX_BYTES: u64 = 1 << 20;

/// A plain HTTP/1.1 GET of JSON on a private network (one request, `Connection: close`, at
/// most [`ARCHIVER_STATUS_MAX_BYTES`]).
async fn http_get_json(
    address: &str,
    path: &str,
    token: &str,
) -> Result<serde_json::Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(ARCHIVER_STATUS_MAX_BYTES)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no HTTP answer".to_string())?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("the archiver answered {status}"));
    }
    serde_json::from_str(body).map_err(|e| format!("the archiver's status is not JSON: {e}"))
}
