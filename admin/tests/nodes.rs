//! `colony-admin add-node` on a real Redis Cluster: a fresh node joins as an empty master,
//! another as a master's replica, and what cannot join is refused with nothing changed (a
//! node of the cluster already, a node without cluster mode, an unknown master).

use std::time::Duration;

use colony_testkit::{wait_until, Profile, RedisCluster, RedisServer};

/// A fresh cluster-enabled node, knowing no other.
fn fresh_node() -> RedisServer {
    RedisCluster::fresh_node(Profile::Plain).expect("a node starts")
}

/// How many nodes `node` knows (itself included).
async fn known_by(node: &RedisServer) -> usize {
    let mut conn = redis::Client::open(node.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("cluster nodes");
    text.lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_nodes_join_as_an_empty_master_and_as_a_replica() {
    let cluster = RedisCluster::start(3, 0, Profile::Plain, &[]).expect("cluster starts");
    let config = cluster.config().cluster.expect("a [cluster]");

    let master = fresh_node();
    let added = colony_admin::add_node(&config, &master.address(), None)
        .await
        .expect("joins");
    assert_eq!(added.role, "master");
    let status = colony_admin::status(&config).await.expect("status");
    assert_eq!(status.empty_masters, vec![master.address()], "{status:?}");
    assert_eq!(status.shards.len(), 3, "an empty master is no shard yet");

    let first = cluster.nodes()[0].address();
    let replica = fresh_node();
    let added = colony_admin::add_node(&config, &replica.address(), Some(&first))
        .await
        .expect("joins as a replica");
    assert_eq!(added.role, format!("replica of {first}"));
    assert!(
        wait_until(Duration::from_secs(30), || cluster.nodes()[0]
            .replicas_online()
            == 1)
        .await,
        "the replica never synced"
    );
    let status = colony_admin::status(&config).await.expect("status");
    assert_eq!(
        status.shards[0]
            .replicas
            .iter()
            .map(|r| r.address.clone())
            .collect::<Vec<_>>(),
        vec![replica.address()],
        "{status:?}"
    );

    // Refused, with nothing changed.
    let again = colony_admin::add_node(&config, &first, None)
        .await
        .expect_err("a member already");
    assert!(again.to_string().contains("already a node"), "{again}");
    let plain = RedisServer::start().expect("a plain server");
    let refused = colony_admin::add_node(&config, &plain.address(), None)
        .await
        .expect_err("no cluster mode");
    assert!(
        format!("{refused:#}").contains("not a reachable Redis Cluster node"),
        "{refused:#}"
    );
    let lonely = fresh_node();
    let unknown = colony_admin::add_node(&config, &lonely.address(), Some("127.0.0.1:1"))
        .await
        .expect_err("no such master");
    assert!(
        unknown.to_string().contains("no master of the cluster"),
        "{unknown}"
    );
    assert_eq!(known_by(&lonely).await, 1, "the refused node met nobody");
    let status = colony_admin::status(&config).await.expect("status");
    assert_eq!(status.empty_masters, vec![master.address()], "{status:?}");
}
