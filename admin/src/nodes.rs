//! `colony-admin add-node`: brings a fresh Redis Cluster node into the cluster, as a master
//! with no slots yet (slots come to it by moves) or as a replica of a master.
//!
//! Everything is checked before anything changes: the address is not a node of the cluster
//! already, it runs with `cluster-enabled yes`, knows no other node and holds no key, and the
//! master named by `--replica-of` is one. Then the new node meets the node whose map was
//! read, and the tool waits (with a deadline) until the new node knows every node and sees
//! the cluster's state as ok, and, for a replica, until it follows its master and the node
//! whose map was read lists it so.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colony::cluster_view::ClusterNode;
use colony::config::ClusterConfig;
use colony::store::{cluster_nodes, node_connection};
use serde::Serialize;

use crate::status::{first_answer, NODE_TIMEOUT};

/// How long a new node may take to learn the cluster and follow its master.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(30);

/// What `add-node` did.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    /// The new node's address.
    pub address: String,
    /// Its node id.
    pub id: String,
    /// `master` (no slots yet) or `replica of <address>`.
    pub role: String,
}

/// Adds the node at `address` to the cluster `cluster` names; a replica of `replica_of` (a
/// master's node id or address) when given.
pub async fn add_node(
    cluster: &ClusterConfig,
    address: &str,
    replica_of: Option<&str>,
) -> anyhow::Result<Added> {
    let (source, nodes) = first_answer(&cluster.seeds, cluster).await?;
    if nodes.iter().any(|n| n.address == address) {
        bail!("{address} is already a node of the cluster");
    }
    let master = match replica_of {
        None => None,
        Some(wanted) => Some(
            nodes
                .iter()
                .find(|n| {
                    (n.id == wanted || n.address == wanted) && n.master && !n.failing && !n.unusable
                })
                .with_context(|| {
                    format!("--replica-of {wanted}: no master of the cluster is that")
                })?
                .clone(),
        ),
    };
    let fresh = cluster_nodes(address, cluster, NODE_TIMEOUT)
        .await
        .with_context(|| format!("{address} is not a reachable Redis Cluster node"))?;
    if fresh.len() != 1 {
        bail!(
            "{address} already knows {} other nodes: it belongs to another cluster",
            fresh.len() - 1
        );
    }
    let id = fresh[0].id.clone();
    let mut conn = node_connection(address, cluster, NODE_TIMEOUT).await?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    if keys > 0 {
        bail!("{address} holds {keys} keys: add only an empty node");
    }
    let seed = nodes
        .iter()
        .find(|n| n.address == source)
        .context("the node whose map was read is not in its own map")?;
    let (host, port) = seed
        .address
        .rsplit_once(':')
        .context("the seed's address has no port")?;
    let mut meet = redis::cmd("CLUSTER");
    meet.arg("MEET").arg(host).arg(port);
    if let Some(bus) = seed.bus_port {
        meet.arg(bus);
    }
    let () = meet
        .query_async(&mut conn)
        .await
        .with_context(|| format!("CLUSTER MEET from {address}"))?;
    let known = nodes.len() + 1;
    wait_until(|| async {
        let listed = cluster_nodes(address, cluster, NODE_TIMEOUT).await.ok()?;
        let joined = listed.len() >= known && listed.iter().all(|n| !n.unusable);
        let seen = cluster_nodes(&source, cluster, NODE_TIMEOUT)
            .await
            .ok()?
            .iter()
            .any(|n: &ClusterNode| n.id == id && !n.unusable);
        (joined && seen).then_some(())
    })
    .await
    .with_context(|| format!("{address} did not learn the cluster within {JOIN_DEADLINE:?}"))?;
    // Until it has learned the slots' owners, a new node answers CLUSTERDOWN to everything
    // (a move's restores included).
    wait_until(|| async {
        let mut conn = node_connection(address, cluster, NODE_TIMEOUT).await.ok()?;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .any(|l| l.trim() == "cluster_state:ok")
            .then_some(())
    })
    .await
    .with_context(|| format!("{address} never saw the cluster's state as ok"))?;
    let role = match &master {
        None => "master".to_string(),
        Some(master) => {
            wait_until(|| async {
                let mut conn = node_connection(address, cluster, NODE_TIMEOUT).await.ok()?;
                redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(&master.id)
                    .query_async::<()>(&mut conn)
                    .await
                    .ok()
            })
            .await
            .with_context(|| format!("{address} did not follow {}", master.address))?;
            // Done when the node whose map the gateways read says so too (roles travel by
            // gossip).
            wait_until(|| async {
                let listed = cluster_nodes(&source, cluster, NODE_TIMEOUT).await.ok()?;
                listed
                    .iter()
                    .any(|n| n.id == id && n.replica_of.as_deref() == Some(master.id.as_str()))
                    .then_some(())
            })
            .await
            .with_context(|| {
                format!(
                    "{source} never listed {address} as a replica of {}",
                    master.address
                )
            })?;
            // In sync, so that the master's next WAIT counts it (a move's restores wait
            // for every replica the map lists).
            wait_until(|| async {
                let mut conn = node_connection(address, cluster, NODE_TIMEOUT).await.ok()?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                info.lines()
                    .any(|l| l.trim() == "master_link_status:up")
                    .then_some(())
            })
            .await
            .with_context(|| format!("{address} never got in sync with {}", master.address))?;
            format!("replica of {}", master.address)
        }
    };
    Ok(Added {
        address: address.to_string(),
        id,
        role,
    })
}

/// Polls `check` until it gives a value, for at most [`JOIN_DEADLINE`].
async fn wait_until<T, F, Fut>(mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + JOIN_DEADLINE;
    loop {
        if let Some(done) = check().await {
            return Ok(done);
        }
        if Instant::now() > deadline {
            bail!("deadline passed");
        }
        // Polling interval while the cluster's gossip spreads the news.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
