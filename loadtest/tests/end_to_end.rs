//! A short load test against a real gateway (in process) and real redis-servers: traffic of
//! every kind flows, the report has figures, and the checker finds nothing lost.

use std::time::Duration;

use colony_loadtest::runner;
use colony_loadtest::scenario::{Mix, Scenario};
use colony_testkit::{gateway_config, RedisServer, TestGateway, GAME_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_reports_figures_and_loses_nothing() {
    let servers = [
        RedisServer::start().expect("redis"),
        RedisServer::start().expect("redis"),
    ];
    let gateway = TestGateway::start(&gateway_config(&[&servers[0], &servers[1]]))
        .await
        .expect("gateway");
    let scenario = Scenario {
        gateways: vec![gateway.address.to_string()],
        token: GAME_TOKEN.into(),
        players: 64,
        cold_players: 32,
        prefix: "e2e".into(),
        sessions: 8,
        batch: 4,
        think: Duration::ZERO,
        mix: Mix::parse("login=5,friends=30,currency=35,write=15,trade=10,idle=5,return=5")
            .expect("valid mix"),
        rate: None,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(200),
        seed: 42,
        chaos: None,
        windows: None,
    };
    let report = runner::run(scenario, |_| {}).await.expect("runs");
    for op in &report.ops {
        assert!(op.count > 0, "no {} requests: {report:?}", op.op);
        // A trade whose giver has too few coins is refused (OUT_OF_BOUNDS): that is the game,
        // not a fault.
        let unexpected: Vec<_> = op
            .errors
            .iter()
            .filter(|(code, _)| !(op.op == "trade" && **code == "OUT_OF_BOUNDS"))
            .collect();
        assert!(unexpected.is_empty(), "{} errors: {:?}", op.op, op.errors);
        assert!(op.p50 > 0.0 && op.p50 <= op.p99 && op.p99 <= op.max);
    }
    assert!(report.transactions_per_sec > 0.0);
    assert!(report.correctness.players > 0);
    assert_eq!(report.correctness.lost, 0);
    assert_eq!(report.correctness.applied_twice, 0);
    assert_eq!(report.correctness.conservation_gap, 0);
    assert!(
        report.correctness.transfers_acknowledged > 0,
        "{:?}",
        report.correctness
    );
    assert_eq!(report.correctness.unreadable, 0);
    assert!(!report.timeline.is_empty());
    assert!(report.faults.is_empty());
    let json = serde_json::to_string(&report).expect("serializes");
    assert!(json.contains("\"correctness\""));
    assert!(colony_loadtest::charts::page(&report).contains("<svg"));
    gateway.shutdown().await;
}
