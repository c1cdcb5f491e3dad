//! What the benchmarks share: the measured transaction (a bounded private counter +1 with an
//! idempotency key) and their numeric command-line options.

#![allow(dead_code, clippy::unwrap_used)]

use colony::{IdempotencyKey, Name, Operation, PlayerId, Transaction, Visibility};

/// `player`'s gold +1 (never below 0, at most `max`), with the key `client`/`request`.
pub fn increment(player: &PlayerId, client: &str, request: u64, max: Option<i64>) -> Transaction {
    Transaction::owner(
        player.clone(),
        Some(IdempotencyKey::new(client, request).unwrap()),
    )
    .with(Operation::IncrementCounter {
        name: Name::new("gold").unwrap(),
        delta: 1,
        min: Some(0),
        max,
        visibility: Visibility::Private,
    })
}

/// [`increment`] of `player-<n>`, without an upper bound.
pub fn txn(n: u64, client: &str, request: u64) -> Transaction {
    increment(
        &PlayerId::new(format!("player-{n}")).unwrap(),
        client,
        request,
        None,
    )
}

/// The value after `flag` on the command line (`--seconds 5`), or `default`. Other arguments
/// (cargo bench passes `--bench`) are ignored.
pub fn option(flag: &str, default: u64) -> u64 {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == flag {
            return args
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"));
        }
    }
    default
}
