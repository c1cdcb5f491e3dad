//! The alert rules (`deploy/prometheus/colony.rules.yml`) and the Grafana dashboard
//! (`deploy/grafana/colony.json`) name only metrics that a running gateway and a running
//! archiver export: both processes are started for real (gateway in process, archiver through
//! its `serve`), their `/metrics` fetched over HTTP, and every `colony_…` name in the two
//! files looked up. A rename in the code without the files (or the reverse) fails here, so an
//! alert or a panel cannot silently go blank.

use std::collections::BTreeSet;
use std::time::Duration;

use colony_testkit::{config_for, free_port, wait_for, MongoServer, RedisServer, TestGateway};

/// A plain HTTP/1.1 GET: the status and the body.
async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A GET with an admin token: the body of a 200 answer.
async fn http_get_with(address: &str, path: &str, token: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
}

/// The sample names an exposition can carry, from its `# TYPE` lines (a family with no label
/// set yet exports nothing at all, so the processes create their per-shard series at 0 and
/// the test drives some traffic): counters as `_total`, histograms as `_bucket`, `_sum` and
/// `_count` (and the family name), anything else as its name.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                // The family's own name too, as prose (an alert's description) names it.
                for suffix in ["", "_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Every `colony_…` metric name in `text` (recorded series are `colony:…` and are left out).
fn referenced_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("colony_") {
        let start = at + found;
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let preceded = start > 0 && (word(bytes[start - 1]) || bytes[start - 1] == b':');
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        if !preceded {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

/// The names `text` references that `exported` lacks.
fn missing(text: &str, exported: &BTreeSet<String>) -> Vec<String> {
    referenced_names(text)
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect()
}

#[test]
fn the_name_checks_can_fail() {
    let exposition = "# HELP colony_requests Requests.\n# TYPE colony_requests counter\n\
        # TYPE colony_request_duration_seconds histogram\n# TYPE colony_connections gauge\n";
    let exported = exported_names(exposition);
    assert_eq!(
        missing(
            "rate(colony_requests_total[1m]) colony_connections \
             colony_request_duration_seconds_bucket colony:requests:rate1m",
            &exported
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        missing(
            "rate(colony_requests[1m]) + colony_renamed_total + colony_connections_total",
            &exported
        ),
        vec![
            "colony_connections_total".to_string(),
            "colony_renamed_total".to_string(),
            "colony_requests".to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let redis = RedisServer::start().expect("redis");
    let mongo = MongoServer::start().expect("mongodb-wire server");
    let mut config = config_for(&[&redis]);
    config.archive.mongodb_uris = vec![mongo.uri().to_string()];
    config.archive.database = format!("colony_observability_{}", std::process::id());
    let archiver_admin = format!("127.0.0.1:{}", free_port().expect("port"));
    config.archive.admin_listen = archiver_admin.clone();
    // One configuration for both processes, as deployed: the archiver knows the tokens too.
    let config = colony_testkit::with_test_gateway(config);

    // The gateway's status (and so its console) includes the archiver's.
    let mut gateway_config = config.clone();
    gateway_config.gateway.archiver_admin = Some(archiver_admin.clone());
    let gateway = TestGateway::start(&gateway_config)
        .await
        .expect("gateway starts");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let archiver = tokio::spawn(async move {
        colony_archiver::serve(&config, async move {
            let _ = stopped.await;
        })
        .await
    });

    // Traffic, so the families labelled by operation and code have their first series: a
    // connection that says Hello, writes, reads and closes.
    let client = colony::client::Client::connect(colony::client::ClientConfig::new(
        gateway.address.to_string(),
        colony_testkit::ADMIN_TOKEN,
    ))
    .await
    .expect("connects");
    let player = colony::PlayerId::new("observed").expect("valid");
    client
        .execute(
            colony::Transaction::owner(player.clone(), colony::IdempotencyKey::new("o", 1).ok())
                .with(colony::Operation::SetField {
                    name: colony::Name::new("x").expect("valid"),
                    value: b"1".to_vec(),
                    visibility: colony::Visibility::Public,
                }),
        )
        .await
        .expect("writes");
    client
        .get_player(&player, colony::Access::Owner, None)
        .await
        .expect("reads");
    client.close().await;
    let closed = colony_testkit::wait_until(Duration::from_secs(10), || {
        gateway.gateway.metrics().connections.get() == 0
    })
    .await;
    assert!(closed, "the gateway never saw the connection close");

    let (status, gateway_metrics) = http_get(&gateway.admin_address.to_string(), "/metrics")
        .await
        .expect("the gateway's /metrics answers");
    assert_eq!(status, 200);
    // Until the archiver binds its admin port and its first pass has measured the backlog.
    let archiver_metrics = wait_for(Duration::from_secs(30), || async {
        http_get(&archiver_admin, "/metrics")
            .await
            .filter(|(status, body)| *status == 200 && body.contains("colony_archiver_backlog{"))
            .map(|(_, body)| body)
    })
    .await
    .expect("the archiver's /metrics shows a finished pass");
    // The gateway asks the archiver for its status with its admin token.
    let status = http_get_with(
        &gateway.admin_address.to_string(),
        "/admin/status",
        colony_testkit::ADMIN_TOKEN,
    )
    .await
    .expect("the gateway's status answers");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(
        status["archiver"]["backlog"][0]["shard"], "shard-0",
        "{status}"
    );
    assert!(
        status["archiver"]["last_pass_unix"].as_u64() > Some(0),
        "{status}"
    );
    let mut exported = exported_names(&gateway_metrics);
    exported.extend(exported_names(&archiver_metrics));
    assert!(exported.contains("colony_requests_total"), "{exported:?}");
    assert!(exported.contains("colony_archiver_backlog"), "{exported:?}");

    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let rules = std::fs::read_to_string(format!("{root}/prometheus/colony.rules.yml"))
        .expect("the rules file");
    let dashboard_text =
        std::fs::read_to_string(format!("{root}/grafana/colony.json")).expect("the dashboard");
    for (file, text) in [("rules", &rules), ("dashboard", &dashboard_text)] {
        let referenced = referenced_names(text);
        assert!(
            referenced.len() >= 12,
            "{file}: only {referenced:?} found; is the scan broken?"
        );
        assert_eq!(
            missing(text, &exported),
            Vec::<String>::new(),
            "{file} names metrics no process exports (exported: {exported:?})"
        );
    }

    // The dashboard is well formed: unique panel ids, every panel queries something, and
    // nothing lies outside Grafana's 24 columns.
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let x = panel["gridPos"]["x"].as_u64().expect("x");
        let w = panel["gridPos"]["w"].as_u64().expect("w");
        assert!(x + w <= 24, "panel {id} is {w} wide at {x}");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} queries nothing");
        for target in targets {
            let expr = target["expr"].as_str().expect("an expression");
            assert!(
                !referenced_names(expr).is_empty() || expr.contains("up{"),
                "{expr}"
            );
        }
    }
    assert_eq!(dashboard["uid"], "colony-overview");

    let _ = stop.send(());
    let served = tokio::time::timeout(Duration::from_secs(30), archiver)
        .await
        .expect("the archiver stops");
    assert!(
        matches!(served, Ok(Ok(()))),
        "the archiver ended badly: {served:?}"
    );
}
