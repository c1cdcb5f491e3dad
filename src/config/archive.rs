//! `[archive]`: where and how the archiver moves inactive players.

use serde::Deserialize;

use super::{within, ConfigError};

/// The archiver's settings (`[archive]`). Only the archiver reads them; the gateway shares the
/// file so that both use the same slot map.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// MongoDB URIs (`mongodb://...`, a replica set or a mongos). A player's document lives
    /// in the one whose even block of the 16384 slots holds the player's slot
    /// ([`crate::slot::Slot::even_block`]): a placement that no Redis topology change or
    /// slot move alters. The list is fixed once players are archived (grow a MongoDB behind
    /// a mongos instead). Default none (the archiver refuses to start).
    pub mongodb_uris: Vec<String>,
    /// Database name. Default `colony`.
    pub database: String,
    /// Collection of archived players. Default `players`.
    pub collection: String,
    /// Players inactive this long move to MongoDB, in seconds. Default 5184000 (60 days).
    pub inactive_after_secs: u64,
    /// Players moved per batch. Default 500.
    pub batch_size: usize,
    /// Most players moved per second, 0 for no limit. Default 0.
    pub max_players_per_sec: u64,
    /// Time between archive passes, in seconds. Default 60.
    pub scan_interval_secs: u64,
    /// Time between checkpoints (changed live players copied to MongoDB without leaving
    /// Redis), in seconds; a lost shard can be rebuilt up to this long ago. 0 turns
    /// checkpoints off, and then the store (gateways included) keeps no set of changed
    /// players either, so gateways and archiver must agree on it. Default 300.
    pub checkpoint_interval_secs: u64,
    /// Address of the archiver's admin HTTP listener (`/metrics`, `/healthz`,
    /// `/admin/status`, which needs an admin token of `gateway.tokens`). Default `127.0.0.1:7402`.
    pub admin_listen: String,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            mongodb_uris: Vec::new(),
            database: "colony".into(),
            collection: "players".into(),
            inactive_after_secs: 60 * 24 * 3600,
            batch_size: 500,
            max_players_per_sec: 0,
            scan_interval_secs: 60,
            checkpoint_interval_secs: 300,
            admin_listen: "127.0.0.1:7402".into(),
        }
    }
}

impl ArchiveConfig {
    /// Checks values serde cannot.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let archive = self;
        if archive.mongodb_uris.len() > usize::from(crate::slot::SLOT_COUNT) {
            return invalid(format!(
                "archive.mongodb_uris has {} entries, more than there are slots",
                archive.mongodb_uris.len()
            ));
        }
        for (i, uri) in archive.mongodb_uris.iter().enumerate() {
            // Two blocks of slots in one MongoDB would work, but is almost surely a typo.
            if archive.mongodb_uris[..i].contains(uri) {
                return invalid(format!("archive.mongodb_uris lists {uri:?} twice"));
            }
        }
        for uri in &archive.mongodb_uris {
            if !uri.starts_with("mongodb://") {
                return invalid(format!(
                    "archive.mongodb_uris: {uri:?} is not a mongodb:// URI (mongodb+srv:// needs \
                     a DNS resolver this build leaves out)"
                ));
            }
        }
        within("archive.batch_size", archive.batch_size, 1, 100_000)?;
        within(
            "archive.scan_interval_secs",
            archive.scan_interval_secs,
            1,
            86_400,
        )?;
        within(
            "archive.checkpoint_interval_secs",
            archive.checkpoint_interval_secs,
            0,
            86_400,
        )?;
        within(
            "archive.inactive_after_secs",
            archive.inactive_after_secs,
            0,
            10 * 365 * 86_400,
        )?;
        within(
            "archive.max_players_per_sec",
            archive.max_players_per_sec,
            0,
            1_000_000,
        )?;
        if archive
            .admin_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return invalid(format!(
                "archive.admin_listen {:?} is not ip:port",
                archive.admin_listen
            ));
        }
        if archive.database.is_empty() || archive.collection.is_empty() {
            return invalid("archive.database and archive.collection must not be empty".into());
        }
        Ok(())
    }
}
