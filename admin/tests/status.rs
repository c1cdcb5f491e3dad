//! `colony-admin status` on a real Redis Cluster: masters, replicas, slots and live players
//! per master, a slot move left half done shown from both ends, and the command line's
//! refusals (no `[cluster]`, no seed answering) with one clear line and a failing exit.

use std::process::Command;

use colony::{IdempotencyKey, Name, Operation, PlayerId, Store, Transaction, Visibility};
use colony_testkit::{Profile, RedisCluster};

fn gold() -> Operation {
    Operation::IncrementCounter {
        name: Name::new("gold").expect("valid"),
        delta: 1,
        min: None,
        max: None,
        visibility: Visibility::Private,
    }
}

static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs the binary with `args` on a configuration file holding `toml`.
fn admin(toml: &str, args: &[&str]) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!(
        "colony-admin-test-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a directory");
    let file = dir.join("colony.toml");
    std::fs::write(&file, toml).expect("writes");
    let output = Command::new(env!("CARGO_BIN_EXE_colony-admin"))
        .arg("--config")
        .arg(&file)
        .args(args)
        .output()
        .expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

#[tokio::test]
async fn status_shows_masters_players_and_a_half_done_move() {
    let cluster = RedisCluster::start(3, 1, Profile::Plain, &[]).expect("cluster starts");
    let config = cluster.config();
    let store = Store::connect(&config).await.expect("store");
    let players: Vec<PlayerId> = (0..40)
        .map(|i| PlayerId::new(format!("st-{i}")).expect("valid"))
        .collect();
    for player in &players {
        let txn = Transaction::owner(player.clone(), IdempotencyKey::new("t", 1).ok()).with(gold());
        store.execute(txn).await.expect("creates");
    }
    let cluster_config = config.cluster.clone().expect("a [cluster]");
    let status = colony_admin::status(&cluster_config).await.expect("status");
    assert_eq!(status.shards.len(), 3, "{status:?}");
    assert_eq!(
        status.shards.iter().map(|s| s.slot_count).sum::<usize>(),
        16384
    );
    let map = store.shard_map();
    for (index, shard) in map.indices().zip(&status.shards) {
        let expected = players
            .iter()
            .filter(|p| map.shard_for_player(p) == index)
            .count() as u64;
        assert_eq!(shard.players, Some(expected), "{shard:?}");
        assert_eq!(shard.replicas.len(), 1, "{shard:?}");
        assert!(shard.master.is_some(), "{shard:?}");
    }
    assert!(status.epoch >= 3, "{status:?}");
    assert!(status.moves.is_empty(), "{status:?}");

    // A slot left half moved (as a killed tool would leave it) shows from both ends.
    let slot = colony::keys::player_slot(&players[0]).get();
    let from = cluster.owner_of(slot, 0).expect("owner");
    let to = cluster
        .master_nodes()
        .into_iter()
        .find(|m| m.port() != from.port())
        .expect("another master");
    cluster.start_move(slot, to).expect("the move starts");
    let status = colony_admin::status(&cluster_config).await.expect("status");
    let mut states: Vec<(u16, &str, String)> = status
        .moves
        .iter()
        .map(|m| (m.slot, m.state, m.node.clone()))
        .collect();
    states.sort();
    assert_eq!(
        states,
        vec![
            (slot, "importing", to.address()),
            (slot, "migrating", from.address())
        ],
        "{status:?}"
    );
    assert!(status
        .render()
        .contains(&format!("slot {slot} is migrating")));
    cluster.finish_move(slot, to).expect("the move ends");
    let status = colony_admin::status(&cluster_config).await.expect("status");
    assert!(status.moves.is_empty(), "{status:?}");

    // The command line: JSON for scripts, with the same figures.
    let toml = format!(
        "[cluster]\nseeds = [\"{}\"]\n",
        cluster.nodes()[0].address()
    );
    let output = admin(&toml, &["--json", "status"]);
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["shards"].as_array().map(Vec::len), Some(3), "{json}");
    let total: u64 = json["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter_map(|s| s["players"].as_u64())
        .sum();
    assert_eq!(total, players.len() as u64, "{json}");
}

#[test]
fn the_command_line_refuses_what_it_cannot_operate_with_one_line() {
    let fixed = admin(
        "[[shards]]\nname = \"s0\"\nmaster = \"127.0.0.1:1\"\n",
        &["status"],
    );
    assert!(!fixed.status.success());
    let stderr = String::from_utf8_lossy(&fixed.stderr);
    assert!(stderr.contains("names no [cluster]"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let unreachable = admin("[cluster]\nseeds = [\"127.0.0.1:1\"]\n", &["status"]);
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        stderr.contains("no seed of the cluster answered"),
        "{stderr}"
    );

    let help = Command::new(env!("CARGO_BIN_EXE_colony-admin"))
        .args(["status", "--help"])
        .output()
        .expect("runs");
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("live players"));
}
