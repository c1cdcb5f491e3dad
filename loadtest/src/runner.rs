//! Runs a scenario: sets the players up, drives the sessions through the gateways with the
//! Rust client, shows a progress line, then reads every player back and checks the ledger.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::client::{Client, ClientConfig};
use colony::{Access, Error, Name, Operation, PlayerId, Transaction, Value, Visibility};

use crate::checker::Ledger;
use crate::report::{Report, Stats};
use crate::scenario::{Op, Random, Scenario};

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

/// Creates every player (acting for itself), so that logins find them.
async fn set_up(scenario: &Scenario, client: &Client) -> anyhow::Result<()> {
    let ids: Vec<u64> = (0..scenario.players).collect();
    for chunk in ids.chunks(256) {
        let mut batch = Vec::new();
        for &n in chunk {
            let p = player(scenario, n)?;
            batch.push(Transaction {
                acting_player: Some(p.clone()),
                ..Transaction::owner(p, Some(client.next_key())).with(Operation::SetField {
                    name: name("nick"),
                    value: format!("player {n}").into_bytes(),
                    visibility: Visibility::Public,
                })
            });
        }
        for r in client.execute_batch(batch).await? {
            r?;
        }
    }
    Ok(())
}

/// Live counters for the progress line.
#[derive(Default)]
struct Progress {
    requests: AtomicU64,
    errors: AtomicU64,
}

/// What one session does until `stop`.
async fn session(
    scenario: Arc<Scenario>,
    client: Client,
    index: u64,
    measuring_from: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> anyhow::Result<(Stats, Ledger)> {
    let mut random = Random::new(scenario.seed ^ (index.wrapping_mul(0x9E37_79B9)));
    let mut stats = Stats::default();
    let mut ledger = Ledger::default();
    let own: Vec<u64> = (index..scenario.players)
        .step_by(scenario.sessions as usize)
        .collect();
    let pace = scenario
        .rate
        .map(|r| Duration::from_secs_f64(scenario.sessions as f64 / r));
    let mut scheduled = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let op = scenario.mix.pick(random.next_u64());
        let me = player(&scenario, own[random.below(own.len() as u64) as usize])?;
        if let Some(pace) = pace {
            scheduled += pace;
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        } else {
            scheduled = Instant::now();
        }
        let mut codes: Vec<&'static str> = Vec::new();
        match op {
            Op::Idle => {
                tokio::time::sleep(scenario.think * 5 + Duration::from_millis(50)).await;
                continue;
            }
            Op::Login => {
                let r = client.login(&me).await;
                codes.push(r.as_ref().map_or_else(|e| e.code().as_str(), |_| "OK"));
            }
            Op::Friends => {
                let batch: Vec<Transaction> = (0..scenario.batch)
                    .map(|_| {
                        let friend = player(&scenario, random.below(scenario.players))?;
                        Ok(Transaction {
                            access: Access::Public,
                            acting_player: Some(me.clone()),
                            ..Transaction::owner(friend, None)
                                .with(Operation::Read { names: vec![] })
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
                stats.transactions += batch.len() as u64;
                match client.execute_batch(batch).await {
                    Ok(results) => codes.extend(
                        results
                            .iter()
                            .map(|r| r.as_ref().map_or_else(|e| e.code().as_str(), |_| "OK")),
                    ),
                    Err(e) => codes.push(e.code().as_str()),
                }
            }
            Op::Currency | Op::Write => {
                let mut batch = Vec::new();
                let mut deltas = Vec::new();
                for _ in 0..scenario.batch {
                    let target = player(&scenario, own[random.below(own.len() as u64) as usize])?;
                    let delta = 1 + random.below(5) as i64;
                    let operation = if op == Op::Currency {
                        Operation::IncrementCounter {
                            name: name("coins"),
                            delta,
                            min: Some(0),
                            max: Some(MAX_COINS),
                            visibility: Visibility::Private,
                        }
                    } else {
                        Operation::SetField {
                            name: name("profile"),
                            value: random.next_u64().to_le_bytes().repeat(8),
                            visibility: Visibility::Public,
                        }
                    };
                    deltas.push((target.as_str().to_string(), delta));
                    batch.push(Transaction {
                        acting_player: Some(target.clone()),
                        ..Transaction::owner(target, Some(client.next_key())).with(operation)
                    });
                }
                stats.transactions += batch.len() as u64;
                let results = client.execute_batch(batch).await;
                match results {
                    Ok(results) => {
                        for (r, (target, delta)) in results.iter().zip(&deltas) {
                            codes.push(r.as_ref().map_or_else(|e| e.code().as_str(), |_| "OK"));
                            if op == Op::Currency {
                                match r {
                                    Ok(_) => ledger.acknowledged(target, *delta),
                                    Err(Error::Unknown { .. }) => ledger.unknown(target, *delta),
                                    Err(_) => {}
                                }
                            }
                        }
                    }
                    Err(e) => {
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
            for code in codes {
                stats.code(op, code);
            }
        }
        if !scenario.think.is_zero() {
            tokio::time::sleep(scenario.think).await;
        }
    }
    Ok((stats, ledger))
}

/// Runs `scenario`; `progress_line` gets a one-line status every second.
pub async fn run(
    scenario: Scenario,
    progress_line: impl Fn(&str) + Send + 'static,
) -> anyhow::Result<Report> {
    scenario.validate().map_err(anyhow::Error::msg)?;
    let clients = connect(&scenario).await?;
    set_up(&scenario, &clients[0]).await?;
    let scenario = Arc::new(scenario);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let measuring_from = started + scenario.warmup;
    let tasks: Vec<_> = (0..scenario.sessions)
        .map(|s| {
            tokio::spawn(session(
                scenario.clone(),
                clients[(s as usize) % clients.len()].clone(),
                s,
                measuring_from,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let ticker = {
        let (progress, stop) = (progress.clone(), stop.clone());
        let total = scenario.warmup + scenario.duration;
        let line = Arc::new(Mutex::new(progress_line));
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let requests = progress.requests.load(Ordering::Relaxed);
                let text = format!(
                    "{:>4.0}/{:.0} s  {:>7} requests  {:>6}/s  {} with errors",
                    started.elapsed().as_secs_f64().min(total.as_secs_f64()),
                    total.as_secs_f64(),
                    requests,
                    requests - last,
                    progress.errors.load(Ordering::Relaxed)
                );
                last = requests;
                (line.lock().unwrap_or_else(|p| p.into_inner()))(&text);
            }
        })
    };
    tokio::time::sleep(scenario.warmup + scenario.duration).await;
    stop.store(true, Ordering::Relaxed);
    let measured = measuring_from.elapsed().min(scenario.duration);
    let mut stats = Stats::default();
    let mut ledger = Ledger::default();
    for task in tasks {
        let (s, l) = task.await??;
        stats.merge(&s);
        ledger.merge(&l);
    }
    let _ = ticker.await;

    // Read every checked player back (restoring archived ones) and compare.
    let client = &clients[0];
    let mut stored = std::collections::BTreeMap::new();
    for p in ledger.players() {
        let id = PlayerId::new(p)?;
        let state = client.get_player(&id, Access::Owner, Some(&id)).await?;
        let coins = state
            .reads
            .first()
            .and_then(|r| r.entries.iter().find(|e| e.name.as_str() == "coins"))
            .map_or(0, |e| match e.value {
                Value::Counter(c) => c,
                _ => 0,
            });
        stored.insert(p.to_string(), coins);
    }
    let findings = ledger.check(|p| stored.get(p).copied().unwrap_or(0));
    Ok(Report::new(&stats, measured, findings))
}
