//! The load-test report in a real browser: a report built from measured stats (requests of
//! every operation over twenty seconds, failures, two faults) is written as report.html and
//! opened in headless Chromium (Debian's, driven by playwright-core from `tests/browser/`),
//! which must render the three charts with a line per operation, labelled axes and the fault
//! windows shaded, the summary and verdict, and fetch nothing from elsewhere. The screenshot
//! is kept in `target/test-artifacts/report.png`.

use std::time::Duration;

use colony_loadtest::chaos::FaultReport;
use colony_loadtest::report::{Report, Stats};
use colony_loadtest::scenario::Op;
use colony_testkit::ledger::Findings;

#[test]
fn the_report_renders_its_charts_in_chromium() {
    let mut stats = Stats::default();
    let ops = [
        Op::Login,
        Op::Friends,
        Op::Currency,
        Op::Write,
        Op::Trade,
        Op::Return,
    ];
    for second in 0..20usize {
        for (i, op) in ops.iter().enumerate() {
            for n in 0..50u64 {
                // Slower during the fault windows (seconds 5-7 and 12-13).
                let slow = if (5..8).contains(&second) || (12..14).contains(&second) {
                    40
                } else {
                    1
                };
                let micros = (500 + 300 * i as u64 + 37 * n) * slow;
                stats.record(*op, Duration::from_micros(micros), second);
            }
        }
        if (5..8).contains(&second) {
            stats.failed_at(second);
        }
    }
    let fault = |kind: &str, at_s: f64, ms: f64| FaultReport {
        kind: kind.to_string(),
        target: "shard-0 master 127.0.0.1:7000".into(),
        at_s,
        outcome: "SIGKILL".into(),
        recovered_after_ms: Some(ms),
        unavailable_ms: ms,
        failed: 0,
        error: None,
    };
    let report = Report::new(
        &stats,
        Duration::from_secs(20),
        Findings::default(),
        vec![
            fault("kill-master", 5.0, 3000.0),
            fault("pause-master", 12.0, 2000.0),
        ],
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let artifacts = std::path::Path::new(root).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact directory");
    let html = artifacts.join("report.html");
    std::fs::write(&html, colony_loadtest::charts::page(&report)).expect("writes the report");
    let screenshot = artifacts.join("report.png");
    let out = std::process::Command::new("node")
        .arg(format!("{root}/tests/browser/report.mjs"))
        .arg(&html)
        .arg(&screenshot)
        .output()
        .expect("node runs (bash .ci/setup installs the browser test's packages)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the page's findings as JSON");
    eprintln!("{seen}");
    let charts = &seen["charts"];
    for (chart, lines) in [("throughput", 2), ("latency", 12), ("distribution", 6)] {
        assert_eq!(charts[chart]["rendered"], true, "{chart}: {seen}");
        let series = charts[chart]["series"].as_array().expect("series");
        assert_eq!(series.len(), lines, "{chart}: {seen}");
        assert!(charts[chart]["xAxis"]
            .as_str()
            .is_some_and(|a| !a.is_empty()));
        let y = charts[chart]["yAxis"].as_str().unwrap_or_default();
        assert!(
            y.contains('(') && y.contains(')'),
            "{chart}: the y axis names its unit: {y}"
        );
    }
    for op in ["login", "friends", "currency", "write", "trade", "return"] {
        let named = charts["latency"]["series"]
            .as_array()
            .expect("series")
            .iter()
            .any(|s| s == &serde_json::json!(format!("{op} p99")));
        assert!(named, "{op}: {seen}");
    }
    assert_eq!(charts["throughput"]["faults"], 2);
    assert_eq!(charts["latency"]["faults"], 2);
    assert_eq!(seen["verdict"], "ok");
    assert_eq!(seen["summary"], 6);
    assert_eq!(
        seen["external"], 0,
        "the report fetched something from elsewhere"
    );
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"));
    eprintln!("screenshot: {}", screenshot.display());
}
