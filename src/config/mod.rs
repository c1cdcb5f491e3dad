//! Colony's configuration: a typed struct loaded once, from a TOML file plus environment
//! overrides, and validated before anything connects or binds.
//!
//! Environment overrides name a path into the TOML document with double underscores after the
//! `COLONY__` prefix: `COLONY__REDIS__CONNECTIONS_PER_SHARD=4` sets `redis.connections_per_shard`, and
//! `COLONY__SHARDS__0__MASTER=10.0.0.5:6379` sets the master of the first shard. The value is
//! read as a TOML value when it parses as one (`32`, `true`, `["a"]`) and as a string
//! otherwise. Callers pass the variables in, so tests never touch the process environment.
//!
//! One file per section: `redis.rs` (`[redis]`, `[[shards]]`, `[[slots]]`), `gateway.rs`
//! (`[gateway]`, tokens, TLS), `archive.rs` (`[archive]`), `env.rs` (the overrides). Each
//! section validates itself; [`Config::validate`] adds what spans sections (an answer must
//! fit in a frame; the slot map must cover every slot).

mod archive;
mod env;
mod gateway;
mod redis;

use std::path::Path;

use serde::Deserialize;

use crate::model::Limits;
use crate::shard_map::{Endpoint, Shard, ShardMap};

pub use archive::ArchiveConfig;
pub use gateway::{GatewayConfig, TlsConfig};
pub use redis::{
    Acknowledge, ClusterConfig, RedisSettings, SentinelConfig, ShardConfig, SlotRangeConfig,
};

/// Prefix of environment variables that override configuration values.
pub const ENV_PREFIX: &str = "COLONY__";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped fields.
    #[error("config is not valid: {0}")]
    Parse(String),
    /// An environment override names a path that does not fit the document.
    #[error("environment override {var}: {reason}")]
    Override {
        /// The variable.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The values parse but do not make sense together.
    #[error("config is not valid: {0}")]
    Invalid(String),
}

/// The whole configuration. Every field has a default except the topology: `shards` or
/// `cluster`, exactly one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The shards, each a Redis master with its replicas (Sentinel or fixed masters, with the
    /// static slot map of `slots`). Either these or `cluster`.
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// A Redis Cluster, whose own map Colony follows. Either this or `shards`.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Slot ranges and the shard that owns each. When empty (the default), the 16384 slots
    /// are split evenly across `shards` in the order listed.
    #[serde(default)]
    pub slots: Vec<SlotRangeConfig>,
    /// Epoch of the slot map: raise it whenever `slots` change, so components can tell two
    /// maps apart. Default 1.
    #[serde(default = "default_epoch")]
    pub epoch: u64,
    /// Connection and storage settings.
    #[serde(default)]
    pub redis: RedisSettings,
    /// Size and count limits on requests.
    #[serde(default)]
    pub limits: Limits,
    /// The gateway: listeners, timeouts, caps and tokens.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The archiver: MongoDB and when players move there.
    #[serde(default)]
    pub archive: ArchiveConfig,
}

/// Upper bound of every timeout in milliseconds that has no tighter one (ten minutes):
/// longer values are typos, and would overflow nothing but hold resources for hours.
pub(crate) const MAX_TIMEOUT_MS: u64 = 600_000;

/// Fails unless `low <= value <= high`, naming the field and its range.
pub(crate) fn within<T>(field: &str, value: T, low: T, high: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < low || value > high {
        return Err(ConfigError::Invalid(format!(
            "{field} = {value} is outside {low}..={high}"
        )));
    }
    Ok(())
}

fn default_epoch() -> u64 {
    1
}

impl Config {
    /// Reads `path`, applies the `COLONY__` overrides found in `env`, and validates.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, env)
    }

    /// Parses `text`, applies the `COLONY__` overrides found in `env`, and validates.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Sorted so that the result never depends on the environment's iteration order, with
        // array indexes as numbers, so that items are added in order (2 before 10).
        overrides.sort_by(|(a, _), (b, _)| env::path_order(a, b));
        for (var, value) in overrides {
            env::apply_override(&mut doc, &var, &value)?;
        }
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: non-empty shard list, unique names, addresses, slot
    /// coverage, and sane settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.redis.validate()?;
        self.limits.validate().map_err(ConfigError::Invalid)?;
        // An answer must fit in a frame: the read budget of a request, plus what each
        // transaction's result costs besides its entries.
        let frame_needed = self
            .limits
            .max_answer_bytes
            .saturating_add(
                self.limits
                    .max_transactions_per_batch
                    .saturating_mul(crate::model::RESULT_OVERHEAD_BYTES),
            )
            .saturating_add(crate::model::RESULT_OVERHEAD_BYTES);
        if self.gateway.max_frame_bytes < frame_needed {
            return invalid(format!(
                "gateway.max_frame_bytes = {} cannot carry an answer of limits.max_answer_bytes \
                 ({}) for limits.max_transactions_per_batch ({}) transactions: it must be at \
                 least {frame_needed}",
                self.gateway.max_frame_bytes,
                self.limits.max_answer_bytes,
                self.limits.max_transactions_per_batch,
            ));
        }
        self.gateway.validate()?;
        if let Some(cluster) = &self.cluster {
            if !self.shards.is_empty() {
                return invalid(
                    "set either [[shards]] or [cluster], not both: a cluster's shards and slot \
                     map come from the cluster"
                        .into(),
                );
            }
            if !self.slots.is_empty() {
                return invalid(
                    "[[slots]] cannot be given with [cluster]: the cluster owns its slot map"
                        .into(),
                );
            }
            cluster.validate()?;
            return self.archive.validate();
        }
        if self.shards.is_empty() {
            return invalid(
                "no topology: list the [[shards]] (at least one) or give a [cluster]".into(),
            );
        }
        for shard in &self.shards {
            shard.validate()?;
        }
        self.archive.validate()?;
        // Building the map checks names, uniqueness and slot coverage.
        self.shard_map().map(|_| ())
    }

    /// The slot map this configuration describes: its shards, in order, and its slot ranges
    /// (an even split when there are none). A `[cluster]` has no map in its configuration:
    /// the store reads it from the cluster.
    pub fn shard_map(&self) -> Result<ShardMap, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        if self.cluster.is_some() {
            return Err(invalid(
                "a [cluster]'s slot map comes from the cluster, not the configuration".into(),
            ));
        }
        let mut shards = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let endpoint = match (&s.master, &s.sentinel) {
                (Some(master), None) => Endpoint::Fixed(master.clone()),
                (None, Some(sentinel)) => Endpoint::Sentinel {
                    master_name: sentinel.master_name.clone(),
                    sentinels: sentinel.addresses.clone(),
                },
                _ => {
                    return Err(invalid(format!(
                        "shard {}: set exactly one of master and sentinel",
                        s.name
                    )))
                }
            };
            shards.push(Shard {
                name: s.name.clone(),
                endpoint,
                replicas: s.replicas.clone(),
            });
        }
        let ranges: Vec<(String, String)> = self
            .slots
            .iter()
            .map(|r| (r.range.clone(), r.shard.clone()))
            .collect();
        ShardMap::new(self.epoch, shards, &ranges).map_err(|e| invalid(e.0))
    }
}

/// Splits `host:port`, rejecting empty hosts and port 0. IPv6 literals go in brackets.
pub fn parse_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{address:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_string(), p)),
        _ => Err(format!("{address:?} has no valid port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SHARDS: &str = r#"
        [[shards]]
        name = "a"
        master = "127.0.0.1:7000"
        replicas = ["127.0.0.1:7001"]

        [[shards]]
        name = "b"
        master = "127.0.0.1:7002"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn any_number_of_mongodbs_goes_with_either_topology() {
        // The archive's placement is the slot's block over the list, not a shard's own.
        for topology in [
            "[[shards]]\nname = \"a\"\nmaster = \"h:1\"\n",
            "[cluster]\nseeds = [\"h:1\"]\n",
        ] {
            let text = format!(
                "{topology}[archive]\nmongodb_uris = [\"mongodb://a\", \"mongodb://b\", \"mongodb://c\"]\n"
            );
            let config = Config::from_toml(&text, env(&[])).expect("valid");
            assert_eq!(config.archive.mongodb_uris.len(), 3, "{topology}");
        }
    }

    #[test]
    fn defaults_fill_everything_but_shards() {
        let config = Config::from_toml(TWO_SHARDS, []).expect("valid");
        assert_eq!(config.redis, RedisSettings::default());
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.epoch, 1);
        assert_eq!(config.shards[0].replicas, vec!["127.0.0.1:7001"]);
    }

    #[test]
    fn environment_overrides_scalars_and_array_items() {
        let config = Config::from_toml(
            TWO_SHARDS,
            env(&[
                ("COLONY__REDIS__CONNECTIONS_PER_SHARD", "3"),
                ("COLONY__SHARDS__1__MASTER", "10.1.2.3:6390"),
                ("COLONY__LIMITS__MAX_VALUE_BYTES", "100"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.redis.connections_per_shard, 3);
        assert_eq!(config.shards[1].master.as_deref(), Some("10.1.2.3:6390"));
        assert_eq!(config.limits.max_value_bytes, 100);
    }

    #[test]
    fn whole_lists_can_come_from_the_environment_in_index_order() {
        let mut vars = vec![("COLONY__ARCHIVE__MONGODB_URIS__0", "mongodb://a:1")];
        // Twelve tokens, listed out of order (10 and 11 sort before 2 as text).
        let names: Vec<(String, String, String)> = (0..12)
            .rev()
            .map(|i| {
                (
                    format!("COLONY__GATEWAY__TOKENS__{i}__NAME"),
                    format!("COLONY__GATEWAY__TOKENS__{i}__TOKEN"),
                    format!("COLONY__GATEWAY__TOKENS__{i}__ROLE"),
                )
            })
            .collect();
        let secrets: Vec<String> = (0..12)
            .rev()
            .map(|i| format!("secret-token-number-{i:02}"))
            .collect();
        let labels: Vec<String> = (0..12).rev().map(|i| format!("t{i}")).collect();
        for (i, (name, token, role)) in names.iter().enumerate() {
            vars.push((name.as_str(), labels[i].as_str()));
            vars.push((token.as_str(), secrets[i].as_str()));
            vars.push((role.as_str(), "game"));
        }
        let config = Config::from_toml(TWO_SHARDS, env(&vars)).expect("valid");
        assert_eq!(config.archive.mongodb_uris, vec!["mongodb://a:1"]);
        assert_eq!(config.gateway.tokens.len(), 12);
        assert_eq!(config.gateway.tokens[10].name, "t10");
        assert_eq!(config.gateway.tokens[2].token, "secret-token-number-02");
        // A gap is refused, naming the variable and the index to add next.
        let err = Config::from_toml(
            TWO_SHARDS,
            env(&[("COLONY__ARCHIVE__MONGODB_URIS__1", "mongodb://a:1")]),
        )
        .expect_err("a gap");
        assert!(
            err.to_string().contains("MONGODB_URIS__1") && err.to_string().contains("from 0"),
            "{err}"
        );
    }

    #[test]
    fn bad_overrides_are_named() {
        for (var, value) in [
            ("COLONY__SHARDS__9__MASTER", "x:1"),
            ("COLONY__REDIS__CONNECTIONS_PER_SHARD", "many"),
            ("COLONY__REDIS__NOT_A_FIELD", "1"),
            ("COLONY____X", "1"),
        ] {
            let err = Config::from_toml(TWO_SHARDS, env(&[(var, value)]))
                .expect_err("override must be rejected");
            let text = err.to_string();
            assert!(!text.is_empty(), "{var}: {text}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected_naming_what_is_wrong() {
        // Each case, and what its error must name: the field, or the value at fault.
        let cases = [
            ("[[shards]]\nname = \"a\"\nmaster = \"h:1\"\ncolour = \"red\"", "unknown field `colour`"),
            ("[[shards]]\nname = \"a\"", "shard a: set exactly one of master and sentinel"),
            ("[[shards]]\nname = \"a\"\nmaster = \"h:1\"\nsentinel = { master_name = \"m\", addresses = [\"h:2\"] }", "shard a: set exactly one of master and sentinel"),
            ("[[shards]]\nname = \"a\"\nsentinel = { master_name = \"m\", addresses = [] }", "shard a: sentinel.addresses"),
            ("[[shards]]\nname = \"a\"\nsentinel = { master_name = \"m\", addresses = [\"nope\"] }", "shard a: sentinel \"nope\""),
            ("[redis]\nacknowledge = \"eventually\"\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "unknown variant `eventually`"),
            ("[archive]\nmongodb_uris = [\"mongodb+srv://x\"]\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "archive.mongodb_uris: \"mongodb+srv://x\""),
            ("[archive]\nmongodb_uris = [\"mongodb://a\", \"mongodb://a\"]\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "archive.mongodb_uris lists \"mongodb://a\" twice"),
            ("[[shards]]\nname = \"a\"\nmaster = \"nohostport\"", "shard a: master \"nohostport\""),
            ("[[shards]]\nname = \"a\"\nmaster = \"h:0\"", "shard a: master \"h:0\" has no valid port"),
            ("[[shards]]\nname = \"a\"\nmaster = \":80\"", "shard a: master \":80\" has no valid host"),
            ("[[shards]]\nname = \"a\"\nmaster = \"h:1\"\nreplicas = [\"h:99999\"]", "shard a: replica \"h:99999\""),
            ("shards = []", "no topology: list the [[shards]] (at least one) or give a [cluster]"),
            ("", "no topology"),
            ("[cluster]\nseeds = []", "cluster.seeds is empty"),
            ("[cluster]\nseeds = [\"nohostport\"]", "cluster.seeds: \"nohostport\" is not host:port"),
            ("[cluster]\nseeds = [\"h:1\"]\nrefresh_interval_ms = 5", "cluster.refresh_interval_ms = 5 is outside 100..=600000"),
            ("[cluster]\nseeds = [\"h:1\"]\nnodes = 3", "unknown field `nodes`"),
            ("[cluster]\nseeds = [\"h:1\"]\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "set either [[shards]] or [cluster], not both"),
            ("[cluster]\nseeds = [\"h:1\"]\n[[slots]]\nrange = \"0-16383\"\nshard = \"a\"", "[[slots]] cannot be given with [cluster]"),
            ("[redis]\nconnections_per_shard = 0\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "redis.connections_per_shard = 0"),
            ("[gateway]\nlisten = \"nowhere\"\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "gateway.listen \"nowhere\""),
            ("[gateway]\nmax_frame_bytes = 10\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "gateway.max_frame_bytes = 10"),
            ("[[gateway.tokens]]\nname = \"t\"\ntoken = \"short\"\nrole = \"game\"\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "gateway token \"t\" must be 16..=1024 bytes"),
            ("[[gateway.tokens]]\nname = \"t\"\ntoken = \"long-enough-token-1\"\nrole = \"root\"\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"", "unknown variant `root`"),
            ("not toml at all [", "TOML parse error at line 1"),
        ];
        // A hostile seed list: more nodes than any cluster needs to be found.
        let seeds: Vec<String> = (1..=65).map(|p| format!("\"h:{p}\"")).collect();
        let many = format!("[cluster]\nseeds = [{}]", seeds.join(", "));
        let message = Config::from_toml(&many, [])
            .expect_err("65 seeds")
            .to_string();
        assert!(
            message.contains("cluster.seeds lists 65 nodes; at most 64"),
            "{message}"
        );
        // More MongoDB deployments than there are slots to spread over them.
        let uris: Vec<String> = (0..=16384).map(|n| format!("\"mongodb://m{n}\"")).collect();
        let many = format!(
            "[archive]\nmongodb_uris = [{}]\n[[shards]]\nname = \"a\"\nmaster = \"h:1\"",
            uris.join(", ")
        );
        let message = Config::from_toml(&many, [])
            .expect_err("16385 MongoDB URIs")
            .to_string();
        assert!(
            message.contains("archive.mongodb_uris has 16385 entries, more than there are slots"),
            "{message}"
        );
        for (text, named) in cases {
            let message = Config::from_toml(text, []).expect_err(text).to_string();
            assert!(
                message.contains(named),
                "{text:?}: {message:?} does not name {named:?}"
            );
        }
    }

    #[test]
    fn values_out_of_range_and_shared_secrets_are_refused_naming_the_field() {
        let shard = "[[shards]]\nname = \"a\"\nmaster = \"h:1\"\n";
        let cases = [
            ("[gateway]\nmax_connections = 1000000000000\n", "gateway.max_connections"),
            (
                "[gateway]\nhandshake_timeout_ms = 9223372036854775807\n",
                "gateway.handshake_timeout_ms",
            ),
            ("[gateway]\nidle_timeout_ms = 0\n", "gateway.idle_timeout_ms"),
            (
                "[gateway]\nmax_unauthenticated_connections = 20000\n",
                "gateway.max_unauthenticated_connections",
            ),
            (
                "[gateway]\nmax_bytes_in_flight = 1024\n",
                "gateway.max_bytes_in_flight",
            ),
            (
                "[redis]\ncommand_timeout_ms = 9223372036854775807\n",
                "redis.command_timeout_ms",
            ),
            (
                "[redis]\nretry_deadline_ms = 86400000\n",
                "redis.retry_deadline_ms",
            ),
            ("[limits]\nmax_player_entries = 0\n", "limits.max_player_entries"),
            ("[limits]\nmax_answer_bytes = 1000\n", "limits.max_answer_bytes"),
            (
                "[limits]\nmax_transactions_per_batch = 100000\n",
                "gateway.max_frame_bytes",
            ),
            ("[archive]\nbatch_size = 100000000\n", "archive.batch_size"),
            (
                "[[gateway.tokens]]\nname = \"a\"\ntoken = \"same-secret-0000000\"\nrole = \"game\"\n\
                 [[gateway.tokens]]\nname = \"b\"\ntoken = \"same-secret-0000000\"\nrole = \"admin\"\n",
                "same secret",
            ),
        ];
        for (text, field) in cases {
            let err = Config::from_toml(&format!("{text}{shard}"), [])
                .expect_err("must be refused")
                .to_string();
            assert!(err.contains(field), "{text:?}: {err}");
            assert!(!err.contains("same-secret"), "the secret leaked: {err}");
        }
    }

    #[test]
    fn the_shipped_example_parses_and_states_the_defaults() {
        let text = include_str!("../../deploy/colony.example.toml");
        let config = Config::from_toml(text, []).expect("example is valid");
        assert_eq!(config.redis, RedisSettings::default());
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.shards.len(), 2);
        let gateway = GatewayConfig {
            tokens: Vec::new(),
            ..config.gateway.clone()
        };
        assert_eq!(gateway, GatewayConfig::default());
        assert_eq!(config.gateway.tokens.len(), 2);
        let archive = ArchiveConfig {
            mongodb_uris: Vec::new(),
            ..config.archive.clone()
        };
        assert_eq!(archive, ArchiveConfig::default());
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("[::1]:6379"), Ok(("::1".into(), 6379)));
        assert_eq!(
            parse_address("redis-0.svc:6379"),
            Ok(("redis-0.svc".into(), 6379))
        );
        assert_eq!(
            parse_address("h:-1"),
            Err("\"h:-1\" has no valid port".into())
        );
    }
}
