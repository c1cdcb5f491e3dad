//! The slot function against a real `redis-server --cluster-enabled yes`: `CLUSTER KEYSLOT`
//! is the reference for a few hundred keys, with hash tags, empty tags, several braces and
//! non-ASCII bytes.

mod common;

use colony::slot::key_slot;
use colony_testkit::RedisServer;

fn keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{}".to_vec(),
        b"{}{a}".to_vec(),
        b"a{}b".to_vec(),
        b"{a}{b}".to_vec(),
        b"{{a}}".to_vec(),
        b"{a".to_vec(),
        b"a}".to_vec(),
        b"}{a}".to_vec(),
        b"{user1000}.following".to_vec(),
        "{ünïcödé}:pub".as_bytes().to_vec(),
        "игрок-42".as_bytes().to_vec(),
        "🐜colony🐜".as_bytes().to_vec(),
        vec![0, 255, 123, 1, 125, 0],
    ];
    for i in 0..120u32 {
        keys.push(format!("player-{i}").into_bytes());
        keys.push(format!("{{player-{i}}}:meta").into_bytes());
        keys.push(format!("x{{{i}}}y{{z}}").into_bytes());
    }
    for i in 0..40u32 {
        keys.push(format!("{{}}{i}").into_bytes());
        keys.push(format!("ключ{{значение-{i}}}").into_bytes());
    }
    keys
}

#[tokio::test]
async fn key_slot_matches_cluster_keyslot() {
    let server =
        RedisServer::start_with(&["--cluster-enabled", "yes"]).expect("cluster node starts");
    let mut conn = common::raw(&server).await;
    let keys = keys();
    assert!(keys.len() >= 300);
    for key in keys {
        let expected: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key.as_slice())
            .query_async(&mut conn)
            .await
            .expect("keyslot");
        assert_eq!(key_slot(&key).get(), expected, "key {key:?}");
    }
}
