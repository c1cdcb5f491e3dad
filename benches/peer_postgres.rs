//! Colony beside a peer: the same player workload on PostgreSQL shaped as Nakama's storage
//! engine and on Colony, on this machine, in one run.
//!
//! The workload, from 32 callers over `--players` players (10,000) of about 1 KiB each:
//!
//! - **single**: one player's read-modify-write — gold +1 (never below 0) and a field set —
//!   with an idempotency key;
//! - **trade**: one gold from one player to another, all or nothing, with an idempotency key.
//!
//! PostgreSQL (Debian's, started by the bench on a free port in a fresh data directory on
//! disk, fsync on) holds each player as Nakama does: one row of `storage` per (collection,
//! key, user), a JSONB value and a version, a write being one SQL transaction; a studio adds
//! the idempotency table, written in the same transaction. Two ways of writing it:
//!
//! - **Nakama-shaped**: what a game server on Nakama's storage API does — read the object
//!   with its version, change it in the game server, then one transaction of the idempotency
//!   insert and `UPDATE … WHERE version = <read>` (a conflict is read and tried again);
//! - **one statement**: PostgreSQL at its best — the change done by the server in a single
//!   statement (JSONB arithmetic, a CHECK keeping gold at or above 0, the idempotency row in
//!   the same statement), one round trip like Colony's.
//!
//! Colony: two shards, each a master and a replica in the safe profile (AOF every second).
//! The durability pairs compared: Colony `local` against PostgreSQL `synchronous_commit =
//! off` (both may lose about the last second on a crash of the server), and Colony
//! `replicated` (every write waited for on a replica) against `synchronous_commit = on` (every
//! commit flushed to disk). Printed: transactions per second, p50 and p99, server CPU per
//! transaction (every Redis process, masters and replicas; every PostgreSQL process), and
//! Colony ÷ PostgreSQL.
//!
//! Run: `cargo bench --bench peer_postgres [-- --seconds N --players N]` (after
//! `bash .ci/setup`, which installs PostgreSQL).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use colony::config::Acknowledge;
use colony::{
    IdempotencyKey, MultiTransaction, Name, Operation, Participant, PlayerId, Store, Transaction,
    Visibility,
};
use colony_testkit::{free_port, wait_until_blocking, Profile, SentinelShard};
use hdrhistogram::Histogram;
use tokio_postgres::{Client, NoTls, Statement};

mod common;

const CALLERS: u64 = 32;
const START_GOLD: i64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------
// PostgreSQL, started and stopped by the bench.

/// A PostgreSQL server in a temporary data directory, stopped (SIGKILL) on drop.
struct Postgres {
    child: Child,
    port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Debian keeps PostgreSQL's programs out of PATH: `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin(program: &str) -> PathBuf {
    if let Ok(paths) = std::env::var("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join(program).is_file() {
                return dir.join(program);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .iter()
        .rev()
        .map(|v| v.join("bin").join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no {program}: run `bash .ci/setup` (installs postgresql)"))
}

/// `program args` as the `postgres` user when this runs as root (initdb refuses root).
fn as_postgres(program: &Path) -> Command {
    // Whether this runs as root: `id -u` prints the effective user.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // The postgres user must own the directory it runs in.
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
        let initdb = as_postgres(&postgres_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = free_port().unwrap();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path().join("postgres.log"))
            .status();
        let child = as_postgres(&postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "max_connections=100",
                "-c",
                "fsync=on",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let started = wait_until_blocking(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(started, "postgres did not listen on {port}");
        Postgres {
            child,
            port,
            data,
            _dir: dir,
        }
    }

    async fn connect(&self) -> Client {
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        );
        // The server may accept before it is ready for sessions.
        for _ in 0..100 {
            if let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await {
                tokio::spawn(connection);
                return client;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("postgres on {} takes no sessions", self.port)
    }

    /// CPU seconds (user + system) of the server and every process it started (the
    /// postmaster, named by its pid file, is a child of `runuser` when run as root).
    fn cpu_seconds(&self) -> f64 {
        let ticks = 100.0; // USER_HZ on Linux
        let root: u32 = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(|| self.child.id());
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the command name (which may hold spaces) in parentheses.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let fields: Vec<&str> = after.split_whitespace().collect();
            let pid: u32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
            let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
            if pid == root || ppid == root {
                let utime: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0);
                let stime: f64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
                total += (utime + stime) / ticks;
            }
        }
        total
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nakama's storage table (its migration's columns and keys), with a CHECK keeping gold at
/// or above 0, and the idempotency table a studio adds.
const SCHEMA: &str = "
CREATE TABLE storage (
  collection  VARCHAR(128) NOT NULL,
  key         VARCHAR(128) NOT NULL,
  user_id     UUID         NOT NULL,
  value       JSONB        NOT NULL DEFAULT '{}',
  version     VARCHAR(32)  NOT NULL,
  read        SMALLINT     NOT NULL DEFAULT 1,
  write       SMALLINT     NOT NULL DEFAULT 1,
  create_time TIMESTAMPTZ  NOT NULL DEFAULT now(),
  update_time TIMESTAMPTZ  NOT NULL DEFAULT now(),
  PRIMARY KEY (collection, read, key, user_id),
  UNIQUE (collection, key, user_id),
  CHECK ((value->>'gold')::bigint >= 0)
);
CREATE INDEX collection_read_user_id_key_idx ON storage (collection, read, user_id, key);
CREATE INDEX collection_user_id_read_key_idx ON storage (collection, user_id, read, key);
CREATE TABLE idempotency (
  user_id UUID   NOT NULL,
  client  TEXT   NOT NULL,
  request BIGINT NOT NULL,
  reply   TEXT   NOT NULL,
  created TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, client, request)
);
";

/// The UUID of player `n`.
fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// A player's object, as JSON: about 1 KiB, as in the archiver's benchmarks.
fn object(n: u64, gold: i64) -> String {
    format!(
        "{{\"gold\": {gold}, \"nick\": \"player-{n}\", \"last\": 0, \"save\": \"{}\"}}",
        "p".repeat(768)
    )
}

/// A version string for a new value (Nakama's is a hash of the value).
fn version_of(value: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// One caller's session and its prepared statements.
struct PgSession {
    client: Client,
    read_one: Statement,
    read_two: Statement,
    remember: Statement,
    update: Statement,
    single_statement: Statement,
    trade_statement: Statement,
}

impl PgSession {
    async fn open(pg: &Postgres, synchronous: bool) -> PgSession {
        let client = pg.connect().await;
        client
            .batch_execute(if synchronous {
                "SET synchronous_commit = on"
            } else {
                "SET synchronous_commit = off"
            })
            .await
            .unwrap();
        let read_one = client
            .prepare("SELECT value::text, version FROM storage WHERE collection = 'player' AND key = 'state' AND user_id = $1::text::uuid")
            .await
            .unwrap();
        let read_two = client
            .prepare("SELECT user_id::text, value::text, version FROM storage WHERE collection = 'player' AND key = 'state' AND user_id IN ($1::text::uuid, $2::text::uuid)")
            .await
            .unwrap();
        let remember = client
            .prepare("INSERT INTO idempotency (user_id, client, request, reply) VALUES ($1::text::uuid, $2, $3, $4) ON CONFLICT DO NOTHING")
            .await
            .unwrap();
        let update = client
            .prepare("UPDATE storage SET value = $2::text::jsonb, version = $3, update_time = now() WHERE collection = 'player' AND key = 'state' AND user_id = $1::text::uuid AND version = $4")
            .await
            .unwrap();
        let single_statement = client
            .prepare(
                "WITH upd AS (
                   UPDATE storage SET
                     value = jsonb_set(jsonb_set(value, '{gold}', to_jsonb((value->>'gold')::bigint + 1)), '{last}', to_jsonb($4::bigint)),
                     version = md5(clock_timestamp()::text), update_time = now()
                   WHERE collection = 'player' AND key = 'state' AND user_id = $1::text::uuid
                     AND NOT EXISTS (SELECT 1 FROM idempotency WHERE user_id = $1::text::uuid AND client = $2 AND request = $3)
                   RETURNING value->>'gold' AS gold),
                 ins AS (INSERT INTO idempotency (user_id, client, request, reply)
                   SELECT $1::text::uuid, $2, $3, gold FROM upd RETURNING 1)
                 SELECT gold FROM upd",
            )
            .await
            .unwrap();
        let trade_statement = client
            .prepare(
                "WITH upd AS (
                   UPDATE storage s SET
                     value = jsonb_set(s.value, '{gold}', to_jsonb((s.value->>'gold')::bigint + d.delta)),
                     version = md5(clock_timestamp()::text), update_time = now()
                   FROM (VALUES ($1::text::uuid, -1::bigint), ($2::text::uuid, 1::bigint)) AS d(user_id, delta)
                   WHERE s.collection = 'player' AND s.key = 'state' AND s.user_id = d.user_id
                     AND NOT EXISTS (SELECT 1 FROM idempotency WHERE user_id = $1::text::uuid AND client = $3 AND request = $4)
                   RETURNING s.user_id),
                 ins AS (INSERT INTO idempotency (user_id, client, request, reply)
                   SELECT $1::text::uuid, $3, $4, 'ok' WHERE EXISTS (SELECT 1 FROM upd) RETURNING 1)
                 SELECT count(*) FROM upd",
            )
            .await
            .unwrap();
        PgSession {
            client,
            read_one,
            read_two,
            remember,
            update,
            single_statement,
            trade_statement,
        }
    }

    /// The Nakama-shaped single write: read, change in the game server, one transaction of
    /// the idempotency insert and the versioned update; a conflict reads again.
    async fn single_nakama(&mut self, player: u64, client: &str, request: i64) -> bool {
        let id = uuid(player);
        for _ in 0..20 {
            let row = match self.client.query_one(&self.read_one, &[&id]).await {
                Ok(row) => row,
                Err(_) => return false,
            };
            let (value, version): (String, String) = (row.get(0), row.get(1));
            let Some(changed) = bump(&value, 1, Some(request)) else {
                return false;
            };
            let new_version = version_of(&changed);
            let Ok(tx) = self.client.transaction().await else {
                return false;
            };
            match tx
                .execute(&self.remember, &[&id, &client, &request, &"ok"])
                .await
            {
                Ok(1) => {}
                // Remembered: a replay (the stored reply would be read here).
                Ok(_) => return tx.rollback().await.is_ok(),
                Err(_) => return false,
            }
            match tx
                .execute(&self.update, &[&id, &changed, &new_version, &version])
                .await
            {
                Ok(1) => return tx.commit().await.is_ok(),
                // Another write came first: read again.
                Ok(_) => {
                    let _ = tx.rollback().await;
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// The Nakama-shaped trade: both objects read, changed, and written back in one
    /// transaction with their versions; a conflict (or deadlock) reads again.
    async fn trade_nakama(&mut self, from: u64, to: u64, client: &str, request: i64) -> bool {
        let (a, b) = (uuid(from), uuid(to));
        for _ in 0..20 {
            let Ok(rows) = self.client.query(&self.read_two, &[&a, &b]).await else {
                return false;
            };
            let mut writes = Vec::new();
            for row in &rows {
                let (user, value, version): (String, String, String) =
                    (row.get(0), row.get(1), row.get(2));
                let delta = if user == a { -1 } else { 1 };
                let Some(changed) = bump(&value, delta, None) else {
                    return false;
                };
                writes.push((user, version_of(&changed), changed, version));
            }
            // Rows locked in one order, as a careful game server does, to avoid deadlocks.
            writes.sort();
            let Ok(tx) = self.client.transaction().await else {
                return false;
            };
            match tx
                .execute(&self.remember, &[&a, &client, &request, &"ok"])
                .await
            {
                Ok(1) => {}
                Ok(_) => return tx.rollback().await.is_ok(),
                Err(_) => continue,
            }
            let mut all = true;
            for (user, new_version, changed, version) in &writes {
                match tx
                    .execute(&self.update, &[user, changed, new_version, version])
                    .await
                {
                    Ok(1) => {}
                    _ => {
                        all = false;
                        break;
                    }
                }
            }
            if all {
                return tx.commit().await.is_ok();
            }
            let _ = tx.rollback().await;
        }
        false
    }

    async fn single_one_statement(&self, player: u64, client: &str, request: i64) -> bool {
        self.client
            .query(
                &self.single_statement,
                &[&uuid(player), &client, &request, &request],
            )
            .await
            .is_ok()
    }

    async fn trade_one_statement(&self, from: u64, to: u64, client: &str, request: i64) -> bool {
        // A deadlock between two statements on the same two rows aborts one: it goes again.
        for _ in 0..20 {
            if self
                .client
                .query(
                    &self.trade_statement,
                    &[&uuid(from), &uuid(to), &client, &request],
                )
                .await
                .is_ok()
            {
                return true;
            }
        }
        false
    }
}

/// `value` (a player's JSON object) with gold moved by `delta` and, when given, `last` set;
/// `None` when gold would fall below 0 or the object cannot be read.
fn bump(value: &str, delta: i64, last: Option<i64>) -> Option<String> {
    let mut object: serde_json::Value = serde_json::from_str(value).ok()?;
    let gold = object.get("gold")?.as_i64()? + delta;
    if gold < 0 {
        return None;
    }
    object["gold"] = gold.into();
    if let Some(last) = last {
        object["last"] = last.into();
    }
    Some(object.to_string())
}

async fn fill_postgres(pg: &Postgres, players: u64) {
    let client = pg.connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    for chunk in (0..players).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&n| {
                let value = object(n, START_GOLD);
                format!(
                    "('player', 'state', '{}', '{}'::jsonb, '{}')",
                    uuid(n),
                    value,
                    version_of(&value)
                )
            })
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO storage (collection, key, user_id, value, version) VALUES {}",
                rows.join(", ")
            ))
            .await
            .unwrap();
    }
    client.batch_execute("VACUUM ANALYZE").await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Colony.

fn colony_config(shards: &[SentinelShard], acknowledge: Acknowledge) -> colony::Config {
    let mut text = String::new();
    for shard in shards {
        let addresses: Vec<String> = shard
            .sentinel_addresses()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        text.push_str(&format!(
            "[[shards]]\nname = \"{name}\"\nsentinel = {{ master_name = \"{name}\", addresses = [{}] }}\n",
            addresses.join(", "),
            name = shard.master_name,
        ));
    }
    let mut config = colony::Config::from_toml(&text, []).unwrap();
    config.redis.acknowledge = acknowledge;
    config.redis.replicas_to_wait = 1;
    config
}

fn pid(n: u64) -> PlayerId {
    PlayerId::new(format!("peer-{n}")).unwrap()
}

fn gold(delta: i64) -> Operation {
    common::gold(delta, None)
}

async fn fill_colony(store: &Store, players: u64) {
    let save = vec![b'p'; 768];
    for chunk in (0..players).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|&n| {
                Transaction::owner(pid(n), Some(IdempotencyKey::new("fill", n + 1).unwrap()))
                    .with(Operation::SetField {
                        name: Name::new("save").unwrap(),
                        value: save.clone(),
                        visibility: Visibility::Private,
                    })
                    .with(Operation::SetField {
                        name: Name::new("nick").unwrap(),
                        value: format!("player-{n}").into_bytes(),
                        visibility: Visibility::Public,
                    })
                    .with(gold(START_GOLD))
            })
            .collect();
        for outcome in store.execute_batch(batch).await.unwrap() {
            outcome.unwrap();
        }
    }
}

/// CPU seconds (user + system) of every Redis server of `shards`.
fn redis_cpu_seconds(shards: &[SentinelShard]) -> f64 {
    let mut total = 0.0;
    for shard in shards {
        for server in &shard.servers {
            let mut conn = redis::Client::open(server.url())
                .unwrap()
                .get_connection()
                .unwrap();
            let info: String = redis::cmd("INFO").arg("cpu").query(&mut conn).unwrap();
            for line in info.lines() {
                if let Some(v) = line
                    .strip_prefix("used_cpu_sys:")
                    .or_else(|| line.strip_prefix("used_cpu_user:"))
                {
                    total += v.trim().parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------------------
// The run.

struct Figures {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
}

fn figures(rate: f64, latencies: &Histogram<u64>, cpu_seconds: f64, seconds: f64) -> Figures {
    Figures {
        rate,
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        cpu_us: cpu_seconds * 1e6 / (rate * seconds).max(1.0),
    }
}

fn row(name: &str, f: &Figures, base: Option<&Figures>) {
    let ratio = base.map_or(String::new(), |b| {
        format!(
            "  Colony ÷ this: {:.2}x the rate, {:.2}x the CPU",
            b.rate / f.rate,
            b.cpu_us / f.cpu_us
        )
    });
    println!(
        "  {name:<34} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server CPU {:>6.1} µs{ratio}",
        f.rate, f.p50_ms, f.p99_ms, f.cpu_us
    );
}

#[tokio::main]
async fn main() {
    let seconds = common::option("--seconds", 5);
    let players = common::option("--players", 10_000);
    let duration = Duration::from_secs(seconds);

    let pg = Arc::new(Postgres::start());
    fill_postgres(&pg, players).await;
    let shards: Vec<SentinelShard> = (0..2)
        .map(|i| SentinelShard::start(&format!("peer-{i}"), Profile::Safe, 1).unwrap())
        .collect();
    let local = Store::connect(&colony_config(&shards, Acknowledge::Local))
        .await
        .unwrap();
    fill_colony(&local, players).await;
    // Trading pairs on two shards: each caller's giver on the first, taker on the second.
    let map = local.shard_map().clone();
    let first = map.shard_for_player(&pid(0));
    let (on_first, on_second): (Vec<u64>, Vec<u64>) =
        (0..players).partition(|&n| map.shard_for_player(&pid(n)) == first);
    let (on_first, on_second) = (Arc::new(on_first), Arc::new(on_second));

    println!(
        "{players} players of ~1 KiB, {CALLERS} callers, {seconds} s each; Colony on 2 Sentinel shards (master + replica, safe profile), PostgreSQL on one server (fsync on)\n"
    );
    for (synchronous, acknowledge, pair) in [
        (
            false,
            Acknowledge::Local,
            "Colony local  ~  PostgreSQL synchronous_commit = off",
        ),
        (
            true,
            Acknowledge::Replicated,
            "Colony replicated  ~  PostgreSQL synchronous_commit = on",
        ),
    ] {
        println!("{pair}");
        let store = Arc::new(
            Store::connect(&colony_config(&shards, acknowledge))
                .await
                .unwrap(),
        );
        let mut sessions = Vec::new();
        for _ in 0..CALLERS {
            sessions.push(Arc::new(tokio::sync::Mutex::new(
                PgSession::open(&pg, synchronous).await,
            )));
        }
        let run_id = if synchronous { "s" } else { "a" };

        for workload in ["single", "trade"] {
            // Colony.
            let cpu = redis_cpu_seconds(&shards);
            let (rate, latencies) = {
                let (store, a, b) = (store.clone(), on_first.clone(), on_second.clone());
                let workload = workload.to_string();
                common::measure(CALLERS, duration, move |caller, i| {
                    let (store, a, b, workload) =
                        (store.clone(), a.clone(), b.clone(), workload.clone());
                    async move {
                        let client = format!("{run_id}-{workload}-{caller}");
                        let key = IdempotencyKey::new(client, i + 1).unwrap();
                        let k = (caller * 7919 + i * 104_729) as usize;
                        if workload == "single" {
                            let n = (k as u64) % players;
                            let txn = Transaction::owner(pid(n), Some(key)).with(gold(1)).with(
                                Operation::SetField {
                                    name: Name::new("last").unwrap(),
                                    value: i.to_string().into_bytes(),
                                    visibility: Visibility::Private,
                                },
                            );
                            store.execute(txn).await.is_ok()
                        } else {
                            let txn = MultiTransaction::new(key)
                                .with(Participant::owner(pid(a[k % a.len()])).with(gold(-1)))
                                .with(Participant::owner(pid(b[k % b.len()])).with(gold(1)));
                            store.execute_multi(txn).await.is_ok()
                        }
                    }
                })
                .await
            };
            let colony = figures(
                rate,
                &latencies,
                redis_cpu_seconds(&shards) - cpu,
                seconds as f64,
            );
            row(&format!("{workload}: Colony"), &colony, None);

            for shape in ["Nakama-shaped", "one statement"] {
                let cpu = pg.cpu_seconds();
                let (rate, latencies) = {
                    let (sessions, a, b) = (sessions.clone(), on_first.clone(), on_second.clone());
                    let (workload, shape) = (workload.to_string(), shape.to_string());
                    common::measure(CALLERS, duration, move |caller, i| {
                        let session = sessions[caller as usize].clone();
                        let (a, b, workload, shape) =
                            (a.clone(), b.clone(), workload.clone(), shape.clone());
                        async move {
                            let mut session = session.lock().await;
                            let client = format!("{run_id}-{workload}-{shape}-{caller}");
                            let request = i as i64 + 1;
                            let k = (caller * 7919 + i * 104_729) as usize;
                            match (workload.as_str(), shape.as_str()) {
                                ("single", "Nakama-shaped") => {
                                    session
                                        .single_nakama((k as u64) % players, &client, request)
                                        .await
                                }
                                ("single", _) => {
                                    session
                                        .single_one_statement(
                                            (k as u64) % players,
                                            &client,
                                            request,
                                        )
                                        .await
                                }
                                (_, "Nakama-shaped") => {
                                    session
                                        .trade_nakama(
                                            a[k % a.len()],
                                            b[k % b.len()],
                                            &client,
                                            request,
                                        )
                                        .await
                                }
                                _ => {
                                    session
                                        .trade_one_statement(
                                            a[k % a.len()],
                                            b[k % b.len()],
                                            &client,
                                            request,
                                        )
                                        .await
                                }
                            }
                        }
                    })
                    .await
                };
                let peer = figures(rate, &latencies, pg.cpu_seconds() - cpu, seconds as f64);
                row(
                    &format!("{workload}: PostgreSQL, {shape}"),
                    &peer,
                    Some(&colony),
                );
            }
        }
        println!();
    }
}
