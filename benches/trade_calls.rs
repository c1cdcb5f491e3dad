//! Redis time of each call of a two-player trade, measured apart, against a single-player
//! write's, on one fresh `redis-server`: the scripts' own time, without the networking and
//! scheduling of a loaded machine that `multi_throughput` measures with it.
//!
//! The trades run step by step through [`MultiAttempt`], every trade's step before any
//! trade's next one, and each step is one phase: `usec_per_call` of `EVALSHA` in `INFO
//! commandstats` over the phase is that call's Redis time. The phases:
//!
//! - **single**: a single-player write (a bounded private counter +1, with an idempotency
//!   key) on a trade's primary, the baseline;
//! - **prepare**: the other participant's prepare (its counter +1, staged as an intent);
//! - **commit**: the primary's commit (its counter -1, the key remembered with both replies,
//!   the decision written);
//! - **apply**: the other participant's apply (the caller waiting, here);
//! - **forget**: the commit record forgotten.
//!
//! `--trades` trades a round (default 1,000) over 200 primaries, each with a taker of its own,
//! after a round that brings the primaries' windows to their steady length; `--rounds`
//! measured rounds (default 9). A phase's time drifts with the machine's other load, so each
//! call's figure is the median over the rounds, and the trade's ratio is the median of each
//! round's own ratio (its calls' sum over its single write). A phase also counts its calls
//! per trade, so a step that starts making more calls shows.
//!
//! Run: `cargo bench --bench trade_calls [-- --trades N --rounds N]`. The figures are µs per
//! call and ratios against the single write of the same run.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod common;

use colony::store::intents::Decision;
use colony::store::multi::{MultiAttempt, PrepareOutcome};
use colony::{
    IdempotencyKey, MultiTransaction, Operation, Participant, PlayerId, Store, Transaction,
};
use colony_testkit::{config_for, RedisServer};
use futures_util::future::join_all;

/// Primaries: each trades with a taker of its own and takes single writes.
const PRIMARIES: usize = 200;
/// Calls in flight at once within a phase (the phase's time does not matter, only its
/// calls' Redis time).
const IN_FLIGHT: usize = 64;

fn gold(delta: i64) -> Operation {
    common::gold(delta, Some(1_000_000_000_000))
}

fn primary(i: usize) -> PlayerId {
    PlayerId::new(format!("primary-{}", i % PRIMARIES)).unwrap()
}

fn taker(round: usize, i: usize) -> PlayerId {
    PlayerId::new(format!("taker-{round}-{i}")).unwrap()
}

/// `EVALSHA`'s calls and µs so far.
fn evalsha_stats(conn: &mut redis::Connection) -> (f64, f64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or("cmdstat_evalsha:calls=0,usec=0,");
    let field = |name: &str| -> f64 {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split(',').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("calls"), field("usec"))
}

/// Runs `step` on every item of `items`, `IN_FLIGHT` at a time, asserting each succeeded.
async fn in_chunks<T>(items: &mut [T], step: impl AsyncFn(&mut T) -> bool) {
    for chunk in items.chunks_mut(IN_FLIGHT) {
        let done = join_all(chunk.iter_mut().map(|item| step(item))).await;
        assert!(done.into_iter().all(|ok| ok), "a step failed");
    }
}

/// One round of `trades` trades, step by step; the Redis time per call of each step when
/// `conn` is given (none for the warming round): (name, µs per call, calls per trade).
async fn round(
    store: &Store,
    round: usize,
    trades: usize,
    mut conn: Option<&mut redis::Connection>,
) -> Vec<(&'static str, f64, f64)> {
    let mut figures = Vec::new();
    let phase_start =
        |conn: &mut Option<&mut redis::Connection>| conn.as_mut().map(|c| evalsha_stats(c));
    let mut phase_end = |conn: &mut Option<&mut redis::Connection>,
                         start: Option<(f64, f64)>,
                         name: &'static str| {
        if let (Some(c), Some((calls, usec))) = (conn.as_mut(), start) {
            let (calls_now, usec_now) = evalsha_stats(c);
            let calls = calls_now - calls;
            figures.push((name, (usec_now - usec) / calls, calls / trades as f64));
        }
    };

    let mut singles: Vec<usize> = (0..trades).collect();
    let start = phase_start(&mut conn);
    in_chunks(&mut singles, async |i: &mut usize| {
        let txn = Transaction::owner(
            primary(*i),
            Some(IdempotencyKey::new("single", (round * trades + *i + 1) as u64).unwrap()),
        )
        .with(gold(1));
        store.execute(txn).await.is_ok()
    })
    .await;
    phase_end(&mut conn, start, "single");

    let mut attempts: Vec<MultiAttempt<'_>> = (0..trades)
        .map(|i| {
            let txn = MultiTransaction::new(
                IdempotencyKey::new("trade", (round * trades + i + 1) as u64).unwrap(),
            )
            .with(Participant::owner(primary(i)).with(gold(-1)))
            .with(Participant::owner(taker(round, i)).with(gold(1)));
            MultiAttempt::new(store, txn).unwrap()
        })
        .collect();
    let start = phase_start(&mut conn);
    in_chunks(&mut attempts, async |a: &mut MultiAttempt<'_>| {
        matches!(a.prepare().await, PrepareOutcome::AllStaged)
    })
    .await;
    phase_end(&mut conn, start, "prepare");
    let start = phase_start(&mut conn);
    // A commit refused (its deadline passed, say) would leave a phase of roll backs to
    // measure as applies: every commit must hold.
    in_chunks(&mut attempts, async |a: &mut MultiAttempt<'_>| {
        matches!(a.decide(true).await, Ok(Decision::Commit))
    })
    .await;
    phase_end(&mut conn, start, "commit");
    let start = phase_start(&mut conn);
    in_chunks(&mut attempts, async |a: &mut MultiAttempt<'_>| {
        a.finish().await.is_ok()
    })
    .await;
    phase_end(&mut conn, start, "apply");
    let start = phase_start(&mut conn);
    in_chunks(&mut attempts, async |a: &mut MultiAttempt<'_>| {
        a.forget().await.is_ok()
    })
    .await;
    phase_end(&mut conn, start, "forget");
    figures
}

#[tokio::main]
async fn main() {
    let trades = common::option("--trades", 1_000) as usize;
    let rounds_measured = common::option("--rounds", 9).max(1) as usize;
    let server = RedisServer::start().unwrap();
    let store = Store::new(&config_for(&[&server])).unwrap();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();

    // Every primary and taker starts with gold of its own (one write each).
    let mut players: Vec<PlayerId> = (0..PRIMARIES).map(primary).collect();
    for r in 0..=rounds_measured {
        players.extend((0..trades).map(|i| taker(r, i)));
    }
    common::endow(&store, &players, 1_000_000).await;

    round(&store, 0, trades, None).await;
    let mut rounds = Vec::new();
    for r in 1..=rounds_measured {
        rounds.push(round(&store, r, trades, Some(&mut conn)).await);
    }

    println!(
        "Redis time per call (EVALSHA usec_per_call), {trades} trades over {PRIMARIES} primaries, one server, median of {rounds_measured} rounds:"
    );
    let median_of = |k: usize| common::median(&rounds.iter().map(|f| f[k].1).collect::<Vec<_>>());
    let single = median_of(0);
    for (k, (name, _, calls)) in rounds[0].iter().enumerate() {
        let usec = median_of(k);
        let each: Vec<String> = rounds.iter().map(|f| format!("{:.1}", f[k].1)).collect();
        println!(
            "  {name:<8} {usec:>6.2} µs  ({:.2}x single)  {calls:.2} calls per trade  (rounds: {})",
            usec / single,
            each.join(" ")
        );
    }
    // Each round's trade (every call but the single write, times its calls per trade) over
    // that round's single write.
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|f| {
            f[1..]
                .iter()
                .map(|(_, usec, calls)| usec * calls)
                .sum::<f64>()
                / f[0].1
        })
        .collect();
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "  a trade ÷ a single write: {:.2}x (median of the rounds' own: {}); target for the rate ratio: <= 2.5x",
        common::median(&ratios),
        each.join(" ")
    );
}
