//! The report's HTML page: a summary on top, then inline SVG charts — throughput and failures
//! per second, latency percentiles per second per operation, the latency distribution per
//! operation — with labelled axes and units and fault windows shaded, then the tables. One
//! offline file: no script, no style sheet or font from elsewhere. Elements carry `data-*`
//! attributes that the browser test reads.

use std::fmt::Write as _;

use crate::report::Report;

/// Colours of the operations' lines, in report order.
const PALETTE: [&str; 8] = [
    "#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#1b7c83", "#57606a",
];

/// One line of a chart.
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// Stroke colour.
    pub color: &'static str,
    /// Dashed (a second statistic of the same operation).
    pub dashed: bool,
    /// Points, in data units; `None` breaks the line.
    pub points: Vec<Option<(f64, f64)>>,
}

/// A chart: title, axes with units, lines, and shaded windows (start, end, label).
pub struct Chart<'a> {
    /// `data-chart` name.
    pub id: &'a str,
    /// Title above the chart.
    pub title: &'a str,
    /// The x axis's label, with its unit.
    pub x_label: &'a str,
    /// The y axis's label, with its unit.
    pub y_label: &'a str,
    /// Ticks of the x axis: value and label.
    pub x_ticks: Vec<(f64, String)>,
    /// The x range.
    pub x_range: (f64, f64),
    /// Logarithmic y axis (latencies span orders of magnitude).
    pub y_log: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Shaded windows: from, to (x units), label.
    pub shaded: Vec<(f64, f64, String)>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

impl Chart<'_> {
    /// The chart as an SVG element.
    pub fn svg(&self) -> String {
        let values: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().flatten().map(|(_, y)| *y))
            .filter(|y| y.is_finite())
            .collect();
        let (mut low, mut high) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), y| (l.min(*y), h.max(*y)));
        if values.is_empty() {
            (low, high) = (0.0, 1.0);
        }
        let y_ticks: Vec<f64> = if self.y_log {
            low = 10f64.powf(low.max(1e-3).log10().floor());
            high = 10f64.powf(high.max(low * 10.0).log10().ceil());
            let mut ticks = Vec::new();
            let mut t = low;
            while t <= high * 1.0001 {
                ticks.push(t);
                t *= 10.0;
            }
            ticks
        } else {
            low = 0.0;
            high = nice_ceiling(high.max(1.0));
            (0..=4).map(|i| high * f64::from(i) / 4.0).collect()
        };
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let (x0, x1) = self.x_range;
        let x = |v: f64| LEFT + plot_w * (v - x0) / (x1 - x0).max(1e-9);
        let y = |v: f64| {
            let f = if self.y_log {
                (v.max(low).log10() - low.log10()) / (high.log10() - low.log10()).max(1e-9)
            } else {
                (v - low) / (high - low).max(1e-9)
            };
            TOP + plot_h * (1.0 - f.clamp(0.0, 1.0))
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<figure data-chart='{id}'><figcaption>{title}</figcaption>\
             <svg viewBox='0 0 {WIDTH} {HEIGHT}' width='{WIDTH}' height='{HEIGHT}' role='img' aria-label='{title}'>",
            id = self.id,
            title = escape(self.title),
        );
        for (from, to, label) in &self.shaded {
            let (a, b) = (x(from.max(x0)), x(to.min(x1)));
            let _ = write!(
                out,
                "<rect data-fault='{label}' x='{a:.1}' y='{TOP}' width='{w:.1}' height='{plot_h}' fill='#fb8500' fill-opacity='0.15'>\
                 <title>{label}</title></rect>\
                 <text x='{a:.1}' y='{ty}' font-size='10' fill='#b35c00'>{label}</text>",
                w = (b - a).max(2.0),
                ty = TOP - 4.0,
                label = escape(label),
            );
        }
        for t in &y_ticks {
            let _ = write!(
                out,
                "<line x1='{LEFT}' x2='{r}' y1='{yy:.1}' y2='{yy:.1}' stroke='#d0d7de'/>\
                 <text x='{tx}' y='{ty:.1}' font-size='11' text-anchor='end'>{label}</text>",
                r = WIDTH - RIGHT,
                yy = y(*t),
                tx = LEFT - 6.0,
                ty = y(*t) + 4.0,
                label = number(*t),
            );
        }
        for (v, label) in &self.x_ticks {
            let _ = write!(
                out,
                "<line x1='{xx:.1}' x2='{xx:.1}' y1='{b}' y2='{b2}' stroke='#57606a'/>\
                 <text x='{xx:.1}' y='{ty}' font-size='11' text-anchor='middle'>{label}</text>",
                xx = x(*v),
                b = HEIGHT - BOTTOM,
                b2 = HEIGHT - BOTTOM + 5.0,
                ty = HEIGHT - BOTTOM + 18.0,
                label = escape(label),
            );
        }
        let _ = write!(
            out,
            "<line x1='{LEFT}' x2='{r}' y1='{b}' y2='{b}' stroke='#57606a'/>\
             <line x1='{LEFT}' x2='{LEFT}' y1='{TOP}' y2='{b}' stroke='#57606a'/>\
             <text data-axis='x' x='{cx}' y='{lx}' font-size='12' text-anchor='middle'>{xl}</text>\
             <text data-axis='y' transform='translate(16 {cy}) rotate(-90)' font-size='12' text-anchor='middle'>{yl}</text>",
            r = WIDTH - RIGHT,
            b = HEIGHT - BOTTOM,
            cx = LEFT + plot_w / 2.0,
            lx = HEIGHT - 10.0,
            cy = TOP + plot_h / 2.0,
            xl = escape(self.x_label),
            yl = escape(self.y_label),
        );
        for (i, s) in self.series.iter().enumerate() {
            let mut path = String::new();
            let mut pen_down = false;
            for point in &s.points {
                match point {
                    Some((px, py)) if py.is_finite() => {
                        let _ = write!(
                            path,
                            "{}{:.1},{:.1} ",
                            if pen_down { "L" } else { "M" },
                            x(*px),
                            y(*py)
                        );
                        pen_down = true;
                    }
                    _ => pen_down = false,
                }
            }
            let _ = write!(
                out,
                "<path data-series='{name}' d='{path}' fill='none' stroke='{c}' stroke-width='{w}'{dash}/>\
                 <line x1='{lx}' x2='{lx2}' y1='{ly:.1}' y2='{ly:.1}' stroke='{c}' stroke-width='2'{dash}/>\
                 <text x='{tx}' y='{ty:.1}' font-size='11'>{name}</text>",
                name = escape(&s.name),
                c = s.color,
                w = if s.dashed { 1.2 } else { 2.0 },
                dash = if s.dashed { " stroke-dasharray='4 3'" } else { "" },
                lx = WIDTH - RIGHT + 12.0,
                lx2 = WIDTH - RIGHT + 32.0,
                ly = TOP + 8.0 + 16.0 * i as f64,
                tx = WIDTH - RIGHT + 38.0,
                ty = TOP + 12.0 + 16.0 * i as f64,
            );
        }
        out.push_str("</svg></figure>");
        out
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * power)
}

/// A tick label: no trailing zeros, thousands as k.
fn number(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{}k", (v / 1000.0).round())
    } else if v >= 1.0 || v == 0.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v}")
    }
}

/// Escapes text for HTML and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}

/// Ticks every `step` seconds over `seconds`.
fn second_ticks(seconds: usize) -> Vec<(f64, String)> {
    let step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600]
        .into_iter()
        .find(|s| seconds / s <= 8)
        .unwrap_or(1200);
    (0..=seconds)
        .step_by(step)
        .map(|s| (s as f64, s.to_string()))
        .collect()
}

/// The report as one offline HTML page.
pub fn page(report: &Report) -> String {
    let seconds = report.timeline.len().max(2);
    let shaded: Vec<(f64, f64, String)> = report
        .faults
        .iter()
        .map(|f| {
            let lasted = f
                .recovered_after_ms
                .unwrap_or(f.unavailable_ms)
                .max(f.unavailable_ms);
            (
                f.at_s,
                f.at_s + lasted / 1000.0,
                format!("{} {}", f.kind, f.target),
            )
        })
        .collect();
    let ticks = second_ticks(seconds - 1);
    let x_range = (0.0, (seconds - 1) as f64);
    let throughput = Chart {
        id: "throughput",
        title: "Throughput and failures per second",
        x_label: "time since measuring began (s)",
        y_label: "requests (per second)",
        x_ticks: ticks.clone(),
        x_range,
        y_log: false,
        series: vec![
            Series {
                name: "requests".into(),
                color: PALETTE[0],
                dashed: false,
                points: report
                    .timeline
                    .iter()
                    .map(|p| Some((p.second as f64, p.requests as f64)))
                    .collect(),
            },
            Series {
                name: "failed (not OK)".into(),
                color: PALETTE[1],
                dashed: false,
                points: report
                    .timeline
                    .iter()
                    .map(|p| Some((p.second as f64, p.errors as f64)))
                    .collect(),
            },
        ],
        shaded: shaded.clone(),
    };
    let mut over_time = Vec::new();
    for (i, op) in report.op_timeline.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let line = |values: &[Option<f64>]| {
            values
                .iter()
                .enumerate()
                .map(|(s, v)| v.map(|v| (s as f64, v)))
                .collect()
        };
        over_time.push(Series {
            name: format!("{} p99", op.op),
            color,
            dashed: false,
            points: line(&op.p99),
        });
        over_time.push(Series {
            name: format!("{} p50", op.op),
            color,
            dashed: true,
            points: line(&op.p50),
        });
    }
    let latency = Chart {
        id: "latency",
        title: "Latency per second, by operation (p99 solid, p50 dashed)",
        x_label: "time since measuring began (s)",
        y_label: "latency (ms, log scale)",
        x_ticks: ticks,
        x_range,
        y_log: true,
        series: over_time,
        shaded,
    };
    // The distribution: x is the number of nines, so 50%, 90%, 99%, 99.9% are evenly spaced.
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-6).log10();
    let distribution = Chart {
        id: "distribution",
        title: "Latency distribution, by operation",
        x_label: "percentile",
        y_label: "latency (ms, log scale)",
        x_ticks: [50.0, 90.0, 99.0, 99.9, 99.99, 99.999]
            .iter()
            .map(|p| (nines(*p), format!("{p}%")))
            .collect(),
        x_range: (nines(50.0) - 0.1, nines(99.999) + 0.1),
        y_log: true,
        series: report
            .distribution
            .iter()
            .enumerate()
            .map(|(i, d)| Series {
                name: d.op.to_string(),
                color: PALETTE[i % PALETTE.len()],
                dashed: false,
                points: d
                    .points
                    .iter()
                    .map(|(p, ms)| Some((nines(*p), *ms)))
                    .collect(),
            })
            .collect(),
        shaded: Vec::new(),
    };
    let c = &report.correctness;
    let verdict_ok = c.lost == 0
        && c.applied_twice == 0
        && c.conservation_gap == 0
        && c.unreadable == 0
        && !report.chaos_failed();
    let verdict = if verdict_ok {
        "nothing acknowledged was lost or applied twice; the total is conserved".to_string()
    } else {
        format!(
            "{} coins lost, {} applied twice, total off by {}, {} unreadable{}",
            c.lost,
            c.applied_twice,
            c.conservation_gap,
            c.unreadable,
            if report.chaos_failed() {
                ", a fault failed"
            } else {
                ""
            }
        )
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang='en'><meta charset='utf-8'><title>Colony load test</title>\
         <style>body{{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1f2328}}\
         .cards{{display:flex;gap:12px;flex-wrap:wrap}}.card{{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px}}\
         .card b{{display:block;font-size:22px}}.ok{{color:#1a7f37}}.bad{{color:#cf222e}}\
         figure{{margin:24px 0}}figcaption{{font-weight:600;margin-bottom:4px}}pre{{background:#f6f8fa;padding:12px;overflow:auto}}</style>\
         <h1>Colony load test</h1>\
         <section data-summary class='cards'>\
         <div class='card'>requests per second<b>{rps:.0}</b></div>\
         <div class='card'>transactions per second<b>{tps:.0}</b></div>\
         <div class='card'>measured<b>{secs:.1} s</b></div>\
         <div class='card'>faults injected<b>{faults}</b></div>\
         <div class='card'>trades acknowledged<b>{trades}</b></div>\
         <div class='card' data-verdict='{vclass}'>correctness<b class='{vclass}'>{verdict}</b></div>\
         </section>",
        rps = report.requests_per_sec,
        tps = report.transactions_per_sec,
        secs = report.seconds,
        faults = report.faults.len(),
        trades = c.transfers_acknowledged,
        vclass = if verdict_ok { "ok" } else { "bad" },
        verdict = escape(&verdict),
    );
    out.push_str(&throughput.svg());
    out.push_str(&latency.svg());
    out.push_str(&distribution.svg());
    let _ = write!(
        out,
        "<h2>Tables</h2><pre>{}</pre></html>",
        escape(&report.table())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Stats;
    use crate::scenario::Op;
    use std::time::Duration;

    #[test]
    fn the_page_has_every_chart_and_a_series_per_operation() {
        let mut stats = Stats::default();
        stats.record(Op::Login, Duration::from_millis(3), 0);
        stats.record(Op::Trade, Duration::from_millis(20), 1);
        let report = Report::new(
            &stats,
            Duration::from_secs(3),
            colony_testkit::ledger::Findings::default(),
            Vec::new(),
        );
        let html = page(&report);
        for chart in ["throughput", "latency", "distribution"] {
            assert!(html.contains(&format!("data-chart='{chart}'")), "{chart}");
        }
        assert!(html.contains("data-series='trade p99'"));
    }

    #[test]
    fn ticks_and_numbers_read_well() {
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(number(20_000.0), "20k");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(second_ticks(60).len(), 7);
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }

    #[test]
    fn a_chart_has_its_axes_lines_legend_and_windows() {
        let chart = Chart {
            id: "t",
            title: "title",
            x_label: "time (s)",
            y_label: "latency (ms)",
            x_ticks: vec![(0.0, "0".into()), (10.0, "10".into())],
            x_range: (0.0, 10.0),
            y_log: true,
            series: vec![Series {
                name: "login p99".into(),
                color: PALETTE[0],
                dashed: false,
                points: vec![Some((0.0, 1.0)), None, Some((2.0, 300.0)), Some((3.0, 2.0))],
            }],
            shaded: vec![(4.0, 6.0, "kill-master shard-0".into())],
        };
        let svg = chart.svg();
        assert!(svg.contains("data-chart='t'"));
        assert!(svg.contains("time (s)") && svg.contains("latency (ms)"));
        assert!(svg.contains("data-series='login p99'"));
        // The gap breaks the line into two pieces.
        let path = svg
            .split("data-series='login p99' d='")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .expect("the path");
        assert_eq!(path.matches('M').count(), 2, "{path}");
        assert!(svg.contains("data-fault='kill-master shard-0'"));
    }
}
