//! The requests of an authenticated connection: batches of transactions, whole-player
//! reads and logins, each converted by `wire`, authorized by `auth` for the connection's
//! role, run on the store, and counted in the metrics.

use tokio::time::Instant;

use crate::error::{Code, Error};
use crate::model::{Access, Committed, PlayerId};
use crate::wire::{self, pb, ItemResult};

use super::authorize;
use super::metrics;
use super::rollback::Ticket;
use super::untrusted::{self, Admitted, BatchForm};
use super::Gateway;
use crate::auth::Principal;

/// Answers one authenticated request.
pub(super) async fn handle_request(
    gateway: &Gateway,
    principal: &Principal,
    frame: pb::ClientFrame,
) -> pb::ServerFrame {
    use pb::client_frame::Body;
    let started = Instant::now();
    // Before anything reaches a shard: the rollback alarm judges answers by when their
    // request began.
    let ticket = gateway.inner.acknowledged.begin();
    let request_id = frame.request_id;
    let (op, result) = match frame.body {
        Some(Body::Batch(batch)) => (
            "batch",
            handle_batch(gateway, principal, ticket, batch).await,
        ),
        Some(Body::GetPlayer(get)) => (
            "get_player",
            handle_get(gateway, principal, ticket, get).await,
        ),
        Some(Body::Login(login)) => (
            "login",
            handle_login(gateway, principal, ticket, login).await,
        ),
        Some(Body::Ping(ping)) => (
            "ping",
            Ok(pb::server_frame::Body::Pong(pb::Pong { nonce: ping.nonce })),
        ),
        Some(Body::Hello(_)) => (
            "hello",
            Err(Error::Invalid(
                "the connection is already authenticated".into(),
            )),
        ),
        None => (
            "invalid",
            Err(Error::Invalid("unknown or missing request body".into())),
        ),
    };
    let (code, body) = match result {
        Ok(body) => (Code::Ok, body),
        Err(e) => (
            e.code(),
            pb::server_frame::Body::Error(pb::RequestError {
                code: wire::code_to_pb(e.code()).into(),
                message: wire::message_of(&e),
            }),
        ),
    };
    gateway
        .inner
        .metrics
        .request(op, code.as_str(), started.elapsed());
    pb::ServerFrame {
        request_id,
        body: Some(body),
    }
}

/// A batch: its entries decoded, validated and authorized one by one
/// ([`untrusted::admit_batch`], the function the fuzz target drives), a refused one
/// answered with its own error, the others run together.
async fn handle_batch(
    gateway: &Gateway,
    principal: &Principal,
    ticket: Ticket,
    batch: pb::Batch,
) -> Result<pb::server_frame::Body, Error> {
    let (form, admitted) = untrusted::admit_batch(principal.role, batch, &gateway.inner.limits)?;
    /// Where an entry's result comes from.
    enum Slot {
        Refused(ItemResult),
        Single(PlayerId),
        Multi(Vec<PlayerId>),
    }
    let mut slots = Vec::with_capacity(admitted.len());
    let (mut singles, mut multis) = (Vec::new(), Vec::new());
    for entry in admitted {
        match entry {
            Admitted::Single(Ok(txn)) => {
                slots.push(Slot::Single(txn.player.clone()));
                singles.push(txn);
            }
            Admitted::Multi(Ok(txn)) => {
                let players = txn.participants.iter().map(|p| p.player.clone());
                slots.push(Slot::Multi(players.collect()));
                multis.push(txn);
            }
            Admitted::Single(Err(e)) => slots.push(Slot::Refused(ItemResult::Single(Err(e)))),
            Admitted::Multi(Err(e)) => slots.push(Slot::Refused(ItemResult::Multi(Err(e)))),
        }
    }
    let (singles, multis) = gateway.inner.store.execute_mixed(singles, multis).await?;
    let (mut singles, mut multis) = (singles.into_iter(), multis.into_iter());
    let metrics = &gateway.inner.metrics;
    let results: Vec<ItemResult> = slots
        .into_iter()
        .map(|slot| {
            let result = match slot {
                Slot::Refused(result) => result,
                Slot::Single(player) => {
                    let result = singles
                        .next()
                        .unwrap_or_else(|| Err(Error::Internal("batch result missing".into())));
                    if let Ok(committed) = &result {
                        acknowledged(gateway, ticket, &player, committed);
                    }
                    ItemResult::Single(result)
                }
                Slot::Multi(players) => {
                    let result = multis
                        .next()
                        .unwrap_or_else(|| Err(Error::Internal("batch result missing".into())));
                    if let Ok(multi) = &result {
                        if !multi.replayed {
                            for (player, committed) in players.iter().zip(&multi.participants) {
                                acknowledged(gateway, ticket, player, committed);
                            }
                        }
                    }
                    ItemResult::Multi(result)
                }
            };
            let code = match &result {
                ItemResult::Single(r) => r.as_ref().map_or_else(Error::code, |_| Code::Ok),
                ItemResult::Multi(r) => r.as_ref().map_or_else(Error::code, |_| Code::Ok),
            };
            metrics
                .transactions
                .get_or_create(&metrics::CodeLabels {
                    code: code.as_str(),
                })
                .inc();
            result
        })
        .collect();
    Ok(pb::server_frame::Body::Batch(match form {
        // The older form lists plain results: every entry there is a single transaction.
        BatchForm::Transactions => pb::BatchResult {
            results: results
                .iter()
                .map(|result| match result {
                    ItemResult::Single(r) => wire::result_to_pb(r),
                    ItemResult::Multi(_) => wire::result_to_pb(&Err(Error::Internal(
                        "a multi-player result in a batch of transactions".into(),
                    ))),
                })
                .collect(),
            items: Vec::new(),
        },
        BatchForm::Items => pb::BatchResult {
            results: Vec::new(),
            items: results.iter().map(wire::item_result_to_pb).collect(),
        },
    }))
}

async fn handle_get(
    gateway: &Gateway,
    principal: &Principal,
    ticket: Ticket,
    get: pb::GetPlayer,
) -> Result<pb::server_frame::Body, Error> {
    let read = wire::player_read_from_pb(get)?;
    authorize::authorize(
        principal.role,
        &read.player,
        read.access,
        read.acting_player.as_ref(),
    )?;
    let result = gateway
        .inner
        .store
        .get_player(read.player.clone(), read.access)
        .await;
    if let Ok(committed) = &result {
        acknowledged(gateway, ticket, &read.player, committed);
    }
    Ok(pb::server_frame::Body::Player(wire::result_to_pb(&result)))
}

async fn handle_login(
    gateway: &Gateway,
    principal: &Principal,
    ticket: Ticket,
    login: pb::Login,
) -> Result<pb::server_frame::Body, Error> {
    let player = wire::login_from_pb(login)?;
    // Logging in is the player acting for itself.
    authorize::authorize(principal.role, &player, Access::Owner, Some(&player))?;
    // An owner read marks the player active (the store updates last-active for owners).
    let result = gateway
        .inner
        .store
        .get_player(player.clone(), Access::Owner)
        .await;
    if let Ok(committed) = &result {
        acknowledged(gateway, ticket, &player, committed);
    }
    Ok(pb::server_frame::Body::Player(wire::result_to_pb(&result)))
}

/// Feeds an OK answer to the rollback alarm ([`super::rollback`]), with the ticket its request
/// took as it began: a replay carries its first attempt's version and is left out. A version lower than one acknowledged before is counted
/// per shard and logged with both versions.
fn acknowledged(gateway: &Gateway, ticket: Ticket, player: &PlayerId, committed: &Committed) {
    if committed.replayed {
        return;
    }
    let observed = gateway
        .inner
        .acknowledged
        .observe(ticket, player, committed.version);
    let Some(rollback) = observed else {
        return;
    };
    let map = gateway.inner.store.shard_map();
    let shard = &map.shard(map.shard_for_player(player)).name;
    gateway
        .inner
        .metrics
        .version_rollbacks
        .get_or_create(&metrics::ShardLabels {
            shard: shard.clone(),
        })
        .inc();
    tracing::error!(
        shard = %shard,
        player = %player.as_str(),
        acknowledged_version = rollback.acknowledged,
        version = rollback.seen,
        "acknowledged writes rolled back: the player's version went down (a failover lost them?)"
    );
}
