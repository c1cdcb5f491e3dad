//! The correctness check: what the acknowledged results say each player's coin counter must
//! be, against what is stored at the end.
//!
//! Pure. Every coin increment is recorded with its outcome: acknowledged (it applied exactly
//! once), unknown (it may have applied), or failed (it did not apply). A final value `v` of a
//! player whose acknowledged increments sum to `a` and unknown ones to `u` is correct when
//! `a <= v <= a + u`; below is lost, above is applied twice.

use std::collections::BTreeMap;

use serde::Serialize;

/// Increments recorded for one player.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Expected {
    acknowledged: i64,
    unknown: i64,
}

/// The record of every coin increment.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    players: BTreeMap<String, Expected>,
    /// Increments whose outcome stayed unknown.
    pub unknown_ops: u64,
}

/// What the final check found.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Players checked.
    pub players: u64,
    /// Coins acknowledged but missing from the stored counters.
    pub lost: i64,
    /// Players with coins missing.
    pub players_with_loss: u64,
    /// Coins stored beyond what was acknowledged or unknown.
    pub applied_twice: i64,
    /// Players with coins applied twice.
    pub players_with_double_applies: u64,
    /// Increments whose outcome stayed unknown.
    pub unknown_ops: u64,
    /// Players that could not be read back, so were not checked.
    pub unreadable: u64,
}

impl Ledger {
    /// An increment of `player`'s coins by `delta` was acknowledged.
    pub fn acknowledged(&mut self, player: &str, delta: i64) {
        self.players
            .entry(player.to_string())
            .or_default()
            .acknowledged += delta;
    }

    /// An increment's outcome is unknown.
    pub fn unknown(&mut self, player: &str, delta: i64) {
        self.players.entry(player.to_string()).or_default().unknown += delta;
        self.unknown_ops += 1;
    }

    /// Adds another ledger's records.
    pub fn merge(&mut self, other: &Ledger) {
        for (player, e) in &other.players {
            let mine = self.players.entry(player.clone()).or_default();
            mine.acknowledged += e.acknowledged;
            mine.unknown += e.unknown;
        }
        self.unknown_ops += other.unknown_ops;
    }

    /// The players with recorded increments.
    pub fn players(&self) -> impl Iterator<Item = &str> {
        self.players.keys().map(String::as_str)
    }

    /// Checks the stored counters, `stored(player)` (0 when absent, `None` when it could not
    /// be read: counted as unreadable, neither correct nor wrong).
    pub fn check(&self, mut stored: impl FnMut(&str) -> Option<i64>) -> Findings {
        let mut findings = Findings {
            unknown_ops: self.unknown_ops,
            ..Findings::default()
        };
        for (player, e) in &self.players {
            let Some(value) = stored(player) else {
                findings.unreadable += 1;
                continue;
            };
            findings.players += 1;
            if value < e.acknowledged {
                findings.lost += e.acknowledged - value;
                findings.players_with_loss += 1;
            }
            if value > e.acknowledged + e.unknown {
                findings.applied_twice += value - (e.acknowledged + e.unknown);
                findings.players_with_double_applies += 1;
            }
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        let mut l = Ledger::default();
        l.acknowledged("a", 5);
        l.acknowledged("a", 2);
        l.unknown("a", 3);
        l.acknowledged("b", 1);
        l
    }

    #[test]
    fn correct_histories_pass() {
        for a in [7, 8, 10] {
            let f = ledger().check(|p| Some(if p == "a" { a } else { 1 }));
            assert_eq!((f.lost, f.applied_twice), (0, 0), "a = {a}");
        }
    }

    #[test]
    fn planted_loss_is_caught() {
        let f = ledger().check(|p| Some(if p == "a" { 4 } else { 0 }));
        assert_eq!((f.lost, f.players_with_loss), (4, 2));
    }

    #[test]
    fn planted_double_applies_are_caught() {
        let f = ledger().check(|p| Some(if p == "a" { 17 } else { 2 }));
        assert_eq!((f.applied_twice, f.players_with_double_applies), (8, 2));
        assert_eq!(f.unknown_ops, 1);
    }

    #[test]
    fn unreadable_players_are_counted_not_judged() {
        let f = ledger().check(|p| if p == "a" { None } else { Some(0) });
        assert_eq!((f.players, f.unreadable), (1, 1));
        assert_eq!((f.lost, f.players_with_loss), (1, 1));
    }
}
