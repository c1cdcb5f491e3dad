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
//! Only a request that **began after** the higher version was acknowledged can show a
//! rollback: two requests in flight at once may be answered in either order (a read that Redis
//! ran before a write can reach the gateway after it), and the lower version of the earlier
//! one is no news. So every request takes a [`Ticket`] from a counter before it is sent, every
//! acknowledgement records the counter's value, and a lower version counts only when its
//! request's ticket is later than that record.
//!
//! Memory: at most `capacity` players, each an id (at most 128 bytes) and a version; the
//! oldest remembered player is forgotten first. A rollback on a forgotten player goes
//! unnoticed — the alarm is a detector, not a proof of absence.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// When a request began, on the gateway's own counter: taken before the request is sent to a
/// shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// The highest acknowledged version of recently served players, bounded.
pub struct AcknowledgedVersions {
    stripes: Vec<Mutex<Stripe>>,
    per_stripe: usize,
    /// Advanced by every acknowledgement; read by every request as it begins.
    clock: AtomicU64,
}

/// A player's highest acknowledged version, and the clock when it was acknowledged.
#[derive(Debug, Clone, Copy)]
struct Acknowledged {
    version: u64,
    at: u64,
}

#[derive(Default)]
struct Stripe {
    versions: HashMap<PlayerId, Acknowledged>,
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
            clock: AtomicU64::new(0),
        }
    }

    /// Takes a request's ticket; call it before the request reaches a shard.
    pub fn begin(&self) -> Ticket {
        Ticket(self.clock.load(Ordering::SeqCst))
    }

    /// Records that `version` was acknowledged for `player` to a request that began at
    /// `ticket`. Returns the rollback when a higher version had been acknowledged before that
    /// request began; the player's remembered version then becomes `version`, so one rollback
    /// is reported once, and later answers are judged against the new history. A lower
    /// version from a request that was already in flight is ignored.
    pub fn observe(&self, ticket: Ticket, player: &PlayerId, version: u64) -> Option<Rollback> {
        if self.per_stripe == 0 {
            return None;
        }
        let now = self.clock.fetch_add(1, Ordering::SeqCst);
        let stripe = &self.stripes[stripe_of(player)];
        let mut stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = stripe.versions.get_mut(player) {
            if version >= known.version {
                *known = Acknowledged { version, at: now };
                return None;
            }
            if known.at >= ticket.0 {
                // Answered late: the request was in flight when the higher version was
                // acknowledged, and may have run before it.
                return None;
            }
            let acknowledged = known.version;
            *known = Acknowledged { version, at: now };
            return Some(Rollback {
                acknowledged,
                seen: version,
            });
        }
        if stripe.order.len() >= self.per_stripe {
            if let Some(oldest) = stripe.order.pop_front() {
                stripe.versions.remove(&oldest);
            }
        }
        stripe
            .versions
            .insert(player.clone(), Acknowledged { version, at: now });
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

    /// Observes `version` for a request that begins now (one after the other).
    fn serial(seen: &AcknowledgedVersions, player: &str, version: u64) -> Option<Rollback> {
        let ticket = seen.begin();
        seen.observe(ticket, &p(player), version)
    }

    #[test]
    fn a_lower_version_after_a_higher_one_is_a_rollback_reported_once() {
        let seen = AcknowledgedVersions::new(100);
        assert_eq!(serial(&seen, "a", 3), None);
        assert_eq!(serial(&seen, "a", 5), None);
        // Reads at the same version are no news.
        assert_eq!(serial(&seen, "a", 5), None);
        assert_eq!(
            serial(&seen, "a", 2),
            Some(Rollback {
                acknowledged: 5,
                seen: 2
            })
        );
        // Once reported, the new history is the reference.
        assert_eq!(serial(&seen, "a", 2), None);
        assert_eq!(serial(&seen, "a", 3), None);
        // Other players are their own.
        assert_eq!(serial(&seen, "b", 1), None);
    }

    #[test]
    fn a_request_in_flight_when_the_higher_version_was_acknowledged_is_no_rollback() {
        let seen = AcknowledgedVersions::new(100);
        assert_eq!(serial(&seen, "a", 4), None);
        // A read begins, then a write begins and is acknowledged at 5 first; the read's
        // answer (4: Redis ran it before the write) arrives after.
        let read = seen.begin();
        let write = seen.begin();
        assert_eq!(seen.observe(write, &p("a"), 5), None);
        assert_eq!(seen.observe(read, &p("a"), 4), None);
        // 5 is still the reference: a request begun after it that shows 4 is a rollback.
        assert_eq!(
            serial(&seen, "a", 4),
            Some(Rollback {
                acknowledged: 5,
                seen: 4
            })
        );
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_is_forgotten_first() {
        let seen = AcknowledgedVersions::new(64);
        for i in 0..10_000 {
            serial(&seen, &format!("player-{i}"), 10);
        }
        assert!(seen.len() <= 64 + STRIPES, "{}", seen.len());
        // The first players were forgotten: a lower version raises nothing for them.
        assert_eq!(serial(&seen, "player-0", 1), None);
        // The latest are remembered.
        assert!(serial(&seen, "player-9999", 1).is_some());
    }

    #[test]
    fn capacity_zero_turns_the_alarm_off() {
        let seen = AcknowledgedVersions::new(0);
        serial(&seen, "a", 5);
        assert_eq!(serial(&seen, "a", 1), None);
        assert!(seen.is_empty());
    }
}
