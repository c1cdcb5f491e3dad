//! What idempotency costs Redis, per layout, measured in one run on three fresh
//! redis-servers doing the same writes:
//!
//! - **bare**: today's script without an idempotency key (no record at all): the baseline;
//! - **v1**: the previous version's script (`tests/fixtures/transaction_v1.lua`), one string
//!   key per record with a one-day TTL;
//! - **window**: today's script with keys, the per-player window (default 32 requests,
//!   5 minutes).
//!
//! For each: Redis memory per player (`used_memory` over the empty server, divided by the
//! players) after a tenth of the writes and after all of them, to show whether it grows with
//! the request count; and Redis CPU per call (`usec_per_call` of EVALSHA from
//! `INFO commandstats`) for existing players and for new ones. The writes: `--players`
//! players (default 200), `--writes` per player (default 1000), each a bounded private
//! counter +1, from `--clients` clients (default 2) in turn, request ids increasing per
//! client, pipelined 64 calls per round trip, through a window of `--window` requests
//! (default 32, the shipped default).
//!
//! Run: `cargo bench --bench idempotency_cost`. Figures are ratios against the bare
//! baseline of the same run.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use colony::config::RedisSettings;
use colony::script::{encode, Bounds, Window};
use colony::{PlayerId, Transaction};
use colony_testkit::RedisServer;

mod common;
#[path = "../tests/common/legacy.rs"]
mod legacy;

const PIPELINE: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    Bare,
    V1,
    Window,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Bare => "bare (no key)",
            Layout::V1 => "v1 (record keys)",
            Layout::Window => "window",
        }
    }
}

struct Figures {
    bytes_per_player_early: f64,
    bytes_per_player: f64,
    usec_existing: f64,
    usec_new: f64,
}

fn bounds() -> Bounds {
    Bounds {
        track_changes: true,
        window: Window {
            length: common::option("--window", 32) as usize,
            ..Window::of(&RedisSettings::default())
        },
        read_budget: 2 << 20,
        max_player_bytes: 1 << 20,
        max_player_entries: 4096,
    }
}

fn write(player: &PlayerId, client: u64, request: u64, layout: Layout) -> Transaction {
    let mut txn = common::increment(player, &format!("client-{client}"), request, None);
    if layout == Layout::Bare {
        txn.idempotency_key = None;
    }
    txn
}

fn send(conn: &mut redis::Connection, txns: &[Transaction], layout: Layout) {
    let bounds = bounds();
    let mut pipe = redis::pipe();
    for txn in txns {
        match layout {
            Layout::V1 => {
                pipe.add_command(legacy::evalsha_v1(txn, &bounds)).ignore();
            }
            Layout::Bare | Layout::Window => {
                encode(txn, colony::keys::player_slot(&txn.player), &bounds).add_to(&mut pipe);
                pipe.ignore();
            }
        }
    }
    let () = pipe.query(conn).unwrap();
}

fn info_field(conn: &mut redis::Connection, section: &str, line_prefix: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no {line_prefix} in INFO {section}"));
    let value = if field.is_empty() {
        line.split(':').nth(1).unwrap()
    } else {
        line.split(&format!("{field}="))
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
    };
    value.trim().parse().unwrap()
}

fn used_memory(conn: &mut redis::Connection) -> f64 {
    info_field(conn, "memory", "used_memory:", "")
}

fn usec_per_call(conn: &mut redis::Connection) -> f64 {
    info_field(conn, "commandstats", "cmdstat_evalsha:", "usec_per_call")
}

fn measure(layout: Layout, players: u64, writes: u64, clients: u64) -> Figures {
    let server = RedisServer::start().unwrap();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let (load, source) = match layout {
        Layout::V1 => (legacy::SCRIPT_V1.get_hash().to_string(), legacy::SOURCE_V1),
        _ => (
            colony::script::SCRIPT.get_hash().to_string(),
            colony::script::SOURCE,
        ),
    };
    let loaded: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(source)
        .query(&mut conn)
        .unwrap();
    assert_eq!(loaded, load);
    let empty = used_memory(&mut conn);
    let ids: Vec<PlayerId> = (0..players)
        .map(|i| PlayerId::new(format!("player-{i}")).unwrap())
        .collect();

    // New players: the first write of each.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let firsts: Vec<Transaction> = ids.iter().map(|p| write(p, 0, 1, layout)).collect();
    for chunk in firsts.chunks(PIPELINE) {
        send(&mut conn, chunk, layout);
    }
    let usec_new = usec_per_call(&mut conn);

    // Existing players: the rest of the writes, clients in turn, ids increasing per client.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let mut early = 0.0;
    let mut batch = Vec::with_capacity(PIPELINE);
    for round in 1..writes {
        let client = round % clients;
        let request = round / clients + 2;
        for player in &ids {
            batch.push(write(player, client, request, layout));
            if batch.len() == PIPELINE {
                send(&mut conn, &batch, layout);
                batch.clear();
            }
        }
        if round == writes / 10 {
            if !batch.is_empty() {
                send(&mut conn, &batch, layout);
                batch.clear();
            }
            early = (used_memory(&mut conn) - empty) / players as f64;
        }
    }
    if !batch.is_empty() {
        send(&mut conn, &batch, layout);
    }
    let usec_existing = usec_per_call(&mut conn);
    let bytes_per_player = (used_memory(&mut conn) - empty) / players as f64;
    Figures {
        bytes_per_player_early: early,
        bytes_per_player,
        usec_existing,
        usec_new,
    }
}

fn main() {
    let players = common::option("--players", 200);
    let writes = common::option("--writes", 1000).max(10);
    let clients = common::option("--clients", 2).max(1);
    println!(
        "idempotency cost: {players} players x {writes} writes, {clients} clients, pipelined {PIPELINE}"
    );
    let layouts = [Layout::Bare, Layout::V1, Layout::Window];
    let figures: Vec<Figures> = layouts
        .iter()
        .map(|&layout| measure(layout, players, writes, clients))
        .collect();
    let bare = &figures[0];
    println!(
        "{:<18} {:>14} {:>14} {:>16} {:>16}",
        "layout",
        format!("B/player @{}", writes / 10),
        format!("B/player @{writes}"),
        "us/call existing",
        "us/call new"
    );
    for (layout, f) in layouts.iter().zip(&figures) {
        println!(
            "{:<18} {:>14.0} {:>14.0} {:>9.2} ({:.2}x) {:>9.2} ({:.2}x)",
            layout.name(),
            f.bytes_per_player_early,
            f.bytes_per_player,
            f.usec_existing,
            f.usec_existing / bare.usec_existing,
            f.usec_new,
            f.usec_new / bare.usec_new,
        );
    }
    let window = &figures[2];
    let v1 = &figures[1];
    println!(
        "window vs v1: memory per player {:.3}x, idempotency memory per player (over bare) {:.0} B vs {:.0} B",
        window.bytes_per_player / v1.bytes_per_player,
        window.bytes_per_player - bare.bytes_per_player,
        v1.bytes_per_player - bare.bytes_per_player,
    );
}
