//! The idempotency window against a real redis-server: retries inside the window replay,
//! older ones are refused with REQUEST_TOO_OLD and apply nothing, ids of one client arriving
//! out of order are all judged right, memory per player stays at clients × window whatever
//! the number of requests, stale clients are forgotten, and records the previous version's
//! script left behind are honoured.

mod common;

use std::time::Duration;

use colony::{Access, Committed, Error, IdempotencyKey, Operation, Store, Transaction, Value};
use colony_testkit::{config_for, wait_until_blocking, RedisServer};
use common::{digest, name, pid, raw};

fn store_with_window(server: &RedisServer, length: usize, age_secs: u64, ttl_secs: u64) -> Store {
    let mut config = config_for(&[server]);
    config.redis.idempotency_window_requests = length;
    config.redis.idempotency_window_secs = age_secs;
    config.redis.idempotency_ttl_secs = ttl_secs;
    Store::new(&config).expect("store")
}

fn add_gold(player: &str, client: &str, request: u64) -> Transaction {
    Transaction::owner(pid(player), IdempotencyKey::new(client, request).ok()).with(
        Operation::IncrementCounter {
            name: name("gold"),
            delta: 1,
            min: None,
            max: None,
            visibility: colony::Visibility::Private,
        },
    )
}

async fn gold(store: &Store, player: &str) -> i64 {
    let c = store
        .get_player(pid(player), Access::Owner)
        .await
        .expect("reads");
    match c.reads[0].entries.first().map(|e| &e.value) {
        Some(Value::Counter(n)) => *n,
        _ => 0,
    }
}

/// Milliseconds on the server's clock, the one the window ages by.
async fn server_ms(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("time");
    secs * 1000 + micros / 1000
}

/// Waits, with a deadline, until the server's clock has passed `ms`.
async fn until_server_passes(server: &RedisServer, ms: u64) {
    let url = server.url();
    let passed = tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(url).expect("client");
        let mut conn = client.get_connection().expect("connects");
        wait_until_blocking(Duration::from_secs(10), || {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).expect("time");
            secs * 1000 + micros / 1000 > ms
        })
    })
    .await
    .expect("joins");
    assert!(passed, "the server's clock did not pass {ms}");
}

fn replayed(result: &Result<Committed, Error>) -> bool {
    matches!(result, Ok(c) if c.replayed)
}

#[tokio::test]
async fn retries_inside_the_window_replay_and_older_ones_are_refused_applying_nothing() {
    let server = RedisServer::start().expect("redis");
    let store = store_with_window(&server, 3, 300, 3600);
    for request in 1..=5 {
        let c = store
            .execute(add_gold("ann", "c1", request))
            .await
            .expect("applies");
        assert!(!c.replayed);
    }
    // The last three are remembered: their retries replay the first answer.
    for request in [5, 4, 3] {
        let again = store.execute(add_gold("ann", "c1", request)).await;
        assert!(replayed(&again), "request {request}: {again:?}");
        assert_eq!(again.expect("replay").version, request);
    }
    // The first two were forgotten: refused, whatever the body, and nothing changes.
    let before = digest(&server).await;
    for request in [2, 1] {
        assert_eq!(
            store.execute(add_gold("ann", "c1", request)).await,
            Err(Error::RequestTooOld { version: 5 })
        );
    }
    assert_eq!(digest(&server).await, before);
    assert_eq!(gold(&store, "ann").await, 5);
    // Another client is judged on its own window.
    assert!(
        !store
            .execute(add_gold("ann", "c2", 1))
            .await
            .expect("new")
            .replayed
    );
    assert_eq!(gold(&store, "ann").await, 6);
}

#[tokio::test]
async fn ids_of_one_client_arriving_out_of_order_are_all_judged_right() {
    let server = RedisServer::start().expect("redis");
    let store = store_with_window(&server, 3, 300, 3600);
    // 10 first, then 8 and 9, which the client sent earlier but arrive later: all new.
    for request in [10, 8, 9] {
        let c = store
            .execute(add_gold("bo", "c", request))
            .await
            .expect("applies");
        assert!(!c.replayed, "request {request}");
    }
    // 11 pushes the oldest arrival (10) out: the floor is now 10, and 8 and 9, below it but
    // still remembered, replay.
    store
        .execute(add_gold("bo", "c", 11))
        .await
        .expect("applies");
    for request in [8, 9, 11] {
        let again = store.execute(add_gold("bo", "c", request)).await;
        assert!(replayed(&again), "request {request}: {again:?}");
    }
    // 10 was forgotten, and 7 — never seen — is below the floor: both refused.
    for request in [10, 7] {
        assert!(matches!(
            store.execute(add_gold("bo", "c", request)).await,
            Err(Error::RequestTooOld { .. })
        ));
    }
    assert_eq!(gold(&store, "bo").await, 4);
    // Ids beyond 2^53 are compared exactly, not as doubles.
    let big = (1u64 << 60) + 1;
    store
        .execute(add_gold("bo", "big", big))
        .await
        .expect("applies");
    store
        .execute(add_gold("bo", "big", big + 1))
        .await
        .expect("applies");
    store
        .execute(add_gold("bo", "big", big + 2))
        .await
        .expect("applies");
    store
        .execute(add_gold("bo", "big", u64::MAX))
        .await
        .expect("applies");
    assert!(matches!(
        store.execute(add_gold("bo", "big", big)).await,
        Err(Error::RequestTooOld { .. })
    ));
    assert!(replayed(
        &store.execute(add_gold("bo", "big", big + 1)).await
    ));
    assert!(replayed(
        &store.execute(add_gold("bo", "big", u64::MAX)).await
    ));
}

#[tokio::test]
async fn requests_older_than_the_window_age_are_forgotten() {
    let server = RedisServer::start().expect("redis");
    let store = store_with_window(&server, 100, 1, 3600);
    let mut conn = raw(&server).await;
    store
        .execute(add_gold("cy", "c", 1))
        .await
        .expect("applies");
    let applied = server_ms(&mut conn).await;
    assert!(replayed(&store.execute(add_gold("cy", "c", 1)).await));
    until_server_passes(&server, applied + 1000).await;
    // The next write of the client forgets what is older than the window.
    store
        .execute(add_gold("cy", "c", 2))
        .await
        .expect("applies");
    assert!(matches!(
        store.execute(add_gold("cy", "c", 1)).await,
        Err(Error::RequestTooOld { .. })
    ));
    assert!(replayed(&store.execute(add_gold("cy", "c", 2)).await));
}

/// The idempotency fields of `{player}:meta` (window states and records), and the bytes of
/// the whole hash as Redis counts them.
async fn idempotency_footprint(
    conn: &mut redis::aio::MultiplexedConnection,
    player: &str,
) -> (u64, u64) {
    let key = format!("{{{player}}}:meta");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&key)
        .query_async(conn)
        .await
        .expect("hkeys");
    let window_fields = fields
        .iter()
        .filter(|f| f.starts_with("c:") || f.starts_with("r:"))
        .count() as u64;
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await
        .expect("memory usage");
    (window_fields, bytes.unwrap_or(0))
}

#[tokio::test]
async fn memory_per_player_stays_at_clients_times_window_whatever_the_requests() {
    let server = RedisServer::start().expect("redis");
    const WINDOW: usize = 8;
    const CLIENTS: u64 = 3;
    let store = store_with_window(&server, WINDOW, 300, 3600);
    let mut conn = raw(&server).await;
    let mut footprints = Vec::new();
    let mut request = 0;
    for round in [50u64, 150, 300] {
        while request < round {
            request += 1;
            let batch: Vec<Transaction> = (0..CLIENTS)
                .map(|c| add_gold("dee", &format!("client-{c}"), request))
                .collect();
            for result in store.execute_batch(batch).await.expect("batch") {
                result.expect("applies");
            }
        }
        footprints.push(idempotency_footprint(&mut conn, "dee").await);
    }
    // Per client: its state and WINDOW to WINDOW + WINDOW / 4 records (the oldest are
    // forgotten together), after 50, 150 or 300 requests each.
    let (fewest, most) = (
        CLIENTS * (WINDOW as u64 + 1),
        CLIENTS * (WINDOW as u64 + WINDOW as u64 / 4 + 1),
    );
    for (fields, _) in &footprints {
        assert!((fewest..=most).contains(fields), "{footprints:?}");
    }
    // Bytes stay flat too: at most what a quarter more records and a digit more per id
    // take, and the same after 150 requests as after 300.
    let (first, middle, last) = (footprints[0].1, footprints[1].1, footprints[2].1);
    assert!(last <= first + first / 4, "{footprints:?}");
    assert!(last.abs_diff(middle) <= middle / 20, "{footprints:?}");
    assert_eq!(gold(&store, "dee").await, (CLIENTS * 300) as i64);
}

#[tokio::test]
async fn clients_silent_for_the_ttl_are_forgotten_when_a_new_client_arrives() {
    let server = RedisServer::start().expect("redis");
    let store = store_with_window(&server, 4, 1, 1);
    let mut conn = raw(&server).await;
    store
        .execute(add_gold("eve", "old", 1))
        .await
        .expect("applies");
    store
        .execute(add_gold("eve", "fresh", 1))
        .await
        .expect("applies");
    let written = server_ms(&mut conn).await;
    until_server_passes(&server, written + 1000).await;
    store
        .execute(add_gold("eve", "fresh", 2))
        .await
        .expect("applies");
    // A new client sweeps: "old" has not written for the TTL and goes; "fresh" stays, its
    // score corrected to its last write.
    store
        .execute(add_gold("eve", "new", 1))
        .await
        .expect("applies");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg("{eve}:meta")
        .query_async(&mut conn)
        .await
        .expect("hkeys");
    assert!(!fields.iter().any(|f| f.contains("old")), "{fields:?}");
    assert!(fields.contains(&"c:fresh".to_string()), "{fields:?}");
    let clients: Vec<String> = redis::cmd("ZRANGE")
        .arg("{eve}:clients")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert_eq!(clients.len(), 2, "{clients:?}");
    assert!(!clients.contains(&"old".to_string()));
}

#[tokio::test]
async fn records_of_the_previous_layout_are_honoured_until_they_expire() {
    let server = RedisServer::start().expect("redis");
    let mut config = config_for(&[&server]);
    config.redis.idempotency_window_requests = 4;
    let store = Store::new(&config).expect("store");
    let mut conn = raw(&server).await;
    // The previous version applies (legacy-client, 7): a record string key with a TTL.
    let txn = add_gold("fin", "legacy-client", 7);
    let bounds = colony::script::Bounds {
        track_changes: true,
        window: colony::script::Window::of(&config.redis),
        read_budget: 1 << 20,
        max_player_bytes: 1 << 20,
        max_player_entries: 4096,
    };
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(common::legacy::SOURCE_V1)
        .query_async(&mut conn)
        .await
        .expect("loads");
    let _: redis::Value = common::legacy::evalsha_v1(&txn, &bounds)
        .query_async(&mut conn)
        .await
        .expect("the previous script applies");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("{fin}:idem:legacy-client:7")
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(ttl > 0, "a legacy record with a TTL: {ttl}");

    // After the upgrade its retry is a replay, and applies nothing.
    let before = digest(&server).await;
    let again = store.execute(txn).await.expect("replays");
    assert!(again.replayed);
    assert_eq!(again.version, 1);
    assert_eq!(digest(&server).await, before, "a replay applies nothing");
    // A different body under that key is a mismatch, as before the upgrade.
    let other = Transaction::owner(pid("fin"), IdempotencyKey::new("legacy-client", 7).ok())
        .with(Operation::DeleteCounter { name: name("gold") });
    assert!(matches!(
        store.execute(other).await,
        Err(Error::IdempotencyMismatch { .. })
    ));
    // The client goes on with newer ids under the window.
    let next = store
        .execute(add_gold("fin", "legacy-client", 8))
        .await
        .expect("applies");
    assert_eq!((next.version, next.replayed), (2, false));
    assert_eq!(gold(&store, "fin").await, 2);
}

#[tokio::test]
async fn a_player_keeps_windows_for_at_most_its_clients_and_refused_ones_change_nothing() {
    let server = RedisServer::start().expect("redis");
    let mut config = config_for(&[&server]);
    config.redis.idempotency_max_clients = 3;
    let store = Store::new(&config).expect("store");
    for client in ["a", "b", "c"] {
        store
            .execute(add_gold("gus", client, 1))
            .await
            .expect("applies");
    }
    // A fourth client id (a caller minting ids, say) is refused and changes nothing; the
    // clients the player has go on.
    let before = digest(&server).await;
    for minted in 0..20 {
        let refused = store
            .execute(add_gold("gus", &format!("minted-{minted}"), 1))
            .await;
        assert!(matches!(refused, Err(Error::TooLarge(_))), "{refused:?}");
    }
    assert_eq!(digest(&server).await, before);
    store
        .execute(add_gold("gus", "b", 2))
        .await
        .expect("applies");
    let mut conn = raw(&server).await;
    let clients: u64 = redis::cmd("ZCARD")
        .arg("{gus}:clients")
        .query_async(&mut conn)
        .await
        .expect("zcard");
    assert_eq!(clients, 3);
    assert_eq!(gold(&store, "gus").await, 4);
}

#[tokio::test]
async fn a_full_player_takes_a_new_client_once_a_silent_one_is_forgotten() {
    let server = RedisServer::start().expect("redis");
    let mut config = config_for(&[&server]);
    config.redis.idempotency_max_clients = 2;
    config.redis.idempotency_window_secs = 1;
    config.redis.idempotency_ttl_secs = 1;
    let store = Store::new(&config).expect("store");
    let mut conn = raw(&server).await;
    store
        .execute(add_gold("hal", "old", 1))
        .await
        .expect("applies");
    store
        .execute(add_gold("hal", "other", 1))
        .await
        .expect("applies");
    assert!(matches!(
        store.execute(add_gold("hal", "new", 1)).await,
        Err(Error::TooLarge(_))
    ));
    let written = server_ms(&mut conn).await;
    until_server_passes(&server, written + 1000).await;
    // Both clients are silent past the TTL: the new one is taken, the stale ones go.
    store
        .execute(add_gold("hal", "new", 1))
        .await
        .expect("applies");
    let clients: Vec<String> = redis::cmd("ZRANGE")
        .arg("{hal}:clients")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert_eq!(clients, vec!["new".to_string()]);
}

/// Once a window has forgotten, its queue is split (`src/window.lua`): a short state (`c:`,
/// with the head and the tail) read and written on every write, and the middle (`q:`),
/// touched only when the window forgets again. Every remembered request still replays,
/// every forgotten one is too old, and neither writes anything.
#[tokio::test]
async fn a_window_keeps_its_long_queue_out_of_the_state_every_write_rewrites() {
    const WINDOW: u64 = 16;
    const REQUESTS: u64 = 100;
    let server = RedisServer::start().expect("redis");
    let store = store_with_window(&server, WINDOW as usize, 300, 3600);
    let mut conn = raw(&server).await;
    let state = |conn: &mut redis::aio::MultiplexedConnection, field: &'static str| {
        let mut conn = conn.clone();
        async move {
            let value: Option<String> = redis::cmd("HGET")
                .arg("{gus}:meta")
                .arg(field)
                .query_async(&mut conn)
                .await
                .expect("hget");
            value
        }
    };
    for request in 1..=REQUESTS {
        store
            .execute(add_gold("gus", "c", request))
            .await
            .expect("applies");
        let c = state(&mut conn, "c:c").await.expect("a state");
        let entries = c.split(' ').count() - 3;
        if request > WINDOW + WINDOW / 4 {
            // After the first forgetting: the head and at most a quarter of a window.
            assert!(entries <= 1 + WINDOW as usize / 4, "{request}: {c}");
        }
    }
    let c = state(&mut conn, "c:c").await.expect("a state");
    let q = state(&mut conn, "q:c")
        .await
        .expect("the middle of the queue");
    let remembered: u64 = c
        .split(' ')
        .nth(2)
        .expect("a count")
        .parse()
        .expect("a number");
    assert_eq!(
        (c.split(' ').count() - 3 + q.split(' ').count() - 1) as u64,
        remembered,
        "c: {c}, q: {q}"
    );
    assert!((WINDOW..=WINDOW + WINDOW / 4).contains(&remembered));
    let before = digest(&server).await;
    for request in 1..=REQUESTS {
        let answer = store.execute(add_gold("gus", "c", request)).await;
        if request > REQUESTS - remembered {
            assert!(replayed(&answer), "{request}: {answer:?}");
        } else {
            assert!(
                matches!(answer, Err(Error::RequestTooOld { .. })),
                "{request}: {answer:?}"
            );
        }
    }
    assert_eq!(digest(&server).await, before, "a judged request wrote");
    assert_eq!(gold(&store, "gus").await, REQUESTS as i64);
}

/// A trade's primary that only reads stays at version 0, yet remembers each trade's key:
/// such a player is not "never written", and it keeps windows for at most its clients too.
#[tokio::test]
async fn a_primary_that_only_reads_keeps_windows_for_at_most_its_clients() {
    use colony::{MultiTransaction, Participant};
    let server = RedisServer::start().expect("redis");
    let mut config = config_for(&[&server]);
    config.redis.idempotency_max_clients = 2;
    let store = Store::new(&config).expect("store");
    let trade = |client: &str| {
        MultiTransaction::new(IdempotencyKey::new(client, 1).expect("valid"))
            .with(Participant::owner(pid("watcher")).with(Operation::Read {
                names: vec![name("gold")],
            }))
            .with(
                Participant::owner(pid("earner")).with(Operation::IncrementCounter {
                    name: name("gold"),
                    delta: 1,
                    min: None,
                    max: None,
                    visibility: colony::Visibility::Private,
                }),
            )
    };
    for client in ["a", "b"] {
        store.execute_multi(trade(client)).await.expect("applies");
    }
    // The trades' other participants are applied after the answers: wait for that first.
    store.wait_detached().await;
    let before = digest(&server).await;
    let refused = store.execute_multi(trade("c")).await;
    assert!(
        matches!(&refused, Err(Error::InParticipant { participant: 0, error })
            if matches!(**error, Error::TooLarge(_))),
        "{refused:?}"
    );
    assert_eq!(digest(&server).await, before, "a refused trade wrote");
    let clients: u64 = redis::cmd("ZCARD")
        .arg("{watcher}:clients")
        .query_async(&mut raw(&server).await)
        .await
        .expect("zcard");
    assert_eq!(clients, 2);
}
