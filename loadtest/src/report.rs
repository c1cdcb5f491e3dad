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
    /// p50 latency in ms.
    pub p50: f64,
    /// p99 latency in ms.
    pub p99: f64,
}

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
                    p50: ms(h.value_at_quantile(0.5)),
                    p99: ms(h.value_at_quantile(0.99)),
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
            "correctness: {} players checked, {} coins lost ({} players), {} applied twice ({} players), {} increments unknown; trades {} acknowledged, {} unknown, {} refused; total {}",
            c.players, c.lost, c.players_with_loss, c.applied_twice, c.players_with_double_applies, c.unknown_ops,
            c.transfers_acknowledged, c.transfers_unknown, c.transfers_failed,
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

    /// A self-contained HTML page with the latency-over-time chart (inline SVG).
    pub fn html(&self) -> String {
        let (w, h) = (800.0, 300.0);
        let top = self.timeline.iter().map(|p| p.p99).fold(1.0f64, f64::max);
        let n = self.timeline.len().max(2) as f64;
        let line = |f: &dyn Fn(&Point) -> f64| -> String {
            self.timeline
                .iter()
                .map(|p| {
                    let x = 40.0 + (w - 60.0) * p.second as f64 / (n - 1.0);
                    let y = h - 30.0 - (h - 50.0) * f(p) / top;
                    format!("{x:.1},{y:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "<!doctype html><meta charset=utf-8><title>Colony load test</title>\
             <h1>Colony load test</h1><pre>{table}</pre>\
             <svg width={w} height={h} style='font:12px sans-serif'>\
             <text x=40 y=15>latency per second (ms): p50 blue, p99 red; top {top:.2} ms</text>\
             <line x1=40 y1={base} x2={right} y2={base} stroke=#999 />\
             <polyline fill=none stroke=#36c stroke-width=2 points='{p50}'/>\
             <polyline fill=none stroke=#c33 stroke-width=2 points='{p99}'/>{faults}</svg>",
            table = html_escape(&self.table()),
            base = h - 30.0,
            right = w - 20.0,
            p50 = line(&|p: &Point| p.p50),
            p99 = line(&|p: &Point| p.p99),
            faults = self
                .faults
                .iter()
                .map(|f| {
                    let x = 40.0 + (w - 60.0) * f.at_s.max(0.0) / (n - 1.0);
                    format!(
                        "<line x1={x:.1} y1=20 x2={x:.1} y2={base} stroke=#e80 stroke-dasharray=4 />\
                         <text x={tx:.1} y=32 fill=#e80>{kind}</text>",
                        base = h - 30.0,
                        tx = x + 3.0,
                        kind = f.kind
                    )
                })
                .collect::<String>(),
        )
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
