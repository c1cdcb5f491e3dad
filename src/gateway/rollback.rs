//! The rollback alarm: a gateway remembers, in bounded memory, the highest version it
//! acknowledged for each player it served lately. An answer that shows a lower version for one
//! of them means acknowledged writes were taken back — a failover promoted a replica that had
//! not received them (possible in the naive profile, and in the safe one only when fewer
//! replicas were waited for than the shard has). The gateway counts it
//! (`colony_version_rollbacks_total{shard}`), logs both versions, and the alert rules fire.
//!
//! Pure: no IO. What counts as an acknowledgement: an OK answer that is not a replay (a
//! replay carries the first attempt's version, which may be older than the player's current
//! one). UNKNOWN and errors are not acknowledgements, so a write lost while unacknowledged
//! raises nothing.
//!
//! Memory: at most `capacity` players, each an id (at most 128 bytes) and a version; the
//! oldest remembered player is forgotten first. A rollback on a forgotten player goes
//! unnoticed — the alarm is a detector, not a proof of absence.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::model::PlayerId;

/// Independent parts, so gateways with many connections do not all wait on one lock.
const STRIPES: usize = 16;

/// A version lower than one acknowledged before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// The highest version acknowledged for the player.
    pub acknowledged: u64,
    /// The version the later answer showed.
    pub seen: u64,
}

/// The highest acknowledged version of recently served players, bounded.
pub struct AcknowledgedVersions {
    stripes: Vec<Mutex<Stripe>>,
    per_stripe: usize,
}

#[derive(Default)]
struct Stripe {
    versions: HashMap<PlayerId, u64>,
    /// Players in the order they were first remembered; the front is forgotten first.
    order: VecDeque<PlayerId>,
}

impl AcknowledgedVersions {
    /// Remembers at most `capacity` players (0 turns the alarm off).
    pub fn new(capacity: usize) -> AcknowledgedVersions {
        AcknowledgedVersions {
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(Stripe::default()))
                .collect(),
            per_stripe: capacity.div_ceil(STRIPES),
        }
    }

    /// Records that `version` was acknowledged for `player`. Returns the rollback when an
    /// earlier acknowledgement was higher; the player's remembered version then becomes
    /// `version`, so one rollback is reported once, and later acknowledgements are judged
    /// against the new history.
    pub fn observe(&self, player: &PlayerId, version: u64) -> Option<Rollback> {
        if self.per_stripe == 0 {
            return None;
        }
        let stripe = &self.stripes[stripe_of(player)];
        let mut stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = stripe.versions.get_mut(player) {
            let acknowledged = *known;
            *known = version;
            return (version < acknowledged).then_some(Rollback {
                acknowledged,
                seen: version,
            });
        }
        if stripe.order.len() >= self.per_stripe {
            if let Some(oldest) = stripe.order.pop_front() {
                stripe.versions.remove(&oldest);
            }
        }
        stripe.versions.insert(player.clone(), version);
        stripe.order.push_back(player.clone());
        None
    }

    /// Players remembered now.
    pub fn len(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).versions.len())
            .sum()
    }

    /// True when no player is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn stripe_of(player: &PlayerId) -> usize {
    // The slot hash (CRC16) spreads ids evenly and is stable across processes.
    usize::from(crate::slot::key_slot(player.as_str().as_bytes()).get()) % STRIPES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str) -> PlayerId {
        PlayerId::new(id).expect("valid")
    }

    #[test]
    fn a_lower_version_after_a_higher_one_is_a_rollback_reported_once() {
        let seen = AcknowledgedVersions::new(100);
        assert_eq!(seen.observe(&p("a"), 3), None);
        assert_eq!(seen.observe(&p("a"), 5), None);
        // Reads at the same version are no news.
        assert_eq!(seen.observe(&p("a"), 5), None);
        assert_eq!(
            seen.observe(&p("a"), 2),
            Some(Rollback {
                acknowledged: 5,
                seen: 2
            })
        );
        // Once reported, the new history is the reference.
        assert_eq!(seen.observe(&p("a"), 2), None);
        assert_eq!(seen.observe(&p("a"), 3), None);
        // Other players are their own.
        assert_eq!(seen.observe(&p("b"), 1), None);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_is_forgotten_first() {
        let seen = AcknowledgedVersions::new(64);
        for i in 0..10_000 {
            seen.observe(&p(&format!("player-{i}")), 10);
        }
        assert!(seen.len() <= 64 + STRIPES, "{}", seen.len());
        // The first players were forgotten: a lower version raises nothing for them.
        assert_eq!(seen.observe(&p("player-0"), 1), None);
        // The latest are remembered.
        assert!(seen.observe(&p("player-9999"), 1).is_some());
    }

    #[test]
    fn capacity_zero_turns_the_alarm_off() {
        let seen = AcknowledgedVersions::new(0);
        seen.observe(&p("a"), 5);
        assert_eq!(seen.observe(&p("a"), 1), None);
        assert!(seen.is_empty());
    }
}
