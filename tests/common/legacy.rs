//! Runs the previous version's transaction script (`tests/fixtures/transaction_v1.lua`) the
//! way the previous store called it, to leave real records and bookkeeping of the previous
//! key layout behind (migration tests) and to measure against it (benchmarks).

use colony::keys::{legacy_idempotency_key, PlayerKeys, LEGACY_ACTIVE_SET, LEGACY_DIRTY_SET};
use colony::script::{encode, Bounds, FIRST_OPERATION};
use colony::Transaction;

/// The previous version's script.
pub const SOURCE_V1: &str = include_str!("../fixtures/transaction_v1.lua");

/// The previous version's script, with its SHA1.
pub static SCRIPT_V1: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SOURCE_V1));

/// The previous version's call of `txn`: `EVALSHA` (the script must be loaded, e.g. with
/// `SCRIPT LOAD` of [`SOURCE_V1`]) with six keys — the per-shard sets, one string key per
/// idempotency record — and its arguments: a flag for the key and the record TTL, then the
/// bounds and operations as today.
pub fn evalsha_v1(txn: &Transaction, bounds: &Bounds) -> redis::Cmd {
    let today = encode(txn, colony::keys::player_slot(&txn.player), bounds);
    let keys = PlayerKeys::new(&txn.player);
    let record = match &txn.idempotency_key {
        Some(key) => legacy_idempotency_key(&txn.player, key),
        None => keys.meta.clone(),
    };
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(SCRIPT_V1.get_hash())
        .arg(6)
        .arg(keys.meta)
        .arg(keys.public)
        .arg(keys.private)
        .arg(LEGACY_ACTIVE_SET)
        .arg(record)
        .arg(LEGACY_DIRTY_SET)
        .arg(&today.args[0])
        .arg(&today.args[1])
        .arg(if txn.idempotency_key.is_some() {
            "1"
        } else {
            "0"
        })
        .arg(bounds.window.client_ttl_ms)
        .arg(&today.args[8])
        .arg(&today.args[9])
        .arg(&today.args[10]);
    for arg in &today.args[FIRST_OPERATION..] {
        cmd.arg(arg);
    }
    cmd
}
