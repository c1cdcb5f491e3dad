//! Chaos mode end to end, through the real launcher, on each topology: `deploy/local/run.sh`
//! starts a one-shard local cluster (a master and two replicas in the safe profile, three
//! Sentinels), then with `--cluster` a Redis Cluster (three masters with two replicas each,
//! failing over by election); each with SecantusDB on disk, two gateways and the archiver.
//! The load test injects every kind of fault through the cluster's control directory while
//! traffic runs. Every fault must be injected and
//! recovered from, nothing acknowledged may be lost or applied twice, and stopping the
//! launcher must stop every process, the ones chaos mode restarted included.
//!
//! Cargo builds only this package's binaries for its tests, so the gateway and the archiver
//! are this test binary itself, started through links named `colony-gateway` and
//! `colony-archiver`: called by either name it serves as that process (the same library
//! entry points as the real binaries). Hence `harness = false`.
//!
//! The same launcher's Redis Cluster then serves a load test through both gateways while
//! `colony-admin`'s move takes the slots of the load test's players from one master to
//! another: nothing acknowledged lost or applied twice, no player unreadable, trades
//! conserved, the move's window in the report.
//!
//! Re-run a schedule with `COLONY_FAULT_SEED=<seed> cargo test -p colony-loadtest --test chaos`
//! (`COLONY_CHAOS_TOPOLOGY=sentinel` or `cluster` for one topology only, `reshard` for the
//! move alone). A run whose check fails keeps the cluster's logs in
//! `target/test-artifacts/chaos-<topology>-<seed>/` and prints their telling lines
//! (`COLONY_CHAOS_EVIDENCE=1` keeps them for a passing run too).

#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colony::Config;
use colony_loadtest::chaos::FaultKind;
use colony_loadtest::runner;
use colony_loadtest::scenario::{Chaos, Mix, Scenario};
use colony_testkit::{wait_until_blocking, Seeded};

fn main() {
    let called = std::env::args()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_default();
    match called.as_str() {
        "colony-gateway" | "colony-archiver" => serve(&called),
        _ => {
            // COLONY_CHAOS_TOPOLOGY=sentinel or cluster runs only that one.
            let only = std::env::var("COLONY_CHAOS_TOPOLOGY").unwrap_or_default();
            for topology in [LocalTopology::Sentinel, LocalTopology::Cluster]
                .into_iter()
                .filter(|t| only.is_empty() || format!("{t:?}").eq_ignore_ascii_case(&only))
            {
                chaos_through_the_local_cluster(topology);
                eprintln!("test chaos_through_the_local_cluster ({topology:?}) ... ok");
            }
            if only.is_empty()
                || ["cluster", "reshard"]
                    .iter()
                    .any(|o| only.eq_ignore_ascii_case(o))
            {
                slots_moved_under_the_load_test();
                eprintln!("test slots_moved_under_the_load_test ... ok");
            }
        }
    }
}

/// Runs as the gateway or the archiver: `<name> --config <file>`, stopped by SIGTERM.
fn serve(process: &str) {
    let args: Vec<String> = std::env::args().collect();
    let config = match args.iter().position(|a| a == "--config") {
        Some(i) if i + 1 < args.len() => PathBuf::from(&args[i + 1]),
        _ => panic!("{process}: --config <file> is required"),
    };
    // `COLONY_LOG` as the real binaries take it (`colony::store=debug,info` to follow trades).
    let filter = std::env::var("COLONY_LOG").unwrap_or_else(|_| "info".to_string());
    colony::process::init_logging(&filter, colony::process::LogFormat::Text).expect("logging");
    let config = Config::load(&config, std::env::vars()).expect("configuration");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stop = colony::process::stop_signal();
    let outcome = if process == "colony-gateway" {
        runtime
            .block_on(colony::gateway::serve(&config, stop))
            .map_err(|e| e.to_string())
    } else {
        runtime
            .block_on(colony_archiver::serve(&config, stop))
            .map_err(|e| e.to_string())
    };
    if let Err(e) = outcome {
        eprintln!("{process}: {e}");
        std::process::exit(1);
    }
}

/// What the launcher starts Redis as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalTopology {
    /// One Sentinel shard: a master, two replicas, three Sentinels.
    Sentinel,
    /// A Redis Cluster of three masters with two replicas each (`--cluster`).
    Cluster,
}

impl LocalTopology {
    /// Redis servers the launcher starts.
    fn redis_servers(self) -> u16 {
        match self {
            LocalTopology::Sentinel => 3,
            LocalTopology::Cluster => 9,
        }
    }
}

/// Ports the launcher uses for `topology` and two gateways, from `base`.
fn ports(base: u16, topology: LocalTopology) -> Vec<u16> {
    // Redis servers; three Sentinels or each cluster node's bus; MongoDB; two gateways and
    // their admin ports; the archiver's admin port; Prometheus.
    let mut offsets: Vec<u16> = (0..topology.redis_servers()).collect();
    match topology {
        LocalTopology::Sentinel => offsets.extend([100, 101, 102]),
        LocalTopology::Cluster => offsets.extend((0..topology.redis_servers()).map(|k| 200 + k)),
    }
    offsets.extend([300, 400, 401, 402, 410, 411, 500]);
    offsets.iter().map(|o| base + o).collect()
}

/// A base whose ports are all free now.
fn free_base(random: &mut Seeded, topology: LocalTopology) -> u16 {
    for _ in 0..100 {
        // Below the kernel's ephemeral range (32768 and up on Linux): a port there can be
        // taken at any moment by some process's outgoing connection, and a server started
        // later (Prometheus, last) would fail to bind it.
        let base = 20_000 + (random.range(0, 120) as u16) * 100;
        if ports(base, topology)
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free range of ports for the local cluster");
}

/// The launcher, stopped (SIGTERM, as Ctrl-C would) when dropped, also on a failed assertion.
struct Launcher {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Launcher {
    fn start(bin: &Path, base: u16, topology: LocalTopology) -> Launcher {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut command = Command::new("bash");
        command.arg("deploy/local/run.sh");
        if topology == LocalTopology::Cluster {
            command.arg("--cluster");
        }
        let shards = match topology {
            LocalTopology::Sentinel => "1",
            LocalTopology::Cluster => "3",
        };
        let mut child = command
            .current_dir(&root)
            .env("COLONY_LOCAL_BIN_DIR", bin)
            .env("COLONY_LOCAL_BASE_PORT", base.to_string())
            .env("COLONY_LOCAL_SHARDS", shards)
            .env("COLONY_LOCAL_GATEWAYS", "2")
            // Cold players idle for 3 s are archived, so that returning ones are restored.
            .env("COLONY_LOCAL_IDLE_SECS", "3")
            // Each trade attempt's end, each participant found without its intent and each
            // restore, in the logs a failed run keeps (`keep_evidence`), unless the caller
            // chose a filter.
            .env(
                "COLONY_LOG",
                std::env::var("COLONY_LOG").unwrap_or_else(|_| {
                    "colony::store::multi=debug,colony_archiver::worker::restore=debug,info"
                        .to_string()
                }),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs deploy/local/run.sh");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        Launcher { child, output }
    }

    fn lines(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The control directory, once the launcher says the cluster is running.
    fn control_dir(&mut self) -> PathBuf {
        let mut found = None;
        let ready = wait_until_blocking(Duration::from_secs(180), || {
            found = self.lines().iter().find_map(|l| {
                l.trim()
                    .strip_prefix("control directory")
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(PathBuf::from)
            });
            found.is_some() || self.child.try_wait().ok().flatten().is_some()
        });
        match found {
            Some(dir) if ready => dir,
            _ => panic!(
                "the local cluster did not start:\n{}",
                self.lines().join("\n")
            ),
        }
    }

    /// SIGTERM, then waits for the launcher's clean-up to finish.
    fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        wait_until_blocking(Duration::from_secs(60), || {
            self.child.try_wait().ok().flatten().is_some()
        })
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() && !self.stop() {
            let _ = self.child.kill();
        }
    }
}

/// The body of an HTTP GET on loopback.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n"
    )
    .expect("sends");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reads");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The sum of the samples of `metric` whose labels include `label`.
fn metric_sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn alive(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn chaos_through_the_local_cluster(topology: LocalTopology) {
    let seed = colony_testkit::seed_from_env();
    eprintln!("chaos: {topology:?}, seed {seed}");
    let mut random = Seeded::new(seed);
    let bin = tempfile::tempdir().expect("a directory for the process links");
    let me = std::env::current_exe().expect("this binary");
    for name in ["colony-gateway", "colony-archiver"] {
        std::os::unix::fs::symlink(&me, bin.path().join(name)).expect("links");
    }
    let base = free_base(&mut random, topology);
    let mut launcher = Launcher::start(bin.path(), base, topology);
    let control = launcher.control_dir();

    let gateways = vec![
        format!("127.0.0.1:{}", base + 400),
        format!("127.0.0.1:{}", base + 410),
    ];
    // A 10 s warm-up without faults: the cold players, idle for 3 s, meet an archive pass
    // (every 5 s) and some return to be restored, whatever the faults do later. Then four
    // slots of 6 s in 26 s: one of each fault.
    let scenario = Scenario {
        gateways,
        token: "local-game-token-0001".into(),
        players: 200,
        cold_players: 400,
        prefix: format!("chaos{seed}"),
        sessions: 8,
        batch: 4,
        think: Duration::from_millis(2),
        mix: Mix::parse("login=5,friends=30,currency=35,write=15,trade=10,idle=5,return=5")
            .expect("valid mix"),
        rate: None,
        duration: Duration::from_secs(26),
        warmup: Duration::from_secs(10),
        seed,
        chaos: Some(Chaos {
            control: control.clone(),
            faults: FaultKind::ALL.to_vec(),
            every: Duration::from_secs(6),
        }),
        windows: None,
    };
    assert_eq!(scenario.schedule().len(), 4);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let report = runtime
        .block_on(runner::run(scenario, |line| eprintln!("chaos: {line}")))
        .unwrap_or_else(|e| panic!("the load test failed: {e:#}"));
    eprintln!("{}", report.table());
    eprintln!("chaos: the run took {:?}", started.elapsed());

    // Every fault was injected and recovered from, each kind once.
    let mut kinds: Vec<&str> = report.faults.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["kill-gateway", "kill-master", "pause-master", "stop-mongo"]
    );
    for fault in &report.faults {
        assert!(fault.error.is_none(), "{fault:?}");
        assert!(fault.recovered_after_ms.is_some(), "{fault:?}");
        assert!(fault.unavailable_ms < 30_000.0, "{fault:?}");
    }
    // A killed master is seen: its shard answers nothing for a while (Sentinel needs its
    // down-after, 2 s, and the cluster its node timeout, 2 s, before a failover starts).
    let killed = report
        .faults
        .iter()
        .find(|f| f.kind == "kill-master")
        .expect("kill-master");
    assert!(killed.unavailable_ms >= 1000.0, "{killed:?}");
    // Nothing acknowledged lost or applied twice, and the traffic came back after the last
    // fault.
    let c = &report.correctness;
    if !c.is_exact() || c.unreadable > 0 || std::env::var_os("COLONY_CHAOS_EVIDENCE").is_some() {
        keep_evidence(&control, &format!("{topology:?}-{seed}"));
    }
    assert!(c.players > 0);
    assert_eq!(
        (c.lost, c.applied_twice, c.unreadable, c.conservation_gap),
        (0, 0, 0, 0),
        "{c:?}"
    );
    let last = report.timeline.last().expect("a timeline");
    assert!(last.requests > 0, "no traffic at the end: {last:?}");
    // Returning players were archived and restored meanwhile (the ledger covers their coins).
    let metrics = http_get(base + 402, "/metrics");
    let archived = metric_sum(&metrics, "colony_archiver_archived_total", "");
    let restored = metric_sum(
        &metrics,
        "colony_archiver_restores_total{",
        "outcome=\"restored\"",
    );
    assert!(
        archived > 0.0 && restored > 0.0,
        "archived {archived}, restored {restored}:\n{metrics}"
    );

    // No gateway saw an acknowledged version go back (the safe profile loses nothing).
    for gateway in 0..2 {
        let metrics = http_get(base + 401 + 10 * gateway, "/metrics");
        let rollbacks = metric_sum(&metrics, "colony_version_rollbacks_total{", "");
        assert_eq!(rollbacks, 0.0, "gateway {gateway} rolled back:\n{metrics}");
    }
    // The cluster's Prometheus, when installed, scrapes both gateways and the archiver and
    // has loaded Colony's rules.
    let prometheus = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if prometheus {
        let mut up = String::new();
        let scraped = wait_until_blocking(Duration::from_secs(30), || {
            up = http_get(base + 500, "/api/v1/query?query=up");
            up.matches("\"colony-gateway\"").count() == 2
                && up.matches("\"colony-archiver\"").count() == 1
                && up.matches(",\"1\"]").count() == 3
        });
        assert!(scraped, "Prometheus does not see every process up: {up}");
        let rules = http_get(base + 500, "/api/v1/rules");
        assert!(rules.contains("ColonyVersionRollback"), "{rules}");
    }

    // Stopping the launcher stops everything, restarted processes included.
    let pids: Vec<String> = std::fs::read_dir(&control)
        .expect("control directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .expect("pid file")
                .trim()
                .to_string()
        })
        .collect();
    let redis_and_sentinels = match topology {
        LocalTopology::Sentinel => 3 + 3,
        LocalTopology::Cluster => 9,
    };
    assert_eq!(
        pids.len(),
        redis_and_sentinels + 4 + usize::from(prometheus),
        "3 redis (a master, two replicas) and 3 sentinels, or 9 cluster nodes; mongodb, 2 \
         gateways, archiver, and Prometheus when installed"
    );
    assert!(launcher.stop(), "the launcher did not stop");
    for pid in &pids {
        assert!(!alive(pid), "process {pid} outlived the launcher");
    }
    assert!(!control.exists(), "the cluster's files were left behind");
}

/// A failed run's evidence, before the launcher's clean-up deletes it: every log of the
/// cluster copied to `target/test-artifacts/chaos-<run>/`, and the lines that tell a trade's
/// story printed here (CI keeps only the output): warnings and errors of the gateways and the
/// archiver, participants found without their intent, failovers each process saw, and the
/// Sentinels' and the cluster's failover events.
fn keep_evidence(control: &Path, run: &str) {
    let Some(dir) = control.parent() else {
        return;
    };
    let kept = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-artifacts")
        .join(format!("chaos-{run}"));
    let mut logs = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && path != control {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                logs.push(path);
            }
        }
    }
    logs.sort();
    let telling = [
        " WARN ",
        " ERROR ",
        "held no intent",
        "master changed",
        "+switch-master",
        "+promoted-slave",
        "+odown",
        "Failover election won",
        "configEpoch set",
    ];
    // Every retry of a connection during a failover says so: too many to print.
    let noise = [
        "cannot connect to shard",
        "circuit breaker opened",
        "restore queue unreachable",
    ];
    let mut printed = 0;
    for log in &logs {
        let relative = log.strip_prefix(dir).unwrap_or(log);
        let target = kept.join(relative);
        if let Some(parent) = target.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::copy(log, &target);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            // Without the terminal colours the text format writes.
            let plain: String = strip_colours(line);
            if printed < 400
                && telling.iter().any(|t| plain.contains(t))
                && !noise.iter().any(|n| plain.contains(n))
            {
                eprintln!("evidence {}: {plain}", relative.display());
                printed += 1;
            }
        }
    }
    eprintln!(
        "chaos: the cluster's logs are kept in {} ({printed} lines printed above)",
        kept.display()
    );
}

/// `line` without ANSI escape sequences.
fn strip_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // `ESC [ ... m`
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn slots_moved_under_the_load_test() {
    let seed = colony_testkit::seed_from_env();
    let mut random = Seeded::new(seed ^ 0x005e_5a4d);
    let bin = tempfile::tempdir().expect("a directory for the process links");
    let me = std::env::current_exe().expect("this binary");
    for name in ["colony-gateway", "colony-archiver"] {
        std::os::unix::fs::symlink(&me, bin.path().join(name)).expect("links");
    }
    let topology = LocalTopology::Cluster;
    let base = free_base(&mut random, topology);
    let mut launcher = Launcher::start(bin.path(), base, topology);
    let control = launcher.control_dir();
    let config = Config::load(&control.join("colony.toml"), std::env::vars())
        .expect("the launcher's configuration");
    let cluster = config.cluster.clone().expect("a [cluster]");
    let prefix = format!("moving{seed}");
    let (players, cold) = (200u64, 400u64);
    // The slots of the load test's players that the first master serves, to the second.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let status = runtime
        .block_on(colony_admin::status(&cluster))
        .expect("status");
    let (from, to) = (&status.shards[0], &status.shards[1]);
    let owned = |slot: u16| from.slots.iter().any(|&(a, b)| (a..=b).contains(&slot));
    let mut slots: Vec<u16> = (0..players + cold)
        .map(|n| {
            colony::keys::player_slot(&colony::PlayerId::new(format!("{prefix}-{n}")).expect("id"))
                .get()
        })
        .filter(|&s| owned(s))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    // As many as move well within the traffic on a loaded 2-core machine.
    slots.truncate(80);
    assert!(slots.len() >= 50, "only {} slots to move", slots.len());
    let target = to.master.clone().expect("a master");
    let windows = control.join("windows.tsv");
    let scenario = Scenario {
        gateways: vec![
            format!("127.0.0.1:{}", base + 400),
            format!("127.0.0.1:{}", base + 410),
        ],
        token: "local-game-token-0001".into(),
        players,
        cold_players: cold,
        prefix,
        sessions: 8,
        batch: 4,
        think: Duration::from_millis(2),
        mix: Mix::parse("login=5,friends=30,currency=35,write=15,trade=10,idle=5,return=5")
            .expect("valid mix"),
        rate: None,
        duration: Duration::from_secs(40),
        warmup: Duration::from_secs(5),
        seed,
        chaos: None,
        windows: Some(windows.clone()),
    };
    let (report, moved) = runtime.block_on(async {
        let load = tokio::spawn(runner::run(scenario, |line| eprintln!("moving: {line}")));
        // The warm-up and a few measured seconds without a move, then the move.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let started = unix_ms();
        // Open until the move ends: a move slower than the traffic shows as still running.
        std::fs::write(&windows, format!("reshard\t{started}\t-\tmoving\n"))
            .expect("writes the window");
        let pace = colony_admin::reshard::Pace {
            options: colony_admin::slot_move::MoveOptions::default(),
            replicas: 1,
            players_per_second: None,
        };
        let moved = colony_admin::reshard::reshard(
            &cluster,
            &slots,
            &target,
            &pace,
            &colony_admin::reshard::Quiet,
        )
        .await;
        let line = match &moved {
            Ok(r) => format!("moved {} slots, {} players", r.moved.len(), r.players),
            Err(e) => format!("failed: {e:#}"),
        };
        std::fs::write(
            &windows,
            format!("reshard\t{started}\t{}\t{line}\n", unix_ms()),
        )
        .expect("writes the window");
        let report = load
            .await
            .expect("joins")
            .unwrap_or_else(|e| panic!("the load test failed: {e:#}"));
        (report, moved)
    });
    eprintln!("{}", report.table());
    let moved = moved.unwrap_or_else(|e| panic!("the move failed: {e:#}"));
    assert_eq!(moved.moved.len(), slots.len());
    assert!(moved.players > 0, "{moved:?}");
    let window = report
        .faults
        .iter()
        .find(|f| f.kind == "reshard")
        .expect("the move's window in the report");
    assert!(
        !window.outcome.contains("still running"),
        "the move ended before the traffic: {window:?}"
    );
    let c = &report.correctness;
    if !c.is_exact() || c.unreadable > 0 || std::env::var_os("COLONY_CHAOS_EVIDENCE").is_some() {
        keep_evidence(&control, &format!("reshard-{seed}"));
    }
    assert!(c.players > 0);
    assert_eq!(
        (c.lost, c.applied_twice, c.unreadable, c.conservation_gap),
        (0, 0, 0, 0),
        "{c:?}"
    );
    let after = runtime
        .block_on(colony_admin::status(&cluster))
        .expect("status");
    let target_shard = after
        .shards
        .iter()
        .find(|s| s.master.as_deref() == Some(target.as_str()))
        .expect("the target's shard");
    for slot in &slots {
        assert!(
            target_shard
                .slots
                .iter()
                .any(|&(a, b)| (a..=b).contains(slot)),
            "slot {slot} is not the target's"
        );
    }
    assert!(
        after.moves.is_empty() && after.half_done.is_empty(),
        "{after:?}"
    );
    assert!(launcher.stop(), "the launcher did not stop");
}
