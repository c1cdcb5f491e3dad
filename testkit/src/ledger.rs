//! The one record of what was acknowledged, used by the fault tests and the load test alike:
//! every increment of a player's counter with its outcome, and the check of stored values
//! against it.
//!
//! Pure. An increment ends acknowledged (it applied exactly once), unknown (it may have
//! applied), or failed (it did not apply). A final value `v` of a player whose acknowledged
//! increments sum to `a` and unknown ones to `u` is correct when `a <= v <= a + u`; below is
//! lost, above is applied twice. An unknown decrement widens the window downwards the same way.
//!
//! Transfers (a multi-player transaction moving an amount from one player to another) are
//! recorded on both players, and are zero-sum: the total of every stored value must lie in
//! the window the increments alone allow, whatever happened to the transfers — a transfer
//! applied on one side only shows up there (`conservation_gap`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Changes recorded for one player (or for the total).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Expected {
    acknowledged: i64,
    /// Unknown increments: the value may be this much above `acknowledged`.
    unknown_up: i64,
    /// Unknown decrements: the value may be this much below `acknowledged` (a negative sum).
    unknown_down: i64,
}

impl Expected {
    fn add(&mut self, delta: i64, known: bool) {
        if known {
            self.acknowledged += delta;
        } else if delta >= 0 {
            self.unknown_up += delta;
        } else {
            self.unknown_down += delta;
        }
    }

    fn merge(&mut self, other: &Expected) {
        self.acknowledged += other.acknowledged;
        self.unknown_up += other.unknown_up;
        self.unknown_down += other.unknown_down;
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Applied on both players.
    Acknowledged,
    /// May have applied (on both players, or neither).
    Unknown,
    /// Applied on neither.
    Failed,
}

/// The record of every increment, per player.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    players: BTreeMap<String, Expected>,
    /// What the increments alone (not the transfers) allow the total to be.
    total: Expected,
    acknowledged_ops: u64,
    unknown_ops: u64,
    failed_ops: u64,
    transfers: [u64; 3],
}

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Players checked.
    pub players: u64,
    /// Increments acknowledged.
    pub acknowledged_ops: u64,
    /// Increments whose outcome stayed unknown.
    pub unknown_ops: u64,
    /// Increments that definitely did not apply.
    pub failed_ops: u64,
    /// Acknowledged amounts missing from the stored values.
    pub lost: i64,
    /// Players with something missing.
    pub players_with_loss: u64,
    /// Amounts stored beyond what was acknowledged or unknown.
    pub applied_twice: i64,
    /// Players with something applied twice.
    pub players_with_double_applies: u64,
    /// Players that could not be read back, so were not checked.
    pub unreadable: u64,
    /// Transfers acknowledged, unknown and failed.
    pub transfers_acknowledged: u64,
    /// Transfers whose outcome stayed unknown.
    pub transfers_unknown: u64,
    /// Transfers that did not apply.
    pub transfers_failed: u64,
    /// Transfers first answered UNKNOWN and then settled (acknowledged or refused) by sending
    /// the same request again, as a client does (at once, or after the run); counted among
    /// the above.
    pub transfers_settled: u64,
    /// How far the total of the stored values lies outside what the increments allow (0:
    /// conserved; transfers never change it). Checked only when every player was read.
    pub conservation_gap: i64,
}

impl Findings {
    /// True when nothing acknowledged was lost and nothing was applied twice.
    pub fn is_exact(&self) -> bool {
        self.lost == 0 && self.applied_twice == 0 && self.conservation_gap == 0
    }

    /// Panics, naming `context` (the seed, say), unless nothing acknowledged was lost and
    /// nothing was applied twice.
    pub fn assert_exact(&self, context: &str) {
        assert_eq!(
            self.lost, 0,
            "{context}: acknowledged increments lost: {self:?}"
        );
        assert_eq!(
            self.applied_twice, 0,
            "{context}: increments applied twice: {self:?}"
        );
        assert_eq!(
            self.conservation_gap, 0,
            "{context}: the total is not conserved: {self:?}"
        );
    }
}

impl Ledger {
    /// An increment of `player`'s counter by `delta` was acknowledged.
    pub fn acknowledged(&mut self, player: &str, delta: i64) {
        self.players
            .entry(player.to_string())
            .or_default()
            .add(delta, true);
        self.total.add(delta, true);
        self.acknowledged_ops += 1;
    }

    /// An increment's outcome is unknown: it may have applied.
    pub fn unknown(&mut self, player: &str, delta: i64) {
        self.players
            .entry(player.to_string())
            .or_default()
            .add(delta, false);
        self.total.add(delta, false);
        self.unknown_ops += 1;
    }

    /// A transfer of `amount` from `from` to `to` ended with `outcome`.
    pub fn transfer(&mut self, from: &str, to: &str, amount: i64, outcome: TransferOutcome) {
        let known = match outcome {
            TransferOutcome::Acknowledged => true,
            TransferOutcome::Unknown => false,
            TransferOutcome::Failed => {
                self.players.entry(from.to_string()).or_default();
                self.players.entry(to.to_string()).or_default();
                self.transfers[2] += 1;
                return;
            }
        };
        self.players
            .entry(from.to_string())
            .or_default()
            .add(-amount, known);
        self.players
            .entry(to.to_string())
            .or_default()
            .add(amount, known);
        self.transfers[usize::from(!known)] += 1;
    }

    /// An increment definitely did not apply.
    pub fn failed(&mut self, player: &str) {
        self.players.entry(player.to_string()).or_default();
        self.failed_ops += 1;
    }

    /// Increments whose outcome stayed unknown so far.
    pub fn unknown_ops(&self) -> u64 {
        self.unknown_ops
    }

    /// Adds another ledger's records.
    pub fn merge(&mut self, other: &Ledger) {
        for (player, e) in &other.players {
            self.players.entry(player.clone()).or_default().merge(e);
        }
        self.total.merge(&other.total);
        for (mine, theirs) in self.transfers.iter_mut().zip(other.transfers) {
            *mine += theirs;
        }
        self.acknowledged_ops += other.acknowledged_ops;
        self.unknown_ops += other.unknown_ops;
        self.failed_ops += other.failed_ops;
    }

    /// The players with recorded increments.
    pub fn players(&self) -> impl Iterator<Item = &str> {
        self.players.keys().map(String::as_str)
    }

    /// Checks the stored values, `stored(player)` (0 when absent, `None` when it could not be
    /// read: counted as unreadable, neither correct nor wrong).
    pub fn check(&self, mut stored: impl FnMut(&str) -> Option<i64>) -> Findings {
        let mut findings = Findings {
            acknowledged_ops: self.acknowledged_ops,
            unknown_ops: self.unknown_ops,
            failed_ops: self.failed_ops,
            transfers_acknowledged: self.transfers[0],
            transfers_unknown: self.transfers[1],
            transfers_failed: self.transfers[2],
            ..Findings::default()
        };
        let mut total = 0i64;
        for (player, e) in &self.players {
            let Some(value) = stored(player) else {
                findings.unreadable += 1;
                continue;
            };
            findings.players += 1;
            total += value;
            let (low, high) = (
                e.acknowledged + e.unknown_down,
                e.acknowledged + e.unknown_up,
            );
            if value < low {
                findings.lost += low - value;
                findings.players_with_loss += 1;
            }
            if value > high {
                findings.applied_twice += value - high;
                findings.players_with_double_applies += 1;
            }
        }
        if findings.unreadable == 0 {
            let t = &self.total;
            let (low, high) = (
                t.acknowledged + t.unknown_down,
                t.acknowledged + t.unknown_up,
            );
            findings.conservation_gap = if total < low {
                total - low
            } else if total > high {
                total - high
            } else {
                0
            };
        }
        findings
    }
}

/// A [`Ledger`] of increments by one, with the timeline a fault test reads availability from:
/// when each acknowledgement arrived and when each fault was injected.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// The increments and their outcomes.
    pub ledger: Ledger,
    /// When each acknowledgement arrived, in order.
    pub ack_times: Vec<Instant>,
    /// Faults injected, with when they happened, in the same timeline.
    pub faults: Vec<(Instant, String)>,
}

impl History {
    /// Records an acknowledged increment of `counter` by one.
    pub fn acknowledged(&mut self, counter: &str) {
        self.ledger.acknowledged(counter, 1);
        self.ack_times.push(Instant::now());
    }

    /// Records an increment by one whose outcome is unknown.
    pub fn unknown(&mut self, counter: &str) {
        self.ledger.unknown(counter, 1);
    }

    /// Records an increment that was definitely not applied.
    pub fn failed(&mut self, counter: &str) {
        self.ledger.failed(counter);
    }

    /// Records a fault.
    pub fn fault(&mut self, what: impl Into<String>) {
        self.faults.push((Instant::now(), what.into()));
    }

    /// The counters that were written.
    pub fn counters(&self) -> Vec<String> {
        self.ledger.players().map(str::to_string).collect()
    }

    /// Checks final values (`final_value(counter)`) against the history.
    pub fn check(&self, mut final_value: impl FnMut(&str) -> u64) -> Findings {
        self.ledger
            .check(|c| Some(i64::try_from(final_value(c)).unwrap_or(i64::MAX)))
    }

    /// The longest time without an acknowledgement after `since`.
    pub fn longest_gap_after(&self, since: Instant) -> Option<Duration> {
        let mut previous = since;
        let mut longest = None;
        for &t in self.ack_times.iter().filter(|t| **t > since) {
            let gap = t.duration_since(previous);
            if longest.is_none_or(|l| gap > l) {
                longest = Some(gap);
            }
            previous = t;
        }
        longest
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
        l.failed("b");
        l
    }

    #[test]
    fn correct_histories_pass() {
        for a in [7, 8, 10] {
            let f = ledger().check(|p| Some(if p == "a" { a } else { 1 }));
            assert!(f.is_exact(), "a = {a}: {f:?}");
        }
    }

    #[test]
    fn planted_loss_is_caught() {
        let f = ledger().check(|p| Some(if p == "a" { 4 } else { 0 }));
        assert_eq!((f.lost, f.players_with_loss), (4, 2));
        assert!(!f.is_exact());
    }

    #[test]
    fn planted_double_applies_are_caught() {
        let f = ledger().check(|p| Some(if p == "a" { 17 } else { 2 }));
        assert_eq!((f.applied_twice, f.players_with_double_applies), (8, 2));
        assert_eq!((f.acknowledged_ops, f.unknown_ops, f.failed_ops), (3, 1, 1));
    }

    #[test]
    fn unreadable_players_are_counted_not_judged() {
        let f = ledger().check(|p| if p == "a" { None } else { Some(0) });
        assert_eq!((f.players, f.unreadable), (1, 1));
        assert_eq!((f.lost, f.players_with_loss), (1, 1));
    }

    #[test]
    fn merged_ledgers_check_as_one() {
        let mut merged = Ledger::default();
        merged.merge(&ledger());
        merged.merge(&ledger());
        let f = merged.check(|p| Some(if p == "a" { 14 } else { 2 }));
        assert!(f.is_exact(), "{f:?}");
        assert_eq!((f.acknowledged_ops, f.unknown_ops), (6, 2));
        let f = merged.check(|p| Some(if p == "a" { 13 } else { 2 }));
        assert_eq!(f.lost, 1);
    }

    #[test]
    fn transfers_are_zero_sum_and_a_one_sided_one_breaks_conservation() {
        let mut l = Ledger::default();
        l.acknowledged("a", 100);
        l.transfer("a", "b", 30, TransferOutcome::Acknowledged);
        l.transfer("a", "b", 5, TransferOutcome::Unknown);
        l.transfer("b", "a", 7, TransferOutcome::Failed);
        // Either outcome of the unknown transfer is fine.
        for (a, b) in [(70, 30), (65, 35)] {
            let f = l.check(|p| Some(if p == "a" { a } else { b }));
            assert!(f.is_exact(), "{a} {b}: {f:?}");
        }
        // Applied on one side only: each player is inside its window, the total is not.
        let f = l.check(|p| Some(if p == "a" { 65 } else { 30 }));
        assert_eq!((f.lost, f.applied_twice), (0, 0));
        assert_eq!(f.conservation_gap, -5);
        assert!(!f.is_exact());
        assert_eq!(
            (
                f.transfers_acknowledged,
                f.transfers_unknown,
                f.transfers_failed
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_history_counts_increments_by_one() {
        let mut h = History::default();
        for _ in 0..5 {
            h.acknowledged("a");
        }
        h.unknown("a");
        h.acknowledged("b");
        h.failed("b");
        assert!(h.check(|c| if c == "a" { 6 } else { 1 }).is_exact());
        assert!(h.check(|c| if c == "a" { 5 } else { 1 }).is_exact());
        let lost = h.check(|c| if c == "a" { 3 } else { 0 });
        assert_eq!((lost.lost, lost.applied_twice), (3, 0));
        let doubled = h.check(|c| if c == "a" { 8 } else { 2 });
        assert_eq!((doubled.lost, doubled.applied_twice), (0, 3));
        assert_eq!((doubled.acknowledged_ops, doubled.failed_ops), (6, 1));
        assert_eq!(h.ack_times.len(), 6);
    }
}
