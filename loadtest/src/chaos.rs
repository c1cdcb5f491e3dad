//! Chaos mode, the pure part: which faults, when (a seeded schedule), and how long each part
//! of the cluster stayed unavailable around each fault, from what the sessions saw. The
//! processes themselves are acted on by [`crate::control`].
//!
//! Unavailability is measured from the client side, in buckets of [`BUCKET`]: a fault's
//! window is the longest run of buckets in which its scope (the shard whose master was hit,
//! the gateway that was killed, or the whole cluster for MongoDB) answered no request, from
//! the moment the fault was injected until the next fault (or the end of the traffic).

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use colony::seeded::SplitMix64 as Random;

/// Resolution of the availability record.
pub const BUCKET: Duration = Duration::from_millis(10);

/// A fault chaos mode can inject into the local cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a shard's master; once Sentinel has promoted its replica, the old master is
    /// started again as the new master's replica.
    KillMaster,
    /// SIGSTOP a shard's master for longer than Sentinel's down-after, then SIGCONT it: the
    /// stale master comes back after a promotion and is turned into a replica.
    PauseMaster,
    /// SIGKILL one of the gateways the load test talks to, then start it again.
    KillGateway,
    /// SIGKILL the MongoDB-wire server, then start it again on the same data.
    StopMongo,
}

impl FaultKind {
    /// Every kind, in the order of the command line's help.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::KillMaster,
        FaultKind::PauseMaster,
        FaultKind::KillGateway,
        FaultKind::StopMongo,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillMaster => "kill-master",
            FaultKind::PauseMaster => "pause-master",
            FaultKind::KillGateway => "kill-gateway",
            FaultKind::StopMongo => "stop-mongo",
        }
    }

    /// Parses `all` or a comma-separated list of names (repeats count once).
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
        if text.trim() == "all" {
            return Ok(FaultKind::ALL.to_vec());
        }
        let mut kinds = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == part)
                .ok_or_else(|| {
                    format!(
                        "unknown fault {part:?}; the faults are all, {}",
                        FaultKind::ALL.map(FaultKind::name).join(", ")
                    )
                })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err("no fault named".into());
        }
        Ok(kinds)
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedFault {
    /// When to inject it, from the start of the run (warm-up included).
    pub at: Duration,
    /// What to do.
    pub kind: FaultKind,
    /// A seeded number that picks the shard or gateway it hits.
    pub choice: u64,
}

/// The seeded schedule: one fault in each `every`-long slot between `from` and `until`, at a
/// random point of the slot's middle half, none in the last half slot (so that the cluster
/// has time to recover before the traffic stops). Kinds take turns in a seeded order, so
/// that every kind named comes once before any comes twice.
pub fn plan(
    seed: u64,
    kinds: &[FaultKind],
    from: Duration,
    until: Duration,
    every: Duration,
) -> Vec<PlannedFault> {
    let mut random = Random::new(seed ^ 0xC4A0_5C4A_05C4_A05C);
    let mut order = kinds.to_vec();
    // Fisher-Yates with the seeded generator.
    for i in (1..order.len()).rev() {
        order.swap(i, random.below(i as u64 + 1) as usize);
    }
    let mut faults = Vec::new();
    if order.is_empty() || every.is_zero() {
        return faults;
    }
    let quarter = every / 4;
    let mut slot = from;
    loop {
        let at = slot + quarter + random_within(&mut random, every / 2);
        if at + every / 2 > until {
            break;
        }
        faults.push(PlannedFault {
            at,
            kind: order[faults.len() % order.len()],
            choice: random.next_u64(),
        });
        slot += every;
    }
    faults
}

fn random_within(random: &mut Random, span: Duration) -> Duration {
    let millis = span.as_millis() as u64;
    Duration::from_millis(random.below(millis.max(1)))
}

/// The part of the cluster a request outcome is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The shard (index in the configuration) of the player a transaction touched.
    Shard(usize),
    /// The gateway (index among the load test's gateways) a request went through.
    Gateway(usize),
    /// Anything.
    All,
}

/// Answered and failed outcomes in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests or transactions that got an answer (OK or a definite refusal).
    pub answered: u32,
    /// Requests or transactions that got UNAVAILABLE, TIMEOUT, UNKNOWN or INTERNAL.
    pub failed: u32,
}

/// What the sessions saw over time, per scope, in [`BUCKET`]s since the run started.
#[derive(Debug, Clone, Default)]
pub struct Availability {
    buckets: HashMap<Scope, Vec<Tally>>,
}

impl Availability {
    /// Counts one outcome for `scope` that ended `at` after the run started.
    pub fn record(&mut self, scope: Scope, at: Duration, answered: bool) {
        let index = (at.as_millis() / BUCKET.as_millis()) as usize;
        let buckets = self.buckets.entry(scope).or_default();
        if buckets.len() <= index {
            buckets.resize(index + 1, Tally::default());
        }
        if answered {
            buckets[index].answered += 1;
        } else {
            buckets[index].failed += 1;
        }
    }

    /// Adds another session's record.
    pub fn merge(&mut self, other: &Availability) {
        for (scope, theirs) in &other.buckets {
            let mine = self.buckets.entry(*scope).or_default();
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), Tally::default());
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                m.answered += t.answered;
                m.failed += t.failed;
            }
        }
    }

    fn range(from: Duration, to: Duration) -> std::ops::Range<usize> {
        let bucket = BUCKET.as_millis();
        (from.as_millis() / bucket) as usize..(to.as_millis().div_ceil(bucket)) as usize
    }

    /// The longest run of buckets in `from..to` in which `scope` answered nothing.
    pub fn longest_gap(&self, scope: Scope, from: Duration, to: Duration) -> Duration {
        let empty = Vec::new();
        let buckets = self.buckets.get(&scope).unwrap_or(&empty);
        let (mut longest, mut current) = (0u32, 0u32);
        for index in Self::range(from, to) {
            if buckets.get(index).is_some_and(|t| t.answered > 0) {
                current = 0;
            } else {
                current += 1;
                longest = longest.max(current);
            }
        }
        BUCKET * longest
    }

    /// Failed outcomes of `scope` in `from..to`.
    pub fn failed(&self, scope: Scope, from: Duration, to: Duration) -> u64 {
        let Some(buckets) = self.buckets.get(&scope) else {
            return 0;
        };
        Self::range(from, to)
            .filter_map(|i| buckets.get(i))
            .map(|t| u64::from(t.failed))
            .sum()
    }
}

/// One line of a windows file (see `Scenario::windows`): its label, its start and end as
/// durations since `origin_ms` (Unix ms; `None`: still open), and what happened.
pub fn parse_window(
    line: &str,
    origin_ms: u64,
) -> Option<(String, Duration, Option<Duration>, String)> {
    let mut fields = line.splitn(4, '\t');
    let label = fields.next()?.trim();
    let start: u64 = fields.next()?.trim().parse().ok()?;
    let end = fields.next()?.trim();
    let note = fields.next().unwrap_or("").trim().to_string();
    if label.is_empty() {
        return None;
    }
    let since = |ms: u64| Duration::from_millis(ms.saturating_sub(origin_ms));
    let end = if end == "-" {
        None
    } else {
        Some(since(end.parse().ok()?))
    };
    Some((label.to_string(), since(start), end, note))
}

/// One injected fault in the report.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// The fault's name (`kill-master`, ...), or the label of a window another process
    /// recorded (`reshard`).
    pub kind: String,
    /// What it hit, e.g. `shard-1 master 127.0.0.1:7002`.
    pub target: String,
    /// Seconds after measuring began.
    pub at_s: f64,
    /// What happened, in words.
    pub outcome: String,
    /// Time from the injection until the cluster had replaced or restarted what was hit
    /// (Sentinel's promotion, a restart accepting connections), in ms.
    pub recovered_after_ms: Option<f64>,
    /// The longest time its scope answered no request, in ms.
    pub unavailable_ms: f64,
    /// Requests or transactions in its scope that failed until the next fault.
    pub failed: u64,
    /// Set when the fault could not be injected or the cluster did not recover.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn windows_parse_and_malformed_lines_are_skipped() {
        assert_eq!(
            parse_window("reshard\t1500\t4000\tmoved 10 slots", 1000),
            Some((
                "reshard".into(),
                S(0) + Duration::from_millis(500),
                Some(S(3)),
                "moved 10 slots".into()
            ))
        );
        assert_eq!(
            parse_window("reshard\t900\t-\t", 1000),
            Some(("reshard".into(), S(0), None, String::new()))
        );
        for bad in ["", "reshard", "reshard\tx\t1", "\t1\t2", "r\t1\tsoon"] {
            assert_eq!(parse_window(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(
            FaultKind::parse_list("all").expect("all"),
            FaultKind::ALL.to_vec()
        );
        assert_eq!(
            FaultKind::parse_list("stop-mongo, kill-master,stop-mongo").expect("two"),
            vec![FaultKind::StopMongo, FaultKind::KillMaster]
        );
        for bad in ["", ",", "kill-everything", "kill-master,nap"] {
            assert!(FaultKind::parse_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_schedule_is_seeded_spaced_and_leaves_time_to_recover() {
        let kinds = FaultKind::ALL;
        let a = plan(7, &kinds, S(3), S(60), S(10));
        assert_eq!(
            a,
            plan(7, &kinds, S(3), S(60), S(10)),
            "same seed, same plan"
        );
        assert_ne!(
            a,
            plan(8, &kinds, S(3), S(60), S(10)),
            "another seed differs"
        );
        assert_eq!(a.len(), 5);
        for (k, fault) in a.iter().enumerate() {
            let slot = S(3) + S(10) * k as u32;
            assert!(fault.at >= slot + Duration::from_millis(2500), "{fault:?}");
            assert!(fault.at < slot + Duration::from_millis(7500), "{fault:?}");
            assert!(fault.at + S(5) <= S(60));
        }
        // Every kind once before any twice.
        let mut first: Vec<FaultKind> = a[..4].iter().map(|f| f.kind).collect();
        first.sort();
        assert_eq!(first, kinds.to_vec());
        assert_eq!(a[4].kind, a[0].kind);
        assert!(plan(7, &kinds, S(0), S(4), S(10)).is_empty(), "too short");
        assert!(plan(7, &[], S(0), S(100), S(10)).is_empty());
    }

    #[test]
    fn windows_are_the_longest_silence_of_the_scope() {
        let mut seen = Availability::default();
        let ms = Duration::from_millis;
        // Shard 0 answers every 10 ms except between 1.00 s and 1.50 s; shard 1 always.
        for t in (0..3000).step_by(10) {
            let silent = (1000..1500).contains(&t);
            seen.record(Scope::Shard(0), ms(t), !silent);
            seen.record(Scope::Shard(1), ms(t), true);
        }
        let mut other = Availability::default();
        other.record(Scope::Shard(0), ms(1200), false);
        seen.merge(&other);
        assert_eq!(
            seen.longest_gap(Scope::Shard(0), ms(900), ms(2000)),
            ms(500)
        );
        assert_eq!(seen.failed(Scope::Shard(0), ms(900), ms(2000)), 51);
        assert_eq!(seen.failed(Scope::Shard(0), ms(1600), ms(2000)), 0);
        assert_eq!(seen.longest_gap(Scope::Shard(1), ms(900), ms(2000)), ms(0));
        // A scope nobody used is silent the whole time.
        assert_eq!(seen.longest_gap(Scope::Gateway(3), ms(0), ms(100)), ms(100));
        // Past the record, silence too.
        assert_eq!(
            seen.longest_gap(Scope::Shard(1), ms(2900), ms(3200)),
            ms(200)
        );
    }
}
