//! The ops console in a real browser: headless Chromium (Debian's, driven by playwright-core
//! from `tests/browser/`) opens a running gateway's `/admin/console` with the admin token as
//! the password of HTTP Basic, sees every shard up, looks a player up, and shows a shard
//! unreachable within seconds of its master being killed. The page's screenshot is kept as a
//! test artifact (`target/test-artifacts/console.png`).

mod common;

use std::time::{Duration, Instant};

use colony::{Operation, Transaction, Visibility};
use colony_testkit::{gateway_config, RedisServer, TestGateway, ADMIN_TOKEN};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_renders_the_cluster_and_sees_a_killed_master_within_seconds() {
    let mut servers = common::servers(2);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let gw = TestGateway::start(&gateway_config(&refs))
        .await
        .expect("starts");
    let store = gw.gateway.store().clone();
    // A player on the shard that stays up, so the lookup works after the kill too.
    let player = (0..)
        .map(|i| common::pid(&format!("looked-up-{i}")))
        .find(|p| store.shard_map().shard_for_player(p).get() == 0)
        .expect("a player on shard 0");
    store
        .execute(
            Transaction::owner(player.clone(), common::key(1)).with(Operation::SetField {
                name: common::name("nick"),
                value: b"seen in the console".to_vec(),
                visibility: Visibility::Public,
            }),
        )
        .await
        .expect("creates");

    let root = env!("CARGO_MANIFEST_DIR");
    let artifacts = std::path::Path::new(root).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact directory");
    let screenshot = artifacts.join("console.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{}/admin/console", gw.admin_address);
    let mut browser = tokio::process::Command::new("node")
        .arg(format!("{root}/tests/browser/console.mjs"))
        .arg(&url)
        .arg(ADMIN_TOKEN)
        .arg(player.as_str())
        .arg("shard-1")
        .arg(&screenshot)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (bash .ci/setup installs the browser test's packages)");
    let mut lines = BufReader::new(browser.stdout.take().expect("stdout")).lines();
    assert_eq!(
        next_line(&mut lines, Duration::from_secs(60)).await,
        "LOOKUP 1"
    );
    assert_eq!(
        next_line(&mut lines, Duration::from_secs(30)).await,
        "READY"
    );
    let killed = Instant::now();
    servers[1].kill().expect("kill shard-1's master");
    let down = next_line(&mut lines, Duration::from_secs(30)).await;
    let shown_after = killed.elapsed();
    assert!(down.starts_with("DOWN "), "{down}");
    eprintln!("the console showed shard-1 unreachable {shown_after:?} after the kill");
    assert!(
        shown_after < Duration::from_secs(10),
        "took {shown_after:?} to show the dead shard"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), browser.wait())
        .await
        .expect("the browser closes")
        .expect("waits");
    assert!(status.success(), "the browser script failed: {status}");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("screenshot: {}", screenshot.display());
}

/// The browser script's next line, within `within`.
async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    within: Duration,
) -> String {
    tokio::time::timeout(within, lines.next_line())
        .await
        .expect("the browser answered in time")
        .expect("reads")
        .expect("the browser script ended early")
}
