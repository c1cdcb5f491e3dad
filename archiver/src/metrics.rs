//! The archiver's metrics, and the report of one archive pass they are fed from. The admin
//! endpoint that serves them is [`crate::admin`].

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Counts of one archive pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Inactive players looked at.
    pub candidates: u64,
    /// Players moved to MongoDB and removed from Redis.
    pub archived: u64,
    /// Players that changed or became active during the move and stayed.
    pub kept: u64,
    /// Players that failed (and stayed in Redis).
    pub failed: u64,
    /// Shards whose pass stopped on an error (by name); the other shards went on.
    pub failed_shards: Vec<String>,
}

/// Labels of per-shard metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    /// The shard's name.
    pub shard: String,
}

/// Labels of per-shard failure counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardPassLabels {
    /// The shard's name.
    pub shard: String,
    /// archive or checkpoint.
    pub pass: &'static str,
}

/// Labels of restore counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestoreLabels {
    /// full or public.
    pub part: &'static str,
    /// restored, already (someone restored it first) or error.
    pub outcome: &'static str,
}

/// Everything the archiver counts.
pub struct ArchiverMetrics {
    registry: Registry,
    /// Players moved to MongoDB.
    pub archived: Counter,
    /// Players that changed or woke up mid-move and stayed.
    pub kept: Counter,
    /// Players whose move failed (they stayed in Redis).
    pub archive_failures: Counter,
    /// Restores by part and outcome.
    pub restores: Family<RestoreLabels, Counter>,
    /// Restore latency, seconds.
    pub restore_seconds: Histogram,
    /// Players copied by checkpoints.
    pub checkpointed: Counter,
    /// Intents of multi-player transactions the sweep finished (their coordinator stopped).
    pub intents_resolved: Counter,
    /// Expired intents the last sweep of each shard could not resolve (their decision could
    /// not be read or written): players locked past their lease.
    pub intents_unresolved: Family<ShardLabels, Gauge>,
    /// Inactive players still in Redis, per shard, at the last pass.
    pub backlog: Family<ShardLabels, Gauge>,
    /// Passes that stopped on a shard's error, per shard and kind of pass.
    pub shard_failures: Family<ShardPassLabels, Counter>,
    /// Unix time of the last finished archive pass.
    pub last_pass: Gauge,
    /// The last pass's report, for the status page.
    pub last_report: Mutex<Option<PassReport>>,
}

impl Default for ArchiverMetrics {
    fn default() -> Self {
        ArchiverMetrics::new()
    }
}

impl ArchiverMetrics {
    /// Creates and registers every metric.
    pub fn new() -> ArchiverMetrics {
        let mut registry = Registry::with_prefix("colony_archiver");
        let archived = Counter::default();
        registry.register("archived", "Players moved to MongoDB", archived.clone());
        let kept = Counter::default();
        registry.register(
            "kept",
            "Players that changed or woke up mid-move and stayed",
            kept.clone(),
        );
        let archive_failures = Counter::default();
        registry.register(
            "archive_failures",
            "Players whose move failed",
            archive_failures.clone(),
        );
        let restores = Family::<RestoreLabels, Counter>::default();
        registry.register("restores", "Restores by part and outcome", restores.clone());
        let restore_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register(
            "restore_duration_seconds",
            "Restore latency",
            restore_seconds.clone(),
        );
        let checkpointed = Counter::default();
        registry.register(
            "checkpointed",
            "Players copied by checkpoints",
            checkpointed.clone(),
        );
        let intents_resolved = Counter::default();
        registry.register(
            "intents_resolved",
            "Intents of multi-player transactions the sweep applied or rolled back after their coordinator stopped",
            intents_resolved.clone(),
        );
        let intents_unresolved = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "intents_unresolved",
            "Expired intents the last sweep of the shard could not resolve: players locked past their lease, usually because a primary's shard refuses writes",
            intents_unresolved.clone(),
        );
        let backlog = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "backlog",
            "Inactive players still in Redis at the last pass",
            backlog.clone(),
        );
        let shard_failures = Family::<ShardPassLabels, Counter>::default();
        registry.register(
            "shard_failures",
            "Archive, checkpoint or sweep passes that stopped on this shard's error (the other shards went on)",
            shard_failures.clone(),
        );
        let last_pass = Gauge::default();
        registry.register(
            "last_pass_timestamp_seconds",
            "Unix time of the last archive pass",
            last_pass.clone(),
        );
        ArchiverMetrics {
            registry,
            archived,
            kept,
            archive_failures,
            restores,
            restore_seconds,
            checkpointed,
            intents_resolved,
            intents_unresolved,
            backlog,
            shard_failures,
            last_pass,
            last_report: Mutex::new(None),
        }
    }

    /// The failure and intent metrics of `shards` at 0, and every restore outcome at 0, before
    /// anything happens: an alert on `increase()` sees the first failure only if the series existed
    /// before it, and dashboards and rules can rely on every family being exported.
    pub fn with_shards(self, shards: &[String]) -> ArchiverMetrics {
        for shard in shards {
            for pass in ["archive", "checkpoint", "sweep"] {
                let _ = self.shard_failures.get_or_create(&ShardPassLabels {
                    shard: shard.clone(),
                    pass,
                });
            }
            // The backlog is left out: 0 before the first pass counted anything would be a
            // claim, not a measurement.
            let _ = self.intents_unresolved.get_or_create(&ShardLabels {
                shard: shard.clone(),
            });
        }
        for part in ["full", "public"] {
            for outcome in ["restored", "already", "error"] {
                let _ = self
                    .restores
                    .get_or_create(&RestoreLabels { part, outcome });
            }
        }
        self
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a finished archive pass.
    pub fn pass(&self, report: &PassReport, now_secs: u64) {
        self.archived.inc_by(report.archived);
        self.kept.inc_by(report.kept);
        self.archive_failures.inc_by(report.failed);
        self.last_pass.set(now_secs as i64);
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
    }

    /// Records how many expired intents the last sweep of `shard` could not resolve.
    pub fn intents_unresolved(&self, shard: &str, count: u64) {
        self.intents_unresolved
            .get_or_create(&ShardLabels {
                shard: shard.to_string(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts a pass that stopped on `shard`'s error; `pass` is archive, checkpoint or sweep.
    pub fn shard_failure(&self, shard: &str, pass: &'static str) {
        self.shard_failures
            .get_or_create(&ShardPassLabels {
                shard: shard.to_string(),
                pass,
            })
            .inc();
    }

    /// Counts a restore; `outcome` is restored, already or error.
    pub fn restore(&self, full: bool, outcome: &'static str, elapsed: Duration) {
        let part = if full { "full" } else { "public" };
        self.restores
            .get_or_create(&RestoreLabels { part, outcome })
            .inc();
        self.restore_seconds.observe(elapsed.as_secs_f64());
    }
}
