//! Runs a scenario: sets the players up, drives the sessions through the gateways with the
//! Rust client, shows a progress line, injects the chaos schedule's faults if there is one,
//! then reads every player back and checks the ledger.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::client::{Client, ClientConfig};
use colony::{
    Access, Envelope, Error, MultiTransaction, Name, Operation, Participant, PlayerId, Transaction,
    Value, Visibility,
};

use crate::chaos::{Availability, FaultReport, PlannedFault, Scope};
use crate::control::{ControlDir, Injected};
use crate::report::{Report, Stats};
use crate::scenario::{Op, Scenario};
use colony::seeded::SplitMix64 as Random;
use colony_testkit::ledger::{Ledger, TransferOutcome};

/// Most coins a player may hold; increments beyond are OUT_OF_BOUNDS (and not applied).
const MAX_COINS: i64 = 1_000_000_000_000;

fn player(scenario: &Scenario, n: u64) -> anyhow::Result<PlayerId> {
    Ok(PlayerId::new(format!("{}-{n}", scenario.prefix))?)
}

fn name(n: &str) -> Name {
    // The names used here are constants of the valid alphabet.
    Name::new(n).expect("constant names are valid")
}

async fn connect(scenario: &Scenario) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for gateway in &scenario.gateways {
        let mut config = ClientConfig::new(gateway.clone(), scenario.token.clone());
        config.client_name = "colony-loadtest".into();
        config.request_deadline = Duration::from_secs(10);
        clients.push(Client::connect(config).await?);
    }
    Ok(clients)
}

/// Creates every player, cold ones included (acting for itself), so that logins find them.
async fn set_up(scenario: &Scenario, client: &Client) -> anyhow::Result<()> {
    let ids: Vec<u64> = (0..scenario.players + scenario.cold_players).collect();
    for chunk in ids.chunks(256) {
        let mut batch = Vec::new();
        for &n in chunk {
            let p = player(scenario, n)?;
            let txn =
                Transaction::owner(p.clone(), Some(client.next_key())).with(Operation::SetField {
                    name: name("nick"),
                    value: format!("player {n}").into_bytes(),
                    visibility: Visibility::Public,
                });
            batch.push(Envelope::acting_for(p, txn));
        }
        for r in client.execute_batch(batch).await? {
            r?;
        }
    }
    Ok(())
}

/// A bounded coin change of `player` by `delta`, acting for itself, with a new key.
fn coin_change(client: &Client, player: PlayerId, delta: i64) -> Envelope {
    Envelope::acting_for(
        player.clone(),
        Transaction::owner(player, Some(client.next_key())).with(Operation::IncrementCounter {
            name: name("coins"),
            delta,
            min: Some(0),
            max: Some(MAX_COINS),
            visibility: Visibility::Private,
        }),
    )
}

/// Records a coin change's outcome: acknowledged, unknown (also REQUEST_TOO_OLD: it may have
/// applied), or (any other error) not applied.
fn record_coins<T>(ledger: &mut Ledger, player: &str, delta: i64, result: &Result<T, Error>) {
    match result {
        Ok(_) => ledger.acknowledged(player, delta),
        Err(Error::Unknown { .. } | Error::RequestTooOld { .. }) => ledger.unknown(player, delta),
        Err(_) => ledger.failed(player),
    }
}

/// Live counters for the progress line.
#[derive(Default)]
struct Progress {
    requests: AtomicU64,
    errors: AtomicU64,
    /// The fault being injected, or the last one.
    fault: Mutex<Option<String>>,
}

/// Whether the cluster answered: OK or a definite refusal, as opposed to an outcome that
/// says it could not be reached or did not say.
fn answered(code: colony::Code) -> bool {
    use colony::Code;
    !matches!(
        code,
        Code::Unavailable | Code::Timeout | Code::Unknown | Code::Internal
    )
}

/// What a trade's answer says about whether it applied: an error that may have applied
/// (UNKNOWN, or INTERNAL: a reply nobody understood) or whose key could no longer be judged
/// (REQUEST_TOO_OLD) leaves it unknown; any other error says nothing of it applied. Judged by
/// code, so an error about one participant counts as what it says.
fn transfer_outcome<T>(result: &Result<T, Error>) -> TransferOutcome {
    use colony::Code;
    match result {
        Ok(_) => TransferOutcome::Acknowledged,
        Err(e)
            if matches!(
                e.code(),
                Code::Unknown | Code::Internal | Code::RequestTooOld
            ) =>
        {
            TransferOutcome::Unknown
        }
        Err(_) => TransferOutcome::Failed,
    }
}

/// A trade whose answer was UNKNOWN: the request, to send again after the run.
struct Unsettled {
    trade: Envelope<MultiTransaction>,
    from: String,
    to: String,
    amount: i64,
}

/// How long one trade answered UNKNOWN is sent again before it is left unknown: by its
/// session at once, and once more after the run for those the session had to leave.
const SETTLE_BUDGET: Duration = Duration::from_secs(10);

/// Sends a trade answered UNKNOWN again the way the protocol says a client settles one: the
/// same request (same idempotency key), through each of `clients` in turn, until it answers
/// OK (it applied, then or now: a replay) or a definite refusal (nothing of it applied),
/// within `budget` and while `go_on()` says so. UNKNOWN when it could not be told: no
/// definite answer in time, or REQUEST_TOO_OLD (the key left the primary's window, which is
/// why a session settles its trades at once rather than after the run).
async fn settle_one(
    clients: &[Client],
    trade: &Unsettled,
    budget: Duration,
    go_on: impl Fn() -> bool,
) -> TransferOutcome {
    use colony::Code;
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline && go_on() {
        for client in clients {
            // Each call retries within the client's own deadline, with its backoff.
            let result = client.execute_multi(trade.trade.clone()).await;
            match code_of(&result) {
                Code::Ok => return TransferOutcome::Acknowledged,
                // Nothing of this request applied, but an earlier one may be under way
                // (LOCKED), or the cluster did not answer: send it again.
                Code::Unavailable
                | Code::Timeout
                | Code::Locked
                | Code::Unknown
                | Code::Internal => continue,
                Code::RequestTooOld => return TransferOutcome::Unknown,
                _ => return transfer_outcome(&result),
            }
        }
        // Every gateway failed at once (all of them restarting, say): not a busy loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    TransferOutcome::Unknown
}

/// Settles, after the run, each trade whose session could not (see [`settle_one`]), each
/// within its own budget. Until every such trade is settled a coordinator the client gave up
/// on may still be running it, and players read back meanwhile could show one side of it;
/// settled, none can still change. Returns how many it settled.
async fn settle(
    clients: &[Client],
    unsettled: Vec<Unsettled>,
    ledger: &mut Ledger,
) -> anyhow::Result<u64> {
    // All at once, so the whole takes about one budget however many are left.
    let mut sending = tokio::task::JoinSet::new();
    for trade in unsettled {
        let clients = clients.to_vec();
        sending.spawn(async move {
            let outcome = settle_one(&clients, &trade, SETTLE_BUDGET, || true).await;
            (trade, outcome)
        });
    }
    let mut settled = 0;
    while let Some(done) = sending.join_next().await {
        // A task that panicked lost its trade's outcome: the run's check cannot be trusted.
        let (trade, outcome) = done?;
        if outcome != TransferOutcome::Unknown {
            settled += 1;
        }
        ledger.transfer(&trade.from, &trade.to, trade.amount, outcome);
    }
    Ok(settled)
}

fn code_of<T>(result: &Result<T, Error>) -> colony::Code {
    result
        .as_ref()
        .map_or_else(Error::code, |_| colony::Code::Ok)
}

/// Where a session is, for the availability record.
struct Place {
    /// When the run started.
    started: Instant,
    /// The index of the session's gateway.
    gateway: usize,
    /// The shard of every player, when the cluster's slot map is known (chaos mode).
    shard_of: Arc<Vec<usize>>,
}

impl Place {
    fn transaction(&self, seen: &mut Availability, player: u64, code: colony::Code) {
        let at = self.started.elapsed();
        let answered = answered(code);
        if let Some(shard) = self.shard_of.get(player as usize) {
            seen.record(Scope::Shard(*shard), at, answered);
        }
        seen.record(Scope::All, at, answered);
    }

    fn request(&self, seen: &mut Availability, code: colony::Code) {
        seen.record(
            Scope::Gateway(self.gateway),
            self.started.elapsed(),
            answered(code),
        );
    }
}

/// What one session does until `stop`.
#[allow(clippy::too_many_arguments)]
async fn session(
    scenario: Arc<Scenario>,
    client: Client,
    // Every gateway's client, this session's first: where a trade answered UNKNOWN is sent
    // again.
    gateways: Vec<Client>,
    index: u64,
    place: Place,
    measuring_from: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> anyhow::Result<SessionEnd> {
    let mut random = Random::new(scenario.seed ^ (index.wrapping_mul(0x9E37_79B9)));
    let mut stats = Stats::default();
    let mut ledger = Ledger::default();
    let mut unsettled = Vec::new();
    let mut settled = 0;
    let mut seen = Availability::default();
    let own: Vec<u64> = (index..scenario.players)
        .step_by(scenario.sessions as usize)
        .collect();
    let pace = scenario
        .rate
        .map(|r| Duration::from_secs_f64(scenario.sessions as f64 / r));
    let mut scheduled = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let op = scenario.mix.pick(random.next_u64());
        let my_number = own[random.below(own.len() as u64) as usize];
        let me = player(&scenario, my_number)?;
        if let Some(pace) = pace {
            scheduled += pace;
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        } else {
            scheduled = Instant::now();
        }
        let mut codes: Vec<&'static str> = Vec::new();
        let mut to_settle = None;
        match op {
            Op::Idle => {
                tokio::time::sleep(scenario.think * 5 + Duration::from_millis(50)).await;
                continue;
            }
            Op::Login => {
                let code = code_of(&client.login(&me).await);
                place.request(&mut seen, code);
                place.transaction(&mut seen, my_number, code);
                codes.push(code.as_str());
            }
            Op::Return => {
                let number = scenario.players + random.below(scenario.cold_players);
                let back = player(&scenario, number)?;
                let code = code_of(&client.login(&back).await);
                place.request(&mut seen, code);
                place.transaction(&mut seen, number, code);
                codes.push(code.as_str());
                if code == colony::Code::Ok {
                    let delta = 1 + random.below(5) as i64;
                    stats.transactions += 1;
                    let result = client
                        .execute(coin_change(&client, back.clone(), delta))
                        .await;
                    let code = code_of(&result);
                    place.request(&mut seen, code);
                    place.transaction(&mut seen, number, code);
                    codes.push(code.as_str());
                    record_coins(&mut ledger, back.as_str(), delta, &result);
                }
            }
            Op::Friends => {
                let friends: Vec<u64> = (0..scenario.batch)
                    .map(|_| random.below(scenario.players))
                    .collect();
                let batch: Vec<Envelope> = friends
                    .iter()
                    .map(|n| {
                        let read = Transaction {
                            access: Access::Public,
                            ..Transaction::owner(player(&scenario, *n)?, None)
                                .with(Operation::Read { names: vec![] })
                        };
                        Ok(Envelope::acting_for(me.clone(), read))
                    })
                    .collect::<anyhow::Result<_>>()?;
                stats.transactions += batch.len() as u64;
                match client.execute_batch(batch).await {
                    Ok(results) => {
                        place.request(&mut seen, colony::Code::Ok);
                        for (r, n) in results.iter().zip(&friends) {
                            let code = code_of(r);
                            place.transaction(&mut seen, *n, code);
                            codes.push(code.as_str());
                        }
                    }
                    Err(e) => {
                        place.request(&mut seen, e.code());
                        codes.push(e.code().as_str());
                    }
                }
            }
            Op::Trade => {
                let mut other = random.below(scenario.players);
                if other == my_number {
                    other = (other + 1) % scenario.players;
                }
                let them = player(&scenario, other)?;
                let amount = 1 + random.below(5) as i64;
                let coins = |delta: i64, min: Option<i64>| Operation::IncrementCounter {
                    name: name("coins"),
                    delta,
                    min,
                    max: Some(MAX_COINS),
                    visibility: Visibility::Private,
                };
                let trade = MultiTransaction::new(client.next_key())
                    .with(Participant::owner(me.clone()).with(coins(-amount, Some(0))))
                    .with(Participant {
                        access: Access::Public,
                        ..Participant::owner(them.clone()).with(coins(amount, None))
                    });
                stats.transactions += 1;
                let envelope = Envelope::acting_for(me.clone(), trade);
                let result = client.execute_multi(envelope.clone()).await;
                let code = code_of(&result);
                place.request(&mut seen, code);
                place.transaction(&mut seen, my_number, code);
                place.transaction(&mut seen, other, code);
                codes.push(code.as_str());
                match transfer_outcome(&result) {
                    // Settled now, by the same request again, as a game server would (see
                    // `settle_one`); one still unknown is tried again after the run.
                    TransferOutcome::Unknown => {
                        let trade = Unsettled {
                            trade: envelope,
                            from: me.as_str().to_string(),
                            to: them.as_str().to_string(),
                            amount,
                        };
                        to_settle = Some(trade);
                    }
                    outcome => ledger.transfer(me.as_str(), them.as_str(), amount, outcome),
                }
            }
            Op::Currency | Op::Write => {
                let mut batch = Vec::new();
                let mut deltas = Vec::new();
                let mut numbers = Vec::new();
                for _ in 0..scenario.batch {
                    let number = own[random.below(own.len() as u64) as usize];
                    numbers.push(number);
                    let target = player(&scenario, number)?;
                    let delta = 1 + random.below(5) as i64;
                    deltas.push((target.as_str().to_string(), delta));
                    batch.push(if op == Op::Currency {
                        coin_change(&client, target, delta)
                    } else {
                        let write = Transaction::owner(target.clone(), Some(client.next_key()))
                            .with(Operation::SetField {
                                name: name("profile"),
                                value: random.next_u64().to_le_bytes().repeat(8),
                                visibility: Visibility::Public,
                            });
                        Envelope::acting_for(target, write)
                    });
                }
                stats.transactions += batch.len() as u64;
                let results = client.execute_batch(batch).await;
                match results {
                    Ok(results) => {
                        place.request(&mut seen, colony::Code::Ok);
                        for ((r, (target, delta)), number) in
                            results.iter().zip(&deltas).zip(&numbers)
                        {
                            let code = code_of(r);
                            place.transaction(&mut seen, *number, code);
                            codes.push(code.as_str());
                            if op == Op::Currency {
                                record_coins(&mut ledger, target, *delta, r);
                            }
                        }
                    }
                    Err(e) => {
                        place.request(&mut seen, e.code());
                        codes.push(e.code().as_str());
                        // A whole-batch failure of a write batch after sending: unknown.
                        if op == Op::Currency && e.code() == colony::Code::Unknown {
                            for (target, delta) in &deltas {
                                ledger.unknown(target, *delta);
                            }
                        }
                    }
                }
            }
        }
        // Latency from the scheduled start, so a paced run that falls behind shows it
        // (no coordinated omission).
        let elapsed = scheduled.elapsed();
        progress.requests.fetch_add(1, Ordering::Relaxed);
        if codes.iter().any(|c| *c != "OK") {
            progress.errors.fetch_add(1, Ordering::Relaxed);
        }
        if Instant::now() >= measuring_from {
            let second = measuring_from.elapsed().as_secs() as usize;
            stats.record(op, elapsed, second);
            if codes.iter().any(|c| *c != "OK") {
                stats.failed_at(second);
            }
            for code in codes {
                stats.code(op, code);
            }
        }
        // A trade answered UNKNOWN, sent again now that its own latency is recorded; the
        // time spent on it is not a request's, so a paced schedule starts again after it.
        if let Some(trade) = to_settle.take() {
            let running = || !stop.load(Ordering::Relaxed);
            let outcome = settle_one(&gateways, &trade, SETTLE_BUDGET, running).await;
            if outcome == TransferOutcome::Unknown {
                unsettled.push(trade);
            } else {
                settled += 1;
                ledger.transfer(&trade.from, &trade.to, trade.amount, outcome);
            }
            scheduled = Instant::now();
        }
        if !scenario.think.is_zero() {
            tokio::time::sleep(scenario.think).await;
        }
    }
    Ok(SessionEnd {
        stats,
        ledger,
        seen,
        unsettled,
        settled,
    })
}

/// What a session leaves when it stops.
struct SessionEnd {
    stats: Stats,
    ledger: Ledger,
    seen: Availability,
    /// Its trades still UNKNOWN after it sent them again.
    unsettled: Vec<Unsettled>,
    /// Its trades first answered UNKNOWN and settled by sending them again.
    settled: u64,
}

/// Injects the scheduled faults at their times until `stop`; returns each with the time it
/// was injected (from the start of the run) and what happened.
async fn inject_faults(
    control: Arc<ControlDir>,
    schedule: Vec<PlannedFault>,
    gateways: Vec<String>,
    started: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Vec<(PlannedFault, Duration, Injected)> {
    let mut done = Vec::new();
    for fault in schedule {
        tokio::time::sleep_until((started + fault.at).into()).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let at = started.elapsed();
        *progress.fault.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("injecting {}", fault.kind.name()));
        let injected = control.inject(&fault, &gateways).await;
        *progress.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
            "{} {} {}",
            fault.kind.name(),
            injected.target,
            if injected.error.is_some() {
                "FAILED"
            } else {
                "recovered"
            }
        ));
        done.push((fault, at, injected));
    }
    done
}

/// The report lines of the injected faults: each one's window runs until the next fault, or
/// until the traffic stopped.
fn fault_reports(
    injected: &[(PlannedFault, Duration, Injected)],
    seen: &Availability,
    warmup: Duration,
    traffic_end: Duration,
) -> Vec<FaultReport> {
    injected
        .iter()
        .enumerate()
        .map(|(i, (fault, at, what))| {
            let until = injected
                .get(i + 1)
                .map_or(traffic_end, |(_, next, _)| *next)
                .max(*at);
            let scope = match (what.shard, what.gateway) {
                (Some(shard), _) => Scope::Shard(shard),
                (_, Some(gateway)) => Scope::Gateway(gateway),
                _ => Scope::All,
            };
            FaultReport {
                kind: fault.kind.name().to_string(),
                target: what.target.clone(),
                at_s: at.as_secs_f64() - warmup.as_secs_f64(),
                outcome: what.outcome.clone(),
                recovered_after_ms: what.recovered_after.map(|d| d.as_secs_f64() * 1000.0),
                unavailable_ms: seen.longest_gap(scope, *at, until).as_secs_f64() * 1000.0,
                failed: seen.failed(scope, *at, until),
                error: what.error.clone(),
            }
        })
        .collect()
}

/// The windows another process recorded in `path` (see `Scenario::windows`), as report
/// lines: each one's unavailability and failures counted over the whole cluster, from its
/// start to its end (or to the end of the traffic, while still open).
fn window_reports(
    path: &std::path::Path,
    started_unix_ms: u64,
    seen: &Availability,
    warmup: Duration,
    traffic_end: Duration,
) -> Vec<FaultReport> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| crate::chaos::parse_window(line, started_unix_ms))
        .map(|(label, from, to, note)| {
            let until = to.unwrap_or(traffic_end).min(traffic_end).max(from);
            FaultReport {
                kind: label,
                target: String::new(),
                at_s: from.as_secs_f64() - warmup.as_secs_f64(),
                outcome: if to.is_none() {
                    format!("still running when the traffic stopped. {note}")
                } else {
                    note
                },
                recovered_after_ms: Some((until - from).as_secs_f64() * 1000.0),
                unavailable_ms: seen.longest_gap(Scope::All, from, until).as_secs_f64() * 1000.0,
                failed: seen.failed(Scope::All, from, until),
                error: None,
            }
        })
        .collect()
}

/// Runs `scenario`; `progress_line` gets a one-line status every second.
pub async fn run(
    scenario: Scenario,
    progress_line: impl Fn(&str) + Send + 'static,
) -> anyhow::Result<Report> {
    scenario.validate().map_err(anyhow::Error::msg)?;
    // Chaos mode: the control directory must allow every fault before any traffic runs.
    let control = match &scenario.chaos {
        Some(chaos) => {
            let control = ControlDir::open(&chaos.control).await?;
            control.check(&chaos.faults, &scenario.gateways)?;
            Some(Arc::new(control))
        }
        None => None,
    };
    let shard_of: Arc<Vec<usize>> = Arc::new(match &control {
        Some(control) => (0..scenario.players + scenario.cold_players)
            .map(|n| Ok(control.shard_of(&player(&scenario, n)?)))
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    });
    let clients = connect(&scenario).await?;
    set_up(&scenario, &clients[0]).await?;
    let scenario = Arc::new(scenario);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    // The same instant on the wall clock, for windows other processes record (Unix ms).
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let measuring_from = started + scenario.warmup;
    let tasks: Vec<_> = (0..scenario.sessions)
        .map(|s| {
            let gateway = (s as usize) % clients.len();
            let mut gateways = clients.clone();
            gateways.rotate_left(gateway);
            tokio::spawn(session(
                scenario.clone(),
                clients[gateway].clone(),
                gateways,
                s,
                Place {
                    started,
                    gateway,
                    shard_of: shard_of.clone(),
                },
                measuring_from,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let chaos = control.map(|control| {
        tokio::spawn(inject_faults(
            control,
            scenario.schedule(),
            scenario.gateways.clone(),
            started,
            stop.clone(),
            progress.clone(),
        ))
    });
    let ticker = {
        let (progress, stop) = (progress.clone(), stop.clone());
        let total = scenario.warmup + scenario.duration;
        let line = Arc::new(Mutex::new(progress_line));
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let requests = progress.requests.load(Ordering::Relaxed);
                let mut text = format!(
                    "{:>4.0}/{:.0} s  {:>7} requests  {:>6}/s  {} with errors",
                    started.elapsed().as_secs_f64().min(total.as_secs_f64()),
                    total.as_secs_f64(),
                    requests,
                    requests - last,
                    progress.errors.load(Ordering::Relaxed)
                );
                if let Some(fault) = &*progress.fault.lock().unwrap_or_else(|p| p.into_inner()) {
                    text.push_str("  chaos: ");
                    text.push_str(fault);
                }
                last = requests;
                (line.lock().unwrap_or_else(|p| p.into_inner()))(&text);
            }
        })
    };
    tokio::time::sleep(scenario.warmup + scenario.duration).await;
    stop.store(true, Ordering::Relaxed);
    let traffic_end = started.elapsed();
    let measured = measuring_from.elapsed().min(scenario.duration);
    let mut stats = Stats::default();
    let mut ledger = Ledger::default();
    let mut seen = Availability::default();
    let mut unsettled = Vec::new();
    let mut settled_by_sessions = 0;
    for task in tasks {
        let end = task.await??;
        stats.merge(&end.stats);
        ledger.merge(&end.ledger);
        seen.merge(&end.seen);
        unsettled.extend(end.unsettled);
        settled_by_sessions += end.settled;
    }
    let _ = ticker.await;
    // A fault still under way is seen through (restarts included) before reading back.
    let injected = match chaos {
        Some(task) => task.await?,
        None => Vec::new(),
    };
    let mut faults = fault_reports(&injected, &seen, scenario.warmup, traffic_end);
    if let Some(path) = &scenario.windows {
        faults.extend(window_reports(
            path,
            started_unix_ms,
            &seen,
            scenario.warmup,
            traffic_end,
        ));
    }
    // Trades answered UNKNOWN are settled before anything is read back: until then the
    // coordinator a client gave up on may still be applying one, and a read-back could catch
    // it half-way through (one side applied, the other not yet).
    let settled = settle(&clients, unsettled, &mut ledger).await? + settled_by_sessions;

    // Read every checked player back (restoring archived ones) and compare. Each gateway is
    // tried in turn (each with the client's retries): after chaos one may still be down. A
    // player no gateway could read is reported as unreadable, not judged.
    let mut stored = std::collections::BTreeMap::new();
    for p in ledger.players() {
        let id = PlayerId::new(p)?;
        for client in &clients {
            if let Ok(state) = client.get_player(&id, Access::Owner, Some(&id)).await {
                let coins = state
                    .reads
                    .first()
                    .and_then(|r| r.entries.iter().find(|e| e.name.as_str() == "coins"))
                    .map_or(0, |e| match e.value {
                        Value::Counter(c) => c,
                        _ => 0,
                    });
                stored.insert(p.to_string(), coins);
                break;
            }
        }
    }
    let mut findings = ledger.check(|p| stored.get(p).copied());
    findings.transfers_settled = settled;
    Ok(Report::new(&stats, measured, findings, faults))
}
