//! The report: latency per operation (HdrHistogram), throughput, errors by code, the
//! correctness findings, latency over time, and in chaos mode the faults with their
//! unavailability windows — as a table, as JSON, and as an HTML chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::chaos::FaultReport;
use crate::scenario::Op;
use colony_testkit::ledger::Findings;

/// What one session (or the whole run, once merged) measured.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency in microseconds per operation.
    pub latency: BTreeMap<Op, Histogram<u64>>,
    /// Results per (operation, code).
    pub codes: BTreeMap<(Op, &'static str), u64>,
    /// Transactions sent (a batch counts its transactions).
    pub transactions: u64,
    /// Latency of every request per second of the run, for the chart.
    pub timeline: Vec<Histogram<u64>>,
    /// Latency per operation per second, coarse (see [`Buckets`]), for the charts.
    pub op_timeline: BTreeMap<Op, Vec<Buckets>>,
    /// Requests that did not end OK, per second.
    pub failed_timeline: Vec<u64>,
}

/// A coarse latency histogram for one operation's second: four buckets per doubling from
/// 1 µs to about an hour (128 counters, half a kilobyte), so every session can keep one per
/// operation per second. Quantiles are a bucket's upper bound: within 19% — enough for a
/// chart; the tables use the exact HdrHistograms.
#[derive(Debug, Clone)]
pub struct Buckets(Box<[u32; 128]>);

impl Default for Buckets {
    fn default() -> Self {
        Buckets(Box::new([0; 128]))
    }
}

impl Buckets {
    fn index(micros: u64) -> usize {
        let micros = micros.max(1) as f64;
        ((micros.log2() * 4.0).floor() as usize).min(127)
    }

    /// Counts one request of `micros`.
    pub fn record(&mut self, micros: u64) {
        let i = Buckets::index(micros);
        self.0[i] = self.0[i].saturating_add(1);
    }

    /// Adds another second's counts.
    pub fn add(&mut self, other: &Buckets) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Requests counted.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|n| u64::from(*n)).sum()
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `q` quantile in milliseconds (the upper bound of its bucket); `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.len();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += u64::from(*n);
            if seen >= rank {
                return Some(2f64.powf((i + 1) as f64 / 4.0) / 1000.0);
            }
        }
        None
    }
}

fn histogram() -> Histogram<u64> {
    // Three significant digits, up to an hour in microseconds: constant, valid bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency: Op::ALL.iter().map(|op| (*op, histogram())).collect(),
            codes: BTreeMap::new(),
            transactions: 0,
            timeline: Vec::new(),
            op_timeline: BTreeMap::new(),
            failed_timeline: Vec::new(),
        }
    }
}

impl Stats {
    /// Records one request of `op` that took `elapsed`, `second` seconds into the run.
    pub fn record(&mut self, op: Op, elapsed: Duration, second: usize) {
        let micros = (elapsed.as_micros() as u64).max(1);
        if let Some(h) = self.latency.get_mut(&op) {
            let _ = h.record(micros);
        }
        while self.timeline.len() <= second {
            self.timeline.push(histogram());
        }
        let _ = self.timeline[second].record(micros);
        let seconds = self.op_timeline.entry(op).or_default();
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Buckets::default);
        }
        seconds[second].record(micros);
    }

    /// Counts a request that did not end OK, `second` seconds into the run.
    pub fn failed_at(&mut self, second: usize) {
        if self.failed_timeline.len() <= second {
            self.failed_timeline.resize(second + 1, 0);
        }
        self.failed_timeline[second] += 1;
    }

    /// Counts a result code of `op`.
    pub fn code(&mut self, op: Op, code: &'static str) {
        *self.codes.entry((op, code)).or_default() += 1;
    }

    /// Adds another session's stats.
    pub fn merge(&mut self, other: &Stats) {
        for (op, h) in &other.latency {
            if let Some(mine) = self.latency.get_mut(op) {
                let _ = mine.add(h);
            }
        }
        for (key, n) in &other.codes {
            *self.codes.entry(*key).or_default() += n;
        }
        self.transactions += other.transactions;
        while self.timeline.len() < other.timeline.len() {
            self.timeline.push(histogram());
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            let _ = mine.add(theirs);
        }
        for (op, theirs) in &other.op_timeline {
            let mine = self.op_timeline.entry(*op).or_default();
            if mine.len() < theirs.len() {
                mine.resize_with(theirs.len(), Buckets::default);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                m.add(t);
            }
        }
        if self.failed_timeline.len() < other.failed_timeline.len() {
            self.failed_timeline.resize(other.failed_timeline.len(), 0);
        }
        for (m, t) in self.failed_timeline.iter_mut().zip(&other.failed_timeline) {
            *m += t;
        }
    }
}

/// Latency figures of one operation, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// The operation.
    pub op: &'static str,
    /// Requests measured.
    pub count: u64,
    /// Requests that did not end OK (by code).
    pub errors: BTreeMap<&'static str, u64>,
    /// Percentiles in ms.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// One second of the run, for the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Seconds since measuring began.
    pub second: usize,
    /// Requests finished in that second.
    pub requests: u64,
    /// Of those, the ones that did not end OK.
    pub errors: u64,
    /// p50 latency in ms.
    pub p50: f64,
    /// p99 latency in ms.
    pub p99: f64,
}

/// One operation's latency per second.
#[derive(Debug, Clone, Serialize)]
pub struct OpTimeline {
    /// The operation.
    pub op: &'static str,
    /// Median per second, ms.
    pub p50: Vec<Option<f64>>,
    /// 99th percentile per second, ms.
    pub p99: Vec<Option<f64>>,
}

/// One operation's latency distribution.
#[derive(Debug, Clone, Serialize)]
pub struct OpDistribution {
    /// The operation.
    pub op: &'static str,
    /// (percentile, latency in ms), from 50% to the maximum.
    pub points: Vec<(f64, f64)>,
}

/// Percentiles of the distribution chart.
const DISTRIBUTION: [f64; 11] = [
    50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999,
];

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Measured seconds.
    pub seconds: f64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Transactions per second.
    pub transactions_per_sec: f64,
    /// Per operation.
    pub ops: Vec<OpReport>,
    /// Correctness.
    pub correctness: Findings,
    /// Latency over time.
    pub timeline: Vec<Point>,
    /// Latency over time per operation (p50 and p99 per second; `None` in a second without
    /// requests of it).
    pub op_timeline: Vec<OpTimeline>,
    /// The latency distribution per operation: (percentile, ms) from the exact histograms.
    pub distribution: Vec<OpDistribution>,
    /// Chaos mode: the faults injected, in order, with their windows.
    pub faults: Vec<FaultReport>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Report {
    /// Builds the report from merged stats.
    pub fn new(
        stats: &Stats,
        measured: Duration,
        correctness: Findings,
        faults: Vec<FaultReport>,
    ) -> Report {
        let seconds = measured.as_secs_f64().max(1e-9);
        let ops: Vec<OpReport> = Op::ALL
            .iter()
            .filter(|op| **op != Op::Idle)
            .map(|op| {
                let h = &stats.latency[op];
                let errors = stats
                    .codes
                    .iter()
                    .filter(|((o, code), _)| o == op && *code != "OK")
                    .map(|((_, code), n)| (*code, *n))
                    .collect();
                OpReport {
                    op: op.name(),
                    count: h.len(),
                    errors,
                    p50: ms(h.value_at_quantile(0.5)),
                    p90: ms(h.value_at_quantile(0.9)),
                    p99: ms(h.value_at_quantile(0.99)),
                    p999: ms(h.value_at_quantile(0.999)),
                    max: ms(h.max()),
                }
            })
            .collect();
        let requests: u64 = ops.iter().map(|o| o.count).sum();
        Report {
            seconds,
            requests_per_sec: requests as f64 / seconds,
            transactions_per_sec: stats.transactions as f64 / seconds,
            ops,
            correctness,
            timeline: stats
                .timeline
                .iter()
                .enumerate()
                .map(|(second, h)| Point {
                    second,
                    requests: h.len(),
                    errors: stats.failed_timeline.get(second).copied().unwrap_or(0),
                    p50: ms(h.value_at_quantile(0.5)),
                    p99: ms(h.value_at_quantile(0.99)),
                })
                .collect(),
            op_timeline: Op::ALL
                .iter()
                .filter_map(|op| {
                    let seconds = stats.op_timeline.get(op)?;
                    let at = |q: f64| -> Vec<Option<f64>> {
                        (0..stats.timeline.len())
                            .map(|s| seconds.get(s).and_then(|b| b.quantile_ms(q)))
                            .collect()
                    };
                    Some(OpTimeline {
                        op: op.name(),
                        p50: at(0.5),
                        p99: at(0.99),
                    })
                })
                .collect(),
            distribution: Op::ALL
                .iter()
                .filter(|op| **op != Op::Idle && !stats.latency[op].is_empty())
                .map(|op| {
                    let h = &stats.latency[op];
                    OpDistribution {
                        op: op.name(),
                        points: DISTRIBUTION
                            .iter()
                            .map(|p| (*p, ms(h.value_at_quantile(p / 100.0))))
                            .collect(),
                    }
                })
                .collect(),
            faults,
        }
    }

    /// Whether some fault could not be injected or the cluster did not recover from it.
    pub fn chaos_failed(&self) -> bool {
        self.faults.iter().any(|f| f.error.is_some())
    }

    /// The final table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}   errors",
            "op", "requests", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "req/s"
        );
        for o in &self.ops {
            let errors: Vec<String> = o.errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
            let _ = writeln!(
                out,
                "{:<9} {:>9} {:>8.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.0}   {}",
                o.op,
                o.count,
                o.p50,
                o.p90,
                o.p99,
                o.p999,
                o.max,
                o.count as f64 / self.seconds,
                if errors.is_empty() {
                    "-".to_string()
                } else {
                    errors.join(" ")
                }
            );
        }
        let c = &self.correctness;
        let _ = writeln!(
            out,
            "\n{:.0} requests/s, {:.0} transactions/s over {:.1} s",
            self.requests_per_sec, self.transactions_per_sec, self.seconds
        );
        let _ = writeln!(
            out,
            "correctness: {} players checked, {} coins lost ({} players), {} applied twice ({} players), {} increments unknown; trades {} acknowledged, {} unknown, {} refused ({} first unknown, settled by sending them again); total {}",
            c.players, c.lost, c.players_with_loss, c.applied_twice, c.players_with_double_applies, c.unknown_ops,
            c.transfers_acknowledged, c.transfers_unknown, c.transfers_failed, c.transfers_settled,
            if c.conservation_gap == 0 { "conserved".to_string() } else { format!("off by {}", c.conservation_gap) }
        );
        if c.unreadable > 0 {
            let _ = writeln!(
                out,
                "NOT CHECKED: {} players could not be read back through any gateway",
                c.unreadable
            );
        }
        if !self.faults.is_empty() {
            let _ = writeln!(
                out,
                "\nchaos: {} faults (unavailable = longest time the part hit answered nothing)",
                self.faults.len()
            );
            let _ = writeln!(
                out,
                "{:>7}  {:<13} {:<32} {:>14} {:>7} {:>12}  outcome",
                "at s", "fault", "target", "unavailable ms", "failed", "recovered ms"
            );
            for f in &self.faults {
                let _ = writeln!(
                    out,
                    "{:>7.1}  {:<13} {:<32} {:>14.0} {:>7} {:>12}  {}",
                    f.at_s,
                    f.kind,
                    f.target,
                    f.unavailable_ms,
                    f.failed,
                    f.recovered_after_ms
                        .map_or_else(|| "-".to_string(), |r| format!("{r:.0}")),
                    match &f.error {
                        Some(e) => format!("FAILED: {e}"),
                        None => f.outcome.clone(),
                    }
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_buckets_give_quantiles_within_a_fifth() {
        let mut b = Buckets::default();
        assert_eq!(b.quantile_ms(0.5), None);
        for ms in 1..=1000u64 {
            b.record(ms * 1000);
        }
        let mut other = Buckets::default();
        other.record(3_600_000_000_000); // far past the last bucket: counted there
        b.add(&other);
        assert_eq!(b.len(), 1001);
        for (q, exact) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = b.quantile_ms(q).expect("a value");
            assert!(got >= exact && got <= exact * 1.2, "{q}: {got} for {exact}");
        }
    }

    #[test]
    fn the_report_has_a_line_per_operation_and_the_failures_per_second() {
        let mut stats = Stats::default();
        stats.record(Op::Login, Duration::from_millis(3), 0);
        stats.record(Op::Login, Duration::from_millis(5), 2);
        stats.record(Op::Trade, Duration::from_millis(20), 1);
        stats.failed_at(1);
        let report = Report::new(
            &stats,
            Duration::from_secs(3),
            Findings::default(),
            Vec::new(),
        );
        assert_eq!(report.timeline.len(), 3);
        assert_eq!(report.timeline[1].errors, 1);
        let login = report
            .op_timeline
            .iter()
            .find(|o| o.op == "login")
            .expect("login");
        assert!(login.p99[0].is_some() && login.p99[1].is_none() && login.p99[2].is_some());
        assert_eq!(report.distribution.len(), 2);
    }
}
