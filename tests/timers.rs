//! The store's timers run on tokio's clock: the retry deadline, the backoff between attempts
//! and the breaker's cooldown. Tested in paused time against a shard nobody listens on, so a
//! timer read from the wall clock instead shows up as a wrong virtual duration (a deadline
//! on the wall clock lets paused sleeps pile up far past it; a cooldown on the wall clock
//! never ends when tokio's clock is advanced).

use std::time::Duration;

use colony::store::breaker::BreakerState;
use colony::{Config, Error, IdempotencyKey, Name, Operation, PlayerId, Store, Transaction};
use tokio::time::Instant;

const RETRY_DEADLINE: Duration = Duration::from_millis(2000);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const COOLDOWN: Duration = Duration::from_millis(5000);

/// One shard at a loopback port nobody listens on.
fn dead_shard(breaker_failures: u32) -> Store {
    let port = colony_testkit::free_port().expect("a free port");
    let text = format!(
        "[[shards]]\nname = \"dead\"\nmaster = \"127.0.0.1:{port}\"\n\
         [redis]\nconnect_timeout_ms = {}\nretry_deadline_ms = {}\n\
         breaker_failures = {breaker_failures}\nbreaker_cooldown_ms = {}\n",
        CONNECT_TIMEOUT.as_millis(),
        RETRY_DEADLINE.as_millis(),
        COOLDOWN.as_millis(),
    );
    let config = Config::from_toml(&text, []).expect("valid configuration");
    Store::new(&config).expect("store")
}

fn write(request: u64) -> Transaction {
    Transaction::owner(
        PlayerId::new("p").expect("valid"),
        Some(IdempotencyKey::new("timers", request).expect("valid")),
    )
    .with(Operation::IncrementCounter {
        name: Name::new("n").expect("valid"),
        delta: 1,
        min: None,
        max: None,
        visibility: colony::Visibility::Private,
    })
}

fn reason(result: &Result<colony::Committed, Error>) -> String {
    match result {
        Err(Error::Unavailable { reason, .. }) => reason.clone(),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_until_the_retry_deadline_in_tokio_time() {
    let store = dead_shard(1_000);
    let started = Instant::now();
    let result = store.execute(write(1)).await;
    let took = started.elapsed();
    reason(&result);
    // The last attempt starts before the deadline and ends within its connect bound (twice
    // the connect timeout); the backoff before it never sleeps past the deadline.
    assert!(took >= RETRY_DEADLINE, "gave up after {took:?}");
    assert!(
        took <= RETRY_DEADLINE + 2 * CONNECT_TIMEOUT,
        "retried until {took:?}, past the deadline"
    );
    let retries = store.retries();
    // Attempts take up to 200 ms and waits up to 500 ms: a few, not hundreds.
    assert!(
        (3..=200).contains(&retries),
        "{retries} retries in {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_until_its_cooldown_passes_in_tokio_time() {
    let store = dead_shard(2);
    reason(&store.execute(write(1)).await);
    assert_eq!(store.breaker_states(), vec![BreakerState::Open]);

    // Open: refused at once, without an attempt or a wait.
    let started = Instant::now();
    let refused = reason(&store.execute(write(2)).await);
    assert!(refused.contains("circuit breaker open"), "{refused}");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "an open breaker must not wait"
    );

    // Still open just before the cooldown ends.
    tokio::time::advance(COOLDOWN - Duration::from_millis(100)).await;
    let refused = reason(&store.execute(write(3)).await);
    assert!(refused.contains("circuit breaker open"), "{refused}");

    // After it, one probe goes to the shard; it fails, and the breaker opens again.
    tokio::time::advance(Duration::from_millis(200)).await;
    let probed = reason(&store.execute(write(4)).await);
    assert!(
        !probed.contains("circuit breaker open"),
        "the cooldown passed in tokio time but no probe was sent: {probed}"
    );
    assert_eq!(store.breaker_states(), vec![BreakerState::Open]);
}
