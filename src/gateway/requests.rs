//! The requests of an authenticated connection: batches of transactions, whole-player
//! reads and logins, each converted by `wire`, authorized by `auth` for the connection's
//! role, run on the store, and counted in the metrics.

use tokio::time::Instant;

use crate::error::{Code, Error};
use crate::model::{Access, Committed, PlayerId, Transaction};
use crate::wire::{self, pb, Item, ItemResult};

use super::authorize;
use super::metrics;
use super::rollback::Ticket;
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

async fn handle_batch(
    gateway: &Gateway,
    principal: &Principal,
    ticket: Ticket,
    batch: pb::Batch,
) -> Result<pb::server_frame::Body, Error> {
    let limits = &gateway.inner.limits;
    if !batch.items.is_empty() {
        if !batch.transactions.is_empty() {
            return Err(Error::Invalid(
                "a batch lists its transactions in `transactions` or in `items`, not both".into(),
            ));
        }
        return handle_items(gateway, principal, ticket, batch.items).await;
    }
    // Refused before anything is decoded (the store checks again, the same way).
    limits.check_batch(batch.transactions.len())?;
    let mut results: Vec<Option<Result<crate::model::Committed, Error>>> =
        Vec::with_capacity(batch.transactions.len());
    let mut accepted: Vec<Transaction> = Vec::with_capacity(batch.transactions.len());
    let mut accepted_players: Vec<PlayerId> = Vec::with_capacity(batch.transactions.len());
    for t in batch.transactions {
        let txn = wire::envelope_from_pb(t).and_then(|envelope| {
            authorize::authorize_envelope(principal.role, &envelope).map(|()| envelope.transaction)
        });
        match txn {
            Ok(txn) => {
                accepted_players.push(txn.player.clone());
                accepted.push(txn);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let mut ran = gateway
        .inner
        .store
        .execute_batch(accepted)
        .await?
        .into_iter();
    let mut accepted_players = accepted_players.into_iter();
    let metrics = &gateway.inner.metrics;
    let results = results
        .into_iter()
        .map(|r| {
            let r = r.or_else(|| {
                let ran = ran.next()?;
                if let (Ok(committed), Some(player)) = (&ran, accepted_players.next()) {
                    acknowledged(gateway, ticket, &player, committed);
                }
                Some(ran)
            });
            let r = r.unwrap_or_else(|| Err(Error::Internal("batch result missing".into())));
            let code = r.as_ref().map_or_else(Error::code, |_| Code::Ok);
            metrics
                .transactions
                .get_or_create(&metrics::CodeLabels {
                    code: code.as_str(),
                })
                .inc();
            wire::result_to_pb(&r)
        })
        .collect();
    Ok(pb::server_frame::Body::Batch(pb::BatchResult {
        results,
        items: Vec::new(),
    }))
}

/// A batch of items: transactions on one player and multi-player transactions, decoded and
/// authorized one by one (a refused one gets its own error), then run together.
async fn handle_items(
    gateway: &Gateway,
    principal: &Principal,
    ticket: Ticket,
    items: Vec<pb::BatchItem>,
) -> Result<pb::server_frame::Body, Error> {
    let limits = &gateway.inner.limits;
    limits.check_batch(items.len())?;
    /// Where an item's result comes from.
    enum Slot {
        Refused(ItemResult),
        Single(PlayerId),
        Multi(Vec<PlayerId>),
    }
    let mut slots = Vec::with_capacity(items.len());
    let (mut singles, mut multis) = (Vec::new(), Vec::new());
    for item in items {
        let multi = matches!(item.item, Some(pb::batch_item::Item::Multi(_)));
        match wire::item_from_pb(item) {
            Ok(Item::Single(envelope)) => {
                match authorize::authorize_envelope(principal.role, &envelope) {
                    Ok(()) => {
                        slots.push(Slot::Single(envelope.transaction.player.clone()));
                        singles.push(envelope.transaction);
                    }
                    Err(e) => slots.push(Slot::Refused(ItemResult::Single(Err(e)))),
                }
            }
            Ok(Item::Multi(envelope)) => {
                let checked = authorize::authorize_multi(principal.role, &envelope)
                    .and_then(|()| envelope.transaction.validate(limits));
                match checked {
                    Ok(()) => {
                        let players = envelope.transaction.participants.iter();
                        slots.push(Slot::Multi(players.map(|p| p.player.clone()).collect()));
                        multis.push(envelope.transaction);
                    }
                    Err(e) => slots.push(Slot::Refused(ItemResult::Multi(Err(e)))),
                }
            }
            // A malformed item answers in its own kind, so the client can tell.
            Err(e) if multi => slots.push(Slot::Refused(ItemResult::Multi(Err(e)))),
            Err(e) => slots.push(Slot::Refused(ItemResult::Single(Err(e)))),
        }
    }
    let (singles, multis) = gateway.inner.store.execute_mixed(singles, multis).await?;
    let (mut singles, mut multis) = (singles.into_iter(), multis.into_iter());
    let metrics = &gateway.inner.metrics;
    let results = slots
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
            wire::item_result_to_pb(&result)
        })
        .collect();
    Ok(pb::server_frame::Body::Batch(pb::BatchResult {
        results: Vec::new(),
        items: results,
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
