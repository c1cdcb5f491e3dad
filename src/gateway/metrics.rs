//! The gateway's Prometheus metrics, served as text on the admin port's `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::store::breaker::BreakerState;
use crate::store::ShardObserver;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// hello, batch, get_player, login, ping, invalid.
    pub op: &'static str,
    /// The result code.
    pub code: &'static str,
}

/// Labels of a request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The operation.
    pub op: &'static str,
}

/// Labels of a per-transaction counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// The result code.
    pub code: &'static str,
}

/// Labels of a closed-connection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why the connection closed.
    pub reason: &'static str,
}

/// Labels of per-shard metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    /// The shard's name.
    pub shard: String,
}

/// Labels of the current-master gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MasterLabels {
    /// The shard's name.
    pub shard: String,
    /// The master's address.
    pub address: String,
}

/// Labels of per-shard error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardErrorLabels {
    /// The shard's name.
    pub shard: String,
    /// The error code.
    pub code: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to about 3.3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by operation and code.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by operation, seconds.
    pub request_seconds: Histograms<OpLabels>,
    /// Transactions by result code.
    pub transactions: Family<CodeLabels, Counter>,
    /// Requests being processed.
    pub in_flight: Gauge,
    /// Open client connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_accepted: Counter,
    /// Connections closed, by reason.
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Redis pipelines per shard that met an error, by code.
    pub shard_errors: Family<ShardErrorLabels, Counter>,
    /// Redis pipeline latency per shard, seconds.
    pub shard_seconds: Histograms<ShardLabels>,
    /// 1 for each shard's current master, 0 for former ones.
    pub shard_master: Family<MasterLabels, Gauge>,
    /// Master changes seen per shard.
    pub failovers: Family<ShardLabels, Counter>,
    /// Transactions retried per shard.
    pub retries: Family<ShardLabels, Counter>,
    /// Breaker state per shard: 0 closed, 1 half-open, 2 open.
    pub breaker_state: Family<ShardLabels, Gauge>,
    /// Answers that showed a player's version below one this gateway acknowledged (the
    /// rollback alarm), per shard.
    pub version_rollbacks: Family<ShardLabels, Counter>,
    /// A Redis Cluster's map as the store read it; registered only for a `[cluster]`.
    pub cluster: Option<ClusterMetrics>,
}

/// A Redis Cluster's map as the store read it, updated at each scrape.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    /// The highest configuration epoch the map lists (it grows at every failover and slot
    /// move the cluster agrees on).
    pub epoch: Gauge,
    /// Reads of the map (at start, after each `MOVED`, and every refresh interval).
    pub map_reads: Counter,
    /// Reads of the map that found no node answering with a usable map.
    pub map_read_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("colony");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Gateway requests by operation and result code",
            requests.clone(),
        );
        let request_seconds: Histograms<OpLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Gateway request latency",
            request_seconds.clone(),
        );
        let transactions = Family::<CodeLabels, Counter>::default();
        registry.register(
            "transactions",
            "Transactions by result code",
            transactions.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being processed",
            in_flight.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            connections_accepted.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections closed, by reason",
            connections_closed.clone(),
        );
        let shard_errors = Family::<ShardErrorLabels, Counter>::default();
        registry.register(
            "shard_errors",
            "Redis pipelines that met an error, by shard and code",
            shard_errors.clone(),
        );
        let shard_seconds: Histograms<ShardLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "shard_pipeline_duration_seconds",
            "Redis pipeline latency by shard",
            shard_seconds.clone(),
        );
        let shard_master = Family::<MasterLabels, Gauge>::default();
        registry.register(
            "shard_master",
            "1 for the current master of each shard",
            shard_master.clone(),
        );
        let failovers = Family::<ShardLabels, Counter>::default();
        registry.register(
            "failovers",
            "Master changes seen, by shard",
            failovers.clone(),
        );
        let retries = Family::<ShardLabels, Counter>::default();
        registry.register(
            "retries",
            "Transactions retried by the store, by shard",
            retries.clone(),
        );
        let breaker_state = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "shard_breaker_state",
            "Circuit breaker per shard: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let version_rollbacks = Family::<ShardLabels, Counter>::default();
        registry.register(
            "version_rollbacks",
            "Answers showing a player's version below one this gateway acknowledged, by shard",
            version_rollbacks.clone(),
        );
        Metrics {
            registry,
            cluster: None,
            version_rollbacks,
            shard_master,
            failovers,
            retries,
            breaker_state,
            requests,
            request_seconds,
            transactions,
            in_flight,
            connections,
            connections_accepted,
            connections_closed,
            shard_errors,
            shard_seconds,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Every per-shard counter and gauge of `shards` at 0 (the breaker closed), and
    /// UNAVAILABLE among the shard errors, before anything happens: an alert on `increase()`
    /// sees the first failover, retry, rollback or outage only if the series existed before
    /// it, and dashboards and rules can rely on every family being exported.
    pub fn with_shards<'a>(self, shards: impl IntoIterator<Item = &'a str>) -> Metrics {
        self.register_shards(shards);
        self
    }

    /// Registers the metrics of a Redis Cluster's map (`colony_cluster_epoch`,
    /// `colony_cluster_map_reads_total`, `colony_cluster_map_read_failures_total`).
    pub fn with_cluster(mut self) -> Metrics {
        let cluster = ClusterMetrics::default();
        self.registry.register(
            "cluster_epoch",
            "The highest configuration epoch of the Redis Cluster's map as last read",
            cluster.epoch.clone(),
        );
        self.registry.register(
            "cluster_map_reads",
            "Reads of the Redis Cluster's map (start, MOVED, refresh interval)",
            cluster.map_reads.clone(),
        );
        self.registry.register(
            "cluster_map_read_failures",
            "Reads of the Redis Cluster's map that no node answered",
            cluster.map_read_failures.clone(),
        );
        self.cluster = Some(cluster);
        self
    }

    /// Brings the cluster's metrics to the store's figures: the map's `epoch`, and the
    /// `reads` and `failed` reads since start (nothing for `[[shards]]`).
    pub fn observe_cluster(&self, epoch: u64, reads: u64, failed: u64) {
        if let Some(cluster) = &self.cluster {
            cluster.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
            cluster
                .map_reads
                .inc_by(reads.saturating_sub(cluster.map_reads.get()));
            cluster
                .map_read_failures
                .inc_by(failed.saturating_sub(cluster.map_read_failures.get()));
        }
    }

    /// [`Metrics::with_shards`] on metrics already shared: for a Redis Cluster, whose shards
    /// are known once its map is read.
    pub fn register_shards<'a>(&self, shards: impl IntoIterator<Item = &'a str>) {
        for shard in shards {
            let labels = ShardLabels {
                shard: shard.to_string(),
            };
            let _ = self.failovers.get_or_create(&labels);
            let _ = self.retries.get_or_create(&labels);
            let _ = self.version_rollbacks.get_or_create(&labels);
            let _ = self.breaker_state.get_or_create(&labels);
            let _ = self.shard_errors.get_or_create(&ShardErrorLabels {
                shard: shard.to_string(),
                code: "UNAVAILABLE",
            });
        }
    }

    /// Counts one finished request.
    pub fn request(&self, op: &'static str, code: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { op, code })
            .inc();
        self.request_seconds
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a closed connection.
    pub fn closed(&self, reason: super::CloseReason) {
        self.connections_closed
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
}

impl ShardObserver for Metrics {
    fn master_changed(&self, shard: &str, old: Option<&str>, new: &str) {
        if let Some(old) = old {
            self.shard_master
                .get_or_create(&MasterLabels {
                    shard: shard.to_string(),
                    address: old.to_string(),
                })
                .set(0);
            self.failovers
                .get_or_create(&ShardLabels {
                    shard: shard.to_string(),
                })
                .inc();
        }
        self.shard_master
            .get_or_create(&MasterLabels {
                shard: shard.to_string(),
                address: new.to_string(),
            })
            .set(1);
    }

    fn retried(&self, shard: &str, count: u64) {
        self.retries
            .get_or_create(&ShardLabels {
                shard: shard.to_string(),
            })
            .inc_by(count);
    }

    fn breaker_changed(&self, shard: &str, state: BreakerState) {
        self.breaker_state
            .get_or_create(&ShardLabels {
                shard: shard.to_string(),
            })
            .set(state.as_gauge());
    }

    fn pipeline(&self, shard: &str, elapsed: Duration, error: Option<&Error>) {
        self.shard_seconds
            .get_or_create(&ShardLabels {
                shard: shard.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(e) = error {
            self.shard_errors
                .get_or_create(&ShardErrorLabels {
                    shard: shard.to_string(),
                    code: e.code().as_str(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request("batch", "OK", Duration::from_millis(2));
        m.pipeline("shard-0", Duration::from_millis(1), Some(&Error::NotFound));
        let text = m.render();
        assert!(
            text.contains("colony_requests_total{op=\"batch\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(text.contains("colony_shard_errors_total{shard=\"shard-0\",code=\"NOT_FOUND\"} 1"));
        assert!(text.contains("colony_request_duration_seconds_bucket"));
    }

    #[test]
    fn close_reasons_become_their_labels() {
        let m = Metrics::new();
        m.closed(super::super::CloseReason::Idle);
        m.closed(super::super::CloseReason::ConnectionLimit);
        let text = m.render();
        assert!(text.contains("reason=\"idle\"} 1"), "{text}");
        assert!(text.contains("reason=\"connection_limit\"} 1"), "{text}");
    }
}
