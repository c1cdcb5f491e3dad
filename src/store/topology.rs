//! Which links serve which shard, as a value a call takes once: [`Routes`], the slot map and
//! the links of each shard it names.
//!
//! For `[[shards]]` the routes never change. For a Redis Cluster they follow the cluster's map
//! (`directory`): a shard the map names for the first time gets links of its own, a shard
//! whose master the map now places elsewhere has its links made stale at once (as a Sentinel
//! `+switch-master` does), and shard indices are never reused, so an index taken from one
//! map names the same shard in every later one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::time::Instant;

use crate::cluster_view::ClusterView;
use crate::config::RedisSettings;
use crate::shard_map::{ShardIndex, ShardMap};

use super::directory::ClusterDirectory;
use super::links::{Credentials, FailoverHook, ShardLinks};
use super::wait::WaitFor;

/// The slot map and the links of every shard it names, in index order.
pub(super) struct Routes {
    pub(super) map: Arc<ShardMap>,
    pub(super) links: Vec<Arc<ShardLinks>>,
    /// For a Redis Cluster, the view the map came from (to find a redirect's node).
    pub(super) view: Option<Arc<ClusterView>>,
}

impl Routes {
    /// The links of `shard`. Indices come only from maps of this store, whose shards are
    /// never removed, so every index has links.
    pub(super) fn links(&self, shard: ShardIndex) -> &Arc<ShardLinks> {
        &self.links[shard.get()]
    }
}

/// Where the routes come from.
pub(super) enum Topology {
    /// `[[shards]]`: one map for the store's life.
    Fixed(Arc<Routes>),
    /// A Redis Cluster: routes follow its map.
    Cluster(Box<ClusterTopology>),
}

/// The routes of a Redis Cluster.
pub(super) struct ClusterTopology {
    directory: Arc<ClusterDirectory>,
    credentials: Credentials,
    settings: RedisSettings,
    /// The routes, and the view they were built from (compared by pointer); none before the
    /// first call.
    current: Mutex<Option<(Arc<ClusterView>, Arc<Routes>)>>,
    on_failover: Mutex<Option<FailoverHook>>,
    /// Whether the periodic refresh has been started.
    watching: AtomicBool,
}

impl Topology {
    /// The routes of a cluster whose map `directory` has read.
    pub(super) fn cluster(
        directory: ClusterDirectory,
        credentials: Credentials,
        settings: &RedisSettings,
    ) -> Topology {
        Topology::Cluster(Box::new(ClusterTopology {
            directory: Arc::new(directory),
            credentials,
            settings: settings.clone(),
            current: Mutex::new(None),
            on_failover: Mutex::new(None),
            watching: AtomicBool::new(false),
        }))
    }

    /// The routes now: one value for a whole call.
    pub(super) fn routes(&self) -> Arc<Routes> {
        match self {
            Topology::Fixed(routes) => routes.clone(),
            Topology::Cluster(cluster) => cluster.routes(),
        }
    }

    /// The cluster's map reader, for a cluster.
    pub(super) fn directory(&self) -> Option<&Arc<ClusterDirectory>> {
        match self {
            Topology::Fixed(_) => None,
            Topology::Cluster(cluster) => Some(&cluster.directory),
        }
    }

    /// Tells every shard's links, now and to come, to call `hook` when their master changes.
    pub(super) fn set_failover_hook(&self, hook: FailoverHook) {
        if let Topology::Cluster(cluster) = self {
            *lock(&cluster.on_failover) = Some(hook.clone());
        }
        for links in &self.routes().links {
            links.set_failover_hook(hook.clone());
        }
    }

    /// A node refused a command of a call begun at `since` for a slot it does not serve:
    /// reads the map again, unless a read began since (one read serves every caller).
    pub(super) async fn moved(&self, since: Instant) {
        if let Some(directory) = self.directory() {
            // A failed read leaves the map as it was; the retry meets MOVED again.
            let _ = directory.refresh_since(since).await;
        }
    }

    /// Starts, once, the task that reads a cluster's map every `cluster.refresh_interval_ms`.
    /// It ends when the store is dropped.
    pub(super) fn watch(&self) {
        let Topology::Cluster(cluster) = self else {
            return;
        };
        if cluster.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let directory: Weak<ClusterDirectory> = Arc::downgrade(&cluster.directory);
        let interval = cluster.directory.refresh_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(directory) = directory.upgrade() else {
                    return;
                };
                // Served by any read of the last half interval (after a MOVED, say).
                let since = Instant::now()
                    .checked_sub(interval / 2)
                    .unwrap_or_else(Instant::now);
                let _ = directory.refresh_since(since).await;
            }
        });
    }
}

impl ClusterTopology {
    fn routes(&self) -> Arc<Routes> {
        // The view is read under the lock: views only move forward, so routes built from an
        // older view can never replace those of a newer one.
        let mut current = lock(&self.current);
        let view = self.directory.view();
        if let Some((built_from, routes)) = current.as_ref() {
            if Arc::ptr_eq(built_from, &view) {
                return routes.clone();
            }
        }
        let before = current.take();
        let mut links = Vec::with_capacity(view.groups().len());
        for (i, group) in view.groups().iter().enumerate() {
            let master = group.master.as_ref().map(|m| m.address.as_str());
            let existing = before.as_ref().and_then(|(_, routes)| routes.links.get(i));
            let shard = match existing {
                Some(existing) => {
                    let was = before
                        .as_ref()
                        .and_then(|(view, _)| view.groups().get(i))
                        .and_then(|g| g.master.as_ref())
                        .map(|m| m.address.as_str());
                    if let Some(new) = master.filter(|new| was.is_some_and(|was| was != *new)) {
                        // A failover the map shows: the links go stale now, not at their
                        // next failure.
                        existing.switch_hint(new);
                    }
                    existing.clone()
                }
                None => {
                    let index = view.map().index(i).expect("every group is in the map");
                    let links = ShardLinks::in_cluster(
                        &group.name,
                        self.directory.clone(),
                        index,
                        self.credentials.clone(),
                        &self.settings,
                    );
                    if let Some(hook) = lock(&self.on_failover).clone() {
                        links.set_failover_hook(hook);
                    }
                    Arc::new(links)
                }
            };
            // Every replica that could be elected (see `WaitFor`): a write every one of them
            // has survives whichever the cluster elects.
            shard.set_wait_for(WaitFor::Cluster {
                configured: self.settings.replicas_to_wait,
                listed_online: group
                    .replicas
                    .iter()
                    .filter(|r| !r.failing)
                    .map(|r| r.address.clone())
                    .collect(),
            });
            links.push(shard);
        }
        let routes = Arc::new(Routes {
            map: Arc::new(view.map().clone()),
            links,
            view: Some(view.clone()),
        });
        *current = Some((view, routes.clone()));
        routes
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values behind the lock; a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
